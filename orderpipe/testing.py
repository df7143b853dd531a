"""Loaded by pytest before Django (`-p orderpipe.testing` in pyproject.toml).

Gives the test run its own queue-name prefix, Redis key space and NOTIFY channel, so tests never touch the
queues or keys of a `make run` instance on the same machine, and its own test database, so two runs at once do
not collide either.
"""

import os
import uuid

RUN_ID = uuid.uuid4().hex[:8]
os.environ["ORDERPIPE_PREFIX"] = f"test-{RUN_ID}"
os.environ["DATABASE_TEST_NAME"] = f"test_orderpipe_{RUN_ID}"
os.environ.setdefault("DJANGO_SECRET_KEY", "test-secret-" + uuid.uuid4().hex)
os.environ.setdefault("DJANGO_DEBUG", "false")
# The tests run in production mode (DEBUG off) and drive the sandbox's controls; the tests of production without it
# set ORDERPIPE_SANDBOX=false themselves.
os.environ.setdefault("ORDERPIPE_SANDBOX", "true")
# Fast retry tiers for tests; the real ones are 1 s, 5 s, 30 s.
os.environ.setdefault("ORDERPIPE_RETRY_DELAYS_MS", "200,400,800")
# Generous limits, so no test is throttled by accident; the throttling tests set their own rates.
os.environ.setdefault("ORDERPIPE_THROTTLE_ANON", "100000/minute")
os.environ.setdefault("ORDERPIPE_THROTTLE_USER", "100000/minute")
os.environ.setdefault("ORDERPIPE_THROTTLE_ORDERS", "100000/minute")
os.environ.setdefault("ORDERPIPE_LOGIN_FAILURE_LIMIT", "1000")
os.environ.setdefault("ORDERPIPE_LOGIN_ADDRESS_FAILURE_LIMIT", "1000")
# /metrics outside DEBUG needs it (tests scrape with `Authorization: Bearer` and this value).
os.environ.setdefault("ORDERPIPE_METRICS_TOKEN", "test-metrics-" + uuid.uuid4().hex)
