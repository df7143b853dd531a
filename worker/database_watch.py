"""Whether this process's database answers, watched so that the heartbeats return as soon as it does.

Django's psycopg pool reconnects on its own with exponential backoff (1 s, 2 s, 4 s, … in psycopg_pool), and a
thread asking it for a connection meanwhile waits up to the pool's timeout: after a 20-second outage the pool's next
attempt can come 10 s or more after the database is back, and the heartbeats and queue depths written through it
stay stale that long, so the dashboard calls a running relay or worker gone. After a failed write, `DatabaseWatch`
probes on a thread of its own with a fresh connection (worker/dependencies.py) every PROBE_EVERY seconds; on the
first answer it closes the pool, which drops its pending backoff and fails the threads waiting on it at once, so
their next query opens a new pool that connects straight away.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time

from django.db import close_old_connections, connection

from worker.dependencies import DependencyUnavailable, check_postgresql

log = logging.getLogger(__name__)

PROBE_EVERY = 0.25
# libpq's shortest connect timeout; a cut link refuses at once, a lost host holds a probe this long.
PROBE_TIMEOUT = 2.0

_pool_lock = threading.Lock()


def reset_pool() -> None:
    """Close this process's connection pool; connections in use are closed as they come back, and the next query
    opens a new pool. Several watches in one process (tests run workers as threads) may ask at once: one closes it."""
    # PostgreSQL's wrapper has close_pool (a no-op without a pool); the generic type does not declare it.
    close_pool = getattr(connection, "close_pool", None)
    if close_pool is None:
        return
    # KeyError: closed by another thread between its check and its delete.
    with _pool_lock, contextlib.suppress(KeyError):
        close_pool()


class DatabaseWatch:
    def __init__(self, *, probe_every: float = PROBE_EVERY) -> None:
        self.probe_every = probe_every
        self._lock = threading.Lock()
        self._prober: threading.Thread | None = None

    @property
    def down(self) -> bool:
        """A write failed and the database has not answered a probe since."""
        prober = self._prober
        return prober is not None and prober.is_alive()

    def failed(self) -> None:
        """A write through the pool failed: probe until the database answers, then reset the pool."""
        close_old_connections()
        with self._lock:
            if not self.down:
                self._prober = threading.Thread(target=self._probe, name="database-watch", daemon=True)
                self._prober.start()

    def _probe(self) -> None:
        started = time.monotonic()
        while True:
            try:
                check_postgresql(timeout=PROBE_TIMEOUT)
            except DependencyUnavailable:
                time.sleep(self.probe_every)
                continue
            break
        log.info("database answers again after %.1f s; reconnecting", time.monotonic() - started)
        reset_pool()
