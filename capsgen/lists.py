"""Comma-separated lists on the command line (torch-free: argument parsers use it)."""
from __future__ import annotations

from capsgen.errors import CapsgenError


def comma_items(text: str, example: str) -> list[str]:
    """``"a, b,c"`` -> ``["a", "b", "c"]``; an empty item (``"100,,5"``, ``"100,"``, ``""``) is a
    one-line CapsgenError, never silently dropped: a doubled comma is usually a lost value."""
    items = [t.strip() for t in text.split(",")]
    if not all(items):
        raise CapsgenError(f"{text!r} has an empty item; give comma-separated values without blanks, e.g. {example}")
    return items
