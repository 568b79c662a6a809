"""The Pareto front of the timed candidates, and its plot."""

from __future__ import annotations

import math
import os
import pathlib
from collections.abc import Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from sftonnx.search.result import SearchResult

__all__ = ["pareto_front", "write_pareto_plot"]


def pareto_front(points: Sequence[Sequence[float]]) -> list[int]:
    """Indices of the non-dominated points, every coordinate minimized.

    A point is dominated when another is no worse in every coordinate and better in at least one. Points
    with a NaN coordinate are never on the front; duplicates are all kept.

    Args:
        points: One tuple of coordinates per point (e.g. ``(latency, size, loss)``).

    Returns:
        Indices into ``points``, in input order.
    """
    valid = [i for i, p in enumerate(points) if not any(math.isnan(float(x)) for x in p)]
    front = []
    for i in valid:
        a = points[i]
        dominated = any(
            all(b_k <= a_k for a_k, b_k in zip(a, points[j], strict=True))
            and any(b_k < a_k for a_k, b_k in zip(a, points[j], strict=True))
            for j in valid
            if j != i
        )
        if not dominated:
            front.append(i)
    return front



def write_pareto_plot(result: SearchResult, path: str | os.PathLike) -> pathlib.Path:
    """Scatter latency against size for the timed candidates, colored by loss; front and choice marked.

    matplotlib is imported here and draws on an Agg canvas without touching pyplot's state.

    Raises:
        InputError: matplotlib is not installed, or the file cannot be written.
    """
    from sftonnx.benchmark.output import agg_figure, save_figure

    figure, axes = agg_figure("--pareto-plot")
    timed = [c for c in result.timed if c.size_bytes is not None]
    losses = [result.budget.loss(c)[0] for c in timed]
    finite = [v if math.isfinite(v) else float("nan") for v in losses]
    scatter = axes.scatter(
        [c.size_bytes / 2**20 for c in timed],  # type: ignore[operator]
        [c.latency_ms for c in timed],
        c=finite,
        cmap="viridis_r",
        s=[60 if c.feasible else 25 for c in timed],
        marker="o",
        edgecolors=["black" if c.name in result.pareto else "none" for c in timed],
    )
    label = (
        "accuracy drop"
        if result.budget.max_accuracy_drop is not None
        else "share of the output budget used (1: at the limit)"
    )
    figure.colorbar(scatter, ax=axes, label=label)
    for candidate in timed:
        if candidate.name in result.pareto or candidate.kind in ("original", "preset") or candidate is result.chosen:
            text = candidate.name + (" (chosen)" if candidate is result.chosen else "")
            axes.annotate(
                text, (candidate.size_bytes / 2**20, candidate.latency_ms),  # type: ignore[operator]
                textcoords="offset points", xytext=(5, 5), fontsize=7,
            )
    axes.set_xlabel("model size (MiB)")
    axes.set_ylabel("latency p50 (ms)")
    axes.set_title(f"auto search: {result.budget.describe()} (black edge: Pareto front; large: feasible)")
    axes.grid(True, alpha=0.3)
    return save_figure(figure, path)
