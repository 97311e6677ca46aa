"""Source citations resolve inside the repository.

Constants and rules taken from papers cite a section of docs/references.md as
`docs/references.md#<anchor>`, where <anchor> is the id GitHub generates for a heading
(lowercase; punctuation other than `-` and `_` dropped; each space becomes `-`; a
repeated heading gets `-1`, `-2`, ...). These tests check that every such anchor, and
every other `<page>.md#<anchor>` link to a page of the repository, names a real
heading, and that nothing cites notes or an issue tracker that a clone does not have.
Pure text scanning: no imports of the packages, well under a second.
"""
from __future__ import annotations

import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
REFERENCES = REPO / "docs" / "references.md"
# Where citations live. `study/` and `scripts/` are scanned when they exist.
SCAN = ("scaling", "sweeps", "analysis", "study", "tests", "docs", "bench", "scripts",
        "README.md", "Makefile", "pyproject.toml")
SUFFIXES = {".py", ".md", ".toml", ".sh", ".txt", ".cfg", ".ini", ".yaml", ".yml"}
SKIP_PARTS = {"__pycache__", ".venv", "img", "golden"}

# Citations a clone cannot follow: the project's private notes (spelled in pieces so
# this file does not match itself) and numbered issues of a tracker.
PRIVATE_NOTES = re.compile(r"\b(?:" + "REFERENCE" + r"|" + "DESIGN" + r")\.md\b")
ISSUE_NUMBER = re.compile(r"\b[Ii]ssues?\s+#?\d+")
REFERENCE_ANCHOR = re.compile(r"references\.md#([\w-]+)")
PAGE_ANCHOR = re.compile(r"([\w./-]*\.md)#([\w-]+)")


def scanned_files() -> list[Path]:
    files = []
    for name in SCAN:
        path = REPO / name
        if path.is_file():
            files.append(path)
        elif path.is_dir():
            files.extend(p for p in sorted(path.rglob("*"))
                         if p.is_file() and (p.suffix in SUFFIXES or p.name == "Makefile")
                         and not SKIP_PARTS & set(p.relative_to(REPO).parts))
    return files


def slug(heading: str) -> str:
    """GitHub's anchor for a heading's text."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def anchors(page: Path) -> set[str]:
    """The anchors of a Markdown page's headings (fenced code blocks skipped)."""
    found: set[str] = set()
    seen: dict[str, int] = {}
    fenced = False
    for line in page.read_text(encoding="utf-8").splitlines():
        if line.lstrip().startswith(("```", "~~~")):
            fenced = not fenced
            continue
        m = None if fenced else re.match(r"^#{1,6}\s+(.*?)\s*#*\s*$", line)
        if m:
            base = slug(m.group(1))
            n = seen.get(base, 0)
            seen[base] = n + 1
            found.add(base if n == 0 else f"{base}-{n}")
    return found


def citations(pattern: re.Pattern) -> list[tuple[str, int, re.Match]]:
    out = []
    for path in scanned_files():
        for n, line in enumerate(path.read_text(encoding="utf-8", errors="replace").splitlines(), 1):
            out.extend((f"{path.relative_to(REPO)}:{n}", n, m) for m in pattern.finditer(line))
    return out


def test_slug_follows_githubs_rule():
    assert slug("Plus variants and the bottleneck rounding rule") == "plus-variants-and-the-bottleneck-rounding-rule"
    assert slug("Claim / lease protocol") == "claim--lease-protocol"
    assert slug("Budget -> steps (the stated rule)") == "budget---steps-the-stated-rule"
    assert slug("Real data: Fashion-MNIST") == "real-data-fashion-mnist"
    assert slug("`scaling data prepare`") == "scaling-data-prepare"


def test_every_references_anchor_is_a_heading():
    have = anchors(REFERENCES)
    cited = citations(REFERENCE_ANCHOR)
    assert len(cited) >= 50, "the citation scan found almost nothing: is the pattern broken?"
    missing = sorted({f"{where}: #{m.group(1)}" for where, _, m in cited if m.group(1) not in have})
    assert not missing, "anchors with no heading in docs/references.md:\n" + "\n".join(missing)


def _target(where: str, path: str) -> Path | None:
    """The page a `<page>.md#<anchor>` citation in file `where` points at, if it exists."""
    citing = REPO / where.rsplit(":", 1)[0]
    for candidate in (citing.parent / path, REPO / path, REPO / "docs" / Path(path).name):
        if candidate.is_file():
            return candidate.resolve()
    return None


def test_every_page_anchor_is_a_heading():
    """`units.md#...`, `docs/sweeps.md#...`, `../docs/references.md#...`: the page exists
    and has the heading."""
    problems = []
    cache: dict[Path, set[str]] = {}
    for where, _, m in citations(PAGE_ANCHOR):
        page = _target(where, m.group(1))
        if page is None:
            problems.append(f"{where}: no page {m.group(1)}")
            continue
        if page not in cache:
            cache[page] = anchors(page)
        if m.group(2) not in cache[page]:
            problems.append(f"{where}: {m.group(1)} has no heading #{m.group(2)}")
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("pattern", [PRIVATE_NOTES, ISSUE_NUMBER], ids=["private-notes", "issue-numbers"])
def test_no_citations_a_clone_cannot_follow(pattern):
    hits = [f"{where}: {m.group(0)}" for where, _, m in citations(pattern)]
    assert not hits, ("cite a section of docs/references.md (or the docs page that states "
                      "the rule) instead:\n" + "\n".join(hits))


def test_references_page_cites_its_sources():
    """Every source tag used in the code is listed in the Sources section."""
    text = REFERENCES.read_text(encoding="utf-8")
    sources = text.split("## Sources", 1)[1].split("\n## ", 1)[0]
    listed = set(re.findall(r"^\| (\[[A-Za-z]+\d{2}\]) \|", sources, flags=re.M))
    used = {m.group(0) for _, _, m in citations(re.compile(r"\[[A-Z][a-z]{0,2}\d{2}\]"))}
    assert used <= listed, sorted(used - listed)
    assert len(listed) == 14
