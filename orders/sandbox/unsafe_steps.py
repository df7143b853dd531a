"""The sandbox's unsafe ways to run the steps, which orders/sandbox/policies.py swaps into `orders.steps.SAFE_STEPS`
when their mode is on: step_guards=off (`UNGUARDED`) and stock_update=read_modify_write (`read_modify_write_stock`).
"""

from __future__ import annotations

import time
from typing import Any

from django.db import connection
from psycopg import sql

from orders import gateway
from orders.events import notification_row, payment_row
from orders.models import Notification, Order, OrderStatus, Payment, Product
from orders.steps import Done, Seams, Step, charged


def processing_at_any_step(order: Order, step: Step) -> bool:
    """The unsafe step_guards=off check: any step may run while the order is processing, done before or not."""
    return order.status == OrderStatus.PROCESSING


def charge_without_its_key(order: Order, seams: Seams) -> str:
    """step_guards=off: the gateway is called without an idempotency key, so every call is a new charge."""
    return gateway.charge_without_key(order, seams.faults)


def keep_first_payment(order: Order, reference: str) -> Done:
    """step_guards=off: a repeated step charged the gateway again (a new reference in its ledger), but the one-payment
    constraint stays: our books keep the first payment and the repeat records nothing, so it does not crash on the
    unique key. The double charge shows where a real one would: at the provider."""
    payment, created = Payment.objects.get_or_create(
        order=order, defaults={"amount": order.total, "gateway_reference": reference}
    )
    if not created:
        return Done(
            message=f"Charged {order.total} AGAIN (gateway reference {reference}); step guards are off. Our "
            f"books keep the first payment ({payment.gateway_reference}).",
            rows=[payment_row(payment)],
        )
    return charged(order, payment)


def keep_first_notification(order: Order, subject: str, body: str) -> Done:
    """step_guards=off: the email went out again; the one-notification row is kept, like the payment."""
    notification, _ = Notification.objects.get_or_create(
        order=order, defaults={"recipient": order.customer_email, "subject": subject, "body": body}
    )
    return Done(message=f"Emailed {order.customer_email}: “{subject}”.", rows=[notification_row(notification)])


# What step_guards=off swaps: no guard, no idempotency key, and records that tolerate a repeat.
UNGUARDED: dict[str, Any] = {
    "at": processing_at_any_step,
    "charge": charge_without_its_key,
    "record_payment": keep_first_payment,
    "record_notification": keep_first_notification,
}

# How long the naive code of stock_update=read_modify_write works between its read and its write (a real application
# validates, logs, asks another service): the window in which another worker reads the same stock.
READ_MODIFY_WRITE_GAP = 0.05
_READ_STOCK = (
    sql.SQL("SELECT stock FROM {} WHERE id = %(id)s").format(sql.Identifier(Product._meta.db_table)).as_string()
)
_WRITE_STOCK = (
    sql.SQL("UPDATE {} SET stock = %(stock)s WHERE id = %(id)s")
    .format(sql.Identifier(Product._meta.db_table))
    .as_string()
)


def read_modify_write_stock(product_id: int, change: int) -> int | None:
    """The sandbox's unsafe stock_update=read_modify_write, as naive code takes stock: read the stock (no row lock),
    compute the new value in Python, write it back. Two workers that read the same stock both write `stock - 1`: one
    reservation is lost, and more units are sold than existed. Returns the stock it wrote, or None when the value it
    read was not enough."""
    with connection.cursor() as cursor:
        cursor.execute(_READ_STOCK, {"id": product_id})
        row = cursor.fetchone()
        if row is None or row[0] + change < 0:
            return None
        left = row[0] + change
        time.sleep(READ_MODIFY_WRITE_GAP)
        cursor.execute(_WRITE_STOCK, {"stock": left, "id": product_id})
    return left
