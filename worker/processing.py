"""What the worker does with one delivered message: decode it, hand it to the order's steps, return a verdict.

The steps themselves (guards, effects, failure policy) are the domain's, in `orders/steps.py` and
`orders/runner.py`; this module is the transport side: the message types, decoding, and the mapping from how the
steps ended to a verdict (ack, retry later through a delay tier, dead-letter). The verdict goes back to the
consumer, which owns the AMQP channel and acts on it only after the steps' commits.
"""

from __future__ import annotations

import json
import logging
import random
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import timedelta
from enum import Enum
from typing import Any

from django.utils import timezone

from orders import cache
from orders.batch import OUTAGE, Item, run_batch
from orders.events import QueueSnapshot
from orders.failures import BrokenInvariant
from orders.failures import Interrupted as Interrupted  # re-exported: the consumer catches it by this name
from orders.gateway import Gateway, charge
from orders.notifications import Notifier, send_confirmation
from orders.runner import Ended, Outcome, Pipeline, UnknownOrder
from orders.sandbox.faults import Faults
from orders.services import MESSAGE_VERSION, Transition
from orders.steps import Seams
from worker.topology import RetryTier, Topology, topology

log = logging.getLogger(__name__)

RETRIES_HEADER = "x-orderpipe-retries"
REASON_HEADER = "x-orderpipe-reason"


class Action(Enum):
    ACK = "ack"  # done: completed, failed permanently, or a duplicate of finished work
    RETRY = "retry"  # republish to a delay queue, then ack
    DEAD_LETTER = "dead_letter"  # publish to the dead-letter exchange with the reason, then ack


@dataclass(frozen=True)
class Verdict:
    action: Action
    reason: str = ""
    retry_queue: str = ""
    retries: int = 0


ACK = Verdict(Action.ACK)


@dataclass
class Delivery:
    """One message as the broker handed it over, decoupled from pika so processing is testable without it."""

    body: bytes
    delivery_tag: int = 0
    redelivered: bool = False
    exchange: str = ""
    routing_key: str = ""
    queue: str = ""
    message_id: str = ""
    headers: dict[str, Any] = field(default_factory=dict)
    # Ready messages per queue, as the worker last observed them (worker/monitor.py), so a snapshot can give the
    # depth of the queue the message is handed on to, not only of the one it came from.
    depths: dict[str, int] = field(default_factory=dict)
    # Acked the moment it arrived (the sandbox's unsafe ack_mode=on_receive): nothing to ack or return afterwards.
    acked: bool = False
    # The worker process that took it (its heartbeat name): the journey says who, and lesson 8 counts per worker.
    worker: str = ""

    @property
    def queue_ready(self) -> int | None:
        return self.depths.get(self.queue)

    @property
    def delivery_count(self) -> int:
        # Quorum queues count earlier returns of this message in x-delivery-count (absent on the first delivery).
        return int(self.headers.get("x-delivery-count") or 0) + 1

    @property
    def retries(self) -> int:
        return int(self.headers.get(RETRIES_HEADER) or 0)

    def snapshot(self, note: str = "") -> QueueSnapshot:
        snap: QueueSnapshot = {
            "exchange": self.exchange,
            "routing_key": self.routing_key,
            "queue": self.queue,
            "message_id": self.message_id,
            "delivery_tag": self.delivery_tag,
            "redelivered": self.redelivered,
            "delivery_count": self.delivery_count,
            "queue_ready": self.queue_ready,
        }
        if self.retries:
            snap["retries"] = self.retries
        if self.worker:
            snap["worker"] = self.worker
        if self.acked:
            # The journey shows the unsafe mode at work: the broker no longer has this message.
            note = f"ACKED ON RECEIPT (ack_mode=on_receive): the broker has forgotten this message. {note}".strip()
        if note:
            snap["note"] = note
        return snap

    def retry_snapshot(self, tier: RetryTier, retries: int) -> QueueSnapshot:
        """Where the message goes for retry `retries`: the delay queue, its TTL and when it comes back. The copy is
        published (default exchange, routed by queue name) once the step's commit is done, so "back at" is the
        earliest time; the delivery it came in stays as `from_queue`."""
        back_at = timezone.now() + timedelta(milliseconds=tier.delay_ms)
        snap = self.snapshot(
            f"republished to the delay queue after this commit, then acked; after its TTL the broker dead-letters "
            f"it back to the main queue (retry {retries})"
        )
        snap.update(
            QueueSnapshot(
                exchange="",
                routing_key=tier.queue,
                queue=tier.queue,
                queue_ready=self.depths.get(tier.queue),
                from_queue=self.queue,
                ttl_ms=tier.delay_ms,
                back_at=back_at.isoformat(),
                retries=retries,
            )
        )
        return snap

    def dead_letter_snapshot(self, topo: Topology, reason: str) -> QueueSnapshot:
        """Where a message the worker gives up on goes: the dead-letter exchange, parked in the dead-letter queue
        with the reason in its header."""
        snap = self.snapshot("published to the dead-letter exchange after this commit, then acked; replayable")
        snap.update(
            QueueSnapshot(
                exchange=topo.dead_letter_exchange,
                routing_key=self.routing_key,
                queue=topo.dead_queue,
                queue_ready=self.depths.get(topo.dead_queue),
                from_queue=self.queue,
                headers={REASON_HEADER: reason[:1000]},
                retries=self.retries,
            )
        )
        return snap

    def broker_dead_letter_snapshot(self, topo: Topology) -> QueueSnapshot:
        """A message the broker dead-lettered by itself, seen through its copy in the watch queue: the original is
        parked in the dead-letter queue, and the broker's x-first-death-* headers say why and from where."""
        snap = self.snapshot("the broker dead-lettered it; a copy reached the watch queue, the original is parked")
        # The tag, redelivered flag and count are the watch copy's own, not the parked message's: left out.
        del snap["delivery_tag"], snap["redelivered"], snap["delivery_count"]
        snap.update(
            QueueSnapshot(
                exchange=topo.dead_letter_exchange,
                queue=topo.dead_queue,
                queue_ready=self.depths.get(topo.dead_queue),
                from_queue=str(self.headers.get("x-first-death-queue") or ""),
                watched_via=self.queue,
                delivery_limit=topo.delivery_limit,
                headers={
                    name: str(self.headers[name])
                    for name in ("x-first-death-reason", "x-first-death-queue", "x-first-death-exchange")
                    if name in self.headers
                },
            )
        )
        if self.retries:
            snap["retries"] = self.retries
        return snap


class PoisonMessage(Exception):
    """A message no retry can fix: undecodable, unknown order, unsupported version."""


def decode(body: bytes) -> uuid.UUID:
    try:
        message = json.loads(body)
    except (ValueError, UnicodeDecodeError) as exc:
        raise PoisonMessage(f"undecodable body: {exc}") from None
    if not isinstance(message, dict):
        raise PoisonMessage("body is not a JSON object")
    if message.get("version") != MESSAGE_VERSION:
        raise PoisonMessage(f"unsupported message version {message.get('version')!r}")
    try:
        return uuid.UUID(str(message.get("order_id")))
    except ValueError:
        raise PoisonMessage(f"order_id is not a UUID: {message.get('order_id')!r}") from None


def peek_order_id(body: bytes) -> str | None:
    try:
        return str(decode(body))
    except PoisonMessage:
        return None


def _guarded(work: Callable[..., Verdict], *args: Any) -> Verdict | Exception:
    """`work`'s verdict, or the unexpected exception it raised (an outage or Interrupted propagates)."""
    try:
        return work(*args)
    except (*OUTAGE, Interrupted):
        raise
    except Exception as exc:
        return exc


def _fresh_order(delivery: Delivery) -> uuid.UUID | None:
    """The order a first delivery (not redelivered, not a retry) names, or None: what the batched path may take."""
    if delivery.redelivered or delivery.retries or delivery.delivery_count > 1:
        return None
    try:
        return decode(delivery.body)
    except PoisonMessage:
        return None


# ---------------------------------------------------------------- the processor


class Processor:
    """Hands each delivery to the order's steps (`orders.steps`) and turns how they ended into a verdict.
    One instance per worker; safe to share between its threads."""

    def __init__(
        self,
        *,
        faults: Faults | None = None,
        topo: Topology | None = None,
        should_stop: Callable[[], bool] = lambda: False,
        gateway: Gateway = charge,
        notify: Notifier = send_confirmation,
        rng: random.Random | None = None,
    ) -> None:
        self.faults = faults or Faults()
        self.topology = topo or topology()
        self.rng = rng or random.Random()
        self.pipeline = Pipeline(
            seams=Seams(faults=self.faults, charge=gateway, notify=notify), should_stop=should_stop
        )

    def batchable(self) -> bool:
        """Whether deliveries may be run as a batch now (no fault, no unsafe mode: `Faults.batchable`)."""
        return self.faults.batchable()

    def process(self, delivery: Delivery) -> Verdict:
        """Handle one delivery end to end. Database errors propagate (the caller keeps the message unacked);
        Interrupted means the worker is stopping and the message must stay unacked too."""
        try:
            order_id = decode(delivery.body)
            started = self.pipeline.receive(order_id, delivery)
        except (PoisonMessage, UnknownOrder) as exc:
            log.warning("poison message %s: %s", delivery.message_id or "?", exc)
            if isinstance(exc, UnknownOrder):
                # A ghost: publish_mode=publish_first published it and then the order's commit failed (or has not
                # landed yet). Counted for the lessons' checkpoint (orders/checkpoints.py `ghost_messages`).
                cache.count_ghost_message()
            return Verdict(Action.DEAD_LETTER, reason=f"poison message: {exc}")
        if started is None:
            return ACK
        return self.verdict(order_id, self.pipeline.run(order_id, delivery, order=started.order), delivery)

    def process_batch(self, deliveries: list[Delivery]) -> Iterator[tuple[Delivery, Verdict | Exception]]:
        """Handle the deliveries a worker holds, yielding each with its verdict (or the unexpected exception that
        ended it, for the caller to settle as it settles one from `process`).

        The fresh ones (first deliveries of orders no worker has started, one per order) run as one batch, one
        transaction per step (orders/batch.py); every other delivery, and any order the batch leaves, goes through
        `process`, one by one, after the batch. Each gets exactly the verdict `process` would give it. Database
        errors and Interrupted propagate; what was yielded before them is settled, so the caller runs only the rest
        again."""
        items: list[tuple[Delivery, Item]] = []
        alone: list[Delivery] = []
        taken: set[uuid.UUID] = set()
        batchable = self.batchable()
        for delivery in deliveries:
            order_id = _fresh_order(delivery) if batchable else None
            if order_id is None or order_id in taken:
                alone.append(delivery)
                continue
            taken.add(order_id)
            items.append((delivery, Item(order_id=order_id, message=delivery)))
        if len(items) == 1:
            # A batch of one gains nothing from the batched receipt: it goes the per-order way.
            alone.insert(0, items.pop()[0])
        left = {id(item) for item in run_batch(self.pipeline, [item for _, item in items])} if items else set()
        for delivery, item in items:
            if id(item) in left:
                alone.append(delivery)
            elif item.error is not None:
                yield delivery, item.error
            elif item.outcome is None:
                yield delivery, BrokenInvariant(f"order {item.order_id}: the batch left it without an outcome or error")
            else:
                yield delivery, _guarded(self.verdict, item.order_id, item.outcome, delivery)
        for delivery in alone:
            yield delivery, _guarded(self.process, delivery)

    def verdict(self, order_id: uuid.UUID, outcome: Outcome, delivery: Delivery) -> Verdict:
        """The verdict for how an order's steps ended."""
        if outcome.ended is Ended.FAILED:
            log.info("order %s failed: %s", order_id, outcome.error)
        elif outcome.ended is Ended.TRANSIENT:
            return self.retry_or_give_up(order_id, outcome.step, outcome.error, delivery)
        return ACK

    def delay_lane(self, tier: RetryTier) -> RetryTier:
        """Where a retry of this tier waits: with jitter (the safe default) one of its lanes, picked at random, so
        orders that failed together come back spread over 0.5-1.5x the tier's delay; the sandbox's unsafe
        retry_backoff=fixed: the tier's own queue, exactly its delay."""
        return self.faults.retry_wait()(tier, tier.lanes, self.rng)

    def retry_or_give_up(self, order_id: uuid.UUID, step: str, exc: Exception | None, delivery: Delivery) -> Verdict:
        """A transient failure: schedule the next retry tier, or dead-letter the order after the last one.
        The order keeps its finished steps either way, so a retry or a replay resumes where it stopped."""
        tiers = self.topology.retry_tiers
        retries = delivery.retries
        if retries < len(tiers):
            tier = self.delay_lane(tiers[retries])
            message = (
                f"Transient failure in '{step}': {exc}. Retry {retries + 1} of {len(tiers)} "
                f"in {tier.delay_ms / 1000:g} s through {tier.queue}."
            )
            self.pipeline.retry_scheduled(order_id, message, delivery.retry_snapshot(tier, retries + 1))
            return Verdict(Action.RETRY, reason=str(exc), retry_queue=tier.queue, retries=retries + 1)
        reason = f"gave up after {len(tiers)} retries: {exc}"
        self.pipeline.gave_up(
            order_id,
            reason,
            f"Dead-lettered: {reason}. Replay it once the fault is fixed.",
            delivery.dead_letter_snapshot(self.topology, reason),
        )
        return Verdict(Action.DEAD_LETTER, reason=reason)

    def record_dead_letter(self, delivery: Delivery, reason: str) -> Transition | None:
        """A message the broker dead-lettered by itself (the quorum queue's delivery limit: it crashed workers
        repeatedly). Mark its order `dead_lettered` so it shows up for replay."""
        order_id = peek_order_id(delivery.body)
        if order_id is None:
            return None
        return self.pipeline.dead_lettered_by_broker(
            uuid.UUID(order_id), reason, delivery.broker_dead_letter_snapshot(self.topology)
        )
