"""The supervisor's cuttable links to PostgreSQL, RabbitMQ and Redis: a TCP proxy (worker/proxy.py) in front of each
service, and the URLs that send the supervised processes through them. Who goes through them and why:
docs/10-design-notes.md, "The cuttable links".
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from urllib.parse import urlsplit, urlunsplit

from django.conf import settings
from django.db import DatabaseError
from django.utils import timezone

from worker.models import ServiceLink
from worker.proxy import Proxy
from worker.supervision import POSTGRES_CUT_SECONDS

log = logging.getLogger(__name__)

DEFAULT_PORTS = {"postgres": 5432, "postgresql": 5432, "amqp": 5672, "amqps": 5671, "redis": 6379, "rediss": 6380}


def through(url: str, port: int) -> str:
    """`url` with its host and port replaced by the proxy's (127.0.0.1:port); user, password, path kept."""
    parts = urlsplit(url)
    userinfo, _, _hostport = parts.netloc.rpartition("@")
    netloc = f"{userinfo}@127.0.0.1:{port}" if userinfo else f"127.0.0.1:{port}"
    return urlunsplit(parts._replace(netloc=netloc))


def target_of(url: str) -> tuple[str, int]:
    parts = urlsplit(url)
    return parts.hostname or "127.0.0.1", parts.port or DEFAULT_PORTS.get(parts.scheme, 0)


@dataclass
class Link:
    name: str  # postgresql, rabbitmq, redis
    env_var: str
    urls: list[str]  # the real service (several RabbitMQ nodes: one proxy each)
    proxies: list[Proxy] = field(default_factory=list)
    cut_at: datetime | None = None
    restore_at: float | None = None  # monotonic; PostgreSQL only

    def __post_init__(self) -> None:
        self.proxies = [Proxy(port, host) for host, port in map(target_of, self.urls)]

    @property
    def cut(self) -> bool:
        return self.cut_at is not None

    def proxied_value(self) -> str:
        return ",".join(through(url, proxy.port) for url, proxy in zip(self.urls, self.proxies, strict=True))

    def describe_target(self) -> str:
        return ",".join(f"{host}:{port}" for host, port in map(target_of, self.urls))


@dataclass
class Links:
    database_url: str = field(default_factory=lambda: settings.DATABASE_URL)
    amqp_urls: list[str] = field(default_factory=lambda: list(settings.AMQP_URLS))
    redis_url: str = field(default_factory=lambda: settings.REDIS_URL)
    clock: Callable[[], float] = time.monotonic
    postgres_cut_seconds: float = POSTGRES_CUT_SECONDS
    links: dict[str, Link] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for link in (
            Link("postgresql", "DATABASE_URL", [self.database_url]),
            Link("rabbitmq", "AMQP_URL", self.amqp_urls),
            Link("redis", "REDIS_URL", [self.redis_url]),
        ):
            self.links[link.name] = link

    def env_for(self, role: str) -> dict[str, str]:
        """The URLs a supervised process of `role` connects with (see the module docstring for who goes through)."""
        env = {"CHANNEL_LAYER_REDIS_URL": self.redis_url}
        if role != "ws":
            env.update({link.env_var: link.proxied_value() for link in self.links.values()})
        return env

    # ------------------------------------------------------------ lifetime

    def start(self) -> None:
        for link in self.links.values():
            for proxy in link.proxies:
                proxy.up()
            log.info("supervisor: %s through %s", link.name, link.proxied_value())
        try:
            ServiceLink.objects.exclude(name__in=self.links).delete()
        except DatabaseError as exc:
            log.warning("supervisor: links not recorded: %s", exc)
        self.record()

    def stop(self) -> None:
        for link in self.links.values():
            for proxy in link.proxies:
                proxy.down()
        try:
            ServiceLink.objects.filter(name__in=self.links).delete()
        except DatabaseError as exc:
            log.debug("supervisor: links not removed: %s", exc)

    # ------------------------------------------------------------ cut and restore

    def cut(self, name: str) -> str:
        """Cut one link; returns what happened, as the feed says it."""
        link = self.links[name]
        if link.cut:
            return f"{name} was already cut"
        reset = sum(proxy.down() for proxy in link.proxies)
        link.cut_at = timezone.now()
        text = f"{reset} open connection(s) reset, new ones refused (web, relay, workers)"
        if name == "postgresql":
            link.restore_at = self.clock() + self.postgres_cut_seconds
            text += f"; restores itself in {self.postgres_cut_seconds:g} s"
        self.record(link)
        log.warning("supervisor: cut %s: %s", name, text)
        return text

    def restore(self, name: str, *, automatic: bool = False) -> str:
        link = self.links[name]
        if not link.cut:
            return f"{name} was not cut"
        for proxy in link.proxies:
            proxy.up()
        seconds = (timezone.now() - link.cut_at).total_seconds() if link.cut_at else 0.0
        link.cut_at, link.restore_at = None, None
        self.record(link)
        text = f"back after {seconds:.0f} s" + (" (automatic: a PostgreSQL cut restores itself)" if automatic else "")
        log.warning("supervisor: restored %s: %s", name, text)
        return text

    def due_restores(self) -> list[str]:
        """Links whose cut has run its fixed time (PostgreSQL's)."""
        now = self.clock()
        return [link.name for link in self.links.values() if link.restore_at is not None and link.restore_at <= now]

    # ------------------------------------------------------------ what the page reads

    def record(self, only: Link | None = None) -> None:
        """Write the links' rows (also the supervisor's heartbeat: `updated_at` moves). Never raises."""
        now = timezone.now()
        for link in [only] if only is not None else self.links.values():
            restore_at = None
            if link.restore_at is not None:
                restore_at = now + timedelta(seconds=max(0.0, link.restore_at - self.clock()))
            try:
                ServiceLink.objects.update_or_create(
                    name=link.name,
                    defaults={
                        "target": link.describe_target()[:200],
                        "proxy_ports": ",".join(str(p.port) for p in link.proxies)[:200],
                        "cut": link.cut,
                        "cut_at": link.cut_at,
                        "restore_at": restore_at,
                        "updated_at": now,
                    },
                )
            except DatabaseError as exc:
                log.debug("supervisor: link %s not recorded: %s", link.name, exc)
