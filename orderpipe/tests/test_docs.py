"""The README and the pages under docs/: every relative link and every repository path they mention exists, the
README fits on one screen, and the index lists every page.

A path is a word in an inline code span that names something in the repository: it has a known file extension, or
it has a slash and starts with one of the repository's top-level entries. Paths under what .gitignore keeps out of
the repository (`artifacts/`, `var/`, `.venv` ...) are made by running the project, so they are not checked.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

pytestmark = pytest.mark.pure

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs"
PAGES = [ROOT / "README.md", *sorted(DOCS.glob("*.md"))]
README_MAX_LINES = 150
FIRST_COMMAND_BY_LINE = 40

EXTENSIONS = ("py", "md", "yml", "yaml", "toml", "html", "js", "css", "json", "lua", "sh", "cfg", "txt")
FENCE = re.compile(r"^```.*?^```[ \t]*$", re.MULTILINE | re.DOTALL)
CODE_SPAN = re.compile(r"`([^`]+)`")
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")


def prose(text: str) -> str:
    """The page without its fenced code blocks (their lines are kept, empty, so line numbers still match)."""
    return FENCE.sub(lambda match: "\n" * match.group(0).count("\n"), text)


def ignored_top_level() -> set[str]:
    """The top-level names .gitignore keeps out of the repository (`/var/`, `.venv`, `/node_modules/` ...)."""
    names = set()
    for line in (ROOT / ".gitignore").read_text().splitlines():
        name = line.strip().strip("/")
        if name and "/" not in name and not any(char in name for char in "*?[!#"):
            names.add(name)
    return names


def paths_named(text: str) -> set[str]:
    """The words of the page's inline code spans that look like repository paths."""
    top_level = {entry.name for entry in ROOT.iterdir()} - ignored_top_level() - {".git"}
    found = set()
    for span in CODE_SPAN.findall(prose(text)):
        for word in span.split():
            word = word.split("=")[-1].lstrip("$(\"'").rstrip(")\"',;:")
            if not word or word.startswith("/") or "://" in word or re.search(r"[<>*$…{}\[\]]", word):
                continue
            first = word.split("/", 1)[0]
            if first in ignored_top_level():
                continue
            if ("/" in word and first in top_level) or ("." in word and word.rsplit(".", 1)[-1] in EXTENSIONS):
                found.add(word)
    return found


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def anchors(page: Path) -> set[str]:
    return {slug(line.lstrip("#")) for line in prose(page.read_text()).splitlines() if line.startswith("#")}


def broken_links(page: Path, root: Path = ROOT) -> list[str]:
    broken = []
    for target in LINK.findall(prose(page.read_text())):
        if re.match(r"[a-z]+:", target):  # http:, https:, mailto:
            continue
        path, _, anchor = target.partition("#")
        resolved = (page.parent / path).resolve() if path else page
        missing = not resolved.exists() or not resolved.is_relative_to(root)
        if missing or (anchor and resolved.suffix == ".md" and anchor not in anchors(resolved)):
            broken.append(target)
    return broken


def test_there_are_pages_to_check():
    assert (DOCS / "README.md") in PAGES
    assert len(PAGES) >= 3


@pytest.mark.parametrize("page", PAGES, ids=lambda page: page.relative_to(ROOT).as_posix())
def test_every_relative_link_leads_somewhere(page):
    assert broken_links(page) == [], f"{page.relative_to(ROOT)} links to what does not exist"


@pytest.mark.parametrize("page", PAGES, ids=lambda page: page.relative_to(ROOT).as_posix())
def test_every_repository_path_exists(page):
    named = paths_named(page.read_text())
    assert sorted(name for name in named if not (ROOT / name).exists()) == [], page.relative_to(ROOT)


def test_the_code_tour_is_checked():
    named = paths_named((DOCS / "01-architecture.md").read_text())
    assert {"orders/api.py", "worker/relay.py", "orders/steps.py", "orders/cache.py"} <= named


def test_the_checks_catch_what_is_missing(tmp_path):
    page = tmp_path / "page.md"
    page.write_text("# Title\n\nSee [here](nowhere.md), [there](#title), [away](#elsewhere) and `orders/nowhere.py`.\n")
    assert broken_links(page, root=tmp_path) == ["nowhere.md", "#elsewhere"]
    assert broken_links(page) == ["nowhere.md", "#title", "#elsewhere"]  # outside the repository
    assert "orders/nowhere.py" in paths_named(page.read_text())
    assert paths_named("`artifacts/screenshots/` `/api/orders/<id>/` `make run` `docker-compose.yml`") == {
        "docker-compose.yml"
    }


def test_the_readme_fits_on_one_screen():
    lines = (ROOT / "README.md").read_text().splitlines()
    assert len(lines) <= README_MAX_LINES
    first_fence = next(n for n, line in enumerate(lines, start=1) if line.startswith("```"))
    assert first_fence + 1 <= FIRST_COMMAND_BY_LINE, "the first command comes too late in the README"


def test_the_index_lists_every_page():
    index = (DOCS / "README.md").read_text()
    linked = {target.partition("#")[0] for target in LINK.findall(index)}
    assert sorted(page.name for page in DOCS.glob("*.md") if page.name != "README.md" and page.name not in linked) == []
