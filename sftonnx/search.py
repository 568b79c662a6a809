"""Accuracy-aware automatic optimization (``--preset auto``): sensitivity analysis, then a budgeted search.

Method (issue #8):

1. **Candidates that need no search.** Every fixed preset that exists at run time (``lossless``, ``fast-cpu``,
   ``int8``, ``int8-dynamic``, ``fp16``, ``compact``, ``max``) is evaluated, so the result is never worse than the best
   preset that meets the budget. The ``lossless`` result is the *base* every lossy configuration starts from;
   the reproducer spec is ``lossless,<lossy passes>``.
2. **Per-layer sensitivity.** For each lossy technique registered in ``sftonnx.passes.REGISTRY`` and each
   layer it can target (Conv/Gemm/MatMul with a constant weight, named), the technique is applied to that
   layer alone at each level - ``quantize`` / ``quantize-dynamic``: int8 or float; ``prune-channels``:
   ``ratio`` 0.25 / 0.5 / 0.75; ``factorize-conv`` / ``factorize-gemm``: ``ratio`` (parameters kept) 0.5 / 0.25 - and
   the loss on the evaluation set is measured. Probes that change nothing (a layer the pass declines) drop
   the layer from that technique.
3. **Greedy back-off per technique.** Start with every layer at its most aggressive level that is feasible
   on its own; then back off (one level down) the layer with the largest probe loss, again and again: a
   *ladder* of configurations from most to least aggressive. The first feasible rung is found by galloping
   (rungs 0, 1, 3, 7, ...) and bisection, assuming that backing off never hurts.
4. **Compatible techniques.** A feasible structural configuration (channel pruning, factorization) gets the
   quantization ladder added on top, searched the same way.
5. **Selection.** Every non-probe candidate that ran is timed on the target EP with
   :func:`sftonnx.benchmark.run_benchmark` (interleaved with the original, serially), the front-runners once
   more; the chosen model is the fastest (``objective=latency``) or smallest (``objective=size``) feasible one.

Budgets (:class:`SearchBudget`):

* with ``evaluate`` (``labels.npz`` for top-1 accuracy, or ``module:function`` / a callable taking an
  ``onnxruntime.InferenceSession`` and returning a higher-is-better float), ``max_accuracy_drop`` bounds
  ``metric(original) - metric(candidate)``. Top-1 accuracy from labels is in **percent**, so ``1.0`` means one
  percentage point; a user metric is used in its own units.
* without labels, ``max_error`` bounds the **output error** ``1 - min cosine`` over the model's outputs (cosine
  similarity of all samples of an output flattened together, as :func:`sftonnx.verify.compare_outputs`
  computes it) against the original, on ``data`` or seeded random inputs. ``1 - cosine`` is scale-free
  (logits, embeddings and regressions alike) and is the same figure the final verification checks
  (``Budget(min_cosine=1 - max_error)``), where a max-abs bound would need a per-model scale.

Candidates are cached on disk, keyed by (model hash, spec, data hashes, seed): an interrupted search resumes
where it stopped. Candidate evaluation may run in parallel processes; latency never does (see
:func:`measure_latency`). This module never prints: progress goes to a callback.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import dataclasses
import hashlib
import json
import logging
import math
import multiprocessing
import os
import pathlib
import pickle
import re
import tempfile
import time
from collections.abc import Callable, Generator, Iterable, Mapping, Sequence
from typing import Any

import numpy as np

from sftonnx import io
from sftonnx import verify as verification
from sftonnx.errors import InputError, VerificationError, first_line
from sftonnx.evaluate import make_evaluator

__all__ = [
    "BASE_PRESET",
    "CACHE_VERSION",
    "FIXED_PRESETS",
    "BudgetNotMetError",
    "Candidate",
    "SearchBudget",
    "SearchResult",
    "Technique",
    "available_techniques",
    "measure_latency",
    "measure_model",
    "pareto_front",
    "run_search",
    "write_pareto_plot",
]

logger = logging.getLogger(__name__)

#: Presets always evaluated as candidates (those that exist at run time).
FIXED_PRESETS = ("lossless", "fast-cpu", "int8", "int8-dynamic", "fp16", "compact", "max")
#: The lossless pipeline every searched configuration starts from.
BASE_PRESET = "lossless"
#: Bump when the record format or the evaluation method changes (old cache entries are then ignored).
CACHE_VERSION = 1
#: Random input sets used for the output-error budget when no data is given.
RANDOM_SAMPLES = 8
#: Layer names that cannot be written into a spec option (separators of the spec and tuple syntax).
_UNSAFE_NAME = re.compile(r"[,{}|;=\s]")


# --------------------------------------------------------------------------------------------- budget
@dataclasses.dataclass(frozen=True)
class SearchBudget:
    """What a candidate must meet: an accuracy drop on an evaluation set and/or an output error.

    Attributes:
        max_accuracy_drop: Largest ``metric(original) - metric(candidate)`` (percentage points for labels).
        max_error: Largest ``1 - min cosine`` over outputs against the original.
    """

    max_accuracy_drop: float | None = None
    max_error: float | None = None

    def __post_init__(self) -> None:
        if self.max_accuracy_drop is None and self.max_error is None:
            raise InputError("auto: give --max-accuracy-drop (with --eval) or --max-error")
        for name in ("max_accuracy_drop", "max_error"):
            value = getattr(self, name)
            if value is not None and (not math.isfinite(value) or value < 0):
                raise InputError(f"auto: {name.replace('_', '-')} must be a finite number >= 0, got {value}")

    def feasible(self, candidate: Candidate) -> bool:
        """Whether an evaluated candidate meets every limit."""
        if candidate.status != "ok":
            return False
        if self.max_accuracy_drop is not None and (
            candidate.drop is None or not candidate.drop <= self.max_accuracy_drop + 1e-9
        ):
            return False
        return self.max_error is None or (candidate.error is not None and candidate.error <= self.max_error)

    def loss(self, candidate: Candidate) -> tuple[float, float]:
        """Sort key for "how harmful": (budgeted loss, output error); failures sort last."""
        if candidate.status != "ok":
            return (math.inf, math.inf)
        error = candidate.error if candidate.error is not None else math.inf
        if self.max_accuracy_drop is not None:
            drop = candidate.drop if candidate.drop is not None else math.inf
            return (drop, error)
        return (error, error)

    def describe(self) -> str:
        """E.g. ``accuracy drop <= 1 point`` or ``output error (1 - cosine) <= 0.01``."""
        parts = []
        if self.max_accuracy_drop is not None:
            parts.append(f"accuracy drop <= {self.max_accuracy_drop:g}")
        if self.max_error is not None:
            parts.append(f"output error (1 - min cosine) <= {self.max_error:g}")
        return " and ".join(parts)

    def verification_budget(self, chosen: Candidate) -> verification.Budget:
        """The :class:`sftonnx.verify.Budget` the final write is verified with, consistent with the search.

        With an output-error budget: ``min_cosine = 1 - max_error`` (the same figure on the same inputs).
        With an accuracy budget only: the chosen model's own cosine on the verification inputs, minus a margin
        for float noise - so the check proves that the written model is the one whose accuracy was measured.
        """
        if self.max_error is not None:
            return verification.Budget(min_cosine=1.0 - self.max_error)
        cosine = chosen.cosine if chosen.cosine is not None else 0.0
        return verification.Budget(min_cosine=max(-1.0, cosine - 1e-4))


class BudgetNotMetError(VerificationError):
    """No candidate met the budget (exit 3); ``result`` holds the search, ``result.best`` the closest one."""

    def __init__(self, message: str, *, result: SearchResult) -> None:
        super().__init__(message, metrics=result.best.to_json() if result.best else {})
        self.result = result


# ---------------------------------------------------------------------------------------- candidates
@dataclasses.dataclass
class Candidate:
    """One evaluated configuration.

    Attributes:
        name: Short label (``preset:int8``, ``quantize#0``, ``probe:prune-channels:conv1@ratio=0.5``).
        kind: ``original``, ``preset``, ``probe`` (sensitivity), ``search`` (a ladder rung) or ``combo``.
        spec: The exact pass spec that reproduces the model from the original (``""`` for the original).
        status: ``ok`` or ``failed`` (the pipeline raised; ``message`` says why).
        message: Why it failed, or a note.
        changed: Whether the lossy passes changed anything (probes that do not are ignored).
        size_bytes: The written model file (with external data).
        metric: The evaluation metric (top-1 % for labels), when an evaluation is given.
        drop: ``metric(original) - metric``.
        error: ``1 - min cosine`` over outputs against the original on the verification inputs.
        cosine: Worst cosine over outputs.
        max_abs: Largest absolute output difference.
        top1_agreement: Top-1 agreement with the original (classifier-like outputs).
        latency_ms: p50 latency on the target EP (only for timed candidates).
        feasible: Whether it meets the budget.
        model_path: The cached model file.
        cached: Whether the record came from the cache.
        seconds: Evaluation time.
    """

    name: str
    kind: str
    spec: str
    status: str = "ok"
    message: str = ""
    changed: bool = True
    size_bytes: int | None = None
    metric: float | None = None
    drop: float | None = None
    error: float | None = None
    cosine: float | None = None
    max_abs: float | None = None
    top1_agreement: float | None = None
    latency_ms: float | None = None
    feasible: bool = False
    model_path: str | None = None
    sha256: str | None = None
    cached: bool = False
    seconds: float = 0.0

    def to_json(self) -> dict[str, Any]:
        """JSON-able dict."""
        return dataclasses.asdict(self)


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


# ---------------------------------------------------------------------------------------- techniques
@dataclasses.dataclass(frozen=True)
class Technique:
    """A lossy pass searched per layer.

    Attributes:
        name: The registry name of the pass.
        ops: Op types of the layers it targets.
        levels: Option text per level above 0 (level 0 = layer left alone), least aggressive first.
        kind: ``quant`` (on/off per layer, added last) or ``struct`` (pruning, factorization).
    """

    name: str
    ops: tuple[str, ...]
    levels: tuple[str, ...]
    kind: str

    def probe_spec(self, layer: str, level: int, extra: str) -> str:
        """The spec applying this technique to ``layer`` alone at ``level`` (1-based)."""
        if self.kind == "quant":
            # Negative look-ahead: every node whose name is not exactly `layer` is excluded (stays float).
            return _spec(self.name, extra, f"exclude_pattern=^(?!{re.escape(layer)}$)")
        return _spec(self.name, extra, self.levels[level - 1], f"layers={layer}")

    def config_spec(self, config: Mapping[str, int], extra: str) -> str | None:
        """The spec of a per-layer configuration ``{layer: level}`` (``None`` when nothing is applied)."""
        if not any(config.values()):
            return None
        if self.kind == "quant":
            excluded = [layer for layer, level in config.items() if level == 0]
            return _spec(self.name, extra, f"exclude_nodes={';'.join(excluded)}" if excluded else "")
        parts = []
        for level in range(len(self.levels), 0, -1):
            layers = [layer for layer, chosen in config.items() if chosen == level]
            if layers:
                parts.append(_spec(self.name, extra, self.levels[level - 1], f"layers={';'.join(layers)}"))
        return ",".join(parts)


def _spec(name: str, *options: str) -> str:
    body = ",".join(option for option in options if option)
    return f"{name}{{{body}}}" if body else name


#: The lossy techniques the search knows, in the order they are applied in a combined spec.
TECHNIQUES = (
    Technique("prune-channels", ("Conv", "Gemm", "MatMul"), ("ratio=0.25", "ratio=0.5", "ratio=0.75"), "struct"),
    Technique("factorize-conv", ("Conv",), ("ratio=0.5", "ratio=0.25"), "struct"),
    Technique("factorize-gemm", ("Gemm", "MatMul"), ("ratio=0.5", "ratio=0.25"), "struct"),
    Technique("quantize", ("Conv", "ConvTranspose", "Gemm", "MatMul"), ("",), "quant"),
    Technique("quantize-dynamic", ("Gemm", "MatMul"), ("",), "quant"),
)


def available_techniques(names: Iterable[str] | None = None) -> list[Technique]:
    """The techniques whose pass is registered now (optionally only ``names``).

    Raises:
        InputError: ``names`` holds a technique that is unknown or not registered.
    """
    from sftonnx.passes import REGISTRY

    known = {t.name: t for t in TECHNIQUES}
    if names is None:
        return [t for t in TECHNIQUES if t.name in REGISTRY]
    chosen = []
    for name in names:
        if name not in known:
            raise InputError(f"auto: unknown technique '{name}' (known: {', '.join(known)})")
        if name not in REGISTRY:
            raise InputError(f"auto: technique '{name}' is not available (its pass is not registered)")
        chosen.append(known[name])
    return [t for t in TECHNIQUES if t in chosen]


def _technique_extra(technique: Technique, calibrated: bool) -> str:
    """Options every spec of a technique carries (calibration behaviour)."""
    if technique.name == "quantize" and not calibrated:
        return "allow_random=true"
    # prune-channels refits on calibration data by itself whenever it is given (reconstruct=None).
    return ""


def _layers(model_path: str, technique: Technique) -> list[str]:
    """Named nodes of the main graph the technique can target (constant weight), in graph order."""
    model = io.load(model_path)
    layers = []
    for node in model.graph:
        if node.domain not in ("", "ai.onnx") or node.op_type not in technique.ops or len(node.inputs) < 2:
            continue
        weight = node.inputs[1]
        if weight is None or not node.name or _UNSAFE_NAME.search(node.name):
            continue
        producer = weight.producer()
        if weight.const_value is None and not (producer is not None and producer.op_type == "Constant"):
            continue
        layers.append(node.name)
    return layers


# ---------------------------------------------------------------------------------------- evaluation
@dataclasses.dataclass(frozen=True)
class _Task:
    """Everything a (possibly spawned) process needs to evaluate candidates; picklable."""

    key: str
    original_path: str
    folder: str
    evaluate: Any  # str (labels.npz or module:function) or a callable, or None
    verify_data: str | None
    input_shapes: tuple[tuple[str, tuple[int, ...]], ...]
    calibration: str | None
    threads: int
    scale: float  # metric multiplier (100 for top-1 from labels: percent)


@dataclasses.dataclass
class _State:
    feeds: list[dict[str, np.ndarray]]
    names: list[str]
    expected: list[list[np.ndarray]]
    evaluator: Callable[[Any], float] | None


_STATES: dict[str, _State] = {}  # per process: the original's outputs and the evaluator, built once


def _state(task: _Task) -> _State:
    if task.key in _STATES:
        return _STATES[task.key]
    original = io.load(task.original_path)
    feeds, _, _ = verification.prepare_feeds(original, data=task.verify_data, input_shapes=dict(task.input_shapes))
    session = verification.make_session(task.original_path, threads=task.threads)
    expected = verification.run_model(session, feeds)
    evaluator = None
    if task.evaluate is not None:
        # The same evaluator as `sftonnx bench --eval`, so accuracy means the same thing everywhere.
        evaluator, _ = make_evaluator(task.evaluate, verification.input_specs(original), None)
    state = _State(feeds, [o.name for o in session.get_outputs()], expected, evaluator)
    _STATES[task.key] = state
    return state


@contextlib.contextmanager
def _quiet_passes() -> Generator[None, None, None]:
    """Passes warn once per run (e.g. random calibration); over hundreds of candidates that is noise."""
    passes_logger = logging.getLogger("sftonnx.passes")
    level = passes_logger.level
    passes_logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        passes_logger.setLevel(level)


def _measure(task: _Task, path: str) -> dict[str, Any]:
    """Output error against the original and the evaluation metric of the model at ``path``."""
    state = _state(task)
    session = verification.make_session(path, threads=task.threads)
    outputs = verification.run_model(session, state.feeds)
    comparison = verification.compare_outputs(state.names, state.expected, outputs)
    worst = comparison.worst()
    record: dict[str, Any] = {
        "cosine": worst["cosine"],
        "error": max(0.0, 1.0 - float(worst["cosine"])) if comparison.outputs else math.inf,
        "max_abs": worst["max_abs"],
        "top1_agreement": worst["top1_agreement"],
    }
    if not all(m.shape_ok for m in comparison.outputs):
        record["error"] = math.inf
    if state.evaluator is not None:
        record["metric"] = float(state.evaluator(session)) * task.scale
    return record


def _evaluate(task: _Task, job: dict[str, Any]) -> dict[str, Any]:
    """Build one candidate (``job['spec']`` applied to ``job['source']``), write it to the cache and measure it.

    Returns a record; ``status`` is ``fatal`` when the evaluation function itself failed (a usage error).
    """
    from sftonnx.passes import PRESETS, REGISTRY
    from sftonnx.pipeline import build_passes, optimize_model

    started = time.perf_counter()
    folder = pathlib.Path(task.folder)
    path = folder / f"{job['key']}.onnx"
    record: dict[str, Any] = {"key": job["key"], "spec": job["spec"], "status": "ok", "message": ""}
    try:
        with _quiet_passes():
            built = build_passes(job["spec"], REGISTRY, PRESETS, extra={"calibration_data": task.calibration})
            result = optimize_model(
                job["source"],
                path,
                built,
                verify_result=False,
                input_shapes=dict(task.input_shapes) or None,
                overwrite=True,
            )
    except Exception as error:  # any pipeline failure makes this candidate fail, not the search
        record.update(status="failed", message=first_line(error))
        record["seconds"] = time.perf_counter() - started
        return record
    lossy = [row for row in result.report.rows if row.numerics != "exact"]
    record["changed"] = any(row.changes for row in lossy) if lossy else True
    record["size_bytes"] = result.report.output_size
    record["model_path"] = str(path)
    record["sha256"] = hashlib.sha256(path.read_bytes()).hexdigest()
    try:
        record.update(_measure(task, str(path)))
    except InputError as error:  # the user's metric failed: stop the search with its message
        record.update(status="fatal", message=str(error))
    except Exception as error:  # onnxruntime cannot run the candidate: it fails alone
        record.update(status="failed", message=f"cannot run the model: {first_line(error)}")
    record["seconds"] = time.perf_counter() - started
    return record


def _worker_init() -> None:
    logging.getLogger("sftonnx").setLevel(logging.ERROR)


class _Evaluator:
    """Runs candidate jobs through the disk cache, in this process or a spawned process pool."""

    def __init__(self, task: _Task, workers: int, progress: Callable[[float, float, str], None] | None) -> None:
        self.task = task
        self.workers = workers
        self.progress = progress
        self.done = 0
        self.total = 0
        self.evaluated = 0
        self.cached = 0
        self.pool: concurrent.futures.ProcessPoolExecutor | None = None

    def __enter__(self) -> _Evaluator:
        if self.workers > 1:
            self.pool = concurrent.futures.ProcessPoolExecutor(
                max_workers=self.workers,
                mp_context=multiprocessing.get_context("spawn"),
                initializer=_worker_init,
            )
        return self

    def __exit__(self, *exc: object) -> None:
        if self.pool is not None:
            self.pool.shutdown(wait=True, cancel_futures=True)

    def run(self, jobs: Sequence[dict[str, Any]], phase: str) -> list[dict[str, Any]]:
        """Records for ``jobs`` (each ``{key, spec, source}``), from the cache or evaluated (in parallel).

        Raises:
            InputError: The evaluation function failed on a candidate.
        """
        folder = pathlib.Path(self.task.folder)
        results: dict[int, dict[str, Any]] = {}
        todo: list[int] = []
        self.total += len(jobs)
        for index, job in enumerate(jobs):
            cached = _read_record(folder, job["key"])
            if cached is not None:
                results[index] = cached | {"cached": True}
                self.cached += 1
                self._tick(phase)
            else:
                todo.append(index)
        if self.pool is None:
            for index in todo:
                results[index] = self._store(_evaluate(self.task, jobs[index]), phase)
        else:
            futures = {self.pool.submit(_evaluate, self.task, jobs[i]): i for i in todo}
            for future in concurrent.futures.as_completed(futures):
                results[futures[future]] = self._store(future.result(), phase)
        return [results[i] for i in range(len(jobs))]

    def _store(self, record: dict[str, Any], phase: str) -> dict[str, Any]:
        if record["status"] == "fatal":
            raise InputError(record["message"])
        self.evaluated += 1
        _write_record(pathlib.Path(self.task.folder), record)
        self._tick(phase)
        return record | {"cached": False}

    def _tick(self, phase: str) -> None:
        self.done += 1
        if self.progress is not None:
            self.progress(self.done, self.total, phase)


def _read_record(folder: pathlib.Path, key: str) -> dict[str, Any] | None:
    path = folder / f"{key}.json"
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    if record.get("status") == "ok" and not pathlib.Path(record.get("model_path") or "").is_file():
        return None  # the model was removed: evaluate again
    return record


def _write_record(folder: pathlib.Path, record: dict[str, Any]) -> None:
    # The record is written last and atomically: its presence means the candidate is complete.
    text = json.dumps(record, default=_json_default)
    with tempfile.NamedTemporaryFile("w", dir=folder, suffix=".tmp", delete=False) as handle:
        handle.write(text)
    os.replace(handle.name, folder / f"{record['key']}.json")


def _json_default(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    return str(value)


# ------------------------------------------------------------------------------------------- hashing
def _sha256_file(path: pathlib.Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _hash_source(source: Any) -> str:
    """Content hash of a data/eval source: a file, a folder of ``.npz``, ``module:function`` or a callable."""
    if source is None:
        return "none"
    if callable(source):
        return f"callable:{getattr(source, '__module__', '?')}.{getattr(source, '__qualname__', '?')}"
    path = pathlib.Path(os.fspath(source))
    if path.is_file():
        return _sha256_file(path)
    if path.is_dir():
        digest = hashlib.sha256()
        for item in sorted(path.glob("*.npz")):
            digest.update(item.name.encode() + _sha256_file(item).encode())
        return digest.hexdigest()
    text = os.fspath(source)
    module = text.rpartition(":")[0]
    if module.endswith(".py") and pathlib.Path(module).is_file():
        return text + ":" + _sha256_file(pathlib.Path(module))
    return text


def _save_npz(path: pathlib.Path, arrays: Mapping[str, np.ndarray]) -> str:
    if not path.exists():
        with tempfile.NamedTemporaryFile(dir=path.parent, suffix=".npz", delete=False) as handle:
            np.savez(handle, **arrays)
        os.replace(handle.name, path)
    return str(path)


def _stack(feeds: Iterable[Mapping[str, np.ndarray]]) -> dict[str, np.ndarray]:
    items = list(feeds)
    if not items:
        raise InputError("auto: the calibration data holds no samples")
    return {name: np.concatenate([np.asarray(f[name]) for f in items]) for name in items[0]}


# ---------------------------------------------------------------------------------------------- search
@dataclasses.dataclass
class SearchResult:
    """What :func:`run_search` found.

    Attributes:
        chosen: The selected candidate (``None`` when none met the budget).
        best: ``chosen``, or the candidate closest to the budget when none met it.
        candidates: Every evaluated candidate (probes included).
        pareto: Names of the timed candidates on the (latency, size, loss) front.
        baseline: The original model's figures.
        budget: The budget searched under.
        objective: ``latency`` or ``size``.
        sensitivity: ``{technique: {layer: {level option: loss}}}`` from the probes.
        notes: How inputs, calibration and timing were done.
        stats: ``evaluated`` (computed now) and ``cached`` (read from the cache) candidate counts, ``seconds``.
        cache_dir: Where candidates are cached.
        calibration_data: The calibration data the specs were evaluated with (pass it along to reproduce).
        verify_data: The inputs verification and the output error used.
    """

    chosen: Candidate | None
    best: Candidate | None
    candidates: list[Candidate]
    pareto: list[str]
    baseline: Candidate
    budget: SearchBudget
    objective: str
    sensitivity: dict[str, dict[str, dict[str, float | None]]]
    notes: list[str]
    stats: dict[str, Any]
    cache_dir: str
    calibration_data: str | None
    verify_data: str | None
    task: Any = dataclasses.field(default=None, repr=False)

    @property
    def timed(self) -> list[Candidate]:
        """Candidates with a latency (the original first)."""
        return [c for c in [self.baseline, *self.candidates] if c.latency_ms is not None]

    def ranked(self) -> list[Candidate]:
        """Feasible candidates, best first by the objective."""
        feasible = [c for c in self.candidates if c.feasible and c.kind != "probe"]
        return sorted(feasible, key=lambda c: _objective_key(c, self.objective))

    def to_json(self) -> dict[str, Any]:
        """JSON-able dict; ``spec`` is the exact pass spec reproducing the chosen model without search."""
        by_name = {c.name: c for c in self.candidates}
        return {
            "spec": self.chosen.spec if self.chosen else None,
            "chosen": self.chosen.to_json() if self.chosen else None,
            "best": self.best.to_json() if self.best else None,
            "objective": self.objective,
            "budget": dataclasses.asdict(self.budget) | {"text": self.budget.describe()},
            "baseline": self.baseline.to_json(),
            "pareto": [by_name[name].to_json() if name in by_name else name for name in self.pareto],
            "candidates": [c.to_json() for c in self.candidates],
            "sensitivity": self.sensitivity,
            "notes": self.notes,
            "stats": self.stats,
            "cache_dir": self.cache_dir,
            "calibration_data": self.calibration_data,
            "verify_data": self.verify_data,
        }


def _objective_key(candidate: Candidate, objective: str) -> tuple[float, ...]:
    latency = candidate.latency_ms if candidate.latency_ms is not None else math.inf
    size = float(candidate.size_bytes) if candidate.size_bytes is not None else math.inf
    error = candidate.error if candidate.error is not None else math.inf
    return (latency, size, error) if objective == "latency" else (size, latency, error)


def run_search(
    model: io.ModelSource,
    *,
    budget: SearchBudget,
    evaluate: str | os.PathLike | Callable[[Any], float] | None = None,
    objective: str = "latency",
    data: str | os.PathLike | Mapping[str, np.ndarray] | None = None,
    calibration_data: Any = None,
    input_shapes: Iterable[str] | Mapping[str, Sequence[int]] | None = None,
    ep: str = "cpu",
    seed: int = 0,
    workers: int = 1,
    cache_dir: str | os.PathLike = ".sftonnx-cache",
    techniques: Iterable[str] | None = None,
    presets: Iterable[str] | None = None,
    latency_runs: int = 100,
    latency_seconds: float = 8.0,
    progress: Callable[[float, float, str], None] | None = None,
) -> SearchResult:
    """Search per-layer lossy configurations for the fastest (or smallest) model within ``budget``.

    Args:
        model: The original model (path, bytes, ``ModelProto`` or ``onnx_ir.Model``).
        budget: Accuracy-drop and/or output-error limits.
        evaluate: ``labels.npz`` (inputs + ``labels``: top-1 in percent), ``module:function`` or a callable
            taking an ``onnxruntime.InferenceSession`` and returning a higher-is-better float. Required with
            ``budget.max_accuracy_drop``.
        objective: ``latency`` (p50 on ``ep``) or ``size`` (file bytes).
        data: Inputs for the output error and verification (``.npz`` or mapping); default: ``evaluate``'s
            inputs for a labels file, else :data:`RANDOM_SAMPLES` seeded random sets.
        calibration_data: For quantization, reconstruction and data-aware factorization (``.npz``, folder or
            iterable of feed dicts). Without it, ``quantize`` calibrates on seeded random inputs
            (``allow_random=true`` in its spec).
        input_shapes: Concrete shapes for dynamic dimensions.
        ep: Execution provider latency is measured on (``cpu``, ``cuda``, ``tensorrt``).
        seed: Seeds the random inputs; the search itself is deterministic.
        workers: Processes evaluating candidates in parallel (spawned); 1 evaluates in this process.
        cache_dir: Candidate cache (created); a rerun with the same inputs reuses every finished candidate.
        techniques: Restrict the lossy techniques (registry names); default: every registered one.
        presets: The fixed presets evaluated as candidates (default :data:`FIXED_PRESETS` that exist).
        latency_runs: Timed runs per model (at most; see ``latency_seconds``).
        latency_seconds: Time limit of each interleaved timing round.
        progress: Called as ``progress(done, total, phase)`` after each candidate and timing round.

    Returns:
        The search result; ``chosen`` is ``None`` when nothing met the budget.

    Raises:
        InputError: Bad options, data, evaluation file or function, or an evaluation function that raised.
    """
    from sftonnx.passes import PRESETS, REGISTRY
    from sftonnx.pipeline import resolve_spec

    started = time.perf_counter()
    if objective not in ("latency", "size"):
        raise InputError(f"--objective must be latency or size, got '{objective}'")
    if workers < 1:
        raise InputError(f"--workers must be at least 1, got {workers}")
    if budget.max_accuracy_drop is not None and evaluate is None:
        raise InputError("--max-accuracy-drop needs --eval (labels.npz or module:function)")
    bench = _benchmark_module()
    bench.parse_providers(ep)
    chosen_techniques = available_techniques(techniques)
    notes: list[str] = []

    # ---- the original, its hash and the cache folder
    loaded = io.load(model)
    original_bytes = (
        pathlib.Path(model).read_bytes() if isinstance(model, (str, os.PathLike)) else io.to_bytes(loaded)
    )
    model_hash = hashlib.sha256(original_bytes).hexdigest()
    folder = pathlib.Path(cache_dir) / model_hash[:16]
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise InputError(f"cannot create the cache folder {folder}: {error.strerror or error}") from None
    original_path = folder / "original.onnx"
    if not original_path.is_file():
        if isinstance(model, (str, os.PathLike)) and io.model_nbytes(loaded) > io.PROTOBUF_LIMIT:
            io.save(loaded, original_path, overwrite=True)
        else:
            _atomic_write(original_path, original_bytes)

    # ---- inputs: verification/error inputs, evaluation, calibration (all as files, so workers can read them)
    specs = verification.input_specs(loaded)
    shapes = verification.parse_input_shapes(input_shapes)
    scale = 1.0
    if evaluate is not None and not callable(evaluate):
        text = os.fspath(evaluate)
        if text.endswith(".npz") or pathlib.Path(text).is_file():
            scale = 100.0  # top-1 from labels, in percent: --max-accuracy-drop 1.0 is one point
            if not pathlib.Path(text).is_file():
                raise InputError(f"--eval file not found: {text}")
        evaluate = text
    verify_data: str | None
    if data is not None:
        if isinstance(data, (str, os.PathLike)):
            verification.load_npz(data, specs, allow_extra=("labels",))
            verify_data = os.fspath(data)
        else:
            verify_data = _save_npz(folder / f"data-{_hash_arrays(data)}.npz", dict(data))
        notes.append(f"output error and verification on the inputs of {verify_data}")
    elif isinstance(evaluate, str) and scale == 100.0:
        verify_data = evaluate
        notes.append(f"output error and verification on the inputs of {evaluate}")
    else:
        resolved, shape_notes = verification.resolve_shapes(specs, shapes)
        feeds = [verification.random_feeds(specs, resolved, seed=seed + i) for i in range(RANDOM_SAMPLES)]
        verify_data = _save_npz(folder / f"random-seed{seed}.npz", _stack(feeds))
        notes.extend(shape_notes)
        notes.append(f"output error and verification on {RANDOM_SAMPLES} seeded random input sets (seed {seed})")
    calibration: str | None = None
    if calibration_data is not None:
        if isinstance(calibration_data, (str, os.PathLike)):
            calibration = os.fspath(calibration_data)
            if not pathlib.Path(calibration).exists():
                raise InputError(f"calibration data not found: {calibration}")
        else:
            arrays = _stack(verification.calibration_feeds(calibration_data, specs))
            calibration = _save_npz(folder / f"calibration-{_hash_arrays(arrays)}.npz", arrays)
        notes.append(f"calibration data: {calibration}")
    else:
        notes.append("no calibration data: quantize calibrates on seeded random inputs (allow_random=true)")

    if workers > 1 and callable(evaluate):
        try:
            pickle.dumps(evaluate)
        except Exception:  # lambdas, closures: cannot reach a spawned process
            notes.append("the evaluation callable cannot be pickled: candidates evaluated in this process")
            workers = 1
    threads = 0 if workers == 1 else max(1, (os.cpu_count() or 1) // workers)
    hashes = {
        "model": model_hash,
        "eval": _hash_source(evaluate),
        "data": _hash_source(verify_data),
        "calibration": _hash_source(calibration),
        "shapes": sorted((k, list(v)) for k, v in shapes.items()),
        "seed": seed,
        "version": CACHE_VERSION,
    }
    task = _Task(
        key=hashlib.sha256(json.dumps(hashes, sort_keys=True).encode()).hexdigest()[:24],
        original_path=str(original_path),
        folder=str(folder),
        evaluate=evaluate,
        verify_data=verify_data,
        input_shapes=tuple(sorted(shapes.items())),
        calibration=calibration,
        threads=threads,
        scale=scale,
    )

    def key_of(spec: str, source: str) -> str:
        # Keyed by the expanded spec, so a preset whose definition changed is evaluated again.
        expanded = [[name, sorted(options.items())] for name, options, _ in resolve_spec(spec, REGISTRY, PRESETS)]
        payload = json.dumps({"spec": expanded, "source": source, **hashes}, sort_keys=True)
        return hashlib.sha256(payload.encode()).hexdigest()[:32]

    # ---- the original (the evaluation function fails here first, before any candidate is built)
    try:
        baseline_figures = _measure(task, str(original_path))
    except InputError:
        raise
    except Exception as error:  # onnxruntime cannot run the original
        raise InputError(f"onnxruntime cannot run the input model: {first_line(error)}") from None
    baseline = Candidate(
        "original", "original", "", size_bytes=len(original_bytes), model_path=str(original_path), feasible=True
    )
    _fill(baseline, baseline_figures, None)
    reference_metric = baseline.metric

    candidates: list[Candidate] = []
    by_spec: dict[str, Candidate] = {}

    def make(name: str, kind: str, spec: str, record: dict[str, Any]) -> Candidate:
        candidate = Candidate(name, kind, spec, cached=bool(record.get("cached")))
        candidate.status = record.get("status", "failed")
        candidate.message = record.get("message", "")
        candidate.changed = bool(record.get("changed", True))
        candidate.size_bytes = record.get("size_bytes")
        candidate.model_path = record.get("model_path")
        candidate.sha256 = record.get("sha256")
        candidate.seconds = float(record.get("seconds") or 0.0)
        _fill(candidate, record, reference_metric)
        candidate.feasible = budget.feasible(candidate)
        candidates.append(candidate)
        by_spec.setdefault(spec, candidate)
        return candidate

    preset_names = [p for p in (presets if presets is not None else FIXED_PRESETS) if p in PRESETS]
    with _Evaluator(task, workers, progress) as evaluator:
        # ---- 1. fixed presets, from the original
        jobs = [{"key": key_of(p, "original"), "spec": p, "source": str(original_path)} for p in preset_names]
        for name, record in zip(preset_names, evaluator.run(jobs, "presets"), strict=True):
            make(f"preset:{name}", "preset", name, record)
        base = by_spec.get(BASE_PRESET)
        if base is not None and base.status == "ok" and base.model_path:
            base_path, prefix = base.model_path, BASE_PRESET + ","
        else:
            base_path, prefix = str(original_path), ""
            notes.append(f"preset '{BASE_PRESET}' is unavailable or failed: lossy passes start from the original")

        def run_specs(lossy_specs: Sequence[str], names: Sequence[str], kind: str, phase: str) -> list[Candidate]:
            """Evaluate lossy specs on the base model (cached per spec); the candidates carry full specs."""
            out: list[Candidate | None] = [by_spec.get(prefix + s) for s in lossy_specs]
            missing = [i for i, c in enumerate(out) if c is None]
            jobs = [
                {"key": key_of(lossy_specs[i], "base:" + base_path), "spec": lossy_specs[i], "source": base_path}
                for i in missing
            ]
            for i, record in zip(missing, evaluator.run(jobs, phase), strict=True):
                out[i] = make(names[i], kind, prefix + lossy_specs[i], record)
            for i, existing in enumerate(out):
                if existing is not None and existing.kind == "probe" and kind != "probe":
                    # A rung identical to a probe: the same model, listed (and timed) as a search result.
                    copy = dataclasses.replace(existing, name=names[i], kind=kind, cached=True)
                    candidates.append(copy)
                    by_spec[copy.spec] = copy
                    out[i] = copy
            return [c for c in out if c is not None]

        # ---- 2. per-layer sensitivity probes (one round, all in parallel)
        layers = {t.name: _layers(base_path, t) for t in chosen_techniques}
        extras = {t.name: _technique_extra(t, calibration is not None) for t in chosen_techniques}
        probe_index: list[tuple[Technique, str, int]] = [
            (t, layer, level)
            for t in chosen_techniques
            for layer in layers[t.name]
            for level in range(1, len(t.levels) + 1)
        ]
        probe_specs = [t.probe_spec(layer, level, extras[t.name]) for t, layer, level in probe_index]
        probe_names = [
            f"probe:{t.name}:{layer}" + (f"@{t.levels[level - 1]}" if t.levels[level - 1] else "")
            for t, layer, level in probe_index
        ]
        probes = run_specs(probe_specs, probe_names, "probe", "sensitivity") if probe_specs else []
        sensitivity: dict[str, dict[str, dict[str, float | None]]] = {}
        probe_of: dict[tuple[str, str, int], Candidate] = {}
        for (t, layer, level), probe in zip(probe_index, probes, strict=True):
            probe_of[(t.name, layer, level)] = probe
            loss = budget.loss(probe)[0] if probe.status == "ok" and probe.changed else None
            label = t.levels[level - 1] or "int8"
            sensitivity.setdefault(t.name, {}).setdefault(layer, {})[label] = (
                None if loss is None or math.isinf(loss) else loss
            )

        # ---- 3. greedy back-off ladders per technique, searched concurrently (one job per technique per round)
        ladders: dict[str, list[dict[str, int]]] = {}
        for t in chosen_techniques:
            usable = [
                layer
                for layer in layers[t.name]
                if any(
                    probe_of[(t.name, layer, lv)].status == "ok" and probe_of[(t.name, layer, lv)].changed
                    for lv in range(1, len(t.levels) + 1)
                )
            ]
            ladders[t.name] = _ladder(t, usable, probe_of, budget)
        searches = {
            t.name: _search_ladder(
                [t.config_spec(c, extras[t.name]) or "" for c in ladders[t.name]], name=t.name
            )
            for t in chosen_techniques
            if ladders[t.name]
        }
        found = _drive(searches, lambda specs, names: run_specs(specs, names, "search", "search"), budget)

        # ---- 4. add quantization on top of each feasible structural configuration
        combos = {}
        for s in chosen_techniques:
            if s.kind != "struct" or found.get(s.name) is None:
                continue
            s_spec = found[s.name]
            for q in chosen_techniques:
                if q.kind != "quant" or not ladders.get(q.name):
                    continue
                rungs = [q.config_spec(c, extras[q.name]) or "" for c in ladders[q.name]]
                start = rungs.index(found[q.name]) if found.get(q.name) in rungs else 0
                combos[f"{s.name}+{q.name}"] = _search_ladder(
                    [f"{s_spec},{r}" for r in rungs[start:] if r], name=f"{s.name}+{q.name}"
                )
        _drive(combos, lambda specs, names: run_specs(specs, names, "combo", "combinations"), budget)

        stats = {"evaluated": evaluator.evaluated, "cached": evaluator.cached}

    # ---- 5. timing, serially, interleaved with the original
    pool = _timing_pool(candidates, budget)
    if pool:
        measure_latency(
            [baseline, *pool], ep=ep, data=verify_data, input_shapes=shapes, runs=latency_runs,
            seconds=latency_seconds, progress=progress, phase="latency",
        )
        feasible = sorted((c for c in pool if c.feasible and c.latency_ms is not None),
                          key=lambda c: _objective_key(c, objective))
        if objective == "latency" and len(feasible) > 1:
            # Re-time the front-runners together (more runs each): the choice among near ties is the noisy part.
            contenders = feasible[: min(4, len(feasible))]
            measure_latency(
                [baseline, *contenders], ep=ep, data=verify_data, input_shapes=shapes, runs=latency_runs * 2,
                seconds=latency_seconds, progress=progress, phase="latency (front-runners)",
            )
        notes.append(
            f"latency: p50 on {ep}, candidates interleaved run by run with the original "
            f"(up to {latency_runs} runs or {latency_seconds:g}s per round), front-runners re-timed together"
        )
    timings = {c.sha256: c.latency_ms for c in pool if c.latency_ms is not None}
    for candidate in candidates:  # the same model under another name (a rung equal to a preset) shares its time
        if candidate.latency_ms is None and candidate.kind != "probe" and candidate.sha256 in timings:
            candidate.latency_ms = timings[candidate.sha256]
    timed = [c for c in pool if c.latency_ms is not None]
    points = [(c.latency_ms, float(c.size_bytes or math.inf), budget.loss(c)[0]) for c in timed]
    pareto = [timed[i].name for i in pareto_front(points)]
    ranked = sorted(
        (c for c in candidates if c.feasible and c.kind != "probe" and (objective == "size" or c.latency_ms)),
        key=lambda c: _objective_key(c, objective),
    )
    chosen = ranked[0] if ranked else None
    ok = [c for c in candidates if c.status == "ok" and c.kind != "probe"]
    best = chosen or (min(ok, key=budget.loss) if ok else None)
    stats["seconds"] = round(time.perf_counter() - started, 2)
    stats["candidates"] = len(candidates)
    return SearchResult(
        chosen=chosen,
        best=best,
        candidates=candidates,
        pareto=pareto,
        baseline=baseline,
        budget=budget,
        objective=objective,
        sensitivity=sensitivity,
        notes=notes,
        stats=stats,
        cache_dir=str(folder),
        calibration_data=calibration,
        verify_data=verify_data,
        task=task,
    )


def measure_model(result: SearchResult, path: str | os.PathLike) -> Candidate:
    """Evaluate a model file the way the search evaluated candidates (metric, drop, output error, feasibility).

    Used to check the model actually written against the budget.

    Raises:
        InputError: The evaluation function failed.
    """
    candidate = Candidate("written", "written", "", model_path=os.fspath(path))
    _fill(candidate, _measure(result.task, os.fspath(path)), result.baseline.metric)
    candidate.feasible = result.budget.feasible(candidate)
    return candidate


def _benchmark_module() -> Any:
    import importlib

    # Not `from sftonnx import benchmark`: the package's lazy attribute of that name is a function.
    return importlib.import_module("sftonnx.benchmark")


def _hash_arrays(arrays: Mapping[str, np.ndarray]) -> str:
    digest = hashlib.sha256()
    for name in sorted(arrays):
        array = np.ascontiguousarray(arrays[name])
        digest.update(name.encode() + str(array.dtype).encode() + str(array.shape).encode() + array.tobytes())
    return digest.hexdigest()[:16]


def _atomic_write(path: pathlib.Path, payload: bytes) -> None:
    with tempfile.NamedTemporaryFile(dir=path.parent, suffix=".tmp", delete=False) as handle:
        handle.write(payload)
    os.replace(handle.name, path)


def _fill(candidate: Candidate, record: Mapping[str, Any], reference_metric: float | None) -> None:
    for name in ("error", "cosine", "max_abs", "top1_agreement", "metric"):
        value = record.get(name)
        setattr(candidate, name, None if value is None else float(value))
    if candidate.metric is not None and reference_metric is not None:
        candidate.drop = reference_metric - candidate.metric
    elif reference_metric is None and candidate.metric is not None:
        candidate.drop = 0.0


def _ladder(
    technique: Technique,
    layers: Sequence[str],
    probes: Mapping[tuple[str, str, int], Candidate],
    budget: SearchBudget,
) -> list[dict[str, int]]:
    """Configurations from most to least aggressive: start where each layer is feasible alone, back off the worst.

    Each rung lowers the level of the layer whose current level had the largest probe loss (ties: graph
    order), skipping levels whose probe failed or was infeasible on its own. The all-zero configuration
    (nothing applied) is not a rung.
    """

    def usable(layer: str, level: int) -> bool:
        probe = probes.get((technique.name, layer, level))
        return probe is not None and probe.status == "ok" and probe.changed and budget.feasible(probe)

    def loss(layer: str, level: int) -> tuple[float, float]:
        return budget.loss(probes[(technique.name, layer, level)])

    config: dict[str, int] = {}
    for layer in layers:
        levels = [lv for lv in range(len(technique.levels), 0, -1) if usable(layer, lv)]
        config[layer] = levels[0] if levels else 0
    rungs = []
    while any(config.values()):
        rungs.append(dict(config))
        active = [layer for layer in layers if config[layer] > 0]
        worst = max(active, key=lambda layer: (loss(layer, config[layer]), -layers.index(layer)))
        level = config[worst] - 1
        while level > 0 and not usable(worst, level):
            level -= 1
        config[worst] = level
    return rungs


SearchGen = Generator[str, Candidate, "str | None"]


def _search_ladder(rungs: Sequence[str], *, name: str) -> SearchGen:
    """Find the first feasible rung by galloping (0, 1, 3, 7, ...) then bisection; yields specs, gets candidates.

    Returns the lossy spec of the rung found, or ``None``.
    """
    rungs = [r for r in rungs if r]
    if not rungs:
        return None
    lo, hi = -1, None  # last rung known infeasible, first rung known feasible
    index, step = 0, 1
    while True:
        candidate = yield rungs[index]
        if candidate.feasible:
            hi = index
            break
        lo = index
        if index == len(rungs) - 1:
            break
        index, step = min(len(rungs) - 1, index + step), step * 2
    if hi is None:
        logger.debug("auto: no feasible rung for %s", name)
        return None
    while hi - lo > 1:
        middle = (lo + hi) // 2
        candidate = yield rungs[middle]
        if candidate.feasible:
            hi = middle
        else:
            lo = middle
    return rungs[hi]


def _drive(
    searches: Mapping[str, SearchGen],
    run: Callable[[Sequence[str], Sequence[str]], list[Candidate]],
    budget: SearchBudget,
) -> dict[str, str | None]:
    """Advance every search one step per round; each round's specs are evaluated together (in parallel).

    Deterministic: rounds depend only on the candidates' figures, never on which worker finishes first.
    """
    del budget  # feasibility is on the candidates already
    found: dict[str, str | None] = {}
    pending: dict[str, str] = {}
    for name, search in searches.items():
        try:
            pending[name] = next(search)
        except StopIteration as stop:
            found[name] = stop.value
    counter: dict[str, int] = {}
    while pending:
        names = list(pending)
        labels = []
        for name in names:
            counter[name] = counter.get(name, 0) + 1
            labels.append(f"{name}#{counter[name]}")
        results = run([pending[n] for n in names], labels)
        for name, candidate in zip(names, results, strict=True):
            try:
                pending[name] = searches[name].send(candidate)
            except StopIteration as stop:
                found[name] = stop.value
                del pending[name]
    return found


def _timing_pool(candidates: Sequence[Candidate], budget: SearchBudget, limit: int = 24) -> list[Candidate]:
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
    bench = _benchmark_module()

    def report(done: float, total: float, text: str) -> None:
        if progress is not None:
            progress(done, total, f"{phase}: {text}")

    result = bench.run_benchmark(
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


# ----------------------------------------------------------------------------------------------- plot
def write_pareto_plot(result: SearchResult, path: str | os.PathLike) -> pathlib.Path:
    """Scatter latency against size for the timed candidates, colored by loss; front and choice marked.

    matplotlib is imported here and draws on an Agg canvas without touching pyplot's state.

    Raises:
        InputError: matplotlib is not installed, or the file cannot be written.
    """
    from sftonnx.benchmark import agg_figure

    path = pathlib.Path(path)
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
    label = "accuracy drop" if result.budget.max_accuracy_drop is not None else "output error (1 - cosine)"
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
    figure.tight_layout()
    try:
        figure.savefig(path, format="png")
    except OSError as error:
        raise InputError(f"cannot write {path}: {error.strerror or error}") from None
    return path
