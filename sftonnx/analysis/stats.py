"""Model statistics: operator histogram, parameter count and size, multiply-accumulates, a summary.

All functions are read-only on the ``onnx_ir.Model`` they are given. Tensor data is never loaded: sizes come
from shapes and dtypes (so external data stays on disk).

MAC formulas (one multiply-accumulate per product term; bias additions are not counted):

* Conv, ConvInteger, QLinearConv: ``prod(Y.shape) * prod(W.shape[1:])``, that is
  ``N * Cout * prod(out spatial) * (Cin / group) * prod(kernel)``.
* ConvTranspose: ``prod(X.shape) * prod(W.shape[1:])``, that is
  ``N * Cin * prod(in spatial) * (Cout / group) * prod(kernel)`` (each input element is scattered once
  per weight of its group).
* Gemm: ``M * N * K`` with ``A`` read as ``(M, K)`` (``(K, M)`` when ``transA``) and ``B`` as ``(K, N)``
  (``(N, K)`` when ``transB``).
* MatMul, MatMulInteger, QLinearMatMul: ``prod(broadcast(batch dims)) * M * N * K`` with numpy matmul
  semantics (a 1-D ``A`` is ``(1, K)``, a 1-D ``B`` is ``(K, 1)``).
"""

from __future__ import annotations

import dataclasses
import logging
import math
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import onnx_ir as ir

from sftonnx.analysis.memory import plan_memory
from sftonnx.analysis.shapes import Dim, ShapeTable, infer_tensor_shapes, tensor_nbytes
from sftonnx.ir_utils import all_graphs

__all__ = [
    "MAC_OPS",
    "UNKNOWN_SHAPE",
    "ModelSummary",
    "TensorDesc",
    "count_macs",
    "generated_constant_stats",
    "op_histogram",
    "parameter_stats",
    "summarize",
]

logger = logging.getLogger(__name__)

#: Key of :func:`count_macs`' result that counts nodes whose MACs could not be computed (a node count).
UNKNOWN_SHAPE = "unknown_shape"


def op_histogram(model: ir.Model) -> dict[str, int]:
    """Count nodes by operator, the main graph and every subgraph (If/Loop/Scan bodies) included.

    Keys are ``op_type`` for the default domain (``""`` or ``ai.onnx``) and ``domain::op_type`` otherwise.
    Calls of model-local functions count as their own operator; function bodies are not counted.

    Args:
        model: The model; not modified.

    Returns:
        ``{operator: count}``, most frequent first (ties by name).
    """
    counts = Counter(_op_key(node) for node in ir.traversal.RecursiveGraphIterator(model.graph))
    return dict(sorted(counts.items(), key=lambda item: (-item[1], item[0])))


def parameter_stats(model: ir.Model) -> tuple[int, int]:
    """Count stored parameters: initializers and Constant nodes, subgraphs included.

    Counted: every initializer of the main graph and of every subgraph, *including initializers that are
    also graph inputs* (overridable defaults, common in IR version < 4 models), and the value of every
    Constant node (main graph, subgraphs, local functions). Tensors computed at run time from constants
    (such as ConstantOfShape outputs) are not stored and not counted here; see
    :func:`generated_constant_stats`.
    Integer shape tensors count like any other initializer. Sparse Constant values are not counted.

    Args:
        model: The model; not modified, and external data is not loaded.

    Returns:
        ``(elements, bytes)``; bytes from shape and dtype (sub-byte types rounded up per tensor, strings by
        their UTF-8 length).
    """
    count = 0
    nbytes = 0
    for graph in (model.graph, *model.graph.subgraphs()):
        for value in graph.initializers.values():
            tensor = value.const_value
            if tensor is not None:
                count += tensor.size
                nbytes += _stored_nbytes(tensor)
    for graph_like in _graphs_and_functions(model):
        for node in graph_like:
            if node.op_type == "Constant" and node.domain in ("", "ai.onnx"):
                elements, size = _constant_node_size(node)
                count += elements
                nbytes += size
    return count, nbytes


def generated_constant_stats(model: ir.Model) -> tuple[int, int]:
    """Count tensors ConstantOfShape builds from a constant shape (weights generated at run time).

    Some models (onnx's ``light_*`` test models) store only the shapes of their weights and fill them with
    ConstantOfShape; this reports what those nodes produce so that such a model's real size is visible.

    Args:
        model: The model; not modified.

    Returns:
        ``(elements, bytes)`` over ConstantOfShape nodes (all graphs) whose shape input is constant.
    """
    count = 0
    nbytes = 0
    for node in ir.traversal.RecursiveGraphIterator(model.graph):
        if node.op_type != "ConstantOfShape" or node.domain not in ("", "ai.onnx"):
            continue
        shape = _constant_ints(node.inputs[0] if node.inputs else None)
        if shape is None:
            continue
        attribute = node.attributes.get("value")
        dtype = attribute.as_tensor().dtype if attribute is not None else ir.DataType.FLOAT
        elements = math.prod(shape)
        count += elements
        nbytes += tensor_nbytes(dtype, shape) or 0
    return count, nbytes


def _mac_conv(node: ir.Node, shapes: ShapeTable, weight_index: int) -> int | None:
    weight = shapes.static_shape(_input(node, weight_index))
    output = shapes.static_shape(node.outputs[0])
    if weight is None or output is None:
        return None
    return math.prod(output) * math.prod(weight[1:])


def _mac_conv_transpose(node: ir.Node, shapes: ShapeTable) -> int | None:
    data = shapes.static_shape(_input(node, 0))
    weight = shapes.static_shape(_input(node, 1))
    if data is None or weight is None:
        return None
    return math.prod(data) * math.prod(weight[1:])


def _mac_gemm(node: ir.Node, shapes: ShapeTable) -> int | None:
    a = shapes.static_shape(_input(node, 0))
    b = shapes.static_shape(_input(node, 1))
    if a is None or b is None or len(a) != 2 or len(b) != 2:
        return None
    m, k = (a[1], a[0]) if _int_attr(node, "transA") else a
    n = b[0] if _int_attr(node, "transB") else b[1]
    return m * n * k


def _mac_matmul(node: ir.Node, shapes: ShapeTable, b_index: int) -> int | None:
    a = shapes.static_shape(_input(node, 0))
    b = shapes.static_shape(_input(node, b_index))
    if a is None or b is None or not a or not b:
        return None
    if len(a) == 1:
        a = (1, *a)
    if len(b) == 1:
        b = (*b, 1)
    try:
        batch = np.broadcast_shapes(a[:-2], b[:-2])
    except ValueError:
        return None
    return math.prod(batch) * a[-2] * b[-1] * a[-1]


#: Operators whose MACs :func:`count_macs` computes (default domain), with the formula used.
MAC_OPS: dict[str, Callable[[ir.Node, ShapeTable], int | None]] = {
    "Conv": lambda node, shapes: _mac_conv(node, shapes, 1),
    "ConvInteger": lambda node, shapes: _mac_conv(node, shapes, 1),
    "QLinearConv": lambda node, shapes: _mac_conv(node, shapes, 3),
    "ConvTranspose": _mac_conv_transpose,
    "Gemm": _mac_gemm,
    "MatMul": lambda node, shapes: _mac_matmul(node, shapes, 1),
    "MatMulInteger": lambda node, shapes: _mac_matmul(node, shapes, 1),
    "QLinearMatMul": lambda node, shapes: _mac_matmul(node, shapes, 3),
}


def _mac_fused_matmul(node: ir.Node, shapes: ShapeTable) -> int | None:
    """FusedMatMul is ``alpha * op(A) @ op(B)``; ``transA``/``transB`` swap the last two axes of an operand."""
    if _int_attr(node, "transBatchA") or _int_attr(node, "transBatchB"):
        return None  # batch axes moved too: not counted
    a = shapes.static_shape(_input(node, 0))
    b = shapes.static_shape(_input(node, 1))
    if a is None or b is None or len(a) < 2 or len(b) < 2:
        return None
    if _int_attr(node, "transA"):
        a = (*a[:-2], a[-1], a[-2])
    if _int_attr(node, "transB"):
        b = (*b[:-2], b[-1], b[-2])
    try:
        batch = np.broadcast_shapes(a[:-2], b[:-2])
    except ValueError:
        return None
    return math.prod(batch) * a[-2] * b[-1] * a[-1]


#: onnxruntime contrib ops (``com.microsoft``) that are one of the above plus an activation, counted the same way.
CONTRIB_MAC_OPS: dict[str, Callable[[ir.Node, ShapeTable], int | None]] = {
    "FusedConv": lambda node, shapes: _mac_conv(node, shapes, 1),
    "FusedGemm": _mac_gemm,
    "FusedMatMul": _mac_fused_matmul,
}


def count_macs(
    model: ir.Model,
    input_shapes: Mapping[str, Sequence[int]] | None = None,
    *,
    shapes: ShapeTable | None = None,
) -> dict[str, int]:
    """Multiply-accumulates per operator type of Conv, ConvTranspose, Gemm, MatMul and their quantized forms.

    Shapes come from onnx shape inference on a copy of the model (see
    :func:`~sftonnx.analysis.shapes.infer_tensor_shapes`). Nodes in subgraphs are counted once each: both
    branches of an If, one iteration of a Loop or Scan body. onnxruntime's FusedConv, FusedGemm and FusedMatMul
    count as their standard op (keys ``com.microsoft::FusedConv``, ...), so fusing leaves the total unchanged;
    bodies of local functions and other com.microsoft operators are not counted.

    Args:
        model: The model; not modified.
        input_shapes: Static shapes for dynamic graph inputs by name (other batch-like dims are taken as 1).
        shapes: A table already inferred for this model (``input_shapes`` is then ignored).

    Returns:
        ``{op_type: MACs}`` for each counted operator type present with known shapes, plus
        ``"unknown_shape"``: the number of such nodes (always present, possibly 0) whose MACs could not be
        computed because a needed shape is not static.
    """
    if shapes is None:
        shapes = infer_tensor_shapes(model, input_shapes)
    macs: Counter[str] = Counter()
    unknown = 0
    for node in ir.traversal.RecursiveGraphIterator(model.graph):
        if node.domain in ("", "ai.onnx") and node.op_type in MAC_OPS:
            formula = MAC_OPS[node.op_type]
        elif node.domain == "com.microsoft" and node.op_type in CONTRIB_MAC_OPS:
            formula = CONTRIB_MAC_OPS[node.op_type]
        else:
            continue
        value = formula(node, shapes)
        if value is None:
            unknown += 1
            logger.debug("MACs of %s '%s' unknown: shapes not static", node.op_type, node.name)
        else:
            macs[_op_key(node)] += value
    result = dict(sorted(macs.items()))
    result[UNKNOWN_SHAPE] = unknown
    return result


@dataclasses.dataclass(frozen=True)
class TensorDesc:
    """A graph input or output as declared.

    Attributes:
        name: Value name.
        dtype: Element type name (``"FLOAT"``, ``"INT64"``), ``None`` when not declared or not a tensor.
        shape: Dimensions as sizes, symbols (strings) or ``None`` (unnamed dynamic); ``None`` when the rank
            is unknown.
    """

    name: str
    dtype: str | None
    shape: tuple[Dim, ...] | None

    def to_json(self) -> dict[str, Any]:
        """A JSON-able dict."""
        shape = None if self.shape is None else list(self.shape)
        return {"name": self.name, "dtype": self.dtype, "shape": shape}


@dataclasses.dataclass(frozen=True)
class ModelSummary:
    """What ``sftonnx inspect`` shows and the pipeline's per-pass report compares.

    Attributes:
        ir_version: The model's IR version.
        opset_imports: ``{domain: version}``.
        producer: ``producer_name`` and ``producer_version``, space separated.
        inputs: Graph inputs that are not initializers, as declared.
        initializer_inputs: How many graph inputs are initializers (overridable weights).
        outputs: Graph outputs as declared.
        assumed_input_shapes: Input shapes used for MACs and memory (dynamic dims filled in).
        node_count: Nodes in the main graph and all subgraphs.
        op_histogram: See :func:`op_histogram`.
        params: Stored parameter elements (see :func:`parameter_stats`).
        param_bytes: Stored parameter bytes.
        generated_params: Elements built by ConstantOfShape from constant shapes (see
            :func:`generated_constant_stats`).
        generated_param_bytes: Their bytes.
        macs: MACs per operator type (see :func:`count_macs`), without the ``unknown_shape`` entry.
        macs_total: Sum of ``macs``.
        macs_unknown_nodes: Nodes whose MACs could not be computed.
        peak_activation_bytes: Peak live activation bytes in graph order (see
            :func:`~sftonnx.analysis.memory.plan_memory`).
        arena_bytes: Activation arena size with greedy reuse.
        unknown_size_tensors: Activations whose size is unknown (left out of the two figures above).
        file_size: Size of the model file in bytes, when given.
        shape_inference_error: Why onnx shape inference failed, when it did.
    """

    ir_version: int
    opset_imports: dict[str, int]
    producer: str
    inputs: list[TensorDesc]
    initializer_inputs: int
    outputs: list[TensorDesc]
    assumed_input_shapes: dict[str, tuple[Dim, ...]]
    node_count: int
    op_histogram: dict[str, int]
    params: int
    param_bytes: int
    generated_params: int
    generated_param_bytes: int
    macs: dict[str, int]
    macs_total: int
    macs_unknown_nodes: int
    peak_activation_bytes: int
    arena_bytes: int
    unknown_size_tensors: int
    file_size: int | None = None
    shape_inference_error: str | None = None

    def to_json(self) -> dict[str, Any]:
        """A JSON-able dict with the same keys as the attributes."""
        data = dataclasses.asdict(self)
        data["inputs"] = [desc.to_json() for desc in self.inputs]
        data["outputs"] = [desc.to_json() for desc in self.outputs]
        assumed = self.assumed_input_shapes
        data["assumed_input_shapes"] = {name: list(shape) for name, shape in assumed.items()}
        return data


def summarize(
    model: ir.Model,
    *,
    input_shapes: Mapping[str, Sequence[int]] | None = None,
    file_size: int | None = None,
) -> ModelSummary:
    """Collect a :class:`ModelSummary` (shape inference runs once, shared by MACs and memory).

    Args:
        model: The model; not modified.
        input_shapes: Static shapes for dynamic graph inputs by name (other batch-like dims are taken as 1).
        file_size: Size of the model file in bytes, reported as is.

    Returns:
        The summary.

    Raises:
        InputError: ``input_shapes`` does not fit the model's inputs.
    """
    shapes = infer_tensor_shapes(model, input_shapes)
    histogram = op_histogram(model)
    params, param_bytes = parameter_stats(model)
    generated, generated_bytes = generated_constant_stats(model)
    macs = count_macs(model, shapes=shapes)
    unknown_macs = macs.pop(UNKNOWN_SHAPE)
    memory = plan_memory(model, shapes=shapes)
    initializers = model.graph.initializers
    producer = " ".join(part for part in (model.producer_name, model.producer_version) if part)
    return ModelSummary(
        ir_version=model.ir_version,
        opset_imports=dict(sorted(model.opset_imports.items())),
        producer=producer,
        inputs=[_describe(value) for value in model.graph.inputs if value.name not in initializers],
        initializer_inputs=sum(1 for value in model.graph.inputs if value.name in initializers),
        outputs=[_describe(value) for value in model.graph.outputs],
        assumed_input_shapes=shapes.input_shapes,
        node_count=sum(histogram.values()),
        op_histogram=histogram,
        params=params,
        param_bytes=param_bytes,
        generated_params=generated,
        generated_param_bytes=generated_bytes,
        macs=macs,
        macs_total=sum(macs.values()),
        macs_unknown_nodes=unknown_macs,
        peak_activation_bytes=memory.peak_activation_bytes,
        arena_bytes=memory.arena_bytes,
        unknown_size_tensors=len(memory.unknown_size),
        file_size=file_size,
        shape_inference_error=shapes.error,
    )


def _op_key(node: ir.Node) -> str:
    if node.domain in ("", "ai.onnx"):
        return node.op_type
    return f"{node.domain}::{node.op_type}"


def _graphs_and_functions(model: ir.Model) -> list[ir.Graph | ir.Function]:
    """Main graph, all subgraphs and local functions with their subgraphs."""
    return list(all_graphs(model))


def _stored_nbytes(tensor: ir.TensorProtocol) -> int:
    if tensor.dtype == ir.DataType.STRING:
        try:
            return sum(len(item) for item in tensor.string_data())  # type: ignore[attr-defined]
        except Exception:  # external or unreadable string data: size unknown
            return 0
    return tensor.nbytes


def _constant_node_size(node: ir.Node) -> tuple[int, int]:
    """Elements and bytes of a Constant node's value attribute."""
    for name, attribute in node.attributes.items():
        value = attribute.value
        if name == "value" and attribute.type == ir.AttributeType.TENSOR:
            tensor = attribute.as_tensor()
            return tensor.size, _stored_nbytes(tensor)
        if name == "value_float":
            return 1, 4
        if name == "value_int":
            return 1, 8
        if name == "value_floats":
            return len(value), 4 * len(value)
        if name == "value_ints":
            return len(value), 8 * len(value)
        if name == "value_string":
            return 1, len(value.encode() if isinstance(value, str) else value)
        if name == "value_strings":
            return len(value), sum(len(s.encode() if isinstance(s, str) else s) for s in value)
    return 0, 0


def _constant_ints(value: ir.Value | None) -> list[int] | None:
    """The integers of a constant 1-D value (initializer or Constant node), else ``None``."""
    if value is None:
        return None
    tensor = value.const_value
    if tensor is None:
        producer = value.producer()
        if producer is None or producer.op_type != "Constant" or producer.domain not in ("", "ai.onnx"):
            return None
        attribute = producer.attributes.get("value")
        if attribute is not None and attribute.type == ir.AttributeType.TENSOR:
            tensor = attribute.as_tensor()
        elif (ints := producer.attributes.get("value_ints")) is not None:
            return [int(i) for i in ints.value]
        else:
            return None
    if isinstance(tensor, ir.ExternalTensor) or tensor.size > 64:
        return None  # a shape is tiny; never load external data for it
    try:
        return [int(i) for i in tensor.numpy().reshape(-1)]
    except Exception:  # unreadable data
        return None


def _input(node: ir.Node, index: int) -> ir.Value | None:
    return node.inputs[index] if index < len(node.inputs) else None


def _int_attr(node: ir.Node, name: str) -> int:
    attribute = node.attributes.get(name)
    return 0 if attribute is None else int(attribute.value)


def _describe(value: ir.Value) -> TensorDesc:
    dtype = value.dtype.name if value.dtype is not None else None
    shape = None
    if value.shape is not None:
        shape = tuple(d if isinstance(d, int) else d.value for d in value.shape)
    return TensorDesc(name=value.name or "", dtype=dtype, shape=shape)
