"""Fault injection for the sandbox: what the learner switches on to watch the pipeline fail and recover.

Every knob is read from the sandbox settings (refreshed within a second); all are off by default, so a
production deployment with ORDERPIPE_SANDBOX=false and untouched settings behaves normally.

`Faults` is the worker's one seam to the sandbox: the step runner asks it for the faults and step mode around each
step and for the step policy of the modes in effect, the consumer whether to pause and when to ack (both chosen in
orders/sandbox/policies.py).
"""

from __future__ import annotations

import logging
import os
import random
import time
import uuid
from collections.abc import Callable
from typing import Any

from orders import sandbox
from orders.failures import Interrupted, TransientFailure
from orders.sandbox import policies
from orders.steps import StepPolicy

log = logging.getLogger(__name__)

CRASH_EXIT_CODE = 70


class SandboxBug(RuntimeError):
    """The sandbox's stand-in for a bug in a step (`bug_rate`): not an outage, not a business failure, so the
    consumer treats it as any unexpected exception (worker/consumer.py): logged with the traceback, the message
    returned to the queue, parked by the delivery limit."""


def _crash(step: str) -> None:
    # The real thing: the process dies mid-step, inside the step's transaction, without acking or committing.
    log.error("sandbox crash: worker exits in the middle of step %s", step)
    logging.shutdown()
    os._exit(CRASH_EXIT_CODE)


class Faults:
    """The sandbox's fault injector (`orders.failures.FaultInjector`), read from the sandbox settings."""

    def __init__(
        self,
        reader: sandbox.SandboxReader | None = None,
        rng: random.Random | None = None,
        crash: Callable[[str], None] = _crash,
    ) -> None:
        self.reader = reader or sandbox.reader
        self.rng = rng or random.Random()
        self.crash = crash

    def settings(self) -> dict[str, Any]:
        return self.reader.get()

    def delay(self, should_stop: Callable[[], bool]) -> None:
        """The configured step delay, cut short when the worker is asked to stop."""
        deadline = time.monotonic() + self.settings()["step_delay_ms"] / 1000
        while not should_stop():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return
            time.sleep(min(remaining, 0.1))

    def wait_before_step(
        self, order_id: uuid.UUID, step: str, *, should_stop: Callable[[], bool], announce: Callable[[], None]
    ) -> None:
        """The step delay, then in step-by-step mode wait for 'Next step' on the journey page (announced once)."""
        self.delay(should_stop)
        announced = False
        while self.step_mode():
            if should_stop():
                raise Interrupted(f"stopping while order {order_id} waits before '{step}'")
            if sandbox.step_grant_take(order_id=order_id):
                return
            if not announced:
                announce()
                announced = True
            time.sleep(0.2)

    def before_step(self, step: str, *, transient: bool) -> None:
        """A bug, then (where the step allows it) a simulated timeout: before the step changes anything."""
        self.maybe_hit_bug(step)
        if transient:
            self.maybe_fail_transiently(step)

    def inside_step(self, step: str, *, crash_point: bool) -> None:
        """The crash, at the step's crash point: inside its transaction, after its effect."""
        if crash_point:
            self.maybe_crash(step)

    def maybe_fail_transiently(self, step: str) -> None:
        if self.rng.random() < self.settings()["transient_failure_rate"]:
            raise TransientFailure(f"simulated timeout in step '{step}'")

    def maybe_crash(self, step: str) -> None:
        if self.rng.random() < self.settings()["crash_rate"]:
            self.crash(step)

    def maybe_hit_bug(self, step: str) -> None:
        if self.rng.random() < self.settings()["bug_rate"]:
            raise SandboxBug(f"sandbox bug: step '{step}' raised (bug rate {self.settings()['bug_rate']:g})")

    def declined(self) -> bool:
        return self.rng.random() < self.settings()["decline_rate"]

    def gateway_down(self) -> bool:
        """Whether the payment gateway refuses every call now (`gateway_down_until` is still ahead)."""
        return sandbox.gateway_down_for(self.settings()) > 0

    def step_mode(self) -> bool:
        return bool(self.settings()["step_mode"])

    def paused(self) -> bool:
        return bool(self.settings()["paused"])

    def modes(self) -> sandbox.Modes:
        """The unsafe modes in effect (the safe defaults when ORDERPIPE_SANDBOX=false)."""
        return sandbox.modes(self.settings())

    def policy(self) -> StepPolicy:
        """How the steps run in the modes in effect (orders/sandbox/policies.py chooses)."""
        return policies.step_policy(self.modes())

    def acks_on_receipt(self) -> bool:
        """Whether the worker acks a delivery as it arrives (ack_mode=on_receive; orders/sandbox/policies.py)."""
        return policies.acks_on_receipt(self.modes())

    def batchable(self) -> bool:
        """Whether a worker may run the deliveries it holds as one batch (orders/batch.py): only while every fault
        is off and every mode is safe. Otherwise each delivery goes the per-order way, where step-by-step mode,
        step delays, fault rates and the unsafe modes are shown one order at a time."""
        values = self.settings()
        if any(values[name] != sandbox.DEFAULTS[name] for name in sandbox.FAULTS):
            return False
        modes = self.modes()
        return all(getattr(modes, name) == getattr(sandbox.SAFE_MODES, name) for name in sandbox.UNSAFE_MODES)

    def retry_wait(self) -> policies.RetryWait:
        """Where a retry waits in the modes in effect (retry_backoff; orders/sandbox/policies.py chooses)."""
        return policies.retry_wait(self.modes())


class NoFaults(Faults):
    """For tests of the plain pipeline: never consults the database."""

    def settings(self) -> dict[str, Any]:
        return dict(sandbox.DEFAULTS)
