"""The dashboard and journey pages in a real browser (Debian's Chromium, headless) against the real web (daphne),
relay and worker processes, on this test run's database, queues and keys. Screenshots go to artifacts/screenshots/.
"""

from __future__ import annotations

import re

import pytest

from orders import sandbox
from orders.tests.factories import ProductFactory, StaffFactory
from worker.tests.conftest import (
    BROWSER_PASSWORD,
    a_worker_runs_current_settings,
    open_logged_in,
    place_order_from_the_form,
    require_chromium,
    screenshot,
)
from worker.tests.processes import Service, Web, wait_until
from worker.topology import topology

pytestmark = [pytest.mark.browser, pytest.mark.e2e, pytest.mark.django_db(transaction=True)]

PASSWORD = BROWSER_PASSWORD
TIMEOUT_MS = 30_000

# Without Chromium: skipped (failed under CI) before the module's web stack is started for nothing.
require_chromium()


@pytest.fixture(scope="module")
def stack(django_db_setup, django_db_blocker, tmp_path_factory):
    """One web, relay and worker for the module; each test's data is still its own (transactional flush)."""
    log_dir = tmp_path_factory.mktemp("browser-services")
    with django_db_blocker.unblock():
        web = Web(log_dir=log_dir).start()
        relay = Service("run_relay", log_dir=log_dir).start()
        worker = Service("run_worker", "--prefetch", "20", log_dir=log_dir).start()
    try:
        web.wait_ready()
        yield web
    finally:
        for service in (web, relay, worker):
            service.stop()


@pytest.fixture
def page(stack, browser):
    ProductFactory(sku="BOOK-001", name="The Pragmatic Queue", price="25.00", stock=5000)
    StaffFactory(username="browser-staff", password=PASSWORD)
    context, page = open_logged_in(browser, stack.url, timeout_ms=TIMEOUT_MS)
    yield page
    context.close()


def test_an_order_placed_from_the_dashboard_completes_live_and_its_journey_shows_each_step(page):
    order_id = place_order_from_the_form(page)

    # No reload: the row arrives and turns `completed` through the WebSocket.
    row = page.locator(f"#latest-orders tr[data-order='{order_id}']")
    row.locator(".status-chip", has_text="completed").wait_for()
    page.locator("#feed li.k-completed").first.wait_for()
    # The counts come with the pipeline state (every 0.5-1 s), not with the events: wait for them rather than race.
    page.wait_for_function("() => document.getElementById('count-completed').textContent === '1'")
    assert page.locator("#worker-list li.alive").count() == 1
    assert page.locator("#queue-rows tr[data-queue$='.orders.process']").count() == 1
    screenshot(page, "dashboard")

    row.get_by_role("link").click()
    page.wait_for_url(re.compile(f"/orders/{order_id}/$"))
    page.locator("#live-status[data-state=live]").wait_for()
    kinds = page.locator("#timeline li").evaluate_all("items => items.map(i => i.dataset.kind)")
    assert kinds == [
        "accepted",
        "published",
        "received",
        "inventory_reserved",
        "payment_charged",
        "customer_notified",
        "completed",
    ]
    assert page.locator("#order-status").inner_text() == "completed"

    def select(kind: str) -> tuple[str, str, str]:
        page.locator(f"#timeline li[data-kind={kind}] button").click()
        page.locator(f"#timeline li.selected[data-kind={kind}]").wait_for()
        return tuple(page.locator(f"#panel-{part}").inner_text() for part in ("db", "queue", "cache"))

    db, queue, cache = select("accepted")
    assert "pending" in db
    assert "outbox row" in queue and "waiting in the outbox" in queue
    assert "not cached yet" in cache

    db, queue, cache = select("received")
    assert "processing" in db
    assert re.search(r"delivery tag\s+\d+", queue)
    assert re.search(r"redelivered\s+no", queue)
    assert re.search(r"delivery count\s+1", queue)
    assert ".orders.process" in queue and "order.placed" in queue
    assert re.search(r"entry\s+present", cache)

    db, queue, cache = select("completed")
    assert "completed" in db and "customer_notified" in db
    assert re.search(r"entry\s+present", cache) and "TTL" in cache and '"status": "completed"' in cache
    screenshot(page, "journey")


def test_step_by_step_mode_advances_one_step_per_click(page):
    page.get_by_label("Step-by-step mode").check()
    page.get_by_role("button", name="Apply").click()
    page.locator("#sandbox-result[data-ok=yes]").wait_for()
    # "Applied" also answers when no worker has beaten yet: wait for the module's worker to run the change.
    assert wait_until(a_worker_runs_current_settings, 20)
    order_id = place_order_from_the_form(page)
    page.goto(f"/orders/{order_id}/")
    page.locator("#live-status[data-state=live]").wait_for()
    timeline = page.locator("#timeline li")
    next_step = page.get_by_role("button", name="Next step", exact=True)
    try:
        for expected in ["inventory_reserved", "payment_charged", "customer_notified", "completed"]:
            timeline.last.and_(page.locator("[data-kind=step_waiting]")).wait_for()
            assert next_step.is_enabled()
            if expected == "payment_charged":
                screenshot(page, "journey-step-mode")
            before = timeline.count()
            next_step.click()
            page.locator(f"#timeline li[data-kind={expected}]").wait_for()
            kinds = timeline.evaluate_all("items => items.map(i => i.dataset.kind)")
            # exactly one step ran (after the `control` event that records the click), then the worker waits again
            assert [kind for kind in kinds[before:] if kind != "control"][:1] == [expected]
            assert "control" in kinds[before:]
            assert kinds.count(expected) == 1
        page.locator("#order-status", has_text="completed").wait_for()
        assert next_step.is_disabled()
    finally:
        # Step mode off for the module's next tests, through the service: a freshly opened page's form is refilled
        # from the server once its settings request answers, which could re-check a box unchecked before that.
        sandbox.sandbox_update(changes={"step_mode": False}, via="test")
        assert wait_until(a_worker_runs_current_settings, 20)


def test_a_burst_updates_the_counters_live(page):
    """Last in the module, as the slowest."""
    accepted = page.locator("#n-accepted")
    assert accepted.inner_text() == "0"
    page.get_by_label("Orders in burst").fill("500")
    page.get_by_role("button", name="Place burst").click()
    page.locator("#burst-result[data-ok=yes]").wait_for()

    # Generous waits: on a loaded machine creating and processing 500 orders can take a while.
    page.wait_for_function("() => document.getElementById('n-accepted').textContent === '500'", timeout=90_000)
    page.locator("#control-log li", has_text="500 orders accepted").wait_for(timeout=90_000)
    completed = "() => Number(document.getElementById('count-completed').textContent)"
    page.wait_for_function(f"() => ({completed})() > 0", timeout=90_000)
    first = page.evaluate(completed)
    screenshot(page, "dashboard-burst")
    # The counters keep moving without a reload while the worker drains the queue.
    page.wait_for_function(f"() => ({completed})() >= {first + 25}", timeout=90_000)
    page.wait_for_function("() => document.getElementById('n-outbox').textContent === '0'", timeout=90_000)
    # Batches, not one message per event: by now the orders have made well over 1,000 events.
    assert page.evaluate("() => window.orderpipeLive.messages") < 500

    # Purge the rest from the dashboard, and let the worker finish what it holds: the database is flushed after the
    # test, and a worker still processing orders then would deadlock with the flush's TRUNCATE.
    page.on("dialog", lambda dialog: dialog.accept())
    page.get_by_label("Queue to purge").select_option(topology().process_queue)
    page.get_by_role("button", name="Purge queue").click()
    page.locator("#ops-result[data-ok=yes]", has_text="Purged").wait_for()
    page.locator("#control-log li", has_text="purge queue").wait_for()
    page.wait_for_function(
        """() => document.getElementById('count-processing').textContent === '0'
            && / 0 held/.test(document.getElementById('worker-list').textContent)
            && document.querySelector("#queue-rows tr[data-queue$='.orders.process'] td.num").textContent === '0'""",
        timeout=90_000,
    )
