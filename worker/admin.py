"""Admin actions that need the broker live here, on the consumer side (orders never imports worker)."""

from __future__ import annotations

from django.contrib import admin, messages

from orders.admin import OrderAdmin
from orders.models import OrderStatus
from worker.replay import replay_dead_letters


@admin.action(description="Replay selected dead-lettered orders")
def replay_selected(modeladmin, request, queryset) -> None:
    count = 0
    for order_id in queryset.filter(status=OrderStatus.DEAD_LETTERED).values_list("pk", flat=True):
        count += replay_dead_letters(order_id, replayed_by=request.user.get_username(), via="admin")
    modeladmin.message_user(request, f"Replayed {count} dead-lettered order(s).", messages.SUCCESS)


OrderAdmin.actions = [*(OrderAdmin.actions or []), replay_selected]  # type: ignore[misc]  # set on the class on purpose
