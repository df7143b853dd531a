"""The ways a step can fail, and the fault injector the steps consult (orders/sandbox/faults.py implements it).

Kept apart from the steps so the seams (the gateway, the email sender) can raise them without importing the steps.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol


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
    """What the steps ask the sandbox before and during each step; all answers are "no fault" in production."""

    def delay(self, should_stop: Callable[[], bool]) -> None: ...

    def maybe_crash(self, step: str) -> None: ...

    def maybe_hit_bug(self, step: str) -> None: ...

    def step_mode(self) -> bool: ...

    def step_guards(self) -> bool:
        """False only in the sandbox's unsafe step_guards=off: the steps skip their "done before?" check."""
        ...

    def stock_update(self) -> str:
        """ "guarded" except in the sandbox's unsafe stock_update=read_modify_write (the reserve step's lost update)."""
        ...

    def batchable(self) -> bool:
        """True while no fault and no unsafe mode is on: the worker may run the deliveries it holds as one batch."""
        ...
