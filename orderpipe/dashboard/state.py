"""The dashboard's view of the whole pipeline: the domain's counts joined with the worker side's telemetry.

What the dashboard page, its live updates and `GET /api/pipeline/` show, read in a fixed number of queries.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any, TypedDict

from django.db.models import Count
from django.utils import timezone

from orders import cache, sandbox
from orders.models import Order, OrderStatus, OutboxMessage, Product
from worker import supervision
from worker.models import QueueStat, RelayHeartbeat, SupervisedProcess, WorkerHeartbeat

WORKER_STALE_AFTER = timedelta(seconds=15)
# A worker silent for longer than WORKER_STALE_AFTER is listed as gone (with when it stopped) for this long, then
# no longer shown: a crashed worker's row would otherwise stay on the page forever. (The rows stay in the table for
# the admin; a restarted worker has a new name, so nothing reuses them.)
WORKER_FORGET_AFTER = timedelta(minutes=5)
# Relays and workers observe the queues about once a second (worker/monitor.py); depths older than this are shown as
# last observed then (the broker or the database is out of their reach), not as the queues' state now.
QUEUE_STALE_AFTER = timedelta(seconds=5)


class QueueState(TypedDict):
    name: str
    role: str
    ready: int
    unacked: int
    consumers: int
    observed_at: str
    stale: bool  # observed longer than QUEUE_STALE_AFTER ago


class SupervisorRun(TypedDict):
    """The supervisor of `make run` whose rows the table holds: running (its rows refreshed within
    supervision.FRESH_FOR), or ended (stopped, killed) at `last_seen`, its rows no longer anybody's state."""

    running: bool
    last_seen: str | None
    processes: int


class WorkerState(TypedDict):
    name: str
    hostname: str
    pid: int
    current_order: str | None
    processed: int
    unacked: int
    last_seen: str
    alive: bool


class GoneWorker(TypedDict):
    name: str
    hostname: str
    pid: int
    processed: int
    stopped_at: str


class RelayState(TypedDict):
    name: str
    pid: int
    alive: bool
    state: str  # idle, publishing, unreachable, sweeping (RelayHeartbeat.State)
    detail: str
    published: int
    rate: float  # rows per second over the last few seconds; 0 once the relay is gone
    last_publish_at: str | None
    last_seen: str


def relay_states(now: datetime) -> list[RelayState]:
    """The relays that reported within WORKER_FORGET_AFTER, running ones first. A relay silent for longer than
    WORKER_STALE_AFTER is not running (crashed, or its host is gone), like a worker."""
    rows = RelayHeartbeat.objects.filter(last_seen__gte=now - WORKER_FORGET_AFTER).order_by("-last_seen")
    relays: list[RelayState] = []
    for r in rows:
        alive = now - r.last_seen < WORKER_STALE_AFTER
        relays.append(
            {
                "name": r.name,
                "pid": r.pid,
                "alive": alive,
                "state": r.state,
                "detail": r.detail,
                "published": r.published,
                "rate": r.rate if alive else 0.0,
                "last_publish_at": r.last_publish_at.isoformat() if r.last_publish_at else None,
                "last_seen": r.last_seen.isoformat(),
            }
        )
    return sorted(relays, key=lambda r: not r["alive"])


def supervisor_run(rows: list[SupervisedProcess], now: datetime) -> SupervisorRun:
    last_seen = max((row.updated_at for row in rows), default=None)
    return {
        "running": last_seen is not None and now - last_seen < supervision.FRESH_FOR,
        "last_seen": last_seen.isoformat() if last_seen else None,
        "processes": len(rows),
    }


def _worker_states(heartbeats: list[WorkerHeartbeat], now: datetime) -> tuple[list[WorkerState], list[GoneWorker]]:
    """The workers seen lately (by name), and those gone quiet (the latest first)."""
    workers: list[WorkerState] = [
        {
            "name": w.name,
            "hostname": w.hostname,
            "pid": w.pid,
            "current_order": str(w.current_order) if w.current_order else None,
            "processed": w.processed,
            "unacked": w.unacked,
            "last_seen": w.last_seen.isoformat(),
            "alive": True,
        }
        for w in heartbeats
        if now - w.last_seen < WORKER_STALE_AFTER
    ]
    gone_workers: list[GoneWorker] = [
        {
            "name": w.name,
            "hostname": w.hostname,
            "pid": w.pid,
            "processed": w.processed,
            "stopped_at": w.last_seen.isoformat(),
        }
        for w in sorted(heartbeats, key=lambda w: w.last_seen, reverse=True)
        if now - w.last_seen >= WORKER_STALE_AFTER
    ]
    return workers, gone_workers


def _queue_states(now: datetime, *, unacked_main: int) -> list[QueueState]:
    """The queues as the relay's monitor last observed them, with the main queue's unacked deliveries."""
    return [
        {
            "name": q.name,
            "role": q.role,
            "ready": q.ready,
            "unacked": unacked_main if q.role == "main" else 0,
            "consumers": q.consumers,
            "observed_at": q.observed_at.isoformat(),
            "stale": now - q.observed_at > QUEUE_STALE_AFTER,
        }
        for q in QueueStat.objects.all()
    ]


def pipeline_state() -> dict[str, Any]:
    """Everything the dashboard shows about the pipeline, in nine queries and one Redis round trip or two."""
    now = timezone.now()
    by_status = {status.value: 0 for status in OrderStatus}
    for row in Order.objects.values("status").annotate(n=Count("id")).order_by():
        by_status[row["status"]] = row["n"]
    backlog = OutboxMessage.objects.filter(sent_at__isnull=True).count()
    heartbeats = list(WorkerHeartbeat.objects.filter(last_seen__gte=now - WORKER_FORGET_AFTER).order_by("name"))
    workers, gone_workers = _worker_states(heartbeats, now)
    # Passive queue declarations count ready messages only; a worker reports the deliveries it holds unacked.
    queues = _queue_states(now, unacked_main=sum(w["unacked"] for w in workers if w["alive"]))
    process_rows = list(SupervisedProcess.objects.order_by("name"))
    run = supervisor_run(process_rows, now)
    return {
        "at": now.isoformat(),
        "outbox": {"backlog": backlog},
        "orders": {"by_status": by_status, "total": sum(by_status.values())},
        "queues": queues,
        # The relay between the outbox and the exchange: running or not, its state and publish rate.
        "relays": relay_states(now),
        "cache": cache.stats(),
        "workers": workers,
        "gone_workers": gone_workers,
        "sandbox": sandbox.sandbox_state(),
        # Live on the page: bursts and restocks change it while the learner watches.
        "stock": [
            {"sku": sku, "stock": stock} for sku, stock in Product.objects.order_by("sku").values_list("sku", "stock")
        ],
        # Whether the kill and cut controls can work (a supervisor runs), on what, and which links are cut now.
        "supervisor": supervision.supervisor_state(),
        # Only under `make run`'s supervisor: what each process it keeps alive went through (crashed, restarted).
        # The rows of a supervisor that has ended say nothing about processes started otherwise: not listed then.
        "supervisor_run": run,
        "processes": [
            {
                "name": p.name,
                "role": p.role,
                "pid": p.pid,
                "state": p.state,
                "restarts": p.restarts,
                "last_exit": p.last_exit,
                "last_exit_at": p.last_exit_at.isoformat() if p.last_exit_at else None,
            }
            for p in process_rows
            if run["running"]
        ],
    }
