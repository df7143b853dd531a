"""The dashboard as a learner uses it, in a real browser against a real daphne: supervised processes on the page, live
settings shared between pages, gone workers and a disconnected page, every control in view. Screenshots go to
artifacts/screenshots/, named by test."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.utils import timezone

from orders import sandbox
from orders.models import Order, OrderStatus, SandboxSettings
from worker.models import SupervisedProcess, WorkerHeartbeat
from worker.tests.conftest import (
    BROWSER_PASSWORD,
    open_logged_in,
    place_order_from_the_form,
    require_chromium,
    screenshot,
)
from worker.tests.factories import SupervisedProcessFactory, WorkerHeartbeatFactory
from worker.tests.processes import Service, Web

pytestmark = [pytest.mark.browser, pytest.mark.e2e, pytest.mark.django_db(transaction=True)]

PASSWORD = BROWSER_PASSWORD
TIMEOUT_MS = 45_000

require_chromium()


def open_dashboard(browser, server: Web, *, width: int = 1280, height: int = 800):
    return open_logged_in(browser, server.url, width=width, height=height, timeout_ms=TIMEOUT_MS)


def shot(page, name: str, *, full_page: bool = False) -> None:
    """The viewport by default: these tests are about what a learner sees without scrolling."""
    screenshot(page, name, full_page=full_page)


def apply_settings(page, **fields: str) -> dict:
    """Fill the settings form's fields (by label) and press Apply; returns the body the page sent."""
    for label, value in fields.items():
        page.get_by_label(label, exact=False).fill(value)
    with page.expect_request(lambda r: r.method == "PATCH") as request:
        page.get_by_role("button", name="Apply").click()
    page.locator("#sandbox-result[data-ok=yes]").wait_for()
    return request.value.post_data_json


def process_row(page, name: str):
    return page.locator(f"#process-list li[data-process='{name}']")


def test_supervised_processes_on_the_page(web, browser, staff, broker, tmp_path):
    supervisor = Service("supervise", "--only", "relay,worker", log_dir=tmp_path).start()
    context, page = open_dashboard(browser, web)
    try:
        process_row(page, "worker-1").and_(page.locator("[data-state=running]")).wait_for()
        process_row(page, "relay").and_(page.locator("[data-state=running]")).wait_for()
        # Its heartbeat row says which supervised process it is.
        page.locator("#worker-list li.alive", has_text="worker-1 · ").wait_for()

        # A learner sets the crash rate to 1 and places an order: the worker crashes, the supervisor restarts it.
        assert apply_settings(page, **{"Crash rate": "1"}) == {"crash_rate": 1}
        page.locator("#fault-banner", has_text="crash rate 1").wait_for()
        order_id = place_order_from_the_form(page, quantity=1)
        worker = process_row(page, "worker-1")
        worker.filter(has_text="exit 70 (sandbox crash)").filter(has_text="restarted").wait_for()
        relay = process_row(page, "relay")
        assert relay.get_attribute("data-state") == "running"
        assert "restarted" not in relay.inner_text() and "exit" not in relay.inner_text()
        shot(page, "test_supervised_processes_on_the_page")

        # One click restores the defaults; the order then completes on the restarted worker.
        page.get_by_role("button", name="Restore defaults").click()
        page.locator("#fault-banner").wait_for(state="hidden")
        page.locator(f"#latest-orders tr[data-order='{order_id}'] .s-completed").wait_for(timeout=120_000)

        # The number of workers from the page: the PATCH carries that field only, and the supervisor follows.
        assert apply_settings(page, **{"Workers (": "2"}) == {"workers": 2}
        process_row(page, "worker-2").and_(page.locator("[data-state=running]")).wait_for()
        assert SandboxSettings.load().workers == 2
    finally:
        context.close()
        assert supervisor.stop() == 0, supervisor.output()
    assert Order.objects.get(pk=order_id).status == OrderStatus.COMPLETED


def test_settings_are_shared_live_between_pages(web, browser, staff):
    first_context, first = open_dashboard(browser, web)
    second_context, second = open_dashboard(browser, web)
    try:
        # A change on one page appears on the other without a reload: the form, the banner and the control feed.
        assert apply_settings(first, **{"Decline rate": "0.5"}) == {"decline_rate": 0.5}
        second.wait_for_function("() => document.getElementById('sandbox-decline-rate').value === '0.5'")
        second.locator("#fault-banner", has_text="decline rate 0.5").wait_for()
        second.locator("#control-log li", has_text="decline_rate 0 → 0.5").filter(has_text="browser-staff").wait_for()

        # "Apply" sends only what this page changed: the other page's decline rate is not undone.
        assert apply_settings(second, **{"Step delay": "200"}) == {"step_delay_ms": 200}
        first.locator("#fault-banner", has_text="step delay 200 ms").wait_for()
        assert SandboxSettings.load().decline_rate == 0.5
        shot(second, "test_settings_are_shared_live_between_pages")

        # Stock is live too: a restock on one page shows on the other, in the total and in the product list.
        assert second.locator("#stock-total").inner_text() == "5,000"
        first.get_by_role("button", name="Restock").click()
        second.locator("#stock-total", has_text="5,500").wait_for()
        assert "5,500 in stock" in second.locator("#order-sku option[value=BOOK-001]").inner_text()

        # A burst the stock cannot cover is refused before it starts, in words.
        first.get_by_label("Orders in burst").fill("9000")
        first.get_by_role("button", name="Place burst").click()
        first.locator("#burst-result[data-ok=no]", has_text="Refused (409): Not enough stock").wait_for()
        assert Order.objects.count() == 0

        # A nested field error reads as text, not JSON (the page's own live.js module, not a second copy).
        readable = first.evaluate(
            """async () => (await import(new URL("live.js", document.querySelector("script[type=module]").src)))
            .errorText({
                status: 400, data: {items: {"0": {quantity: ["Ensure this value is less than or equal to 100."]}}}
            })"""
        )
        assert readable == "items #1 › quantity: Ensure this value is less than or equal to 100."

        # The reset from one page clears the banner on both.
        first.get_by_role("button", name="Restore defaults").click()
        second.locator("#fault-banner").wait_for(state="hidden")
        first.locator("#fault-banner").wait_for(state="hidden")
        second.wait_for_function("() => document.getElementById('sandbox-decline-rate').value === '0'")
        settings = SandboxSettings.load()
        assert (settings.decline_rate, settings.step_delay_ms) == (0.0, 0)
    finally:
        first_context.close()
        second_context.close()


def test_gone_workers_and_a_disconnected_page(browser, staff, tmp_path):
    now = timezone.now()
    for name, silent_for in (("worker-live", 0), ("worker-gone", 60), ("worker-forgotten", 600)):
        WorkerHeartbeatFactory(name=name, started_at=now, last_seen=now - timedelta(seconds=silent_for))
    server = Web(log_dir=tmp_path).start().wait_ready()
    # A busy machine can take longer than WORKER_STALE_AFTER to start the server: the live worker beats again now.
    WorkerHeartbeat.objects.filter(name="worker-live").update(last_seen=timezone.now())
    context, page = open_dashboard(browser, server)
    try:
        page.locator("#worker-list li[data-worker=worker-live]").wait_for()
        gone = page.locator("#gone-workers")
        assert gone.is_visible()
        gone.locator("summary").click()
        assert gone.locator("li[data-worker=worker-gone]").inner_text().startswith("worker-gone")
        assert "stopped" in gone.locator("li[data-worker=worker-gone]").inner_text()
        assert page.locator("[data-worker=worker-forgotten]").count() == 0

        # The page's server goes away: the live values grey out and the status says since when.
        assert server.stop() == 0
        page.locator("#live-status", has_text="disconnected since").wait_for()
        assert page.locator("body").get_attribute("data-live") == "down"
        opacity = page.locator("#n-accepted").evaluate("node => getComputedStyle(node).opacity")
        assert float(opacity) < 1
        shot(page, "test_gone_workers_and_a_disconnected_page")
    finally:
        context.close()
        server.stop()


def test_the_relay_stage_shows_running_and_a_publish_rate_during_a_burst(web, browser, staff, broker, tmp_path):
    context, page = open_dashboard(browser, web)
    relay = None
    try:
        chip = page.locator("#relay-state")
        assert chip.get_attribute("data-state") == "none" and chip.inner_text() == "not running"
        relay = Service("run_relay", log_dir=tmp_path).start()
        page.locator("#relay-state[data-state=idle]").wait_for()
        assert page.locator("#n-relay-rate").inner_text() == "0"

        page.get_by_label("Orders in burst").fill("500")
        page.get_by_role("button", name="Place burst").click()
        page.locator("#burst-result[data-ok=yes]").wait_for()
        # Both at once: the stage says it is publishing and shows how fast, while the burst goes out.
        page.wait_for_function(
            """() => document.getElementById('relay-state').dataset.state === 'publishing'
                && Number(document.getElementById('n-relay-rate').textContent.replace(/,/g, '')) > 0""",
            timeout=90_000,
        )
        assert page.locator("#relay-state").inner_text() == "publishing"
        assert page.locator("#n-relay-last").inner_text().endswith("s ago")
        shot(page, "test_the_relay_stage_shows_running_and_a_publish_rate_during_a_burst-1280x800")

        # Let the burst finish and the relay drain the outbox: the database is flushed after the test.
        page.wait_for_function("() => document.getElementById('n-accepted').textContent === '500'", timeout=90_000)
        page.wait_for_function("() => document.getElementById('n-relay-backlog').textContent === '0'", timeout=90_000)
    finally:
        context.close()
        if relay is not None:
            assert relay.stop() == 0, relay.output()


@pytest.mark.parametrize(("width", "height"), [(1440, 900), (1280, 800)])
def test_controls_and_all_stages_are_visible_together(web, browser, staff, width, height):
    # With a fault on, so the banner takes its line too, and under `make run` with one broker, so the node controls
    # say why they are off (three lines): the tightest case a learner meets. The supervisor's rows are dated ahead so
    # that they stay fresh however long the page takes to open on a busy machine.
    sandbox.sandbox_update(changes={"step_mode": True}, via="test")
    SupervisedProcessFactory(name="worker-1")
    SupervisedProcess.objects.update(updated_at=timezone.now() + timedelta(minutes=5))
    context, page = open_dashboard(browser, web, width=width, height=height)
    try:
        assert page.locator("#fault-banner").is_visible()
        page.locator("#node-reason", has_text="make cluster").wait_for()
        in_view = [
            *(f"#stage-{stage}" for stage in ("api", "db", "relay", "exchange", "queues", "workers", "redis")),
            "#order-form",
            "#burst-form",
            "#sandbox-form",
            "#apply-sandbox",
            "#place-order",
            "#place-burst",
            "#flush-cache",
            "#restock",
            # The "What happens when…" row: a learner kills or cuts while watching the stages react.
            "#outage-box",
            "#kill-process",
            "#kill-sigkill",
            "#kill-sigterm",
            *(
                f"#link-list li[data-link={service}] button.link-{action}"
                for service in ("postgresql", "rabbitmq", "redis")
                for action in ("cut", "restore")
            ),
            "#node-pick",
            "#node-kill",
            "#node-restart",
            "#node-reason",
            "#send-poison",
        ]
        for selector in in_view:
            box = page.locator(selector).bounding_box()
            assert box is not None, selector
            assert box["x"] >= 0 and box["y"] >= 0, selector
            assert box["x"] + box["width"] <= width and box["y"] + box["height"] <= height, (selector, box)
        shot(page, f"test_controls_and_all_stages_are_visible_together-{width}x{height}")
    finally:
        context.close()
