"""The REST API: thin views that decode input, call one service or selector, and encode the result."""

from __future__ import annotations

import uuid

from django.core.exceptions import ValidationError as DjangoValidationError
from django.db import models
from django.urls import resolve, reverse
from drf_spectacular.authentication import BasicScheme
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework import generics, serializers, status
from rest_framework.exceptions import APIException, NotFound, ValidationError
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.reverse import reverse as api_reverse
from rest_framework.settings import api_settings
from rest_framework.views import APIView

from orders import sandbox, selectors, services
from orders.models import Order, OrderStatus, SandboxSettings
from orders.permissions import PlaceOrdersPublicly, PublicReadOnly, SandboxStaff
from orders.sandbox import policies
from orders.schema import ERROR, FIELD_ERRORS, is_listed
from orders.serializers import (
    OrderEventSerializer,
    OrderInputSerializer,
    OrderSerializer,
    ProductSerializer,
    StrictBooleanField,
    StrictFloatField,
    StrictIntegerField,
    order_input,
)
from orders.throttles import OrderPlacementThrottle, PipelinedThrottles


class BasicInDebugScheme(BasicScheme):
    """Documents orders.authentication's Basic-in-DEBUG as Basic (registered by being defined)."""

    target_class = "orders.authentication.BasicAuthenticationInDebug"


# Any endpoint: 403 (not allowed: see the table in docs/05-security.md, or a bad login), 429 (throttled, Retry-After).
# orders/schema.py adds these and the other statuses every operation may answer to each of them.
COMMON_ERRORS = {403: ERROR, 429: ERROR}
IDEMPOTENCY_KEY = OpenApiParameter(
    "Idempotency-Key",
    {"type": "string", "minLength": 1, "maxLength": 255},
    OpenApiParameter.HEADER,
    description="Retrying with the same key returns the first response (1 to 255 characters).",
)


class IdempotencyKeyReused(APIException):
    status_code = status.HTTP_422_UNPROCESSABLE_ENTITY
    default_detail = "This Idempotency-Key was already used with a different request body."
    default_code = "idempotency_key_reused"


class AcceptFailedError(APIException):
    """Sandbox only: the accept transaction failed (accept_failure_rate) or, in publish_first, the publish did."""

    status_code = status.HTTP_503_SERVICE_UNAVAILABLE
    default_detail = "The order could not be accepted; nothing was stored."
    default_code = "accept_failed"


def parse_order_id(raw: str) -> uuid.UUID:
    """A malformed id names no order: 404, like an unknown one."""
    try:
        return uuid.UUID(raw)
    except ValueError:
        raise NotFound("No order with this id.") from None


class ApiRootApi(APIView):
    """The API's endpoints, by name (the browsable API renders them as links)."""

    permission_classes = [PublicReadOnly]
    ENDPOINTS = {
        "orders": "api-order-list",
        "products": "api-product-list",
        "pipeline": "api-pipeline",
        "sandbox": "api-sandbox",
        "dead_letters_replay": "api-dead-letters-replay",
        "control_burst": "control-burst",
        "control_purge_queue": "control-purge-queue",
        "control_flush_cache": "control-flush-cache",
        "schema": "schema",
        "docs": "api-docs",
    }

    @extend_schema(responses={200: OpenApiTypes.OBJECT})
    def get(self, request: Request) -> Response:
        return Response(
            {
                name: api_reverse(url_name, request=request)
                for name, url_name in self.ENDPOINTS.items()
                if is_listed(resolve(reverse(url_name)).func.cls)  # type: ignore[attr-defined]
            }
        )


class OrderListCreateApi(PipelinedThrottles, generics.ListAPIView):
    serializer_class = OrderSerializer
    permission_classes = [PlaceOrdersPublicly]
    throttle_classes = [*api_settings.DEFAULT_THROTTLE_CLASSES, OrderPlacementThrottle]  # type: ignore[list-item]

    def get_serializer_class(self):
        return OrderInputSerializer if self.request.method == "POST" else OrderSerializer

    def get_queryset(self):
        status_filter = self.request.query_params.get("status")
        if status_filter is not None and status_filter not in OrderStatus.values:  # `?status=` included
            raise ValidationError({"status": [f"Must be one of: {', '.join(OrderStatus.values)}."]})
        return selectors.order_list(status=status_filter)

    @extend_schema(
        parameters=[OpenApiParameter("status", OpenApiTypes.STR, enum=OrderStatus.values)],
        responses={200: OrderSerializer(many=True), 400: FIELD_ERRORS, 404: ERROR, **COMMON_ERRORS},
    )
    def get(self, request: Request, *args, **kwargs) -> Response:
        """Orders, newest first, optionally filtered by status."""
        return super().get(request, *args, **kwargs)

    @extend_schema(
        request=OrderInputSerializer,
        responses={
            202: OrderSerializer,
            400: FIELD_ERRORS,
            415: ERROR,
            422: ERROR,
            503: ERROR,
            **COMMON_ERRORS,
        },
        parameters=[IDEMPOTENCY_KEY],
    )
    def post(self, request: Request) -> Response:
        """Accept an order. It is stored with an outbox message and processed asynchronously.

        With an `Idempotency-Key` header, a retried request returns the first response again (with
        `Idempotent-Replayed: true`) instead of creating a second order."""
        key = request.headers.get("Idempotency-Key")
        if key is not None and not 1 <= len(key) <= 255:
            raise ValidationError({"Idempotency-Key": ["Must be 1 to 255 characters."]})
        validated, products = order_input(request.data)
        headers = {}
        # `services.order_accept` (the outbox) unless a sandbox publish mode or the accept fault is on.
        accept = policies.accept_policy()
        try:
            body, code, replayed = accept(
                key=key,
                fingerprint=services.request_fingerprint(request.data) if key is not None else "",
                products=products,
                **validated,
            )
        except services.IdempotencyMismatch as exc:
            raise IdempotencyKeyReused(str(exc)) from None
        except policies.ACCEPT_FAILURES as exc:
            raise AcceptFailedError(str(exc)) from None
        if replayed:
            headers["Idempotent-Replayed"] = "true"
        headers["Location"] = request.build_absolute_uri(reverse("api-order-detail", args=[body["id"]]))
        return Response(body, status=code, headers=headers)


class OrderDetailApi(PipelinedThrottles, APIView):
    @extend_schema(responses={200: OrderSerializer, 404: ERROR, **COMMON_ERRORS})
    def get(self, request: Request, order_id: str) -> Response:
        """One order, from Redis when cached (`X-Cache: HIT`), else from PostgreSQL (`X-Cache: MISS`)."""
        try:
            representation, hit = selectors.order_read(parse_order_id(order_id))
        except Order.DoesNotExist:
            raise NotFound("No order with this id.") from None
        return Response(representation, headers={"X-Cache": "HIT" if hit else "MISS"})


class OrderEventsApi(APIView):
    @extend_schema(responses={200: OrderEventSerializer(many=True), 404: ERROR, **COMMON_ERRORS})
    def get(self, request: Request, order_id: str) -> Response:
        """The order's journey: one event per transition, each with a db/queue/cache snapshot."""
        pk = parse_order_id(order_id)
        if not Order.objects.filter(pk=pk).exists():
            raise NotFound("No order with this id.")
        return Response(OrderEventSerializer(selectors.order_events(pk), many=True).data)


class ProductListApi(generics.ListAPIView):
    """The catalog, with prices and stock."""

    serializer_class = ProductSerializer
    permission_classes = [PublicReadOnly]
    pagination_class = None

    def get_queryset(self):
        return selectors.product_list()

    @extend_schema(responses={200: ProductSerializer(many=True), **COMMON_ERRORS})
    def get(self, request: Request, *args, **kwargs) -> Response:
        return super().get(request, *args, **kwargs)


# ---------------------------------------------------------------- sandbox (the fault injector)


class SandboxApi(APIView):
    permission_classes = [SandboxStaff]

    class SandboxSerializer(serializers.ModelSerializer):
        # JSON types only, as the schema says (orders/serializers.py).
        serializer_field_mapping = serializers.ModelSerializer.serializer_field_mapping | {
            models.BooleanField: StrictBooleanField,
            models.FloatField: StrictFloatField,
            models.IntegerField: StrictIntegerField,
            models.PositiveIntegerField: StrictIntegerField,
            models.PositiveSmallIntegerField: StrictIntegerField,
            models.SmallIntegerField: StrictIntegerField,
        }

        class Meta:
            model = SandboxSettings
            fields = [*SandboxSettings.FIELDS, "updated_at", "version"]
            read_only_fields = ["updated_at", "version"]

    @extend_schema(responses={200: SandboxSerializer, 403: ERROR})
    def get(self, request: Request) -> Response:
        """The fault injector's settings (staff only), its `version`, and `applied`: which live workers run it."""
        row = SandboxSettings.load()
        return Response({**self.SandboxSerializer(row).data, "applied": sandbox.applied_by(row).as_dict()})

    @extend_schema(request=SandboxSerializer, responses={200: SandboxSerializer, 400: FIELD_ERRORS, 403: ERROR})
    def patch(self, request: Request) -> Response:
        """Change some settings; every change is recorded. Answers once every live worker runs the change (and,
        under `make run`'s supervisor, with the wanted workers, threads and prefetch), or after a few seconds:
        `applied` says which workers run it (`done`) and which do not yet, and why."""
        data = self.SandboxSerializer(SandboxSettings.load(), data=request.data, partial=True)
        data.is_valid(raise_exception=True)
        unknown = sorted(set(request.data) - set(SandboxSettings.FIELDS))
        if unknown:
            raise ValidationError({name: ["Unknown sandbox setting."] for name in unknown})
        try:
            updated, applied = sandbox.sandbox_update_applied(
                changes=dict(data.validated_data), changed_by=request.user.get_username(), via="api"
            )
        except DjangoValidationError as exc:
            raise ValidationError(exc.message_dict) from None
        return Response({**self.SandboxSerializer(updated).data, "applied": applied.as_dict()})


class NextStepApi(APIView):
    permission_classes = [SandboxStaff]

    @extend_schema(request=None, responses={202: OpenApiTypes.OBJECT, 404: ERROR})
    def post(self, request: Request, order_id: str) -> Response:
        """Step-by-step mode: let the worker run the next step of this order."""
        try:
            grant = sandbox.step_grant(order_id=parse_order_id(order_id), granted_by=request.user.get_username())
        except Order.DoesNotExist:
            raise NotFound("No order with this id.") from None
        return Response({"order_id": str(grant.order_id), "granted_at": grant.created_at}, status=202)
