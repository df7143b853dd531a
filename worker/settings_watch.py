"""A worker's ear for sandbox changes: `sandbox_update` NOTIFYs `sandbox_channel()` on commit, and the worker's main
loop asks `changed()` between two slices of AMQP work, so it re-reads the settings within a fraction of a second
instead of at the reader's next one-second refresh (which stays, as the fallback while PostgreSQL is away)."""

from __future__ import annotations

import time

from orders.sandbox import sandbox_channel
from worker.relay import OutboxListener

# After a failed LISTEN connection, wait this long before the next attempt: the main loop must keep servicing the
# broker connection while the database is away.
RETRY_AFTER = 5.0


class SettingsWatch:
    def __init__(self) -> None:
        self.listener = OutboxListener(channel=sandbox_channel())
        self._next_try = 0.0

    def changed(self) -> bool:
        """True if a change was announced since the last call. Never blocks on a database that is away for long."""
        if self.listener.conn is None and time.monotonic() < self._next_try:
            return False
        woke = self.listener.wait(0)
        if self.listener.conn is None:
            self._next_try = time.monotonic() + RETRY_AFTER
        return woke

    def close(self) -> None:
        self.listener.close()
