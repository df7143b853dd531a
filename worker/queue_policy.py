"""The main queue's length limit for the full-queue lesson: a RabbitMQ policy on this instance's main queue, set and
cleared by `make run`'s supervisor as the sandbox settings say (docs/10-design-notes.md, "The full-queue lesson's
policy").
"""

from __future__ import annotations

import json
import logging
import re
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from django.db import DatabaseError

from orders.models import SandboxSettings
from worker.topology import Topology

log = logging.getLogger(__name__)

# A failed rabbitmqctl is tried again after this long, not on every tick (each run starts an Erlang VM: ~1 s).
RETRY_AFTER = 10.0
FAILED = "failed: "
# The reason a dropped message's order is dead-lettered with (the dead-letter watch reads x-first-death-reason maxlen).
DROPPED = "dropped by the full main queue (maxlen: at its length limit, overflow drop-head)"
NEEDS_SUPERVISOR = "is applied only by make run's supervisor (manage.py supervise), which is not running here"


def wanted_policy(max_length: int | None, overflow: str) -> str:
    """The policy's definition the settings want, as JSON ("" for no limit)."""
    if not max_length:
        return ""
    return json.dumps({"max-length": max_length, "overflow": overflow.replace("_", "-")}, sort_keys=True)


def policy_name(topo: Topology) -> str:
    return f"{topo.process_queue}.lesson-limit"


def policy_pattern(topo: Topology) -> str:
    """Exactly this instance's main queue, no other."""
    return f"^{re.escape(topo.process_queue)}$"


@dataclass
class QueuePolicy:
    """`follow(wanted)` makes the broker's policy match `wanted` (a definition, or "" for none)."""

    topology: Topology
    ctl: Callable[[], list[str]]  # the rabbitmqctl command line to run, up to its arguments
    env: dict[str, str] = field(default_factory=dict)  # empty: this process's environment
    applied: str | None = None  # None: not known (at start: a policy a crashed run left is cleared)
    clock: Callable[[], float] = time.monotonic
    _failed_at: float = -1e9

    def _run(self, *args: str) -> None:
        result = subprocess.run([*self.ctl(), *args], env=self.env or None, capture_output=True, text=True, timeout=60)
        if result.returncode != 0:
            raise subprocess.SubprocessError((result.stderr or result.stdout).strip()[-300:])

    def follow(self, wanted: str) -> bool:
        """Set or clear the policy if it differs from what was applied; returns whether it changed anything."""
        if wanted == self.applied or self.clock() - self._failed_at < RETRY_AFTER:
            return False
        name = policy_name(self.topology)
        try:
            if wanted:
                self._run("set_policy", "--apply-to", "queues", "--priority", "10", name,
                          policy_pattern(self.topology), wanted)  # fmt: skip
            else:
                try:
                    self._run("clear_policy", name)
                except subprocess.SubprocessError as exc:
                    if "does not exist" not in str(exc):  # nothing to clear is what was wanted
                        raise
        except (OSError, subprocess.SubprocessError) as exc:
            self._failed_at = self.clock()
            log.warning("supervisor: queue policy %s not applied: %s", wanted or "(none)", exc)
            self._record(f"{FAILED}{exc}"[:200])
            return False
        log.info("supervisor: main queue policy %s", wanted or "cleared")
        self.applied = wanted
        self._record(wanted)
        return True

    def clear(self) -> None:
        """Remove the policy now, whatever was applied or failed before (the supervisor is stopping)."""
        self.applied, self._failed_at = None, -1e9
        self.follow("")

    def _record(self, text: str) -> None:
        try:
            SandboxSettings.load()
            SandboxSettings.objects.filter(pk=1).update(queue_policy_in_effect=text)
        except DatabaseError as exc:
            log.debug("supervisor: queue policy state not recorded: %s", exc)
