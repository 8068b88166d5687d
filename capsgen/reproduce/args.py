"""Argument types shared by the experiments' command lines (torch-free, like their ``__init__``s)."""
from __future__ import annotations

import argparse
from typing import Callable

from capsgen.errors import CapsgenError
from capsgen.lists import comma_items


def _items(text: str, example: str) -> list[str]:
    try:
        return comma_items(text, example)
    except CapsgenError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _ints(text: str, what: str, example: str) -> tuple[int, ...]:
    items = _items(text, example)
    try:
        values = tuple(int(t) for t in items)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: give comma-separated {what}, e.g. {example}") from None
    return values


# How Label Spreading's labelled images are drawn (capsgen.eval.semisup.labelled_subset); the first,
# Jaiswal et al.'s uniform draw, is the default of every command line that offers the choice.
LABELLED_DRAWS = ("random", "balanced")


def labelled_counts(text: str) -> tuple[int, ...]:
    """"100,1000,10000" -> positive counts."""
    counts = _ints(text, "counts", "100,1000,10000")
    if min(counts) < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: counts must be positive, e.g. 100,1000,10000")
    return counts


def seed_list(text: str) -> tuple[int, ...]:
    """"0,1,2" -> distinct seeds >= 0."""
    seeds = _ints(text, "seeds", "0,1,2")
    if min(seeds) < 0 or len(set(seeds)) != len(seeds):
        raise argparse.ArgumentTypeError(f"{text!r}: --seeds must be distinct and >= 0, e.g. 0,1,2")
    return seeds


def name_list(choices: tuple[str, ...], allow_none: bool = False,
              required: str | None = None) -> Callable[[str], tuple[str, ...]]:
    """A parser of "a,b" into names from ``choices`` (in their order); "none" gives () when allowed;
    ``required`` must be among them."""
    def parse(text: str) -> tuple[str, ...]:
        if allow_none and text.strip() == "none":
            return ()
        names = set(_items(text, ",".join(choices[:2])))
        if not names or names - set(choices) or (required and required not in names):
            extra = (" or none" if allow_none else "") + (f" ({required} always)" if required else "")
            raise argparse.ArgumentTypeError(f"{text!r}: choose from {','.join(choices)}{extra}")
        return tuple(n for n in choices if n in names)
    return parse
