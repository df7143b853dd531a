"""Queue depths, observed by the processes that hold AMQP connections and stored for the web to read.

Web requests never open an AMQP connection (under ASGI a per-request connection leaks); instead relays and
workers record what a passive declare tells them (ready messages, consumers) about once a second.
"""

from __future__ import annotations

import logging
import time

from django.db import DatabaseError
from django.utils import timezone
from pika.adapters.blocking_connection import BlockingChannel, BlockingConnection

from worker.broker import BROKER_ERRORS
from worker.models import QueueStat
from worker.topology import Topology

log = logging.getLogger(__name__)


class QueueMonitor:
    def __init__(self, connection: BlockingConnection, topo: Topology, *, every: float = 1.0) -> None:
        self.connection = connection
        self.topology = topo
        self.every = every
        self.channel: BlockingChannel | None = None
        self.last_run = 0.0
        self.ready: dict[str, int] = {}

    def depth(self, queue: str) -> int | None:
        return self.ready.get(queue)

    def maybe_observe(self) -> None:
        if time.monotonic() - self.last_run >= self.every:
            self.observe()

    def observe(self) -> None:
        """Passive-declare every queue and store its counts, a retry tier's with its jitter lanes' folded in. Never
        raises for a broker or database hiccup."""
        self.last_run = time.monotonic()
        now = timezone.now()
        rows = []
        lanes = self.topology.lanes_of()
        try:
            if self.channel is None or not self.channel.is_open:
                self.channel = self.connection.channel()
            for position, (name, role) in enumerate(self.topology.queues()):
                result = self.channel.queue_declare(name, passive=True)
                self.ready[name] = ready = result.method.message_count
                for lane in lanes.get(name, []):
                    # Each queue's own depth for the journey's snapshots; the tier's row counts its lanes too.
                    self.ready[lane] = self.channel.queue_declare(lane, passive=True).method.message_count
                    ready += self.ready[lane]
                rows.append(
                    QueueStat(
                        name=name,
                        role=role,
                        position=position,
                        ready=ready,
                        consumers=result.method.consumer_count,
                        observed_at=now,
                    )
                )
        except BROKER_ERRORS as exc:
            log.debug("queue observation failed: %s", exc)
            self.channel = None
            return
        try:
            QueueStat.objects.bulk_create(
                rows,
                update_conflicts=True,
                unique_fields=["name"],
                update_fields=["role", "position", "ready", "consumers", "observed_at"],
            )
        except DatabaseError as exc:
            log.debug("queue stats not stored: %s", exc)
