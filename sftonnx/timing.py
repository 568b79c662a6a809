"""Latency timing: several models timed interleaved in one process, and the statistics of their run times.

The one timer of sftonnx: :mod:`sftonnx.benchmark` (and through it the ``auto`` search) times with
:func:`interleaved_runs`; passes that decide by speed (``quantize{ensure_faster=true}``) use
:func:`median_latencies`, the same loop with a batch of runs per sample.

Models are **interleaved** (A B C A B C ...): a drift of the machine (thermal throttling, another process)
then hits every model alike, where timing one model after the other would charge it to whichever ran last.
This module never prints.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import statistics
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from sftonnx.errors import first_line

__all__ = [
    "DEFAULT_RUNS",
    "LatencyStats",
    "RunSeries",
    "interleaved_runs",
    "latency_stats",
    "median_latencies",
]

logger = logging.getLogger(__name__)

#: Timed rounds when neither ``runs`` nor ``duration`` is given.
DEFAULT_RUNS = 100


@dataclasses.dataclass
class RunSeries:
    """Timed runs of one runner; ``error`` is set when a run raised (no more runs are made after it)."""

    times: list[float] = dataclasses.field(default_factory=list)
    error: str | None = None


def interleaved_runs(
    runners: Sequence[Callable[[], Any]],
    *,
    runs: int | None = None,
    duration: float | None = None,
    repeats: int = 1,
    alternate: bool = False,
    raise_errors: bool = False,
    clock: Callable[[], float] = time.perf_counter,
    progress: Callable[[float, float, str], None] | None = None,
) -> list[RunSeries]:
    """Time the runners round-robin, one sample each per round (A B A B ...).

    Args:
        runners: Callables making one inference each.
        runs: Rounds to make; with ``duration`` too, whichever limit comes first.
        duration: Seconds to keep going for (at least one round is made).
        repeats: Calls per sample, back to back; a sample is their mean time (for runs too short to time alone).
        alternate: Reverse the order every other round (A B C, C B A, ...), so no model always follows the same one.
        raise_errors: Let a runner's exception propagate instead of recording it.
        clock: Seconds as a float (``time.perf_counter``; tests pass a fake).
        progress: Called as ``progress(done, total, description)`` after each round, in rounds (or seconds
            with ``duration`` and no ``runs``).

    Returns:
        One :class:`RunSeries` per runner, times in seconds. A runner that raises is dropped from later rounds
        and its series carries the error; the others go on.
    """
    if runs is None and duration is None:
        runs = DEFAULT_RUNS
    series = [RunSeries() for _ in runners]
    start = clock()
    rounds = 0
    while runs is None or rounds < runs:
        if duration is not None and rounds > 0 and clock() - start >= duration:
            break
        active = [index for index, item in enumerate(series) if item.error is None]
        if not active:
            break
        if alternate and rounds % 2 == 1:
            active.reverse()
        for index in active:
            began = clock()
            try:
                for _ in range(repeats):
                    runners[index]()
            except Exception as error:  # a crash in onnxruntime fails this row only
                if raise_errors:
                    raise
                series[index].error = f"run {len(series[index].times) + 1} failed: {first_line(error)}"
                logger.debug("runner %d failed", index, exc_info=True)
                continue
            series[index].times.append((clock() - began) / repeats)
        rounds += 1
        if progress is not None:
            if runs is not None:
                progress(rounds, runs, f"round {rounds}/{runs}")
            else:
                elapsed = clock() - start
                progress(min(elapsed, duration or 0.0), duration or 0.0, f"round {rounds}, {elapsed:.1f}s")
    return series


def median_latencies(
    sources: Sequence[bytes | str],
    feeds: Mapping[str, np.ndarray],
    *,
    rounds: int = 7,
    budget_seconds: float = 3.0,
    threads: int = 0,
) -> list[float]:
    """Median latency (seconds per run) of each model on ``feeds``, measured interleaved in one process.

    Each model gets two untimed runs; then every round runs each model back to back (order alternating per
    round) for a batch of runs sized so that a round takes about ``budget_seconds / rounds``; the median over
    rounds resists the noise of other processes sharing the CPU.

    Args:
        sources: Serialized models or model paths (CPU sessions, default options).
        feeds: One array per input name (each model takes the ones it declares).
        rounds: Samples per model.
        budget_seconds: About how long the timed rounds take together.
        threads: Intra-op threads per session (0: onnxruntime's default, all cores). One thread is steadier on
            a shared machine, where spinning thread pools of several processes contend.

    Raises:
        Exception: Whatever onnxruntime raises for a model it cannot load or run.
    """
    from sftonnx import verify

    runners = []
    for source in sources:
        session = verify.make_session(source, threads=threads)
        feed = {i.name: feeds[i.name] for i in session.get_inputs()}
        runners.append(functools.partial(session.run, None, feed))
    for runner in runners:
        runner()
        runner()
    start = time.perf_counter()
    runners[0]()
    single = max(time.perf_counter() - start, 1e-5)
    repeats = max(1, int(budget_seconds / rounds / len(runners) / single))
    series = interleaved_runs(runners, runs=rounds, repeats=repeats, alternate=True, raise_errors=True)
    return [statistics.median(s.times) for s in series]


@dataclasses.dataclass
class LatencyStats:
    """Latency of the timed runs (milliseconds) and throughput (samples per second)."""

    runs: int
    batch: int
    mean_ms: float
    p50_ms: float
    p90_ms: float
    p99_ms: float
    min_ms: float
    max_ms: float
    std_ms: float
    throughput: float

    def to_json(self) -> dict[str, Any]:
        """JSON-able dict."""
        return dataclasses.asdict(self)


def latency_stats(times: Sequence[float], batch: int) -> LatencyStats:
    """Statistics of run times given in seconds; throughput = ``batch`` / mean latency.

    Percentiles interpolate linearly between order statistics.

    Raises:
        ValueError: No times.
    """
    if len(times) == 0:
        raise ValueError("no timed runs")
    ms = np.asarray(times, dtype=np.float64) * 1e3
    p50, p90, p99 = (float(v) for v in np.percentile(ms, [50, 90, 99]))
    mean = float(ms.mean())
    return LatencyStats(
        runs=int(ms.size),
        batch=batch,
        mean_ms=mean,
        p50_ms=p50,
        p90_ms=p90,
        p99_ms=p99,
        min_ms=float(ms.min()),
        max_ms=float(ms.max()),
        std_ms=float(ms.std()),
        throughput=batch / (mean / 1e3) if mean > 0 else float("inf"),
    )
