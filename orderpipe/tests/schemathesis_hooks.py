"""Loaded by schemathesis (SCHEMATHESIS_HOOKS) in orderpipe/tests/test_schemathesis.py's staff run.

A staff session writes only with its CSRF token, in a cookie and a header (Django's CSRF check). schemathesis sends
the session cookie itself, as the schema's `cookieAuth`; this adds the token to each request that carries it, so a
request schemathesis sends without the session (to check that it is refused) stays without the token too."""

from __future__ import annotations

import os

import schemathesis


@schemathesis.hook
def before_call(context, case, kwargs) -> None:
    token = os.environ["ORDERPIPE_FUZZ_CSRF_TOKEN"]
    if (case.cookies or {}).get("sessionid"):
        case.cookies = {**case.cookies, "csrftoken": token}
        case.headers = {**(case.headers or {}), "X-CSRFToken": token}
