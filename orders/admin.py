"""The admin of the domain: catalog, orders and their journey, outbox, payments, and the sandbox's settings."""

from __future__ import annotations

import json
from typing import Any

from django import forms
from django.contrib import admin, messages
from django.db import transaction
from django.db.models import CharField, Q
from django.db.models.functions import Cast
from django.urls import reverse
from django.utils.html import format_html

from orders import sandbox
from orders.models import (
    Notification,
    Order,
    OrderEvent,
    OrderLine,
    OrderStatus,
    OutboxMessage,
    Payment,
    Product,
    SandboxChange,
    SandboxSettings,
)


@admin.register(Product)
class ProductAdmin(admin.ModelAdmin):
    list_display = ["sku", "name", "price", "stock"]
    search_fields = ["sku", "name"]
    list_editable = ["price", "stock"]


class OrderLineInline(admin.TabularInline):
    model = OrderLine
    extra = 0
    fields = ("sku", "quantity", "unit_price")
    readonly_fields = fields
    can_delete = False

    def has_add_permission(self, request, obj=None) -> bool:
        return False


class OrderEventInline(admin.TabularInline):
    model = OrderEvent
    extra = 0
    fields = ("seq", "kind", "at", "message", "snapshot_pretty")
    readonly_fields = fields
    can_delete = False
    ordering = ["seq"]

    def has_add_permission(self, request, obj=None) -> bool:
        return False

    @admin.display(description="snapshot (db / queue / cache)")
    def snapshot_pretty(self, obj: OrderEvent) -> str:
        return format_html(
            "<pre style='white-space:pre-wrap;max-width:60em'>{}</pre>", json.dumps(obj.snapshot, indent=2)
        )


@admin.register(Order)
class OrderAdmin(admin.ModelAdmin):
    list_display = ["id", "status", "step", "customer_email", "total", "attempts", "created_at", "journey_link"]
    list_filter = ["status", "step"]
    search_fields = ["id", "customer_email"]
    date_hierarchy = "created_at"
    inlines = [OrderLineInline, OrderEventInline]
    # Statuses only change through the pipeline's guarded transitions, never by hand.
    readonly_fields = [
        "id",
        "journey_link",
        "status",
        "step",
        "customer_email",
        "total",
        "note",
        "failure_reason",
        "attempts",
        "version",
        "result",
        "created_at",
        "updated_at",
        "completed_at",
    ]

    def has_add_permission(self, request) -> bool:
        return False

    def get_deleted_objects(self, objs, request):
        # Called to build both confirmation pages (one order's, and the "delete selected" action's), and again
        # when the deletion is confirmed (the form then posts `post=yes`): warn on the confirmation page only.
        if not request.POST.get("post"):
            in_flight = [o for o in objs if o.status not in OrderStatus.terminal()]
            if in_flight:
                listed = ", ".join(f"{str(o.pk)[:8]} ({o.status})" for o in in_flight[:10])
                more = f" and {len(in_flight) - 10} more" if len(in_flight) > 10 else ""
                messages.warning(
                    request,
                    f"{len(in_flight)} of these orders are still in the pipeline: {listed}{more}. Deleting one "
                    "mid-way leaves its message to a worker that will find no order (and dead-letter it), and the "
                    "stock reserved for it is not given back.",
                )
        return super().get_deleted_objects(objs, request)

    @admin.display(description="journey")
    def journey_link(self, obj: Order) -> str:
        """The order's journey page: every step with what PostgreSQL, RabbitMQ and Redis held."""
        return format_html('<a href="{}">follow its journey →</a>', reverse("journey", args=[obj.pk]))

    def get_search_results(self, request, queryset, search_term):
        # A UUID column cannot be searched with icontains; match the id by its text prefix, or the email.
        term = search_term.strip().lower()
        if not term:
            return queryset, False
        by_id_or_email = queryset.annotate(id_text=Cast("id", CharField())).filter(
            Q(id_text__startswith=term) | Q(customer_email__icontains=term)
        )
        return by_id_or_email, False


@admin.register(OrderEvent)
class OrderEventAdmin(admin.ModelAdmin):
    list_display = ["order", "seq", "kind", "at", "message"]
    list_filter = ["kind"]
    search_fields = ["order__id"]
    readonly_fields = ["order", "seq", "kind", "at", "message", "snapshot"]

    def has_add_permission(self, request) -> bool:
        return False


@admin.register(OutboxMessage)
class OutboxMessageAdmin(admin.ModelAdmin):
    list_display = ["id", "order", "message_type", "created_at", "sent_at", "publish_attempts"]
    list_filter = [("sent_at", admin.EmptyFieldListFilter)]
    readonly_fields = [
        "order",
        "message_type",
        "routing_key",
        "payload",
        "created_at",
        "sent_at",
        "publish_attempts",
        "last_error",
    ]

    def has_add_permission(self, request) -> bool:
        return False


@admin.register(Payment)
class PaymentAdmin(admin.ModelAdmin):
    list_display = ["gateway_reference", "order", "amount", "created_at"]
    search_fields = ["gateway_reference", "order__id"]
    readonly_fields = ["order", "amount", "gateway_reference", "created_at"]

    def has_add_permission(self, request) -> bool:
        return False


@admin.register(Notification)
class NotificationAdmin(admin.ModelAdmin):
    list_display = ["order", "channel", "recipient", "subject", "sent_at"]
    readonly_fields = ["order", "channel", "recipient", "subject", "body", "sent_at"]


class SandboxSettingsForm(forms.ModelForm):
    class Meta:
        model = SandboxSettings
        fields = list(SandboxSettings.FIELDS)

    def clean(self) -> dict[str, Any]:
        cleaned = super().clean() or {}
        # The unsafe modes are refused with ORDERPIPE_SANDBOX=false: a form error on the field, not a server error.
        sandbox.refuse_unsafe_when_off({name: cleaned.get(name) for name in self.changed_data})
        return cleaned


@admin.register(SandboxSettings)
class SandboxSettingsAdmin(admin.ModelAdmin):
    form = SandboxSettingsForm
    list_display = ["__str__", *SandboxSettings.FIELDS, "updated_at"]
    fieldsets = [
        (None, {"fields": [name for name in SandboxSettings.FIELDS if name not in sandbox.UNSAFE_MODES]}),
        (
            "Unsafe modes (each switches a guarantee off; a red banner shows while any is on)",
            {"fields": [*sandbox.UNSAFE_MODES]},
        ),
    ]

    def has_add_permission(self, request) -> bool:
        return not SandboxSettings.objects.exists()

    def has_delete_permission(self, request, obj=None) -> bool:
        return False

    def save_model(self, request, obj, form, change) -> None:
        # Through the service, so the change is validated and recorded like one made from the API. The admin's view
        # is one transaction: the workers can pick the change up only after its commit, so the wait follows it.
        row = sandbox.sandbox_update(
            changes={name: form.cleaned_data[name] for name in form.changed_data},
            changed_by=request.user.get_username(),
            via="admin",
        )
        transaction.on_commit(lambda: self._say_applied(request, row.version))

    def _say_applied(self, request, version: int) -> None:
        applied = sandbox.wait_applied(version)
        self.message_user(
            request, applied.text().capitalize() + ".", messages.SUCCESS if applied.done else messages.WARNING
        )


@admin.register(SandboxChange)
class SandboxChangeAdmin(admin.ModelAdmin):
    list_display = ["at", "field", "old", "new", "changed_by", "via"]
    list_filter = ["field", "via"]
    fields = ("at", "field", "old", "new", "changed_by", "via")
    readonly_fields = fields

    # The stored JSON values printed one way (true/false, "default" for an empty concurrency), as the live feed's
    # control actions print them: the default rendering mixed JSON's `true` with Python's `False`.
    @admin.display(description="from", ordering="old_value")
    def old(self, obj: SandboxChange) -> str:
        return sandbox.shown_value(obj.old_value, obj.field)

    @admin.display(description="to", ordering="new_value")
    def new(self, obj: SandboxChange) -> str:
        return sandbox.shown_value(obj.new_value, obj.field)

    def has_add_permission(self, request) -> bool:
        return False

    def has_change_permission(self, request, obj=None) -> bool:
        return False
