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
# Keys published in this repository (the dev default, .env.example's Compose key): anyone can sign sessions with
# them, so outside DEBUG they are refused like an empty key.
PUBLIC_SECRET_KEYS = {DEV_SECRET_KEY, "compose-demo-secret-key-replace-me-for-anything-shared"}
DEBUG = env_bool("DJANGO_DEBUG", False)
SECRET_KEY = env_str("DJANGO_SECRET_KEY", DEV_SECRET_KEY)
if not DEBUG and not env_bool("ORDERPIPE_ALLOW_DEV_SECRET", False):
    if not SECRET_KEY.strip():
        raise ImproperlyConfigured("DJANGO_SECRET_KEY is empty: set a real one, or DJANGO_DEBUG=true for local use")
    if SECRET_KEY in PUBLIC_SECRET_KEYS:
        raise ImproperlyConfigured(
            "DJANGO_SECRET_KEY is a published demo key: set a real one, or DJANGO_DEBUG=true for local use"
        )
ALLOWED_HOSTS = env_list("DJANGO_ALLOWED_HOSTS", "localhost,127.0.0.1,[::1]")
CSRF_TRUSTED_ORIGINS = env_list("DJANGO_CSRF_TRUSTED_ORIGINS", "")
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
    "orderpipe.lessons",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "orders.middleware.ContentSecurityPolicyMiddleware",
    # Before CSRF and the views, so that what they answer in HTML on /api/ (a CSRF 403, a 404) becomes JSON.
    "orders.middleware.ApiErrorsMiddleware",
    # Serves /static/ under gunicorn and daphne alike, before the rest of the stack touches the request.
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "orders.middleware.LoginThrottleMiddleware",
    # django.contrib.messages, except on the machine paths (/api/ ...), which never show a message.
    "orders.middleware.PageMessageMiddleware",
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
# Every exchange, queue, Redis key, channel-layer group and NOTIFY channel carries this prefix, so a test run
# (which picks its own) never touches the queues or keys of a running instance.
ORDERPIPE_PREFIX = env_str("ORDERPIPE_PREFIX", "orderpipe")
# Messages a worker holds unacknowledged. What it holds is the batch its steps run together (orders/batch.py): under a
# backlog, 100 lets batches grow (15-17 orders, against 3-4 with 10 and 7-9 with 50, 2 workers draining 1,000 orders:
# the README's Benchmark), and a lone message is still a batch of one, never a wait.
# What a dead worker costs: the broker returns every message it held, and the quorum queue counts a delivery against
# each; a message returned more than AMQP_DELIVERY_LIMIT times is dead-lettered (worker/topology.py). One kill (a
# deploy, an OOM) spends one of those deliveries of each order in hand, up to WORKER_PREFETCH of them. A crash loop (one
# message that kills every worker taking it) spends one at every kill of each order held beside it, so those still in
# hand at the kill that parks it are dead-lettered with it. Hence the lessons that crash workers over and over set
# their own prefetch through the sandbox (worker_prefetch 1: only the crashing message in hand), never this default;
# a deployment that expects repeated kills raises AMQP_DELIVERY_LIMIT.
WORKER_PREFETCH = env_int("WORKER_PREFETCH", 100)
# Orders a worker processes at once (threads). A step is a few round trips to PostgreSQL and Redis, and a thread
# waiting on one holds no CPU, so a few threads keep one worker process near a full core (docs/09-benchmark.md:
# the CPU, not the disk, is the limit). Past that, run more worker processes rather than more threads.
WORKER_CONCURRENCY = env_int("WORKER_CONCURRENCY", 4)
# Prometheus metrics of the relay and the worker (`--metrics-port` wins): off unless set. The image sets 9101 and
# 9102, so that no two roles share a port on a host network (gunicorn's and daphne's /metrics are on 8000 and 8001).
RELAY_METRICS_PORT = env_int("RELAY_METRICS_PORT", 0) or None
WORKER_METRICS_PORT = env_int("WORKER_METRICS_PORT", 0) or None
AMQP_HEARTBEAT = env_int("AMQP_HEARTBEAT", 30)
AMQP_DELIVERY_LIMIT = env_int("AMQP_DELIVERY_LIMIT", 5)
RETRY_DELAYS_MS = [int(x) for x in env_list("ORDERPIPE_RETRY_DELAYS_MS", "1000,5000,30000")]
RELAY_BATCH_SIZE = env_int("RELAY_BATCH_SIZE", 100)
RELAY_POLL_INTERVAL = env_float("RELAY_POLL_INTERVAL", 2.0)
# The rabbitmqctl `make run`'s supervisor runs to set and clear the full-queue lesson's policy (worker/queue_policy.py).
RABBITMQCTL = env_str("RABBITMQCTL", "rabbitmqctl")
# Outbox rows the relay publishes before waiting for their confirms (worker/relay.py); 1 waits for each in turn.
RELAY_CONFIRM_WINDOW = env_int("RELAY_CONFIRM_WINDOW", 100)
if RELAY_CONFIRM_WINDOW < 1:
    raise ImproperlyConfigured(f"RELAY_CONFIRM_WINDOW must be at least 1, got {RELAY_CONFIRM_WINDOW}")
# The sweeper (run by the relay) re-sends an order whose message is nowhere to be found after SWEEP_AFTER seconds
# without progress; it looks every SWEEP_EVERY seconds. SWEEP_AFTER=0 turns it off.
SWEEP_AFTER = env_float("ORDERPIPE_SWEEP_AFTER", 60.0)
SWEEP_EVERY = env_float("ORDERPIPE_SWEEP_EVERY", 10.0)
# Tests only: "claimed" or "published" makes the relay SIGKILL itself at that point of its first batch.
RELAY_CRASH_AT = env_str("ORDERPIPE_RELAY_CRASH_AT", "")
if RELAY_CRASH_AT not in {"", "claimed", "published"}:
    raise ImproperlyConfigured(f"ORDERPIPE_RELAY_CRASH_AT must be claimed or published, got {RELAY_CRASH_AT!r}")
# Tests only: a step name ("charge payment", ...) parks a worker's batch inside that step's transaction, after its
# effects (for "charge payment": after the gateway charged), before the commit, so a test can SIGKILL it there.
BATCH_PAUSE_AT = env_str("ORDERPIPE_BATCH_PAUSE_AT", "")
if BATCH_PAUSE_AT not in {"", "reserve inventory", "charge payment", "notify customer", "complete"}:
    raise ImproperlyConfigured(f"ORDERPIPE_BATCH_PAUSE_AT must be one of the steps' names, got {BATCH_PAUSE_AT!r}")

# ---------------------------------------------------------------- Redis

REDIS_URL = env_str("REDIS_URL", "redis://127.0.0.1:6379/0")
ORDER_CACHE_TTL = env_int("ORDER_CACHE_TTL", 3600)
# Two ways into Redis share this cache's connection pool: the raw client (`get_redis_connection`, in orders/cache.py,
# orders/live.py and orderpipe/dashboard/), with its own key names, TTLs and handling of Redis errors; and Django's
# cache API (`cache.get`/`cache.set`: DRF's throttles, the login counter, the catalog's version token), to which
# django-redis's KEY_PREFIX and IGNORE_EXCEPTIONS below apply.
CACHES = {
    "default": {
        "BACKEND": "django_redis.cache.RedisCache",
        "LOCATION": REDIS_URL,
        # Django's cache API (the API throttles and the login counter; orders/cache.py uses the raw client) keeps its
        # keys under this instance's prefix, and a dead Redis makes it miss instead of failing the request.
        "KEY_PREFIX": ORDERPIPE_PREFIX,
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

# The channel layer may use another Redis URL than the cache: `make run`'s supervisor sends the cache through a proxy
# a learner can cut (worker/links.py), and keeps the page's live updates on the real Redis.
CHANNEL_LAYER_REDIS_URL = env_str("CHANNEL_LAYER_REDIS_URL", "") or REDIS_URL
# Every handshake borrows a connection from the layer's pool; when all are busy it waits up to the timeout, then the
# socket is closed with 4503 (orderpipe/dashboard/channel_layer.py). One pool per daphne process.
CHANNEL_LAYERS = {
    "default": {
        "BACKEND": "orderpipe.dashboard.channel_layer.PooledRedisChannelLayer",
        "CONFIG": {
            "hosts": [CHANNEL_LAYER_REDIS_URL],
            "prefix": f"{ORDERPIPE_PREFIX}:asgi",
            "capacity": 1000,
            "expiry": 30,
            "pool_size": env_int("CHANNEL_LAYER_POOL_SIZE", 100),
            "pool_timeout": env_float("CHANNEL_LAYER_POOL_TIMEOUT", 2.0),
        },
    }
}
# Live sockets (orderpipe/dashboard/consumers.py): per client (user, or address when anonymous) across all daphne
# processes; a crashed process's sockets stop counting after WS_SLOT_TTL seconds.
WS_MAX_CONNECTIONS_PER_CLIENT = env_int("WS_MAX_CONNECTIONS_PER_CLIENT", 20)
WS_SLOT_TTL = env_float("WS_SLOT_TTL", 60.0)
WS_RESYNC_INTERVAL = env_float("WS_RESYNC_INTERVAL", 5.0)

# ---------------------------------------------------------------- authentication

# Django's ModelBackend, except that the demo login (`make run`) is refused outside DEBUG: orders/demo_login.py.
AUTHENTICATION_BACKENDS = ["orders.demo_login.DemoLoginBackend"]

# ---------------------------------------------------------------- email

# orderpipe.mail.LoggingEmailBackend logs one line per email (masked recipient, subject; never the body): what
# .env.example uses. Django's console backend prints whole emails, so it is refused under LOG_FORMAT=json (below).
EMAIL_BACKEND = env_str("EMAIL_BACKEND", "django.core.mail.backends.dummy.EmailBackend")
CONSOLE_EMAIL_BACKEND = "django.core.mail.backends.console.EmailBackend"
DEFAULT_FROM_EMAIL = env_str("DEFAULT_FROM_EMAIL", "orders@orderpipe.local")

# ---------------------------------------------------------------- orders

# Units per order line (each sku at most once per order) and per order: one order, anonymous or not, takes no more
# than this from the stock. A larger quantity is a 400 that says the limit.
ORDER_MAX_LINE_QUANTITY = env_int("ORDERPIPE_MAX_LINE_QUANTITY", 10)
ORDER_MAX_QUANTITY = env_int("ORDERPIPE_MAX_ORDER_QUANTITY", 25)
if not 1 <= ORDER_MAX_LINE_QUANTITY <= ORDER_MAX_QUANTITY:
    raise ImproperlyConfigured("ORDERPIPE_MAX_LINE_QUANTITY must be between 1 and ORDERPIPE_MAX_ORDER_QUANTITY")

# ---------------------------------------------------------------- sandbox

# The controls, fault injection and unsafe modes (orders/sandbox/). On with DEBUG (`make run`), off in production
# unless asked for: a staff account could otherwise switch off the guarantees of a real deployment.
ORDERPIPE_SANDBOX = env_bool("ORDERPIPE_SANDBOX", DEBUG)

# ---------------------------------------------------------------- security
# The permission model is in orders/permissions.py and docs/05-security.md.

# Behind a TLS-terminating proxy: cookies only over HTTPS, HSTS, and (opt-in) trust the proxy's scheme header and
# redirect plain HTTP. All off by default so `make run` works over http://localhost.
SECURE_COOKIES = env_bool("DJANGO_SECURE_COOKIES", False)
SESSION_COOKIE_SECURE = SECURE_COOKIES
CSRF_COOKIE_SECURE = SECURE_COOKIES
SECURE_HSTS_SECONDS = env_int("DJANGO_SECURE_HSTS_SECONDS", 0)
SECURE_HSTS_INCLUDE_SUBDOMAINS = env_bool("DJANGO_SECURE_HSTS_INCLUDE_SUBDOMAINS", False)
SECURE_HSTS_PRELOAD = env_bool("DJANGO_SECURE_HSTS_PRELOAD", False)
SECURE_SSL_REDIRECT = env_bool("DJANGO_SECURE_SSL_REDIRECT", False)
# Probes and scrapers talk plain HTTP to the process itself, inside the network.
SECURE_REDIRECT_EXEMPT = [r"^healthz$", r"^readyz$", r"^metrics$"]
# Only behind a proxy that sets (and strips from clients) X-Forwarded-Proto; otherwise a client could claim HTTPS.
if env_bool("DJANGO_SECURE_PROXY_SSL_HEADER", False):
    SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
X_FRAME_OPTIONS = "DENY"
# The pages load nothing from elsewhere (no CDN: static files only, Swagger UI from the sidecar package), so the
# policy can be strict: scripts only from files of this site (the dashboard's are; Swagger UI's split view serves its
# setup script as a file too). Inline styles are allowed: DRF's browsable API and login page and Swagger UI's page
# carry some, and a style cannot run code. The WebSockets go to this host (any port: daphne may be beside gunicorn).
CONTENT_SECURITY_POLICY = env_str(
    "ORDERPIPE_CSP",
    "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; font-src 'self'; "
    "connect-src 'self' ws: wss:; object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'",
)
# `*_URL` settings carry passwords: masked on DEBUG error pages (orderpipe/errors.py).
DEFAULT_EXCEPTION_REPORTER_FILTER = "orderpipe.errors.SecretUrlsFilter"
# /metrics outside DEBUG: `Authorization: Bearer <token>` (or a staff session); empty: staff sessions only.
ORDERPIPE_METRICS_TOKEN = env_str("ORDERPIPE_METRICS_TOKEN", "")
# Failed logins (admin, /api-auth/) per client address and username before that pair waits out the window, and per
# address whatever the usernames (orders/middleware.py LoginThrottleMiddleware).
LOGIN_FAILURE_LIMIT = env_int("ORDERPIPE_LOGIN_FAILURE_LIMIT", 5)
LOGIN_ADDRESS_FAILURE_LIMIT = env_int("ORDERPIPE_LOGIN_ADDRESS_FAILURE_LIMIT", 20)
LOGIN_FAILURE_WINDOW = env_int("ORDERPIPE_LOGIN_FAILURE_WINDOW", 900)


def env_rate(name: str, default: str) -> str | None:
    """A DRF rate (`100/minute`), or `off` for none."""
    raw = env_str(name, default).strip()
    if raw.lower() in {"off", "none", ""}:
        return None
    count, _, period = raw.partition("/")
    if not count.isdigit() or period[:1] not in {"s", "m", "h", "d"}:
        raise ImproperlyConfigured(f"{name} must look like 100/minute (or off), got {raw!r}")
    return raw


# ---------------------------------------------------------------- REST framework

REST_FRAMEWORK = {
    "DEFAULT_RENDERER_CLASSES": [
        "orders.renderers.JSONRenderer",
        "rest_framework.renderers.BrowsableAPIRenderer",
    ],
    "DEFAULT_PARSER_CLASSES": ["orders.parsers.JSONParser"],
    "DEFAULT_PAGINATION_CLASS": "rest_framework.pagination.PageNumberPagination",
    "PAGE_SIZE": 20,
    "DEFAULT_SCHEMA_CLASS": "orders.schema.AutoSchema",
    "DEFAULT_AUTHENTICATION_CLASSES": [
        "rest_framework.authentication.SessionAuthentication",
        # Basic, for curl, in DEBUG only: outside it the header is ignored, and the schema does not advertise it.
        "orders.authentication.BasicAuthenticationInDebug",
    ],
    "DEFAULT_PERMISSION_CLASSES": ["orders.permissions.StaffOrDebugReadOnly"],
    # POST /api/orders/ adds OrderPlacementThrottle (scope "orders") to these.
    "DEFAULT_THROTTLE_CLASSES": ["orders.throttles.AnonThrottle", "orders.throttles.UserThrottle"],
    "DEFAULT_THROTTLE_RATES": {
        "anon": env_rate("ORDERPIPE_THROTTLE_ANON", "120/minute"),
        "user": env_rate("ORDERPIPE_THROTTLE_USER", "600/minute"),
        "orders": env_rate("ORDERPIPE_THROTTLE_ORDERS", "30/minute"),
    },
    "NUM_PROXIES": env_int("ORDERPIPE_NUM_PROXIES", 0),
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
    # The schema and Swagger UI follow the API's default: staff in production, anyone in DEBUG.
    "SERVE_PERMISSIONS": ["orders.permissions.StaffOrDebugReadOnly"],
    # The sandbox's endpoints are in the schema only while it is on (orders/schema.py).
    "PREPROCESSING_HOOKS": ["orders.schema.drop_sandbox_endpoints"],
    # The logins the schema advertises: only those in force (Basic is accepted in DEBUG only).
    "AUTHENTICATION_WHITELIST": None if DEBUG else ["rest_framework.authentication.SessionAuthentication"],
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
# Files served at the site's root, such as the /favicon.ico every browser asks for.
WHITENOISE_ROOT = BASE_DIR / "static" / "root"
# Without collectstatic STATIC_ROOT does not exist, which WhiteNoise reports at every start although the finders
# serve everything (evansd/whitenoise#215). Only that one warning is silenced.
warnings.filterwarnings("ignore", message=f"No directory at: {re.escape(str(STATIC_ROOT))}", category=UserWarning)

# ---------------------------------------------------------------- logging

LOG_LEVEL = env_str("LOG_LEVEL", "INFO")
# text (human-readable) or json (one JSON object per line, for log shippers).
LOG_FORMAT = env_str("LOG_FORMAT", "text")
if LOG_FORMAT not in {"text", "json"}:
    raise ImproperlyConfigured(f"LOG_FORMAT must be text or json, got {LOG_FORMAT!r}")
if LOG_FORMAT == "json" and EMAIL_BACKEND == CONSOLE_EMAIL_BACKEND:
    raise ImproperlyConfigured(
        "EMAIL_BACKEND=console prints whole emails, not JSON: use orderpipe.mail.LoggingEmailBackend"
    )
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
