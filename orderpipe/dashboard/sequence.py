"""The journey as a sequence diagram: the participants (lanes) and, for each kind of journey event, the arrow that
draws it. static/js/sequence.js draws the arrows from this table (the journey page sends it as JSON); nothing else
holds a copy, and a test fails when an event kind has no row.

An event kind may be sent by more than one participant (a publish by the relay or, in an unsafe mode, by the request
itself; a dead letter by the worker or by the broker). Its rows are then tried in order: a row with `when` applies
when the event's queue snapshot has that key (orders/events.py `QueueSnapshot`); the last row, without `when`, is
the default.
"""

from __future__ import annotations

from typing import NamedTuple, TypedDict

from orders.models import EventKind


class Lane(NamedTuple):
    key: str
    name: str


# Left to right, in the order a message travels, so most arrows are short and point right on the way in.
LANES: tuple[Lane, ...] = (
    Lane("client", "client"),
    Lane("api", "API"),
    Lane("postgresql", "PostgreSQL"),
    Lane("relay", "relay"),
    Lane("rabbitmq", "RabbitMQ"),
    Lane("worker", "worker"),
    Lane("gateway", "gateway"),
    Lane("redis", "Redis"),
)


class Arrow(NamedTuple):
    source: str
    target: str  # the same lane as `source`: a self-message, drawn as a loop on that lane
    label: str
    via: tuple[str, ...] = ()  # lanes the arrow passes through on its way (a dot on each)
    when: str = ""  # a queue-snapshot key that selects this row; "" for the default row
    tone: str = "normal"  # normal | retry | redelivery | fail | control
    loop: str = ""  # this arrow closes a loop of this name (LOOPS): drawn back to where the message went round


# A loop runs from the latest earlier event of these kinds to the event whose arrow closes it: a retry from the
# message's hand-over to a delay queue, a redelivery from the delivery that was never acked.
LOOPS: dict[str, tuple[EventKind, ...]] = {
    "retry": (EventKind.RETRY_SCHEDULED,),
    "redelivery": (EventKind.RECEIVED, EventKind.REDELIVERED),
}


ARROWS: dict[EventKind, tuple[Arrow, ...]] = {
    EventKind.ACCEPTED: (Arrow("client", "postgresql", "POST /api/orders/: order + outbox row", via=("api",)),),
    EventKind.PUBLISHED: (
        Arrow("postgresql", "rabbitmq", "outbox row published, confirmed", via=("relay",), when="outbox_id"),
        Arrow("api", "rabbitmq", "published by the request (no outbox)", tone="fail"),
    ),
    EventKind.PUBLISH_FAILED: (Arrow("api", "rabbitmq", "publish failed: nothing retries it", tone="fail"),),
    EventKind.RECEIVED: (
        Arrow("rabbitmq", "worker", "back from the delay queue", when="retries", tone="retry", loop="retry"),
        Arrow("rabbitmq", "worker", "deliver"),
    ),
    EventKind.REDELIVERED: (
        Arrow("rabbitmq", "worker", "redeliver (never acked)", tone="redelivery", loop="redelivery"),
    ),
    EventKind.DUPLICATE_IGNORED: (Arrow("rabbitmq", "worker", "duplicate: ignored, acked", tone="redelivery"),),
    EventKind.INVENTORY_RESERVED: (Arrow("worker", "postgresql", "reserve stock"),),
    EventKind.PAYMENT_CHARGED: (Arrow("worker", "gateway", "charge (idempotency key)"),),
    EventKind.CUSTOMER_NOTIFIED: (Arrow("worker", "postgresql", "notification row"),),
    EventKind.COMPLETED: (Arrow("worker", "rabbitmq", "completed: ack"),),
    EventKind.FAILED: (Arrow("worker", "rabbitmq", "failed: ack, no retry", tone="fail"),),
    EventKind.RETRY_SCHEDULED: (Arrow("worker", "rabbitmq", "to a delay queue, ack", tone="retry"),),
    EventKind.DEAD_LETTERED: (
        Arrow("rabbitmq", "rabbitmq", "delivery limit: dead-lettered", when="watched_via", tone="fail"),
        Arrow("worker", "rabbitmq", "to the dead-letter queue, ack", tone="fail"),
    ),
    EventKind.REPLAYED: (Arrow("client", "postgresql", "replay: new outbox row", via=("api",), tone="control"),),
    EventKind.STEP_WAITING: (Arrow("worker", "worker", "waits for Next step", tone="control"),),
    EventKind.CONTROL: (Arrow("client", "postgresql", "Next step pressed", via=("api",), tone="control"),),
    EventKind.RESENT: (Arrow("relay", "postgresql", "sweeper: message lost, new outbox row", tone="retry"),),
}


class ArrowJson(TypedDict):
    source: str
    target: str
    label: str
    via: list[str]
    when: str
    tone: str
    loop: str


class SequenceJson(TypedDict):
    lanes: list[dict[str, str]]
    arrows: dict[str, list[ArrowJson]]
    loops: dict[str, list[str]]


def sequence_table() -> SequenceJson:
    """The lanes and arrows as the journey page's script reads them (`json_script` "sequence-table")."""
    return {
        "lanes": [{"key": lane.key, "name": lane.name} for lane in LANES],
        "arrows": {
            str(kind): [
                {
                    "source": arrow.source,
                    "target": arrow.target,
                    "label": arrow.label,
                    "via": list(arrow.via),
                    "when": arrow.when,
                    "tone": arrow.tone,
                    "loop": arrow.loop,
                }
                for arrow in rows
            ]
            for kind, rows in ARROWS.items()
        },
        "loops": {name: [str(kind) for kind in kinds] for name, kinds in LOOPS.items()},
    }
