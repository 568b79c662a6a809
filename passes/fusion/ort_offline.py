"""onnxruntime's own graph optimizations, applied offline and saved in the model.

onnxruntime optimizes every model when it creates a session. Saving that optimized graph makes load time
shorter and lets a session run with optimizations disabled (or a lower level); at ``extended`` it contains
com.microsoft contrib ops (fused Gelu, LayerNormalization variants, Attention, FusedConv, ...), so the result
runs only on onnxruntime. ``all`` adds layout transformations tied to the CPU this ran on (NCHWc): onnxruntime
itself warns that such a model is not portable, so it is refused unless ``allow_layout=true``.

onnxruntime's graph is not always valid ONNX: its LayerNorm fusion writes ``LayerNormalization`` in the
default domain whatever the model's opset (the op exists from opset 17; onnxruntime registers its own
version for older opsets), so a Paddle recognizer at opset 12 came back with a node the onnx checker rejects.
The result is therefore held to what the input passes (onnx checker, strict shape inference) and must load in
onnxruntime; when it fails, the pass runs onnxruntime once more with the fusions that emit such ops turned
off, and when that fails too it leaves the model as it was and says why.
"""

from __future__ import annotations

import logging
import os
import tempfile
from typing import Literal

import onnx
import onnx_ir as ir

from sftonnx import io, verify
from sftonnx.errors import PassConfigError, first_line
from sftonnx.ir_utils import adopt_model
from sftonnx.pass_infra import PassReport, SftPass

__all__ = ["OrtOfflinePass"]

logger = logging.getLogger(__name__)


class OrtOfflinePass(SftPass):
    """Replace the graph by the one onnxruntime (CPU EP) builds at the given optimization level.

    Statistics: changes ``nodes_removed``, ``nodes_added`` (net per op type); skipped
    ``nonstandard_fusions_disabled`` (the first result failed the checks and the fusions that write
    onnxruntime-only ops into the default domain were turned off), ``invalid_ort_output`` (no valid result:
    the model is left unchanged), ``nothing_fused`` (the same ops: left unchanged); details ``level``,
    ``disabled_optimizers``, ``invalid_ort_output`` (why).

    Args:
        level: ``basic`` (portable rewrites only), ``extended`` (contrib-op fusions; onnxruntime-only) or
            ``all`` (adds CPU-specific layouts; needs ``allow_layout``).
        allow_layout: Accept ``level=all``.
    """

    name = "ort-offline"

    def __init__(self, *, level: Literal["basic", "extended", "all"] = "extended", allow_layout: bool = False) -> None:
        if level == "all" and not allow_layout:
            raise PassConfigError(
                "ort-offline: level=all bakes CPU-specific layouts into the model; pass allow_layout=true to accept"
            )
        self.level = level
        self.allow_layout = allow_layout

    def requires(self, model: ir.Model) -> None:
        """Models past protobuf's limit would need external-data plumbing through onnxruntime."""
        if io.model_nbytes(model) > io.PROTOBUF_LIMIT:
            raise ir.passes.PreconditionError("ort-offline handles models under 2 GiB only")

    def rewrite(self, model: ir.Model, report: PassReport) -> None:
        """Let onnxruntime optimize a copy, check the saved graph and adopt it."""
        from sftonnx.passes.cleanup import _all_nodes, _count_node_delta

        before = _all_nodes(model)
        source = _session_input(model)
        held = _checks_passed(source)
        problem = None
        for disabled in ((), _NONSTANDARD_FUSIONS):
            optimized = self._optimize(source, disabled)
            problem = _check(optimized, held)
            if problem is None:
                break
            logger.debug("ort-offline: onnxruntime's graph (disabled %s) fails: %s", list(disabled), problem)
        report.details["level"] = self.level
        if problem is not None:
            logger.warning("ort-offline: onnxruntime's optimized graph is not valid, model left unchanged: %s", problem)
            report.skipped["invalid_ort_output"] += 1
            report.details["invalid_ort_output"] = problem
            return
        if disabled:
            report.skipped["nonstandard_fusions_disabled"] += 1
            report.details["disabled_optimizers"] = list(disabled)
        if not _count_node_delta(before, _all_nodes(optimized), report):
            # Same ops: onnxruntime only renamed or reordered; keep the model as it was (honest no-op).
            report.skipped["nothing_fused"] += 1
            return
        overridable = sum(1 for value in model.graph.inputs if value.name in model.graph.initializers)
        if overridable:
            report.details["initializer_inputs_removed"] = overridable
        adopt_model(model, optimized)
        model.ir_version = optimized.ir_version
        model.opset_imports.update(optimized.opset_imports)

    def _optimize(self, source: bytes, disabled: tuple[str, ...]) -> ir.Model:
        with tempfile.TemporaryDirectory(prefix="sftonnx-ort-") as folder:
            path = os.path.join(folder, "optimized.onnx")
            verify.make_session(
                source, optimization=self.level, optimized_model_path=path, disabled_optimizers=disabled
            )
            optimized = io.load(path, validate=False)
            io._load_external_tensors(optimized)
        return optimized


#: onnxruntime fusions that write onnxruntime-only operators into the default ONNX domain
#: (``LayerNormalization`` below opset 17, ``SimplifiedLayerNormalization`` at any opset); recent onnxruntime
#: releases name the fusion per level (``LayerNormFusionL1``/``L2``), older ones ``LayerNormFusion``.
_NONSTANDARD_FUSIONS = ("LayerNormFusion", "LayerNormFusionL1", "LayerNormFusionL2", "SimplifiedLayerNormFusion")


def _session_input(model: ir.Model) -> bytes:
    """The model as onnxruntime should see it, without changing ``model`` (external data is read in, though).

    IR < 4 models list initializers as graph inputs too: onnxruntime then treats them as overridable inputs
    and writes a graph that still expects them. They become plain constants first (as onnxsim does), and IR 3,
    which requires every initializer to be a graph input, becomes IR 4.
    """
    proto = onnx.ModelProto()
    proto.ParseFromString(io.to_bytes(model))  # self-contained: external data read in
    initializers = {tensor.name for tensor in proto.graph.initializer}
    inputs = [value for value in proto.graph.input if value.name not in initializers]
    if len(inputs) != len(proto.graph.input):
        del proto.graph.input[:]
        proto.graph.input.extend(inputs)
    proto.ir_version = max(proto.ir_version, 4)
    return proto.SerializeToString()



def _problems(proto: onnx.ModelProto, checks: frozenset[str]) -> dict[str, str]:
    """The first line of each failing check among ``checker`` and ``inference`` (strict shape inference)."""
    problems: dict[str, str] = {}
    if "checker" in checks:
        try:
            onnx.checker.check_model(proto)
        except Exception as error:  # ValidationError and C++ errors
            problems["checker"] = first_line(error)
    if "inference" in checks:
        try:
            onnx.shape_inference.infer_shapes(proto, check_type=True, strict_mode=True, data_prop=True)
        except Exception as error:  # InferenceError and C++ errors
            problems["inference"] = first_line(error)
    return problems


def _checks_passed(source: bytes) -> frozenset[str]:
    """The structural checks the input itself passes: the result is held to those only."""
    proto = onnx.ModelProto()
    proto.ParseFromString(source)
    failed = _problems(proto, frozenset({"checker", "inference"}))
    return frozenset({"checker", "inference"} - set(failed))


def _check(optimized: ir.Model, held: frozenset[str]) -> str | None:
    """Why ``optimized`` is not acceptable (onnx checker, strict shape inference, onnxruntime load), or None."""
    proto = ir.to_proto(optimized)
    problems = _problems(proto, held)
    if problems.get("checker"):
        return f"onnx checker: {problems['checker']}"
    if problems.get("inference"):
        return f"strict shape inference: {problems['inference']}"
    try:
        verify.make_session(proto.SerializeToString(), optimization="disable")
    except Exception as error:  # onnxruntime raises its own exception types
        return f"onnxruntime cannot load it: {first_line(error)}"
    return None
