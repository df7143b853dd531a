"""WSGI entry point: the HTTP server in production is gunicorn serving this (gunicorn.conf.py). WebSockets need
ASGI and go to daphne (orderpipe/asgi.py)."""

import os

from django.core.wsgi import get_wsgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "orderpipe.settings")
application = get_wsgi_application()
