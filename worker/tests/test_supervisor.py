"""The supervisor of `make run`, for real: a crashed or killed worker comes back while the relay stays up, and the
number of workers and their concurrency follow the sandbox settings."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest

from orders import sandbox, services
from orders.models import Order, OrderStatus, OutboxMessage, Payment, SandboxSettings
from orders.tests.factories import ProductFactory
from worker import supervision
from worker.models import RelayHeartbeat, ServiceLink, SupervisedProcess, SupervisorRequest, WorkerHeartbeat
from worker.supervisor import Supervisor, describe_exit, restart_delay
from worker.tests.processes import Service, wait_until

State = SupervisedProcess.State


def test_restart_delays_grow_and_are_capped():
    assert [restart_delay(n) for n in range(1, 8)] == [1, 2, 4, 8, 16, 30, 30]


def test_exit_statuses_read_as_a_learner_reads_them():
    assert describe_exit(-signal.SIGKILL) == "killed by SIGKILL"
    assert describe_exit(70) == "exit 70 (sandbox crash)"
    assert describe_exit(1) == "exit 1"


def row(name: str) -> SupervisedProcess:
    found = SupervisedProcess.objects.filter(name=name).first()
    assert found is not None, f"the supervisor has not recorded {name}"
    return found


def recorded(name: str) -> SupervisedProcess | None:
    return SupervisedProcess.objects.filter(name=name).first()


def alive(pid: int | None) -> bool:
    if pid is None:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A child the supervisor has not reaped yet is a zombie: dead for our purposes. (It may also be gone by now.)
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except OSError:
        return False


def cmdline(pid: int) -> list[str]:
    return Path(f"/proc/{pid}/cmdline").read_bytes().decode().rstrip("\0").split("\0")


def running(name: str) -> SupervisedProcess | None:
    found = recorded(name)
    return found if found is not None and found.state == State.RUNNING and alive(found.pid) else None


def pid_of(name: str) -> int:
    pid = row(name).pid
    assert pid is not None
    return pid


@pytest.fixture
def supervised(tmp_path, broker):
    """`manage.py supervise` for the relay and the workers (no HTTP servers), on this run's database and queues."""
    service = Service("supervise", "--only", "relay,worker", log_dir=tmp_path).start()
    yield service
    assert service.stop() == 0, service.output()
    assert SupervisedProcess.objects.exclude(state=State.STOPPED).count() == 0
    pids = [p.pid for p in SupervisedProcess.objects.all()]
    assert not any(alive(pid) for pid in pids), "a supervised process outlived its supervisor"


@pytest.mark.e2e
@pytest.mark.django_db(transaction=True)
def test_a_crashing_worker_is_restarted_and_the_order_still_completes(supervised):
    ProductFactory(sku="BOOK-001", price="25.00", stock=10)
    assert wait_until(lambda: running("worker-1") is not None and running("relay") is not None, timeout=30), (
        supervised.output()
    )
    relay_pid = pid_of("relay")
    first_pid = pid_of("worker-1")

    # A learner sets the crash rate to 1 and places an order: the worker dies in the middle of a step.
    sandbox.sandbox_update(changes={"crash_rate": 1.0}, via="test")
    order = services.order_create(customer_email="crash@example.com", items=[{"sku": "BOOK-001", "quantity": 1}])
    assert wait_until(lambda: (r := recorded("worker-1")) is not None and r.restarts >= 1, timeout=30), (
        supervised.output()
    )
    crashed = row("worker-1")
    assert crashed.last_exit == "exit 70 (sandbox crash)"
    assert wait_until(lambda: running("worker-1") is not None and row("worker-1").pid != first_pid, timeout=30)

    # The relay was never touched, and once the crash rate is back to 0 the order completes, charged once.
    assert row("relay").pid == relay_pid and alive(relay_pid)
    sandbox.sandbox_update(changes={"crash_rate": 0.0}, via="test")
    assert wait_until(lambda: Order.objects.get(pk=order.pk).status in OrderStatus.terminal(), timeout=90), (
        supervised.output()
    )
    assert Order.objects.get(pk=order.pk).status == OrderStatus.COMPLETED
    assert Payment.objects.filter(order=order).count() == 1


@pytest.mark.e2e
@pytest.mark.django_db(transaction=True)
def test_a_killed_worker_comes_back_and_workers_follow_the_sandbox_settings(supervised):
    assert wait_until(lambda: running("worker-1") is not None and running("relay") is not None, timeout=30), (
        supervised.output()
    )
    relay_pid = pid_of("relay")
    victim = pid_of("worker-1")
    os.kill(victim, signal.SIGKILL)
    assert wait_until(lambda: (r := running("worker-1")) is not None and r.pid != victim, timeout=30)
    assert row("worker-1").last_exit == "killed by SIGKILL"
    assert row("worker-1").restarts == 1

    # Scale up from the settings (the page, the admin or `manage.py sandbox set workers=2`).
    sandbox.sandbox_update(changes={"workers": 2}, via="test")
    assert wait_until(lambda: running("worker-2") is not None, timeout=30), supervised.output()

    # A new concurrency restarts the workers with it, on purpose: not counted as a crash.
    sandbox.sandbox_update(changes={"worker_concurrency": 3}, via="test")

    def both_use_three() -> bool:
        rows = [running("worker-1"), running("worker-2")]
        return all(r is not None and r.pid is not None and cmdline(r.pid)[-2:] == ["--concurrency", "3"] for r in rows)

    assert wait_until(both_use_three, timeout=45), supervised.output()
    assert row("worker-1").restarts == 1 and row("worker-2").restarts == 0

    # Scale down: the newest worker stops cleanly (SIGTERM, exit 0) and its row says so. (Once it consumes: before
    # its signal handlers are installed, a SIGTERM simply ends the process.)
    worker_2 = pid_of("worker-2")
    assert wait_until(lambda: WorkerHeartbeat.objects.filter(pid=worker_2).exists(), timeout=30)
    sandbox.sandbox_update(changes={"workers": 1}, via="test")
    assert wait_until(lambda: (r := recorded("worker-2")) is not None and r.state == State.STOPPED, timeout=30)
    assert row("worker-2").last_exit == "exit 0"
    assert not alive(worker_2)
    assert row("relay").pid == relay_pid and alive(relay_pid)


@pytest.mark.django_db
def test_with_the_sandbox_off_the_command_line_decides(settings):
    settings.ORDERPIPE_SANDBOX = False
    SandboxSettings.objects.update_or_create(pk=1, defaults={"workers": 5, "worker_concurrency": 9})
    supervisor = Supervisor(workers=2, concurrency=3, roles=("worker",))
    desired = supervisor.desired()
    assert (desired.workers, desired.concurrency) == (2, 3)
    settings.ORDERPIPE_SANDBOX = True
    supervisor._desired = None
    desired = supervisor.desired()
    assert (desired.workers, desired.concurrency) == (5, 9)


# ---------------------------------------------------------------- requests from the page (kill, stop, cut, restore)


@pytest.fixture
def supervised_with_links(tmp_path, broker):
    """`supervise` with its proxies in front of PostgreSQL, RabbitMQ and Redis, and a short PostgreSQL cut."""
    service = Service("supervise", "--only", "relay,worker", "--postgres-cut-seconds", "3", log_dir=tmp_path).start()
    yield service
    assert service.stop() == 0, service.output()
    assert not ServiceLink.objects.exists(), "the supervisor's links outlived it"


def carried_out(request: SupervisorRequest, service: Service) -> SupervisorRequest:
    done = supervision.wait_for(request, timeout=15)
    assert done.state == SupervisorRequest.State.DONE, (done.state, done.result, service.output(4000))
    return done


def link(name: str) -> ServiceLink:
    return ServiceLink.objects.get(name=name)


@pytest.mark.e2e
@pytest.mark.django_db(transaction=True)
def test_the_supervisor_carries_out_kill_stop_cut_and_restore_requests(supervised_with_links):
    service = supervised_with_links
    ProductFactory(sku="BOOK-001", price="25.00", stock=10)
    assert wait_until(lambda: running("worker-1") is not None and running("relay") is not None, timeout=30), (
        service.output()
    )
    state = supervision.supervisor_state()
    assert state["available"] and set(state["processes"]) == {"relay", "worker-1"}
    assert [entry["name"] for entry in state["links"]] == ["postgresql", "rabbitmq", "redis"]
    # The workers connect through the proxies; the supervisor itself does not.
    worker_env = Path(f"/proc/{pid_of('worker-1')}/environ").read_bytes().decode().split("\0")
    assert f"DATABASE_URL=postgres://postgres@127.0.0.1:{link('postgresql').proxy_ports}/" in "\n".join(worker_env)

    # Kill a worker (SIGKILL): it is restarted with backoff, and its row says how it died.
    victim = pid_of("worker-1")
    done = carried_out(supervision.request_signal("worker-1", kill=True, by="ada"), service)
    assert f"SIGKILL sent to worker-1 (pid {victim})" in done.result
    assert wait_until(lambda: (r := running("worker-1")) is not None and r.pid != victim, timeout=30)
    assert row("worker-1").last_exit == "killed by SIGKILL" and row("worker-1").restarts == 1

    # Stop the relay (SIGTERM): it finishes its batch, exits 0, and is restarted too.
    # (Once it relays: before its signal handlers are installed, a SIGTERM simply ends the process.)
    relay = pid_of("relay")
    assert wait_until(lambda: RelayHeartbeat.objects.filter(pid=relay).exists(), timeout=30)
    carried_out(supervision.request_signal("relay", kill=False, by="ada"), service)
    assert wait_until(lambda: (r := running("relay")) is not None and r.pid != relay, timeout=30)
    assert row("relay").last_exit == "exit 0"

    # A request for a process that does not exist is refused before it is filed.
    with pytest.raises(supervision.InvalidRequest, match="worker-9"):
        supervision.request_signal("worker-9", by="ada")

    # Cut RabbitMQ: orders are accepted into the outbox and stay there; restored, the relay drains it.
    carried_out(supervision.request_cut("rabbitmq", by="ada"), service)
    assert link("rabbitmq").cut
    order = services.order_create(customer_email="cut@example.com", items=[{"sku": "BOOK-001", "quantity": 1}])
    assert not wait_until(lambda: OutboxMessage.objects.get(order=order).sent_at is not None, timeout=3)
    carried_out(supervision.request_restore("rabbitmq", by="ada"), service)
    assert not link("rabbitmq").cut
    assert wait_until(lambda: Order.objects.get(pk=order.pk).status == OrderStatus.COMPLETED, timeout=60), (
        service.output(4000)
    )

    # Cut Redis: orders still complete (without their cache writes); restore.
    carried_out(supervision.request_cut("redis", by="ada"), service)
    order = services.order_create(customer_email="redis@example.com", items=[{"sku": "BOOK-001", "quantity": 1}])
    assert wait_until(lambda: Order.objects.get(pk=order.pk).status == OrderStatus.COMPLETED, timeout=60), (
        service.output(4000)
    )
    carried_out(supervision.request_restore("redis", by="ada"), service)

    # Cut PostgreSQL: it restores itself after its fixed time (3 s here), and the cut shows when it will.
    carried_out(supervision.request_cut("postgresql", by="ada"), service)
    cut = link("postgresql")
    assert cut.cut and cut.restore_at is not None
    assert wait_until(lambda: not link("postgresql").cut, timeout=15)
    order = services.order_create(customer_email="pg@example.com", items=[{"sku": "BOOK-001", "quantity": 1}])
    assert wait_until(lambda: Order.objects.get(pk=order.pk).status == OrderStatus.COMPLETED, timeout=60), (
        service.output(4000)
    )
    assert Payment.objects.count() == Order.objects.filter(status=OrderStatus.COMPLETED).count()


@pytest.mark.django_db
def test_without_a_supervisor_requests_are_refused_not_left_pending():
    with pytest.raises(supervision.SupervisorUnavailable, match="make run"):
        supervision.request_signal("worker-1")
    with pytest.raises(supervision.SupervisorUnavailable):
        supervision.request_cut("redis")
    with pytest.raises(supervision.InvalidRequest, match="one of"):
        supervision.request_cut("mysql")
    assert not SupervisorRequest.objects.exists()
    assert supervision.supervisor_state()["available"] is False
