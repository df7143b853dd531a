"""Operational endpoints and dependency checks.

`/healthz` says the process is alive and touches nothing else (a liveness probe that failed on a database outage
would restart healthy web processes for nothing). `/readyz` checks PostgreSQL, RabbitMQ and Redis, each with its
own short-lived connection and a short timeout, and names the ones that failed. `/metrics` is the Prometheus
scrape (see orderpipe/scrape.py). Relays and workers run the same checks before they start (`wait_for_dependencies`).
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import Any, NotRequired, TypedDict
from urllib.parse import urlsplit, urlunsplit

import psycopg
import redis
from django.conf import settings
from django.db import connections
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.views.decorators.cache import never_cache
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_safe

from orderpipe import scrape
from orders.permissions import can_scrape_metrics, is_staff
from worker import broker

log = logging.getLogger(__name__)

CHECK_TIMEOUT = 2.0


class DependencyUnavailable(Exception):
    """A dependency did not answer; the message is one line, safe to show (passwords redacted)."""


def redact(url: str) -> str:
    """The URL with its password replaced, for messages and logs."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
    return urlunsplit(parts._replace(netloc=netloc))


def check_postgresql(params: Mapping[str, Any] | None = None, *, timeout: float = CHECK_TIMEOUT) -> None:
    """Open a fresh connection (not one from the pool: a pooled connection can look fine while new ones fail)
    and run `SELECT 1`. `params` is a Django database settings dict, the default database's when omitted."""
    params = params or connections["default"].settings_dict
    try:
        with psycopg.connect(
            host=params["HOST"] or "127.0.0.1",
            port=params["PORT"] or 5432,
            user=params["USER"],
            password=params["PASSWORD"] or None,
            dbname=params["NAME"],
            # libpq counts whole seconds (2 at least).
            connect_timeout=max(2, math.ceil(timeout)),
            options=f"-c statement_timeout={int(timeout * 1000)}",
            autocommit=True,
        ) as conn:
            conn.execute("SELECT 1")
    except (psycopg.Error, OSError) as exc:
        reason = " ".join(str(exc).split()) or type(exc).__name__
        raise DependencyUnavailable(f"PostgreSQL unreachable at {params['HOST']}:{params['PORT']}: {reason}") from exc


def check_rabbitmq(url: str | None = None, *, timeout: float = CHECK_TIMEOUT) -> None:
    url = url or settings.AMQP_URL
    try:
        broker.probe(url, timeout)
    except broker.BROKER_ERRORS as exc:
        nodes = ", ".join(redact(node) for node in broker.node_urls(url))
        raise DependencyUnavailable(f"RabbitMQ unreachable at {nodes}: {broker.describe_error(exc)}") from exc


def check_redis(url: str | None = None, *, timeout: float = CHECK_TIMEOUT) -> None:
    url = url or settings.REDIS_URL
    # A client of its own, closed at once: the cache's pooled client retries and swallows errors by design.
    client = redis.Redis.from_url(url, socket_connect_timeout=timeout, socket_timeout=timeout)
    try:
        client.ping()
    except (redis.RedisError, OSError) as exc:
        reason = " ".join(str(exc).split()) or type(exc).__name__
        raise DependencyUnavailable(f"Redis unreachable at {redact(url)}: {reason}") from exc
    finally:
        client.close()


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


def wait_for_dependencies(
    required: Mapping[str, Callable[[], None]],
    *,
    timeout: float,
    interval: float = 1.0,
) -> None:
    """Retry the failing checks every `interval` seconds until all pass; after `timeout` seconds raise
    DependencyUnavailable naming each dependency still down, in one line. Meant for process startup, where a
    dependency that is still booting (Compose, Kubernetes) is normal for a few seconds."""
    deadline = time.monotonic() + timeout
    pending = dict(required)
    while True:
        errors: dict[str, str] = {}
        for name, check in pending.items():
            try:
                check()
            except DependencyUnavailable as exc:
                errors[name] = str(exc)
        pending = {name: pending[name] for name in errors}
        if not pending:
            return
        if time.monotonic() + interval > deadline:
            raise DependencyUnavailable("; ".join(errors.values()) + f" (gave up after {timeout:g} s)")
        log.debug("waiting for %s", ", ".join(pending))
        time.sleep(interval)


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
    state = readiness()
    if not (settings.DEBUG or is_staff(request.user)):
        # Probes need the status and what failed; the errors name hosts, ports and users, for staff only.
        for result in state["checks"].values():
            result.pop("error", None)
    return JsonResponse(state, status=503 if state["failed"] else 200)


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
