"""Loaded by pytest before Django (`-p orderpipe.testing` in pyproject.toml).

Gives the test run its own queue-name prefix, Redis key space and NOTIFY channel, so tests never touch the
queues or keys of a `make run` instance on the same machine, and its own test database, so two runs at once do
not collide either.
"""

import faulthandler
import os
import sys
import threading
import uuid

import pytest

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
# A statement of the tests or of their subprocesses that waits on a lock fails after two minutes, naming the lock,
# instead of waiting forever (libpq reads PGOPTIONS): say, pytest-django's TRUNCATE between two tests behind a
# connection a test left idle in a transaction.
os.environ.setdefault("PGOPTIONS", "-c lock_timeout=120s")

# Seconds a test process may take to exit once the interpreter shuts down (see pytest_unconfigure).
EXIT_GRACE_SECONDS = 60
_exit_status = 0


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    global _exit_status
    _exit_status = int(exitstatus)


def pytest_unconfigure(config: pytest.Config) -> None:
    """Python joins every non-daemon thread before it exits, so one thread still blocked after the run (an executor
    thread of an async test's sync call that never returned) would keep this process, and CI, waiting forever. When
    the interpreter starts shutting down, a watchdog gives it EXIT_GRACE_SECONDS; past that it prints every thread's
    stack to stderr and exits with the run's status. (An xdist worker may wait much longer than that for the other
    worker before it shuts down: the clock starts at the shutdown, not at the end of its tests.)"""
    shutting_down = threading.Event()

    def watchdog() -> None:
        shutting_down.wait()
        if threading.Event().wait(EXIT_GRACE_SECONDS):
            return
        print(f"\ntest process {os.getpid()} still exiting after {EXIT_GRACE_SECONDS} s:", file=sys.stderr)
        faulthandler.dump_traceback(file=sys.stderr, all_threads=True)
        os._exit(_exit_status)

    threading.Thread(target=watchdog, name="exit-watchdog", daemon=True).start()
    # Called at the start of the interpreter's shutdown, before it joins the threads (as concurrent.futures does).
    threading._register_atexit(shutting_down.set)  # type: ignore[attr-defined]
