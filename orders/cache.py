"""The Redis side of an order: every Redis key name the project uses lives in this module.

Entries are plain JSON (readable with `redis-cli GET`), written through after each committed change and read
first by `GET /api/orders/<id>/`. Redis is an accelerator, never a source of truth: every call here swallows
Redis errors (short socket timeouts are set in settings) and reports them in the returned state instead.
"""

from __future__ import annotations

import json
import logging
from typing import Any, TypedDict

from django.conf import settings
from django_redis import get_redis_connection
from redis.exceptions import NoScriptError, RedisError

log = logging.getLogger(__name__)


class CacheState(TypedDict, total=False):
    key: str
    present: bool
    ttl: int | None
    value: dict[str, Any] | None
    written: bool
    error: str
    note: str


def _prefix() -> str:
    return settings.ORDERPIPE_PREFIX


def order_key(order_id: object) -> str:
    return f"{_prefix()}:order:{order_id}"


def _stats_key(name: str) -> str:
    return f"{_prefix()}:stats:cache:{name}"


def live_producer_lock_key() -> str:
    """Held by the one daphne process that produces the live updates (orderpipe/dashboard/broadcaster.py)."""
    return f"{_prefix()}:live:producer"


def live_watched_key() -> str:
    """Sorted set of order ids whose journey page is open, scored by when that interest expires."""
    return f"{_prefix()}:live:watched"


def live_controls_key() -> str:
    """Stream of recent control actions (burst, purge, flush...), shown in the dashboard's live feed."""
    return f"{_prefix()}:live:controls"


def live_socket_slots_key(client: str) -> str:
    """Sorted set of the live sockets one client (user or address) holds open, scored by expiry
    (orderpipe/dashboard/sockets.py)."""
    return f"{_prefix()}:live:sockets:{client}"


def _client():
    return get_redis_connection("default")


# Write only if the entry is absent or carries an older version: the relay and several workers may write the same
# order after their own commits, and a write delayed by scheduling must not bring back an older status.
_WRITE_IF_NEWER = """
local current = redis.call('GET', KEYS[1])
if current then
  local ok, decoded = pcall(cjson.decode, current)
  if ok and decoded['version'] and tonumber(decoded['version']) > tonumber(ARGV[2]) then
    return 0
  end
end
redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[3])
return 1
"""


_scripts: dict[int, Any] = {}


def write_order(representation: dict[str, Any], *, ttl: int | None = None) -> CacheState:
    """Write-through after a commit: store the order's public representation unless a newer one is there.
    `ttl` in seconds (default ORDER_CACHE_TTL; the sandbox's cache_ttl_seconds passes its own)."""
    key = order_key(representation["id"])
    ttl = ttl or settings.ORDER_CACHE_TTL
    try:
        client = _client()
        # EVALSHA: the script is sent once per connection pool, not with every write (redis-py reloads it if the
        # server forgot it).
        script = _scripts.get(id(client))
        if script is None:
            script = _scripts[id(client)] = client.register_script(_WRITE_IF_NEWER)
        written = script(keys=[key], args=[json.dumps(representation), representation["version"], ttl], client=client)
    except RedisError as exc:
        log.warning("cache write skipped for %s: %s", key, exc)
        return {"key": key, "present": False, "written": False, "error": f"Redis unavailable: {exc}"}
    return {"key": key, "present": True, "ttl": ttl, "value": representation, "written": bool(written)}


def write_orders(representations: list[dict[str, Any]], *, ttl: int | None = None) -> list[CacheState]:
    """`write_order` for a batch of orders, pipelined: one round trip to Redis for all of them (EVALSHA; the script
    is loaded first when the server does not know it)."""
    ttl = ttl or settings.ORDER_CACHE_TTL
    keys = [order_key(representation["id"]) for representation in representations]
    try:
        client = _client()
        script = _scripts.get(id(client))
        if script is None:
            script = _scripts[id(client)] = client.register_script(_WRITE_IF_NEWER)
        try:
            written = _evalsha_all(client, script.sha, keys, representations, ttl)
        except NoScriptError:
            client.script_load(_WRITE_IF_NEWER)
            written = _evalsha_all(client, script.sha, keys, representations, ttl)
    except RedisError as exc:
        log.warning("cache writes skipped for %d orders: %s", len(keys), exc)
        return [{"key": key, "present": False, "written": False, "error": f"Redis unavailable: {exc}"} for key in keys]
    return [
        {"key": key, "present": True, "ttl": ttl, "value": representation, "written": bool(done)}
        for key, representation, done in zip(keys, representations, written, strict=True)
    ]


def _evalsha_all(client: Any, sha: str, keys: list[str], representations: list[dict[str, Any]], ttl: int) -> list:
    pipe = client.pipeline(transaction=False)
    for key, representation in zip(keys, representations, strict=True):
        pipe.evalsha(sha, 1, key, json.dumps(representation), representation["version"], ttl)
    return pipe.execute()


def fill_order(representation: dict[str, Any], *, ttl: int | None = None) -> None:
    """Cache-aside fill after a miss. SET NX: never overwrite what a worker wrote meanwhile."""
    try:
        _client().set(
            order_key(representation["id"]), json.dumps(representation), ex=ttl or settings.ORDER_CACHE_TTL, nx=True
        )
    except RedisError as exc:
        log.warning("cache fill skipped: %s", exc)


def count_page_read() -> None:
    """A journey page view: it reads PostgreSQL, not the cache, so it is counted apart from the hits and misses."""
    try:
        _client().incr(_stats_key("page_reads"))
    except RedisError as exc:
        log.warning("page read not counted: %s", exc)


def count_stale_read() -> None:
    """A cache hit whose status or version differed from the database row (counted in the sandbox only)."""
    try:
        _client().incr(_stats_key("stale_reads"))
    except RedisError as exc:
        log.warning("stale read not counted: %s", exc)


def stale_reads() -> int:
    """Stale reads counted since the last flush (0 when Redis is unavailable)."""
    try:
        return int(_client().get(_stats_key("stale_reads")) or 0)
    except RedisError:
        return 0


def count_ghost_message() -> None:
    """A worker met a message for an order that does not exist (and dead-lettered it)."""
    try:
        _client().incr(_stats_key("ghost_messages"))
    except RedisError as exc:
        log.warning("ghost message not counted: %s", exc)


def ghost_messages() -> int:
    try:
        return int(_client().get(_stats_key("ghost_messages")) or 0)
    except RedisError:
        return 0


def read_order(order_id: object) -> dict[str, Any] | None:
    """The cached representation, or None on a miss or when Redis is unavailable. Counts hits and misses."""
    key = order_key(order_id)
    try:
        client = _client()
        raw = client.get(key)
        client.incr(_stats_key("hits" if raw is not None else "misses"))
    except RedisError as exc:
        log.warning("cache read failed for %s: %s", key, exc)
        return None
    if raw is None:
        return None
    try:
        return json.loads(raw)
    except ValueError:
        return None


def order_state(order_id: object) -> CacheState:
    """What Redis holds for an order right now: key, TTL, value (or absent)."""
    key = order_key(order_id)
    try:
        pipe = _client().pipeline()
        pipe.get(key)
        pipe.ttl(key)
        raw, ttl = pipe.execute()
    except RedisError as exc:
        return {"key": key, "present": False, "error": f"Redis unavailable: {exc}"}
    if raw is None:
        return {"key": key, "present": False, "ttl": None, "value": None}
    try:
        value = json.loads(raw)
    except ValueError:
        value = None
    return {"key": key, "present": True, "ttl": ttl if ttl >= 0 else None, "value": value}


def evict_order(order_id: object) -> None:
    try:
        _client().delete(order_key(order_id))
    except RedisError as exc:
        log.warning("cache evict failed: %s", exc)


class CacheStats(TypedDict, total=False):
    available: bool
    keys: int
    hits: int
    misses: int
    hit_ratio: float | None
    page_reads: int  # journey page views: they read PostgreSQL, so they are neither hits nor misses
    error: str


def stats(*, max_scan: int = 100_000) -> CacheStats:
    """Order keys cached (counted with SCAN, bounded), the API's hit/miss counters and the journey page reads."""
    try:
        client = _client()
        hits, misses, page_reads = client.mget(_stats_key("hits"), _stats_key("misses"), _stats_key("page_reads"))
        keys = 0
        for _ in client.scan_iter(match=f"{_prefix()}:order:*", count=1000):
            keys += 1
            if keys >= max_scan:
                break
    except RedisError as exc:
        return {
            "available": False,
            "keys": 0,
            "hits": 0,
            "misses": 0,
            "hit_ratio": None,
            "page_reads": 0,
            "error": str(exc),
        }
    hits_n, misses_n = int(hits or 0), int(misses or 0)
    total = hits_n + misses_n
    return {
        "available": True,
        "keys": keys,
        "hits": hits_n,
        "misses": misses_n,
        "hit_ratio": round(hits_n / total, 3) if total else None,
        "page_reads": int(page_reads or 0),
    }


def flush() -> int:
    """Delete every order entry and the counters of this instance's prefix. Returns the number of keys removed."""
    try:
        client = _client()
        keys = list(client.scan_iter(match=f"{_prefix()}:order:*", count=1000))
        keys += [_stats_key("hits"), _stats_key("misses"), _stats_key("page_reads"), _stats_key("stale_reads")]
        keys.append(_stats_key("ghost_messages"))
        removed = 0
        for start in range(0, len(keys), 500):
            removed += client.delete(*keys[start : start + 500])
        return removed
    except RedisError as exc:
        log.warning("cache flush failed: %s", exc)
        return 0


def delete_prefix(prefix: str) -> int:
    """Remove every key under a prefix (used by tests to clean up their own key space)."""
    client = _client()
    removed = 0
    batch: list[bytes] = []
    for key in client.scan_iter(match=f"{prefix}:*", count=1000):
        batch.append(key)
        if len(batch) >= 500:
            removed += client.delete(*batch)
            batch = []
    if batch:
        removed += client.delete(*batch)
    return removed
