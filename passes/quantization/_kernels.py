"""What onnxruntime makes of a QDQ model: the graph its CPU EP runs, its integer kernels, and CPU flags.

Used by ``quantize`` (``check_kernels``, ``reduce_range``) and ``quantize-dynamic`` (``details["int8_ops"]``).
"""

from __future__ import annotations

import collections
import functools
import os
import tempfile
from collections.abc import Iterable

import onnx

from sftonnx import verify

__all__ = ["INTEGER_OPS", "cpu_has_vnni", "float_islands", "ort_optimized_graph"]


#: Op types of onnxruntime's integer kernels (what ``check_kernels`` looks for in its optimized graph).
INTEGER_OPS = frozenset(
    {"QLinearConv", "QLinearMatMul", "MatMulInteger", "ConvInteger", "QGemm", "QLinearAdd", "QLinearMul",
     "QLinearConcat", "QLinearAveragePool", "QLinearGlobalAveragePool", "QLinearSigmoid", "QLinearLeakyRelu",
     "QLinearConvTranspose", "QLinearSoftmax", "QLinearWhere", "DynamicQuantizeMatMul", "MatMulIntegerToFloat",
     "QLinearReduceMean", "QAttention", "DynamicQuantizeLSTM", "QEmbedLayerNormalization"}
)
_QDQ_OPS = frozenset({"QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear"})


@functools.lru_cache(maxsize=1)
def cpu_has_vnni() -> bool | None:
    """Whether this x86 CPU has VNNI (AVX512-VNNI or AVX-VNNI); ``None`` when unknown (not Linux/x86)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as handle:
            text = handle.read()
    except OSError:
        return None
    flags = set()
    for line in text.splitlines():
        if line.startswith("flags"):
            flags.update(line.split(":", 1)[1].split())
            break
    if not flags:
        return None  # e.g. ARM ("Features"): no u8s8 saturation issue there
    if "avx2" not in flags and "sse4_1" not in flags:
        return None
    return "avx512_vnni" in flags or "avx_vnni" in flags


def ort_optimized_graph(source: bytes | str, level: str = "extended") -> onnx.GraphProto:
    """The graph onnxruntime's CPU EP actually runs (saved through ``optimized_model_filepath``).

    ``source`` is bytes or a model path (external data or large: see ``verify.session_source``). The optimized
    model's weights go to a temporary data file and are never read back: only the graph is returned.
    """
    with tempfile.TemporaryDirectory(prefix="sftonnx-q-") as folder:
        path = os.path.join(folder, "optimized.onnx")
        config = {"session.optimized_model_external_initializers_file_name": "optimized.onnx.data"}
        verify.make_session(
            source, optimization=level, optimized_model_path=path, prepack=isinstance(source, bytes), config=config
        )
        proto = onnx.load(path, load_external_data=False)
    return proto.graph


def float_islands(
    graph: onnx.GraphProto, names: Iterable[str]
) -> tuple[set[str], collections.Counter[str], collections.Counter[str]]:
    """Which of ``names`` onnxruntime runs in float (reading a DequantizeLinear output), and its op counts.

    A node is matched by name, or by a name onnxruntime derived from it (``<name>_...`` after its own fusions).

    Returns:
        ``(islands, integer kernels by op type, float ops reading dequantized tensors by op type)``.
    """
    produced_by_dq = {out for node in graph.node if node.op_type == "DequantizeLinear" for out in node.output}
    wanted = set(names)
    islands: set[str] = set()
    float_ops: collections.Counter[str] = collections.Counter()
    for node in graph.node:
        if node.op_type in _QDQ_OPS or node.op_type in INTEGER_OPS:
            continue
        if not any(i in produced_by_dq for i in node.input):
            continue
        float_ops[node.op_type] += 1
        if node.name in wanted:
            islands.add(node.name)
            continue
        for name in wanted:
            if node.name.startswith(name + "_"):
                islands.add(name)
    int_ops = collections.Counter(n.op_type for n in graph.node if n.op_type in INTEGER_OPS)
    return islands, int_ops, float_ops
