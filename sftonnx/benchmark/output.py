"""Benchmark output files: CSV and the latency-vs-size plot (matplotlib on an Agg canvas, imported lazily)."""

from __future__ import annotations

import csv
import os
import pathlib
from typing import Any

from sftonnx.benchmark.results import CSV_COLUMNS, BenchmarkResult
from sftonnx.benchmark.sessions import EP_LABELS
from sftonnx.errors import InputError

__all__ = ["agg_figure", "save_figure", "write_csv", "write_plot"]


def write_csv(result: BenchmarkResult, path: str | os.PathLike) -> pathlib.Path:
    """Write one line per row with :data:`CSV_COLUMNS`.

    Raises:
        InputError: The file cannot be written.
    """
    path = pathlib.Path(path)
    try:
        with path.open("w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=list(CSV_COLUMNS), extrasaction="ignore")
            writer.writeheader()
            for row in result.rows:
                writer.writerow({k: "" if v is None else v for k, v in row.flat().items()})
    except OSError as error:
        raise InputError(f"cannot write {path}: {error.strerror or error}") from None
    return path


def agg_figure(option: str):
    """A matplotlib figure on an Agg canvas (no pyplot state) and its axes; matplotlib is imported here.

    Raises:
        InputError: matplotlib is not installed (the message names ``option``).
    """
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        raise InputError(f"{option} needs matplotlib (pip install 'sftonnx[bench]')") from None
    figure = Figure(figsize=(8, 5.5), dpi=110)
    FigureCanvasAgg(figure)
    return figure, figure.add_subplot()


def save_figure(figure: Any, path: str | os.PathLike) -> pathlib.Path:
    """Lay out ``figure`` (from :func:`agg_figure`) and write it to ``path`` as PNG.

    Raises:
        InputError: The file cannot be written.
    """
    path = pathlib.Path(path)
    figure.tight_layout()
    try:
        figure.savefig(path, format="png")
    except OSError as error:
        raise InputError(f"cannot write {path}: {error.strerror or error}") from None
    return path


def write_plot(result: BenchmarkResult, path: str | os.PathLike) -> pathlib.Path:
    """Scatter p50 latency against model size, one annotated point per measured row (with accuracy if known).

    matplotlib is imported here, and the figure is drawn on an Agg canvas without touching pyplot's state.

    Raises:
        InputError: matplotlib is not installed, or the file cannot be written.
    """
    figure, axes = agg_figure("--plot")
    eps = list(dict.fromkeys(row.provider for row in result.rows))
    markers = dict(zip(eps, "os^Dv", strict=False))
    measured = [row for row in result.rows if row.ok and row.latency and row.file_size_bytes is not None]
    for ep in eps:
        points = [row for row in measured if row.provider == ep]
        if not points:
            continue
        xs = [row.file_size_bytes / 2**20 for row in points]  # type: ignore[operator]
        ys = [row.latency.p50_ms for row in points]  # type: ignore[union-attr]
        axes.scatter(xs, ys, marker=markers.get(ep, "o"), s=50, label=EP_LABELS[ep])
        for row, x, y in zip(points, xs, ys, strict=True):
            text = row.label + (" (baseline)" if row.label == result.baseline else "")
            if row.accuracy is not None:
                text += f"\nacc {row.accuracy:.3f}"
            axes.annotate(text, (x, y), textcoords="offset points", xytext=(6, 6), fontsize=8)
    if not measured:
        axes.text(0.5, 0.5, "no measured rows", ha="center", va="center", transform=axes.transAxes)
    axes.set_xlabel("model size (MiB, with external data)")
    axes.set_ylabel("latency p50 (ms)")
    axes.set_title(f"latency vs size (batch {result.settings.get('batch')}, lower left is better)")
    axes.grid(True, alpha=0.3)
    axes.margins(0.2)
    if len(eps) > 1 and measured:
        axes.legend()
    return save_figure(figure, path)
