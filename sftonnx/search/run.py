"""``run_search``: the search of :mod:`sftonnx.search` in named phases, and checking a written model.

Phases: cache the original; prepare the inputs (verification/error inputs, evaluation, calibration, all as
files so workers can read them); measure the original; then, on one :class:`_Search`, the fixed presets, the
per-layer sensitivity probes, the back-off ladders, quantization on top of structural configurations; last
the timing of the non-probe candidates and the selection.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import pathlib
import pickle
import re
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import numpy as np

from sftonnx import io
from sftonnx import verify as verification
from sftonnx.benchmark import parse_providers
from sftonnx.errors import InputError, first_line
from sftonnx.evaluate import is_labels_file
from sftonnx.search.budget import Candidate, SearchBudget, fill_figures, objective_key
from sftonnx.search.cache import CACHE_VERSION, atomic_write, hash_arrays, hash_source, save_npz, stack_feeds
from sftonnx.search.evaluation import CandidateEvaluator, Task, measure
from sftonnx.search.ladder import drive, ladder, search_ladder
from sftonnx.search.latency import measure_latency, timing_pool
from sftonnx.search.pareto import pareto_front
from sftonnx.search.result import SearchResult, SearchStep
from sftonnx.search.techniques import Technique, available_techniques, target_layers, technique_extra
from sftonnx.spec import resolve_spec

__all__ = [
    "BASE_PRESET",
    "DISTILL_SECONDS",
    "FIXED_PRESETS",
    "MIN_DISTILL_SECONDS",
    "RANDOM_SAMPLES",
    "Sensitivity",
    "measure_model",
    "run_search",
]

#: Presets always evaluated as candidates (those that exist at run time).
FIXED_PRESETS = ("lossless", "fast-cpu", "int8", "int8-dynamic", "fp16", "compact", "max")
#: The lossless pipeline every searched configuration starts from.
BASE_PRESET = "lossless"
#: Random input sets used for the output-error budget when no data is given.
RANDOM_SAMPLES = 8
#: Training seconds of the distillation step at most (as ``distill{time_budget=60}`` in ``compact``/``max``).
DISTILL_SECONDS = 60.0
#: The distillation step is not run with less training time than this left.
MIN_DISTILL_SECONDS = 5.0

#: Characters a path cannot hold to be written as a spec option value.
_UNSAFE_PATH = re.compile(r"[,{}|;=\s]")

#: ``{technique: {layer: {level option: loss}}}`` (``None``: the probe failed or changed nothing).
Sensitivity = dict[str, dict[str, dict[str, float | None]]]


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
    allow_random_verification: bool = False,
    time_budget: float | None = None,
    distill: bool = True,
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
            inputs for a labels file, else a calibration ``.npz`` (in-sample), else (only with
            ``allow_random_verification``, or with an ``evaluate`` function that judges on its own data)
            :data:`RANDOM_SAMPLES` seeded sets synthesized to fit the model.
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
        allow_random_verification: Judge candidates on synthesized inputs when there is no real data.
        time_budget: Seconds the whole search may take. The phases always run; the optional distillation step
            gets only what is left (see :func:`_distill_step`). ``None``: distillation trains up to
            :data:`DISTILL_SECONDS`.
        distill: Try knowledge distillation of the chosen lossy candidate (torch and calibration data needed).

    Returns:
        The search result; ``chosen`` is ``None`` when nothing met the budget.

    Raises:
        InputError: Bad options, data, evaluation file or function, or an evaluation function that raised.
    """
    from sftonnx.passes import PRESETS

    started = time.perf_counter()
    if objective not in ("latency", "size"):
        raise InputError(f"--objective must be latency or size, got '{objective}'")
    if workers < 1:
        raise InputError(f"--workers must be at least 1, got {workers}")
    if time_budget is not None and not (math.isfinite(time_budget) and time_budget > 0):
        raise InputError(f"--time-budget must be a number of seconds > 0, got {time_budget}")
    if budget.max_accuracy_drop is not None and evaluate is None:
        raise InputError("--max-accuracy-drop needs --eval (labels.npz or module:function)")
    parse_providers(ep)
    chosen_techniques = available_techniques(techniques)
    notes: list[str] = []

    original = _cache_original(model, cache_dir)
    inputs = _prepare_inputs(
        original, evaluate, data, calibration_data, input_shapes, seed, notes, allow_random_verification
    )
    workers = _usable_workers(workers, inputs.evaluate, notes)
    task, hashes = _make_task(original, inputs, workers, seed, budget)
    baseline = _measure_original(task, original)

    preset_names = [p for p in (presets if presets is not None else FIXED_PRESETS) if p in PRESETS]
    with CandidateEvaluator(task, workers, progress) as evaluator:
        search = _Search(evaluator, hashes, budget, baseline.metric, notes)
        search.presets(preset_names, original.path)
        sensitivity, probe_of, layers = search.probes(chosen_techniques, calibrated=inputs.calibration is not None)
        search.ladders(chosen_techniques, probe_of, layers)
        search.combinations(chosen_techniques)
        stats: dict[str, Any] = {
            "evaluated": evaluator.evaluated, "cached": evaluator.cached, "remeasured": evaluator.remeasured
        }

    candidates = search.candidates
    pareto = _time_candidates(
        candidates, baseline, budget, objective, ep=ep, data=inputs.verify_data, input_shapes=inputs.shapes,
        runs=latency_runs, seconds=latency_seconds, progress=progress, notes=notes,
    )
    chosen, best = _select(candidates, budget, objective)
    steps: list[SearchStep] = []
    if chosen is not None:
        with CandidateEvaluator(task, 1, progress) as evaluator:
            search.evaluator = evaluator
            distilled, step = _distill_step(
                search, chosen, original.path, enabled=distill,
                deadline=None if time_budget is None else started + time_budget,
                in_sample=inputs.verify_data is not None and inputs.verify_data == inputs.calibration,
            )
        steps.append(step)
        if distilled is not None:
            chosen = best = distilled
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
        cache_dir=str(original.folder),
        calibration_data=inputs.calibration,
        verify_data=inputs.verify_data,
        task=task,
        random_inputs=inputs.random_inputs,
        steps=steps,
    )


def measure_model(result: SearchResult, path: str | os.PathLike) -> Candidate:
    """Evaluate a model file the way the search evaluated candidates (metric, drop, output error, feasibility).

    Used to check the model actually written against the budget.

    Raises:
        InputError: The evaluation function failed.
    """
    candidate = Candidate("written", "written", "", model_path=os.fspath(path))
    fill_figures(candidate, measure(result.task, os.fspath(path)), result.baseline.metric)
    candidate.feasible = result.budget.feasible(candidate)
    return candidate


# ------------------------------------------------------------------------------------- the phases
@dataclasses.dataclass(frozen=True)
class _Original:
    """The original model, its content hash and its copy in the cache folder."""

    loaded: Any
    data: bytes
    hash: str
    folder: pathlib.Path
    path: pathlib.Path


@dataclasses.dataclass(frozen=True)
class _Inputs:
    """What candidates are measured with, as files a worker process can read."""

    evaluate: Any  # str (labels.npz or module:function), a callable, or None
    scale: float  # metric multiplier (100 for top-1 from labels: percent)
    verify_data: str | None
    calibration: str | None
    shapes: dict[str, tuple[int, ...]]
    random_inputs: bool = False  # judged on synthesized inputs (allowed explicitly)


def _cache_original(model: io.ModelSource, cache_dir: str | os.PathLike) -> _Original:
    """Hash the original and copy it into its cache folder (``<cache_dir>/<hash>/original.onnx``)."""
    loaded = io.load(model)
    # A file whose weights are in external data is not self-contained: its bytes would point the cached copy at
    # data files that are not there. Such models (under 2 GiB) are cached as self-contained bytes.
    if isinstance(model, (str, os.PathLike)) and not io.has_external_data(loaded):
        data = pathlib.Path(model).read_bytes()
    elif io.model_nbytes(loaded) <= io.PROTOBUF_LIMIT:
        data = io.to_bytes(loaded)
    else:
        data = pathlib.Path(model).read_bytes()
    model_hash = hashlib.sha256(data).hexdigest()
    folder = pathlib.Path(cache_dir) / model_hash[:16]
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise InputError(f"cannot create the cache folder {folder}: {error.strerror or error}") from None
    path = folder / "original.onnx"
    if not path.is_file():
        if isinstance(model, (str, os.PathLike)) and io.model_nbytes(loaded) > io.PROTOBUF_LIMIT:
            io.save(loaded, path, overwrite=True)
        else:
            atomic_write(path, data)
    return _Original(loaded, data, model_hash, folder, path)


def _prepare_inputs(
    original: _Original,
    evaluate: Any,
    data: Any,
    calibration_data: Any,
    input_shapes: Any,
    seed: int,
    notes: list[str],
    allow_random_verification: bool = False,
) -> _Inputs:
    """Verification/error inputs, evaluation and calibration; in-memory ones are saved in the cache folder."""
    specs = verification.input_specs(original.loaded)
    shapes = verification.parse_input_shapes(input_shapes)
    scale = 1.0
    if evaluate is not None and not callable(evaluate):
        text = os.fspath(evaluate)
        if is_labels_file(text):
            scale = 100.0  # top-1 from labels, in percent: --max-accuracy-drop 1.0 is one point
            if not pathlib.Path(text).is_file():
                raise InputError(f"--eval file not found: {text}")
        evaluate = text
    verify_data: str | None
    random_inputs = False
    if data is not None:
        if isinstance(data, (str, os.PathLike)):
            verification.load_npz(data, specs, allow_extra=("labels",))
            verify_data = os.fspath(data)
        else:
            verify_data = save_npz(original.folder / f"data-{hash_arrays(data)}.npz", dict(data))
        notes.append(f"output error and verification on the inputs of {verify_data}")
    elif isinstance(evaluate, str) and scale == 100.0:
        verify_data = evaluate
        notes.append(f"output error and verification on the inputs of {evaluate}")
    elif isinstance(calibration_data, (str, os.PathLike)) and pathlib.Path(calibration_data).is_file():
        # Real data, in-sample: the candidates calibrate on the same file.
        verification.load_npz(calibration_data, specs, allow_extra=("labels",))
        verify_data = os.fspath(calibration_data)
        notes.append(f"output error and verification on the calibration data {verify_data} (in-sample)")
    else:
        # An evaluation function judges candidates on its own data; synthesized inputs then only measure drift.
        if not allow_random_verification and evaluate is None:
            raise InputError(
                "lossy passes are verified on real data: give --data or --calibration-data (an .npz file for "
                "the search), or --eval with a labels .npz; --allow-random-verification accepts random inputs"
            )
        random_inputs = evaluate is None
        feeds, _, shape_notes = verification.prepare_feeds(
            original.loaded, input_shapes=shapes or None, random_samples=RANDOM_SAMPLES, seed=seed
        )
        verify_data = save_npz(original.folder / f"random-seed{seed}.npz", stack_feeds(feeds))
        notes.extend(shape_notes)
        notes.append(f"output error and verification on {RANDOM_SAMPLES} seeded synthesized input sets (seed {seed})")
    calibration: str | None = None
    if calibration_data is not None:
        if isinstance(calibration_data, (str, os.PathLike)):
            calibration = os.fspath(calibration_data)
            if not pathlib.Path(calibration).exists():
                raise InputError(f"calibration data not found: {calibration}")
        else:
            arrays = stack_feeds(verification.calibration_feeds(calibration_data, specs))
            calibration = save_npz(original.folder / f"calibration-{hash_arrays(arrays)}.npz", arrays)
        notes.append(f"calibration data: {calibration}")
    else:
        notes.append("no calibration data: quantize calibrates on seeded random inputs (allow_random=true)")
    return _Inputs(evaluate, scale, verify_data, calibration, shapes, random_inputs)


def _usable_workers(workers: int, evaluate: Any, notes: list[str]) -> int:
    """``workers``, or 1 when the evaluation callable cannot reach a spawned process."""
    if workers > 1 and callable(evaluate):
        try:
            pickle.dumps(evaluate)
        except Exception:  # lambdas, closures: cannot reach a spawned process
            notes.append("the evaluation callable cannot be pickled: candidates evaluated in this process")
            return 1
    return workers


def _make_task(
    original: _Original, inputs: _Inputs, workers: int, seed: int, budget: SearchBudget
) -> tuple[Task, dict[str, Any]]:
    """The picklable evaluation task (judging with the budget's output limits), and the hashes of cache keys.

    The output budget is not part of the keys: a record judged with another budget is measured again on its
    cached model (:class:`~sftonnx.search.evaluation.CandidateEvaluator`), not rebuilt.
    """
    hashes = {
        "model": original.hash,
        "eval": hash_source(inputs.evaluate),
        "data": hash_source(inputs.verify_data),
        "calibration": hash_source(inputs.calibration),
        "shapes": sorted((k, list(v)) for k, v in inputs.shapes.items()),
        "seed": seed,
        "version": CACHE_VERSION,
    }
    task = Task(
        key=hashlib.sha256(json.dumps(hashes, sort_keys=True).encode()).hexdigest()[:24],
        original_path=str(original.path),
        folder=str(original.folder),
        evaluate=inputs.evaluate,
        verify_data=inputs.verify_data,
        input_shapes=tuple(sorted(inputs.shapes.items())),
        calibration=inputs.calibration,
        threads=0 if workers == 1 else max(1, (os.cpu_count() or 1) // workers),
        scale=inputs.scale,
        budget=budget.output_budget(),
    )
    return task, hashes


def _measure_original(task: Task, original: _Original) -> Candidate:
    """The original's figures (the evaluation function fails here first, before any candidate is built)."""
    try:
        figures = measure(task, str(original.path))
    except InputError:
        raise
    except Exception as error:  # onnxruntime cannot run the original
        raise InputError(f"onnxruntime cannot run the input model: {first_line(error)}") from None
    baseline = Candidate(
        "original", "original", "", size_bytes=len(original.data), model_path=str(original.path), feasible=True
    )
    fill_figures(baseline, figures, None)
    return baseline


class _Search:
    """The candidates of one search and the phases that add to them, evaluated through the cache."""

    def __init__(
        self,
        evaluator: CandidateEvaluator,
        hashes: Mapping[str, Any],
        budget: SearchBudget,
        reference_metric: float | None,
        notes: list[str],
    ) -> None:
        self.evaluator = evaluator
        self.hashes = hashes
        self.budget = budget
        self.reference_metric = reference_metric
        self.notes = notes
        self.candidates: list[Candidate] = []
        self.by_spec: dict[str, Candidate] = {}
        self.base_path = evaluator.task.original_path
        self.prefix = ""
        self.extras: dict[str, str] = {}
        self.ladder_of: dict[str, list[dict[str, int]]] = {}
        self.found: dict[str, str | None] = {}

    def key_of(self, spec: str, source: str) -> str:
        """Cache key of ``spec`` applied to ``source``; by the expanded spec, so a changed preset is evaluated again."""
        from sftonnx.passes import PRESETS, REGISTRY

        expanded = [[name, sorted(options.items())] for name, options, _ in resolve_spec(spec, REGISTRY, PRESETS)]
        payload = json.dumps({"spec": expanded, "source": source, **self.hashes}, sort_keys=True)
        return hashlib.sha256(payload.encode()).hexdigest()[:32]

    def make(self, name: str, kind: str, spec: str, record: dict[str, Any]) -> Candidate:
        """A candidate from an evaluation record (cached or new), added to the search."""
        candidate = Candidate(name, kind, spec, cached=bool(record.get("cached")))
        candidate.status = record.get("status", "failed")
        candidate.message = record.get("message", "")
        candidate.changed = bool(record.get("changed", True))
        candidate.size_bytes = record.get("size_bytes")
        candidate.model_path = record.get("model_path")
        candidate.sha256 = record.get("sha256")
        candidate.seconds = float(record.get("seconds") or 0.0)
        fill_figures(candidate, record, self.reference_metric)
        candidate.feasible = self.budget.feasible(candidate)
        self.candidates.append(candidate)
        self.by_spec.setdefault(spec, candidate)
        return candidate

    def run_specs(self, lossy_specs: Sequence[str], names: Sequence[str], kind: str, phase: str) -> list[Candidate]:
        """Evaluate lossy specs on the base model (cached per spec); the candidates carry full specs."""
        out: list[Candidate | None] = [self.by_spec.get(self.prefix + s) for s in lossy_specs]
        missing = [i for i, c in enumerate(out) if c is None]
        source = self.base_path
        jobs = [
            {"key": self.key_of(lossy_specs[i], "base:" + source), "spec": lossy_specs[i], "source": source}
            for i in missing
        ]
        for i, record in zip(missing, self.evaluator.run(jobs, phase), strict=True):
            out[i] = self.make(names[i], kind, self.prefix + lossy_specs[i], record)
        for i, existing in enumerate(out):
            if existing is not None and existing.kind == "probe" and kind != "probe":
                # A rung identical to a probe: the same model, listed (and timed) as a search result.
                copy = dataclasses.replace(existing, name=names[i], kind=kind, cached=True)
                self.candidates.append(copy)
                self.by_spec[copy.spec] = copy
                out[i] = copy
        return [c for c in out if c is not None]

    def presets(self, names: Sequence[str], original_path: pathlib.Path) -> None:
        """Phase 1: the fixed presets, from the original; the ``lossless`` result becomes the base."""
        from sftonnx.passes import PRESETS, REGISTRY

        # A preset that shares its name with a pass ("fp16") is given by its passes: the name alone is the pass.
        specs = [PRESETS[p] if p in REGISTRY else p for p in names]
        jobs = [{"key": self.key_of(s, "original"), "spec": s, "source": str(original_path)} for s in specs]
        for name, spec, record in zip(names, specs, self.evaluator.run(jobs, "presets"), strict=True):
            self.make(f"preset:{name}", "preset", spec, record)
        base = self.by_spec.get(BASE_PRESET)
        if base is not None and base.status == "ok" and base.model_path:
            self.base_path, self.prefix = base.model_path, BASE_PRESET + ","
        else:
            self.base_path, self.prefix = str(original_path), ""
            self.notes.append(
                f"preset '{BASE_PRESET}' is unavailable or failed: lossy passes start from the original"
            )

    def probes(
        self, techniques: Sequence[Technique], *, calibrated: bool
    ) -> tuple[Sensitivity, dict[tuple[str, str, int], Candidate], dict[str, list[str]]]:
        """Phase 2: per-layer sensitivity probes (one round, all in parallel).

        Returns:
            ``{technique: {layer: {level option: loss}}}``, the probe per (technique, layer, level), and the
            target layers per technique.
        """
        layers = {t.name: target_layers(self.base_path, t) for t in techniques}
        self.extras = {t.name: technique_extra(t, calibrated) for t in techniques}
        index: list[tuple[Technique, str, int]] = [
            (t, layer, level) for t in techniques for layer in layers[t.name] for level in range(1, len(t.levels) + 1)
        ]
        specs = [t.probe_spec(layer, level, self.extras[t.name]) for t, layer, level in index]
        names = [
            f"probe:{t.name}:{layer}" + (f"@{t.levels[level - 1]}" if t.levels[level - 1] else "")
            for t, layer, level in index
        ]
        probes = self.run_specs(specs, names, "probe", "sensitivity") if specs else []
        sensitivity: Sensitivity = {}
        probe_of: dict[tuple[str, str, int], Candidate] = {}
        for (t, layer, level), probe in zip(index, probes, strict=True):
            probe_of[(t.name, layer, level)] = probe
            loss = self.budget.loss(probe)[0] if probe.status == "ok" and probe.changed else None
            label = t.levels[level - 1] or "int8"
            sensitivity.setdefault(t.name, {}).setdefault(layer, {})[label] = (
                None if loss is None or math.isinf(loss) else loss
            )
        return sensitivity, probe_of, layers

    def ladders(
        self,
        techniques: Sequence[Technique],
        probe_of: Mapping[tuple[str, str, int], Candidate],
        layers: Mapping[str, Sequence[str]],
    ) -> None:
        """Phase 3: greedy back-off ladders per technique, searched concurrently (one job per technique per round)."""
        for t in techniques:
            usable = [
                layer
                for layer in layers[t.name]
                if any(
                    probe_of[(t.name, layer, lv)].status == "ok" and probe_of[(t.name, layer, lv)].changed
                    for lv in range(1, len(t.levels) + 1)
                )
            ]
            self.ladder_of[t.name] = ladder(t, usable, probe_of, self.budget)
        searches = {
            t.name: search_ladder(
                [t.config_spec(c, self.extras[t.name]) or "" for c in self.ladder_of[t.name]], name=t.name
            )
            for t in techniques
            if self.ladder_of[t.name]
        }
        self.found = drive(
            searches, lambda specs, names: self.run_specs(specs, names, "search", "search"), self.budget
        )

    def combinations(self, techniques: Sequence[Technique]) -> None:
        """Phase 4: the quantization ladder on top of each feasible structural configuration."""
        combos = {}
        for s in techniques:
            if s.kind != "struct" or self.found.get(s.name) is None:
                continue
            s_spec = self.found[s.name]
            for q in techniques:
                if q.kind != "quant" or not self.ladder_of.get(q.name):
                    continue
                rungs = [q.config_spec(c, self.extras[q.name]) or "" for c in self.ladder_of[q.name]]
                start = rungs.index(self.found[q.name]) if self.found.get(q.name) in rungs else 0
                combos[f"{s.name}+{q.name}"] = search_ladder(
                    [f"{s_spec},{r}" for r in rungs[start:] if r], name=f"{s.name}+{q.name}"
                )
        drive(combos, lambda specs, names: self.run_specs(specs, names, "combo", "combinations"), self.budget)


def _time_candidates(
    candidates: Sequence[Candidate],
    baseline: Candidate,
    budget: SearchBudget,
    objective: str,
    *,
    ep: str,
    data: str | None,
    input_shapes: Mapping[str, tuple[int, ...]],
    runs: int,
    seconds: float,
    progress: Callable[[float, float, str], None] | None,
    notes: list[str],
) -> list[str]:
    """Phase 5: time the candidates serially, interleaved with the original; returns the Pareto front's names."""
    pool = timing_pool(candidates, budget)
    if pool:
        measure_latency(
            [baseline, *pool], ep=ep, data=data, input_shapes=input_shapes, runs=runs,
            seconds=seconds, progress=progress, phase="latency",
        )
        feasible = sorted((c for c in pool if c.feasible and c.latency_ms is not None),
                          key=lambda c: objective_key(c, objective))
        if objective == "latency" and len(feasible) > 1:
            # Re-time the front-runners together (more runs each): the choice among near ties is the noisy part.
            contenders = feasible[: min(4, len(feasible))]
            measure_latency(
                [baseline, *contenders], ep=ep, data=data, input_shapes=input_shapes, runs=runs * 2,
                seconds=seconds, progress=progress, phase="latency (front-runners)",
            )
        notes.append(
            f"latency: p50 on {ep}, candidates interleaved run by run with the original "
            f"(up to {runs} runs or {seconds:g}s per round), front-runners re-timed together"
        )
    timings = {c.sha256: c.latency_ms for c in pool if c.latency_ms is not None}
    for candidate in candidates:  # the same model under another name (a rung equal to a preset) shares its time
        if candidate.latency_ms is None and candidate.kind != "probe" and candidate.sha256 in timings:
            candidate.latency_ms = timings[candidate.sha256]
    timed = [c for c in pool if c.latency_ms is not None]
    points = [(c.latency_ms, float(c.size_bytes or math.inf), budget.loss(c)[0]) for c in timed]
    return [timed[i].name for i in pareto_front(points)]


def _select(
    candidates: Sequence[Candidate], budget: SearchBudget, objective: str
) -> tuple[Candidate | None, Candidate | None]:
    """Phase 6: the best feasible candidate by the objective, and the closest one when none is feasible."""
    ranked = sorted(
        (c for c in candidates if c.feasible and c.kind != "probe" and (objective == "size" or c.latency_ms)),
        key=lambda c: objective_key(c, objective),
    )
    chosen = ranked[0] if ranked else None
    ok = [c for c in candidates if c.status == "ok" and c.kind != "probe"]
    return chosen, chosen or (min(ok, key=budget.loss) if ok else None)


# ------------------------------------------------------------------------------------- distillation
def _distill_step(
    search: _Search,
    chosen: Candidate,
    original_path: pathlib.Path,
    *,
    enabled: bool,
    deadline: float | None,
    in_sample: bool,
) -> tuple[Candidate | None, SearchStep]:
    """Phase 7: knowledge distillation of the chosen lossy candidate against the original, when affordable.

    Runs ``distill`` (its public options: ``time_budget`` and ``teacher``, the original) on the chosen
    candidate's cached model, with the search's calibration data, and measures the result like every
    candidate. The distilled model replaces the chosen one only when the pass kept trained weights (its own
    held-out loss fell) *and* it meets the budget with a lower budgeted loss (:meth:`SearchBudget.loss`: the
    accuracy drop, else the share of the output budget used) than the chosen one; its graph is the chosen
    one's, so the chosen one's latency carries over. Its spec is the chosen spec plus
    ``distill{time_budget=T}`` (what reproduces it, training again); the final write copies the trained weights
    from this step's cached model instead (``distill{weights_from=...}``), so the written model is the one measured.

    Cost: training at most ``T`` seconds, once, plus about the chosen candidate's build time three times (this
    pipeline's checks and measurement, the final rebuild). With a deadline,
    ``T = min(DISTILL_SECONDS, left - 3 * build)``; under :data:`MIN_DISTILL_SECONDS` the step
    is skipped. Without torch, calibration data or a lossy choice, the step is one ``skipped`` row saying why
    (torch's install hint, as ``compact``/``max`` say it); torch is imported only when training runs.

    Returns:
        The distilled candidate when kept (else ``None``), and the step's row.
    """
    from sftonnx.pass_infra import Numerics
    from sftonnx.passes import PRESETS, REGISTRY
    from sftonnx.passes.distillation.support import TORCH_HINT, torch_available, unsupported_ops

    def skipped(message: str) -> tuple[None, SearchStep]:
        return None, SearchStep("distill", "skipped", message)

    names = [name for name, _, _ in resolve_spec(chosen.spec, REGISTRY, PRESETS)] if chosen.spec else []
    if not enabled:
        return skipped("turned off")
    if not any(REGISTRY[name].numerics is Numerics.APPROXIMATE for name in names):
        return skipped("the chosen model is lossless: nothing to recover")
    if "distill" in names:
        return skipped("the chosen spec already distills")
    if search.evaluator.task.calibration is None:
        return skipped("needs --calibration-data (the teacher's inputs)")
    if not torch_available():
        return skipped(f"distillation skipped: {TORCH_HINT}")
    if not chosen.model_path or _UNSAFE_PATH.search(str(original_path)):
        return skipped(f"the original's cached path cannot be written into a spec: {original_path}")
    missing = unsupported_ops(io.load(chosen.model_path))  # decided without torch, as the pass's requires()
    if missing:
        listed = ", ".join(f"{op} ({count})" for op, count in sorted(missing.items()))
        return skipped(f"the torch rendering cannot run {listed}")
    build = max(chosen.seconds, 1.0)
    seconds = DISTILL_SECONDS
    if deadline is not None:
        left = deadline - time.perf_counter()
        seconds = min(seconds, left - 3 * build)
        if seconds < MIN_DISTILL_SECONDS:
            return skipped(
                f"not enough time left: {max(left, 0.0):.0f} s of --time-budget, it needs about "
                f"{MIN_DISTILL_SECONDS + 3 * build:.0f} s (training, and the chosen model's build three times)"
            )
        seconds = math.floor(seconds)
    spec = f"distill{{time_budget={seconds:g}}}"
    # Trained from the chosen model's cached file, so the teacher (the original) is named explicitly.
    from_chosen = f"distill{{time_budget={seconds:g}, teacher={original_path}}}"
    job = {
        "key": search.key_of(from_chosen, "chosen:" + (chosen.sha256 or chosen.model_path)),
        "spec": from_chosen,
        "source": chosen.model_path,
    }
    record = search.evaluator.run([job], "distill")[0]
    candidate = search.make("distill", "distill", f"{chosen.spec},{spec}", record)
    row = next((r for r in record.get("rows", []) if r.get("pass") == "distill"), {})
    step = SearchStep(
        "distill", "failed", candidate.message, seconds=candidate.seconds, time_budget=seconds,
        details=dict(row.get("details") or {}), candidate=candidate.name,
    )
    if candidate.status != "ok":
        return None, step
    before, after = search.budget.loss(chosen), search.budget.loss(candidate)
    figures = f"budgeted loss {before[0]:.4g} -> {after[0]:.4g}"
    caveat = " (judged on the calibration data it trained on, less its held-out part: give --data)" if in_sample else ""
    if not candidate.changed:
        step.status, step.message = "discarded", "training did not lower its held-out loss: weights left as they were"
    elif not candidate.feasible:
        step.status = "discarded"
        step.message = f"outside the budget after training ({candidate.budget_failure or figures})"
    elif not after < before:
        step.status, step.message = "discarded", f"no better than the chosen model: {figures}"
    else:
        candidate.latency_ms = chosen.latency_ms  # the same graph; only float weights moved
        step.status, step.message = "kept", f"{figures}{caveat}"
        return candidate, step
    return None, step
