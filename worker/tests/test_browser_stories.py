"""The "What happens when…" stories run from the page, as a learner runs them, under a real `manage.py supervise`
(web, ws, relay and a worker, on free ports, this run's database and queues): kill a worker during a few orders,
stop one with SIGTERM, kill the relay, cut RabbitMQ, cut Redis, cut PostgreSQL, send a poison message. Screenshots go
to artifacts/screenshots/stories-*.png. (A RabbitMQ node killed from the page needs the cluster: test_cluster.py.)"""

from __future__ import annotations

import socket
import time

import pytest

from orders import sandbox, services
from orders.models import EventKind, GatewayCharge, Order, OrderEvent, OrderStatus, OutboxMessage, Payment
from worker.models import SupervisedProcess, SupervisorRequest
from worker.tests.conftest import open_logged_in, require_chromium, screenshot
from worker.tests.processes import Service, free_port, service_env, wait_until

pytestmark = [pytest.mark.browser, pytest.mark.e2e, pytest.mark.django_db(transaction=True)]

TIMEOUT_MS = 45_000

require_chromium()


def port_free(port: int) -> bool:
    with socket.socket() as probe:
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


@pytest.fixture
def stack(tmp_path, broker, staff):
    """`make run`'s supervisor with everything: gunicorn on a free port, daphne on the next one (both free)."""
    port = free_port()
    while not port_free(port + 1):  # daphne takes port + 1
        port = free_port()
    # Slow steps (1 s each) from the first order on, so the kill lands while the worker holds orders half done. Set
    # before the worker starts: a running worker sees a change only within a second, time enough to finish them all.
    sandbox.sandbox_update(changes={"step_delay_ms": 1000}, via="test")
    env = service_env(WEB_WORKERS="1", WEB_THREADS="4")
    service = Service("supervise", "--port", str(port), "--postgres-cut-seconds", "8", log_dir=tmp_path, env=env)
    service.start()
    service.url = f"http://127.0.0.1:{port}"  # type: ignore[attr-defined]
    service.wait_http(f"{service.url}/healthz", timeout=40)
    yield service
    assert service.stop() == 0, service.output(4000)


def relay_down() -> bool:
    return SupervisedProcess.objects.get(name="relay").state == SupervisedProcess.State.CRASHED


def relay_restarts() -> int:
    return SupervisedProcess.objects.get(name="relay").restarts


def orders_completed(ids) -> bool:
    return Order.objects.filter(pk__in=ids, status=OrderStatus.COMPLETED).count() == len(ids)


def place(n: int, tag: str) -> list:
    return [
        services.order_create(customer_email=f"{tag}-{i}@example.com", items=[{"sku": "BOOK-001", "quantity": 1}]).pk
        for i in range(n)
    ]


def test_stories_from_the_page(stack, browser):
    started = time.monotonic()
    context, page = open_logged_in(browser, stack.url, width=1440, height=900, timeout_ms=TIMEOUT_MS)
    try:
        box = page.locator("#outage-box")
        page.locator("#process-list li[data-process='worker-1'][data-state=running]").wait_for()
        page.locator("#kill-process option[value='worker-1']").wait_for(state="attached")
        assert box.get_by_role("button", name="Kill (SIGKILL)").is_enabled()
        # One broker here, not `make cluster`'s three nodes: the node controls are greyed out and say how to get them.
        page.locator("#node-reason", has_text="make run CLUSTER=1").wait_for()
        assert page.locator("#node-kill").is_disabled() and page.locator("#node-restart").is_disabled()

        # 1. A worker is killed (SIGKILL) during a few orders: crashed → restarted, every order completes, charged once.
        first = place(6, "kill")
        assert wait_until(lambda: Order.objects.filter(pk__in=first, status=OrderStatus.PROCESSING).exists(), 30)
        page.select_option("#kill-process", "worker-1")
        box.get_by_role("button", name="Kill (SIGKILL)").click()
        page.locator("#outage-result[data-ok=yes]").wait_for()
        page.locator("#process-list li[data-process='worker-1']", has_text="killed by SIGKILL").wait_for()
        page.locator("#control-log", has_text="worker-1").wait_for()
        screenshot(page, "stories-kill-crashed", full_page=False)
        page.locator(
            "#process-list li[data-process='worker-1'][data-state=running]", has_text="restarted 1×"
        ).wait_for()
        sandbox.sandbox_update(changes={"step_delay_ms": 0}, via="test")
        assert wait_until(lambda: orders_completed(first), 60), stack.output(4000)
        assert Payment.objects.filter(order__in=first).count() == 6
        assert GatewayCharge.objects.filter(order_ref__in=[str(pk) for pk in first]).count() == 6
        # The kill really landed mid-order: the orders it held came back to a worker and resumed.
        assert OrderEvent.objects.filter(order__in=first, kind=EventKind.REDELIVERED).exists()
        screenshot(page, "stories-kill-restarted", full_page=False)

        # 1b. A worker is stopped with SIGTERM while it holds orders: it finishes and acks them, exits 0, and the
        # supervisor starts it again. Slow steps again, once the running worker runs them.
        _row, applied = sandbox.sandbox_update_applied(changes={"step_delay_ms": 1000}, via="test")
        assert applied.done, applied.text()
        stopped = place(4, "term")
        assert wait_until(lambda: Order.objects.filter(pk__in=stopped, status=OrderStatus.PROCESSING).exists(), 30)
        page.select_option("#kill-process", "worker-1")
        box.get_by_role("button", name="Stop (SIGTERM)").click()
        page.locator("#outage-result[data-ok=yes]", has_text="SIGTERM").wait_for()
        assert wait_until(
            lambda: SupervisorRequest.objects.filter(action="stop", target="worker-1", state="done").exists(), 10
        )
        # The orders it held when the signal landed: finished by that worker, not handed back to the queue.
        held = set(Order.objects.filter(pk__in=stopped, status=OrderStatus.PROCESSING).values_list("pk", flat=True))
        signalled_at = SupervisorRequest.objects.get(action="stop", target="worker-1").done_at
        worker = page.locator("#process-list li[data-process='worker-1']")
        # Shown "stopped · restarting" (grey, not crashed) for the second or two before its restart; the exit stays.
        worker.filter(has_text="last exit: exit 0").wait_for()
        screenshot(page, "stories-sigterm-stopped", full_page=False)
        worker.and_(page.locator("[data-state=running]")).filter(has_text="restarted 2×").wait_for()
        sandbox.sandbox_update(changes={"step_delay_ms": 0}, via="test")
        assert wait_until(lambda: orders_completed(stopped), 60), stack.output(4000)
        assert Payment.objects.filter(order__in=stopped).count() == 4
        assert GatewayCharge.objects.filter(order_ref__in=[str(pk) for pk in stopped]).count() == 4
        assert not OrderEvent.objects.filter(order__in=held, kind=EventKind.REDELIVERED, at__gt=signalled_at).exists()
        screenshot(page, "stories-sigterm-restarted", full_page=False)

        # 1c. The relay is killed (SIGKILL): the relay stage says so, orders placed meanwhile wait in the outbox, and
        # the restarted relay drains it; none is lost.
        page.select_option("#kill-process", "relay")
        box.get_by_role("button", name="Kill (SIGKILL)").click()
        page.locator("#outage-result[data-ok=yes]", has_text="relay").wait_for()
        assert wait_until(lambda: relay_down() or relay_restarts() == 1, 10)
        waiting = place(5, "relay")  # at once: the supervisor restarts the relay after a second's backoff
        relay = page.locator("#relay-detail", has_text="restarted 1× after killed by SIGKILL")
        relay.wait_for()
        screenshot(page, "stories-relay-restarted", full_page=False)
        assert wait_until(lambda: orders_completed(waiting), 60), stack.output(4000)
        restarted_at = SupervisedProcess.objects.get(name="relay").started_at
        outbox = OutboxMessage.objects.filter(order__in=waiting)
        # They waited: at least one was committed while no relay ran, and every one was sent by the new relay.
        assert outbox.filter(created_at__lt=restarted_at).exists()
        assert not outbox.filter(sent_at__lt=restarted_at).exists()
        page.wait_for_function("() => document.getElementById('n-outbox').textContent.trim() === '0'")
        assert Payment.objects.filter(order__in=waiting).count() == 5

        # 2. RabbitMQ is cut: the API keeps accepting, the outbox grows; restored, the relay drains it.
        rabbit = page.locator("#link-list li[data-link=rabbitmq]")
        rabbit.get_by_role("button", name="Cut").click()
        rabbit.locator(".link-state", has_text="cut").wait_for()
        second = place(3, "rabbit")
        page.wait_for_function("() => Number(document.getElementById('n-outbox').textContent) >= 3")
        screenshot(page, "stories-rabbitmq-cut", full_page=False)
        rabbit.get_by_role("button", name="Restore").click()
        rabbit.locator(".link-state", has_text="up").wait_for()
        assert wait_until(lambda: orders_completed(second), 60), stack.output(4000)
        page.wait_for_function("() => document.getElementById('n-outbox').textContent.trim() === '0'")
        screenshot(page, "stories-rabbitmq-restored", full_page=False)

        # 3. Redis is cut: orders complete without their cache writes, reads are MISSes from PostgreSQL; restore.
        redis = page.locator("#link-list li[data-link=redis]")
        redis.get_by_role("button", name="Cut").click()
        redis.locator(".link-state", has_text="cut").wait_for()
        third = place(2, "redis")
        assert wait_until(lambda: orders_completed(third), 60), stack.output(4000)
        read = context.request.get(f"{stack.url}/api/orders/{third[0]}/")
        assert read.status == 200 and read.headers["x-cache"] == "MISS"
        assert context.request.get(f"{stack.url}/api/orders/{third[0]}/").headers["x-cache"] == "MISS"
        screenshot(page, "stories-redis-cut", full_page=False)
        redis.get_by_role("button", name="Restore").click()
        redis.locator(".link-state", has_text="up").wait_for()
        # Back: the first read after the restore caches the order (MISS), the next one is a HIT.
        assert wait_until(
            lambda: context.request.get(f"{stack.url}/api/orders/{third[0]}/").headers["x-cache"] == "HIT", 20
        )
        page.locator("#control-log", has_text="restore").first.wait_for()
        screenshot(page, "stories-redis-restored", full_page=False)

        # A poison message from the page lands in the dead-letter queue; the worker carries on.
        box.get_by_role("button", name="Send a poison message").click()
        page.locator("#outage-result[data-ok=yes]", has_text="Poison message").wait_for()
        page.wait_for_function("() => Number(document.querySelector('#queue-rows tr.q-dead td.num')?.textContent) >= 1")

        # 4. PostgreSQL is cut: the API answers 503, the relay stage says the database is unreachable (its heartbeat is
        # a PostgreSQL row it cannot write), the cut counts down and restores itself; the page watched throughout.
        postgres = page.locator("#link-list li[data-link=postgresql]")
        postgres.get_by_role("button", name="Cut").click()
        postgres.locator(".link-state", has_text="restores in").wait_for()
        page.locator("#relay-state", has_text="database unreachable").wait_for()
        assert context.request.get(f"{stack.url}/api/orders/{third[0]}/").status == 503
        screenshot(page, "stories-postgresql-cut", full_page=False)
        postgres.locator(".link-state", has_text="up").wait_for()
        assert wait_until(lambda: context.request.get(f"{stack.url}/api/orders/{third[0]}/").status == 200, 20)
        page.wait_for_function("() => document.getElementById('relay-state').textContent !== 'database unreachable'")
    finally:
        context.close()
    assert SupervisedProcess.objects.get(name="web").restarts == 0  # the stack stayed up through all of it
    print(f"\nstories from the page: {time.monotonic() - started:.1f} s")


def test_without_a_supervisor_the_row_is_disabled_and_says_why(web, browser, staff, broker):
    """Compose, or workers started by hand: nothing would carry a kill or a cut out, so the page does not offer it."""
    context, page = open_logged_in(browser, web.url, width=1440, height=900, timeout_ms=TIMEOUT_MS)
    try:
        reason = page.locator("#outage-reason")
        reason.wait_for()
        assert "needs make run's supervisor" in reason.text_content()
        box = page.locator("#outage-box")
        assert box.get_by_role("button", name="Kill (SIGKILL)").is_disabled()
        for service in ("rabbitmq", "redis", "postgresql"):
            assert box.locator(f"li[data-link={service}] button").first.is_disabled()
        assert box.get_by_role("button", name="Send a poison message").is_enabled()  # needs only the broker
        screenshot(page, "stories-no-supervisor", full_page=False)
    finally:
        context.close()
