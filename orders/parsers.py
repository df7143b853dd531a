"""Request body parsers for the REST API (DRF's DEFAULT_PARSER_CLASSES).

`JSONParser` reads a UTF-8 body with orjson, and hands DRF's parser (`parse_reference`) every body orjson refuses, so
that DRF accepts them and words the errors itself: malformed JSON, NaN, a lone surrogate escape, 1E400 (DRF
reads it as infinity). It also hands over, unread, what orjson would read differently: an integer of 19 or more
digits (orjson makes a float of one beyond 64 bits) and a body with more than MAX_BRACKETS brackets (orjson nests
deeper than Python's json before refusing). orders/tests/test_parsers.py pins the two to each other.
"""

from __future__ import annotations

import io
import re
from typing import Any

import orjson
from django.conf import settings
from rest_framework import parsers
from rest_framework.exceptions import ParseError

UTF_8 = {"utf-8", "utf8"}
LONG_NUMBER = re.compile(rb"\d{19}")
# Far below the nesting at which Python's json gives up (about 900 levels), far above an order's (MAX_LINES + 2).
MAX_BRACKETS = 256


class JSONParser(parsers.JSONParser):
    """DRF's JSON parser, read with orjson where it reads the same (see the module docstring)."""

    def parse(self, stream: Any, media_type: str | None = None, parser_context: Any = None) -> Any:
        encoding = (parser_context or {}).get("encoding", settings.DEFAULT_CHARSET)
        body = stream.read()
        if (
            encoding.lower() in UTF_8
            and body.count(b"[") + body.count(b"{") <= MAX_BRACKETS
            and not LONG_NUMBER.search(body)
        ):
            try:
                return orjson.loads(body)
            except orjson.JSONDecodeError:
                pass  # the reference decides: it accepts a few bodies orjson refuses, and words the errors
        return self.parse_reference(io.BytesIO(body), media_type, parser_context)

    def parse_reference(self, stream: Any, media_type: str | None = None, parser_context: Any = None) -> Any:
        """DRF's parser, except that a body nested deeper than Python's recursion limit (2 KB of `[[[[...`) is a 400
        like any malformed JSON: the json module raises RecursionError there, not ValueError, which was a 500."""
        try:
            return super().parse(stream, media_type, parser_context)
        except RecursionError:
            raise ParseError("JSON parse error - too deeply nested") from None
