"""The stand-in images' entrypoints (deploy/standins/), run with the server's programs replaced by scripts that record
their arguments: they must set a server up from the same variables as the official images do (bin/docker-check runs
them for real, in containers)."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

pytestmark = pytest.mark.pure

STANDINS = Path(__file__).resolve().parents[2] / "deploy" / "standins"
PROGRAMS = ["initdb", "pg_ctl", "createdb", "postgres"]


def run_postgres_entrypoint(tmp_path: Path, **env: str) -> list[str]:
    """Runs the PostgreSQL stand-in's entrypoint on an empty data directory; returns the commands it ran."""
    bin_dir, calls = tmp_path / "bin", tmp_path / "calls"
    bin_dir.mkdir()
    for program in PROGRAMS:
        stub = bin_dir / program
        stub.write_text(f'#!/bin/sh\necho "{program} $*" >> "{calls}"\n')
        stub.chmod(0o755)
    data = tmp_path / "data"
    data.mkdir()
    environment = {"PATH": f"{bin_dir}:{os.environ['PATH']}", "PGDATA": str(data), **env}
    subprocess.run(["sh", str(STANDINS / "postgres" / "entrypoint.sh")], env=environment, check=True, timeout=30)
    return calls.read_text().splitlines()


def test_postgres_database_named_after_the_user_by_default(tmp_path: Path) -> None:
    # docker-compose.yml's case: POSTGRES_DB equal to POSTGRES_USER (the official image's default), which initdb
    # alone does not create.
    calls = run_postgres_entrypoint(
        tmp_path, POSTGRES_USER="orderpipe", POSTGRES_PASSWORD="pw", POSTGRES_DB="orderpipe"
    )
    assert "createdb -U orderpipe -O orderpipe orderpipe" in calls
    (tmp_path / "default").mkdir()
    calls_default = run_postgres_entrypoint(tmp_path / "default", POSTGRES_USER="shop", POSTGRES_PASSWORD="pw")
    assert "createdb -U shop -O shop shop" in calls_default


def test_postgres_database_of_another_name(tmp_path: Path) -> None:
    calls = run_postgres_entrypoint(tmp_path, POSTGRES_USER="orderpipe", POSTGRES_PASSWORD="pw", POSTGRES_DB="shop")
    assert "createdb -U orderpipe -O orderpipe shop" in calls
    assert calls[-1].startswith("postgres -D ")


def test_postgres_database_postgres_is_initdbs_own(tmp_path: Path) -> None:
    calls = run_postgres_entrypoint(tmp_path, POSTGRES_USER="orderpipe", POSTGRES_PASSWORD="pw", POSTGRES_DB="postgres")
    assert not [call for call in calls if call.startswith("createdb")]
