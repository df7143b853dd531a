from __future__ import annotations

import json
import logging
import subprocess
import sys
import uuid
from datetime import timedelta
from pathlib import Path

from django.utils import timezone

from orderpipe.logformat import JsonFormatter
from orders import metrics

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
