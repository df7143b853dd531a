"""Outages of each service, made real with a TCP proxy the test cuts (worker/proxy.py): the client sees
resets and refused connections exactly as in a real outage, while the shared services keep running."""

from __future__ import annotations

import json

import pytest
from django.db import connection

from orders import sandbox, services
from orders.models import EventKind, Order, OrderEvent, OrderStatus, OutboxMessage, Payment
from orders.tests.factories import ProductFactory
from worker.proxy import Proxy
from worker.tests.processes import Service, service_env, wait_until

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]


def place(api, email: str = "out@example.com"):
    return api.post(
        "/api/orders/",
        data=json.dumps({"customer_email": email, "items": [{"sku": "BOOK-001", "quantity": 1}]}),
        content_type="application/json",
    )


def completed(ids) -> bool:
    return Order.objects.filter(pk__in=ids, status=OrderStatus.COMPLETED).count() == len(ids)


def test_broker_outage_the_api_keeps_accepting_and_the_backlog_drains_afterwards(api, broker, tmp_path):
    ProductFactory(sku="BOOK-001", stock=100)
    with Proxy(5672) as rabbit:
        env = service_env(AMQP_URL=f"amqp://guest:guest@127.0.0.1:{rabbit.port}/%2F")
        relay = Service("run_relay", log_dir=tmp_path, env=env).start()
        worker = Service("run_worker", log_dir=tmp_path, env=env).start()
        try:
            first = place(api).json()["id"]
            assert wait_until(lambda: completed([first]), 30), relay.output() + worker.output()

            rabbit.down()
            during = []
            for i in range(10):
                response = place(api, f"during{i}@example.com")
                assert response.status_code == 202
                during.append(response.json()["id"])
            # The relay has tried the broker since they were placed, and failed: nothing of them went out.
            failures = relay.output().count("relay: broker unavailable")
            assert wait_until(lambda: relay.output().count("relay: broker unavailable") > failures, 30)
            assert OutboxMessage.objects.filter(sent_at__isnull=True).count() == 10  # the outbox holds them
            assert Order.objects.filter(pk__in=during, status=OrderStatus.PENDING).count() == 10

            rabbit.up()
            assert wait_until(lambda: completed(during), 60), relay.output()[-2000:] + worker.output()[-2000:]
        finally:
            codes = worker.stop(), relay.stop()
    assert codes == (0, 0)
    assert "broker unavailable" in relay.output()
    assert Payment.objects.filter(order_id__in=during).count() == 10


def test_redis_outage_reads_fall_back_to_postgres_and_processing_continues(staff_api, broker, tmp_path, settings):
    api = staff_api  # reading orders over HTTP needs staff outside DEBUG
    ProductFactory(sku="BOOK-001", stock=100)
    with Proxy(6379) as redis:
        redis.down()
        env = service_env(REDIS_URL=f"redis://127.0.0.1:{redis.port}/0")
        relay = Service("run_relay", log_dir=tmp_path).start()
        worker = Service("run_worker", log_dir=tmp_path, env=env).start()
        try:
            order_id = place(api).json()["id"]
            assert wait_until(lambda: completed([order_id]), 30), worker.output()

            # The cache part of an event is filled in just after its commit: wait for it.
            def cache_note():
                return OrderEvent.objects.get(order_id=order_id, kind=EventKind.COMPLETED).snapshot["cache"]

            assert wait_until(lambda: "error" in cache_note(), 10), cache_note()
            assert "Redis unavailable" in cache_note()["error"]

            # The API's own Redis is down too: reads come from PostgreSQL, nothing fails.
            settings.CACHES = {
                "default": {**settings.CACHES["default"], "LOCATION": f"redis://127.0.0.1:{redis.port}/0"}
            }
            response = api.get(f"/api/orders/{order_id}/")
            assert (response.status_code, response["X-Cache"]) == (200, "MISS")
            assert response.json()["status"] == "completed"
            assert place(api).status_code == 202
            assert api.get("/api/pipeline/").json()["cache"]["available"] is False

            # Redis returns: both sides recover by themselves.
            redis.up()
            later = place(api).json()["id"]
            assert wait_until(lambda: completed([later]), 30)
            assert wait_until(
                lambda: (
                    OrderEvent.objects.get(order_id=later, kind=EventKind.COMPLETED).snapshot["cache"].get("present")
                ),
                10,
            )
            assert api.get(f"/api/orders/{later}/")["X-Cache"] == "HIT"
        finally:
            codes = worker.stop(), relay.stop()
    assert codes == (0, 0)


@pytest.fixture
def database_through(settings):
    """Point this test process's own connections at a proxy in front of PostgreSQL."""
    params = connection.settings_dict
    original_port = params["PORT"]
    proxy = Proxy(int(original_port or 5432))
    proxy.up()

    def repoint(port) -> None:
        connection.close()
        if hasattr(connection, "close_pool"):
            connection.close_pool()
        params["PORT"] = port

    params.setdefault("OPTIONS", {}).get("pool", {}).update(timeout=1.0)
    repoint(str(proxy.port))
    yield proxy
    repoint(original_port)
    proxy.down()


def test_database_outage_the_api_answers_503_json_then_recovers(api, database_through):
    ProductFactory(sku="BOOK-001", stock=5)
    database_through.down()
    response = place(api)
    assert response.status_code == 503
    assert response["Content-Type"] == "application/json"
    assert response.json()["code"] == "database_unavailable"
    assert api.get("/api/products/").status_code == 503  # a read anyone may make (orders need staff outside DEBUG)
    database_through.up()

    def accepted() -> bool:
        # Django's test client keeps the thread's connection across requests; a real server closes it at the
        # end of each request (close_old_connections), which is what this does.
        connection.close()
        return place(api).status_code == 202

    assert wait_until(accepted, 10)


def test_database_outage_the_worker_holds_its_messages_and_resumes(api, broker, tmp_path):
    ProductFactory(sku="BOOK-001", stock=100)
    sandbox.sandbox_update(changes={"step_delay_ms": 300}, via="test")
    db = connection.settings_dict
    with Proxy(int(db["PORT"] or 5432)) as postgres:
        env = service_env(DATABASE_URL=f"postgres://{db['USER']}@127.0.0.1:{postgres.port}/{db['NAME']}")
        relay = Service("run_relay", log_dir=tmp_path).start()
        worker = Service("run_worker", "--prefetch", "5", log_dir=tmp_path, env=env).start()
        try:
            ids = [
                services.order_create(
                    customer_email=f"db{i}@example.com", items=[{"sku": "BOOK-001", "quantity": 1}]
                ).pk
                for i in range(5)
            ]
            assert wait_until(lambda: Order.objects.filter(pk__in=ids, status=OrderStatus.PROCESSING).exists(), 30)
            postgres.down()
            assert wait_until(lambda: "database unavailable" in worker.output(), 30), worker.output()[-3000:]
            stuck = Order.objects.filter(pk__in=ids).exclude(status=OrderStatus.COMPLETED).count()
            assert stuck > 0  # the outage really interrupted the work
            postgres.up()
            assert wait_until(lambda: completed(ids), 60), worker.output()[-3000:]
        finally:
            codes = worker.stop(), relay.stop()
    assert codes == (0, 0)
    assert "database unavailable" in worker.output()
    assert Payment.objects.filter(order_id__in=ids).count() == 5
    # Nothing was acked unprocessed, nothing was dead-lettered on the way.
    assert not Order.objects.filter(pk__in=ids, status=OrderStatus.DEAD_LETTERED).exists()
