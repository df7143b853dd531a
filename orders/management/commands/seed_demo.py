from __future__ import annotations

from decimal import Decimal

from django.core.management.base import BaseCommand

from orders.models import Product

DEMO_CATALOG = [
    ("BOOK-001", "The Pragmatic Queue", Decimal("25.00"), 1000),
    ("MUG-002", "Durable Mug", Decimal("9.50"), 1000),
    ("TEE-003", "At-Least-Once T-shirt", Decimal("18.00"), 500),
    ("SOCK-004", "Idempotent Socks (pair)", Decimal("6.25"), 2000),
    ("LAMP-005", "Heartbeat Lamp", Decimal("42.00"), 50),
    ("RARE-006", "Last One Standing", Decimal("99.00"), 1),
]


class Command(BaseCommand):
    help = "Create the demo catalog. Idempotent: existing products keep their stock unless --reset-stock."

    def add_arguments(self, parser) -> None:
        parser.add_argument("--reset-stock", action="store_true", help="put every demo product back to its stock")

    def handle(self, *args, **options) -> None:
        created = 0
        for sku, name, price, stock in DEMO_CATALOG:
            product, was_created = Product.objects.get_or_create(
                sku=sku, defaults={"name": name, "price": price, "stock": stock}
            )
            created += was_created
            if options["reset_stock"] and not was_created:
                product.stock = stock
                product.save(update_fields=["stock"])
        self.stdout.write(f"demo catalog: {created} created, {len(DEMO_CATALOG) - created} already present")
