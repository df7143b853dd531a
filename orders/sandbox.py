"""The fault injector's settings: stored in one database row, changed through these services (API, admin,
command, dashboard), recorded in SandboxChange, and read by workers through a one-second cache."""

from __future__ import annotations

import threading
import time
import uuid
from typing import Any

from django.core.exceptions import ValidationError
from django.db import transaction
from django.utils import timezone

from orders.events import record_event
from orders.models import EventKind, Order, SandboxChange, SandboxSettings, StepGrant

# A burst (the dashboard's "Burst" control, worker/controls.py) places at most this many orders, committed in
# chunks of BURST_CHUNK. Here rather than beside the view, so the dashboard page can show the limit without
# importing worker.
BURST_MAX = 10_000
BURST_CHUNK = 100

DEFAULTS: dict[str, Any] = {
    "step_delay_ms": 0,
    "decline_rate": 0.0,
    "transient_failure_rate": 0.0,
    "crash_rate": 0.0,
    "paused": False,
    "step_mode": False,
    "workers": 1,
    "worker_concurrency": None,
}


@transaction.atomic
def sandbox_update(*, changes: dict[str, Any], changed_by: str = "", via: str) -> SandboxSettings:
    """Apply and record changes. Raises ValidationError (field -> messages) for unknown fields or bad values."""
    unknown = sorted(set(changes) - set(SandboxSettings.FIELDS))
    if unknown:
        raise ValidationError({name: ["Unknown sandbox setting."] for name in unknown})
    settings_row = SandboxSettings.objects.select_for_update().get(pk=SandboxSettings.load().pk)
    before = settings_row.as_dict()
    for name, value in changes.items():
        setattr(settings_row, name, value)
    settings_row.full_clean()
    settings_row.save()
    SandboxChange.objects.bulk_create(
        SandboxChange(
            field=name, old_value=before[name], new_value=getattr(settings_row, name), changed_by=changed_by, via=via
        )
        for name in changes
        if before[name] != getattr(settings_row, name)
    )
    return settings_row


def sandbox_reset(*, changed_by: str = "", via: str) -> SandboxSettings:
    return sandbox_update(changes=dict(DEFAULTS), changed_by=changed_by, via=via)


class SandboxReader:
    """What workers consult before every step: the settings row, re-read at most once per `ttl` seconds, so a
    change is seen within a second without a query per step."""

    def __init__(self, ttl: float = 1.0) -> None:
        self.ttl = ttl
        self._lock = threading.Lock()
        self._value: dict[str, Any] = dict(DEFAULTS)
        self._read_at = float("-inf")

    def get(self) -> dict[str, Any]:
        with self._lock:
            if time.monotonic() - self._read_at >= self.ttl:
                self._value = SandboxSettings.load().as_dict()
                self._read_at = time.monotonic()
            return self._value

    def invalidate(self) -> None:
        with self._lock:
            self._read_at = float("-inf")


reader = SandboxReader()


@transaction.atomic
def step_grant(*, order_id: uuid.UUID | str, granted_by: str = "") -> StepGrant:
    """'Next step' for one order in step-by-step mode."""
    order = Order.objects.select_for_update().get(pk=order_id)
    grant = StepGrant.objects.create(order=order)
    record_event(order, EventKind.CONTROL, f"'Next step' pressed{f' by {granted_by}' if granted_by else ''}.")
    return grant


def step_grant_take(*, order_id: uuid.UUID | str) -> bool:
    """A waiting worker takes one unused grant; True if it got one. The conditional update makes two workers
    unable to use the same press."""
    grant = StepGrant.objects.filter(order_id=order_id, used_at__isnull=True).order_by("id").first()
    if grant is None:
        return False
    return StepGrant.objects.filter(pk=grant.pk, used_at__isnull=True).update(used_at=timezone.now()) == 1
