"""The gateway's crash window with a real worker process: it dies after the gateway charged, before our commit."""

from __future__ import annotations

import pytest

from orders import sandbox, services
from orders.models import EventKind, GatewayCharge, Order, OrderEvent, OrderStatus, OrderStep, Payment
from orders.tests.factories import ProductFactory
from worker.tests.processes import Service, wait_until

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]


def waiting_before(order: Order, step: str) -> bool:
    return OrderEvent.objects.filter(order=order, kind=EventKind.STEP_WAITING, message__contains=f"'{step}'").exists()


def test_a_worker_killed_between_the_gateway_and_our_commit_charges_once(tmp_path, broker):
    ProductFactory(sku="BOOK-001", stock=10)
    sandbox.sandbox_update(changes={"step_mode": True}, via="test")
    order = services.order_create(customer_email="window@example.com", items=[{"sku": "BOOK-001", "quantity": 1}])
    relay = Service("run_relay", log_dir=tmp_path).start()
    worker = Service("run_worker", log_dir=tmp_path).start()
    try:
        assert wait_until(lambda: waiting_before(order, "reserve inventory"), 60), worker.output()[-3000:]
        sandbox.step_grant(order_id=order.pk)
        assert wait_until(lambda: waiting_before(order, "charge payment"), 60), worker.output()[-3000:]
        # One change, so one read: the worker leaves its step-mode wait only once it has read this row, and then
        # it also knows the crash rate. Its first crash point is inside the charge step's transaction, after the
        # gateway's own transaction has committed the charge.
        sandbox.sandbox_update(changes={"step_mode": False, "crash_rate": 1.0}, via="test")
        assert worker.proc.wait(60) == 70, worker.output()[-3000:]  # the sandbox's crash exit code
        ledger = GatewayCharge.objects.filter(order_ref=str(order.id))
        assert ledger.count() == 1
        assert not Payment.objects.filter(order=order).exists()
        assert Order.objects.get(pk=order.pk).step == OrderStep.INVENTORY_RESERVED

        sandbox.sandbox_update(changes={"crash_rate": 0.0}, via="test")
        worker = Service("run_worker", log_dir=tmp_path).start()
        assert wait_until(lambda: Order.objects.get(pk=order.pk).status == OrderStatus.COMPLETED, 60)
    finally:
        codes = (worker.stop(), relay.stop())
    assert codes == (0, 0)
    charge = ledger.get()
    assert Payment.objects.get(order=order).gateway_reference == charge.reference
    assert OrderEvent.objects.filter(order=order, kind=EventKind.REDELIVERED).exists()
