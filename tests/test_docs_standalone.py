"""The repository's docs, docstrings, comments and configs stand alone: no references to spec files that are not in
the repository, and no "part A / part B" wording from how the work was once split."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PATTERN = re.compile(r"METHODS\.md|METHODS\s*§|LANDSCAPE(\.md)?|shared/reference|\b[Pp]art [AB]\b")
# Still being edited elsewhere (#17); remove an entry once its file is clean.
PENDING: set[str] = set()  # folders still to clean (none left)


def _files() -> list[Path]:
    out = [ROOT / "README.md"]
    for folder, suffixes in (("src", {".py"}), ("docs", {".md"}), ("benchmarks", {".py", ".md"}),
                             ("tests", {".py"}), ("configs", {".yaml", ".yml"})):
        out += [p for p in sorted((ROOT / folder).rglob("*")) if p.suffix in suffixes]
    return [p for p in out if p.is_file() and p != Path(__file__).resolve()]


def test_no_references_outside_the_repository():
    hits = []
    for path in _files():
        rel = path.relative_to(ROOT).as_posix()
        if any(rel.startswith(prefix + "/") for prefix in PENDING):
            continue
        for lineno, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
            if PATTERN.search(line):
                hits.append(f"{rel}:{lineno}: {line.strip()}")
    assert hits == []


def test_the_pattern_catches_the_old_wording():
    for text in ("(METHODS.md §3.9)", "METHODS §2.4", "LANDSCAPE.md §4.3", "part B's module", "(part A)"):
        assert PATTERN.search(text), text
    for text in ("METHODS = (\"pddm\", \"euclid\")", "default=list(METHODS)", "a part of the batch",
                 "in one piece (part a)"):
        assert not PATTERN.search(text), text


_LINK = re.compile(r"(?<!!)\[[^\]]*\]\(([^)\s]+)\)")


def _slug(heading: str) -> str:
    """A heading's anchor as GitHub makes it: lower case, punctuation other than ``-`` and ``_`` dropped, spaces
    turned into ``-``."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def _prose_lines(path: Path) -> list[tuple[int, str]]:
    """``(line number, line)`` outside fenced code blocks."""
    out, fenced = [], False
    for lineno, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if line.lstrip().startswith("```"):
            fenced = not fenced
            continue
        if not fenced:
            out.append((lineno, line))
    return out


def _anchors(path: Path) -> set[str]:
    seen: dict[str, int] = {}
    out = set()
    for _, line in _prose_lines(path):
        m = re.match(r"#{1,6}\s+(.*)", line)
        if m:
            slug = _slug(m.group(1))
            n = seen.get(slug, 0)
            seen[slug] = n + 1
            out.add(slug if n == 0 else f"{slug}-{n}")
    return out


def _broken_links(files: list[Path], root: Path = ROOT) -> list[str]:
    broken = []
    for path in files:
        for lineno, line in _prose_lines(path):
            for target in _LINK.findall(re.sub(r"`[^`]*`", "", line)):  # not inside inline code
                if re.match(r"[a-z][a-z0-9+.-]*:", target):  # https:, mailto:, ...
                    continue
                file_part, _, anchor = target.partition("#")
                dest = (path.parent / file_part).resolve() if file_part else path
                where = f"{path.relative_to(root).as_posix()}:{lineno}: {target}"
                if not dest.exists():
                    broken.append(f"{where} (no such file)")
                elif anchor and dest.suffix == ".md" and anchor not in _anchors(dest):
                    broken.append(f"{where} (no such heading)")
    return broken


def test_links_between_the_docs_resolve():
    """Every relative link of the README and docs/ names a file of the repository and, with ``#...``, one of its
    headings: a newcomer following a link lands where it says."""
    files = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
    assert _broken_links(files) == []


def test_the_link_check_catches_a_broken_link(tmp_path):
    page = tmp_path / "page.md"
    (tmp_path / "other.md").write_text("# Title\n\n## Speed on your CPU (measured 2026-12-05)\n", encoding="utf-8")
    page.write_text("[ok](other.md#speed-on-your-cpu-measured-2026-12-05) [top](other.md#title)\n"
                    "[gone](missing.md) [no heading](other.md#speed) `[code](not-a-link.md)`\n"
                    "```\n[fenced](also-not.md)\n```\n[web](https://example.org/x.md)\n", encoding="utf-8")
    broken = _broken_links([page], root=tmp_path)
    assert broken == ["page.md:2: missing.md (no such file)", "page.md:2: other.md#speed (no such heading)"]
