"""Every relative link and image in the repository's Markdown front door and docs resolves, anchors included."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCUMENTS = sorted(
    [ROOT / "README.md", *(ROOT / "docs").glob("*.md"), ROOT / "zoo" / "README.md", ROOT / "benchmarks" / "README.md"]
)

# `[text](target)` and `![alt](target)`, with an optional "title"; code spans and fences are removed first.
LINK = re.compile(r"!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
FENCE = re.compile(r"^(```|~~~).*?^\1", re.MULTILINE | re.DOTALL)
CODE_SPAN = re.compile(r"`[^`\n]*`")
HEADING = re.compile(r"^#{1,6}\s+(.*?)\s*#*\s*$", re.MULTILINE)
EXTERNAL = ("http://", "https://", "mailto:")


def _prose(text: str) -> str:
    """The Markdown without fenced code blocks and code spans, where brackets are not links."""
    return CODE_SPAN.sub("", FENCE.sub("", text))


def github_slug(heading: str) -> str:
    """GitHub's anchor for a heading: lowercase, punctuation other than '-' and spaces dropped, spaces -> '-'.

    >>> github_slug("Numerical safety: `NonFiniteGuard`")
    'numerical-safety-nonfiniteguard'
    >>> github_slug("Scale: DDP, mixed precision, many identities")
    'scale-ddp-mixed-precision-many-identities'
    """
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a linked heading's anchor is its text
    text = re.sub(r"[^\w\- ]", "", text.lower())
    return text.replace(" ", "-")


def anchors(path: Path) -> set[str]:
    """Every heading anchor of a Markdown file; repeated headings get -1, -2, ... as on GitHub."""
    seen: dict[str, int] = {}
    result = set()
    for heading in HEADING.findall(FENCE.sub("", path.read_text(encoding="utf-8"))):
        slug = github_slug(heading)
        count = seen.get(slug, 0)
        seen[slug] = count + 1
        result.add(slug if count == 0 else f"{slug}-{count}")
    return result


def broken_links(path: Path) -> list[str]:
    """The relative links of ``path`` whose file does not exist, or whose ``#anchor`` is no heading of its target."""
    problems = []
    for target in LINK.findall(_prose(path.read_text(encoding="utf-8"))):
        if target.startswith(EXTERNAL):
            continue
        file_part, _, anchor = target.partition("#")
        resolved = (path.parent / file_part).resolve() if file_part else path
        if not resolved.exists():
            problems.append(f"{target}: {resolved} does not exist")
            continue
        if anchor and resolved.is_file() and resolved.suffix == ".md" and anchor not in anchors(resolved):
            problems.append(f"{target}: no heading with anchor #{anchor} in {resolved.name}")
    return problems


def test_the_documents_exist_and_hold_links():
    assert (ROOT / "docs" / "heads.md") in DOCUMENTS
    assert len(DOCUMENTS) >= 14
    assert len(LINK.findall(_prose((ROOT / "README.md").read_text(encoding="utf-8")))) >= 14


@pytest.mark.parametrize("path", DOCUMENTS, ids=lambda path: str(path.relative_to(ROOT)))
def test_every_relative_link_resolves(path):
    assert broken_links(path) == []


def test_readme_links_every_docs_page():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    linked = {target.partition("#")[0] for target in LINK.findall(_prose(readme))}
    pages = {f"docs/{page.name}" for page in (ROOT / "docs").glob("*.md")}
    assert pages - linked == set()


def test_a_broken_file_link_and_a_broken_anchor_are_reported(tmp_path):
    (tmp_path / "other.md").write_text("# Title\n\n## Numerical safety: `NonFiniteGuard`\n\n## Title\n")
    (tmp_path / "image.png").write_bytes(b"")
    page = tmp_path / "page.md"
    page.write_text(
        "[ok](other.md#numerical-safety-nonfiniteguard) [ok](other.md#title-1) ![ok](image.png) [web](https://x.org)\n"
        "[missing](missing.md) [bad anchor](other.md#numerical-safety) [self](#nowhere)\n"
        "`[in code](absent.md)`\n\n```\n[in a fence](absent.md)\n```\n"
    )
    problems = broken_links(page)
    assert [problem.split(":")[0] for problem in problems] == [
        "missing.md",
        "other.md#numerical-safety",
        "#nowhere",
    ]


def test_readme_front_door_commands():
    """CI and the issue rely on these lines: install, main command and test command within the first screen."""
    first_screen = "\n".join((ROOT / "README.md").read_text(encoding="utf-8").splitlines()[:60])
    for command in (
        'python3 -m venv .venv && .venv/bin/pip install -e ".[dev]"',
        "lightning-margin fit --config configs/quickstart.yaml",
        ".venv/bin/python -m pytest -q",
        "LIGHTNING_MARGIN_DATA=../shared/data .venv/bin/python -m pytest -q",
    ):
        assert command in first_screen
