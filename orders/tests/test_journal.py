"""The fast journal path (one statement per change) leaves exactly the rows the readable ORM path leaves."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import pytest
from django.db import transaction

from orders import events, reference, services
from orders.models import EventKind, Order, OrderEvent, OrderLine, OrderStatus, OrderStep, OutboxMessage
from orders.tests.factories import ProductFactory

pytestmark = pytest.mark.django_db

# Not in catalog order, so lines in request order are not lines in product order.
ITEMS = [{"sku": "MUG-002", "quantity": 1}, {"sku": "BOOK-001", "quantity": 3}, {"sku": "PEN-003", "quantity": 2}]
QUEUE = {"exchange": "orders", "routing_key": "order.placed", "queue": "orders.process", "delivery_tag": 7}
DONE_AT = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)

# Each journey: (what to do, its arguments). "move" is a transition, "note" an event without one.
JOURNEYS: dict[str, list[tuple[str, dict[str, Any]]]] = {
    "completed": [
        ("move", {"to": OrderStatus.QUEUED, "kind": EventKind.PUBLISHED, "message": "Published.", "queue": QUEUE}),
        ("move", {"to": OrderStatus.PROCESSING, "kind": EventKind.RECEIVED, "message": "In.", "attempts": 1}),
        ("note", {"kind": EventKind.STEP_WAITING, "message": "Waiting for 'Next step'.", "queue": QUEUE}),
        ("move", {"to": OrderStatus.PROCESSING, "kind": EventKind.INVENTORY_RESERVED, "message": "Reserved.",
                  "step": OrderStep.INVENTORY_RESERVED, "rows": [events.product_row(1, "BOOK-001", 7, -3)]}),
        ("move", {"to": OrderStatus.COMPLETED, "kind": EventKind.COMPLETED, "message": "Done.",
                  "result": {"payment_reference": "sim_1", "charged": "62.00"}, "completed_at": DONE_AT}),
    ],
    "failed": [
        ("move", {"to": OrderStatus.QUEUED, "kind": EventKind.PUBLISHED, "message": "Published.", "queue": QUEUE}),
        ("move", {"to": OrderStatus.PROCESSING, "kind": EventKind.REDELIVERED, "message": "Again.", "attempts": 2}),
        ("move", {"to": OrderStatus.FAILED, "kind": EventKind.FAILED, "message": "Failed: declined.",
                  "failure_reason": "declined"}),
        ("note", {"kind": EventKind.DUPLICATE_IGNORED, "message": "Ignored."}),
    ],
}  # fmt: skip


def walk(order_id: object, journey: list[tuple[str, dict[str, Any]]], *, readable: bool) -> None:
    move = reference.transition_reference if readable else services.transition_order
    note = events.record_event_reference if readable else events.record_event
    for what, arguments in journey:
        with transaction.atomic():
            order = Order.objects.select_for_update().get(pk=order_id)
            if what == "move":
                move(order, **arguments)
            else:
                note(order, **arguments)


def rows(order: Order) -> dict[str, Any]:
    """Everything stored for the order, minus ids and timestamps (each replaced by what it stands for)."""
    outbox = OutboxMessage.objects.get(order=order)

    def same_ids(text: str) -> str:
        return text.replace(str(order.id), "<order>").replace(f"#{outbox.id}", "#<outbox>")

    stored = Order.objects.filter(pk=order.pk).values().get()
    for name in ("id", "created_at", "updated_at"):
        stored.pop(name)
    lines = list(
        OrderLine.objects.filter(order=order).order_by("id").values("product_id", "sku", "quantity", "unit_price")
    )
    message = OutboxMessage.objects.filter(pk=outbox.pk).values().get()
    for name in ("id", "order_id", "created_at"):
        message.pop(name)
    message["payload"] = {**message["payload"], "order_id": "<order>", "placed_at": "<time>"}
    journey = []
    for event in OrderEvent.objects.filter(order=order).order_by("seq"):
        snapshot = event.snapshot
        snapshot["db"].update(id="<order>", updated_at="<time>")
        for row in snapshot["db"]["rows"]:
            if row["table"] == OutboxMessage._meta.db_table:
                assert row["id"] == str(outbox.id)
                row["id"] = "<outbox>"
        if "outbox_id" in snapshot["queue"]:
            snapshot["queue"]["outbox_id"] = "<outbox>"
        if "key" in snapshot["cache"]:
            snapshot["cache"]["key"] = same_ids(snapshot["cache"]["key"])
        journey.append({"seq": event.seq, "kind": event.kind, "message": same_ids(event.message), "snapshot": snapshot})
    return {"order": stored, "lines": lines, "outbox": message, "events": journey}


@pytest.mark.parametrize("name", sorted(JOURNEYS))
def test_the_fast_and_the_readable_path_leave_identical_rows(name):
    ProductFactory(sku="BOOK-001", price="12.50", stock=10)
    ProductFactory(sku="MUG-002", price="22.00", stock=10)
    ProductFactory(sku="PEN-003", price="1.25", stock=10)
    fast = services.order_create(customer_email="ada@example.com", items=ITEMS, note="gift")
    readable = reference.order_create_reference(customer_email="ada@example.com", items=ITEMS, note="gift")
    walk(fast.pk, JOURNEYS[name], readable=False)
    walk(readable.pk, JOURNEYS[name], readable=True)

    fast_rows, readable_rows = rows(fast), rows(readable)
    assert fast_rows == readable_rows
    # Not vacuous: every journey step left its event, and the lines are in request order with their own prices.
    assert len(fast_rows["events"]) == 1 + len(JOURNEYS[name])
    # The accepted event's db part holds the outbox row as it was written (its id filled in by the statement).
    assert fast_rows["events"][0]["snapshot"]["db"]["rows"] == [
        {
            "table": OutboxMessage._meta.db_table,
            "id": "<outbox>",
            "fields": {
                "message_type": "order.placed",
                "routing_key": "order.placed",
                "sent_at": None,
                "publish_attempts": 0,
                "last_error": "",
            },
        }
    ]
    if name == "completed":
        reserved, done = fast_rows["events"][4]["snapshot"]["db"], fast_rows["events"][5]["snapshot"]["db"]
        assert reserved["rows"] == [events.product_row(1, "BOOK-001", 7, -3)]
        assert done["completed_at"] == DONE_AT.isoformat() and done["result"]["charged"] == "62.00"
    assert [(line["sku"], line["quantity"], line["unit_price"]) for line in fast_rows["lines"]] == [
        ("MUG-002", 1, Decimal("22.00")),
        ("BOOK-001", 3, Decimal("12.50")),
        ("PEN-003", 2, Decimal("1.25")),
    ]


def test_both_paths_return_the_order_with_its_lines_in_request_order_and_their_own_ids(product):
    ProductFactory(sku="MUG-002", price="22.00", stock=10)
    ProductFactory(sku="PEN-003", price="1.25", stock=10)
    for create in (services.order_create, reference.order_create_reference):
        order = create(customer_email="bo@example.com", items=ITEMS)
        returned = [(line.id, line.sku, line.quantity) for line in order.lines.all()]
        assert [(sku, quantity) for _, sku, quantity in returned] == [(i["sku"], i["quantity"]) for i in ITEMS]
        stored = set(OrderLine.objects.filter(order=order).values_list("id", "sku", "quantity"))
        assert set(returned) == stored
