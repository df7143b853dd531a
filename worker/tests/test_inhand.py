"""What a worker has in hand (worker/inhand.py): shared by the connection's thread and up to four step threads."""

from __future__ import annotations

import json
import sys
import threading
import uuid

import pytest

from worker.consumer import Worker
from worker.inhand import InHand, Snapshot
from worker.models import WorkerHeartbeat
from worker.processing import MESSAGE_VERSION, Delivery


def _delivery(order: str) -> Delivery:
    return Delivery(body=json.dumps({"version": MESSAGE_VERSION, "order_id": order}).encode())


class _StepsThatWait:
    """In place of the Processor: each order's steps run until the test lets them finish."""

    def __init__(self) -> None:
        self.started: dict[str, threading.Event] = {}
        self.finish: dict[str, threading.Event] = {}

    def expect(self, order: str) -> None:
        self.started[order], self.finish[order] = threading.Event(), threading.Event()

    def process(self, delivery: Delivery) -> None:
        order = json.loads(delivery.body)["order_id"]
        self.started[order].set()
        assert self.finish[order].wait(10)


@pytest.mark.django_db
def test_an_order_finishing_on_one_step_thread_leaves_the_other_threads_order_current():
    worker = Worker(concurrency=2, name=f"test-in-hand-{uuid.uuid4().hex[:6]}")
    steps = worker.processor = _StepsThatWait()  # type: ignore[assignment]
    first, second = str(uuid.uuid4()), str(uuid.uuid4())
    threads = []
    try:
        for order in (first, second):
            steps.expect(order)
            threads.append(threading.Thread(target=worker._process, args=(_delivery(order),)))
            threads[-1].start()
            assert steps.started[order].wait(10)

        steps.finish[second].set()
        threads[1].join(10)
        worker._write_heartbeat()
        assert str(WorkerHeartbeat.objects.get(pk=worker.name).current_order) == first

        steps.finish[first].set()
        threads[0].join(10)
        worker._write_heartbeat()
        assert WorkerHeartbeat.objects.get(pk=worker.name).current_order is None
    finally:
        for finish in steps.finish.values():
            finish.set()
        worker._write_heartbeat(final=True)


@pytest.mark.pure
def test_many_threads_holding_working_and_reading_at_once_see_one_consistent_picture():
    """Eight step threads take, work on and release deliveries while a reader takes snapshots, switching threads as
    often as the interpreter allows. Each thread checks that its own order is in every snapshot while it holds it,
    and that some order is current while it works."""
    in_hand = InHand()
    rounds, threads = 2000, 8
    errors: list[str] = []
    done = threading.Event()

    def step_thread(number: int) -> None:
        for round_ in range(rounds):
            key, order = (number, round_), f"order-{number}-{round_}"
            in_hand.hold(key, order)
            in_hand.begin(order)
            seen = in_hand.snapshot()
            if order not in seen.holding or seen.current_order is None:
                errors.append(f"{order}: {seen}")
            in_hand.end()
            in_hand.release(key)

    def reader() -> None:
        while not done.is_set():
            seen = in_hand.snapshot()
            if len(seen.holding) > seen.unacked or seen.unacked > threads:
                errors.append(f"reader: {seen}")

    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    try:
        reading = threading.Thread(target=reader)
        reading.start()
        workers = [threading.Thread(target=step_thread, args=(number,)) for number in range(threads)]
        for thread in workers:
            thread.start()
        for thread in workers:
            thread.join(60)
        done.set()
        reading.join(10)
    finally:
        sys.setswitchinterval(interval)

    assert errors == []
    assert in_hand.snapshot() == Snapshot(current_order=None, holding=[], unacked=0)
    assert len(in_hand) == 0
