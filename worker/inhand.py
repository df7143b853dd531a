"""What a worker has in hand, for its heartbeat: the order of each unsettled delivery and the orders being worked on.

The connection's thread adds deliveries and reads the whole; step threads remove them and mark what they work on.
One lock guards both maps, so a heartbeat reads one consistent picture and a step thread finishing its order does
not clear the order another step thread is still working on.
"""

from __future__ import annotations

import threading
from collections.abc import Hashable
from dataclasses import dataclass


@dataclass(frozen=True)
class Snapshot:
    current_order: str | None  # the order the longest-running step thread works on
    holding: list[str]  # every order an unsettled delivery carries, sorted, once each
    unacked: int  # unsettled deliveries, including undecodable ones (no order)


class InHand:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._held: dict[Hashable, str | None] = {}
        self._working: dict[int, str | None] = {}

    def hold(self, key: Hashable, order: str | None) -> None:
        """A delivery (under a key of the caller's choosing) is in hand until `release(key)`."""
        with self._lock:
            self._held[key] = order

    def release(self, key: Hashable) -> None:
        with self._lock:
            self._held.pop(key, None)

    def __len__(self) -> int:
        with self._lock:
            return len(self._held)

    def begin(self, order: str | None) -> None:
        """The calling thread works on `order` until it calls `end()`."""
        with self._lock:
            self._working[threading.get_ident()] = order

    def end(self) -> None:
        with self._lock:
            self._working.pop(threading.get_ident(), None)

    def snapshot(self) -> Snapshot:
        with self._lock:
            current = next((order for order in self._working.values() if order), None)
            return Snapshot(
                current_order=current,
                holding=sorted({order for order in self._held.values() if order}),
                unacked=len(self._held),
            )
