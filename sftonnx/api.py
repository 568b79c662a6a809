"""Python API: ``optimize``, ``inspect``; the CLI is a thin layer over these.

Example::

    import sftonnx

    result = sftonnx.optimize("resnet.onnx", "resnet.opt.onnx", preset="lossless")
    print(result.report.final.nodes, result.verification.passed)
"""

from __future__ import annotations

import dataclasses
import logging
import os
import pathlib
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import numpy as np

from sftonnx import io
from sftonnx import verify as verification
from sftonnx.errors import InputError, VerificationError
from sftonnx.pass_infra import Numerics, SftPass
from sftonnx.pipeline import (
    ModelStats,
    OptimizeResult,
    build_passes,
    check_output,
    file_size,
    lossy_without_data,
    optimize_model,
    resolve_spec,
)
from sftonnx.verify import prepare_feeds

__all__ = ["DEFAULT_PRESET", "OptimizeResult", "inspect", "optimize", "prepare_feeds"]

logger = logging.getLogger(__name__)

DEFAULT_PRESET = "lossless"


def optimize(
    model: io.ModelSource,
    output: str | os.PathLike | None = None,
    *,
    passes: str | Sequence[SftPass] | None = None,
    preset: str | None = DEFAULT_PRESET,
    data: str | os.PathLike | Mapping[str, np.ndarray] | None = None,
    verify: bool = True,
    input_shapes: Iterable[str] | Mapping[str, Sequence[int]] | None = None,
    tolerance: verification.Tolerance | None = None,
    budget: verification.Budget | None = None,
    verify_each: bool = False,
    dump_dir: str | os.PathLike | None = None,
    overwrite: bool = False,
    external_data: bool | None = None,
    calibration_data: Any = None,
    progress: Callable[[int, int, str], None] | None = None,
    allow_random_verification: bool = False,
    pass_progress: Callable[[str, float, float, str], None] | None = None,
) -> OptimizeResult:
    """Optimize a model with a pass spec or preset, verify it against the original, and optionally save it.

    Args:
        model: Path, bytes, ``onnx.ModelProto`` or ``onnx_ir.Model`` (an ``ir.Model`` is modified in place).
        output: Where to write the result (atomically, only after verification passed).
        passes: A pass spec (``"simplify,fold-bn"``) or pass objects; overrides ``preset``.
        preset: A preset name (see ``sftonnx passes``), used when ``passes`` is not given.
        data: User inputs for verification: an ``.npz`` (axis 0 = batch when its arrays allow it), a folder of
            ``.npz`` files (one feed per file, as is), or a mapping of arrays. Without it, verification runs on
            held-out ``calibration_data`` samples when given, else on inputs built from the model's inputs.
        verify: Compare the result with the original in onnxruntime before returning/writing.
        input_shapes: ``["name=1x3x224x224"]`` or ``{"name": (1, 3, 224, 224)}`` for dynamic dimensions.
        tolerance: Limits for lossless pipelines (default ``atol=1e-4, rtol=1e-3``).
        budget: Limits for pipelines with lossy passes (default ``Budget()``: per output, agreement >= 0.99
            where a task metric applies and cosine >= 0.99; see :mod:`sftonnx.verify.metrics`).
        verify_each: Check numerics after every pass, naming the pass and first tensor that diverge.
        dump_dir: On a failing pass, save the model from just before it and a reproducer command here.
        overwrite: Allow ``output`` to be the input path or an existing file.
        external_data: Force (``True``) or forbid (``False``) external data (``<output>.data`` beside the output);
            default: when the input's weights are in external files, or the result is past 2 GiB.
        calibration_data: Calibration inputs (``.npz`` path, folder or iterable of feed dicts) for lossy passes.
        progress: Called as ``progress(index, total, pass_name)`` before each pass.
        allow_random_verification: Verify lossy passes on synthesized inputs when no real data is given
            (recorded in the report: ``random_verification`` and a note) instead of refusing.
        pass_progress: Called as ``pass_progress(pass_name, done, total, text)`` from inside passes that report
            progress during their run (``distill``: seconds of its time budget and the held-out loss).

    Returns:
        The optimized model, its report and the final verification.

    Raises:
        InputError: Bad model, data, shapes, spec or output path; lossy passes without real data to verify
            them on (exit 2).
        VerificationError: The result differs from the original beyond its limits (exit 3).
        PassError: A pass failed or broke the model (exit 1).
    """
    from sftonnx.passes import PRESETS, REGISTRY

    if passes is None and preset == AUTO_PRESET:
        # The accuracy-aware search: its output budget is the lossy budget (cosine and task agreement).
        budget = budget if budget is not None else verification.Budget()
        return optimize_auto(
            model,
            output,
            max_error=None if budget.min_cosine is None else 1.0 - budget.min_cosine,
            min_agreement=budget.min_agreement,
            data=data,
            calibration_data=calibration_data,
            input_shapes=input_shapes,
            overwrite=overwrite,
            external_data=external_data,
            allow_random_verification=allow_random_verification,
        )
    output_path = pathlib.Path(output) if output is not None else None
    if output_path is not None:
        check_output(model, output_path, overwrite)  # before building passes and loading the model

    if passes is None:
        if preset is None:
            raise InputError("give a pass spec or a preset")
        if preset not in PRESETS:
            raise InputError(f"unknown preset '{preset}' (presets: {', '.join(PRESETS)})")
        # Expanded here, not by name: "fp16" is a preset and a pass, and spec resolution takes the pass.
        spec: str | Sequence[SftPass] = PRESETS[preset]
    else:
        spec = passes
    checking = verify or verify_each
    if isinstance(spec, str) and data is None and calibration_data is None and checking:
        # Before building: a lossy pass's own "no calibration data" error would hide the real problem.
        resolved = resolve_spec(spec, REGISTRY, PRESETS)
        lossy = [name for name, _, _ in resolved if REGISTRY[name].numerics is Numerics.APPROXIMATE]
        if lossy and not allow_random_verification:
            raise lossy_without_data(lossy)
    data_notes: list[str] = []
    if data is None and calibration_data is not None and checking:
        # Real data for verification: the last calibration samples, which the calibrating passes then skip.
        split = verification.hold_out(calibration_data)
        calibration_data, data, data_notes = split.calibration, split.verification, split.notes
    if isinstance(spec, str):
        # Passes that judge their own candidates (quantize-int8) take the final check's lossy budget.
        extra: dict[str, Any] = {"calibration_data": calibration_data}
        if budget is not None:
            extra.update(min_cosine=budget.min_cosine, min_agreement=budget.min_agreement)
        built = build_passes(spec, REGISTRY, PRESETS, extra=extra)
        if passes is None:  # a preset's passes are skipped, not refused, on a model they cannot handle
            built = [(pass_, True) for pass_, _ in built]
    else:
        built = [(p, False) for p in spec]
    return optimize_model(
        model,
        output_path,
        built,
        data=data,
        verify_result=verify,
        input_shapes=input_shapes,
        tolerance=tolerance,
        budget=budget,
        verify_each=verify_each,
        dump_dir=dump_dir,
        overwrite=overwrite,
        external_data=external_data,
        progress=progress,
        allow_random_verification=allow_random_verification,
        data_notes=data_notes,
        pass_progress=pass_progress,
    )


def inspect(
    model: io.ModelSource,
    *,
    input_shapes: Iterable[str] | Mapping[str, Sequence[int]] | None = None,
    memory: bool = False,
) -> dict[str, Any]:
    """Summarize a model: opset, inputs/outputs, op histogram, params, MACs, peak activation memory.

    Args:
        model: Path, bytes, ``ModelProto`` or ``onnx_ir.Model``.
        input_shapes: Concrete shapes for dynamic dimensions (defaults as in verification).
        memory: Include the static activation-memory plan (tensor lifetimes and reuse slots).

    Returns:
        A JSON-able dict (what ``sftonnx inspect --json`` prints).
    """
    from sftonnx.analysis import plan_memory, summarize

    loaded = io.load(model)
    shapes, notes = verification.model_shapes(loaded, input_shapes, trial_run=True)
    summary = summarize(loaded, input_shapes=shapes, file_size=file_size(model)).to_json()
    summary["input_notes"] = notes
    if memory:
        summary["memory"] = plan_memory(loaded, input_shapes=shapes).to_json()
    return summary


def model_stats(
    model: io.ModelSource, input_shapes: Mapping[str, tuple[int, ...]] | None = None
) -> ModelStats:
    """Nodes, parameters and MACs of a model (as the per-pass report measures them)."""
    return ModelStats.of(io.load(model), input_shapes)


def benchmark(
    models: Sequence[io.ModelSource],
    *,
    providers: str | Sequence[str] = "cpu",
    runs: int | None = None,
    duration: float | None = None,
    warmup: int = 10,
    threads: int = 0,
    batch: int | None = None,
    input_shapes: Iterable[str] | Mapping[str, Sequence[int]] | None = None,
    data: str | os.PathLike | Mapping[str, np.ndarray] | None = None,
    evaluate: str | os.PathLike | Callable[[Any], float] | None = None,
    io_binding: bool = False,
    memory: bool = True,
    spinning: bool = False,
    progress: Callable[[float, float, str], None] | None = None,
) -> Any:
    """Benchmark models side by side (the first is the baseline) on one or more execution providers.

    Latency (first run, mean, p50/p90/p99), throughput, session creation time, per-model memory (a spawned
    process each), file size and optional accuracy; models interleaved run by run. See
    :mod:`sftonnx.benchmark` for the method and :func:`sftonnx.benchmark.run_benchmark` for the arguments.

    Example::

        result = sftonnx.api.benchmark(["model.onnx", "model.opt.onnx"], runs=50)
        print(result.rows[1].ratios["latency_p50"])

    Returns:
        A :class:`sftonnx.benchmark.BenchmarkResult` (``to_json()`` for the JSON report).

    Raises:
        InputError: Bad models, options, data, EP names, or a failing ``--eval`` metric (exit 2).
    """
    import importlib

    bench = importlib.import_module("sftonnx.benchmark")  # the module; this function shadows its name here

    return bench.run_benchmark(
        models,
        providers=providers,
        runs=runs,
        duration=duration,
        warmup=warmup,
        threads=threads,
        batch=batch,
        input_shapes=input_shapes,
        data=data,
        evaluate=evaluate,
        io_binding=io_binding,
        memory=memory,
        spinning=spinning,
        progress=progress,
    )


def compare(
    reference: io.ModelSource,
    candidate: io.ModelSource,
    *,
    data: str | os.PathLike | Mapping[str, np.ndarray] | None = None,
    input_shapes: Iterable[str] | Mapping[str, Sequence[int]] | None = None,
    tolerance: verification.Tolerance | None = None,
    budget: verification.Budget | None = None,
) -> Any:
    """Compare two models' outputs on the same inputs, per output: kind, errors, cosine and task agreement.

    Metrics: max abs error, mean relative error, cosine, and top-1, argmax, threshold or label agreement
    (see :mod:`sftonnx.verify.metrics`).

    Args:
        reference: Model A (path, bytes, ``ModelProto`` or ``onnx_ir.Model``).
        candidate: Model B, with the same input and output names.
        data: ``.npz``, folder of ``.npz`` (one feed per file) or mapping with one array per input; default:
            seeded random inputs.
        input_shapes: ``["name=1x3x224x224"]`` or a mapping, for dynamic dimensions.
        tolerance: Elementwise limits, checked only when given.
        budget: Agreement and cosine (and max abs / top-1) limits, checked only when given.

    Returns:
        A :class:`sftonnx.benchmark.CompareResult`; ``passed`` is false when a given limit is exceeded (the
        CLI then exits with 3).

    Raises:
        InputError: A model cannot be loaded or run, the inputs/outputs differ by name or count, or the data
            does not fit (exit 2).
    """
    import importlib

    bench = importlib.import_module("sftonnx.benchmark")  # the module; this function shadows its name here

    labels = ["A", "B"]
    if isinstance(reference, (str, os.PathLike)) and isinstance(candidate, (str, os.PathLike)):
        labels = [str(reference), str(candidate)]
    loaded = io.load(reference)
    ref = bench.load_entry(reference, labels[0], loaded=loaded)
    cand = bench.load_entry(candidate, labels[1])
    bench.check_same_signature(ref, cand)
    feeds, _, notes = prepare_feeds(loaded, data=data, input_shapes=input_shapes)
    return bench.compare_entries(ref, cand, feeds, tolerance=tolerance, budget=budget, notes=notes)


__all__ += ["benchmark", "compare"]


# ------------------------------------------------------------------------------------------------ auto
#: The preset name that runs the accuracy-aware search (:func:`optimize_auto`) instead of a fixed spec.
AUTO_PRESET = "auto"


@dataclasses.dataclass
class AutoOptimizeResult(OptimizeResult):
    """What :func:`optimize_auto` returns: the written model's result plus the search behind it.

    Attributes:
        search: The :class:`sftonnx.search.SearchResult` (candidates, Pareto front, sensitivities);
            ``search.chosen.spec`` reproduces the model without search.
    """

    search: Any = None

    def report_json(self) -> dict[str, Any]:
        """The pipeline report with the search under ``auto`` (``auto.spec`` is the reproducer spec)."""
        return self.report.to_json() | {"auto": self.search.to_json() if self.search is not None else None}


def optimize_auto(
    model: io.ModelSource,
    output: str | os.PathLike | None = None,
    *,
    evaluate: str | os.PathLike | Callable[[Any], float] | None = None,
    max_accuracy_drop: float | None = None,
    max_error: float | None = None,
    min_agreement: float | None = verification.DEFAULT_MIN_AGREEMENT,
    objective: str = "latency",
    data: str | os.PathLike | Mapping[str, np.ndarray] | None = None,
    calibration_data: Any = None,
    input_shapes: Iterable[str] | Mapping[str, Sequence[int]] | None = None,
    ep: str = "cpu",
    seed: int = 0,
    workers: int = 1,
    cache_dir: str | os.PathLike | None = None,
    techniques: Iterable[str] | None = None,
    presets: Iterable[str] | None = None,
    overwrite: bool = False,
    external_data: bool | None = None,
    latency_runs: int = 100,
    latency_seconds: float = 8.0,
    progress: Callable[[float, float, str], None] | None = None,
    allow_random_verification: bool = False,
    time_budget: float | None = None,
    distill: bool = True,
) -> AutoOptimizeResult:
    """Search per-layer lossy configurations within an accuracy budget and write the best (``--preset auto``).

    The search (:func:`sftonnx.search.run_search`) measures per-layer sensitivities, backs off the most
    harmful layers until the budget holds, combines techniques, and times the candidates and every fixed
    preset against the original. With torch installed and calibration data, the chosen lossy candidate is
    then distilled against the original within what is left of ``time_budget``, and kept only when that helps.
    The chosen candidate is rebuilt from its exact pass spec through :func:`optimize`, verified with the
    budget the search judged it with, and written atomically.

    Example::

        result = sftonnx.api.optimize_auto("cnn.onnx", "cnn.auto.onnx", evaluate="test.npz",
                                           max_accuracy_drop=1.0, calibration_data="calib.npz")
        print(result.search.chosen.spec)

    Args:
        model: Path, bytes, ``ModelProto`` or ``onnx_ir.Model``.
        output: Where to write the chosen model (nothing is written when no candidate meets the budget).
        evaluate: ``labels.npz`` (top-1 accuracy in percent), ``module:function`` or a callable taking an
            ``onnxruntime.InferenceSession`` and returning a higher-is-better float.
        max_accuracy_drop: Largest drop of the metric (default 1.0 when ``evaluate`` is given alone).
        max_error: Largest ``1 - min cosine`` over outputs vs the original (default 0.01 without ``evaluate``).
        min_agreement: Least task agreement per decision output (argmax/threshold/label, as the verification
            of lossy presets judges it), applied with the output budget (``max_error``); ``None``: cosine only.
            With ``evaluate`` alone, the metric is the judge and this is not applied.
        objective: ``latency`` or ``size``.
        data: Inputs for the output error and the verification (default: the labels file's inputs, else
            seeded random inputs).
        calibration_data: Calibration inputs for quantization and data-aware pruning/factorization.
        input_shapes: Concrete shapes for dynamic dimensions.
        ep: Execution provider latency is measured on.
        seed: Seed of the random inputs.
        workers: Parallel processes evaluating candidates (latency is always measured serially).
        cache_dir: Candidate cache (default ``.sftonnx-cache`` next to ``output``, or in the working folder).
        techniques: Restrict the searched lossy passes (registry names).
        presets: The fixed presets evaluated as candidates (default: all of ``sftonnx.search.FIXED_PRESETS``).
        overwrite: Allow replacing an existing output (or the input).
        external_data: As in :func:`optimize`.
        latency_runs: Timed runs per model and round.
        latency_seconds: Time limit of one timing round.
        progress: Called as ``progress(done, total, phase)``.
        allow_random_verification: Judge candidates on seeded random inputs when there is no real data
            (no ``data``, no labels file, no calibration ``.npz``); refused otherwise.
        time_budget: Seconds the search may take; the distillation step gets only what is left of it.
        distill: Try distilling the chosen lossy candidate (needs torch and ``calibration_data``).

    Returns:
        The written model's result, with the search in ``search`` (``search.steps``: the distillation step).

    Raises:
        InputError: Bad options, data or evaluation; an evaluation function that raised (exit 2).
        sftonnx.search.BudgetNotMetError: No candidate met the budget; nothing written (exit 3).
    """
    from sftonnx import search

    output_path = pathlib.Path(output) if output is not None else None
    if output_path is not None:
        check_output(model, output_path, overwrite)  # before a long search, not after it
    if max_accuracy_drop is None and max_error is None:
        if evaluate is not None:
            max_accuracy_drop = 1.0
        else:
            max_error = 1.0 - verification.DEFAULT_MIN_COSINE
    budget = search.SearchBudget(
        max_accuracy_drop=max_accuracy_drop,
        max_error=max_error,
        min_agreement=min_agreement if max_error is not None else None,
    )
    if cache_dir is None:
        cache_dir = (output_path.parent if output_path is not None else pathlib.Path.cwd()) / ".sftonnx-cache"
    found = search.run_search(
        model,
        budget=budget,
        evaluate=evaluate,
        objective=objective,
        data=data,
        calibration_data=calibration_data,
        input_shapes=input_shapes,
        ep=ep,
        seed=seed,
        workers=workers,
        cache_dir=cache_dir,
        techniques=techniques,
        presets=presets,
        latency_runs=latency_runs,
        latency_seconds=latency_seconds,
        progress=progress,
        allow_random_verification=allow_random_verification,
        time_budget=time_budget,
        distill=distill,
    )
    if found.chosen is None:
        best = found.best
        closest = (
            f"; the closest candidate, {best.name} ({best.spec or 'original'}), has "
            + _auto_figures(best)
            if best is not None
            else ""
        )
        raise search.BudgetNotMetError(
            f"no candidate meets the budget ({budget.describe()}){closest} (nothing written)", result=found
        )
    failures = []
    for candidate in found.ranked():
        try:
            result = optimize(
                model,
                output,
                passes=_write_spec(candidate),
                data=found.verify_data,
                input_shapes=input_shapes,
                budget=budget.verification_budget(candidate),
                overwrite=overwrite,
                external_data=external_data,
                calibration_data=found.calibration_data,
                allow_random_verification=allow_random_verification,
            )
        except VerificationError as error:  # the rebuilt model differs from the evaluated one: try the next
            failures.append(f"{candidate.name}: {error}")
            logger.warning("auto: %s failed its final verification: %s", candidate.name, error)
            continue
        if output_path is not None and budget.max_accuracy_drop is not None:
            written = search.measure_model(found, output_path)
            if not written.feasible:
                output_path.unlink(missing_ok=True)
                failures.append(f"{candidate.name}: written model has {_auto_figures(written)}")
                continue
        if candidate is not found.chosen:
            found.notes.append(f"{found.chosen.name} failed its final verification; wrote {candidate.name}")
            found.chosen = found.best = candidate
        result.report.input_notes.append(f"auto: chosen {candidate.name}, spec: {candidate.spec}")
        if found.random_inputs:
            result.report.random_verification = True
            result.report.input_notes.append(
                "auto: candidates judged on seeded random inputs (--allow-random-verification)"
            )
        return AutoOptimizeResult(result.model, result.report, result.verification, result.output, search=found)
    raise search.BudgetNotMetError(
        "every feasible candidate failed its final verification (nothing written): " + "; ".join(failures[:3]),
        result=found,
    )


def _write_spec(candidate: Any) -> str:
    """The spec that writes ``candidate``: its own, except for a distilled one.

    A distilled candidate copies the weights it was measured with (``distill{weights_from=...}``, the search's
    cached model) instead of training again: training stops on wall time and would not give the same weights twice.
    """
    if candidate.kind != "distill" or not candidate.model_path:
        return candidate.spec
    head = candidate.spec.rsplit("distill{", 1)[0].rstrip(",")
    step = f"distill{{weights_from={candidate.model_path}}}"
    return f"{head},{step}" if head else step


def _auto_figures(candidate: Any) -> str:
    parts = []
    if candidate.drop is not None:
        parts.append(f"accuracy drop {candidate.drop:.3g}")
    if candidate.error is not None:
        parts.append(f"output error {candidate.error:.3g}")
    if candidate.agreement is not None:
        parts.append(f"task agreement {candidate.agreement:.4g}")
    if candidate.budget_failure:
        parts.append(candidate.budget_failure)
    return ", ".join(parts) or candidate.message or "no figures"


__all__ += ["AUTO_PRESET", "AutoOptimizeResult", "optimize_auto"]
