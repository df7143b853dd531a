"""Each unsafe mode, on the real services: the failure it lets happen actually happens, and the safe default
prevents it. The numbers are the lessons' checkpoints (orders/checkpoints.py, worker/checkpoints.py)."""

from __future__ import annotations

import json
import signal
import threading
from datetime import timedelta
from typing import Any

import pytest
from django.db import connection
from django.db.models import F
from rest_framework.test import APIClient

from orders import cache, checkpoints, sandbox, services
from orders.models import (
    EventKind,
    GatewayCharge,
    Order,
    OrderEvent,
    OrderStatus,
    OutboxMessage,
    Payment,
    Product,
)
from orders.sandbox.faults import Faults
from orders.sandbox.policies import STALE_AFTER
from orders.tests.factories import ProductFactory, StaffFactory
from worker import checkpoints as broker_checkpoints
from worker.models import WorkerHeartbeat
from worker.processing import ACK, Processor
from worker.proxy import Proxy
from worker.relay import relay_once
from worker.tests.conftest import delivery_for
from worker.tests.processes import Service, wait_until

pytestmark = pytest.mark.django_db(transaction=True)


def set_modes(**changes: Any) -> None:
    sandbox.sandbox_update(changes=changes, via="test")
    sandbox.reader.invalidate()


@pytest.fixture
def book():
    return ProductFactory(sku="BOOK-001", price="25.00", stock=1000)


@pytest.fixture
def staff_api():
    client = APIClient()
    client.force_authenticate(StaffFactory(username="modes-staff", password="pw"))
    return client


def post_order(api: APIClient, email: str = "ada@example.com"):
    return api.post(
        "/api/orders/",
        data=json.dumps({"customer_email": email, "items": [{"sku": "BOOK-001", "quantity": 1}]}),
        content_type="application/json",
    )


def completed(orders) -> bool:
    return all(o.status == OrderStatus.COMPLETED for o in Order.objects.filter(pk__in=[o.pk for o in orders]))


# ---------------------------------------------------------------- step_guards


class SimulatedCrash(Exception):
    """Stands in for the worker dying at the sandbox's crash point: the step's transaction rolls back."""


class CrashOnceIn(Faults):
    """The sandbox's real settings (so the real step_guards mode), plus one crash inside one step."""

    def __init__(self, step: str) -> None:
        super().__init__()
        self.step, self.crashed = step, False

    def maybe_crash(self, step: str) -> None:
        if step == self.step and not self.crashed:
            self.crashed = True
            raise SimulatedCrash(step)


@pytest.mark.parametrize(("guards", "charges", "stock_taken"), [(False, 2, 4), (True, 1, 2)])
def test_step_guards_off_repeat_finished_steps_on_a_redelivery_and_charge_twice(book, guards, charges, stock_taken):
    set_modes(step_guards=guards)
    order = services.order_create(customer_email="twice@example.com", items=[{"sku": "BOOK-001", "quantity": 2}])
    faults = CrashOnceIn("notify customer")  # after 'reserve inventory' and 'charge payment' committed
    with pytest.raises(SimulatedCrash):
        Processor(faults=faults).process(delivery_for(order))
    redelivered = delivery_for(order, redelivered=True, headers={"x-delivery-count": 1})
    assert Processor(faults=faults).process(redelivered) == ACK

    order.refresh_from_db()
    assert order.status == OrderStatus.COMPLETED
    assert GatewayCharge.objects.filter(order_ref=str(order.id)).count() == charges
    assert checkpoints.charged_twice(Order.objects.filter(pk=order.pk)) == (1 if charges == 2 else 0)
    # The one-payment constraint stays: our books hold one payment, the first charge's.
    first = GatewayCharge.objects.filter(order_ref=str(order.id)).earliest("id")
    assert Payment.objects.get(order=order).gateway_reference == first.reference
    assert Product.objects.get(pk=book.pk).stock == 1000 - stock_taken


# ---------------------------------------------------------------- stock_update


@pytest.mark.parametrize(("mode", "oversold"), [("read_modify_write", True), ("guarded", False)])
def test_read_modify_write_oversells_stock_under_concurrency_and_the_guarded_decrement_does_not(mode, oversold):
    """Eight orders of one unit, four in stock, eight threads reserving at once on the real per-order path: the
    read-modify-write loses updates (more orders reserved than units existed, the stock written back above what is
    left); the guarded decrement reserves exactly the four units and fails the rest out of stock."""
    set_modes(stock_update=mode)
    product = ProductFactory(sku="SCARCE-1", price="5.00", stock=4)
    orders = [
        services.order_create(customer_email=f"scarce{n}@example.com", items=[{"sku": "SCARCE-1", "quantity": 1}])
        for n in range(8)
    ]
    start = threading.Barrier(len(orders))

    def process(order: Order) -> None:
        start.wait()
        try:
            Processor(faults=Faults()).process(delivery_for(order))
        finally:
            connection.close()

    threads = [threading.Thread(target=process, args=(order,)) for order in orders]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    reserved = Order.objects.filter(pk__in=[o.pk for o in orders], status=OrderStatus.COMPLETED).count()
    left = Product.objects.get(pk=product.pk).stock
    failed = Order.objects.filter(pk__in=[o.pk for o in orders], status=OrderStatus.FAILED).count()
    assert reserved + failed == len(orders)
    if oversold:
        assert reserved > 4, (reserved, left)
        assert reserved + left > 4  # the stock does not account for what was sold: updates were lost
    else:
        assert (reserved, left, failed) == (4, 0, 4)


# ---------------------------------------------------------------- cache_mode


@pytest.mark.parametrize(("mode", "stale", "second_read"), [("cache_aside", 1, "HIT"), ("write_through", 0, "HIT")])
def test_cache_aside_with_a_long_ttl_serves_stale_reads_and_write_through_does_not(
    book, staff_api, mode, stale, second_read
):
    set_modes(cache_mode=mode, cache_ttl_seconds=3600)
    cache.flush()
    order = services.order_create(customer_email="stale@example.com", items=[{"sku": "BOOK-001", "quantity": 1}])
    first = staff_api.get(f"/api/orders/{order.id}/")
    assert (first["X-Cache"], first.json()["status"]) == ("MISS", "pending")  # cache-aside fill on the miss
    assert Processor(faults=Faults()).process(delivery_for(order)) == ACK  # the worker completes it
    # A hit counts as stale once the row has been replaced for longer than STALE_AFTER (a read within it is only
    # write-through's own latency): read as if that long after, as a learner's later reads are.
    Order.objects.filter(pk=order.pk).update(updated_at=F("updated_at") - STALE_AFTER - timedelta(seconds=1))

    second = staff_api.get(f"/api/orders/{order.id}/")
    assert second["X-Cache"] == second_read
    assert second.json()["status"] == ("pending" if stale else "completed")
    assert checkpoints.stale_reads() == stale


def test_cache_off_reads_postgresql_every_time(book, staff_api):
    set_modes(cache_mode="off")
    cache.flush()
    order = services.order_create(customer_email="off@example.com", items=[{"sku": "BOOK-001", "quantity": 1}])
    Processor(faults=Faults()).process(delivery_for(order))
    assert not cache.order_state(order.id)["present"]  # the worker wrote nothing
    assert [staff_api.get(f"/api/orders/{order.id}/")["X-Cache"] for _ in range(2)] == ["MISS", "MISS"]
    assert not cache.order_state(order.id)["present"]


# ---------------------------------------------------------------- publish_mode


def test_publish_first_with_a_failing_commit_leaves_a_ghost_message_and_the_outbox_does_not(
    book, staff_api, broker, start_worker
):
    cache.flush()
    start_worker()
    set_modes(publish_mode="publish_first", accept_failure_rate=1.0)
    refused = post_order(staff_api, "ghost@example.com")
    assert refused.status_code == 503
    assert "accept_failure_rate" in refused.json()["detail"]
    assert not Order.objects.exists()
    # The message went out before the rollback: the worker meets an order that does not exist.
    assert wait_until(lambda: checkpoints.ghost_messages() == 1, 20)

    # The outbox: the same failing commit takes the order and its message down together.
    set_modes(publish_mode="outbox")
    assert post_order(staff_api, "nothing@example.com").status_code == 503
    assert not Order.objects.exists() and not OutboxMessage.objects.exists()
    set_modes(accept_failure_rate=0.0)
    accepted = post_order(staff_api, "real@example.com")
    assert accepted.status_code == 202
    relay_once(broker)
    # FIFO: had the failed outbox request leaked a message, the worker would have met it before this order.
    assert wait_until(lambda: completed(Order.objects.all()), 20)
    assert checkpoints.ghost_messages() == 1


def test_dual_write_with_the_broker_cut_accepts_orders_that_are_never_queued(
    book, staff_api, broker, start_worker, settings
):
    start_worker(amqp_url=settings.AMQP_URL)  # the worker keeps the real broker; the API publishes through the proxy
    cut = Proxy(5672)  # never brought up: the API's connections are refused
    settings.AMQP_URLS = [f"amqp://guest:guest@127.0.0.1:{cut.port}/%2F"]
    set_modes(publish_mode="dual_write")
    lost = [post_order(staff_api, f"lost{n}@example.com") for n in range(3)]
    assert [r.status_code for r in lost] == [202, 202, 202]
    orders = Order.objects.filter(pk__in=[r.json()["id"] for r in lost])
    assert not OutboxMessage.objects.exists()
    assert OrderEvent.objects.filter(order__in=orders, kind=EventKind.PUBLISH_FAILED).count() == 3
    assert set(orders.values_list("status", flat=True)) == {OrderStatus.PENDING}

    def lost_count() -> int | None:
        return broker_checkpoints.lost_orders(orders, quiet_for=timedelta(0)).lost

    assert wait_until(lambda: lost_count() == 3, 20)

    # The outbox, broker still cut: accepted, owed a message, so not lost; the relay delivers them when it can.
    set_modes(publish_mode="outbox")
    kept = Order.objects.filter(pk__in=[post_order(staff_api, f"kept{n}@example.com").json()["id"] for n in range(3)])
    assert OutboxMessage.objects.filter(order__in=kept, sent_at__isnull=True).count() == 3
    assert broker_checkpoints.lost_orders(kept, quiet_for=timedelta(0)).lost == 0
    relay_once(broker)  # the broker is back (for the relay)
    assert wait_until(lambda: completed(kept), 20)
    assert set(Order.objects.filter(pk__in=orders).values_list("status", flat=True)) == {OrderStatus.PENDING}


# ---------------------------------------------------------------- ack_mode


def held_by_workers() -> int:
    return sum(len(h) for h in WorkerHeartbeat.objects.values_list("holding", flat=True))


@pytest.mark.parametrize("mode", ["on_receive", "after_commit"])
def test_a_killed_worker_loses_what_it_held_only_when_it_acked_on_receipt(tmp_path, book, broker, mode):
    set_modes(ack_mode=mode, step_delay_ms=300)
    orders = [
        services.order_create(customer_email=f"k{n}@example.com", items=[{"sku": "BOOK-001", "quantity": 1}])
        for n in range(8)
    ]
    scope = Order.objects.filter(pk__in=[o.pk for o in orders])
    worker = Service("run_worker", "--prefetch", "20", "--concurrency", "1", log_dir=tmp_path).start()
    relay_once(broker)
    # The worker holds every message (prefetch 20 > 8) and works through them slowly, one at a time.
    assert wait_until(lambda: held_by_workers() >= 6, 30), worker.output()[-3000:]
    worker.signal(signal.SIGKILL)
    worker.proc.wait(10)

    set_modes(step_delay_ms=0)
    survivor = Service("run_worker", log_dir=tmp_path).start()
    try:

        def settled() -> bool:
            result = broker_checkpoints.lost_orders(scope, quiet_for=timedelta(seconds=1))
            finished = scope.filter(status__in=OrderStatus.terminal()).count()
            return result.lost is not None and finished + result.lost == len(orders)

        assert wait_until(settled, 60), survivor.output()[-3000:]
        lost = broker_checkpoints.lost_orders(scope, quiet_for=timedelta(seconds=1)).lost
    finally:
        assert survivor.stop() == 0
    if mode == "on_receive":
        assert lost is not None and lost > 0
        assert scope.filter(status=OrderStatus.COMPLETED).count() == len(orders) - lost
    else:
        assert lost == 0
        assert scope.filter(status=OrderStatus.COMPLETED).count() == len(orders)
