from __future__ import annotations

import socket
import subprocess
import sys
import time
import urllib.request

import pytest

from worker.tests.processes import ROOT, Service, service_env, wait_until

CLOSED_AMQP = "amqp://guest:guest@127.0.0.1:1/%2F"
CLOSED_REDIS = "redis://127.0.0.1:1/0"


def run_command(*argv: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "manage.py", *argv],
        cwd=ROOT,
        env=service_env(**env),
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("command", ["run_relay", "run_worker"])
def test_it_refuses_to_start_with_one_line_when_rabbitmq_is_unreachable(command):
    started = time.monotonic()
    result = run_command(command, "--startup-timeout", "2", AMQP_URL=CLOSED_AMQP)
    elapsed = time.monotonic() - started
    assert result.returncode == 1, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "cannot start" in lines[0]
    assert "RabbitMQ unreachable at amqp://guest:***@127.0.0.1:1/" in lines[0]
    assert "ConnectionRefusedError" in lines[0]
    assert "PostgreSQL" not in lines[0]  # it names only what is down
    # It retried for the window, not much longer.
    assert 1.5 < elapsed < 20


@pytest.mark.django_db(transaction=True)
def test_the_relay_names_every_dependency_that_is_down():
    result = run_command(
        "run_relay", "--startup-timeout", "1", AMQP_URL=CLOSED_AMQP, DATABASE_URL="postgres://postgres@127.0.0.1:1/x"
    )
    assert result.returncode == 1
    [line] = result.stderr.strip().splitlines()
    assert "PostgreSQL unreachable at 127.0.0.1:1" in line
    assert "RabbitMQ unreachable" in line


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.django_db(transaction=True)
def test_a_worker_starts_without_redis_and_serves_its_metrics(tmp_path):
    port = free_port()
    worker = Service(
        "run_worker",
        "--startup-timeout",
        "2",
        "--metrics-port",
        str(port),
        log_dir=tmp_path,
        env=service_env(REDIS_URL=CLOSED_REDIS),
    ).start()
    try:
        assert wait_until(lambda: "consuming" in worker.output() or worker.proc.poll() is not None, 30)
        assert "consuming" in worker.output(), worker.output()
        assert "starting without Redis" in worker.output()
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
            text = response.read().decode()
        assert 'orderpipe_order_events_total{kind="completed"} 0.0' in text
        assert "orderpipe_order_step_duration_seconds_bucket" in text
        # Shared state is the web's to report, once; a worker never runs those queries.
        assert "orderpipe_outbox_backlog" not in text
    finally:
        assert worker.stop() == 0, worker.output()
