"""The dashboard never shows an old state as the present one, in a real browser against a real daphne: workers scaled
down leave one line (the controls stay in view), the rows of a supervisor that ended are not the state of processes
started by hand, and queue depths say when they were observed. Screenshots go to artifacts/screenshots/."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.utils import timezone

from worker.models import QueueStat, SupervisedProcess
from worker.tests.conftest import open_logged_in, require_chromium, screenshot
from worker.tests.factories import QueueStatFactory, SupervisedProcessFactory
from worker.tests.processes import Service

pytestmark = [pytest.mark.browser, pytest.mark.e2e, pytest.mark.django_db(transaction=True)]

TIMEOUT_MS = 45_000
# What a learner reaches for while watching the stages: each must be in view at 1280x800 without scrolling.
CONTROLS = [
    *(f"#stage-{stage}" for stage in ("api", "db", "relay", "exchange", "queues", "workers", "redis")),
    "#place-order",
    "#place-burst",
    "#apply-sandbox",
    "#restock",
    "#flush-cache",
    "#kill-sigkill",
    "#kill-sigterm",
    "#send-poison",
]

require_chromium()


def apply_workers(page, count: int) -> None:
    page.get_by_label("Workers (", exact=False).fill(str(count))
    page.get_by_role("button", name="Apply").click()
    # The answer comes once the workers run it, or after 5 s naming those still starting or stopping (on a busy
    # machine eight workers take longer): the caller waits for the processes themselves.
    page.locator("#sandbox-result[data-ok]", has_text="Applied workers").wait_for()


def out_of_view(page, width: int, height: int) -> list[str]:
    outside = []
    for selector in CONTROLS:
        box = page.locator(selector).bounding_box()
        inside = box is not None and box["x"] >= 0 and box["y"] >= 0
        if not inside or box["x"] + box["width"] > width or box["y"] + box["height"] > height:
            outside.append(selector)
    return outside


def test_workers_scaled_to_eight_and_back_leave_one_line_and_the_controls_in_view(
    web, browser, staff, broker, tmp_path
):
    supervisor = Service("supervise", "--only", "relay,worker", log_dir=tmp_path).start()
    context, page = open_logged_in(browser, web.url, width=1280, height=800, timeout_ms=TIMEOUT_MS)
    rows = page.locator("#process-list li")
    try:
        page.locator("#process-list li[data-process='worker-1'][data-state=running]").wait_for()
        page.locator("#worker-list li.alive", has_text="worker-1 · ").wait_for()
        apply_workers(page, 8)
        page.locator("#process-list li[data-process='worker-8'][data-state=running]").wait_for(timeout=180_000)
        apply_workers(page, 1)
        scaled_down = page.locator("#process-list li[data-process=scaled-down]", has_text="worker-2…8")
        scaled_down.wait_for(timeout=120_000)
        assert "stopped · 7 workers" in scaled_down.inner_text()
        page.locator("#worker-list li.alive", has_text="worker-1 · ").wait_for()
        page.locator("#relay-state[data-state=idle]").wait_for()
        # relay, worker-1 and the one line for the seven stopped ones.
        assert [row.get_attribute("data-process") for row in rows.all()] == ["relay", "worker-1", "scaled-down"]
        # With eight workers listed the page was taller, and the second Apply may have been clicked only after
        # Playwright scrolled down to it. What is checked is the page once they are gone, seen from its top.
        page.evaluate("window.scrollTo(0, 0)")
        assert out_of_view(page, 1280, 800) == []
        screenshot(page, "dashboard-after-scaling-to-8-and-back-1280x800", full_page=False)
    finally:
        context.close()
        assert supervisor.stop() == 0, supervisor.output(4000)


def test_rows_of_an_ended_supervisor_are_not_the_state_of_processes_started_by_hand(
    web, browser, staff, broker, tmp_path
):
    # An earlier `make run`, killed: its rows say the relay stopped and worker-1 crashed, and nobody refreshes them.
    ended = timezone.now() - timedelta(minutes=3)
    SupervisedProcessFactory(name="relay", role="relay", state="stopped", last_exit="exit 0")
    SupervisedProcessFactory(name="worker-1", state="crashed", last_exit="exit 70")
    SupervisedProcess.objects.update(updated_at=ended)
    relay = Service("run_relay", log_dir=tmp_path).start()
    worker = Service("run_worker", log_dir=tmp_path).start()
    context, page = open_logged_in(browser, web.url, width=1280, height=800, timeout_ms=TIMEOUT_MS)
    try:
        page.locator("#relay-state[data-state=idle]").wait_for()
        page.locator("#worker-list li.alive").wait_for()
        ended_row = page.locator("#process-list li[data-process=supervisor][data-state=ended]")
        ended_row.wait_for()
        assert "not running since" in ended_row.inner_text()
        assert (
            page.locator("#process-list li[data-process=relay], #process-list li[data-process='worker-1']").count() == 0
        )
        assert "stopped" not in page.locator("#stage-relay").inner_text()
        assert not page.locator("#stage-relay").evaluate("node => node.classList.contains('down')")
        assert out_of_view(page, 1280, 800) == []
        screenshot(page, "dashboard-ended-supervisor-rows", full_page=False)
    finally:
        context.close()
        codes = worker.stop(), relay.stop()
    assert codes == (0, 0)


def test_queue_depths_observed_long_ago_say_when(web, browser, staff):
    # The last observation before RabbitMQ was cut, half a minute ago: nobody has been able to look since.
    observed = timezone.now() - timedelta(seconds=30)
    QueueStatFactory(name="t.orders.process", ready=12, consumers=1, observed_at=observed)
    context, page = open_logged_in(browser, web.url, width=1280, height=800, timeout_ms=TIMEOUT_MS)
    try:
        page.locator("#queue-rows tr[data-queue='t.orders.process']").wait_for()
        note = page.locator("#queue-observed")
        note.filter(has_text="depths as last observed").wait_for()
        assert "s ago" in note.inner_text()
        assert page.locator("#stage-queues.stale").count() == 1
        # Observed again: the note goes.
        QueueStat.objects.update(observed_at=timezone.now() + timedelta(minutes=1))
        page.locator("#stage-queues:not(.stale)").wait_for()
        assert note.inner_text() == ""
    finally:
        context.close()
