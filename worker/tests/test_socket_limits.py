"""Many WebSocket handshakes at once against a real daphne (issue 9: 200 of them exhausted the channel layer's Redis
pool and half got an HTTP 500 with a traceback each). Every handshake now ends in a snapshot or a close code the
page understands, and one client past its cap gets 4429."""

from __future__ import annotations

import asyncio
import collections
from pathlib import Path

import pytest
import websockets
from django.test import Client
from django_redis import get_redis_connection

from orders import cache
from orders.tests.factories import StaffFactory
from worker.tests.processes import Web, service_env, wait_until

pytestmark = pytest.mark.django_db(transaction=True)

HANDSHAKES = 200


class PatientDaphne(Web):
    """daphne drops a handshake the application has not answered within 5 s (--websocket_connect_timeout). On a
    loaded test machine 200 session lookups can take longer than that; the limits under test are the app's own."""

    def argv(self) -> list[str]:
        return [*super().argv()[:-1], "--websocket_connect_timeout", "120", "orderpipe.asgi:application"]


def logged_in_cookie() -> tuple[str, int]:
    user = StaffFactory(username="watcher", password="x")
    client = Client()
    client.force_login(user)
    return f"sessionid={client.cookies['sessionid'].value}", user.pk


async def handshake(url: str, cookie: str, outcomes: collections.Counter, held: list) -> None:
    headers = {"Origin": "http://127.0.0.1:8000", "Cookie": cookie}
    try:
        ws = await websockets.connect(url, additional_headers=headers, open_timeout=120)
    except websockets.InvalidStatus as exc:
        outcomes[f"http {exc.response.status_code}"] += 1
        return
    except (OSError, TimeoutError, websockets.WebSocketException) as exc:
        outcomes[f"error {type(exc).__name__}: {exc.__cause__!r}"] += 1
        return
    try:
        first = await asyncio.wait_for(ws.recv(), timeout=120)
        outcomes["snapshot" if '"snapshot"' in first else "other message"] += 1
        held.append(ws)
    except websockets.ConnectionClosed as exc:
        outcomes[f"closed {exc.rcvd.code if exc.rcvd else 'without code'}"] += 1
    except TimeoutError:
        outcomes["no message"] += 1


async def storm(url: str, cookie: str, n: int) -> collections.Counter:
    """n handshakes at once; the accepted sockets stay open until all n are settled, then close."""
    outcomes: collections.Counter = collections.Counter()
    held: list = []
    await asyncio.gather(*(handshake(url, cookie, outcomes, held) for _ in range(n)))
    for ws in held:
        await ws.close()
    return outcomes


def run_storm(tmp_path: Path, **env: str) -> tuple[collections.Counter, str, int]:
    cookie, user_pk = logged_in_cookie()
    web = PatientDaphne(log_dir=tmp_path, env=service_env(**env)).start().wait_ready()
    try:
        outcomes = asyncio.run(storm(f"ws://127.0.0.1:{web.port}/ws/pipeline/", cookie, HANDSHAKES))

        # Closed sockets give their slots back (polled: the server handles each close on its own schedule).
        def slots() -> int:
            return get_redis_connection("default").zcard(cache.live_socket_slots_key(f"user:{user_pk}"))

        assert wait_until(lambda: slots() == 0, timeout=60), slots()
    finally:
        web.stop()
    print(dict(outcomes))
    return outcomes, web.output(), user_pk


def test_200_concurrent_handshakes_get_a_snapshot_or_a_close_code(tmp_path):
    outcomes, log, _ = run_storm(tmp_path, WS_MAX_CONNECTIONS_PER_CLIENT="1000")
    assert sum(outcomes.values()) == HANDSHAKES
    # The pool (100 connections) makes handshakes wait for a connection instead of failing; one that waits longer
    # than CHANNEL_LAYER_POOL_TIMEOUT is closed with 4503, never answered with a 500.
    assert set(outcomes) <= {"snapshot", "closed 4503"}, dict(outcomes)
    assert outcomes["snapshot"] > 0
    assert "Traceback" not in log


def test_a_client_past_its_cap_is_closed_with_4429(tmp_path):
    outcomes, log, user_pk = run_storm(tmp_path, WS_MAX_CONNECTIONS_PER_CLIENT="5")
    assert outcomes == {"snapshot": 5, "closed 4429": HANDSHAKES - 5}, dict(outcomes)
    assert log.count(f"closed 4429 for user:{user_pk}: over 5 open sockets") == HANDSHAKES - 5
    assert "Traceback" not in log
