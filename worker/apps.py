"""The worker side: transport (relay, consumer, broker, topology) and the telemetry its processes report."""

from django.apps import AppConfig


class WorkerConfig(AppConfig):
    name = "worker"

    def ready(self) -> None:
        # The seam of the sandbox's unsafe publish modes: orders/ calls it without importing pika or worker/.
        from orders import publishing
        from worker.direct_publish import publish_order

        publishing.register_publisher(publish_order)
