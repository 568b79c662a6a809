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
from sftonnx.passes.fusion.affine import FoldAffinePass
from sftonnx.passes.fusion.batch_norm import FoldBatchNormPass
from sftonnx.passes.fusion.matmul_add import FuseMatMulAddPass
from sftonnx.passes.tensor_reuse.ort_offline import OrtOfflinePass
from sftonnx.passes.tensor_reuse.scheduling import ScheduleMemoryPass
from sftonnx.passes.tensor_reuse.weights import ShareWeightsPass

__all__ = ["PRESETS", "PRESET_DOCS", "REGISTRY"]

REGISTRY: dict[str, type[SftPass]] = {
    cls.name: cls
    for cls in (
        SimplifyPass,
        EliminateIdentityPass,
        EliminateDeadNodesPass,
        EliminateCommonSubexpressionsPass,
        DeduplicateInitializersPass,
        FoldBatchNormPass,
        FoldAffinePass,
        FuseMatMulAddPass,
        ShareWeightsPass,
        ScheduleMemoryPass,
        OrtOfflinePass,
    )
}

PRESETS: dict[str, str] = {
    "lossless": (
        "simplify,fold-bn{clone_shared_weights=true},fold-affine{clone_shared_weights=true},matmul-add-to-gemm,eliminate-identity,cse,dedup,share-weights,"
        "eliminate-dead,schedule-memory"
    ),
    "fast-cpu": "lossless,ort-offline{level=extended}",
}

PRESET_DOCS: dict[str, str] = {
    "lossless": "Numerically equivalent folding, fusion and clean-up in standard ONNX; the default.",
    "fast-cpu": "lossless, then onnxruntime's extended fusions saved offline (contrib ops: runs on onnxruntime only).",
}
