"""Request limits for the REST API (rates in settings: ORDERPIPE_THROTTLE_*). DRF keeps the counters in the default
cache, i.e. Redis under this instance's prefix, so every gunicorn worker shares them. A Redis outage makes the cache
miss (IGNORE_EXCEPTIONS), and the throttles then let requests through rather than failing them.

Clients are told apart by user id, or by address when anonymous: REMOTE_ADDR, or the X-Forwarded-For entry that
ORDERPIPE_NUM_PROXIES trusted proxies put there (never the whole header, which a client can fill with anything).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from rest_framework.settings import api_settings
from rest_framework.throttling import AnonRateThrottle, SimpleRateThrottle, UserRateThrottle

if TYPE_CHECKING:  # DRF imports this module while rest_framework.views is still loading
    from rest_framework.request import Request
    from rest_framework.views import APIView


class RatesFromSettings:
    """DRF copies the rates into a class attribute when it is imported; read them when the throttle is made (once
    per request) instead, so a test can change them with override_settings."""

    scope: str | None

    def get_rate(self) -> str | None:
        rate = api_settings.DEFAULT_THROTTLE_RATES.get(self.scope) if self.scope else None
        return None if rate is None else str(rate)


class AnonThrottle(RatesFromSettings, AnonRateThrottle):
    pass


class UserThrottle(RatesFromSettings, UserRateThrottle):
    pass


class OrderPlacementThrottle(RatesFromSettings, SimpleRateThrottle):
    """A stricter rate for POST /api/orders/ (each accepted order reserves stock), per user or per address. Staff
    place bursts through the sandbox's burst control, not through this endpoint, so they are held to it too."""

    scope = "orders"

    def allow_request(self, request: Request, view: APIView) -> bool:
        if request.method != "POST":
            return True
        return super().allow_request(request, view)

    def get_cache_key(self, request: Request, view: APIView) -> str:
        ident = request.user.pk if request.user and request.user.is_authenticated else self.get_ident(request)
        return self.cache_format % {"scope": self.scope, "ident": ident}
