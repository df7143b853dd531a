"""The orjson parser reads every body as DRF's JSONParser does: the same data, or the same 400 in the same words."""

from __future__ import annotations

import io
import json
import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from rest_framework.exceptions import ParseError

from orders.parsers import JSONParser

parser = JSONParser()


def outcome(read, body: bytes, encoding: str = "utf-8"):
    """What a parse gives: the data (NaN made comparable) or the error's detail."""
    try:
        data = read(io.BytesIO(body), "application/json", {"encoding": encoding})
    except ParseError as exc:
        return ("error", str(exc.detail))
    return ("data", repr(data) if isinstance(data, float) and math.isnan(data) else data)


def assert_same(body: bytes, encoding: str = "utf-8") -> tuple:
    expected = outcome(parser.parse_reference, body, encoding)
    assert outcome(parser.parse, body, encoding) == expected
    return expected


BODIES = [
    b'{"customer_email": "a@example.com", "items": [{"sku": "BOOK-001", "quantity": 2}]}',
    '{"note": "ünïcødé 漢字 🙂 \u2028"}'.encode(),
    b'{"a": 1, "a": 2}',
    b" [1, 2.5, -0, 1e-7, true, false, null] ",
    b'"just a string"',
    b"123456789012345678901234567890",  # orjson would make a float of it
    b"-9223372036854775809",
    b"18446744073709551615",
    b"1E400",  # Python's json reads infinity
    b"[NaN]",
    b"[Infinity, -Infinity]",
    b'"\\ud800"',  # a lone surrogate escape: Python's json keeps it
    b'"\xed\xa0\x80"',
    b"\xef\xbb\xbf{}",
    b"",
    b"   ",
    b"{",
    b'{"a": }',
    b"[1,]",
    b"\xff\xfe",
    b'{"a": "\x01"}',
    b"[" * 5000,
    b"[" * 300 + b"]" * 300,
    b"[" * 1000 + b"]" * 1000,  # within orjson's depth, beyond Python's json: a 400
    b"[" * 200 + b"]" * 200,
    b'{"quantity": 1.0000000000000000000001}',
]


@pytest.mark.parametrize("body", BODIES, ids=range(len(BODIES)))
def test_it_reads_each_body_as_drf_does(body):
    assert_same(body)


def test_a_body_in_another_charset_is_read_by_drfs_parser():
    body = '{"note": "café"}'.encode("latin-1")
    assert assert_same(body, "latin-1") == ("data", {"note": "café"})


def test_malformed_json_is_worded_by_drf():
    kind, detail = assert_same(b'{"customer_email": ')
    assert kind == "error" and detail.startswith("JSON parse error - Expecting value")


JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text(),
    lambda children: st.lists(children, max_size=5) | st.dictionaries(st.text(), children, max_size=5),
    max_leaves=30,
)


@settings(max_examples=300, deadline=None)
@given(JSON)
def test_it_reads_generated_json_as_drf_does(value):
    assert_same(json.dumps(value).encode())
    assert_same(json.dumps(value, ensure_ascii=False).encode("utf-8", "surrogatepass"))


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=64) | st.text(alphabet='{}[]":,0123456789.eE+- tfnrulasNIy\\', max_size=40).map(str.encode))
def test_it_reads_garbage_as_drf_does(body):
    assert_same(body)
