"""A session's lesson runs: the run id that tags its orders, the state a lesson page polls (numbers per phase,
checkpoints, passing them), and the resets (one lesson for one session; every lesson for the instructor)."""

from __future__ import annotations

import secrets
from typing import Any

from django.db import transaction
from django.db.models import Count, QuerySet
from django.utils import timezone

from orderpipe.lessons.catalog import Lesson
from orderpipe.lessons.measure import all_lesson_orders, counters, measure, run_email, run_orders
from orderpipe.lessons.models import CheckpointPass, LessonRun
from orders import sandbox
from orders.models import GatewayCharge, Order, Payment


def new_run_id() -> str:
    return secrets.token_hex(3)


def current_run(session_key: str, lesson: Lesson) -> LessonRun:
    run, _ = LessonRun.objects.get_or_create(
        session_key=session_key, lesson=lesson.slug, defaults={"run": new_run_id()}
    )
    return run


def lesson_state(session_key: str, lesson: Lesson, *, user: str = "") -> dict[str, Any]:
    """What the lesson page shows and polls: each phase's email and numbers, each checkpoint and whether this
    session passed it. A checkpoint whose test holds now is recorded as passed (once; it stays passed)."""
    run = current_run(session_key, lesson)
    emails = {phase: run_email(lesson.slug, run.run, phase) for phase in lesson.phase_ids()}
    numbers: dict[str, Any] = {phase: measure(email) for phase, email in emails.items()}
    numbers["counters"] = counters(lesson.counters)
    passed = dict(
        CheckpointPass.objects.filter(session_key=session_key, lesson=lesson.slug).values_list(
            "checkpoint", "passed_at"
        )
    )
    checkpoints = []
    for checkpoint in lesson.checkpoints:
        if checkpoint.id not in passed and checkpoint.passes(numbers):
            record, _ = CheckpointPass.objects.get_or_create(
                session_key=session_key,
                lesson=lesson.slug,
                checkpoint=checkpoint.id,
                defaults={"numbers": _shown(lesson, numbers, checkpoint.phase), "user": user},
            )
            passed[checkpoint.id] = record.passed_at
        checkpoints.append(
            {
                "id": checkpoint.id,
                "label": checkpoint.label,
                "phase": checkpoint.phase,
                "passed_at": passed.get(checkpoint.id),
            }
        )
    return {
        "lesson": lesson.slug,
        "run": run.run,
        "at": timezone.now(),
        "phases": [
            {"id": p.id, "label": p.label, "email": emails[p.id], "numbers": numbers[p.id]} for p in lesson.phases
        ],
        "counters": numbers["counters"],
        "checkpoints": checkpoints,
    }


def _shown(lesson: Lesson, numbers: dict[str, Any], phase: str) -> dict[str, Any]:
    """The numbers a passed checkpoint is recorded with: its phase's, and the lesson's counters."""
    return {**{name: numbers[phase][name] for name in lesson.numbers}, **numbers["counters"]}


def _delete_orders(orders: QuerySet[Order]) -> int:
    """Delete orders with what refers to them: their payments (protected) and the gateway's ledger lines for them
    (no foreign key: the gateway is another system). An order still in flight leaves a message behind, which the
    worker then dead-letters as 'unknown order'."""
    ids = list(orders.values_list("pk", flat=True))
    GatewayCharge.objects.filter(order_ref__in=[str(pk) for pk in ids]).delete()
    Payment.objects.filter(order_id__in=ids).delete()
    deleted, _ = Order.objects.filter(pk__in=ids).delete()
    return len(ids) if deleted else 0


@transaction.atomic
def lesson_reset(session_key: str, lesson: Lesson, *, by: str) -> dict[str, Any]:
    """Safe defaults for every sandbox setting, this session's orders of the lesson (every run) deleted, a new run.
    The checkpoints passed stay: they are the learner's progress."""
    run = current_run(session_key, lesson)
    runs = [*run.previous_runs, run.run]
    removed = _delete_orders(run_orders(lesson.slug, runs))
    sandbox.sandbox_reset(changed_by=by, via="lesson")
    run.previous_runs = []
    run.run = new_run_id()
    run.started_at = timezone.now()
    run.save()
    return {"removed_orders": removed, "run": run.run}


@transaction.atomic
def reset_every_lesson(*, by: str) -> dict[str, Any]:
    """The instructor's reset: safe defaults, every lesson order of every session deleted, every run and every
    checkpoint passed forgotten."""
    removed = _delete_orders(all_lesson_orders())
    sandbox.sandbox_reset(changed_by=by, via="lesson")
    runs = LessonRun.objects.all().delete()[0]
    passes = CheckpointPass.objects.all().delete()[0]
    return {"removed_orders": removed, "removed_runs": runs, "removed_passes": passes}


def sessions_progress() -> list[dict[str, Any]]:
    """For the instructor: every session that opened a lesson, with the checkpoints it passed."""
    sessions: dict[str, dict[str, Any]] = {}
    for run in LessonRun.objects.order_by("started_at"):
        entry = sessions.setdefault(run.session_key, {"session": run.session_key[:8], "user": "", "lessons": {}})
        entry["lessons"].setdefault(run.lesson, [])
    for record in CheckpointPass.objects.all():
        entry = sessions.setdefault(record.session_key, {"session": record.session_key[:8], "user": "", "lessons": {}})
        entry["user"] = entry["user"] or record.user
        entry["lessons"].setdefault(record.lesson, []).append(record)
    counts = dict(CheckpointPass.objects.values_list("session_key").annotate(n=Count("pk")))
    for key, entry in sessions.items():
        entry["passed"] = counts.get(key, 0)
    return sorted(sessions.values(), key=lambda e: -e["passed"])
