"""The worker side's staff API (under /api/): replaying dead letters."""

from django.urls import path

from worker import api

urlpatterns = [
    path("dead-letters/replay/", api.ReplayDeadLettersApi.as_view(), name="api-dead-letters-replay"),
]
