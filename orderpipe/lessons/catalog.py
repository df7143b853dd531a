"""The lessons, as data: what each teaches, its diagram, its steps (buttons that call the pipeline's existing API
endpoints), the numbers its checkpoint panel shows and the checkpoints that pass on them. One template
(templates/lessons/lesson.html) and one script (static/js/lessons.js) render every lesson; what an action, a phase and
a baseline do: docs/10-design-notes.md, "The lessons as data".
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from django.conf import settings

from orderpipe.lessons.measure import BUCKETS, LESSON_STOCK
from orders import sandbox
from orders.models import SandboxSettings

Numbers = Mapping[str, Mapping[str, Any]]  # phase -> measure or counter -> value (orderpipe/lessons/measure.py)

# What each measure is called on the page.
NUMBER_LABELS = {
    "accepted": "orders accepted",
    "completed": "completed",
    "failed": "failed",
    "dead_lettered": "dead-lettered",
    "in_flight": "still in flight",
    "retrying": "retrying now",
    "retried": "retried at least once",
    "replayed": "replayed",
    "redelivered": "delivered again",
    "parked_by_limit": "parked by the delivery limit",
    "lost": "lost",
    "not_yet_known": "not yet known",
    "held": "held by a worker now",
    "charges": "gateway charges",
    "charged_twice": "charged twice",
    "requests": "logical requests sent",
    "duplicates": "duplicate orders",
    "seconds": "seconds, first accepted → last completed",
    "throughput": "orders completed per second",
    "workers_used": "workers that took the phase's orders",
    "most_by_one_worker": "orders taken by the busiest worker",
    "workers_running": "workers running now",
    "stale_reads": "stale reads (API reads that served an old status)",
    "ghost_messages": "ghost messages (for orders that do not exist)",
    "cache_hits": "API reads from Redis (hits)",
    "cache_misses": "API reads from PostgreSQL (misses)",
    "stock_at_start": "units in stock at the start",
    "units_sold": "units sold (reserved by orders)",
    "oversold": "units sold beyond the stock",
    "stock_left": "stock left, as the product row says",
    "dropped": "dropped by the full queue",
    "waited_in_queue": "waited in the queue (published at once)",
    "waited_in_outbox": "waited in the outbox (refused by the broker first)",
    "publish_nacks": "publishes the broker refused (the relay's nacks)",
    "gateway_calls": "gateway calls (charges and refusals)",
    "gateway_refused": "calls refused (the gateway was down)",
    "calls_peak": "gateway calls per 100 ms, peak",
    "retry_calls_peak": "retried calls per 100 ms, peak",
    "retry_calls_second": "retried calls in the busiest second",
    "back_calls_peak": "gateway calls per 100 ms once it was back, peak",
}
# What the lesson's own endpoint (/lessons/<slug>/act/) carries out, with the catalog's params.
SERVER_KINDS = frozenset(
    {
        "stock_burst",  # a product with LESSON_STOCK units, and `count` one-unit orders for it, at once
        "outage_burst",  # the payment gateway down for `gateway_outage_seconds()`, and `count` orders at once
    }
)
ACTION_KINDS = frozenset(
    {
        "sandbox",
        "burst",
        "replay",
        "restock",
        "flush_cache",
        "purge",
        "flaky_client",
        "kill",  # /api/controls/kill/: the supervisor SIGKILLs a process
        "outage",  # /api/controls/outage/: the supervisor cuts or restores its link to a service
        "post_orders",  # the page POSTs orders to /api/orders/ itself (what the publish modes act on; bursts do not)
        "read_orders",  # the page GETs the phase's orders from the API, a few rounds (the cache lesson)
        *SERVER_KINDS,
    }
)


# What an action may wait for before its button is enabled, each on one phase's numbers.
WAITS = {
    "settled": "every order of the phase in a bucket it stays in (nothing in flight, nothing not yet known)",
    "held": "a live worker holds some of the phase's orders",
    "published": "every order of the phase published (none left in the outbox)",
    "nacked": "the broker refused some of the phase's orders (the relay got nacks)",
}


def settled(phase: str) -> tuple[str, str]:
    return ("settled", phase)


def held(phase: str) -> tuple[str, str]:
    return ("held", phase)


def published(phase: str) -> tuple[str, str]:
    return ("published", phase)


def nacked(phase: str) -> tuple[str, str]:
    return ("nacked", phase)


@dataclass(frozen=True)
class Action:
    label: str
    kind: str
    params: Mapping[str, Any] = field(default_factory=dict)
    phase: str = ""
    # Conditions on the numbers before the button is enabled: ("settled", phase) or ("held", phase).
    waits: tuple[tuple[str, str], ...] = ()

    def __post_init__(self) -> None:
        if self.kind not in ACTION_KINDS:
            raise ValueError(f"unknown lesson action kind {self.kind!r}; known: {sorted(ACTION_KINDS)}")
        if not all(kind in WAITS for kind, _phase in self.waits):
            raise ValueError(f"unknown wait in {self.waits!r}; known: {sorted(WAITS)}")


def baseline(**overrides: Any) -> Mapping[str, Any]:
    """Every sandbox setting a lesson starts from: the safe defaults, with the scaling spelled out (one worker, four
    threads, prefetch 10), so that a change of the production defaults does not change what a lesson shows."""
    values = {**sandbox.DEFAULTS, "workers": 1, "worker_concurrency": 4, "worker_prefetch": 10, **overrides}
    if set(values) != set(SandboxSettings.FIELDS):
        missing_or_unknown = set(values) ^ set(SandboxSettings.FIELDS)
        raise ValueError(f"a lesson baseline must name every sandbox setting: {missing_or_unknown}")
    return MappingProxyType(values)


@dataclass(frozen=True)
class Step:
    text: str
    actions: tuple[Action, ...] = ()


@dataclass(frozen=True)
class Checkpoint:
    id: str
    label: str
    phase: str  # whose numbers the panel shows beside it
    passes: Callable[[Numbers], bool]


@dataclass(frozen=True)
class Phase:
    id: str
    label: str


@dataclass(frozen=True)
class Diagram:
    """A row of boxes joined by labelled arrows (rendered in CSS); `broken` is the index of the arrow the lesson
    switches off (drawn red and dashed), `note` a line under it."""

    boxes: tuple[str, ...]
    arrows: tuple[str, ...]
    broken: int | None = None
    note: str = ""


@dataclass(frozen=True)
class Lesson:
    number: int
    slug: str
    title: str
    teaches: str  # one line, for the index
    intro: tuple[str, ...]  # a few plain paragraphs
    diagram: Diagram
    phases: tuple[Phase, ...]
    numbers: tuple[str, ...]
    steps: tuple[Step, ...]
    checkpoints: tuple[Checkpoint, ...]
    minutes: int  # how long it takes a learner, roughly
    baseline: Mapping[str, Any]  # every sandbox setting, as "Start" sets them (`baseline()`)
    needs_supervisor: bool = False  # workers restarted or scaled by `make run`'s supervisor
    # Counts Redis keeps for the whole sandbox since the cache was last flushed: each phase shows them as they were
    # while it was under way.
    counters: tuple[str, ...] = ()
    # Code shown side by side under the diagram: (caption, text) each, the unsafe one first.
    code: tuple[tuple[str, str], ...] = ()
    # A chart per phase under the panel: the name of the phase's measure that holds its data ("calls_chart").
    chart: str = ""

    def phase_ids(self) -> list[str]:
        return [phase.id for phase in self.phases]

    def shown_numbers(self) -> tuple[str, ...]:
        """The panel's rows: accepted, the buckets that add up to it, then the lesson's own numbers and counters."""
        first = ("accepted", *BUCKETS)
        return (*first, *(name for name in (*self.numbers, *self.counters) if name not in first))

    def begins(self) -> list[str]:
        """Per step, the phase its first press begins ("" if none): the first phase its actions place orders in that
        no earlier step did, begun by the first of the steps without orders that lead to it (a setting changed for
        the next phase, such as scaling, is part of it). Beginning a phase keeps the figures of every earlier one as
        they are."""
        seen: set[str] = set()
        out = [""] * len(self.steps)
        leading: int | None = None  # the first step since the last one with orders
        for index, step in enumerate(self.steps):
            phases = [a.phase for a in step.actions if a.phase]
            if not phases:
                leading = index if leading is None else leading
                continue
            out[index if leading is None else leading] = next((p for p in phases if p not in seen), "")
            leading = None
            seen.update(phases)
        return out


def _settled(n: Mapping[str, Any]) -> bool:
    return bool(n["accepted"]) and bool(n["settled"])


RETRIES = Lesson(
    number=5,
    slug="retries",
    title="Retries, backoff and dead letters",
    teaches="A failure that may pass is retried later, not at once; one that never passes is parked, then replayed.",
    intro=(
        "The worker calls another system to charge the card: the payment gateway. Sometimes the gateway does not "
        "answer in time (a timeout). Trying again at once usually fails again, and a worker that sleeps on the "
        "message blocks everything behind it.",
        "So the worker republishes the message to a delay queue and acks the original. A delay queue is a queue "
        "nobody reads: its messages expire after a fixed time (the retry tier: {tiers}) and RabbitMQ sends them "
        "back to the main queue by itself. Each retry waits in the next, longer tier: that is the backoff.",
        "After the last tier the order is dead-lettered: its message goes to the dead-letter queue, a parking lot a "
        "person looks at. Once the cause is fixed, a replay puts the parked orders back on the main queue, and each "
        "resumes at the step where it stopped (the card is not charged twice: the earlier steps are done).",
    ),
    diagram=Diagram(
        boxes=("main queue", "worker", "delay queue (1st, 2nd, 3rd tier)", "dead-letter queue", "replay"),
        arrows=("deliver", "timeout → republish, ack", "after the last tier", "fixed → back to the main queue"),
        note="A delay queue's messages expire after its TTL and RabbitMQ dead-letters them back to the main queue.",
    ),
    phases=(Phase("flaky", "with a flaky gateway"),),
    numbers=("accepted", "completed", "retrying", "retried", "dead_lettered", "replayed", "lost"),
    steps=(
        Step(
            "Make the gateway time out half the time. Each charge that times out is retried later.",
            (Action("Gateway times out 50%", "sandbox", {"transient_failure_rate": 0.5}),),
        ),
        Step(
            "Place 20 orders. Watch 'retrying now' and 'retried': each retry waits in a delay queue (the dashboard's "
            "queues show them). An order that times out four times in a row is dead-lettered.",
            (Action("Place 20 orders", "burst", {"count": 20}, phase="flaky"),),
        ),
        Step(
            "When nothing is retrying any more, fix the gateway, then replay this lesson's dead-lettered orders.",
            (
                Action("Fix the gateway", "sandbox", {"transient_failure_rate": 0.0}, waits=(settled("flaky"),)),
                Action("Replay dead letters", "replay", phase="flaky"),
            ),
        ),
    ),
    checkpoints=(
        Checkpoint(
            "retried-and-parked",
            "Timeouts were retried with backoff, and the hopeless ones parked: retried > 0, dead-lettered > 0",
            "flaky",
            lambda n: n["flaky"]["retried"] > 0 and n["flaky"]["dead_lettered"] > 0,
        ),
        Checkpoint(
            "replayed-and-completed",
            "After the fix, the replay completed every parked order: replayed > 0, completed = accepted, lost = 0",
            "flaky",
            lambda n: (
                n["flaky"]["replayed"] > 0
                and n["flaky"]["completed"] == n["flaky"]["accepted"]
                and n["flaky"]["lost"] == 0
            ),
        ),
    ),
    minutes=3,
    baseline=baseline(),
)

POISON = Lesson(
    number=6,
    slug="poison",
    title="Poison messages and the delivery limit",
    teaches="A message that fails every worker that takes it is parked after N deliveries, so the others can flow.",
    intro=(
        "Some messages can never be processed: every worker that takes one fails on it (a bug, or data it cannot "
        "handle). It is not a temporary outage, so waiting and retrying later will not help. The worker does not "
        "ack it; it returns it to the queue (a nack), and the next worker fails the same way: a loop that burns "
        "every worker's time, and with a crash instead of an error, kills them one after the other.",
        "Quorum queues count the deliveries of each message. Past the delivery limit ({delivery_limit} here, the "
        "queue's x-delivery-limit) the broker itself moves the message to the dead-letter queue, and the workers "
        "carry on with the rest. The worker gets a copy and marks the order dead-lettered, 'delivery limit "
        "reached', for a person to look at and replay once the bug is fixed.",
        "Here a bug rate of 1 plays the bug: every step raises an unexpected error. (A crash rate of 1 ends the "
        "same way, slower: the worker process dies at each delivery and make run's supervisor restarts it.)",
    ),
    diagram=Diagram(
        boxes=("main queue", "worker (a bug: error)", "dead-letter queue"),
        arrows=(
            "deliver (count + 1) · nack: back to the queue",
            "after {delivery_limit} deliveries: parked by the broker",
        ),
        broken=0,
        note="A message returned to the queue is delivered again at once; its delivery count goes up each time.",
    ),
    phases=(Phase("poison", "the poison order"), Phase("others", "the orders after it")),
    numbers=("accepted", "completed", "dead_lettered", "parked_by_limit", "in_flight", "lost"),
    steps=(
        Step(
            "Put a bug in every step (bug rate 1).",
            (Action("Bug rate 1", "sandbox", {"bug_rate": 1.0}),),
        ),
        Step(
            "Place one order: the poison. It fails, goes back to the queue, fails again … until the broker parks it: "
            "dead-lettered, parked by the delivery limit (a few seconds).",
            (Action("Place the poison order", "burst", {"count": 1}, phase="poison"),),
        ),
        Step(
            "Fix the bug (bug rate 0) and place 20 more orders: they flow; the poison stays parked until a replay.",
            (
                Action("Bug rate 0", "sandbox", {"bug_rate": 0.0}, waits=(settled("poison"),)),
                Action("Place 20 orders", "burst", {"count": 20}, phase="others"),
            ),
        ),
    ),
    checkpoints=(
        Checkpoint(
            "parked",
            "The failing message was parked by the delivery limit, not retried forever",
            "poison",
            lambda n: n["poison"]["parked_by_limit"] > 0,
        ),
        Checkpoint(
            "others-flow",
            "The orders placed after it all completed: completed = accepted, lost = 0",
            "others",
            lambda n: (
                _settled(n["others"])
                and n["others"]["completed"] == n["others"]["accepted"]
                and n["others"]["lost"] == 0
            ),
        ),
    ),
    minutes=1,
    baseline=baseline(),
)

IDEMPOTENCY_KEY = Lesson(
    number=4,
    slug="idempotency-key",
    title="Why an Idempotency-Key",
    teaches="A client that retries places the order twice, unless the retry carries the same key.",
    intro=(
        "HTTP clients retry. A phone on a train sends 'place order'; the server commits the order and answers, and "
        "the answer is lost on the way back. The client cannot tell 'never arrived' from 'arrived, reply lost', so "
        "it sends the same request again, and the server, seeing a new request, places a second order.",
        "An Idempotency-Key is a random id the client picks once per logical request and sends with every retry of "
        "it (a header). The server stores the first response in the same transaction as the order; a retry with the "
        "same key gets that stored response back (with the header Idempotent-Replayed: true) instead of a new order.",
        "The flaky client below runs in this page: it sends each order, ignores the reply as if the network had "
        "dropped it after the server committed, and sends the same request once more.",
    ),
    diagram=Diagram(
        boxes=("client", "API", "PostgreSQL"),
        arrows=("POST, retry after a lost reply", "order + key, one transaction"),
        broken=0,
        note="The reply to the first POST is lost: the client cannot tell whether the order exists.",
    ),
    phases=(Phase("no-key", "without a key"), Phase("with-key", "with an Idempotency-Key")),
    numbers=("requests", "accepted", "duplicates", "completed"),
    steps=(
        Step(
            "Run the flaky client without a key: 5 orders, each sent twice.",
            (Action("Flaky client, no key", "flaky_client", {"count": 5, "key": False}, phase="no-key"),),
        ),
        Step(
            "The same client with an Idempotency-Key: one key per order, the retry sends the same key.",
            (Action("Flaky client, with a key", "flaky_client", {"count": 5, "key": True}, phase="with-key"),),
        ),
    ),
    checkpoints=(
        Checkpoint(
            "duplicates-without-key",
            "Without a key, the retries placed duplicate orders: duplicates > 0",
            "no-key",
            lambda n: n["no-key"]["duplicates"] > 0,
        ),
        Checkpoint(
            "one-order-each-with-key",
            "With a key, one order per logical request: duplicates = 0",
            "with-key",
            lambda n: (
                n["with-key"]["requests"] > 0
                and n["with-key"]["duplicates"] == 0
                and n["with-key"]["accepted"] == n["with-key"]["requests"]
            ),
        ),
    ),
    minutes=2,
    baseline=baseline(),
)

SCALING = Lesson(
    number=8,
    slug="scaling",
    title="Scaling and concurrency",
    teaches="More workers and threads drain a backlog faster, up to the cores; a large prefetch lets one hoard it.",
    intro=(
        "A queue lets you add consumers without changing the producer: every worker takes messages from the same "
        "queue, and RabbitMQ hands each message to one of them. Two knobs decide how much work happens at once: "
        "the number of worker processes and each worker's concurrency (threads).",
        "Here every step waits 100 ms, as a slow gateway would. Waiting is what threads and extra workers overlap: "
        "four threads wait on four orders at once. Work that keeps a core busy does not scale that way: once the "
        "machine's cores are busy (this one has {cores}), more workers only queue for them.",
        "Prefetch is how many unacknowledged messages the broker pushes to a worker ahead of time ({prefetch} by "
        "default): enough to keep its threads busy, but a large prefetch lets one worker hoard a backlog while a "
        "worker that starts later has nothing to do.",
    ),
    diagram=Diagram(
        boxes=("backlog in the main queue", "worker-1 … worker-N (threads each)", "PostgreSQL"),
        arrows=("each message to one worker (prefetch ahead)", "step transactions"),
    ),
    phases=(
        Phase("one", "1 worker, 1 thread"),
        Phase("many", "2 workers, 4 threads each"),
        Phase("four", "4 workers, 4 threads each"),
        Phase("hoard", "prefetch 50, second worker late"),
        Phase("share", "prefetch 1, second worker late"),
    ),
    numbers=(
        "accepted",
        "completed",
        "in_flight",
        "seconds",
        "throughput",
        "workers_running",
        "workers_used",
        "most_by_one_worker",
    ),
    steps=(
        Step(
            "One worker with one thread, and a slow step (100 ms each). The supervisor restarts the worker "
            "with the new concurrency: wait until the workers list shows it running.",
            (Action("1 worker × 1 thread", "sandbox", {"workers": 1, "worker_concurrency": 1, "step_delay_ms": 100}),),
        ),
        Step(
            "Place 20 orders and note the throughput once they have completed.",
            (Action("Place 20 orders", "burst", {"count": 20}, phase="one"),),
        ),
        Step(
            "Two workers with four threads each. Wait until both are running.",
            (
                Action(
                    "2 workers × 4 threads", "sandbox", {"workers": 2, "worker_concurrency": 4}, waits=(settled("one"),)
                ),
            ),
        ),
        Step(
            "Place 20 orders again and compare.",
            (Action("Place 20 orders", "burst", {"count": 20}, phase="many"),),
        ),
        Step(
            "Four workers with four threads each, and 20 orders again: compare the throughput with two workers. Once "
            "the machine's cores are busy, more workers mostly wait for them.",
            (
                Action(
                    "4 workers × 4 threads",
                    "sandbox",
                    {"workers": 4, "worker_concurrency": 4},
                    waits=(settled("many"),),
                ),
                Action("Place 20 orders", "burst", {"count": 20}, phase="four"),
            ),
        ),
        Step(
            "Now prefetch. One worker with one thread again, and a prefetch of 50: the broker may push it 50 "
            "messages it has not acknowledged. Wait until the workers list shows it running.",
            (
                Action(
                    "1 worker, prefetch 50",
                    "sandbox",
                    {"workers": 1, "worker_concurrency": 1, "worker_prefetch": 50},
                    waits=(settled("four"),),
                ),
            ),
        ),
        Step(
            "Place 30 orders. Once they are accepted, start a second worker: is there anything left for it?",
            (
                Action("Place 30 orders", "burst", {"count": 30}, phase="hoard"),
                Action("Start a second worker", "sandbox", {"workers": 2}),
            ),
        ),
        Step(
            "Prefetch 1: back to one worker, which now holds one message at a time. Wait until it runs.",
            (
                Action(
                    "1 worker, prefetch 1", "sandbox", {"workers": 1, "worker_prefetch": 1}, waits=(settled("hoard"),)
                ),
            ),
        ),
        Step(
            "Place 30 orders and start the second worker again, the same way.",
            (
                Action("Place 30 orders", "burst", {"count": 30}, phase="share"),
                Action("Start a second worker", "sandbox", {"workers": 2}),
            ),
        ),
    ),
    checkpoints=(
        Checkpoint(
            "baseline",
            "One worker, one thread: every order completed and the throughput measured",
            "one",
            lambda n: _settled(n["one"]) and n["one"]["throughput"] is not None,
        ),
        Checkpoint(
            "faster",
            "More workers and threads: at least 1.5 × the throughput",
            "many",
            lambda n: (
                _settled(n["many"])
                and n["one"]["throughput"] is not None
                and n["many"]["throughput"] is not None
                and n["many"]["throughput"] >= 1.5 * n["one"]["throughput"]
            ),
        ),
        Checkpoint(
            "four-workers",
            "Four workers: every order completed and the throughput measured, to compare with two",
            "four",
            lambda n: _settled(n["four"]) and n["four"]["throughput"] is not None,
        ),
        Checkpoint(
            "hoarded",
            "Prefetch 50: two workers running, yet one took the whole backlog (workers used = 1)",
            "hoard",
            lambda n: _settled(n["hoard"]) and n["hoard"]["workers_running"] >= 2 and n["hoard"]["workers_used"] == 1,
        ),
        Checkpoint(
            "shared",
            "Prefetch 1: the late worker got its share (workers used = 2)",
            "share",
            lambda n: _settled(n["share"]) and n["share"]["workers_used"] >= 2,
        ),
    ),
    minutes=3,
    baseline=baseline(),
    needs_supervisor=True,
)

ACK_TIMING = Lesson(
    number=1,
    slug="ack-timing",
    title="Why ack after commit",
    teaches="A worker that acknowledges a message before its work is committed loses that work when it dies.",
    intro=(
        "RabbitMQ hands a message to a worker and keeps it until the worker acknowledges it (an ack). If the "
        "worker's connection dies first, the broker puts the message back in the queue for another worker. That is "
        "the whole safety net, and it only works if the ack comes after the work is safely stored.",
        "This worker acks after the last step's commit to PostgreSQL. The unsafe mode ack_mode=on_receive acks as "
        "soon as a message arrives, as a naive consumer does ('got it!'). The broker then forgets the message: if "
        "the worker is killed before it finishes, nobody has it any more. The order is stuck half-done, with no "
        "message anywhere: lost. (Here the sweeper notices after {sweep_after} s and re-sends it; most systems have "
        "no sweeper.)",
        "A worker's prefetch ({prefetch}) limits the messages it holds unacknowledged. Acked on receipt, none "
        "stays unacknowledged, so the broker keeps pushing: the worker takes most of a backlog, and a kill loses "
        "all of it.",
    ),
    diagram=Diagram(
        boxes=("main queue", "worker: reserve, charge, notify, complete", "PostgreSQL"),
        arrows=("deliver · ack on receipt (unsafe)", "commit · then ack (safe)"),
        broken=0,
        note="Acked on receipt, a message is gone from the broker before its work is done.",
    ),
    phases=(Phase("on-receive", "ack on receipt"), Phase("after-commit", "ack after commit")),
    numbers=("accepted", "completed", "in_flight", "redelivered", "lost"),
    steps=(
        Step(
            "Ack on receipt, and slow each step down (200 ms) so the worker holds several orders when it dies.",
            (Action("Ack on receipt", "sandbox", {"ack_mode": "on_receive", "step_delay_ms": 200}),),
        ),
        Step(
            "Place 30 orders, and while they are processed kill the worker (SIGKILL: no goodbye). The supervisor "
            "restarts it within a few seconds.",
            (
                Action("Place 30 orders", "burst", {"count": 30}, phase="on-receive"),
                Action("Kill worker-1", "kill", {"process": "worker-1"}, waits=(held("on-receive"),)),
            ),
        ),
        Step(
            "Wait until nothing is in flight but the lost ones: the restarted worker finishes what was still in the "
            "queue. Then ack after commit again (the safe default), and do the same.",
            (
                Action("Ack after commit", "sandbox", {"ack_mode": "after_commit"}, waits=(settled("on-receive"),)),
                Action("Place 30 orders", "burst", {"count": 30}, phase="after-commit"),
                Action("Kill worker-1", "kill", {"process": "worker-1"}, waits=(held("after-commit"),)),
            ),
        ),
    ),
    checkpoints=(
        Checkpoint(
            "lost-on-receive",
            "Acked on receipt, the killed worker's orders were lost: lost > 0",
            "on-receive",
            lambda n: n["on-receive"]["lost"] > 0,
        ),
        Checkpoint(
            "none-lost-after-commit",
            "Acked after commit, the killed worker's orders were delivered again and all completed: lost = 0",
            "after-commit",
            lambda n: (
                _settled(n["after-commit"])
                and n["after-commit"]["redelivered"] > 0
                and n["after-commit"]["completed"] == n["after-commit"]["accepted"]
                and n["after-commit"]["lost"] == 0
            ),
        ),
    ),
    minutes=3,
    baseline=baseline(),
    needs_supervisor=True,
)

OUTBOX = Lesson(
    number=2,
    slug="outbox",
    title="Why an outbox",
    teaches="Writing to the database and publishing to the broker cannot be one step, unless the message is a row.",
    intro=(
        "Accepting an order means two writes to two systems: the order row in PostgreSQL and a message in RabbitMQ. "
        "No transaction spans both. Commit first, then publish (dual_write): if the publish fails, the customer got "
        "'accepted' and the order is never processed, and nothing records that a message is owed. Publish first, "
        "then commit (publish_first): if the commit fails, a message goes out for an order that does not exist; "
        "and a worker quick enough takes the message before the commit lands, finds no order, and dead-letters it: "
        "that order, committed a moment later, is lost too.",
        "The outbox makes the message a row: the order and its outbox row commit in one transaction, so both exist "
        "or neither does. A relay publishes committed rows afterwards and marks them sent only once the broker has "
        "confirmed; if the broker is down, the rows wait, and nothing is lost.",
        "These steps POST the orders from this page, through the API (its accept is what the publish mode "
        "changes). Cutting RabbitMQ needs make run's supervisor, whose proxy carries the web's connection to it.",
    ),
    diagram=Diagram(
        boxes=("API", "PostgreSQL: order + outbox row", "relay", "RabbitMQ"),
        arrows=("one transaction", "committed rows", "publish, confirm, mark sent"),
        note="dual_write and publish_first skip the outbox row: API → RabbitMQ directly, before or after the commit.",
    ),
    phases=(
        Phase("dual-write", "dual_write, broker cut"),
        Phase("publish-first", "publish_first, failing commits"),
        Phase("outbox", "outbox, broker cut"),
    ),
    numbers=("accepted", "completed", "in_flight", "lost"),
    counters=("ghost_messages",),
    steps=(
        Step(
            "Commit, then publish from the request (dual_write), and cut RabbitMQ.",
            (
                Action("dual_write", "sandbox", {"publish_mode": "dual_write"}),
                Action("Cut RabbitMQ", "outage", {"service": "rabbitmq", "action": "cut"}),
            ),
        ),
        Step(
            "POST 10 orders: each is accepted (202), and its publish fails. Restore RabbitMQ: nothing comes back, "
            "no row says a message is owed. Lost.",
            (
                Action("POST 10 orders", "post_orders", {"count": 10}, phase="dual-write"),
                Action("Restore RabbitMQ", "outage", {"service": "rabbitmq", "action": "restore"}),
            ),
        ),
        Step(
            "Publish, then commit (publish_first), with half the commits failing. Zero the counters (flush the "
            "cache), then POST 10 orders: the failed ones answer 503, yet their message went out: ghost messages, "
            "which the worker dead-letters as unknown orders.",
            (
                Action(
                    "publish_first",
                    "sandbox",
                    {"publish_mode": "publish_first", "accept_failure_rate": 0.5},
                    waits=(settled("dual-write"),),
                ),
                Action("Zero the counters", "flush_cache"),
                Action("POST 10 orders", "post_orders", {"count": 10}, phase="publish-first"),
            ),
        ),
        Step(
            "The outbox (the safe default), the same cut: the orders wait as outbox rows and are published once the "
            "broker is back. Zero the counters, cut, POST 10 orders, restore.",
            (
                Action(
                    "outbox",
                    "sandbox",
                    {"publish_mode": "outbox", "accept_failure_rate": 0.0},
                    waits=(settled("publish-first"),),
                ),
                Action("Zero the counters", "flush_cache"),
                Action("Cut RabbitMQ", "outage", {"service": "rabbitmq", "action": "cut"}),
                Action("POST 10 orders", "post_orders", {"count": 10}, phase="outbox"),
                Action("Restore RabbitMQ", "outage", {"service": "rabbitmq", "action": "restore"}),
            ),
        ),
    ),
    checkpoints=(
        Checkpoint(
            "dual-write-loses",
            "dual_write with the broker cut: accepted orders never processed, lost > 0",
            "dual-write",
            lambda n: n["dual-write"]["lost"] > 0,
        ),
        Checkpoint(
            "publish-first-ghosts",
            "publish_first with failing commits: messages for orders that do not exist, ghost messages > 0",
            "publish-first",
            lambda n: n["publish-first"]["accepted"] > 0 and (n["publish-first"]["ghost_messages"] or 0) > 0,
        ),
        Checkpoint(
            "outbox-none",
            "The outbox through the same cut: every order completed, lost = 0, no ghost message",
            "outbox",
            lambda n: (
                _settled(n["outbox"])
                and n["outbox"]["completed"] == n["outbox"]["accepted"]
                and n["outbox"]["lost"] == 0
                and n["outbox"]["ghost_messages"] == 0
            ),
        ),
    ),
    minutes=4,
    baseline=baseline(),
    needs_supervisor=True,
)

IDEMPOTENT_CONSUMERS = Lesson(
    number=3,
    slug="idempotent-consumers",
    title="Why idempotent consumers",
    teaches="Every message may arrive twice; a consumer that repeats its work on a redelivery charges twice.",
    intro=(
        "A broker promises at-least-once delivery, not exactly-once: when a worker fails before its ack, the "
        "message comes again, maybe to another worker. So every step must be safe to run twice. Here each step "
        "runs only from the status it expects (UPDATE … WHERE step = the one before), so a redelivery skips what "
        "was finished; and the gateway is called with the order id as its idempotency key, so a repeated charge "
        "returns the first one.",
        "step_guards=off removes both: a redelivered message runs every step again, and the charge goes to the "
        "gateway without a key. Our own table still holds one payment per order (a unique constraint), so our "
        "database looks fine; the gateway's ledger, the customer's card statement, shows the second charge.",
        "A bug rate plays the failure: a step raises an unexpected error before its commit, the message goes back "
        "to the queue and is delivered again (up to the delivery limit, {delivery_limit}).",
    ),
    diagram=Diagram(
        boxes=("queue", "worker: charge (gateway) → commit", "gateway ledger"),
        arrows=("delivered again after a failure", "charge again? key = order id"),
        broken=1,
        note="Without the key, each redelivery that reaches the charge step is a new charge.",
    ),
    phases=(Phase("guards-off", "step guards off"), Phase("guards-on", "step guards on")),
    numbers=("accepted", "completed", "dead_lettered", "in_flight", "redelivered", "charges", "charged_twice"),
    steps=(
        Step(
            "Switch the step guards off and make steps fail now and then (bug rate 0.3).",
            (Action("Step guards off, bug rate 0.3", "sandbox", {"step_guards": False, "bug_rate": 0.3}),),
        ),
        Step(
            "Place 10 orders and watch the gateway's ledger: charges > orders.",
            (Action("Place 10 orders", "burst", {"count": 10}, phase="guards-off"),),
        ),
        Step(
            "Step guards on (the safe default), the same failures, 10 more orders: one charge each.",
            (
                Action("Step guards on", "sandbox", {"step_guards": True}, waits=(settled("guards-off"),)),
                Action("Place 10 orders", "burst", {"count": 10}, phase="guards-on"),
            ),
        ),
    ),
    checkpoints=(
        Checkpoint(
            "charged-twice",
            "Without guards, redeliveries charged cards twice: charged twice > 0",
            "guards-off",
            lambda n: n["guards-off"]["charged_twice"] > 0,
        ),
        Checkpoint(
            "charged-once",
            "With guards, the same failures (orders delivered again) charged nobody twice: charged twice = 0",
            "guards-on",
            lambda n: (
                _settled(n["guards-on"]) and n["guards-on"]["redelivered"] > 0 and n["guards-on"]["charged_twice"] == 0
            ),
        ),
    ),
    minutes=2,
    baseline=baseline(),
)

CACHING = Lesson(
    number=7,
    slug="caching",
    title="Caching: write-through, cache-aside, stale reads",
    teaches="A cache that is only filled on a miss serves old answers until it expires.",
    intro=(
        "GET /api/orders/<id>/ reads Redis first and PostgreSQL only on a miss (X-Cache: HIT or MISS). What "
        "matters is who keeps Redis up to date. Write-through (the safe default): the worker writes the order to "
        "Redis after each committed change, so a hit is the latest committed state.",
        "Cache-aside, as often built: the reader fills Redis on a miss, and nothing updates it when the order "
        "changes. Until the entry expires (its TTL) every read returns the status it had when it was first read: a "
        "stale read. A long TTL makes stale reads last; a short one sends more reads to PostgreSQL, and a flush "
        "under load sends them all at once (a miss storm).",
        "The page reads this lesson's orders a few times while they are processed; the server counts a stale read "
        "when a hit's status or version differs from the database row (sandbox only: one more query per hit).",
    ),
    diagram=Diagram(
        boxes=("API read", "Redis", "PostgreSQL", "worker"),
        arrows=("hit?", "miss → read, fill", "commits; writes Redis (write-through)"),
        note="Cache-aside leaves out the worker's write: the entry keeps the status of the first read.",
    ),
    phases=(
        Phase("cache-aside", "cache-aside, TTL 600 s"),
        Phase("write-through", "write-through"),
        Phase("storm", "write-through, cache flushed"),
    ),
    numbers=("accepted", "completed", "in_flight"),
    counters=("stale_reads", "cache_hits", "cache_misses"),
    steps=(
        Step(
            "Cache-aside with a 10-minute TTL, and slower steps (300 ms) so reads catch orders mid-way. Zero the "
            "counters (flush the cache).",
            (
                Action(
                    "Cache-aside, TTL 600 s",
                    "sandbox",
                    {"cache_mode": "cache_aside", "cache_ttl_seconds": 600, "step_delay_ms": 300},
                ),
                Action("Zero the counters", "flush_cache"),
            ),
        ),
        Step(
            "Place 10 orders, then read them from the API once a second until they have all completed, and twice more.",
            (
                Action("Place 10 orders", "burst", {"count": 10}, phase="cache-aside"),
                Action(
                    "Read them until done", "read_orders", {"everyMs": 1000, "afterSettled": 2}, phase="cache-aside"
                ),
            ),
        ),
        Step(
            "Write-through (the safe default): zero the counters, place 10 orders, read them the same way.",
            (
                Action(
                    "Write-through",
                    "sandbox",
                    {"cache_mode": "write_through", "cache_ttl_seconds": None},
                    waits=(settled("cache-aside"),),
                ),
                Action("Zero the counters", "flush_cache"),
                Action("Place 10 orders", "burst", {"count": 10}, phase="write-through"),
                Action(
                    "Read them until done", "read_orders", {"everyMs": 1000, "afterSettled": 2}, phase="write-through"
                ),
            ),
        ),
        Step(
            "A miss storm: place 10 more orders and let them complete (the worker caches each one), then flush the "
            "cache and read them all at once. Nothing is cached any more, so every read goes to PostgreSQL: with "
            "thousands of readers, that is the load a flush (or a Redis restart) sends to the database.",
            (
                Action("Place 10 orders", "burst", {"count": 10}, phase="storm", waits=(settled("write-through"),)),
                Action("Flush the cache", "flush_cache", waits=(settled("storm"),)),
                Action("Read them once", "read_orders", {"everyMs": 0, "rounds": 1}, phase="storm"),
            ),
        ),
    ),
    checkpoints=(
        Checkpoint(
            "stale-reads",
            "Cache-aside served old statuses: stale reads > 0",
            "cache-aside",
            lambda n: n["cache-aside"]["accepted"] > 0 and (n["cache-aside"]["stale_reads"] or 0) > 0,
        ),
        Checkpoint(
            "fresh-reads",
            "Write-through: reads served from Redis, none stale",
            "write-through",
            lambda n: (
                _settled(n["write-through"])
                and (n["write-through"]["cache_hits"] or 0) > 0
                and n["write-through"]["stale_reads"] == 0
            ),
        ),
        Checkpoint(
            "miss-storm",
            "After a flush, every read of the completed orders missed and went to PostgreSQL",
            "storm",
            lambda n: (
                _settled(n["storm"])
                and n["storm"]["cache_hits"] == 0
                and (n["storm"]["cache_misses"] or 0) >= n["storm"]["accepted"]
            ),
        ),
    ),
    minutes=2,
    baseline=baseline(),
)

OVERSOLD = Lesson(
    number=9,
    slug="oversold",
    title="Oversold stock: a lost update",
    teaches="Read the stock, compute, write it back: two workers at once sell the same last unit twice.",
    intro=(
        "Reserving stock looks simple: read how many are left, check there are enough, write the new number. "
        "Naive code does exactly that, in three steps. With one worker it works. With several workers and "
        "threads, two of them read the same number (say 3) at the same moment, both see enough, both write 2: "
        "two units were sold and the row says one was. That is a lost update, and the shop sells more than it had.",
        "stock_update=read_modify_write runs the worker's reserve step that way (the product row is read without a "
        "lock; the new value is computed in Python and written back). The safe default does it in one statement "
        "that PostgreSQL runs atomically on the row: take the units only if they are still there "
        "(UPDATE … SET stock = stock - 1 WHERE … AND stock - 1 >= 0). An order that finds nothing left fails "
        "'out of stock', as it should.",
        "Each column gets its own product with {lesson_stock} units in stock and 30 orders of one unit each, "
        "placed at once; four threads reserve them.",
    ),
    diagram=Diagram(
        boxes=("worker thread A", "product row: stock 3", "worker thread B"),
        arrows=("read 3 … write 2", "read 3 … write 2"),
        broken=1,
        note="Both read 3 before either wrote: two units sold, the row says one. The guarded UPDATE makes B wait "
        "for A's row lock and re-check the stock.",
    ),
    code=(
        (
            "read_modify_write (unsafe)",
            "SELECT stock FROM orders_product\n"
            " WHERE id = 7;   -- 3\n"
            "-- Python: left = 3 - 1 (out of stock if < 0)\n"
            "UPDATE orders_product\n"
            "   SET stock = 2 WHERE id = 7;",
        ),
        (
            "guarded (safe)",
            "UPDATE orders_product\n"
            "   SET stock = stock - 1\n"
            " WHERE id = 7 AND stock - 1 >= 0\n"
            "RETURNING stock;   -- no row: out of stock",
        ),
    ),
    phases=(Phase("read-modify-write", "read-modify-write"), Phase("guarded", "guarded decrement")),
    numbers=("accepted", "completed", "failed", "stock_at_start", "units_sold", "oversold", "stock_left"),
    steps=(
        Step(
            "Switch the reserve step to read-modify-write.",
            (Action("stock_update=read_modify_write", "sandbox", {"stock_update": "read_modify_write"}),),
        ),
        Step(
            "A new product with 10 in stock, and 30 orders of one unit each for it, at once. Count the units sold.",
            (Action("Place 30 orders for 10 units", "stock_burst", {"count": 30}, phase="read-modify-write"),),
        ),
        Step(
            "Back to the guarded decrement (the safe default), and the same burst on a new product.",
            (
                Action(
                    "stock_update=guarded",
                    "sandbox",
                    {"stock_update": "guarded"},
                    waits=(settled("read-modify-write"),),
                ),
                Action("Place 30 orders for 10 units", "stock_burst", {"count": 30}, phase="guarded"),
            ),
        ),
    ),
    checkpoints=(
        Checkpoint(
            "oversold",
            "Read-modify-write sold units that did not exist: units sold beyond the stock > 0",
            "read-modify-write",
            lambda n: _settled(n["read-modify-write"]) and (n["read-modify-write"]["oversold"] or 0) > 0,
        ),
        Checkpoint(
            "sold-what-existed",
            "The guarded decrement sold exactly the stock: beyond the stock = 0, stock left = 0, the rest failed",
            "guarded",
            lambda n: (
                _settled(n["guarded"])
                and n["guarded"]["oversold"] == 0
                and n["guarded"]["units_sold"] == n["guarded"]["stock_at_start"]
                and n["guarded"]["stock_left"] == 0
            ),
        ),
    ),
    minutes=1,
    baseline=baseline(),
)

FULL_QUEUE = Lesson(
    number=10,
    slug="full-queue",
    title="A full queue: backpressure",
    teaches="When the queue is full, the broker should refuse new messages, and the outbox holds them meanwhile.",
    intro=(
        "A queue is not infinite: memory and disk run out, so a production queue gets a length limit. What happens "
        "at the limit is the question. Drop-head (RabbitMQ's default overflow): the queue takes the new message and "
        "drops its oldest one. The publisher got a confirm, the order is 'accepted', and its message is gone. Here "
        "the main queue has a dead-letter exchange, so what it drops is parked in the dead-letter queue (reason "
        "maxlen) and the order shows dead-lettered; without one it would simply vanish, until the sweeper noticed.",
        "Reject-publish: a full queue refuses the new message (a nack to the publisher). That is backpressure: the "
        "producer learns that the consumers are behind. The relay leaves a refused row in the outbox and tries it "
        "again later: the outbox is the buffer, and nothing is lost. When the workers catch up, the queue has room "
        "again and the backlog drains.",
        "The lesson pauses the workers, so the queue fills, and limits the main queue to 10 messages with a "
        "RabbitMQ policy (no queue is declared again), which make run's supervisor applies with rabbitmqctl and "
        "removes when the lesson ends or is reset.",
    ),
    diagram=Diagram(
        boxes=("outbox", "relay", "main queue (10 at most)", "workers (paused)"),
        arrows=("pending rows", "publish · confirm or nack", "deliver"),
        broken=2,
        note="Drop-head confirms every publish and drops the oldest message; reject-publish nacks the newest, which "
        "stays an outbox row.",
    ),
    phases=(Phase("drop-head", "overflow drop-head"), Phase("reject-publish", "overflow reject-publish")),
    numbers=(
        "accepted",
        "completed",
        "dead_lettered",
        "lost",
        "dropped",
        "waited_in_queue",
        "waited_in_outbox",
        "publish_nacks",
    ),
    steps=(
        Step(
            "Pause the workers and limit the main queue to 10 messages; when it is full, it drops its oldest message "
            "(overflow drop-head).",
            (
                Action(
                    "Pause, limit 10, drop-head",
                    "sandbox",
                    {"paused": True, "queue_max_length": 10, "queue_overflow": "drop_head"},
                ),
            ),
        ),
        Step(
            "POST 30 orders, one after the other, as customers would. The relay publishes all 30 and the broker "
            "confirms each one; the queue keeps the newest 10. Once all are published, resume the workers.",
            (
                Action("POST 30 orders", "post_orders", {"count": 30}, phase="drop-head"),
                Action("Resume the workers", "sandbox", {"paused": False}, waits=(published("drop-head"),)),
            ),
        ),
        Step(
            "Pause again, the same limit with overflow reject-publish (the safe choice), and 30 orders again: about "
            "10 fit (a quorum queue may take one or two more before its refusal reaches the publisher), the broker "
            "refuses the rest and the relay keeps them in the outbox, trying again every few seconds. Once it got its "
            "nacks, resume the workers.",
            (
                Action(
                    "Pause, limit 10, reject-publish",
                    "sandbox",
                    {"paused": True, "queue_overflow": "reject_publish"},
                    waits=(settled("drop-head"),),
                ),
                Action("POST 30 orders", "post_orders", {"count": 30}, phase="reject-publish"),
                Action("Resume the workers", "sandbox", {"paused": False}, waits=(nacked("reject-publish"),)),
            ),
        ),
        Step(
            "Once every order completed, remove the limit.",
            (
                Action(
                    "Remove the limit",
                    "sandbox",
                    {"queue_max_length": None},
                    waits=(settled("reject-publish"),),
                ),
            ),
        ),
    ),
    checkpoints=(
        Checkpoint(
            "dropped",
            "Drop-head confirmed every publish and dropped orders from the full queue: dropped > 0",
            "drop-head",
            lambda n: _settled(n["drop-head"]) and n["drop-head"]["dropped"] > 0,
        ),
        Checkpoint(
            "refused-and-kept",
            "Reject-publish: the broker refused (nacks > 0), the refused orders waited in the outbox, and every order "
            "completed: dropped = 0, lost = 0",
            "reject-publish",
            lambda n: (
                _settled(n["reject-publish"])
                and n["reject-publish"]["publish_nacks"] > 0
                and n["reject-publish"]["waited_in_outbox"] > 0
                and n["reject-publish"]["dropped"] == 0
                and n["reject-publish"]["lost"] == 0
                and n["reject-publish"]["completed"] == n["reject-publish"]["accepted"]
            ),
        ),
    ),
    minutes=2,
    baseline=baseline(),
    needs_supervisor=True,
)

RETRY_STORM = Lesson(
    number=11,
    slug="retry-storm",
    title="A retry storm: backoff with jitter",
    teaches="Retries on fixed delays bring every order that failed together back together; jitter spreads them.",
    intro=(
        "The payment gateway goes down for a few seconds, then comes back. Every order that tried to charge a card "
        "meanwhile was refused and waits in a retry tier ({tiers}). On fixed delays each one waits exactly its tier's "
        "delay, so the orders that failed together come back together: the gateway meets a wave per tier, as steep as "
        "the burst that caused it. A gateway just back on its feet is often knocked down again by such a wave, and "
        "the waves repeat at every tier: a retry storm.",
        "Jitter (the safe default here): each retry waits a random share of its tier's delay, 0.5 to 1.5 times it, so "
        "the returns spread out and the gateway sees a trickle. RabbitMQ only expires the message at a queue's head, "
        "so in one queue a long wait would hold the short ones behind it; each tier has eleven delay queues (lanes) "
        "with TTLs of 0.5, 0.6, ... 1.5 times its delay, and the worker picks one at random.",
        "In each column the gateway refuses every call for {gateway_down} s, from the moment 20 orders arrive at "
        "once: long enough that each order's first retry is refused too, short enough that the second finds it back. "
        "The chart counts the gateway's calls per 100 ms (red: refused, green: charged). Nothing is lost and nothing "
        "is charged twice either way; what differs is the load the gateway meets, and how long the last order takes.",
    ),
    diagram=Diagram(
        boxes=("gateway (down, then back)", "worker", "retry tier (its delay, or a lane: 0.5-1.5×)", "main queue"),
        arrows=("refused", "retry: republish to a delay queue", "after the TTL, dead-lettered back"),
        broken=1,
        note="Fixed: every order of a burst waits the same TTL and returns at the same moment. Jitter: a lane at "
        "random, so they return spread over the tier's delay.",
    ),
    code=(
        (
            "retry_backoff=fixed (unsafe)",
            "tier = tiers[retries]\npublish(tier.queue)   # TTL = the tier's delay",
        ),
        (
            "retry_backoff=jitter (safe)",
            "tier = tiers[retries]\n"
            "lane = random.choice(tier.lanes)\n"
            "publish(lane.queue)   # TTL = 0.5, 0.6 … 1.5 × the delay",
        ),
    ),
    phases=(Phase("fixed", "fixed delays"), Phase("jitter", "backoff with jitter")),
    numbers=(
        "accepted",
        "completed",
        "lost",
        "charged_twice",
        "gateway_calls",
        "gateway_refused",
        "retry_calls_peak",
        "retry_calls_second",
        "back_calls_peak",
        "calls_peak",
        "seconds",
    ),
    steps=(
        Step(
            "Retries on fixed delays: every retry of a tier waits exactly the tier's delay.",
            (Action("retry_backoff=fixed", "sandbox", {"retry_backoff": "fixed"}),),
        ),
        Step(
            "The gateway goes down for a few seconds and 20 orders arrive at once. Watch the chart: a wave at the "
            "burst, a wave of refusals at the first tier, a wave of charges at the second.",
            (Action("Gateway down, 20 orders", "outage_burst", {"count": 20}, phase="fixed"),),
        ),
        Step(
            "Back to jitter (the safe default), and the same outage and burst.",
            (
                Action("retry_backoff=jitter", "sandbox", {"retry_backoff": "jitter"}, waits=(settled("fixed"),)),
                Action("Gateway down, 20 orders", "outage_burst", {"count": 20}, phase="jitter"),
            ),
        ),
    ),
    checkpoints=(
        Checkpoint(
            "waves",
            "Fixed delays: every order completed once the gateway was back, none lost or charged twice; the retries "
            "came back in waves (the retried calls in the busiest second)",
            "fixed",
            lambda n: (
                _settled(n["fixed"])
                and n["fixed"]["completed"] == n["fixed"]["accepted"]
                and n["fixed"]["lost"] == 0
                and n["fixed"]["charged_twice"] == 0
                and n["fixed"]["gateway_refused"] > 0
            ),
        ),
        Checkpoint(
            "spread",
            "Jitter: the same outage, the retries spread out: fewer retried calls in the busiest second than on fixed "
            "delays, every order completed, none lost or charged twice",
            "jitter",
            lambda n: (
                _settled(n["jitter"])
                and n["jitter"]["completed"] == n["jitter"]["accepted"]
                and n["jitter"]["lost"] == 0
                and n["jitter"]["charged_twice"] == 0
                and n["jitter"]["gateway_refused"] > 0
                and n["jitter"]["retry_calls_second"] < n["fixed"]["retry_calls_second"]
            ),
        ),
    ),
    minutes=1,
    # Sixteen threads that may hold every order of the burst: the worker takes a wave as fast as it comes, so what
    # the gateway meets is the wave's shape, not one worker's pace.
    baseline=baseline(worker_concurrency=16, worker_prefetch=20),
    needs_supervisor=True,
    chart="calls_chart",
)

LESSONS: tuple[Lesson, ...] = tuple(
    sorted(
        (
            ACK_TIMING,
            OUTBOX,
            IDEMPOTENT_CONSUMERS,
            IDEMPOTENCY_KEY,
            RETRIES,
            POISON,
            CACHING,
            SCALING,
            OVERSOLD,
            FULL_QUEUE,
            RETRY_STORM,
        ),
        key=lambda lesson: lesson.number,
    )
)
BY_SLUG = {lesson.slug: lesson for lesson in LESSONS}


def text_values(lesson: Lesson) -> dict[str, str]:
    """The facts the lesson texts quote ({tiers}, {delivery_limit}, ...), from the settings that decide them and the
    lesson's baseline."""
    import os

    tiers = ", ".join(f"{ms / 1000:g} s" for ms in settings.RETRY_DELAYS_MS)
    return {
        "tiers": tiers,
        "delivery_limit": str(settings.AMQP_DELIVERY_LIMIT),
        "cores": str(os.cpu_count() or 1),
        "prefetch": str(lesson.baseline["worker_prefetch"]),
        "sweep_after": f"{settings.SWEEP_AFTER:g}",
        "lesson_stock": str(LESSON_STOCK),
        "gateway_down": f"{gateway_outage_seconds():g}",
    }


def gateway_outage_seconds() -> float:
    """How long the retry-storm lesson's gateway is down once its orders exist: past the first tier's longest jitter
    (1.5x its delay) with room for the burst's first calls to spread (a worker takes them a few at a time), short of
    the second tier's shortest return (0.5x the first delay, then 0.5x the second): a quarter of the first tier's
    delay plus half the second's (2.75 s for 1 s and 5 s)."""
    delays = [*settings.RETRY_DELAYS_MS, 0][:2]
    return round((delays[0] / 4 + delays[1] / 2) / 1000, 2) or 1.0
