"""Module docstrings stay short: a few lines saying what the module does. The reasons behind the less obvious parts
are in docs/10-design-notes.md, and history is in the commits. Tests and migrations are left out.
"""

from __future__ import annotations

import ast
import os
from pathlib import Path

import pytest

pytestmark = pytest.mark.pure

ROOT = Path(__file__).resolve().parents[2]
MAX_LINES = 9
# Never walked: what is not a module of the project (tests, migrations) or not in the repository (hidden directories
# such as .git and .venv are skipped too).
SKIPPED = {"tests", "migrations", "__pycache__", "node_modules", "staticfiles", "var", "artifacts"}


def modules(root: Path = ROOT) -> list[Path]:
    """Every .py file under `root`, outside the SKIPPED and hidden directories."""
    found = []
    for directory, subdirectories, files in os.walk(root):
        subdirectories[:] = [name for name in subdirectories if name not in SKIPPED and not name.startswith(".")]
        found.extend(Path(directory) / name for name in files if name.endswith(".py"))
    return sorted(found)


def docstring_lines(path: Path) -> int:
    """The lines of the module's docstring as written (a closing quote on a line of its own not counted); 0 if none."""
    docstring = ast.get_docstring(ast.parse(path.read_text(), filename=str(path)), clean=False)
    return len(docstring.splitlines()) if docstring else 0


def too_long(paths: list[Path], root: Path = ROOT) -> dict[str, int]:
    """The modules among `paths` whose docstring is over MAX_LINES, with its length."""
    lengths = {path.relative_to(root).as_posix(): docstring_lines(path) for path in paths}
    return {name: length for name, length in lengths.items() if length > MAX_LINES}


def test_it_sees_every_module():
    found = {path.relative_to(ROOT).as_posix() for path in modules()}
    assert {"gunicorn.conf.py", "manage.py", "bench/run.py", "worker/topology.py", "orders/sandbox/faults.py"} <= found
    assert not any({"tests", "migrations"} & set(name.split("/")) for name in found)


def test_the_check_catches_a_long_docstring(tmp_path):
    (tmp_path / "short.py").write_text('"""One line.\n\nAnd a second paragraph.\n"""\n\nX = 1\n')
    (tmp_path / "long.py").write_text('"""' + "\n".join(f"Line {n}." for n in range(1, 11)) + '\n"""\n')
    (tmp_path / "none.py").write_text("X = 1\n")
    (tmp_path / "tests").mkdir()
    (tmp_path / "tests" / "test_long.py").write_text((tmp_path / "long.py").read_text())
    assert [docstring_lines(path) for path in modules(tmp_path)] == [10, 0, 3]
    assert too_long(modules(tmp_path), root=tmp_path) == {"long.py": 10}


def test_module_docstrings_are_a_few_lines():
    found = too_long(modules())
    assert found == {}, (
        f"module docstrings over {MAX_LINES} lines: say what the module does in a few lines, and move the reasons to "
        "docs/10-design-notes.md"
    )
