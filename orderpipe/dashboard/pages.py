"""Server-rendered pages: the live dashboard and an order's journey. Both render the current state into the page
(so it is readable at once), then `static/js/<page>.js` keeps it live over a WebSocket.

Every number, status and URL the page scripts need comes from here, in one `<script id="orderpipe-config">`
(`page_config`, rendered by templates/base.html with `json_script`), taken from the code that enforces or serves
it: the JS holds no copy of a server-side constant.
"""

from __future__ import annotations

import uuid
from typing import Any, cast

from django.conf import settings
from django.contrib.auth.views import redirect_to_login
from django.core.validators import MaxValueValidator, MinValueValidator
from django.db.models import Field
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import render
from django.urls import reverse
from django.views.decorators.csrf import ensure_csrf_cookie
from rest_framework import serializers

from orderpipe.dashboard import feed
from orderpipe.dashboard.consumers import CLOSE_FORBIDDEN, CLOSE_NOT_FOUND, journey_snapshot, pipeline_snapshot
from orderpipe.dashboard.sequence import sequence_table
from orders import sandbox, selectors
from orders.access import can_control, can_watch
from orders.models import Order, OrderStatus, SandboxSettings
from orders.serializers import MAX_LINES, OrderInputSerializer, OrderItemInputSerializer

# URLs that take an order id are sent with this id in its place; static/js/live.js puts the real one in.
ORDER_ID_PLACEHOLDER = "00000000-0000-0000-0000-000000000000"


def _bounds(field_name: str) -> dict[str, float]:
    """The range the sandbox settings row accepts for one field, read from the model's validators."""
    field = SandboxSettings._meta.get_field(field_name)
    assert isinstance(field, Field)
    validators = field.validators
    return {
        "min": max(v.limit_value for v in validators if isinstance(v, MinValueValidator)),
        "max": min(v.limit_value for v in validators if isinstance(v, MaxValueValidator)),
    }


def _has_bounds(field_name: str) -> bool:
    field = SandboxSettings._meta.get_field(field_name)
    return any(isinstance(v, MinValueValidator) for v in getattr(field, "validators", []))


def _choices(field_name: str) -> list[tuple[str, str]]:
    """A mode's values for a select, as (value, text): the values as the API takes them, the safe one marked."""
    choices = getattr(SandboxSettings._meta.get_field(field_name), "choices", None)
    values = [str(value) for value, _ in choices] if choices else ["true", "false"]
    safe = sandbox.shown_value(sandbox.DEFAULTS[field_name])
    return [(value, f"{value} (safe)" if value == safe else value) for value in values]


def page_config() -> dict[str, Any]:
    """What static/js/*.js needs from the server: limits, statuses, socket close codes, URLs."""
    quantity = cast(serializers.IntegerField, OrderItemInputSerializer().fields["quantity"])
    order_fields = OrderInputSerializer().fields
    return {
        "feedLength": feed.FEED_LENGTH,
        "rateWindowSeconds": feed.RATE_WINDOW_SECONDS,
        "terminalStatuses": sorted(OrderStatus.terminal()),
        "closeCodes": {"forbidden": CLOSE_FORBIDDEN, "notFound": CLOSE_NOT_FOUND},
        "orderIdPlaceholder": ORDER_ID_PLACEHOLDER,
        # The banner's "Restore defaults" patches these (the faults and modes only: not the number of workers).
        "sandboxDefaults": {name: sandbox.DEFAULTS[name] for name in (*sandbox.FAULTS, *sandbox.SCALING)},
        "limits": {
            "quantity": {"min": quantity.min_value, "max": quantity.max_value},
            "lines": {"max": MAX_LINES},
            "note": {"max": cast(serializers.CharField, order_fields["note"]).max_length},
            "burst": {"min": 1, "max": sandbox.BURST_MAX, "chunk": sandbox.BURST_CHUNK},
            "restock": {"min": 1, "max": sandbox.RESTOCK_MAX, "default": sandbox.RESTOCK_DEFAULT},
            **{name: _bounds(name) for name in SandboxSettings.FIELDS if _has_bounds(name)},
        },
        # The red banner's "Restore safe modes" patches these.
        "safeModes": {name: sandbox.DEFAULTS[name] for name in sandbox.UNSAFE_MODES},
        # The dashboard's "Unsafe modes" selects: each mode's values, the safe one first.
        "unsafeModes": [{"name": name, "label": name, "choices": _choices(name)} for name in sandbox.UNSAFE_MODES],
        "urls": {
            "orders": reverse("api-order-list"),
            "journey": reverse("journey", args=[ORDER_ID_PLACEHOLDER]),
            "nextStep": reverse("api-order-next-step", args=[ORDER_ID_PLACEHOLDER]),
            "sandbox": reverse("api-sandbox"),
            "burst": reverse("control-burst"),
            "purgeQueue": reverse("control-purge-queue"),
            "flushCache": reverse("control-flush-cache"),
            "restock": reverse("control-restock"),
            "replayDeadLetters": reverse("api-dead-letters-replay"),
            "kill": reverse("control-kill"),
            "outage": reverse("control-outage"),
            "node": reverse("control-node"),
            "poison": reverse("control-poison"),
            "pipelineSocket": f"/{feed.PIPELINE_SOCKET_PATH}",
            "journeySocket": f"/{feed.JOURNEY_SOCKET_PATH}".replace("<str:order_id>", ORDER_ID_PLACEHOLDER),
        },
    }


def _context(request: HttpRequest) -> dict[str, object]:
    return {
        "can_control": can_control(request.user),
        "sandbox": settings.ORDERPIPE_SANDBOX,
        "login_url": f"{reverse('admin:login')}?next={request.get_full_path()}",
        "statuses": OrderStatus.choices,
        "config": page_config(),
        # The banner naming the active faults, on every page (templates/base.html); dashboard.js keeps it live.
        **_banners(),
        # static/js/live.js opens the page's socket on this port of the page's host (empty: the page's origin).
        "websocket_port": settings.WEBSOCKET_PORT or "",
    }


def _banners() -> dict[str, list[str]]:
    """The faults (yellow) and the unsafe modes (red) that are on, for the banners of templates/base.html."""
    if not settings.ORDERPIPE_SANDBOX:
        return {"sandbox_faults": [], "sandbox_unsafe": []}
    state = sandbox.sandbox_state()
    return {"sandbox_faults": state["active_faults"], "sandbox_unsafe": state["unsafe_modes"]}


def _login(request: HttpRequest) -> HttpResponse:
    return redirect_to_login(request.get_full_path(), reverse("admin:login"))


@ensure_csrf_cookie
def dashboard(request: HttpRequest) -> HttpResponse:
    if not can_watch(request.user):
        return _login(request)
    products = list(selectors.product_list())
    return render(
        request,
        "dashboard.html",
        {
            **_context(request),
            "initial": pipeline_snapshot(),
            "products": products,
            "stock_total": sum(p.stock for p in products),
            "outage_services": [("rabbitmq", "RabbitMQ"), ("redis", "Redis (cache)"), ("postgresql", "PostgreSQL")],
        },
    )


@ensure_csrf_cookie
def journey(request: HttpRequest, order_id: uuid.UUID) -> HttpResponse:
    if not can_watch(request.user):
        return _login(request)
    try:
        order = selectors.order_page_read(order_id)
    except Order.DoesNotExist:
        raise Http404("No such order.") from None
    return render(
        request,
        "journey.html",
        {
            **_context(request),
            "order": order,
            "initial": journey_snapshot(order.pk),
            # static/js/sequence.js draws the journey as a sequence diagram from this table.
            "sequence": sequence_table(),
        },
    )
