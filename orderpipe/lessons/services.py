"""A session's lesson runs: the run id that tags its orders, the state a lesson page polls (numbers per phase,
frozen once a later phase begins; checkpoints, passing them), starting a lesson from its baseline, and the resets
(one lesson for one session; every lesson for the instructor)."""

from __future__ import annotations

import secrets
import time
from datetime import datetime
from typing import Any

from django.db import transaction
from django.db.models import Count, QuerySet
from django.utils import timezone

from orderpipe.lessons.catalog import BY_SLUG, SERVER_KINDS, Action, Lesson, gateway_outage_seconds
from orderpipe.lessons.measure import (
    LESSON_SKU_PREFIX,
    LESSON_STOCK,
    counters,
    lesson_sku,
    measure,
    run_email,
    run_orders,
)
from orderpipe.lessons.models import CheckpointPass, LessonRun
from orders import sandbox
from orders.models import GatewayCharge, Order, OrderLine, Payment, Product, SandboxSettings


def new_run_id() -> str:
    """Long enough that nobody types another session's run into an order's email by chance."""
    return secrets.token_hex(8)


def existing_run(session_key: str | None, lesson: Lesson) -> LessonRun | None:
    if session_key is None:
        return None
    return LessonRun.objects.filter(session_key=session_key, lesson=lesson.slug).first()


def current_run(session_key: str, lesson: Lesson) -> LessonRun:
    run, _ = LessonRun.objects.get_or_create(
        session_key=session_key, lesson=lesson.slug, defaults={"run": new_run_id()}
    )
    return run


def _under_way(lesson: Lesson, run: LessonRun) -> str:
    """The phase whose counters are live: the last one begun (the first phase before any is frozen)."""
    frozen = [phase for phase in lesson.phase_ids() if phase in run.frozen]
    later = [phase for phase in lesson.phase_ids() if phase not in frozen]
    return later[0] if later else ""


def _numbers(lesson: Lesson, run: LessonRun | None) -> dict[str, dict[str, Any]]:
    """Each phase's numbers: kept as they were if the phase is frozen, else measured now; the counters belong to the
    phase under way (None for the phases after it)."""
    live_counters = counters(lesson.counters) if run is not None else dict.fromkeys(lesson.counters)
    under_way = _under_way(lesson, run) if run is not None else ""
    numbers: dict[str, dict[str, Any]] = {}
    for phase in lesson.phase_ids():
        if run is not None and phase in run.frozen:
            numbers[phase] = _kept(lesson, run, phase)
            continue
        measured = measure(run_email(lesson.slug, run.run, phase) if run is not None else None)
        shown = live_counters if phase == under_way else dict.fromkeys(lesson.counters)
        numbers[phase] = {**measured, **shown}
    return numbers


def _settled(numbers: dict[str, Any]) -> bool:
    return not numbers.get("in_flight") and not numbers.get("not_yet_known")


def _kept(lesson: Lesson, run: LessonRun, phase: str) -> dict[str, Any]:
    """A frozen phase's figures. Frozen while some of its orders were still moving (the next phase began at once),
    the figures of the orders it had then are measured again until each is in a bucket it stays in, and kept from
    then on; the counters stay as they were when it froze (the next phase may zero them)."""
    kept = run.frozen[phase]
    if _settled(kept):
        return kept
    placed_before = datetime.fromisoformat(kept["frozen_at"])
    measured = measure(run_email(lesson.slug, run.run, phase), placed_before=placed_before)
    now = {**kept, **{name: value for name, value in measured.items() if name not in lesson.counters}}
    if _settled(now):
        run.frozen[phase] = now
        run.save(update_fields=["frozen"])
    return now


def lesson_state(session_key: str | None, lesson: Lesson, *, user: str = "") -> dict[str, Any]:
    """What the lesson page shows and polls: whether this session started the lesson (its run), each phase's email
    and numbers, each checkpoint and whether this session passed it. A checkpoint whose test holds now is recorded
    as passed (once; it stays passed). Reads only: a session that has not pressed "Start" gets zeros."""
    run = existing_run(session_key, lesson)
    numbers = _numbers(lesson, run)
    passed: dict[str, Any] = {}
    if run is not None:
        passed = dict(
            CheckpointPass.objects.filter(session_key=session_key, lesson=lesson.slug).values_list(
                "checkpoint", "passed_at"
            )
        )
    checkpoints = []
    for checkpoint in lesson.checkpoints:
        if run is not None and checkpoint.id not in passed and checkpoint.passes(numbers):
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
        "run": run.run if run is not None else None,
        "at": timezone.now(),
        "phases": [
            {
                "id": p.id,
                "label": p.label,
                "email": run_email(lesson.slug, run.run, p.id) if run is not None else "",
                "numbers": numbers[p.id],
                "frozen": run is not None and p.id in run.frozen,
            }
            for p in lesson.phases
        ],
        "checkpoints": checkpoints,
    }


@transaction.atomic
def phase_begin(session_key: str, lesson: Lesson, phase: str) -> dict[str, Any]:
    """A step that begins `phase` was pressed: every earlier phase not frozen yet keeps its figures (and the counters,
    which the step may be about to zero) as they are now. Raises KeyError for a phase the lesson does not have."""
    phases = lesson.phase_ids()
    index = phases.index(phase) if phase in phases else -1
    if index < 0:
        raise KeyError(phase)
    run = LessonRun.objects.select_for_update().get(pk=current_run(session_key, lesson).pk)
    numbers = _numbers(lesson, run)
    for earlier in phases[:index]:
        if earlier not in run.frozen:
            run.frozen[earlier] = {**numbers[earlier], "frozen_at": timezone.now().isoformat()}
    run.save(update_fields=["frozen"])
    return {"run": run.run, "frozen": [p for p in phases if p in run.frozen]}


def _reset_to_baseline(lesson: Lesson, *, by: str) -> tuple[list[str], sandbox.Applied]:
    """Every sandbox setting to the lesson's baseline; returns what changed ("bug_rate 0.3 → 0") and who runs it."""
    before = SandboxSettings.load().as_dict()
    row, applied = sandbox.sandbox_update_applied(changes=dict(lesson.baseline), changed_by=by, via="lesson")
    after = row.as_dict()
    changed = [
        f"{name} {sandbox.shown_value(before[name], name)} → {sandbox.shown_value(after[name], name)}"
        for name in lesson.baseline
        if before[name] != after[name]
    ]
    return changed, applied


def _new_run(session_key: str, lesson: Lesson) -> LessonRun:
    with transaction.atomic():
        run = LessonRun.objects.select_for_update().filter(session_key=session_key, lesson=lesson.slug).first()
        if run is None:
            return LessonRun.objects.create(session_key=session_key, lesson=lesson.slug, run=new_run_id())
        run.previous_runs = [*run.previous_runs, run.run]
        run.run, run.frozen, run.started_at = new_run_id(), {}, timezone.now()
        run.save()
        return run


def lesson_start(session_key: str, lesson: Lesson, *, by: str) -> dict[str, Any]:
    """ "Start": a fresh run (empty columns; earlier runs' orders stay until a reset) and every sandbox setting at the
    lesson's baseline. Answers once the workers run it (or says which do not yet), with what it reset."""
    run = _new_run(session_key, lesson)
    changed, applied = _reset_to_baseline(lesson, by=by)
    return {"run": run.run, "reset": changed, "applied": applied.as_dict()}


class ActionRefused(Exception):
    """A lesson action the server carries out could not run; the message says why (the page shows it)."""


def lesson_action(lesson: Lesson, step: int, index: int) -> Action:
    """The action of the lesson's catalog at (step, index), if it is one the server carries out: the page names it,
    the parameters come from the catalog, never from the request. Raises KeyError otherwise."""
    try:
        action = lesson.steps[step].actions[index]
    except IndexError:
        raise KeyError((step, index)) from None
    if step < 0 or index < 0 or action.kind not in SERVER_KINDS:
        raise KeyError((step, index))
    return action


def lesson_act(session_key: str, lesson: Lesson, action: Action, *, by: str) -> dict[str, Any]:
    """Carry out a lesson action that needs the server (SERVER_KINDS): returns {"text": what happened}. Raises
    ActionRefused."""
    run = current_run(session_key, lesson)
    if action.kind == "stock_burst":
        return _stock_burst(lesson, run, action, by=by)
    if action.kind == "outage_burst":
        return _outage_burst(lesson, run, action, by=by)
    raise ActionRefused(f"unknown action {action.kind}")


def _stock_burst(lesson: Lesson, run: LessonRun, action: Action, *, by: str) -> dict[str, Any]:
    """The oversold-stock lesson's burst: the phase's own product, LESSON_STOCK units in stock, and `count` orders of
    one unit each for it, all at once (answers once they exist)."""
    from orderpipe.dashboard.controls import burst_create  # the dashboard's burst, which imports the lessons' names

    sku = lesson_sku(lesson.slug, run.run, action.phase)
    Product.objects.update_or_create(
        sku=sku,
        defaults={"name": f"Lesson {lesson.number}: the last few in stock", "price": "5.00", "stock": LESSON_STOCK},
    )
    count = int(action.params["count"])
    created = burst_create(
        count=count,
        by=by,
        burst_id=new_run_id()[:6],
        plan=[sku] * count,
        email=run_email(lesson.slug, run.run, action.phase),
    )
    return {"text": f"{created} one-unit orders placed for a new product with {LESSON_STOCK} in stock ({sku})."}


def _outage_burst(lesson: Lesson, run: LessonRun, action: Action, *, by: str) -> dict[str, Any]:
    """The retry-storm lesson's step: `count` orders placed at once for the phase, and the payment gateway down for
    `gateway_outage_seconds()` from the moment they exist (answers then). The outage is set first, with room to
    spare, so that every worker refuses calls before the orders arrive; then cut to its length from there."""
    from orderpipe.dashboard.controls import NotEnoughStock, burst_create, burst_plan  # as `_stock_burst`

    seconds = gateway_outage_seconds()
    count = int(action.params["count"])
    try:
        plan = burst_plan(count=count)
    except NotEnoughStock as exc:
        raise ActionRefused(str(exc)) from None
    _, applied = sandbox.sandbox_update_applied(
        changes={"gateway_down_until": time.time() + 60}, changed_by=by, via="lesson"
    )
    if not applied.done:
        raise ActionRefused(f"the gateway's outage is {applied.text()}")
    created = burst_create(
        count=count, by=by, burst_id=new_run_id()[:6], plan=plan, email=run_email(lesson.slug, run.run, action.phase)
    )
    sandbox.sandbox_update(changes={"gateway_down_until": time.time() + seconds}, changed_by=by, via="lesson")
    return {"text": f"{created} orders placed at once; the payment gateway refuses every call for {seconds:g} s."}


def _shown(lesson: Lesson, numbers: dict[str, Any], phase: str) -> dict[str, Any]:
    """The numbers a passed checkpoint is recorded with: its phase's, as the panel shows them."""
    return {name: numbers[phase].get(name) for name in lesson.shown_numbers()}


def _delete_orders(orders: QuerySet[Order]) -> int:
    """Delete orders with what refers to them: their payments (protected) and the gateway's ledger lines for them
    (no foreign key: the gateway is another system). An order still in flight leaves a message behind, which the
    worker then dead-letters as 'unknown order'."""
    ids = list(orders.values_list("pk", flat=True))
    GatewayCharge.objects.filter(order_ref__in=[str(pk) for pk in ids]).delete()
    Payment.objects.filter(order_id__in=ids).delete()
    products = set(
        OrderLine.objects.filter(order_id__in=ids, sku__startswith=LESSON_SKU_PREFIX).values_list(
            "product_id", flat=True
        )
    )
    deleted, _ = Order.objects.filter(pk__in=ids).delete()
    # The oversold-stock lesson's products, once no order refers to them.
    Product.objects.filter(pk__in=products, sku__startswith=LESSON_SKU_PREFIX).delete()
    return len(ids) if deleted else 0


def lesson_reset(session_key: str, lesson: Lesson, *, by: str) -> dict[str, Any]:
    """The lesson's baseline for every sandbox setting, this session's orders of the lesson (every run) deleted, a
    new run. The checkpoints passed stay: they are the learner's progress."""
    with transaction.atomic():
        run = current_run(session_key, lesson)
        removed = _delete_orders(run_orders(lesson.slug, [*run.previous_runs, run.run], lesson.phase_ids()))
        run.previous_runs, run.run, run.frozen, run.started_at = [], new_run_id(), {}, timezone.now()
        run.save()
    changed, applied = _reset_to_baseline(lesson, by=by)
    return {"removed_orders": removed, "run": run.run, "reset": changed, "applied": applied.as_dict()}


def lesson_orders() -> QuerySet[Order]:
    """Every order of every recorded lesson run: the exact addresses of the runs, never a domain anyone can type."""
    orders = Order.objects.none()
    for run in LessonRun.objects.all():
        lesson = BY_SLUG.get(run.lesson)
        if lesson is not None:
            orders |= run_orders(lesson.slug, [*run.previous_runs, run.run], lesson.phase_ids())
    return orders


def reset_every_lesson(*, by: str) -> dict[str, Any]:
    """The instructor's reset: the safe defaults, every lesson order of every session deleted, every run and every
    checkpoint passed forgotten."""
    with transaction.atomic():
        removed = _delete_orders(lesson_orders())
        runs = LessonRun.objects.all().delete()[0]
        passes = CheckpointPass.objects.all().delete()[0]
    sandbox.sandbox_update_applied(changes=dict(sandbox.DEFAULTS), changed_by=by, via="lesson")
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
