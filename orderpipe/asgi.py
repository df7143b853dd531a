"""ASGI entry point: HTTP goes to Django; WebSockets go through Channels (see orders/routing.py)."""

import os

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "orderpipe.settings")
# Build Django's application before importing anything that touches models.
django_asgi_app = get_asgi_application()

application = django_asgi_app
