"""One shape for API errors: DRF's own bodies for validation (field -> messages), and a JSON body with `detail`
for everything else, including a database outage (503) instead of a stack trace."""

from __future__ import annotations

import logging
from typing import Any

from django.db import DatabaseError, InterfaceError, OperationalError
from rest_framework import status
from rest_framework.exceptions import APIException
from rest_framework.response import Response
from rest_framework.views import exception_handler as drf_exception_handler

log = logging.getLogger(__name__)

DATABASE_UNAVAILABLE = {
    "detail": "The database is unavailable; nothing was stored. Retry in a few seconds.",
    "code": "database_unavailable",
}


def exception_handler(exc: Exception, context: dict[str, Any]) -> Response | None:
    response = drf_exception_handler(exc, context)
    if response is not None:
        if isinstance(exc, APIException) and isinstance(response.data, dict) and set(response.data) == {"detail"}:
            # `{"detail", "code"}` like every other error here (a 429's code is "throttled"); field errors stay as
            # DRF words them.
            response.data["code"] = exc.get_codes() if isinstance(exc.detail, str) else exc.default_code
        return response
    if isinstance(exc, (OperationalError, InterfaceError)):
        log.warning("database unavailable: %s", exc)
        return Response(DATABASE_UNAVAILABLE, status=status.HTTP_503_SERVICE_UNAVAILABLE, headers={"Retry-After": "5"})
    if isinstance(exc, DatabaseError):
        log.exception("database error")
        return Response(
            {"detail": "The request could not be stored.", "code": "database_error"},
            status=status.HTTP_503_SERVICE_UNAVAILABLE,
        )
    return None
