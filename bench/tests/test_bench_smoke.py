"""`make bench` on a tiny scale: every measurement runs (servers, relay, workers, raw baselines) and the table has
every row. The figures themselves mean nothing at this scale."""

from __future__ import annotations

import shutil

import pytest

from bench import run as bench

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]


@pytest.mark.skipif(shutil.which("wrk") is None, reason="wrk is not installed (make bench installs it)")
def test_bench_produces_every_row(settings, tmp_path):
    # Its own queue and key prefix inside the test run's, so its cleanup touches nothing another test uses.
    settings.ORDERPIPE_PREFIX = f"{settings.ORDERPIPE_PREFIX}-bench"
    report = bench.run(scale=bench.SMOKE, target=bench.current_target(tmp_path))

    settings_of = [(row.measurement, row.setting) for row in report.rows]
    for server in bench.SERVERS:
        for connections in bench.SMOKE.connections:
            assert any(
                m.startswith("API accept")
                and s.startswith(bench.SERVER_LABELS[server])
                and s.endswith(f"{connections} conns")
                for m, s in settings_of
            ), (server, connections)
    drains = [row for row in report.rows if row.measurement.startswith("pipeline")]
    # Each drain row reports the mean batch its workers ran (at least 1: a batch of one).
    for row, workers in zip(drains, ["relay + 1 worker", "relay + 2 workers", "relay + 4 workers"], strict=True):
        setting, batch = row.setting.split(", batch ")
        assert setting == workers and float(batch) >= 1, row
    for row in drains:  # CPU per order by process, measured (the workers did work) and printed
        assert set(row.cpu) == set(bench.CPU_GROUPS), row
        assert row.cpu["workers"] > 0, row
        assert all(f"{name} " in row.note for name in bench.CPU_GROUPS), row
    assert any(m.startswith("end to end") for m, _ in settings_of)
    relayed = [row for row in report.rows if row.measurement.startswith("relay only")]
    assert [row.setting.startswith("one confirm awaited per row") for row in relayed] == [True, False]
    for row in relayed:  # each beside its raw pika baseline, with the relay's CPU per row measured
        assert row.ratio is not None and row.cpu["relay"] > 0 and "CPU ms/row: relay " in row.note, row
    assert sum(m == "baseline: raw psycopg INSERT tx" for m, _ in settings_of) == len(bench.SMOKE.connections)
    assert sum(m == "baseline: raw pika publish" for m, _ in settings_of) == 2  # confirm each, windowed
    assert any(m == "baseline: raw pika consume" for m, _ in settings_of)
    for row in report.rows:
        assert row.rate and row.rate > 0, row
        if row.measurement.startswith("API"):
            assert row.cpu["server"] > 0 and "CPU ms/request: server" in row.note, row
        if row.measurement.startswith(("API", "pipeline")):
            assert row.ratio is not None and row.p99_ms is not None, row

    table = bench.render(report)
    assert table.count("\n") == len(report.rows) + 2
