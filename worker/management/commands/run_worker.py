from __future__ import annotations

import logging

from django.core.management.base import BaseCommand

from worker.consumer import Worker


class Command(BaseCommand):
    help = "Consume orders from RabbitMQ and run their processing steps (Ctrl-C or SIGTERM stops it cleanly)."

    def add_arguments(self, parser) -> None:
        parser.add_argument("--prefetch", type=int, default=None, help="unacked messages in hand (WORKER_PREFETCH)")
        parser.add_argument("--concurrency", type=int, default=1, help="orders processed at once (threads)")
        parser.add_argument("--name", default=None, help="name shown on the dashboard (default host:pid)")

    def handle(self, *args, **options) -> None:
        worker = Worker(prefetch=options["prefetch"], concurrency=options["concurrency"], name=options["name"])
        worker.install_signal_handlers()
        logging.getLogger(__name__).info("worker %s starting", worker.name)
        worker.run()
        logging.getLogger(__name__).info("worker %s stopped after %d messages", worker.name, worker.processed)
