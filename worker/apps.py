"""The worker side: transport (relay, consumer, broker, topology) and the telemetry its processes report."""

from django.apps import AppConfig


class WorkerConfig(AppConfig):
    name = "worker"
