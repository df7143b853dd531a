"""The sandbox: the fault injector's settings in one database row, changed through these services (API, admin,
command, dashboard), recorded in SandboxChange and read by workers through a one-second cache;
`sandbox_update_applied` waits until every live worker runs a change (docs/10-design-notes.md, "The sandbox's
settings").
"""

from __future__ import annotations

import re
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypedDict

from django.conf import settings
from django.core.exceptions import ValidationError
from django.db import connection, transaction
from django.db.models import F
from django.utils import timezone

from orders import live
from orders.events import record_event
from orders.models import (
    AckMode,
    CacheMode,
    EventKind,
    Order,
    OrderEvent,
    Product,
    PublishMode,
    QueueOverflow,
    RetryBackoff,
    SandboxChange,
    SandboxSettings,
    StepGrant,
    StockUpdate,
)

# A burst (the dashboard's "Burst" control, orderpipe/dashboard/controls.py) places at most this many orders,
# committed in chunks of BURST_CHUNK.
BURST_MAX = 10_000
BURST_CHUNK = 100
# The dashboard's "Restock" adds this many items to each product (or one), at most RESTOCK_MAX per press.
RESTOCK_DEFAULT = 500
RESTOCK_MAX = 100_000

DEFAULTS: dict[str, Any] = {
    "step_delay_ms": 0,
    "decline_rate": 0.0,
    "transient_failure_rate": 0.0,
    "crash_rate": 0.0,
    "bug_rate": 0.0,
    "paused": False,
    "step_mode": False,
    "workers": 1,
    "worker_concurrency": None,
    "accept_failure_rate": 0.0,
    "worker_prefetch": None,
    "ack_mode": AckMode.AFTER_COMMIT.value,
    "publish_mode": PublishMode.OUTBOX.value,
    "step_guards": True,
    "cache_mode": CacheMode.WRITE_THROUGH.value,
    "cache_ttl_seconds": None,
    "stock_update": StockUpdate.GUARDED.value,
    "queue_max_length": None,
    "queue_overflow": QueueOverflow.REJECT_PUBLISH.value,
    "gateway_down_until": None,
    "retry_backoff": RetryBackoff.JITTER.value,
}
# The scaling the supervisor of `make run` follows: not faults, but a lesson's baseline sets them, and the banner
# names them while they differ from these.
SCALING = ("workers", "worker_concurrency", "worker_prefetch")
SCALING_LABELS = {"workers": "workers", "worker_concurrency": "threads per worker", "worker_prefetch": "prefetch"}
# How long a change's caller waits for every live worker to run it before answering with the ones that do not yet.
APPLY_WAIT = 5.0
# The faults and modes: while any differs from its default, every page shows a banner naming it (templates/base.html)
# with a button that restores these defaults. The supervisor's `workers`, `worker_concurrency` and `worker_prefetch`
# are not faults.
FAULTS = (
    "step_delay_ms",
    "decline_rate",
    "transient_failure_rate",
    "crash_rate",
    "bug_rate",
    "paused",
    "step_mode",
    "accept_failure_rate",
    "queue_max_length",
    "gateway_down_until",
)
FAULT_LABELS = {
    "step_delay_ms": "step delay",
    "decline_rate": "decline rate",
    "transient_failure_rate": "transient failure rate",
    "crash_rate": "crash rate",
    "bug_rate": "bug rate",
    "paused": "consumption paused",
    "step_mode": "step-by-step mode",
    "accept_failure_rate": "accept failure rate",
    "queue_max_length": "main queue limited to",
    "gateway_down_until": "payment gateway down",
}
# The unsafe modes: each switches one guarantee off on the real code path. Any value but the default is unsafe;
# every page shows them in a red banner while on. `cache_ttl_seconds` is not unsafe by itself (it only matters in
# cache_aside, where a long one makes stale reads last), so it is a setting, not a mode.
UNSAFE_MODES = (
    "ack_mode",
    "publish_mode",
    "step_guards",
    "cache_mode",
    "stock_update",
    "queue_overflow",
    "retry_backoff",
)


@dataclass(frozen=True)
class Modes:
    """The modes in effect. Every code path that behaves differently in an unsafe mode reads them through `modes()`."""

    ack_mode: str = AckMode.AFTER_COMMIT.value
    publish_mode: str = PublishMode.OUTBOX.value
    step_guards: bool = True
    cache_mode: str = CacheMode.WRITE_THROUGH.value
    cache_ttl_seconds: int | None = None  # None: settings.ORDER_CACHE_TTL
    accept_failure_rate: float = 0.0
    stock_update: str = StockUpdate.GUARDED.value
    queue_overflow: str = QueueOverflow.REJECT_PUBLISH.value
    retry_backoff: str = RetryBackoff.JITTER.value

    @property
    def cache_ttl(self) -> int:
        return self.cache_ttl_seconds or settings.ORDER_CACHE_TTL


SAFE_MODES = Modes()


def modes(values: dict[str, Any] | None = None, *, fresh: bool = False) -> Modes:
    """The modes in effect: the safe defaults whenever ORDERPIPE_SANDBOX=false (without a query), so a row left
    unsafe in the database does nothing there; else the settings row as `values` gives it (a worker passes what
    its Faults read), or as this process's `reader` last read it (at most a second old; `fresh`: read now, which
    the API's accept and read do, so a change is in effect on the web as soon as it is committed).

    `accept_failure_rate` rides along: it is a fault, but the API reads it at the same moment as `publish_mode`."""
    if not settings.ORDERPIPE_SANDBOX:
        return SAFE_MODES
    if values is None:
        values = reader.get(fresh=fresh)
    return Modes(
        ack_mode=values.get("ack_mode", SAFE_MODES.ack_mode),
        publish_mode=values.get("publish_mode", SAFE_MODES.publish_mode),
        step_guards=values.get("step_guards", True),
        cache_mode=values.get("cache_mode", SAFE_MODES.cache_mode),
        cache_ttl_seconds=values.get("cache_ttl_seconds"),
        accept_failure_rate=values.get("accept_failure_rate", 0.0),
        stock_update=values.get("stock_update", SAFE_MODES.stock_update),
        queue_overflow=values.get("queue_overflow", SAFE_MODES.queue_overflow),
        retry_backoff=values.get("retry_backoff", SAFE_MODES.retry_backoff),
    )


def active_unsafe_modes(values: dict[str, Any]) -> list[str]:
    """The unsafe modes that are on, by name, as the red banner lists them: ["ack_mode=on_receive", ...]."""
    if not settings.ORDERPIPE_SANDBOX:
        return []
    return [f"{name}={shown_value(values[name])}" for name in UNSAFE_MODES if values[name] != DEFAULTS[name]]


def gateway_down_for(values: dict[str, Any], now: float | None = None) -> float:
    """How many more seconds the payment gateway refuses calls (`gateway_down_until`), 0 once it is back."""
    until = values.get("gateway_down_until")
    if until is None:
        return 0.0
    return max(0.0, until - (time.time() if now is None else now))


def active_faults(values: dict[str, Any]) -> list[str]:
    """The faults and modes that are on, then the scaling off its defaults, as a learner reads them: ["crash rate 1",
    "step-by-step mode", "workers 2"] (the yellow banner, whose "Restore defaults" restores them all)."""
    active = []
    for name in FAULTS:
        value = values[name]
        if value == DEFAULTS[name]:
            continue
        if isinstance(value, bool):
            active.append(FAULT_LABELS[name])
        elif name == "gateway_down_until" and gateway_down_for(values) > 0:
            active.append(f"{FAULT_LABELS[name]} until {shown_value(value, name)}")
        elif name == "gateway_down_until":
            # Over, but still set: the deliveries go one by one, as during the outage, until it is cleared.
            active.append(f"payment gateway back since {shown_value(value, name)}")
        else:
            unit = {"step_delay_ms": " ms", "queue_max_length": " messages"}.get(name, "")
            active.append(f"{FAULT_LABELS[name]} {value:g}{unit}")
    return active + active_scaling(values)


def effective_scaling(values: dict[str, Any]) -> dict[str, int]:
    """The workers, threads and prefetch the supervisor runs for these settings (empty: the process defaults)."""
    return {
        "workers": values["workers"],
        "worker_concurrency": values["worker_concurrency"] or settings.WORKER_CONCURRENCY,
        "worker_prefetch": values["worker_prefetch"] or settings.WORKER_PREFETCH,
    }


def active_scaling(values: dict[str, Any]) -> list[str]:
    """The scaling that differs from the defaults in effect, as the banner names it: ["workers 2", "prefetch 1"] (a
    lesson's explicit prefetch 10 is the default prefetch: not named)."""
    wanted, default = effective_scaling(values), effective_scaling(DEFAULTS)
    return [f"{SCALING_LABELS[name]} {wanted[name]}" for name in SCALING if wanted[name] != default[name]]


def shown_value(value: Any, name: str = "") -> str:
    """A setting's value as the feed and the admin print it: true/false, numbers without trailing zeros, the
    gateway's outage end as a UTC time of day."""
    if name == "gateway_down_until" and isinstance(value, int | float):
        return time.strftime("%H:%M:%S UTC", time.gmtime(value))
    if value is None:
        return "default"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return f"{value:g}"
    return str(value)


def refuse_unsafe_when_off(changes: dict[str, Any]) -> None:
    """With ORDERPIPE_SANDBOX=false, any unsafe mode (or the accept fault) set to anything but its safe default is
    refused: ValidationError naming each field. (`modes()` ignores such a row anyway; this says so up front.)"""
    if settings.ORDERPIPE_SANDBOX:
        return
    refused = sorted(
        name for name in changes if name in (*UNSAFE_MODES, "accept_failure_rate") and changes[name] != DEFAULTS[name]
    )
    if refused:
        raise ValidationError(
            {name: ["Unsafe modes are refused when ORDERPIPE_SANDBOX=false (production)."] for name in refused}
        )


def sandbox_channel() -> str:
    """The PostgreSQL NOTIFY channel that tells workers the settings changed (prefixed, like every shared name)."""
    return f"{settings.ORDERPIPE_PREFIX}sandbox"


@transaction.atomic
def sandbox_update(*, changes: dict[str, Any], changed_by: str = "", via: str) -> SandboxSettings:
    """Apply and record changes, and raise the version when anything changed (its NOTIFY goes out with the commit).
    Raises ValidationError (field -> messages) for unknown fields or bad values."""
    unknown = sorted(set(changes) - set(SandboxSettings.FIELDS))
    if unknown:
        raise ValidationError({name: ["Unknown sandbox setting."] for name in unknown})
    refuse_unsafe_when_off(changes)
    settings_row = SandboxSettings.objects.select_for_update().get(pk=SandboxSettings.load().pk)
    before = settings_row.as_dict()
    for name, value in changes.items():
        setattr(settings_row, name, value)
    settings_row.full_clean()
    if any(before[name] != getattr(settings_row, name) for name in changes):
        settings_row.version += 1
        with connection.cursor() as cursor:  # delivered to the listeners when this transaction commits
            cursor.execute("SELECT pg_notify(%s, %s)", [sandbox_channel(), str(settings_row.version)])
    settings_row.save()
    recorded = SandboxChange.objects.bulk_create(
        SandboxChange(
            field=name, old_value=before[name], new_value=getattr(settings_row, name), changed_by=changed_by, via=via
        )
        for name in changes
        if before[name] != getattr(settings_row, name)
    )
    if recorded:
        # Into the live feed (and so onto every open page, with the new settings) only once the change is committed.
        detail = ", ".join(
            f"{c.field} {shown_value(c.old_value, c.field)} → {shown_value(c.new_value, c.field)}" for c in recorded
        )
        transaction.on_commit(lambda: live.record_control("sandbox", f"{detail} (via {via})", by=changed_by))
        # This process sees its own change at once (others within the reader's second).
        transaction.on_commit(reader.invalidate)
    return settings_row


class Pending(TypedDict):
    name: str
    why: str


@dataclass
class Applied:
    """Whether every live worker runs settings `version` (and, under `make run`'s supervisor, the wanted number of
    workers with the wanted threads and prefetch): `applied` names those that do, `pending` the others and why."""

    version: int
    applied: list[str] = field(default_factory=list)
    pending: list[Pending] = field(default_factory=list)
    note: str = ""
    # The names in `pending` that no wait can settle (a queue limit with no supervisor to apply it).
    unsettleable: set[str] = field(default_factory=set)

    @property
    def done(self) -> bool:
        return not self.pending

    def as_dict(self) -> dict[str, Any]:
        return {
            "version": self.version,
            "done": self.done,
            "applied": self.applied,
            "pending": self.pending,
            "note": self.note,
        }

    def text(self) -> str:
        """One line for a person: "in effect on worker-1, worker-2" or "not yet in effect on worker-2 (...)"."""
        if self.pending:
            waiting = "; ".join(f"{p['name']} ({p['why']})" for p in self.pending)
            return f"settings version {self.version} not yet in effect on {waiting}"
        where = ", ".join(self.applied) if self.applied else "no worker running"
        return f"settings version {self.version} in effect ({where}){f'; {self.note}' if self.note else ''}"


def _nobody_checks(row: SandboxSettings) -> Applied:
    return Applied(version=row.version, note="no worker reports the settings it runs")


# Who runs which settings: the worker side's check (worker/applied.py registers it when the app is ready; orders never
# imports worker). Until then nothing is known to be pending.
applied_by: Callable[[SandboxSettings], Applied] = _nobody_checks


def sandbox_applied() -> Applied:
    """Which live workers run the current settings, now."""
    return applied_by(SandboxSettings.load())


def wait_applied(version: int, *, timeout: float = APPLY_WAIT, every: float = 0.05) -> Applied:
    """Wait until every live worker runs settings `version` (or a later one), at most `timeout` seconds; returns
    who does and who does not. Call it outside any transaction: the workers must see the committed change."""
    deadline = time.monotonic() + timeout
    while True:
        row = SandboxSettings.load()
        applied = applied_by(row)
        waiting_helps = any(p["name"] not in applied.unsettleable for p in applied.pending)
        if not waiting_helps or time.monotonic() >= deadline:
            return applied
        time.sleep(every)


def sandbox_update_applied(
    *, changes: dict[str, Any], changed_by: str = "", via: str, timeout: float = APPLY_WAIT
) -> tuple[SandboxSettings, Applied]:
    """`sandbox_update`, then answer once every live worker runs the change (or `timeout` passed: `Applied` names
    the workers that do not yet, and why). What the API, the command, the admin and the lessons call."""
    row = sandbox_update(changes=changes, changed_by=changed_by, via=via)
    return row, wait_applied(row.version, timeout=timeout)


def sandbox_restore_safe_modes(*, changed_by: str = "", via: str) -> SandboxSettings:
    """The red banner's one click: every unsafe mode back to its safe default (faults and workers untouched)."""
    return sandbox_update(changes={name: DEFAULTS[name] for name in UNSAFE_MODES}, changed_by=changed_by, via=via)


def sandbox_reset(*, changed_by: str = "", via: str) -> SandboxSettings:
    """Every setting back to its default: faults, unsafe modes and scaling."""
    return sandbox_update(changes=dict(DEFAULTS), changed_by=changed_by, via=via)


def sandbox_state() -> dict[str, Any]:
    """What every page shows of the sandbox: the settings, the faults that are on (and the scaling that differs)."""
    values = SandboxSettings.load().as_dict()
    return {
        "settings": values,
        "active_faults": active_faults(values),
        "unsafe_modes": active_unsafe_modes(values),
    }


class SandboxReader:
    """What workers consult before every step: the settings row, re-read at most once per `ttl` seconds, so a
    change is seen within a second without a query per step. A worker re-reads at once when the change's NOTIFY
    arrives (`invalidate`); `version` is the version of the values it holds."""

    def __init__(self, ttl: float = 1.0) -> None:
        self.ttl = ttl
        self._lock = threading.Lock()
        self._value: dict[str, Any] = dict(DEFAULTS)
        self._read_at = float("-inf")
        self.version = 0

    def get(self, *, fresh: bool = False) -> dict[str, Any]:
        """The settings; `fresh` reads the row now (a web request that must act on the latest committed change)."""
        with self._lock:
            if fresh or time.monotonic() - self._read_at >= self.ttl:
                row = SandboxSettings.load()
                self._value, self.version = row.as_dict(), row.version
                self._read_at = time.monotonic()
            return self._value

    def invalidate(self) -> None:
        with self._lock:
            self._read_at = float("-inf")


reader = SandboxReader()


# The step a waiting worker announced (worker/processing.py: "... waiting for 'Next step' before '<step>'.").
_WAITING_BEFORE = re.compile(r"before '([^']+)'")


@transaction.atomic
def step_grant(*, order_id: uuid.UUID | str, granted_by: str = "") -> StepGrant:
    """'Next step' for one order in step-by-step mode. The event names the step it releases: the one the worker
    announced it waits before, if the order's latest event is that announcement (else the worker has not reached its
    next step yet, and the press will release that one when it does)."""
    order = Order.objects.select_for_update().get(pk=order_id)
    grant = StepGrant.objects.create(order=order)
    latest = OrderEvent.objects.filter(order=order).order_by("-seq").values_list("kind", "message").first()
    waiting = _WAITING_BEFORE.search(latest[1]) if latest and latest[0] == EventKind.STEP_WAITING else None
    released = f"releases '{waiting.group(1)}'" if waiting else "releases the worker's next step when it gets there"
    record_event(
        order, EventKind.CONTROL, f"'Next step' pressed{f' by {granted_by}' if granted_by else ''}: {released}."
    )
    return grant


def step_grant_take(*, order_id: uuid.UUID | str) -> bool:
    """A waiting worker takes one unused grant; True if it got one. The conditional update makes two workers
    unable to use the same press."""
    grant = StepGrant.objects.filter(order_id=order_id, used_at__isnull=True).order_by("id").first()
    if grant is None:
        return False
    return StepGrant.objects.filter(pk=grant.pk, used_at__isnull=True).update(used_at=timezone.now()) == 1


@transaction.atomic
def stock_restock(*, quantity: int, sku: str | None = None) -> list[Product]:
    """Add `quantity` items to the stock of one product (`sku`) or of every product; returns them, restocked.
    An F() update, so a worker reserving stock at the same moment loses nothing. Raises Product.DoesNotExist."""
    products = Product.objects.all() if sku is None else Product.objects.filter(sku=sku)
    if not products.update(stock=F("stock") + quantity):
        raise Product.DoesNotExist(f"no product {sku}")
    return list(products.order_by("sku"))
