from __future__ import annotations

import logging

from django.conf import settings
from django.core.management.base import BaseCommand

from worker.consumer import Worker
from worker.startup import DEFAULT_STARTUP_TIMEOUT, require_dependencies, serve_metrics


class Command(BaseCommand):
    help = "Consume orders from RabbitMQ and run their processing steps (Ctrl-C or SIGTERM stops it cleanly)."

    def add_arguments(self, parser) -> None:
        parser.add_argument("--prefetch", type=int, default=None, help="unacked messages in hand (WORKER_PREFETCH)")
        parser.add_argument(
            "--concurrency", type=int, default=None, help="orders processed at once (threads; WORKER_CONCURRENCY)"
        )
        parser.add_argument("--name", default=None, help="name shown on the dashboard (default host:pid)")
        parser.add_argument(
            "--startup-timeout",
            type=float,
            default=DEFAULT_STARTUP_TIMEOUT,
            help="seconds to wait for PostgreSQL and RabbitMQ before giving up with exit code 1 (Redis is optional)",
        )
        parser.add_argument(
            "--metrics-port", type=int, default=None, help="serve Prometheus metrics on this port (WORKER_METRICS_PORT)"
        )

    def handle(self, *args, **options) -> None:
        # Redis is an accelerator: a worker without it skips cache writes and live events but processes orders.
        require_dependencies("worker", timeout=options["startup_timeout"], redis_optional=True)
        serve_metrics(options["metrics_port"] or settings.WORKER_METRICS_PORT)
        worker = Worker(prefetch=options["prefetch"], concurrency=options["concurrency"], name=options["name"])
        worker.install_signal_handlers()
        logging.getLogger(__name__).info("worker %s starting", worker.name)
        worker.run()
        logging.getLogger(__name__).info("worker %s stopped after %d messages", worker.name, worker.processed)
