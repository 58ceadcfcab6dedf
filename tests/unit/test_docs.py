"""The README stays a front page, its links into docs/ resolve, and docs/layout.md maps every module (and no other).

Fast: reads text files only. The module map is checked against the tree itself, so a module
added, moved or split without a line in docs/layout.md fails here, not in a reader's hands.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"
DOCS = ROOT / "docs"
README_LIMIT = 8000  # characters: about the size of TRL's and torchtune's front pages

LINK = re.compile(r"\]\(([^)\s]+)\)")  # the target of a markdown link: [text](target)


def _slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces as hyphens."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def _anchors(page: Path) -> set[str]:
    text = re.sub(r"```.*?```", "", page.read_text(encoding="utf-8"), flags=re.S)  # not comments in code
    return {_slug(m) for m in re.findall(r"^#{1,6} (.+)$", text, flags=re.M)}


def _local_links(page: Path) -> list[tuple[str, Path, str]]:
    """(link as written, file it names, anchor or "") for every link that is not a URL."""
    text = re.sub(r"```.*?```", "", page.read_text(encoding="utf-8"), flags=re.S)
    found = []
    for target in LINK.findall(text):
        if re.match(r"^[a-z][a-z0-9+.-]*:", target):  # http:, https:, mailto:
            continue
        path, _, anchor = target.partition("#")
        found.append((target, (page.parent / path).resolve() if path else page, anchor))
    return found


def test_readme_is_a_front_page():
    size = len(README.read_text(encoding="utf-8"))
    assert size < README_LIMIT, f"README.md has {size} characters (limit {README_LIMIT}): move depth into docs/"


def test_readme_links_into_docs_exist():
    links = [(target, path, anchor) for target, path, anchor in _local_links(README) if target.startswith("docs/")]
    assert links, "the README links to no docs/ page"
    for target, path, anchor in links:
        assert path.is_file(), f"README.md links to {target}, which does not exist"
        if anchor:
            assert anchor in _anchors(path), f"README.md links to {target}: no such heading in {path.name}"


@pytest.mark.parametrize("page", sorted(DOCS.glob("*.md")), ids=lambda p: p.name)
def test_docs_links_resolve(page):
    for target, path, anchor in _local_links(page):
        assert path.exists(), f"docs/{page.name} links to {target}, which does not exist"
        if anchor and path.suffix == ".md":
            assert anchor in _anchors(path), f"docs/{page.name} links to {target}: no such heading in {path.name}"


def test_layout_names_every_module():
    """Every module under conf/, flows/ and tasks/ has its path in docs/layout.md (a package's
    __init__.py is named by its folder, `tasks/generation/`)."""
    layout = (DOCS / "layout.md").read_text(encoding="utf-8")
    modules = sorted(p.relative_to(ROOT) for top in ("conf", "flows", "tasks") for p in (ROOT / top).rglob("*.py"))
    assert modules
    missing = []
    for module in modules:
        name = f"{module.parent.as_posix()}/" if module.name == "__init__.py" else module.as_posix()
        if f"`{name}`" not in layout:
            missing.append(name)
    assert not missing, f"docs/layout.md does not name {', '.join(missing)}: add one line per module"


def test_layout_names_no_missing_module():
    """A line for a module that was moved or merged away is stale too."""
    layout = (DOCS / "layout.md").read_text(encoding="utf-8")
    named = re.findall(r"`((?:conf|flows|tasks)/[\w/]*\.py)`", layout)
    assert named
    gone = [path for path in named if not (ROOT / path).is_file()]
    assert not gone, f"docs/layout.md names {', '.join(gone)}, which no longer exist: update the map"
