from __future__ import annotations

import pytest
from django.utils import timezone

from orderpipe.dashboard import state as pipeline
from orders import sandbox
from worker.models import WorkerHeartbeat


@pytest.mark.django_db
def test_a_worker_that_stops_heart_beating_is_listed_as_gone_then_forgotten():
    now = timezone.now()
    for name, silent_for in (
        ("w-live", pipeline.WORKER_STALE_AFTER / 2),
        ("w-gone", pipeline.WORKER_STALE_AFTER * 2),
        ("w-old", pipeline.WORKER_FORGET_AFTER * 2),
    ):
        WorkerHeartbeat.objects.create(name=name, hostname="h", pid=1, started_at=now, last_seen=now - silent_for)
    state = pipeline.pipeline_state()
    assert [w["name"] for w in state["workers"]] == ["w-live"]
    gone = state["gone_workers"]
    assert [w["name"] for w in gone] == ["w-gone"]
    assert gone[0]["stopped_at"] == WorkerHeartbeat.objects.get(name="w-gone").last_seen.isoformat()


@pytest.mark.django_db
def test_the_pipeline_state_carries_the_sandbox_settings_and_the_active_faults():
    assert pipeline.pipeline_state()["sandbox"]["active_faults"] == []
    sandbox.sandbox_update(changes={"crash_rate": 1.0, "step_mode": True, "workers": 3}, via="test")
    state = pipeline.pipeline_state()["sandbox"]
    assert state["settings"]["workers"] == 3
    # The banner names the scaling off its defaults too (lesson 8 may leave 2 workers of 1 thread).
    assert state["active_faults"] == ["crash rate 1", "step-by-step mode", "workers 3"]
