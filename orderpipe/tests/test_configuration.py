"""The configuration table (docs/06-configuration.md) is the list of every environment variable the project reads:
a variable read in orderpipe/settings.py or gunicorn.conf.py that the table does not list (or one the table lists
that nothing reads) fails here. The reads are found in the code's syntax tree, not by running it."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

pytestmark = pytest.mark.pure

ROOT = Path(__file__).resolve().parents[2]
READERS = ["orderpipe/settings.py", "gunicorn.conf.py"]
ENV_HELPERS = {"env_str", "env_bool", "env_int", "env_float", "env_list", "env_rate"}


def _is_os_environ(node: ast.expr) -> bool:
    return isinstance(node, ast.Attribute) and node.attr == "environ" and ast.unparse(node.value) == "os"


def _variable_name(node: ast.AST) -> ast.expr | None:
    """The expression naming the variable, if `node` reads the environment."""
    if isinstance(node, ast.Call):
        func = node.func
        if isinstance(func, ast.Name) and func.id in ENV_HELPERS and node.args:
            return node.args[0]
        os_environ_get = isinstance(func, ast.Attribute) and func.attr == "get" and _is_os_environ(func.value)
        if (os_environ_get or ast.unparse(func) == "os.getenv") and node.args:
            return node.args[0]
    if isinstance(node, ast.Subscript) and _is_os_environ(node.value) and isinstance(node.ctx, ast.Load):
        return node.slice
    return None


def env_reads(path: Path) -> set[str]:
    """Every variable the module reads. A read through a name that is not a string literal is allowed only inside
    the env_* helpers themselves, so every variable stays visible here."""
    tree = ast.parse(path.read_text(), filename=str(path))
    helpers = {node for node in ast.walk(tree) if isinstance(node, ast.FunctionDef) and node.name in ENV_HELPERS}
    inside_helpers = {id(child) for helper in helpers for child in ast.walk(helper)}
    names = set()
    for node in ast.walk(tree):
        name = _variable_name(node)
        if name is None:
            continue
        if isinstance(name, ast.Constant) and isinstance(name.value, str):
            names.add(name.value)
        else:
            assert id(node) in inside_helpers, f"{path.name}:{node.lineno} reads a variable named by an expression"
    return names


def documented_table() -> set[str]:
    """The variables named in the first column of the table in docs/06-configuration.md."""
    page = (ROOT / "docs" / "06-configuration.md").read_text()
    rows = [line for line in page.splitlines() if line.startswith("| `")]
    return {name for row in rows for name in re.findall(r"`([A-Z][A-Z0-9_]*)`", row.split("|")[1])}


def test_the_env_reads_are_found():
    settings_reads = env_reads(ROOT / "orderpipe/settings.py")
    assert {"DATABASE_URL", "AMQP_URL", "REDIS_URL", "DJANGO_DEBUG"} <= settings_reads
    assert {"WEB_WORKERS", "PORT"} <= env_reads(ROOT / "gunicorn.conf.py")


def test_the_documented_table_lists_every_variable_read_and_nothing_else():
    read = set().union(*(env_reads(ROOT / path) for path in READERS))
    listed = documented_table()
    assert not read - listed, f"read but missing from docs/06-configuration.md: {sorted(read - listed)}"
    assert not listed - read, f"in docs/06-configuration.md but read by nothing: {sorted(listed - read)}"


def test_settings_read_the_environment_only_through_the_helpers():
    """os.environ elsewhere in settings would be a read the helpers' checks do not cover."""
    source = (ROOT / "orderpipe/settings.py").read_text()
    tree = ast.parse(source)
    helpers = [node for node in tree.body if isinstance(node, ast.FunctionDef) and node.name in ENV_HELPERS]
    inside = {id(child) for helper in helpers for child in ast.walk(helper)}
    stray = [node.lineno for node in ast.walk(tree) if _is_os_environ(node) and id(node) not in inside]
    assert not stray, f"settings.py reads os.environ outside the env_* helpers at lines {stray}"
