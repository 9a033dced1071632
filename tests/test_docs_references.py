"""The repository stands on its own: every ``docs/design.md §N`` it cites exists, every relative link in the
Markdown docs points at a file of the repository, and nothing cites the team brief or a tracker number."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
SECTION = re.compile(r"design\.md §(\d+(?:\.\d+)?)(?:\s*[-–]\s*(\d+(?:\.\d+)?))?")


def tracked_text_files() -> list[Path]:
    names = subprocess.run(["git", "ls-files"], cwd=REPO, capture_output=True, text=True, check=True).stdout
    paths = [REPO / n for n in names.split()]
    return [
        p
        for p in paths
        if p.suffix in {".py", ".md", ".yaml", ".yml", ".sh", ".cfg", ".toml", ".ipynb", ".sbatch", ""}
        and p.is_file()
    ]


def design_sections() -> set[str]:
    text = (REPO / "docs" / "design.md").read_text()
    return set(re.findall(r"^#+ (\d+(?:\.\d+)?)\.? ", text, re.M))


def cited_sections(text: str) -> list[str]:
    cited = []
    for first, last in SECTION.findall(text):
        cited.append(first)
        if last:  # "§3.1-3.2" or the short "§3.1-2" (= 3.2)
            cited.append(last if "." in last or "." not in first else f"{first.split('.')[0]}.{last}")
    return cited


def test_section_parser_reads_ranges():
    assert cited_sections("docs/design.md §3.1-2 and docs/design.md §4, docs/design.md §3.3-3.7") == [
        "3.1",
        "3.2",
        "4",
        "3.3",
        "3.7",
    ]


def test_every_cited_design_section_exists():
    sections = design_sections()
    assert {"2", "3.1", "3.10", "4", "5", "6", "7", "8", "9"} <= sections
    missing = [
        (str(p.relative_to(REPO)), s)
        for p in tracked_text_files()
        for s in cited_sections(p.read_text())
        if s not in sections
    ]
    assert not missing, missing


def test_no_file_cites_a_document_outside_the_repository():
    brief = "SP" + "EC"  # spelled in pieces so that this file does not match its own search
    pattern = re.compile(rf"{brief}\.md|{brief} §|\bissue \d+|/work/", re.I)
    offenders = [
        str(p.relative_to(REPO))
        for p in tracked_text_files()
        if p.name != "test_docs_references.py" and pattern.search(p.read_text())
    ]
    assert not offenders, offenders


def test_relative_markdown_links_resolve():
    broken = []
    for md in [p for p in tracked_text_files() if p.suffix == ".md"]:
        for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", md.read_text()):
            if "://" not in target and not (md.parent / target).exists():
                broken.append((str(md.relative_to(REPO)), target))
    assert not broken, broken
