"""Operational endpoints: liveness, readiness (the dependency checks of worker/dependencies.py) and /metrics.

`/healthz` says the process is alive and touches nothing else (a liveness probe that failed on a database outage
would restart healthy web processes for nothing). `/readyz` checks PostgreSQL, RabbitMQ and Redis, each with its
own short-lived connection and a short timeout, at most once per READINESS_TTL per process whatever the request
rate (it is open to anyone), and names the ones that failed to staff. `/metrics` is the Prometheus scrape (see
orderpipe/scrape.py). Relays and workers run the same checks before they start (worker/startup.py).
"""

from __future__ import annotations

import copy
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, NotRequired, TypedDict

from django.conf import settings
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.views.decorators.cache import never_cache
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_safe

from orderpipe import scrape
from orders.permissions import can_scrape_metrics, is_staff
from worker.dependencies import DependencyUnavailable, check_postgresql, check_rabbitmq, check_redis

CHECKS: dict[str, Callable[[], None]] = {
    "postgresql": lambda: check_postgresql(),
    "rabbitmq": lambda: check_rabbitmq(),
    "redis": lambda: check_redis(),
}


class CheckResult(TypedDict):
    ok: bool
    ms: float
    error: NotRequired[str]


def run_check(check: Callable[[], None]) -> CheckResult:
    started = time.monotonic()
    try:
        check()
    except DependencyUnavailable as exc:
        return {"ok": False, "ms": round((time.monotonic() - started) * 1000, 1), "error": str(exc)}
    return {"ok": True, "ms": round((time.monotonic() - started) * 1000, 1)}


def readiness() -> dict[str, Any]:
    """Run every check at once, so the answer takes as long as the slowest check, not the sum of them."""
    with ThreadPoolExecutor(max_workers=len(CHECKS), thread_name_prefix="readyz") as pool:
        futures = {name: pool.submit(run_check, check) for name, check in CHECKS.items()}
        checks = {name: future.result() for name, future in futures.items()}
    failed = [name for name, result in checks.items() if not result["ok"]]
    return {"status": "unavailable" if failed else "ready", "failed": failed, "checks": checks}


# Each probe opens a connection to every dependency: requests within this long of the last probe share its answer.
READINESS_TTL = 1.0


class CachedReadiness:
    """`readiness()`, run at most once per READINESS_TTL in this process. The lock is held during the probe, so the
    requests that arrive meanwhile wait for its answer instead of starting probes of their own."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.forget()

    def forget(self) -> None:
        self.probed_at = float("-inf")
        self.state: dict[str, Any] = {}

    def get(self) -> dict[str, Any]:
        with self.lock:
            if time.monotonic() - self.probed_at >= READINESS_TTL:
                self.state = readiness()
                self.probed_at = time.monotonic()
            return copy.deepcopy(self.state)


cached_readiness = CachedReadiness()


# ---------------------------------------------------------------- views


# csrf_exempt: these only read, and a POST must be the 405 of require_safe (JSON: orders/middleware.py), not the
# CSRF check's 403 page.


@csrf_exempt
@require_safe
@never_cache
def healthz(request: HttpRequest) -> JsonResponse:
    return JsonResponse({"status": "alive"})


@csrf_exempt
@require_safe
@never_cache
def readyz(request: HttpRequest) -> JsonResponse:
    state = cached_readiness.get()
    status = 503 if state["failed"] else 200
    if settings.DEBUG or is_staff(request.user):
        return JsonResponse(state, status=status)
    # A probe needs the verdict only; which dependency failed, and how (hosts, ports, users), is for staff.
    return JsonResponse({"status": state["status"]}, status=status)


@csrf_exempt
@require_safe
@never_cache
def metrics_view(request: HttpRequest) -> HttpResponse:
    if not can_scrape_metrics(request):
        response = JsonResponse(
            {
                "detail": "Metrics need Authorization: Bearer <ORDERPIPE_METRICS_TOKEN> or a staff login.",
                "code": "forbidden",
            },
            status=403,
        )
        response["WWW-Authenticate"] = "Bearer"
        return response
    return HttpResponse(scrape.render_web(), content_type=scrape.CONTENT_TYPE)
