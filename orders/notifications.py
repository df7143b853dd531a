"""The email sender seam: the order confirmation, sent through Django's mail backend.

Swap it by passing another `Notifier` to the worker's Processor (tests and lessons do).
"""

from __future__ import annotations

from collections.abc import Callable

from django.conf import settings
from django.core.mail import send_mail

from orders.models import Order

# What the notify step calls: the order -> the (subject, body) it sent.
Notifier = Callable[[Order], tuple[str, str]]


def send_confirmation(order: Order) -> tuple[str, str]:
    subject = f"Your order {str(order.id)[:8]} is confirmed"
    lines = "\n".join(f"  {line.quantity} x {line.sku} at {line.unit_price}" for line in order.lines.all())
    body = f"Thank you for your order.\n\n{lines}\n\nTotal charged: {order.total}\n"
    send_mail(subject, body, settings.DEFAULT_FROM_EMAIL, [order.customer_email])
    return subject, body
