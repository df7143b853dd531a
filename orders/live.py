"""What the domain announces to the live feed besides order events: control actions (sandbox changes, bursts,
purges, restocks), kept in a capped Redis stream that the dashboard's producer reads (orderpipe/dashboard/).

In orders/ because the domain records them (`orders.sandbox.sandbox_update`), and orders never imports the
project package. Redis being down loses the entry, never the action.
"""

from __future__ import annotations

import json
import logging
from typing import TypedDict

from django.utils import timezone
from django_redis import get_redis_connection
from redis.exceptions import RedisError

from orders import cache

log = logging.getLogger(__name__)


class ControlAction(TypedDict):
    id: str
    at: str
    action: str
    detail: str
    by: str


def _redis():
    return get_redis_connection("default")


def record_control(action: str, detail: str, *, by: str) -> ControlAction:
    """Log a control action that is not about one order and add it to the live feed's stream."""
    entry: ControlAction = {
        "id": "",
        "at": timezone.now().isoformat(),
        "action": action,
        "detail": detail,
        "by": by,
    }
    log.info("control action %s by %s: %s", action, by or "?", detail)
    try:
        entry["id"] = (
            _redis()
            .xadd(cache.live_controls_key(), {"entry": json.dumps(entry)}, maxlen=200, approximate=True)
            .decode()
        )
    except RedisError as exc:
        log.warning("control action not added to the live feed: %s", exc)
    return entry


def _decode_controls(rows: list[tuple[bytes, dict[bytes, bytes]]]) -> list[ControlAction]:
    actions = []
    for stream_id, fields in rows:
        entry = json.loads(fields[b"entry"])
        entry["id"] = stream_id.decode()
        actions.append(entry)
    return actions


def controls_after(last_id: str) -> list[ControlAction]:
    return _decode_controls(_redis().xrange(cache.live_controls_key(), min=f"({last_id}", count=100))


def recent_controls(limit: int = 10) -> list[ControlAction]:
    try:
        rows = _redis().xrevrange(cache.live_controls_key(), count=limit)
    except RedisError:
        return []
    return list(reversed(_decode_controls(rows)))


def last_control_id() -> str:
    try:
        rows = _redis().xrevrange(cache.live_controls_key(), count=1)
    except RedisError:
        return "0-0"
    return rows[0][0].decode() if rows else "0-0"
