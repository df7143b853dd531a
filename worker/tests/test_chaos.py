"""Crash safety with real processes: SIGKILL the worker at random moments, SIGTERM it mid-order."""

from __future__ import annotations

import os
import random
import re
import signal
import subprocess
import time

import pytest

from orders import sandbox, services
from orders.models import EventKind, Order, OrderEvent, OrderStatus, Payment, Product
from orders.tests.factories import ProductFactory
from worker.models import WorkerHeartbeat
from worker.tests.guarantees import (
    TERMINAL,
    all_terminal,
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

# The kill tests prove the first line of defence: a killed worker's unacked messages come back from the broker. The
# sweeper (the second line, run by the relay) is switched off in them, so an order the kill really lost stays lost
# and fails the test instead of being re-sent after a minute; test_the_sweeper_resends_what_a_kill_really_lost
# proves the second line on its own.
NO_SWEEPER = {"ORDERPIPE_SWEEP_AFTER": "0"}


def holds_deliveries(worker: Service) -> bool:
    """The worker's heartbeat lists orders whose deliveries it holds unsettled."""
    assert worker.proc is not None
    return WorkerHeartbeat.objects.filter(pid=worker.proc.pid).exclude(holding=[]).exists()


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
    relay = Service("run_relay", log_dir=tmp_path, env=service_env(**NO_SWEEPER)).start()
    worker = Service("run_worker", *worker_args, log_dir=tmp_path).start()
    kills = 0
    try:
        while not all_terminal(ids) and kills < 6:
            broker.connection.process_data_events(time_limit=0)  # the fixture's idle connection keeps its heartbeats
            # Kill it mid-order: once its heartbeat says it holds deliveries (its steps are left to chance).
            if not wait_until(lambda w=worker: holds_deliveries(w) or all_terminal(ids), 60) or all_terminal(ids):
                break
            time.sleep(rng.uniform(0.0, 1.0))  # a random moment of its work: no event to wait for, on purpose
            worker.kill()
            kills += 1
            worker = Service("run_worker", *worker_args, log_dir=tmp_path).start()
        finished = wait_until_settled(ids, tick=lambda: broker.connection.process_data_events(time_limit=0))
    finally:
        codes = (worker.stop(), relay.stop())
    redeliveries = OrderEvent.objects.filter(order_id__in=ids, kind=EventKind.REDELIVERED).count()
    completed = Order.objects.filter(pk__in=ids, status=OrderStatus.COMPLETED)
    failed = Order.objects.filter(pk__in=ids, status=OrderStatus.FAILED)
    print(
        f"\nchaos: seed={seed} orders={len(ids)} kills={kills} redeliveries={redeliveries} "
        f"completed={completed.count()} failed={failed.count()} "
        f"dead_lettered={Order.objects.filter(pk__in=ids, status=OrderStatus.DEAD_LETTERED).count()} "
        f"lost={lost(ids)} resent_by_sweeper={resent_by_sweeper(ids)} duplicate_payments={payments_twice(ids)} "
        f"duplicate_gateway_charges={gateway_charged_twice(ids)}"
    )
    assert finished, f"seed {seed}: {lost(ids)} orders lost (not terminal, no progress)\n" + worker.output()[-3000:]
    assert codes == (0, 0)
    assert kills >= 3, f"seed {seed}: the orders finished before three kills; slow the steps down"
    assert redeliveries > 0
    assert resent_by_sweeper(ids) == 0
    assert payments_twice(ids) == 0
    assert gateway_charged_twice(ids) == 0
    assert Payment.objects.filter(order__in=completed).count() == completed.count()
    assert not Payment.objects.filter(order__in=failed).exists()
    assert stock_errors(ids, products, 10_000) == [], f"seed {seed}"


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
    # Small batches, so a crashing relay dies with a batch in hand while later rows wait.
    relay_env = service_env(RELAY_BATCH_SIZE="10", **NO_SWEEPER)
    worker_args = ("--concurrency", "2", "--prefetch", "10")
    ids: list = []

    def place_wave(size: int = 20) -> None:
        for _ in range(size):
            chosen = rng.sample(products, rng.randint(1, 2))
            items = [{"sku": p.sku, "quantity": rng.randint(1, 3)} for p in chosen]
            ids.append(services.order_create(customer_email=f"rkill{len(ids)}@example.com", items=items).pk)

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
                time.sleep(rng.uniform(0.0, 0.3))  # a random moment of its work, on purpose
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
        # The fixture's connection sits idle for minutes here: service its heartbeats so the broker keeps it.
        finished = wait_until_settled(ids, tick=lambda: broker.connection.process_data_events(time_limit=0))
    finally:
        codes = (worker.stop(), relay.stop())
    events = OrderEvent.objects.filter(order_id__in=ids)
    completed = Order.objects.filter(pk__in=ids, status=OrderStatus.COMPLETED)
    print(
        f"\nrelay chaos: seed={seed} orders={len(ids)} "
        + " ".join(f"kills_{name}={count}" for name, count in kills.items())
        + f" duplicates_published={duplicates_published}"
        f" duplicate_deliveries_ignored={events.filter(kind=EventKind.DUPLICATE_IGNORED).count()}"
        f" redeliveries={events.filter(kind=EventKind.REDELIVERED).count()}"
        f" resent_by_sweeper={resent_by_sweeper(ids)}"
        f" completed={completed.count()}"
        f" failed={Order.objects.filter(pk__in=ids, status=OrderStatus.FAILED).count()}"
        f" duplicates_processed={processed_twice(ids)} duplicate_payments={payments_twice(ids)}"
        f" duplicate_gateway_charges={gateway_charged_twice(ids)} lost={lost(ids)}"
    )
    assert finished, f"seed {seed}: {lost(ids)} orders lost (not terminal, no progress)\n" + worker.output()[-3000:]
    assert codes == (0, 0)
    assert kills["relay_claimed"] == kills["relay_published"] == 3
    assert duplicates_published > 0  # each "published" crash had a confirmed batch in hand
    assert events.filter(kind=EventKind.REDELIVERED).exists()
    assert resent_by_sweeper(ids) == 0
    assert processed_twice(ids) == 0
    assert payments_twice(ids) == 0
    assert gateway_charged_twice(ids) == 0
    assert Payment.objects.filter(order__in=completed).count() == completed.count()
    assert stock_errors(ids, products, 10_000) == [], f"seed {seed}"


def test_the_sweeper_resends_what_a_kill_really_lost(tmp_path, broker):
    """The second line of defence on its own: a worker in the sandbox's unsafe ack_mode=on_receive has acked every
    message it holds when it is SIGKILLed, so no queue has them any more. The sweeper (in the relay) finds exactly
    those orders and re-sends them; each is then processed once."""
    product = ProductFactory(sku="SWEEP-1", price="7.00", stock=1_000)
    sandbox.sandbox_update(changes={"ack_mode": "on_receive", "step_delay_ms": 1000}, via="test")
    ids = [
        services.order_create(customer_email=f"sweep{n}@example.com", items=[{"sku": "SWEEP-1", "quantity": 2}]).pk
        for n in range(6)
    ]
    relay_env = service_env(ORDERPIPE_SWEEP_AFTER="2", ORDERPIPE_SWEEP_EVERY="0.5")
    # The relay publishes them with the sweeper off; the one that sweeps is started after the kill.
    publisher = Service("run_relay", log_dir=tmp_path, env=service_env(**NO_SWEEPER)).start()
    worker = Service("run_worker", "--prefetch", "20", "--concurrency", "1", log_dir=tmp_path).start()
    relay = None
    try:

        def holds_them_all() -> bool:
            return any(
                len(held or []) == len(ids) for held in WorkerHeartbeat.objects.values_list("holding", flat=True)
            )

        # It holds every message (acked on receipt) and works slowly through the first.
        assert wait_until(holds_them_all, 60), worker.output()[-3000:]
        worker.kill()
        assert publisher.stop() == 0
        ready = broker.channel.queue_declare(broker.topology.process_queue, passive=True).method.message_count
        assert ready == 0  # nothing comes back from the broker: the kill lost them all
        lost_ids = set(Order.objects.filter(pk__in=ids).exclude(status__in=TERMINAL).values_list("pk", flat=True))
        assert len(lost_ids) >= len(ids) - 1  # the first may have finished before the kill

        sandbox.sandbox_update(changes={"ack_mode": "after_commit", "step_delay_ms": 0}, via="test")
        relay = Service("run_relay", log_dir=tmp_path, env=relay_env).start()
        worker = Service("run_worker", log_dir=tmp_path).start()
        # The dead worker's heartbeat vouches for its orders until it goes silent (worker/sweeper.py LIVE_WORKER).
        finished = wait_until_settled(ids, idle=30, timeout=90)
    finally:
        codes = (worker.stop(), relay.stop() if relay else 0)
    assert finished, relay.output()[-3000:] if relay else ""
    assert codes == (0, 0)
    resent = OrderEvent.objects.filter(order_id__in=ids, kind=EventKind.RESENT)
    assert sorted(resent.values_list("order_id", flat=True)) == sorted(lost_ids)  # each lost order re-sent once
    assert Order.objects.filter(pk__in=ids, status=OrderStatus.COMPLETED).count() == len(ids)
    assert processed_twice(ids) == 0
    assert payments_twice(ids) == 0
    assert gateway_charged_twice(ids) == 0
    assert stock_errors(ids, [product], 1_000) == []
