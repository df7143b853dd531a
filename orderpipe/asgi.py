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
from django.contrib.staticfiles.handlers import ASGIStaticFilesHandler  # noqa: E402

from orders.routing import websocket_urlpatterns  # noqa: E402

# daphne serves no static files by itself (only `manage.py runserver` does). The pages' few CSS/JS files are served
# from the app's static directories by Django's own handler, so the dashboard works offline with no extra server;
# behind a real front (nginx, a CDN) `collectstatic` + that front would take over.
application = ProtocolTypeRouter(
    {
        "http": ASGIStaticFilesHandler(django_asgi_app),
        "websocket": AllowedHostsOriginValidator(AuthMiddlewareStack(URLRouter(websocket_urlpatterns))),
    }
)
