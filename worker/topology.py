"""The RabbitMQ topology, declared in this one place, idempotently, by relays and workers alike: the orders exchange
and its quorum queue, the retry tiers with their jitter lanes, and the dead letters with their watch copy, every name
under the configured prefix (docs/10-design-notes.md, "The RabbitMQ topology").
"""

from __future__ import annotations

from dataclasses import dataclass, field

from django.conf import settings

ROUTING_KEY = "order.placed"
MESSAGE_TYPE = "order.placed"
# The delays of a tier's jitter lanes, as factors of the tier's delay (1: the tier's own queue): eleven, so that a
# burst's retries, republished within a moment of each other, come back in clumps of a tenth of them at most.
JITTER_FACTORS = tuple(round(0.5 + 0.1 * step, 1) for step in range(11))


def _delay_label(ms: int) -> str:
    return f"{ms // 1000}s" if ms % 1000 == 0 else f"{ms}ms"


@dataclass(frozen=True)
class RetryTier:
    queue: str
    delay_ms: int
    # Where a retry of this tier may wait with jitter, the tier's own queue among them (JITTER_FACTORS order).
    lanes: tuple[RetryTier, ...] = ()

    def extra_lanes(self) -> list[RetryTier]:
        """The lanes that are queues of their own (all but the tier's)."""
        return [lane for lane in self.lanes if lane.queue != self.queue]


@dataclass(frozen=True)
class Topology:
    prefix: str
    delivery_limit: int
    retry_delays_ms: tuple[int, ...]
    exchange: str = field(init=False)
    process_queue: str = field(init=False)
    dead_letter_exchange: str = field(init=False)
    dead_queue: str = field(init=False)
    dead_watch_queue: str = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "exchange", f"{self.prefix}.orders")
        object.__setattr__(self, "process_queue", f"{self.prefix}.orders.process")
        object.__setattr__(self, "dead_letter_exchange", f"{self.prefix}.dlx")
        object.__setattr__(self, "dead_queue", f"{self.prefix}.orders.dead")
        object.__setattr__(self, "dead_watch_queue", f"{self.prefix}.orders.dead.watch")

    @property
    def retry_tiers(self) -> list[RetryTier]:
        tiers = []
        for ms in self.retry_delays_ms:
            queue = f"{self.prefix}.orders.retry.{_delay_label(ms)}"
            lanes = tuple(
                RetryTier(
                    queue if factor == 1.0 else f"{queue}.lane.{_delay_label(round(ms * factor))}", round(ms * factor)
                )
                for factor in JITTER_FACTORS
            )
            tiers.append(RetryTier(queue, ms, lanes))
        return tiers

    def lanes_of(self) -> dict[str, list[str]]:
        """Each tier's queue -> its extra lanes' queues: what the dashboard counts as the tier."""
        return {tier.queue: [lane.queue for lane in tier.extra_lanes()] for tier in self.retry_tiers}

    def queues(self) -> list[tuple[str, str]]:
        """(name, role) of every queue, in the order the dashboard draws them."""
        return (
            [(self.process_queue, "main")]
            + [(tier.queue, "retry") for tier in self.retry_tiers]
            + [(self.dead_queue, "dead")]
        )

    def all_queues(self) -> list[str]:
        lanes = [lane for tier_lanes in self.lanes_of().values() for lane in tier_lanes]
        return [name for name, _role in self.queues()] + lanes + [self.dead_watch_queue]

    def process_queue_arguments(self) -> dict:
        return {
            "x-queue-type": "quorum",
            "x-delivery-limit": self.delivery_limit,
            "x-dead-letter-exchange": self.dead_letter_exchange,
            "x-dead-letter-strategy": "at-least-once",
            "x-overflow": "reject-publish",
        }

    def retry_queue_arguments(self, tier: RetryTier) -> dict:
        return {
            "x-queue-type": "quorum",
            "x-message-ttl": tier.delay_ms,
            "x-dead-letter-exchange": self.exchange,
            "x-dead-letter-routing-key": ROUTING_KEY,
            "x-dead-letter-strategy": "at-least-once",
            "x-overflow": "reject-publish",
        }

    def declare(self, channel) -> None:
        """Declare everything (idempotent: same names and arguments are a no-op on the broker)."""
        channel.exchange_declare(self.exchange, exchange_type="direct", durable=True)
        channel.exchange_declare(self.dead_letter_exchange, exchange_type="fanout", durable=True)
        channel.queue_declare(self.process_queue, durable=True, arguments=self.process_queue_arguments())
        channel.queue_bind(self.process_queue, self.exchange, routing_key=ROUTING_KEY)
        for tier in self.retry_tiers:
            for lane in (tier, *tier.extra_lanes()):
                channel.queue_declare(lane.queue, durable=True, arguments=self.retry_queue_arguments(lane))
        channel.queue_declare(self.dead_queue, durable=True, arguments={"x-queue-type": "quorum"})
        channel.queue_bind(self.dead_queue, self.dead_letter_exchange)
        channel.queue_declare(self.dead_watch_queue, durable=True, arguments={"x-queue-type": "quorum"})
        channel.queue_bind(self.dead_watch_queue, self.dead_letter_exchange)

    def delete(self, channel) -> None:
        """Remove every queue and exchange of this prefix (tests clean up with this)."""
        for name in self.all_queues():
            channel.queue_delete(name)
        channel.exchange_delete(self.exchange)
        channel.exchange_delete(self.dead_letter_exchange)


def topology() -> Topology:
    return Topology(
        prefix=settings.ORDERPIPE_PREFIX,
        delivery_limit=settings.AMQP_DELIVERY_LIMIT,
        retry_delays_ms=tuple(settings.RETRY_DELAYS_MS),
    )
