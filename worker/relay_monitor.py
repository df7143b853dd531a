"""The relay's heartbeat: what the dashboard's relay stage shows (running or gone, state, publish rate, last publish).

`run_relay` (worker/relay.py) owns one `RelayMonitor` and tells it what happened (rows published, broker out of
reach); the monitor writes a RelayHeartbeat row about once a second. It beats from inside the loop's `should_stop`
check, which the loop calls between batches and every fraction of a second while it idles or backs off, so the row
stays fresh in every state without a thread of its own (and so never touches the relay's pika connection or its
database connection from another thread).
"""

from __future__ import annotations

import logging
import os
import socket
import time
import uuid
from collections import deque
from collections.abc import Callable
from datetime import datetime

from django.db import DatabaseError
from django.utils import timezone

from worker.database_watch import DatabaseWatch
from worker.models import RelayHeartbeat
from worker.sweeper import Sweeper

log = logging.getLogger(__name__)

# The publish rate is the rows published over this many seconds, divided by them: smooth enough to read, recent
# enough to show a burst starting and ending within a few seconds.
RATE_WINDOW_SECONDS = 5.0


class RelayMonitor:
    def __init__(self, sweeper: Sweeper | None = None, *, every: float = 1.0, name: str | None = None) -> None:
        self.name = name or f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:4]}"
        self.sweeper = sweeper
        self.every = every
        self.started_at = timezone.now()
        self.started = time.monotonic()
        self.last_beat = float("-inf")
        self.total = 0
        self.since_beat = 0
        self.recent: deque[tuple[float, int]] = deque()
        self.last_publish_at: datetime | None = None
        self.unreachable_detail: str | None = None
        # After a failed beat: beat again the moment the database answers (worker/database_watch.py).
        self.database = DatabaseWatch()
        self.missed = False

    def watch(self, should_stop: Callable[[], bool]) -> Callable[[], bool]:
        """`should_stop`, beating first when a beat is due: the loop polls it often in every state."""

        def check() -> bool:
            self.maybe_beat()
            return should_stop()

        return check

    def published(self, count: int) -> None:
        """A batch went out (or none: `count` 0). Any successful round trip means the broker is reachable again."""
        self.unreachable_detail = None
        if count:
            now = time.monotonic()
            self.total += count
            self.since_beat += count
            self.recent.append((now, count))
            self.last_publish_at = timezone.now()

    def unreachable(self, detail: str) -> None:
        """The broker is out of reach; the loop backs off before reconnecting. Beats at once, as the state changed."""
        self.unreachable_detail = detail
        self.beat()

    def rate(self) -> float:
        now = time.monotonic()
        while self.recent and now - self.recent[0][0] > RATE_WINDOW_SECONDS:
            self.recent.popleft()
        # Right after start the window is not full yet: divide by the time actually covered.
        covered = max(1.0, min(RATE_WINDOW_SECONDS, now - self.started))
        return round(sum(n for _, n in self.recent) / covered, 1)

    def state(self) -> tuple[str, str]:
        if self.unreachable_detail is not None:
            return RelayHeartbeat.State.UNREACHABLE, self.unreachable_detail
        if self.since_beat:
            return RelayHeartbeat.State.PUBLISHING, ""
        if self.sweeper is not None and self.sweeper.queue_empty_at is not None:
            return RelayHeartbeat.State.SWEEPING, "looking for orders whose message was lost"
        return RelayHeartbeat.State.IDLE, ""

    def maybe_beat(self) -> None:
        if (self.missed and not self.database.down) or time.monotonic() - self.last_beat >= self.every:
            self.beat()

    def beat(self) -> None:
        """Store the heartbeat row. Never raises: a database outage only leaves the row going stale, until the
        database answers again."""
        self.last_beat = time.monotonic()
        if self.database.down:
            return  # not through a pool that waits out its backoff: the watch resets it when the database answers
        state, detail = self.state()
        self.since_beat = 0
        try:
            RelayHeartbeat.objects.update_or_create(
                pk=self.name,
                defaults={
                    "hostname": socket.gethostname(),
                    "pid": os.getpid(),
                    "state": state,
                    "detail": detail[:300],
                    "published": self.total,
                    "rate": self.rate(),
                    "last_publish_at": self.last_publish_at,
                    "started_at": self.started_at,
                    "last_seen": timezone.now(),
                },
            )
            self.missed = False
        except DatabaseError as exc:
            log.debug("relay heartbeat not stored: %s", exc)
            self.missed = True
            self.database.failed()

    def stop(self) -> None:
        """A clean stop removes the row: the page lists only relays that are running or died without stopping."""
        try:
            RelayHeartbeat.objects.filter(pk=self.name).delete()
        except DatabaseError as exc:
            log.debug("relay heartbeat not removed: %s", exc)
