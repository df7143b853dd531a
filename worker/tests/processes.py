"""Start the real web (daphne, or gunicorn as production runs it), relay and worker as subprocesses against this test
run's database, queues and keys."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path

from django.conf import settings
from django.db import connection

ROOT = Path(__file__).resolve().parents[2]


def service_env(**overrides: str) -> dict[str, str]:
    db = connection.settings_dict
    env = dict(os.environ)
    env.update(
        DATABASE_URL=f"postgres://{db['USER']}@{db['HOST']}:{db['PORT'] or 5432}/{db['NAME']}",
        ORDERPIPE_PREFIX=settings.ORDERPIPE_PREFIX,
        PYTHONUNBUFFERED="1",
        LOG_LEVEL="INFO",
    )
    env.update(overrides)
    return env


RUNNING: set[Service] = set()


class Service:
    """One manage.py command as a subprocess; its output goes to a log file for post-mortems. Every started
    service is recorded in `RUNNING`, and the autouse fixture in worker/tests/conftest.py kills what a test left
    running, so a failed test cannot leave a worker consuming the next test's queues."""

    def __init__(self, command: str, *args: str, log_dir: Path, env: dict[str, str] | None = None) -> None:
        self.command, self.args = command, args
        self.env = env or service_env()
        self.log_path = log_dir / f"{command}-{time.monotonic_ns()}.log"
        self.proc: subprocess.Popen | None = None

    def start(self) -> Service:
        log = open(self.log_path, "ab")  # noqa: SIM115 - owned by the subprocess for its lifetime
        self.proc = subprocess.Popen(
            self.argv(),
            cwd=ROOT,
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        log.close()
        RUNNING.add(self)
        return self

    def argv(self) -> list[str]:
        return [sys.executable, "manage.py", self.command, *self.args]

    def signal(self, sig: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)

    def kill(self) -> None:
        self.signal(signal.SIGKILL)
        self.proc.wait(10)

    def stop(self, timeout: float = 20) -> int:
        """SIGTERM and wait; returns the exit code (SIGKILL after the timeout, which then fails the caller)."""
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else 0
        self.signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)
            return -9

    def output(self) -> str:
        return self.log_path.read_text(errors="replace")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Web(Service):
    """daphne serving orderpipe.asgi, HTTP and WebSockets in one process, here on a free local port. In production
    (Compose's `ws`, `make run`) daphne serves the WebSockets beside gunicorn (GunicornWeb)."""

    server = "daphne"

    def __init__(self, *, log_dir: Path, env: dict[str, str] | None = None, port: int | None = None) -> None:
        super().__init__(self.server, log_dir=log_dir, env=env)
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"

    def argv(self) -> list[str]:
        daphne = str(Path(sys.executable).parent / "daphne")
        return [daphne, "-b", "127.0.0.1", "-p", str(self.port), "orderpipe.asgi:application"]

    def wait_ready(self, timeout: float = 30) -> Web:
        """Wait until the server answers HTTP (any status), or fail with its log."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(f"{self.server} exited with {self.proc.returncode}:\n{self.output()}")
            try:
                urllib.request.urlopen(f"{self.url}/healthz", timeout=1).close()
                return self
            except urllib.error.HTTPError:
                return self
            except OSError:
                time.sleep(0.2)
        raise RuntimeError(f"{self.server} did not answer within {timeout} s:\n{self.output()}")


class GunicornWeb(Web):
    """The production HTTP server as Compose's `web` and `make run` start it, `gunicorn -c gunicorn.conf.py`, bound to
    127.0.0.1 on a free port (`-b` overrides the file's bind). One worker with two threads by default, to stay
    light. gunicorn's workers exit by themselves when the master is killed (they watch their parent)."""

    server = "gunicorn"

    def __init__(
        self,
        *,
        log_dir: Path,
        env: dict[str, str] | None = None,
        port: int | None = None,
        workers: int = 1,
        threads: int = 2,
    ) -> None:
        env = {**(env or service_env()), "WEB_WORKERS": str(workers), "WEB_THREADS": str(threads)}
        super().__init__(log_dir=log_dir, env=env, port=port)

    def argv(self) -> list[str]:
        gunicorn = str(Path(sys.executable).parent / "gunicorn")
        return [gunicorn, "-c", "gunicorn.conf.py", "-b", f"127.0.0.1:{self.port}"]


def wait_until(predicate: Callable[[], bool], timeout: float = 20.0, interval: float = 0.05) -> bool:
    """Poll until `predicate()` holds or `timeout` seconds pass; returns its last answer."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return predicate()
