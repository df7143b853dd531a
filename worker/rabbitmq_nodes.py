"""The nodes of `make cluster`'s RabbitMQ cluster (bin/rabbitmq-cluster) as `make run`'s supervisor sees them: which of
them the AMQP_URL names, whether each is up, and what the page may ask of one: kill it (SIGKILL of its Erlang VM, the
crash a power cut makes) or start it again.

The nodes are not the supervisor's children: they belong to `make cluster` and outlive `make run`. So the supervisor
never restarts a node by itself (the story is the two survivors carrying on, then a learner presses "Restart node"),
and it finds a node's pid through the script, which reads the node's pid file, never by process name: the machine's
own broker and anyone else's nodes are left alone.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from worker.links import target_of

log = logging.getLogger(__name__)

SCRIPT = Path(__file__).resolve().parent.parent / "bin" / "rabbitmq-cluster"
LOOPBACK = {"127.0.0.1", "localhost", "::1"}
NAME_PREFIX = "rabbitmq-"


def node_name(number: int) -> str:
    return f"{NAME_PREFIX}{number}"


@dataclass(frozen=True)
class Node:
    number: int  # 1..3, as bin/rabbitmq-cluster numbers them
    port: int
    pid: int | None  # None: down

    @property
    def name(self) -> str:
        return node_name(self.number)


@dataclass
class ClusterNodes:
    """The script's nodes that the AMQP_URL names. `find()` says whether there are any; the supervisor asks
    `nodes()` every few seconds and `kill()` / `start()` on a request from the page."""

    numbers: dict[int, int]  # node number -> AMQP port, only the nodes the AMQP_URL names
    env: dict[str, str]
    cwd: Path = SCRIPT.parent.parent
    script: Path = SCRIPT
    starting: dict[int, subprocess.Popen] = field(default_factory=dict)

    @classmethod
    def find(cls, amqp_urls: list[str], *, env: dict[str, str], cwd: Path | None = None) -> ClusterNodes | None:
        """The cluster if the AMQP_URL names at least two of the script's nodes (the same loopback ports), else
        None: a single broker, or nodes that bin/rabbitmq-cluster did not start (it could not find their pids)."""
        if len(amqp_urls) < 2:
            return None
        cluster = cls({}, env=env, cwd=cwd or SCRIPT.parent.parent)
        wanted = {port for host, port in map(target_of, amqp_urls) if host in LOOPBACK}
        try:
            listed = cluster._listed()
        except (OSError, subprocess.SubprocessError, ValueError) as exc:
            log.warning("supervisor: bin/rabbitmq-cluster nodes failed (%s); no node controls", exc)
            return None
        cluster.numbers = {node.number: node.port for node in listed if node.port in wanted}
        return cluster if len(cluster.numbers) >= 2 else None

    def _run(self, *args: str, timeout: float = 10.0) -> str:
        result = subprocess.run(
            [str(self.script), *args], env=self.env, cwd=self.cwd, capture_output=True, text=True, timeout=timeout
        )
        if result.returncode != 0:
            raise subprocess.SubprocessError(f"rabbitmq-cluster {' '.join(args)}: {result.stderr.strip()[-300:]}")
        return result.stdout

    def _listed(self) -> list[Node]:
        nodes = []
        for line in self._run("nodes").splitlines():
            number, port, pid, _state = line.split()
            nodes.append(Node(int(number), int(port), None if pid == "-" else int(pid)))
        return nodes

    def nodes(self) -> list[Node]:
        """The named nodes as they are now: a pid file whose process is gone reads as down."""
        return [node for node in self._listed() if node.number in self.numbers]

    def number_of(self, name: str) -> int | None:
        if not name.startswith(NAME_PREFIX):
            return None
        try:
            number = int(name.removeprefix(NAME_PREFIX))
        except ValueError:
            return None
        return number if number in self.numbers else None

    def kill(self, number: int) -> Node | None:
        """SIGKILL the node's Erlang VM; returns the node as it was, or None if it was down already."""
        node = next((node for node in self.nodes() if node.number == number), None)
        if node is None or node.pid is None:
            return None
        os.kill(node.pid, signal.SIGKILL)
        log.warning("supervisor: SIGKILL sent to %s (pid %s) from the page", node.name, node.pid)
        # Gone before we answer (milliseconds): a look at the nodes in between would take it for up again.
        deadline = time.monotonic() + 5.0
        while time.monotonic() < deadline:
            try:
                os.kill(node.pid, 0)
            except ProcessLookupError:
                break
            time.sleep(0.02)
        return node

    def start(self, number: int) -> None:
        """Start the node again in the background: booting and rejoining takes seconds to tens of seconds, and the
        supervisor's loop must keep restarting workers meanwhile. `finished()` reports the outcome."""
        self.starting[number] = subprocess.Popen(
            [str(self.script), "start-node", str(number)],
            env=self.env,
            cwd=self.cwd,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )

    def finished(self) -> list[tuple[int, bool, str]]:
        """The restarts that have ended since the last call: (node number, succeeded, the script's last words)."""
        done = []
        for number, proc in list(self.starting.items()):
            if proc.poll() is None:
                continue
            output = (proc.stdout.read() if proc.stdout else "").strip()
            del self.starting[number]
            done.append((number, proc.returncode == 0, output.splitlines()[-1] if output else ""))
        return done
