"""How many live sockets one client holds, counted in Redis across every daphne process.

Each open socket holds a slot: a member of a sorted set per client, scored by the time (Redis's clock, so daphne
hosts need not agree) at which it expires unless refreshed. The consumer refreshes its slot every third of
SLOT_TTL and removes it on disconnect; a daphne that crashes cannot remove its slots, so they lapse after SLOT_TTL
instead of counting against the client for ever. Taking a slot is one script, so two handshakes at once cannot
both take the last one.
"""

from __future__ import annotations

from typing import Any

from redis import asyncio as aioredis

from orders import cache

_NOW_MS = "local t = redis.call('TIME') local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000) "

# KEYS[1] slots of the client; ARGV: cap, ttl ms, member. Returns 1 if the slot was taken, 0 if the client is full.
_ACQUIRE = (
    _NOW_MS
    + """
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[1]) then return 0 end
redis.call('ZADD', KEYS[1], now + tonumber(ARGV[2]), ARGV[3])
redis.call('PEXPIRE', KEYS[1], ARGV[2])
return 1
"""
)

# KEYS[1] slots of the client; ARGV: ttl ms, member. Pushes the member's expiry on (if it still holds a slot).
_REFRESH = (
    _NOW_MS
    + """
if not redis.call('ZSCORE', KEYS[1], ARGV[2]) then return 0 end
redis.call('ZADD', KEYS[1], now + tonumber(ARGV[1]), ARGV[2])
redis.call('PEXPIRE', KEYS[1], ARGV[1])
return 1
"""
)


def client_id(scope: dict[str, Any]) -> str:
    """Who a socket belongs to: the logged-in user, else the peer's address (with daphne behind a proxy, start it
    with --proxy-headers so that is the browser's address, not the proxy's)."""
    user = scope.get("user")
    if user is not None and user.is_authenticated:
        return f"user:{user.pk}"
    client = scope.get("client") or ("unknown", 0)
    return f"ip:{client[0]}"


async def acquire(redis: aioredis.Redis, client: str, member: str, *, cap: int, ttl_seconds: float) -> bool:
    key = cache.live_socket_slots_key(client)
    return bool(await redis.eval(_ACQUIRE, 1, key, cap, int(ttl_seconds * 1000), member))


async def refresh(redis: aioredis.Redis, client: str, member: str, *, ttl_seconds: float) -> bool:
    key = cache.live_socket_slots_key(client)
    return bool(await redis.eval(_REFRESH, 1, key, int(ttl_seconds * 1000), member))


async def release(redis: aioredis.Redis, client: str, member: str) -> None:
    await redis.zrem(cache.live_socket_slots_key(client), member)


async def held(redis: aioredis.Redis, client: str) -> int:
    """Slots the client holds now (lapsed ones included until the next acquire sweeps them)."""
    return int(await redis.zcard(cache.live_socket_slots_key(client)))
