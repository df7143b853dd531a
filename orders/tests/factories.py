"""factory-boy factories for the rows tests build: products, users, and an order's rows for tests that need a row
in a given shape rather than an order placed through `services.order_create` (which the pipeline tests use)."""

from __future__ import annotations

from decimal import Decimal
from typing import TYPE_CHECKING, Any, TypeVar

import factory
from django.contrib.auth.models import User

from orders.models import EventKind, GatewayCharge, Order, OrderEvent, OutboxMessage, Payment, Product

T = TypeVar("T")


class ModelFactory(factory.django.DjangoModelFactory[T]):
    """A DjangoModelFactory that mypy sees return the model it creates (factory-boy's metaclass call is untyped)."""

    class Meta:
        abstract = True

    if TYPE_CHECKING:

        def __new__(cls, *args: Any, **kwargs: Any) -> T: ...


class ProductFactory(ModelFactory[Product]):
    class Meta:
        model = Product

    sku = factory.Sequence(lambda n: f"SKU-{n:05d}")
    name = factory.Faker("sentence", nb_words=3)
    price = Decimal("10.00")
    stock = 100


class UserFactory(ModelFactory[User]):
    """A customer account. No usable password unless one is given (`password="..."`, hashed like `create_user`):
    most tests log in with `force_login`."""

    class Meta:
        model = User

    username = factory.Sequence(lambda n: f"user-{n}")
    password = factory.django.Password(None)
    is_staff = False
    is_superuser = False


class StaffFactory(UserFactory):
    """A staff account: the operators of the dashboard, the controls and the sandbox."""

    username = factory.Sequence(lambda n: f"staff-{n}")
    is_staff = True


class AdminFactory(StaffFactory):
    """A superuser: the admin's delete and change pages."""

    username = factory.Sequence(lambda n: f"admin-{n}")
    is_superuser = True


class OrderFactory(ModelFactory[Order]):
    """A bare order row (no lines, no outbox message, no events): `services.order_create` places a real one."""

    class Meta:
        model = Order

    customer_email = factory.Sequence(lambda n: f"customer-{n}@example.com")
    total = Decimal("10.00")


class OutboxMessageFactory(ModelFactory[OutboxMessage]):
    class Meta:
        model = OutboxMessage

    order = factory.SubFactory(OrderFactory)
    payload = factory.LazyFunction(dict)


class OrderEventFactory(ModelFactory[OrderEvent]):
    class Meta:
        model = OrderEvent

    order = factory.SubFactory(OrderFactory)
    seq = factory.Sequence(lambda n: 1000 + n)  # past the events the order's own journey numbers
    kind = EventKind.CONTROL
    message = factory.LazyAttribute(lambda event: EventKind(event.kind).label)


class PaymentFactory(ModelFactory[Payment]):
    """Our record of a charge: one per order (its one-to-one key)."""

    class Meta:
        model = Payment

    order = factory.SubFactory(OrderFactory)
    amount = factory.SelfAttribute("order.total")
    gateway_reference = factory.Sequence(lambda n: f"ref-{n}")


class GatewayChargeFactory(ModelFactory[GatewayCharge]):
    """A charge in the simulated provider's ledger, for `order` (not a field: the ledger keeps only its reference)."""

    class Meta:
        model = GatewayCharge
        exclude = ("order",)

    order = factory.SubFactory(OrderFactory)
    order_ref = factory.LazyAttribute(lambda charge: str(charge.order.pk))
    amount = factory.SelfAttribute("order.total")
    reference = factory.Sequence(lambda n: f"sim-{n}")
