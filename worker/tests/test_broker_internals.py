"""The private pika names worker/broker.py relies on (`_PikaInternals`) exist and behave on the installed pika.

An upgrade of pika that renames or reshapes them fails here, against the real broker, rather than in the relay's
confirm window or in the failover's choice of node."""

from __future__ import annotations

import pika
import pytest

from worker.broker import _address, _PikaInternals, connect, connected_node, node_urls


@pytest.fixture
def conn():
    connection = connect()
    yield connection
    if connection.is_open:
        connection.close()


def test_the_connection_names_the_node_it_was_opened_to(conn):
    params = _PikaInternals.parameters(conn)
    assert isinstance(params, pika.connection.Parameters)
    assert connected_node(conn) in {_address(url) for url in node_urls()}


def test_the_blocking_channel_wraps_the_asynchronous_channel_it_drives(conn):
    blocking = conn.channel()
    channel = _PikaInternals.channel(blocking)
    assert isinstance(channel, pika.channel.Channel)
    assert channel.channel_number == blocking.channel_number and channel.is_open
    # The calls the relay's confirm window makes on it exist; closing the blocking channel closes this one.
    for name in ("confirm_delivery", "add_on_return_callback", "add_on_close_callback", "basic_publish"):
        assert callable(getattr(channel, name))
    blocking.close()
    assert channel.is_closed


@pytest.mark.pure
def test_a_pika_without_them_is_refused_loudly_or_reported_as_unknown():
    class Reshaped:
        pass

    assert _PikaInternals.parameters(Reshaped()) is None  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="no Channel inside BlockingChannel"):
        _PikaInternals.channel(Reshaped())  # type: ignore[arg-type]
