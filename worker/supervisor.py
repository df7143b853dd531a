"""The supervisor of `make run`: keeps web, ws, relay and the workers running on one machine, follows the sandbox's
worker settings, and carries out the dashboard's kill, stop and cut requests. Why it is built this way, and not on
supervisord: docs/10-design-notes.md, "The supervisor of `make run`".
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from django.conf import settings
from django.db import DatabaseError
from django.utils import timezone

from orders import live
from orders.models import SandboxSettings
from orders.sandbox.faults import CRASH_EXIT_CODE
from worker.links import Links
from worker.models import SupervisedProcess, SupervisorRequest
from worker.queue_policy import QueuePolicy, wanted_policy
from worker.rabbitmq_nodes import ClusterNodes, Node
from worker.supervision import HEARTBEAT_EVERY, NODE_ROLE

log = logging.getLogger(__name__)

ROOT = Path(__file__).resolve().parent.parent
State = SupervisedProcess.State

# A process that stayed up this long before dying is restarted at the shortest delay again.
HEALTHY_AFTER = 30.0
BACKOFF_BASE, BACKOFF_CAP = 1.0, 30.0
STOP_TIMEOUT = 15.0  # SIGTERM, then SIGKILL: a worker finishes its orders in hand first
REQUESTS_EVERY = 0.5  # seconds between two looks for pending requests from the page
REQUEST_EXPIRES = 60.0  # a request nobody carried out for this long (no supervisor then) is refused, not done late


def describe_exit(returncode: int) -> str:
    """'exit 70 (sandbox crash)', 'killed by SIGKILL', ... as a learner reads it."""
    if returncode < 0:
        try:
            return f"killed by {signal.Signals(-returncode).name}"
        except ValueError:
            return f"killed by signal {-returncode}"
    if returncode == CRASH_EXIT_CODE:
        return f"exit {returncode} (sandbox crash)"
    return f"exit {returncode}"


def restart_delay(failures: int) -> float:
    """1 s, 2 s, 4 s ... up to 30 s for the n-th crash in a row (failures counts from 1)."""
    return min(BACKOFF_CAP, BACKOFF_BASE * 2 ** max(0, failures - 1))


@dataclass
class Program:
    name: str
    role: str
    argv: list[str]
    proc: subprocess.Popen | None = None
    started_at: float = 0.0
    restarts: int = 0
    failures: int = 0  # crashes in a row, for the backoff
    start_at: float | None = 0.0  # when to (re)start it; None: do not
    retiring: bool = False  # stopped on purpose: its exit is not a crash
    replace_with: list[str] | None = None  # restart with these arguments once it has stopped

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None


@dataclass
class Desired:
    workers: int
    concurrency: int
    prefetch: int | None = None  # None: the worker's own default (WORKER_PREFETCH)
    queue_policy: str = ""  # the main queue's length limit policy (worker/queue_policy.py); "": none


@dataclass
class Supervisor:
    """`tick()` does one round of work: reap, restart, follow the desired state. `run()` loops it until stopped."""

    python: str = sys.executable
    bind: str = "127.0.0.1"
    port: int = 8000
    roles: tuple[str, ...] = ("web", "ws", "relay", "worker")
    workers: int = 1
    concurrency: int = field(default_factory=lambda: settings.WORKER_CONCURRENCY)
    env: dict[str, str] = field(default_factory=lambda: dict(os.environ))
    read_every: float = 1.0
    clock: Callable[[], float] = time.monotonic
    programs: dict[str, Program] = field(default_factory=dict)
    links: Links | None = None  # the cuttable proxies in front of the services; None: direct connections
    cluster: ClusterNodes | None = None  # the RabbitMQ nodes the page may kill and restart; None: one broker
    queue_policy: QueuePolicy | None = None  # sets and clears the main queue's limit (sandbox only)
    _node_states: dict[str, str] = field(default_factory=dict)
    _killed: set[str] = field(default_factory=set)  # nodes killed from the page, until they are seen up again
    _last_read: float = -1e9
    _last_requests: float = -1e9
    _last_heartbeat: float = -1e9
    _desired: Desired | None = None

    # ------------------------------------------------------------ what to run

    def ws_port(self) -> int:
        return self.port + 1

    def argv(self, role: str, *, concurrency: int | None = None, prefetch: int | None = None) -> list[str]:
        bindir = Path(self.python).parent
        if role == "web":
            return [str(bindir / "gunicorn"), "-c", "gunicorn.conf.py", "-b", f"{self.bind}:{self.port}"]
        if role == "ws":
            return [str(bindir / "daphne"), "-b", self.bind, "-p", str(self.ws_port()), "orderpipe.asgi:application"]
        if role == "relay":
            return [self.python, "manage.py", "run_relay"]
        # --concurrency last: the supervisor's tests read it from the end of the command line.
        prefetch_args = ["--prefetch", str(prefetch)] if prefetch else []
        return [
            self.python,
            "manage.py",
            "run_worker",
            *prefetch_args,
            "--concurrency",
            str(concurrency or self.concurrency),
        ]

    def desired(self) -> Desired:
        """The sandbox settings' worker count and concurrency (read at most once a second), else the command line's."""
        now = self.clock()
        if self._desired is None or now - self._last_read >= self.read_every:
            self._last_read = now
            desired = Desired(self.workers, self.concurrency)
            if settings.ORDERPIPE_SANDBOX:
                try:
                    row = SandboxSettings.load()
                    desired = Desired(
                        row.workers,
                        row.worker_concurrency or settings.WORKER_CONCURRENCY,
                        row.worker_prefetch,
                        wanted_policy(row.queue_max_length, row.queue_overflow),
                    )
                except DatabaseError as exc:  # keep the last known state while the database is away
                    log.warning("supervisor: sandbox settings unreadable (%s); keeping the current workers", exc)
                    desired = self._desired or desired
            self._desired = desired
        return self._desired

    # ------------------------------------------------------------ one round

    def start(self) -> None:
        for role in self.roles:
            if role != "worker":
                self.programs[role] = Program(role, role, self.argv(role))
        self.tick()

    def tick(self) -> bool:
        """Reap exits, start what is due, follow the desired workers. Returns whether anything changed."""
        changed = self._reap()
        if "worker" in self.roles:
            changed |= self._follow(self.desired())
        changed |= self._start_due()
        if self.queue_policy is not None:
            self.queue_policy.follow(self.desired().queue_policy)
        self._serve_requests()
        self._finish_node_starts()
        self._heartbeat()
        return changed

    def _reap(self) -> bool:
        changed = False
        for program in list(self.programs.values()):
            if program.proc is None or program.proc.poll() is None:
                continue
            changed = True
            returncode = program.proc.returncode
            how = describe_exit(returncode)
            program.proc = None
            if program.retiring:
                program.retiring = False
                if program.replace_with is not None:  # a concurrency change: back at once with the new arguments
                    program.argv, program.replace_with, program.start_at = program.replace_with, None, self.clock()
                    program.started_at = 0.0  # a planned restart is a fresh start, not a restart after a crash
                    log.info("supervisor: %s stopped (%s); restarting with %s", program.name, how, program.argv[3:])
                    self._record(program, State.STARTING, last_exit=how)
                else:
                    log.info("supervisor: %s stopped (%s)", program.name, how)
                    self._record(program, State.STOPPED, last_exit=how)
                    del self.programs[program.name]
                continue
            ran_for = self.clock() - program.started_at
            program.failures = 1 if ran_for >= HEALTHY_AFTER else program.failures + 1
            delay = restart_delay(program.failures)
            program.start_at = self.clock() + delay
            # Exit 0 is a clean stop (a SIGTERM from the page: the orders in hand were finished and acked), not a crash:
            # its row says "starting" (stopped, waiting for its restart), so the page keeps offering it as a target.
            clean = returncode == 0
            log.warning(
                "supervisor: %s %s (%s) after %.1f s; restarting in %.0f s",
                program.name,
                "stopped" if clean else "crashed",
                how,
                ran_for,
                delay,
            )
            self._record(program, State.STARTING if clean else State.CRASHED, last_exit=how)
        return changed

    def _follow(self, desired: Desired) -> bool:
        changed = False
        workers = sorted(
            (p for p in self.programs.values() if p.role == "worker" and not (p.retiring and p.replace_with is None)),
            key=lambda p: int(p.name.rsplit("-", 1)[1]),
        )
        for program in workers[desired.workers :]:  # scale down: the newest go first
            self._retire(program)
            changed = True
        for number in range(1, desired.workers + 1):
            name = f"worker-{number}"
            if name not in self.programs:
                self.programs[name] = Program(
                    name, "worker", self.argv("worker", concurrency=desired.concurrency, prefetch=desired.prefetch)
                )
                changed = True
        wanted = self.argv("worker", concurrency=desired.concurrency, prefetch=desired.prefetch)
        for program in self.programs.values():
            if program.role == "worker" and program.argv != wanted and program.replace_with != wanted:
                if program.retiring and program.replace_with is None:
                    continue
                if program.running():
                    self._retire(program, replace_with=wanted)
                else:
                    program.argv = wanted
                changed = True
        return changed

    def _retire(self, program: Program, *, replace_with: list[str] | None = None) -> None:
        program.replace_with = replace_with
        if not program.running():
            if replace_with is None:
                self._record(program, State.STOPPED)
                del self.programs[program.name]
            else:
                program.argv, program.replace_with = replace_with, None
            return
        if not program.retiring and program.proc is not None:
            program.retiring = True
            log.info("supervisor: stopping %s (pid %s)", program.name, program.pid)
            program.proc.send_signal(signal.SIGTERM)
            self._record(program, State.STOPPING)

    def _start_due(self) -> bool:
        changed = False
        now = self.clock()
        for program in self.programs.values():
            if program.proc is None and program.start_at is not None and program.start_at <= now:
                restarted = program.started_at > 0
                program.proc = subprocess.Popen(program.argv, cwd=ROOT, env=self._env_for(program))
                program.started_at, program.start_at = now, None
                if restarted:
                    program.restarts += 1
                log.info(
                    "supervisor: %s %s (pid %d)", program.name, "restarted" if restarted else "started", program.pid
                )
                self._record(program, State.RUNNING)
                changed = True
        return changed

    def _env_for(self, program: Program) -> dict[str, str]:
        env = dict(self.env)
        if self.links is not None:
            env.update(self.links.env_for(program.role))
        if program.role == "web":
            env["ORDERPIPE_WEBSOCKET_PORT"] = str(self.ws_port())  # the pages open their sockets on daphne
        if program.role == "worker":
            env.setdefault("PYTHONUNBUFFERED", "1")
        return env

    def _record(self, program: Program, state: str, *, last_exit: str | None = None) -> None:
        """Best effort: the supervisor keeps supervising while the database is down."""
        values: dict[str, object] = {
            "role": program.role,
            "pid": program.pid,
            "state": state,
            "restarts": program.restarts,
            "started_at": timezone.now() if state == State.RUNNING else None,
        }
        if state != State.RUNNING:
            values.pop("started_at")
        if last_exit is not None:
            values["last_exit"] = last_exit
            values["last_exit_at"] = timezone.now()
        try:
            SupervisedProcess.objects.update_or_create(name=program.name, defaults=values)
        except DatabaseError as exc:
            log.debug("supervisor: state of %s not recorded: %s", program.name, exc)

    # ------------------------------------------------------------ requests from the page

    def _serve_requests(self) -> None:
        """Carry out pending `SupervisorRequest`s, oldest first, and restore a PostgreSQL cut whose time is up."""
        if self.links is not None:
            for name in self.links.due_restores():
                result = self.links.restore(name, automatic=True)
                live.record_control("restore postgresql", f"supervisor: {result}", by="supervisor")
        now = self.clock()
        if now - self._last_requests < REQUESTS_EVERY:
            return
        self._last_requests = now
        try:
            pending = list(SupervisorRequest.objects.filter(state=SupervisorRequest.State.PENDING).order_by("id")[:20])
        except DatabaseError as exc:
            log.debug("supervisor: requests unreadable: %s", exc)
            return
        for request in pending:
            age = (timezone.now() - request.requested_at).total_seconds()
            if age > REQUEST_EXPIRES:
                ok, result = False, f"expired: not carried out within {REQUEST_EXPIRES:g} s (no supervisor then)"
            else:
                try:
                    ok, result = self.carry_out(request.action, request.target)
                except Exception as exc:  # a request must never take the supervisor down
                    log.exception("supervisor: request %s failed", request.pk)
                    ok, result = False, f"error: {exc}"
            request.state = SupervisorRequest.State.DONE if ok else SupervisorRequest.State.FAILED
            request.result, request.done_at = result[:300], timezone.now()
            try:
                request.save(update_fields=["state", "result", "done_at"])
            except DatabaseError as exc:
                log.warning("supervisor: outcome of request %s not recorded: %s", request.pk, exc)
            what = f"{SupervisorRequest.Action(request.action).label} {request.target}"
            live.record_control(what, f"{'done' if ok else 'refused'}: {result}", by=request.requested_by)

    def carry_out(self, action: str, target: str) -> tuple[bool, str]:
        """Do one request. Returns (done, what happened) in the words the feed shows. Also callable directly."""
        Action = SupervisorRequest.Action
        number = self.cluster.number_of(target) if self.cluster is not None else None
        if number is not None:
            return self._carry_out_on_node(action, target, number)
        if action in (Action.KILL, Action.STOP):
            program = self.programs.get(target)
            if program is None or program.role not in ("worker", "relay"):
                return False, f"no supervised worker or relay named {target}"
            if not program.running() or program.proc is None:
                return False, f"{target} is not running right now (it is waiting for its restart)"
            sig = signal.SIGKILL if action == Action.KILL else signal.SIGTERM
            pid = program.pid
            program.proc.send_signal(sig)
            log.warning("supervisor: %s sent to %s (pid %s) from the page", sig.name, target, pid)
            return True, f"{sig.name} sent to {target} (pid {pid}); the supervisor restarts it after its backoff"
        if action in (Action.CUT, Action.RESTORE):
            if self.links is None or target not in self.links.links:
                return False, f"no proxy in front of {target} (the supervisor runs with --no-proxies)"
            if action == Action.CUT:
                return True, self.links.cut(target)
            return True, self.links.restore(target)
        return False, f"unknown action {action!r}"

    # ------------------------------------------------------------ the RabbitMQ cluster's nodes

    def _carry_out_on_node(self, action: str, name: str, number: int) -> tuple[bool, str]:
        assert self.cluster is not None
        if action == SupervisorRequest.Action.KILL:
            if number in self.cluster.starting:
                return False, f"{name} is starting; kill it once it is up"
            killed = self.cluster.kill(number)
            if killed is None:
                return False, f"{name} is down already"
            self._killed.add(name)
            self._record_node(Node(number, killed.port, None), State.CRASHED, "killed by SIGKILL")
            return True, (
                f"SIGKILL sent to {name} (pid {killed.pid}, port {killed.port}); the other nodes carry on, "
                "restart it from the page"
            )
        if action == SupervisorRequest.Action.RESTART:
            if number in self.cluster.starting:
                return False, f"{name} is starting already"
            if any(node.number == number and node.pid for node in self.cluster.nodes()):
                return False, f"{name} is running; kill it first"
            self.cluster.start(number)
            self._record_node(Node(number, self.cluster.numbers[number], None), State.STARTING)
            return True, f"starting {name}: it rejoins the cluster and its queue members catch up (seconds)"
        return False, f"a RabbitMQ node can be killed or restarted, not {action!r}"

    def _finish_node_starts(self) -> None:
        """A restart from the page has ended: say so in the feed and record the node as it is now."""
        if self.cluster is None:
            return
        finished = self.cluster.finished()
        for number, ok, words in finished:
            live.record_control(f"restart rabbitmq-{number}", f"{'done' if ok else 'failed'}: {words}", by="supervisor")
        if finished:
            self._watch_nodes()

    def _watch_nodes(self) -> None:
        """Record each node's state when it changes: up with its pid, or down (killed from the page or otherwise)."""
        if self.cluster is None:
            return
        try:
            nodes = self.cluster.nodes()
        except (OSError, subprocess.SubprocessError, ValueError) as exc:
            log.debug("supervisor: nodes unreadable: %s", exc)
            return
        for node in nodes:
            if node.number in self.cluster.starting:
                continue
            state = State.RUNNING if node.pid else State.CRASHED
            if self._node_states.get(node.name) == state:
                continue
            if state == State.RUNNING:
                self._killed.discard(node.name)
                self._record_node(node, state)
            else:
                how = "killed by SIGKILL" if node.name in self._killed else "down (not started, or stopped elsewhere)"
                self._record_node(node, state, how)

    def _record_node(self, node: Node, state: str, last_exit: str | None = None) -> None:
        """Best effort, like `_record`. A node that comes up after being seen down counts as restarted."""
        previous = self._node_states.get(node.name)
        values: dict[str, object] = {"role": NODE_ROLE, "pid": node.pid, "state": state}
        if state == State.RUNNING:
            values["started_at"] = timezone.now()
        if last_exit is not None:
            values["last_exit"], values["last_exit_at"] = last_exit, timezone.now()
        try:
            row, created = SupervisedProcess.objects.get_or_create(name=node.name, defaults=values)
            if not created:
                for key, value in values.items():
                    setattr(row, key, value)
                if state == State.RUNNING and previous in (State.STARTING, State.CRASHED):
                    row.restarts += 1
                row.save()
        except DatabaseError as exc:  # not remembered either: the next look records it again
            log.debug("supervisor: state of %s not recorded: %s", node.name, exc)
            return
        self._node_states[node.name] = state

    def _heartbeat(self) -> None:
        """Refresh the rows the page reads, so it can tell a running supervisor from one that is gone."""
        now = self.clock()
        if now - self._last_heartbeat < HEARTBEAT_EVERY:
            return
        self._last_heartbeat = now
        self._watch_nodes()
        try:
            names = [*self.programs, *self._node_states]
            SupervisedProcess.objects.filter(name__in=names).update(updated_at=timezone.now())
        except DatabaseError as exc:
            log.debug("supervisor: heartbeat not recorded: %s", exc)
        if self.links is not None:
            self.links.record()

    # ------------------------------------------------------------ lifetime

    def run(self, should_stop: Callable[[], bool], *, interval: float = 0.25) -> None:
        SupervisedProcess.objects.all().delete()  # rows of an earlier run describe processes that are gone
        if self.links is not None:
            self.links.start()
        try:
            self.start()
            while not should_stop():
                self.tick()
                time.sleep(interval)
            self.stop()
        finally:
            if self.links is not None:
                self.links.stop()

    def stop(self) -> None:
        """SIGTERM to everything, wait, SIGKILL what is left. Workers finish and ack the orders they hold. The main
        queue's length limit goes with the supervisor that set it."""
        if self.queue_policy is not None:
            self.queue_policy.clear()
        running = [(p, p.proc) for p in self.programs.values() if p.proc is not None and p.proc.poll() is None]
        for _program, proc in running:
            proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + STOP_TIMEOUT
        for program, proc in running:
            try:
                proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                log.warning("supervisor: %s did not stop within %.0f s; killing it", program.name, STOP_TIMEOUT)
                proc.kill()
                proc.wait()
            self._record(program, State.STOPPED, last_exit=describe_exit(proc.returncode))
        stopped = {program.name for program, _proc in running}
        for program in self.programs.values():  # crashed (waiting for a restart, or not yet reaped): they stay down
            if program.name not in stopped:
                self._record(program, State.STOPPED)
