"""Server-rendered pages: the live dashboard and an order's journey."""

from __future__ import annotations

from django.http import HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, render

from orders.models import Order


def dashboard(request: HttpRequest) -> HttpResponse:
    return render(request, "dashboard.html", {})


def journey(request: HttpRequest, order_id: str) -> HttpResponse:
    order = get_object_or_404(Order, pk=order_id)
    return render(request, "journey.html", {"order": order})
