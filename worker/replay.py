"""Replaying dead letters: the database decides what is replayed (it is the source of truth); the parking-lot
queue is then tidied so it only holds what is still dead."""

from __future__ import annotations

import contextlib
import logging
import uuid

from orders.models import Order, OrderStatus
from orders.services import cache_after_commit, order_replay
from worker.broker import BROKER_ERRORS, connect
from worker.processing import peek_order_id
from worker.topology import topology

log = logging.getLogger(__name__)


def replay_dead_letters(order_id: uuid.UUID | None = None, *, replayed_by: str = "", via: str = "command") -> int:
    """Replay one dead-lettered order (or all of them when `order_id` is None). Returns how many were replayed."""
    candidates = Order.objects.filter(status=OrderStatus.DEAD_LETTERED)
    if order_id is not None:
        candidates = candidates.filter(pk=order_id)
    replayed = []
    for pk in candidates.values_list("pk", flat=True):
        transition = order_replay(order_id=pk, replayed_by=replayed_by, via=via)
        if transition:
            replayed.append(transition)
    cache_after_commit(replayed)
    tidy_parking_lot()
    return len(replayed)


def tidy_parking_lot() -> int:
    """Remove from the dead-letter queue the messages whose order is no longer dead-lettered (replayed). Messages
    of orders still dead, and poison messages, stay parked. Returns how many were removed."""
    topo = topology()
    removed = 0
    try:
        conn = connect()
    except BROKER_ERRORS as exc:
        log.warning("dead-letter queue not tidied (broker unavailable: %s); it will be next time", exc)
        return 0
    try:
        channel = conn.channel()
        waiting = channel.queue_declare(topo.dead_queue, passive=True).method.message_count
        keep: list[int] = []
        # Unacked messages are not handed out again on this channel, so each is seen once.
        for _ in range(waiting):
            method, _props, body = channel.basic_get(topo.dead_queue, auto_ack=False)
            if method is None:
                break
            parked_order = peek_order_id(body)
            still_dead = (
                parked_order is None
                or Order.objects.filter(pk=parked_order, status=OrderStatus.DEAD_LETTERED).exists()
                or not Order.objects.filter(pk=parked_order).exists()
            )
            if still_dead:
                keep.append(method.delivery_tag)
            else:
                channel.basic_ack(method.delivery_tag)
                removed += 1
        for tag in keep:
            channel.basic_nack(tag, requeue=True)
    except BROKER_ERRORS as exc:
        log.warning("dead-letter queue tidy interrupted: %s", exc)
    finally:
        with contextlib.suppress(*BROKER_ERRORS):
            conn.close()
    return removed
