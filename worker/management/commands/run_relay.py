from __future__ import annotations

import logging
import signal
import threading

from django.conf import settings
from django.core.management.base import BaseCommand

from worker.relay import run_relay
from worker.startup import DEFAULT_STARTUP_TIMEOUT, require_dependencies, serve_metrics


class Command(BaseCommand):
    help = "Publish committed outbox messages to RabbitMQ with publisher confirms (Ctrl-C or SIGTERM stops it)."

    def add_arguments(self, parser) -> None:
        parser.add_argument("--poll-interval", type=float, default=None, help="seconds between polls when idle")
        parser.add_argument(
            "--startup-timeout",
            type=float,
            default=DEFAULT_STARTUP_TIMEOUT,
            help="seconds to wait for PostgreSQL and RabbitMQ before giving up with exit code 1",
        )
        parser.add_argument(
            "--metrics-port", type=int, default=None, help="serve Prometheus metrics on this port (RELAY_METRICS_PORT)"
        )

    def handle(self, *args, **options) -> None:
        # Fail fast and clearly on a misconfigured URL; once running, the loop rides out outages by itself.
        require_dependencies("relay", timeout=options["startup_timeout"])
        serve_metrics(options["metrics_port"] or settings.RELAY_METRICS_PORT)
        stop = threading.Event()
        # SIGTERM only sets a flag: the batch in hand is finished and committed before the loop ends.
        signal.signal(signal.SIGTERM, lambda *_: stop.set())
        signal.signal(signal.SIGINT, lambda *_: stop.set())
        log = logging.getLogger(__name__)
        log.info("relay starting")
        run_relay(stop.is_set, poll_interval=options["poll_interval"])
        log.info("relay stopped")
