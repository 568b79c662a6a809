"""The Pipeline that runs passes with per-pass checks, its PipelineReport, and the optimize core.

:func:`optimize_model` is the load-build-run-verify-save core that ``sftonnx.api.optimize`` and the
accuracy-aware search both call. Spec parsing lives in :mod:`sftonnx.spec` (re-exported here).
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import logging
import os
import pathlib
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import numpy as np
import onnx
import onnx_ir as ir
import onnx_ir.passes.common as common_passes

from sftonnx import io, verify
from sftonnx.errors import InputError, PassError, VerificationError
from sftonnx.errors import first_line as _first_line
from sftonnx.io import PROTOBUF_LIMIT, model_nbytes, to_bytes
from sftonnx.ir_utils import restore_model
from sftonnx.pass_infra import Numerics, PassReport, SftPass, VerificationData
from sftonnx.spec import build_passes, parse_spec, resolve_spec

__all__ = [
    "OptimizeResult",
    "check_output",
    "file_size",
    "lossy_without_data",
    "optimize_model",
    "ModelStats",
    "PassRow",
    "Pipeline",
    "PipelineReport",
    "Verifier",
    "build_passes",
    "parse_spec",
    "resolve_spec",
]

logger = logging.getLogger(__name__)


# --------------------------------------------------------------------------------------------- report
@dataclasses.dataclass
class ModelStats:
    """Size and cost of a model at one point of the pipeline."""

    nodes: int
    params: int
    param_bytes: int
    macs: int | None

    @classmethod
    def of(cls, model: ir.Model, input_shapes: Mapping[str, tuple[int, ...]] | None) -> ModelStats:
        """Measure ``model`` (MACs need shape inference; ``None`` when it fails)."""
        from sftonnx.analysis import UNKNOWN_SHAPE, count_macs, parameter_stats

        nodes = sum(1 for _ in ir.traversal.RecursiveGraphIterator(model.graph))
        params, param_bytes = parameter_stats(model)
        try:
            counted = count_macs(model, input_shapes=dict(input_shapes or {}))
            macs: int | None = int(sum(v for k, v in counted.items() if k != UNKNOWN_SHAPE))
        except Exception as error:  # analysis is advisory; never fail a pipeline over it
            logger.debug("MAC count failed: %s", error)
            macs = None
        return cls(nodes, params, param_bytes, macs)


@dataclasses.dataclass
class PassRow:
    """One pass of a pipeline run: what it did, what it cost, and how far the model is from the original."""

    name: str
    spec: str
    numerics: str
    status: str = "ok"  # ok | skipped | failed
    message: str = ""
    changes: dict[str, int] = dataclasses.field(default_factory=dict)
    skipped: dict[str, int] = dataclasses.field(default_factory=dict)
    details: dict[str, Any] = dataclasses.field(default_factory=dict)
    seconds: float = 0.0
    before: ModelStats | None = None
    after: ModelStats | None = None
    error: dict[str, Any] | None = None  # worst metrics vs the original (with --verify-each)

    def to_json(self) -> dict[str, Any]:
        """JSON-able dict."""
        return dataclasses.asdict(self)


@dataclasses.dataclass
class PipelineReport:
    """Everything a pipeline run measured; ``to_json()`` is what ``--report`` writes."""

    rows: list[PassRow] = dataclasses.field(default_factory=list)
    input_notes: list[str] = dataclasses.field(default_factory=list)
    original: ModelStats | None = None
    final: ModelStats | None = None
    verification: dict[str, Any] | None = None
    warnings: list[str] = dataclasses.field(default_factory=list)
    spec: str = ""
    seconds: float = 0.0
    input_size: int | None = None
    output_size: int | None = None
    #: Lossy passes were verified on random inputs because the caller allowed it explicitly.
    random_verification: bool = False
    #: Passes undone because verification refused their result (``revert_on_failure``): per pass, its ``name``,
    #: ``index`` in the pipeline and the ``reason`` (the verification's failure line).
    reverted: list[dict[str, Any]] = dataclasses.field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        """JSON-able dict."""
        return dataclasses.asdict(self)


# ------------------------------------------------------------------------------------------ verifier
class Verifier:
    """Runs the original once on fixed inputs, then compares candidate models to it.

    Args:
        original: The original model as bytes or a path.
        feeds: Input feed dicts (random or user data).
        tolerance: Limits for lossless pipelines.
        budget: Limits for pipelines with lossy passes.
        hint: Appended to the error when the original does not run (what inputs to give instead).

    Raises:
        InputError: onnxruntime cannot load or run the original model.
    """

    def __init__(
        self,
        original: bytes | str,
        feeds: Sequence[Mapping[str, np.ndarray]],
        *,
        tolerance: verify.Tolerance | None = None,
        budget: verify.Budget | None = None,
        hint: str = "",
    ) -> None:
        self.original = original
        self.feeds = list(feeds)
        self.tolerance = tolerance or verify.Tolerance()
        self.budget = budget or verify.Budget()
        try:  # errors are reported below, in one line: keep onnxruntime's own log quiet
            # A file (external data or large) is run without prepacking: weights held once, mapped.
            session = verify.make_session(original, log_severity=4, prepack=isinstance(original, bytes))
            self.output_names = [o.name for o in session.get_outputs()]
            self.expected = verify.run_model(session, self.feeds)
        except Exception as error:  # onnxruntime's own error types vary by build
            line = f"{verify.ort_failure(error)}; {hint}" if hint else _first_line(error)
            raise InputError(f"onnxruntime cannot run the input model: {line}") from None

    def outputs(self, candidate: bytes | str | ir.Model) -> list[list[np.ndarray]] | str:
        """The candidate's outputs per feed, or an error string when it does not load or run.

        An ``ir.Model`` with external data or over 256 MB is run from a temporary file (removed afterwards);
        its session is released before this returns, so it never coexists with another one.
        """
        with verify.session_source(candidate) as source:
            try:
                session = verify.make_session(source, prepack=isinstance(source, bytes))
            except Exception as error:  # noqa: BLE001 - reported, never hidden
                return f"the model does not load in onnxruntime: {_first_line(error)}"
            try:
                return verify.run_model(session, self.feeds)
            except Exception as error:  # noqa: BLE001
                return f"the model fails in onnxruntime: {_first_line(error)}"
            finally:
                del session

    def compare(
        self, candidate_outputs: list[list[np.ndarray]] | str, *, exact: bool, reference=None
    ) -> verify.Comparison:
        """Compare outputs to the original's (or ``reference``); exact → tolerance, else budget."""
        if isinstance(candidate_outputs, str):
            return verify.Comparison([], False, [candidate_outputs])
        return verify.compare_outputs(
            self.output_names,
            self.expected if reference is None else reference,
            candidate_outputs,
            tolerance=self.tolerance if exact else None,
            budget=None if exact else self.budget,
        )


# ------------------------------------------------------------------------------------------ pipeline
@dataclasses.dataclass
class _RevertPoint:
    """The model from before the last ``revert_on_failure`` pass that changed it, to keep if the result is refused."""

    index: int
    before: bytes


class Pipeline:
    """Runs passes in order with structure checks after each, optional per-pass numerics, and timing.

    Args:
        passes: ``[(pass, came_from_preset)]`` as :func:`build_passes` returns (or bare passes).
        verifier: Compares to the original after each pass when ``verify_each`` is set.
        verify_each: Check numerics after every pass and name the pass (and first tensor) that diverges.
        dump_dir: On a failing pass, write the model from just before it plus a reproducer command here.
        input_shapes: Concrete input shapes for MAC counts.
        progress: Called as ``progress(index, total, pass_name)`` before each pass.
        pass_progress: Called as ``pass_progress(pass_name, done, total, text)`` from inside passes that report
            progress during their run (``reports_progress``: ``distill`` after each epoch, with its loss).

    Passes that declare ``revert_on_failure`` (leaving the model as it came is one of their own outcomes) are
    undone rather than failed when verification refuses their result: with ``verify_each`` right after the pass,
    else through :meth:`revert` after the final check. With a ``verifier``, the model from before such a pass is
    kept as bytes until the run ends (only for those passes: one serialized copy of the model).
    """

    def __init__(
        self,
        passes: Sequence[SftPass | tuple[SftPass, bool]],
        *,
        verifier: Verifier | None = None,
        verify_each: bool = False,
        dump_dir: str | os.PathLike | None = None,
        input_shapes: Mapping[str, tuple[int, ...]] | None = None,
        progress: Callable[[int, int, str], None] | None = None,
        pass_progress: Callable[[str, float, float, str], None] | None = None,
    ) -> None:
        self.passes = [(p, False) if isinstance(p, SftPass) else p for p in passes]
        self.verifier = verifier
        self.verify_each = verify_each and verifier is not None
        self.dump_dir = pathlib.Path(dump_dir) if dump_dir else None
        self.input_shapes = dict(input_shapes or {})
        self.progress = progress
        self.pass_progress = pass_progress
        self.report = PipelineReport(spec=",".join(p.spec() for p, _ in self.passes))
        self._scope = contextlib.ExitStack()  # temporary files a run holds (closed when it ends)
        self._revert_point: _RevertPoint | None = None

    def run(self, model: ir.Model) -> PipelineReport:
        """Run every pass on ``model`` in place and return the report.

        Raises:
            PassError: A pass raised or broke the model's structure (exit 1).
            InputError: An explicitly requested pass cannot handle this model (exit 2).
            VerificationError: With ``verify_each``, a pass changed the outputs beyond its limits (exit 3).
        """
        start = time.perf_counter()
        structure = _StructureChecker(model)
        self.report.warnings.extend(structure.notes)
        stats = ModelStats.of(model, self.input_shapes)
        self.report.original = stats
        previous_outputs = self.verifier.expected if self.verify_each and self.verifier else None
        all_exact = True
        names = [p.name for p, _ in self.passes]
        original = self._original(model)
        for index, (pass_, from_preset) in enumerate(self.passes):
            if self.progress:
                self.progress(index, len(self.passes), pass_.name)
            row = PassRow(pass_.name, pass_.spec(), pass_.numerics.value, before=stats)
            self.report.rows.append(row)
            # Only a run that verifies can refuse a result (no verifier: no snapshot to pay for, as in the search).
            revertible = (
                pass_.revert_on_failure and pass_.numerics is Numerics.APPROXIMATE and self.verifier is not None
            )
            before_bytes = self._snapshot(model, revertible=revertible)
            clock = time.perf_counter()
            if pass_.uses_original:
                pass_.original = original  # type: ignore[attr-defined]
            if pass_.uses_verification:
                pass_.verification = self._verification_data()  # type: ignore[attr-defined]
            inner_progress = pass_.reports_progress and self.pass_progress is not None
            if inner_progress:
                pass_.progress = functools.partial(self.pass_progress, pass_.name)  # type: ignore[attr-defined]
            try:
                result = pass_(model)
            except ir.passes.PreconditionError as error:
                row.seconds = time.perf_counter() - clock
                reason = _first_line(error.__cause__ or error)
                if from_preset:
                    row.status, row.message, row.after = "skipped", reason, stats
                    logger.info("%s skipped: %s", pass_.name, reason)
                    continue
                row.status, row.message = "failed", reason
                raise InputError(f"{pass_.name} cannot be applied to this model: {reason}") from None
            except (InputError, VerificationError):
                row.status = "failed"
                raise
            except Exception as error:
                row.status, row.message = "failed", _first_line(error)
                self._dump(before_bytes, index, pass_)
                raise PassError(pass_.name, after=names[:index], reason=_first_line(error)) from error
            finally:
                if pass_.uses_original:
                    pass_.original = None  # type: ignore[attr-defined]
                if pass_.uses_verification:
                    pass_.verification = None  # type: ignore[attr-defined]
                if inner_progress:
                    pass_.progress = None  # type: ignore[attr-defined]
            report = result if isinstance(result, PassReport) else PassReport(model, result.modified)
            io.release_mapped(model)  # weights the pass read are unmapped: only one pass's reads count at a time
            problem = None
            if report.modified:  # an unmodified model needs no new check (and big ones are slow to serialize)
                _cleanup(model)
                problem = structure.check(model)
            row.seconds = time.perf_counter() - clock
            row.changes, row.skipped = dict(report.changes), dict(report.skipped)
            row.details = _jsonable(report.details)
            if problem:
                row.status, row.message = "failed", problem
                self._dump(before_bytes, index, pass_)
                raise PassError(pass_.name, after=names[:index], reason=problem)
            stats = ModelStats.of(model, self.input_shapes) if report.modified else stats
            row.after = stats
            exact = pass_.numerics is Numerics.EXACT
            all_exact_before, all_exact = all_exact, all_exact and exact
            can_revert = revertible and report.modified and before_bytes is not None
            if self.verify_each and self.verifier is not None and report.modified:
                outputs, failure = self._verify_pass(
                    model, row, index, pass_, exact, all_exact, previous_outputs, before_bytes, can_revert
                )
                if outputs is None:  # refused, and the pass opted in: its input model is kept
                    assert before_bytes is not None
                    why = f"the per-pass verification refused its result: {failure}"
                    self._restore(model, before_bytes, index, why)
                    stats, all_exact = row.after, all_exact_before
                    continue
                previous_outputs = outputs
            if can_revert:
                assert before_bytes is not None
                self._revert_point = _RevertPoint(index, before_bytes)
        self._scope.close()
        self.report.final = stats
        self.report.seconds = time.perf_counter() - start
        return self.report

    def revert(self, model: ir.Model, reason: str) -> bool:
        """Undo the last ``revert_on_failure`` pass that changed ``model`` after the final verification refused it.

        ``model`` becomes the model from before that pass again. The passes after it are run again on it only when
        one of them changed something (their work on the refused model is lost with it); otherwise nothing runs
        again. The pass's row gets status ``reverted`` with ``reason``, and ``report.reverted`` and the warnings
        say so.

        Args:
            model: The model :meth:`run` returned (changed in place).
            reason: Why the result was refused (the verification's first failure line).

        Returns:
            Whether a pass was undone (``False``: no pass of this run can be; ``model`` is untouched).
        """
        point, self._revert_point = self._revert_point, None
        if point is None:
            return False
        self._restore(model, point.before, point.index, f"the final verification refused its result: {reason}")
        later = self.report.rows[point.index + 1 :]
        if any(r.status == "ok" and any(v > 0 for v in r.changes.values()) for r in later):
            again = Pipeline(self.passes[point.index + 1 :], verifier=self.verifier, dump_dir=self.dump_dir,
                             input_shapes=self.input_shapes, progress=self.progress,
                             pass_progress=self.pass_progress)
            again.run(model)
            self.report.rows[point.index + 1 :] = again.report.rows
            self.report.final = again.report.final
        else:
            self.report.final = self.report.rows[point.index].after
        return True

    def _restore(self, model: ir.Model, before: bytes, index: int, reason: str) -> None:
        """Make ``model`` the one from before pass ``index`` again and record why in its row and the report."""
        restore_model(model, io.load(before, validate=False))
        row = self.report.rows[index]
        row.status = "reverted"
        row.message = f"{reason}; the model from before {row.name} was kept"
        row.after = row.before
        self.report.reverted.append({"pass": row.name, "index": index, "reason": reason})
        self.report.warnings.append(f"{row.name} undone: {row.message}")
        logger.warning("%s undone: %s", row.name, row.message)

    def _original(self, model: ir.Model) -> bytes | str | None:
        """The model as the pipeline got it, for passes that need it (``uses_original``); else ``None``."""
        if not any(p.uses_original for p, _ in self.passes):
            return None
        if self.verifier is not None:
            return self.verifier.original
        if not io.needs_file(model):
            return io.to_bytes(model)
        # A copy of an external-data model in a temporary folder, removed when the run ends.
        return self._scope.enter_context(verify.session_source(model))

    def _verification_data(self) -> VerificationData | None:
        """The final check's feeds, the original's outputs on them and the budget (``uses_verification``)."""
        if self.verifier is None:
            return None
        return VerificationData(self.verifier.feeds, self.verifier.expected, self.verifier.output_names,
                                self.verifier.budget)

    def _verify_pass(self, model, row, index, pass_, exact, all_exact, previous_outputs, before_bytes, can_revert):
        """``(outputs, "")`` when the pass holds its limits; ``(None, failure)`` when not and ``can_revert``.

        Raises:
            VerificationError: The pass changed the outputs beyond its limits and cannot be undone.
        """
        assert self.verifier is not None
        outputs = self.verifier.outputs(model)
        versus_original = self.verifier.compare(outputs, exact=all_exact)
        if versus_original.outputs:
            row.error = versus_original.worst()
        # An exact pass must be lossless relative to what it was given, even after lossy passes drifted.
        check = (
            versus_original
            if all_exact
            else (
                self.verifier.compare(outputs, exact=True, reference=previous_outputs)
                if exact
                else versus_original
            )
        )
        if check.passed:
            return outputs, ""
        if can_revert:
            return None, check.failures[0]
        row.status, row.message = "failed", "; ".join(check.failures[:3])
        divergent = None
        if exact and before_bytes is not None and model_nbytes(model) <= PROTOBUF_LIMIT:
            divergent = verify.find_first_divergence(
                before_bytes, to_bytes(model), self.verifier.feeds[0], self.verifier.tolerance
            )
        dumped = self._dump(before_bytes, index, pass_)
        where = f"; first diverging tensor: '{divergent}'" if divergent else ""
        dump = f"; model before the pass saved to {dumped}" if dumped else ""
        raise VerificationError(
            f"pass '{pass_.name}' changed the outputs beyond its limits: {check.failures[0]}{where}{dump}",
            pass_name=pass_.name,
            first_divergent=divergent,
            metrics=check.to_json(),
        )

    def _snapshot(self, model: ir.Model, *, revertible: bool = False) -> bytes | None:
        # A large model's bytes would be a second (and third) copy of its weights: no snapshot, so no
        # first-divergence search or dump for those. A pass that may be undone needs its input model (one copy;
        # such passes serialize their input themselves anyway).
        if revertible and model_nbytes(model) <= PROTOBUF_LIMIT:
            return to_bytes(model)
        if not (self.verify_each or self.dump_dir) or model_nbytes(model) > io.LARGE_MODEL_BYTES:
            return None
        return to_bytes(model)

    def _dump(self, before: bytes | None, index: int, pass_: SftPass) -> pathlib.Path | None:
        if self.dump_dir is None or before is None:
            return None
        self.dump_dir.mkdir(parents=True, exist_ok=True)
        path = self.dump_dir / f"before_{index:02d}_{pass_.name}.onnx"
        path.write_bytes(before)
        (self.dump_dir / "reproduce.txt").write_text(
            f'sftonnx optimize {path.name} out.onnx --passes "{pass_.spec()}" --verify-each\n'
        )
        return path


def _cleanup(model: ir.Model) -> None:
    """After a pass changed the model: drop what nothing uses and restore topological order."""
    common_passes.RemoveUnusedNodesPass()(model)
    common_passes.RemoveUnusedOpsetsPass()(model)
    common_passes.TopologicalSortPass()(model)


class _StructureChecker:
    """onnx checker + strict shape inference, limited to the checks the original model itself passes."""

    def __init__(self, original: ir.Model) -> None:
        self.notes: list[str] = []
        self.run_checker = self.run_inference = True
        first = self._problems(original)
        if first.get("checker"):
            self.run_checker = False
            self.notes.append(
                f"the input model fails the onnx checker, so passes are not held to it: {first['checker']}"
            )
        if first.get("inference"):
            self.run_inference = False
            self.notes.append(
                f"strict shape inference fails on the input model, so passes are not held to it: {first['inference']}"
            )

    def check(self, model: ir.Model) -> str | None:
        problems = self._problems(model)
        if problems.get("checker"):
            return f"onnx checker: {problems['checker']}"
        if problems.get("inference"):
            return f"strict shape inference: {problems['inference']}"
        return None

    def _problems(self, model: ir.Model) -> dict[str, str]:
        problems: dict[str, str] = {}
        if not (self.run_checker or self.run_inference):
            return problems
        # Models with external data or over 256 MB are checked without their weights (large initializers
        # become graph inputs of the same type and shape): nothing is copied or written, and the checks
        # cover the structure, which is what passes change.
        if io.needs_file(model):
            proto, _ = io.structure_proto(model, max_inline_bytes=_INLINE_CHECK_BYTES)
        else:
            proto = ir.to_proto(model)
        if self.run_checker:
            try:
                onnx.checker.check_model(proto)
            except Exception as error:  # ValidationError and C++ errors
                problems["checker"] = _first_line(error)
        if self.run_inference:
            try:
                onnx.shape_inference.infer_shapes(proto, check_type=True, strict_mode=True, data_prop=True)
            except Exception as error:  # InferenceError and C++ errors
                problems["inference"] = _first_line(error)
        return problems


#: Initializers up to this size stay inline in the structure checks of large models (shape constants).
_INLINE_CHECK_BYTES = 64 * 1024


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    return str(value)


# ------------------------------------------------------------------------------------ optimize core
@dataclasses.dataclass
class OptimizeResult:
    """What :func:`optimize` returns.

    Attributes:
        model: The optimized model (``onnx_ir.Model``; ``ir.to_proto(model)`` gives a ``ModelProto``).
        report: Per-pass statistics and the final verification.
        verification: The final comparison with the original (``None`` with ``verify=False``).
        output: The path written, if any.
    """

    model: ir.Model
    report: PipelineReport
    verification: verify.Comparison | None
    output: pathlib.Path | None


def optimize_model(
    model: io.ModelSource,
    output: str | os.PathLike | None,
    built: Sequence[tuple[SftPass, bool]],
    *,
    data: str | os.PathLike | Mapping[str, np.ndarray] | None = None,
    verify_result: bool = True,
    input_shapes: Iterable[str] | Mapping[str, Sequence[int]] | None = None,
    tolerance: verify.Tolerance | None = None,
    budget: verify.Budget | None = None,
    verify_each: bool = False,
    dump_dir: str | os.PathLike | None = None,
    overwrite: bool = False,
    external_data: bool | None = None,
    progress: Callable[[int, int, str], None] | None = None,
    allow_random_verification: bool = False,
    data_notes: Sequence[str] = (),
    pass_progress: Callable[[str, float, float, str], None] | None = None,
) -> OptimizeResult:
    """Load, run the built passes, verify against the original, and save atomically (the optimize core).

    Arguments are those of :func:`sftonnx.api.optimize`, with the passes already built
    (``[(pass, came_from_preset)]``, see :func:`sftonnx.spec.build_passes`), ``verify_result`` for
    ``verify``, ``data`` as :func:`sftonnx.verify.prepare_feeds` takes it (held-out calibration samples
    included) and ``data_notes`` saying where that data came from.

    Raises:
        InputError: Bad model, data, shapes or output path; lossy passes to verify without real data and
            without ``allow_random_verification`` (exit 2).
        VerificationError: The result differs from the original beyond its limits (exit 3).
        PassError: A pass failed or broke the model (exit 1).
    """
    if not built:
        raise InputError("the pass list is empty")
    lossy = [p.name for p, _ in built if p.numerics is Numerics.APPROXIMATE]
    random_lossy = bool(lossy) and data is None and (verify_result or verify_each)
    if random_lossy and not allow_random_verification:
        raise lossy_without_data(lossy)
    output_path = pathlib.Path(output) if output is not None else None
    if output_path is not None:
        check_output(model, output_path, overwrite)
    loaded = io.load(model)
    input_size = file_size(model)
    if input_size is not None:
        input_size += io.external_data_size(loaded)
    if external_data is None and io.has_external_data(loaded):
        external_data = True  # weights that came in a data file go out in one (next to the output)
    checking = verify_result or verify_each
    verifier = None
    notes: list[str] = []
    if checking:
        feeds, shapes, notes = verify.prepare_feeds(loaded, data=data, input_shapes=input_shapes)
        # A file with external data is run from its own path (onnxruntime maps the weights), never copied
        # into bytes; the original's session is released before any candidate runs.
        original_source = (
            str(model) if isinstance(model, (str, os.PathLike)) and io.needs_file(loaded) else io.to_bytes(loaded)
        )
        hint = verify.unfit_hint(verify.input_specs(loaded), shapes) if data is None else ""
        verifier = Verifier(original_source, feeds, tolerance=tolerance, budget=budget, hint=hint)

    # Statistics (MACs) are per single sample unless --input-shape says otherwise, whatever the data batch,
    # on the dimensions synthesis resolves from the graph (those verification ran on, when it synthesized).
    if checking and data is None:
        stat_shapes = shapes
    else:
        stat_shapes, _ = verify.model_shapes(loaded, input_shapes)
    pipeline = Pipeline(
        built,
        verifier=verifier,
        verify_each=verify_each,
        dump_dir=dump_dir,
        input_shapes=stat_shapes,
        progress=progress,
        pass_progress=pass_progress,
    )
    report = pipeline.report
    report.input_notes.extend([*data_notes, *notes])
    if random_lossy:
        warning = (
            "lossy passes verified on random inputs (--allow-random-verification): the budget says little "
            "about real data"
        )
        report.random_verification = True
        report.input_notes.append(warning)
        logger.warning("%s", warning)
    report.input_size = input_size
    io.release_mapped(loaded)
    pipeline.run(loaded)

    comparison = None
    if verify_result and verifier is not None:
        exact = all(p.numerics is Numerics.EXACT for p, _ in built)
        comparison = verifier.compare(verifier.outputs(loaded), exact=exact)
        undone = ""
        if not comparison.passed and pipeline.revert(loaded, comparison.failures[0]):
            # A pass whose own alternative is the model as it came (revert_on_failure) is undone, not failed.
            undone = f" (also with {report.reverted[-1]['pass']} undone)"
            comparison = verifier.compare(verifier.outputs(loaded), exact=exact)
        report.verification = comparison.to_json() | {"mode": "tolerance" if exact else "budget"}
        if not comparison.passed:
            raise VerificationError(
                "optimized model differs from the original: "
                + "; ".join(comparison.failures[:3])
                + undone
                + " (nothing written; use --verify-each to find the pass)",
                metrics=comparison.to_json(),
            )
    if output_path is not None:
        io.save(loaded, output_path, external_data=external_data, overwrite=True)
        report.output_size = output_path.stat().st_size + _data_size(output_path)
    return OptimizeResult(loaded, report, comparison, output_path)


def lossy_without_data(lossy: Sequence[str]) -> InputError:
    """The exit-2 error for lossy passes that would be verified on random inputs (``lossy``: their names)."""
    return InputError(
        "lossy passes are verified on real data: give --data or --calibration-data "
        f"(lossy here: {', '.join(dict.fromkeys(lossy))}; --allow-random-verification accepts random "
        "inputs, recorded in the report)"
    )


def check_output(source: io.ModelSource, output: pathlib.Path, overwrite: bool) -> None:
    """Refuse an output path that would overwrite the input or a file without ``overwrite``, or cannot be written.

    Raises:
        InputError: Naming the path and what to do.
    """
    if isinstance(source, (str, os.PathLike)):
        src = pathlib.Path(source)
        if src.exists() and output.exists() and src.resolve() == output.resolve() and not overwrite:
            raise InputError(
                f"output path is the input path ({output}); pass --overwrite to replace the input"
            )
    if (
        output.exists()
        and not overwrite
        and not (
            isinstance(source, (str, os.PathLike)) and pathlib.Path(source).resolve() == output.resolve()
        )
    ):
        raise InputError(f"output file exists: {output} (pass --overwrite to replace it)")
    if output.is_dir():
        raise InputError(f"output path is a directory: {output}")
    if not output.parent.exists():
        raise InputError(f"output folder does not exist: {output.parent}")


def file_size(source: io.ModelSource) -> int | None:
    """Size of a model given as a file path or bytes (``None`` for in-memory models)."""
    if isinstance(source, (str, os.PathLike)) and pathlib.Path(source).is_file():
        return pathlib.Path(source).stat().st_size
    if isinstance(source, (bytes, bytearray)):
        return len(source)
    return None


def _data_size(path: pathlib.Path) -> int:
    data = path.with_name(path.name + ".data")
    return data.stat().st_size if data.exists() else 0
