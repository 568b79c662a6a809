"""``sftonnx bench``: models timed side by side per EP, interleaved run by run (the method is in the package doc)."""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import numpy as np

from sftonnx import io
from sftonnx.benchmark import sessions
from sftonnx.benchmark.memory import MEMORY_RUNS, measure_memory
from sftonnx.benchmark.models import (
    ModelEntry,
    check_same_signature,
    fit_feeds,
    load_entry,
    timing_feeds,
    unique_labels,
)
from sftonnx.benchmark.results import BenchmarkResult, BenchmarkRow, apply_ratios
from sftonnx.errors import InputError, first_line
from sftonnx.evaluate import Evaluator, make_evaluator
from sftonnx.timing import DEFAULT_RUNS, interleaved_runs, latency_stats

__all__ = ["DEFAULT_WARMUP", "run_benchmark"]

#: Untimed runs per model after the first run and before the timed ones.
DEFAULT_WARMUP = 10


def run_benchmark(
    models: Sequence[io.ModelSource],
    *,
    providers: str | Sequence[str] = "cpu",
    runs: int | None = None,
    duration: float | None = None,
    warmup: int = DEFAULT_WARMUP,
    threads: int = 0,
    batch: int | None = None,
    input_shapes: Iterable[str] | Mapping[str, Sequence[int]] | None = None,
    data: str | os.PathLike | Mapping[str, np.ndarray] | None = None,
    evaluate: str | os.PathLike | Evaluator | None = None,
    io_binding: bool = False,
    memory: bool = True,
    spinning: bool = False,
    labels: Sequence[str] | None = None,
    progress: Callable[[float, float, str], None] | None = None,
    clock: Callable[[], float] = time.perf_counter,
) -> BenchmarkResult:
    """Benchmark models side by side on each execution provider; see the module docstring for the method.

    Args:
        models: Model files (or bytes / ``ModelProto`` / ``onnx_ir.Model``); the first one is the baseline.
        providers: ``"cpu,cuda,tensorrt"`` or a list of those names.
        runs: Timed runs per model (default :data:`DEFAULT_RUNS` unless ``duration`` is given).
        duration: Seconds of timed rounds per EP instead of (or as well as) a run count.
        warmup: Untimed runs per model after the first run.
        threads: Intra-op threads (0: onnxruntime's default).
        batch: Fills a symbolic first dimension of the inputs (or picks that many samples of ``data``).
        input_shapes: ``["name=1x3x224x224"]`` or a mapping, for dynamic dimensions.
        data: ``.npz`` (or mapping) with one array per input; its first ``batch`` samples are timed.
        evaluate: ``labels.npz`` (inputs and ``labels``) for top-1 accuracy, or ``"module:function"`` /
            a callable taking an ``InferenceSession`` and returning a float.
        io_binding: On CUDA/TensorRT, keep inputs and outputs on the device so copies are not timed.
        memory: Measure per-model memory in a spawned process (adds a process start per row).
        spinning: Keep ORT's spinning intra-op threads (faster alone, but interleaved sessions steal cores).
        labels: Names for the models (default: file stems, made unique).
        progress: Called as ``progress(done, total, description)`` during the timed rounds.
        clock: Timer in seconds (tests pass a fake).

    Returns:
        A :class:`BenchmarkResult`; rows are ordered by EP, then model.

    Raises:
        InputError: No models, bad options, unknown EP, a model onnxruntime cannot load, inputs that do not
            fit, or a user metric that fails.
    """
    import onnxruntime as ort

    if not models:
        raise InputError("give at least one model to benchmark")
    eps = sessions.parse_providers(providers)
    if runs is not None and runs < 1:
        raise InputError(f"--runs must be at least 1, got {runs}")
    if duration is not None and duration <= 0:
        raise InputError(f"--duration must be positive, got {duration}")
    if warmup < 0 or threads < 0:
        raise InputError("--warmup and --threads must not be negative")
    if batch is not None and batch < 1:
        raise InputError(f"--batch must be at least 1, got {batch}")
    if runs is None and duration is None:
        runs = DEFAULT_RUNS
    names = list(labels) if labels is not None else unique_labels(models)
    if len(names) != len(models):
        raise InputError(f"{len(names)} labels for {len(models)} models")
    entries = [load_entry(model, label) for model, label in zip(models, names, strict=True)]
    baseline = entries[0]
    feeds, samples, notes = timing_feeds(baseline.specs, data=data, input_shapes=input_shapes, batch=batch)
    fitted = []
    for entry in entries:
        names_differ = sorted(s.name for s in entry.specs) != sorted(s.name for s in baseline.specs)
        if names_differ and len(entry.specs) == len(baseline.specs) and evaluate is None:
            # Same inputs under other names (e.g. another exporter): match them by position.
            renamed = {new.name: feeds[old.name] for old, new in zip(baseline.specs, entry.specs, strict=True)}
            notes.append(f"{entry.label}: inputs matched to {baseline.label}'s by position (names differ)")
            fitted.append(fit_feeds(entry, renamed))
            continue
        check_same_signature(baseline, entry, outputs=False)
        fitted.append(fit_feeds(entry, feeds))
    evaluator, eval_note = make_evaluator(evaluate, baseline.specs, batch)
    if eval_note:
        notes.append(eval_note)
    limit = f"{runs} timed runs" if duration is None else f"{duration:g}s of timed rounds"
    if duration is not None and runs is not None:
        limit += f" (at most {runs})"
    notes.append(
        f"models interleaved run by run ({_interleave_pattern(entries)}) within each EP: "
        f"first run timed apart, {warmup} warm-up runs, then {limit}"
    )
    if not spinning:
        notes.append("intra-op thread spinning disabled so interleaved sessions do not steal each other's cores")
    if memory:
        notes.append(
            f"memory: a fresh process per model and EP (session creation, first run and {MEMORY_RUNS} runs); "
            "Δ RSS = its peak minus its resident memory before the session"
        )
    if io_binding:
        notes.append("--io-binding: CUDA/TensorRT rows keep inputs and outputs on the GPU (copies not timed)")
    elif any(ep in sessions.GPU_EPS for ep in eps):
        notes.append("GPU rows include host-device copies (use --io-binding to leave them out)")

    rows: list[BenchmarkRow] = []
    for ep in eps:
        ep_rows = [BenchmarkRow(e.model, e.label, ep, file_size_bytes=e.size) for e in entries]
        rows.extend(ep_rows)
        reason = sessions.provider_unavailable_reason(ep)
        if reason is not None:
            for row in ep_rows:
                row.fail("unavailable", reason)
            continue
        device = "cuda" if io_binding and ep in sessions.GPU_EPS else None
        opened: dict[int, Any] = {}
        runners: dict[int, sessions.Runner] = {}
        for index, (entry, row) in enumerate(zip(entries, ep_rows, strict=True)):
            started = clock()
            try:
                session = sessions.create_session(entry.source, ep, threads=threads, spinning=spinning)
            except Exception as error:  # onnxruntime raises assorted types for models it cannot load
                if ep == "cpu":
                    raise InputError(f"{entry.label}: onnxruntime cannot load the model: {first_line(error)}") from None
                row.fail("unavailable", f"{sessions.EP_LABELS[ep]} EP not available: {first_line(error)}")
                continue
            row.session_seconds = clock() - started
            row.session_providers = list(session.get_providers())
            fallback = sessions.fallback_reason(ep, row.session_providers)
            if fallback is not None:
                row.fail("unavailable", fallback)
                continue
            try:
                runner = sessions.Runner(session, fitted[index], device=device)
                started = clock()
                runner()
                row.first_run_ms = (clock() - started) * 1e3
                for _ in range(warmup):
                    runner()
            except Exception as error:  # the model crashes the runtime: fail this row, keep the others
                row.fail("failed", f"first/warm-up run failed: {first_line(error)}")
                continue
            opened[index], runners[index] = session, runner
        order = sorted(runners)

        def report(done: float, total: float, text: str, ep: str = ep) -> None:
            if progress is not None:
                progress(done, total, f"{sessions.EP_LABELS[ep]}: {text}")

        series = interleaved_runs(
            [runners[i] for i in order], runs=runs, duration=duration, clock=clock, progress=report
        )
        for index, result in zip(order, series, strict=True):
            row = ep_rows[index]
            if result.error is not None:
                row.fail("failed", result.error)
                continue
            row.latency = latency_stats(result.times, samples)
            if evaluator is not None:
                try:
                    row.accuracy = evaluator(opened[index])
                except InputError:
                    raise
                except Exception as error:  # the model crashed on the evaluation data
                    row.fail("failed", f"evaluation failed: {first_line(error)}")
        opened.clear()
        runners.clear()

    if memory:
        for row in rows:
            if row.ok:
                entry = entries[names.index(row.label)]
                measure_memory(
                    row,
                    entry.source,
                    fitted[names.index(row.label)],
                    threads=threads,
                    spinning=spinning,
                    io_binding=io_binding,
                    runs=MEMORY_RUNS,
                )
    apply_ratios(rows)
    settings = {
        "providers": eps,
        "runs": runs,
        "duration_s": duration,
        "warmup": warmup,
        "threads": threads,
        "batch": samples,
        "input_shapes": {name: list(array.shape) for name, array in feeds.items()},
        "inputs": "random" if data is None else os.fspath(data) if isinstance(data, (str, os.PathLike)) else "mapping",
        "eval": None if evaluate is None else (os.fspath(evaluate) if not callable(evaluate) else "callable"),
        "io_binding": io_binding,
        "memory": memory,
        "spinning": spinning,
        "interleaved": True,
        "onnxruntime": ort.__version__,
        "available_providers": list(ort.get_available_providers()),
    }
    return BenchmarkResult(rows, settings, notes)


def _interleave_pattern(entries: Sequence[ModelEntry]) -> str:
    letters = [chr(ord("A") + i) if i < 26 else "…" for i in range(min(len(entries), 4))]
    if len(entries) == 1:
        return "one model: A A A ..."
    return " ".join(letters * 2) + " ..."
