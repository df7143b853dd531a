from __future__ import annotations

import importlib.util
import json
import os
import threading
from pathlib import Path

import pytest

from orders import services
from orders.models import Order, OutboxMessage, SandboxSettings
from orders.sandbox.faults import Faults
from orders.tests.factories import ProductFactory, StaffFactory
from worker.consumer import Worker
from worker.models import WorkerHeartbeat
from worker.processing import Delivery
from worker.tests.processes import RUNNING

CHROMIUM = "/usr/bin/chromium"


def a_worker_runs_current_settings() -> bool:
    """Whether a worker's heartbeat reports the current sandbox settings version (it re-reads the row on the
    change's NOTIFY and reports at once)."""
    return WorkerHeartbeat.objects.filter(settings_version=SandboxSettings.load().version).exists()


def require_chromium(path: str = CHROMIUM) -> None:
    """Skip the calling module (or test) when Chromium or Playwright is missing; under CI (`CI` set, as CI services
    set it) fail instead, so a CI run without them cannot pass with its browser tests quietly skipped."""
    missing = None if Path(path).exists() else f"no Chromium at {path}"
    if missing is None and importlib.util.find_spec("playwright") is None:
        missing = "no Playwright (the playwright package)"
    if missing is None:
        return
    if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
        pytest.fail(f"{missing}, and CI needs the browser tests", pytrace=False)
    pytest.skip(missing, allow_module_level=True)


@pytest.fixture(scope="module")
def browser():
    """Debian's Chromium, headless, driven by Playwright (see `require_chromium` when either is missing)."""
    require_chromium()
    from playwright.sync_api import sync_playwright

    # Playwright's sync API keeps an event loop in this thread, which makes Django refuse synchronous ORM calls
    # (the tests' own and the database flush between tests). They are still synchronous, so allow them here.
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("DJANGO_ALLOW_ASYNC_UNSAFE", "true")
        with sync_playwright() as playwright:
            chromium = playwright.chromium.launch(
                executable_path=CHROMIUM,
                args=["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"],
            )
            yield chromium
            chromium.close()


BROWSER_PASSWORD = "browser-test-password"
SCREENSHOTS = Path(__file__).resolve().parents[2] / "artifacts" / "screenshots"


def screenshot(page, name: str, *, full_page: bool = True) -> None:
    """Save what the page shows as artifacts/screenshots/<name>.png (git-ignored), for a person to look at."""
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SCREENSHOTS / f"{name}.png"), full_page=full_page)


def log_in(page, *, next_path: str = "/", username: str = "browser-staff", password: str = BROWSER_PASSWORD) -> None:
    """Log in through the admin's form, land on `next_path` and wait until its live socket (staff-only outside
    DEBUG) is connected."""
    page.goto(f"/admin/login/?next={next_path}")
    origin = page.url.split("/admin/login/", 1)[0]
    page.get_by_label("Username").fill(username)
    page.get_by_label("Password").fill(password)
    page.get_by_role("button", name="Log in").click()
    page.wait_for_url(f"{origin}{next_path}")
    page.locator("#live-status[data-state=live]").wait_for()


def open_logged_in(
    browser, base_url: str, *, next_path: str = "/", width: int = 1280, height: int = 800, timeout_ms: int = 45_000
):
    """A fresh browser context of the given size, logged in as `browser-staff`, on `next_path`."""
    context = browser.new_context(viewport={"width": width, "height": height}, base_url=base_url)
    context.set_default_timeout(timeout_ms)
    page = context.new_page()
    log_in(page, next_path=next_path)
    return context, page


@pytest.fixture(scope="module")
def web(django_db_setup, django_db_blocker, tmp_path_factory):
    """The pages' server only (daphne, HTTP and WebSockets); each test starts the relay and workers it needs."""
    from worker.tests.processes import Web

    with django_db_blocker.unblock():
        server = Web(log_dir=tmp_path_factory.mktemp("browser-web")).start()
    try:
        server.wait_ready()
        yield server
    finally:
        server.stop()


@pytest.fixture
def staff():
    """The demo product and a staff login (`browser-staff` / BROWSER_PASSWORD) for the browser tests."""
    ProductFactory(sku="BOOK-001", name="The Pragmatic Queue", price="25.00", stock=5000)
    StaffFactory(username="browser-staff", password=BROWSER_PASSWORD)


def place_order_from_the_form(page, *, email: str = "browser@example.com", quantity: int = 2) -> str:
    """Place an order of BOOK-001 with the dashboard's form; returns the id the page shows for it."""
    page.get_by_label("Customer email").fill(email)
    page.get_by_label("Product").select_option("BOOK-001")
    page.get_by_label("Quantity").fill(str(quantity))
    page.get_by_role("button", name="Place order").click()
    result = page.locator("#order-result[data-order]")
    result.wait_for()
    return result.get_attribute("data-order")


@pytest.fixture(autouse=True)
def _no_service_outlives_its_test():
    # Services of wider-scoped fixtures (a module's web stack) were started before this and are left alone.
    before = set(RUNNING)
    yield
    for service in RUNNING - before:
        RUNNING.discard(service)
        if service.proc is not None and service.proc.poll() is None:
            service.proc.kill()
            service.proc.wait(10)


@pytest.fixture
def start_worker(broker):
    """Start in-process workers on this run's queues (a thread each, `Worker.run`); every one is stopped cleanly at
    the end of the test. `start(faults=None, **options)` takes Worker's options (prefetch 5 unless given)."""
    started: list[tuple[Worker, threading.Thread]] = []

    def start(faults: Faults | None = None, **options) -> Worker:
        options.setdefault("prefetch", 5)
        options.setdefault("name", f"test-worker-{len(started)}")
        worker = Worker(faults=faults, **options)
        thread = threading.Thread(target=worker.run, daemon=True)
        thread.start()
        started.append((worker, thread))
        return worker

    yield start
    for worker, thread in started:
        worker.stop()
        thread.join(20)
        assert not thread.is_alive()


@pytest.fixture
def place_order(product):
    def place(quantity: int = 1, sku: str = "BOOK-001", email: str = "ada@example.com") -> Order:
        return services.order_create(customer_email=email, items=[{"sku": sku, "quantity": quantity}])

    return place


def delivery_for(order: Order, **extra) -> Delivery:
    outbox = OutboxMessage.objects.filter(order=order).latest("id")
    return Delivery(
        body=json.dumps(outbox.payload).encode(),
        delivery_tag=1,
        exchange="test.orders",
        routing_key="order.placed",
        queue="test.orders.process",
        message_id=str(outbox.id),
        **extra,
    )
