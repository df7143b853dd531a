"""WebSocket consumers: thin edges that check access, send the current state, then relay the producer's batches.

The sockets are read-only. Controls go through the CSRF-protected HTTP endpoints only, so there is one audited
path for them; a control message arriving over a socket is refused (and an anonymous one closes the socket).
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from typing import Any

from channels.db import database_sync_to_async
from channels.generic.websocket import AsyncJsonWebsocketConsumer

from orders import live, selectors
from orders.access import can_control, can_watch
from orders.broadcaster import broadcaster
from orders.models import Order
from orders.serializers import order_representation

CLOSE_FORBIDDEN = 4403
CLOSE_NOT_FOUND = 4404


class LiveConsumer(AsyncJsonWebsocketConsumer):
    group: str = ""

    async def connect(self) -> None:
        user = self.scope.get("user")
        if not can_watch(user):
            await self.close(code=CLOSE_FORBIDDEN)
            return
        if not await self.prepare():
            await self.close(code=CLOSE_NOT_FOUND)
            return
        await self.channel_layer.group_add(self.group, self.channel_name)
        await self.accept()
        broadcaster.attach()
        self.attached = True
        await self.send_snapshot()

    async def prepare(self) -> bool:
        return True

    async def send_snapshot(self) -> None:
        raise NotImplementedError

    async def disconnect(self, code: int) -> None:
        if getattr(self, "attached", False):
            broadcaster.detach()
            self.attached = False
        if self.group:
            await self.channel_layer.group_discard(self.group, self.channel_name)

    async def receive_json(self, content: Any, **kwargs: Any) -> None:
        action = content.get("action") if isinstance(content, dict) else None
        if action == "resync":
            await self.send_snapshot()
            return
        if not can_control(self.scope.get("user")):
            await self.send_json({"type": "refused", "reason": "controls need a staff login"})
            await self.close(code=CLOSE_FORBIDDEN)
            return
        await self.send_json(
            {"type": "refused", "reason": "controls go through the CSRF-protected HTTP endpoints, not this socket"}
        )


class PipelineConsumer(LiveConsumer):
    """`/ws/pipeline/`: the dashboard."""

    group = live.PIPELINE_GROUP

    async def send_snapshot(self) -> None:
        await self.send_json({"type": "snapshot", **await database_sync_to_async(pipeline_snapshot)()})

    async def pipeline_update(self, message: dict[str, Any]) -> None:
        await self.send_json({"type": "update", **{k: v for k, v in message.items() if k != "type"}})


def pipeline_snapshot() -> dict[str, Any]:
    return {
        "state": {"pipeline": selectors.pipeline_state(), "latest_orders": live.latest_orders()},
        "events": live.recent_feed(),
        "rates": live.recent_rates(),
        "controls": live.recent_controls(),
    }


def journey_snapshot(order_id: uuid.UUID) -> dict[str, Any] | None:
    try:
        order = Order.objects.prefetch_related("lines").get(pk=order_id)
    except Order.DoesNotExist:
        return None
    return {"order": order_representation(order), "events": live.journey_events(order_id)}


class JourneyConsumer(LiveConsumer):
    """`/ws/orders/<uuid>/`: one order's journey."""

    async def prepare(self) -> bool:
        try:
            self.order_id = uuid.UUID(str(self.scope["url_route"]["kwargs"]["order_id"]))
        except ValueError:
            return False
        if not await database_sync_to_async(Order.objects.filter(pk=self.order_id).exists)():
            return False
        self.group = live.order_group(self.order_id)
        await database_sync_to_async(live.watch_order)(self.order_id)
        self.keep_watching = asyncio.ensure_future(self._refresh_watch())
        return True

    async def _refresh_watch(self) -> None:
        while True:
            await asyncio.sleep(live.WATCH_TTL_SECONDS / 3)
            await database_sync_to_async(live.watch_order)(self.order_id)

    async def disconnect(self, code: int) -> None:
        task = getattr(self, "keep_watching", None)
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await super().disconnect(code)

    async def send_snapshot(self) -> None:
        snapshot = await database_sync_to_async(journey_snapshot)(self.order_id)
        await self.send_json({"type": "snapshot", **(snapshot or {"order": None, "events": []})})

    async def order_events(self, message: dict[str, Any]) -> None:
        await self.send_json({"type": "events", "events": message["events"]})
