"""Outside the REST API (admin, pages), a database outage still answers 503 with a JSON body, not a 500 page."""

from __future__ import annotations

import logging
from collections.abc import Callable

from django.db import InterfaceError, OperationalError
from django.http import HttpRequest, HttpResponse, JsonResponse

from orders.api_errors import DATABASE_UNAVAILABLE

log = logging.getLogger(__name__)


class DatabaseUnavailableMiddleware:
    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        return self.get_response(request)

    def process_exception(self, request: HttpRequest, exception: Exception) -> HttpResponse | None:
        if isinstance(exception, (OperationalError, InterfaceError)):
            log.warning("database unavailable: %s", exception)
            response = JsonResponse(DATABASE_UNAVAILABLE, status=503)
            response["Retry-After"] = "5"
            return response
        return None
