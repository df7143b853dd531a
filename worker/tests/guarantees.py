"""What the kill tests count after the dust settles: the promises (never lost, never charged twice, each step once,
stock exact) measured from the database, and a wait that gives up as soon as the pipeline stops moving."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any

from django.db.models import Count, Max, Sum

from orders.models import EventKind, GatewayCharge, Order, OrderEvent, OrderLine, OrderStatus, Payment, Product

TERMINAL = list(OrderStatus.terminal())
# A step done twice for one order would show as a second event of its kind.
ONCE_PER_ORDER = [
    EventKind.INVENTORY_RESERVED,
    EventKind.PAYMENT_CHARGED,
    EventKind.CUSTOMER_NOTIFIED,
    EventKind.COMPLETED,
    EventKind.FAILED,
]


def all_terminal(ids: Sequence) -> bool:
    return Order.objects.filter(pk__in=ids, status__in=TERMINAL).count() == len(ids)


def lost(ids: Sequence) -> int:
    return len(ids) - Order.objects.filter(pk__in=ids, status__in=TERMINAL).count()


def gateway_charged_twice(ids: Sequence) -> int:
    """What the payment provider holds: charges beyond one per order (0 whatever the kills hit)."""
    charges = (
        GatewayCharge.objects.filter(order_ref__in=[str(pk) for pk in ids]).values("order_ref").annotate(n=Count("id"))
    )
    return sum(row["n"] - 1 for row in charges)


def payments_twice(ids: Sequence) -> int:
    per_order = Payment.objects.filter(order_id__in=ids).values("order_id").annotate(n=Count("id"))
    return sum(row["n"] - 1 for row in per_order)


def processed_twice(ids: Sequence) -> int:
    rows = (
        OrderEvent.objects.filter(order_id__in=ids, kind__in=ONCE_PER_ORDER)
        .values("order_id", "kind")
        .annotate(n=Count("id"))
    )
    return sum(row["n"] - 1 for row in rows if row["n"] > 1)


def resent_by_sweeper(ids: Sequence) -> int:
    return OrderEvent.objects.filter(order_id__in=ids, kind=EventKind.RESENT).count()


def stock_errors(ids: Sequence, products: Sequence[Any], initial: int) -> list[str]:
    """The products whose stock is not `initial` less what the completed orders among `ids` bought."""
    completed = Order.objects.filter(pk__in=ids, status=OrderStatus.COMPLETED)
    errors = []
    for product in products:
        sold = OrderLine.objects.filter(product=product, order__in=completed).aggregate(q=Sum("quantity"))["q"] or 0
        stock = Product.objects.get(pk=product.pk).stock
        if stock != initial - sold:
            errors.append(f"{product.sku}: stock {stock}, expected {initial} - {sold} sold")
    return errors


def wait_until_settled(
    ids: Sequence, *, idle: float = 20, timeout: float = 240, tick: Callable[[], None] = lambda: None
) -> bool:
    """Wait until every order of `ids` is terminal. Gives up after `idle` seconds in which no order of `ids`
    recorded an event (its message is gone: lost), or `timeout` seconds in all. `tick` runs on every poll."""
    deadline = time.monotonic() + timeout
    last_event, quiet_since = None, time.monotonic()
    while time.monotonic() < deadline:
        tick()
        if all_terminal(ids):
            return True
        latest = OrderEvent.objects.filter(order_id__in=ids).aggregate(last=Max("id"))["last"]
        if latest != last_event:
            last_event, quiet_since = latest, time.monotonic()
        elif time.monotonic() - quiet_since > idle:
            return False
        time.sleep(0.2)  # the poll's interval
    return all_terminal(ids)
