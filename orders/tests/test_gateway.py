from __future__ import annotations

from decimal import Decimal

import pytest
from django.db import transaction

from orders import gateway, services
from orders.failures import GatewayDown, PaymentDeclined
from orders.models import GatewayCharge

pytestmark = pytest.mark.django_db


class Faults:
    """Just the answers the gateway asks for."""

    def __init__(self, *, declined: bool = False, down: bool = False) -> None:
        self._declined = declined
        self._down = down

    def maybe_fail_transiently(self, step: str) -> None:
        pass

    def declined(self) -> bool:
        return self._declined

    def gateway_down(self) -> bool:
        return self._down


def test_the_same_key_returns_the_first_charge_and_adds_no_ledger_row():
    first = gateway.charge_with_key(key="order-1", order_ref="order-1", amount=Decimal("12.50"), faults=Faults())
    again = gateway.charge_with_key(key="order-1", order_ref="order-1", amount=Decimal("12.50"), faults=Faults())
    assert again == first
    charge = GatewayCharge.objects.get()
    assert (charge.idempotency_key, charge.reference, charge.amount) == ("order-1", first, Decimal("12.50"))


def test_a_replayed_key_is_not_declined_after_the_fact():
    first = gateway.charge_with_key(key="order-2", order_ref="order-2", amount=Decimal("5.00"), faults=Faults())
    assert (
        gateway.charge_with_key(
            key="order-2", order_ref="order-2", amount=Decimal("5.00"), faults=Faults(declined=True)
        )
        == first
    )


def test_a_decline_charges_nothing():
    with pytest.raises(PaymentDeclined):
        gateway.charge_with_key(
            key="order-3", order_ref="order-3", amount=Decimal("5.00"), faults=Faults(declined=True)
        )
    assert not GatewayCharge.objects.exists()


def test_without_a_key_every_call_is_a_new_charge(product):
    order = services.order_create(customer_email="pay@example.com", items=[{"sku": product.sku, "quantity": 1}])
    references = {gateway.charge_without_key(order, Faults()) for _ in range(2)}
    assert len(references) == 2
    assert GatewayCharge.objects.filter(order_ref=str(order.id), idempotency_key=None).count() == 2


def test_it_refuses_to_run_inside_our_transaction():
    # Inside the step's transaction a crash would roll the "provider's" charge back, which no real provider does.
    with pytest.raises(RuntimeError, match="durable"), transaction.atomic():
        gateway.charge_with_key(key="order-4", order_ref="order-4", amount=Decimal("5.00"), faults=Faults())


def test_a_batch_charge_answers_each_order_as_its_own_charge_would(product):
    orders = [
        services.order_create(customer_email=f"batch{n}@example.com", items=[{"sku": product.sku, "quantity": 1}])
        for n in range(3)
    ]
    first = gateway.charge(orders[0], Faults())
    answers = gateway.charge_many(orders, Faults())
    # The key seen before answers its first charge; the two new ones are charged once each.
    assert answers[0] == first and len(set(answers)) == 3
    assert GatewayCharge.objects.filter(order_ref__in=[str(o.id) for o in orders]).count() == 3
    assert gateway.charge_many(orders, Faults(declined=True)) == answers  # replayed keys are not declined
    late = services.order_create(customer_email="late@example.com", items=[{"sku": product.sku, "quantity": 1}])
    [declined] = gateway.charge_many([late], Faults(declined=True))
    assert isinstance(declined, PaymentDeclined)
    assert not GatewayCharge.objects.filter(order_ref=str(late.id)).exists()


def test_a_gateway_that_is_down_refuses_every_call_and_charges_nothing(product):
    order = services.order_create(customer_email="down@example.com", items=[{"sku": product.sku, "quantity": 1}])
    with pytest.raises(GatewayDown, match="'charge payment': it is down"):
        gateway.charge(order, Faults(down=True))
    with pytest.raises(GatewayDown):
        gateway.charge_without_key(order, Faults(down=True))
    [refused] = gateway.charge_many([order], Faults(down=True))
    assert isinstance(refused, GatewayDown) and str(refused) == gateway.DOWN
    assert not GatewayCharge.objects.exists()
    # Back up: the same key charges once.
    assert gateway.charge(order, Faults()) == gateway.charge(order, Faults())
    assert GatewayCharge.objects.count() == 1
