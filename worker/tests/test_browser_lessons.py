"""Every lesson run start to finish as a fast learner would: headless Chromium, against what `make run` runs
(`manage.py supervise`: web, ws, relay and workers, which it restarts, scales and cuts off), on this test run's
database and queues. All the lessons back to back, without a reset and without a pause: each button is clicked the
moment it is enabled (Playwright's click waits for that), and every checkpoint must give the documented result.
The figures each lesson measured are printed, a screenshot of each lesson's final state goes to
artifacts/screenshots/lessons/, and the test prints how long it took."""

from __future__ import annotations

import socket
import time

import pytest

from orderpipe.lessons import catalog
from orderpipe.lessons.measure import BUCKETS
from orderpipe.lessons.models import CheckpointPass
from orders.models import Order
from worker.models import ServiceLink, SupervisedProcess, WorkerHeartbeat
from worker.tests.conftest import SCREENSHOTS, open_logged_in, require_chromium
from worker.tests.processes import Service, free_port, service_env, wait_until

pytestmark = [pytest.mark.browser, pytest.mark.e2e, pytest.mark.django_db(transaction=True)]

TIMEOUT_MS = 45_000
# Generous bounds for a loaded 2-core machine: a click waits until its button is enabled (a scaling change restarts
# workers first), a checkpoint until the pipeline has settled.
CLICK_MS = 240_000
CHECKPOINT_MS = 240_000

# The stack's retry tiers: far enough apart that lesson 11's outage (a quarter of the first tier's delay plus half
# the second's: 5 s) spans the first retry on fixed delays and ends before any second retry, whatever the jitter,
# and a first tier long enough for its jitter to spread 20 retries over 4 s; the tests' 200/400/800 ms tiers
# overlap once jittered.
STACK_RETRY_DELAYS_MS = [4000, 8000, 12000]

require_chromium()


def shot(page, name: str) -> None:
    """artifacts/screenshots/lessons/<name>.png: the whole page, text, steps and checkpoint panel."""
    (SCREENSHOTS / "lessons").mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SCREENSHOTS / "lessons" / f"{name}.png"), full_page=True)


def purge_queues(*, delete_tiers: bool = False) -> None:
    """This run's queues, declared and emptied, on a connection of its own (a lesson outlasts the heartbeat timeout
    of a connection left idle, like the `broker` fixture's); `delete_tiers`: the retry tiers and their lanes go."""
    from worker.broker import Publisher, connect

    publisher = Publisher(connect())
    try:
        publisher.declare_topology()
        for name in publisher.topology.all_queues():
            publisher.channel.queue_purge(name)
        for tier in publisher.topology.retry_tiers if delete_tiers else []:
            for lane in tier.lanes:
                publisher.channel.queue_delete(lane.queue)
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
def stack(tmp_path, staff, settings):
    """What `make run` runs: `manage.py supervise` with web (gunicorn), ws (daphne), the relay and the workers, on
    free ports, this run's database and queues (with the retry tiers STACK_RETRY_DELAYS_MS, which go at the end). The
    lessons need all of it: the supervisor restarts killed workers, follows the number of workers, and owns the links
    a lesson cuts (the web's included). One per test: the supervisor writes its processes' rows only when they change,
    so a stack would not outlive the flush between two tests."""
    settings.RETRY_DELAYS_MS = STACK_RETRY_DELAYS_MS
    purge_queues()
    port = port_pair()
    delays = ",".join(str(ms) for ms in STACK_RETRY_DELAYS_MS)
    env = service_env(WEB_WORKERS="1", WEB_THREADS="4", ORDERPIPE_RETRY_DELAYS_MS=delays)
    service = Service("supervise", "--port", str(port), log_dir=tmp_path, env=env).start()
    service.url = f"http://127.0.0.1:{port}"  # type: ignore[attr-defined]
    service.wait_http(f"{service.url}/healthz", timeout=60)
    assert wait_until(supervisor_reported, timeout=60), service.output(4000)
    yield service
    service.stop(30)
    purge_queues(delete_tiers=True)


def supervisor_reported() -> bool:
    """The supervisor's worker runs and heart-beats, and its links are known (the lessons cut RabbitMQ)."""
    return (
        SupervisedProcess.objects.filter(name="worker-1", state="running").exists()
        and WorkerHeartbeat.objects.exists()
        and ServiceLink.objects.filter(name="rabbitmq").exists()
    )


def figures(page, lesson: catalog.Lesson) -> dict[str, dict[str, float]]:
    """The panel's figures, per phase, as the page shows them now: read in one go, so that they all come from the same
    poll of the lesson's state (cell by cell, a poll landing in between would mix two)."""
    cells = page.evaluate(
        "() => Object.fromEntries([...document.querySelectorAll('td[data-phase]')]"
        ".map((td) => [`${td.dataset.phase} ${td.dataset.number}`, td.dataset.value ?? '']))"
    )
    return {
        phase: {name: float(cells.get(f"{phase} {name}") or 0) for name in lesson.shown_numbers()}
        for phase in lesson.phase_ids()
    }


def run_as_a_fast_learner(page, lesson: catalog.Lesson) -> dict[str, dict[str, float]]:
    """Open the lesson, press Start, then every button in order the moment it is enabled; wait for every checkpoint."""
    page.goto(f"/lessons/{lesson.slug}/")
    page.locator("#live-status[data-state=live]").wait_for()
    page.locator("#lesson-start").click(timeout=CLICK_MS)
    page.locator("#lesson-start[data-done=yes]").wait_for(timeout=CLICK_MS)
    buttons = page.locator(".lesson-action")
    for index in range(buttons.count()):
        buttons.nth(index).click(timeout=CLICK_MS)
    last = buttons.nth(buttons.count() - 1)
    page.wait_for_function(
        "(b) => b.dataset.done === 'yes' || document.querySelector('#lesson-result[data-ok=no]')",
        arg=last.element_handle(),
        timeout=CLICK_MS,
    )
    assert last.get_attribute("data-done") == "yes", page.locator("#lesson-result").inner_text()
    for checkpoint in lesson.checkpoints:
        item = page.locator(f"#checkpoint-{checkpoint.id}[data-passed=yes]")
        try:
            item.wait_for(timeout=CHECKPOINT_MS)
        except Exception:
            shot(page, f"fast-{lesson.number}-{lesson.slug}-failed")
            raise AssertionError(f"{lesson.slug}: {checkpoint.id} did not pass: {figures(page, lesson)}") from None
    return figures(page, lesson)


def settled(page, lesson: catalog.Lesson, phase: str, timeout_ms: int = CHECKPOINT_MS) -> dict[str, float]:
    """Wait until every order of the phase is in a bucket it stays in; its figures then."""
    deadline = time.monotonic() + timeout_ms / 1000
    while True:
        shown = figures(page, lesson)[phase]
        if shown["accepted"] and shown["in_flight"] == 0 and shown["not_yet_known"] == 0:
            return shown
        assert time.monotonic() < deadline, f"{lesson.slug}/{phase} did not settle: {shown}"
        page.wait_for_timeout(250)  # the poll's interval: the figures are read again


def run_back_to_back(page, lessons: tuple[catalog.Lesson, ...]) -> dict[str, dict[str, dict[str, float]]]:
    """Each lesson as a fast learner runs it, one after the other without a reset; prints each one's figures."""
    measured: dict[str, dict[str, dict[str, float]]] = {}
    for lesson in lessons:
        lesson_started = time.monotonic()
        shown = run_as_a_fast_learner(page, lesson)
        for phase in lesson.phase_ids():
            if shown[phase]["accepted"]:
                shown[phase] = settled(page, lesson, phase)
        if lesson.chart:
            # What each column's chart drew: its calls, summed over its bars' bins.
            for phase in lesson.phase_ids():
                shown[phase]["chart_calls"] = float(page.locator(f"#chart-{phase}").get_attribute("data-calls") or 0)
        shot(page, f"fast-{lesson.number}-{lesson.slug}")
        measured[lesson.slug] = shown
        # One bucket per order: they add up to "accepted" in every column.
        for phase, numbers in shown.items():
            assert sum(numbers[bucket] for bucket in BUCKETS) == numbers["accepted"], (lesson.slug, phase, numbers)
        print(f"\nlesson {lesson.number} ({lesson.slug}) took {time.monotonic() - lesson_started:.0f} s:")
        for phase, numbers in shown.items():
            print(f"  {phase}: " + ", ".join(f"{name} {value:g}" for name, value in numbers.items()))
    return measured


def check_new_lessons(measured: dict[str, dict[str, dict[str, float]]]) -> None:
    """Each new lesson's unsafe column shows the loss, its safe column none."""
    oversold = measured["oversold"]
    # 9: read-modify-write sells units beyond the 10 in stock; the guarded decrement sells exactly 10, fails 20.
    assert oversold["read-modify-write"]["oversold"] > 0
    assert oversold["read-modify-write"]["units_sold"] > oversold["read-modify-write"]["stock_at_start"]
    guarded = oversold["guarded"]
    assert (guarded["oversold"], guarded["units_sold"], guarded["stock_left"], guarded["failed"]) == (0, 10, 0, 20)
    # 10: drop-head confirmed all 30 and dropped 20 from the full queue (parked, reason maxlen); reject-publish's
    # broker refused the overflow, which waited in the outbox, and every order completed.
    drop, reject = measured["full-queue"]["drop-head"], measured["full-queue"]["reject-publish"]
    assert (drop["dropped"], drop["completed"], drop["publish_nacks"], drop["waited_in_queue"]) == (20, 10, 0, 30)
    assert (reject["completed"], reject["dropped"], reject["lost"]) == (30, 0, 0)
    assert reject["publish_nacks"] > 0 and reject["waited_in_outbox"] > 0
    # 11: the same outage and burst of 20 in each column, nothing lost or charged twice, every order refused at least
    # once and completed; on fixed delays the retries came back in waves, with jitter spread out: the fixed column's
    # busiest second of retries is well above the jittered one's. Each chart drew every call of its column.
    fixed, jitter = measured["retry-storm"]["fixed"], measured["retry-storm"]["jitter"]
    for column in (fixed, jitter):
        assert (column["accepted"], column["completed"], column["lost"], column["charged_twice"]) == (20, 20, 0, 0)
        assert column["gateway_refused"] >= 20 and column["chart_calls"] == column["gateway_calls"]
    assert fixed["retry_calls_second"] >= 1.5 * jitter["retry_calls_second"], (fixed, jitter)


def test_a_fast_learner_gets_every_documented_result_in_all_the_lessons_back_to_back(stack, browser, staff):
    started = time.monotonic()
    context, page = open_logged_in(browser, stack.url, next_path="/lessons/", timeout_ms=TIMEOUT_MS)
    measured: dict[str, dict[str, dict[str, float]]] = {}
    try:
        measured = run_back_to_back(page, catalog.LESSONS)
        page.goto("/lessons/")
        page.locator("li[data-lesson='idempotency-key']", has_text="2 of 2 checkpoints passed").wait_for()
        shot(page, "fast-0-index")
        passes = CheckpointPass.objects.count()
        # The instructor sees the session and resets every lesson: a typed address of the lessons' domain stays.
        typed = Order.objects.create(customer_email="someone@lessons.example.com", total="0.00")
        page.goto("/lessons/instructor/")
        row = page.locator("#sessions tbody tr").first
        assert "one-order-each-with-key" in row.inner_text() and "browser-staff" in row.inner_text()
        shot(page, "0-instructor")
        page.get_by_role("button", name="Reset every lesson").click()
        page.locator("#sessions", has_text="No session has opened a lesson yet").wait_for()
        assert list(Order.objects.filter(customer_email__endswith="@lessons.example.com")) == [typed]
    finally:
        context.close()
        print(f"\nall {len(catalog.LESSONS)} lessons took {time.monotonic() - started:.0f} s in the browser")

    ack, outbox, consumers = measured["ack-timing"], measured["outbox"], measured["idempotent-consumers"]
    key, retries, poison = measured["idempotency-key"], measured["retries"], measured["poison"]
    caching, scaling = measured["caching"], measured["scaling"]
    # 1: acked on receipt the kill loses orders; acked after commit it loses none, every order completes.
    assert ack["on-receive"]["lost"] > 0
    assert (ack["after-commit"]["lost"], ack["after-commit"]["completed"]) == (0, 30)
    # 2: dual_write loses the 10 orders placed during the cut; publish_first sends ghosts; the outbox loses none.
    assert outbox["dual-write"]["lost"] == 10
    assert outbox["publish-first"]["ghost_messages"] > 0
    assert (outbox["outbox"]["completed"], outbox["outbox"]["lost"], outbox["outbox"]["ghost_messages"]) == (10, 0, 0)
    # 3: without guards some cards are charged twice; with them none.
    assert consumers["guards-off"]["charged_twice"] > 0 and consumers["guards-on"]["charged_twice"] == 0
    # 4: the keyed phase completes 5 of 5, no leftover fault dead-letters one.
    assert (key["no-key"]["accepted"], key["no-key"]["duplicates"]) == (10, 5)
    assert (key["with-key"]["accepted"], key["with-key"]["completed"], key["with-key"]["duplicates"]) == (5, 5, 0)
    # 5: what timed out four times was dead-lettered, and the replay completed each of them: nothing else failed.
    assert retries["flaky"]["replayed"] > 0 and retries["flaky"]["retried"] >= retries["flaky"]["replayed"]
    assert (retries["flaky"]["completed"], retries["flaky"]["failed"], retries["flaky"]["lost"]) == (20, 0, 0)
    # 6: the poison parked by the delivery limit, the 20 after it completed.
    assert (poison["poison"]["parked_by_limit"], poison["others"]["completed"]) == (1, 20)
    # 7: cache-aside's stale reads stay beside write-through's none; the storm's reads all missed.
    assert caching["cache-aside"]["stale_reads"] > 0 and caching["write-through"]["stale_reads"] == 0
    assert caching["storm"]["cache_hits"] == 0 and caching["storm"]["cache_misses"] >= 10
    # 8: more workers are faster; prefetch 50 lets one worker hoard, prefetch 1 shares.
    assert scaling["many"]["throughput"] >= 1.5 * scaling["one"]["throughput"]
    assert (scaling["hoard"]["workers_used"], scaling["share"]["workers_used"]) == (1, 2)
    check_new_lessons(measured)
    assert passes == sum(len(lesson.checkpoints) for lesson in catalog.LESSONS)
