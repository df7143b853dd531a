"""The worker process: consumes `order.placed` messages and hands each to `processing.process`.

pika's BlockingConnection is not thread-safe and does no background I/O, so the main thread does nothing but
service the connection (heartbeats, deliveries, acks) while the steps run on a small thread pool. Workers hand
their verdict back with `add_callback_threadsafe`, and the ack is sent from the connection's own thread, only
after the last step's commit.
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
from concurrent.futures import Future, ThreadPoolExecutor

from django.conf import settings
from django.db import DatabaseError, InterfaceError, OperationalError, close_old_connections, connection
from django.utils import timezone
from pika.adapters.blocking_connection import BlockingChannel, BlockingConnection
from pika.spec import Basic, BasicProperties

from orders.models import WorkerHeartbeat
from worker import processing
from worker.broker import BROKER_ERRORS, connect
from worker.monitor import QueueMonitor
from worker.processing import Delivery, Outcome
from worker.relay import Backoff
from worker.topology import Topology, topology

log = logging.getLogger(__name__)

DB_ERRORS = (OperationalError, InterfaceError)


class Worker:
    def __init__(
        self,
        *,
        prefetch: int | None = None,
        concurrency: int = 1,
        name: str | None = None,
        amqp_url: str | None = None,
        topo: Topology | None = None,
    ) -> None:
        self.prefetch = prefetch or settings.WORKER_PREFETCH
        self.concurrency = concurrency
        self.name = name or f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:4]}"
        self.amqp_url = amqp_url
        self.topology = topo or topology()
        self.stopping = threading.Event()
        self.connection: BlockingConnection | None = None
        self.channel: BlockingChannel | None = None
        self.monitor: QueueMonitor | None = None
        self.executor = ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix="step")
        self.in_flight: set[Future] = set()
        self.processed = 0
        self.current_order: str | None = None
        self.started_at = timezone.now()
        self.last_heartbeat = 0.0

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
        connection.close()

    def _connect(self) -> None:
        self.connection = connect(self.amqp_url)
        self.channel = self.connection.channel()
        self.topology.declare(self.channel)
        self.channel.basic_qos(prefetch_count=self.prefetch)
        self.consumer_tag = self.channel.basic_consume(self.topology.process_queue, self._on_message)
        self.monitor = QueueMonitor(self.connection, self.topology)
        log.info("worker %s consuming %s (prefetch %d)", self.name, self.topology.process_queue, self.prefetch)

    def _consume_until_stopped(self) -> None:
        assert self.connection is not None and self.channel is not None
        while not self.stopping.is_set():
            self.connection.process_data_events(time_limit=0.2)
            self._periodic()
        # Graceful stop: no new deliveries; finish what is in hand, flush its acks, then close.
        self.channel.basic_cancel(self.consumer_tag)
        deadline = time.monotonic() + 30
        while self.in_flight and time.monotonic() < deadline:
            self.connection.process_data_events(time_limit=0.1)
        self.connection.process_data_events(time_limit=0)
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
        self.connection, self.channel, self.monitor = None, None, None

    # ------------------------------------------------------------ deliveries

    def _on_message(self, channel: BlockingChannel, method: Basic.Deliver, props: BasicProperties, body: bytes) -> None:
        delivery = Delivery(
            body=body,
            delivery_tag=method.delivery_tag,
            redelivered=bool(method.redelivered),
            exchange=method.exchange,
            routing_key=method.routing_key,
            queue=self.topology.process_queue,
            message_id=props.message_id or "",
            headers=dict(props.headers or {}),
            queue_ready=self.monitor.depth(self.topology.process_queue) if self.monitor else None,
        )
        future = self.executor.submit(self._handle, channel, delivery)
        self.in_flight.add(future)
        future.add_done_callback(self.in_flight.discard)

    def _handle(self, channel: BlockingChannel, delivery: Delivery) -> None:
        """Runs on a step thread. Never acks itself: the verdict goes back to the connection's thread."""
        connection_ = channel.connection
        if self.stopping.is_set():
            outcome = None  # not started: leave it unacked, it returns to the queue when we close
        else:
            outcome = self._process_until_database_answers(delivery)
        close_old_connections()
        if outcome is None:
            return
        try:
            connection_.add_callback_threadsafe(functools.partial(self._settle, channel, delivery, outcome))
        except BROKER_ERRORS:
            log.warning("connection closed before settling delivery %s; it will be redelivered", delivery.delivery_tag)

    def _process_until_database_answers(self, delivery: Delivery) -> Outcome | None:
        """A database outage must not ack, reject or requeue the message: keep it in hand, unacked, and try again
        until the database answers. With every prefetch slot held this way, consumption stops by itself."""
        backoff = Backoff(cap=5.0)
        while True:
            try:
                try:
                    self.current_order = processing.peek_order_id(delivery.body)
                    return processing.process(delivery)
                finally:
                    self.current_order = None
            except DB_ERRORS as exc:
                delay = backoff.next_delay()
                log.warning("worker: database unavailable (%s); retrying delivery in %.1fs", exc, delay)
                connection.close()
                if self.stopping.wait(delay):
                    return None
            except DatabaseError:
                log.exception("worker: database error on delivery %s; will be redelivered", delivery.message_id)
                connection.close()
                return None

    def _settle(self, channel: BlockingChannel, delivery: Delivery, outcome: Outcome) -> None:
        """Runs on the connection's thread."""
        if not channel.is_open:
            return
        if outcome is Outcome.ACK:
            channel.basic_ack(delivery.delivery_tag)
            self.processed += 1
        else:
            channel.basic_reject(delivery.delivery_tag, requeue=False)

    # ------------------------------------------------------------ periodic

    def _periodic(self) -> None:
        if self.monitor:
            self.monitor.maybe_observe()
        if time.monotonic() - self.last_heartbeat >= 1.0:
            self._write_heartbeat()

    def _write_heartbeat(self, *, final: bool = False) -> None:
        self.last_heartbeat = time.monotonic()
        try:
            if final:
                WorkerHeartbeat.objects.filter(pk=self.name).delete()
                return
            WorkerHeartbeat.objects.update_or_create(
                pk=self.name,
                defaults={
                    "hostname": socket.gethostname(),
                    "pid": os.getpid(),
                    "current_order": self.current_order,
                    "processed": self.processed,
                    "unacked": len(self.in_flight),
                    "started_at": self.started_at,
                    "last_seen": timezone.now(),
                },
            )
        except DatabaseError as exc:
            log.debug("heartbeat not stored: %s", exc)
            close_old_connections()
