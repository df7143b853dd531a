"""The broker's half of a lesson's "lost" checkpoint: is there a message for a stuck order anywhere?

orders/checkpoints.py `stuck_orders` finds orders that are not terminal, owe no outbox row and have not moved for a
while. Such an order still has a chance while a message for it may exist: ready in the main queue or a retry tier,
or held (unacked, or acked on receipt and waiting in memory) by a worker that is alive. This module reads that
from what the relays and workers report (QueueStat depths, WorkerHeartbeat `holding` lists), never from an AMQP
connection of its own, so a web request can call it.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from datetime import timedelta

from django.db.models import QuerySet
from django.utils import timezone

from orders.checkpoints import STUCK_AFTER, stuck_orders
from orders.models import Order
from worker.models import QueueStat, WorkerHeartbeat

# A worker whose heartbeat (written every second) is older than this is taken for dead: what it held is gone.
ALIVE_WITHIN = timedelta(seconds=5)
# Queue depths older than this are not trusted (no relay or worker is observing the queues).
OBSERVED_WITHIN = timedelta(seconds=10)


@dataclass(frozen=True)
class Lost:
    """`lost` counts orders accepted and never finished for which no message exists anywhere: not terminal, no
    outbox row pending, no journey movement for `quiet_for`, not held by a live worker, and every queue that could
    carry their message (the main queue and the retry tiers; not the dead letters, whose orders are dead_lettered)
    empty by recent observation. It is None, "cannot tell yet", while any of those queues has ready messages (they
    may be these orders') or the depths were not observed recently; `why` says which."""

    lost: int | None
    stuck: int  # stuck by the domain's test alone
    held: int  # of those, held by a live worker
    queued: int  # ready messages in the main queue and the retry tiers
    order_ids: list[uuid.UUID] = field(default_factory=list)  # the lost ones (empty when lost is None)
    why: str = ""
    # Stuck and not held by a live worker: lost once the queues are known to hold nothing, else "not yet known".
    candidate_ids: list[uuid.UUID] = field(default_factory=list)


def lost_orders(
    orders: QuerySet[Order] | None = None,
    *,
    quiet_for: timedelta = STUCK_AFTER,
    alive_within: timedelta = ALIVE_WITHIN,
    observed_within: timedelta = OBSERVED_WITHIN,
) -> Lost:
    now = timezone.now()
    stuck = stuck_orders(orders, quiet_for=quiet_for)
    held: set[str] = set()
    # A dead worker's unacked messages go back to the queue when its connection drops (a worker that stops cleanly
    # deletes its heartbeat; one that is killed leaves it): depths observed before its last heartbeat do not show them.
    died = None
    for holding, last_seen in WorkerHeartbeat.objects.values_list("holding", "last_seen"):
        if last_seen >= now - alive_within:
            held.update(holding or [])
        else:
            died = max(died or last_seen, last_seen)
    candidates = [pk for pk in stuck if str(pk) not in held]
    stats = list(QueueStat.objects.exclude(role="dead"))
    queued = sum(q.ready for q in stats)
    stuck_n, held_n = len(stuck), len(stuck) - len(candidates)
    if not stats or min(q.observed_at for q in stats) < now - observed_within:
        why = "queue depths not observed recently (is a relay or worker running?)"
        return Lost(lost=None, stuck=stuck_n, held=held_n, queued=queued, why=why, candidate_ids=candidates)
    if died is not None and min(q.observed_at for q in stats) <= died:
        why = "a worker died; the queues were not observed since"
        return Lost(lost=None, stuck=stuck_n, held=held_n, queued=queued, why=why, candidate_ids=candidates)
    if queued:
        why = f"{queued} message(s) still ready in the queues"
        return Lost(lost=None, stuck=stuck_n, held=held_n, queued=queued, why=why, candidate_ids=candidates)
    return Lost(
        lost=len(candidates),
        stuck=stuck_n,
        held=held_n,
        queued=queued,
        order_ids=candidates,
        candidate_ids=candidates,
    )
