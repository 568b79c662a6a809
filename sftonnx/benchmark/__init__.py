"""Benchmarks: latency, throughput, memory, size and accuracy of models side by side.

What is measured, per model and execution provider (EP):

* **session creation** time and **first-run** latency (cold), then, after ``warmup`` untimed runs, the
  latency of ``runs`` runs (or as many as fit in ``duration`` seconds): mean, p50, p90, p99 (linear
  interpolation between order statistics) and **throughput** = batch / mean latency, in samples per second.
* Models are **interleaved run by run** (A B A B ...) within each EP, so that a drift of the machine (thermal
  throttling, another process) hits every model alike. ORT's intra-op threads normally spin after a run
  waiting for more work; with several sessions in one process the spinning pool of one session steals the
  cores of the next, so spinning is disabled unless ``spinning=True`` (the notes say which).
* **Memory** is measured in a fresh ``spawn``-ed process per model and EP (session creation, the first run and
  a few more runs), so the figures are per model: the peak resident set size of that process
  (``VmHWM`` after resetting it through ``/proc/self/clear_refs``) and its growth over the process before the
  session was created. On CUDA, the GPU memory the process holds (``nvidia-smi``), when available.
* **Size** is the model file plus its external-data files.
* **Accuracy**, when asked for: top-1 over an ``.npz`` holding the inputs and a ``labels`` array (argmax over
  the first output's last axis, trailing unit axes squeezed first), or a user metric ``module:function``
  called with the benchmarked ``onnxruntime.InferenceSession`` and returning a float.

The first model is the baseline: every row carries ratios to the baseline row of the same EP
(:func:`compute_ratios`). onnxruntime silently falls back to the CPU when a GPU provider cannot be created;
such rows are reported as ``unavailable`` with the reason, never timed under the GPU label.

Modules: :mod:`~sftonnx.benchmark.sessions` (EPs, sessions, one run), :mod:`sftonnx.timing` (the interleaved
timer and latency statistics, shared with the search and the passes), :mod:`~sftonnx.benchmark.memory` (the
per-model memory probe), :mod:`sftonnx.evaluate` (accuracy), :mod:`~sftonnx.benchmark.models` (signatures and
feeds), :mod:`~sftonnx.benchmark.results` (rows, ratios), :mod:`~sftonnx.benchmark.output` (CSV, plot),
:mod:`~sftonnx.benchmark.compare` (``sftonnx compare``) and :mod:`~sftonnx.benchmark.run`
(:func:`run_benchmark`). This package never prints; :mod:`sftonnx.cli` renders :class:`BenchmarkResult`.
"""

from __future__ import annotations

from sftonnx.benchmark.compare import CompareResult, compare_entries
from sftonnx.benchmark.memory import MEMORY_RUNS
from sftonnx.benchmark.models import ModelEntry, check_same_signature, fit_feeds, load_entry
from sftonnx.benchmark.output import agg_figure, write_csv, write_plot
from sftonnx.benchmark.results import (
    CSV_COLUMNS,
    RATIO_KEYS,
    BenchmarkResult,
    BenchmarkRow,
    apply_ratios,
    compute_ratios,
)
from sftonnx.benchmark.run import DEFAULT_WARMUP, run_benchmark
from sftonnx.benchmark.sessions import EXECUTION_PROVIDERS, parse_providers, provider_unavailable_reason
from sftonnx.timing import DEFAULT_RUNS, LatencyStats, RunSeries, interleaved_runs, latency_stats

__all__ = [
    "CSV_COLUMNS",
    "DEFAULT_RUNS",
    "DEFAULT_WARMUP",
    "EXECUTION_PROVIDERS",
    "MEMORY_RUNS",
    "RATIO_KEYS",
    "BenchmarkResult",
    "BenchmarkRow",
    "CompareResult",
    "LatencyStats",
    "ModelEntry",
    "RunSeries",
    "agg_figure",
    "apply_ratios",
    "check_same_signature",
    "compare_entries",
    "compute_ratios",
    "fit_feeds",
    "interleaved_runs",
    "latency_stats",
    "load_entry",
    "parse_providers",
    "provider_unavailable_reason",
    "run_benchmark",
    "write_csv",
    "write_plot",
]
