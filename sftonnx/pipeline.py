"""Pass specs, the Pipeline that runs passes with per-pass checks, and the PipelineReport.

Spec syntax (``--passes``): comma-separated pass names, each with optional options in braces whose keys
are the pass constructor's keywords and whose values are parsed by its type hints::

    simplify,fold-bn,prune{rate=0.3},quantize{method=entropy, per_channel=true}

A preset name may stand in a spec and expands to its passes (``lossless,prune{rate=0.3}``).
"""

from __future__ import annotations

import dataclasses
import difflib
import logging
import os
import pathlib
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import onnx
import onnx_ir as ir
import onnx_ir.passes.common as common_passes

from sftonnx import verify
from sftonnx.errors import InputError, PassConfigError, PassError, VerificationError
from sftonnx.io import PROTOBUF_LIMIT, model_nbytes, to_bytes
from sftonnx.pass_infra import Numerics, PassReport, SftPass, coerce_option, pass_options

__all__ = [
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


# ------------------------------------------------------------------------------------------------ spec
def parse_spec(spec: str) -> list[tuple[str, dict[str, str]]]:
    """Split a spec into ``[(name, {option: raw value})]``.

    Raises:
        PassConfigError: Unbalanced braces, an empty name, or an option without ``=``.
    """
    items: list[tuple[str, dict[str, str]]] = []
    position = 0
    text = spec.strip()
    if not text:
        raise PassConfigError("empty pass spec")
    while position < len(text):
        end = position
        while end < len(text) and text[end] not in ",{}":
            end += 1
        name = text[position:end].strip()
        if not name:
            raise PassConfigError(f"pass spec '{spec}': empty pass name at character {position + 1}")
        options: dict[str, str] = {}
        position = end
        if position < len(text) and text[position] == "{":
            close = text.find("}", position)
            if close < 0:
                raise PassConfigError(f"pass spec '{spec}': '{{' after '{name}' is never closed")
            body = text[position + 1 : close]
            if "{" in body:
                raise PassConfigError(f"pass spec '{spec}': nested '{{' in the options of '{name}'")
            for part in [p for p in body.split(",") if p.strip()]:
                key, sep, value = part.partition("=")
                if not sep or not key.strip():
                    raise PassConfigError(
                        f"pass spec '{spec}': option '{part.strip()}' of '{name}' needs key=value"
                    )
                options[key.strip()] = value.strip()
            position = close + 1
        elif position < len(text) and text[position] == "}":
            raise PassConfigError(f"pass spec '{spec}': unexpected '}}' after '{name}'")
        items.append((name, options))
        while position < len(text) and text[position] in " \t":
            position += 1
        if position < len(text):
            if text[position] != ",":
                raise PassConfigError(f"pass spec '{spec}': expected ',' after '{name}'")
            position += 1
    return items


def resolve_spec(
    spec: str, registry: Mapping[str, type[SftPass]], presets: Mapping[str, str], *, _depth: int = 0
) -> list[tuple[str, dict[str, str], bool]]:
    """Parse ``spec`` and expand preset names: ``[(pass name, raw options, came_from_preset)]``.

    Raises:
        PassConfigError: An unknown pass or preset name (with the closest known names).
    """
    if _depth > 4:
        raise PassConfigError("presets nest too deeply")
    resolved: list[tuple[str, dict[str, str], bool]] = []
    for name, options in parse_spec(spec):
        if name in registry:
            resolved.append((name, options, _depth > 0))
        elif name in presets:
            if options:
                raise PassConfigError(f"preset '{name}' takes no options; list its passes to configure them")
            resolved.extend(
                (n, o, True) for n, o, _ in resolve_spec(presets[name], registry, presets, _depth=_depth + 1)
            )
        else:
            close = difflib.get_close_matches(name, [*registry, *presets], n=3)
            hint = f" (did you mean {', '.join(close)}?)" if close else " (see 'sftonnx passes')"
            raise PassConfigError(f"unknown pass '{name}'{hint}")
    return resolved


def build_passes(
    spec: str,
    registry: Mapping[str, type[SftPass]],
    presets: Mapping[str, str],
    *,
    extra: Mapping[str, Any] | None = None,
) -> list[tuple[SftPass, bool]]:
    """Instantiate the passes of ``spec``: ``[(pass, came_from_preset)]``.

    Args:
        spec: The pass spec.
        registry: ``{name: pass class}``.
        presets: ``{preset name: spec}``.
        extra: Keyword values handed to every pass whose constructor accepts them and that the spec does
            not set (e.g. ``calibration_data``).

    Raises:
        PassConfigError: Unknown pass or option, or a value that does not parse or validate.
    """
    passes: list[tuple[SftPass, bool]] = []
    for name, raw_options, from_preset in resolve_spec(spec, registry, presets):
        cls = registry[name]
        declared = pass_options(cls)
        kwargs: dict[str, Any] = {}
        for key, raw in raw_options.items():
            if key not in declared:
                known = ", ".join(declared) or "none"
                raise PassConfigError(f"{name}: unknown option '{key}' (options: {known})")
            kwargs[key] = coerce_option(name, declared[key], raw)
        for key, value in (extra or {}).items():
            if key in declared and key not in kwargs and value is not None:
                kwargs[key] = value
        try:
            passes.append((cls(**kwargs), from_preset))
        except PassConfigError:
            raise
        except (TypeError, ValueError) as error:
            raise PassConfigError(f"{name}: {error}") from None
    return passes


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
    ) -> None:
        self.original = original
        self.feeds = list(feeds)
        self.tolerance = tolerance or verify.Tolerance()
        self.budget = budget or verify.Budget()
        try:
            session = verify.make_session(original)
            self.output_names = [o.name for o in session.get_outputs()]
            self.expected = verify.run_model(session, self.feeds)
        except Exception as error:  # onnxruntime's own error types vary by build
            raise InputError(f"onnxruntime cannot run the input model: {_first_line(error)}") from None

    def outputs(self, candidate: bytes | str) -> list[list[np.ndarray]] | str:
        """The candidate's outputs per feed, or an error string when it does not load or run."""
        try:
            session = verify.make_session(candidate)
        except Exception as error:  # noqa: BLE001 - reported, never hidden
            return f"the model does not load in onnxruntime: {_first_line(error)}"
        try:
            return verify.run_model(session, self.feeds)
        except Exception as error:  # noqa: BLE001
            return f"the model fails in onnxruntime: {_first_line(error)}"

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


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return (text.splitlines()[0] if text else type(error).__name__)[:400]


# ------------------------------------------------------------------------------------------ pipeline
class Pipeline:
    """Runs passes in order with structure checks after each, optional per-pass numerics, and timing.

    Args:
        passes: ``[(pass, came_from_preset)]`` as :func:`build_passes` returns (or bare passes).
        verifier: Compares to the original after each pass when ``verify_each`` is set.
        verify_each: Check numerics after every pass and name the pass (and first tensor) that diverges.
        dump_dir: On a failing pass, write the model from just before it plus a reproducer command here.
        input_shapes: Concrete input shapes for MAC counts.
        progress: Called as ``progress(index, total, pass_name)`` before each pass.
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
    ) -> None:
        self.passes = [(p, False) if isinstance(p, SftPass) else p for p in passes]
        self.verifier = verifier
        self.verify_each = verify_each and verifier is not None
        self.dump_dir = pathlib.Path(dump_dir) if dump_dir else None
        self.input_shapes = dict(input_shapes or {})
        self.progress = progress
        self.report = PipelineReport(spec=",".join(p.spec() for p, _ in self.passes))

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
        for index, (pass_, from_preset) in enumerate(self.passes):
            if self.progress:
                self.progress(index, len(self.passes), pass_.name)
            row = PassRow(pass_.name, pass_.spec(), pass_.numerics.value, before=stats)
            self.report.rows.append(row)
            before_bytes = self._snapshot(model)
            clock = time.perf_counter()
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
            report = result if isinstance(result, PassReport) else PassReport(model, result.modified)
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
            all_exact = all_exact and exact
            if self.verify_each and self.verifier is not None and report.modified:
                previous_outputs = self._verify_pass(
                    model, row, index, pass_, exact, all_exact, previous_outputs, before_bytes
                )
        self.report.final = stats
        self.report.seconds = time.perf_counter() - start
        return self.report

    def _verify_pass(self, model, row, index, pass_, exact, all_exact, previous_outputs, before_bytes):
        assert self.verifier is not None
        current = verify.session_source(model)
        outputs = self.verifier.outputs(current)
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
            return outputs
        row.status, row.message = "failed", "; ".join(check.failures[:3])
        divergent = None
        if exact and before_bytes is not None and isinstance(current, bytes):
            divergent = verify.find_first_divergence(
                before_bytes, current, self.verifier.feeds[0], self.verifier.tolerance
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

    def _snapshot(self, model: ir.Model) -> bytes | None:
        if not (self.verify_each or self.dump_dir) or model_nbytes(model) > PROTOBUF_LIMIT:
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
        large = model_nbytes(model) > PROTOBUF_LIMIT
        with tempfile.TemporaryDirectory(prefix="sftonnx-check-") as folder:
            if large:
                path = os.path.join(folder, "model.onnx")
                ir.save(model, path, external_data="model.onnx.data")
                proto = None
            else:
                proto = ir.to_proto(model)
            if self.run_checker:
                try:
                    onnx.checker.check_model(path if large else proto)
                except Exception as error:  # ValidationError and C++ errors
                    problems["checker"] = _first_line(error)
            if self.run_inference:
                try:
                    if large:
                        onnx.shape_inference.infer_shapes_path(
                            path,
                            os.path.join(folder, "inferred.onnx"),
                            check_type=True,
                            strict_mode=True,
                            data_prop=True,
                        )
                    else:
                        onnx.shape_inference.infer_shapes(
                            proto, check_type=True, strict_mode=True, data_prop=True
                        )
                except Exception as error:  # InferenceError and C++ errors
                    problems["inference"] = _first_line(error)
        return problems


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
