"""Dependency direction: `worker` imports `orders`, never the other way, and only the worker speaks AMQP (pika);
and the README names only files that exist.

The tests under orders/tests are left out: some drive an order through the worker's Processor end to end.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ORDERS = Path(__file__).resolve().parents[1]
FORBIDDEN = ("worker", "pika")


def modules() -> list[Path]:
    return sorted(path for path in ORDERS.rglob("*.py") if ORDERS / "tests" not in path.parents)


def imported(path: Path) -> set[str]:
    """Every module `path` imports, at the top or inside a function."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


def forbidden(names: set[str]) -> list[str]:
    return sorted(name for name in names if name.split(".")[0] in FORBIDDEN)


def test_it_sees_every_module_of_orders():
    found = {path.relative_to(ORDERS).as_posix() for path in modules()}
    assert {"steps.py", "services.py", "journal.py", "management/commands/seed_demo.py"} <= found
    assert not any(name.startswith("tests/") for name in found)


def test_the_check_catches_a_worker_import_wherever_it_is(tmp_path):
    module = tmp_path / "example.py"
    module.write_text("import json\n\ndef later():\n    from worker.processing import Processor\n    import pika\n")
    assert forbidden(imported(module)) == ["pika", "worker.processing"]


@pytest.mark.parametrize("path", modules(), ids=lambda path: path.relative_to(ORDERS).as_posix())
def test_no_module_in_orders_imports_worker_or_pika(path):
    assert forbidden(imported(path)) == [], f"orders/{path.relative_to(ORDERS)} imports the worker side"


def test_the_readme_names_only_files_that_exist():
    root = ORDERS.parent
    named = set(re.findall(r"`([\w./-]+\.(?:py|yml|toml|html|js|css|md))`", (root / "README.md").read_text()))
    assert "orders/steps.py" in named  # the code tour is read
    assert sorted(name for name in named if not (root / name).exists()) == []
