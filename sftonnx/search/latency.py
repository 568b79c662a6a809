"""Timing the search's candidates: which ones, and the interleaved measurement on the target EP."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

from sftonnx.benchmark import run_benchmark
from sftonnx.search.budget import Candidate, SearchBudget

__all__ = ["measure_latency", "timing_pool"]


def timing_pool(candidates: Sequence[Candidate], budget: SearchBudget, limit: int = 24) -> list[Candidate]:
    """Non-probe candidates that ran, one per distinct model file; at most ``limit`` (feasible first)."""
    seen: set[str] = set()
    pool = []
    for candidate in candidates:
        if candidate.kind == "probe" or candidate.status != "ok" or not candidate.model_path:
            continue
        if candidate.sha256 in seen:
            continue
        seen.add(candidate.sha256 or candidate.name)
        pool.append(candidate)
    feasible = [c for c in pool if c.feasible]
    others = sorted((c for c in pool if not c.feasible), key=budget.loss)
    return (feasible + others)[: max(limit, len(feasible))]


def measure_latency(
    candidates: Sequence[Candidate],
    *,
    ep: str,
    data: str | None,
    input_shapes: Mapping[str, tuple[int, ...]],
    runs: int,
    seconds: float,
    progress: Callable[[float, float, str], None] | None = None,
    phase: str = "latency",
) -> None:
    """Time the candidates' model files (the first is the baseline) and set their ``latency_ms`` (p50).

    Latency is measured here, after every candidate was built and evaluated, in one process, one model at a
    time, interleaved run by run (A B C A B C ...) - never in the parallel evaluation workers: concurrent
    runs would share the cores, caches and memory bandwidth, so each model's time would depend on what
    else happened to run beside it, and the machine's drift would hit models unevenly. Interleaving makes
    drift (thermal, other processes) hit every candidate alike.

    Candidates whose row fails keep ``latency_ms = None`` and are marked failed.
    """
    def report(done: float, total: float, text: str) -> None:
        if progress is not None:
            progress(done, total, f"{phase}: {text}")

    result = run_benchmark(
        [c.model_path for c in candidates],
        providers=ep,
        runs=runs,
        duration=seconds,
        warmup=5,
        data=data,
        input_shapes=input_shapes or None,
        memory=False,
        labels=[f"m{i}" for i in range(len(candidates))],
        progress=report,
    )
    for candidate, row in zip(candidates, result.rows, strict=True):
        if row.ok and row.latency is not None:
            candidate.latency_ms = row.latency.p50_ms
        elif candidate.kind != "original":
            candidate.latency_ms = None
            candidate.status, candidate.message = "failed", f"timing: {row.message}"
            candidate.feasible = False
