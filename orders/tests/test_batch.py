"""The batched steps (one transaction per step for many orders) leave exactly the rows the per-order steps leave."""

from __future__ import annotations

import json
import logging
import re
from dataclasses import replace
from decimal import Decimal
from typing import Any

import pytest
from django.db import IntegrityError

from orders import batch, gateway, runner
from orders.models import (
    EventKind,
    GatewayCharge,
    Notification,
    Order,
    OrderEvent,
    OutboxMessage,
    Payment,
    Product,
)
from orders.runner import Item
from orders.sandbox.faults import NoFaults
from orders.services import order_create
from orders.steps import STEPS
from orders.tests.factories import ProductFactory
from worker.processing import ACK, Delivery, Processor

pytestmark = pytest.mark.django_db

STOCK = {"BOOK-001": 10, "MUG-002": 1, "PEN-003": 50}
# In the order the per-order runs take them, and the batch holds them: the second finds the only mug taken by the
# first (out of stock, nothing reserved), the last is declined by the gateway (its reservation released).
ORDERS = [
    [{"sku": "MUG-002", "quantity": 1}, {"sku": "BOOK-001", "quantity": 2}],
    [{"sku": "PEN-003", "quantity": 5}, {"sku": "MUG-002", "quantity": 1}],
    [{"sku": "BOOK-001", "quantity": 3}, {"sku": "PEN-003", "quantity": 1}],
    [{"sku": "BOOK-001", "quantity": 1}],
    [{"sku": "BOOK-001", "quantity": 4}],
]
# What differs between two runs of the same orders and says nothing about the rows: times, outbox ids, delivery tags.
VARYING = {
    "message_id",
    "outbox_id",
    "at",
    "created_at",
    "updated_at",
    "completed_at",
    "sent_at",
    "placed_at",
    "delivery_tag",
    "back_at",
}


def place(run: str) -> list[Order]:
    for sku, stock in STOCK.items():
        Product.objects.filter(sku=sku).update(stock=stock)
    return [order_create(customer_email=f"{run}{n}@example.com", items=items) for n, items in enumerate(ORDERS)]


def delivery(order: Order, tag: int) -> Delivery:
    outbox = OutboxMessage.objects.get(order=order)
    return Delivery(
        body=json.dumps(outbox.payload).encode(),
        delivery_tag=tag,
        exchange="test.orders",
        routing_key="order.placed",
        queue="test.orders.process",
        message_id=str(outbox.id),
        depths={"test.orders.process": 4},
        worker="test-worker",
    )


class DecliningTheLast(NoFaults):
    """No fault is on (the batch runs), but the gateway's last new charge is declined: the fifth order's, as the
    out-of-stock order never asks."""

    def __init__(self) -> None:
        super().__init__()
        self.asked = 0

    def declined(self) -> bool:
        self.asked += 1
        return self.asked == len(ORDERS) - 1


def rows(orders: list[Order]) -> dict[str, Any]:
    """Everything stored for the orders, each id replaced by the order's position and each time by a marker."""
    names: dict[str, str] = {}
    for n, order in enumerate(orders):
        names[str(order.pk)] = f"<order {n}>"
        names[str(order.pk)[:8]] = f"<order {n}>"
        names[order.customer_email] = f"<customer {n}>"
        for reference in GatewayCharge.objects.filter(order_ref=str(order.pk)).values_list("reference", flat=True):
            names[reference] = f"<charge {n}>"

    def same(value: Any) -> Any:
        text = json.dumps(value, default=str)
        for old, new in names.items():
            text = text.replace(old, new)
        return strip(json.loads(re.sub(r"outbox message #\d+", "outbox message #<outbox>", text)))

    def strip(value: Any) -> Any:
        if isinstance(value, dict):
            if value.get("table") in (
                Payment._meta.db_table,
                Notification._meta.db_table,
                OutboxMessage._meta.db_table,
            ):
                value = {**value, "id": "<id>"}
            return {key: "<varies>" if key in VARYING else strip(item) for key, item in value.items()}
        if isinstance(value, list):
            return [strip(item) for item in value]
        return value

    ids = [order.pk for order in orders]
    return {
        "orders": same(list(Order.objects.filter(pk__in=ids).order_by("customer_email").values())),
        "events": same(
            [
                [event.seq, event.kind, event.message, event.snapshot]
                for event in OrderEvent.objects.filter(order__in=ids).order_by("order__customer_email", "seq")
            ]
        ),
        "payments": same(
            list(
                Payment.objects.filter(order__in=ids)
                .order_by("order__customer_email")
                .values("order_id", "amount", "gateway_reference")
            )
        ),
        "notifications": same(
            list(
                Notification.objects.filter(order__in=ids)
                .order_by("order__customer_email")
                .values("order_id", "channel", "recipient", "subject", "body")
            )
        ),
        "stock": dict(Product.objects.filter(sku__in=STOCK).values_list("sku", "stock")),
    }


def test_the_batched_and_the_per_order_steps_leave_identical_rows_and_verdicts():
    for sku in STOCK:
        ProductFactory(sku=sku, price="12.50")
    # The same orders (emails a0… and b0… sort alike), run one by one, then as one batch, from the same stock.
    one_by_one = place("a")
    alone = Processor(faults=DecliningTheLast())
    verdicts_alone = [alone.process(delivery(order, n + 1)) for n, order in enumerate(one_by_one)]
    expected = rows(one_by_one)

    batched = place("b")
    deliveries = [delivery(order, n + 1) for n, order in enumerate(batched)]
    verdicts = {id(d): verdict for d, verdict in Processor(faults=DecliningTheLast()).process_batch(deliveries)}
    assert [verdicts[id(d)] for d in deliveries] == verdicts_alone == [ACK] * len(ORDERS)
    assert rows(batched) == expected

    # Not vacuous: the batch ran (one statement per step: its events share one time); three completed, one out of
    # stock, one declined with its stock released.
    assert OrderEvent.objects.filter(order__in=batched, kind="received").values("at").distinct().count() == 1
    assert OrderEvent.objects.filter(order__in=one_by_one, kind="received").values("at").distinct().count() == 5
    statuses = [order["status"] for order in expected["orders"]]
    assert statuses == ["completed", "failed", "completed", "completed", "failed"]
    assert expected["stock"] == {"BOOK-001": 10 - 2 - 3 - 1, "MUG-002": 0, "PEN-003": 50 - 1}
    assert Payment.objects.filter(order__in=batched).count() == 3
    received = [event for event in expected["events"] if event[1] == "received"]
    assert received[0][3]["queue"]["worker"] == "test-worker" and received[0][3]["queue"]["queue_ready"] == 4
    reserved = [event[3]["db"]["rows"] for event in expected["events"] if event[1] == "inventory_reserved"]
    # Each reservation shows the stock as it left it, after the ones before it in the batch.
    assert [[row["fields"]["stock"] for row in snapshot] for snapshot in reserved] == [[8, 0], [5, 49], [4], [0]]
    assert Decimal(expected["payments"][0]["amount"]) == Decimal("37.50")


def test_a_batch_statement_that_fails_leaves_each_order_to_the_per_order_steps(monkeypatch):
    for sku in STOCK:
        ProductFactory(sku=sku, price="12.50")
    orders = place("c")

    def broken(orders: list[Order], seams: Any, references: dict[Any, Any]) -> list[Any]:
        raise IntegrityError('duplicate key value violates unique constraint "injected"')

    steps = tuple(
        replace(step, effect_many=broken) if step.kind == EventKind.PAYMENT_CHARGED else step for step in STEPS
    )
    monkeypatch.setattr(runner, "STEPS", steps)
    deliveries = [delivery(order, n + 1) for n, order in enumerate(orders)]
    assert [verdict for _, verdict in Processor(faults=NoFaults()).process_batch(deliveries)] == [ACK] * len(ORDERS)

    statuses = [Order.objects.get(pk=order.pk).status for order in orders]
    assert statuses == ["completed", "failed", "completed", "completed", "completed"]
    assert Payment.objects.count() == GatewayCharge.objects.count() == 4
    # Reserved in the batch; charged (and on) one order at a time, each in its own transaction.
    charged = OrderEvent.objects.filter(kind="payment_charged")
    assert OrderEvent.objects.filter(kind="inventory_reserved").values("at").distinct().count() == 1
    assert charged.count() == charged.values("at").distinct().count() == 4


def test_a_step_batches_as_its_row_says_whatever_its_name(monkeypatch):
    """The batched runner takes each step's batched effect and gateway call from its row: renamed steps still run
    as one transaction each for the whole batch, the gateway asked once for all of them."""
    for sku in STOCK:
        ProductFactory(sku=sku, price="12.50")
    orders = place("d")
    renamed = tuple(replace(step, name=f"step {n}") for n, step in enumerate(STEPS))
    monkeypatch.setattr(runner, "STEPS", renamed)
    real, asked = gateway.charge_many, []

    def charge_many(orders: list[Order], faults: Any) -> list[Any]:
        asked.append(len(orders))
        return real(orders, faults)

    monkeypatch.setattr(gateway, "charge_many", charge_many)
    deliveries = [delivery(order, n + 1) for n, order in enumerate(orders)]
    assert [verdict for _, verdict in Processor(faults=NoFaults()).process_batch(deliveries)] == [ACK] * len(ORDERS)

    statuses = [Order.objects.get(pk=order.pk).status for order in orders]
    assert statuses == ["completed", "failed", "completed", "completed", "completed"]
    assert asked == [len(ORDERS) - 1]  # the out-of-stock order never asks
    for kind in ("inventory_reserved", "payment_charged", "customer_notified", "completed"):
        assert OrderEvent.objects.filter(kind=kind, order__in=orders).values("at").distinct().count() == 1, kind


def test_the_batch_statements_find_their_rows_through_an_index():
    """The batch's UPDATEs join their rows to a JSON recordset, whose size the planner cannot know (it guesses 100):
    without the `= ANY` of the ids beside the join, it reads the orders and events tables whole on every step (13 ms
    per statement at 15,000 orders, growing with the tables). Planned here over 3,000 orders with 5 events each."""
    from django.db import connection

    from orders import journal

    with connection.cursor() as cursor:
        cursor.execute(
            "INSERT INTO orders_order (id, status, step, customer_email, total, note, failure_reason, attempts, "
            "version, created_at, updated_at) SELECT gen_random_uuid(), 'processing', 'none', 'a@example.com', 10, "
            "'', '', 1, 1, now(), now() FROM generate_series(1, 3000)"
        )
        cursor.execute(
            "INSERT INTO orders_orderevent (order_id, seq, kind, at, message, snapshot) "
            "SELECT id, seq, 'received', now(), '', '{}' FROM orders_order, generate_series(1, 5) AS seq"
        )
        cursor.execute("ANALYZE orders_order, orders_orderevent")  # rolled back with the test's transaction
        cursor.execute("SELECT id FROM orders_order LIMIT 1")
        (order_id,) = cursor.fetchone()
        row = {"n": 0, "id": str(order_id), "from_status": "processing", "from_version": 1, "status": "processing"}
        row |= {"kind": "received", "message": "m", "snapshot": {}, "set_attempts": 2}
        statements: list[tuple[str, dict[str, Any]]] = [
            (journal._transition_many_statement(("attempts",)), {"rows": json.dumps([row]), "ids": [order_id]}),
            (journal._SET_CACHE_STATES_UNSYNCED, {"states": json.dumps([{"id": 1, "state": {}}]), "ids": [1]}),
        ]
        for statement, params in statements:
            cursor.execute(f"EXPLAIN {statement}", {"at": None, **params})
            plan = "\n".join(line for (line,) in cursor.fetchall())
            assert not re.search(r"Seq Scan on orders_(order|orderevent)\b", plan), plan


def test_an_order_another_worker_moved_on_is_skipped_by_the_step_guard(monkeypatch):
    """A duplicate delivery of one of the batch's orders, run the per-order way by another worker, reserves its stock
    between the batch's receipt and its reserve step: the step guard (the order must be at the step) skips that order
    in the batch's reserve step, so its stock is taken once."""
    ProductFactory(sku="BOOK-001", price="12.50", stock=10)
    orders = [
        order_create(customer_email=f"d{n}@example.com", items=[{"sku": "BOOK-001", "quantity": 1}]) for n in range(3)
    ]
    deliveries = [delivery(order, n + 1) for n, order in enumerate(orders)]
    processor = Processor(faults=NoFaults())
    victim = orders[1]
    after_commit = batch.cache_after_batch_commit
    raced: list[bool] = []

    def racing_worker_after(transitions: list[Any]) -> None:
        after_commit(transitions)
        if not raced:  # the batch's receipt has committed: the other worker reserves the victim's stock now
            processor.pipeline.run_step(STEPS[0], [Item(order_id=victim.pk, message=deliveries[1])])
            raced.append(Order.objects.get(pk=victim.pk).step == STEPS[0].then)

    monkeypatch.setattr(batch, "cache_after_batch_commit", racing_worker_after)
    assert [verdict for _, verdict in processor.process_batch(deliveries)] == [ACK] * len(orders)

    assert raced == [True]
    assert Product.objects.get(sku="BOOK-001").stock == 10 - len(orders)
    assert OrderEvent.objects.filter(order=victim, kind="inventory_reserved").count() == 1
    assert [Order.objects.get(pk=order.pk).status for order in orders] == ["completed"] * len(orders)
    assert Payment.objects.filter(order__in=orders).count() == GatewayCharge.objects.count() == len(orders)


def test_a_batch_logs_one_summary_line_and_its_events_at_debug(caplog, django_capture_on_commit_callbacks):
    """At INFO a batch is one line (its orders by outcome and its duration); its events are at DEBUG. The order that
    fails (out of stock) is recorded the per-order way and keeps its INFO lines."""
    for sku in STOCK:
        ProductFactory(sku=sku, price="12.50")
    orders = place("e")
    deliveries = [delivery(order, n + 1) for n, order in enumerate(orders)]
    caplog.set_level(logging.DEBUG)
    caplog.clear()
    with django_capture_on_commit_callbacks(execute=True):  # the events are logged once their transaction commits
        assert [verdict for _, verdict in Processor(faults=NoFaults()).process_batch(deliveries)] == [ACK] * len(ORDERS)

    summaries = [r for r in caplog.records if r.name == "orders.batch" and r.levelno == logging.INFO]
    assert [r.getMessage().split(" ms: ", 1)[1] for r in summaries] == [
        "4 done, 1 failed, 0 to retry, 0 left to the per-order steps, 0 error(s)"
    ]
    assert summaries[0].orders == len(ORDERS) and summaries[0].duration_ms > 0
    events = [r for r in caplog.records if r.name == "orderpipe.events"]
    assert {r.kind for r in events if r.levelno == logging.INFO} == {"failed"}
    debug = [(r.order_id, r.kind) for r in events if r.levelno == logging.DEBUG]
    assert len(debug) == len(ORDERS) + 4 * 4  # received by all; four steps for the four that complete
    assert {kind for _, kind in debug} == {
        "received",
        "inventory_reserved",
        "payment_charged",
        "customer_notified",
        "completed",
    }
