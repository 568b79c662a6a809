"""Latency of candidate models, measured interleaved in one process (``ensure_faster`` of the quantizers).

The one timer of the quantization passes; a shared latency timer in ``sftonnx`` is meant to replace it.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Mapping, Sequence

import numpy as np

from sftonnx import verify

__all__ = ["measure_latency"]


def measure_latency(
    sources: Sequence[bytes | str],
    feeds: Mapping[str, np.ndarray],
    *,
    rounds: int = 7,
    budget_seconds: float = 3.0,
) -> list[float]:
    """Median latency (seconds per run) of each model on ``feeds``, measured interleaved in one process.

    Every round runs each model back to back (order alternating per round) for a batch of runs sized so
    that a round takes about ``budget_seconds / rounds``; the median over rounds resists the noise of other
    processes sharing the CPU.
    """
    sessions = [verify.make_session(source) for source in sources]
    inputs = [{i.name: feeds[i.name] for i in s.get_inputs()} for s in sessions]
    for session, feed in zip(sessions, inputs, strict=True):
        for _ in range(2):
            session.run(None, feed)
    start = time.perf_counter()
    sessions[0].run(None, inputs[0])
    single = max(time.perf_counter() - start, 1e-5)
    repeats = max(1, int(budget_seconds / rounds / len(sessions) / single))
    samples: list[list[float]] = [[] for _ in sessions]
    for round_index in range(rounds):
        order = range(len(sessions)) if round_index % 2 == 0 else reversed(range(len(sessions)))
        for index in order:
            session, feed = sessions[index], inputs[index]
            start = time.perf_counter()
            for _ in range(repeats):
                session.run(None, feed)
            samples[index].append((time.perf_counter() - start) / repeats)
    return [statistics.median(s) for s in samples]
