"""Without Chromium the browser tests skip on a laptop and fail under CI (worker/tests/conftest.py)."""

from __future__ import annotations

import pytest

from worker.tests.conftest import require_chromium

pytestmark = pytest.mark.pure


@pytest.mark.parametrize("ci", ["true", "1"])
def test_a_missing_chromium_fails_under_ci(monkeypatch, tmp_path, ci):
    monkeypatch.setenv("CI", ci)
    with pytest.raises(pytest.fail.Exception, match="CI needs the browser tests"):
        require_chromium(str(tmp_path / "no-chromium"))


def test_a_missing_chromium_skips_outside_ci(monkeypatch, tmp_path):
    monkeypatch.delenv("CI", raising=False)
    with pytest.raises(pytest.skip.Exception, match="no Chromium at"):
        require_chromium(str(tmp_path / "no-chromium"))


def test_an_installed_chromium_lets_the_browser_tests_run(monkeypatch, tmp_path):
    monkeypatch.setenv("CI", "true")
    chromium = tmp_path / "chromium"
    chromium.touch()
    require_chromium(str(chromium))  # returns: nothing to skip or fail (Playwright is a dev dependency)


def test_every_browser_module_asks_require_chromium():
    """A browser module that skipped on its own when Chromium is missing would pass CI with its tests skipped."""
    from pathlib import Path

    here = Path(__file__).parent
    modules = sorted(here.glob("test_browser*.py"))
    assert len(modules) >= 9, [path.name for path in modules]
    for path in modules:
        source = path.read_text()
        assert "require_chromium()" in source, f"{path.name} does not call require_chromium()"
        assert 'pytest.skip(f"no Chromium' not in source, f"{path.name} skips on its own"
