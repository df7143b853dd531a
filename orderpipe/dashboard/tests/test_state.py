from __future__ import annotations

from datetime import timedelta

import pytest
from django.utils import timezone

from orderpipe.dashboard import state as pipeline
from orders import sandbox
from worker import supervision
from worker.models import SupervisedProcess, WorkerHeartbeat
from worker.tests.factories import QueueStatFactory, SupervisedProcessFactory, WorkerHeartbeatFactory


@pytest.mark.django_db
def test_a_worker_that_stops_heart_beating_is_listed_as_gone_then_forgotten():
    now = timezone.now()
    for name, silent_for in (
        ("w-live", pipeline.WORKER_STALE_AFTER / 2),
        ("w-gone", pipeline.WORKER_STALE_AFTER * 2),
        ("w-old", pipeline.WORKER_FORGET_AFTER * 2),
    ):
        WorkerHeartbeatFactory(name=name, started_at=now, last_seen=now - silent_for)
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


@pytest.mark.django_db
def test_rows_of_a_supervisor_that_stopped_heart_beating_are_not_shown_as_the_state_of_processes():
    """Processes started by hand against a database an earlier `make run` used: that run's rows (relay "stopped",
    worker-1 "crashed") describe nothing running now. The page hears that the supervisor ended, and when."""
    SupervisedProcessFactory(name="relay", role="relay", state="stopped", last_exit="exit 0")
    SupervisedProcessFactory(name="worker-1", state="crashed")
    state = pipeline.pipeline_state()
    assert [p["name"] for p in state["processes"]] == ["relay", "worker-1"]  # a running supervisor's rows
    assert state["supervisor_run"]["running"] is True

    ended = timezone.now() - supervision.FRESH_FOR - timedelta(seconds=1)
    SupervisedProcess.objects.update(updated_at=ended)
    state = pipeline.pipeline_state()
    assert state["processes"] == []
    assert state["supervisor_run"] == {"running": False, "last_seen": ended.isoformat(), "processes": 2}
    # And with no supervisor ever: nothing to say.
    SupervisedProcess.objects.all().delete()
    assert pipeline.pipeline_state()["supervisor_run"] == {"running": False, "last_seen": None, "processes": 0}


@pytest.mark.django_db
def test_queue_depths_observed_more_than_a_few_seconds_ago_are_marked_stale():
    now = timezone.now()
    QueueStatFactory(name="q.fresh", ready=3, consumers=1, observed_at=now)
    old = now - pipeline.QUEUE_STALE_AFTER - timedelta(seconds=1)
    QueueStatFactory(name="q.old", role="dead", position=1, ready=7, observed_at=old)
    queues = {q["name"]: q for q in pipeline.pipeline_state()["queues"]}
    assert queues["q.fresh"]["stale"] is False
    assert (queues["q.old"]["stale"], queues["q.old"]["observed_at"]) == (True, old.isoformat())
