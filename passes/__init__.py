"""The rewrite passes, installed as ``sftonnx.passes``.

``REGISTRY`` maps each registry/CLI name to its pass class; ``PRESETS`` maps each preset name to a pass
spec (the same syntax as ``--passes``). Both are written out by hand so that ``sftonnx passes`` and the
README list exactly what exists.
"""

from __future__ import annotations

from sftonnx.pass_infra import SftPass
from sftonnx.passes.cleanup import (
    DeduplicateInitializersPass,
    EliminateCommonSubexpressionsPass,
    EliminateDeadNodesPass,
    EliminateIdentityPass,
    SimplifyPass,
)
from sftonnx.passes.distillation.distill import DistillPass
from sftonnx.passes.factorization.conv import FactorizeConvPass
from sftonnx.passes.factorization.gemm import FactorizeGemmPass
from sftonnx.passes.fusion.affine import FoldAffinePass
from sftonnx.passes.fusion.batch_norm import FoldBatchNormPass
from sftonnx.passes.fusion.matmul_add import FuseMatMulAddPass
from sftonnx.passes.fusion.ort import FuseOrtPass
from sftonnx.passes.fusion.ort_offline import OrtOfflinePass
from sftonnx.passes.fusion.standard import CollapseLayoutPass, FoldInputNormPass, FoldPadPass
from sftonnx.passes.fusion.transformer import FuseGeluPass, FuseLayerNormPass, FuseSoftmaxPass
from sftonnx.passes.layout.sinking import SinkTransposesPass
from sftonnx.passes.pruning.channels import PruneChannelsPass
from sftonnx.passes.pruning.magnitude import PruneMagnitudePass
from sftonnx.passes.quantization.choose import QuantizeInt8Pass
from sftonnx.passes.quantization.dynamic import QuantizeDynamicPass
from sftonnx.passes.quantization.fp16 import ConvertFloat16Pass
from sftonnx.passes.quantization.qdq import QuantizeStaticPass
from sftonnx.passes.tensor_reuse.scheduling import ScheduleMemoryPass
from sftonnx.passes.tensor_reuse.weights import ShareWeightsPass

__all__ = ["PRESETS", "PRESET_DOCS", "REGISTRY"]

REGISTRY: dict[str, type[SftPass]] = {
    cls.name: cls
    for cls in (
        # lossless clean-up
        SimplifyPass,
        EliminateIdentityPass,
        EliminateDeadNodesPass,
        EliminateCommonSubexpressionsPass,
        DeduplicateInitializersPass,
        # lossless fusions (standard ONNX)
        FoldBatchNormPass,
        FoldAffinePass,
        FuseMatMulAddPass,
        FoldPadPass,
        FoldInputNormPass,
        CollapseLayoutPass,
        SinkTransposesPass,
        FuseLayerNormPass,
        FuseGeluPass,
        FuseSoftmaxPass,
        # onnxruntime target
        FuseOrtPass,
        OrtOfflinePass,
        # tensor reuse
        ShareWeightsPass,
        ScheduleMemoryPass,
        # lossy
        QuantizeStaticPass,
        QuantizeDynamicPass,
        QuantizeInt8Pass,
        ConvertFloat16Pass,
        PruneMagnitudePass,
        PruneChannelsPass,
        FactorizeGemmPass,
        FactorizeConvPass,
        DistillPass,
    )
}

PRESETS: dict[str, str] = {
    "lossless": (
        "simplify,sink-transposes,fold-pad,fold-bn{clone_shared_weights=true},fold-affine{clone_shared_weights=true},"
        "fold-input-norm,matmul-add-to-gemm,collapse-layout,fuse-layernorm,fuse-gelu,fuse-softmax,eliminate-identity,cse,dedup,"
        "share-weights,eliminate-dead,schedule-memory"
    ),
    "fast-cpu": "lossless,fuse-ort,ort-offline{level=extended}",
    "int8": "lossless,quantize-int8",
    "int8-dynamic": "lossless,quantize-dynamic",
    "fp16": "lossless,fp16{keep_io_types=true}",
    "compact": (
        "simplify,prune-channels{ratio=0.3, round_to=8},lossless,"
        "factorize-conv{mode=tucker, max_error=0.05},factorize-gemm{max_error=0.05},distill{time_budget=60}"
    ),
    "max": (
        "simplify,prune-channels{ratio=0.3, round_to=8},lossless,"
        "factorize-conv{mode=tucker, max_error=0.05},factorize-gemm{max_error=0.05},distill{time_budget=60},"
        "quantize-int8"
    ),
}

PRESET_DOCS: dict[str, str] = {
    "lossless": "Numerically equivalent folding, fusion and clean-up in standard ONNX; the default.",
    "fast-cpu": "lossless, then onnxruntime contrib-op fusions saved offline (runs on onnxruntime only).",
    "int8": (
        "int8 chosen per model on --calibration-data: static QDQ, dynamic MatMul/Gemm or mixed (sensitive layers "
        "backed off to dynamic, then float), judged on held-out samples and the verification data with the "
        "verification budget; the fastest within budget is kept, or the model stays float (reason in the report) "
        "when none is faster. Never exits 3 over its own choice: a result the final check refuses is undone."
    ),
    "int8-dynamic": "Dynamic int8 for MatMul/Gemm (transformers, MLPs); convs stay float.",
    "fp16": "float16 weights and compute for GPUs, float32 inputs/outputs and numerically sensitive ops.",
    "compact": (
        "30% of channels pruned (refit on --calibration-data when given), lossless, then Tucker/low-rank "
        "factorization guarded per layer: ranks only where the relative output error (weight error without "
        "data) stays <= 5%; then, with torch installed and --calibration-data, knowledge distillation against "
        "the original (at most 60 s; skipped with a note otherwise); the final check holds the whole model to "
        "--min-cosine."
    ),
    "max": (
        "compact (distillation included), then int8 chosen per model: the smallest and fastest, with the largest "
        "accuracy cost."
    ),
    # Not in PRESETS (a search, not a spec; it cannot stand inside --passes): `--preset auto`.
    "auto": (
        "Accuracy-aware search: per-layer sensitivity of quantize/prune-channels/factorize, greedy back-off within "
        "--max-accuracy-drop (with --eval) or --max-error and --min-agreement (judged as the final check judges), "
        "every preset as a candidate; with torch and --calibration-data the chosen lossy model is distilled "
        "within --time-budget and kept if that helps; fastest (or smallest) model written."
    ),
}
