"""Every lesson run start to finish as a learner would: headless Chromium on the lesson's page, against what
`make run` runs (`manage.py supervise`: web, ws, relay and workers, which it restarts, scales and cuts off), on this
test run's database and queues. Each test presses the lesson's buttons, waits for the checkpoint
panel's numbers and asserts them: the unsafe run shows the failure, the safe run none. Screenshots of each lesson
before and after its fix go to artifacts/screenshots/lessons/. Each test prints how long it took."""

from __future__ import annotations

import socket
import time
from pathlib import Path

import pytest

from orderpipe.lessons.models import CheckpointPass
from orders.models import Order
from worker.models import ServiceLink, SupervisedProcess, WorkerHeartbeat
from worker.tests.conftest import CHROMIUM, SCREENSHOTS, open_logged_in
from worker.tests.processes import Service, free_port, service_env, wait_until

pytestmark = [pytest.mark.browser, pytest.mark.e2e, pytest.mark.django_db(transaction=True)]

TIMEOUT_MS = 45_000

if not Path(CHROMIUM).exists():
    pytest.skip(f"no Chromium at {CHROMIUM}", allow_module_level=True)


def shot(page, name: str) -> None:
    """artifacts/screenshots/lessons/<name>.png: the whole page, text, steps and checkpoint panel."""
    (SCREENSHOTS / "lessons").mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SCREENSHOTS / "lessons" / f"{name}.png"), full_page=True)


def purge_queues() -> None:
    """This run's queues, declared and emptied, on a connection of its own (a lesson outlasts the heartbeat timeout
    of a connection left idle, like the `broker` fixture's)."""
    from worker.broker import Publisher, connect

    publisher = Publisher(connect())
    try:
        publisher.declare_topology()
        for name in publisher.topology.all_queues():
            publisher.channel.queue_purge(name)
    finally:
        publisher.close()


def port_pair() -> int:
    """A free port whose next one is free too (gunicorn takes it, daphne the next)."""
    while True:
        port = free_port()
        with socket.socket() as probe:
            try:
                probe.bind(("127.0.0.1", port + 1))
            except OSError:
                continue
        return port


@pytest.fixture
def stack(tmp_path, staff):
    """What `make run` runs: `manage.py supervise` with web (gunicorn), ws (daphne), the relay and the workers, on
    free ports, this run's database and queues. The lessons need all of it: the supervisor restarts killed workers,
    follows the number of workers, and owns the links a lesson cuts (the web's included). One per test: the
    supervisor writes its processes' rows only when they change, so a stack would not outlive the flush between
    two tests."""
    purge_queues()
    port = port_pair()
    env = service_env(WEB_WORKERS="1", WEB_THREADS="4")
    service = Service("supervise", "--port", str(port), log_dir=tmp_path, env=env).start()
    service.url = f"http://127.0.0.1:{port}"  # type: ignore[attr-defined]
    service.wait_http(f"{service.url}/healthz", timeout=60)
    assert wait_until(supervisor_reported, timeout=60), service.output(4000)
    yield service
    service.stop(30)
    purge_queues()


@pytest.fixture
def lesson_page(stack, browser):
    contexts = []
    started = time.monotonic()

    def open_lesson(slug: str):
        context, page = open_logged_in(browser, stack.url, next_path=f"/lessons/{slug}/", timeout_ms=TIMEOUT_MS)
        contexts.append(context)
        return page

    yield open_lesson
    print(f"\nlesson took {time.monotonic() - started:.1f} s in the browser")
    for context in contexts:
        context.close()


def supervisor_reported() -> bool:
    """The supervisor's worker runs and heart-beats, and its links are known (the lessons cut RabbitMQ)."""
    return (
        SupervisedProcess.objects.filter(name="worker-1", state="running").exists()
        and WorkerHeartbeat.objects.exists()
        and ServiceLink.objects.filter(name="rabbitmq").exists()
    )


def press(page, label: str, nth: int = 0, timeout_ms: int = TIMEOUT_MS) -> None:
    """Press a step's button (the `nth` of that name) and wait until the page says it was done; a refusal fails
    the test with what the page said."""
    button = page.get_by_role("button", name=label, exact=True).nth(nth)
    button.click()
    page.wait_for_function(
        "(b) => b.dataset.done === 'yes' || (!b.disabled && document.querySelector('#lesson-result[data-ok=no]'))",
        arg=button.element_handle(),
        timeout=timeout_ms,
    )
    assert button.get_attribute("data-done") == "yes", page.locator("#lesson-result").inner_text()


def passed(page, checkpoint: str, timeout_ms: int = TIMEOUT_MS) -> None:
    page.locator(f"#checkpoint-{checkpoint}[data-passed=yes]").wait_for(timeout=timeout_ms)


def number(page, phase: str, name: str) -> str:
    return page.locator(f"#n-{phase}-{name}").get_attribute("data-value")


def numbers_hold(page, predicate, timeout_ms: int = TIMEOUT_MS) -> None:
    """Wait until the checkpoint panel's numbers satisfy `predicate(read)`, read(phase, name) -> int."""
    deadline = time.monotonic() + timeout_ms / 1000

    def read(phase: str, name: str) -> int:
        value = number(page, phase, name)
        return int(float(value)) if value not in (None, "") else 0

    while not predicate(read):
        assert time.monotonic() < deadline, "the checkpoint numbers did not get there in time"
        page.wait_for_timeout(250)


def test_lesson_4_idempotency_key(lesson_page):
    page = lesson_page("idempotency-key")
    shot(page, "4-idempotency-key-0-start")
    press(page, "Flaky client, no key")
    passed(page, "duplicates-without-key")
    # Every retry placed a second order: 5 logical requests, 10 orders.
    numbers_hold(
        page, lambda n: (n("no-key", "requests"), n("no-key", "accepted"), n("no-key", "duplicates")) == (5, 10, 5)
    )
    shot(page, "4-idempotency-key-1-unsafe")

    press(page, "Flaky client, with a key")
    passed(page, "one-order-each-with-key")
    numbers_hold(page, lambda n: (n("with-key", "requests"), n("with-key", "accepted")) == (5, 5))
    assert number(page, "with-key", "duplicates") == "0"
    assert "Idempotent-Replayed" in page.locator("#client-log").inner_text()
    print("\nidempotency key: 5 duplicates for 5 logical requests without a key, 0 with one")
    shot(page, "4-idempotency-key-2-safe")
    assert CheckpointPass.objects.filter(lesson="idempotency-key").count() == 2

    # The index counts them; the instructor sees this session's two checkpoints and resets every lesson.
    page.goto("/lessons/")
    page.locator("li[data-lesson='idempotency-key']", has_text="2 of 2 checkpoints passed").wait_for()
    shot(page, "0-index")
    page.goto("/lessons/instructor/")
    row = page.locator("#sessions tbody tr").first
    assert "one-order-each-with-key" in row.inner_text() and "browser-staff" in row.inner_text()
    shot(page, "0-instructor")
    page.get_by_role("button", name="Reset every lesson").click()
    page.locator("#sessions", has_text="No session has opened a lesson yet").wait_for()
    assert not Order.objects.filter(customer_email__endswith="@lessons.example.com").exists()


def test_lesson_5_retries_backoff_and_dead_letters(lesson_page):
    page = lesson_page("retries")
    press(page, "Gateway times out 50%")
    page.locator("#fault-banner", has_text="transient failure rate 0.5").wait_for()
    press(page, "Place 20 orders")
    passed(page, "retried-and-parked", timeout_ms=60_000)
    # Every order settles: completed after some retries, or dead-lettered after the last tier.
    numbers_hold(page, lambda n: n("flaky", "completed") + n("flaky", "dead_lettered") == 20, 60_000)
    dead = int(number(page, "flaky", "dead_lettered"))
    assert dead > 0 and int(number(page, "flaky", "retried")) >= dead
    shot(page, "5-retries-1-parked")

    press(page, "Fix the gateway")
    press(page, "Replay dead letters")
    passed(page, "replayed-and-completed", timeout_ms=60_000)
    assert number(page, "flaky", "completed") == "20"
    assert number(page, "flaky", "replayed") == str(dead)
    assert number(page, "flaky", "lost") == "0"
    retried = number(page, "flaky", "retried")
    print(f"\nretries: {retried} of 20 retried, {dead} dead-lettered, all 20 completed after the replay")
    shot(page, "5-retries-2-replayed")


def test_lesson_6_poison_message_and_the_delivery_limit(lesson_page):
    page = lesson_page("poison")
    press(page, "Bug rate 1")
    press(page, "Place the poison order")
    passed(page, "parked", timeout_ms=60_000)
    assert number(page, "poison", "parked_by_limit") == "1"
    shot(page, "6-poison-1-parked")

    press(page, "Bug rate 0")
    press(page, "Place 20 orders")
    passed(page, "others-flow", timeout_ms=60_000)
    assert number(page, "others", "completed") == "20"
    assert number(page, "poison", "dead_lettered") == "1"
    print("\npoison: parked by the delivery limit; the 20 orders after it completed")
    shot(page, "6-poison-2-flowing")


def worker_pids() -> dict[str, int | None]:
    return dict(SupervisedProcess.objects.filter(role="worker", state="running").values_list("name", "pid"))


def test_lesson_8_scaling_and_concurrency(lesson_page):
    page = lesson_page("scaling")
    before = worker_pids()
    press(page, "1 worker × 1 thread")
    # The supervisor restarts the worker with one thread: wait for the new process and its first heartbeat.
    assert wait_until(lambda: worker_pids().keys() == {"worker-1"} and worker_pids() != before, timeout=60)
    assert wait_until(lambda: WorkerHeartbeat.objects.filter(pid=worker_pids()["worker-1"]).exists(), timeout=60)
    press(page, "Place 20 orders")
    passed(page, "baseline", timeout_ms=90_000)
    one = float(number(page, "one", "throughput"))
    shot(page, "8-scaling-1-one-worker")

    before = worker_pids()
    press(page, "2 workers × 4 threads")
    assert wait_until(
        lambda: worker_pids().keys() == {"worker-1", "worker-2"} and worker_pids()["worker-1"] != before["worker-1"],
        timeout=60,
    )
    assert wait_until(
        lambda: WorkerHeartbeat.objects.filter(pid__in=list(worker_pids().values())).count() == 2, timeout=60
    )
    press(page, "Place 20 orders", nth=1)
    passed(page, "faster", timeout_ms=90_000)
    many = float(number(page, "many", "throughput"))
    print(f"\nthroughput: 1 worker × 1 thread {one}/s, 2 workers × 4 threads {many}/s")
    assert many >= 1.5 * one
    shot(page, "8-scaling-2-more-workers")

    press(page, "4 workers × 4 threads")
    assert wait_until(lambda: len(worker_pids()) == 4, timeout=60)
    press(page, "Place 20 orders", nth=2)
    passed(page, "four-workers", timeout_ms=90_000)
    print(f"4 workers × 4 threads: {number(page, 'four', 'throughput')}/s")

    # Prefetch 50: one worker takes the whole backlog before a second one starts; prefetch 1: the late one shares it.
    for nth, (phase, button, checkpoint) in enumerate(
        (("hoard", "1 worker, prefetch 50", "hoarded"), ("share", "1 worker, prefetch 1", "shared"))
    ):
        restarted_from = worker_pids()
        press(page, button)
        assert wait_until(
            lambda old=restarted_from: worker_pids().keys() == {"worker-1"} and worker_pids() != old, timeout=60
        )
        assert wait_until(lambda: WorkerHeartbeat.objects.filter(pid=worker_pids()["worker-1"]).exists(), timeout=60)
        press(page, "Place 30 orders", nth=nth)
        numbers_hold(page, lambda n, phase=phase: n(phase, "accepted") == 30)
        press(page, "Start a second worker", nth=nth)
        assert wait_until(lambda: worker_pids().keys() == {"worker-1", "worker-2"}, timeout=60)
        passed(page, checkpoint, timeout_ms=90_000)
        used, busiest = number(page, phase, "workers_used"), number(page, phase, "most_by_one_worker")
        print(f"{phase}: workers used {used}, the busiest took {busiest} of 30")
    assert int(number(page, "hoard", "workers_used")) == 1
    assert int(number(page, "share", "workers_used")) == 2
    shot(page, "8-scaling-3-prefetch")


def test_lesson_1_ack_timing(lesson_page):
    page = lesson_page("ack-timing")
    press(page, "Ack on receipt")
    page.locator("#unsafe-banner, #fault-banner", has_text="on_receive").first.wait_for()
    press(page, "Place 30 orders")
    # Kill it while it holds orders: acked on receipt, they are gone with it.
    numbers_hold(page, lambda n: n("on-receive", "completed") > 0)
    press(page, "Kill worker-1")
    passed(page, "lost-on-receive", timeout_ms=90_000)
    lost = int(number(page, "on-receive", "lost"))
    assert lost > 0
    shot(page, "1-ack-timing-1-on-receive")

    press(page, "Ack after commit")
    press(page, "Place 30 orders", nth=1)
    numbers_hold(page, lambda n: n("after-commit", "completed") > 0)
    press(page, "Kill worker-1", nth=1)
    passed(page, "none-lost-after-commit", timeout_ms=90_000)
    assert number(page, "after-commit", "completed") == "30"
    assert number(page, "after-commit", "lost") == "0"
    print(f"\nack timing: lost {lost} of 30 acked on receipt, 0 of 30 acked after commit")
    shot(page, "1-ack-timing-2-after-commit")


def test_lesson_2_outbox(lesson_page):
    page = lesson_page("outbox")
    press(page, "dual_write")
    press(page, "Cut RabbitMQ")
    press(page, "POST 10 orders")
    assert "10 × 202" in page.locator("#lesson-result").inner_text()
    press(page, "Restore RabbitMQ")
    passed(page, "dual-write-loses", timeout_ms=60_000)
    numbers_hold(page, lambda n: n("dual-write", "lost") == 10)
    shot(page, "2-outbox-1-dual-write")

    press(page, "publish_first")
    press(page, "Zero the counters")
    press(page, "POST 10 orders", nth=1)
    passed(page, "publish-first-ghosts", timeout_ms=60_000)
    ghosts = int(page.locator("#c-ghost_messages").get_attribute("data-value"))
    failed = 10 - int(number(page, "publish-first", "accepted"))
    assert ghosts > 0 and failed > 0
    shot(page, "2-outbox-2-publish-first")

    press(page, "outbox")
    press(page, "Zero the counters", nth=1)
    press(page, "Cut RabbitMQ", nth=1)
    press(page, "POST 10 orders", nth=2)
    press(page, "Restore RabbitMQ", nth=1)
    passed(page, "outbox-none", timeout_ms=90_000)
    assert number(page, "outbox", "completed") == "10"
    print(f"\noutbox: dual_write lost 10 of 10; publish_first {failed} failed commits, {ghosts} ghost(s); outbox 0")
    shot(page, "2-outbox-3-outbox")


def test_lesson_3_idempotent_consumers(lesson_page):
    page = lesson_page("idempotent-consumers")
    press(page, "Step guards off, bug rate 0.3")
    press(page, "Place 10 orders")
    passed(page, "charged-twice", timeout_ms=60_000)
    numbers_hold(page, lambda n: n("guards-off", "in_flight") == 0, 90_000)
    twice = int(number(page, "guards-off", "charged_twice"))
    shot(page, "3-idempotent-consumers-1-guards-off")

    press(page, "Step guards on")
    press(page, "Place 10 orders", nth=1)
    passed(page, "charged-once", timeout_ms=90_000)
    assert number(page, "guards-on", "charged_twice") == "0"
    print(f"\nidempotent consumers: {twice} of 10 charged twice without guards, 0 of 10 with")
    shot(page, "3-idempotent-consumers-2-guards-on")


def test_lesson_7_caching(lesson_page):
    page = lesson_page("caching")
    press(page, "Cache-aside, TTL 600 s")
    press(page, "Zero the counters")
    press(page, "Place 10 orders")
    numbers_hold(page, lambda n: n("cache-aside", "accepted") == 10)
    press(page, "Read them 6 times")
    passed(page, "stale-reads", timeout_ms=30_000)
    stale = int(page.locator("#c-stale_reads").get_attribute("data-value"))
    shot(page, "7-caching-1-cache-aside")

    press(page, "Write-through")
    press(page, "Zero the counters", nth=1)
    press(page, "Place 10 orders", nth=1)
    numbers_hold(page, lambda n: n("write-through", "accepted") == 10)
    press(page, "Read them 6 times", nth=1)
    passed(page, "fresh-reads", timeout_ms=60_000)
    assert page.locator("#c-stale_reads").get_attribute("data-value") == "0"
    print(f"\ncaching: {stale} stale reads with cache-aside, 0 with write-through")
    shot(page, "7-caching-2-write-through")

    # A miss storm: completed orders are all cached (write-through); a flush sends every read to PostgreSQL.
    press(page, "Place 10 orders", nth=2)
    numbers_hold(page, lambda n: n("storm", "completed") == 10, timeout_ms=60_000)
    press(page, "Flush the cache")
    press(page, "Read them once")
    passed(page, "miss-storm", timeout_ms=30_000)
    misses = int(page.locator("#c-cache_misses").get_attribute("data-value"))
    assert page.locator("#c-cache_hits").get_attribute("data-value") == "0" and misses >= 10
    print(f"miss storm: {misses} of 10 reads went to PostgreSQL after the flush")
    shot(page, "7-caching-3-miss-storm")
