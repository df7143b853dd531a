"""Requests to `make run`'s supervisor (kill or stop a process, cut or restore a service link), filed by staff from
the dashboard or by a lesson, and what the page needs to know to offer them.

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
UNAVAILABLE = "needs make run's supervisor (manage.py supervise); not running here"


class SupervisorUnavailable(Exception):
    """No supervisor runs (or it runs without the links asked for): a request would never be carried out."""


class InvalidRequest(ValueError):
    """The target does not exist or the action does not apply to it; the message says what would."""


class LinkState(TypedDict):
    name: str
    cut: bool
    cut_at: str | None
    restore_at: str | None


class SupervisorState(TypedDict):
    available: bool
    reason: str
    processes: list[str]  # what may be killed or stopped
    links: list[LinkState]


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
    processes = [p.name for p in _fresh_processes() if p.role in KILLABLE_ROLES]
    links = _fresh_links()
    available = bool(processes)
    return {
        "available": available,
        "reason": "" if available else UNAVAILABLE,
        "processes": processes,
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
