"""Study records: one typed dataclass per JSON line, appended and flushed as each run finishes, so that a study can
stop anywhere and resume (on another machine, from committed records). `kadapt bench` writes `RunRecord`s and
`kadapt intrinsic-dim` its `SweepRecord`s through these two functions."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from typing import TypeVar


T = TypeVar("T")


def read_records(path: Path, record_type: type[T]) -> list[T]:
    """The records of a JSON-lines file, one `record_type` per line; [] when the file does not exist."""
    if not path.exists():
        return []
    records = []
    for number, line in enumerate(path.read_text().splitlines(), 1):
        if line.strip():
            try:
                records.append(record_type(**json.loads(line)))
            except (json.JSONDecodeError, TypeError) as error:
                raise ValueError(
                    f"{path}, line {number}: not a {record_type.__name__} ({error}). Remove or repair that line."
                ) from None
    return records


def append_records(path: Path, records: list) -> None:
    """Append dataclass records, one JSON line each, flushed at once."""
    append_lines(path, [json.dumps(asdict(record)) for record in records])


def append_lines(path: Path, lines: list[str]) -> None:
    """Append lines of text to `path` (its folder made when missing) in one write, flushed at once."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as f:
        f.write("".join(line + "\n" for line in lines))
        f.flush()
