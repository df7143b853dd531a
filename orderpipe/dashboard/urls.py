"""The dashboard's pages: the live pipeline at / and an order's journey."""

from django.urls import path

from orderpipe.dashboard import pages

urlpatterns = [
    path("", pages.dashboard, name="dashboard"),
    path("orders/<uuid:order_id>/", pages.journey, name="journey"),
]
