"""The WebSocket consumers through the real ASGI stack (origin check, sessions), the real channel layer (Redis) and
the real producer task. Each test runs its own event loop and stops the producer before that loop closes."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

import pytest
from asgiref.sync import async_to_sync, sync_to_async
from channels.layers import get_channel_layer
from channels.testing import WebsocketCommunicator
from channels_redis.core import RedisChannelLayer
from django.db import transaction
from django.test import Client
from redis.exceptions import ConnectionError as RedisConnectionError

from orderpipe.asgi import application
from orderpipe.dashboard import sockets
from orderpipe.dashboard.broadcaster import broadcaster
from orderpipe.dashboard.consumers import (
    CLOSE_BAD_FRAME,
    CLOSE_FORBIDDEN,
    CLOSE_NOT_FOUND,
    CLOSE_TOO_MANY,
    CLOSE_UNAVAILABLE,
)
from orders import services
from orders.models import EventKind, Order, OrderStatus
from orders.tests.factories import StaffFactory, UserFactory

# Each test takes seconds; one still running after two minutes fails with every thread's stack (pyproject.toml).
pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.timeout(120)]

ORIGIN = b"http://127.0.0.1:8000"


def session_cookie(*, staff: bool) -> bytes:
    client = Client()
    client.force_login(StaffFactory() if staff else UserFactory())
    return f"sessionid={client.cookies['sessionid'].value}".encode()


def communicator(path: str, *, cookie: bytes | None = None, origin: bytes = ORIGIN) -> WebsocketCommunicator:
    headers = [(b"origin", origin), (b"host", b"127.0.0.1:8000")]
    if cookie:
        headers.append((b"cookie", cookie))
    return WebsocketCommunicator(application, path, headers=headers)


def run(body: Callable[[], Awaitable[None]], *, timeout: float = 60.0) -> None:
    """Run an async test body in its own loop and always stop the producer it started. A body still waiting after
    `timeout` seconds fails with the stack of what it waits on."""

    async def wrapped() -> None:
        try:
            async with asyncio.timeout(timeout):
                await body()
        finally:
            async with asyncio.timeout(10):
                await broadcaster.stop()

    async_to_sync(wrapped)()


def place_order(product) -> Order:
    return services.order_create(customer_email="ws@example.com", items=[{"sku": product.sku, "quantity": 1}])


def publish(order_id) -> None:
    """What the relay does once the broker confirmed: pending -> queued, with a `published` event."""
    with transaction.atomic():
        order = Order.objects.select_for_update().get(pk=order_id)
        services.transition_order(
            order,
            to=OrderStatus.QUEUED,
            kind=EventKind.PUBLISHED,
            message="Published (test).",
            queue={"exchange": "x", "routing_key": "order.placed"},
        )


async def receive_until(ws: WebsocketCommunicator, predicate, *, timeout: float = 10.0) -> list[dict]:
    """Messages received until one satisfies `predicate` (that one included)."""
    received = []
    async with asyncio.timeout(timeout):
        while True:
            message = await ws.receive_json_from(timeout=timeout)
            received.append(message)
            if predicate(message):
                return received


def test_it_sends_the_pipeline_snapshot_on_connect(product):
    cookie = session_cookie(staff=True)
    place_order(product)

    async def body() -> None:
        ws = communicator("/ws/pipeline/", cookie=cookie)
        connected, _ = await ws.connect()
        assert connected
        snapshot = await ws.receive_json_from(timeout=5)
        assert snapshot["type"] == "snapshot"
        assert snapshot["state"]["pipeline"]["orders"]["by_status"]["pending"] == 1
        assert snapshot["state"]["latest_orders"][0]["status"] == "pending"
        assert [e["kind"] for e in snapshot["events"]] == ["accepted"]
        assert snapshot["rates"][-1][1:] == [1, 0]  # one accepted, none completed, in the last second
        await ws.disconnect()

    run(body)


def test_it_pushes_new_events_to_the_dashboard_and_the_journey(product):
    cookie = session_cookie(staff=True)
    order = place_order(product)

    async def body() -> None:
        dashboard = communicator("/ws/pipeline/", cookie=cookie)
        journey = communicator(f"/ws/orders/{order.pk}/", cookie=cookie)
        assert (await dashboard.connect())[0]
        assert (await journey.connect())[0]
        assert (await dashboard.receive_json_from(timeout=5))["type"] == "snapshot"
        first = await journey.receive_json_from(timeout=5)
        assert first["type"] == "snapshot"
        assert first["order"]["status"] == "pending"
        assert [e["kind"] for e in first["events"]] == ["accepted"]
        assert set(first["events"][0]["snapshot"]) == {"db", "queue", "cache"}

        await sync_to_async(publish, thread_sensitive=False)(order.pk)

        update = (await receive_until(journey, lambda m: m["type"] == "events"))[-1]
        assert [(e["seq"], e["kind"]) for e in update["events"]] == [(2, "published")]
        assert update["events"][0]["snapshot"]["db"]["status"] == "queued"
        assert update["events"][0]["snapshot"]["queue"]["routing_key"] == "order.placed"
        pushed = await receive_until(
            dashboard, lambda m: m["type"] == "update" and any(e["kind"] == "published" for e in m["events"])
        )
        event = next(e for e in pushed[-1]["events"] if e["kind"] == "published")
        assert (event["order_id"], event["status"]) == (str(order.pk), "queued")
        await dashboard.disconnect()
        await journey.disconnect()

    run(body)


def test_it_batches_a_burst_into_a_few_messages(product):
    """300 orders committed at once reach a tab as a handful of batched messages, not 300."""
    cookie = session_cookie(staff=True)

    async def body() -> None:
        ws = communicator("/ws/pipeline/", cookie=cookie)
        assert (await ws.connect())[0]
        await ws.receive_json_from(timeout=5)

        def burst() -> None:
            with transaction.atomic():
                for _ in range(300):
                    place_order(product)

        await sync_to_async(burst, thread_sensitive=False)()
        seen = 0

        def all_seen(message: dict) -> bool:
            nonlocal seen
            seen += message.get("event_count", 0)
            return seen >= 300

        messages = await receive_until(ws, all_seen, timeout=20)
        assert seen == 300
        assert len(messages) <= 5
        assert all(len(m["events"]) <= 40 for m in messages)  # the feed part stays small, whatever the burst
        await ws.disconnect()

    run(body)


def test_it_rejects_a_foreign_origin():
    cookie = session_cookie(staff=True)

    async def body() -> None:
        ws = communicator("/ws/pipeline/", cookie=cookie, origin=b"http://evil.example.com")
        connected, _ = await ws.connect()
        assert not connected

    run(body)


def test_it_refuses_anonymous_watchers_outside_debug():
    async def body() -> None:
        ws = communicator("/ws/pipeline/")
        # Accepted, then closed: a close before accepting would reach the browser as a bare HTTP 403.
        assert (await ws.connect())[0]
        assert await ws.receive_output(timeout=5) == {"type": "websocket.close", "code": CLOSE_FORBIDDEN}

    run(body)


def test_it_refuses_logged_in_customers_outside_debug():
    """The pages show every order's email: outside DEBUG a login that is not staff sees none of it."""
    cookie = session_cookie(staff=False)

    async def body() -> None:
        ws = communicator("/ws/pipeline/", cookie=cookie)
        assert (await ws.connect())[0]
        assert await ws.receive_output(timeout=5) == {"type": "websocket.close", "code": CLOSE_FORBIDDEN}

    run(body)


def test_it_refuses_control_attempts_from_non_staff_and_closes(settings, product):
    settings.DEBUG = True  # anonymous may watch in DEBUG, but never steer
    order = place_order(product)

    async def body() -> None:
        ws = communicator(f"/ws/orders/{order.pk}/")
        assert (await ws.connect())[0]
        await ws.receive_json_from(timeout=5)
        await ws.send_json_to({"action": "next_step", "order_id": str(order.pk)})
        refused = await ws.receive_json_from(timeout=5)
        assert refused == {"type": "refused", "reason": "controls need a staff login"}
        assert (await ws.receive_output(timeout=5)) == {"type": "websocket.close", "code": CLOSE_FORBIDDEN}

    run(body)


async def receive_skipping_updates(ws) -> dict:
    """The next reply to what the test sent; the producer's periodic pushes may arrive in between."""
    while True:
        message = await ws.receive_json_from(timeout=5)
        if message["type"] != "update":
            return message


def test_staff_control_messages_are_pointed_to_the_http_endpoints(product):
    cookie = session_cookie(staff=True)

    async def body() -> None:
        ws = communicator("/ws/pipeline/", cookie=cookie)
        assert (await ws.connect())[0]
        await ws.receive_json_from(timeout=5)
        await ws.send_json_to({"action": "flush_cache"})
        reply = await receive_skipping_updates(ws)
        assert reply["type"] == "refused"
        assert "HTTP" in reply["reason"]
        await ws.send_json_to({"action": "resync"})
        assert (await receive_skipping_updates(ws))["type"] == "snapshot"
        await ws.disconnect()

    run(body)


def test_it_closes_the_journey_socket_of_an_unknown_order():
    cookie = session_cookie(staff=True)

    async def body() -> None:
        ws = communicator("/ws/orders/00000000-0000-0000-0000-000000000000/", cookie=cookie)
        assert (await ws.connect())[0]
        assert await ws.receive_output(timeout=5) == {"type": "websocket.close", "code": CLOSE_NOT_FOUND}

    run(body)


# ---------------------------------------------------------------- limits (issue 9)


@pytest.mark.parametrize(
    ("frame", "what"),
    [
        ({"text_data": "not json {"}, "not JSON"),
        ({"text_data": "[" * 3000 + "]" * 3000}, "frame of 6000 characters"),
        ({"text_data": "[" * 2000}, "not JSON"),  # deeper than the parser's recursion limit
        ({"text_data": '["resync"]'}, "not an object with an action"),
        ({"text_data": '{"action": 1}'}, "not an object with an action"),
        ({"bytes_data": b"\x00\x01"}, "binary frame"),
    ],
)
def test_a_malformed_frame_closes_the_socket_with_4400_and_one_log_line(frame, what, caplog):
    cookie = session_cookie(staff=True)

    async def body() -> None:
        ws = communicator("/ws/pipeline/", cookie=cookie)
        assert (await ws.connect())[0]
        assert (await ws.receive_json_from(timeout=5))["type"] == "snapshot"
        await ws.send_to(**frame)
        while (message := await ws.receive_output(timeout=5))["type"] != "websocket.close":
            assert message["type"] == "websocket.send"  # a producer push may come first
        assert message == {"type": "websocket.close", "code": CLOSE_BAD_FRAME}
        await ws.wait(timeout=5)  # the consumer ended normally (an exception would be raised here)

    with caplog.at_level(logging.WARNING, logger="orderpipe.dashboard.consumers"):
        run(body)
    lines = [r.getMessage() for r in caplog.records if r.name == "orderpipe.dashboard.consumers"]
    assert len(lines) == 1 and lines[0].endswith(what), lines
    assert not any(r.exc_info for r in caplog.records)


def test_resync_is_served_once_per_interval(settings):
    settings.WS_RESYNC_INTERVAL = 60
    cookie = session_cookie(staff=True)

    async def body() -> None:
        ws = communicator("/ws/pipeline/", cookie=cookie)
        assert (await ws.connect())[0]
        await ws.receive_json_from(timeout=5)
        await ws.send_json_to({"action": "resync"})
        assert (await receive_skipping_updates(ws))["type"] == "snapshot"
        await ws.send_json_to({"action": "resync"})
        refused = await receive_skipping_updates(ws)
        assert (refused["type"], refused["reason"]) == ("refused", "resync is rate-limited")
        assert 0 < refused["retry_after"] <= 60
        await ws.disconnect()

    run(body)


def test_a_client_past_its_cap_is_closed_with_4429_until_one_of_its_sockets_closes(settings):
    settings.WS_MAX_CONNECTIONS_PER_CLIENT = 2
    cookie = session_cookie(staff=True)
    other = session_cookie(staff=True)

    async def body() -> None:
        first, second = communicator("/ws/pipeline/", cookie=cookie), communicator("/ws/pipeline/", cookie=cookie)
        for ws in (first, second):
            assert (await ws.connect())[0]
            await ws.receive_json_from(timeout=5)
        third = communicator("/ws/pipeline/", cookie=cookie)
        # Accepted, then closed: a close before accepting would reach the browser as a bare HTTP 403.
        assert (await third.connect())[0]
        assert await third.receive_output(timeout=5) == {"type": "websocket.close", "code": CLOSE_TOO_MANY}
        # The cap is per client: another user still gets in.
        elsewhere = communicator("/ws/pipeline/", cookie=other)
        assert (await elsewhere.connect())[0]
        assert (await elsewhere.receive_json_from(timeout=5))["type"] == "snapshot"
        await elsewhere.disconnect()
        # A closed socket gives its slot back.
        await first.disconnect()
        fourth = communicator("/ws/pipeline/", cookie=cookie)
        assert (await fourth.connect())[0]
        assert (await fourth.receive_json_from(timeout=5))["type"] == "snapshot"
        await fourth.disconnect()
        await second.disconnect()

    run(body)


def test_a_crashed_servers_slots_lapse(settings):
    """A daphne killed with sockets open never releases their slots; they stop counting after WS_SLOT_TTL."""

    async def body() -> None:
        redis = get_channel_layer().redis()
        assert await sockets.acquire(redis, "user:crashed", "a", cap=1, ttl_seconds=0.3)
        assert not await sockets.acquire(redis, "user:crashed", "b", cap=1, ttl_seconds=0.3)
        async with asyncio.timeout(10):
            while not await sockets.acquire(redis, "user:crashed", "b", cap=1, ttl_seconds=60):
                await asyncio.sleep(0.05)  # the poll's interval, until the first slot's TTL has run out
        assert await sockets.held(redis, "user:crashed") == 1
        # ...while a refreshed slot keeps counting.
        assert await sockets.refresh(redis, "user:crashed", "b", ttl_seconds=60)
        assert not await sockets.acquire(redis, "user:crashed", "c", cap=1, ttl_seconds=60)

    run(body)


def test_an_exhausted_channel_layer_pool_closes_the_handshake_with_4503(settings, caplog):
    """The layer's pool holds two connections and something else has both: the handshake waits pool_timeout, then
    is closed with 4503 and one log line (it used to be an HTTP 500 with a traceback). Once they are back, sockets
    open again (the layer's receive, which waited meanwhile, takes one of the two)."""
    config = settings.CHANNEL_LAYERS["default"]
    settings.CHANNEL_LAYERS = {
        "default": {**config, "CONFIG": {**config["CONFIG"], "pool_size": 2, "pool_timeout": 0.2}}
    }
    cookie = session_cookie(staff=True)

    async def body() -> None:
        pool = get_channel_layer().redis().connection_pool
        held = [await pool.get_connection(), await pool.get_connection()]
        try:
            ws = communicator("/ws/pipeline/", cookie=cookie)
            assert (await ws.connect())[0]
            assert await ws.receive_output(timeout=5) == {"type": "websocket.close", "code": CLOSE_UNAVAILABLE}
            await ws.wait(timeout=5)
        finally:
            for connection in held:
                await pool.release(connection)
        ws = communicator("/ws/pipeline/", cookie=cookie)
        assert (await ws.connect())[0]
        assert (await ws.receive_json_from(timeout=5))["type"] == "snapshot"
        await ws.disconnect()

    with caplog.at_level(logging.WARNING, logger="orderpipe.dashboard.consumers"):
        run(body)
    closes = [
        r.getMessage()
        for r in caplog.records
        if r.name == "orderpipe.dashboard.consumers" and "closed" in r.getMessage()
    ]
    assert len(closes) == 1 and "closed 4503" in closes[0] and "No connection available" in closes[0], closes
    assert not any(r.exc_info for r in caplog.records)


def test_the_layers_socket_timeout_outlasts_its_blocking_receive():
    """redis-py's default socket timeout (5 s) equals channels-redis's BZPOPMIN wait (5 s): an idle socket's receive
    could time out reading the answer to its own wait and end the consumer with 1011 and a traceback."""

    async def body() -> None:
        layer = get_channel_layer()
        assert layer.redis().connection_pool.connection_kwargs["socket_timeout"] > layer.brpop_timeout

    run(body)


def test_a_cancel_reported_as_a_connection_error_ends_the_layers_receive(monkeypatch):
    """The layer's receive retries while Redis is unavailable, but a cancel must end it even when it surfaces as a
    connection error (here the library turns the delivered cancel into one, as redis-py's pool can when its timeout
    races a cancel):
    a receive that swallowed it would keep its consumer running forever."""
    layer = get_channel_layer()
    attempts = 0

    async def unavailable(self, channel):
        nonlocal attempts
        attempts += 1
        asyncio.current_task().cancel()
        try:
            await asyncio.sleep(1)
        except asyncio.CancelledError:  # the cancel is delivered, and comes out as a connection error
            raise RedisConnectionError("No connection available.") from None

    monkeypatch.setattr(RedisChannelLayer, "receive", unavailable)

    async def body() -> None:
        task = asyncio.ensure_future(layer.receive(await layer.new_channel()))
        done, _ = await asyncio.wait([task], timeout=5)
        assert done and task.cancelled()

    run(body)
    assert attempts == 1
