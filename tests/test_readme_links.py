"""Every relative link in README.md and docs/*.md points at a file that exists."""
import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
# Linked files another branch is adding. A missing one is let through; once it exists,
# test_pending_files_are_still_missing fails, so that its entry here gets removed.
# Files a document may link to before they are written (none today).
PENDING = set()
# [text](target) and ![alt](target); the target up to the first space or ')'.
LINK = re.compile(r"!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")


def anchors(path):
    """GitHub's anchors of the headings of a markdown file: lower case, punctuation dropped,
    spaces to hyphens."""
    out, in_code = set(), False
    for line in path.read_text().splitlines():
        if line.lstrip().startswith("```"):
            in_code = not in_code
        elif not in_code and re.match(r"#{1,6} ", line):
            text = line.lstrip("#").strip().lower()
            out.add(re.sub(r"[^\w\- ]", "", text).replace(" ", "-"))
    return out


def relative_links(path, with_anchors=False):
    """(line number, target) of every link in `path` that is not a URL (nor, unless
    with_anchors, a bare #anchor)."""
    out = []
    in_code = False
    for i, line in enumerate(path.read_text().splitlines(), 1):
        if line.lstrip().startswith("```"):
            in_code = not in_code
            continue
        if in_code:
            continue
        for target in LINK.findall(line):
            if re.match(r"^[a-z][a-z0-9+.-]*:", target, re.I):
                continue
            if target.startswith("#") and not with_anchors:
                continue
            out.append((i, target))
    return out


def test_the_link_pattern_finds_links_and_skips_urls(tmp_path):
    md = tmp_path / "x.md"
    md.write_text("see [a](docs/a.md) and ![p](b.png#x) and [u](https://x.org/y) [s](#sec)\n"
                  "```\n[not](in/code.md)\n```\n")
    assert relative_links(md) == [(1, "docs/a.md"), (1, "b.png#x")]


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: str(p.relative_to(REPO)))
def test_relative_links_point_at_files(doc):
    missing = []
    for line, target in relative_links(doc):
        path = target.split("#", 1)[0]
        if not (doc.parent / path).exists() and (doc.parent / path).resolve() not in PENDING_PATHS:
            missing.append(f"{doc.relative_to(REPO)}:{line}: {target}")
    assert not missing, "links to files that do not exist:\n" + "\n".join(missing)


PENDING_PATHS = {(REPO / p).resolve() for p in PENDING}


def test_pending_files_are_still_missing():
    there = sorted(p for p in PENDING if (REPO / p).exists())
    assert not there, f"{there} exist now: remove them from PENDING in {Path(__file__).name}"


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: str(p.relative_to(REPO)))
def test_anchors_name_headings(doc):
    """#anchors into this file or another markdown file name one of its headings."""
    bad = []
    for line, target in relative_links(doc, with_anchors=True):
        path, _, frag = target.partition("#")
        dest = (doc.parent / path) if path else doc
        if frag and dest.suffix == ".md" and dest.exists() and frag not in anchors(dest):
            bad.append(f"{doc.relative_to(REPO)}:{line}: {target}")
    assert not bad, "anchors that name no heading:\n" + "\n".join(bad)


def test_anchors_follow_github(tmp_path):
    md = tmp_path / "a.md"
    md.write_text("# Drop-in modules and `fuse`\n## The harness itself: order, ONNX spinning\n"
                  "```\n# not a heading\n```\n### channels_last RGB input\n")
    assert anchors(md) == {"drop-in-modules-and-fuse", "the-harness-itself-order-onnx-spinning",
                           "channels_last-rgb-input"}


def test_readme_and_docs_are_checked():
    names = [str(p.relative_to(REPO)) for p in DOCS]
    assert "README.md" in names and "docs/benchmarks.md" in names

