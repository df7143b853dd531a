"""A sandbox change answers once the workers run it (worker/applied.py, orders/sandbox `sandbox_update_applied`):
the pause proven against a real worker process, and the check's verdicts on heartbeats."""

from __future__ import annotations

import time
from datetime import timedelta

import pytest
from django.utils import timezone

from orders import sandbox, services
from orders.models import Order, OrderStatus, SandboxSettings
from orders.tests.factories import ProductFactory
from worker.applied import settings_applied
from worker.models import WorkerHeartbeat
from worker.queue_policy import wanted_policy
from worker.tests.factories import SupervisedProcessFactory, WorkerHeartbeatFactory
from worker.tests.processes import Service, wait_until


def current_version() -> int:
    return SandboxSettings.load().version


def runs_current_settings() -> bool:
    return WorkerHeartbeat.objects.filter(settings_version=current_version()).exists()


@pytest.mark.e2e
@pytest.mark.django_db(transaction=True)
def test_an_order_placed_right_after_the_pause_answers_waits_for_the_unpause(tmp_path, broker, staff_api):
    """Ten times: PATCH {"paused": true}, an order placed at once (printed: how soon), and it stays in the queue
    unconsumed until the PATCH that lifts the pause answers, then completes."""
    ProductFactory(sku="BOOK-001", stock=100)
    relay = Service("run_relay", log_dir=tmp_path).start()
    worker = Service("run_worker", log_dir=tmp_path).start()
    queue = broker.topology.process_queue
    gaps = []
    try:
        assert wait_until(runs_current_settings, 60), worker.output()
        for attempt in range(10):
            answer = staff_api.patch("/api/sandbox/", {"paused": True}, format="json")
            answered = time.monotonic()
            order = services.order_create(
                customer_email=f"pause-{attempt}@example.com", items=[{"sku": "BOOK-001", "quantity": 1}]
            )
            gaps.append(time.monotonic() - answered)
            assert answer.status_code == 200 and answer.data["applied"]["done"], answer.data
            assert answer.data["applied"]["applied"], answer.data
            # The relay publishes it; nobody consumes it: its message waits in the queue, which has no consumer.
            assert wait_until(lambda o=order: Order.objects.get(pk=o.pk).status == OrderStatus.QUEUED, 20)
            declared = broker.channel.queue_declare(queue, passive=True).method
            assert (declared.message_count, declared.consumer_count) == (1, 0), worker.output(3000)
            assert not wait_until(lambda o=order: Order.objects.get(pk=o.pk).status != OrderStatus.QUEUED, 1.0)

            answer = staff_api.patch("/api/sandbox/", {"paused": False}, format="json")
            assert answer.data["applied"]["done"], answer.data
            assert wait_until(lambda o=order: Order.objects.get(pk=o.pk).status == OrderStatus.COMPLETED, 30)
    finally:
        worker.stop()
        relay.stop()
    print(f"\npause: each order placed {max(gaps) * 1000:.1f} ms at most after the PATCH answered (10 rounds)")


def beat(name: str, *, version: int, pid: int = 1, concurrency: int = 4, prefetch: int = 10, age: float = 0.0) -> None:
    WorkerHeartbeatFactory(
        name=name,
        pid=pid,
        settings_version=version,
        concurrency=concurrency,
        prefetch=prefetch,
        last_seen=timezone.now() - timedelta(seconds=age),
    )


@pytest.mark.django_db
def test_a_worker_on_an_older_version_is_named_until_it_reports_the_new_one(settings):
    settings.WORKER_CONCURRENCY, settings.WORKER_PREFETCH = 4, 10
    row = sandbox.sandbox_update(changes={"bug_rate": 0.5}, via="test")
    beat("w-new", version=row.version)
    beat("w-old", version=row.version - 1)
    beat("w-dead", version=0, age=10)  # a stale heartbeat is not waited for
    applied = settings_applied(row)
    assert applied.applied == ["w-new"]
    assert applied.pending == [{"name": "w-old", "why": f"runs settings version {row.version - 1}"}]
    assert not applied.done and "w-old" in applied.text()
    WorkerHeartbeat.objects.filter(pk="w-old").update(settings_version=row.version)
    assert settings_applied(row).done


@pytest.mark.django_db
def test_under_the_supervisor_done_means_the_wanted_workers_threads_and_prefetch(settings):
    settings.WORKER_CONCURRENCY, settings.WORKER_PREFETCH = 4, 10
    row = sandbox.sandbox_update(changes={"workers": 2, "worker_prefetch": 1}, via="test")
    SupervisedProcessFactory(name="worker-1", pid=11)
    SupervisedProcessFactory(name="worker-9", pid=99, state="stopped")
    beat("a", version=row.version, pid=11, prefetch=10)
    beat("killed", version=row.version, pid=12, prefetch=1)  # not a process the supervisor runs: not counted
    applied = settings_applied(row)
    assert applied.applied == []
    assert applied.pending == [
        {"name": "worker-1", "why": "runs prefetch 10, 1 wanted: restarting"},
        {"name": "workers", "why": "1 more starting"},
    ]
    WorkerHeartbeat.objects.filter(pk="a").update(prefetch=1)
    SupervisedProcessFactory(name="worker-2", pid=13)
    beat("b", version=row.version, pid=13, prefetch=1)
    assert settings_applied(row).applied == ["worker-1", "worker-2"]
    assert settings_applied(row).done


@pytest.mark.django_db
def test_the_api_answers_with_who_runs_the_change(staff_api):
    answer = staff_api.patch("/api/sandbox/", {"step_delay_ms": 5}, format="json")
    assert answer.status_code == 200
    assert answer.data["version"] == current_version() > 0
    assert answer.data["applied"] == {
        "version": current_version(),
        "done": True,
        "applied": [],
        "pending": [],
        "note": "no worker running; workers, threads and prefetch are followed only by make run's supervisor",
    }
    assert staff_api.get("/api/sandbox/").data["applied"]["version"] == current_version()


@pytest.mark.django_db
def test_the_command_says_which_workers_run_the_change():
    from io import StringIO

    from django.core.management import call_command

    row = sandbox.sandbox_update(changes={}, via="test")
    # Alive throughout the command's wait (its last beat dated a minute ahead), and never on the next version.
    beat("w-old", version=row.version, age=-60)
    out, err = StringIO(), StringIO()
    call_command("sandbox", "set", "bug_rate=0.2", stdout=out, stderr=err)
    assert '"bug_rate": 0.2' in out.getvalue()
    assert f"settings version {row.version + 1} not yet in effect on w-old" in err.getvalue()


@pytest.mark.django_db
def test_a_queue_limit_is_done_once_the_supervisor_applied_its_policy_and_says_why_without_one(settings):
    """The full-queue lesson's limit is a RabbitMQ policy the supervisor applies: the change is pending until the
    supervisor recorded the policy in effect (or names rabbitmqctl's failure); with no supervisor, it says so."""
    settings.WORKER_CONCURRENCY, settings.WORKER_PREFETCH = 4, 10
    row = sandbox.sandbox_update(changes={"queue_max_length": 10, "queue_overflow": "drop_head"}, via="test")
    beat("a", version=row.version)
    [pending] = settings_applied(row).pending
    assert pending["name"] == "main queue policy" and "make run's supervisor" in pending["why"]

    SupervisedProcessFactory(name="worker-1", pid=1)
    assert "the supervisor is setting" in settings_applied(row).pending[0]["why"]
    SandboxSettings.objects.update(queue_policy_in_effect="failed: nodedown")
    assert "rabbitmqctl failed: nodedown" in settings_applied(SandboxSettings.load()).pending[0]["why"]
    SandboxSettings.objects.update(queue_policy_in_effect=wanted_policy(10, "drop_head"))
    assert settings_applied(SandboxSettings.load()).done

    # Cleared: done once the supervisor cleared the policy.
    row = sandbox.sandbox_update(changes={"queue_max_length": None}, via="test")
    WorkerHeartbeat.objects.update(settings_version=row.version)
    assert not settings_applied(SandboxSettings.load()).done
    SandboxSettings.objects.update(queue_policy_in_effect="")
    assert settings_applied(SandboxSettings.load()).done
