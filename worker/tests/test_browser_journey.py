"""The journey page in a real browser against a real daphne, at the steps where it used to mislead: a retry, a dead
letter (the worker's and the broker's), a completed order's payment step with the rows it wrote, and the fault
banner kept live. The journeys are made for real beforehand (relay and a worker on this run's RabbitMQ queues), then
read on the page. Screenshots go to artifacts/screenshots/."""

from __future__ import annotations

import re
import threading

import pytest

from orders import sandbox, services
from orders.models import Order, OrderStatus
from orders.sandbox.faults import Faults
from orders.steps import STEPS
from worker.consumer import Worker
from worker.relay import relay_once
from worker.tests.conftest import BROWSER_PASSWORD, open_logged_in, require_chromium, screenshot
from worker.tests.processes import Web, wait_until

pytestmark = [pytest.mark.browser, pytest.mark.e2e, pytest.mark.django_db(transaction=True)]

PASSWORD = BROWSER_PASSWORD
TIMEOUT_MS = 45_000

require_chromium()


@pytest.fixture
def run_until(broker):
    """Place an order, publish it and let a worker (this process, the sandbox's faults read on every step) take
    it until `done(order)`; the worker is stopped before the page is opened."""

    def run(done, *, broken_step: bool = False) -> Order:
        worker = Worker(prefetch=5, name="journey-worker", faults=Faults(reader=sandbox.SandboxReader(ttl=0)))
        if broken_step:
            # A bug in the charge step: the message is returned until the quorum queue's delivery limit parks it.
            run_step = worker.processor.pipeline.run_step

            def broken(step, items, **options):
                if step is STEPS[1]:
                    raise KeyError("injected bug")
                return run_step(step, items, **options)

            worker.processor.pipeline.run_step = broken  # type: ignore[method-assign]
        thread = threading.Thread(target=worker.run, daemon=True)
        thread.start()
        try:
            order = services.order_create(customer_email="ada@example.com", items=[{"sku": "BOOK-001", "quantity": 2}])
            relay_once(broker)
            assert wait_until(lambda: done(Order.objects.get(pk=order.pk)), 40)
            assert wait_until(lambda: not worker.in_flight, 10)
        finally:
            worker.stop()
            thread.join(20)
        return order

    return run


def open_journey(browser, server: Web, order: Order):
    return open_logged_in(
        browser, server.url, next_path=f"/orders/{order.pk}/", width=1440, height=900, timeout_ms=TIMEOUT_MS
    )


def select(page, kind: str, nth: int = 0) -> tuple[str, str]:
    """Select the nth step of this kind; returns the step's text and its RabbitMQ panel."""
    item = page.locator(f"#timeline li[data-kind={kind}]").nth(nth)
    item.locator("button").click()
    seq = item.get_attribute("data-seq")
    page.locator(f"#timeline li.selected[data-seq='{seq}']").wait_for()
    return page.locator("#selected-message").inner_text(), page.locator("#panel-queue").inner_text()


def test_the_rabbitmq_panel_names_the_delay_queue_at_each_retry_and_the_dead_letter_queue(
    web, browser, staff, broker, run_until
):
    sandbox.sandbox_update(changes={"transient_failure_rate": 1}, via="test")
    order = run_until(lambda o: o.status == OrderStatus.DEAD_LETTERED)
    sandbox.sandbox_reset(via="test")
    topo = broker.topology
    tiers = topo.retry_tiers
    context, page = open_journey(browser, web, order)
    try:
        for number, tier in enumerate(tiers, start=1):
            text, queue = select(page, "retry_scheduled", number - 1)
            assert f"Retry {number} of {len(tiers)}" in text
            # Jitter (the default): one of the tier's lanes, with its TTL.
            lanes = "|".join(re.escape(lane.queue) for lane in tier.lanes)
            ttls = "|".join(re.escape(f"{lane.delay_ms / 1000:g}") for lane in tier.lanes)
            assert re.search(rf"queue\s+({lanes})\n", queue)
            assert re.search(rf"taken from\s+{re.escape(topo.process_queue)}", queue)
            assert re.search(rf"TTL\s+({ttls}) s", queue)
            assert re.search(r"back in the main queue\s+[\d:.]+ \(after \d+\.\d s\)", queue)
            assert re.search(rf"retries\s+{number}\n", queue)
            assert re.search(r"queue depth \(ready\)\s+\d+", queue)
            if number == 2:
                screenshot(page, "journey-retry-scheduled")

        text, queue = select(page, "received", 1)  # the first retry, back from its delay queue
        assert "Retry 1 received back" in text
        assert re.search(r"retries\s+1\n", queue) and re.search(r"queue depth \(ready\)\s+\d+", queue)

        text, queue = select(page, "dead_lettered")
        assert f"gave up after {len(tiers)} retries" in text
        assert re.search(rf"queue\s+{re.escape(topo.dead_queue)}\n", queue)
        assert re.search(rf"exchange\s+{re.escape(topo.dead_letter_exchange)}", queue)
        assert re.search(rf"x-orderpipe-reason\s+gave up after {len(tiers)} retries", queue)
        assert re.search(rf"retries\s+{len(tiers)}\n", queue)
        assert re.search(r"queue depth \(ready\)\s+\d+", queue)
        screenshot(page, "journey-dead-lettered")
    finally:
        context.close()


def test_the_rabbitmq_panel_at_a_dead_letter_by_the_broker(web, browser, staff, broker, run_until):
    order = run_until(lambda o: o.status == OrderStatus.DEAD_LETTERED, broken_step=True)
    topo = broker.topology
    context, page = open_journey(browser, web, order)
    try:
        _text, queue = select(page, "redelivered")
        assert re.search(r"queue depth \(ready\)\s+\d+", queue)  # known on a redelivery too
        assert re.search(r"redelivered\s+yes", queue)

        text, queue = select(page, "dead_lettered")
        assert "delivery limit reached" in text
        assert re.search(rf"queue\s+{re.escape(topo.dead_queue)}\n", queue)
        assert re.search(rf"seen through\s+{re.escape(topo.dead_watch_queue)}", queue)
        assert re.search(rf"taken from\s+{re.escape(topo.process_queue)}", queue)
        assert re.search(r"x-first-death-reason\s+delivery_limit", queue)
        assert re.search(rf"delivery limit\s+{topo.delivery_limit}", queue)
        assert "delivery count" not in queue and "delivery tag" not in queue  # the watch copy's own: not shown
        assert re.search(r"queue depth \(ready\)\s+\d+", queue)
        screenshot(page, "journey-dead-lettered-by-broker")
    finally:
        context.close()


def test_the_database_panel_shows_each_row_the_step_wrote_with_what_changed(web, browser, staff, broker, run_until):
    order = run_until(lambda o: o.status == OrderStatus.COMPLETED)
    context, page = open_journey(browser, web, order)
    db = page.locator("#panel-db")
    try:
        # Each step after the first says how long after the one before it came.
        gaps = page.locator("#timeline li .gap").all_inner_texts()
        assert gaps[0] == "" and all(re.fullmatch(r"\+\d+(\.\d+)? (ms|s)|\+\d+ min \d+ s", g) for g in gaps[1:])

        select(page, "accepted")
        assert "orders_outboxmessage" in db.inner_text() and re.search(r"sent at\s+–", db.inner_text())
        select(page, "published")
        assert db.locator("dd.changed[data-field='orders_outboxmessage.sent_at']").count() == 1
        assert db.locator("dd.changed[data-field='orders_outboxmessage.publish_attempts']").count() == 1

        select(page, "inventory_reserved")
        # The product row was there before the order: written by this step, not a new row.
        assert re.search(r"orders_product · \d+\s*written\s*stock -2", db.inner_text())
        assert re.search(r"stock\s+4998", db.inner_text())

        select(page, "payment_charged")
        assert re.search(r"since #\d+", page.locator("#selected-title").inner_text())
        text = db.inner_text()
        assert "orders_payment" in text and re.search(r"gateway reference\s+\S+", text)
        assert re.search(r"amount\s+50\.00", text)
        head = db.locator("dt.row-head[data-table=orders_payment]")
        assert head.locator(".tag.new").inner_text() == "new row"
        # The order row: what this step changed is marked, what it did not is not.
        for field in ("step", "version", "updated_at"):
            assert db.locator(f"dd.changed[data-field='orders_order.{field}']").count() == 1, field
        for field in ("status", "attempts", "total"):
            assert db.locator(f"dd.changed[data-field='orders_order.{field}']").count() == 0, field
        assert db.locator("dd.changed").count() == 3  # a new row's fields are not "changed": the row is new
        screenshot(page, "journey-payment-step")

        select(page, "customer_notified")
        assert "orders_notification" in db.inner_text() and re.search(r"recipient\s+ada@example.com", db.inner_text())
        select(page, "completed")
        assert db.locator("dd.changed[data-field='orders_order.status']").inner_text().startswith("completed")
        assert db.locator("dd.changed[data-field='orders_order.result']").count() == 1
    finally:
        context.close()


def test_the_fault_banner_on_the_journey_page_follows_the_sandbox_live(web, browser, staff, broker, run_until):
    order = run_until(lambda o: o.status == OrderStatus.COMPLETED)
    context, page = open_journey(browser, web, order)
    banner = page.locator("#fault-banner")
    try:
        assert banner.is_hidden()
        # An instructor turns a fault on elsewhere: the open journey shows it without a reload...
        sandbox.sandbox_update(changes={"decline_rate": 0.5}, via="test")
        page.locator("#fault-banner:not([hidden])").wait_for()
        assert "decline" in page.locator("#fault-list").inner_text()
        screenshot(page, "journey-fault-banner")
        # ...and off again.
        sandbox.sandbox_reset(via="test")
        page.locator("#fault-banner[hidden]").wait_for(state="attached")
    finally:
        context.close()
