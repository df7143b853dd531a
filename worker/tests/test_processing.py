from __future__ import annotations

import json

import pytest
from django.core import mail

from orders import cache
from orders.failures import PaymentDeclined
from orders.models import GatewayCharge, Notification, OrderEvent, OrderStatus, OrderStep, Payment, Product
from orders.runner import Item
from orders.sandbox.faults import NoFaults
from orders.steps import STEP_BY_NAME
from orders.tests.factories import ProductFactory
from worker.processing import ACK, Action, Delivery, Processor
from worker.tests.conftest import delivery_for

pytestmark = pytest.mark.django_db

processing = Processor(faults=NoFaults())
pipeline = processing.pipeline


def run_step(name: str, order, delivery: Delivery) -> bool:
    """One step for the order on its own; whether it moved the order."""
    before = OrderEvent.objects.filter(order=order).count()
    pipeline.run_step(STEP_BY_NAME[name], [Item(order_id=order.id, message=delivery)])
    return OrderEvent.objects.filter(order=order).count() > before


def kinds(order) -> list[str]:
    return list(OrderEvent.objects.filter(order=order).order_by("seq").values_list("kind", flat=True))


def test_it_runs_every_step_and_completes(place_order, product):
    order = place_order(quantity=3)
    assert processing.process(delivery_for(order)) == ACK
    order.refresh_from_db()
    assert (order.status, order.step, order.attempts) == ("completed", "customer_notified", 1)
    product.refresh_from_db()
    assert product.stock == 7
    payment = Payment.objects.get(order=order)
    assert payment.amount == order.total
    assert order.result == {
        "payment_reference": payment.gateway_reference,
        "charged": "75.00",
        "notified": "ada@example.com",
    }
    assert Notification.objects.get(order=order).recipient == "ada@example.com"
    assert len(mail.outbox) == 1 and mail.outbox[0].to == ["ada@example.com"]
    assert kinds(order) == [
        "accepted",
        "received",
        "inventory_reserved",
        "payment_charged",
        "customer_notified",
        "completed",
    ]
    # Every event after acceptance carries what the cache held once its transaction committed.
    for event in OrderEvent.objects.filter(order=order, seq__gt=1):
        assert event.snapshot["cache"]["present"] is True
        assert event.snapshot["cache"]["value"]["version"] == event.snapshot["db"]["version"]
        assert event.snapshot["queue"]["delivery_tag"] == 1
    assert cache.read_order(order.id)["status"] == "completed"


def test_a_redelivery_resumes_after_the_last_finished_step(place_order, product):
    order = place_order(quantity=2)
    first = delivery_for(order)
    # The worker died right after the payment committed.
    pipeline.receive(order.id, first)
    run_step("reserve inventory", order, first)
    run_step("charge payment", order, first)
    redelivered = delivery_for(order, redelivered=True, headers={"x-delivery-count": 1})
    assert processing.process(redelivered) == ACK
    order.refresh_from_db()
    assert order.status == "completed"
    assert order.attempts == 2
    assert Payment.objects.filter(order=order).count() == 1
    product.refresh_from_db()
    assert product.stock == 8
    assert kinds(order) == [
        "accepted",
        "received",
        "inventory_reserved",
        "payment_charged",
        "redelivered",
        "customer_notified",
        "completed",
    ]
    assert OrderEvent.objects.get(order=order, kind="redelivered").snapshot["queue"]["delivery_count"] == 2


def test_a_duplicate_of_a_finished_order_is_acked_and_changes_nothing(place_order, product):
    order = place_order()
    processing.process(delivery_for(order))
    assert processing.process(delivery_for(order, redelivered=True)) == ACK
    assert Payment.objects.filter(order=order).count() == 1
    product.refresh_from_db()
    assert product.stock == 9
    assert kinds(order)[-1] == "duplicate_ignored"


def test_out_of_stock_fails_without_reserving_anything(place_order, product):
    mug = ProductFactory(sku="MUG-002", stock=1)
    from orders import services

    order = services.order_create(
        customer_email="a@example.com",
        items=[{"sku": "BOOK-001", "quantity": 2}, {"sku": "MUG-002", "quantity": 3}],
    )
    assert processing.process(delivery_for(order)) == ACK
    order.refresh_from_db()
    assert order.status == OrderStatus.FAILED
    assert "out of stock: MUG-002" in order.failure_reason
    product.refresh_from_db()
    mug.refresh_from_db()
    assert (product.stock, mug.stock) == (10, 1)
    assert not Payment.objects.filter(order=order).exists()
    assert kinds(order)[-1] == "failed"
    assert cache.read_order(order.id)["status"] == "failed"


def test_a_declined_payment_fails_and_releases_the_reserved_stock(place_order, product):
    order = place_order(quantity=4)

    def decline(_order, _faults):
        raise PaymentDeclined("payment declined by the card issuer")

    assert Processor(faults=NoFaults(), gateway=decline).process(delivery_for(order)) == ACK
    order.refresh_from_db()
    assert order.status == "failed"
    assert order.failure_reason == "payment declined by the card issuer"
    product.refresh_from_db()
    assert product.stock == 10
    assert not Payment.objects.exists()
    failed = OrderEvent.objects.get(order=order, kind="failed")
    assert "Reserved stock released" in failed.message
    # The journey shows the product row as each step left it: 4 taken, then 4 given back.
    [reserved] = OrderEvent.objects.get(order=order, kind="inventory_reserved").snapshot["db"]["rows"]
    [released] = failed.snapshot["db"]["rows"]
    assert (reserved["fields"]["stock"], reserved["note"]) == (6, "stock -4")
    assert (released["fields"]["stock"], released["note"]) == (10, "stock +4")


@pytest.mark.parametrize(
    "body",
    [
        b"\xff\xfe not json",
        b"[1, 2]",
        json.dumps({"order_id": "nope", "version": 1}).encode(),
        # Fixed ids: parameters must be the same in every collection (pytest-xdist compares its workers').
        json.dumps({"order_id": "5f0c1f9e-8d3b-4a51-9e0a-2c7d6b1a4e33", "version": 1}).encode(),
        json.dumps({"order_id": "5f0c1f9e-8d3b-4a51-9e0a-2c7d6b1a4e34", "version": 99}).encode(),
    ],
)
def test_poison_messages_are_dead_lettered_with_a_reason(body):
    verdict = processing.process(Delivery(body=body))
    assert verdict.action is Action.DEAD_LETTER
    assert verdict.reason.startswith("poison message: ")


def test_steps_refuse_to_run_out_of_order(place_order, product):
    order = place_order()
    delivery = delivery_for(order)
    pipeline.receive(order.id, delivery)
    assert not run_step("charge payment", order, delivery)
    assert not run_step("complete", order, delivery)
    assert not Payment.objects.exists()
    assert Product.objects.get(pk=product.pk).stock == 10
    order.refresh_from_db()
    assert order.step == OrderStep.NONE


class SimulatedCrash(Exception):
    """Stands in for the worker dying (os._exit) at the sandbox's crash point: the step's transaction rolls back."""


class CrashOnceIn(NoFaults):
    def __init__(self, step: str) -> None:
        super().__init__()
        self.step, self.crashed = step, False

    def maybe_crash(self, step: str) -> None:
        if step == self.step and not self.crashed:
            self.crashed = True
            raise SimulatedCrash(step)


@pytest.mark.django_db(transaction=True)
def test_a_crash_after_the_gateway_charged_charges_once_on_redelivery(place_order, product):
    order = place_order(quantity=2)
    # The crash point of 'charge payment' is inside our step's transaction, after the gateway's own transaction
    # has committed its charge: the window a real provider call leaves open.
    with pytest.raises(SimulatedCrash):
        Processor(faults=CrashOnceIn("charge payment")).process(delivery_for(order))
    ledger = GatewayCharge.objects.filter(order_ref=str(order.id))
    assert ledger.count() == 1
    assert not Payment.objects.filter(order=order).exists()
    order.refresh_from_db()
    assert order.step == OrderStep.INVENTORY_RESERVED

    redelivered = delivery_for(order, redelivered=True, headers={"x-delivery-count": 1})
    assert processing.process(redelivered) == ACK
    order.refresh_from_db()
    assert order.status == OrderStatus.COMPLETED
    charge = ledger.get()
    assert charge.idempotency_key == str(order.id)
    assert Payment.objects.get(order=order).gateway_reference == charge.reference
    assert order.result["payment_reference"] == charge.reference


def test_a_declined_payment_leaves_nothing_in_the_gateway_ledger(place_order, product):
    order = place_order()

    class Declining(NoFaults):
        def declined(self) -> bool:
            return True

    assert Processor(faults=Declining()).process(delivery_for(order)) == ACK
    order.refresh_from_db()
    assert order.status == OrderStatus.FAILED
    assert not GatewayCharge.objects.exists()


def test_the_email_sender_is_a_seam_a_test_can_swap(place_order, product):
    order = place_order()
    sent = []

    def record(order_to_confirm):
        sent.append(order_to_confirm.pk)
        return "Subject from the seam", "Body from the seam"

    assert Processor(faults=NoFaults(), notify=record).process(delivery_for(order)) == ACK
    assert sent == [order.pk]
    assert not mail.outbox
    assert Notification.objects.get(order=order).subject == "Subject from the seam"
    order.refresh_from_db()
    assert order.status == OrderStatus.COMPLETED
