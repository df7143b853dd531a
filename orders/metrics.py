"""Prometheus metrics: the counters and histograms each process keeps of the pipeline events it commits
(docs/10-design-notes.md, "Metrics").
"""

from __future__ import annotations

import logging
from datetime import datetime

from prometheus_client import Counter, Histogram

from orders.models import EventKind

# One line per committed pipeline event; its name is stable so log pipelines can route on it.
event_log = logging.getLogger("orderpipe.events")

# From a few milliseconds (an in-process step) to minutes (the last retry tier and a dead-letter replay).
DURATION_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)

ORDER_EVENTS = Counter(
    "orderpipe_order_events",
    "Committed pipeline events by kind: accepted, completed, failed, dead_lettered, retry_scheduled, redelivered ...",
    ["kind"],
)
STEP_DURATION = Histogram(
    "orderpipe_order_step_duration_seconds",
    "Time from an order's previous event to this one, by the kind of this event",
    ["kind"],
    buckets=DURATION_BUCKETS,
)
END_TO_END_DURATION = Histogram(
    "orderpipe_order_end_to_end_duration_seconds",
    "Time from acceptance (order created) to completion",
    buckets=DURATION_BUCKETS,
)

# Every kind exists from the start at 0, so rate() and alerts see a series before its first event.
for _kind in EventKind.values:
    ORDER_EVENTS.labels(kind=_kind)
    STEP_DURATION.labels(kind=_kind)


def event_committed(
    *,
    order_id: str,
    kind: str,
    seq: int,
    at: datetime,
    previous_at: datetime,
    created_at: datetime | None,
    log_level: int = logging.INFO,
) -> None:
    """Count one committed event, observe its durations and log it (at `log_level`: a batch's writer may log its
    events at DEBUG and one summary line of its own instead). Runs from `transaction.on_commit`."""
    step_seconds = max((at - previous_at).total_seconds(), 0.0)
    ORDER_EVENTS.labels(kind=kind).inc()
    STEP_DURATION.labels(kind=kind).observe(step_seconds)
    extra: dict[str, object] = {
        "order_id": order_id,
        "kind": kind,
        "seq": seq,
        "duration_ms": round(step_seconds * 1000, 1),
    }
    if kind == EventKind.COMPLETED and created_at is not None:
        total_seconds = max((at - created_at).total_seconds(), 0.0)
        END_TO_END_DURATION.observe(total_seconds)
        extra["end_to_end_ms"] = round(total_seconds * 1000, 1)
    event_log.log(log_level, "order %s %s after %.1f ms", order_id, kind, extra["duration_ms"], extra=extra)
