"""Who may call which endpoint of the REST API (and /metrics). The table in docs/05-security.md is this module in
words, and orderpipe/tests/test_permissions.py walks every URL of the URLconf against that table.

DRF's default (`DEFAULT_PERMISSION_CLASSES`) is `StaffOrDebugReadOnly`: a view that states nothing is readable by
staff in production and by anyone in DEBUG, and writable by nobody but staff. Views that are public (placing an
order, the catalog, the API root) or sandbox-only say so themselves.
"""

from __future__ import annotations

import hmac
from typing import TYPE_CHECKING

from django.conf import settings
from django.http import HttpRequest
from rest_framework.exceptions import NotFound
from rest_framework.permissions import SAFE_METHODS, BasePermission

from orders.access import can_control

if TYPE_CHECKING:  # DRF imports this module while rest_framework.views is still loading
    from rest_framework.request import Request
    from rest_framework.views import APIView


def is_staff(user: object) -> bool:
    return bool(getattr(user, "is_active", False) and getattr(user, "is_staff", False))


def can_read_orders(user: object) -> bool:
    """Orders carry customers' emails and notes: in production only staff read them. DEBUG (`make run`, the
    learners' sandbox) leaves the reads open, as it does the pages."""
    return bool(settings.DEBUG or is_staff(user))


class StaffOrDebugReadOnly(BasePermission):
    """The default: reads for `can_read_orders`, writes for staff."""

    def allows_anonymous(self, method: str) -> bool:
        """Whether anyone may call `method` without a login (the schema says so: orders/schema.py)."""
        return settings.DEBUG and method in SAFE_METHODS

    def has_permission(self, request: Request, view: APIView) -> bool:
        if request.method in SAFE_METHODS:
            return can_read_orders(request.user)
        return is_staff(request.user)


class PlaceOrdersPublicly(StaffOrDebugReadOnly):
    """`/api/orders/`: anyone may POST an order (throttled: orders/throttles.py); the list is a read like others."""

    def allows_anonymous(self, method: str) -> bool:
        return method == "POST" or super().allows_anonymous(method)

    def has_permission(self, request: Request, view: APIView) -> bool:
        if request.method == "POST":
            return True
        return super().has_permission(request, view)


class PublicReadOnly(BasePermission):
    """The catalog and the API root hold nothing private."""

    def allows_anonymous(self, method: str) -> bool:
        return method in SAFE_METHODS

    def has_permission(self, request: Request, view: APIView) -> bool:
        return request.method in SAFE_METHODS


class SandboxStaff(BasePermission):
    """The fault injector and the controls: staff only, and with ORDERPIPE_SANDBOX=false they do not exist (404, and
    not in the API root or the schema)."""

    sandbox_only = True

    def has_permission(self, request: Request, view: APIView) -> bool:
        if not settings.ORDERPIPE_SANDBOX:
            raise NotFound("The sandbox controls are disabled (ORDERPIPE_SANDBOX=false).")
        return can_control(request.user)


def can_scrape_metrics(request: HttpRequest) -> bool:
    """`/metrics`: open in DEBUG; in production a staff session or `Authorization: Bearer <ORDERPIPE_METRICS_TOKEN>`.
    With no token configured, only staff sessions get in (a scraper cannot be let in by an empty token)."""
    if settings.DEBUG or is_staff(getattr(request, "user", None)):
        return True
    token = settings.ORDERPIPE_METRICS_TOKEN
    scheme, _, given = request.headers.get("Authorization", "").partition(" ")
    if not token or scheme.lower() != "bearer":
        return False
    # Constant time, so the token cannot be guessed a byte at a time from response times.
    return hmac.compare_digest(given.strip().encode(), token.encode())
