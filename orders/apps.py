"""The domain app: orders, their steps and journey, the REST API, the sandbox; connects its signal receivers."""

from django.apps import AppConfig


class OrdersConfig(AppConfig):
    name = "orders"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from orders import signals  # noqa: F401 - connects the receivers
