"""Telemetry in PostgreSQL: what relays, workers and the supervisor report about themselves, for the dashboard.

Written only by the worker side (worker/monitor.py, consumer.py, relay_monitor.py, supervisor.py); read by the
dashboard and /metrics. The tables keep the names they had under `orders` (`Meta.db_table`): the models moved in
state only (worker/migrations/0001_initial.py, orders/migrations/0007_telemetry_to_worker.py), no data did.
"""

from __future__ import annotations

from django.db import models
from django.db.models import Q


class QueueStat(models.Model):
    """The last observed depth of one RabbitMQ queue, written by relays and workers (which hold AMQP
    connections) so that web requests never open one."""

    name = models.CharField(max_length=200, primary_key=True)
    role = models.CharField(max_length=16)  # main, retry, dead
    position = models.PositiveSmallIntegerField(default=0)
    ready = models.PositiveIntegerField(default=0)
    consumers = models.PositiveIntegerField(default=0)
    observed_at = models.DateTimeField()

    class Meta:
        db_table = "orders_queuestat"
        ordering = ["position", "name"]

    def __str__(self) -> str:
        return f"{self.name}: {self.ready} ready, {self.consumers} consumers"


class WorkerHeartbeat(models.Model):
    """A worker process, as it last reported itself."""

    name = models.CharField(max_length=200, primary_key=True)
    hostname = models.CharField(max_length=200)
    pid = models.PositiveIntegerField()
    current_order = models.UUIDField(null=True, blank=True)
    # The orders whose messages it holds unacked (in a step or waiting for a thread): not lost, says the sweeper.
    holding = models.JSONField(default=list, blank=True)
    processed = models.PositiveIntegerField(default=0)
    unacked = models.PositiveIntegerField(default=0)
    # The sandbox settings it runs (their version, and the start-up arguments the supervisor follows): a change is in
    # effect once every live worker reports it (worker/applied.py).
    settings_version = models.PositiveBigIntegerField(default=0)
    concurrency = models.PositiveSmallIntegerField(null=True, blank=True)
    prefetch = models.PositiveSmallIntegerField(null=True, blank=True)
    started_at = models.DateTimeField()
    last_seen = models.DateTimeField()

    class Meta:
        db_table = "orders_workerheartbeat"

    def __str__(self) -> str:
        return self.name


class RelayHeartbeat(models.Model):
    """An outbox relay process, as it last reported itself (worker/relay_monitor.py, about once a second)."""

    class State(models.TextChoices):
        IDLE = "idle"  # the outbox is empty: waiting for a NOTIFY or the polling interval
        PUBLISHING = "publishing"
        UNREACHABLE = "unreachable"  # the broker is out of reach: backing off before reconnecting
        SWEEPING = "sweeping"  # a sweeper round is under way (worker/sweeper.py)

    name = models.CharField(max_length=200, primary_key=True)
    hostname = models.CharField(max_length=200)
    pid = models.PositiveIntegerField()
    state = models.CharField(max_length=20, choices=State.choices, default=State.IDLE)
    detail = models.CharField(max_length=300, blank=True, default="")  # e.g. the broker error and the backoff
    published = models.PositiveBigIntegerField(default=0, help_text="Outbox rows published since it started.")
    rate = models.FloatField(default=0.0, help_text="Rows published per second over the last few seconds.")
    last_publish_at = models.DateTimeField(null=True, blank=True)
    started_at = models.DateTimeField()
    last_seen = models.DateTimeField()

    class Meta:
        db_table = "orders_relayheartbeat"

    def __str__(self) -> str:
        return self.name


class SupervisedProcess(models.Model):
    """One process that the supervisor of `make run` keeps alive (worker/supervisor.py), as it last reported it.

    A worker's own heartbeat (WorkerHeartbeat) stops when the process dies; this row says what happened to it
    (crashed with which exit status, restarted how often), which only the parent that restarts it can know."""

    class State(models.TextChoices):
        STARTING = "starting"
        RUNNING = "running"
        CRASHED = "crashed"  # exited on its own; restarted after a backoff
        STOPPING = "stopping"
        STOPPED = "stopped"  # stopped on purpose (scaled down, or the supervisor shut down)

    name = models.CharField(max_length=50, primary_key=True)  # web, ws, relay, worker-1, worker-2, ...
    role = models.CharField(max_length=20)
    pid = models.PositiveIntegerField(null=True, blank=True)
    state = models.CharField(max_length=20, choices=State.choices)
    restarts = models.PositiveIntegerField(default=0)
    last_exit = models.CharField(max_length=200, blank=True, default="")
    last_exit_at = models.DateTimeField(null=True, blank=True)
    started_at = models.DateTimeField(null=True, blank=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        db_table = "orders_supervisedprocess"

    def __str__(self) -> str:
        return self.name


class SupervisorRequest(models.Model):
    """A staff member's request to `make run`'s supervisor: kill or stop one of its processes, cut or restore one of
    its links to PostgreSQL, RabbitMQ or Redis (worker/supervision.py files it, worker/supervisor.py carries it out).

    The web process never signals a process or touches a socket itself: it may not be the parent, and the cut links
    may be its own. It writes this row; the supervisor, which polls about once a second, does the work and writes the
    outcome here and in the live feed."""

    class Action(models.TextChoices):
        KILL = "kill", "kill (SIGKILL)"
        STOP = "stop", "stop (SIGTERM)"
        CUT = "cut", "cut"
        RESTORE = "restore", "restore"
        RESTART = "restart", "restart"  # a RabbitMQ node of the cluster, after a kill

    class State(models.TextChoices):
        PENDING = "pending"
        DONE = "done"
        FAILED = "failed"

    action = models.CharField(max_length=20, choices=Action.choices)
    target = models.CharField(max_length=50)  # worker-1, relay; postgresql, rabbitmq, redis; rabbitmq-1 (a node)
    requested_by = models.CharField(max_length=150, blank=True, default="")
    requested_at = models.DateTimeField(auto_now_add=True)
    state = models.CharField(max_length=20, choices=State.choices, default=State.PENDING)
    result = models.CharField(max_length=300, blank=True, default="")
    done_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-requested_at", "-id"]
        indexes = [models.Index(fields=["id"], name="supervisor_request_pending", condition=Q(state="pending"))]

    def __str__(self) -> str:
        return f"{self.action} {self.target} ({self.state})"


class ServiceLink(models.Model):
    """A link from the supervised processes to one service, through a proxy the supervisor owns and can cut
    (worker/links.py). Written by the supervisor only; its `updated_at` is refreshed every few seconds while the
    supervisor runs, so a row that stops moving belongs to a supervisor that is gone."""

    name = models.CharField(max_length=20, primary_key=True)  # postgresql, rabbitmq, redis
    target = models.CharField(max_length=200)  # host:port of the real service
    proxy_ports = models.CharField(max_length=200)  # where the supervised processes connect instead
    cut = models.BooleanField(default=False)
    cut_at = models.DateTimeField(null=True, blank=True)
    restore_at = models.DateTimeField(null=True, blank=True)  # PostgreSQL's cut restores itself
    updated_at = models.DateTimeField()

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return f"{self.name} ({'cut' if self.cut else 'up'})"
