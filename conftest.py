"""Shared fixtures. Tests talk to the real PostgreSQL, RabbitMQ and Redis, under this run's own prefix (see
orderpipe/testing.py), and remove the queues and keys they created. Tests marked `pure` need none of them
(`make test-fast` runs those alone), so no fixture here touches a service for them."""

from __future__ import annotations

import contextlib

import pytest
from django.conf import settings
from rest_framework.test import APIClient

from orders import cache
from orders.tests.factories import ProductFactory, StaffFactory

# Whether a test that may use the services ran: a `make test-fast` run (only `pure` tests) never touches them.
_services_used = False


@pytest.fixture(scope="session", autouse=True)
def _clean_up_broker_and_redis():
    yield
    if not _services_used:
        return
    from worker.broker import connect
    from worker.topology import topology

    try:
        conn = connect()
        topology().delete(conn.channel())
        conn.close()
    except Exception as exc:  # cleanup must not hide a test's own failure
        print(f"broker cleanup failed: {exc}")
    cache.delete_prefix(settings.ORDERPIPE_PREFIX)


@pytest.fixture(scope="session")
def django_db_setup(django_db_setup, django_db_blocker):
    """pytest-django's, and when it is torn down: thread-pool threads of the async tests (channels'
    database_sync_to_async) can still hold an idle connection when the run ends, which would keep pytest-django
    from dropping this run's database, so they are ended first."""
    yield
    from django.db import connection

    with django_db_blocker.unblock(), connection.cursor() as cursor:
        cursor.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = current_database() "
            "AND pid <> pg_backend_pid()"
        )


@pytest.fixture(autouse=True)
def _fresh_redis_keys(request):
    if request.node.get_closest_marker("pure") is None:
        global _services_used
        _services_used = True
        cache.delete_prefix(settings.ORDERPIPE_PREFIX)
    yield


@pytest.fixture
def api() -> APIClient:
    return APIClient()


@pytest.fixture
def staff_api(db) -> APIClient:
    """A client logged in as staff: outside DEBUG, reading orders, events, the pipeline and the schema needs it."""
    client = APIClient()
    client.force_login(StaffFactory(username="staff-reader"))
    return client


@pytest.fixture
def product():
    return ProductFactory(sku="BOOK-001", price="25.00", stock=10)


@pytest.fixture
def broker():
    """A confirmed publisher on this run's topology; every queue is purged before and after the test."""
    from worker.broker import BROKER_ERRORS, Publisher, connect

    publisher = Publisher(connect())
    publisher.declare_topology()

    def purge(channel) -> None:
        for name in publisher.topology.all_queues():
            channel.queue_purge(name)

    purge(publisher.channel)
    yield publisher
    # A long test leaves this connection idle past its heartbeat, and the broker may have dropped it: purge on a
    # fresh connection.
    with contextlib.suppress(*BROKER_ERRORS):
        publisher.close()
    conn = connect()
    try:
        purge(conn.channel())
    finally:
        conn.close()
