"""The dashboard's "What happens when…" controls: kill or stop a supervised process, cut or restore a service link,
kill or restart a node of the RabbitMQ cluster, send a poison message.

Kill, cut and the node controls are requests to `make run`'s supervisor (worker/supervision.py files them,
worker/supervisor.py carries them out within about a second and records the outcome in the live feed): they answer
202 with the request, or 409 when no supervisor runs (Compose, bare `run_worker`s) and nothing would carry them out,
or, for a node, when the supervisor runs against one broker rather than `make cluster`'s three nodes.
The poison message is published here, at once (it needs only the broker), and lands in the dead-letter queue with
its reason. Staff only, CSRF-protected; with ORDERPIPE_SANDBOX=false every endpoint answers 404 (`ControlApi`).
"""

from __future__ import annotations

from drf_spectacular.utils import extend_schema, inline_serializer
from rest_framework import serializers, status
from rest_framework.request import Request
from rest_framework.response import Response

from orderpipe.dashboard.controls import ControlApi
from orders import live
from worker import supervision
from worker.models import SupervisorRequest
from worker.poison import POISON_FAILURES, POISON_KINDS, publish_poison

RequestAccepted = inline_serializer(
    "SupervisorRequestAccepted",
    {
        "request": serializers.IntegerField(),
        "action": serializers.CharField(),
        "target": serializers.CharField(),
        "state": serializers.CharField(),
        "note": serializers.CharField(),
    },
)
Refused = inline_serializer(
    "SupervisorUnavailable", {"detail": serializers.CharField(), "code": serializers.CharField()}
)


def _accepted(request: SupervisorRequest, note: str) -> Response:
    body = {
        "request": request.pk,
        "action": request.action,
        "target": request.target,
        "state": request.state,
        "note": note,
    }
    return Response(body, status=status.HTTP_202_ACCEPTED)


def _file(make) -> Response | SupervisorRequest:
    try:
        return make()
    except supervision.SupervisorUnavailable as exc:
        return Response({"detail": str(exc), "code": "no_supervisor"}, status=status.HTTP_409_CONFLICT)
    except supervision.InvalidRequest as exc:
        raise serializers.ValidationError({"detail": [str(exc)]}) from None


class KillApi(ControlApi):
    class KillInputSerializer(serializers.Serializer):
        process = serializers.CharField(max_length=50, help_text="worker-1, worker-2 … or relay")
        signal = serializers.ChoiceField(choices=["SIGKILL", "SIGTERM"], default="SIGKILL")

    @extend_schema(request=KillInputSerializer, responses={202: RequestAccepted, 409: Refused})
    def post(self, request: Request) -> Response:
        """Ask the supervisor to SIGKILL (default) or SIGTERM one of its workers or its relay. It is restarted with
        the supervisor's usual backoff; the workers stage shows crashed → restarted."""
        data = self.KillInputSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        process, sig = data.validated_data["process"], data.validated_data["signal"]
        by = request.user.get_username()
        filed = _file(lambda: supervision.request_signal(process, kill=sig == "SIGKILL", by=by))
        if isinstance(filed, Response):
            return filed
        return _accepted(filed, f"The supervisor sends {sig} to {process} within a second; the feed shows the outcome.")


class OutageApi(ControlApi):
    class OutageInputSerializer(serializers.Serializer):
        service = serializers.ChoiceField(choices=list(supervision.SERVICES))
        action = serializers.ChoiceField(choices=["cut", "restore"])

    @extend_schema(request=OutageInputSerializer, responses={202: RequestAccepted, 409: Refused})
    def post(self, request: Request) -> Response:
        """Ask the supervisor to cut (reset open connections, refuse new ones) or restore its link to PostgreSQL,
        RabbitMQ or Redis, for web, relay and workers. The page's own live updates keep flowing. A cut of
        PostgreSQL restores itself after a fixed time: the restore request would need the database."""
        data = self.OutageInputSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        service, action = data.validated_data["service"], data.validated_data["action"]
        by = request.user.get_username()
        if action == "cut":
            filed = _file(lambda: supervision.request_cut(service, by=by))
        else:
            filed = _file(lambda: supervision.request_restore(service, by=by))
        if isinstance(filed, Response):
            return filed
        note = f"The supervisor {'cuts' if action == 'cut' else 'restores'} {service} within a second."
        if action == "cut" and service == "postgresql":
            # The supervisor decides how long (`supervise --postgres-cut-seconds`); the page counts down to its time.
            note += " It restores itself after a fixed time: see the countdown beside it."
        return _accepted(filed, note)


class NodeApi(ControlApi):
    class NodeInputSerializer(serializers.Serializer):
        node = serializers.CharField(max_length=50, help_text="rabbitmq-1, rabbitmq-2 or rabbitmq-3")
        action = serializers.ChoiceField(choices=list(supervision.NODE_ACTIONS))

    @extend_schema(request=NodeInputSerializer, responses={202: RequestAccepted, 409: Refused})
    def post(self, request: Request) -> Response:
        """Ask the supervisor to SIGKILL a node of the RabbitMQ cluster (the survivors elect new queue leaders, the
        relay and workers reconnect to them, nothing is lost) or to start a killed node again. 409 unless the
        supervisor runs with an AMQP_URL naming `make cluster`'s nodes."""
        data = self.NodeInputSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        node, action = data.validated_data["node"], data.validated_data["action"]
        by = request.user.get_username()
        filed = _file(lambda: supervision.request_node(node, action=action, by=by))
        if isinstance(filed, Response):
            return filed
        if action == "kill":
            note = f"The supervisor SIGKILLs {node} within a second: watch the orders go on through the other nodes."
        else:
            note = f"The supervisor starts {node} again; it rejoins the cluster within seconds."
        return _accepted(filed, note)


class PoisonApi(ControlApi):
    class PoisonInputSerializer(serializers.Serializer):
        kind = serializers.ChoiceField(choices=list(POISON_KINDS), default="undecodable")

    @extend_schema(
        request=PoisonInputSerializer,
        responses={200: inline_serializer("PoisonSent", {"message_id": serializers.CharField()})},
    )
    def post(self, request: Request) -> Response:
        """Publish a poison message (undecodable, an unknown order, or a wrong version) to the main exchange: it
        lands in the dead-letter queue with its reason, and the workers keep going."""
        data = self.PoisonInputSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        kind = data.validated_data["kind"]
        try:
            message_id = publish_poison(kind)
        except POISON_FAILURES as exc:
            return Response({"detail": f"RabbitMQ unavailable: {exc}"}, status=status.HTTP_503_SERVICE_UNAVAILABLE)
        live.record_control(
            "poison message", f"{kind.replace('_', ' ')} message {message_id} published", by=request.user.get_username()
        )
        return Response({"message_id": message_id})
