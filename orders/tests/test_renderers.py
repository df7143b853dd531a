"""The orjson renderer writes exactly the bytes DRF's JSONRenderer writes, for what the API renders and beyond."""

from __future__ import annotations

import datetime as dt
import json
import uuid
from collections import OrderedDict
from decimal import Decimal
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from django.utils.functional import lazy
from hypothesis import given, settings
from hypothesis import strategies as st
from rest_framework import renderers as drf
from rest_framework.utils.serializer_helpers import ReturnDict, ReturnList

from orders import services
from orders.models import OrderEvent, OrderStatus, Product
from orders.reference import load_order
from orders.renderers import JSONRenderer
from orders.sandbox.faults import NoFaults
from orders.serializers import OrderEventSerializer, ProductSerializer, order_representation
from worker.processing import Processor
from worker.tests.conftest import delivery_for

ours, reference = JSONRenderer(), drf.JSONRenderer()
UTC = dt.UTC
PARIS = ZoneInfo("Europe/Paris")


def assert_same(data, media_type: str | None = None, context: dict | None = None) -> bytes:
    expected = reference.render(data, media_type, context)
    assert ours.render(data, media_type, context) == expected
    return expected


VALUES: list[Any] = [
    None,
    {},
    [],
    {"a": 1, "b": [True, False, None], "c": {"d": "e"}},
    "plain",
    "ünïcødé, 漢字, emoji 🙂, RTL ש",
    'controls \x00\x01\x1f\x7f tab\t newline\n quote" backslash\\ slash/',
    "separators \u2028 and \u2029 in text",
    Decimal("25.00"),
    Decimal("-0.10"),
    Decimal("0.0000999900"),
    Decimal("1E+30"),
    uuid.UUID("12345678-1234-5678-1234-567812345678"),
    dt.datetime(2026, 12, 7, 19, 0, 0, 123456, tzinfo=UTC),
    dt.datetime(2026, 12, 7, 19, 0, 0, tzinfo=UTC),
    dt.datetime(2026, 7, 1, 9, 30, tzinfo=PARIS),
    dt.datetime(2026, 12, 7, 19, 0, 0),
    dt.date(2026, 12, 7),
    dt.time(19, 0, 0, 5),
    dt.timedelta(seconds=90, microseconds=5),
    OrderStatus.COMPLETED,
    b"bytes",
    (1, 2, 3),
    {3, 1, 2},
    lazy(lambda: "lazy text", str)(),
    2**64,  # beyond orjson: DRF's renderer writes it
    -(2**63) - 1,
    {1: "int key", 2.5: "float key", None: "null key", False: "bool key"},
    OrderedDict([("z", 1), ("a", 2)]),
    ReturnDict({"x": [1]}, serializer=ProductSerializer()),
    ReturnList([{"y": 2}], serializer=ProductSerializer(many=True)),
    [[[[[[[[[[[[]]]]]]]]]]]],
]


@pytest.mark.parametrize("value", VALUES, ids=range(len(VALUES)))
def test_it_writes_drfs_bytes_for_each_kind_of_value(value):
    assert_same(value)
    assert_same(value, "application/json; indent=4")
    assert_same(value, "application/json", {"indent": 2})


def test_it_raises_drfs_error_for_what_drf_cannot_render():
    for value in ({"x": object()}, "\ud800 lone surrogate", Decimal("NaN"), [Decimal("Infinity")]):
        with pytest.raises(Exception) as expected:
            reference.render(value)
        with pytest.raises(type(expected.value)):
            ours.render(value)


@pytest.mark.django_db
def test_it_writes_drfs_bytes_for_the_apis_own_bodies(product):
    order = services.order_create(customer_email="ren@example.com", items=[{"sku": "BOOK-001", "quantity": 2}])
    Processor(faults=NoFaults()).process(delivery_for(order))
    order = load_order(order.pk)
    events = OrderEvent.objects.filter(order=order).order_by("seq")
    assert len(events) == 6
    for body in (
        order_representation(order),
        OrderEventSerializer(events, many=True).data,
        ProductSerializer(Product.objects.all(), many=True).data,
        {"count": 1, "next": None, "previous": None, "results": [order_representation(order)]},
    ):
        assert json.loads(assert_same(body))


JSON_VALUES = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.text()
    | st.decimals(allow_nan=False, allow_infinity=False)
    | st.uuids()
    | st.datetimes(timezones=st.none() | st.just(UTC) | st.timezones()),
    lambda children: st.lists(children, max_size=5) | st.dictionaries(st.text(), children, max_size=5),
    max_leaves=30,
)


@settings(max_examples=300, deadline=None)
@given(JSON_VALUES)
def test_it_writes_drfs_bytes_for_generated_values(value):
    try:
        assert_same(value)
    except UnicodeEncodeError:  # a lone surrogate in a generated string: DRF cannot write it either
        with pytest.raises(UnicodeEncodeError):
            reference.render(value)


def test_floats_read_back_as_drfs():
    # The only bytes that may differ: orjson writes 1e-7 where Python writes 1e-07; the values are the same.
    for value in (0.1, 1.5, -0.0, 1e-7, 1e16, 123456.789, 5e-324, 1.7976931348623157e308):
        assert json.loads(ours.render([value])) == json.loads(reference.render([value]))
