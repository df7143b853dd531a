"""What relays and workers do before their main loop: wait for their dependencies, and serve metrics."""

from __future__ import annotations

import logging
from collections.abc import Callable

from django.core.management.base import CommandError
from prometheus_client import start_http_server

from worker import dependencies

log = logging.getLogger(__name__)

DEFAULT_STARTUP_TIMEOUT = 30.0


def require_dependencies(process: str, *, timeout: float, redis_optional: bool = False) -> None:
    """Wait up to `timeout` seconds for PostgreSQL and RabbitMQ (and Redis unless optional), retrying every
    second; then raise CommandError with one line naming what is down, which manage.py prints as its only
    stderr line and exits 1. An optional Redis that is down only logs a warning: the process runs without it."""
    required: dict[str, Callable[[], None]] = {
        "postgresql": dependencies.check_postgresql,
        "rabbitmq": dependencies.check_rabbitmq,
    }
    if not redis_optional:
        required["redis"] = dependencies.check_redis
    try:
        dependencies.wait_for_dependencies(required, timeout=timeout)
    except dependencies.DependencyUnavailable as exc:
        raise CommandError(f"{process} cannot start: {exc}") from exc
    if redis_optional:
        try:
            dependencies.check_redis()
        except dependencies.DependencyUnavailable as exc:
            log.warning("%s starting without Redis (cache writes and live events are skipped): %s", process, exc)


def serve_metrics(port: int | None) -> None:
    """Expose this process's counters and histograms for Prometheus on `port` (all interfaces); None is off."""
    if port:
        start_http_server(port)
        log.info("metrics on http://0.0.0.0:%d/metrics", port)
