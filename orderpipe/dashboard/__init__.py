"""The dashboard: the pages, their live feed (producer, socket consumers, routing), the pipeline state they show, and
the sandbox controls that are not about one order. Part of the project, not an app: it has no models; it reads the
domain (orders) and the worker side's telemetry (worker.models), and neither of those imports it."""
