"""Middleware: database outages, JSON errors on the machine-facing URLs, and the Content-Security-Policy header."""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable
from http import HTTPStatus

from django.conf import settings
from django.contrib.auth.forms import UsernameField
from django.contrib.messages.middleware import MessageMiddleware
from django.core.cache import cache
from django.db import InterfaceError, OperationalError
from django.http import HttpRequest, HttpResponse, JsonResponse
from rest_framework.renderers import BrowsableAPIRenderer
from rest_framework.throttling import BaseThrottle

from orders.api_errors import DATABASE_UNAVAILABLE

log = logging.getLogger(__name__)

# Where clients are programs: every error there is JSON, whoever produced it (Django's 404, the CSRF check, a 500).
MACHINE_PATHS = ("/api/", "/healthz", "/readyz", "/metrics")
# TRACE echoes the request (cookies included) back; nothing here serves these.
REFUSED_METHODS = {"TRACE", "TRACK", "CONNECT"}
BODY_METHODS = {"POST", "PUT", "PATCH"}
PAGE_METHODS = "GET, HEAD, POST, OPTIONS"
# Headers of the original error response worth keeping on its JSON replacement.
KEPT_HEADERS = ("Allow", "Retry-After", "WWW-Authenticate")


def json_error(status: int, detail: str, code: str, **headers: str) -> JsonResponse:
    response = JsonResponse({"detail": detail, "code": code}, status=status)
    for name, value in headers.items():
        response[name.replace("_", "-")] = value
    return response


def is_machine_path(path: str) -> bool:
    return path.startswith(MACHINE_PATHS)


class ApiErrorsMiddleware:
    """Refuses TRACE on the pages; on the machine paths refuses bodies it cannot or will not read (before any view
    reads them), and turns every non-JSON error response into `{"detail", "code"}` with the same status."""

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        if not is_machine_path(request.path):
            if request.method in REFUSED_METHODS:
                # The pages' and admin's views take any method; the machine paths' views (DRF, require_safe) refuse
                # these themselves, with the Allow header only they can know.
                return json_error(
                    405, f'Method "{request.method}" not allowed.', "method_not_allowed", Allow=PAGE_METHODS
                )
            return self.get_response(request)
        refused = self.refuse_body(request)
        if refused is not None:
            return refused
        response = self.get_response(request)
        if response.status_code >= 400 and not self.is_json(response):
            return self.as_json(response)
        return response

    @staticmethod
    def refuse_body(request: HttpRequest) -> HttpResponse | None:
        if request.method not in BODY_METHODS:
            return None
        raw_length = request.headers.get("content-length") or ""
        if not raw_length and "chunked" in request.headers.get("transfer-encoding", "").lower():
            # WSGI gives Django no length for a chunked body, and Django then reads it as empty: an order would be
            # refused for a missing email it did send. Say what is wrong instead.
            return json_error(
                411,
                "Send the body with a Content-Length (chunked transfer encoding is not supported).",
                "length_required",
            )
        try:
            length = int(raw_length or 0)
        except ValueError:
            return json_error(400, "Malformed Content-Length header.", "bad_request")
        limit = settings.DATA_UPLOAD_MAX_MEMORY_SIZE
        if limit is not None and length > limit:
            return json_error(413, f"The body is larger than {limit} bytes.", "request_too_large")
        return None

    def process_view(
        self, request: HttpRequest, view_func: Callable[..., HttpResponse], view_args: tuple, view_kwargs: dict
    ) -> HttpResponse | None:
        """A method the API view does not implement is a 405 before the permission check, which DRF runs first and
        would answer 403 to someone who may not call the view at all: the method is wrong whoever sends it."""
        view_class = getattr(view_func, "cls", None)
        if view_class is None or not is_machine_path(request.path) or request.method is None:
            return None
        implemented = [m for m in view_class.http_method_names if hasattr(view_class, m)]
        if "get" in implemented and "head" not in implemented:
            implemented.append("head")  # Django's View answers HEAD with GET
        if request.method.lower() in implemented:
            return None
        allow = ", ".join(m.upper() for m in view_class.http_method_names if m in implemented)
        return json_error(405, f'Method "{request.method}" not allowed.', "method_not_allowed", Allow=allow)

    @staticmethod
    def is_json(response: HttpResponse) -> bool:
        # A DRF Response rendered as JSON, or as the browsable API's HTML because the client asked for it, is left as
        # it is; one rendered otherwise (the schema's YAML, Swagger UI's template) becomes JSON like any error here.
        if isinstance(getattr(response, "accepted_renderer", None), BrowsableAPIRenderer):
            return True
        return response.get("Content-Type", "").startswith("application/json")

    @staticmethod
    def as_json(response: HttpResponse) -> JsonResponse:
        status = response.status_code
        try:
            phrase = HTTPStatus(status).phrase
        except ValueError:
            phrase = "Error"
        kept = {name: response[name] for name in KEPT_HEADERS if response.has_header(name)}
        detail = {404: "Not found.", 403: "Forbidden (CSRF check failed or not allowed).", 405: "Method not allowed."}
        replacement = json_error(status, detail.get(status, f"{phrase}."), phrase.lower().replace(" ", "_"))
        for name, value in kept.items():
            replacement[name] = value
        return replacement


class ContentSecurityPolicyMiddleware:
    """Sets settings.CONTENT_SECURITY_POLICY on every response that has none (Django 5.2 has no CSP of its own)."""

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        response = self.get_response(request)
        if settings.CONTENT_SECURITY_POLICY and not response.has_header("Content-Security-Policy"):
            response["Content-Security-Policy"] = settings.CONTENT_SECURITY_POLICY
        return response


LOGIN_PATHS = ("/admin/login/", "/api-auth/login/")


class LoginThrottleMiddleware:
    """Two counters of failed logins within LOGIN_FAILURE_WINDOW seconds (counted from the first failure), checked
    before the password is: LOGIN_FAILURE_LIMIT per username and address, and LOGIN_ADDRESS_FAILURE_LIMIT per address
    whatever the usernames. Past either, the login answers 429 without hashing a password, so one address can
    neither guess at one account nor make the server hash passwords for random usernames (~0.5 s of CPU each).
    The username is counted as the login form reads it (`username_key`): in fullwidth letters it is the same one.
    The counters live in Redis (the default cache, under this instance's prefix), so every gunicorn worker shares
    them; a success clears its username's counter, never the address's."""

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        if request.method != "POST" or request.path not in LOGIN_PATHS:
            return self.get_response(request)
        address = f"login-failures:{client_address(request)}"
        pair = f"{address}:{username_key(request.POST.get('username', ''))}"
        counts = cache.get_many([address, pair])
        if (
            counts.get(pair, 0) >= settings.LOGIN_FAILURE_LIMIT
            or counts.get(address, 0) >= settings.LOGIN_ADDRESS_FAILURE_LIMIT
        ):
            window = settings.LOGIN_FAILURE_WINDOW
            response = HttpResponse(
                f"Too many failed logins. Try again in {window // 60} minutes.\n", status=429, content_type="text/plain"
            )
            response["Retry-After"] = str(window)
            return response
        response = self.get_response(request)
        if request.user.is_authenticated:
            cache.delete(pair)
        elif response.status_code == 200:  # the login form again, with its error: a failed attempt
            self.count_failure(pair)
            self.count_failure(address)
        return response

    @staticmethod
    def count_failure(key: str) -> None:
        # add() starts the window with the first failure; later ones only count, they do not extend it.
        if cache.add(key, 1, timeout=settings.LOGIN_FAILURE_WINDOW) is False:
            try:
                cache.incr(key)
            except ValueError:  # expired between add and incr
                cache.add(key, 1, timeout=settings.LOGIN_FAILURE_WINDOW)


def client_address(request: HttpRequest) -> str:
    """The address the API throttles count by (REMOTE_ADDR, or ORDERPIPE_NUM_PROXIES' X-Forwarded-For entry)."""
    # get_ident reads only request.META, which a plain HttpRequest has as well as DRF's Request.
    return BaseThrottle().get_ident(request)  # type: ignore[arg-type]


def username_key(raw: str) -> str:
    """The username as the login form hands it to authenticate() (stripped, NFKC-normalized by Django's
    UsernameField), case-folded on top so that case variants share one counter; hashed, not stored."""
    username = UsernameField().to_python(raw) or ""
    return hashlib.sha256(username.casefold().encode()).hexdigest()[:32]


class DatabaseUnavailableMiddleware:
    """Outside the REST API (admin, pages), a database outage still answers 503 with a JSON body, not a 500 page."""

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        return self.get_response(request)

    def process_exception(self, request: HttpRequest, exception: Exception) -> HttpResponse | None:
        if isinstance(exception, (OperationalError, InterfaceError)):
            log.warning("database unavailable: %s", exception)
            response = JsonResponse(DATABASE_UNAVAILABLE, status=503)
            response["Retry-After"] = "5"
            return response
        return None


class PageMessageMiddleware(MessageMiddleware):
    """django.contrib.messages for the pages and the admin only. The machine paths never show a message, and setting
    up its storage (a cookie and a session backend) for every API request was work thrown away. Django's own
    process_response already skips a request that has no storage."""

    def process_request(self, request: HttpRequest) -> None:
        if not is_machine_path(request.path):
            super().process_request(request)
