"""The repository stands alone: its code and docs cite only documents that are in it (issue 16).

The design notes the project started from lived outside the repository, in the shared folder; what
the code relies on from them is now docs/design.md, and the exact trigger semantics docs/semantics.md.
So no tracked file may cite the shared notes by name, and every citation of the form
`docs/<file>.md#<anchor>` must name a file that exists and a heading in it (anchors as GitHub makes
them: lower case, punctuation dropped, spaces turned to hyphens). A bare `docs/<file>.md` must exist.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
#: Files neither check reads.
EXCLUDED: set[str] = set()
#: The shared notes' file name, spelt so that this file does not cite it.
SHARED_NOTES = "DESIGN" + ".md"
CITATION = re.compile(r"docs/([A-Za-z0-9_.-]+?\.md)(?:#([\w-]+))?")
HEADING = re.compile(r"^ {0,3}(#{1,6})[ \t]+(.*?)[ \t]*#*[ \t]*$")
FENCE = re.compile(r"^ {0,3}(`{3,}|~{3,})")
HTML_ANCHOR = re.compile(r"<a\s+(?:name|id)=\"([^\"]+)\"", re.IGNORECASE)


def tracked_text_files() -> list[tuple[str, str]]:
    """(path, text) of every tracked file that exists and is text, README.md and friends excluded."""
    try:
        listed = subprocess.run(["git", "ls-files", "-z"], cwd=REPO, capture_output=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError) as error:
        pytest.skip(f"not a git checkout: {error}")
    files = []
    for name in listed.decode().split("\0"):
        path = REPO / name
        if not name or name in EXCLUDED or not path.is_file():
            continue
        data = path.read_bytes()
        if b"\0" in data[:8192]:
            continue  # binary
        files.append((name, data.decode("utf-8", errors="replace")))
    return files


def github_anchor(heading: str) -> str:
    """The anchor GitHub gives a heading: link text kept, lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # [text](url) -> text
    text = re.sub(r"<[^>]+>", "", text)  # inline HTML tags
    text = text.strip().lower()
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def anchors(markdown: str) -> set[str]:
    """Every anchor a Markdown file offers: its headings (outside code fences, duplicates numbered) and <a name>."""
    found: set[str] = set(HTML_ANCHOR.findall(markdown))
    seen: dict[str, int] = {}
    fence = ""
    for line in markdown.splitlines():
        opening = FENCE.match(line)
        if opening:
            marker = opening.group(1)
            if not fence:
                fence = marker[0] * len(marker)
            elif marker.startswith(fence):
                fence = ""
            continue
        if fence:
            continue
        heading = HEADING.match(line)
        if heading:
            anchor = github_anchor(heading.group(2))
            count = seen.get(anchor, 0)
            seen[anchor] = count + 1
            found.add(anchor if count == 0 else f"{anchor}-{count}")
    return found


def test_github_anchor_matches_githubs_rules() -> None:
    assert github_anchor("Bytewax timers are wall-clock") == "bytewax-timers-are-wall-clock"
    assert github_anchor("Bytewax 0.21.1") == "bytewax-0211"
    assert (github_anchor("Rules and policy (`operators/rules.py`, `tests/test_rules.py`)")
            == "rules-and-policy-operatorsrulespy-teststest_rulespy")
    assert github_anchor("See [the guide](operators.md) first") == "see-the-guide-first"
    assert anchors("# A\n```\n# not a heading\n```\n## A\n") == {"a", "a-1"}


def test_no_tracked_file_cites_the_shared_design_notes() -> None:
    citing = [f"{name}:{number}: {line.strip()}"
              for name, text in tracked_text_files()
              for number, line in enumerate(text.splitlines(), 1) if SHARED_NOTES in line]
    assert citing == [], (f"{SHARED_NOTES} is not in the repository; cite docs/design.md#<heading> "
                          "(or docs/semantics.md for a trigger semantic) instead:\n" + "\n".join(citing))


def test_every_docs_citation_names_a_file_and_heading_that_exist() -> None:
    offered: dict[str, set[str] | None] = {}
    broken = []
    for name, text in tracked_text_files():
        for number, line in enumerate(text.splitlines(), 1):
            for match in CITATION.finditer(line):
                document, anchor = match.group(1), match.group(2)
                if document not in offered:
                    path = REPO / "docs" / document
                    offered[document] = anchors(path.read_text(encoding="utf-8")) if path.is_file() else None
                if offered[document] is None:
                    broken.append(f"{name}:{number}: docs/{document} does not exist")
                elif anchor is not None and anchor not in offered[document]:
                    broken.append(f"{name}:{number}: docs/{document} has no heading #{anchor}")
    assert broken == [], "citations of docs/ that lead nowhere:\n" + "\n".join(broken)
