from django.urls import path

from worker import controls, outage_controls

urlpatterns = [
    path("burst/", controls.BurstApi.as_view(), name="control-burst"),
    path("purge-queue/", controls.PurgeQueueApi.as_view(), name="control-purge-queue"),
    path("restock/", controls.RestockApi.as_view(), name="control-restock"),
    path("flush-cache/", controls.FlushCacheApi.as_view(), name="control-flush-cache"),
    path("kill/", outage_controls.KillApi.as_view(), name="control-kill"),
    path("outage/", outage_controls.OutageApi.as_view(), name="control-outage"),
    path("poison/", outage_controls.PoisonApi.as_view(), name="control-poison"),
]
