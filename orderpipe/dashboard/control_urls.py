"""The dashboard's control endpoints (under /api/controls/): burst, purge a queue, restock, flush the cache, and the
"What happens when…" stories' kill, outage, node and poison controls."""

from django.urls import path

from orderpipe.dashboard import controls, outages

urlpatterns = [
    path("burst/", controls.BurstApi.as_view(), name="control-burst"),
    path("purge-queue/", controls.PurgeQueueApi.as_view(), name="control-purge-queue"),
    path("restock/", controls.RestockApi.as_view(), name="control-restock"),
    path("flush-cache/", controls.FlushCacheApi.as_view(), name="control-flush-cache"),
    path("kill/", outages.KillApi.as_view(), name="control-kill"),
    path("outage/", outages.OutageApi.as_view(), name="control-outage"),
    path("node/", outages.NodeApi.as_view(), name="control-node"),
    path("poison/", outages.PoisonApi.as_view(), name="control-poison"),
]
