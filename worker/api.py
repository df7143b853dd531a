"""Staff API for the consumer side: replaying dead letters. A sandbox control like the others (404 with
ORDERPIPE_SANDBOX=false); in production, operators replay with `manage.py replay_dead_letters` or the admin's
"replay" action, which go through the same service and are recorded alike."""

from __future__ import annotations

from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import extend_schema, inline_serializer
from rest_framework import serializers, status
from rest_framework.exceptions import NotFound
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from orders.models import Order, OrderStatus
from orders.permissions import SandboxStaff
from worker.replay import replay_dead_letters


class ReplayDeadLettersApi(APIView):
    permission_classes = [SandboxStaff]

    class ReplayInputSerializer(serializers.Serializer):
        order_id = serializers.UUIDField(required=False, allow_null=True)

    @extend_schema(
        request=ReplayInputSerializer,
        responses={
            200: inline_serializer("ReplayResult", fields={"replayed": serializers.IntegerField()}),
            404: OpenApiTypes.OBJECT,
            409: OpenApiTypes.OBJECT,
        },
    )
    def post(self, request: Request) -> Response:
        """Replay one dead-lettered order (`order_id`), or all of them (no body)."""
        data = self.ReplayInputSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        order_id = data.validated_data.get("order_id")
        if order_id is not None:
            order = Order.objects.filter(pk=order_id).first()
            if order is None:
                raise NotFound("No order with this id.")
            if order.status != OrderStatus.DEAD_LETTERED:
                return Response(
                    {"detail": f"The order is {order.status}, not dead_lettered."}, status=status.HTTP_409_CONFLICT
                )
        count = replay_dead_letters(order_id, replayed_by=request.user.get_username(), via="api")
        return Response({"replayed": count})
