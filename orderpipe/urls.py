"""Every URL here has a permission decision in the table in docs/05-security.md, and
orderpipe/tests/test_permissions.py fails for a URL it does not know."""

from django.contrib import admin
from django.urls import include, path
from drf_spectacular.views import SpectacularAPIView, SpectacularSwaggerSplitView

from orderpipe import health
from orderpipe.dashboard.api import PipelineApi
from orders.api import ApiRootApi

urlpatterns = [
    path("admin/", admin.site.urls),
    path("api/", ApiRootApi.as_view(), name="api-root"),
    path("api/", include("orders.urls")),
    path("api/pipeline/", PipelineApi.as_view(), name="api-pipeline"),
    path("api/controls/", include("orderpipe.dashboard.control_urls")),
    path("api/", include("worker.urls")),
    path("api/schema/", SpectacularAPIView.as_view(), name="schema"),
    # The split view serves its script as a file (`?script`), so the page needs no inline script under the CSP.
    path("api/docs/", SpectacularSwaggerSplitView.as_view(url_name="schema"), name="api-docs"),
    path("api-auth/", include("rest_framework.urls")),
    path("healthz", health.healthz, name="healthz"),
    path("readyz", health.readyz, name="readyz"),
    path("metrics", health.metrics_view, name="metrics"),
    path("lessons/", include("orderpipe.lessons.urls")),
    path("", include("orderpipe.dashboard.urls")),
]
