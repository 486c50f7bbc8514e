"""Checks of command-line values shared by the `kadapt` tools: each message names the flag and what it takes."""

from __future__ import annotations

import argparse
import sys


def comma_ints(text: str, flag: str, meaning: str) -> list[int]:
    """`"5,20"` -> `[5, 20]`; every value an integer of 0 or more. `meaning` says what the values are, with an example."""
    try:
        values = [int(x) for x in text.split(",")]
    except ValueError:
        raise ValueError(f"{flag} {text!r}: expected comma-separated integers ({meaning}).") from None
    if any(v < 0 for v in values):
        raise ValueError(f"{flag} {text!r}: every value must be 0 or more ({meaning}).")
    return values


def comma_floats(text: str, flag: str, meaning: str) -> list[float]:
    """`"1e-3,3e-3"` -> `[0.001, 0.003]`; every value a number above 0 (learning rates and adapter scales: 0 would
    train nothing, and a negative one climbs the loss). `meaning` says what the values are, with an example."""
    try:
        values = [float(x) for x in text.split(",")]
    except ValueError:
        raise ValueError(f"{flag} {text!r}: expected comma-separated numbers ({meaning}).") from None
    if any(not v > 0 for v in values):  # also refuses nan
        raise ValueError(f"{flag} {text!r}: every value must be above 0 ({meaning}).")
    return values


def require_counts(args, flags: tuple[str, ...], minimum: int = 1, hint: str = "") -> None:
    """Each of `flags` (attributes of `args`: a namespace or an arguments dataclass) counts images, pixels, steps or
    processes: `minimum` or more, or None where the flag was left out for its default (the one count check). `hint`
    ends the message (e.g. "; leave it out for the default")."""
    for flag in flags:
        value = getattr(args, flag)
        if value is not None and value < minimum:
            raise ValueError(f"--{flag} {value}: expected {minimum} or more{hint}.")


def require_learning_rates(args: argparse.Namespace, flags: tuple[str, ...]) -> None:
    """Each of `flags` is a learning rate above 0, or None where the flag was left out (its default applies)."""
    for flag in flags:
        value = getattr(args, flag)
        if value is not None and not value > 0:
            raise ValueError(f"--{flag} {value}: expected a learning rate above 0, e.g. 1e-2.")


class _OldSpelling(argparse.Action):
    """Stores into the new flag's destination and says, on stderr, which spelling to use instead."""

    def __call__(self, parser, namespace, values, option_string=None):
        new = "--" + self.dest
        print(f"{parser.prog}: {option_string} is deprecated and will be removed in 0.3; use {new}.", file=sys.stderr)
        setattr(namespace, self.dest, values)


def accept_old_spelling(parser: argparse.ArgumentParser, old: str, new: str) -> None:
    """Let `old` (e.g. `--output-dir`) set what `new` (`--output_dir`) sets, for one release, with a deprecation note.
    `new` must already be an argument of `parser` that takes one value."""
    action = next(a for a in parser._actions if new in a.option_strings)
    parser.add_argument(old, dest=action.dest, type=action.type, action=_OldSpelling, help=argparse.SUPPRESS)
