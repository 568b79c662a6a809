"""onnxruntime's own graph optimizations, applied offline and saved in the model.

onnxruntime optimizes every model when it creates a session. Saving that optimized graph makes load time
shorter and lets a session run with optimizations disabled (or a lower level); at ``extended`` it contains
com.microsoft contrib ops (fused Gelu, LayerNormalization variants, Attention, FusedConv, ...), so the result
runs only on onnxruntime. ``all`` adds layout transformations tied to the CPU this ran on (NCHWc): onnxruntime
itself warns that such a model is not portable, so it is refused unless ``allow_layout=true``.
"""

from __future__ import annotations

import logging
import os
import tempfile
from typing import Literal

import onnx_ir as ir
import onnx_ir.passes.common as common_passes

from sftonnx import io
from sftonnx.errors import PassConfigError
from sftonnx.ir_utils import adopt_model
from sftonnx.pass_infra import PassReport, SftPass

__all__ = ["OrtOfflinePass"]

logger = logging.getLogger(__name__)


class OrtOfflinePass(SftPass):
    """Replace the graph by the one onnxruntime (CPU EP) builds at the given optimization level.

    Statistics: changes ``nodes_removed``, ``nodes_added`` (net per op type); details ``level``.

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
        """Let onnxruntime optimize a copy and adopt the saved graph."""
        from sftonnx.passes.cleanup import _all_nodes, _count_node_delta
        from sftonnx.verify import make_session

        before = _all_nodes(model)
        # IR < 4 models list initializers as graph inputs too: onnxruntime then treats them as overridable
        # inputs and writes a graph that still expects them. Make them plain constants first (as onnxsim does).
        overridable = sum(1 for value in model.graph.inputs if value.name in model.graph.initializers)
        if overridable:
            common_passes.RemoveInitializersFromInputsPass()(model)
            report.details["initializer_inputs_removed"] = overridable
        if model.ir_version < 4:  # IR 3 requires every initializer to be a graph input
            model.ir_version = 4
        with tempfile.TemporaryDirectory(prefix="sftonnx-ort-") as folder:
            path = os.path.join(folder, "optimized.onnx")
            make_session(io.to_bytes(model), optimization=self.level, optimized_model_path=path)
            optimized = io.load(path, validate=False)
            io._load_external_tensors(optimized)
        adopt_model(model, optimized)
        model.opset_imports.update(optimized.opset_imports)
        _count_node_delta(before, _all_nodes(model), report)
        report.details["level"] = self.level
