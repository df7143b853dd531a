"""Invariants the application relies on are checks that raise, which `python -O` keeps; `assert` outside the tests
only narrows a type for mypy (`x is not None`, `isinstance(...)`, a bare name), where a failure would raise anyway."""

from __future__ import annotations

import ast
from datetime import UTC, datetime
from pathlib import Path

import pytest

from orderpipe.lessons.catalog import Action
from orders.failures import BrokenInvariant
from orders.journal import Move, transition_many
from orders.models import EventKind

pytestmark = pytest.mark.pure

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("orders", "worker", "orderpipe", "bench")


def _runtime_modules() -> list[Path]:
    return sorted(
        path
        for package in PACKAGES
        for path in (ROOT / package).rglob("*.py")
        if "tests" not in path.relative_to(ROOT).parts and "migrations" not in path.relative_to(ROOT).parts
    )


def _narrows_a_type(test: ast.expr) -> bool:
    if isinstance(test, ast.BoolOp) and isinstance(test.op, ast.And):
        return all(_narrows_a_type(value) for value in test.values)
    if isinstance(test, ast.Compare):
        return len(test.ops) == 1 and isinstance(test.ops[0], ast.IsNot) and _is_none(test.comparators[0])
    if isinstance(test, ast.Call):
        return isinstance(test.func, ast.Name) and test.func.id == "isinstance"
    return isinstance(test, ast.Name | ast.Attribute)


def _is_none(node: ast.expr) -> bool:
    return isinstance(node, ast.Constant) and node.value is None


def test_runtime_asserts_only_narrow_types():
    found = [
        f"{path.relative_to(ROOT)}:{node.lineno}: assert {ast.unparse(node.test)}"
        for path in _runtime_modules()
        for node in ast.walk(ast.parse(path.read_text(), str(path)))
        if isinstance(node, ast.Assert) and not _narrows_a_type(node.test)
    ]
    assert found == []


def _move(order_id: int, **changes: object) -> Move:
    return Move(
        order_id=order_id,
        from_status="processing",
        from_version=1,
        to="processing",
        changes=dict(changes),
        kind=EventKind.RECEIVED,
        message="",
        snapshot={},
    )


def test_one_batched_transition_refuses_moves_that_set_different_fields():
    with pytest.raises(BrokenInvariant, match="one list of fields"):
        transition_many([_move(1, step="reserved"), _move(2, failure_reason="x")], at=datetime.now(UTC))


def test_a_lesson_action_of_an_unknown_kind_is_refused():
    with pytest.raises(ValueError, match="unknown lesson action kind"):
        Action(label="Do it", kind="no such kind")
