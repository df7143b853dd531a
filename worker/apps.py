"""The worker side: transport (relay, consumer, broker, topology) and the telemetry its processes report."""

from django.apps import AppConfig


class WorkerConfig(AppConfig):
    name = "worker"

    def ready(self) -> None:
        # The seam of the sandbox's unsafe publish modes: orders/ calls it without importing pika or worker/.
        from orders.sandbox import unsafe_accept
        from worker.direct_publish import publish_order

        unsafe_accept.register_publisher(publish_order)

        # The check behind "a sandbox change answers once it is in effect": which workers run it (heartbeats).
        from orders import sandbox
        from worker.applied import settings_applied

        sandbox.applied_by = settings_applied
