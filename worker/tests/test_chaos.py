"""Crash safety with real processes: SIGKILL the worker at random moments, SIGTERM it mid-order."""

from __future__ import annotations

import os
import random
import re
import signal
import subprocess
import time

import pytest
from django.db.models import Count, Sum

from orders import sandbox, services
from orders.models import EventKind, GatewayCharge, Order, OrderEvent, OrderLine, OrderStatus, Payment, Product
from orders.tests.factories import ProductFactory
from worker.tests.processes import Service, service_env, wait_until

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]

TERMINAL = list(OrderStatus.terminal())


def all_terminal(ids) -> bool:
    return Order.objects.filter(pk__in=ids, status__in=TERMINAL).count() == len(ids)


def gateway_charged_twice(ids: list) -> int:
    """What the payment provider holds: charges beyond one per order (0 whatever the kills hit)."""
    charges = (
        GatewayCharge.objects.filter(order_ref__in=[str(pk) for pk in ids]).values("order_ref").annotate(n=Count("id"))
    )
    return sum(row["n"] - 1 for row in charges)


def test_sigkill_chaos_loses_no_order_and_charges_none_twice(tmp_path, broker):
    seed = int(os.environ.get("CHAOS_SEED", random.randrange(1_000_000)))
    rng = random.Random(seed)
    products = [ProductFactory(sku=f"CHAOS-{i}", price=f"{5 + i}.00", stock=10_000) for i in range(3)]
    # Slow steps so that kills land mid-order; a few declines so failed orders (stock released) are in the mix.
    sandbox.sandbox_update(changes={"step_delay_ms": 25, "decline_rate": 0.05}, via="test")
    ids = []
    for i in range(200):
        chosen = rng.sample(products, rng.randint(1, 2))
        items = [{"sku": p.sku, "quantity": rng.randint(1, 3)} for p in chosen]
        ids.append(services.order_create(customer_email=f"chaos{i}@example.com", items=items).pk)

    worker_args = ("--concurrency", "2", "--prefetch", "10")
    relay = Service("run_relay", log_dir=tmp_path).start()
    worker = Service("run_worker", *worker_args, log_dir=tmp_path).start()
    kills = 0
    try:
        while not all_terminal(ids) and kills < 6:
            time.sleep(rng.uniform(1.0, 2.5))
            if all_terminal(ids):
                break
            worker.kill()
            kills += 1
            worker = Service("run_worker", *worker_args, log_dir=tmp_path).start()
        finished = wait_until(lambda: all_terminal(ids), timeout=180)
    finally:
        codes = (worker.stop(), relay.stop())
    assert finished, f"seed {seed}: not every order is terminal\n" + worker.output()[-3000:]
    assert codes == (0, 0)

    redeliveries = OrderEvent.objects.filter(order_id__in=ids, kind=EventKind.REDELIVERED).count()
    completed = Order.objects.filter(pk__in=ids, status=OrderStatus.COMPLETED)
    failed = Order.objects.filter(pk__in=ids, status=OrderStatus.FAILED)
    per_order = Payment.objects.filter(order_id__in=ids).values("order_id").annotate(n=Count("id"))
    duplicate_payments = sum(row["n"] - 1 for row in per_order)
    duplicate_charges = gateway_charged_twice(ids)
    lost = len(ids) - Order.objects.filter(pk__in=ids, status__in=TERMINAL).count()
    print(
        f"\nchaos: seed={seed} orders={len(ids)} kills={kills} redeliveries={redeliveries} "
        f"completed={completed.count()} failed={failed.count()} "
        f"dead_lettered={Order.objects.filter(pk__in=ids, status=OrderStatus.DEAD_LETTERED).count()} "
        f"lost={lost} duplicate_payments={duplicate_payments} duplicate_gateway_charges={duplicate_charges}"
    )
    assert kills >= 3, f"seed {seed}: the orders finished before three kills; slow the steps down"
    assert lost == 0
    assert duplicate_payments == 0
    assert duplicate_charges == 0
    assert Payment.objects.filter(order__in=completed).count() == completed.count()
    assert not Payment.objects.filter(order__in=failed).exists()
    for product in products:
        sold = OrderLine.objects.filter(product=product, order__in=completed).aggregate(q=Sum("quantity"))["q"] or 0
        assert Product.objects.get(pk=product.pk).stock == 10_000 - sold, f"seed {seed}: stock of {product.sku}"


def test_sigterm_finishes_the_order_in_hand_acks_it_and_exits_0(tmp_path, broker):
    ProductFactory(sku="BOOK-001", stock=10)
    sandbox.sandbox_update(changes={"step_delay_ms": 400}, via="test")
    order = services.order_create(customer_email="term@example.com", items=[{"sku": "BOOK-001", "quantity": 1}])
    relay = Service("run_relay", log_dir=tmp_path).start()
    worker = Service("run_worker", log_dir=tmp_path).start()
    try:
        assert wait_until(lambda: Order.objects.get(pk=order.pk).status == OrderStatus.PROCESSING, 30)
        worker.signal(signal.SIGTERM)
        started = time.monotonic()
        code = worker.proc.wait(30)
        took = time.monotonic() - started
    finally:
        worker.stop()
        relay.stop()
    assert code == 0, worker.output()
    order.refresh_from_db()
    assert order.status == OrderStatus.COMPLETED, f"took {took:.1f}s\n" + worker.output()
    # Acked before exit: the queue does not hold it any more, so no other worker will see it again.
    ready = broker.channel.queue_declare(broker.topology.process_queue, passive=True).method.message_count
    assert ready == 0
    assert not OrderEvent.objects.filter(order=order, kind=EventKind.REDELIVERED).exists()


def test_a_message_that_crashes_every_worker_is_dead_lettered_by_the_delivery_limit(tmp_path, broker, settings):
    ProductFactory(sku="BOOK-001", stock=10)
    # Every delivery kills the worker in the middle of its first step (a crash loop on one message).
    sandbox.sandbox_update(changes={"crash_rate": 1.0}, via="test")
    order = services.order_create(customer_email="loop@example.com", items=[{"sku": "BOOK-001", "quantity": 1}])
    relay = Service("run_relay", log_dir=tmp_path).start()
    crashes = 0

    def ready(queue: str) -> int:
        return broker.channel.queue_declare(queue, passive=True).method.message_count

    try:
        assert wait_until(lambda: Order.objects.get(pk=order.pk).status != OrderStatus.PENDING, 20)
        parked = 0
        while crashes < settings.AMQP_DELIVERY_LIMIT + 3 and parked == 0:
            worker = Service("run_worker", "--prefetch", "1", log_dir=tmp_path).start()
            try:
                code = worker.proc.wait(60)
            except subprocess.TimeoutExpired:
                pytest.fail(f"the worker did not crash within 60 s:\n{worker.output()[-4000:]}")
            assert code == 70, worker.output()  # the sandbox's crash exit code
            crashes += 1
            # The broker moves the returned message either back to ready or, past the delivery limit, to the dead
            # letters, asynchronously (at-least-once dead-lettering): wait until it is in one of the two.
            assert wait_until(lambda: ready(broker.topology.process_queue) + ready(broker.topology.dead_queue) == 1, 10)
            parked = ready(broker.topology.dead_queue)
        assert parked == 1, f"not dead-lettered after {crashes} crashes"
        # With crashes switched off, a worker reads the broker's dead-letter copy and marks the order.
        sandbox.sandbox_update(changes={"crash_rate": 0.0}, via="test")
        worker = Service("run_worker", log_dir=tmp_path).start()
        assert wait_until(lambda: Order.objects.get(pk=order.pk).status == OrderStatus.DEAD_LETTERED, 30)
        order.refresh_from_db()
        assert order.failure_reason.startswith("delivery limit reached")
        assert not Payment.objects.filter(order=order).exists()
        assert Product.objects.get(sku="BOOK-001").stock == 10  # each crash rolled its step back
        assert worker.stop() == 0
    finally:
        relay.stop()
    print(f"\ncrash loop: {crashes} crashes before the quorum queue dead-lettered the message")


def test_relay_and_worker_sigkills_lose_nothing_and_process_nothing_twice(tmp_path, broker):
    """The relay is SIGKILLed at random moments and exactly between claim and publish ("claimed") and between the
    broker's confirms and the commit ("published", which publishes its batch twice), alongside worker SIGKILLs."""
    seed = int(os.environ.get("CHAOS_SEED", random.randrange(1_000_000)))
    rng = random.Random(seed)
    products = [ProductFactory(sku=f"RKILL-{i}", price=f"{5 + i}.00", stock=10_000) for i in range(3)]
    sandbox.sandbox_update(changes={"step_delay_ms": 25, "decline_rate": 0.05}, via="test")
    # Small batches, so a crashing relay dies with a batch in hand while later rows wait; a short sweeper age, so
    # the sweeper runs for real during the test (it should find nothing lost; what it re-sends is counted).
    relay_env = service_env(RELAY_BATCH_SIZE="10", ORDERPIPE_SWEEP_AFTER="10", ORDERPIPE_SWEEP_EVERY="2")
    worker_args = ("--concurrency", "2", "--prefetch", "10")
    ids: list = []

    def place_wave(size: int = 20) -> None:
        for _ in range(size):
            chosen = rng.sample(products, rng.randint(1, 2))
            items = [{"sku": p.sku, "quantity": rng.randint(1, 3)} for p in chosen]
            ids.append(services.order_create(customer_email=f"rkill{len(ids)}@example.com", items=items).pk)

    def settled() -> bool:
        # The fixture's connection sits idle for minutes here: service its heartbeats so the broker keeps it.
        broker.connection.process_data_events(time_limit=0)
        return all_terminal(ids)

    kills = {"worker": 0, "relay_random": 0, "relay_claimed": 0, "relay_published": 0}
    duplicates_published = 0
    relay = Service("run_relay", log_dir=tmp_path, env=relay_env).start()
    worker = Service("run_worker", *worker_args, log_dir=tmp_path).start()
    plan = ["worker", "claimed", "published"] * 3
    rng.shuffle(plan)
    try:
        for kind in plan:
            broker.connection.process_data_events(time_limit=0)
            if kind == "worker":
                wave_start = len(ids)
                place_wave()
                # Kill it mid-order: once it has started one of this wave (which step it is in is left to chance).
                started = Order.objects.filter(pk__in=ids[wave_start:], status=OrderStatus.PROCESSING)
                wait_until(started.exists, 30)
                time.sleep(rng.uniform(0.0, 0.3))
                worker.kill()
                kills["worker"] += 1
                worker = Service("run_worker", *worker_args, log_dir=tmp_path).start()
                continue
            # Kill the running relay wherever it is, then let a relay started with the crash point take the next
            # batch and SIGKILL itself exactly there; a normal relay takes over after it.
            relay.kill()
            kills["relay_random"] += 1
            place_wave()
            crashing = Service(
                "run_relay", log_dir=tmp_path, env={**relay_env, "ORDERPIPE_RELAY_CRASH_AT": kind}
            ).start()
            try:
                code = crashing.proc.wait(60)
            except subprocess.TimeoutExpired:
                pytest.fail(f"seed {seed}: the relay did not reach its crash point:\n{crashing.output()[-3000:]}")
            assert code == -signal.SIGKILL, crashing.output()[-3000:]
            found = re.search(r"crash point (\w+) reached with (\d+) row", crashing.output())
            assert found and found[1] == kind, crashing.output()[-3000:]
            kills[f"relay_{kind}"] += 1
            if kind == "published":
                duplicates_published += int(found[2])  # confirmed by the broker, never marked sent: sent again
            relay = Service("run_relay", log_dir=tmp_path, env=relay_env).start()
        finished = wait_until(settled, timeout=180)
    finally:
        codes = (worker.stop(), relay.stop())
    assert finished, f"seed {seed}: not every order is terminal\n" + worker.output()[-3000:]
    assert codes == (0, 0)

    events = OrderEvent.objects.filter(order_id__in=ids)
    # A step done twice for one order would show as a second event of its kind.
    processed_twice = sum(
        row["n"] - 1
        for row in events.filter(
            kind__in=[
                EventKind.INVENTORY_RESERVED,
                EventKind.PAYMENT_CHARGED,
                EventKind.CUSTOMER_NOTIFIED,
                EventKind.COMPLETED,
                EventKind.FAILED,
            ]
        )
        .values("order_id", "kind")
        .annotate(n=Count("id"))
        if row["n"] > 1
    )
    per_order = Payment.objects.filter(order_id__in=ids).values("order_id").annotate(n=Count("id"))
    duplicate_payments = sum(row["n"] - 1 for row in per_order)
    duplicate_charges = gateway_charged_twice(ids)
    lost = len(ids) - Order.objects.filter(pk__in=ids, status__in=TERMINAL).count()
    completed = Order.objects.filter(pk__in=ids, status=OrderStatus.COMPLETED)
    print(
        f"\nrelay chaos: seed={seed} orders={len(ids)} "
        + " ".join(f"kills_{name}={count}" for name, count in kills.items())
        + f" duplicates_published={duplicates_published}"
        f" duplicate_deliveries_ignored={events.filter(kind=EventKind.DUPLICATE_IGNORED).count()}"
        f" redeliveries={events.filter(kind=EventKind.REDELIVERED).count()}"
        f" resent_by_sweeper={events.filter(kind=EventKind.RESENT).count()}"
        f" completed={completed.count()}"
        f" failed={Order.objects.filter(pk__in=ids, status=OrderStatus.FAILED).count()}"
        f" duplicates_processed={processed_twice} duplicate_payments={duplicate_payments}"
        f" duplicate_gateway_charges={duplicate_charges} lost={lost}"
    )
    assert kills["relay_claimed"] == kills["relay_published"] == 3
    assert duplicates_published > 0  # each "published" crash had a confirmed batch in hand
    assert lost == 0
    assert processed_twice == 0
    assert duplicate_payments == 0
    assert duplicate_charges == 0
    assert Payment.objects.filter(order__in=completed).count() == completed.count()
    for product in products:
        sold = OrderLine.objects.filter(product=product, order__in=completed).aggregate(q=Sum("quantity"))["q"] or 0
        assert Product.objects.get(pk=product.pk).stock == 10_000 - sold, f"seed {seed}: stock of {product.sku}"
