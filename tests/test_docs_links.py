"""Every relative link and ``#anchor`` in README.md and docs/*.md resolves: the file exists,
the anchor is a heading of it (as GitHub makes anchors from headings), and a link whose text
is code (an endpoint, a function) lands on a page that mentions it, so the docs never send a
reader to a page or section that is not there, or that is about something else."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]

_LINK = re.compile(r"(?<!!)\[((?:[^\]\[]|\[[^\]]*\])*)\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")
_FENCE = re.compile(r"^(```|~~~).*?^\1", re.M | re.S)


def anchors(page: Path) -> set[str]:
    """The anchors GitHub gives the headings of ``page`` (lowercase, punctuation dropped,
    spaces as hyphens, ``-1``, ``-2`` for repeats), plus explicit ``<a name=...>``/``id=``."""
    text = _FENCE.sub("", page.read_text(encoding="utf-8"))
    seen: dict[str, int] = {}
    out: set[str] = set(re.findall(r"<a\s+(?:name|id)=\"([^\"]+)\"", text))
    for heading in re.findall(r"^#{1,6}\s+(.+?)\s*#*\s*$", text, re.M):
        heading = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link keeps its text
        slug = re.sub(r"[^\w\- ]", "", heading.lower()).replace(" ", "-")
        n = seen.get(slug, 0)
        seen[slug] = n + 1
        out.add(slug if n == 0 else f"{slug}-{n}")
    return out


def links(page: Path) -> list[tuple[str, str]]:
    """``(text, target)`` of the relative links of ``page`` outside fenced code blocks."""
    text = _FENCE.sub("", page.read_text(encoding="utf-8"))
    return [(t, u) for t, u in _LINK.findall(text) if not re.match(r"^[a-z][a-z0-9+.-]*:", u, re.I)]


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_and_anchors_resolve(page: Path) -> None:
    """Each relative link of the page names an existing file, and its anchor a heading there."""
    broken = []
    for text, target in links(page):
        path, _, anchor = target.partition("#")
        dest = (page.parent / path).resolve() if path else page
        code = re.fullmatch(r"`([^`]+)`", text.strip())
        if not dest.exists():
            broken.append(f"{target}: no such file")
        elif anchor and dest.suffix == ".md" and anchor not in anchors(dest):
            broken.append(f"{target}: no heading #{anchor} in {dest.relative_to(ROOT)}")
        elif code and dest.is_file() and code.group(1) not in dest.read_text(encoding="utf-8"):
            broken.append(f"[{text}]({target}): {dest.relative_to(ROOT)} never mentions {code.group(1)}")
    assert not broken, f"{page.relative_to(ROOT)}: " + "; ".join(broken)


def test_the_checker_sees_a_broken_anchor(tmp_path: Path) -> None:
    """The checker reads headings as GitHub does and finds the links it must check (not those
    in code blocks, not absolute URLs), so a green run means something."""
    page = tmp_path / "a.md"
    page.write_text("# Top `code` & more\n\n## Top code  more\n[x](#top-code--more) [y](#nope) [`z`](b.md)\n"
                    "```\n[in](code.md)\n```\n[web](https://example.invalid/)\n")
    assert anchors(page) == {"top-code--more", "top-code--more-1"}
    assert links(page) == [("x", "#top-code--more"), ("y", "#nope"), ("`z`", "b.md")]
