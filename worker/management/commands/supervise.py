from __future__ import annotations

import logging
import signal
import sys

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError

from worker.links import Links
from worker.queue_policy import QueuePolicy
from worker.rabbitmq_nodes import ClusterNodes
from worker.supervision import POSTGRES_CUT_SECONDS
from worker.supervisor import Supervisor
from worker.topology import topology

ROLES = ("web", "ws", "relay", "worker")


def rabbitmqctl(cluster: ClusterNodes | None):
    """The rabbitmqctl command line for the queue policy: the machine's (RABBITMQCTL), or, with `make cluster`,
    bin/rabbitmq-cluster's `ctl` on the first node that is up (a policy belongs to the whole cluster)."""
    if cluster is None:
        return lambda: [settings.RABBITMQCTL]

    def on_a_node_that_is_up() -> list[str]:
        up = [node.number for node in cluster.nodes() if node.pid] or list(cluster.numbers)
        return [str(cluster.script), "ctl", str(up[0])]

    return on_a_node_that_is_up


class Command(BaseCommand):
    help = (
        "Run web (gunicorn), ws (daphne), relay and workers, restarting any that dies (with backoff) and following "
        "the sandbox's worker count and concurrency. What `make run` runs; Ctrl-C or SIGTERM stops everything."
    )

    def add_arguments(self, parser) -> None:
        parser.add_argument("--bind", default="127.0.0.1", help="address web and ws listen on (default 127.0.0.1)")
        parser.add_argument("--port", type=int, default=8000, help="HTTP port (gunicorn); daphne listens on PORT+1")
        parser.add_argument(
            "--only", default=",".join(ROLES), help=f"comma-separated roles to run (default: {','.join(ROLES)})"
        )
        parser.add_argument(
            "--workers", type=int, default=1, help="worker processes when the sandbox is off (ORDERPIPE_SANDBOX=false)"
        )
        parser.add_argument(
            "--concurrency",
            type=int,
            default=None,
            help="threads per worker when the sandbox is off (default WORKER_CONCURRENCY)",
        )

        parser.add_argument(
            "--no-proxies",
            action="store_true",
            help="connect the processes to PostgreSQL, RabbitMQ and Redis directly, without the proxies the "
            "dashboard's outage controls cut (they are never used with ORDERPIPE_SANDBOX=false)",
        )
        parser.add_argument(
            "--postgres-cut-seconds",
            type=float,
            default=POSTGRES_CUT_SECONDS,
            help=f"how long a cut of PostgreSQL from the page lasts before it restores itself (default "
            f"{POSTGRES_CUT_SECONDS}; tests shorten it)",
        )

    def handle(
        self,
        *args,
        bind: str,
        port: int,
        only: str,
        workers: int,
        concurrency: int | None,
        no_proxies: bool,
        postgres_cut_seconds: float,
        **options,
    ) -> None:
        roles = tuple(role.strip() for role in only.split(",") if role.strip())
        unknown = sorted(set(roles) - set(ROLES))
        if unknown or not roles:
            raise CommandError(f"--only takes roles from {', '.join(ROLES)}; got {only!r}")
        supervisor = Supervisor(
            python=sys.executable,
            bind=bind,
            port=port,
            roles=roles,
            workers=workers,
            concurrency=concurrency or settings.WORKER_CONCURRENCY,
            # The outage controls exist in the sandbox only; elsewhere the processes connect directly.
            links=Links(postgres_cut_seconds=postgres_cut_seconds)
            if settings.ORDERPIPE_SANDBOX and not no_proxies
            else None,
        )
        if settings.ORDERPIPE_SANDBOX:  # with an AMQP_URL naming `make cluster`'s nodes, the page may kill them
            supervisor.cluster = ClusterNodes.find(settings.AMQP_URLS, env=supervisor.env)
        if settings.ORDERPIPE_SANDBOX:  # the full-queue lesson's length limit on the main queue
            supervisor.queue_policy = QueuePolicy(topology(), ctl=rabbitmqctl(supervisor.cluster), env=supervisor.env)
        if supervisor.cluster is not None:
            logging.getLogger(__name__).info(
                "supervisor: RabbitMQ nodes %s can be killed and restarted from the page",
                ", ".join(f"rabbitmq-{n}" for n in supervisor.cluster.numbers),
            )
        stopping = False

        def stop(signum, frame) -> None:
            nonlocal stopping
            stopping = True

        signal.signal(signal.SIGTERM, stop)
        signal.signal(signal.SIGINT, stop)
        log = logging.getLogger(__name__)
        log.info("supervisor: running %s", ", ".join(roles))
        supervisor.run(lambda: stopping)
        log.info("supervisor: everything stopped")
