"""A TCP proxy that can be cut: a real outage for its clients (live connections reset, new ones refused) without
stopping the shared PostgreSQL, RabbitMQ or Redis that other processes on this machine use.

The tests put one in front of a service to prove what happens when it goes away (worker/tests/test_outages.py), and
`make run`'s supervisor puts one in front of each service so that a learner can cut it from the dashboard
(worker/links.py). `down()` cuts, `up()` restores on the same port, so clients reconnect to the address they know.
"""

from __future__ import annotations

import contextlib
import socket
import struct
import threading

# SO_LINGER on, timeout 0: close() sends a TCP reset at once, as a crashed server or a dropped link does, instead of
# an orderly FIN that a client could mistake for a clean goodbye.
_RESET_ON_CLOSE = struct.pack("ii", 1, 0)


class Proxy:
    def __init__(self, target_port: int, target_host: str = "127.0.0.1", *, port: int = 0) -> None:
        self.target = (target_host, target_port)
        if port:
            self.port = port
        else:
            probe = socket.socket()
            probe.bind(("127.0.0.1", 0))
            self.port = probe.getsockname()[1]
            probe.close()
        self._lock = threading.Lock()
        self._sockets: set[socket.socket] = set()
        self._listener: socket.socket | None = None

    def __enter__(self) -> Proxy:
        self.up()
        return self

    def __exit__(self, *exc: object) -> None:
        self.down()

    @property
    def is_up(self) -> bool:
        return self._listener is not None

    def up(self) -> None:
        """Listen (again) on the proxy's port. Does nothing when already up."""
        with self._lock:
            if self._listener is not None:
                return
            listener = socket.socket()
            listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            listener.bind(("127.0.0.1", self.port))
            listener.listen(128)
            self._listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True, name=f"proxy-{self.port}").start()

    def down(self) -> int:
        """Refuse new connections and reset every open one. Returns how many client connections were cut."""
        with self._lock:
            if self._listener is not None:
                with contextlib.suppress(OSError):
                    self._listener.shutdown(socket.SHUT_RDWR)
                self._listener.close()
                self._listener = None
            cut = len(self._sockets) // 2
            for sock in self._sockets:
                with contextlib.suppress(OSError):
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _RESET_ON_CLOSE)
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)  # wakes the pump threads blocked in recv()
                sock.close()
            self._sockets.clear()
        return cut

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(self.target, timeout=5)
                upstream.settimeout(None)
            except OSError:
                client.close()
                continue
            with self._lock:
                if self._listener is not listener:
                    client.close()
                    upstream.close()
                    return
                self._sockets.update((client, upstream))
            threading.Thread(target=self._pump, args=(client, upstream), daemon=True).start()
            threading.Thread(target=self._pump, args=(upstream, client), daemon=True).start()

    def _pump(self, source: socket.socket, sink: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                sink.sendall(data)
        except OSError:
            pass
        finally:
            for sock in (source, sink):
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
            # Forget (and close) a pair whose connection ended by itself, so a long run does not pile up dead sockets.
            with self._lock:
                for sock in (source, sink):
                    if sock in self._sockets:
                        self._sockets.discard(sock)
                        sock.close()
