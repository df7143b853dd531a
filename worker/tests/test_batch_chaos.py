"""Crash safety of the batched steps (orders/batch.py), the path production runs: no fault is on, so a worker runs
the deliveries it holds as batches, and SIGKILLs land inside them, between a batch's gateway call and its commit
among other places. (Any fault sends every delivery the per-order way: test_chaos.py covers that path.)"""

from __future__ import annotations

import os
import random
import re
import time

import pytest

from orders import services
from orders.models import EventKind, GatewayCharge, Order, OrderEvent, OrderStatus, Payment
from orders.sandbox.faults import Faults
from orders.tests.factories import ProductFactory
from worker.tests.guarantees import (
    gateway_charged_twice,
    lost,
    payments_twice,
    processed_twice,
    resent_by_sweeper,
    stock_errors,
    wait_until_settled,
)
from worker.tests.processes import Service, service_env, wait_until

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]

STOCK = 10_000
# Where a parked batch is SIGKILLed: before each step's commit, the charge step twice (after the gateway charged).
PARK_AT = ["charge payment", "reserve inventory", "charge payment", "notify customer", "complete"]
PARKED = re.compile(r"pause point ([a-z ]+) reached with (\d+) order\(s\): ([0-9a-f -]+)")


def test_sigkills_inside_batches_lose_nothing_and_charge_nothing_twice(tmp_path, broker):
    seed = int(os.environ.get("CHAOS_SEED", random.randrange(1_000_000)))
    rng = random.Random(seed)
    products = [ProductFactory(sku=f"BKILL-{i}", price=f"{5 + i}.00", stock=STOCK) for i in range(3)]
    assert Faults().batchable(), "a fault or an unsafe mode is on: the deliveries would not be batched"
    ids: list = []

    def place_wave(size: int) -> list:
        wave = []
        for _ in range(size):
            chosen = rng.sample(products, rng.randint(1, 2))
            items = [{"sku": p.sku, "quantity": rng.randint(1, 3)} for p in chosen]
            wave.append(services.order_create(customer_email=f"bkill{len(ids)}@example.com", items=items).pk)
        ids.extend(wave)
        # Published before a worker starts, so the worker's first deliveries arrive together and make batches.
        queued = Order.objects.filter(pk__in=wave, status=OrderStatus.QUEUED)
        assert wait_until(lambda: queued.count() == len(wave), 30), relay.output()[-3000:]
        return wave

    # The sweeper is off: what a kill leaves must come back by redelivery, or the test fails.
    relay = Service("run_relay", log_dir=tmp_path, env=service_env(ORDERPIPE_SWEEP_AFTER="0")).start()
    worker_args = ("--concurrency", "2", "--prefetch", "30")
    workers: list[Service] = []
    parked: list[tuple[str, int]] = []
    random_kills = 0

    def keep_alive() -> None:
        broker.connection.process_data_events(time_limit=0)  # the fixture's idle connection keeps its heartbeats

    def start(**env: str) -> Service:
        workers.append(Service("run_worker", *worker_args, log_dir=tmp_path, env=service_env(**env)).start())
        return workers[-1]

    def recover() -> bool:
        """A plain worker takes back what the kill left (redelivered) and finishes every order so far. It stops
        before the next round, so that round's worker gets the round's fresh orders in one burst: batches."""
        worker = start()
        settled = wait_until_settled(ids, tick=keep_alive)
        # Stopped once it consumes (its SIGTERM handler is in place by then), even if the kill had left nothing.
        assert wait_until(lambda: " consuming " in worker.output(), 60), worker.output()[-3000:]
        assert worker.stop() == 0, worker.output()[-3000:]
        return settled

    finished = True
    try:
        # 1. A worker parks its first batch that reaches the pause point; it is SIGKILLed there.
        for point in PARK_AT:
            keep_alive()
            place_wave(15)
            parking = start(ORDERPIPE_BATCH_PAUSE_AT=point)
            assert wait_until(lambda service=parking: PARKED.search(service.output()) is not None, 90), (
                parking.output()[-3000:]
            )
            found = PARKED.search(parking.output())
            assert found is not None and found[1] == point
            held = found[3].split()
            assert len(held) == int(found[2]) >= 2, f"a batch of {found[2]}: not a batch of several"
            if point == "charge payment":
                # The window: the gateway has charged every order of the batch, none of our payments is committed.
                assert GatewayCharge.objects.filter(order_ref__in=held).count() == len(held)
                assert not Payment.objects.filter(order_id__in=held).exists()
            parking.kill()
            parked.append((point, len(held)))
            finished = recover()
            if not finished:
                break
        # 2. SIGKILLs at random moments of a batched run.
        for _ in range(3 if finished else 0):
            keep_alive()
            wave = place_wave(40)
            worker = start()
            started = Order.objects.filter(pk__in=wave, status=OrderStatus.PROCESSING)
            assert wait_until(started.exists, 90), worker.output()[-3000:]
            time.sleep(rng.uniform(0.0, 0.3))  # a random moment of the batch, on purpose
            worker.kill()
            random_kills += 1
            finished = recover()
            if not finished:
                break
    finally:
        for service in workers:
            service.stop()
        relay_code = relay.stop()
    completed = Order.objects.filter(pk__in=ids, status=OrderStatus.COMPLETED)
    print(
        f"\nbatch chaos: seed={seed} orders={len(ids)} parked_kills="
        + ",".join(f"{point.replace(' ', '_')}:{size}" for point, size in parked)
        + f" random_kills={random_kills}"
        f" redeliveries={OrderEvent.objects.filter(order_id__in=ids, kind=EventKind.REDELIVERED).count()}"
        f" completed={completed.count()} lost={lost(ids)} resent_by_sweeper={resent_by_sweeper(ids)}"
        f" duplicates_processed={processed_twice(ids)} duplicate_payments={payments_twice(ids)}"
        f" duplicate_gateway_charges={gateway_charged_twice(ids)}"
    )
    assert finished, (
        f"seed {seed}: {lost(ids)} orders lost (not terminal, no progress)\n" + workers[-1].output()[-3000:]
    )
    assert relay_code == 0
    assert resent_by_sweeper(ids) == 0
    assert gateway_charged_twice(ids) == 0
    assert payments_twice(ids) == 0
    assert processed_twice(ids) == 0
    # No fault is on: every order completes, each with the one charge the gateway holds for it.
    assert completed.count() == len(ids), f"seed {seed}"
    charges = dict(
        GatewayCharge.objects.filter(order_ref__in=[str(pk) for pk in ids]).values_list("order_ref", "reference")
    )
    payments = dict(Payment.objects.filter(order_id__in=ids).values_list("order_id", "gateway_reference"))
    assert {str(pk): ref for pk, ref in payments.items()} == charges
    assert stock_errors(ids, products, STOCK) == [], f"seed {seed}"
