"""The REST API: thin views that decode input, call one service or selector, and encode the result."""

from __future__ import annotations

import uuid

from django.urls import reverse
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, OpenApiResponse, extend_schema, inline_serializer
from rest_framework import generics, serializers, status
from rest_framework.exceptions import NotFound, ValidationError
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from orders import selectors, services
from orders.models import Order, OrderStatus
from orders.serializers import (
    OrderEventSerializer,
    OrderInputSerializer,
    OrderSerializer,
    ProductSerializer,
    order_representation,
)

ERROR = inline_serializer("Error", fields={"detail": serializers.CharField()})


def parse_order_id(raw: str) -> uuid.UUID:
    """A malformed id names no order: 404, like an unknown one."""
    try:
        return uuid.UUID(raw)
    except ValueError:
        raise NotFound("No order with this id.") from None


class OrderListCreateApi(generics.ListAPIView):
    serializer_class = OrderSerializer

    def get_serializer_class(self):
        return OrderInputSerializer if self.request.method == "POST" else OrderSerializer

    def get_queryset(self):
        status_filter = self.request.query_params.get("status")
        if status_filter and status_filter not in OrderStatus.values:
            raise ValidationError({"status": [f"Must be one of: {', '.join(OrderStatus.values)}."]})
        return selectors.order_list(status=status_filter)

    @extend_schema(
        parameters=[OpenApiParameter("status", OpenApiTypes.STR, enum=OrderStatus.values)],
        responses={200: OrderSerializer(many=True), 400: ERROR},
    )
    def get(self, request: Request, *args, **kwargs) -> Response:
        """Orders, newest first, optionally filtered by status."""
        return super().get(request, *args, **kwargs)

    @extend_schema(
        request=OrderInputSerializer,
        responses={
            202: OrderSerializer,
            400: OpenApiResponse(description="Field errors"),
            415: ERROR,
            503: ERROR,
        },
    )
    def post(self, request: Request) -> Response:
        """Accept an order. It is stored with an outbox message and processed asynchronously."""
        data = OrderInputSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        order = services.order_create(**data.validated_data)
        order = services.load_order(order.pk)
        location = request.build_absolute_uri(reverse("api-order-detail", args=[order.pk]))
        return Response(order_representation(order), status=status.HTTP_202_ACCEPTED, headers={"Location": location})


class OrderDetailApi(APIView):
    @extend_schema(responses={200: OrderSerializer, 404: ERROR})
    def get(self, request: Request, order_id: str) -> Response:
        """One order, from Redis when cached (`X-Cache: HIT`), else from PostgreSQL (`X-Cache: MISS`)."""
        try:
            representation, hit = selectors.order_read(parse_order_id(order_id))
        except Order.DoesNotExist:
            raise NotFound("No order with this id.") from None
        return Response(representation, headers={"X-Cache": "HIT" if hit else "MISS"})


class OrderEventsApi(APIView):
    @extend_schema(responses={200: OrderEventSerializer(many=True), 404: ERROR})
    def get(self, request: Request, order_id: str) -> Response:
        """The order's journey: one event per transition, each with a db/queue/cache snapshot."""
        pk = parse_order_id(order_id)
        if not Order.objects.filter(pk=pk).exists():
            raise NotFound("No order with this id.")
        return Response(OrderEventSerializer(selectors.order_events(pk), many=True).data)


class ProductListApi(generics.ListAPIView):
    """The catalog, with prices and stock."""

    serializer_class = ProductSerializer
    pagination_class = None

    def get_queryset(self):
        return selectors.product_list()


class PipelineApi(APIView):
    @extend_schema(responses={200: OpenApiTypes.OBJECT})
    def get(self, request: Request) -> Response:
        """The live state: outbox backlog, orders by status, queues, cache, workers."""
        return Response(selectors.pipeline_state())
