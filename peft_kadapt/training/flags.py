"""Checks of command-line values shared by the `kadapt` tools: each message names the flag and what it takes."""

from __future__ import annotations

import argparse
import dataclasses
import sys
import types
import typing


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


def add_settings_flags(parser: argparse.ArgumentParser, settings_class: type, names: tuple[str, ...]) -> None:
    """One flag per named field of a settings dataclass, generated from the field: `--NAME` (or the name in the
    field's metadata "flag"), its type and default, `choices` and `help` from its metadata; a bool is a switch."""
    hints = typing.get_type_hints(settings_class)
    for f in dataclasses.fields(settings_class):
        if f.name not in names:
            continue
        flag, meta = "--" + f.metadata.get("flag", f.name), {"help": f.metadata.get("help")}
        kind = hints[f.name]
        if isinstance(kind, types.UnionType) or typing.get_origin(kind) is typing.Union:
            kind = next(
                a for a in typing.get_args(kind) if a is not type(None)
            )  # `float | None`: a float, or left out
        if kind is bool:
            parser.add_argument(flag, action="store_true", **meta)
        else:
            parser.add_argument(flag, type=kind, default=f.default, choices=f.metadata.get("choices"), **meta)


def settings_from_flags(settings_class: type, args: argparse.Namespace, names: tuple[str, ...], **others):
    """The settings dataclass from the flags `add_settings_flags` made for `names`, plus `others`."""
    flags = {f.name: f.metadata.get("flag", f.name) for f in dataclasses.fields(settings_class) if f.name in names}
    return settings_class(**{name: getattr(args, flag) for name, flag in flags.items()}, **others)
