"""Requests to `make run`'s supervisor (kill or stop a process, cut or restore a service link, kill or restart a
RabbitMQ node), filed by staff from the dashboard or by a lesson, and what the page needs to know to offer them.

Plain functions, so a lesson can call them as well as the view (orderpipe/dashboard/outages.py). They only write a
`SupervisorRequest` row: the supervisor (worker/supervisor.py) polls for pending requests about once a second,
carries them out and records the outcome. Without a running supervisor (Compose, bare `run_worker`s) nothing would
ever carry a request out, so filing one is refused (`SupervisorUnavailable`) rather than left pending forever.
"""

from __future__ import annotations

import time
from datetime import timedelta
from typing import TypedDict

from django.utils import timezone

from worker.models import ServiceLink, SupervisedProcess, SupervisorRequest

Action = SupervisorRequest.Action

# The supervisor refreshes its rows every HEARTBEAT_EVERY seconds; older than FRESH_FOR, it is taken for gone.
HEARTBEAT_EVERY = 2.0
FRESH_FOR = timedelta(seconds=10)
SERVICES = ("postgresql", "rabbitmq", "redis")
# A cut of PostgreSQL restores itself after this long (the default of `supervise --postgres-cut-seconds`): the staff
# session, the page's "Restore" request and the web process that files it all need the database, so nobody could
# undo that cut from the page. 20 s: long enough to watch the API answer 503 and the workers hold their messages.
POSTGRES_CUT_SECONDS = 20
KILLABLE_ROLES = ("worker", "relay")
NODE_ROLE = "rabbitmq"  # the rows of the cluster's nodes (rabbitmq-1 …), kept by the supervisor
UNAVAILABLE = "needs make run's supervisor (manage.py supervise); not running here"
NO_CLUSTER = (
    "needs a RabbitMQ cluster: start `make cluster` and `make run AMQP_URL=…` (the URL it prints), "
    "or `make run CLUSTER=1`"
)
NODE_ACTIONS = ("kill", "restart")


class SupervisorUnavailable(Exception):
    """No supervisor runs (or it runs without the links asked for): a request would never be carried out."""


class InvalidRequest(ValueError):
    """The target does not exist or the action does not apply to it; the message says what would."""


class LinkState(TypedDict):
    name: str
    cut: bool
    cut_at: str | None
    restore_at: str | None


class NodeState(TypedDict):
    name: str
    state: str  # running, starting, crashed (down)
    pid: int | None
    last_exit: str
    last_exit_at: str | None
    restarts: int


class SupervisorState(TypedDict):
    available: bool
    reason: str
    processes: list[str]  # what may be killed or stopped
    links: list[LinkState]
    nodes: list[NodeState]  # the RabbitMQ cluster's nodes; empty with one broker
    cluster_reason: str  # why the node controls are off ("" when they are on)


def _fresh_processes() -> list[SupervisedProcess]:
    since = timezone.now() - FRESH_FOR
    return list(
        SupervisedProcess.objects.filter(updated_at__gte=since)
        .exclude(state=SupervisedProcess.State.STOPPED)
        .order_by("name")
    )


def _fresh_links() -> list[ServiceLink]:
    return list(ServiceLink.objects.filter(updated_at__gte=timezone.now() - FRESH_FOR).order_by("name"))


def supervisor_state() -> SupervisorState:
    """Whether the kill and cut controls can work here, and on what: shown on the page, checked before filing."""
    fresh = _fresh_processes()
    processes = [p.name for p in fresh if p.role in KILLABLE_ROLES]
    nodes = [p for p in fresh if p.role == NODE_ROLE]
    links = _fresh_links()
    available = bool(processes)
    return {
        "available": available,
        "reason": "" if available else UNAVAILABLE,
        "processes": processes,
        "nodes": [
            {
                "name": node.name,
                "state": node.state,
                "pid": node.pid,
                "last_exit": node.last_exit,
                "last_exit_at": node.last_exit_at.isoformat() if node.last_exit_at else None,
                "restarts": node.restarts,
            }
            for node in nodes
        ],
        "cluster_reason": "" if not available or nodes else NO_CLUSTER,
        "links": [
            {
                "name": link.name,
                "cut": link.cut,
                "cut_at": link.cut_at.isoformat() if link.cut_at else None,
                "restore_at": link.restore_at.isoformat() if link.restore_at else None,
            }
            for link in links
        ],
    }


def _file(action: str, target: str, by: str) -> SupervisorRequest:
    return SupervisorRequest.objects.create(action=action, target=target, requested_by=by)


def request_signal(process: str, *, kill: bool = True, by: str = "") -> SupervisorRequest:
    """Ask the supervisor to SIGKILL (`kill`) or SIGTERM one of its workers or its relay; it restarts it with its
    usual backoff, and the page shows crashed → restarted."""
    fresh = _fresh_processes()
    if not fresh:
        raise SupervisorUnavailable(UNAVAILABLE)
    killable = [p.name for p in fresh if p.role in KILLABLE_ROLES]
    if process not in killable:
        raise InvalidRequest(
            f"No supervised worker or relay named {process!r}; running: {', '.join(killable) or 'none'}."
        )
    return _file(Action.KILL if kill else Action.STOP, process, by)


def request_node(node: str, *, action: str, by: str = "") -> SupervisorRequest:
    """Ask the supervisor to SIGKILL one of the RabbitMQ cluster's nodes (`action="kill"`: the survivors elect new
    queue leaders, clients reconnect to them) or to start a killed one again (`"restart"`: it rejoins and catches
    up). Only when the AMQP_URL the supervisor runs with names the nodes of `make cluster`."""
    if action not in NODE_ACTIONS:
        raise InvalidRequest(f"Unknown action {action!r}; one of: {', '.join(NODE_ACTIONS)}.")
    fresh = _fresh_processes()
    if not fresh:
        raise SupervisorUnavailable(UNAVAILABLE)
    nodes = {p.name: p for p in fresh if p.role == NODE_ROLE}
    if not nodes:
        raise SupervisorUnavailable(NO_CLUSTER)
    row = nodes.get(node)
    if row is None:
        raise InvalidRequest(f"No RabbitMQ node named {node!r}; the cluster has: {', '.join(sorted(nodes))}.")
    if action == "kill" and row.state != SupervisedProcess.State.RUNNING:
        raise InvalidRequest(f"{node} is not running ({row.state}); restart it first.")
    if action == "restart" and row.state != SupervisedProcess.State.CRASHED:
        raise InvalidRequest(f"{node} is {row.state}; only a node that is down can be restarted.")
    return _file(Action.KILL if action == "kill" else Action.RESTART, node, by)


def request_cut(service: str, *, by: str = "") -> SupervisorRequest:
    """Ask the supervisor to cut the link to `service` (postgresql, rabbitmq, redis): open connections are reset, new
    ones refused, for web, relay and workers. PostgreSQL's cut restores itself after POSTGRES_CUT_SECONDS."""
    return _file(Action.CUT, _link(service).name, by)


def request_restore(service: str, *, by: str = "") -> SupervisorRequest:
    """Ask the supervisor to put the link to `service` back."""
    return _file(Action.RESTORE, _link(service).name, by)


def _link(service: str) -> ServiceLink:
    if service not in SERVICES:
        raise InvalidRequest(f"Unknown service {service!r}; one of: {', '.join(SERVICES)}.")
    if not _fresh_processes():
        raise SupervisorUnavailable(UNAVAILABLE)
    link = next((link for link in _fresh_links() if link.name == service), None)
    if link is None:
        raise SupervisorUnavailable(
            f"the supervisor runs without a proxy in front of {service} (started with --no-proxies?)"
        )
    return link


def wait_for(request: SupervisorRequest, *, timeout: float = 10.0) -> SupervisorRequest:
    """Block until the supervisor has carried `request` out (or `timeout` passed); returns the row as it stands.
    For lessons and commands that must see the outcome before going on."""
    deadline = time.monotonic() + timeout
    while True:
        request.refresh_from_db()
        if request.state != SupervisorRequest.State.PENDING or time.monotonic() >= deadline:
            return request
        time.sleep(0.2)
