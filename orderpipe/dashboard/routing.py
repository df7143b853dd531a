"""WebSocket URLs (the HTTP ones are in orderpipe/urls.py)."""

from django.urls import path

from orderpipe.dashboard import consumers, feed

websocket_urlpatterns = [
    path(feed.PIPELINE_SOCKET_PATH, consumers.PipelineConsumer.as_asgi()),
    path(feed.JOURNEY_SOCKET_PATH, consumers.JourneyConsumer.as_asgi()),
]
