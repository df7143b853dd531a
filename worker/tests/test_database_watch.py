"""Heartbeats return as soon as the database does (worker/database_watch.py), not when the pool's backoff next
tries: a real relay and worker behind a cut PostgreSQL link (worker/proxy.py), the cut as long as the dashboard's."""

from __future__ import annotations

import time

import pytest
from django.db import connection
from django.utils import timezone

from orders import sandbox, services
from orders.models import Order, OrderStatus
from orders.tests.factories import ProductFactory
from worker.models import RelayHeartbeat, WorkerHeartbeat
from worker.proxy import Proxy
from worker.tests.processes import Service, service_env, wait_until

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]

# Long enough for the pool's backoff (1, 2, 4, 8 s …) to put its next attempt well past the restore: from the cut
# its attempts fall at about 0, 1, 3, 7, 15 and 31 s (20 s: the dashboard's own cut, worker/supervision.py).
CUT_SECONDS = 20
# The dashboard's promise: a process that runs is shown running within this long of the database answering again.
BACK_WITHIN = 2.0


def test_heartbeats_are_back_within_two_seconds_of_the_database_answering_again(broker, tmp_path):
    # As in the dashboard's story: the worker holds orders half done when the link is cut, and its step threads keep
    # trying the database throughout.
    ProductFactory(sku="BOOK-001", stock=100)
    sandbox.sandbox_update(changes={"step_delay_ms": 500}, via="test")
    db = connection.settings_dict
    with Proxy(int(db["PORT"] or 5432)) as postgres:
        env = service_env(DATABASE_URL=f"postgres://{db['USER']}@127.0.0.1:{postgres.port}/{db['NAME']}")
        relay = Service("run_relay", log_dir=tmp_path, env=env).start()
        worker = Service("run_worker", log_dir=tmp_path, env=env).start()
        try:
            assert wait_until(lambda: RelayHeartbeat.objects.exists() and WorkerHeartbeat.objects.exists(), 30), (
                relay.output() + worker.output()
            )
            ids = [
                services.order_create(
                    customer_email=f"cut{i}@example.com", items=[{"sku": "BOOK-001", "quantity": 1}]
                ).pk
                for i in range(5)
            ]
            assert wait_until(lambda: Order.objects.filter(pk__in=ids, status=OrderStatus.PROCESSING).exists(), 30)
            postgres.down()
            time.sleep(CUT_SECONDS)  # the outage itself: its length is the point
            restored_at = timezone.now()
            postgres.up()
            started = time.monotonic()

            def both_beat_since() -> bool:
                return (
                    RelayHeartbeat.objects.filter(last_seen__gt=restored_at).exists()
                    and WorkerHeartbeat.objects.filter(last_seen__gt=restored_at).exists()
                )

            back = wait_until(both_beat_since, BACK_WITHIN, interval=0.05)
            print(f"\nheartbeats back {time.monotonic() - started:.2f} s after a {CUT_SECONDS} s PostgreSQL cut")
            assert back, relay.output(3000) + worker.output(3000)
        finally:
            codes = worker.stop(), relay.stop()
    assert codes == (0, 0)
