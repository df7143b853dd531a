"""The web process's `/metrics` scrape: its own counters, then the shared pipeline state, read once per scrape.

The counters are defined where they are counted (orders/metrics.py); the shared state (outbox backlog, queue depths
from the worker side's telemetry, cache counters) is counted by no one, so N workers never report it N times.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator

from django.db import DatabaseError
from prometheus_client import REGISTRY, CollectorRegistry, generate_latest, multiprocess
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from orders import cache
from orders.models import OutboxMessage
from worker.models import QueueStat

log = logging.getLogger(__name__)


class PipelineStateCollector:
    """Gauges of shared state, read at scrape time: two queries and one Redis round trip per scrape."""

    def collect(self) -> Iterator[Metric]:
        try:
            backlog = OutboxMessage.objects.filter(sent_at__isnull=True).count()
            queues = list(QueueStat.objects.values_list("name", "role", "ready"))
        except DatabaseError as exc:
            # A scrape during a database outage still returns the process metrics and the cache counters.
            log.warning("metrics: pipeline state unavailable: %s", exc)
        else:
            yield GaugeMetricFamily(
                "orderpipe_outbox_backlog", "Outbox messages committed but not yet published", value=backlog
            )
            ready = GaugeMetricFamily(
                "orderpipe_queue_ready_messages",
                "Messages ready in each RabbitMQ queue, as last observed by a relay or worker",
                labels=["queue", "role"],
            )
            for name, role, count in queues:
                ready.add_metric([name, role], count)
            yield ready
        stats = cache.stats()
        yield GaugeMetricFamily("orderpipe_cache_up", "1 if Redis answered this scrape", value=int(stats["available"]))
        yield GaugeMetricFamily("orderpipe_cache_keys", "Order entries in Redis", value=stats["keys"])
        yield CounterMetricFamily("orderpipe_cache_hits", "Order reads served from Redis", value=stats["hits"])
        yield CounterMetricFamily(
            "orderpipe_cache_misses", "Order reads that fell back to PostgreSQL", value=stats["misses"]
        )


# Only the web process serves this registry (relays and workers expose the default one on --metrics-port), so the
# shared state is reported once.
PIPELINE_STATE = CollectorRegistry(auto_describe=False)
PIPELINE_STATE.register(PipelineStateCollector())

CONTENT_TYPE = CONTENT_TYPE_LATEST


def render_web() -> bytes:
    """The web server's scrape: its counters and histograms, then the shared pipeline state.

    Under gunicorn (several worker processes) those are the sums over its workers, read from the files each one
    writes (prometheus_client's multiprocess mode, set up in gunicorn.conf.py); under daphne or in-process, the one
    process's own. Multiprocess mode has no per-process series (process_cpu_seconds_total and the like)."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        workers = CollectorRegistry(auto_describe=False)
        multiprocess.MultiProcessCollector(workers)
        return generate_latest(workers) + generate_latest(PIPELINE_STATE)
    return generate_latest(REGISTRY) + generate_latest(PIPELINE_STATE)
