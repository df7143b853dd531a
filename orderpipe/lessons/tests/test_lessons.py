"""The lessons framework against the real PostgreSQL: the pages, the state a page polls, what the measures count
(lost, charged twice, duplicates), passing checkpoints per session, the resets, and refusals outside the sandbox.
The lessons themselves, run as a learner would, are in worker/tests/test_browser_lessons.py."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.contrib.auth import get_user_model
from django.utils import timezone
from rest_framework.test import APIClient

from orderpipe.lessons import catalog
from orderpipe.lessons.measure import FLAKY_NOTE_PREFIX, measure, run_email
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
from orders.tests.factories import ProductFactory
from worker.models import QueueStat, WorkerHeartbeat

pytestmark = pytest.mark.django_db


@pytest.fixture
def staff() -> APIClient:
    client = APIClient()
    client.force_login(get_user_model().objects.create_user("teacher", password=None, is_staff=True))
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
        assert state["phases"][0]["email"].endswith("@lessons.example.com")
    assert client.get("/lessons/nope/").status_code == 404
    assert client.get("/lessons/nope/state/").json()["detail"] == "No such lesson."


def test_lost_counts_only_orders_whose_message_is_nowhere():
    email = "t-run-a@lessons.example.com"
    queued, held, in_outbox, done, resent = (place(email)[0] for _ in range(5))
    for order in (queued, held, done, resent):
        OutboxMessage.objects.filter(order=order).update(sent_at=timezone.now())
    Order.objects.filter(pk__in=[queued.pk, held.pk, resent.pk]).update(status=OrderStatus.PROCESSING)
    Order.objects.filter(pk=done.pk).update(status=OrderStatus.COMPLETED)
    OrderEvent.objects.create(order=resent, seq=99, kind=EventKind.RESENT, message="re-sent")
    for order in (queued, held, in_outbox, done, resent):
        age(order)
    WorkerHeartbeat.objects.create(
        name="w", hostname="h", pid=1, holding=[str(held.pk)], started_at=timezone.now(), last_seen=timezone.now()
    )

    queues_seen(ready=3)  # something waits in a queue: nobody can say whose, so nothing is called lost yet
    numbers = measure(email)
    assert (numbers["lost"], numbers["lost_resent"], numbers["lost_undecided"]) == (1, 1, 2)

    queues_seen(ready=0)
    numbers = measure(email)
    # The queued order (no outbox row pending, no worker, no queue) and the one the sweeper re-sent; not the one a
    # live worker holds, nor the one still in the outbox, nor the completed one.
    assert (numbers["lost"], numbers["lost_resent"], numbers["lost_undecided"]) == (2, 1, 0)

    OrderEvent.objects.filter(order=queued).update(at=timezone.now())  # it moved a moment ago: too soon to tell
    assert measure(email)["lost"] == 1

    QueueStat.objects.update(observed_at=timezone.now() - timedelta(seconds=60))  # depths unknown: undecided
    numbers = measure(email)
    assert numbers["lost"] == 1  # only the re-sent one, which was lost whatever happens next
    assert "not observed recently" in numbers["lost_why"]


def test_charged_twice_and_duplicates():
    email = "t-run-b@lessons.example.com"
    a, b = place(email, 2)
    for order, charges in ((a, 2), (b, 1)):
        for n in range(charges):
            GatewayCharge.objects.create(order_ref=str(order.pk), amount=order.total, reference=f"sim-{order.pk}-{n}")
    numbers = measure(email)
    assert (numbers["charges"], numbers["charged_twice"]) == (3, 1)

    flaky = "t-run-c@lessons.example.com"
    place(flaky, 2, note=f"{FLAKY_NOTE_PREFIX}x request 1")
    place(flaky, 1, note=f"{FLAKY_NOTE_PREFIX}x request 2")
    numbers = measure(flaky)
    assert (numbers["requests"], numbers["accepted"], numbers["duplicates"]) == (2, 3, 1)


def test_a_checkpoint_passes_once_per_session_and_stays_passed(staff, settings):
    lesson = catalog.BY_SLUG["idempotency-key"]
    staff.get(f"/lessons/{lesson.slug}/")
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
    place(run_email("retries", "zzz", "flaky"))
    answer = staff.post("/lessons/instructor/reset/").json()
    assert answer["removed_orders"] == 1 and answer["removed_passes"] == 1
    assert not CheckpointPass.objects.exists() and not LessonRun.objects.exists()
    assert Order.objects.filter(pk=other.pk).exists()


def test_a_reset_deletes_payments_and_ledger_lines_of_its_orders(staff):
    lesson = catalog.BY_SLUG["retries"]
    staff.get(f"/lessons/{lesson.slug}/state/")
    run = LessonRun.objects.get(lesson=lesson.slug).run
    order = place(run_email(lesson.slug, run, "flaky"))[0]
    from orders.models import Payment

    Payment.objects.create(order=order, amount=order.total, gateway_reference="sim-1")
    GatewayCharge.objects.create(order_ref=str(order.pk), amount=order.total, reference="sim-1")
    assert staff.post(f"/lessons/{lesson.slug}/reset/").json()["removed_orders"] == 1
    assert not Payment.objects.exists() and not GatewayCharge.objects.exists()


def test_only_staff_act_and_only_staff_see_the_instructor_page(settings):
    settings.DEBUG = True
    customer = APIClient()
    customer.force_login(get_user_model().objects.create_user("learner", password=None))
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
