from __future__ import annotations

import uuid

from django.core.management.base import BaseCommand, CommandError

from orders.models import Order
from worker.replay import replay_dead_letters


class Command(BaseCommand):
    help = "Replay dead-lettered orders: one with --order ID, or every one with --all."

    def add_arguments(self, parser) -> None:
        group = parser.add_mutually_exclusive_group(required=True)
        group.add_argument("--order", help="the id of one dead-lettered order")
        group.add_argument("--all", action="store_true", help="every dead-lettered order")

    def handle(self, *args, **options) -> None:
        order_id = None
        if options["order"]:
            try:
                order_id = uuid.UUID(options["order"])
            except ValueError:
                raise CommandError(f"{options['order']!r} is not an order id") from None
            order = Order.objects.filter(pk=order_id).first()
            if order is None:
                raise CommandError(f"no order {order_id}")
            if order.status != "dead_lettered":
                raise CommandError(f"order {order_id} is {order.status}, not dead_lettered")
        count = replay_dead_letters(order_id, via="command")
        self.stdout.write(f"replayed {count} order(s)")
