"""The one producer of live updates: reads what changed and pushes it to the dashboard and journey sockets, from a
task in the WebSocket server that runs while someone watches (docs/10-design-notes.md, "The live producer").
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass, field
from typing import Any

from channels.db import database_sync_to_async
from channels.layers import get_channel_layer
from django_redis import get_redis_connection

from orderpipe.dashboard import feed
from orderpipe.dashboard.channel_layer import being_cancelled
from orderpipe.dashboard.state import pipeline_state
from orders import cache, live

log = logging.getLogger(__name__)

INTERVAL = 0.4
STATE_MIN_INTERVAL = 0.5  # recompute the pipeline picture at most this often while events flow...
STATE_MAX_INTERVAL = 1.0  # ...and at least this often (queue depths and workers change without events)
LOCK_TTL_MS = 5_000
IDLE_STOP_SECONDS = 10.0
EVENT_BATCH = 2_000

# Renew or release the lock only if we still hold it (another process may have taken it after an expiry).
_RENEW = "if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('PEXPIRE', KEYS[1], ARGV[2]) end return 0"
_RELEASE = "if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end return 0"


@dataclass
class Producer:
    """The state of one producing run; `tick` is the unit of work, called from a thread (it does blocking I/O)."""

    token: str = field(default_factory=feed.new_token)
    last_event_id: int | None = None
    last_control_id: str | None = None
    last_state_at: float = 0.0

    def acquire(self) -> bool:
        return bool(
            get_redis_connection("default").set(cache.live_producer_lock_key(), self.token, nx=True, px=LOCK_TTL_MS)
        )

    def renew(self) -> bool:
        return bool(
            get_redis_connection("default").eval(_RENEW, 1, cache.live_producer_lock_key(), self.token, LOCK_TTL_MS)
        )

    def release(self) -> None:
        get_redis_connection("default").eval(_RELEASE, 1, cache.live_producer_lock_key(), self.token)

    def tick(self) -> list[tuple[str, dict[str, Any]]]:
        """Read what changed since the last tick; return the (group, message) pairs to send."""
        if self.last_event_id is None:
            self.last_event_id = feed.latest_event_id()
            self.last_control_id = live.last_control_id()
        rows = feed.events_after(self.last_event_id, limit=EVENT_BATCH)
        controls = live.controls_after(self.last_control_id or "0-0")
        messages: list[tuple[str, dict[str, Any]]] = []
        first_id = self.last_event_id
        if rows:
            self.last_event_id = rows[-1]["id"]
            messages += _journey_messages(rows, first_id, self.last_event_id)
        if controls:
            self.last_control_id = controls[-1]["id"]
        state = self._state_if_due(changed=bool(rows or controls))
        if rows or controls or state:
            messages.append(
                (
                    feed.PIPELINE_GROUP,
                    {
                        "type": "pipeline.update",
                        "events": [feed.feed_event(row) for row in rows[-feed.FEED_LENGTH :]],
                        "event_count": len(rows),
                        "rates": feed.rates_of(rows),
                        "controls": controls,
                        "state": state,
                    },
                )
            )
        return messages

    def _state_if_due(self, *, changed: bool) -> dict[str, Any] | None:
        """The pipeline's state and latest orders when due: after a change at most every STATE_MIN_INTERVAL, and at
        least every STATE_MAX_INTERVAL."""
        now = time.monotonic()
        since_state = now - self.last_state_at
        if not ((changed and since_state >= STATE_MIN_INTERVAL) or since_state >= STATE_MAX_INTERVAL):
            return None
        self.last_state_at = now
        return {"pipeline": pipeline_state(), "latest_orders": feed.latest_orders()}


def _journey_messages(rows: list[dict[str, Any]], after_id: int, up_to_id: int) -> list[tuple[str, dict[str, Any]]]:
    """The `order.events` message of each order among `rows` that an open journey page watches."""
    watched = feed.watched_orders() & {str(row["order_id"]) for row in rows}
    if not watched:
        return []
    by_order = feed.journey_events_for(watched, after_id=after_id, up_to_id=up_to_id)
    return [
        (feed.order_group(order_id), {"type": "order.events", "events": events})
        for order_id, events in by_order.items()
    ]


class Broadcaster:
    """Starts the producing task in this process's event loop when the first socket connects."""

    def __init__(self) -> None:
        self.task: asyncio.Task | None = None
        self.listeners = 0

    def attach(self) -> None:
        self.listeners += 1
        loop = asyncio.get_running_loop()
        if self.task is None or self.task.done() or self.task.get_loop() is not loop:
            self.task = loop.create_task(self.run(), name="orderpipe-live-producer")

    def detach(self) -> None:
        self.listeners = max(0, self.listeners - 1)

    async def stop(self) -> None:
        """Cancel the task and wait for it to release the lock (tests call this)."""
        task, self.task = self.task, None
        if task is not None and not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def run(self) -> None:
        layer = get_channel_layer()
        producer = Producer()
        holding = False
        idle_since: float | None = None
        try:
            while True:
                if self.listeners == 0:
                    idle_since = idle_since or time.monotonic()
                    if time.monotonic() - idle_since > IDLE_STOP_SECONDS:
                        return
                else:
                    idle_since = None
                try:
                    # Off the shared sync thread (thread_sensitive=False) so a tick never queues behind HTTP views.
                    holding = await database_sync_to_async(
                        producer.renew if holding else producer.acquire, thread_sensitive=False
                    )()
                    if not holding:
                        await asyncio.sleep(LOCK_TTL_MS / 2000)  # someone else produces; check back later
                        continue
                    for group, message in await database_sync_to_async(producer.tick, thread_sensitive=False)():
                        await layer.group_send(group, message)
                except asyncio.CancelledError:
                    raise
                except Exception as exc:  # a database or Redis outage must not kill live updates for good
                    if being_cancelled():  # a cancel that reached us as an error still stops the producer
                        raise asyncio.CancelledError from exc
                    log.exception("live producer tick failed; retrying")
                    producer.last_event_id = None if not holding else producer.last_event_id
                    await asyncio.sleep(2)
                    continue
                await asyncio.sleep(INTERVAL)
        finally:
            if holding:
                with contextlib.suppress(Exception):
                    await database_sync_to_async(producer.release)()


broadcaster = Broadcaster()
