"""The REST API's URLs (under /api/); the dashboard's JSON and controls are in orderpipe/dashboard/."""

from django.urls import path

from orders import api

urlpatterns = [
    path("orders/", api.OrderListCreateApi.as_view(), name="api-order-list"),
    path("orders/<str:order_id>/", api.OrderDetailApi.as_view(), name="api-order-detail"),
    path("orders/<str:order_id>/events/", api.OrderEventsApi.as_view(), name="api-order-events"),
    path("orders/<str:order_id>/next-step/", api.NextStepApi.as_view(), name="api-order-next-step"),
    path("products/", api.ProductListApi.as_view(), name="api-product-list"),
    path("sandbox/", api.SandboxApi.as_view(), name="api-sandbox"),
]
