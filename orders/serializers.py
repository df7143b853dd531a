"""Wire formats. The order's public representation is shared by the API and the worker's cache writes, so that
a cache HIT and a MISS return the same bytes."""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from typing import Any

from django.conf import settings
from django.core.exceptions import ValidationError as DjangoValidationError
from django.core.validators import EmailValidator
from django.utils import timezone
from drf_spectacular.utils import OpenApiExample, extend_schema_serializer
from rest_framework import serializers

from orders import catalog
from orders.models import Order, OrderEvent, OrderLine, OrderStatus, Product

MAX_LINES = 50
# Units of one product per line, and in all per order (settings ORDERPIPE_MAX_LINE_QUANTITY, _ORDER_QUANTITY): with a
# sku at most once per order, one anonymous order cannot take more than these from the stock.
MAX_QUANTITY = settings.ORDER_MAX_LINE_QUANTITY


# DRF's fields convert what they can: 0 and "on" to booleans, 5 to "5", "5" to 5. The schema says boolean, string,
# integer, number; these take the JSON type it says and nothing else, so a client's mistake is a 400, not a guess (a
# switch that turns a guarantee off must not flip on a number a client meant as something else).


class StrictBooleanField(serializers.BooleanField):
    default_error_messages = {"invalid": "Must be a JSON boolean (true or false)."}

    def to_internal_value(self, data: object) -> bool:
        if type(data) is not bool:
            self.fail("invalid")
        return data


class StrictCharField(serializers.CharField):
    default_error_messages = {"invalid": "Must be a JSON string."}

    def to_internal_value(self, data: object) -> str:
        if type(data) is not str:
            self.fail("invalid")
        return super().to_internal_value(data)


class StrictIntegerField(serializers.IntegerField):
    default_error_messages = {"invalid": "Must be a JSON integer."}

    def to_internal_value(self, data: object) -> int:
        if type(data) is not int:
            self.fail("invalid")
        return super().to_internal_value(data)


class StrictFloatField(serializers.FloatField):
    default_error_messages = {"invalid": "Must be a JSON number."}

    def to_internal_value(self, data: object) -> float:
        if not isinstance(data, (int, float)) or isinstance(data, bool):
            self.fail("invalid")
        return super().to_internal_value(data)


class StrictEmailField(serializers.EmailField):
    default_error_messages = {"invalid": "Enter a valid email address."}

    def to_internal_value(self, data: object) -> str:
        if type(data) is not str:
            self.fail("invalid")
        return super().to_internal_value(data)


class OrderItemInputSerializer(serializers.Serializer):
    sku = StrictCharField(max_length=64)
    quantity = StrictIntegerField(min_value=1, max_value=MAX_QUANTITY)


def _demo_order_example() -> OpenApiExample:
    """Swagger's "Try it out" body: products of the demo catalog (`manage.py seed_demo`, which `make run` runs), so
    it is accepted (202) as it stands instead of being refused for `"sku": "string"`."""
    from orders.management.commands.seed_demo import DEMO_CATALOG

    (first_sku, *_), (second_sku, *_) = DEMO_CATALOG[:2]
    return OpenApiExample(
        "Two products of the demo catalog",
        value={
            "customer_email": "ada@example.com",
            "items": [{"sku": first_sku, "quantity": 1}, {"sku": second_sku, "quantity": 2}],
            "note": "placed from Swagger",
        },
        request_only=True,
    )


@extend_schema_serializer(examples=[_demo_order_example()])
class OrderInputSerializer(serializers.Serializer):
    customer_email = StrictEmailField(max_length=254)
    # many=True hands max_length on to the ListSerializer it builds, which the stubs do not declare.
    items = OrderItemInputSerializer(many=True, allow_empty=False, max_length=MAX_LINES)  # type: ignore[call-arg]
    note = StrictCharField(max_length=500, required=False, allow_blank=True, default="")

    def validate_items(self, items: list[dict[str, Any]]) -> list[dict[str, Any]]:
        skus = [item["sku"] for item in items]
        duplicates = sorted({sku for sku in skus if skus.count(sku) > 1})
        if duplicates:
            raise serializers.ValidationError(f"Each sku may appear once; repeated: {', '.join(duplicates)}.")
        total, limit = sum(item["quantity"] for item in items), settings.ORDER_MAX_QUANTITY
        if total > limit:
            raise serializers.ValidationError(f"An order holds at most {limit} units in all; this one holds {total}.")
        # Kept for pricing (order_create(products=...)), so the catalog is read once per order; from this process's
        # copy of it while it has not changed (orders/catalog.py).
        self.products = catalog.catalog_read(skus)
        unknown = [sku for sku in skus if sku not in self.products]
        if unknown:
            raise serializers.ValidationError(f"Unknown sku: {', '.join(unknown)}.")
        return items


def _plain_text(value: object, max_length: int) -> bool:
    """A string DRF's CharField would keep exactly as it is: no surrounding whitespace to trim, within its length,
    and printable ASCII (so no null or surrogate characters, which DRF refuses with their own messages)."""
    return (
        type(value) is str
        and len(value) <= max_length
        and value.isascii()
        and value.isprintable()
        and value == value.strip()
    )


_validate_email = EmailValidator()


def order_input_fast(data: object) -> dict[str, Any] | None:
    """`OrderInputSerializer(data=data).validated_data` for a plainly valid body, without building DRF's fields for
    every request (each request deep-copies every field of a DRF serializer); None for anything else,
    even what DRF would accept after converting it ("5" as a quantity, a padded email, an extra key, a non-ASCII
    note), which the serializer then validates. Errors are therefore always DRF's own words.
    orders/tests/test_serializers.py holds the two equal on generated bodies."""
    if type(data) is not dict or not data.keys() <= {"customer_email", "items", "note"}:
        return None
    email, items, note = data.get("customer_email"), data.get("items"), data.get("note", "")
    if not (_plain_text(email, 254) and email and _plain_text(note, 500)):
        return None
    if type(items) is not list or not 1 <= len(items) <= MAX_LINES:
        return None
    lines = []
    for item in items:
        line = _plain_line(item)
        if line is None:
            return None
        lines.append(line)
    if sum(line["quantity"] for line in lines) > settings.ORDER_MAX_QUANTITY or not _valid_email(email):
        return None
    return {"customer_email": email, "items": lines, "note": note}


def _plain_line(item: object) -> dict[str, Any] | None:
    """A line of `order_input_fast`'s body as validated, if it is plainly valid; else None."""
    if type(item) is not dict or item.keys() != {"sku", "quantity"}:
        return None
    sku, quantity = item["sku"], item["quantity"]
    if not (_plain_text(sku, 64) and sku) or type(quantity) is not int or not 1 <= quantity <= MAX_QUANTITY:
        return None
    return {"sku": sku, "quantity": quantity}


def _valid_email(email: str) -> bool:
    try:
        _validate_email(email)
    except DjangoValidationError:
        return False
    return True


def order_input(data: object) -> tuple[dict[str, Any], dict[str, Product]]:
    """Validate an order's body: (validated data, the catalog's products by sku). Raises DRF's ValidationError.

    `order_input_fast` when the body is plainly valid and its skus are distinct and known; else, the reference,
    `OrderInputSerializer`, which also words every error."""
    fast = order_input_fast(data)
    if fast is not None:
        skus = [item["sku"] for item in fast["items"]]
        products = catalog.catalog_read(skus)
        if len(products) == len(skus):  # every sku known, none repeated
            return fast, products
    serializer = OrderInputSerializer(data=data)
    serializer.is_valid(raise_exception=True)
    return dict(serializer.validated_data), serializer.products


class OrderLineSerializer(serializers.ModelSerializer):
    line_total = serializers.DecimalField(max_digits=12, decimal_places=2, read_only=True)

    class Meta:
        model = OrderLine
        fields = ["sku", "quantity", "unit_price", "line_total"]


class OrderSerializer(serializers.ModelSerializer):
    items = OrderLineSerializer(source="lines", many=True, read_only=True)

    class Meta:
        model = Order
        fields = [
            "id",
            "status",
            "step",
            "customer_email",
            "items",
            "total",
            "note",
            "failure_reason",
            "attempts",
            "version",
            "created_at",
            "updated_at",
            "completed_at",
            "result",
        ]
        read_only_fields = fields

    def to_representation(self, instance: Order) -> dict[str, Any]:
        data = super().to_representation(instance)
        if instance.status != OrderStatus.COMPLETED:
            data["result"] = None
        return data


CENTS = Decimal("0.01")


def _money(value: Decimal) -> str:
    return f"{Decimal(value).quantize(CENTS):f}"


def _when(value: datetime | None) -> str | None:
    # As DRF's DateTimeField renders it: ISO 8601 in the current time zone (UTC), "+00:00" written "Z".
    if not value:
        return None
    text = timezone.localtime(value).isoformat()
    return text[:-6] + "Z" if text.endswith("+00:00") else text


def order_representation(order: Order) -> dict[str, Any]:
    """The order as the API shows it, as plain JSON-ready data (the value stored in Redis). The order's lines must
    be prefetched.

    The same data as `OrderSerializer(order).data` (a test holds them equal), built directly: the API builds it
    once per accepted order and the relay and worker once per transition, where DRF's field-by-field serializer
    would cost a field object per field."""
    completed = order.status == OrderStatus.COMPLETED
    return {
        "id": str(order.id),
        "status": str(order.status),
        "step": str(order.step),
        "customer_email": order.customer_email,
        "items": [
            {
                "sku": line.sku,
                "quantity": line.quantity,
                "unit_price": _money(line.unit_price),
                "line_total": _money(line.line_total),
            }
            for line in order.lines.all()
        ],
        "total": _money(order.total),
        "note": order.note,
        "failure_reason": order.failure_reason,
        "attempts": order.attempts,
        "version": order.version,
        "created_at": _when(order.created_at),
        "updated_at": _when(order.updated_at),
        "completed_at": _when(order.completed_at),
        "result": order.result if completed else None,
    }


class OrderEventSerializer(serializers.ModelSerializer):
    class Meta:
        model = OrderEvent
        fields = ["seq", "kind", "at", "message", "snapshot"]


class ProductSerializer(serializers.ModelSerializer):
    class Meta:
        model = Product
        fields = ["sku", "name", "price", "stock"]
