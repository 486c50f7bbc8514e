"""Checks of command-line values shared by the `kadapt` tools: each message names the flag and what it takes."""

from __future__ import annotations

import argparse


def comma_ints(text: str, flag: str, meaning: str) -> list[int]:
    """`"5,20"` -> `[5, 20]`; every value an integer of 0 or more. `meaning` says what the values are, with an example."""
    try:
        values = [int(x) for x in text.split(",")]
    except ValueError:
        raise ValueError(f"{flag} {text!r}: expected comma-separated integers ({meaning}).") from None
    if any(v < 0 for v in values):
        raise ValueError(f"{flag} {text!r}: every value must be 0 or more ({meaning}).")
    return values


def require_counts(args: argparse.Namespace, flags: tuple[str, ...]) -> None:
    """Each of `flags` (attribute names of `args`) counts images, pixels or steps: 1 or more."""
    for flag in flags:
        value = getattr(args, flag)
        if value < 1:
            raise ValueError(f"--{flag} {value}: expected 1 or more.")
