"""Sandbox controls that are not about one order: place a burst of orders, purge a queue, flush the cache.

They live in the worker app because purging needs an AMQP connection, and pika is only imported here (orders never
imports worker). Each view opens a short-lived connection and closes it in `finally`: never a connection kept per
thread, which under ASGI would leak one per request thread. Every action is recorded in the live feed and the log.
Staff only, session auth with CSRF; with ORDERPIPE_SANDBOX=false every endpoint answers 404.
"""

from __future__ import annotations

import heapq
import logging
import threading
import time
import uuid

from django.conf import settings
from django.db import connection, transaction
from django.http import Http404
from drf_spectacular.utils import extend_schema, inline_serializer
from rest_framework import serializers, status
from rest_framework.permissions import BasePermission
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from orderpipe.lessons.measure import LESSON_SKU_PREFIX
from orders import cache, live, sandbox
from orders.access import can_control
from orders.models import Product
from orders.sandbox import BURST_CHUNK, BURST_MAX, RESTOCK_DEFAULT, RESTOCK_MAX
from orders.services import order_create
from worker.broker import BROKER_ERRORS, connect
from worker.topology import topology

log = logging.getLogger(__name__)


class IsSandboxStaff(BasePermission):
    sandbox_only = True  # not in the API root or the schema when the sandbox is off (orders/schema.py)

    def has_permission(self, request, view) -> bool:
        return can_control(request.user)


class ControlApi(APIView):
    permission_classes = [IsSandboxStaff]

    def initial(self, request: Request, *args, **kwargs) -> None:
        from django.conf import settings

        if not settings.ORDERPIPE_SANDBOX:
            raise Http404  # the controls do not exist outside the sandbox
        super().initial(request, *args, **kwargs)


# ---------------------------------------------------------------- burst


# A burst up to this many orders is created within the request (a few seconds at most), so it answers when they exist;
# a larger one is created by a background thread after the answer.
BURST_IN_REQUEST = 1000


class NotEnoughStock(Exception):
    pass


def burst_plan(*, count: int) -> list[str]:
    """The product of each of a burst's `count` orders (one item each): every next order takes the product with the
    most stock left, so the burst spreads over the catalog and no product runs out while another still has stock.
    Raises NotEnoughStock, before anything is created, when all the stock together does not cover the burst.

    Stock is what the products hold now: orders already in the pipeline reserve theirs later, so a burst placed
    while another one drains can still run a product out (the orders then fail "out of stock", as they should)."""
    in_stock = list(
        Product.objects.filter(stock__gt=0).exclude(sku__startswith=LESSON_SKU_PREFIX).values_list("sku", "stock")
    )
    total = sum(stock for _sku, stock in in_stock)
    if total < count:
        raise NotEnoughStock(
            f"Not enough stock: {total} item(s) left across {len(in_stock)} product(s), so a burst of {count} orders "
            f"would run out. Restock first, or place at most {total}."
        )
    heap = [(-stock, sku) for sku, stock in in_stock]
    heapq.heapify(heap)
    plan = []
    for _ in range(count):
        negative_left, sku = heapq.heappop(heap)
        plan.append(sku)
        if negative_left + 1 < 0:
            heapq.heappush(heap, (negative_left + 1, sku))
    return plan


def burst_create(*, count: int, by: str, burst_id: str, plan: list[str] | None = None, email: str | None = None) -> int:
    """Create `count` orders through `order_create`, one transaction per chunk of BURST_CHUNK (each order keeps its
    own savepoint and outbox row; the chunk's commit wakes the relay once), of the products `burst_plan` chose.
    Every order goes to `email` when given (a lesson tags its orders so), else to burst-<id>-<n>@example.com.
    Returns the number created."""
    if plan is None:
        try:
            plan = burst_plan(count=count)
        except NotEnoughStock as exc:
            live.record_control("burst", f"burst {burst_id}: {exc}", by=by)
            return 0
    created = 0
    started = time.monotonic()
    for start in range(0, count, BURST_CHUNK):
        with transaction.atomic():
            for n in range(start, min(count, start + BURST_CHUNK)):
                order_create(
                    customer_email=email or f"burst-{burst_id}-{n}@example.com",
                    items=[{"sku": plan[n], "quantity": 1}],
                    note=f"burst {burst_id}",
                )
                created += 1
    live.record_control(
        "burst", f"burst {burst_id}: {created} orders accepted in {time.monotonic() - started:.1f} s", by=by
    )
    return created


def _run_burst(count: int, by: str, burst_id: str, plan: list[str], email: str | None = None) -> None:
    try:
        burst_create(count=count, by=by, burst_id=burst_id, plan=plan, email=email)
    except Exception:
        log.exception("burst %s failed", burst_id)
        live.record_control("burst", f"burst {burst_id} stopped by an error (see the web log)", by=by)
    finally:
        connection.close()  # this thread's connection goes back to the pool


class BurstApi(ControlApi):
    class BurstInputSerializer(serializers.Serializer):
        count = serializers.IntegerField(min_value=1, max_value=BURST_MAX)
        customer_email = serializers.EmailField(
            required=False, help_text="Every order of the burst goes to this address (the lessons tag theirs so)."
        )

    @extend_schema(
        request=BurstInputSerializer,
        responses={
            202: inline_serializer(
                "BurstAccepted",
                {
                    "burst_id": serializers.CharField(),
                    "count": serializers.IntegerField(),
                    "created": serializers.IntegerField(),
                },
            ),
            409: inline_serializer("NotEnoughStock", {"detail": serializers.CharField()}),
        },
    )
    def post(self, request: Request) -> Response:
        """Create N orders (1 to 10,000); answers 202 once they exist (`created`: N), or, above BURST_IN_REQUEST, at
        once while a background thread creates them (`created`: 0); 409 without creating any when the stock cannot
        cover them."""
        data = self.BurstInputSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        count = data.validated_data["count"]
        try:
            plan = burst_plan(count=count)
        except NotEnoughStock as exc:
            return Response({"detail": str(exc)}, status=status.HTTP_409_CONFLICT)
        burst_id = uuid.uuid4().hex[:6]
        by = request.user.get_username()
        live.record_control("burst", f"burst {burst_id}: placing {count} orders", by=by)
        email = data.validated_data.get("customer_email")
        if count <= BURST_IN_REQUEST:
            # Answer when the orders exist: whoever pressed it (a lesson's next button) may act on them at once.
            created = burst_create(count=count, by=by, burst_id=burst_id, plan=plan, email=email)
            return Response({"burst_id": burst_id, "count": count, "created": created}, status=status.HTTP_202_ACCEPTED)
        threading.Thread(
            target=_run_burst,
            args=(count, by, burst_id, plan, email),
            name=f"burst-{burst_id}",
            daemon=True,
        ).start()
        return Response({"burst_id": burst_id, "count": count, "created": 0}, status=status.HTTP_202_ACCEPTED)


# ---------------------------------------------------------------- queues and cache


def queue_purge(queue: str) -> int:
    """Drop every ready message of one of this instance's queues (a retry tier's with its jitter lanes'). Returns
    how many were dropped."""
    conn = connect()
    try:
        channel = conn.channel()
        names = [queue, *topology().lanes_of().get(queue, [])]
        return sum(channel.queue_purge(name).method.message_count or 0 for name in names)
    finally:
        if conn.is_open:
            conn.close()


class PurgeQueueApi(ControlApi):
    class PurgeInputSerializer(serializers.Serializer):
        queue = serializers.CharField()

        def validate_queue(self, value: str) -> str:
            names = [name for name, _role in topology().queues()]
            if value not in names:
                raise serializers.ValidationError(f"Must be one of: {', '.join(names)}.")
            return value

    @extend_schema(
        request=PurgeInputSerializer,
        responses={
            200: inline_serializer(
                "Purged",
                {
                    "queue": serializers.CharField(),
                    "purged": serializers.IntegerField(),
                    "note": serializers.CharField(),
                },
            )
        },
    )
    def post(self, request: Request) -> Response:
        """Purge the ready messages of one queue (messages held unacked by a worker are not touched). Their orders
        are not lost: the sweeper re-sends them once they have shown no progress for ORDERPIPE_SWEEP_AFTER s."""
        data = self.PurgeInputSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        queue = data.validated_data["queue"]
        try:
            purged = queue_purge(queue)
        except BROKER_ERRORS as exc:
            return Response({"detail": f"RabbitMQ unavailable: {exc}"}, status=status.HTTP_503_SERVICE_UNAVAILABLE)
        live.record_control("purge queue", f"{queue}: {purged} message(s) dropped", by=request.user.get_username())
        note = f"The sweeper re-sends their orders after {settings.SWEEP_AFTER:g} s without progress."
        return Response({"queue": queue, "purged": purged, "note": note})


class FlushCacheApi(ControlApi):
    @extend_schema(request=None, responses={200: inline_serializer("Flushed", {"removed": serializers.IntegerField()})})
    def post(self, request: Request) -> Response:
        """Delete every cached order and the hit/miss counters; the next reads are misses served by PostgreSQL."""
        removed = cache.flush()
        live.record_control("flush cache", f"{removed} Redis key(s) removed", by=request.user.get_username())
        return Response({"removed": removed})


# ---------------------------------------------------------------- stock


class RestockApi(ControlApi):
    class RestockInputSerializer(serializers.Serializer):
        sku = serializers.CharField(required=False, help_text="One product; all of them when absent.")
        quantity = serializers.IntegerField(min_value=1, max_value=RESTOCK_MAX, default=RESTOCK_DEFAULT)

    @extend_schema(
        request=RestockInputSerializer,
        responses={
            200: inline_serializer(
                "Restocked",
                {
                    "restocked": inline_serializer(
                        "RestockedProduct",
                        {"sku": serializers.CharField(), "stock": serializers.IntegerField()},
                        many=True,
                    )
                },
            )
        },
    )
    def post(self, request: Request) -> Response:
        """Add `quantity` items (default 500) to the stock of one product or of every product."""
        data = self.RestockInputSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        sku, quantity = data.validated_data.get("sku"), data.validated_data["quantity"]
        try:
            products = sandbox.stock_restock(quantity=quantity, sku=sku)
        except Product.DoesNotExist:
            raise serializers.ValidationError({"sku": [f"No product {sku}."]}) from None
        live.record_control("restock", f"+{quantity} to {sku or 'every product'}", by=request.user.get_username())
        return Response({"restocked": [{"sku": p.sku, "stock": p.stock} for p in products]})
