"""The demo login `make run` prints works in DEBUG only, even when the account is still in the database."""

from __future__ import annotations

import base64
import json
import logging

import pytest
from django.core.management import call_command
from django.test import Client

from orders.demo_login import DEMO_PASSWORD, DEMO_USERNAME
from orders.models import SandboxSettings
from orders.tests.factories import StaffFactory

pytestmark = pytest.mark.django_db


def admin_login(client: Client, username: str, password: str) -> bool:
    """A real login through the admin's form; True when it let the user in."""
    response = client.post("/admin/login/?next=/admin/", {"username": username, "password": password})
    return response.status_code == 302 and response["Location"] == "/admin/"


def change_sandbox(client: Client, **headers: str) -> int:
    return client.patch(
        "/api/sandbox/", data=json.dumps({"paused": True}), content_type="application/json", headers=headers
    ).status_code


@pytest.fixture
def demo_left_by_a_debug_run(settings):
    settings.DEBUG = True
    call_command("ensure_demo_staff")
    settings.DEBUG = False


def test_the_demo_login_is_refused_outside_debug(demo_left_by_a_debug_run, caplog):
    client = Client()
    with caplog.at_level(logging.WARNING, logger="orders.demo_login"):
        assert not admin_login(client, DEMO_USERNAME, DEMO_PASSWORD)
    assert client.get("/admin/").status_code == 302  # still sent to the login page
    assert change_sandbox(client) in (401, 403)
    basic = base64.b64encode(f"{DEMO_USERNAME}:{DEMO_PASSWORD}".encode()).decode()
    assert change_sandbox(Client(), Authorization=f"Basic {basic}") in (401, 403)
    assert SandboxSettings.load().paused is False
    refused = {r.getMessage() for r in caplog.records if r.name == "orders.demo_login"}
    assert refused == {"demo login refused: the 'demo' account works only with DJANGO_DEBUG=true"}


def test_a_demo_session_opened_in_debug_ends_when_debug_is_off(demo_left_by_a_debug_run, settings):
    settings.DEBUG = True
    client = Client()
    assert admin_login(client, DEMO_USERNAME, DEMO_PASSWORD)
    assert client.get("/admin/").status_code == 200
    settings.DEBUG = False
    assert client.get("/admin/").status_code == 302
    assert change_sandbox(client) in (401, 403)
    assert SandboxSettings.load().paused is False


def test_the_demo_login_works_in_debug_and_other_staff_outside_it(demo_left_by_a_debug_run, settings):
    StaffFactory(username="ops", password="a-real-password")
    assert admin_login(Client(), "ops", "a-real-password")
    settings.DEBUG = True
    assert admin_login(Client(), DEMO_USERNAME, DEMO_PASSWORD)


def test_ensure_demo_staff_says_a_left_demo_account_cannot_log_in(demo_left_by_a_debug_run, capsys):
    capsys.readouterr()
    call_command("ensure_demo_staff")
    assert "the 'demo' account left by a DEBUG run cannot log in" in capsys.readouterr().out
