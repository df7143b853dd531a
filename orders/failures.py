"""The ways a step can fail, and the fault injector the steps consult (orders/sandbox/faults.py implements it).

Kept apart from the steps so the seams (the gateway, the email sender) can raise them without importing the steps.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from orders.steps import StepPolicy


class PermanentFailure(Exception):
    """The order cannot succeed (out of stock, payment declined): it fails without retry."""


class PaymentDeclined(PermanentFailure):
    pass


class OutOfStock(PermanentFailure):
    pass


class TransientFailure(Exception):
    """A failure worth retrying later (a gateway timeout, a dropped connection)."""


class GatewayDown(TransientFailure):
    """The payment gateway refused the call: it is down (the sandbox's `gateway_down_until`). Retried like a timeout."""


class Interrupted(Exception):
    """The worker is stopping while this order waits (step mode, delay): leave the message unacked."""


class BrokenInvariant(Exception):
    """A condition the code relies on does not hold: a bug, not an outage. Unlike `assert`, `python -O` keeps it."""


class GatewayFaults(Protocol):
    """The questions the simulated payment gateway asks the sandbox."""

    def maybe_fail_transiently(self, step: str) -> None: ...

    def declined(self) -> bool: ...

    def gateway_down(self) -> bool: ...


class FaultInjector(GatewayFaults, Protocol):
    """What the step runner asks the sandbox before and during each step; all answers are "no fault" and the safe
    policy in production."""

    def wait_before_step(
        self, order_id: uuid.UUID, step: str, *, should_stop: Callable[[], bool], announce: Callable[[], None]
    ) -> None:
        """The step delay, then in step-by-step mode the wait for 'Next step' (`announce` records it once); raises
        Interrupted when the worker stops meanwhile."""
        ...

    def before_step(self, step: str, *, transient: bool) -> None:
        """In the step's transaction, before it changes anything: the simulated bug, then (`transient`) timeout."""
        ...

    def inside_step(self, step: str, *, crash_point: bool) -> None:
        """In the step's transaction, after its effect: the simulated crash (only at a `crash_point`)."""
        ...

    def policy(self) -> StepPolicy:
        """How the steps run now: `orders.steps.SAFE_STEPS` unless a sandbox mode swaps a part."""
        ...

    def batchable(self) -> bool:
        """True while no fault and no unsafe mode is on: the worker may run the deliveries it holds as one batch."""
        ...
