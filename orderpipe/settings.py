"""Django settings for orderpipe.

Every environment variable the project reads is read here, through the small typed helpers below, which fail
loudly on a malformed value instead of guessing. Defaults point at local services so `make run` needs no
configuration.
"""

from __future__ import annotations

import os
import re
import warnings
from pathlib import Path
from urllib.parse import unquote, urlparse

from django.core.exceptions import ImproperlyConfigured

BASE_DIR = Path(__file__).resolve().parent.parent


# ---------------------------------------------------------------- env helpers


def env_str(name: str, default: str) -> str:
    return os.environ.get(name, default)


def env_bool(name: str, default: bool) -> bool:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    value = raw.strip().lower()
    if value in {"1", "true", "yes", "on"}:
        return True
    if value in {"0", "false", "no", "off"}:
        return False
    raise ImproperlyConfigured(f"{name} must be a boolean (true/false), got {raw!r}")


def env_int(name: str, default: int) -> int:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        return int(raw)
    except ValueError:
        raise ImproperlyConfigured(f"{name} must be an integer, got {raw!r}") from None


def env_float(name: str, default: float) -> float:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        return float(raw)
    except ValueError:
        raise ImproperlyConfigured(f"{name} must be a number, got {raw!r}") from None


def env_list(name: str, default: str) -> list[str]:
    return [item.strip() for item in env_str(name, default).split(",") if item.strip()]


def database_from_url(url: str) -> dict:
    """Turn postgres://user:password@host:port/name into a Django DATABASES entry."""
    parsed = urlparse(url)
    if parsed.scheme not in {"postgres", "postgresql"}:
        raise ImproperlyConfigured(f"DATABASE_URL must start with postgres://, got {url!r}")
    name = unquote(parsed.path.lstrip("/"))
    if not name:
        raise ImproperlyConfigured("DATABASE_URL must name a database")
    return {
        "ENGINE": "django.db.backends.postgresql",
        "NAME": name,
        "USER": unquote(parsed.username or "postgres"),
        "PASSWORD": unquote(parsed.password or ""),
        "HOST": parsed.hostname or "127.0.0.1",
        "PORT": str(parsed.port or 5432),
    }


# ---------------------------------------------------------------- core

DEV_SECRET_KEY = "dev-only-insecure-secret-key-change-me"
DEBUG = env_bool("DJANGO_DEBUG", False)
SECRET_KEY = env_str("DJANGO_SECRET_KEY", DEV_SECRET_KEY)
if not DEBUG and SECRET_KEY == DEV_SECRET_KEY and not env_bool("ORDERPIPE_ALLOW_DEV_SECRET", False):
    raise ImproperlyConfigured(
        "DJANGO_SECRET_KEY is the development key: set a real one, or DJANGO_DEBUG=true for local use"
    )
ALLOWED_HOSTS = env_list("DJANGO_ALLOWED_HOSTS", "localhost,127.0.0.1,[::1]")
CSRF_TRUSTED_ORIGINS = env_list("DJANGO_CSRF_TRUSTED_ORIGINS", "")
PORT = env_int("PORT", 8000)
# HTTP and WebSockets may be served on different ports of the same host (gunicorn for HTTP, daphne for /ws/: see
# gunicorn.conf.py). Set, the pages open their sockets on this port of the host they were loaded from; empty, on the
# page's own origin. The session cookie and the sockets' origin check go by host, not port, so both work across.
WEBSOCKET_PORT = env_int("ORDERPIPE_WEBSOCKET_PORT", 0) or None
if WEBSOCKET_PORT is not None and not 0 < WEBSOCKET_PORT < 65536:
    raise ImproperlyConfigured(f"ORDERPIPE_WEBSOCKET_PORT must be a TCP port, got {WEBSOCKET_PORT}")

INSTALLED_APPS = [
    "daphne",
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "rest_framework",
    "drf_spectacular",
    "drf_spectacular_sidecar",
    "channels",
    "orders",
    "worker",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    # Serves /static/ under gunicorn and daphne alike, before the rest of the stack touches the request.
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "orders.middleware.DatabaseUnavailableMiddleware",
]

ROOT_URLCONF = "orderpipe.urls"
ASGI_APPLICATION = "orderpipe.asgi.application"
WSGI_APPLICATION = "orderpipe.wsgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]

# ---------------------------------------------------------------- PostgreSQL

DATABASE_URL = env_str("DATABASE_URL", "postgres://postgres@127.0.0.1:5432/orderpipe")
DATABASES = {"default": database_from_url(DATABASE_URL)}
# Under ASGI every request runs in a fresh thread, so persistent connections (CONN_MAX_AGE > 0) leak one
# connection per request. Django's psycopg pool hands connections back instead.
DATABASES["default"]["CONN_MAX_AGE"] = 0
# pytest gives every run its own test database (see orderpipe/testing.py), so runs never trip over each other.
DATABASES["default"]["TEST"] = {"NAME": env_str("DATABASE_TEST_NAME", "") or None}
DATABASES["default"]["OPTIONS"] = {
    "connect_timeout": env_int("DATABASE_CONNECT_TIMEOUT", 3),
}
if env_bool("DATABASE_POOL", True):
    DATABASES["default"]["OPTIONS"]["pool"] = {
        "min_size": env_int("DATABASE_POOL_MIN", 1),
        "max_size": env_int("DATABASE_POOL_MAX", 20),
        "timeout": env_float("DATABASE_POOL_TIMEOUT", 5.0),
    }
# After a database restart every idle pooled connection is dead; with health checks the pool checks each one as
# it is handed out (one cheap round trip), which turns that into a reconnect instead of one 503 per stale one.
DATABASES["default"]["CONN_HEALTH_CHECKS"] = True
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

# ---------------------------------------------------------------- RabbitMQ

AMQP_URL = env_str("AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/%2F")
# Several nodes of one cluster may be named, comma-separated; clients connect to whichever answers (worker/broker.py).
AMQP_URLS = env_list("AMQP_URL", AMQP_URL)
if not AMQP_URLS or not all(url.startswith(("amqp://", "amqps://")) for url in AMQP_URLS):
    # Not echoed: the value holds passwords.
    raise ImproperlyConfigured("AMQP_URL must be one or more comma-separated amqp:// or amqps:// URLs")
RABBITMQ_MANAGEMENT_URL = env_str("RABBITMQ_MANAGEMENT_URL", "")
# Every exchange, queue, Redis key, channel-layer group and NOTIFY channel carries this prefix, so a test run
# (which picks its own) never touches the queues or keys of a running instance.
ORDERPIPE_PREFIX = env_str("ORDERPIPE_PREFIX", "orderpipe")
WORKER_PREFETCH = env_int("WORKER_PREFETCH", 10)
# Orders a worker processes at once (threads). Each step waits for its commit to reach the disk, so one thread
# leaves the CPU idle most of the time; a few overlap those waits (see bench/ and the README's Benchmark section).
WORKER_CONCURRENCY = env_int("WORKER_CONCURRENCY", 4)
AMQP_HEARTBEAT = env_int("AMQP_HEARTBEAT", 30)
AMQP_DELIVERY_LIMIT = env_int("AMQP_DELIVERY_LIMIT", 5)
RETRY_DELAYS_MS = [int(x) for x in env_list("ORDERPIPE_RETRY_DELAYS_MS", "1000,5000,30000")]
RELAY_BATCH_SIZE = env_int("RELAY_BATCH_SIZE", 100)
RELAY_POLL_INTERVAL = env_float("RELAY_POLL_INTERVAL", 2.0)

# ---------------------------------------------------------------- Redis

REDIS_URL = env_str("REDIS_URL", "redis://127.0.0.1:6379/0")
ORDER_CACHE_TTL = env_int("ORDER_CACHE_TTL", 3600)
CACHES = {
    "default": {
        "BACKEND": "django_redis.cache.RedisCache",
        "LOCATION": REDIS_URL,
        "KEY_PREFIX": ORDERPIPE_PREFIX,
        "TIMEOUT": ORDER_CACHE_TTL,
        "OPTIONS": {
            "CLIENT_CLASS": "django_redis.client.DefaultClient",
            # A dead Redis must make the cache miss quickly, never fail or hang a request.
            "SOCKET_CONNECT_TIMEOUT": env_float("REDIS_CONNECT_TIMEOUT", 0.25),
            "SOCKET_TIMEOUT": env_float("REDIS_SOCKET_TIMEOUT", 0.25),
            "IGNORE_EXCEPTIONS": True,
        },
    }
}
DJANGO_REDIS_LOG_IGNORED_EXCEPTIONS = True

CHANNEL_LAYERS = {
    "default": {
        "BACKEND": "channels_redis.core.RedisChannelLayer",
        "CONFIG": {
            "hosts": [REDIS_URL],
            "prefix": f"{ORDERPIPE_PREFIX}:asgi",
            "capacity": 1000,
            "expiry": 30,
        },
    }
}

# ---------------------------------------------------------------- email

EMAIL_BACKEND = env_str("EMAIL_BACKEND", "django.core.mail.backends.dummy.EmailBackend")
DEFAULT_FROM_EMAIL = env_str("DEFAULT_FROM_EMAIL", "orders@orderpipe.local")

# ---------------------------------------------------------------- sandbox

ORDERPIPE_SANDBOX = env_bool("ORDERPIPE_SANDBOX", True)

# ---------------------------------------------------------------- REST framework

REST_FRAMEWORK = {
    "DEFAULT_RENDERER_CLASSES": [
        "rest_framework.renderers.JSONRenderer",
        "rest_framework.renderers.BrowsableAPIRenderer",
    ],
    "DEFAULT_PARSER_CLASSES": ["rest_framework.parsers.JSONParser"],
    "DEFAULT_PAGINATION_CLASS": "rest_framework.pagination.PageNumberPagination",
    "PAGE_SIZE": 20,
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
    "DEFAULT_AUTHENTICATION_CLASSES": [
        "rest_framework.authentication.SessionAuthentication",
        "rest_framework.authentication.BasicAuthentication",
    ],
    "EXCEPTION_HANDLER": "orders.api_errors.exception_handler",
}
SPECTACULAR_SETTINGS = {
    "TITLE": "orderpipe API",
    "DESCRIPTION": "Accept orders, watch them travel through PostgreSQL, RabbitMQ and Redis.",
    "VERSION": "1.0.0",
    "SERVE_INCLUDE_SCHEMA": False,
    "SWAGGER_UI_DIST": "SIDECAR",
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
    "REDOC_DIST": "SIDECAR",
    "COMPONENT_SPLIT_REQUEST": True,
}

# ---------------------------------------------------------------- i18n, static

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True
STATIC_URL = "static/"
STATICFILES_DIRS = [BASE_DIR / "static"]
STATIC_ROOT = BASE_DIR / "staticfiles"
# WhiteNoise serves what collectstatic put in STATIC_ROOT (the Docker image) and, with finders, the app's static
# directories as they are, so `make run` and the tests need no collectstatic.
WHITENOISE_USE_FINDERS = True
# Without collectstatic STATIC_ROOT does not exist, which WhiteNoise reports at every start although the finders
# serve everything (evansd/whitenoise#215). Only that one warning is silenced.
warnings.filterwarnings("ignore", message=f"No directory at: {re.escape(str(STATIC_ROOT))}", category=UserWarning)

# ---------------------------------------------------------------- logging

LOG_LEVEL = env_str("LOG_LEVEL", "INFO")
# text (human-readable) or json (one JSON object per line, for log shippers).
LOG_FORMAT = env_str("LOG_FORMAT", "text")
if LOG_FORMAT not in {"text", "json"}:
    raise ImproperlyConfigured(f"LOG_FORMAT must be text or json, got {LOG_FORMAT!r}")
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {
        "text": {"format": "%(asctime)s %(levelname)s %(name)s %(message)s"},
        "json": {"()": "orderpipe.logformat.JsonFormatter"},
    },
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": LOG_FORMAT}},
    "root": {"handlers": ["console"], "level": LOG_LEVEL},
    "loggers": {
        "pika": {"level": "WARNING"},
        "django.request": {"level": "ERROR"},
    },
}
