"""Transpose sinking: push Transposes through ops that commute with a permutation until pairs cancel.

A Transpose with ``perm = p`` maps axis ``a`` of its output to axis ``p[a]`` of its input. An op ``f`` that
treats the axes of its inputs alike (elementwise maps, broadcasting arithmetic) or names them in attributes
and constant inputs (``Concat``/``Split``/``Softmax`` ``axis``, ``Reduce*``/``Slice`` ``axes``, ``Pad``
``pads``, ``Resize`` ``scales``) commutes with the permutation once those are renamed::

    f(Transpose(x, p), c)  ==  Transpose(f'(x, c'), rho)

where ``f'`` is ``f`` with every axis ``a`` renamed ``p[a]``, a constant operand ``c`` (aligned to the rank of
``x`` by leading 1s, as broadcasting does) is re-laid out ``c' = Transpose(c, p^-1)``, and ``rho`` is the
permutation that brings ``f'``'s output back to ``f``'s layout: ``p`` for ops that keep the rank, the order
of the kept axes for a ``Reduce*`` with ``keepdims=0`` (often the identity, so the Transpose disappears).

**Sinking** (down, toward the outputs) rewrites ``f`` that way when it does not add Transposes: each
transposed operand read through a Transpose with the same ``p`` drops that Transpose once nothing else reads
it, a constant costs nothing, any other operand would need a new ``Transpose(., p^-1)``, and each output
needs a ``Transpose(., rho)``. Two Transposes in a row compose into one, ``q[i] = p1[p2[i]]``, and vanish
when ``q`` is the identity. So ``Transpose(NCHW->NHWC) -> Add -> Mul -> Relu -> Transpose(NHWC->NCHW)``
becomes ``Add' -> Mul' -> Relu`` with per-channel constants laid out ``[1, C, 1, 1]``.

**Hoisting** (up, toward the inputs) runs after sinking: ``Transpose(f(x, c), p) == f''(Transpose(x, p),
c'')`` with axes renamed ``p^-1[a]`` and constants laid out ``Transpose(c, p)``. It is applied when it
removes Transposes, or when it moves one onto a graph input: ``input -> Pad -> Transpose -> Conv`` becomes
``input -> Transpose -> Pad -> Conv``, whose Pad ``fold-pad`` then folds into the Conv.

``Squeeze`` drops renamed axes (``rho`` as for ``Reduce*`` without keepdims); ``Unsqueeze`` puts its new
axes where a Transpose reading its result would put them, so that one cancels. Moves that do not grow the
copied tensor are free; when no Transpose ends up removed (or hoisted onto an input), the model is restored.

Graph inputs and outputs keep their names, shapes and layouts. The number of Transposes never grows.
No arithmetic changes: EXACT (the same operations on the same numbers; constants are moved, not recomputed).
Idea after onnxruntime's transpose optimizer (``onnxruntime/core/optimizer/transpose_optimization``) and
tf2onnx's ``TransposeOptimizer``; our own code.
"""

from __future__ import annotations

import dataclasses
import logging
import re
from collections.abc import Callable

import numpy as np
import onnx_ir as ir

from sftonnx import io
from sftonnx.errors import PassConfigError
from sftonnx.ir_utils import (
    NameAllocator,
    all_graphs,
    attr,
    constant_array,
    is_op,
    opset_version,
    replace_value,
    restore_model,
)
from sftonnx.pass_infra import PassReport, SftPass

__all__ = ["SinkTransposesPass"]

logger = logging.getLogger(__name__)

Perm = tuple[int, ...]

#: Elementwise ops with one layout-carrying input (input 0); other inputs are scalars/attributes.
_UNARY = frozenset(
    "Relu LeakyRelu Elu Selu Celu Sigmoid HardSigmoid HardSwish Tanh Softplus Softsign Exp Log Abs Neg Sqrt "
    "Reciprocal Erf Floor Ceil Round Sign Not IsNaN IsInf Sin Cos Tan Asin Acos Atan Sinh Cosh Asinh Acosh Atanh "
    "Cast Identity Gelu Mish ThresholdedRelu Shrink BitwiseNot Clip".split()
)
#: Elementwise ops whose every input broadcasts against the others (multidirectional or onto input 0).
_BROADCAST = frozenset(
    "Add Sub Mul Div Pow Max Min Sum Mean Equal Less LessOrEqual Greater GreaterOrEqual And Or Xor Where PRelu "
    "Mod BitShift BitwiseAnd BitwiseOr BitwiseXor".split()
)
_REDUCE = frozenset(
    "ReduceMean ReduceSum ReduceMax ReduceMin ReduceProd ReduceL1 ReduceL2 ReduceLogSum ReduceLogSumExp "
    "ReduceSumSquare".split()
)
#: Reduce ops whose ``axes`` became an input (ReduceSum at 13, the others at 18).
_AXES_INPUT_SINCE = {"ReduceSum": 13}


@dataclasses.dataclass
class _Plan:
    """How an op is rewritten to work on permuted tensors.

    Attributes:
        data: Input indices that carry the layout (transposed along with the op).
        attributes: Attributes to set (axes renamed).
        constants: Non-layout inputs to replace by these constants (renamed axes, re-ordered pads/scales).
        outputs: Per output, the permutation ``rho`` with ``old_output = Transpose(new_output, rho)``;
            ``None`` when no Transpose is needed (identity, or every dimension is 1).
    """

    data: list[int]
    attributes: dict[str, ir.Attr] = dataclasses.field(default_factory=dict)
    constants: dict[int, np.ndarray] = dataclasses.field(default_factory=dict)
    outputs: list[Perm | None] = dataclasses.field(default_factory=list)


def _snake(op_type: str) -> str:
    return re.sub(r"(?<=[a-z0-9])(?=[A-Z])", "_", op_type).lower()


def _inverse(perm: Perm) -> Perm:
    inverse = [0] * len(perm)
    for index, axis in enumerate(perm):
        inverse[axis] = index
    return tuple(inverse)


def _compose(first: Perm, second: Perm) -> Perm:
    """The perm of ``Transpose(Transpose(x, first), second)``."""
    return tuple(first[axis] for axis in second)


def _is_identity(perm: Perm | None) -> bool:
    return perm is not None and all(index == axis for index, axis in enumerate(perm))


def _rank(value: ir.Value | None) -> int | None:
    return None if value is None or value.shape is None else len(value.shape)


def _size_ratio(larger: ir.Value | None, smaller: ir.Value | None) -> float | None:
    """``numel(larger) / numel(smaller)`` when both shapes are known up to the same symbolic dims, else None."""
    if larger is None or smaller is None or larger.shape is None or smaller.shape is None:
        return None
    sizes, symbols = [1, 1], [[], []]
    for index, shape in enumerate((larger.shape, smaller.shape)):
        for dim in shape:
            if isinstance(dim, int):
                sizes[index] *= dim
            elif dim.value is None:
                return None
            else:
                symbols[index].append(dim.value)
    if sorted(symbols[0]) != sorted(symbols[1]) or sizes[1] == 0:
        return None
    return sizes[0] / sizes[1]


def _transpose_perm(node: ir.Node) -> Perm | None:
    """The ``perm`` of a default-domain Transpose (reversed axes when absent and the rank is known), else None."""
    if not is_op(node, "Transpose") or len(node.inputs) != 1 or node.inputs[0] is None:
        return None
    perm = attr(node, "perm")
    if perm is None:
        rank = _rank(node.inputs[0])
        return None if rank is None else tuple(reversed(range(rank)))
    perm = tuple(int(a) for a in perm)
    return perm if sorted(perm) == list(range(len(perm))) else None


def _constant(value: ir.Value | None) -> np.ndarray | None:
    """A constant operand (initializer that is no graph input, or a Constant node's output), else None."""
    if value is None or value.is_graph_input():
        return None
    return constant_array(value)


def _normalize(axis: int, rank: int) -> int | None:
    axis = axis + rank if axis < 0 else axis
    return axis if 0 <= axis < rank else None


def _rename_axes(axes, sigma: Perm) -> list[int] | None:
    rank = len(sigma)
    normalized = [_normalize(int(a), rank) for a in axes]
    if any(a is None for a in normalized) or len(set(normalized)) != len(normalized):
        return None
    return [sigma[a] for a in normalized]


def _permute_per_axis(values: np.ndarray, sigma: Perm) -> np.ndarray:
    """A per-axis list re-ordered: ``new[sigma[a]] = old[a]``."""
    out = np.empty_like(values)
    for axis, target in enumerate(sigma):
        out[target] = values[axis]
    return out


# ------------------------------------------------------------------------------------------------ op plans
# A planner gets the node, ``sigma`` (old axis a of the op's layout-carrying tensors becomes new axis sigma[a])
# and the opset, and returns a _Plan or the skip key that says why the op cannot be crossed.
Planner = Callable[[ir.Node, Perm, int], "_Plan | str"]


def _plan_unary(node: ir.Node, sigma: Perm, opset: int) -> _Plan | str:
    return _Plan(data=[0], outputs=[sigma])


def _plan_broadcast(node: ir.Node, sigma: Perm, opset: int) -> _Plan | str:
    return _Plan(data=[i for i, v in enumerate(node.inputs) if v is not None], outputs=[sigma])


def _plan_axis(node: ir.Node, sigma: Perm, opset: int, *, default: int, name: str = "axis") -> _Plan | str:
    axis = _normalize(int(attr(node, name, default)), len(sigma))
    if axis is None:
        return "axis_invalid"
    return _Plan(data=[0], attributes={name: ir.AttrInt64(name, sigma[axis])}, outputs=[sigma])


def _plan_concat(node: ir.Node, sigma: Perm, opset: int) -> _Plan | str:
    plan = _plan_axis(node, sigma, opset, default=0)
    if isinstance(plan, _Plan):
        plan.data = [i for i, v in enumerate(node.inputs) if v is not None]
    return plan


def _plan_split(node: ir.Node, sigma: Perm, opset: int) -> _Plan | str:
    plan = _plan_axis(node, sigma, opset, default=0)
    if isinstance(plan, _Plan):
        plan.outputs = [sigma] * len(node.outputs)
    return plan


def _plan_softmax(node: ir.Node, sigma: Perm, opset: int) -> _Plan | str:
    if opset < 13:  # before 13 the op flattens to 2-D at ``axis``: not a per-axis operation
        return "softmax_coerced_2d"
    return _plan_axis(node, sigma, opset, default=-1)


def _plan_arg(node: ir.Node, sigma: Perm, opset: int) -> _Plan | str:
    plan = _plan_axis(node, sigma, opset, default=0)
    if isinstance(plan, _Plan):
        axis = _normalize(int(attr(node, "axis", 0)), len(sigma))
        plan.outputs = [_reduced_perm(sigma, [axis], bool(attr(node, "keepdims", 1)))]
    return plan


def _reduced_perm(sigma: Perm, axes: list[int], keepdims: bool) -> Perm | None:
    """``rho`` for a reduction over old ``axes``: ``sigma`` when dims are kept, else the order of the kept axes."""
    if keepdims:
        return None if len(axes) == len(sigma) else sigma
    kept = [a for a in range(len(sigma)) if a not in axes]
    order = sorted(sigma[a] for a in kept)
    rho = tuple(order.index(sigma[a]) for a in kept)
    return None if _is_identity(rho) else rho


def _plan_reduce(node: ir.Node, sigma: Perm, opset: int) -> _Plan | str:
    rank = len(sigma)
    keepdims = bool(attr(node, "keepdims", 1))
    plan = _Plan(data=[0])
    axes_as_input = opset >= _AXES_INPUT_SINCE.get(node.op_type, 18)
    if axes_as_input:
        if len(node.inputs) > 1 and node.inputs[1] is not None:
            array = _constant(node.inputs[1])
            if array is None:
                return "axes_not_constant"
            axes = [int(a) for a in np.asarray(array).reshape(-1)]
        else:
            axes = []
    else:
        axes = [int(a) for a in attr(node, "axes", [])]
    if not axes:
        if bool(attr(node, "noop_with_empty_axes", 0)):
            plan.outputs = [sigma]
        else:  # reduce everything: the result has no layout (a scalar, or all 1s)
            plan.outputs = [None]
        return plan
    renamed = _rename_axes(axes, sigma)
    if renamed is None:
        return "axes_invalid"
    if axes_as_input:
        plan.constants[1] = np.array(renamed, np.int64)
    else:
        plan.attributes["axes"] = ir.AttrInt64s("axes", renamed)
    old = [_normalize(a, rank) for a in axes]
    plan.outputs = [_reduced_perm(sigma, old, keepdims)]
    return plan


def _plan_pad(node: ir.Node, sigma: Perm, opset: int) -> _Plan | str:
    if opset < 11:
        return "legacy_form"
    rank = len(sigma)
    plan = _Plan(data=[0], outputs=[sigma])
    if len(node.inputs) > 3 and node.inputs[3] is not None:  # Pad-18 axes
        array = _constant(node.inputs[3])
        if array is None:
            return "axes_not_constant"
        renamed = _rename_axes(np.asarray(array).reshape(-1).tolist(), sigma)
        if renamed is None:
            return "axes_invalid"
        plan.constants[3] = np.array(renamed, array.dtype)
        return plan
    pads = _constant(node.inputs[1]) if len(node.inputs) > 1 else None
    if pads is None:
        return "pads_not_constant"
    pads = np.asarray(pads).reshape(-1)
    if pads.size != 2 * rank:
        return "pads_invalid"
    plan.constants[1] = np.concatenate([_permute_per_axis(pads[:rank], sigma), _permute_per_axis(pads[rank:], sigma)])
    return plan


def _plan_slice(node: ir.Node, sigma: Perm, opset: int) -> _Plan | str:
    if opset < 10:
        return "legacy_form"
    plan = _Plan(data=[0], outputs=[sigma])
    if len(node.inputs) > 3 and node.inputs[3] is not None:
        array = _constant(node.inputs[3])
        if array is None:
            return "axes_not_constant"
        axes = np.asarray(array).reshape(-1).tolist()
        dtype = array.dtype
    else:
        starts = _constant(node.inputs[1]) if len(node.inputs) > 1 else None
        if starts is None:
            shape = node.inputs[1].shape if len(node.inputs) > 1 and node.inputs[1] is not None else None
            if shape is None or len(shape) != 1 or not isinstance(shape[0], int):
                return "axes_unknown"
            count = shape[0]
        else:
            count = int(np.asarray(starts).size)
        axes, dtype = list(range(count)), np.dtype(np.int64)
    renamed = _rename_axes(axes, sigma)
    if renamed is None:
        return "axes_invalid"
    plan.constants[3] = np.array(renamed, dtype)
    return plan


def _plan_resize(node: ir.Node, sigma: Perm, opset: int) -> _Plan | str:
    if opset < 11:
        return "legacy_form"
    if attr(node, "axes") is not None:
        return "resize_axes"
    rank = len(sigma)
    plan = _Plan(data=[0], outputs=[sigma])
    for index in (2, 3):  # scales, sizes
        value = node.inputs[index] if len(node.inputs) > index else None
        if value is None:
            continue
        array = _constant(value)
        if array is None:
            return "scales_not_constant"
        flat = np.asarray(array).reshape(-1)
        if flat.size == 0:
            continue
        if flat.size != rank:
            return "scales_invalid"
        new = _permute_per_axis(flat, sigma)
        # onnxruntime's linear/cubic kernels resize the two innermost axes (or NHWC's 1, 2) only.
        if attr(node, "mode", "nearest") != "nearest" and index == 2 and any(new[: rank - 2] != 1):
            return "resize_outer_axes"
        if attr(node, "mode", "nearest") != "nearest" and index == 3:
            return "resize_sizes"
        plan.constants[index] = new
    roi = node.inputs[1] if len(node.inputs) > 1 else None
    if roi is not None:
        array = _constant(roi)
        if array is None:
            return "roi_not_constant"
        flat = np.asarray(array).reshape(-1)
        if flat.size == 2 * rank:
            plan.constants[1] = np.concatenate(
                [_permute_per_axis(flat[:rank], sigma), _permute_per_axis(flat[rank:], sigma)]
            )
        elif flat.size:
            return "roi_invalid"
    return plan


def _plan_quantize(node: ir.Node, sigma: Perm, opset: int) -> _Plan | str:
    if int(attr(node, "block_size", 0)):
        return "blocked_quantization"
    scale = _constant(node.inputs[1]) if len(node.inputs) > 1 else None
    if scale is None:
        return "scale_not_constant"
    if scale.size == 1 and scale.ndim <= 1:
        return _Plan(data=[0], outputs=[sigma])
    return _plan_axis(node, sigma, opset, default=1)


def _squeeze_axes(node: ir.Node, opset: int) -> list[int] | str:
    """Squeeze/Unsqueeze ``axes``: an attribute before opset 13, a constant input from 13."""
    if opset < 13:
        axes = attr(node, "axes")
        return "axes_unknown" if axes is None else [int(a) for a in axes]
    if len(node.inputs) < 2 or node.inputs[1] is None:
        return "axes_unknown"  # Squeeze of every 1-sized axis: which ones depends on the shape
    array = _constant(node.inputs[1])
    if array is None:
        return "axes_not_constant"
    return [int(a) for a in np.asarray(array).reshape(-1)]


def _plan_squeeze(node: ir.Node, sigma: Perm, opset: int) -> _Plan | str:
    axes = _squeeze_axes(node, opset)
    if isinstance(axes, str):
        return axes
    renamed = _rename_axes(axes, sigma)
    if renamed is None:
        return "axes_invalid"
    plan = _Plan(data=[0], outputs=[_reduced_perm(sigma, [_normalize(a, len(sigma)) for a in axes], False)])
    if opset < 13:
        plan.attributes["axes"] = ir.AttrInt64s("axes", renamed)
    else:
        plan.constants[1] = np.array(renamed, np.int64)
    return plan


def _plan_unsqueeze(node: ir.Node, sigma: Perm, opset: int) -> _Plan | str:
    """The new axes stay where they are; the old ones keep their order around them (``rho`` below)."""
    axes = _squeeze_axes(node, opset)
    if isinstance(axes, str):
        return axes
    rank = len(sigma) + len(axes)
    inserted = [_normalize(a, rank) for a in axes]
    if any(a is None for a in inserted) or len(set(inserted)) != len(inserted):
        return "axes_invalid"
    kept = [j for j in range(rank) if j not in inserted]
    # Old output axis kept[k] is input axis k of the Unsqueeze, i.e. axis sigma[k] of the new (untransposed) input.
    source = {position: sigma[k] for k, position in enumerate(kept)}
    reader = _sole_transpose_reader(node.outputs[0], rank)
    if reader is not None and [source[a] for a in reader if a in source] == list(range(len(sigma))):
        # Insert the new axes where the Transpose that reads the result would put them: it then cancels.
        rho, axes_new = _inverse(reader), [i for i, a in enumerate(reader) if a not in source]
    else:  # the new axes stay where they are; the old ones keep their order around them
        rho = tuple(kept[sigma[kept.index(j)]] if j in source else j for j in range(rank))
        axes_new = inserted
    plan = _Plan(data=[0], outputs=[None if _is_identity(tuple(rho)) else tuple(rho)])
    if sorted(axes_new) != sorted(inserted):
        if opset < 13:
            plan.attributes["axes"] = ir.AttrInt64s("axes", axes_new)
        else:
            plan.constants[1] = np.array(axes_new, np.int64)
    return plan


def _sole_transpose_reader(value: ir.Value, rank: int) -> Perm | None:
    """The perm of the one Transpose that reads ``value`` (and nothing else does), else None."""
    uses = value.uses()
    if len(uses) != 1 or value.is_graph_output():
        return None
    perm = _transpose_perm(uses[0].node)
    return perm if perm is not None and len(perm) == rank else None


PLANNERS: dict[str, Planner] = {
    **{op: _plan_unary for op in _UNARY},
    **{op: _plan_broadcast for op in _BROADCAST},
    **{op: _plan_reduce for op in _REDUCE},
    "Concat": _plan_concat,
    "Split": _plan_split,
    "Softmax": _plan_softmax,
    "LogSoftmax": _plan_softmax,
    "Hardmax": _plan_softmax,
    "ArgMax": _plan_arg,
    "ArgMin": _plan_arg,
    "Pad": _plan_pad,
    "Slice": _plan_slice,
    "Resize": _plan_resize,
    "QuantizeLinear": _plan_quantize,
    "DequantizeLinear": _plan_quantize,
    "Squeeze": _plan_squeeze,
    "Unsqueeze": _plan_unsqueeze,
}


def _plan(node: ir.Node, sigma: Perm, opset: int) -> _Plan | str:
    if node.domain not in ("", "ai.onnx"):
        return f"blocked_by_{_snake(node.op_type)}"
    planner = PLANNERS.get(node.op_type)
    if planner is None:
        return f"blocked_by_{_snake(node.op_type)}"
    plan = planner(node, sigma, opset)
    if isinstance(plan, _Plan) and len(plan.outputs) != len(node.outputs):
        return "unsupported_outputs"
    return plan


# --------------------------------------------------------------------------------------------- the rewriter
class _Rewriter:
    """One graph (or function) of one pass call: sinks, hoists and merges, counting into the report."""

    def __init__(self, graph: ir.Graph | ir.Function, opset: int, names: NameAllocator, report: PassReport):
        # A function's nodes belong to its inner graph; it holds no initializers (constants become Constant nodes).
        self.in_function = isinstance(graph, ir.Function)
        self.graph = graph.graph if isinstance(graph, ir.Function) else graph
        self.opset, self.names, self.report = opset, names, report

    # -- small edits
    def constant(self, array: np.ndarray, base: str) -> ir.Value:
        name = self.names(base)
        tensor = ir.tensor(array, name=name)
        if not self.in_function:
            value = ir.Value(name=name, shape=ir.Shape(array.shape), type=ir.TensorType(tensor.dtype),
                             const_value=tensor)
            self.graph.register_initializer(value)
            return value
        node = ir.Node("", "Constant", [], [ir.AttrTensor("value", tensor)], name=self.names(f"{name}_node"))
        node.outputs[0].name = name
        node.outputs[0].shape = ir.Shape(array.shape)
        node.outputs[0].type = ir.TensorType(tensor.dtype)
        self.graph.insert_before(next(iter(self.graph)), node)
        return node.outputs[0]

    def transpose_node(self, source: ir.Value, perm: Perm, output: ir.Value | None = None) -> ir.Node:
        base = source.name or "transposed"
        if output is None:
            shape = None if source.shape is None else ir.Shape([source.shape[a] for a in perm])
            output = ir.Value(name=self.names(f"{base}_transposed"), shape=shape, type=source.type)
        return ir.Node("", "Transpose", [source], [ir.AttrInt64s("perm", list(perm))], outputs=[output],
                       name=self.names(f"{base}_Transpose"))

    def remove_if_dead(self, node: ir.Node) -> bool:
        if node.graph is not self.graph or any(o.uses() or o.is_graph_output() for o in node.outputs):
            return False
        self.graph.remove(node, safe=True)
        return True

    def local_transpose(self, value: ir.Value | None) -> tuple[ir.Node, Perm] | None:
        """The Transpose of this graph that produces ``value``, with its perm."""
        producer = None if value is None else value.producer()
        if producer is None or producer.graph is not self.graph:
            return None
        perm = _transpose_perm(producer)
        return None if perm is None else (producer, perm)

    # -- merge
    def merge(self, node: ir.Node) -> bool:
        """``Transpose(Transpose(x, p1), p2)`` -> ``Transpose(x, p1[p2])``, or nothing when that is the identity."""
        outer = _transpose_perm(node)
        inner = self.local_transpose(node.inputs[0])
        if outer is None or inner is None or len(inner[1]) != len(outer):
            return False
        producer, first = inner
        source = producer.inputs[0]
        composed = _compose(first, outer)
        if _is_identity(composed):
            output = node.outputs[0]
            if output.is_graph_output() and (source.is_graph_input() or source.is_graph_output()):
                return False  # no Identity-free way to keep both names; collapse-layout/eliminate-identity decide
            if output.shape is not None:  # the same tensor; keep what was known (a graph output's shape)
                source.shape = output.shape
                source.type = source.type or output.type
            replace_value(output, source, self.names)
            self.graph.remove(node, safe=True)
        else:
            node.replace_input_with(0, source)
            node.attributes["perm"] = ir.AttrInt64s("perm", list(composed))
            self.report.changes["transposes_merged"] += 1
        self.remove_if_dead(producer)
        return True

    # -- sink
    def sink(self, node: ir.Node, *, apply: bool = True) -> str | None:
        """Push a Transpose feeding ``node`` below it; the skip key when it cannot (or would add Transposes)."""
        found = next(
            (t for v in node.inputs if (t := self.local_transpose(v)) is not None and len(t[1]) > 0), None
        )
        if found is None:
            return "no_transpose"
        _, perm = found
        rank = len(perm)
        plan = _plan(node, perm, self.opset)
        if isinstance(plan, str):
            return plan
        if not any((t := self.local_transpose(node.inputs[i])) is not None and t[1] == perm for i in plan.data):
            return "transpose_not_on_data_input"
        inverse = _inverse(perm)
        added, released = 0, {}
        for index in plan.data:
            value = node.inputs[index]
            transposed = self.local_transpose(value)
            if transposed is not None and transposed[1] == perm:
                released[id(transposed[0])] = transposed[0]
            elif (array := _constant(value)) is not None:
                if array.ndim > rank:
                    return "operand_rank_higher"
            elif _rank(value) == rank:
                added += 1
            else:
                return "operand_rank_unknown"
        data = set(plan.data)
        dying = sum(
            1 for t in released.values()
            if not t.outputs[0].is_graph_output()
            and all(use.node is node and use.idx in data for use in t.outputs[0].uses())
        )
        added += sum(1 for out, rho in zip(node.outputs, plan.outputs, strict=True)
                     if rho is not None and (out.uses() or out.is_graph_output()))
        if added > dying:
            return "adds_transposes"
        # A move that removes nothing must not make the Transpose copy more data (an upsampling Resize, a
        # broadcast): if no partner cancels it below, the model would be slower. Pairs around such ops cancel
        # by hoisting instead.
        if added == dying and (ratio := _size_ratio(node.outputs[0], node.inputs[plan.data[0]])) is not None \
                and ratio > 1:
            return "grows_data"
        if not apply:
            return None
        for index in plan.data:
            self._relay_input(node, index, inverse, cancels=lambda p: p == perm)
        self._apply_constants(node, plan)
        for output, rho in zip(list(node.outputs), plan.outputs, strict=True):
            old_shape = output.shape
            if rho is None:
                continue
            if old_shape is not None and len(old_shape) == len(rho):
                new_shape = [None] * len(rho)
                for j, axis in enumerate(rho):
                    new_shape[axis] = old_shape[j]
                output.shape = ir.Shape(new_shape)
            elif old_shape is not None:
                output.shape = None
            if not output.uses() and not output.is_graph_output():
                continue
            restored = ir.Value(name=self.names(f"{output.name or 'out'}_restored"), shape=old_shape, type=output.type)
            replace_value(output, restored, self.names)
            self.graph.insert_after(node, self.transpose_node(output, rho, restored))
        for transpose in released.values():
            self.remove_if_dead(transpose)
        self.report.changes["transposes_sunk"] += 1
        return None

    def _relay_input(
        self, node: ir.Node, index: int, perm: Perm, *, cancels: Callable[[Perm], bool]
    ) -> ir.Node | None:
        """Feed ``node``'s input ``index`` through ``Transpose(perm)``; returns the Transpose it bypassed, if any.

        An input that is a local Transpose whose permutation ``cancels(p)`` is bypassed (read from before it); a
        constant is re-laid out (right-aligned to ``len(perm)`` dims, as broadcasting reads it); anything else gets
        a new Transpose inserted before ``node``.
        """
        value = node.inputs[index]
        transposed = self.local_transpose(value)
        if transposed is not None and cancels(transposed[1]):
            node.replace_input_with(index, transposed[0].inputs[0])
            return transposed[0]
        if (array := _constant(value)) is not None:
            aligned = array.reshape((1,) * (len(perm) - array.ndim) + array.shape)
            new = self.constant(np.ascontiguousarray(np.transpose(aligned, perm)), f"{value.name or 'c'}_relaid")
            node.replace_input_with(index, new)
        else:
            inserted = self.transpose_node(value, perm)
            self.graph.insert_before(node, inserted)
            node.replace_input_with(index, inserted.outputs[0])
        return None

    def _apply_constants(self, node: ir.Node, plan: _Plan) -> None:
        for name, attribute in plan.attributes.items():
            node.attributes[name] = attribute
        for index, array in plan.constants.items():
            if len(node.inputs) <= index:
                node.resize_inputs(index + 1)
            old = node.inputs[index]
            base = f"{old.name}_permuted" if old is not None and old.name else f"{node.name or node.op_type}_axes"
            node.replace_input_with(index, self.constant(array, base))

    # -- hoist
    def hoist(self, node: ir.Node) -> bool:
        """Move Transpose ``node`` above its producer when that removes Transposes or lands on graph inputs."""
        perm = _transpose_perm(node)
        value = node.inputs[0]
        producer = value.producer()
        if perm is None or producer is None or producer.graph is not self.graph or is_op(producer, "Transpose"):
            return False
        if len(producer.outputs) != 1 or value.is_graph_output():
            return False
        if any(use.node is not node for use in value.uses()):
            return False
        rank, sigma = len(perm), _inverse(perm)
        plan = _plan(producer, sigma, self.opset)
        if isinstance(plan, str) or plan.outputs != [sigma]:
            return False
        added, boundary, dying = 0, True, 0
        seen: set[int] = set()
        for index in plan.data:
            operand = producer.inputs[index]
            transposed = self.local_transpose(operand)
            if transposed is not None and _is_identity(_compose(transposed[1], perm)):
                t = transposed[0]
                if id(t) not in seen and not t.outputs[0].is_graph_output() and all(
                    use.node is producer and use.idx in plan.data for use in t.outputs[0].uses()
                ):
                    dying += 1
                seen.add(id(t))
            elif (array := _constant(operand)) is not None:
                if array.ndim > rank:
                    return False
            elif _rank(operand) == rank:
                added += 1
                boundary = boundary and operand.is_graph_input()
            else:
                return False
        net = added - 1 - dying
        if net > 0 or (net == 0 and not (added and boundary)):
            return False
        # Onto a graph input only when the Transpose does not get more to copy there (Pad: less; Slice: more).
        if net == 0 and (ratio := _size_ratio(producer.inputs[plan.data[0]], value)) is not None and ratio > 1:
            return False
        released = []
        for index in plan.data:
            bypassed = self._relay_input(producer, index, perm, cancels=lambda p: _is_identity(_compose(p, perm)))
            if bypassed is not None:
                released.append(bypassed)
        self._apply_constants(producer, plan)
        output = node.outputs[0]
        value.shape = output.shape
        replace_value(output, value, self.names)
        self.graph.remove(node, safe=True)
        for transpose in released:
            self.remove_if_dead(transpose)
        self.report.changes["transposes_hoisted"] += 1
        return True

    # -- driver
    def run(self, max_rounds: int) -> None:
        for _ in range(max_rounds):
            changed = False
            for node in list(self.graph):
                if node.graph is not self.graph:
                    continue  # removed by an earlier rewrite of this round
                if _transpose_perm(node) is not None:
                    changed = self.merge(node) or changed
                elif self.sink(node) is None:
                    changed = True
            if not changed:
                break
        for _ in range(max_rounds):
            changed = False
            for node in reversed(list(self.graph)):
                if node.graph is self.graph and _transpose_perm(node) is not None:
                    changed = (self.merge(node) or self.hoist(node)) or changed
            if not changed:
                break

    def count_blocked(self) -> None:
        """One skip per Transpose left: why it cannot sink into (each of) its readers."""
        for node in self.graph:
            if not is_op(node, "Transpose"):
                continue
            if _transpose_perm(node) is None:
                self.report.skipped["perm_unknown"] += 1
                continue
            output = node.outputs[0]
            if output.is_graph_output():
                self.report.skipped["graph_output"] += 1
                continue
            reasons = set()
            for use in output.uses():
                if use.node.graph is not self.graph:
                    reasons.add("read_in_subgraph")
                elif (reason := self.sink(use.node, apply=False)) is not None:
                    reasons.add(reason)
                else:  # it could move down, but hoisting put it on the input, where nothing is left to cancel
                    reasons.add("graph_input" if node.inputs[0].is_graph_input() else "no_partner")
            for reason in sorted(reasons):
                self.report.skipped[reason] += 1


class SinkTransposesPass(SftPass):
    """Push Transposes through ops that commute with a permutation until they cancel or merge.

    Sinks each Transpose below the ops that read it (elementwise unary and broadcasting ops, Clip, Cast,
    Concat, Split, Slice, Pad, Reduce*, ArgMax/ArgMin, Softmax/LogSoftmax/Hardmax from opset 13, Resize,
    Quantize/DequantizeLinear, Squeeze/Unsqueeze with known axes), renaming their axes and re-laying out
    constant operands, as long as that does not add Transposes; two Transposes in a row compose into one or
    vanish. Then hoists Transposes above an op when that removes Transposes or moves one onto a graph input
    (formulas in the module docstring). Runs in the main graph, If/Loop/Scan bodies and model-local
    functions, each on its own (values captured from an outer scope are left alone). Graph inputs and
    outputs keep their layout.

    Declines (``skipped`` keys, one per Transpose left and reason): ``perm_unknown`` (no ``perm`` and an
    unknown rank), ``blocked_by_<op>`` (a reader that does
    not commute with a permutation, e.g. ``blocked_by_conv``, ``blocked_by_reshape``), ``adds_transposes``
    (crossing would need more Transposes on other operands or outputs than it removes), ``grows_data`` (a
    move that removes nothing would make the Transpose copy a larger tensor), ``graph_output``,
    ``graph_input`` (a Transpose hoisted onto a graph input: the boundary), ``no_partner`` (free to move, but
    nothing to cancel with),
    ``read_in_subgraph``, ``operand_rank_unknown`` / ``operand_rank_higher`` (an operand that broadcasts
    to another rank), ``axes_not_constant``, ``pads_not_constant``, ``scales_not_constant``,
    ``roi_not_constant``, ``scale_not_constant``, ``axes_invalid``, ``axes_unknown``, ``axis_invalid``,
    ``pads_invalid``, ``scales_invalid``, ``roi_invalid``, ``softmax_coerced_2d`` (Softmax before opset 13),
    ``legacy_form`` (Pad/Slice/Resize before opsets 11/10/11), ``resize_axes``, ``resize_outer_axes`` /
    ``resize_sizes`` (linear/cubic Resize would move to axes onnxruntime does not resize),
    ``blocked_quantization``, ``unsupported_outputs``; and ``no_transpose_removed`` (once per model: moves
    were possible but none ended in a cancellation or on a graph input, so the model is restored unchanged).

    Statistics: changes ``transposes_removed`` (Transpose nodes deleted), ``transposes_merged`` (two composed
    into one), ``transposes_sunk`` (moves below an op), ``transposes_hoisted`` (moves above an op).

    Numerics: EXACT (data movement only; the same arithmetic on the same numbers).

    Args:
        max_rounds: Sweeps over a graph per direction before stopping (each sweep moves every Transpose as far
            as it goes in topological order; a few suffice).
    """

    name = "sink-transposes"

    def __init__(self, *, max_rounds: int = 8) -> None:
        if not isinstance(max_rounds, int) or max_rounds < 1:
            raise PassConfigError(f"sink-transposes: max_rounds must be a positive integer, got {max_rounds!r}")
        self.max_rounds = max_rounds

    def rewrite(self, model: ir.Model, report: PassReport) -> None:
        """Sink, merge and hoist in every graph, then count the Transposes left and why.

        When no Transpose was removed or hoisted onto a graph input in the end, the moves bought nothing (and
        may cost: a Transpose now copies another tensor), so the model is restored as it was, with the skip
        ``no_transpose_removed``. (A hoist onto an input lets ``fold-pad``/``fold-input-norm`` reach a Conv.)
        """
        if not any(is_op(node, "Transpose") for graph in all_graphs(model) for node in graph):
            return
        original = io.to_bytes(model)
        names = NameAllocator.for_model(model, node_names=True)
        for graph in list(all_graphs(model)):
            opset = opset_version(model)
            if isinstance(graph, ir.Function):
                opset = graph.opset_imports.get("", opset)
            rewriter = _Rewriter(graph, opset, names, report)
            before = sum(1 for n in rewriter.graph if is_op(n, "Transpose"))
            rewriter.run(self.max_rounds)
            after = sum(1 for n in rewriter.graph if is_op(n, "Transpose"))
            if after > before:  # the cost model forbids this; a bug if it ever happens
                raise AssertionError(f"sink-transposes added Transposes ({before} -> {after}) in {graph.name!r}")
            if after < before:
                report.changes["transposes_removed"] += before - after
            rewriter.count_blocked()
        if report.changes and not (report.changes["transposes_removed"] or report.changes["transposes_hoisted"]):
            restore_model(model, io.load(original, validate=False))
            report.changes.clear()
            report.skipped["no_transpose_removed"] += 1
