"""Rewrite (or check) the generated table blocks of a docs page from the committed records.

A generated block is the text between `<!-- tables: ARGS -->` and `<!-- /tables -->`: the output of
`python benchmarks/tables.py ARGS`, file arguments relative to the repository root (or, where ARGS starts with another
script of this folder, e.g. `stability_maps.py RECORDS`, that script's output). To move a block to a later
cut-off, edit its ARGS (e.g. its `--until`) and run this script; `--check` is what the test suite asserts.

    python benchmarks/docs_tables.py                    # rewrite every block of docs/results.md
    python benchmarks/docs_tables.py --check            # exit 1, naming each block that differs from its records
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import io
import shlex
from pathlib import Path

import tables  # this folder's tables.py (the script's folder is on sys.path)


ROOT = Path(__file__).resolve().parents[1]
OPEN, CLOSE = "<!-- tables: ", "<!-- /tables -->"


def blocks(text: str) -> list[tuple[str, int, int]]:
    """(ARGS, start, end) of each generated block: text[start:end] is its content, between the two markers."""
    found, at = [], 0
    while (i := text.find(OPEN, at)) >= 0:
        head_end = text.find(" -->\n", i)
        end = text.find(CLOSE, head_end)
        if head_end < 0 or end < 0:
            raise ValueError(f"a `{OPEN.strip()}` block at character {i} has no `-->` or no `{CLOSE}` after it")
        found.append((text[i + len(OPEN) : head_end], head_end + len(" -->\n"), end))
        at = end + len(CLOSE)
    return found


def render(args: str, root: Path = ROOT) -> str:
    """What `python benchmarks/tables.py ARGS` prints, run from the repository root."""
    argv = [str(root / a) if a.startswith("benchmarks/") else a for a in shlex.split(args)]
    if "--plot" in argv:
        raise ValueError(f"`{args}`: a docs block cannot write a plot (drop --plot; write it with tables.py)")
    script = tables
    if argv and argv[0].endswith(".py"):
        name = argv.pop(0)
        spec = importlib.util.spec_from_file_location(name[:-3], Path(__file__).parent / name)
        script = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(script)
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        script.main(argv)
    return out.getvalue().strip() + "\n"


def regenerate(text: str, root: Path = ROOT) -> tuple[str, list[str]]:
    """The text with every block rewritten from its records, and the ARGS of the blocks that changed."""
    pieces, stale, at = [], [], 0
    for args, start, end in blocks(text):
        new = render(args, root)
        if text[start:end].strip() != new.strip():
            stale.append(args)
        pieces += [text[at:start], new]
        at = end
    return "".join(pieces) + text[at:], stale


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("docs", nargs="?", default=str(ROOT / "docs" / "results.md"), help="the page to rewrite")
    p.add_argument("--check", action="store_true", help="change nothing; exit 1 if a block differs from its records")
    args = p.parse_args(argv)
    path = Path(args.docs)
    try:
        text, stale = regenerate(path.read_text())
    except ValueError as error:
        raise SystemExit(f"{path}: {error}") from None
    for block in stale:
        print(f"{'differs' if args.check else 'rewritten'}: <!-- tables: {block} -->")
    if not args.check and stale:
        path.write_text(text)
    print(f"{len(blocks(text))} blocks, {len(stale)} {'differ' if args.check else 'rewritten'}.")
    return 1 if args.check and stale else 0


if __name__ == "__main__":
    raise SystemExit(main())
