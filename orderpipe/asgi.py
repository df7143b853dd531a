"""ASGI entry point: HTTP goes to Django; WebSockets go through Channels (see orders/routing.py).

Sockets pass the origin check first (only hosts in ALLOWED_HOSTS may open them, so another site cannot read the
dashboard with a visitor's cookies), then get the session's user from AuthMiddlewareStack.
"""

import os

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "orderpipe.settings")
# Build Django's application before importing anything that touches models.
django_asgi_app = get_asgi_application()

from channels.auth import AuthMiddlewareStack  # noqa: E402
from channels.routing import ProtocolTypeRouter, URLRouter  # noqa: E402
from channels.security.websocket import AllowedHostsOriginValidator  # noqa: E402

from orders.routing import websocket_urlpatterns  # noqa: E402

application = ProtocolTypeRouter(
    {
        "http": django_asgi_app,
        "websocket": AllowedHostsOriginValidator(AuthMiddlewareStack(URLRouter(websocket_urlpatterns))),
    }
)
