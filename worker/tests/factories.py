"""factory-boy factories for the telemetry rows the worker side writes (worker/models.py): tests build them to put
the dashboard, the sweeper, the applied check and the lessons in a given state without running the processes."""

from __future__ import annotations

import factory
from django.utils import timezone

from orders.tests.factories import ModelFactory
from worker.models import QueueStat, ServiceLink, SupervisedProcess, WorkerHeartbeat


class WorkerHeartbeatFactory(ModelFactory[WorkerHeartbeat]):
    """A worker that has just reported itself (`last_seen` now: live)."""

    class Meta:
        model = WorkerHeartbeat

    name = factory.Sequence(lambda n: f"worker-{n}")
    hostname = "test-host"
    pid = factory.Sequence(lambda n: 10_000 + n)
    started_at = factory.LazyFunction(timezone.now)
    last_seen = factory.SelfAttribute("started_at")


class SupervisedProcessFactory(ModelFactory[SupervisedProcess]):
    """A worker that `make run`'s supervisor runs (`updated_at` is set on save: fresh)."""

    class Meta:
        model = SupervisedProcess

    name = factory.Sequence(lambda n: f"worker-{n}")
    role = "worker"
    pid = factory.Sequence(lambda n: 20_000 + n)
    state = SupervisedProcess.State.RUNNING


class ServiceLinkFactory(ModelFactory[ServiceLink]):
    """A supervisor's link to a service, up and just refreshed."""

    class Meta:
        model = ServiceLink

    name = "postgresql"
    target = "127.0.0.1:1"
    proxy_ports = "2"
    updated_at = factory.LazyFunction(timezone.now)


class QueueStatFactory(ModelFactory[QueueStat]):
    """A queue depth just observed, on the main queue unless told."""

    class Meta:
        model = QueueStat

    name = factory.Sequence(lambda n: f"test.queue-{n}")
    role = "main"
    observed_at = factory.LazyFunction(timezone.now)
