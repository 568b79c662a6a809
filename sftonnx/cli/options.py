"""Options several commands share, defined once so their names and help stay the same everywhere."""

from __future__ import annotations

import pathlib
from typing import Annotated

import typer

__all__ = ["InputShapes", "Quiet", "SampleData"]

#: ``--input-shape name=1x3x224x224`` (repeatable): concrete sizes for dynamic dimensions.
InputShapes = Annotated[
    list[str] | None, typer.Option("--input-shape", help="Fill dynamic dims: name=1x3x224x224 (repeatable).")
]
#: ``--quiet`` / ``-q``: print only errors.
Quiet = Annotated[bool, typer.Option("--quiet", "-q", help="Print only errors.")]
#: ``--data inputs.npz`` (one array per input, samples along axis 0) or a folder of them (one feed per file).
SampleData = Annotated[
    pathlib.Path | None,
    typer.Option(help=".npz with one array per input (axis 0 = batch), or a folder of .npz (one feed per file)."),
]
