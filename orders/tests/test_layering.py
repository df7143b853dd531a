"""Dependency direction: the project package `orderpipe` (settings, urls, dashboard) → `worker` (transport and its
telemetry) → `orders` (the domain). `orders` imports neither `worker` nor `orderpipe`, and only the worker speaks
AMQP (pika); `worker` never imports `orderpipe`.

The tests under orders/tests and worker/tests are left out: some drive an order through the worker end to end, or
read what the dashboard shows.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

pytestmark = pytest.mark.pure

ORDERS = Path(__file__).resolve().parents[1]
ROOT = ORDERS.parent
WORKER = ROOT / "worker"
FORBIDDEN = ("worker", "pika", "orderpipe")
FORBIDDEN_IN_WORKER = ("orderpipe",)
# Modules allowed one of the imports above, each with the reason. (`django.conf.settings` is always fine: it is
# Django's, not an import of orderpipe/settings.py.)
EXCEPTIONS: dict[str, str] = {}


def modules(package: Path = ORDERS) -> list[Path]:
    return sorted(path for path in package.rglob("*.py") if package / "tests" not in path.parents)


def imported(path: Path) -> set[str]:
    """Every module `path` imports, at the top or inside a function."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


def forbidden(names: set[str], packages: tuple[str, ...] = FORBIDDEN) -> list[str]:
    return sorted(name for name in names if name.split(".")[0] in packages)


def test_it_sees_every_module_of_orders():
    found = {path.relative_to(ORDERS).as_posix() for path in modules()}
    assert {"steps.py", "services.py", "journal.py", "management/commands/seed_demo.py"} <= found
    assert not any(name.startswith("tests/") for name in found)


def test_the_check_catches_a_worker_import_wherever_it_is(tmp_path):
    module = tmp_path / "example.py"
    module.write_text(
        "import json\n\ndef later():\n    from worker.processing import Processor\n    import pika\n"
        "    from orderpipe.dashboard import feed\n"
    )
    assert forbidden(imported(module)) == ["orderpipe.dashboard", "pika", "worker.processing"]
    assert forbidden(imported(module), FORBIDDEN_IN_WORKER) == ["orderpipe.dashboard"]


@pytest.mark.parametrize("path", modules(), ids=lambda path: path.relative_to(ORDERS).as_posix())
def test_no_module_in_orders_imports_worker_pika_or_the_project(path):
    name = path.relative_to(ROOT).as_posix()
    if name in EXCEPTIONS:
        pytest.skip(EXCEPTIONS[name])
    assert forbidden(imported(path)) == [], f"{name} imports the worker side or the project package"


def test_it_sees_every_module_of_worker():
    found = {path.relative_to(WORKER).as_posix() for path in modules(WORKER)}
    assert {"consumer.py", "models.py", "dependencies.py", "management/commands/run_worker.py"} <= found


@pytest.mark.parametrize("path", modules(WORKER), ids=lambda path: path.relative_to(WORKER).as_posix())
def test_no_module_in_worker_imports_the_project(path):
    name = path.relative_to(ROOT).as_posix()
    if name in EXCEPTIONS:
        pytest.skip(EXCEPTIONS[name])
    assert forbidden(imported(path), FORBIDDEN_IN_WORKER) == [], f"{name} imports upward, into orderpipe"
