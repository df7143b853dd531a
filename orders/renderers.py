"""Response renderers for the REST API (DRF's DEFAULT_RENDERER_CLASSES).

`JSONRenderer` writes DRF's JSON with orjson: the same bytes as DRF's renderer (compact, UTF-8, U+2028 and U+2029
escaped, dates and decimals as DRF words them, anything else orjson does not know through DRF's own encoder) for every
value the API renders, pinned by orders/tests/test_renderers.py. What orjson refuses (an integer beyond 64 bits, a
dict key that is not a string) and every indented rendering (`; indent=N`, the browsable API's panel) go to DRF's
renderer, the reference. Two differences are left, for floats the data holds as floats (the API's bodies hold none:
money is a string): orjson writes some in another notation (1e-7 for 1e-07, the same number), and writes NaN and
infinity as null where DRF's strict renderer raised (a 500).
"""

from __future__ import annotations

import math
from typing import Any

import orjson
from rest_framework import renderers
from rest_framework.utils.encoders import JSONEncoder

# Dates and dataclasses go through DRF's encoder too (`_drf_default`), so they read exactly as DRF writes them.
_OPTIONS = orjson.OPT_PASSTHROUGH_DATETIME | orjson.OPT_PASSTHROUGH_DATACLASS
_encoder = JSONEncoder()


def _drf_default(value: Any) -> Any:
    """What DRF's encoder makes of a value orjson does not know; a float it makes (of a Decimal) written as Python
    writes it (repr), and refused when not finite, as DRF's strict renderer refuses it."""
    encoded = _encoder.default(value)
    if type(encoded) is float:
        if not math.isfinite(encoded):
            raise ValueError("Out of range float values are not JSON compliant")
        return orjson.Fragment(repr(encoded))
    return encoded


LINE_SEPARATOR, PARAGRAPH_SEPARATOR = "\u2028".encode(), "\u2029".encode()


class JSONRenderer(renderers.JSONRenderer):
    """DRF's JSON renderer, written with orjson where the output is compact (see the module docstring)."""

    def render(self, data: Any, accepted_media_type: str | None = None, renderer_context: Any = None) -> bytes:
        if data is None:
            return b""
        if (
            self.compact
            and not self.ensure_ascii
            and self.get_indent(accepted_media_type or "", renderer_context or {}) is None
        ):
            try:
                body = orjson.dumps(data, default=_drf_default, option=_OPTIONS)
            except orjson.JSONEncodeError:
                pass  # the reference below renders it, or raises DRF's own error
            else:
                # DRF escapes these two so that the JSON is also valid JavaScript.
                if LINE_SEPARATOR in body or PARAGRAPH_SEPARATOR in body:
                    body = body.replace(LINE_SEPARATOR, b"\\u2028").replace(PARAGRAPH_SEPARATOR, b"\\u2029")
                return body
        return super().render(data, accepted_media_type, renderer_context)
