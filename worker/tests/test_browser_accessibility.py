"""Every page, checked by axe-core in a real browser: the dashboard, an order's journey, the lessons index, each lesson
and the instructor's page have no critical or serious violation, a level-one heading, and no request that 404s
(the favicon included). axe-core comes from node_modules (package.json; `make lint`'s `npm ci` installs it, as CI
runs it before `make test`), injected into the page: no CDN."""

from __future__ import annotations

import json

import pytest

from orderpipe.lessons.catalog import LESSONS
from orders import services
from orders.models import Order, OrderStatus
from worker.relay import relay_once
from worker.tests.conftest import BROWSER_PASSWORD, require_chromium, screenshot
from worker.tests.processes import ROOT, wait_until

pytestmark = [pytest.mark.browser, pytest.mark.e2e, pytest.mark.django_db(transaction=True)]

AXE = ROOT / "node_modules" / "axe-core" / "axe.min.js"
BLOCKING = ("critical", "serious")
# Rules of lower impact that these pages are held to as well.
ALSO = ("empty-table-header", "page-has-heading-one")
TIMEOUT_MS = 45_000

require_chromium()


def violations(page) -> list[dict]:
    """axe-core's critical and serious violations of the page as it stands (and those of ALSO), one dict each."""
    if not page.evaluate("() => typeof window.axe === 'object'"):
        page.add_script_tag(path=str(AXE))
    found = page.evaluate("async () => (await axe.run(document, {resultTypes: ['violations']})).violations")
    return [
        {
            "rule": v["id"],
            "impact": v["impact"],
            "help": v["help"],
            "nodes": [{"target": n["target"], "summary": n.get("failureSummary", "")[:300]} for n in v["nodes"][:5]],
        }
        for v in found
        if v["impact"] in BLOCKING or v["id"] in ALSO
    ]


@pytest.fixture
def completed_order(staff, broker, start_worker) -> Order:
    """An order taken through every step by a real worker, so its journey page shows every kind of panel."""
    order = services.order_create(customer_email="a11y@example.com", items=[{"sku": "BOOK-001", "quantity": 1}])
    start_worker()
    relay_once(broker)
    assert wait_until(lambda: Order.objects.get(pk=order.pk).status == OrderStatus.COMPLETED, 40)
    return order


def test_every_page_has_an_h1_no_serious_axe_violation_and_no_404(web, browser, completed_order):
    assert AXE.exists(), f"axe-core is missing ({AXE}): `npm ci` (run by `make lint`) installs it from package.json"
    # The pages' Content-Security-Policy allows only their own scripts; the injected axe-core is the test's.
    context = browser.new_context(viewport={"width": 1280, "height": 800}, base_url=web.url, bypass_csp=True)
    context.set_default_timeout(TIMEOUT_MS)
    page = context.new_page()
    missing: list[str] = []
    page.on("response", lambda response: missing.append(response.url) if response.status == 404 else None)
    try:
        page.goto("/admin/login/?next=/")
        page.get_by_label("Username").fill("browser-staff")
        page.get_by_label("Password").fill(BROWSER_PASSWORD)
        page.get_by_role("button", name="Log in").click()
        page.wait_for_url(f"{web.url}/")
        pages = {
            "dashboard": "/",
            "journey": f"/orders/{completed_order.pk}/",
            "lessons": "/lessons/",
            **{f"lesson-{lesson.slug}": f"/lessons/{lesson.slug}/" for lesson in LESSONS},
            "instructor": "/lessons/instructor/",
        }
        report: dict[str, list[dict]] = {}
        for name, path in pages.items():
            page.goto(path, wait_until="networkidle")
            if name in ("dashboard", "journey"):
                page.locator("#live-status[data-state=live]").wait_for()
            if name == "journey":
                page.locator("#timeline li[data-kind=completed]").wait_for()
            found = violations(page)
            if page.locator("h1").count() == 0:
                found.append({"rule": "no h1 on the page"})
            if found:
                report[name] = found
                screenshot(page, f"a11y-{name}")
        assert report == {}, json.dumps(report, indent=1)
        # Every page's requests, the favicon the browser asks for by itself included.
        assert missing == []
    finally:
        context.close()
