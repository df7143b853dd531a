"""Start the real web (daphne, or gunicorn as production runs it), relay and worker as subprocesses against this test
run's database, queues and keys. The benchmark (bench/run.py) starts its servers, relay and workers with the same
classes, against its own database and prefix."""

from __future__ import annotations

import contextlib
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
from typing import Self

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


RUNNING: set[Process] = set()


class Process:
    """A subprocess with its output in a log file for post-mortems. Every started one is recorded in `RUNNING`, and
    the autouse fixture in worker/tests/conftest.py kills what a test left running, so a failed test cannot leave a
    worker consuming the next test's queues.

    With `own_group` it runs in its own process group and stop() ends the whole group: the benchmark's servers that
    fork workers (uvicorn --workers) must not outlive it. Tests leave it off, so an interrupted run takes its
    children with it."""

    def __init__(
        self, name: str, argv: list[str], *, log_dir: Path, env: dict[str, str] | None = None, own_group: bool = False
    ) -> None:
        self.name, self._argv, self.own_group = name, argv, own_group
        self.env = env or service_env()
        self.log_path = log_dir / f"{name}-{time.monotonic_ns()}.log"
        self.proc: subprocess.Popen | None = None

    def argv(self) -> list[str]:
        return self._argv

    def start(self) -> Self:
        with open(self.log_path, "ab") as log:  # the child keeps its own copy of the descriptor
            self.proc = subprocess.Popen(
                self.argv(),
                cwd=ROOT,
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=self.own_group,
            )
        RUNNING.add(self)
        return self

    def signal(self, sig: int) -> None:
        assert self.proc is not None
        if self.own_group:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, sig)
        else:
            self.proc.send_signal(sig)

    def kill(self) -> None:
        assert self.proc is not None
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
            self.kill()
            return -9

    def exited(self) -> bool:
        return self.proc is not None and self.proc.poll() is not None

    def output(self, tail: int | None = None) -> str:
        text = self.log_path.read_text(errors="replace")
        return text[-tail:] if tail else text

    def wait_http(self, url: str, timeout: float = 30) -> Self:
        """Wait until `url` answers HTTP (any status), or fail with the process's log if it exits or times out."""

        def answers() -> bool:
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.proc.returncode}:\n{self.output()}")
            try:
                urllib.request.urlopen(url, timeout=1).close()
            except urllib.error.HTTPError:
                return True
            except OSError:
                return False
            return True

        if not wait_until(answers, timeout, interval=0.2):
            raise RuntimeError(f"{self.name} did not answer within {timeout} s:\n{self.output()}")
        return self


class Service(Process):
    """One manage.py command as a subprocess."""

    def __init__(
        self, command: str, *args: str, log_dir: Path, env: dict[str, str] | None = None, own_group: bool = False
    ) -> None:
        super().__init__(
            command, [sys.executable, "manage.py", command, *args], log_dir=log_dir, env=env, own_group=own_group
        )
        self.command, self.args = command, args


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Web(Process):
    """daphne serving orderpipe.asgi, HTTP and WebSockets in one process, here on a free local port. In production
    (Compose's `ws`, `make run`) daphne serves the WebSockets beside gunicorn (GunicornWeb)."""

    server = "daphne"

    def __init__(self, *, log_dir: Path, env: dict[str, str] | None = None, port: int | None = None) -> None:
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        super().__init__(self.server, self.argv(), log_dir=log_dir, env=env)

    def argv(self) -> list[str]:
        daphne = str(Path(sys.executable).parent / "daphne")
        return [daphne, "-b", "127.0.0.1", "-p", str(self.port), "orderpipe.asgi:application"]

    def wait_ready(self, timeout: float = 30) -> Self:
        """Wait until the server answers HTTP (any status), or fail with its log."""
        return self.wait_http(f"{self.url}/healthz", timeout)


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
