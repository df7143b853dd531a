from __future__ import annotations

import uuid

from orders import cache


def rep(order_id, version, status="queued"):
    return {"id": str(order_id), "version": version, "status": status}


def test_write_through_never_replaces_a_newer_version():
    order_id = uuid.uuid4()
    assert cache.write_order(rep(order_id, 3, "processing"))["written"] is True
    assert cache.write_order(rep(order_id, 2, "queued"))["written"] is False
    assert cache.read_order(order_id)["status"] == "processing"
    assert cache.write_order(rep(order_id, 4, "completed"))["written"] is True
    assert cache.read_order(order_id)["status"] == "completed"


def test_cache_aside_fill_does_not_overwrite_a_write_through():
    order_id = uuid.uuid4()
    cache.write_order(rep(order_id, 5, "completed"))
    cache.fill_order(rep(order_id, 4, "processing"))
    assert cache.read_order(order_id)["status"] == "completed"


def test_state_shows_key_ttl_and_value():
    order_id = uuid.uuid4()
    assert cache.order_state(order_id) == {
        "key": cache.order_key(order_id),
        "present": False,
        "ttl": None,
        "value": None,
    }
    cache.write_order(rep(order_id, 1))
    state = cache.order_state(order_id)
    assert state["present"] is True
    assert 0 < state["ttl"] <= 3600
    assert state["value"]["id"] == str(order_id)


def test_stats_count_keys_hits_and_misses():
    order_id = uuid.uuid4()
    cache.read_order(order_id)
    cache.write_order(rep(order_id, 1))
    cache.read_order(order_id)
    cache.read_order(order_id)
    assert cache.stats() == {
        "available": True,
        "keys": 1,
        "hits": 2,
        "misses": 1,
        "hit_ratio": 0.667,
        "page_reads": 0,
    }


def test_flush_removes_this_prefix_only():
    order_id = uuid.uuid4()
    cache.write_order(rep(order_id, 1))
    client = cache._client()
    client.set("someone-else:order:1", "x")
    try:
        assert cache.flush() >= 1
        assert cache.read_order(order_id) is None
        assert client.get("someone-else:order:1") == b"x"
    finally:
        client.delete("someone-else:order:1")
