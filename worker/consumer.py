"""The worker process: consumes `order.placed` messages and hands each to the Processor. The main thread only
services pika's connection; steps run on a thread pool and hand their verdict back with `add_callback_threadsafe`;
every delivery ends in an ack, a nack or a confirmed republish, after the step's commit (docs/10-design-notes.md,
"The worker: threads, batches and verdicts").
"""

from __future__ import annotations

import functools
import logging
import os
import signal
import socket
import threading
import time
import uuid
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

from django.conf import settings
from django.db import DatabaseError, InterfaceError, OperationalError, close_old_connections, connection
from django.utils import timezone
from pika.adapters.blocking_connection import BlockingChannel, BlockingConnection
from pika.spec import Basic, BasicProperties

from orders.sandbox.faults import Faults
from worker.broker import BROKER_ERRORS, Publisher, PublishFailed, connect, process_data_events
from worker.database_watch import DatabaseWatch
from worker.inhand import InHand
from worker.models import WorkerHeartbeat
from worker.monitor import QueueMonitor
from worker.processing import (
    REASON_HEADER,
    RETRIES_HEADER,
    Action,
    Delivery,
    Interrupted,
    Processor,
    Verdict,
    peek_order_id,
)
from worker.queue_policy import DROPPED
from worker.relay import Backoff
from worker.settings_watch import SettingsWatch
from worker.topology import MESSAGE_TYPE, Topology, topology

log = logging.getLogger(__name__)

DB_ERRORS = (OperationalError, InterfaceError)
# Headers the broker manages; a republished copy starts fresh.
_BROKER_HEADERS = {
    "x-delivery-count",
    "x-death",
    "x-first-death-exchange",
    "x-first-death-queue",
    "x-first-death-reason",
}


@dataclass(frozen=True)
class Requeue:
    """The verdict for an unexpected error: nack with requeue, so the delivery limit parks a message that fails
    every time (kept here rather than in processing.Action: only the consumer can nack)."""

    reason: str


Outcome = Verdict | Requeue


class Worker:
    def __init__(
        self,
        *,
        prefetch: int | None = None,
        concurrency: int | None = None,
        name: str | None = None,
        amqp_url: str | None = None,
        topo: Topology | None = None,
        faults: Faults | None = None,
    ) -> None:
        self.prefetch = prefetch or settings.WORKER_PREFETCH
        self.concurrency = concurrency or settings.WORKER_CONCURRENCY
        self.name = name or f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:4]}"
        self.amqp_url = amqp_url
        self.topology = topo or topology()
        self.faults = faults or Faults()
        self.stopping = threading.Event()
        self.processor = Processor(faults=self.faults, topo=self.topology, should_stop=self.stopping.is_set)
        self.connection: BlockingConnection | None = None
        self.channel: BlockingChannel | None = None
        self.publisher: Publisher | None = None
        self.monitor: QueueMonitor | None = None
        self.consumer_tag: str | None = None
        self.executor = ThreadPoolExecutor(max_workers=self.concurrency, thread_name_prefix="step")
        self.in_flight: set[Future] = set()
        # The order each unsettled delivery carries and the orders step threads work on, for the heartbeat.
        self.in_hand = InHand()
        # Deliveries waiting for a step thread to take them as a batch (a batched delivery is in `in_hand` under
        # id(delivery) until it is handed to the connection's thread to settle).
        self.pending: list[Delivery] = []
        self.pending_lock = threading.Lock()
        # The delivery tags of the current channel not yet acked or nacked (the connection's thread only): a
        # `multiple` ack must not settle a delivery another thread still works on.
        self.unsettled: set[int] = set()
        self.processed = 0
        self.started_at = timezone.now()
        self.last_heartbeat = 0.0
        # After a failed heartbeat: beat again the moment the database answers (worker/database_watch.py).
        self.database = DatabaseWatch()
        self.missed_heartbeat = False
        self.last_sandbox_check = 0.0
        # The sandbox settings version this worker runs (pause applied, faults and modes read), for its heartbeat.
        self.settings_version: int | None = None
        self.settings_watch = SettingsWatch()

    # ------------------------------------------------------------ lifecycle

    def stop(self, *_args: object) -> None:
        """SIGTERM/SIGINT: stop taking messages; the ones in hand are finished and acked, then run() returns."""
        self.stopping.set()

    def install_signal_handlers(self) -> None:
        signal.signal(signal.SIGTERM, self.stop)
        signal.signal(signal.SIGINT, self.stop)

    def run(self) -> None:
        backoff = Backoff()
        while not self.stopping.is_set():
            try:
                self._connect()
                backoff.reset()
                self._consume_until_stopped()
            except BROKER_ERRORS as exc:
                delay = backoff.next_delay()
                log.warning("worker: broker unavailable (%s); reconnecting in %.1fs", exc or type(exc).__name__, delay)
                self._drop_connection()
                self.stopping.wait(delay)
        self.executor.shutdown(wait=True)
        self._write_heartbeat(final=True)
        self.settings_watch.close()
        connection.close()

    def _connect(self) -> None:
        self.connection = connect(self.amqp_url)
        self.channel = self.connection.channel()
        self.unsettled = set()
        self.topology.declare(self.channel)
        self.channel.basic_qos(prefetch_count=self.prefetch)
        # Retries and dead letters are published on their own confirm channel, from this thread only.
        self.publisher = Publisher(self.connection, self.topology)
        # Observed once before consuming: the first deliveries after a (re)connect, often redeliveries, would
        # otherwise carry no queue depths until the first periodic observation a second later.
        self.monitor = QueueMonitor(self.connection, self.topology)
        self.monitor.observe()
        self.channel.basic_consume(self.topology.dead_watch_queue, self._on_dead_letter)
        self.consumer_tag = None
        self._apply_settings(fresh=True)
        log.info("worker %s consuming %s (prefetch %d)", self.name, self.topology.process_queue, self.prefetch)

    def _consume_until_stopped(self) -> None:
        assert self.connection is not None and self.channel is not None
        while not self.stopping.is_set():
            process_data_events(self.connection, 0.2)
            self._periodic()
        # Graceful stop: no new deliveries; finish what is in hand, flush its acks, then close.
        if self.consumer_tag:
            self.channel.basic_cancel(self.consumer_tag)
        deadline = time.monotonic() + 30
        while self.in_flight and time.monotonic() < deadline:
            process_data_events(self.connection, 0.1)
        process_data_events(self.connection, 0)
        self._drop_connection()

    def _drop_connection(self) -> None:
        # Unacked deliveries of a closed channel return to the queue; a thread still working on one will find
        # its ack has nowhere to go, and the redelivery resumes at the first unfinished step.
        if self.connection is not None:
            try:
                if self.connection.is_open:
                    self.connection.close()
            except BROKER_ERRORS:
                pass
        self.connection, self.channel, self.publisher, self.monitor = None, None, None, None

    def _apply_settings(self, *, fresh: bool = False) -> None:
        """Read the sandbox settings (`fresh`: now, after a change's NOTIFY), apply 'pause consumption' and report
        the version now in effect in a heartbeat at once: whoever changed it is waiting for that (worker/applied.py).
        The step threads read the same values from the same reader, so every step from here on runs them."""
        try:
            self.faults.reader.get(fresh=fresh)
            paused = self.faults.paused()
        except DatabaseError:
            close_old_connections()
            return
        self._apply_pause(paused)
        if self.faults.reader.version != self.settings_version:
            self.settings_version = self.faults.reader.version
            self._write_heartbeat()

    def _apply_pause(self, paused: bool) -> None:
        """Sandbox 'pause consumption': cancel the consumer (messages wait in the queue), resume when unpaused."""
        assert self.channel is not None
        if paused and self.consumer_tag:
            self.channel.basic_cancel(self.consumer_tag)
            self.consumer_tag = None
            log.info("worker %s paused by the sandbox", self.name)
        elif not paused and not self.consumer_tag:
            self.consumer_tag = self.channel.basic_consume(self.topology.process_queue, self._on_message)

    # ------------------------------------------------------------ deliveries

    def _delivery(self, queue: str, method: Basic.Deliver, props: BasicProperties, body: bytes) -> Delivery:
        return Delivery(
            body=body,
            delivery_tag=method.delivery_tag,
            redelivered=bool(method.redelivered),
            exchange=method.exchange,
            routing_key=method.routing_key,
            queue=queue,
            message_id=props.message_id or "",
            headers=dict(props.headers or {}),
            depths=dict(self.monitor.ready) if self.monitor else {},
            worker=self.name,
        )

    def _submit(self, channel: BlockingChannel, delivery: Delivery, work: Callable[[Delivery], Verdict | None]) -> None:
        future = self.executor.submit(self._handle, channel, delivery, work)
        self.in_flight.add(future)
        self.in_hand.hold(future, peek_order_id(delivery.body))
        future.add_done_callback(self._done)

    def _done(self, future: Future) -> None:
        self.in_flight.discard(future)
        self.in_hand.release(future)
        # `_handle` settles every exception itself; one escaping it is a bug in the consumer. Say so loudly rather
        # than let the executor keep it in a future nobody reads.
        if not future.cancelled() and future.exception() is not None:
            log.error("worker: a step thread failed outside its delivery handling", exc_info=future.exception())

    def _on_message(self, channel: BlockingChannel, method: Basic.Deliver, props: BasicProperties, body: bytes) -> None:
        delivery = self._delivery(self.topology.process_queue, method, props, body)
        if self._ack_on_receive():
            # The unsafe mode (sandbox ack_mode=on_receive): the broker forgets the message now, before any step has
            # committed. From here until the order's last commit, the only copy is this process's memory: killed,
            # it takes the message with it, and nothing will ever redeliver it.
            channel.basic_ack(delivery.delivery_tag)
            delivery.acked = True
        else:
            self.unsettled.add(delivery.delivery_tag)
            if self._batchable():
                self._hold(channel, delivery)
                return
        self._submit(channel, delivery, self._process)

    def _batchable(self) -> bool:
        try:
            return self.processor.batchable()
        except DatabaseError:
            close_old_connections()
            return False  # the per-order way keeps it unacked until the database answers

    def _hold(self, channel: BlockingChannel, delivery: Delivery) -> None:
        """Add the delivery to what is in hand, and ask a step thread to take what is in hand then."""
        self.in_hand.hold(id(delivery), peek_order_id(delivery.body))
        with self.pending_lock:
            self.pending.append(delivery)
        future = self.executor.submit(self._take, channel)
        self.in_flight.add(future)
        future.add_done_callback(self._taken)

    def _take(self, channel: BlockingChannel) -> None:
        """Runs on a step thread: everything pending, as one batch (nothing, if a thread free before it took it)."""
        with self.pending_lock:
            deliveries, self.pending = self.pending, []
        if not deliveries:
            return
        try:
            self._handle_batch(channel, deliveries)
        finally:
            for delivery in deliveries:
                self.in_hand.release(id(delivery))

    def _taken(self, future: Future) -> None:
        self.in_flight.discard(future)
        if not future.cancelled() and future.exception() is not None:
            log.error("worker: a batch failed outside its delivery handling", exc_info=future.exception())

    def _ack_on_receive(self) -> bool:
        try:
            return self.faults.acks_on_receipt()
        except DatabaseError:
            close_old_connections()
            return False

    def _on_dead_letter(
        self, channel: BlockingChannel, method: Basic.Deliver, props: BasicProperties, body: bytes
    ) -> None:
        self.unsettled.add(method.delivery_tag)
        self._submit(channel, self._delivery(self.topology.dead_watch_queue, method, props, body), self._watch)

    def _process(self, delivery: Delivery) -> Verdict | None:
        self.in_hand.begin(peek_order_id(delivery.body))
        try:
            return self.processor.process(delivery)
        finally:
            self.in_hand.end()

    def _watch(self, delivery: Delivery) -> Verdict | None:
        if REASON_HEADER in delivery.headers:
            return Verdict(Action.ACK)  # dead-lettered by a worker, which already marked the order
        reason = str(delivery.headers.get("x-first-death-reason") or "dead-lettered by the broker")
        if reason == "maxlen":
            reason = DROPPED
        elif reason == "delivery_limit":
            reason = (
                f"delivery limit reached: delivered {settings.AMQP_DELIVERY_LIMIT}+ times without an ack "
                "(it crashed workers or raised an unexpected error each time; see the worker log)"
            )
        self.processor.record_dead_letter(delivery, reason)
        return Verdict(Action.ACK)

    def _handle(self, channel: BlockingChannel, delivery: Delivery, work: Callable[[Delivery], Verdict | None]) -> None:
        """Runs on a step thread. Never touches the channel itself: the verdict goes to the connection's thread."""
        outcome: Outcome | None
        try:
            outcome = None if self.stopping.is_set() else self._until_database_answers(delivery, work)
        except Exception as exc:
            outcome = self._unexpected(delivery, exc)
        close_old_connections()
        if outcome is None:
            return  # the worker is stopping: left unacked, it returns to the queue when the channel closes
        try:
            channel.connection.add_callback_threadsafe(functools.partial(self._settle, channel, delivery, outcome))
        except BROKER_ERRORS:
            log.warning("connection closed before settling delivery %s; it will be redelivered", delivery.delivery_tag)

    def _handle_batch(self, channel: BlockingChannel, deliveries: list[Delivery]) -> None:
        """`_handle` for a batch (`Processor.process_batch`): each delivery's verdict is settled as `_handle` settles
        it, all of them in one callback to the connection's thread once the batch is done. A database outage keeps
        the ones without a verdict yet and runs them again when the database answers."""
        self.in_hand.begin(peek_order_id(deliveries[0].body))
        try:
            outcomes = self._batch_outcomes(deliveries)
        finally:
            self.in_hand.end()
        close_old_connections()
        settled = [(delivery, outcomes[id(delivery)]) for delivery in deliveries if id(delivery) in outcomes]
        if not settled:
            return  # the worker is stopping: left unacked, they return to the queue when the channel closes
        try:
            channel.connection.add_callback_threadsafe(functools.partial(self._settle_batch, channel, settled))
        except BROKER_ERRORS:
            log.warning("connection closed before settling %d deliveries; they will be redelivered", len(settled))

    def _batch_outcomes(self, deliveries: list[Delivery]) -> dict[int, Outcome]:
        """Each delivery's outcome (by `id`) from `Processor.process_batch`, run again after a database outage for
        the deliveries still without one. Those left when the worker stops or the batch is interrupted get none."""
        outcomes: dict[int, Outcome] = {}
        backoff = Backoff(cap=5.0)
        while not self.stopping.is_set():
            left = [delivery for delivery in deliveries if id(delivery) not in outcomes]
            if not left:
                break
            try:
                for delivery, result in self.processor.process_batch(left):
                    outcomes[id(delivery)] = (
                        result if isinstance(result, Verdict) else self._unexpected(delivery, result)
                    )
            except Interrupted as exc:
                log.info("%s; leaving the messages unacked", exc)
                break
            except DB_ERRORS as exc:
                delay = backoff.next_delay()
                log.warning("worker: database unavailable (%s); retrying %d deliveries in %.1fs", exc, len(left), delay)
                connection.close()
                if self.stopping.wait(delay):
                    break
            except Exception as exc:
                # Outside any one order (the batch's own code): each delivery it left is settled as unexpected.
                for delivery in left:
                    if id(delivery) not in outcomes:
                        outcomes[id(delivery)] = self._unexpected(delivery, exc)
        return outcomes

    def _unexpected(self, delivery: Delivery, exc: Exception) -> Outcome:
        """Not an outage: a bug or bad data that waiting will not fix. Logged once per delivery with the order and
        the traceback; the message is returned (counted by the quorum queue, parked past its delivery limit)."""
        order_id = peek_order_id(delivery.body) or "?"
        log.error(
            "worker: unexpected %s on order %s (message %s, delivery #%d); returning it to the queue, which "
            "dead-letters it after %d deliveries",
            type(exc).__name__,
            order_id,
            delivery.message_id or "?",
            delivery.delivery_count,
            settings.AMQP_DELIVERY_LIMIT,
            exc_info=exc,
        )
        if isinstance(exc, DatabaseError):
            connection.close()  # the connection may be unusable (an aborted transaction); open a fresh one
        if delivery.queue == self.topology.dead_watch_queue:
            # The watch queue has no delivery limit, so a requeue would loop forever. Its message is only a copy:
            # the original stays parked in the dead-letter queue for replay.
            return Verdict(Action.ACK)
        return Requeue(f"{type(exc).__name__}: {exc}")

    def _until_database_answers(self, delivery: Delivery, work: Callable[[Delivery], Verdict | None]) -> Verdict | None:
        """A database outage must not ack, reject or requeue the message: keep it in hand, unacked, and try again
        until the database answers. With every prefetch slot held this way, consumption stops by itself. Any other
        exception propagates to `_handle`, which settles it."""
        backoff = Backoff(cap=5.0)
        while True:
            try:
                return work(delivery)
            except Interrupted as exc:
                log.info("%s; leaving the message unacked", exc)
                return None
            except DB_ERRORS as exc:
                delay = backoff.next_delay()
                log.warning("worker: database unavailable (%s); retrying delivery in %.1fs", exc, delay)
                connection.close()
                if self.stopping.wait(delay):
                    return None

    def _settle(self, channel: BlockingChannel, delivery: Delivery, verdict: Outcome) -> None:
        """Runs on the connection's thread. A retry or dead letter is confirmed by the broker before the original
        is acked, so the message exists somewhere at every instant."""
        if not channel.is_open:
            return
        if delivery.acked:
            self._settle_acked(delivery, verdict)
            return
        if self._hand_on_or_nack(channel, delivery, verdict):
            channel.basic_ack(delivery.delivery_tag)
            self.unsettled.discard(delivery.delivery_tag)
            if delivery.queue == self.topology.process_queue:
                self.processed += 1

    def _hand_on_or_nack(self, channel: BlockingChannel, delivery: Delivery, verdict: Outcome) -> bool:
        """Everything `_settle` does before the ack: nack a Requeue, publish a retry or a dead letter (confirmed).
        Returns whether the delivery is to be acked."""
        if isinstance(verdict, Requeue):
            channel.basic_nack(delivery.delivery_tag, requeue=True)
            self.unsettled.discard(delivery.delivery_tag)
            return False
        if verdict.action is not Action.ACK:
            try:
                self._hand_on(delivery, verdict)
            except PublishFailed as exc:
                log.warning("could not hand delivery %s on (%s); requeueing it", delivery.message_id, exc)
                channel.basic_nack(delivery.delivery_tag, requeue=True)
                self.unsettled.discard(delivery.delivery_tag)
                return False
        return True

    def _settle_batch(self, channel: BlockingChannel, settled: list[tuple[Delivery, Outcome]]) -> None:
        """`_settle` for a batch, on the connection's thread: the nacks and hand-ons first (each confirmed before its
        ack), then the acks together."""
        if not channel.is_open:
            return
        acks: list[Delivery] = []
        for delivery, verdict in settled:
            if delivery.acked:
                self._settle_acked(delivery, verdict)
            elif self._hand_on_or_nack(channel, delivery, verdict):
                acks.append(delivery)
        self._ack_all(channel, sorted(delivery.delivery_tag for delivery in acks))
        self.processed += sum(1 for delivery in acks if delivery.queue == self.topology.process_queue)

    def _ack_all(self, channel: BlockingChannel, tags: list[int]) -> None:
        """Ack `tags` (ascending): one `multiple` ack for those below every other unsettled delivery of the channel
        (a multiple ack settles every delivery up to its tag), then the rest one by one."""
        # The lowest delivery of the channel still unsettled that is not in `tags` (0 for a channel we no longer
        # track: one by one there).
        floor = min(self.unsettled.difference(tags), default=None) if channel is self.channel else 0
        below = [tag for tag in tags if floor is None or tag < floor]
        if len(below) > 1:
            channel.basic_ack(below[-1], multiple=True)
        else:
            below = []
        for tag in tags[len(below) :]:
            channel.basic_ack(tag)
        self.unsettled.difference_update(tags)

    def _hand_on(self, delivery: Delivery, verdict: Verdict) -> None:
        """Publish the message to its retry tier or the dead letters, confirmed; raises PublishFailed."""
        headers = {k: v for k, v in delivery.headers.items() if k not in _BROKER_HEADERS}
        if verdict.action is Action.RETRY:
            exchange, routing_key = "", verdict.retry_queue
            headers[RETRIES_HEADER] = verdict.retries
        else:
            exchange, routing_key = self.topology.dead_letter_exchange, delivery.routing_key
            headers[REASON_HEADER] = verdict.reason[:1000]
        assert self.publisher is not None
        self.publisher.publish_raw(
            exchange=exchange,
            routing_key=routing_key,
            body=delivery.body,
            message_id=delivery.message_id,
            message_type=MESSAGE_TYPE,
            headers=headers,
        )

    def _settle_acked(self, delivery: Delivery, verdict: Outcome) -> None:
        """ack_mode=on_receive: the message was acked when it arrived, so there is nothing to ack or return. A retry
        or a dead letter is still published (a new message), but a Requeue, or a publish the broker refuses, has no
        message left to return: the order is lost, and the log says so."""
        if isinstance(verdict, Requeue):
            log.error(
                "ack_mode=on_receive: message %s was acked on receipt; it cannot be returned", delivery.message_id
            )
            return
        if verdict.action is not Action.ACK:
            try:
                self._hand_on(delivery, verdict)
            except PublishFailed as exc:
                log.error(
                    "ack_mode=on_receive: message %s acked on receipt and not handed on (%s)", delivery.message_id, exc
                )
                return
        if delivery.queue == self.topology.process_queue:
            self.processed += 1

    # ------------------------------------------------------------ periodic

    def _periodic(self) -> None:
        if self.monitor:
            self.monitor.maybe_observe()
        now = time.monotonic()
        announced = self.settings_watch.changed()
        if announced or now - self.last_sandbox_check >= 1.0:
            self.last_sandbox_check = now
            self._apply_settings(fresh=announced)
        if (self.missed_heartbeat and not self.database.down) or now - self.last_heartbeat >= 1.0:
            self._write_heartbeat()

    def _write_heartbeat(self, *, final: bool = False) -> None:
        self.last_heartbeat = time.monotonic()
        if not final and self.database.down:
            return  # not through a pool that waits out its backoff: the watch resets it when the database answers
        try:
            if final:
                WorkerHeartbeat.objects.filter(pk=self.name).delete()
                return
            in_hand = self.in_hand.snapshot()
            WorkerHeartbeat.objects.update_or_create(
                pk=self.name,
                defaults={
                    "hostname": socket.gethostname(),
                    "pid": os.getpid(),
                    "current_order": in_hand.current_order,
                    "holding": in_hand.holding,
                    "processed": self.processed,
                    "unacked": in_hand.unacked,
                    "settings_version": self.settings_version or 0,
                    "concurrency": self.concurrency,
                    "prefetch": self.prefetch,
                    "started_at": self.started_at,
                    "last_seen": timezone.now(),
                },
            )
            self.missed_heartbeat = False
        except DatabaseError as exc:
            log.debug("heartbeat not stored: %s", exc)
            self.missed_heartbeat = not final
            self.database.failed()
