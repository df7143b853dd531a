"""Which live workers run the current sandbox settings: the check behind "a change answers once it is in effect"
(docs/10-design-notes.md, "Applied settings").
"""

from __future__ import annotations

from datetime import timedelta

from django.conf import settings
from django.utils import timezone

from orders.models import SandboxSettings
from orders.sandbox import Applied, Pending, effective_scaling
from worker.models import SupervisedProcess, WorkerHeartbeat
from worker.queue_policy import FAILED, NEEDS_SUPERVISOR, wanted_policy
from worker.supervision import FRESH_FOR

# A worker heart-beats every second (and at once after applying a change); older than this, it is not waited for.
LIVE_WITHIN = timedelta(seconds=3)


def settings_applied(row: SandboxSettings) -> Applied:
    now = timezone.now()
    beats = list(WorkerHeartbeat.objects.filter(last_seen__gte=now - LIVE_WITHIN).order_by("name"))
    supervised = {
        p.pid: p
        for p in SupervisedProcess.objects.filter(role="worker", updated_at__gte=now - FRESH_FOR)
        if p.pid is not None and p.state == SupervisedProcess.State.RUNNING
    }
    supervisor_running = SupervisedProcess.objects.filter(updated_at__gte=now - FRESH_FOR).exists()
    follows_scaling = supervisor_running and settings.ORDERPIPE_SANDBOX
    wanted = effective_scaling(row.as_dict())
    applied = Applied(version=row.version)
    for beat in beats:
        name = beat.name
        if supervisor_running:
            process = supervised.get(beat.pid)
            if process is None:
                continue  # not one the supervisor runs now: killed, or stopped and not yet gone
            name = process.name
        why = _behind(beat, row, wanted if follows_scaling else None)
        if why:
            applied.pending.append(Pending(name=name, why="; ".join(why)))
        else:
            applied.applied.append(name)
    if follows_scaling:
        _count_workers(applied, row.workers)
    elif not beats:
        applied.note = "no worker running"
    if settings.ORDERPIPE_SANDBOX:
        _check_queue_policy(applied, row, supervisor_running)
    if not supervisor_running and settings.ORDERPIPE_SANDBOX:
        applied.note = "; ".join(
            filter(None, [applied.note, "workers, threads and prefetch are followed only by make run's supervisor"])
        )
    applied.applied.sort()
    return applied


def _behind(beat: WorkerHeartbeat, row: SandboxSettings, wanted: dict | None) -> list[str]:
    """What a worker runs that is not the current settings (its version; with `wanted`, its threads and prefetch)."""
    why = []
    if beat.settings_version < row.version:
        why.append(f"runs settings version {beat.settings_version}")
    if wanted is not None:
        concurrency, prefetch = wanted["worker_concurrency"], wanted["worker_prefetch"]
        if beat.concurrency != concurrency:
            why.append(f"runs {beat.concurrency} thread(s), {concurrency} wanted: restarting")
        if beat.prefetch != prefetch:
            why.append(f"runs prefetch {beat.prefetch}, {prefetch} wanted: restarting")
    return why


def _count_workers(applied: Applied, wanted: int) -> None:
    """Under the supervisor, the number of live workers must be the wanted one too."""
    seen = len(applied.applied) + len(applied.pending)
    if seen > wanted:
        applied.pending.append(Pending(name="workers", why=f"stopping down to {wanted}"))
    elif seen < wanted:
        applied.pending.append(Pending(name="workers", why=f"{wanted - seen} more starting"))


def _check_queue_policy(applied: Applied, row: SandboxSettings, supervisor_running: bool) -> None:
    """The main queue's length policy (lesson 10) is in effect once the supervisor has set what the row wants."""
    wanted_limit = wanted_policy(row.queue_max_length, row.queue_overflow)
    if row.queue_policy_in_effect == wanted_limit or not (wanted_limit or supervisor_running):
        return
    if not supervisor_running:
        policy_why = f"a queue length limit {NEEDS_SUPERVISOR}"
        applied.unsettleable.add("main queue policy")
    elif row.queue_policy_in_effect.startswith(FAILED):
        policy_why = f"rabbitmqctl {row.queue_policy_in_effect}"
    else:
        policy_why = f"the supervisor is setting {wanted_limit or 'no limit'}"
    applied.pending.append(Pending(name="main queue policy", why=policy_why))
