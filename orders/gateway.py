"""The payment gateway seam: a simulated external provider with a ledger of its own (`GatewayCharge`). Each call
runs in a transaction of its own, and a call repeated with the same idempotency key (the order id) returns the first
charge (docs/10-design-notes.md, "The payment gateway"). Swap it by passing another `Gateway` to the worker's
Processor (tests and lessons do).
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from decimal import Decimal

from django.db import IntegrityError, transaction

from orders.failures import GatewayDown, GatewayFaults, PaymentDeclined, TransientFailure
from orders.models import GatewayCharge, Order

# What a step calls: the order to charge and the sandbox's faults -> the gateway's reference for the charge.
Gateway = Callable[[Order, GatewayFaults], str]
# The batched steps' call: the orders -> for each, its reference or the exception that answers it.
BatchGateway = Callable[[list[Order], GatewayFaults], list[str | Exception]]
# What a refused call answers while the gateway is down (the lessons find refused calls by it in the journey).
DOWN = "the payment gateway refused 'charge payment': it is down"


def refuse_if_down(faults: GatewayFaults) -> None:
    """A gateway that is down answers every call at once with a refusal (before it sees the request)."""
    if faults.gateway_down():
        raise GatewayDown(DOWN)


def charge(order: Order, faults: GatewayFaults) -> str:
    """Charge the order's total once, whatever happens: the order id is the idempotency key."""
    return charge_with_key(key=str(order.id), order_ref=str(order.id), amount=order.total, faults=faults)


def charge_with_key(*, key: str, order_ref: str, amount: Decimal, faults: GatewayFaults) -> str:
    """The provider's side of an idempotent charge: the stored reference if the key was seen, else a new charge.

    A refusal (down) or a timeout can happen before the provider sees the request, so they come first; a decline is
    only for a new charge (a replayed key answers what the first call answered)."""
    refuse_if_down(faults)
    faults.maybe_fail_transiently("charge payment")
    existing = GatewayCharge.objects.filter(idempotency_key=key).values_list("reference", flat=True).first()
    if existing is not None:
        return existing
    if faults.declined():
        raise PaymentDeclined("payment declined by the (simulated) card issuer")
    try:
        # Two workers racing on one key: the second INSERT waits on the unique index until the first commits, then
        # fails, and reads the charge the first one made.
        with transaction.atomic(durable=True):
            return _insert(key=key, order_ref=order_ref, amount=amount)
    except IntegrityError:
        return GatewayCharge.objects.values_list("reference", flat=True).get(idempotency_key=key)


def charge_many(orders: list[Order], faults: GatewayFaults) -> list[str | Exception]:
    """`charge` for many orders in one call, as a provider's batch endpoint answers: each charge keyed by its order
    id, each answered on its own (its reference, or the timeout or decline that is its answer), the new charges
    written in one transaction of the provider's. Used by the batched steps (orders/batch.py)."""
    answers: dict[str, str | Exception] = {}
    for order in orders:
        try:
            refuse_if_down(faults)
            faults.maybe_fail_transiently("charge payment")
        except TransientFailure as exc:
            answers[str(order.id)] = exc
    asked = [order for order in orders if str(order.id) not in answers]
    for key, reference in GatewayCharge.objects.filter(
        idempotency_key__in=[str(order.id) for order in asked]
    ).values_list("idempotency_key", "reference"):
        answers[str(key)] = reference
    new = []
    for order in asked:
        if str(order.id) in answers:
            continue
        if faults.declined():
            answers[str(order.id)] = PaymentDeclined("payment declined by the (simulated) card issuer")
            continue
        new.append(order)
    try:
        with transaction.atomic(durable=True):
            for charged in GatewayCharge.objects.bulk_create(
                GatewayCharge(
                    idempotency_key=str(order.id), order_ref=str(order.id), amount=order.total, reference=_reference()
                )
                for order in new
            ):
                answers[str(charged.idempotency_key)] = charged.reference
    except IntegrityError:
        # Another worker charged one of them meanwhile (a duplicate delivery): each key on its own, as `charge` does.
        for order in new:
            answers[str(order.id)] = charge_with_key(
                key=str(order.id), order_ref=str(order.id), amount=order.total, faults=_NoMoreFaults()
            )
    return [answers[str(order.id)] for order in orders]


class _NoMoreFaults:
    """The faults were decided for this call already; its retry of a racing key asks none again."""

    def maybe_fail_transiently(self, step: str) -> None:
        pass

    def declined(self) -> bool:
        return False

    def gateway_down(self) -> bool:
        return False


def charge_without_key(order: Order, faults: GatewayFaults) -> str:
    """The unsafe call, kept for the lesson that switches the step guards off: every call is a new charge."""
    refuse_if_down(faults)
    faults.maybe_fail_transiently("charge payment")
    if faults.declined():
        raise PaymentDeclined("payment declined by the (simulated) card issuer")
    with transaction.atomic(durable=True):
        return _insert(key=None, order_ref=str(order.id), amount=order.total)


def _reference() -> str:
    return f"sim_{uuid.uuid4().hex[:20]}"


def _insert(*, key: str | None, order_ref: str, amount: Decimal) -> str:
    reference = _reference()
    GatewayCharge.objects.create(idempotency_key=key, order_ref=order_ref, amount=amount, reference=reference)
    return reference
