"""The channel layer: channels-redis's, with a connection pool that is sized and waits instead of failing.

channels-redis builds a plain redis-py pool of 100 connections that raises `MaxConnectionsError` the moment all are
in use. Every handshake borrows one (group_add, and here the per-client socket count), so 200 handshakes at once
failed half of them with an HTTP 500 and a traceback each. A BlockingConnectionPool of the same size makes a
handshake wait up to `pool_timeout` seconds for a connection; past that it raises ConnectionError, which the
consumer answers with close code 4503 (orderpipe/dashboard/consumers.py).
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from channels_redis.core import RedisChannelLayer
from redis import asyncio as aioredis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

log = logging.getLogger(__name__)

# How long a receive waits before trying Redis again, and how often the failure is logged (once per process per
# interval: with hundreds of sockets, one line each would bury the cause).
RECEIVE_RETRY_SECONDS = 0.5
RECEIVE_WARNING_INTERVAL = 10.0


class PooledRedisChannelLayer(RedisChannelLayer):
    def __init__(self, *, pool_size: int = 100, pool_timeout: float = 2.0, **config: Any) -> None:
        super().__init__(**config)
        self.pool_size = pool_size
        self.pool_timeout = pool_timeout
        self._last_receive_warning = float("-inf")

    def create_pool(self, index: int) -> aioredis.BlockingConnectionPool:
        host = dict(self.hosts[index])
        address = host.pop("address")
        # redis-py's default socket timeout (5 s) equals channels-redis's BZPOPMIN timeout (brpop_timeout, 5 s), so an
        # idle socket's receive could time out reading the reply to its own 5 s wait and crash the consumer (1011).
        host.setdefault("socket_timeout", self.brpop_timeout + 5)
        return aioredis.BlockingConnectionPool.from_url(
            address, max_connections=self.pool_size, timeout=self.pool_timeout, **host
        )

    def redis(self) -> aioredis.Redis:
        """A client on this event loop's pool (the same bounded pool the layer itself uses)."""
        return self.connection(0)

    async def receive(self, channel: str) -> dict[str, Any]:
        """channels-redis's receive, which waits for Redis instead of raising. Each consumer runs one receive for as
        long as its socket is open, and an exception there ends the consumer with a traceback (close 1011): with
        the pool busy (a burst of handshakes) or Redis restarting, waiting is the right answer. The message, if
        any, stays in Redis until a receive gets it."""
        while True:
            try:
                return await super().receive(channel)
            except (RedisConnectionError, RedisTimeoutError) as exc:
                if being_cancelled():  # a cancel that reached us as a connection error still ends the receive
                    raise asyncio.CancelledError from exc
                now = time.monotonic()
                if now - self._last_receive_warning >= RECEIVE_WARNING_INTERVAL:
                    self._last_receive_warning = now
                    log.warning("channel layer receive waits for Redis: %s", exc)
                await asyncio.sleep(RECEIVE_RETRY_SECONDS)


def being_cancelled() -> bool:
    """Whether this task has a cancel request pending (redis-py can report one, raced with its pool's timeout, as
    "No connection available"): a retry loop that caught that error must end instead of waiting again, or the
    consumer it serves could never finish."""
    task = asyncio.current_task()
    return task is not None and task.cancelling() > 0
