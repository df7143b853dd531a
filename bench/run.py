"""`make bench`: how fast orderpipe accepts and processes orders on this machine, beside raw baselines.

One run measures the API's accept, the pipeline's drain, end to end and the relay alone, in its own database and under
its own prefix, each figure beside its baseline; what each row measures: docs/09-benchmark.md, "What it measures".
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import datetime as dt
import json
import logging
import os
import platform
import random
import resource
import secrets
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from decimal import Decimal
from functools import partial
from pathlib import Path
from typing import Any
from unittest.mock import patch

from bench.cpu import CpuMeter, broker_pids, redis_pids
from worker.tests.processes import ROOT, Process, Service, free_port, wait_until

RESULTS_DIR = ROOT / "bench" / "results"
LUA_SCRIPT = ROOT / "bench" / "wrk_order.lua"
BIN = Path(sys.executable).parent
# A catalog of 100 products; every order takes two different ones at random (one of them twice), so orders contend
# for product rows as a real catalog's would, not all for the same two.
CATALOG = 100
SKUS = tuple(f"BENCH-{n:03d}" for n in range(1, CATALOG + 1))


def random_items() -> list[dict[str, Any]]:
    first, second = random.sample(SKUS, 2)
    return [{"sku": first, "quantity": 1}, {"sku": second, "quantity": 2}]


DEFAULT_DATABASE = "orderpipe_bench"
# A drain slower than this is measured on the orders completed so far, so a slow machine still gets its table.
DRAIN_CAP_SECONDS = 180
PARTS = frozenset({"api", "pipeline", "e2e", "relay"})

# The HTTP servers compared. gunicorn is started exactly as production runs it (gunicorn.conf.py, the `web` service in
# Compose); daphne, which serves the WebSockets in production, and uvicorn are the alternatives it was chosen over;
# granian (a Rust HTTP server) serves the same WSGI application with the same layout as gunicorn, 2 worker processes
# of 4 threads that run the application.
SERVERS: dict[str, Callable[[int], list[str]]] = {
    "daphne": lambda port: [str(BIN / "daphne"), "-b", "127.0.0.1", "-p", str(port), "orderpipe.asgi:application"],
    "uvicorn": lambda port: [
        *(str(BIN / "uvicorn"), "orderpipe.asgi:application", "--host", "127.0.0.1", "--port", str(port)),
        *("--workers", "2", "--no-access-log", "--log-level", "warning"),
    ],
    "gunicorn": lambda port: [str(BIN / "gunicorn"), "-c", "gunicorn.conf.py", "-b", f"127.0.0.1:{port}"],
    "granian": lambda port: [
        *(str(BIN / "granian"), "--interface", "wsgi", "--host", "127.0.0.1", "--port", str(port)),
        *("--workers", "2", "--blocking-threads", "4", "--no-ws", "--log-level", "warning"),
        "orderpipe.wsgi:application",
    ],
}
SERVER_LABELS = {
    "daphne": "daphne (ASGI)",
    "uvicorn": "uvicorn --workers 2 (ASGI)",
    # gunicorn.conf.py's defaults, or what the environment it inherits sets.
    "gunicorn": f"gunicorn -w {os.environ.get('WEB_WORKERS') or 2} --threads {os.environ.get('WEB_THREADS') or 4} "
    "(WSGI, production)",
    "granian": "granian --workers 2 --blocking-threads 4 (WSGI)",
}


@dataclass(frozen=True)
class Scale:
    api_seconds: int
    connections: tuple[int, ...]
    pipeline_orders: int
    workers: tuple[int, ...]
    paced_rate: float
    paced_seconds: float
    raw_seconds: float
    raw_messages: int
    warmup: bool = True


FULL = Scale(
    api_seconds=10,
    connections=(16, 64),
    pipeline_orders=5000,
    workers=(1, 2, 4),
    paced_rate=20,
    paced_seconds=10,
    raw_seconds=5,
    raw_messages=3000,
)
# The smoke test's scale: every row of the table, in seconds, with few database connections.
SMOKE = Scale(
    api_seconds=1,
    connections=(2, 4),
    pipeline_orders=50,
    workers=(1, 2, 4),
    paced_rate=20,
    paced_seconds=1,
    raw_seconds=0.5,
    raw_messages=50,
    warmup=False,
)


@dataclass
class Row:
    measurement: str
    setting: str
    rate: float | None
    unit: str
    p50_ms: float | None = None
    p99_ms: float | None = None
    baseline: str = ""
    baseline_rate: float | None = None
    note: str = ""
    # CPU seconds by process group over the measured window (pipeline drains; the API rows' server), for the note.
    cpu: dict[str, float] = field(default_factory=dict)

    @property
    def ratio(self) -> float | None:
        if self.rate is None or not self.baseline_rate:
            return None
        return self.rate / self.baseline_rate


@dataclass
class Report:
    rows: list[Row] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def add(self, row: Row) -> Row:
        self.rows.append(row)
        print(f"  {row.measurement} | {row.setting}: {_num(row.rate)} {row.unit}", flush=True)
        return row


# ---------------------------------------------------------------- environment


@dataclass(frozen=True)
class Target:
    """Where the bench runs: the database URL and prefix handed to every process it starts."""

    database_url: str
    prefix: str
    log_dir: Path

    def env(self, **extra: str) -> dict[str, str]:
        env = dict(os.environ)
        env.update(
            DATABASE_URL=self.database_url,
            ORDERPIPE_PREFIX=self.prefix,
            DJANGO_DEBUG="false",
            DJANGO_SETTINGS_MODULE="orderpipe.settings",
            PYTHONUNBUFFERED="1",
        )
        env.update(extra)
        return env


def current_target(log_dir: Path) -> Target:
    """The database and prefix the configured Django settings point at (the smoke test's own test database)."""
    from django.conf import settings
    from django.db import connection

    db = connection.settings_dict
    password = f":{db['PASSWORD']}" if db["PASSWORD"] else ""
    url = f"postgres://{db['USER']}{password}@{db['HOST']}:{db['PORT'] or 5432}/{db['NAME']}"
    return Target(database_url=url, prefix=settings.ORDERPIPE_PREFIX, log_dir=log_dir)


def configure_standalone(database: str) -> None:
    """Before Django starts: point this process at the bench's own database and a fresh prefix, production mode."""
    base = os.environ.get("DATABASE_URL", "postgres://postgres@127.0.0.1:5432/orderpipe")
    os.environ["DATABASE_URL"] = base.rsplit("/", 1)[0] + "/" + database
    os.environ["ORDERPIPE_PREFIX"] = f"bench-{uuid.uuid4().hex[:8]}"
    os.environ["DJANGO_DEBUG"] = "false"
    if os.environ.get("DJANGO_SECRET_KEY", "") in {"", "dev-only-insecure-secret-key-change-me"}:
        os.environ["DJANGO_SECRET_KEY"] = "bench-" + secrets.token_urlsafe(48)
    # The benchmark places thousands of orders from one address: the API's throttles would turn most into 429s.
    for name in ("ORDERPIPE_THROTTLE_ANON", "ORDERPIPE_THROTTLE_USER", "ORDERPIPE_THROTTLE_ORDERS"):
        os.environ.setdefault(name, "off")
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "orderpipe.settings")


def prepare_database() -> None:
    from django.core.management import call_command

    call_command("ensure_database")
    call_command("migrate", interactive=False, verbosity=0)


def reset_orders() -> None:
    """Empty the order tables (the bench database is the bench's own; the smoke test's is a throwaway)."""
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute(
            "TRUNCATE orders_order, orders_orderline, orders_outboxmessage, orders_orderevent, orders_payment, "
            "orders_notification, orders_idempotencykey CASCADE"
        )


def analyze_orders() -> None:
    """Refresh the planner's statistics of the order tables after a preload. The tables were just emptied and
    refilled, and autovacuum analyzes them only after its next nap (up to a minute): until then the planner believes
    them empty and reads them whole where an index would do, which no long-running deployment sees."""
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute(
            "ANALYZE orders_order, orders_orderline, orders_outboxmessage, orders_orderevent, orders_payment, "
            "orders_notification, orders_product"
        )


def seed_products() -> None:
    from orders.models import Product

    for n, sku in enumerate(SKUS):
        price = Decimal("3.20") + n
        Product.objects.update_or_create(sku=sku, defaults={"name": f"Bench {sku}", "price": price, "stock": 2**31 - 1})


def other_pytest_runs() -> int:
    """How many other pytest processes share the machine (they make the figures noisy)."""
    out = subprocess.run(["pgrep", "-f", "python.* -m pytest"], capture_output=True, text=True).stdout.split()
    return len([pid for pid in out if int(pid) != os.getpid()])


# ---------------------------------------------------------------- processes
# Started with the tests' harness (worker/tests/processes.py), each in its own process group so that a server's
# forked workers stop with it.


def web_process(name: str, port: int, target: Target) -> Process:
    return Process(name, SERVERS[name](port), log_dir=target.log_dir, env=target.env(), own_group=True)


def manage(name: str, *args: str, target: Target) -> Service:
    return Service(name, *args, log_dir=target.log_dir, env=target.env(), own_group=True)


@contextlib.contextmanager
def running(*processes: Process) -> Iterator[None]:
    try:
        for process in processes:
            process.start()
        yield
    finally:
        for process in processes:
            process.stop()
            wait_group_gone(process)


def wait_group_gone(process: Process, timeout: float = 10) -> None:
    """Wait until every process of `process`'s group has exited, not only its leader: a server's forked worker that
    outlives its master by a moment can still write to Redis (the catalog's version token, on a request it was
    finishing) after the run's cleanup. SIGKILL whatever is left after `timeout`."""
    if not process.own_group or process.proc is None:
        return
    group = process.proc.pid

    def gone() -> bool:
        try:
            os.killpg(group, 0)
        except ProcessLookupError:
            return True
        return False

    if not wait_until(gone, timeout, interval=0.05):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(group, signal.SIGKILL)


# ---------------------------------------------------------------- raw baselines


async def _raw_insert_client(dsn: str, deadline: float, latencies: list[float]) -> None:
    import psycopg
    from psycopg.types.json import Jsonb

    async with await psycopg.AsyncConnection.connect(dsn) as conn:
        cur = conn.cursor()
        await cur.execute("SELECT sku, id, price FROM orders_product WHERE sku = ANY(%s)", [list(SKUS)])
        products = {sku: (pid, price) for sku, pid, price in await cur.fetchall()}
        while time.monotonic() < deadline:
            started = time.perf_counter()
            order_id, now = uuid.uuid4(), dt.datetime.now(dt.UTC)
            async with conn.transaction():
                await cur.execute(
                    "INSERT INTO orders_order (id, status, step, customer_email, total, note, failure_reason, "
                    "attempts, version, created_at, updated_at) "
                    "VALUES (%s, 'pending', '', %s, %s, '', '', 0, 1, %s, %s)",
                    [order_id, f"raw-{order_id.hex[:12]}@example.com", Decimal("18.90"), now, now],
                )
                await cur.executemany(
                    "INSERT INTO orders_orderline (order_id, product_id, sku, quantity, unit_price) "
                    "VALUES (%s, %s, %s, %s, %s)",
                    [
                        (order_id, pid, sku, item["quantity"], price)
                        for item in random_items()
                        for sku in [item["sku"]]
                        for pid, price in [products[sku]]
                    ],
                )
                await cur.execute(
                    "INSERT INTO orders_outboxmessage (order_id, message_type, routing_key, payload, created_at, "
                    "publish_attempts, last_error) VALUES (%s, 'order.placed', 'order.placed', %s, %s, 0, '') "
                    "RETURNING id",
                    [order_id, Jsonb({"order_id": str(order_id), "version": 1}), now],
                )
                await cur.execute(
                    "INSERT INTO orders_orderevent (order_id, seq, kind, at, message, snapshot) "
                    "VALUES (%s, 1, 'accepted', %s, 'raw', %s)",
                    [order_id, now, Jsonb({"db": {}, "queue": {}, "cache": {}})],
                )
            latencies.append(time.perf_counter() - started)


def raw_insert_rate(dsn: str, concurrency: int, seconds: float) -> tuple[float, float, float]:
    """The order + lines + outbox + event INSERT transaction issued directly with psycopg (asyncio, one connection
    per concurrent client): transactions/s, p50 and p99 in ms."""
    latencies: list[float] = []

    async def main() -> float:
        started = time.monotonic()
        deadline = started + seconds
        await asyncio.gather(*(_raw_insert_client(dsn, deadline, latencies) for _ in range(concurrency)))
        return time.monotonic() - started

    elapsed = asyncio.run(main())
    return len(latencies) / elapsed, *percentiles_ms(latencies)


def raw_broker_rates(count: int, prefix: str) -> tuple[float, float]:
    """pika, one message at a time like the relay and the worker: publish with confirm (persistent, mandatory) to
    a quorum queue, then consume with a manual ack each at the worker's prefetch. Returns (publish/s, consume/s)."""
    import pika
    from django.conf import settings

    from worker.broker import connect

    queue = f"{prefix}.bench.raw"
    conn = connect()
    try:
        channel = conn.channel()
        channel.queue_declare(queue, durable=True, arguments={"x-queue-type": "quorum"})
        channel.queue_purge(queue)
        channel.confirm_delivery()
        body = json.dumps({"order_id": str(uuid.uuid4()), "version": 1, "total": "18.90"}).encode()
        props = pika.BasicProperties(
            content_type="application/json", delivery_mode=pika.DeliveryMode.Persistent, type="order.placed"
        )
        started = time.perf_counter()
        for _ in range(count):
            channel.basic_publish("", queue, body, props, mandatory=True)
        publish_rate = count / (time.perf_counter() - started)

        channel.basic_qos(prefetch_count=settings.WORKER_PREFETCH)
        received = 0
        started = time.perf_counter()
        for method, _props, _body in channel.consume(queue, inactivity_timeout=10):
            if method is None:
                break
            channel.basic_ack(method.delivery_tag)
            received += 1
            if received == count:
                break
        consume_rate = received / (time.perf_counter() - started)
        channel.cancel()
        channel.queue_delete(queue)
    finally:
        with contextlib.suppress(Exception):
            conn.close()
    return publish_rate, consume_rate


def raw_windowed_publish_rate(count: int, prefix: str, window: int) -> float:
    """pika's asynchronous adapter (SelectConnection), as the relay publishes: `window` persistent, mandatory messages
    to a quorum queue, then wait for all their confirms, then the next window. Returns messages/s."""
    import pika

    from worker.broker import connection_parameters

    queue = f"{prefix}.bench.raw-window"
    body = json.dumps({"order_id": str(uuid.uuid4()), "version": 1, "total": "18.90"}).encode()
    props = pika.BasicProperties(
        content_type="application/json", delivery_mode=pika.DeliveryMode.Persistent, type="order.placed"
    )
    state = {"sent": 0, "started": 0.0, "elapsed": 0.0}
    unconfirmed: set[int] = set()
    failure: list[BaseException] = []

    def publish_window(channel: Any) -> None:
        for _ in range(min(window, count - state["sent"])):
            channel.basic_publish("", queue, body, props, mandatory=True)
            state["sent"] += 1
            unconfirmed.add(int(state["sent"]))

    def on_confirm(channel: Any, frame: Any) -> None:
        tag = frame.method.delivery_tag
        unconfirmed.difference_update([t for t in unconfirmed if t <= tag] if frame.method.multiple else [tag])
        if unconfirmed:
            return
        if state["sent"] < count:
            publish_window(channel)
        else:
            state["elapsed"] = time.perf_counter() - state["started"]
            channel.queue_delete(queue, callback=lambda _frame: channel.connection.close())

    def start(channel: Any) -> None:
        state["started"] = time.perf_counter()
        publish_window(channel)

    def on_channel(channel: Any) -> None:
        channel.confirm_delivery(partial(on_confirm, channel), callback=lambda _frame: start(channel))

    def on_open(conn: Any) -> None:
        conn.channel(
            on_open_callback=lambda channel: channel.queue_declare(
                queue,
                durable=True,
                arguments={"x-queue-type": "quorum"},
                callback=lambda _frame: channel.queue_purge(queue, callback=lambda _frame: on_channel(channel)),
            )
        )

    def on_open_error(conn: Any, error: BaseException) -> None:
        failure.append(error)
        conn.ioloop.stop()

    conn = pika.SelectConnection(
        connection_parameters(),
        on_open_callback=on_open,
        on_open_error_callback=on_open_error,
        on_close_callback=lambda conn, _reason: conn.ioloop.stop(),
    )
    conn.ioloop.start()
    if failure or not state["elapsed"]:
        raise RuntimeError(f"raw windowed publish did not finish: {failure or state}")
    return count / state["elapsed"]


# ---------------------------------------------------------------- API accept


def run_wrk(url: str, connections: int, seconds: int) -> tuple[dict[str, Any], float]:
    """wrk with one thread (C, event loop: a small share of a core next to the server). Returns its summary and
    the CPU seconds it used."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    out = subprocess.run(
        [
            "wrk",
            "-t1",
            f"-c{connections}",
            f"-d{seconds}s",
            "--timeout",
            "5s",
            "-s",
            str(LUA_SCRIPT),
            url,
            "--",
            str(CATALOG),
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    line = next((x for x in out.splitlines() if x.startswith("WRK_JSON ")), None)
    if line is None:
        raise RuntimeError(f"wrk printed no summary:\n{out}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return json.loads(line.removeprefix("WRK_JSON ")), cpu


def orders_count() -> int:
    from orders.models import Order

    return Order.objects.count()


def bench_api(report: Report, target: Target, scale: Scale, baselines: dict[int, float], servers: list[str]) -> None:
    for server in servers:
        port = free_port()
        process = web_process(server, port, target)
        with running(process):
            process.wait_http(f"http://127.0.0.1:{port}/healthz", 60)
            url = f"http://127.0.0.1:{port}/api/orders/"
            if scale.warmup:
                run_wrk(url, max(scale.connections), 1)  # imports, pools, first queries
            # The server's process tree (master and forked workers) and the database's backends.
            meter = CpuMeter({"server": partial(list, [process.proc.pid]), "PostgreSQL": database_backends})  # type: ignore[union-attr]
            for connections in scale.connections:
                before = orders_count()
                cpu_before = meter.read()
                summary, wrk_cpu = run_wrk(url, connections, scale.api_seconds)
                cpu = meter.delta(cpu_before, meter.read())
                stored = orders_count() - before
                seconds = summary["duration_us"] / 1e6
                accepted = summary["requests"] - summary["status_errors"]
                errors = sum(summary[k] for k in ("status_errors", "connect_errors", "read_errors", "timeouts"))
                if stored < accepted:
                    raise RuntimeError(f"{server}: wrk counted {accepted} accepted orders, the database has {stored}")
                report.add(
                    Row(
                        "API accept (POST /api/orders/)",
                        f"{SERVER_LABELS[server]}, {connections} conns",
                        accepted / seconds,
                        "orders/s",
                        summary["p50_us"] / 1000,
                        summary["p99_us"] / 1000,
                        f"raw psycopg INSERT tx, {connections} conns",
                        baselines.get(connections),
                        note=f"wrk CPU {100 * wrk_cpu / seconds:.0f}% of a core; CPU ms/request: "
                        f"server {1000 * cpu['server'] / max(summary['requests'], 1):.2f}, "
                        f"PostgreSQL {1000 * cpu['PostgreSQL'] / max(summary['requests'], 1):.2f}"
                        + (f"; {errors} errors" if errors else ""),
                        cpu=cpu,
                    )
                )
            reset_orders()


# ---------------------------------------------------------------- pipeline


def preload_orders(count: int, threads: int = 4) -> None:
    """Accept `count` orders through the real service (order + lines + outbox + event), from a few threads."""
    from django.db import connection

    from orders import services

    def place(n: int) -> None:
        try:
            for i in range(n):
                services.order_create(
                    customer_email=f"drain-{uuid.uuid4().hex[:10]}-{i}@example.com", items=random_items()
                )
        finally:
            connection.close()

    share = [count // threads + (1 if i < count % threads else 0) for i in range(threads)]
    workers = [threading.Thread(target=place, args=(n,)) for n in share]
    for thread in workers:
        thread.start()
    for thread in workers:
        thread.join()


def declare_and_purge() -> None:
    from worker.broker import Publisher, connect

    publisher = Publisher(connect())
    try:
        publisher.declare_topology()
        for name in publisher.topology.all_queues():
            publisher.channel.queue_purge(name)
    finally:
        publisher.close()


def wait_terminal(expected: int, timeout: float, processes: list[Process], *, fail: bool = True) -> bool:
    """Wait until `expected` orders are terminal. After `timeout`: raise, or with fail=False return False."""
    from orders.models import Order, OrderStatus

    def done() -> bool:
        for process in processes:
            if process.exited():
                raise RuntimeError(f"{process.name} exited:\n{process.output(tail=4000)}")
        return Order.objects.filter(status__in=list(OrderStatus.terminal())).count() >= expected

    if wait_until(done, timeout, interval=0.2):
        return True
    if not fail:
        return False
    logs = "\n".join(p.output(tail=4000) for p in processes)
    raise RuntimeError(f"orders not all terminal after {timeout:.0f} s:\n{logs}")


def journey_times() -> tuple[list[float], dt.datetime | None, dt.datetime | None, int]:
    """(accepted -> completed seconds per completed order, first publish, last completion, orders not completed)."""
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute(
            """
            SELECT EXTRACT(EPOCH FROM c.at - a.at)
            FROM orders_orderevent a JOIN orders_orderevent c ON c.order_id = a.order_id AND c.kind = 'completed'
            WHERE a.kind = 'accepted'
            """
        )
        durations = [float(r[0]) for r in cursor.fetchall()]
        cursor.execute("SELECT min(at) FROM orders_orderevent WHERE kind = 'published'")
        first = cursor.fetchone()[0]
        cursor.execute("SELECT max(at) FROM orders_orderevent WHERE kind = 'completed'")
        last = cursor.fetchone()[0]
        cursor.execute("SELECT count(*) FROM orders_order WHERE status <> 'completed'")
        not_completed = cursor.fetchone()[0]
    return durations, first, last, not_completed


def not_completed_reasons() -> str:
    """The statuses and failure reasons of the orders that did not complete, most frequent first."""
    from django.db.models import Count

    from orders.models import Order, OrderStatus

    rows = (
        Order.objects.exclude(status=OrderStatus.COMPLETED)
        .values("status", "failure_reason")
        .annotate(n=Count("id"))
        .order_by("-n")[:5]
    )
    return "; ".join(f"{row['n']} {row['status']} ({row['failure_reason'][:200] or 'no reason'})" for row in rows)


def legs_ms() -> list[tuple[str, float]]:
    """Where an order's time goes: for each kind of journey event, the median milliseconds since the order's event
    before it (accepted -> published is the relay's leg, published -> received the broker's and the worker's take),
    in the order the events come."""
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute(
            """
            SELECT kind, percentile_cont(0.5) WITHIN GROUP (ORDER BY gap) * 1000
            FROM (
                SELECT kind, seq, EXTRACT(EPOCH FROM at - lag(at) OVER (PARTITION BY order_id ORDER BY seq)) AS gap
                FROM orders_orderevent
            ) AS legs
            WHERE gap IS NOT NULL
            GROUP BY kind
            ORDER BY min(seq)
            """
        )
        return [(kind, float(ms)) for kind, ms in cursor.fetchall()]


def batch_size() -> float:
    """The mean number of orders the workers ran through one step transaction over the drain: a batched step writes
    its orders' events in one statement, at one time (orders/batch.py), and a step of one order has a time of its
    own, so it is the step events per distinct (kind, time)."""
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute(
            """
            SELECT count(*)::float / greatest(count(DISTINCT (kind, at)), 1) FROM orders_orderevent
            WHERE kind IN ('received', 'inventory_reserved', 'payment_charged', 'customer_notified', 'completed')
            """
        )
        return cursor.fetchone()[0]


# The processes whose CPU a drain row reports per order, in the order the note lists them.
CPU_GROUPS = ("workers", "PostgreSQL", "relay", "broker", "Redis")


def database_backends(*, exclude: frozenset[int] = frozenset()) -> list[int]:
    """The PostgreSQL backends serving the bench's database (the relay's and workers' connections), not this
    process's own, nor those in `exclude`. Other databases' backends on the shared server are not counted."""
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT pid FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid()"
        )
        return [pid for (pid,) in cursor.fetchall() if pid not in exclude]


def cpu_meter(workers: list[Process], relay: Process, *, exclude_backends: frozenset[int] = frozenset()) -> CpuMeter:
    from django.conf import settings

    def pids(processes: list[Process]) -> Callable[[], list[int]]:
        return lambda: [p.proc.pid for p in processes if p.proc is not None]

    return CpuMeter(
        {
            "workers": pids(workers),
            "PostgreSQL": lambda: database_backends(exclude=exclude_backends),
            "relay": pids([relay]),
            "broker": broker_pids,
            "Redis": lambda: redis_pids(settings.REDIS_URL),
        }
    )


def cpu_note(cpu: dict[str, float], orders: int) -> str:
    parts = ", ".join(f"{name} {1000 * cpu[name] / orders:.1f}" for name in CPU_GROUPS)
    return f"CPU ms/order: {parts}; total {1000 * sum(cpu.values()) / orders:.1f}"


class OutboxHold:
    """Holds every pending outbox row locked (FOR UPDATE) until release(), which commits and wakes the relay. The
    relay claims with SKIP LOCKED, so the relay and workers can start and settle (imports, connections) outside the
    measured window while the backlog waits for them."""

    def __init__(self) -> None:
        import psycopg
        from django.db import connection

        db = connection.settings_dict
        self.conn = psycopg.connect(
            host=db["HOST"],
            port=db["PORT"] or 5432,
            user=db["USER"],
            password=db["PASSWORD"] or None,
            dbname=db["NAME"],
        )
        self.conn.execute("SELECT id FROM orders_outboxmessage WHERE sent_at IS NULL FOR UPDATE")
        self.backend_pid: int = self.conn.info.backend_pid

    def release(self) -> None:
        from orders.services import outbox_channel

        if not self.conn.closed:
            self.conn.execute("SELECT pg_notify(%s, 'bench')", [outbox_channel()])  # delivered at the commit
            self.conn.commit()
            self.conn.close()


def wait_settled(processes: list[Process], meter: CpuMeter, timeout: float = 30) -> None:
    """Wait until each process has logged that it is ready and their CPU has stopped climbing (imports done)."""
    ready = {"run_worker": " consuming ", "run_relay": "relay connected to RabbitMQ"}

    def logged() -> bool:
        for process in processes:
            if process.exited():
                raise RuntimeError(f"{process.name} exited:\n{process.output(tail=4000)}")
        return all(ready[p.name] in p.output() for p in processes)

    if not wait_until(logged, timeout, interval=0.1):
        raise RuntimeError("relay/workers not ready:\n" + "\n".join(p.output(tail=2000) for p in processes))
    previous = meter.read()

    def quiet() -> bool:
        nonlocal previous
        current = meter.read()
        used = meter.delta(previous, current)
        previous = current
        return used["workers"] + used["relay"] < 0.02

    wait_until(quiet, 5, interval=0.3)


def bench_pipeline(report: Report, target: Target, scale: Scale, broker_baseline: float) -> None:
    for workers in scale.workers:
        reset_orders()
        declare_and_purge()
        preload_orders(scale.pipeline_orders)
        analyze_orders()
        relay = manage("run_relay", target=target)
        consumers = [manage("run_worker", target=target) for _ in range(workers)]
        processes = [relay, *consumers]
        hold = OutboxHold()
        try:
            with running(*processes):
                meter = cpu_meter(consumers, relay, exclude_backends=frozenset({hold.backend_pid}))
                wait_settled(processes, meter)
                before = meter.read()
                hold.release()
                finished = wait_terminal(scale.pipeline_orders, DRAIN_CAP_SECONDS, processes, fail=False)
                cpu = meter.delta(before, meter.read())
        finally:
            hold.release()
        durations, first, last, not_completed = journey_times()
        batch = batch_size()
        if finished and not_completed:
            raise RuntimeError(f"{not_completed} orders did not complete: {not_completed_reasons()}")
        rate = len(durations) / max((last - first).total_seconds(), 1e-3)
        cut = "" if finished else f"; stopped after {DRAIN_CAP_SECONDS} s with {len(durations):,} completed"
        p50, p99 = percentiles_ms(durations)
        report.add(
            Row(
                f"pipeline: drain {scale.pipeline_orders:,} queued orders",
                f"relay + {workers} worker{'s' if workers > 1 else ''}, batch {batch:.1f}",
                rate,
                "orders/s",
                p50,
                p99,
                "raw pika (slower of publish-confirm, consume-ack)",
                broker_baseline,
                note="rate: first publish to last completion; latency accepted→completed includes the backlog wait; "
                + cpu_note(cpu, max(len(durations), 1))
                + cut,
                cpu=cpu,
            )
        )


def bench_relay(report: Report, scale: Scale, baselines: dict[int, float]) -> None:
    """The relay alone: `scale.pipeline_orders` accepted orders' outbox rows published by `relay_once` in this process
    (no workers), with one confirm awaited per row, then with the default window. `baselines`: raw pika's rate
    by window size (1: confirm each)."""
    from django.conf import settings
    from django.db import connection
    from django.test import override_settings

    from orders.models import OutboxMessage
    from worker import relay
    from worker.broker import Publisher, connect

    rows = scale.pipeline_orders
    # The time relay_once spends publishing and awaiting confirms (`_publish`), the part the window shortens; the
    # rest is its transaction (claim, order locks, bulk update, events) and the cache writes after the commit.
    publishing = [0.0]
    publish = relay._publish

    def timed_publish(*args: Any) -> list[Exception | None]:
        started = time.perf_counter()
        try:
            return publish(*args)
        finally:
            publishing[0] += time.perf_counter() - started

    for window in sorted({1, settings.RELAY_CONFIRM_WINDOW}):
        reset_orders()
        declare_and_purge()
        preload_orders(rows)
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_backend_pid()")
            backend = cursor.fetchone()[0]
        meter = CpuMeter({"PostgreSQL": partial(list, [backend]), "broker": broker_pids})
        publisher = Publisher(connect())
        publishing[0] = 0.0
        try:
            with override_settings(RELAY_CONFIRM_WINDOW=window), patch.object(relay, "_publish", timed_publish):
                before, cpu_started, started = meter.read(), time.process_time(), time.perf_counter()
                while relay.relay_once(publisher):
                    pass
                elapsed = time.perf_counter() - started
                cpu = {"relay": time.process_time() - cpu_started, **meter.delta(before, meter.read())}
        finally:
            publisher.close()
        sent = OutboxMessage.objects.filter(sent_at__isnull=False).count()
        if sent != rows:
            raise RuntimeError(f"relay only: {sent} of {rows} outbox rows sent")
        per_row = ", ".join(f"{name} {1000 * seconds / rows:.2f}" for name, seconds in cpu.items())
        report.add(
            Row(
                f"relay only: {rows:,} outbox rows → confirmed",
                "one confirm awaited per row (window 1)" if window == 1 else f"window of {window} confirms",
                rows / elapsed,
                "rows/s",
                baseline="raw pika, confirm each" if window == 1 else f"raw pika, windows of {window}",
                baseline_rate=baselines.get(window),
                note=f"relay_once in the bench's process, batches of {settings.RELAY_BATCH_SIZE}; wall ms/row "
                f"{1000 * elapsed / rows:.2f}, of which publishing and awaiting confirms "
                f"{1000 * publishing[0] / rows:.2f}; CPU ms/row: {per_row}",
                cpu=cpu,
            )
        )
    reset_orders()


def bench_paced(report: Report, target: Target, scale: Scale, server: str) -> None:
    """Orders through the API at a steady rate, with relay and one worker: accepted -> completed latency."""
    reset_orders()
    declare_and_purge()
    port = free_port()
    web = web_process(server, port, target)
    relay, worker = manage("run_relay", target=target), manage("run_worker", target=target)
    total = max(1, round(scale.paced_rate * scale.paced_seconds))
    with running(web, relay, worker):
        web.wait_http(f"http://127.0.0.1:{port}/healthz", 60)
        time.sleep(2)  # relay and worker connected (their startup is not what is measured)
        body: dict[str, Any] = {"customer_email": ""}
        started = time.monotonic()
        for i in range(total):
            time.sleep(max(0.0, started + i / scale.paced_rate - time.monotonic()))
            body["customer_email"] = f"paced-{i}-{uuid.uuid4().hex[:8]}@example.com"
            body["items"] = random_items()
            request = urllib.request.Request(
                f"http://127.0.0.1:{port}/api/orders/",
                data=json.dumps(body).encode(),
                headers={"Content-Type": "application/json", "Accept": "application/json"},
            )
            urllib.request.urlopen(request, timeout=10).close()
        sent_for = time.monotonic() - started
        wait_terminal(total, 60, [web, relay, worker])
    durations, _first, _last, not_completed = journey_times()
    if not_completed:
        raise RuntimeError(f"{not_completed} paced orders did not complete")
    legs = ", ".join(f"{kind} {ms:.1f}" for kind, ms in legs_ms())
    p50, p99 = percentiles_ms(durations)
    report.add(
        Row(
            f"end to end at {scale.paced_rate:g} orders/s",
            f"API ({server}) + relay + 1 worker",
            len(durations) / sent_for,
            "orders/s",
            p50,
            p99,
            note=f"accepted→completed, from the events' timestamps; median ms since the event before, by event: {legs}",
        )
    )


# ---------------------------------------------------------------- the run


def percentiles_ms(values: list[float]) -> tuple[float | None, float | None]:
    if not values:
        return None, None
    if len(values) == 1:
        return values[0] * 1000, values[0] * 1000
    cuts = statistics.quantiles(values, n=100, method="inclusive")
    return cuts[49] * 1000, cuts[98] * 1000


def run(
    *,
    scale: Scale,
    target: Target,
    servers: list[str] | None = None,
    paced_server: str = "gunicorn",
    parts: frozenset[str] = PARTS,
) -> Report:
    """Run the measurements (`parts`, default all) against `target` (database already migrated) and return the
    table's rows. The raw baselines always run: every project figure is printed beside one."""
    from django.conf import settings
    from django.db import connection

    from orders import cache
    from worker.broker import connect
    from worker.topology import topology

    if shutil.which("wrk") is None:
        raise RuntimeError("wrk is not installed (`apt-get install -y wrk`; `make bench` installs it)")
    servers = servers or list(SERVERS)
    report = Report()
    try:
        reset_orders()
        seed_products()  # sets the catalog's version token in Redis (orders/signals.py): cleaned up below
        connection.close()
        print("raw baselines", flush=True)
        raw_inserts: dict[int, float] = {}
        raw_rows = []
        dsn = target.database_url.replace("postgres://", "postgresql://", 1)
        for connections in scale.connections:
            rate, p50, p99 = raw_insert_rate(dsn, connections, scale.raw_seconds)
            raw_inserts[connections] = rate
            raw_rows.append(
                Row(
                    "baseline: raw psycopg INSERT tx",
                    f"{connections} conns",
                    rate,
                    "tx/s",
                    p50,
                    p99,
                    note="order + 2 lines + outbox + event, one transaction",
                )
            )
        reset_orders()
        publish_rate, consume_rate = raw_broker_rates(scale.raw_messages, target.prefix)
        raw_rows.append(
            Row("baseline: raw pika publish", "confirm each, persistent, quorum queue", publish_rate, "msg/s")
        )
        raw_rows.append(Row("baseline: raw pika consume", "ack each, prefetch as the worker", consume_rate, "msg/s"))
        window = settings.RELAY_CONFIRM_WINDOW
        windowed_rate = raw_windowed_publish_rate(scale.raw_messages, target.prefix, window)
        raw_rows.append(
            Row(
                "baseline: raw pika publish", f"windows of {window} confirms (SelectConnection)", windowed_rate, "msg/s"
            )
        )

        if "api" in parts:
            print("API accept", flush=True)
            bench_api(report, target, scale, raw_inserts, servers)
        if "pipeline" in parts:
            print("pipeline", flush=True)
            bench_pipeline(report, target, scale, min(publish_rate, consume_rate))
        if "e2e" in parts:
            print("end to end", flush=True)
            bench_paced(report, target, scale, paced_server)
        if "relay" in parts:
            print("relay only", flush=True)
            bench_relay(report, scale, {1: publish_rate, window: windowed_rate})
        for row in raw_rows:
            report.add(row)
    finally:
        with contextlib.suppress(Exception):
            conn = connect()
            topology().delete(conn.channel())
            conn.close()
        with contextlib.suppress(Exception):
            reset_orders()
        # Last, once every server, relay and worker of the run has exited (`running`): nothing writes after it, so no
        # key of the run's prefix (orders, counters, the catalog's version token) outlives the run.
        with contextlib.suppress(Exception):
            cache.delete_prefix(target.prefix)
    return report


def _num(value: float | None, digits: int = 0) -> str:
    if value is None:
        return "–"
    return f"{value:,.{digits}f}"


def render(report: Report) -> str:
    lines = [
        "| measurement | setting | rate | p50 ms | p99 ms | baseline | baseline rate | ratio | note |",
        "| --- | --- | ---: | ---: | ---: | --- | ---: | ---: | --- |",
    ]
    for row in report.rows:
        ratio = f"{row.ratio:.2f}" if row.ratio is not None else "–"
        lines.append(
            f"| {row.measurement} | {row.setting} | {_num(row.rate)} {row.unit} | {_num(row.p50_ms, 1)} | "
            f"{_num(row.p99_ms, 1)} | {row.baseline or '–'} | {_num(row.baseline_rate)} | {ratio} | {row.note} |"
        )
    return "\n".join(lines) + "\n"


def header(scale: Scale, started: dt.datetime, others: int, load: tuple[float, float, float]) -> str:
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True)
    end_load = os.getloadavg()
    return (
        f"# orderpipe benchmark, {started:%Y-%m-%d %H:%M} UTC\n\n"
        f"- machine: {os.cpu_count()} cores, {platform.machine()}, Python {platform.python_version()}, "
        f"commit {commit.stdout.strip() or '?'}\n"
        f"- load average (1 min) at start {load[0]:.2f}, at the end {end_load[0]:.2f}; other pytest runs at start: "
        f"{others}\n"
        f"- API: wrk -t1, {scale.api_seconds} s per row after a 1 s warm-up; unique 2-line orders over a "
        f"{CATALOG}-product catalog; pipeline: {scale.pipeline_orders:,} orders; "
        f"raw inserts {scale.raw_seconds:g} s per row, "
        f"raw broker {scale.raw_messages:,} messages\n"
        "- CPU per order/request: utime+stime deltas from /proc/<pid>/stat of each process tree over the measured "
        "window (a drain: from the released backlog to the last order settled; an API row: the wrk run); PostgreSQL "
        "is the backends of the bench's database; the broker and Redis are the machine's, so other runs' traffic "
        "counts there\n\n"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="tiny scale (seconds), as the test suite runs it")
    parser.add_argument("--database", default=DEFAULT_DATABASE, help="database the bench creates and uses")
    parser.add_argument(
        "--servers",
        default=",".join(SERVERS),
        help="comma-separated servers among daphne,uvicorn,gunicorn,granian; one named twice runs twice, in the "
        "order given (gunicorn,granian,gunicorn,granian interleaves two runs of each)",
    )
    parser.add_argument("--paced-server", default="gunicorn", help="web server for the end-to-end row")
    parser.add_argument("--output", type=Path, default=None, help="results file (default bench/results/<date>.md)")
    parser.add_argument("--pipeline-orders", type=int, default=None, help="orders per drain (default 5,000)")
    parser.add_argument("--api-seconds", type=int, default=None, help="seconds per API row (default 10)")
    parser.add_argument("--workers", default=None, help="comma-separated worker counts for the drains (default 1,2,4)")
    parser.add_argument(
        "--connections", default=None, help="comma-separated wrk connection counts for the API rows (default 16,64)"
    )
    parser.add_argument(
        "--only", default=",".join(sorted(PARTS)), help="comma-separated subset of api,pipeline,e2e,relay"
    )
    args = parser.parse_args(argv)

    configure_standalone(args.database)
    import django

    django.setup()
    logging.getLogger("orderpipe.events").setLevel(logging.WARNING)  # the preloaded orders' lines
    prepare_database()
    scale = SMOKE if args.smoke else FULL
    if args.pipeline_orders:
        scale = dataclasses.replace(scale, pipeline_orders=args.pipeline_orders)
    if args.workers:
        scale = dataclasses.replace(scale, workers=tuple(int(n) for n in args.workers.split(",")))
    if args.api_seconds:
        scale = dataclasses.replace(scale, api_seconds=args.api_seconds)
    if args.connections:
        scale = dataclasses.replace(scale, connections=tuple(int(n) for n in args.connections.split(",")))
    started = dt.datetime.now(dt.UTC)
    others = other_pytest_runs()
    load = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="orderpipe-bench-") as log_dir:
        target = current_target(Path(log_dir))
        report = run(
            scale=scale,
            target=target,
            servers=args.servers.split(","),
            paced_server=args.paced_server,
            parts=frozenset(args.only.split(",")),
        )
    table = header(scale, started, others, load) + render(report)
    output = args.output or RESULTS_DIR / f"{started:%Y-%m-%d-%H%M}.md"
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(table)
    print()
    print(table)
    print(f"written to {output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
