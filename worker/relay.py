"""The outbox relay: moves committed outbox rows to RabbitMQ with publisher confirms, a window at a time; a row is
marked sent only once its own confirm came, so a kill at any point loses nothing (docs/10-design-notes.md, "The
outbox relay"). `relay_once` is the unit of work; `run_relay` loops around it on LISTEN/NOTIFY.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import signal
import time
import uuid
from collections.abc import Callable

import psycopg
from django.conf import settings
from django.db import DatabaseError, close_old_connections, connection, transaction
from django.utils import timezone

from orders.events import QueueSnapshot, outbox_row, record_event
from orders.models import EventKind, Order, OrderStatus, OutboxMessage
from orders.services import (
    Change,
    Transition,
    cache_after_batch_commit,
    cache_after_commit,
    idempotency_keys_purge,
    outbox_channel,
    transition_many,
    transition_order,
)
from worker.broker import BROKER_ERRORS, Message, Publisher, PublishFailed, connect, process_data_events
from worker.monitor import QueueMonitor
from worker.relay_monitor import RelayMonitor
from worker.sweeper import Sweeper
from worker.topology import Topology

log = logging.getLogger(__name__)


def relay_once(
    publisher: Publisher,
    *,
    batch_size: int | None = None,
    queue_ready: int | None = None,
    record: Recorder | None = None,
) -> int:
    """Publish up to one batch of pending outbox messages. Returns how many were published.

    Rows are claimed with FOR UPDATE SKIP LOCKED, so any number of relays share the backlog without publishing a
    row twice while both are alive. The claimed orders are locked too, for the length of the batch: a worker that
    receives a message before this transaction commits waits on that lock and then sees the order `queued`, so
    the journey reads in the order things happened. If the relay dies after publishing but before commit, the
    rows are published again; the worker's guarded steps make the duplicate harmless.

    `queue_ready` is the main queue's depth as the relay's queue monitor last observed it (about once a second,
    and on every connect, before this batch); each "published" event carries it, so the journey's RabbitMQ panel
    shows a depth at that step as at every other (the workers' events carry theirs the same way).

    `record` writes the confirmed rows' `published` events (`record_published`, batched, unless a test passes the
    per-order reference `record_published_each`). Each event's own log line is at DEBUG; the batch logs one INFO line.
    """
    record = record or record_published
    with transaction.atomic():
        rows = list(
            OutboxMessage.objects.select_for_update(skip_locked=True)
            .filter(sent_at__isnull=True)
            .order_by("id")[: batch_size or settings.RELAY_BATCH_SIZE]
        )
        if not rows:
            return 0
        _crash_point("claimed", len(rows))
        orders = {
            o.pk: o
            for o in Order.objects.select_for_update(of=("self",))
            .filter(pk__in={row.order_id for row in rows})
            .prefetch_related("lines")
        }
        published, failure = _settle(rows, _publish(publisher, rows))
        if published:
            _crash_point("published", len(published))
        OutboxMessage.objects.bulk_update(published, ["sent_at", "publish_attempts", "last_error"])
        after_commit = record(published, orders, publisher.topology, queue_ready)
    after_commit()
    if published:
        log.info(
            "relay: %d message(s) published and confirmed, outbox #%d to #%d",
            len(published),
            published[0].id,
            published[-1].id,
        )
    if failure is not None and not isinstance(failure, PublishFailed):
        raise failure
    if failure is not None:
        log.warning("outbox publish refused: %s", failure)
    return len(published)


def _settle(
    rows: list[OutboxMessage], verdicts: list[Exception | None]
) -> tuple[list[OutboxMessage], Exception | None]:
    """Each claimed row with the broker's verdict on it: the confirmed rows, marked sent (saved by the caller), and
    the failure to report after the commit (a lost broker outranks a refusal). An unconfirmed row stays pending,
    its error saved, and is tried again; the others keep their own verdicts."""
    published: list[OutboxMessage] = []
    failure: Exception | None = None
    for row, verdict in zip(rows, verdicts, strict=False):
        row.publish_attempts += 1
        if verdict is not None:
            row.last_error = str(verdict)[:1000] or verdict.__class__.__name__
            row.save(update_fields=["publish_attempts", "last_error"])
            if failure is None or isinstance(failure, PublishFailed):
                failure = verdict
            continue
        row.sent_at = timezone.now()
        row.last_error = ""
        published.append(row)
    return published, failure


# Writes the `published` events of a batch's confirmed rows (their orders locked) and returns what to run once the
# transaction has committed (the cache writes).
Recorder = Callable[[list[OutboxMessage], dict[uuid.UUID, Order], Topology, int | None], Callable[[], None]]


def _published(row: OutboxMessage, topo: Topology, queue_ready: int | None) -> tuple[str, QueueSnapshot]:
    """A confirmed row's `published` event: its message and queue snapshot."""
    message = f"Published outbox message #{row.id} to exchange {topo.exchange}; the broker confirmed it."
    queue: QueueSnapshot = {
        "exchange": topo.exchange,
        "routing_key": row.routing_key,
        "queue": topo.process_queue,
        "message_id": str(row.id),
        "outbox_id": row.id,
        "queue_ready": queue_ready,
        "note": "confirmed by the broker (publisher confirm, mandatory routing)",
    }
    return message, queue


def record_published(
    published: list[OutboxMessage], orders: dict[uuid.UUID, Order], topo: Topology, queue_ready: int | None
) -> Callable[[], None]:
    """Record the batch's `published` events: every pending order moves to `queued` in one guarded statement
    (`services.transition_many`), and its cache entry is written after the commit in one pipelined round trip
    (`cache_after_batch_commit`). An order already past `pending` (a replay's or the sweeper's new message, or a
    second row of an order moved by the first) gets its event on its own, after the moves, as the per-order way
    orders them. `record_published_each` is the same, one order at a time (worker/tests/test_relay.py pins them)."""
    moving: dict[uuid.UUID, Change] = {}
    others: list[tuple[Order, str, QueueSnapshot, OutboxMessage]] = []
    for row in published:
        order = orders[row.order_id]
        message, queue = _published(row, topo, queue_ready)
        if order.status == OrderStatus.PENDING and order.pk not in moving:
            moving[order.pk] = Change(order=order, message=message, queue=queue, rows=[outbox_row(row)])
        else:
            others.append((order, message, queue, row))
    transitions = transition_many(
        list(moving.values()), to=OrderStatus.QUEUED, kind=EventKind.PUBLISHED, log_level=logging.DEBUG
    )
    for order, message, queue, row in others:
        record_event(order, EventKind.PUBLISHED, message, queue=queue, rows=[outbox_row(row)], log_level=logging.DEBUG)
    return functools.partial(cache_after_batch_commit, transitions)


def record_published_each(
    published: list[OutboxMessage], orders: dict[uuid.UUID, Order], topo: Topology, queue_ready: int | None
) -> Callable[[], None]:
    """The reference: each confirmed row's order moves to `queued` with its own statement (or, already past
    `pending`, gets its event), and each cache entry is written on its own after the commit."""
    transitions: list[Transition] = []
    for row in published:
        order = orders[row.order_id]
        message, queue = _published(row, topo, queue_ready)
        if order.status == OrderStatus.PENDING:
            transitions.append(
                transition_order(
                    order,
                    to=OrderStatus.QUEUED,
                    kind=EventKind.PUBLISHED,
                    message=message,
                    queue=queue,
                    rows=[outbox_row(row)],
                )
            )
        else:
            # A replayed order is already `queued`; a worker may even have finished it from an earlier copy.
            record_event(order, EventKind.PUBLISHED, message, queue=queue, rows=[outbox_row(row)])
    return functools.partial(cache_after_commit, transitions)


def _publish(publisher: Publisher, rows: list[OutboxMessage]) -> list[Exception | None]:
    """Publish `rows` and return a verdict for each row tried, in order: None once the broker confirmed it, else
    the error (PublishFailed: refused; one of BROKER_ERRORS: the broker went away before confirming). Rows after a
    lost broker are not tried (the list is shorter). RELAY_CONFIRM_WINDOW rows at a time are published before
    their confirms are awaited together; with a window of 1 each row's confirm is awaited before the next publish,
    the readable reference (`_publish_each`) the windowed path must agree with (worker/tests/test_relay.py)."""
    window = settings.RELAY_CONFIRM_WINDOW
    if window == 1:
        return _publish_each(publisher, rows)
    exchange = publisher.topology.exchange
    verdicts: list[Exception | None] = []
    for start in range(0, len(rows), window):
        messages = [
            Message(
                exchange=exchange,
                routing_key=row.routing_key,
                body=row.payload,
                message_id=str(row.id),
                message_type=row.message_type,
            )
            for row in rows[start : start + window]
        ]
        verdicts += publisher.publish_many(messages)
        if any(verdict is not None and not isinstance(verdict, PublishFailed) for verdict in verdicts):
            break
    return verdicts


def _publish_each(publisher: Publisher, rows: list[OutboxMessage]) -> list[Exception | None]:
    """The reference: publish one row, wait for its confirm, then the next. A refused row does not stop the batch
    (the next row may route elsewhere, or find room in the queue); a lost broker does."""
    verdicts: list[Exception | None] = []
    for row in rows:
        try:
            publisher.publish(
                exchange=publisher.topology.exchange,
                routing_key=row.routing_key,
                body=row.payload,
                message_id=str(row.id),
                message_type=row.message_type,
            )
        except PublishFailed as exc:
            verdicts.append(exc)
        except BROKER_ERRORS as exc:
            verdicts.append(exc)
            break
        else:
            verdicts.append(None)
    return verdicts


def _main_queue_ready(publisher: Publisher) -> int:
    return publisher.channel.queue_declare(publisher.topology.process_queue, passive=True).method.message_count


def _crash_point(point: str, rows: int) -> None:
    """Tests only (`ORDERPIPE_RELAY_CRASH_AT`): die by SIGKILL here, so a chaos test lands a relay kill exactly
    between claim and publish ("claimed") or between the broker's confirms and the commit ("published")."""
    if point == settings.RELAY_CRASH_AT:
        log.warning("relay: crash point %s reached with %d row(s); SIGKILL", point, rows)
        for handler in logging.getLogger().handlers:
            handler.flush()
        os.kill(os.getpid(), signal.SIGKILL)


class OutboxListener:
    """Sleeps until PostgreSQL NOTIFYs a new outbox row (or, given a `channel`, anything on it), or a timeout passes
    (the polling fallback)."""

    def __init__(self, channel: str | None = None) -> None:
        self.conn: psycopg.Connection | None = None
        self.channel = channel  # None: the outbox's channel

    def _connect(self) -> psycopg.Connection:
        params = connection.settings_dict
        conn = psycopg.connect(
            host=params["HOST"],
            port=params["PORT"] or 5432,
            user=params["USER"],
            password=params["PASSWORD"] or None,
            dbname=params["NAME"],
            autocommit=True,
            connect_timeout=3,
        )
        conn.execute(f'LISTEN "{self.channel or outbox_channel()}"')
        return conn

    def wait(self, timeout: float) -> bool:
        """True if woken by a notification, False on timeout or when the database is unreachable."""
        try:
            if self.conn is None or self.conn.closed:
                self.conn = self._connect()
            woke = False
            for _ in self.conn.notifies(timeout=timeout, stop_after=1):
                woke = True
            if woke:
                # Drain notifications that arrived together: one relay_once takes them all.
                for _ in self.conn.notifies(timeout=0):
                    pass
            return woke
        except (psycopg.Error, OSError) as exc:
            log.warning("outbox listener: %s", exc)
            self.close()
            time.sleep(min(timeout, 1.0))
            return False

    def close(self) -> None:
        if self.conn is not None:
            with contextlib.suppress(psycopg.Error):
                self.conn.close()
        self.conn = None


class Backoff:
    """Capped exponential backoff: 0.5 s, 1 s, 2 s ... up to `cap`."""

    def __init__(self, base: float = 0.5, cap: float = 10.0) -> None:
        self.base, self.cap, self.failures = base, cap, 0

    def next_delay(self) -> float:
        delay = min(self.cap, self.base * (2**self.failures))
        self.failures += 1
        return delay

    def reset(self) -> None:
        self.failures = 0


def run_relay(
    should_stop: Callable[[], bool],
    *,
    poll_interval: float | None = None,
    amqp_url: str | None = None,
) -> None:
    """Relay until `should_stop()` is true. A batch in hand is always finished before stopping."""
    poll = poll_interval if poll_interval is not None else settings.RELAY_POLL_INTERVAL
    listener = OutboxListener()
    backoff = Backoff()
    publisher: Publisher | None = None
    monitor: QueueMonitor | None = None
    sweeper = Sweeper()
    # The dashboard's relay stage: a heartbeat row, written from the loop's own stop checks (worker/relay_monitor.py).
    relay_monitor = RelayMonitor(sweeper)
    should_stop = relay_monitor.watch(should_stop)
    try:
        while not should_stop():
            try:
                if publisher is None:
                    publisher = Publisher(connect(amqp_url))
                    publisher.declare_topology()
                    monitor = QueueMonitor(publisher.connection, publisher.topology)
                    log.info("relay connected to RabbitMQ")
                    monitor.observe()
                depth = monitor.depth(publisher.topology.process_queue) if monitor is not None else None
                published = relay_once(publisher, queue_ready=depth)
                relay_monitor.published(published)
                backoff.reset()
                sweeper.tick(functools.partial(_main_queue_ready, publisher))
                if published == 0:
                    _idle(poll, listener, publisher, monitor, should_stop)
            except BROKER_ERRORS as exc:
                delay = backoff.next_delay()
                # Some pika errors have no message (str() is empty): name their class instead.
                reason = str(exc) or exc.__class__.__name__
                log.warning("relay: broker unavailable (%s); retrying in %.1fs", reason, delay)
                if publisher is not None:
                    publisher.close()
                publisher, monitor = None, None
                relay_monitor.unreachable(f"{reason}; reconnecting in {delay:.1f} s")
                _sleep(delay, should_stop)
            except DatabaseError as exc:
                delay = backoff.next_delay()
                log.warning("relay: database unavailable (%s); retrying in %.1fs", exc, delay)
                close_old_connections()
                _sleep(delay, should_stop)
    finally:
        relay_monitor.stop()
        listener.close()
        if publisher is not None:
            publisher.close()
        connection.close()


_last_purge = float("-inf")


def _idle(
    poll: float,
    listener: OutboxListener,
    publisher: Publisher,
    monitor: QueueMonitor | None,
    should_stop: Callable[[], bool],
) -> None:
    """Wait for a NOTIFY or the polling interval, in short slices that keep pika's heartbeats serviced, the queue
    monitor ticking and a stop request honoured within half a second."""
    deadline = time.monotonic() + poll
    global _last_purge
    if time.monotonic() - _last_purge > 60:
        _last_purge = time.monotonic()
        idempotency_keys_purge()
    while not should_stop():
        process_data_events(publisher.connection, 0)
        if monitor is not None:
            monitor.maybe_observe()
        remaining = deadline - time.monotonic()
        if remaining <= 0 or listener.wait(min(0.5, remaining)):
            return


def _sleep(seconds: float, should_stop: Callable[[], bool]) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline and not should_stop():
        time.sleep(0.1)
