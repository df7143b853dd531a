"""Request limits for the REST API (ORDERPIPE_THROTTLE_*), counted in Redis per user or address, and checked
together in two round trips by `PipelinedThrottles` (docs/10-design-notes.md, "Request limits").
"""

from __future__ import annotations

from collections import defaultdict
from typing import TYPE_CHECKING, Any, TypeGuard

from django.core.cache import cache as default_cache
from rest_framework.settings import api_settings
from rest_framework.throttling import AnonRateThrottle, BaseThrottle, SimpleRateThrottle, UserRateThrottle

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

    def get_cache_key(self, request: Request, view: APIView) -> str | None:
        if request.method != "POST":
            return None  # not throttled
        ident = request.user.pk if request.user and request.user.is_authenticated else self.get_ident(request)
        return self.cache_format % {"scope": self.scope, "ident": ident}


def _pipelinable(throttle: BaseThrottle) -> TypeGuard[SimpleRateThrottle]:
    """A SimpleRateThrottle that checks the request DRF's way, against the default cache and the clock."""
    if not isinstance(throttle, SimpleRateThrottle):
        return False
    kind = type(throttle)
    return (
        kind.allow_request is SimpleRateThrottle.allow_request
        and kind.throttle_success is SimpleRateThrottle.throttle_success
        and kind.throttle_failure is SimpleRateThrottle.throttle_failure
        and throttle.cache is default_cache
    )


def refusals(throttles: list[BaseThrottle], request: Request, view: APIView) -> list[float | None]:
    """The waits of the throttles that refuse the request (none: it may go on), each throttle's history updated as
    DRF's `APIView.check_throttles` loop leaves it: a throttle that lets the request through records it, even when
    another refuses. The histories are read with one `get_many` and written with one `set_many` per duration; a
    throttle that checks in a way of its own is asked on its own."""
    waits: list[float | None] = []
    keyed: list[Any] = []
    for throttle in throttles:
        if not _pipelinable(throttle):
            if not throttle.allow_request(request, view):
                waits.append(throttle.wait())
            continue
        if throttle.rate is None:
            continue
        throttle.key = throttle.get_cache_key(request, view)
        if throttle.key is not None:
            keyed.append(throttle)
    if not keyed:
        return waits
    if len({throttle.key for throttle in keyed}) < len(keyed):
        # Two throttles counting under one key: the second must see the first's write, so ask them one by one.
        return waits + [throttle.wait() for throttle in keyed if not throttle.allow_request(request, view)]
    return waits + _count(keyed)


def _count(keyed: list[Any]) -> list[float | None]:
    """DRF's allow_request for throttles with distinct keys, their histories read and written in one round trip
    each: the waits of those that refuse."""
    waits: list[float | None] = []
    histories = default_cache.get_many([throttle.key for throttle in keyed])
    now = keyed[0].timer()  # DRF's clock, as each throttle reads it (tests set their own)
    writes: dict[int, dict[str, list[float]]] = defaultdict(dict)
    for throttle in keyed:
        # DRF's allow_request, from its history on: forget what is older than the duration, refuse when full.
        throttle.history, throttle.now = histories.get(throttle.key, []), now
        while throttle.history and throttle.history[-1] <= now - throttle.duration:
            throttle.history.pop()
        if len(throttle.history) >= throttle.num_requests:
            waits.append(throttle.wait())
        else:
            throttle.history.insert(0, now)
            writes[throttle.duration][throttle.key] = throttle.history
    for duration, histories_to_write in writes.items():
        default_cache.set_many(histories_to_write, duration)
    return waits


class PipelinedThrottles:
    """A DRF view mixin: the view's throttles checked with `refusals` (shared round trips), answered as DRF does."""

    def check_throttles(self, request: Request) -> None:
        view: Any = self
        waits = refusals(view.get_throttles(), request, view)
        if waits:
            # DRF: the longest wait any refusing throttle asks for, leaving out those that cannot say (None).
            view.throttled(request, max((wait for wait in waits if wait is not None), default=None))
