"""The sequence diagram's table: an arrow for every event kind the code can emit, between lanes that exist."""

from __future__ import annotations

import re
from pathlib import Path

from orderpipe.dashboard.sequence import ARROWS, LANES, LOOPS, sequence_table
from orders.events import QueueSnapshot
from orders.models import EventKind

ROOT = Path(__file__).resolve().parents[3]
TONES = {"normal", "retry", "redelivery", "fail", "control"}


def emitted_kinds() -> set[str]:
    """The kinds the application's code names (`EventKind.X` outside the tests), read from the source."""
    names: set[str] = set()
    for package in ("orders", "worker", "orderpipe"):
        for path in (ROOT / package).rglob("*.py"):
            parts = path.relative_to(ROOT).parts  # not the checkout's own path, which may hold "tests"
            if "tests" in parts or "migrations" in parts:
                continue
            names.update(re.findall(r"\bEventKind\.([A-Z][A-Z_]+)\b", path.read_text()))
    return {EventKind[name].value for name in names}


def test_every_event_kind_has_a_row():
    assert {str(kind) for kind in ARROWS} == set(EventKind.values)


def test_every_kind_the_code_emits_has_a_row():
    emitted = emitted_kinds()
    assert EventKind.RESENT in emitted and EventKind.PUBLISH_FAILED in emitted  # the scan reaches worker/, orders/
    assert emitted - {str(kind) for kind in ARROWS} == set()


def test_the_steps_emit_kinds_with_rows():
    # The steps name their kinds in a table (orders/steps.py STEPS), not always as `EventKind.X` at a call site.
    from orders.steps import STEPS

    assert {step.kind for step in STEPS} <= set(ARROWS)


def test_every_arrow_goes_between_known_lanes():
    lanes = {lane.key for lane in LANES}
    assert len(lanes) == len(LANES) == 8
    for kind, rows in ARROWS.items():
        for arrow in rows:
            assert {arrow.source, arrow.target, *arrow.via} <= lanes, kind
            assert arrow.tone in TONES, kind
            assert arrow.label and len(arrow.label) <= 40, kind  # fits beside its arrow at 1280 px


def test_each_kinds_rows_end_with_a_default_and_select_by_snapshot_keys():
    queue_keys = set(QueueSnapshot.__annotations__)
    for kind, rows in ARROWS.items():
        assert rows[-1].when == "", kind
        for arrow in rows[:-1]:
            assert arrow.when in queue_keys, kind


def test_via_lanes_lie_between_the_ends():
    order = [lane.key for lane in LANES]
    for kind, rows in ARROWS.items():
        for arrow in rows:
            low, high = sorted((order.index(arrow.source), order.index(arrow.target)))
            assert all(low < order.index(lane) < high for lane in arrow.via), kind


def test_the_json_table_has_every_kind_and_lane_in_order():
    table = sequence_table()
    assert [lane["key"] for lane in table["lanes"]] == [lane.key for lane in LANES]
    assert set(table["arrows"]) == set(EventKind.values)
    assert table["arrows"]["published"][0] == {
        "source": "postgresql",
        "target": "rabbitmq",
        "label": "outbox row published, confirmed",
        "via": ["relay"],
        "when": "outbox_id",
        "tone": "normal",
        "loop": "",
    }
    assert table["loops"] == {"retry": ["retry_scheduled"], "redelivery": ["received", "redelivered"]}


def test_loops_are_closed_by_arrows_that_go_back_to_the_worker():
    closing = {arrow.loop: arrow for rows in ARROWS.values() for arrow in rows if arrow.loop}
    assert set(closing) == set(LOOPS)
    for name, arrow in closing.items():
        assert (arrow.source, arrow.target) == ("rabbitmq", "worker"), name
