from __future__ import annotations

import json
import logging
import subprocess
import sys
import uuid
from datetime import timedelta
from pathlib import Path

import pytest
from django.utils import timezone

from orderpipe.logformat import JsonFormatter
from orders import metrics

pytestmark = pytest.mark.pure

ROOT = Path(__file__).resolve().parents[2]


def test_an_event_line_is_one_json_object_with_its_fields(caplog):
    caplog.set_level(logging.INFO, logger="orderpipe.events")
    order_id = str(uuid.uuid4())
    now = timezone.now()
    metrics.event_committed(
        order_id=order_id,
        kind="completed",
        seq=6,
        at=now,
        previous_at=now - timedelta(milliseconds=250),
        created_at=now - timedelta(seconds=2),
    )
    [record] = [r for r in caplog.records if r.name == "orderpipe.events"]
    line = JsonFormatter().format(record)
    assert "\n" not in line
    entry = json.loads(line)
    assert entry["logger"] == "orderpipe.events"
    assert entry["level"] == "INFO"
    assert entry["order_id"] == order_id
    assert entry["kind"] == "completed"
    assert entry["seq"] == 6
    assert entry["duration_ms"] == 250.0
    assert entry["end_to_end_ms"] == 2000.0
    assert entry["message"] == f"order {order_id} completed after 250.0 ms"
    assert entry["time"].endswith("+00:00")


def test_exceptions_and_unserialisable_extras_stay_on_one_line():
    try:
        raise ValueError("boom\nsecond line")
    except ValueError:
        record = logging.getLogger("x").makeRecord(
            "x", logging.ERROR, __file__, 1, "failed %s", ("here",), sys.exc_info(), extra={"order": uuid.UUID(int=1)}
        )
    line = JsonFormatter().format(record)
    assert "\n" not in line
    entry = json.loads(line)
    assert entry["message"] == "failed here"
    assert entry["order"] == "00000000-0000-0000-0000-000000000001"
    assert "ValueError: boom" in entry["exception"]


def test_log_format_json_switches_every_line_to_json():
    code = (
        "import django, logging; django.setup(); "
        "logging.getLogger('some.module').warning('hello %s', 'there', extra={'order_id': 'abc'})"
    )
    env = {"DJANGO_SETTINGS_MODULE": "orderpipe.settings", "DJANGO_DEBUG": "true", "LOG_FORMAT": "json", "PATH": ""}
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    [line] = result.stderr.strip().splitlines()
    entry = json.loads(line)
    assert (entry["logger"], entry["level"], entry["message"], entry["order_id"]) == (
        "some.module",
        "WARNING",
        "hello there",
        "abc",
    )


def run_django(code: str, **env: str) -> subprocess.CompletedProcess:
    env = {"DJANGO_SETTINGS_MODULE": "orderpipe.settings", "DJANGO_DEBUG": "true", "PATH": "", **env}
    return subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)


def test_the_example_email_backend_logs_one_json_line_per_email_without_its_content():
    """The worker's confirmation email (worker/processing.py sends it with send_mail), through the backend that
    .env.example configures for Compose: one JSON line, recipient masked, no body, nothing else printed."""
    example = dict(
        line.split("=", 1)
        for line in (ROOT / ".env.example").read_text().splitlines()
        if "=" in line and line[0] != "#"
    )
    code = (
        "import django; django.setup(); from django.core.mail import send_mail; "
        "send_mail('Your order 0f7ca056 is confirmed', "
        "'Thank you for your order.\\n\\n  2 x BOOK-001 at 25.00\\n\\nTotal charged: 50.00\\n', "
        "'orders@orderpipe.local', ['ada.lovelace@example.com'])"
    )
    result = run_django(code, EMAIL_BACKEND=example["EMAIL_BACKEND"], LOG_FORMAT="json")
    assert result.returncode == 0, result.stderr
    lines = (result.stdout + result.stderr).strip().splitlines()
    entries = [json.loads(line) for line in lines]  # every line is JSON
    [email] = [e for e in entries if e["logger"] == "orderpipe.mail"]
    assert email["email_to"] == ["a***@example.com"]
    assert email["email_subject"] == "Your order 0f7ca056 is confirmed"
    output = result.stdout + result.stderr
    for private in ("ada.lovelace", "BOOK-001", "50.00", "Thank you"):
        assert private not in output


def test_the_console_email_backend_is_refused_under_json_logs():
    result = run_django(
        "import django; django.setup()",
        EMAIL_BACKEND="django.core.mail.backends.console.EmailBackend",
        LOG_FORMAT="json",
    )
    assert result.returncode != 0
    assert "EMAIL_BACKEND=console prints whole emails" in result.stderr
