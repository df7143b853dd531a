"""Server-rendered pages: the live dashboard and an order's journey. Both render the current state into the page
(so it is readable at once), then `static/js/<page>.js` keeps it live over a WebSocket."""

from __future__ import annotations

import uuid

from django.conf import settings
from django.contrib.auth.views import redirect_to_login
from django.http import HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, render
from django.views.decorators.csrf import ensure_csrf_cookie

from orders import live, selectors
from orders.access import can_control, can_watch
from orders.consumers import journey_snapshot, pipeline_snapshot
from orders.models import EventKind, Order, OrderStatus

LOGIN_URL = "/admin/login/"


def _context(request: HttpRequest) -> dict[str, object]:
    return {
        "can_control": can_control(request.user),
        "sandbox": settings.ORDERPIPE_SANDBOX,
        "login_url": f"{LOGIN_URL}?next={request.get_full_path()}",
        "statuses": OrderStatus.choices,
        # static/js/live.js opens the page's socket on this port of the page's host (empty: the page's origin).
        "websocket_port": settings.WEBSOCKET_PORT or "",
    }


@ensure_csrf_cookie
def dashboard(request: HttpRequest) -> HttpResponse:
    if not can_watch(request.user):
        return redirect_to_login(request.get_full_path(), LOGIN_URL)
    return render(
        request,
        "dashboard.html",
        {
            **_context(request),
            "initial": pipeline_snapshot(),
            "products": selectors.product_list(),
            "feed_length": live.FEED_LENGTH,
        },
    )


@ensure_csrf_cookie
def journey(request: HttpRequest, order_id: uuid.UUID) -> HttpResponse:
    if not can_watch(request.user):
        return redirect_to_login(request.get_full_path(), LOGIN_URL)
    order = get_object_or_404(Order, pk=order_id)
    return render(
        request,
        "journey.html",
        {**_context(request), "order": order, "initial": journey_snapshot(order.pk), "kinds": EventKind.choices},
    )
