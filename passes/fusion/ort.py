"""onnxruntime-target fusions: onnxscript's ``ort_fusions`` (Attention, SkipLayerNormalization, BiasGelu, ...).

These rewrite standard ONNX into onnxruntime contrib ops (domain ``com.microsoft``): ``Attention`` /
``MultiHeadAttention`` from the explicit MatMul/Softmax attention block, ``SkipLayerNormalization`` from
residual Add + LayerNormalization, ``BiasGelu``/``FastGelu`` from bias Add + Gelu, ``FusedMatMul`` from
MatMul with Transpose/scale, rotary embeddings, GroupQueryAttention, RMS norms. The result runs on
onnxruntime only.

We call onnxscript's own sequence (credit: ``onnxscript/rewriter/ort_fusions/_core.py``,
``optimize_for_ort``): Gemm back to MatMul + Add (so the bias fusions see it), ``fuse_xformers`` (which
pre-optimizes with onnxscript's constant folding and shape inference, then applies the fusions in the order
they depend on each other and returns a count per fusion), then the ORT pattern rule sets. We leave out the
steps of ``optimize_for_ort`` that change the model's interface (``RemoveInitializersFromInputsPass``) or
only move constants (``LiftConstantsToInitializersPass``).

Why (measured on ``tiny_bert``, ``benchmarks/fusion_bench.py``): onnxruntime's own session-time fusions
do not find this BERT's attention (its AttentionFusion wants the exact exporter layout), and neither does
``onnxruntime.transformers.optimizer``; onnxscript's patterns do, so the model gets faster than what
onnxruntime does alone (a). It is also the way to ship the fused graph to onnxruntime at any level (b).
"""

from __future__ import annotations

import logging

import onnx_ir as ir

from sftonnx import io
from sftonnx.ir_utils import adopt_model
from sftonnx.pass_infra import PassReport, SftPass

__all__ = ["FuseOrtPass"]

logger = logging.getLogger(__name__)


class FuseOrtPass(SftPass):
    """Apply onnxscript's onnxruntime fusions (transformer blocks into ``com.microsoft`` contrib ops).

    The fusions run on a copy of the model; the copy is adopted only when at least one fusion applied, so an
    unmatched model is returned untouched (onnxscript's pre-optimization would otherwise fold constants
    and inline functions while the report says "unmodified"). The rewriter visits the main graph,
    If/Loop/Scan bodies and model-local functions (which onnxscript's optimizer inlines first).

    Statistics: changes ``<fusion>_fused`` per onnxscript fusion count (``attention_fused``, ``mha2_fused``,
    ``mha_bias_fused``, ``sdpa_fused``, ``skip_layer_normalization_fused``, ``erf_gelu_fused``,
    ``bias_gelu_fused``, ``gelu_fused``, ``rotary_embedding_fused``, ``gqa_fused``, ...; intermediate steps
    such as ``sdpa`` count too), ``gemm_unfused`` (Gemm turned back into MatMul + Add for the bias fusions),
    ``ort_patterns_fused`` (FusedMatMul, softmax cast and GroupNorm patterns); skipped ``no_fusion_found``.

    Numerics: EXACT up to float rounding (the contrib kernels compute the same expressions; attention
    scores are accumulated differently).
    """

    name = "fuse-ort"

    def rewrite(self, model: ir.Model, report: PassReport) -> None:
        """Fuse a copy and adopt it when anything fused."""
        from onnxscript.rewriter import RewriteRuleSet
        from onnxscript.rewriter.ort_fusions._core import ORT_PATTERN_REWRITE_RULES, fuse_xformers
        from onnxscript.rewriter.rules.common import _gemm_to_matmul_add

        copy = io.copy_model(model)  # shares the weights (external ones stay memory-mapped, with their folder)
        unfused = RewriteRuleSet([_gemm_to_matmul_add.gemm_to_matmul_add_rule]).apply_to_model(copy)
        copy, counts = fuse_xformers(copy)
        patterns = RewriteRuleSet(list(ORT_PATTERN_REWRITE_RULES)).apply_to_model(copy)
        fused = {f"{key}_fused": count for key, count in counts.items() if count}
        if patterns:
            fused["ort_patterns_fused"] = patterns
        if not fused:
            report.skipped["no_fusion_found"] += 1
            return
        if unfused:
            fused["gemm_unfused"] = unfused
        report.changes.update(fused)
        adopt_model(model, copy)  # the graph carries the opset imports (com.microsoft added)
        logger.debug("fuse-ort: %s", dict(fused))
