"""A three-node RabbitMQ cluster (bin/rabbitmq-cluster) on free loopback ports: every queue has a member on each node,
and a burst of orders survives the death (SIGKILL) of the node that leads the main queue, and of the node the relay
is connected to; a learner kills a node from the dashboard under `make run`'s supervisor and restarts it there. Run
alone with `pytest -m cluster`.

The nodes are shared by the module (starting them takes half a minute); a case starts again the node the previous
case killed. Screenshots go to artifacts/screenshots/cluster-*.png."""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from django.conf import settings
from django.db.models import Count
from django.utils import timezone

from orderpipe import health
from orders import services
from orders.models import EventKind, GatewayCharge, Order, OrderEvent, OrderStatus, Payment
from orders.tests.factories import ProductFactory
from worker import broker
from worker.broker import connect
from worker.models import SupervisedProcess
from worker.proxy import Proxy
from worker.tests.conftest import open_logged_in, screenshot
from worker.tests.processes import ROOT, Service, free_port, service_env, wait_until
from worker.topology import topology

pytestmark = [pytest.mark.cluster, pytest.mark.e2e]

SCRIPT = ROOT / "bin" / "rabbitmq-cluster"
NODES = (1, 2, 3)
BURST = 1000
# Orders placed before the node dies; the rest are placed after it, so the relay must publish them through the
# failover and the workers must take them from the queue's new leader.
BEFORE = 400


class Cluster:
    """The three nodes bin/rabbitmq-cluster runs for this test module, named and ported so as to collide with
    nothing else on the machine."""

    def __init__(self, state_dir: Path) -> None:
        ports: set[int] = set()
        while len(ports) < 6:
            ports.add(free_port())
        amqp, dist = sorted(ports)[:3], sorted(ports)[3:]
        self.ports = dict(zip(NODES, amqp, strict=True))
        self.stem = f"optest{os.getpid()}n"
        self.state_dir = state_dir
        self.env = dict(
            os.environ,
            RABBITMQ_CLUSTER_DIR=str(state_dir),
            RABBITMQ_CLUSTER_NAME=self.stem,
            RABBITMQ_CLUSTER_PORTS=" ".join(map(str, amqp)),
            RABBITMQ_CLUSTER_DIST_PORTS=" ".join(map(str, dist)),
        )
        self.url = self.script("url").strip()

    def script(self, *args: str, timeout: float = 240) -> str:
        result = subprocess.run(
            [str(SCRIPT), *args], env=self.env, cwd=ROOT, capture_output=True, text=True, timeout=timeout
        )
        assert result.returncode == 0, f"rabbitmq-cluster {' '.join(args)}:\n{result.stdout}\n{result.stderr}"
        return result.stdout

    def node(self, n: int) -> str:
        return f"{self.stem}{n}@localhost"

    def running(self) -> list[int]:
        return [n for n in NODES if self.pid(n) is not None]

    def pid(self, n: int) -> int | None:
        text = self.script("pid", str(n)).strip()
        if not text:
            return None
        try:
            os.kill(int(text), 0)
        except ProcessLookupError:
            return None
        return int(text)

    def ctl_json(self, *args: str) -> list[dict]:
        """rabbitmqctl on a running node, JSON output."""
        return json.loads(self.script("ctl", str(self.running()[0]), *args, "--formatter", "json") or "[]")

    def queues(self) -> dict[str, dict]:
        return {q["name"]: q for q in self.ctl_json("list_queues", "name", "type", "leader", "members", "online")}

    def node_of_connection(self, name: str) -> int | None:
        """The node a client connection is open to, found by the connection_name the client sent."""
        for conn in self.ctl_json("list_connections", "port", "client_properties"):
            # client_properties is a list of [key, type, value].
            properties = {key: value for key, _type, value in conn["client_properties"]}
            if properties.get("connection_name") == name:
                return next(n for n, port in self.ports.items() if port == conn["port"])
        return None

    def kill(self, n: int) -> None:
        """SIGKILL the node's Erlang VM: a crash, not a shutdown (clients see their connections reset)."""
        pid = self.pid(n)
        assert pid is not None, f"{self.node(n)} is not running"
        os.kill(pid, signal.SIGKILL)
        assert wait_until(lambda: self.pid(n) is None, 10)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    if not (shutil.which("rabbitmq-server") or Path("/usr/lib/rabbitmq/bin/rabbitmq-server").exists()):
        pytest.skip("rabbitmq-server is not installed")
    state_dir = tmp_path_factory.mktemp("rabbitmq-cluster")
    cluster = Cluster(state_dir)
    try:
        started = time.monotonic()
        cluster.script("start")
        print(f"\ncluster: three nodes up and joined in {time.monotonic() - started:.1f} s")
        yield cluster
    finally:
        try:
            cluster.script("stop", timeout=120)
        finally:
            for n in NODES:
                pid = cluster.pid(n)
                if pid is not None:
                    os.kill(pid, signal.SIGKILL)
            shutil.rmtree(state_dir, ignore_errors=True)


def replicated(cluster: Cluster) -> dict[str, dict] | None:
    """The queues, if every queue of the topology has a member on each node and all of them are online (a node
    that just restarted is listed as a member before it has caught up)."""
    queues = cluster.queues()
    everyone = {cluster.node(n) for n in NODES}
    for name in topology().all_queues():
        queue = queues.get(name)
        if not queue or queue["type"] != "quorum" or set(queue["members"]) != everyone:
            return None
        if set(queue["online"]) != everyone:
            return None
    return queues


# The next tests need one live node and one dead one, not the cluster: the machine's broker is the live one, so
# that the cluster fixture serves only the burst cases (pytest-django runs database tests first, and a module
# fixture whose tests are not contiguous would start the three nodes twice).
DEAD_NODE = "amqp://guest:guest@127.0.0.1:1/%2F"


def test_the_readiness_probe_skips_a_dead_node():
    # The first node named refuses connections: the probe must go on to the next one instead of failing.
    health.check_rabbitmq(f"{DEAD_NODE},{settings.AMQP_URL}")
    with pytest.raises(health.DependencyUnavailable, match=r"127\.0\.0\.1:1/.*127\.0\.0\.1:2/"):
        health.check_rabbitmq(f"{DEAD_NODE},amqp://guest:guest@127.0.0.1:2/%2F")


def test_connect_skips_a_dead_node():
    live = urlsplit(settings.AMQP_URL)
    for _ in range(5):  # the order is random: the dead node comes first in some of these
        conn = connect(f"{DEAD_NODE},{settings.AMQP_URL}")
        try:
            assert broker.connected_node(conn) == (live.hostname, live.port)
        finally:
            conn.close()


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("amqp://u:p@a:5672/%2F", ["amqp://u:p@a:5672/%2F"]),
        (" amqp://u:p@a:5672/%2F , amqps://u:p@b:5671/%2F,", ["amqp://u:p@a:5672/%2F", "amqps://u:p@b:5671/%2F"]),
        ("amqp://u:p@a:5672/%2F,u:secret@b", None),
        (",", None),
    ],
)
def test_amqp_url_names_one_or_several_nodes(value, expected):
    result = subprocess.run(
        [sys.executable, "-c", "import json; from django.conf import settings; print(json.dumps(settings.AMQP_URLS))"],
        env=dict(os.environ, DJANGO_SETTINGS_MODULE="orderpipe.settings", DJANGO_DEBUG="true", AMQP_URL=value),
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    if expected is None:
        assert result.returncode != 0
        assert "AMQP_URL must be one or more comma-separated amqp:// or amqps:// URLs" in result.stderr
        assert "secret" not in result.stderr  # the value holds passwords
    else:
        assert result.returncode == 0, result.stderr
        assert json.loads(result.stdout) == expected


def test_a_lost_connection_noticed_elsewhere_is_still_a_broker_error():
    # The worker's and the relay's loops reconnect on BROKER_ERRORS; once another call has swallowed the reset,
    # pika itself raises ValueError from the closed I/O loop, which ended a worker when its node died.
    with Proxy(5672) as rabbit:
        conn = connect(f"amqp://guest:guest@127.0.0.1:{rabbit.port}/%2F")
        rabbit.down()
        with contextlib.suppress(*broker.BROKER_ERRORS):
            # Whoever reads the reset first gets StreamLostError (the queue monitor catches it).
            assert wait_until(lambda: conn.process_data_events(time_limit=0.1) or conn.is_closed, 10)
        with pytest.raises(ValueError, match="Timeout closed before call"):
            conn.process_data_events(time_limit=0.2)
        with pytest.raises(broker.BROKER_ERRORS):
            broker.process_data_events(conn, 0.2)


def test_the_node_that_dropped_us_is_tried_last(monkeypatch):
    urls = [f"amqp://guest:guest@127.0.0.1:{port}/%2F" for port in (5681, 5682, 5683)]
    monkeypatch.setattr(broker, "_last_node", ("127.0.0.1", 5682))
    orders = {tuple(broker._connection_order(urls)) for _ in range(50)}
    assert all(order[-1] == urls[1] for order in orders)
    # The others are shuffled, so that a cluster's clients spread over its nodes.
    assert len(orders) == 2


def completed(ids: list[uuid.UUID]) -> int:
    return Order.objects.filter(pk__in=ids, status=OrderStatus.COMPLETED).count()


def port_pair() -> int:
    """A free port whose successor is free too: `supervise --port P` runs gunicorn on P and daphne on P + 1."""
    while True:
        port = free_port()
        with contextlib.suppress(OSError), socket.socket() as probe:
            probe.bind(("127.0.0.1", port + 1))
            return port


# Before the burst cases: it starts with the three nodes the fixture started and leaves them so (it restarts the node
# it kills), which spares a node start.
@pytest.mark.browser
@pytest.mark.django_db(transaction=True)
def test_a_learner_kills_a_node_from_the_page_and_restarts_it(cluster, tmp_path, browser, staff):
    cluster_env = {key: value for key, value in cluster.env.items() if key.startswith("RABBITMQ_CLUSTER_")}
    port = port_pair()
    env = service_env(AMQP_URL=cluster.url, WEB_WORKERS="1", WEB_THREADS="4", **cluster_env)
    stack = Service("supervise", "--port", str(port), log_dir=tmp_path, env=env).start()
    url = f"http://127.0.0.1:{port}"
    ids: list[uuid.UUID] = []

    def place(count: int) -> None:
        for _ in range(count):
            order = services.order_create(
                customer_email=f"node{len(ids)}@example.com", items=[{"sku": "BOOK-001", "quantity": 1}]
            )
            ids.append(order.pk)

    context = None
    try:
        stack.wait_http(f"{url}/healthz", timeout=40)
        context, page = open_logged_in(browser, url, width=1280, height=800)
        nodes = page.locator("#node-list li[data-state=running]")
        page.wait_for_function("() => document.querySelectorAll('#node-list li[data-state=running]').length === 3")
        assert page.locator("#node-kill").is_enabled() and page.locator("#node-reason").is_hidden()
        # The relay and the worker declared the topology with a member on each node: the main queue's leader is the
        # victim, so its two followers must elect a new one while orders are in flight.
        assert wait_until(lambda: replicated(cluster) is not None, 120, interval=1), json.dumps(cluster.queues())
        leader = cluster.queues()[topology().process_queue]["leader"]
        victim = next(n for n in NODES if cluster.node(n) == leader)
        name = f"rabbitmq-{victim}"
        place(20)
        assert wait_until(lambda: completed(ids) >= 5, 60), stack.output(4000)

        page.select_option("#node-pick", name)
        page.get_by_role("button", name="Kill node (SIGKILL)").click()
        page.locator("#outage-result[data-ok=yes]").wait_for()
        down = page.locator(f"#node-list li[data-node='{name}'][data-state=crashed]", has_text="killed by SIGKILL")
        down.wait_for()
        assert cluster.pid(victim) is None
        page.locator("#control-log", has_text=f"SIGKILL sent to {name}").wait_for()
        place(20)  # published through the failover, taken from the new leader
        assert wait_until(lambda: completed(ids) == 40, 120), stack.output(4000)
        page.wait_for_function("() => document.getElementById('count-completed').textContent === '40'")
        assert nodes.count() == 2
        screenshot(page, "cluster-node-killed", full_page=False)

        page.select_option("#node-pick", name)
        assert page.locator("#node-kill").is_disabled()  # it is down: only "Restart node" applies
        page.get_by_role("button", name="Restart node").click()
        page.locator(f"#node-list li[data-node='{name}'][data-state=starting]").or_(
            page.locator(f"#node-list li[data-node='{name}'][data-state=running]")
        ).wait_for()
        back = page.locator(f"#node-list li[data-node='{name}'][data-state=running]", has_text="restarted 1×")
        back.wait_for(timeout=150_000)
        assert cluster.pid(victim) is not None
        page.locator("#control-log", has_text=f"restart {name}").first.wait_for()
        place(5)
        assert wait_until(lambda: completed(ids) == 45, 60), stack.output(4000)
        page.wait_for_function("() => document.getElementById('count-completed').textContent === '45'")
        screenshot(page, "cluster-node-restarted", full_page=False)
        web = SupervisedProcess.objects.get(name="web")
    finally:
        if context is not None:
            context.close()
        code = stack.stop()
    assert code == 0, stack.output(4000)
    assert web.restarts == 0  # the stack stayed up
    assert Payment.objects.filter(order_id__in=ids).count() == 45  # none lost, none charged twice
    assert GatewayCharge.objects.filter(order_ref__in=[str(pk) for pk in ids]).count() == 45


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("victim", ["main-queue leader", "relay's node"])
def test_a_burst_survives_the_death_of_a_node(cluster, tmp_path, victim):
    # A node an earlier case killed comes back and rejoins first, so that each case starts with three nodes.
    cluster.script("start")
    product = ProductFactory(sku="CLUSTER-001", price="5.00", stock=100_000)
    env = service_env(AMQP_URL=cluster.url)
    relay = Service("run_relay", log_dir=tmp_path, env=env).start()
    workers = [Service("run_worker", log_dir=tmp_path, env=env).start() for _ in range(2)]
    ids: list[uuid.UUID] = []

    def place(count: int) -> None:
        for _ in range(count):
            order = services.order_create(
                customer_email=f"cluster{len(ids)}@example.com", items=[{"sku": product.sku, "quantity": 1}]
            )
            ids.append(order.pk)

    try:
        # The relay and the workers declared the topology: every queue has a member on each of the three nodes,
        # all online (which also waits for a node restarted above to catch up: killing another one before that
        # would lose the majority). The victim is found now, before any order, because rabbitmqctl takes seconds on
        # a busy machine and the kill must land while orders are being processed.
        assert wait_until(lambda: replicated(cluster) is not None, 120, interval=1), json.dumps(cluster.queues())
        relay_connection = f"orderpipe:{settings.ORDERPIPE_PREFIX}:{relay.proc.pid}"
        assert wait_until(lambda: cluster.node_of_connection(relay_connection) is not None, 60, interval=1)
        if victim == "main-queue leader":
            leader = cluster.queues()[topology().process_queue]["leader"]
            node = next(n for n in NODES if cluster.node(n) == leader)
        else:
            node = cluster.node_of_connection(relay_connection)
        place(BEFORE)
        assert wait_until(lambda: completed(ids) >= BEFORE // 4, 120), relay.output()[-3000:]
        done_before = completed(ids)
        died_at = timezone.now()
        cluster.kill(node)
        place(BURST - BEFORE)
        finished = wait_until(lambda: completed(ids) == BURST, 300)
    finally:
        codes = [worker.stop() for worker in workers] + [relay.stop()]
    logs = "\n".join(s.output()[-2000:] for s in [relay, *workers])
    assert finished, f"{completed(ids)} of {BURST} orders completed\n{logs}"
    assert codes == [0, 0, 0], logs

    per_order = Payment.objects.filter(order_id__in=ids).values("order_id").annotate(n=Count("id"))
    duplicate_payments = sum(row["n"] - 1 for row in per_order)
    assert duplicate_payments == 0
    assert Payment.objects.filter(order_id__in=ids).count() == BURST
    # The gateway's own ledger (what a provider would hold): one charge per order, whatever was redelivered.
    charges = GatewayCharge.objects.filter(order_ref__in=[str(pk) for pk in ids])
    per_ref = charges.values("order_ref").annotate(n=Count("id"))
    duplicate_charges = sum(row["n"] - 1 for row in per_ref)
    assert duplicate_charges == 0
    assert charges.count() == BURST
    after = Order.objects.filter(pk__in=ids, completed_at__gt=died_at).order_by("completed_at")
    first_after = (after.first().completed_at - died_at).total_seconds()
    # The longest pause in completions from the death on: what the failover cost the pipeline.
    moments = [died_at, *after.values_list("completed_at", flat=True)]
    stall = max((b - a).total_seconds() for a, b in itertools.pairwise(moments))
    last = (moments[-1] - died_at).total_seconds()
    redelivered = OrderEvent.objects.filter(order_id__in=ids, kind=EventKind.REDELIVERED).count()
    duplicates = OrderEvent.objects.filter(order_id__in=ids, kind=EventKind.DUPLICATE_IGNORED).count()
    relay_reconnects = relay.output().count("relay connected to RabbitMQ") - 1
    worker_reconnects = sum(worker.output().count(" consuming ") - 1 for worker in workers)
    print(
        f"\ncluster, {victim} ({cluster.node(node)}) SIGKILLed after {done_before} of {BURST} orders completed: "
        f"all {BURST} completed, duplicate_payments={duplicate_payments}, "
        f"duplicate_gateway_charges={duplicate_charges}, "
        f"redelivered={redelivered}, duplicate_deliveries_ignored={duplicates}, "
        f"relay_reconnects={relay_reconnects}, worker_reconnects={worker_reconnects}; first order completed "
        f"{first_after:.2f} s after the death, longest pause between completions {stall:.2f} s, "
        f"last order {last:.1f} s after"
    )
