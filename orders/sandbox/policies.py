"""The seams through which the sandbox's unsafe modes reach the production path, chosen here and nowhere else from
the modes in effect (`sandbox.modes()`), one chooser per seam; with ORDERPIPE_SANDBOX=false every chooser returns the
safe implementation (docs/10-design-notes.md, "The sandbox's seams").
"""

from __future__ import annotations

import functools
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from datetime import timedelta
from typing import TYPE_CHECKING, Any, TypeVar

from django.conf import settings
from django.utils import timezone

from orders import cache, sandbox, services
from orders.models import AckMode, CacheMode, Order, PublishMode, RetryBackoff, StockUpdate
from orders.sandbox import unsafe_accept
from orders.serializers import order_representation

if TYPE_CHECKING:
    from orders.steps import StepPolicy

# ---------------------------------------------------------------- the step runner


def step_policy(current: sandbox.Modes) -> StepPolicy:
    """The step policy for these modes: `SAFE_STEPS`, with the parts of each unsafe mode that is on swapped in."""
    return _step_policy(current.step_guards, current.stock_update)


@functools.cache
def _step_policy(step_guards: bool, stock_update: str) -> StepPolicy:
    # Imported here, not above: the steps import orders.services, which reads the cache policy from this module.
    from orders import steps
    from orders.sandbox import unsafe_steps

    policy = steps.SAFE_STEPS
    if not step_guards:
        policy = replace(policy, **unsafe_steps.UNGUARDED)
    if stock_update == StockUpdate.READ_MODIFY_WRITE:
        policy = replace(policy, take_stock=unsafe_steps.read_modify_write_stock)
    return policy


# ---------------------------------------------------------------- the order cache


@dataclass(frozen=True)
class WriteThrough:
    """cache_mode=write_through, the production way: after each commit the worker (and the relay, the API) writes the
    order's representation; the API's read is served from the cache, and a miss fills it. `counts_stale` (the sandbox
    only): a hit costs one more query, to count a stale read for the lessons' checkpoint."""

    ttl: int
    counts_stale: bool = False

    def after_commit(self, order: Order) -> cache.CacheState:
        """What the cache holds for the order once its commit is done (the events record it)."""
        return cache.write_order(order_representation(order), ttl=self.ttl)

    def after_batch_commit(self, orders: list[Order]) -> list[cache.CacheState]:
        return cache.write_orders([order_representation(order) for order in orders], ttl=self.ttl)

    def read(self, order_id: Any) -> dict[str, Any] | None:
        cached = cache.read_order(order_id)
        if cached is not None and self.counts_stale:
            count_if_stale(order_id, cached)
        return cached

    def fill(self, representation: dict[str, Any]) -> None:
        cache.fill_order(representation, ttl=self.ttl)


class CacheAside(WriteThrough):
    """The sandbox's cache_mode=cache_aside: only the API's read fills the cache, and nothing invalidates it, so a
    long TTL serves old statuses. After a commit nothing is written: the event notes what the cache holds instead."""

    mode = CacheMode.CACHE_ASIDE.value

    def after_commit(self, order: Order) -> cache.CacheState:
        state = cache.order_state(order.pk)
        state["written"] = False
        state["note"] = f"not written: sandbox cache_mode={self.mode}"
        return state

    def after_batch_commit(self, orders: list[Order]) -> list[cache.CacheState]:
        return [self.after_commit(order) for order in orders]


class NoCache(CacheAside):
    """The sandbox's cache_mode=off: PostgreSQL every time; nothing read from, or written to, the cache."""

    mode = CacheMode.OFF.value

    def read(self, order_id: Any) -> dict[str, Any] | None:
        return None

    def fill(self, representation: dict[str, Any]) -> None:
        return None


CachePolicy = WriteThrough
CACHE_POLICIES: dict[str, type[CachePolicy]] = {
    CacheMode.WRITE_THROUGH: WriteThrough,
    CacheMode.CACHE_ASIDE: CacheAside,
    CacheMode.OFF: NoCache,
}


def cache_policy(*, fresh: bool = False) -> CachePolicy:
    """How the order cache is written and read now (`fresh`: the settings read now, as the API's read does)."""
    current = sandbox.modes(fresh=fresh)
    return CACHE_POLICIES[current.cache_mode](ttl=current.cache_ttl, counts_stale=settings.ORDERPIPE_SANDBOX)


# A hit counts as stale when the database row changed more than this long before the read. Write-through writes the
# cache right after each commit, so a read landing in that gap of milliseconds sees the previous status: that is the
# write's latency, not a stale cache, and on a busy machine the gap can stretch. Cache-aside keeps an old status for
# its whole TTL (minutes), which is what the count is for.
STALE_AFTER = timedelta(seconds=1)


def count_if_stale(order_id: Any, cached: dict[str, Any]) -> None:
    row = Order.objects.filter(pk=order_id).values_list("status", "version", "updated_at").first()
    if row is None:
        return
    status, version, updated_at = row
    if (cached.get("status"), cached.get("version")) != (status, version) and updated_at < timezone.now() - STALE_AFTER:
        cache.count_stale_read()


# ---------------------------------------------------------------- the accept path

# (customer_email, items, note, products, key, fingerprint) -> (body, status, replayed), as `services.order_accept`.
Accept = Callable[..., tuple[dict[str, Any], int, bool]]
# What an unsafe accept raises when the order was not stored (or, in publish_first, not published): the API's 503.
ACCEPT_FAILURES = (unsafe_accept.AcceptFailed, unsafe_accept.PublishError)


def accept_policy() -> Accept:
    """How the API accepts an order now (the settings read fresh, so a change is in effect at once): through the
    outbox (`services.order_accept`), or under the sandbox's publish mode and accept fault
    (orders/sandbox/unsafe_accept.py)."""
    current = sandbox.modes(fresh=True)
    if current.publish_mode == PublishMode.OUTBOX and not current.accept_failure_rate:
        return services.order_accept
    return functools.partial(unsafe_accept.order_accept, current=current)


# ---------------------------------------------------------------- the worker's ack


def acks_on_receipt(current: sandbox.Modes) -> bool:
    """Whether the worker acks each delivery the moment it arrives (the unsafe ack_mode=on_receive) rather than after
    the order's last commit."""
    return current.ack_mode == AckMode.ON_RECEIVE


# ---------------------------------------------------------------- where a retry waits

Lane = TypeVar("Lane")
RetryWait = Callable[[Lane, Sequence[Lane], random.Random], Lane]


def jittered_wait(tier: Lane, lanes: Sequence[Lane], rng: random.Random) -> Lane:
    """One of the tier's delay lanes (0.5-1.5x its delay) picked at random, so orders that failed together come back
    spread out."""
    return rng.choice(lanes) if lanes else tier


def fixed_wait(tier: Lane, lanes: Sequence[Lane], rng: random.Random) -> Lane:
    """The sandbox's unsafe retry_backoff=fixed: the tier's own queue, exactly its delay, so orders that failed
    together come back together."""
    return tier


def retry_wait(current: sandbox.Modes) -> RetryWait:
    """Where a retry waits: a random jitter lane of its tier, or the tier's own queue on fixed delays."""
    return fixed_wait if current.retry_backoff == RetryBackoff.FIXED else jittered_wait
