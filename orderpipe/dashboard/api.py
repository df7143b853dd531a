"""The dashboard's JSON read, `GET /api/pipeline/`: the state the dashboard page renders, for scripts and the API."""

from __future__ import annotations

from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import extend_schema
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from orderpipe.dashboard.state import pipeline_state
from orders.api import COMMON_ERRORS


class PipelineApi(APIView):
    @extend_schema(responses={200: OpenApiTypes.OBJECT, **COMMON_ERRORS})
    def get(self, request: Request) -> Response:
        """The live state: outbox backlog, orders by status, relays, queues, cache, workers, supervised processes."""
        return Response(pipeline_state())
