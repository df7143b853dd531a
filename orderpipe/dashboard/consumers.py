"""WebSocket consumers: thin, read-only edges that check access, send the current state, then relay the producer's
batches. Their limits and close codes: docs/10-design-notes.md, "The WebSocket consumers and their limits".
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
import uuid
from typing import Any

from autobahn.exception import Disconnected
from channels.db import database_sync_to_async
from channels.generic.websocket import AsyncJsonWebsocketConsumer
from django.conf import settings
from django.db import DatabaseError
from redis.exceptions import RedisError

from orderpipe.dashboard import feed, sockets
from orderpipe.dashboard.broadcaster import broadcaster
from orderpipe.dashboard.state import pipeline_state
from orders import live, sandbox
from orders.access import can_control, can_watch
from orders.models import Order
from orders.serializers import order_representation

log = logging.getLogger(__name__)

CLOSE_BAD_FRAME = 4400
CLOSE_FORBIDDEN = 4403
CLOSE_NOT_FOUND = 4404
CLOSE_TOO_MANY = 4429
CLOSE_UNAVAILABLE = 4503
# Every message a page may send is a small object ({"action": "resync"}); anything longer is not one of them.
MAX_FRAME_CHARS = 4096
# A dependency the handshake needs is out of reach: Redis (the slot count, the channel layer's pool) or PostgreSQL.
UNAVAILABLE = (RedisError, DatabaseError, OSError)


class LiveConsumer(AsyncJsonWebsocketConsumer):
    keep_slot: asyncio.Task[None] | None = None
    group: str = ""

    async def connect(self) -> None:
        self.client = sockets.client_id(self.scope)
        if not can_watch(self.scope.get("user")):
            await self.refuse(CLOSE_FORBIDDEN, "not allowed to watch")
            return
        self.last_resync = float("-inf")
        try:
            if not await self.take_slot():
                await self.refuse(CLOSE_TOO_MANY, f"over {settings.WS_MAX_CONNECTIONS_PER_CLIENT} open sockets")
                return
            if not await self.prepare():
                await self.refuse(CLOSE_NOT_FOUND, "no such order")
                return
            await self.channel_layer.group_add(self.group, self.channel_name)
        except UNAVAILABLE as exc:
            await self.refuse(CLOSE_UNAVAILABLE, f"{type(exc).__name__}: {exc}")
            return
        await self.accept()
        broadcaster.attach()
        self.attached = True
        try:
            await self.send_snapshot()
        except UNAVAILABLE as exc:
            log.warning("socket %s closed %d for %s: %s", self.scope.get("path"), CLOSE_UNAVAILABLE, self.client, exc)
            await self.close(code=CLOSE_UNAVAILABLE)

    async def take_slot(self) -> bool:
        slot = uuid.uuid4().hex
        taken = await sockets.acquire(
            self.channel_layer.redis(),
            self.client,
            slot,
            cap=settings.WS_MAX_CONNECTIONS_PER_CLIENT,
            ttl_seconds=settings.WS_SLOT_TTL,
        )
        if taken:  # only a slot taken is given back (release_slot)
            self.slot = slot
            self.keep_slot = asyncio.ensure_future(self._refresh_slot())
        return taken

    async def _refresh_slot(self) -> None:
        while True:
            await asyncio.sleep(settings.WS_SLOT_TTL / 3)
            try:
                await sockets.refresh(
                    self.channel_layer.redis(), self.client, self.slot, ttl_seconds=settings.WS_SLOT_TTL
                )
            except UNAVAILABLE as exc:  # the slot lapses at worst, and the next refresh puts it back
                log.warning("socket slot refresh failed for %s: %s", self.client, exc)

    async def refuse(self, code: int, reason: str) -> None:
        """Accept, then close with `code`, so the browser sees the code (docs/10-design-notes.md, the consumers)."""
        log.warning("socket %s closed %d for %s: %s", self.scope.get("path"), code, self.client, reason)
        await self.release_slot()
        await self.accept()
        await self.close(code=code)

    async def release_slot(self) -> None:
        task = getattr(self, "keep_slot", None)
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            self.keep_slot = None
        if getattr(self, "slot", ""):
            slot, self.slot = self.slot, ""
            try:
                await sockets.release(self.channel_layer.redis(), self.client, slot)
            except UNAVAILABLE as exc:  # it lapses after WS_SLOT_TTL
                log.warning("socket slot release failed for %s: %s", self.client, exc)

    async def send_json(self, content: Any, close: bool = False) -> None:
        # A batch from the producer can reach this consumer after the browser went away and before daphne reports
        # the disconnect; daphne then raises instead of dropping the message, which would end the consumer before
        # its disconnect() gave the socket's slot back. The disconnect follows, so there is nothing else to do.
        with contextlib.suppress(Disconnected):
            await super().send_json(content, close=close)

    async def close(self, code: int | bool | None = None, reason: str | None = None) -> None:
        with contextlib.suppress(Disconnected):  # the same race as in send_json
            await super().close(code=code, reason=reason)

    async def prepare(self) -> bool:
        return True

    async def send_snapshot(self) -> None:
        raise NotImplementedError

    async def disconnect(self, code: int) -> None:
        if getattr(self, "attached", False):
            broadcaster.detach()
            self.attached = False
        await self.release_slot()
        if self.group:
            try:
                await self.channel_layer.group_discard(self.group, self.channel_name)
            except UNAVAILABLE as exc:  # the layer drops the membership after its group_expiry
                log.warning("socket group_discard failed for %s: %s", self.client, exc)

    async def receive(self, text_data: str | None = None, bytes_data: bytes | None = None, **kwargs: Any) -> None:
        # Decoded here, not by AsyncJsonWebsocketConsumer, whose json.loads error would close with 1011 and a
        # traceback. A RecursionError is a JSON bomb (thousands of nested brackets).
        if text_data is None:
            await self.reject_frame("binary frame")
            return
        if len(text_data) > MAX_FRAME_CHARS:
            await self.reject_frame(f"frame of {len(text_data)} characters")
            return
        try:
            content = json.loads(text_data)
        except (ValueError, RecursionError):
            await self.reject_frame("not JSON")
            return
        if not isinstance(content, dict) or not isinstance(content.get("action"), str):
            await self.reject_frame("not an object with an action")
            return
        await self.receive_json(content)

    async def reject_frame(self, what: str) -> None:
        log.warning("socket %s closed %d for %s: %s", self.scope.get("path"), CLOSE_BAD_FRAME, self.client, what)
        await self.close(code=CLOSE_BAD_FRAME)

    async def receive_json(self, content: dict[str, Any], **kwargs: Any) -> None:
        if content["action"] == "resync":
            await self.resync()
            return
        if not can_control(self.scope.get("user")):
            await self.send_json({"type": "refused", "reason": "controls need a staff login"})
            await self.close(code=CLOSE_FORBIDDEN)
            return
        await self.send_json(
            {"type": "refused", "reason": "controls go through the CSRF-protected HTTP endpoints, not this socket"}
        )

    async def resync(self) -> None:
        # A snapshot costs several queries; one per interval per socket is plenty for a page that lost track.
        wait = self.last_resync + settings.WS_RESYNC_INTERVAL - time.monotonic()
        if wait > 0:
            await self.send_json({"type": "refused", "reason": "resync is rate-limited", "retry_after": round(wait, 1)})
            return
        self.last_resync = time.monotonic()
        await self.send_snapshot()


class PipelineConsumer(LiveConsumer):
    """`/ws/pipeline/`: the dashboard."""

    group = feed.PIPELINE_GROUP

    async def send_snapshot(self) -> None:
        await self.send_json({"type": "snapshot", **await database_sync_to_async(pipeline_snapshot)()})

    async def pipeline_update(self, message: dict[str, Any]) -> None:
        await self.send_json({"type": "update", **{k: v for k, v in message.items() if k != "type"}})


def pipeline_snapshot() -> dict[str, Any]:
    return {
        "state": {"pipeline": pipeline_state(), "latest_orders": feed.latest_orders()},
        "events": feed.recent_feed(),
        "rates": feed.recent_rates(),
        "controls": live.recent_controls(),
    }


FAULTS_EVERY_SECONDS = 1.0


def active_faults() -> list[str]:
    return sandbox.active_faults(sandbox.reader.get())


def banners() -> dict[str, list[str]]:
    """The faults and the unsafe modes that are on, as the journey page's two banners show them."""
    values = sandbox.reader.get()
    return {"active_faults": sandbox.active_faults(values), "unsafe_modes": sandbox.active_unsafe_modes(values)}


def journey_snapshot(order_id: uuid.UUID) -> dict[str, Any] | None:
    try:
        order = Order.objects.prefetch_related("lines").get(pk=order_id)
    except Order.DoesNotExist:
        return None
    return {"order": order_representation(order), "events": feed.journey_events(order_id)}


class JourneyConsumer(LiveConsumer):
    """`/ws/orders/<uuid>/`: one order's journey."""

    async def prepare(self) -> bool:
        try:
            self.order_id = uuid.UUID(str(self.scope["url_route"]["kwargs"]["order_id"]))
        except ValueError:
            return False
        if not await database_sync_to_async(Order.objects.filter(pk=self.order_id).exists)():
            return False
        self.group = feed.order_group(self.order_id)
        await database_sync_to_async(feed.watch_order)(self.order_id)
        self.keep_watching = asyncio.ensure_future(self._refresh_watch())
        return True

    async def _refresh_watch(self) -> None:
        while True:
            await asyncio.sleep(feed.WATCH_TTL_SECONDS / 3)
            await database_sync_to_async(feed.watch_order)(self.order_id)

    async def _watch_faults(self, shown: dict[str, list[str]]) -> None:
        """The page's fault banner, kept live: the faults on, sent whenever they change. Read through the process's
        sandbox reader (one query a second per process, however many journeys are open) rather than by joining the
        pipeline group, whose dashboard-sized batches every journey socket would then receive."""
        while True:
            await asyncio.sleep(FAULTS_EVERY_SECONDS)
            try:
                active = await database_sync_to_async(banners)()
            except DatabaseError as exc:  # the banner stays as it was until the database answers
                log.warning("journey socket: sandbox settings not read: %s", exc)
                continue
            if active != shown:
                shown = active
                await self.send_json({"type": "sandbox", **active})

    async def disconnect(self, code: int) -> None:
        for name in ("keep_watching", "watch_faults"):
            task = getattr(self, name, None)
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        await super().disconnect(code)

    async def send_snapshot(self) -> None:
        snapshot = await database_sync_to_async(journey_snapshot)(self.order_id)
        message: dict[str, Any] = {"type": "snapshot", **(snapshot or {"order": None, "events": []})}
        if settings.ORDERPIPE_SANDBOX:
            shown = await database_sync_to_async(banners)()
            message.update(shown)
            if getattr(self, "watch_faults", None) is None:
                self.watch_faults = asyncio.ensure_future(self._watch_faults(shown))
        await self.send_json(message)

    async def order_events(self, message: dict[str, Any]) -> None:
        await self.send_json({"type": "events", "events": message["events"]})
