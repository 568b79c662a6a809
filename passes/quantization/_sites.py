"""Which nodes ``quantize`` can quantize, and the roles of their inputs (activations, weights, biases, constants)."""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Iterable, Mapping, Sequence

import numpy as np
import onnx_ir as ir

from sftonnx.ir_utils import attr, constant_array

__all__ = [
    "ACTIVATION_OPS",
    "COMPUTE_OPS",
    "PASS_THROUGH_OPS",
    "QUANTIZABLE_OPS",
    "Site",
    "calibration_tensors",
    "find_sites",
    "folded_constant",
]


#: Ops run as integer kernels by onnxruntime when wrapped in DQ -> op -> Q (output has its own scale).
COMPUTE_OPS = frozenset(
    {"Conv", "ConvTranspose", "Gemm", "MatMul", "Add", "Mul", "Concat", "AveragePool", "GlobalAveragePool",
     "Sigmoid", "LeakyRelu"}
)
#: Data-movement ops: input and output share one scale; onnxruntime drops the pairs and moves int8 data.
PASS_THROUGH_OPS = frozenset({"MaxPool", "Reshape", "Transpose", "Flatten", "Squeeze", "Unsqueeze"})
#: Activations folded into the preceding quantized op's output range.
ACTIVATION_OPS = frozenset({"Relu", "Clip"})
QUANTIZABLE_OPS = COMPUTE_OPS | PASS_THROUGH_OPS | ACTIVATION_OPS

@dataclasses.dataclass
class Site:
    """A node that may be quantized, with the roles of its inputs.

    Attributes:
        node: Node name (unique; unnamed nodes are named first).
        op_type: The op.
        kind: ``compute``, ``pass`` (data movement) or ``act`` (Relu/Clip).
        acts: Activation inputs (tensor names) that get Q/DQ.
        consts: Constant float inputs quantized like activations (per tensor), e.g. an Add's constant operand.
        weight: Constant weight input name, its index and per-channel axis.
        bias: Constant bias input name and its index.
        output: The (first) output.
    """

    node: str
    op_type: str
    kind: str
    acts: list[str]
    consts: list[str] = dataclasses.field(default_factory=list)
    weight: tuple[str, int, int] | None = None
    bias: tuple[str, int] | None = None
    output: str = ""


def _excluded(node: ir.Node, nodes: Sequence[str], op_types: Sequence[str], pattern: re.Pattern | None) -> bool:
    return (
        node.name in nodes
        or node.op_type in op_types
        or (pattern is not None and pattern.search(node.name or "") is not None)
    )


def find_sites(
    model: ir.Model,
    *,
    exclude_nodes: Sequence[str] = (),
    exclude_op_types: Sequence[str] = (),
    exclude_pattern: str | None = None,
    op_types: Iterable[str] = QUANTIZABLE_OPS,
    per_channel: bool = True,
) -> tuple[dict[str, Site], dict[str, str]]:
    """Quantizable nodes of the main graph and the reasons others are not: ``({name: Site}, {name: reason})``."""
    pattern = re.compile(exclude_pattern) if exclude_pattern else None
    allowed = set(op_types)
    sites: dict[str, Site] = {}
    declined: dict[str, str] = {}
    for node in model.graph:
        if node.domain not in ("", "ai.onnx") or node.op_type in ("Constant", "QuantizeLinear", "DequantizeLinear"):
            continue
        if node.op_type not in allowed or node.op_type not in QUANTIZABLE_OPS:
            if node.op_type not in _NEUTRAL_OPS:
                declined[node.name] = "op_not_quantizable"
            continue
        if _excluded(node, exclude_nodes, exclude_op_types, pattern):
            declined[node.name] = "excluded"
            continue
        site_or_reason = _site(node, per_channel)
        if isinstance(site_or_reason, str):
            declined[node.name] = site_or_reason
        else:
            sites[node.name] = site_or_reason
    return sites, declined


#: Ops that carry no float math worth listing when left alone (shape plumbing).
_NEUTRAL_OPS = frozenset(
    {"Shape", "Size", "Gather", "Cast", "CastLike", "ConstantOfShape", "Range", "Identity", "Expand",
     "Slice", "Split", "Equal", "Where", "NonZero", "Not", "And", "Or", "Less", "Greater", "Dropout"}
)


def _is_const(value: ir.Value | None) -> bool:
    return value is not None and constant_array(value) is not None


def folded_constant(value: ir.Value | None) -> np.ndarray | None:
    """A constant, also through ``Cast``/``CastLike`` of a constant (exporters emit ``CastLike(6.0, x)``)."""
    array = constant_array(value)
    if array is not None or value is None:
        return array
    producer = value.producer()
    if producer is None or producer.op_type not in ("Cast", "CastLike") or producer.domain not in ("", "ai.onnx"):
        return None
    inner = constant_array(producer.inputs[0]) if producer.inputs else None
    if inner is None:
        return None
    if producer.op_type == "Cast":
        target = attr(producer, "to")
        dtype = ir.DataType(target).numpy() if target is not None else None
    else:
        like = producer.inputs[1] if len(producer.inputs) > 1 else None
        dtype = like.dtype.numpy() if like is not None and like.dtype is not None else None
    # an untyped CastLike target: the caller only quantizes float32 tensors, so float32 is what it needs
    return inner.astype(dtype if dtype is not None else np.float32)


def _site(node: ir.Node, per_channel: bool) -> Site | str:
    op = node.op_type
    inputs = list(node.inputs)
    if not inputs or inputs[0] is None or not node.outputs:
        return "input_not_float"
    output = node.outputs[0].name or ""
    if op in ("Conv", "ConvTranspose"):
        if len(inputs) < 2 or not _is_const(inputs[1]):
            return "weight_not_constant"
        weight = constant_array(inputs[1])
        assert weight is not None
        axis = (0 if op == "Conv" else 1) if per_channel and weight.ndim > 1 else -1
        bias = None
        if len(inputs) > 2 and inputs[2] is not None:
            if not _is_const(inputs[2]):
                return "bias_not_constant"
            bias = (inputs[2].name or "", 2)
        return Site(node.name, op, "compute", [inputs[0].name or ""], weight=(inputs[1].name or "", 1, axis),
                    bias=bias, output=output)
    if op == "Gemm":
        if len(inputs) < 2 or inputs[1] is None:
            return "input_not_float"
        if len(inputs) > 2 and inputs[2] is not None and float(attr(node, "beta", 1.0)) != 1.0:
            return "gemm_beta"
        acts = [inputs[0].name or ""]
        weight = None
        if _is_const(inputs[1]):
            array = constant_array(inputs[1])
            assert array is not None
            axis = (0 if int(attr(node, "transB", 0)) else 1) if per_channel and array.ndim == 2 else -1
            weight = (inputs[1].name or "", 1, axis)
        else:
            acts.append(inputs[1].name or "")
        bias = None
        if len(inputs) > 2 and inputs[2] is not None:
            array = constant_array(inputs[2])
            if array is None:
                return "bias_not_constant"
            if weight is None or array.ndim > 2 or (array.ndim == 2 and array.shape[0] != 1):
                return "bias_not_per_channel"
            bias = (inputs[2].name or "", 2)
        return Site(node.name, op, "compute", acts, weight=weight, bias=bias, output=output)
    if op == "MatMul":
        if len(inputs) < 2 or inputs[1] is None:
            return "input_not_float"
        if _is_const(inputs[0]):
            return "weight_not_constant"  # constant A: not a layout the int8 kernels take
        if _is_const(inputs[1]):
            array = constant_array(inputs[1])
            assert array is not None
            axis = array.ndim - 1 if per_channel and array.ndim >= 2 else -1
            return Site(node.name, op, "compute", [inputs[0].name or ""], weight=(inputs[1].name or "", 1, axis),
                        output=output)
        return Site(node.name, op, "compute", [inputs[0].name or "", inputs[1].name or ""], output=output)
    if op in ("Add", "Mul"):
        if len(inputs) != 2 or inputs[1] is None:
            return "input_not_float"
        acts = [v.name or "" for v in inputs if not _is_const(v)]
        consts = [v.name or "" for v in inputs if _is_const(v)]
        if not acts:
            return "input_not_float"
        return Site(node.name, op, "compute", acts, consts=consts, output=output)
    if op == "Concat":
        if any(v is None for v in inputs):
            return "input_not_float"
        acts = [v.name or "" for v in inputs if not _is_const(v)]
        consts = [v.name or "" for v in inputs if _is_const(v)]
        return Site(node.name, op, "compute", acts, consts=consts, output=output)
    if op == "MaxPool" and len(node.outputs) > 1 and (node.outputs[1].uses() or node.outputs[1].is_graph_output()):
        return "maxpool_indices_used"
    if op == "Clip":
        for extra in inputs[1:]:
            if extra is not None and folded_constant(extra) is None:
                return "clip_bounds_not_constant"
    if _is_const(inputs[0]):
        return "input_not_float"
    kind = "pass" if op in PASS_THROUGH_OPS else ("act" if op in ACTIVATION_OPS else "compute")
    return Site(node.name, op, kind, [inputs[0].name or ""], output=output)


def calibration_tensors(model: ir.Model, sites: Mapping[str, Site]) -> list[str]:
    """Activation tensors whose ranges the plan may need (inputs and outputs of every site)."""
    names: list[str] = []
    for site in sites.values():
        names.extend(site.acts)
        names.append(site.output)
    return list(dict.fromkeys(n for n in names if n))
