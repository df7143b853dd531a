"""WebSocket URLs (the HTTP ones are in orderpipe/urls.py)."""

from django.urls import path

from orderpipe.dashboard import consumers, live

websocket_urlpatterns = [
    path(live.PIPELINE_SOCKET_PATH, consumers.PipelineConsumer.as_asgi()),
    path(live.JOURNEY_SOCKET_PATH, consumers.JourneyConsumer.as_asgi()),
]
