from __future__ import annotations

import logging
import signal
import threading

from django.core.management.base import BaseCommand

from worker.relay import run_relay


class Command(BaseCommand):
    help = "Publish committed outbox messages to RabbitMQ with publisher confirms (Ctrl-C or SIGTERM stops it)."

    def add_arguments(self, parser) -> None:
        parser.add_argument("--poll-interval", type=float, default=None, help="seconds between polls when idle")

    def handle(self, *args, **options) -> None:
        stop = threading.Event()
        # SIGTERM only sets a flag: the batch in hand is finished and committed before the loop ends.
        signal.signal(signal.SIGTERM, lambda *_: stop.set())
        signal.signal(signal.SIGINT, lambda *_: stop.set())
        log = logging.getLogger(__name__)
        log.info("relay starting")
        run_relay(stop.is_set, poll_interval=options["poll_interval"])
        log.info("relay stopped")
