from __future__ import annotations

from decimal import Decimal

import factory

from orders.models import Product


class ProductFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = Product

    sku = factory.Sequence(lambda n: f"SKU-{n:05d}")
    name = factory.Faker("sentence", nb_words=3)
    price = Decimal("10.00")
    stock = 100
