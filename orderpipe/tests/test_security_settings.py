"""Hardening that lives in settings: `check --deploy` is clean with the production values, published or empty
secret keys are refused outside DEBUG, the CSP header, and DEBUG error pages that do not show passwords."""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
from urllib.parse import urlsplit

import pytest
from django.test import RequestFactory
from django.views.debug import technical_500_response

from worker.tests.processes import ROOT

PRODUCTION = {
    "DJANGO_DEBUG": "false",
    "DJANGO_SECRET_KEY": secrets.token_urlsafe(50),
    "DJANGO_SECURE_COOKIES": "true",
    "DJANGO_SECURE_HSTS_SECONDS": "31536000",
    "DJANGO_SECURE_HSTS_INCLUDE_SUBDOMAINS": "true",
    "DJANGO_SECURE_HSTS_PRELOAD": "true",
    "DJANGO_SECURE_SSL_REDIRECT": "true",
    "DJANGO_SECURE_PROXY_SSL_HEADER": "true",
}


def manage(*args: str, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "manage.py", *args],
        cwd=ROOT,
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.mark.pure
def test_check_deploy_is_clean_with_the_production_settings():
    result = manage("check", "--deploy", "--fail-level", "WARNING", **PRODUCTION)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "no issues" in result.stdout, result.stdout + result.stderr


@pytest.mark.pure
@pytest.mark.parametrize(
    ("key", "reason"),
    [
        ("", "DJANGO_SECRET_KEY is empty"),
        ("dev-only-insecure-secret-key-change-me", "DJANGO_SECRET_KEY is a published demo key"),
        ("compose-demo-secret-key-replace-me-for-anything-shared", "DJANGO_SECRET_KEY is a published demo key"),
    ],
)
def test_an_empty_or_published_secret_key_is_refused_outside_debug(key, reason):
    result = manage("check", **{**PRODUCTION, "DJANGO_SECRET_KEY": key})
    assert result.returncode != 0
    assert f"ImproperlyConfigured: {reason}" in result.stderr.replace("django.core.exceptions.", ""), result.stderr
    # DEBUG (make run) keeps working with them.
    assert manage("check", **{**PRODUCTION, "DJANGO_SECRET_KEY": key, "DJANGO_DEBUG": "true"}).returncode == 0


@pytest.mark.django_db
@pytest.mark.parametrize("path", ["/", "/admin/", "/api/docs/"])
def test_pages_are_served_under_a_strict_csp_without_inline_scripts(admin_client, path):
    response = admin_client.get(path)
    assert response.status_code == 200
    policy = response["Content-Security-Policy"]
    assert "script-src 'self';" in policy and "default-src 'self'" in policy
    html = response.content.decode()
    # Every script is a file (the CSP forbids inline ones); JSON data blocks are not scripts.
    assert "<script>" not in html and '<script type="module">' not in html


@pytest.mark.django_db
def test_the_swagger_ui_script_is_served_as_a_file(admin_client):
    response = admin_client.get("/api/docs/?script=")
    assert response.status_code == 200
    assert response["Content-Type"].startswith("application/javascript")


def urls_with_random_passwords(settings) -> None:
    """Set here, not in the test: the page shows the raising frame's source lines and local variables."""
    settings.DATABASE_URL = f"postgres://orderpipe:{secrets.token_hex(8)}@db.internal:5432/orderpipe"
    settings.AMQP_URL = f"amqp://app:{secrets.token_hex(8)}@mq.internal:5672/%2F"
    location = f"redis://:{secrets.token_hex(8)}@cache:6379/0"
    settings.CACHES = {"default": {**settings.CACHES["default"], "LOCATION": location}}


@pytest.mark.pure
def test_the_debug_error_page_masks_the_passwords_in_urls(settings):
    settings.DEBUG = True
    urls_with_random_passwords(settings)
    request = RequestFactory().get("/api/orders/")
    try:
        raise RuntimeError("boom")
    except RuntimeError:
        page = technical_500_response(request, *sys.exc_info()).content.decode()
    assert "boom" in page and "DATABASE_URL" in page and "cache:6379" in page
    for url in (settings.DATABASE_URL, settings.AMQP_URL, settings.CACHES["default"]["LOCATION"]):
        assert urlsplit(url).password not in page


@pytest.mark.parametrize(("debug", "expected"), [("false", "False"), ("true", "True")])
def test_the_sandbox_follows_debug_unless_set(debug, expected):
    env = {**os.environ, **PRODUCTION, "DJANGO_DEBUG": debug}
    env.pop("ORDERPIPE_SANDBOX", None)  # orderpipe/testing.py turns it on for the tests
    result = subprocess.run(
        [
            sys.executable,
            "manage.py",
            "shell",
            "-c",
            "from django.conf import settings; print(settings.ORDERPIPE_SANDBOX)",
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().splitlines()[-1] == expected
