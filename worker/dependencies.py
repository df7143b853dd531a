"""Is PostgreSQL, RabbitMQ or Redis answering: one check each, and a wait until they all do.

Each check opens its own short-lived connection with a short timeout (a pooled connection can look fine while new
ones fail) and raises DependencyUnavailable with one line that names the dependency and is safe to show. Used by
relays and workers before they start (worker/startup.py) and by the web's `/readyz` (orderpipe/health.py).
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Mapping
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import psycopg
import redis
from django.conf import settings
from django.db import connections

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
