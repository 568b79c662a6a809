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

This module never prints; :mod:`sftonnx.cli` renders :class:`BenchmarkResult`.
"""

from __future__ import annotations

import concurrent.futures
import csv
import dataclasses
import importlib
import importlib.util
import logging
import multiprocessing
import os
import pathlib
import shutil
import subprocess
import sys
import time
import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import numpy as np
import onnx_ir as ir

from sftonnx import io
from sftonnx import verify as verification
from sftonnx.errors import InputError

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

logger = logging.getLogger(__name__)

#: Timed runs per model when neither ``runs`` nor ``duration`` is given.
DEFAULT_RUNS = 100
#: Untimed runs per model after the first run and before the timed ones.
DEFAULT_WARMUP = 10
#: Runs after the first one in the memory probe (the peak is normally reached by the first run).
MEMORY_RUNS = 5
#: Short EP names accepted on the command line, and the onnxruntime provider each one requests.
EXECUTION_PROVIDERS = {
    "cpu": "CPUExecutionProvider",
    "cuda": "CUDAExecutionProvider",
    "tensorrt": "TensorrtExecutionProvider",
}
#: Ratios to the baseline row (candidate / baseline) carried by every row.
RATIO_KEYS = ("latency_p50", "throughput", "size", "memory")

_EP_LABELS = {"cpu": "CPU", "cuda": "CUDA", "tensorrt": "TensorRT"}
# Providers listed after the requested one: nodes the GPU EP does not implement run there (ORT's usual setup).
_EP_FALLBACKS = {
    "cpu": (),
    "cuda": ("CPUExecutionProvider",),
    "tensorrt": ("CUDAExecutionProvider", "CPUExecutionProvider"),
}
_GPU_EPS = frozenset({"cuda", "tensorrt"})


# ------------------------------------------------------------------------------------------ providers
def parse_providers(spec: str | Iterable[str]) -> list[str]:
    """Short EP names from ``"cpu,cuda"`` (or a list); full ORT names such as ``CUDAExecutionProvider`` work too.

    Raises:
        InputError: An unknown name, or none at all.
    """
    items = spec.split(",") if isinstance(spec, str) else list(spec)
    by_full_name = {full.lower(): short for short, full in EXECUTION_PROVIDERS.items()}
    names: list[str] = []
    for item in items:
        name = item.strip().lower()
        if not name:
            continue
        name = by_full_name.get(name, name)
        if name not in EXECUTION_PROVIDERS:
            raise InputError(f"unknown execution provider '{item.strip()}' (known: {', '.join(EXECUTION_PROVIDERS)})")
        if name not in names:
            names.append(name)
    if not names:
        raise InputError(f"--ep: give at least one execution provider ({', '.join(EXECUTION_PROVIDERS)})")
    return names


def provider_unavailable_reason(ep: str, available: Sequence[str] | None = None) -> str | None:
    """Why ``ep`` cannot be used with the installed onnxruntime, or ``None`` when its build provides it.

    A provider the build lists can still fail when the session is created (no GPU, missing CUDA libraries);
    :func:`run_benchmark` checks ``session.get_providers()`` for that.

    Args:
        ep: A short EP name (``cpu``, ``cuda``, ``tensorrt``).
        available: ``onnxruntime.get_available_providers()`` (queried when not given).
    """
    import onnxruntime as ort

    if available is None:
        available = ort.get_available_providers()
    if EXECUTION_PROVIDERS[ep] in available:
        return None
    hint = " (install onnxruntime-gpu in place of onnxruntime on a machine with a CUDA GPU)" if ep in _GPU_EPS else ""
    return (
        f"{_EP_LABELS[ep]} EP not available: this onnxruntime build ({ort.__version__}) provides only "
        f"{', '.join(available)}{hint}"
    )


def _fallback_reason(ep: str, used: Sequence[str]) -> str | None:
    if EXECUTION_PROVIDERS[ep] in used:
        return None
    return (
        f"{_EP_LABELS[ep]} EP not available: onnxruntime fell back to {', '.join(used)} when creating the session "
        "(no usable GPU, or missing CUDA/cuDNN/TensorRT libraries)"
    )


def _create_session(source: str | bytes, ep: str, *, threads: int, spinning: bool):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    options.intra_op_num_threads = threads
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    if not spinning:
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    providers = [EXECUTION_PROVIDERS[ep], *_EP_FALLBACKS[ep]]
    with warnings.catch_warnings():
        # "Specified provider ... is not in available provider names": the fallback is detected and reported.
        warnings.filterwarnings("ignore", message="Specified provider", category=UserWarning)
        return ort.InferenceSession(source, options, providers=providers)


class _Runner:
    """One inference call on fixed inputs; on a GPU EP with IO binding, inputs and outputs stay on the device."""

    def __init__(self, session: Any, feeds: Mapping[str, np.ndarray], *, device: str | None = None) -> None:
        names = {i.name for i in session.get_inputs()}
        self.session = session
        self.feeds = {k: np.ascontiguousarray(v) for k, v in feeds.items() if k in names}
        self.binding = None
        if device is not None:
            import onnxruntime as ort

            binding = session.io_binding()
            # Keep the device copies referenced for the binding's lifetime.
            self._device_values = {
                name: ort.OrtValue.ortvalue_from_numpy(array, device, 0) for name, array in self.feeds.items()
            }
            for name, value in self._device_values.items():
                binding.bind_ortvalue_input(name, value)
            for output in session.get_outputs():
                binding.bind_output(output.name, device)
            self.binding = binding

    def __call__(self) -> None:
        if self.binding is not None:
            self.session.run_with_iobinding(self.binding)
        else:
            self.session.run(None, self.feeds)


# -------------------------------------------------------------------------------------------- timing
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
    clock: Callable[[], float] = time.perf_counter,
    progress: Callable[[float, float, str], None] | None = None,
) -> list[RunSeries]:
    """Time the runners round-robin, one run each per round (A B A B ...).

    Args:
        runners: Callables making one inference each.
        runs: Rounds to make; with ``duration`` too, whichever limit comes first.
        duration: Seconds to keep going for (at least one round is made).
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
        for index in active:
            began = clock()
            try:
                runners[index]()
            except Exception as error:  # a crash in onnxruntime fails this row only
                series[index].error = f"run {len(series[index].times) + 1} failed: {_one_line(error)}"
                logger.debug("runner %d failed", index, exc_info=True)
                continue
            series[index].times.append(clock() - began)
        rounds += 1
        if progress is not None:
            if runs is not None:
                progress(rounds, runs, f"round {rounds}/{runs}")
            else:
                elapsed = clock() - start
                progress(min(elapsed, duration or 0.0), duration or 0.0, f"round {rounds}, {elapsed:.1f}s")
    return series


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


# --------------------------------------------------------------------------------------------- rows
@dataclasses.dataclass
class BenchmarkRow:
    """One model on one execution provider.

    Attributes:
        model: The model file (``<bytes>`` / ``<model>`` for in-memory models).
        label: Short unique name shown in tables and plots.
        provider: Short EP name (``cpu``, ``cuda``, ``tensorrt``).
        status: ``ok``; ``unavailable`` (the EP cannot be used: nothing was timed); ``failed`` (the model
            crashed the runtime: the message holds the error).
        message: Why the row is not ``ok`` (or a note, e.g. a failed memory probe).
        session_providers: What ``session.get_providers()`` reported.
        file_size_bytes: Model file plus external data.
        session_seconds: Session creation time.
        first_run_ms: Latency of the first run after session creation.
        latency: Statistics of the timed runs.
        peak_rss_bytes: Peak resident memory of the per-model process (session, first run, a few runs).
        rss_growth_bytes: That peak minus the process's resident memory before the session was created.
        gpu_memory_bytes: GPU memory held by the per-model process (CUDA/TensorRT, when measurable).
        accuracy: Top-1 accuracy or the user metric, when asked for.
        ratios: Candidate / baseline for :data:`RATIO_KEYS` (``None`` where either side is unknown).
    """

    model: str
    label: str
    provider: str
    status: str = "ok"
    message: str | None = None
    session_providers: list[str] = dataclasses.field(default_factory=list)
    file_size_bytes: int | None = None
    session_seconds: float | None = None
    first_run_ms: float | None = None
    latency: LatencyStats | None = None
    peak_rss_bytes: int | None = None
    rss_growth_bytes: int | None = None
    gpu_memory_bytes: int | None = None
    accuracy: float | None = None
    ratios: dict[str, float | None] = dataclasses.field(default_factory=dict)

    @property
    def ok(self) -> bool:
        """Whether the row was measured."""
        return self.status == "ok"

    def metrics(self) -> dict[str, float | None]:
        """The figures ratios are taken of, keyed as :data:`RATIO_KEYS`."""
        return {
            "latency_p50": self.latency.p50_ms if self.latency else None,
            "throughput": self.latency.throughput if self.latency else None,
            "size": float(self.file_size_bytes) if self.file_size_bytes is not None else None,
            "memory": float(self.rss_growth_bytes) if self.rss_growth_bytes is not None else None,
        }

    def fail(self, status: str, message: str) -> None:
        """Mark the row as not measured: drop any figures taken so far."""
        self.status, self.message = status, message
        self.session_seconds = self.first_run_ms = None
        self.latency = None

    def to_json(self) -> dict[str, Any]:
        """JSON-able dict (``latency`` nested, ``None`` when not measured)."""
        data = dataclasses.asdict(self)
        data["latency"] = self.latency.to_json() if self.latency else None
        return data

    def flat(self) -> dict[str, Any]:
        """One CSV line: latency and ratio fields spread into ``latency_*`` / ``ratio_*`` columns."""
        data = self.to_json()
        latency = data.pop("latency") or {}
        ratios = data.pop("ratios") or {}
        data["session_providers"] = ";".join(data["session_providers"])
        for key in ("mean_ms", "p50_ms", "p90_ms", "p99_ms", "min_ms", "max_ms", "std_ms", "runs", "batch"):
            data[f"latency_{key}"] = latency.get(key)
        data["throughput"] = latency.get("throughput")
        for key in RATIO_KEYS:
            data[f"ratio_{key}"] = ratios.get(key)
        return data


#: Columns of :func:`write_csv`, in order.
CSV_COLUMNS = (
    "label",
    "model",
    "provider",
    "status",
    "message",
    "file_size_bytes",
    "session_seconds",
    "first_run_ms",
    "latency_runs",
    "latency_batch",
    "latency_mean_ms",
    "latency_p50_ms",
    "latency_p90_ms",
    "latency_p99_ms",
    "latency_min_ms",
    "latency_max_ms",
    "latency_std_ms",
    "throughput",
    "peak_rss_bytes",
    "rss_growth_bytes",
    "gpu_memory_bytes",
    "accuracy",
    *(f"ratio_{key}" for key in RATIO_KEYS),
    "session_providers",
)


@dataclasses.dataclass
class BenchmarkResult:
    """Every row, the settings used and notes on how things were measured.

    Attributes:
        rows: Per EP, one row per model in the order given (the first model is the baseline).
        settings: Runs, warm-up, threads, batch, input shapes, input source, EPs, onnxruntime version.
        notes: How inputs were made, interleaving, spinning, memory method, skipped options.
    """

    rows: list[BenchmarkRow]
    settings: dict[str, Any]
    notes: list[str]

    @property
    def baseline(self) -> str | None:
        """Label of the baseline model."""
        return self.rows[0].label if self.rows else None

    def to_json(self) -> dict[str, Any]:
        """JSON-able dict: ``settings``, ``notes``, ``baseline``, ``rows``."""
        return {
            "settings": self.settings,
            "notes": self.notes,
            "baseline": self.baseline,
            "rows": [row.to_json() for row in self.rows],
        }


def compute_ratios(
    baseline: Mapping[str, float | None], candidate: Mapping[str, float | None]
) -> dict[str, float | None]:
    """Candidate / baseline for every key of :data:`RATIO_KEYS`.

    A ratio is ``None`` when either figure is unknown or the baseline's is not positive. Below 1 means
    smaller: for ``latency_p50``, ``size`` and ``memory`` that is better; for ``throughput`` it is worse.
    """
    ratios: dict[str, float | None] = {}
    for key in RATIO_KEYS:
        base, value = baseline.get(key), candidate.get(key)
        ratios[key] = value / base if base is not None and value is not None and base > 0 else None
    return ratios


def apply_ratios(rows: Sequence[BenchmarkRow]) -> None:
    """Set ``ratios`` on every measured row against the first model's row on the same EP."""
    baselines: dict[str, BenchmarkRow] = {}
    for row in rows:
        baselines.setdefault(row.provider, row)
    for row in rows:
        base = baselines[row.provider]
        row.ratios = compute_ratios(base.metrics() if base.ok else {}, row.metrics()) if row.ok else {}


# ------------------------------------------------------------------------------------------- models
@dataclasses.dataclass
class ModelEntry:
    """A model to benchmark or compare: where ORT reads it from, and its signature."""

    label: str
    model: str
    source: str | bytes
    specs: list[verification.InputSpec]
    outputs: list[str]
    size: int | None


def load_entry(model: io.ModelSource, label: str | None = None, *, loaded: ir.Model | None = None) -> ModelEntry:
    """Load a model's signature and size; ORT will read it from its file (external data included).

    Args:
        model: A model file, bytes, ``ModelProto`` or ``onnx_ir.Model``.
        label: Its name in tables (default: the file stem).
        loaded: ``model`` already loaded with :func:`sftonnx.io.load` (saves parsing it again).

    Raises:
        InputError: The model cannot be loaded or has inputs sftonnx cannot feed.
    """
    if isinstance(model, (str, os.PathLike)):
        path = pathlib.Path(model)
        loaded = loaded if loaded is not None else io.load(path)
        return ModelEntry(
            label or path.stem,
            str(path),
            str(path),
            verification.input_specs(loaded),
            [v.name or "" for v in loaded.graph.outputs],
            _file_size(path, loaded),
        )
    loaded = loaded if loaded is not None else io.load(model)
    source = bytes(model) if isinstance(model, (bytes, bytearray)) else io.to_bytes(loaded)
    return ModelEntry(
        label or "model",
        "<bytes>" if isinstance(model, (bytes, bytearray)) else "<model>",
        source,
        verification.input_specs(loaded),
        [v.name or "" for v in loaded.graph.outputs],
        len(source),
    )


def _file_size(path: pathlib.Path, model: ir.Model) -> int:
    size = path.stat().st_size
    seen: set[pathlib.Path] = set()
    for graph in (model.graph, *model.graph.subgraphs()):
        for value in graph.initializers.values():
            tensor = value.const_value
            if isinstance(tensor, ir.ExternalTensor):
                data = pathlib.Path(tensor.path)
                if data not in seen and data.is_file():
                    seen.add(data)
                    size += data.stat().st_size
    return size


def _unique_labels(models: Sequence[io.ModelSource]) -> list[str]:
    labels = []
    for index, model in enumerate(models):
        if isinstance(model, (str, os.PathLike)):
            labels.append(pathlib.Path(model).stem)
        else:
            labels.append(f"model{index + 1}")
    for index, model in enumerate(models):
        if labels.count(labels[index]) > 1 and isinstance(model, (str, os.PathLike)):
            path = pathlib.Path(model)
            labels[index] = f"{path.parent.name}/{path.stem}" if path.parent.name else path.stem
    seen: dict[str, int] = {}
    for index, label in enumerate(labels):
        seen[label] = seen.get(label, 0) + 1
        if seen[label] > 1:
            labels[index] = f"{label}#{seen[label]}"
    return labels


def check_same_signature(reference: ModelEntry, candidate: ModelEntry, *, outputs: bool = True) -> None:
    """Both models take the same inputs (and give the same outputs), by name.

    Raises:
        InputError: The input (or output) names or counts differ.
    """
    kinds = [("inputs", [s.name for s in reference.specs], [s.name for s in candidate.specs])]
    if outputs:
        kinds.append(("outputs", reference.outputs, candidate.outputs))
    for kind, ref, cand in kinds:
        if sorted(ref) != sorted(cand):
            raise InputError(
                f"{candidate.label} and {reference.label} have different {kind}: "
                f"{len(cand)} ({', '.join(cand) or 'none'}) vs {len(ref)} ({', '.join(ref) or 'none'})"
            )


def fit_feeds(entry: ModelEntry, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The feeds checked against a model's rank and fixed dims, cast to its input dtypes."""
    fitted = {}
    for spec in entry.specs:
        array = feeds[spec.name]
        verification.check_shape(array, spec, entry.label)
        fitted[spec.name] = array.astype(spec.dtype, copy=False)
    return fitted


def _timing_feeds(
    specs: Sequence[verification.InputSpec],
    *,
    data: str | os.PathLike | Mapping[str, np.ndarray] | None,
    input_shapes: Any,
    batch: int | None,
    seed: int = 0,
) -> tuple[dict[str, np.ndarray], int, list[str]]:
    """One feed dict for the timed runs: the first ``batch`` samples of the data, or random inputs."""
    fixed = {s.shape[0] for s in specs if s.shape and isinstance(s.shape[0], int)}
    if data is not None:
        if isinstance(data, (str, os.PathLike)):
            arrays = verification.load_npz(data, specs, allow_extra=("labels",))
            where = pathlib.Path(data).name
        else:
            missing = [s.name for s in specs if s.name not in data]
            if missing:
                raise InputError(f"data has no array for input(s) {', '.join(missing)}")
            arrays = {s.name: np.asarray(data[s.name]) for s in specs}
            where = "the data"
        size = batch or (fixed.pop() if len(fixed) == 1 else 1)
        feeds = {}
        for spec in specs:
            array = arrays[spec.name]
            if array.ndim == 0:
                feeds[spec.name] = array
                continue
            if len(array) < size:
                raise InputError(f"{where}: '{spec.name}' has {len(array)} samples, the batch needs {size}")
            feeds[spec.name] = array[:size]
        return feeds, size, [f"inputs: the first {size} sample(s) of {where}, the same for every model"]
    overrides = verification.parse_input_shapes(input_shapes)
    shapes, notes = verification.resolve_shapes(specs, overrides)
    if batch is not None:
        for spec in specs:
            if spec.name in overrides or not spec.shape:
                continue
            if isinstance(spec.shape[0], int):
                if spec.shape[0] != batch:
                    raise InputError(
                        f"--batch {batch}: input '{spec.name}' has a fixed batch dimension of {spec.shape[0]} "
                        f"({spec.describe()})"
                    )
                continue
            shapes[spec.name] = (batch, *shapes[spec.name][1:])
            notes = [n for n in notes if not n.startswith(f"{spec.name}: dynamic dimension 0 ")]
            notes.append(f"{spec.name}: batch dimension set to {batch} (--batch)")
    feeds = verification.random_feeds(specs, shapes, seed=seed)
    firsts = {shape[0] for shape in shapes.values() if shape}
    size = batch or (firsts.pop() if len(firsts) == 1 else 1)
    notes.append("inputs: one random set (floats ~ N(0,1), integers in [0,8)), the same for every model")
    return feeds, size, notes


# --------------------------------------------------------------------------------------- evaluation
Evaluator = Callable[[Any], float]


def _labels_evaluator(
    path: str | os.PathLike, specs: Sequence[verification.InputSpec], batch: int | None
) -> tuple[Evaluator, str]:
    data = verification.load_npz(path, specs, allow_extra=("labels",))
    name = pathlib.Path(path).name
    if "labels" not in data:
        raise InputError(f"{name} has no 'labels' array (needed for --eval top-1 accuracy)")
    labels = np.asarray(data["labels"])
    if labels.ndim >= 2:
        labels = labels.reshape(labels.shape[0], -1).argmax(axis=1)  # one-hot / scores
    labels = labels.reshape(-1)
    names = [s.name for s in specs]
    samples = min(len(data[n]) for n in names) if names else 0
    if len(labels) != samples:
        raise InputError(f"{name}: 'labels' has {len(labels)} entries for {samples} input samples")
    fixed = {s.shape[0] for s in specs if s.shape and isinstance(s.shape[0], int)}
    size = fixed.pop() if len(fixed) == 1 else (batch or 32)
    feeds = verification.batches(data, names, size)

    def evaluate(session: Any) -> float:
        first = session.get_outputs()[0].name
        predictions = []
        for feed in feeds:
            (output,) = session.run([first], feed)
            predictions.append(_top1(np.asarray(output)))
        predicted = np.concatenate(predictions) if predictions else np.zeros(0, dtype=np.int64)
        return float(np.mean(predicted == labels[: len(predicted)])) if predicted.size else float("nan")

    return evaluate, f"accuracy: top-1 over {samples} labelled samples of {name}"


def _top1(output: np.ndarray) -> np.ndarray:
    """Argmax over the last axis after squeezing trailing unit axes (``[N, C, 1, 1]`` → ``[N, C]``)."""
    while output.ndim > 2 and output.shape[-1] == 1:
        output = output.reshape(output.shape[:-1])
    if output.ndim == 1:
        output = output.reshape(1, -1)
    return output.argmax(axis=-1).reshape(-1)


def _metric_evaluator(spec: str) -> tuple[Evaluator, str]:
    module_name, _, function_name = spec.rpartition(":")
    if not module_name or not function_name:
        raise InputError(f"--eval expects labels.npz or module:function, got '{spec}'")
    module = _import_module(module_name, spec)
    function = getattr(module, function_name, None)
    if not callable(function):
        raise InputError(f"--eval {spec}: module '{module_name}' has no function '{function_name}'")

    def evaluate(session: Any) -> float:
        try:
            value = function(session)
        except Exception as error:  # a user metric: its failure is a usage error, reported in one line
            raise InputError(f"--eval {spec} raised {type(error).__name__}: {_one_line(error)}") from None
        try:
            return float(value)
        except (TypeError, ValueError):
            raise InputError(f"--eval {spec} returned {type(value).__name__}, expected a float") from None

    return evaluate, f"accuracy: user metric {spec}"


def _import_module(name: str, spec: str) -> Any:
    try:
        if name.endswith(".py"):
            path = pathlib.Path(name)
            if not path.is_file():
                raise InputError(f"--eval {spec}: file not found: {path}")
            module_spec = importlib.util.spec_from_file_location(path.stem, path)
            if module_spec is None or module_spec.loader is None:
                raise InputError(f"--eval {spec}: cannot import {path}")
            module = importlib.util.module_from_spec(module_spec)
            module_spec.loader.exec_module(module)
            return module
        try:
            return importlib.import_module(name)
        except ModuleNotFoundError as error:
            if error.name != name.split(".")[0] or os.getcwd() in sys.path:
                raise
            # The console script does not put the working folder on sys.path (python -m does): try it once.
            sys.path.insert(0, os.getcwd())
            try:
                return importlib.import_module(name)
            finally:
                sys.path.remove(os.getcwd())
    except InputError:
        raise
    except Exception as error:  # any import-time failure of user code
        raise InputError(f"--eval {spec}: cannot import '{name}': {type(error).__name__}: {_one_line(error)}") from None


def _evaluator(
    evaluate: str | os.PathLike | Evaluator | None,
    specs: Sequence[verification.InputSpec],
    batch: int | None,
) -> tuple[Evaluator | None, str | None]:
    if evaluate is None:
        return None, None
    if callable(evaluate):
        return evaluate, f"accuracy: user metric {getattr(evaluate, '__name__', 'function')}"
    text = os.fspath(evaluate)
    if text.endswith(".npz") or pathlib.Path(text).is_file():
        return _labels_evaluator(text, specs, batch)
    return _metric_evaluator(text)


# ------------------------------------------------------------------------------------------- memory
def _status_kib(field: str) -> int | None:
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def _reset_peak_rss() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as clear:
            clear.write("5")  # Linux >= 4.0: reset VmHWM to the current RSS
        return True
    except OSError:
        return False


def _gpu_memory_bytes(pid: int) -> int | None:
    tool = shutil.which("nvidia-smi")
    if tool is None:
        return None
    try:
        listing = subprocess.run(
            [tool, "--query-compute-apps=pid,used_memory", "--format=csv,noheader,nounits"],
            capture_output=True,
            text=True,
            timeout=20,
            check=True,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    for line in listing.splitlines():
        parts = [p.strip() for p in line.split(",")]
        if len(parts) == 2 and parts[0] == str(pid) and parts[1].isdigit():
            return int(parts[1]) * 2**20
    return None


def _memory_probe(
    source: str | bytes,
    ep: str,
    feeds: dict[str, np.ndarray],
    threads: int,
    spinning: bool,
    io_binding: bool,
    runs: int,
) -> dict[str, Any]:
    """Runs in a fresh spawned process: peak RSS over session creation and a few runs."""
    import onnxruntime  # noqa: F401  (imported before the baseline, as in the parent)

    reset = _reset_peak_rss()
    before = _status_kib("VmRSS")
    session = _create_session(source, ep, threads=threads, spinning=spinning)
    runner = _Runner(session, feeds, device="cuda" if io_binding and ep in _GPU_EPS else None)
    for _ in range(1 + runs):
        runner()
    peak = _status_kib("VmHWM")
    if peak is None:  # not Linux: ru_maxrss (kB on Linux, bytes on macOS) over the whole process
        import resource

        maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        peak = maxrss // 1024 if sys.platform == "darwin" else maxrss
    return {
        "peak_rss_bytes": peak * 1024 if peak is not None else None,
        "rss_growth_bytes": (peak - before) * 1024 if peak is not None and before is not None else None,
        "gpu_memory_bytes": _gpu_memory_bytes(os.getpid()) if ep in _GPU_EPS else None,
        "reset": reset,
    }


def _measure_memory(row: BenchmarkRow, source: str | bytes, feeds: dict[str, np.ndarray], **kwargs: Any) -> None:
    context = multiprocessing.get_context("spawn")
    try:
        with concurrent.futures.ProcessPoolExecutor(max_workers=1, mp_context=context) as pool:
            figures = pool.submit(_memory_probe, source, row.provider, feeds, **kwargs).result()
    except Exception as error:  # the probe is best effort: keep the row's timings
        row.message = f"memory probe failed: {_one_line(error)}"
        logger.warning("%s [%s]: memory probe failed: %s", row.label, row.provider, error)
        return
    row.peak_rss_bytes = figures["peak_rss_bytes"]
    row.rss_growth_bytes = figures["rss_growth_bytes"]
    row.gpu_memory_bytes = figures["gpu_memory_bytes"]


# --------------------------------------------------------------------------------------------- main
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
    eps = parse_providers(providers)
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
    names = list(labels) if labels is not None else _unique_labels(models)
    if len(names) != len(models):
        raise InputError(f"{len(names)} labels for {len(models)} models")
    entries = [load_entry(model, label) for model, label in zip(models, names, strict=True)]
    baseline = entries[0]
    feeds, samples, notes = _timing_feeds(baseline.specs, data=data, input_shapes=input_shapes, batch=batch)
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
    evaluator, eval_note = _evaluator(evaluate, baseline.specs, batch)
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
    elif any(ep in _GPU_EPS for ep in eps):
        notes.append("GPU rows include host-device copies (use --io-binding to leave them out)")

    rows: list[BenchmarkRow] = []
    for ep in eps:
        ep_rows = [BenchmarkRow(e.model, e.label, ep, file_size_bytes=e.size) for e in entries]
        rows.extend(ep_rows)
        reason = provider_unavailable_reason(ep)
        if reason is not None:
            for row in ep_rows:
                row.fail("unavailable", reason)
            continue
        device = "cuda" if io_binding and ep in _GPU_EPS else None
        sessions: dict[int, Any] = {}
        runners: dict[int, _Runner] = {}
        for index, (entry, row) in enumerate(zip(entries, ep_rows, strict=True)):
            started = clock()
            try:
                session = _create_session(entry.source, ep, threads=threads, spinning=spinning)
            except Exception as error:  # onnxruntime raises assorted types for models it cannot load
                if ep == "cpu":
                    raise InputError(f"{entry.label}: onnxruntime cannot load the model: {_one_line(error)}") from None
                row.fail("unavailable", f"{_EP_LABELS[ep]} EP not available: {_one_line(error)}")
                continue
            row.session_seconds = clock() - started
            row.session_providers = list(session.get_providers())
            fallback = _fallback_reason(ep, row.session_providers)
            if fallback is not None:
                row.fail("unavailable", fallback)
                continue
            try:
                runner = _Runner(session, fitted[index], device=device)
                started = clock()
                runner()
                row.first_run_ms = (clock() - started) * 1e3
                for _ in range(warmup):
                    runner()
            except Exception as error:  # the model crashes the runtime: fail this row, keep the others
                row.fail("failed", f"first/warm-up run failed: {_one_line(error)}")
                continue
            sessions[index], runners[index] = session, runner
        order = sorted(runners)

        def report(done: float, total: float, text: str, ep: str = ep) -> None:
            if progress is not None:
                progress(done, total, f"{_EP_LABELS[ep]}: {text}")

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
                    row.accuracy = evaluator(sessions[index])
                except InputError:
                    raise
                except Exception as error:  # the model crashed on the evaluation data
                    row.fail("failed", f"evaluation failed: {_one_line(error)}")
        sessions.clear()
        runners.clear()

    if memory:
        for row in rows:
            if row.ok:
                entry = entries[names.index(row.label)]
                _measure_memory(
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


def _one_line(error: BaseException) -> str:
    text = str(error).strip()
    text = text.splitlines()[0] if text else type(error).__name__
    return text if len(text) <= 300 else text[:297] + "..."


# ------------------------------------------------------------------------------------------- output
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


def write_plot(result: BenchmarkResult, path: str | os.PathLike) -> pathlib.Path:
    """Scatter p50 latency against model size, one annotated point per measured row (with accuracy if known).

    matplotlib is imported here, and the figure is drawn on an Agg canvas without touching pyplot's state.

    Raises:
        InputError: matplotlib is not installed, or the file cannot be written.
    """
    path = pathlib.Path(path)
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
        axes.scatter(xs, ys, marker=markers.get(ep, "o"), s=50, label=_EP_LABELS[ep])
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
    figure.tight_layout()
    try:
        figure.savefig(path, format="png")
    except OSError as error:
        raise InputError(f"cannot write {path}: {error.strerror or error}") from None
    return path


# ------------------------------------------------------------------------------------------- compare
@dataclasses.dataclass
class CompareResult:
    """Output metrics of a candidate model against a reference on the same inputs.

    Attributes:
        reference: The reference model (``A``).
        candidate: The compared model (``B``).
        comparison: Per-output metrics and failures (from :func:`sftonnx.verify.compare_outputs`).
        limits: The limits checked (``atol``/``rtol``/``min_cosine``; absent when not given).
        notes: How the inputs were made.
    """

    reference: str
    candidate: str
    comparison: verification.Comparison
    limits: dict[str, float]
    notes: list[str]

    @property
    def passed(self) -> bool:
        """Whether every checked limit held."""
        return self.comparison.passed

    def to_json(self) -> dict[str, Any]:
        """Keys: ``reference``, ``candidate``, ``limits``, ``passed``, ``failures``, ``outputs``, ``notes``."""
        return {
            "reference": self.reference,
            "candidate": self.candidate,
            "limits": self.limits,
            **self.comparison.to_json(),
            "notes": self.notes,
        }


def compare_entries(
    reference: ModelEntry,
    candidate: ModelEntry,
    feeds: Sequence[Mapping[str, np.ndarray]],
    *,
    tolerance: verification.Tolerance | None = None,
    budget: verification.Budget | None = None,
    notes: Sequence[str] = (),
) -> CompareResult:
    """Run both models on CPU on the same feeds and compare their outputs, matched by name.

    Args:
        reference: The reference model (its output order is used).
        candidate: The model compared with it (same input and output names: :func:`check_same_signature`).
        feeds: Feed dicts for the reference's inputs (cast to the candidate's input dtypes when they differ).
        tolerance: Elementwise ``atol``/``rtol`` limits, checked when given.
        budget: Cosine (and other) limits, checked when given.
        notes: How the feeds were made (kept in the result).

    Raises:
        InputError: onnxruntime cannot load or run either model on these inputs.
    """
    check_same_signature(reference, candidate)
    outputs = []
    for entry in (reference, candidate):
        try:
            session = _create_session(entry.source, "cpu", threads=0, spinning=True)
        except Exception as error:  # onnxruntime raises assorted types for models it cannot load
            raise InputError(f"{entry.label}: onnxruntime cannot load the model: {_one_line(error)}") from None
        try:
            outputs.append([session.run(reference.outputs, fit_feeds(entry, feed)) for feed in feeds])
        except InputError:
            raise
        except Exception as error:  # the model does not run on these inputs
            raise InputError(f"{entry.label}: onnxruntime cannot run the model: {_one_line(error)}") from None
    comparison = verification.compare_outputs(
        reference.outputs, outputs[0], outputs[1], tolerance=tolerance, budget=budget
    )
    limits: dict[str, float] = {}
    if tolerance is not None:
        limits.update(atol=tolerance.atol, rtol=tolerance.rtol)
    if budget is not None:
        limits.update({k: v for k, v in dataclasses.asdict(budget).items() if v is not None})
    return CompareResult(reference.model, candidate.model, comparison, limits, list(notes))
