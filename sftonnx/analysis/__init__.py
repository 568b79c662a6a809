"""Read-only model analysis: operator histogram, parameters, MACs, activation liveness and memory plans.

Nothing here modifies a model. ``sftonnx inspect`` shows :func:`summarize`; the pipeline's per-pass report
compares summaries; scheduling passes evaluate candidate node orders with :func:`plan_memory`.
"""

from sftonnx.analysis.memory import MemoryPlan, TensorLifetime, plan_memory, topological_order
from sftonnx.analysis.shapes import ShapeTable, TensorInfo, infer_tensor_shapes, tensor_nbytes
from sftonnx.analysis.stats import (
    CONTRIB_MAC_OPS,
    MAC_OPS,
    UNKNOWN_SHAPE,
    ModelSummary,
    TensorDesc,
    count_macs,
    generated_constant_stats,
    op_histogram,
    parameter_stats,
    summarize,
)

__all__ = [
    "CONTRIB_MAC_OPS",
    "MAC_OPS",
    "UNKNOWN_SHAPE",
    "MemoryPlan",
    "ModelSummary",
    "ShapeTable",
    "TensorDesc",
    "TensorInfo",
    "TensorLifetime",
    "count_macs",
    "generated_constant_stats",
    "infer_tensor_shapes",
    "op_histogram",
    "parameter_stats",
    "plan_memory",
    "summarize",
    "tensor_nbytes",
    "topological_order",
]
