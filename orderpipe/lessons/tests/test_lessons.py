"""The lessons framework against the real PostgreSQL: the pages, the state a page polls, what the measures count
(lost, charged twice, duplicates), passing checkpoints per session, the resets, and refusals outside the sandbox.
The lessons themselves, run as a learner would, are in worker/tests/test_browser_lessons.py."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.utils import timezone
from rest_framework.test import APIClient

from orderpipe.lessons import catalog
from orderpipe.lessons.measure import BUCKETS, FLAKY_NOTE_PREFIX, measure, run_email
from orderpipe.lessons.models import CheckpointPass, LessonRun
from orders import sandbox
from orders import services as order_services
from orders.models import (
    EventKind,
    GatewayCharge,
    Order,
    OrderEvent,
    OrderStatus,
    OutboxMessage,
    SandboxSettings,
)
from orders.tests.factories import (
    GatewayChargeFactory,
    OrderEventFactory,
    PaymentFactory,
    ProductFactory,
    StaffFactory,
    UserFactory,
)
from worker.models import QueueStat
from worker.tests.factories import WorkerHeartbeatFactory

pytestmark = pytest.mark.django_db


@pytest.fixture
def staff() -> APIClient:
    client = APIClient()
    client.force_login(StaffFactory(username="teacher"))
    return client


@pytest.fixture(autouse=True)
def _catalog(db):
    ProductFactory(sku="BOOK-001", stock=1000)


def place(email: str, n: int = 1, note: str = "") -> list[Order]:
    return [
        order_services.order_create(customer_email=email, items=[{"sku": "BOOK-001", "quantity": 1}], note=note)
        for _ in range(n)
    ]


def queues_seen(ready: int = 0) -> None:
    QueueStat.objects.update_or_create(
        name="test.main", defaults={"role": "main", "ready": ready, "consumers": 1, "observed_at": timezone.now()}
    )


def age(order: Order, seconds: float = 30) -> None:
    OrderEvent.objects.filter(order=order).update(at=timezone.now() - timedelta(seconds=seconds))


def test_the_header_of_every_page_links_the_lessons(staff, settings):
    settings.DEBUG = True
    for path in ("/", "/lessons/"):
        assert 'href="/lessons/"' in staff.get(path).content.decode()


def test_the_index_lists_the_lessons_and_each_page_renders_with_its_state(settings):
    settings.DEBUG = True
    client = APIClient()  # a learner without an account, as `make run` allows
    index = client.get("/lessons/").content.decode()
    for lesson in catalog.LESSONS:
        assert lesson.title in index
        assert f'href="/lessons/{lesson.slug}/"' in index
        page = client.get(f"/lessons/{lesson.slug}/")
        assert page.status_code == 200
        html = page.content.decode()
        assert 'id="lesson-config"' in html and 'id="checkpoint"' in html
        assert "log in as staff" in html  # the buttons are staff's: the page says so
        state = client.get(f"/lessons/{lesson.slug}/state/").json()
        assert [p["id"] for p in state["phases"]] == lesson.phase_ids()
        assert state["run"] is None and state["phases"][0]["email"] == ""  # not started: nothing of its own yet
    assert client.get("/lessons/nope/").status_code == 404
    assert client.get("/lessons/nope/state/").json()["detail"] == "No such lesson."


def test_opening_a_lesson_without_a_cookie_creates_no_session_and_no_run(settings):
    from django.contrib.sessions.models import Session

    settings.DEBUG = True
    client = APIClient()
    assert client.get("/lessons/retries/").status_code == 200
    assert client.get("/lessons/retries/state/").status_code == 200
    assert not Session.objects.exists() and not LessonRun.objects.exists()


def test_lost_counts_only_orders_whose_message_is_nowhere():
    email = "t-run-a@lessons.example.com"
    queued, held, in_outbox, done, resent = (place(email)[0] for _ in range(5))
    for order in (queued, held, done, resent):
        OutboxMessage.objects.filter(order=order).update(sent_at=timezone.now())
    Order.objects.filter(pk__in=[queued.pk, held.pk, resent.pk]).update(status=OrderStatus.PROCESSING)
    Order.objects.filter(pk=done.pk).update(status=OrderStatus.COMPLETED)
    OrderEventFactory(order=resent, kind=EventKind.RESENT)
    for order in (queued, held, in_outbox, done, resent):
        age(order)
    WorkerHeartbeatFactory(holding=[str(held.pk)])

    queues_seen(ready=3)  # something waits in a queue: nobody can say whose, so nothing is called lost yet
    numbers = measure(email)
    # The re-sent one was lost whatever happens next; the queued one is not yet known (counted there only).
    assert (numbers["lost"], numbers["lost_resent"], numbers["not_yet_known"]) == (1, 1, 1)
    assert (numbers["in_flight"], numbers["completed"]) == (2, 1)  # the held one and the one in the outbox
    assert sum(numbers[bucket] for bucket in BUCKETS) == numbers["accepted"] == 5

    queues_seen(ready=0)
    numbers = measure(email)
    # The queued order (no outbox row pending, no worker, no queue) and the one the sweeper re-sent; not the one a
    # live worker holds, nor the one still in the outbox, nor the completed one.
    assert (numbers["lost"], numbers["lost_resent"], numbers["not_yet_known"]) == (2, 1, 0)
    assert sum(numbers[bucket] for bucket in BUCKETS) == numbers["accepted"] == 5
    assert numbers["held"] == 1

    OrderEvent.objects.filter(order=queued).update(at=timezone.now())  # it moved a moment ago: too soon to tell
    assert measure(email)["lost"] == 1

    QueueStat.objects.update(observed_at=timezone.now() - timedelta(seconds=60))  # depths unknown: undecided
    numbers = measure(email)
    assert numbers["lost"] == 1  # only the re-sent one, which was lost whatever happens next
    age(queued)
    numbers = measure(email)
    assert (numbers["lost"], numbers["not_yet_known"]) == (1, 1)
    assert "not observed recently" in numbers["lost_why"]


def test_charged_twice_and_duplicates():
    email = "t-run-b@lessons.example.com"
    a, b = place(email, 2)
    for order, charges in ((a, 2), (b, 1)):
        for _ in range(charges):
            GatewayChargeFactory(order=order)
    numbers = measure(email)
    assert (numbers["charges"], numbers["charged_twice"]) == (3, 1)

    flaky = "t-run-c@lessons.example.com"
    place(flaky, 2, note=f"{FLAKY_NOTE_PREFIX}x request 1")
    place(flaky, 1, note=f"{FLAKY_NOTE_PREFIX}x request 2")
    numbers = measure(flaky)
    assert (numbers["requests"], numbers["accepted"], numbers["duplicates"]) == (2, 3, 1)


def test_a_checkpoint_passes_once_per_session_and_stays_passed(staff, settings):
    lesson = catalog.BY_SLUG["idempotency-key"]
    assert staff.post(f"/lessons/{lesson.slug}/start/").status_code == 200
    key = staff.session.session_key
    run = LessonRun.objects.get(session_key=key, lesson=lesson.slug).run
    place(run_email(lesson.slug, run, "no-key"), 2, note=f"{FLAKY_NOTE_PREFIX}r request 1")

    state = staff.get(f"/lessons/{lesson.slug}/state/").json()
    passed = {c["id"]: c["passed_at"] for c in state["checkpoints"]}
    assert passed["duplicates-without-key"] is not None and passed["one-order-each-with-key"] is None
    assert state["phases"][0]["numbers"]["duplicates"] == 1
    record = CheckpointPass.objects.get(session_key=key, checkpoint="duplicates-without-key")
    assert record.numbers["duplicates"] == 1 and record.user == "teacher"

    # The reset deletes this run's orders and starts a new one; the checkpoint stays passed (it is progress).
    sandbox.sandbox_update(changes={"crash_rate": 1.0}, via="test")
    other = place("someone@example.com")[0]
    answer = staff.post(f"/lessons/{lesson.slug}/reset/")
    assert answer.status_code == 200 and answer.json()["removed_orders"] == 2
    assert SandboxSettings.load().crash_rate == 0.0
    assert Order.objects.filter(pk=other.pk).exists()
    assert LessonRun.objects.get(session_key=key, lesson=lesson.slug).run != run
    state = staff.get(f"/lessons/{lesson.slug}/state/").json()
    assert state["phases"][0]["numbers"]["accepted"] == 0
    assert {c["id"] for c in state["checkpoints"] if c["passed_at"]} == {"duplicates-without-key"}

    # The instructor sees the session and what it passed, and can reset every lesson.
    page = staff.get("/lessons/instructor/").content.decode()
    assert key[:8] in page and "duplicates-without-key" in page
    staff.post("/lessons/retries/start/")
    run = LessonRun.objects.get(session_key=key, lesson="retries").run
    place(run_email("retries", run, "flaky"))
    # A real order whose address merely ends in the lessons' domain belongs to no lesson run: it stays.
    typed = place(f"retries-{run[:6]}-flaky@lessons.example.com")[0]
    answer = staff.post("/lessons/instructor/reset/").json()
    assert answer["removed_orders"] == 1 and answer["removed_passes"] == 1
    assert not CheckpointPass.objects.exists() and not LessonRun.objects.exists()
    assert Order.objects.filter(pk__in=[other.pk, typed.pk]).count() == 2


def test_a_reset_deletes_payments_and_ledger_lines_of_its_orders(staff):
    lesson = catalog.BY_SLUG["retries"]
    staff.post(f"/lessons/{lesson.slug}/start/")
    run = LessonRun.objects.get(lesson=lesson.slug).run
    order = place(run_email(lesson.slug, run, "flaky"))[0]
    from orders.models import Payment

    PaymentFactory(order=order)
    GatewayChargeFactory(order=order)
    assert staff.post(f"/lessons/{lesson.slug}/reset/").json()["removed_orders"] == 1
    assert not Payment.objects.exists() and not GatewayCharge.objects.exists()


def test_only_staff_act_and_only_staff_see_the_instructor_page(settings):
    settings.DEBUG = True
    customer = APIClient()
    customer.force_login(UserFactory())
    assert customer.post("/lessons/retries/reset/").status_code == 403
    assert customer.post("/lessons/instructor/reset/").status_code == 403
    assert customer.get("/lessons/instructor/").status_code == 302


def test_without_the_sandbox_the_pages_say_so_and_every_lesson_action_is_refused(staff, settings):
    settings.ORDERPIPE_SANDBOX = False
    assert "The lessons need the sandbox" in staff.get("/lessons/").content.decode()
    page = staff.get("/lessons/retries/").content.decode()
    assert "This lesson needs the sandbox" in page and "lesson-action" not in page
    for method, path in (
        ("get", "/lessons/retries/state/"),
        ("post", "/lessons/retries/reset/"),
        ("post", "/lessons/instructor/reset/"),
    ):
        answer = getattr(staff, method)(path)
        assert answer.status_code == 404, path
        assert answer["Content-Type"] == "application/json"
    # The buttons' own endpoints refuse too (sandbox, burst, replay: 404 like every sandbox control).
    assert staff.patch("/api/sandbox/", {"crash_rate": 1}, format="json").status_code == 404
    assert staff.post("/api/controls/burst/", {"count": 1}, format="json").status_code == 404
    assert not LessonRun.objects.exists()


def test_a_burst_can_tag_its_orders_with_a_lesson_email(staff):
    from orderpipe.dashboard.controls import burst_create

    email = run_email("retries", "abc123", "flaky")
    assert burst_create(count=3, by="t", burst_id="x", email=email) == 3
    assert Order.objects.filter(customer_email=email).count() == 3
    answer = staff.post("/api/controls/burst/", {"count": 1, "customer_email": "not an email"}, format="json")
    assert answer.status_code == 400 and "customer_email" in answer.json()


def test_start_restores_every_setting_to_the_lessons_baseline_and_says_what_it_reset(staff):
    """What lesson 3 leaves behind (bug rate 0.3, a step delay) and lesson 8 (2 workers of 1 thread, prefetch 1)
    does not leak into the next lesson: its Start puts back its baseline, scaling included, and names each change."""
    lesson = catalog.BY_SLUG["idempotency-key"]
    sandbox.sandbox_update(
        changes={"bug_rate": 0.3, "step_delay_ms": 200, "workers": 2, "worker_concurrency": 1, "worker_prefetch": 1},
        via="test",
    )
    answer = staff.post(f"/lessons/{lesson.slug}/start/").json()
    row = SandboxSettings.load()
    assert {name: getattr(row, name) for name in lesson.baseline} == dict(lesson.baseline)
    assert (row.workers, row.worker_concurrency, row.worker_prefetch) == (1, 4, 10)
    assert set(answer["reset"]) == {
        "bug_rate 0.3 → 0",
        "step_delay_ms 200 → 0",
        "workers 2 → 1",
        "worker_concurrency 1 → 4",
        "worker_prefetch 1 → 10",
    }
    assert answer["applied"]["done"]
    # A second start resets nothing, and begins a fresh run.
    again = staff.post(f"/lessons/{lesson.slug}/start/").json()
    assert again["reset"] == [] and again["run"] != answer["run"]


def test_every_lesson_has_a_full_baseline_with_the_scaling_spelled_out():
    for lesson in catalog.LESSONS:
        assert set(lesson.baseline) == set(SandboxSettings.FIELDS), lesson.slug
        assert lesson.baseline["worker_prefetch"] is not None and lesson.baseline["worker_concurrency"] is not None


def test_restore_defaults_restores_scaling_and_the_banner_names_it(staff, settings):
    settings.DEBUG = True
    sandbox.sandbox_update(changes={"workers": 2, "worker_concurrency": 1, "worker_prefetch": 1}, via="test")
    page = staff.get("/lessons/").content.decode()
    assert "workers 2, threads per worker 1, prefetch 1" in page
    sandbox.sandbox_update(
        changes={"worker_prefetch": settings.WORKER_PREFETCH}, via="test"
    )  # the default, spelled out
    assert "workers 2, threads per worker 1</b>" in staff.get("/lessons/").content.decode()
    config = staff.get("/").context["config"]
    staff.patch("/api/sandbox/", config["sandboxDefaults"], format="json")
    row = SandboxSettings.load()
    assert (row.workers, row.worker_concurrency, row.worker_prefetch) == (1, None, None)


def test_a_phase_keeps_its_figures_and_counters_once_the_next_one_begins(staff):
    """Lesson 7: zeroing the counters for write-through no longer erases cache-aside's stale reads."""
    lesson = catalog.BY_SLUG["caching"]
    staff.post(f"/lessons/{lesson.slug}/start/")
    run = LessonRun.objects.get(lesson=lesson.slug).run
    place(run_email(lesson.slug, run, "cache-aside"), 2)
    stale = _stale(3)
    state = staff.get(f"/lessons/{lesson.slug}/state/").json()
    aside = state["phases"][0]["numbers"]
    assert (aside["accepted"], aside["stale_reads"]) == (2, stale)
    assert state["phases"][1]["numbers"]["stale_reads"] is None  # not begun: no counters of its own

    assert staff.post(f"/lessons/{lesson.slug}/phase/", {"phase": "write-through"}, format="json").status_code == 200
    staff.post("/api/controls/flush-cache/")  # "Zero the counters"
    place(run_email(lesson.slug, run, "cache-aside"))  # a late order does not change the frozen column either
    place(run_email(lesson.slug, run, "write-through"), 4)
    state = staff.get(f"/lessons/{lesson.slug}/state/").json()
    aside, through = state["phases"][0]["numbers"], state["phases"][1]["numbers"]
    assert state["phases"][0]["frozen"] and not state["phases"][1]["frozen"]
    assert (aside["accepted"], aside["stale_reads"]) == (2, stale)
    assert (through["accepted"], through["stale_reads"]) == (4, 0)
    assert staff.post(f"/lessons/{lesson.slug}/phase/", {"phase": "nope"}, format="json").status_code == 400


def test_a_phase_frozen_with_orders_in_flight_follows_them_until_they_settle(staff):
    """A fast learner begins the next phase while the last orders of this one are still moving: the frozen column
    follows those orders until each is in a bucket it stays in, then keeps its figures; a late order never counts."""
    lesson = catalog.BY_SLUG["idempotency-key"]
    staff.post(f"/lessons/{lesson.slug}/start/")
    run = LessonRun.objects.get(lesson=lesson.slug).run
    orders = place(run_email(lesson.slug, run, "no-key"), 2)
    assert staff.post(f"/lessons/{lesson.slug}/phase/", {"phase": "with-key"}, format="json").status_code == 200

    def no_key() -> dict:
        state = staff.get(f"/lessons/{lesson.slug}/state/").json()
        assert state["phases"][0]["frozen"]
        return state["phases"][0]["numbers"]

    assert (no_key()["accepted"], no_key()["in_flight"], no_key()["completed"]) == (2, 2, 0)
    Order.objects.filter(pk__in=[o.pk for o in orders]).update(
        status=OrderStatus.COMPLETED, completed_at=timezone.now()
    )
    place(run_email(lesson.slug, run, "no-key"))  # late: placed after the phase froze
    assert (no_key()["accepted"], no_key()["in_flight"], no_key()["completed"]) == (2, 0, 2)
    # Settled, it is kept from now on, whatever happens to its orders later.
    Order.objects.filter(pk=orders[0].pk).update(status=OrderStatus.FAILED)
    assert (no_key()["completed"], no_key()["failed"]) == (2, 0)


def _stale(n: int) -> int:
    """Count `n` stale reads the way the API does, and return the counter."""
    from orders import cache

    for _ in range(n):
        cache.count_stale_read()
    return cache.stale_reads()


def test_a_phase_begins_with_the_first_step_that_leads_to_it():
    """Lesson 8 scales before each phase: the scaling step begins the phase, so the earlier column keeps the workers
    it ran with."""
    assert catalog.BY_SLUG["scaling"].begins() == ["one", "", "many", "", "four", "hoard", "", "share", ""]
    assert catalog.BY_SLUG["ack-timing"].begins() == ["on-receive", "", "after-commit"]
    for lesson in catalog.LESSONS:
        assert [phase for phase in lesson.begins() if phase] == lesson.phase_ids(), lesson.slug


def test_the_oversold_lesson_places_its_burst_on_a_product_of_its_own_and_counts_units_beyond_the_stock(staff):
    """The act endpoint runs the catalog's stock burst (its own product, 10 in stock, 30 one-unit orders); the measure
    counts the units reserved beyond the stock from the reservation events and the product row; a reset deletes the
    orders and the product; dashboard bursts never pick a lesson product."""
    from orderpipe.dashboard.controls import burst_plan
    from orderpipe.lessons.measure import LESSON_STOCK, lesson_sku
    from orders.events import record_event
    from orders.models import Product

    lesson = catalog.BY_SLUG["oversold"]
    staff.post(f"/lessons/{lesson.slug}/start/")
    run = LessonRun.objects.get(lesson=lesson.slug).run
    step = next(i for i, s in enumerate(lesson.steps) if any(a.kind == "stock_burst" for a in s.actions))
    answer = staff.post(f"/lessons/{lesson.slug}/act/", {"step": step, "action": 0}, format="json")
    assert answer.status_code == 200, answer.content
    email = run_email(lesson.slug, run, "read-modify-write")
    orders = list(Order.objects.filter(customer_email=email))
    product = Product.objects.get(sku=lesson_sku(lesson.slug, run, "read-modify-write"))
    assert len(orders) == 30 and product.stock == LESSON_STOCK
    assert "BOOK-001" in burst_plan(count=5) and product.sku not in burst_plan(count=1000)

    # As read-modify-write leaves it: 13 orders reserved a unit each, and the row says 2 are left.
    for order in orders[:13]:
        record_event(order, EventKind.INVENTORY_RESERVED, "Reserved 1.")
    Product.objects.filter(pk=product.pk).update(stock=2)
    numbers = measure(email)
    assert (numbers["stock_at_start"], numbers["units_sold"], numbers["oversold"], numbers["stock_left"]) == (
        10,
        13,
        3,
        2,
    )
    # The other phase has no product yet: nothing to count.
    assert measure(run_email(lesson.slug, run, "guarded"))["oversold"] is None

    # Only the catalog's server-side steps run there: a sandbox step is refused.
    assert staff.post(f"/lessons/{lesson.slug}/act/", {"step": 0, "action": 0}, format="json").status_code == 400
    assert staff.post(f"/lessons/{lesson.slug}/act/", {"step": "x"}, format="json").status_code == 400

    assert staff.post(f"/lessons/{lesson.slug}/reset/").json()["removed_orders"] == 30
    assert not Product.objects.filter(pk=product.pk).exists()


def test_the_full_queue_lesson_counts_where_each_order_waited_and_what_the_queue_dropped():
    """Published at the first attempt: waited in the queue; refused (nacked) first: waited in the outbox, one nack per
    refused attempt; dead-lettered with the full queue's reason: dropped."""
    from orders.models import OutboxMessage
    from worker.queue_policy import DROPPED

    email = run_email("full-queue", "abc", "reject-publish")
    at_once, refused, still_waiting, dropped = place(email, 4)
    now = timezone.now()
    OutboxMessage.objects.filter(order=at_once).update(sent_at=now, publish_attempts=1)
    OutboxMessage.objects.filter(order=refused).update(sent_at=now, publish_attempts=3)
    OutboxMessage.objects.filter(order=still_waiting).update(publish_attempts=2, last_error="nacked")
    OutboxMessage.objects.filter(order=dropped).update(sent_at=now, publish_attempts=1)
    Order.objects.filter(pk=dropped.pk).update(status=OrderStatus.DEAD_LETTERED, failure_reason=DROPPED)
    numbers = measure(email)
    assert (numbers["waited_in_queue"], numbers["waited_in_outbox"], numbers["in_outbox"]) == (2, 2, 1)
    assert (numbers["publish_nacks"], numbers["dropped"]) == (4, 1)


def test_orders_a_killed_worker_held_are_not_yet_known_until_the_queues_are_observed_again():
    """Its unacked messages return to the queue when it dies; a depth observed before its death does not show them."""
    email = "t-run-d@lessons.example.com"
    order = place(email)[0]
    OutboxMessage.objects.filter(order=order).update(sent_at=timezone.now())
    Order.objects.filter(pk=order.pk).update(status=OrderStatus.PROCESSING)
    age(order)
    queues_seen(ready=0)
    WorkerHeartbeatFactory(
        name="killed",
        holding=[str(order.pk)],
        last_seen=timezone.now() - timedelta(seconds=6),  # stale: taken for dead
    )
    QueueStat.objects.update(observed_at=timezone.now() - timedelta(seconds=7))  # before it died
    numbers = measure(email)
    assert (numbers["lost"], numbers["not_yet_known"]) == (0, 1)
    assert "a worker died" in numbers["lost_why"]
    queues_seen(ready=0)  # observed since, still empty: now it is lost
    assert measure(email)["lost"] == 1


def test_the_retry_storm_lesson_counts_the_gateways_calls_per_100_ms_and_the_retried_ones():
    """A call is a charge (payment_charged) or a refusal (a retry or a dead letter after 'charge payment'); the bins
    count from the phase's first call; an order's calls after its first are retries; the gateway is back from its
    first charge."""
    from orderpipe.lessons.measure import CALL_BIN_MS
    from orders import gateway
    from orders.events import record_event

    email = run_email("retry-storm", "abc", "fixed")
    a, b, c = place(email, 3)
    refused = f"Transient failure in 'charge payment': {gateway.DOWN}. Retry 1 of 3 in 1 s through x."
    start = timezone.now() - timedelta(seconds=60)
    calls = [  # (order, ms after the first call, refused?)
        (a, 0, True),
        (b, 20, True),
        (c, 150, True),
        (c, 160, True),
        (a, 1000, False),
        (b, 1010, False),
        (c, 1090, False),
    ]
    for order, ms, was_refused in calls:
        kind = EventKind.RETRY_SCHEDULED if was_refused else EventKind.PAYMENT_CHARGED
        event = record_event(order, kind, refused if was_refused else "Charged.")
        OrderEvent.objects.filter(pk=event.pk).update(at=start + timedelta(milliseconds=ms))
    # A retry for another step is no gateway call.
    record_event(a, EventKind.RETRY_SCHEDULED, "Transient failure in 'reserve inventory': simulated timeout.")
    numbers = measure(email)
    assert (numbers["gateway_calls"], numbers["gateway_refused"]) == (7, 4)
    # Retried: every order's calls after its first (the 2nd of c, then the three charges); the gateway was back from
    # bin 10 (its first charge): 3 calls there.
    assert (numbers["calls_peak"], numbers["retry_calls_peak"], numbers["back_calls_peak"]) == (3, 3, 3)
    # The busiest second of retries: bins 1 to 10 (c's second call, then the three charges).
    assert numbers["retry_calls_second"] == 4
    chart = numbers["calls_chart"]
    assert chart["bin_ms"] == CALL_BIN_MS
    assert chart["refused"] == [2, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0]
    assert chart["charged"] == [0] * 10 + [3]
    # A phase without calls has no chart.
    assert measure(run_email("retry-storm", "abc", "jitter"))["calls_chart"] is None


def test_the_retry_storm_lesson_takes_the_gateway_down_and_places_its_burst(staff):
    """The act endpoint runs the catalog's outage burst: the gateway down for the lesson's outage from the moment the
    orders are about to be placed, and the phase's 20 orders placed at once."""
    import time

    lesson = catalog.BY_SLUG["retry-storm"]
    staff.post(f"/lessons/{lesson.slug}/start/")
    run = LessonRun.objects.get(lesson=lesson.slug).run
    step = next(i for i, s in enumerate(lesson.steps) if any(a.kind == "outage_burst" for a in s.actions))
    before = time.time()
    answer = staff.post(f"/lessons/{lesson.slug}/act/", {"step": step, "action": 0}, format="json")
    assert answer.status_code == 200, answer.content
    seconds = catalog.gateway_outage_seconds()
    assert f"refuses every call for {seconds:g} s" in answer.json()["text"]
    until = SandboxSettings.load().gateway_down_until
    assert until is not None and before + seconds <= until <= time.time() + seconds
    assert Order.objects.filter(customer_email=run_email(lesson.slug, run, "fixed")).count() == 20
    # Start again: the baseline brings the gateway back.
    staff.post(f"/lessons/{lesson.slug}/start/")
    assert SandboxSettings.load().gateway_down_until is None


def test_the_retry_storm_outage_spans_the_first_tier_and_ends_before_the_second(settings):
    # Past the first tier's longest jitter (1.5 s), short of the second tier's shortest return (0.5 s + 2.5 s).
    settings.RETRY_DELAYS_MS = [1000, 5000, 30000]
    assert catalog.gateway_outage_seconds() == 2.75
    assert 1.5 < catalog.gateway_outage_seconds() < 3.0
