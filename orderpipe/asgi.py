"""ASGI entry point, served by daphne: WebSockets go through Channels (orderpipe/dashboard/routing.py), HTTP to Django.

In production daphne is there for the sockets (`/ws/...`, Compose's `ws` service); gunicorn serves HTTP
(gunicorn.conf.py, orderpipe/wsgi.py). daphne still answers HTTP with the same Django stack, static files included
(WhiteNoise is a middleware, so it serves /static/ under either server), which keeps a single-server setup working
and gives the `ws` container its /healthz.

Sockets pass the origin check first (only hosts in ALLOWED_HOSTS may open them, so another site cannot read the
dashboard with a visitor's cookies), then get the session's user from AuthMiddlewareStack. Both go by host, not
port, so a page served by gunicorn on one port may open its socket to daphne on another.
"""

import os

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "orderpipe.settings")
# Build Django's application before importing anything that touches models.
django_asgi_app = get_asgi_application()

from channels.auth import AuthMiddlewareStack  # noqa: E402
from channels.routing import ProtocolTypeRouter, URLRouter  # noqa: E402
from channels.security.websocket import AllowedHostsOriginValidator  # noqa: E402

from orderpipe.dashboard.routing import websocket_urlpatterns  # noqa: E402

application = ProtocolTypeRouter(
    {
        "http": django_asgi_app,
        "websocket": AllowedHostsOriginValidator(AuthMiddlewareStack(URLRouter(websocket_urlpatterns))),
    }
)
