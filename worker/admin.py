"""The admin of the worker side: its telemetry tables, and the orders' admin with the replay action (it needs the
broker, so it cannot live in orders/admin.py: orders never imports worker)."""

from __future__ import annotations

from django.contrib import admin, messages

from orders.admin import OrderAdmin
from orders.models import Order, OrderStatus
from worker.models import QueueStat, RelayHeartbeat, SupervisedProcess, WorkerHeartbeat
from worker.replay import replay_dead_letters


@admin.action(description="Replay selected dead-lettered orders")
def replay_selected(modeladmin, request, queryset) -> None:
    count = 0
    for order_id in queryset.filter(status=OrderStatus.DEAD_LETTERED).values_list("pk", flat=True):
        count += replay_dead_letters(order_id, replayed_by=request.user.get_username(), via="admin")
    modeladmin.message_user(request, f"Replayed {count} dead-lettered order(s).", messages.SUCCESS)


class OrderWithReplayAdmin(OrderAdmin):
    """The orders' admin plus the replay action. It takes the place of orders' own registration through the admin
    site's public API (unregister, register): `worker` is installed after `orders`, so its admin module is
    discovered second. OrderAdmin itself is left as it is, and declares no actions of its own (the site-wide
    "delete selected" stays)."""

    actions = [replay_selected]


admin.site.unregister(Order)
admin.site.register(Order, OrderWithReplayAdmin)


@admin.register(QueueStat)
class QueueStatAdmin(admin.ModelAdmin):
    list_display = ["name", "role", "ready", "consumers", "observed_at"]


@admin.register(WorkerHeartbeat)
class WorkerHeartbeatAdmin(admin.ModelAdmin):
    list_display = ["name", "hostname", "pid", "current_order", "processed", "unacked", "last_seen"]


@admin.register(RelayHeartbeat)
class RelayHeartbeatAdmin(admin.ModelAdmin):
    list_display = ["name", "hostname", "pid", "state", "published", "rate", "last_publish_at", "last_seen"]


@admin.register(SupervisedProcess)
class SupervisedProcessAdmin(admin.ModelAdmin):
    list_display = ["name", "role", "pid", "state", "restarts", "last_exit", "last_exit_at", "updated_at"]
