"""Wire formats. The order's public representation is shared by the API and the worker's cache writes, so that
a cache HIT and a MISS return the same bytes."""

from __future__ import annotations

from typing import Any

from rest_framework import serializers

from orders.models import Order, OrderEvent, OrderLine, OrderStatus, Product

MAX_LINES = 50
MAX_QUANTITY = 100


class OrderItemInputSerializer(serializers.Serializer):
    sku = serializers.CharField(max_length=64)
    quantity = serializers.IntegerField(min_value=1, max_value=MAX_QUANTITY)


class OrderInputSerializer(serializers.Serializer):
    customer_email = serializers.EmailField(max_length=254)
    items = OrderItemInputSerializer(many=True, allow_empty=False, max_length=MAX_LINES)
    note = serializers.CharField(max_length=500, required=False, allow_blank=True, default="")

    def validate_items(self, items: list[dict[str, Any]]) -> list[dict[str, Any]]:
        skus = [item["sku"] for item in items]
        duplicates = sorted({sku for sku in skus if skus.count(sku) > 1})
        if duplicates:
            raise serializers.ValidationError(f"Each sku may appear once; repeated: {', '.join(duplicates)}.")
        known = set(Product.objects.filter(sku__in=skus).values_list("sku", flat=True))
        unknown = [sku for sku in skus if sku not in known]
        if unknown:
            raise serializers.ValidationError(f"Unknown sku: {', '.join(unknown)}.")
        return items


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


def order_representation(order: Order) -> dict[str, Any]:
    """The order as the API shows it, as plain JSON-ready data (the value stored in Redis)."""
    return dict(OrderSerializer(order).data)


class OrderEventSerializer(serializers.ModelSerializer):
    class Meta:
        model = OrderEvent
        fields = ["seq", "kind", "at", "message", "snapshot"]


class ProductSerializer(serializers.ModelSerializer):
    class Meta:
        model = Product
        fields = ["sku", "name", "price", "stock"]
