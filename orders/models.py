"""The order pipeline's state in PostgreSQL: catalog, orders, outbox, journey events, payments, notifications."""

from __future__ import annotations

import uuid
from decimal import Decimal

from django.core.validators import MaxValueValidator, MinValueValidator
from django.db import IntegrityError, models
from django.db.models import Q


class Product(models.Model):
    sku = models.CharField(max_length=64, unique=True)
    name = models.CharField(max_length=200)
    price = models.DecimalField(max_digits=10, decimal_places=2, validators=[MinValueValidator(Decimal("0"))])
    stock = models.PositiveIntegerField(default=0)

    class Meta:
        ordering = ["sku"]
        constraints = [models.CheckConstraint(condition=Q(stock__gte=0), name="product_stock_not_negative")]

    def __str__(self) -> str:
        return f"{self.sku} — {self.name}"


class OrderStatus(models.TextChoices):
    PENDING = "pending", "pending (in the outbox)"
    QUEUED = "queued", "queued (published to RabbitMQ)"
    PROCESSING = "processing", "processing"
    RETRYING = "retrying", "retrying (waiting in a delay queue)"
    COMPLETED = "completed", "completed"
    FAILED = "failed", "failed"
    DEAD_LETTERED = "dead_lettered", "dead-lettered"

    @classmethod
    def terminal(cls) -> frozenset[OrderStatus]:
        return frozenset({cls.COMPLETED, cls.FAILED, cls.DEAD_LETTERED})


# The allowed status transitions. Every guarded status update in the code names its expected source statuses
# from this table (see `allowed_sources`), so a transition that is not listed here cannot happen.
# A worker may receive a message whose order the relay has not yet marked `queued` (the relay commits after the
# broker's confirm, which can come after delivery), hence pending -> processing.
TRANSITIONS: dict[OrderStatus, frozenset[OrderStatus]] = {
    OrderStatus.PENDING: frozenset({OrderStatus.QUEUED, OrderStatus.PROCESSING, OrderStatus.DEAD_LETTERED}),
    OrderStatus.QUEUED: frozenset({OrderStatus.PROCESSING, OrderStatus.DEAD_LETTERED}),
    OrderStatus.PROCESSING: frozenset(
        {
            OrderStatus.PROCESSING,  # a redelivery after a crash resumes the same attempt's status
            OrderStatus.RETRYING,
            OrderStatus.COMPLETED,
            OrderStatus.FAILED,
            OrderStatus.DEAD_LETTERED,
        }
    ),
    OrderStatus.RETRYING: frozenset({OrderStatus.PROCESSING, OrderStatus.DEAD_LETTERED}),
    OrderStatus.COMPLETED: frozenset(),
    OrderStatus.FAILED: frozenset(),
    OrderStatus.DEAD_LETTERED: frozenset({OrderStatus.QUEUED}),
}


def allowed_sources(target: OrderStatus) -> list[str]:
    """The statuses from which an order may move to `target`."""
    return [source.value for source, targets in TRANSITIONS.items() if target in targets]


class OrderStep(models.TextChoices):
    """The last processing step that committed. Steps run in this order; each is done at most once."""

    NONE = "", "not started"
    INVENTORY_RESERVED = "inventory_reserved", "inventory reserved"
    PAYMENT_CHARGED = "payment_charged", "payment charged"
    CUSTOMER_NOTIFIED = "customer_notified", "customer notified"


class Order(models.Model):
    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    status = models.CharField(max_length=20, choices=OrderStatus, default=OrderStatus.PENDING)
    step = models.CharField(max_length=32, choices=OrderStep, default=OrderStep.NONE, blank=True)
    customer_email = models.EmailField()
    total = models.DecimalField(max_digits=12, decimal_places=2)
    note = models.CharField(max_length=500, blank=True, default="")
    failure_reason = models.TextField(blank=True, default="")
    attempts = models.PositiveIntegerField(default=0, help_text="Deliveries the worker has started.")
    # Bumped by every committed change; the Redis entry carries it so an older write never overwrites a newer.
    version = models.PositiveIntegerField(default=1)
    result = models.JSONField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True, db_index=True)
    updated_at = models.DateTimeField(auto_now=True)
    completed_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at"]
        indexes = [models.Index(fields=["status", "-created_at"], name="order_status_created")]

    def __str__(self) -> str:
        return f"order {self.id} ({self.status})"

    @property
    def is_terminal(self) -> bool:
        return self.status in OrderStatus.terminal()


class OrderLine(models.Model):
    order = models.ForeignKey(Order, related_name="lines", on_delete=models.CASCADE)
    product = models.ForeignKey(Product, related_name="+", on_delete=models.PROTECT)
    sku = models.CharField(max_length=64)
    quantity = models.PositiveIntegerField()
    unit_price = models.DecimalField(max_digits=10, decimal_places=2)

    class Meta:
        ordering = ["id"]
        constraints = [models.UniqueConstraint(fields=["order", "product"], name="order_line_unique_product")]

    def __str__(self) -> str:
        return f"{self.quantity} × {self.sku}"

    @property
    def line_total(self) -> Decimal:
        return self.unit_price * self.quantity


class OutboxMessage(models.Model):
    """A message committed with the order, waiting for the relay to publish it to RabbitMQ."""

    id = models.BigAutoField(primary_key=True)
    order = models.ForeignKey(Order, related_name="outbox_messages", on_delete=models.CASCADE)
    message_type = models.CharField(max_length=64, default="order.placed")
    routing_key = models.CharField(max_length=128, default="order.placed")
    payload = models.JSONField()
    created_at = models.DateTimeField(auto_now_add=True)
    sent_at = models.DateTimeField(null=True, blank=True)
    publish_attempts = models.PositiveIntegerField(default=0)
    last_error = models.TextField(blank=True, default="")

    class Meta:
        ordering = ["id"]
        indexes = [
            models.Index(fields=["id"], name="outbox_unsent", condition=Q(sent_at__isnull=True)),
        ]

    def __str__(self) -> str:
        return f"outbox #{self.id} {self.message_type} ({'sent' if self.sent_at else 'pending'})"


class EventKind(models.TextChoices):
    ACCEPTED = "accepted", "accepted by the API"
    PUBLISHED = "published", "published to RabbitMQ"
    RECEIVED = "received", "received by a worker"
    REDELIVERED = "redelivered", "redelivered to a worker"
    INVENTORY_RESERVED = "inventory_reserved", "inventory reserved"
    PAYMENT_CHARGED = "payment_charged", "payment charged"
    CUSTOMER_NOTIFIED = "customer_notified", "customer notified"
    COMPLETED = "completed", "completed"
    FAILED = "failed", "failed"
    RETRY_SCHEDULED = "retry_scheduled", "retry scheduled"
    DEAD_LETTERED = "dead_lettered", "dead-lettered"
    REPLAYED = "replayed", "replayed from the dead-letter queue"
    DUPLICATE_IGNORED = "duplicate_ignored", "duplicate delivery ignored"
    STEP_WAITING = "step_waiting", "waiting for the next step"
    CONTROL = "control", "control action"
    RESENT = "resent", "re-sent by the sweeper"
    PUBLISH_FAILED = "publish_failed", "publish failed (no outbox: nothing will retry it)"


class OrderEvent(models.Model):
    """One step of an order's journey, with what the database, the queue and the cache held at that moment."""

    id = models.BigAutoField(primary_key=True)
    order = models.ForeignKey(Order, related_name="events", on_delete=models.CASCADE)
    seq = models.PositiveIntegerField()
    kind = models.CharField(max_length=32, choices=EventKind)
    at = models.DateTimeField(auto_now_add=True)
    message = models.CharField(max_length=500)
    snapshot = models.JSONField(default=dict)

    class Meta:
        ordering = ["order", "seq"]
        constraints = [models.UniqueConstraint(fields=["order", "seq"], name="order_event_unique_seq")]

    def __str__(self) -> str:
        return f"{self.order_id} #{self.seq} {self.kind}"


class Payment(models.Model):
    """A simulated charge. The one-to-one key is what makes a double charge impossible, not the code's care."""

    order = models.OneToOneField(Order, related_name="payment", on_delete=models.PROTECT)
    amount = models.DecimalField(max_digits=12, decimal_places=2)
    gateway_reference = models.CharField(max_length=64, unique=True)
    created_at = models.DateTimeField(auto_now_add=True)

    def __str__(self) -> str:
        return f"payment {self.gateway_reference} {self.amount}"


class GatewayCharge(models.Model):
    """The payment provider's own ledger: what an external gateway would hold, simulated in our database.

    Not ours to join with: it has no foreign key to `Order`, only the merchant's reference the charge was made for,
    as a real provider keeps it in a charge's metadata. A unique idempotency key is what makes a repeated call
    return the first charge instead of charging again; a charge made without a key is free to repeat."""

    idempotency_key = models.CharField(max_length=64, unique=True, null=True, blank=True)
    order_ref = models.CharField(max_length=64, db_index=True)
    amount = models.DecimalField(max_digits=12, decimal_places=2)
    reference = models.CharField(max_length=64, unique=True)
    created_at = models.DateTimeField(auto_now_add=True)

    def __str__(self) -> str:
        return f"gateway charge {self.reference} {self.amount} for {self.order_ref}"


class Notification(models.Model):
    order = models.OneToOneField(Order, related_name="notification", on_delete=models.CASCADE)
    channel = models.CharField(max_length=16, default="email")
    recipient = models.EmailField()
    subject = models.CharField(max_length=200)
    body = models.TextField()
    sent_at = models.DateTimeField(auto_now_add=True)

    def __str__(self) -> str:
        return f"{self.channel} to {self.recipient}: {self.subject}"


class IdempotencyKey(models.Model):
    """The first response to a POST that carried an `Idempotency-Key`, stored in the order's own transaction."""

    key = models.CharField(max_length=255, primary_key=True)
    request_hash = models.CharField(max_length=64)
    order = models.ForeignKey(Order, related_name="+", on_delete=models.CASCADE)
    response_status = models.PositiveSmallIntegerField()
    response_body = models.JSONField()
    created_at = models.DateTimeField(auto_now_add=True)
    expires_at = models.DateTimeField(db_index=True)

    def __str__(self) -> str:
        return self.key


class AckMode(models.TextChoices):
    AFTER_COMMIT = "after_commit", "after commit (safe)"
    ON_RECEIVE = "on_receive", "on receive (unsafe: a killed worker loses what it held)"


class PublishMode(models.TextChoices):
    OUTBOX = "outbox", "outbox (safe)"
    DUAL_WRITE = "dual_write", "dual write (unsafe: commit, then publish from the request)"
    PUBLISH_FIRST = "publish_first", "publish first (unsafe: publish, then commit)"


class CacheMode(models.TextChoices):
    WRITE_THROUGH = "write_through", "write-through (safe)"
    CACHE_ASIDE = "cache_aside", "cache-aside (unsafe: filled on a miss, never invalidated)"
    OFF = "off", "off (no cache)"


class StockUpdate(models.TextChoices):
    GUARDED = "guarded", "guarded (safe: one conditional UPDATE)"
    READ_MODIFY_WRITE = "read_modify_write", "read-modify-write (unsafe: read, compute, write back; a lost update)"


class QueueOverflow(models.TextChoices):
    REJECT_PUBLISH = "reject_publish", "reject-publish (safe: the broker nacks, the message waits in the outbox)"
    DROP_HEAD = "drop_head", "drop-head (unsafe: the broker drops the oldest messages of a full queue)"


class RetryBackoff(models.TextChoices):
    JITTER = "jitter", "jitter (safe: each retry waits 0.5-1.5x its tier's delay, a lane picked at random)"
    FIXED = "fixed", "fixed (unsafe: every retry of a tier waits exactly its delay; a burst returns as one wave)"


class SandboxSettings(models.Model):
    """The fault injector: one row, read by every worker within a second. All faults are off by default."""

    step_delay_ms = models.PositiveIntegerField(default=0, validators=[MaxValueValidator(60_000)])
    decline_rate = models.FloatField(default=0.0, validators=[MinValueValidator(0.0), MaxValueValidator(1.0)])
    transient_failure_rate = models.FloatField(default=0.0, validators=[MinValueValidator(0.0), MaxValueValidator(1.0)])
    crash_rate = models.FloatField(default=0.0, validators=[MinValueValidator(0.0), MaxValueValidator(1.0)])
    bug_rate = models.FloatField(
        default=0.0,
        validators=[MinValueValidator(0.0), MaxValueValidator(1.0)],
        help_text="Steps raise an unexpected error (a bug): nacked until the delivery limit parks it.",
    )
    paused = models.BooleanField(default=False, help_text="Workers stop consuming (messages wait in the queue).")
    step_mode = models.BooleanField(
        default=False, help_text="Workers wait before each step of an order until 'Next step' is pressed."
    )
    # Followed by the supervisor of `make run` (worker/supervisor.py); other deployments scale their own way.
    workers = models.PositiveSmallIntegerField(
        default=1,
        validators=[MinValueValidator(1), MaxValueValidator(8)],
        help_text="Worker processes the supervisor of `make run` keeps running.",
    )
    worker_concurrency = models.PositiveSmallIntegerField(
        null=True,
        blank=True,
        validators=[MinValueValidator(1), MaxValueValidator(16)],
        help_text="Orders each supervised worker processes at once (threads; empty: WORKER_CONCURRENCY). "
        "A change restarts the workers.",
    )
    # A fault: the API's accept transaction fails after its inserts (and, in publish_mode=publish_first, after the
    # publish), so it rolls back. Sandbox only.
    accept_failure_rate = models.FloatField(
        default=0.0,
        validators=[MinValueValidator(0.0), MaxValueValidator(1.0)],
        help_text="Share of POST /api/orders/ whose transaction fails (rolls back) just before its commit.",
    )
    worker_prefetch = models.PositiveSmallIntegerField(
        null=True,
        blank=True,
        validators=[MinValueValidator(1), MaxValueValidator(500)],
        help_text="Unacked messages each supervised worker holds (empty: WORKER_PREFETCH). A change restarts the "
        "workers.",
    )
    # The unsafe modes (orders/sandbox.py `modes`): each switches a guarantee off, on the real code path. Refused,
    # and ignored if left in the row, when ORDERPIPE_SANDBOX=false.
    ack_mode = models.CharField(
        max_length=20,
        choices=AckMode,
        default=AckMode.AFTER_COMMIT,
        help_text="UNSAFE when on_receive: workers ack a message as soon as they take it; a killed worker loses it.",
    )
    publish_mode = models.CharField(
        max_length=20,
        choices=PublishMode,
        default=PublishMode.OUTBOX,
        help_text="UNSAFE unless outbox: how POST /api/orders/ hands the order to RabbitMQ.",
    )
    step_guards = models.BooleanField(
        default=True,
        help_text="UNSAFE when off: steps run without checking they ran before, so a redelivery repeats them (and "
        "charges the gateway again, without an idempotency key).",
    )
    cache_mode = models.CharField(
        max_length=20,
        choices=CacheMode,
        default=CacheMode.WRITE_THROUGH,
        help_text="UNSAFE unless write_through: cache_aside fills on a read miss and never invalidates; off: no cache.",
    )
    cache_ttl_seconds = models.PositiveIntegerField(
        null=True,
        blank=True,
        validators=[MinValueValidator(1), MaxValueValidator(3600)],
        help_text="TTL of the order cache entries (empty: ORDER_CACHE_TTL).",
    )
    stock_update = models.CharField(
        max_length=20,
        choices=StockUpdate,
        default=StockUpdate.GUARDED,
        help_text="UNSAFE when read_modify_write: the reserve step reads the stock, computes in Python and writes it "
        "back, without a lock: two workers reserving at once both write what they read, and stock is oversold.",
    )
    # A length limit on the main queue, as a RabbitMQ policy that `make run`'s supervisor sets and clears
    # (worker/queue_policy.py); with it, what a full queue does with one more message.
    queue_max_length = models.PositiveIntegerField(
        null=True,
        blank=True,
        validators=[MinValueValidator(1), MaxValueValidator(100_000)],
        help_text="Ready messages the main queue holds at most (a policy make run's supervisor applies; empty: no "
        "limit).",
    )
    queue_overflow = models.CharField(
        max_length=20,
        choices=QueueOverflow,
        default=QueueOverflow.REJECT_PUBLISH,
        help_text="UNSAFE when drop_head: a full main queue drops its oldest messages instead of refusing new ones.",
    )
    # A fault: the payment gateway refuses every call (a retryable error) until this Unix time, in seconds (lesson 11
    # sets it to now + N s).
    gateway_down_until = models.FloatField(
        null=True,
        blank=True,
        validators=[MinValueValidator(0.0), MaxValueValidator(4_102_444_800.0)],  # up to 2100-01-01
        help_text="Unix time (seconds) until which the payment gateway refuses every call, a timeout-like error the "
        "worker retries (empty: the gateway is up).",
    )
    retry_backoff = models.CharField(
        max_length=20,
        choices=RetryBackoff,
        default=RetryBackoff.JITTER,
        help_text="UNSAFE when fixed: every retry of a tier waits exactly the tier's delay, so orders that failed "
        "together come back together (a retry storm); jitter spreads them over 0.5-1.5x the delay.",
    )
    # What the supervisor last applied to the broker ("" none, else the policy's definition): not a setting.
    queue_policy_in_effect = models.CharField(max_length=200, blank=True, default="", editable=False)
    updated_at = models.DateTimeField(auto_now=True)
    # Goes up by one with every change (orders/sandbox `sandbox_update`). Workers report the version they run in
    # their heartbeat, so a change is known to be in effect, process by process.
    version = models.PositiveBigIntegerField(default=0, editable=False)

    FIELDS = (
        "step_delay_ms",
        "decline_rate",
        "transient_failure_rate",
        "crash_rate",
        "bug_rate",
        "paused",
        "step_mode",
        "workers",
        "worker_concurrency",
        "accept_failure_rate",
        "worker_prefetch",
        "ack_mode",
        "publish_mode",
        "step_guards",
        "cache_mode",
        "cache_ttl_seconds",
        "stock_update",
        "queue_max_length",
        "queue_overflow",
        "gateway_down_until",
        "retry_backoff",
    )

    class Meta:
        verbose_name = "sandbox settings"
        verbose_name_plural = "sandbox settings"

    def __str__(self) -> str:
        return "sandbox settings"

    @classmethod
    def load(cls) -> SandboxSettings:
        try:
            obj, _ = cls.objects.get_or_create(pk=1)
        except IntegrityError:  # two processes created the row at the same moment; the other one won
            obj = cls.objects.get(pk=1)
        return obj

    def as_dict(self) -> dict[str, object]:
        return {name: getattr(self, name) for name in self.FIELDS}


class SandboxChange(models.Model):
    """Every change to the sandbox settings: who, through what, from what to what."""

    field = models.CharField(max_length=64)
    old_value = models.JSONField(null=True)
    new_value = models.JSONField(null=True)
    changed_by = models.CharField(max_length=150, blank=True, default="")
    via = models.CharField(max_length=32)  # api, admin, command, dashboard
    at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-at", "-id"]

    def __str__(self) -> str:
        return f"{self.field}: {self.old_value} -> {self.new_value} ({self.via})"


class StepGrant(models.Model):
    """In step-by-step mode, one press of 'Next step' on an order's journey: lets a waiting worker run one step."""

    order = models.ForeignKey(Order, related_name="step_grants", on_delete=models.CASCADE)
    created_at = models.DateTimeField(auto_now_add=True)
    used_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        indexes = [models.Index(fields=["order"], name="step_grant_unused", condition=Q(used_at__isnull=True))]

    def __str__(self) -> str:
        return f"step grant for {self.order_id}"
