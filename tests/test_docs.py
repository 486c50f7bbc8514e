"""The Markdown files of the repository render as written."""

import re
import subprocess
from pathlib import Path


ROOT = Path(__file__).parents[1]


def table_rows_that_lose_cells(text: str) -> list[str]:
    """Rows of Markdown tables whose cell count is not their header's (GitHub drops extra cells: their text vanishes)."""
    bad, header, fenced = [], None, False
    for number, line in enumerate(text.splitlines(), 1):
        fenced ^= line.lstrip().startswith("```")
        if fenced or not line.startswith("|"):
            header = None
            continue
        cells = len(re.split(r"(?<!\\)\|", line.strip())) - 2  # an escaped \| stays inside its cell
        header = cells if header is None else header
        if cells != header:
            bad.append(f"line {number}: {cells} cells under a header of {header}")
    return bad


def test_table_rows_of_a_markdown_file_are_found_when_their_cells_are_not_the_headers():
    assert table_rows_that_lose_cells("| a | b |\n|---|---|\n| 1 | 2 \\| 3 |\n\n| c |\n|---|\n| 1 |") == []
    assert table_rows_that_lose_cells("| a | b |\n|---|---|\n| 1 | 2 | 3 |") == ["line 3: 3 cells under a header of 2"]
    assert table_rows_that_lose_cells("```\n| a | b |\n| 1 |\n```") == []


def test_every_table_row_in_the_docs_has_its_headers_cells():
    tracked = subprocess.run(["git", "ls-files", "*.md"], cwd=ROOT, capture_output=True, text=True, check=True)
    bad = {}
    for name in tracked.stdout.split():
        rows = table_rows_that_lose_cells((ROOT / name).read_text())
        if rows:
            bad[name] = rows
    assert not bad, bad
