"""Helpers shared by the quantization pass tests."""

from __future__ import annotations

import collections

import numpy as np
import onnx
import onnx_ir as ir

from sftonnx import io, verify
from tests.helpers import cosine, run_ort

#: int8 models: the bar for "quantized but still the same function" on tiny seeded graphs.
INT8_MIN_COSINE = 0.99
#: Top-1 accuracy the int8 digits classifier may lose, in points.
DIGITS_MAX_DROP = 0.3


def feeds_for(model: ir.Model, batches: int = 4, batch: int = 8, seed: int = 0, low: float | None = None,
              high: float | None = None) -> list[dict[str, np.ndarray]]:
    """Seeded calibration batches for every float input (dynamic dims = 4): N(0,1), or uniform [low, high)."""
    rng = np.random.default_rng(seed)
    specs = verify.input_specs(model)
    result = []
    for _ in range(batches):
        feed = {}
        for spec in specs:
            shape = [batch if i == 0 and not isinstance(d, int) else (d if isinstance(d, int) else 4)
                     for i, d in enumerate(spec.shape)]
            if low is not None and high is not None:
                feed[spec.name] = rng.uniform(low, high, shape).astype(np.float32)
            else:
                feed[spec.name] = rng.standard_normal(shape).astype(np.float32)
        result.append(feed)
    return result


def ops(model: ir.Model) -> collections.Counter[str]:
    return collections.Counter(node.op_type for node in model.graph)


def node_by_output(model: ir.Model, op_type: str) -> list[ir.Node]:
    return [node for node in model.graph if node.op_type == op_type]


def ort_ops(model: ir.Model | bytes) -> collections.Counter[str]:
    """Op types in the graph onnxruntime's CPU EP runs (extended optimizations)."""
    from sftonnx.passes.quantization.qdq import ort_optimized_graph

    source = model if isinstance(model, bytes) else io.to_bytes(model)
    return collections.Counter(node.op_type for node in ort_optimized_graph(source).node)


def min_cosine(original: bytes, candidate: ir.Model | bytes, feeds: list[dict[str, np.ndarray]]) -> float:
    worst = 1.0
    for feed in feeds:
        for e, a in zip(run_ort(original, feed), run_ort(candidate, feed), strict=True):
            worst = min(worst, cosine(e, a))
    return worst


def mean_abs_error(original: bytes, candidate: ir.Model | bytes, feeds: list[dict[str, np.ndarray]]) -> float:
    errors = []
    for feed in feeds:
        for e, a in zip(run_ort(original, feed), run_ort(candidate, feed), strict=True):
            errors.append(np.mean(np.abs(e.astype(np.float64) - a)))
    return float(np.mean(errors))


def check_model(model: ir.Model) -> None:
    proto = ir.to_proto(model)
    onnx.checker.check_model(proto, full_check=True)
