"""WebSocket URLs (the HTTP ones are in orderpipe/urls.py)."""

from django.urls import path

from orders import consumers

websocket_urlpatterns = [
    path("ws/pipeline/", consumers.PipelineConsumer.as_asgi()),
    path("ws/orders/<str:order_id>/", consumers.JourneyConsumer.as_asgi()),
]
