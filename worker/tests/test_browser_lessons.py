"""Every lesson run start to finish as a learner would: headless Chromium on the lesson's page against a real daphne,
with `manage.py supervise` running the relay and the workers (it restarts crashed workers and follows the number of
workers), on this test run's database and queues. Each test presses the lesson's buttons, waits for the checkpoint
panel's numbers and asserts them: the unsafe run shows the failure, the safe run none. Screenshots of each lesson
before and after its fix go to artifacts/screenshots/lessons/. Each test prints how long it took."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from orderpipe.lessons.models import CheckpointPass
from orders.models import SupervisedProcess, WorkerHeartbeat
from worker.tests.conftest import CHROMIUM, SCREENSHOTS, open_logged_in
from worker.tests.processes import Service, wait_until

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


@pytest.fixture
def supervised(tmp_path):
    """Relay and workers under the supervisor `make run` uses, on emptied queues."""
    purge_queues()
    service = Service("supervise", "--only", "relay,worker", log_dir=tmp_path).start()
    assert wait_until(lambda: WorkerHeartbeat.objects.exists(), timeout=60), service.output()
    yield service
    service.stop(30)
    purge_queues()


@pytest.fixture
def lesson_page(web, browser, staff, supervised):
    contexts = []
    started = time.monotonic()

    def open_lesson(slug: str):
        context, page = open_logged_in(browser, web.url, next_path=f"/lessons/{slug}/", timeout_ms=TIMEOUT_MS)
        contexts.append(context)
        return page

    yield open_lesson
    print(f"\nlesson test took {time.monotonic() - started:.1f} s")
    for context in contexts:
        context.close()


def press(page, label: str, nth: int = 0) -> None:
    """Press a step's button (the `nth` of that name) and wait until the page says it was done."""
    button = page.get_by_role("button", name=label, exact=True).nth(nth)
    button.click()
    page.wait_for_function("(b) => b.dataset.done === 'yes'", arg=button.element_handle())


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
    shot(page, "4-idempotency-key-2-safe")
    assert CheckpointPass.objects.filter(lesson="idempotency-key").count() == 2


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
    shot(page, "5-retries-2-replayed")


def test_lesson_6_poison_message_and_the_delivery_limit(lesson_page):
    page = lesson_page("poison")
    press(page, "Crash rate 1")
    press(page, "Place the poison order")
    page.locator("#lesson-workers li[data-state=crashed], #lesson-workers li:has-text('restarted')").first.wait_for()
    passed(page, "parked", timeout_ms=150_000)
    assert number(page, "poison", "parked_by_limit") == "1"
    shot(page, "6-poison-1-parked")

    press(page, "Crash rate 0")
    press(page, "Place 20 orders")
    passed(page, "others-flow", timeout_ms=90_000)
    assert number(page, "others", "completed") == "20"
    assert number(page, "poison", "dead_lettered") == "1"
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
