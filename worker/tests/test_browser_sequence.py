"""The journey's sequence diagram in a real browser against a real daphne: an order that was redelivered once (a bug
in the charge step returned its message) and retried once (a transient failure) draws both loops, live, while a
worker on this run's RabbitMQ queues takes it; an arrow selects its step, by mouse and by keyboard; the SVG and
JSON downloads are valid. Screenshots at 1280 by 800 go to artifacts/screenshots/."""

from __future__ import annotations

import itertools
import json
import threading
import xml.etree.ElementTree as ET

import pytest

from orderpipe.dashboard.sequence import ARROWS
from orders import sandbox, services
from orders.failures import TransientFailure
from orders.models import EventKind, Order, OrderEvent, OrderStatus
from orders.sandbox.faults import Faults
from orders.steps import STEPS
from worker.consumer import Worker
from worker.relay import relay_once
from worker.tests.conftest import open_logged_in, require_chromium, screenshot
from worker.tests.processes import wait_until

pytestmark = [pytest.mark.browser, pytest.mark.e2e, pytest.mark.django_db(transaction=True)]

TIMEOUT_MS = 45_000
SVG = "{http://www.w3.org/2000/svg}"

require_chromium()


def expected_arrow(event: OrderEvent) -> tuple[str, str]:
    """(from-lane, to-lane) the table gives this event: the first row whose `when` key its queue snapshot has."""
    queue = event.snapshot.get("queue") or {}
    rows = ARROWS[EventKind(event.kind)]
    arrow = next((row for row in rows if row.when and row.when in queue), rows[-1])
    return arrow.source, arrow.target


class FlakyCharge(Faults):
    """The sandbox's faults (read on every step), with the charge step failing twice before it changes anything:
    first with a bug (its message goes back to the queue unacked: a redelivery), then with a transient failure (a
    retry through a delay queue)."""

    def __init__(self) -> None:
        super().__init__(reader=sandbox.SandboxReader(ttl=0))
        self.charges = 0

    def before_step(self, step: str, *, transient: bool) -> None:
        if step == STEPS[1].name:
            self.charges += 1
            if self.charges == 1:
                raise KeyError("injected bug")
            if self.charges == 2:
                raise TransientFailure("gateway timeout (injected)")
        super().before_step(step, transient=transient)


@pytest.fixture
def worker_with_faults(broker):
    """A worker (a thread of this process) whose charge step fails twice (`FlakyCharge`)."""
    worker = Worker(prefetch=5, name="sequence-worker", faults=FlakyCharge())
    thread = threading.Thread(target=worker.run, daemon=True)
    thread.start()
    yield worker
    worker.stop()
    thread.join(20)


def test_an_order_retried_and_redelivered_draws_both_loops_and_an_arrow_selects_its_step(
    web, browser, staff, broker, worker_with_faults
):
    order = services.order_create(customer_email="ada@example.com", items=[{"sku": "BOOK-001", "quantity": 2}])
    context, page = open_logged_in(
        browser, web.url, next_path=f"/orders/{order.pk}/", width=1280, height=800, timeout_ms=TIMEOUT_MS
    )
    try:
        diagram = page.locator("#sequence-body svg")
        # Before the relay runs: the one arrow of the acceptance, from the client through the API to PostgreSQL.
        accepted = diagram.locator(".seq-arrow[data-kind=accepted]")
        assert (accepted.get_attribute("data-from"), accepted.get_attribute("data-to")) == ("client", "postgresql")

        # The order goes through while the page is open: the diagram follows it live.
        relay_once(broker)
        assert wait_until(lambda: Order.objects.get(pk=order.pk).status == OrderStatus.COMPLETED, 40)
        diagram.locator(".seq-arrow[data-kind=completed]").wait_for()
        events = list(OrderEvent.objects.filter(order=order).order_by("seq"))
        kinds = [event.kind for event in events]
        assert kinds.count(EventKind.REDELIVERED) == 1 and kinds.count(EventKind.RETRY_SCHEDULED) == 1, kinds
        page.locator(f".seq-arrow[data-seq='{events[-1].seq}']").wait_for()

        # One arrow per event, in order, each between the lanes the table gives its kind.
        arrows = diagram.locator(".seq-arrow")
        assert arrows.count() == len(events)
        for index, event in enumerate(events):
            arrow = arrows.nth(index)
            assert arrow.get_attribute("data-seq") == str(event.seq)
            assert (arrow.get_attribute("data-from"), arrow.get_attribute("data-to")) == expected_arrow(event), event
        # A title and a description for a screen reader: the participants, then each arrow in words.
        assert diagram.locator("title#seq-title").text_content() == "The journey as a sequence diagram"
        assert diagram.get_attribute("aria-labelledby") == "seq-title"
        desc = diagram.locator("desc#seq-desc").text_content()
        assert desc.startswith("Participants: client, API, PostgreSQL, relay, RabbitMQ, worker, gateway, Redis.")
        assert f"#{events[-1].seq} worker to RabbitMQ: completed: ack" in desc
        # Time runs down.
        ys = [arrows.nth(i).locator("line, path").first.bounding_box()["y"] for i in range(len(events))]
        assert ys == sorted(ys) and len(set(ys)) == len(ys)

        # Both loops: the redelivery from the delivery never acked, the retry from the hand-over to a delay queue.
        seq = {kind: [e.seq for e in events if e.kind == kind] for kind in set(kinds)}
        redelivery = diagram.locator(".seq-loop[data-loop=redelivery]")
        retry = diagram.locator(".seq-loop[data-loop=retry]")
        assert redelivery.count() == 1 and retry.count() == 1
        assert int(redelivery.get_attribute("data-from")) == seq[EventKind.RECEIVED][0]
        assert int(redelivery.get_attribute("data-to")) == seq[EventKind.REDELIVERED][0]
        assert int(retry.get_attribute("data-from")) == seq[EventKind.RETRY_SCHEDULED][0]
        assert int(retry.get_attribute("data-to")) == seq[EventKind.RECEIVED][1]
        back = diagram.locator(f".seq-arrow[data-seq='{seq[EventKind.RECEIVED][1]}']")
        assert "retry 1: back from the delay queue" in back.text_content()
        screenshot(page, "journey-sequence-1280x800", full_page=False)

        # Clicking an arrow selects its step: the timeline and the three panels follow.
        redelivered = seq[EventKind.REDELIVERED][0]
        diagram.locator(f".seq-arrow[data-seq='{redelivered}']").click()
        page.locator(f"#timeline li.selected[data-seq='{redelivered}']").wait_for()
        assert page.locator("#selected-title").inner_text().startswith(f"#{redelivered} ")
        assert "redelivered" in page.locator("#panel-queue").inner_text()
        assert diagram.locator(f".seq-arrow[data-seq='{redelivered}']").get_attribute("aria-pressed") == "true"
        assert diagram.locator(".seq-arrow[aria-pressed=true]").count() == 1
        screenshot(page, "journey-sequence-redelivery-selected", full_page=False)

        # And by keyboard: the focused arrow keeps its focus across the redraw, ↓ moves to the next step.
        page.keyboard.press("ArrowDown")
        following = events[[e.seq for e in events].index(redelivered) + 1].seq
        page.locator(f"#timeline li.selected[data-seq='{following}']").wait_for()
        assert page.evaluate("document.activeElement.dataset.seq") == str(following)
        page.keyboard.press("Home")
        page.locator(f"#timeline li.selected[data-seq='{events[0].seq}']").wait_for()
        # Selecting in the timeline selects the arrow.
        page.locator(f"#timeline li[data-seq='{seq[EventKind.RETRY_SCHEDULED][0]}'] button").click()
        diagram.locator(f".seq-arrow.selected[data-seq='{seq[EventKind.RETRY_SCHEDULED][0]}']").wait_for()
        screenshot(page, "journey-sequence-retry-selected", full_page=False)
    finally:
        context.close()


def test_the_diagram_downloads_as_svg_and_the_journey_as_the_events_apis_json(
    web, browser, staff, broker, worker_with_faults, tmp_path
):
    order = services.order_create(customer_email="ada@example.com", items=[{"sku": "BOOK-001", "quantity": 1}])
    relay_once(broker)
    assert wait_until(lambda: Order.objects.get(pk=order.pk).status == OrderStatus.COMPLETED, 40)
    events = list(OrderEvent.objects.filter(order=order).order_by("seq"))
    context, page = open_logged_in(
        browser, web.url, next_path=f"/orders/{order.pk}/", width=1280, height=800, timeout_ms=TIMEOUT_MS
    )
    try:
        page.locator(f"#sequence-body .seq-arrow[data-seq='{events[-1].seq}']").wait_for()
        with page.expect_download() as svg_download:
            page.locator("#sequence-svg").click()
        assert svg_download.value.suggested_filename == f"order-{order.pk}-sequence.svg"
        svg_path = tmp_path / "sequence.svg"
        svg_download.value.save_as(svg_path)
        root = ET.parse(svg_path).getroot()  # well-formed XML, or this raises
        assert root.tag == f"{SVG}svg"
        assert str(order.pk) in root.find(f"{SVG}title").text
        assert (
            "Participants: client, API, PostgreSQL, relay, RabbitMQ, worker, gateway, Redis"
            in root.find(f"{SVG}desc").text
        )
        drawn = [g for g in root.iter(f"{SVG}g") if "seq-arrow" in g.get("class", "").split()]
        assert [int(g.get("data-seq", "")) for g in drawn] == [event.seq for event in events]
        assert all(g.get("tabindex") is None for g in drawn)  # a file, not a page: nothing to focus
        names = [t.text for t in root.iter(f"{SVG}text")]
        assert {"client", "API", "PostgreSQL", "relay", "RabbitMQ", "worker", "gateway", "Redis"} <= set(names)
        assert svg_path.stat().st_size < 200_000
        # The file draws by itself, without the page's styles (a person looks at the screenshot).
        viewer = context.new_page()
        viewer.set_content(svg_path.read_text().split("?>", 1)[1])
        assert viewer.locator("svg .seq-arrow").count() == len(events)
        screenshot(viewer, "journey-sequence-export")
        viewer.close()

        with page.expect_download() as json_download:
            page.locator("#sequence-json").click()
        assert json_download.value.suggested_filename == f"order-{order.pk}-journey.json"
        json_path = tmp_path / "journey.json"
        json_download.value.save_as(json_path)
        downloaded = json.loads(json_path.read_text())
        api = page.request.get(f"/api/orders/{order.pk}/events/", headers={"Accept": "application/json"})
        assert api.ok and downloaded == api.json()
        assert [event["seq"] for event in downloaded] == [event.seq for event in events]
    finally:
        context.close()


def test_the_layout_keeps_gaps_to_scale_with_a_row_at_least_and_breaks_long_waits(web, browser, staff):
    order = services.order_create(customer_email="ada@example.com", items=[{"sku": "BOOK-001", "quantity": 1}])
    context, page = open_logged_in(browser, web.url, next_path=f"/orders/{order.pk}/", timeout_ms=TIMEOUT_MS)
    try:
        result = page.evaluate(
            """async () => {
                const m = await import("/static/js/sequence.js");
                const at = (ms) => new Date(Date.UTC(2026, 0, 1) + ms).toISOString();
                const kinds = ["accepted", "published", "received", "retry_scheduled", "received", "completed"];
                const times = [0, 5, 15, 1515, 31515, 31520];
                const events = kinds.map((kind, i) => ({ seq: i + 1, kind, at: at(times[i]), snapshot: {} }));
                const table = JSON.parse(document.getElementById("sequence-table").textContent);
                const svg = m.buildSvg(table, events, { width: 900 });
                return {
                    scale: m.SCALE,
                    ys: m.layout(events).rows.map((row) => row.y),
                    broken: m.layout(events).rows.map((row) => row.broken),
                    breaks: [...svg.querySelectorAll(".seq-break")].map((g) => g.textContent),
                };
            }"""
        )
        scale, ys = result["scale"], result["ys"]
        steps = [b - a for a, b in itertools.pairwise(ys)]
        assert steps[0] == steps[1] == scale["row"]  # 5 ms, 10 ms: a row each
        assert steps[2] == pytest.approx(1.5 * scale["pxPerSecond"])  # 1.5 s: to scale
        assert steps[3] == scale["breakRow"] and result["broken"] == [False, False, False, False, True, False]
        assert steps[4] == scale["row"]
        assert result["breaks"] == ["30.0 s later (not to scale)"]
    finally:
        context.close()
