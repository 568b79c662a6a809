"""Number formatting and the JSON writer shared by the commands."""

from __future__ import annotations

import json
import pathlib
from collections.abc import Callable
from typing import Any

__all__ = ["arrow", "fmt_bytes", "fmt_int", "fmt_ms", "fmt_ratio", "write_json"]


def fmt_int(value: int | None) -> str:
    """Counts with k/M/G suffixes (``?`` when unknown)."""
    if value is None:
        return "?"
    for unit, size in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(value) >= size:
            return f"{value / size:.2f}{unit}"
    return str(value)


def fmt_bytes(value: int | None) -> str:
    """Bytes in B/kB/MB/GB, powers of 1024 (``?`` when unknown)."""
    if value is None:
        return "?"
    for unit, size in (("GB", 2**30), ("MB", 2**20), ("kB", 2**10)):
        if value >= size:
            return f"{value / size:.2f} {unit}"
    return f"{value} B"


def arrow(before: Any, after: Any, fmt: Callable[[Any], str]) -> str:
    """``before → after``, or the value alone when unchanged."""
    if before == after:
        return fmt(after)
    return f"{fmt(before)} → {fmt(after)}"


def fmt_ms(value: float | None) -> str:
    """Milliseconds with three significant digits below 10 (``-`` when unknown)."""
    return "-" if value is None else f"{value:.3g}" if value < 10 else f"{value:.1f}"


def fmt_ratio(value: float | None) -> str:
    """A ratio as ``0.52×`` (``-`` when unknown)."""
    return "-" if value is None else f"{value:.2f}×"



def write_json(path: pathlib.Path | None, payload: Any) -> None:
    """Write ``payload`` as indented JSON when ``path`` is given.

    Raises:
        InputError: The file cannot be written.
    """
    if path is None:
        return
    try:
        path.write_text(json.dumps(payload, indent=2, default=str))
    except OSError as error:
        from sftonnx.errors import InputError

        raise InputError(f"cannot write {path}: {error.strerror or error}") from None
