"""The production split, with the real servers: gunicorn (gunicorn.conf.py) serves HTTP, pages and static files on
one port; daphne serves the WebSockets on another; the pages are told that port (ORDERPIPE_WEBSOCKET_PORT). Relay
and worker run too, so an order placed through gunicorn completes, and the dashboard loaded from gunicorn sees it
complete live over its socket to daphne, with the staff session it logged in with on gunicorn."""

from __future__ import annotations

import json
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from django.conf import settings

from orders.models import Order, OrderStatus
from orders.tests.factories import ProductFactory, StaffFactory
from worker.tests.conftest import log_in, place_order_from_the_form
from worker.tests.processes import ROOT, GunicornWeb, Service, Web, service_env, wait_until

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]

PASSWORD = "split-test-password"
TIMEOUT_MS = 30_000
PAGE_ASSETS = {"/static/css/base.css", "/static/css/dashboard.css", "/static/js/dashboard.js", "/static/js/live.js"}


def served_by_whitenoise(headers: dict[str, str]) -> bool:
    """WhiteNoise marks its responses (Django's own static view sets neither header)."""
    return headers.get("access-control-allow-origin") == "*" and "max-age=" in headers.get("cache-control", "")


@pytest.fixture(scope="module")
def servers(django_db_setup, django_db_blocker, tmp_path_factory):
    """gunicorn for HTTP, daphne for WebSockets, relay and worker, for the module."""
    log_dir = tmp_path_factory.mktemp("production-servers")
    with django_db_blocker.unblock():
        ws = Web(log_dir=log_dir).start()
        http = GunicornWeb(log_dir=log_dir, env=service_env(ORDERPIPE_WEBSOCKET_PORT=str(ws.port))).start()
        relay = Service("run_relay", log_dir=log_dir).start()
        worker = Service("run_worker", log_dir=log_dir).start()
    try:
        http.wait_ready()
        ws.wait_ready()
        yield http, ws
    finally:
        for service in (http, ws, relay, worker):
            service.stop()


def request(url: str, data: dict | None = None, **headers: str) -> tuple[int, dict[str, str], bytes]:
    body = None if data is None else json.dumps(data).encode()
    headers = {"Content-Type": "application/json", "Accept": "*/*", **headers}
    req = urllib.request.Request(url, data=body, headers=headers)
    with urllib.request.urlopen(req, timeout=10) as response:
        return response.status, {k.lower(): v for k, v in response.headers.items()}, response.read()


def test_gunicorn_accepts_orders_and_serves_static_files(servers):
    http, _ws = servers
    ProductFactory(sku="BOOK-001", stock=10)

    status, headers, body = request(
        f"{http.url}/api/orders/",
        {"customer_email": "split@example.com", "items": [{"sku": "BOOK-001", "quantity": 1}]},
    )
    assert status == 202
    assert headers["server"] == "gunicorn"
    order_id = json.loads(body)["id"]
    assert headers["location"].endswith(f"/api/orders/{order_id}/")

    for path in (*sorted(PAGE_ASSETS), "/static/admin/css/base.css"):  # the project's and an app's static files
        status, headers, body = request(f"{http.url}{path}")
        assert status == 200 and body, path
        assert served_by_whitenoise(headers), (path, headers)
    # The file as it is in the repository (found by WhiteNoise's finders: the tests run no collectstatic).
    assert request(f"{http.url}/static/js/live.js")[2] == (ROOT / "static" / "js" / "live.js").read_bytes()

    # The order goes all the way (and the worker is idle again before the test's database flush).
    def completed() -> bool:
        # From the database: reading an order over HTTP needs staff outside DEBUG (docs/05-security.md).
        return Order.objects.get(pk=order_id).status == OrderStatus.COMPLETED

    assert wait_until(completed, timeout=30, interval=0.2), http.output()[-2000:]


@pytest.mark.browser
def test_the_dashboard_from_gunicorn_goes_live_over_daphne_with_the_same_login(servers, browser):
    http, ws = servers
    ProductFactory(sku="BOOK-001", name="The Pragmatic Queue", price="25.00", stock=100)
    StaffFactory(username="split-staff", password=PASSWORD)
    context = browser.new_context(viewport={"width": 1280, "height": 800}, base_url=http.url)
    context.set_default_timeout(TIMEOUT_MS)
    page = context.new_page()
    assets: dict[str, tuple[int, dict[str, str]]] = {}
    sockets: list[str] = []
    page.on("response", lambda r: assets.__setitem__(r.url.removeprefix(http.url), (r.status, r.headers)))
    page.on("websocket", lambda socket: sockets.append(socket.url))
    try:
        # Logged in on gunicorn's port: the session cookie is per host, so daphne's port gets it too.
        log_in(page, username="split-staff", password=PASSWORD)  # its staff-only socket: the login crossed ports

        assert sockets == [f"ws://127.0.0.1:{ws.port}/ws/pipeline/"]
        assert page.locator("body").get_attribute("data-websocket-port") == str(ws.port)
        assert set(assets) >= PAGE_ASSETS, sorted(assets)
        for path in PAGE_ASSETS:
            status, headers = assets[path]
            assert status == 200, path
            assert headers.get("server") == "gunicorn" and served_by_whitenoise(headers), (path, headers)
        # The stylesheet applied (not merely fetched): the topbar is laid out as base.css says.
        assert page.locator("header.topbar").evaluate("e => getComputedStyle(e).display") == "flex"

        order_id = place_order_from_the_form(page, email="split@example.com", quantity=1)

        # No reload: the row arrives and turns `completed` through the socket to daphne.
        page.locator(f"#latest-orders tr[data-order='{order_id}'] .status-chip", has_text="completed").wait_for()
        assert page.locator("#count-completed").inner_text() == "1"
        assert sockets == [f"ws://127.0.0.1:{ws.port}/ws/pipeline/"], "the socket reconnected"
    finally:
        context.close()


def accepted_counter(metrics_text: str) -> float:
    line = next(x for x in metrics_text.splitlines() if x.startswith('orderpipe_order_events_total{kind="accepted"}'))
    return float(line.rsplit(" ", 1)[1])


def accepted_in_file(path: Path) -> float:
    """What one worker counted, from the file it writes in multiprocess mode."""
    from prometheus_client.mmap_dict import MmapedDict

    for key, value, *_ in MmapedDict.read_all_values_from_file(str(path)):
        _metric, name, labels, _help = json.loads(key)
        if name == "orderpipe_order_events_total" and labels == {"kind": "accepted"}:
            return value
    return 0.0


def test_metrics_sum_the_counters_of_every_gunicorn_worker(tmp_path):
    """A scrape reaches one worker; with prometheus_client's multiprocess mode (gunicorn.conf.py) it still reports
    the orders all workers accepted, every time."""
    ProductFactory(sku="METRIC-001", stock=1000)
    metrics_dir = tmp_path / "metrics"
    metrics_dir.mkdir()
    (metrics_dir / "counter_1.db").write_bytes(b"left over from an earlier run")  # emptied at start
    http = GunicornWeb(
        log_dir=tmp_path, workers=2, threads=1, env=service_env(PROMETHEUS_MULTIPROC_DIR=str(metrics_dir))
    ).start()
    try:
        http.wait_ready()  # the first worker answers; the second may still be starting
        body = {"customer_email": "metrics@example.com", "items": [{"sku": "METRIC-001", "quantity": 1}]}
        orders = 0

        def every_worker_took_orders() -> bool:
            nonlocal orders
            with ThreadPoolExecutor(8) as pool:  # concurrent requests, so both workers take some once both run
                statuses = list(pool.map(lambda _: request(f"{http.url}/api/orders/", body)[0], range(8)))
            assert statuses == [202] * 8
            orders += 8
            per_worker = [accepted_in_file(path) for path in metrics_dir.glob("counter_*.db")]
            return len(per_worker) == 2 and all(per_worker)

        assert wait_until(every_worker_took_orders, timeout=30, interval=0.1), http.output()[-2000:]
        token = {"Authorization": f"Bearer {settings.ORDERPIPE_METRICS_TOKEN}"}
        scrapes = [accepted_counter(request(f"{http.url}/metrics", None, **token)[2].decode()) for _ in range(8)]
        assert scrapes == [float(orders)] * 8
    finally:
        assert http.stop() == 0
    assert not (metrics_dir / "counter_1.db").exists()
