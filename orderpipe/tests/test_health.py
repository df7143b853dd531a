from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor

import pytest
from django.db import connection
from django.test import Client

from orderpipe import health
from worker import dependencies

CLOSED_AMQP = "amqp://guest:guest@127.0.0.1:1/%2F"
CLOSED_REDIS = "redis://127.0.0.1:1/0"


@pytest.fixture(autouse=True)
def _fresh_readiness():
    """/readyz answers from the last second's probe: each test changes the dependencies, so each probes afresh."""
    health.cached_readiness.forget()
    yield
    health.cached_readiness.forget()


@pytest.mark.pure
def test_healthz_answers_without_touching_any_dependency(client, settings):
    # No django_db mark: any database query would raise, and the broker and Redis point at a closed port.
    settings.AMQP_URL = CLOSED_AMQP
    settings.REDIS_URL = CLOSED_REDIS
    response = client.get("/healthz")
    assert response.status_code == 200
    assert response.json() == {"status": "alive"}


@pytest.mark.django_db
def test_readyz_is_200_when_every_dependency_answers(admin_client):
    response = admin_client.get("/readyz")
    assert response.status_code == 200, response.json()
    body = response.json()
    assert body["status"] == "ready"
    assert body["failed"] == []
    assert set(body["checks"]) == {"postgresql", "rabbitmq", "redis"}
    assert all(check["ok"] for check in body["checks"].values())


@pytest.mark.django_db
@pytest.mark.django_db
def test_readyz_is_503_and_names_what_is_down(admin_client, settings):
    client = admin_client  # the errors (hosts, users) are for staff outside DEBUG
    settings.AMQP_URL = CLOSED_AMQP
    settings.REDIS_URL = CLOSED_REDIS
    started = time.monotonic()
    response = client.get("/readyz")
    assert time.monotonic() - started < 3  # checks run at once, each bounded by its timeout
    assert response.status_code == 503
    body = response.json()
    assert body["status"] == "unavailable"
    assert body["failed"] == ["rabbitmq", "redis"]
    assert body["checks"]["postgresql"]["ok"] is True
    assert "RabbitMQ unreachable at amqp://guest:***@127.0.0.1:1/" in body["checks"]["rabbitmq"]["error"]
    assert "Redis unreachable at redis://127.0.0.1:1/0" in body["checks"]["redis"]["error"]


@pytest.mark.django_db
def test_the_postgresql_check_fails_when_the_server_does_not_answer():
    dependencies.check_postgresql(connection.settings_dict)
    with pytest.raises(dependencies.DependencyUnavailable, match=r"PostgreSQL unreachable at 127\.0\.0\.1:1"):
        dependencies.check_postgresql({**connection.settings_dict, "HOST": "127.0.0.1", "PORT": "1"})


@pytest.mark.django_db
def test_the_postgresql_check_fails_on_a_missing_database():
    with pytest.raises(dependencies.DependencyUnavailable, match="does not exist"):
        dependencies.check_postgresql({**connection.settings_dict, "NAME": "orderpipe_no_such_database"})


def test_the_rabbitmq_and_redis_checks_pass_against_the_real_services():
    dependencies.check_rabbitmq()
    dependencies.check_redis()


@pytest.mark.pure
def test_passwords_are_redacted_from_messages():
    assert dependencies.redact("amqp://guest:s3cret@host:5672/%2F") == "amqp://guest:***@host:5672/%2F"
    assert dependencies.redact("redis://host:6379/0") == "redis://host:6379/0"


@pytest.mark.pure
def test_waiting_gives_up_after_the_timeout_and_retries_meanwhile():
    calls = []

    def down() -> None:
        calls.append(time.monotonic())
        raise dependencies.DependencyUnavailable("thing unreachable")

    with pytest.raises(dependencies.DependencyUnavailable, match=r"thing unreachable \(gave up after 1 s\)"):
        dependencies.wait_for_dependencies({"thing": down}, timeout=1, interval=0.25)
    assert len(calls) >= 3


@pytest.mark.pure
def test_waiting_returns_once_a_slow_dependency_comes_up():
    attempts = iter([dependencies.DependencyUnavailable("booting"), None])

    def booting() -> None:
        error = next(attempts)
        if error:
            raise error

    dependencies.wait_for_dependencies({"thing": booting}, timeout=5, interval=0.1)


def test_readyz_tells_anyone_the_verdict_and_staff_the_details(client, settings):
    settings.REDIS_URL = "redis://:readyz-secret@127.0.0.1:1/0"
    response = client.get("/readyz")
    assert response.status_code == 503
    # Which dependency failed, and its host, port and user, are for staff (or DEBUG): a probe only needs the verdict.
    assert response.json() == {"status": "unavailable"}


@pytest.mark.django_db(transaction=True)
def test_concurrent_readyz_requests_share_one_probe_per_second(client, monkeypatch):
    # A window longer than the test, so the count does not depend on how fast this machine serves 64 requests.
    monkeypatch.setattr(health, "READINESS_TTL", 60.0)
    probes: list[str] = []
    for name, check in dict(health.CHECKS).items():
        monkeypatch.setitem(health.CHECKS, name, lambda name=name, check=check: (probes.append(name), check())[1])
    with ThreadPoolExecutor(max_workers=16) as pool:
        answers = list(pool.map(lambda _: Client().get("/readyz").status_code, range(64)))
    assert answers == [200] * 64
    # However many come at once, the requests of one window share one probe of each dependency (64 without it).
    assert sorted(probes) == ["postgresql", "rabbitmq", "redis"]
