"""Channel-dependency analysis for structured pruning: which channels must be removed together, and how.

Model: every tensor that carries prunable channels gets a *space*, its channel axis with one *element* per
channel. Elements that must be removed together are joined in a union-find structure; each resulting
*class* is the unit of pruning. The rules, applied to the main graph in topological order:

* **Sources** create fresh elements: the output channels of a Conv (filters, ``W[o]``), and the output
  features of a Gemm (``B[:, n]``, ``B[n]`` with ``transB``) or MatMul with a constant 2-D ``B``.
* **Channel-wise ops** keep the elements (same ids, maybe another axis): BatchNormalization and
  InstanceNormalization (their parameters are sliced), elementwise unary ops (Relu, Clip, Sigmoid,
  LeakyRelu, HardSwish, ...), pooling (MaxPool, AveragePool, Global*Pool, Reduce* over other axes), Resize
  (channel scale 1; ``sizes`` rewritten), Pad (channel pads 0), Transpose, Squeeze/Unsqueeze.
* **Elementwise binary ops** (Add, Sub, Mul, Div, Max, Min, ...): two channel tensors are *coupled*:
  element ``i`` of one is joined with element ``i`` of the other (residual groups are pruned jointly or not
  at all); a per-channel constant operand is sliced; a broadcast operand (size 1) is left alone.
* **Concat** along channels: output element ``offset_k + i`` is joined with element ``i`` of input ``k``
  (offset bookkeeping happens by construction: the consumer sees the concatenated kept channels).
  **Split/Slice** along channels: outputs view contiguous ranges of the input's elements; split sizes and
  slice bounds are rewritten.
* **Grouped convs**: input channels and output channels of a group form one element set, so a group goes
  as a whole and the group count drops; a depthwise conv's channels follow their producer.
* **Flatten / flattening Reshape** into Gemm/MatMul: feature ``c * H * W + j`` is joined with channel
  ``c`` (one channel maps to ``H * W`` features); a Reshape that flattens is rewritten as ``Flatten``.
* **Consumers** slice their weights: Conv ``W[:, c]`` (group 1), ConvTranspose ``W[c]``, Gemm/MatMul rows.

Anything else *blocks* the elements it touches, with a reason: ``channel_reaches_output`` (a graph
output), ``unsupported_consumer:<op>`` (an op the rules do not cover, or do not cover with these
attributes), ``channel_shuffle`` (Reshape-Transpose-Reshape), ``channel_from_unprunable_producer:<op>``
(coupled to channels nothing can remove, e.g. a graph input), ``weight_not_constant``,
``shape_unknown``, ``in_subgraph`` (read inside an If/Loop/Scan body). Blocked classes are never removed.
Idea after Fang et al., "DepGraph: Towards Any Structural Pruning" (CVPR 2023); the code is our own.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from collections import defaultdict

import numpy as np
import onnx_ir as ir

from sftonnx.analysis import ShapeTable, infer_tensor_shapes, topological_order
from sftonnx.ir_utils import attr
from sftonnx.passes._union_find import UnionFind
from sftonnx.passes.pruning import _edits
from sftonnx.passes.pruning._graph import ConstantReader, is_float

__all__ = ["ChannelGraph", "Source", "Space"]

logger = logging.getLogger(__name__)

UNARY_OPS = frozenset({
    "Relu", "LeakyRelu", "PRelu", "Sigmoid", "HardSigmoid", "HardSwish", "Tanh", "Elu", "Selu", "Celu", "Gelu",
    "Softplus", "Softsign", "Mish", "Swish", "ThresholdedRelu", "Identity", "Dropout", "Abs", "Neg", "Exp", "Log",
    "Sqrt", "Reciprocal", "Erf", "Floor", "Ceil", "Round", "Sign", "Sin", "Cos", "Cast", "Clip", "Not",
    "IsNaN", "IsInf", "Shrink",
})
ELEMENTWISE_OPS = frozenset({
    "Add", "Sub", "Mul", "Div", "Max", "Min", "Sum", "Mean", "Pow", "Where", "Equal", "Greater", "Less",
    "GreaterOrEqual", "LessOrEqual", "And", "Or", "Xor", "Mod",
})
POOL_OPS = frozenset({"MaxPool", "AveragePool", "LpPool", "GlobalAveragePool", "GlobalMaxPool", "GlobalLpPool"})
REDUCE_OPS = frozenset({
    "ReduceMean", "ReduceMax", "ReduceMin", "ReduceSum", "ReduceProd", "ReduceL1", "ReduceL2",
    "ReduceLogSum", "ReduceLogSumExp", "ReduceSumSquare",
})
#: Reductions that took ``axes`` as an attribute before this opset (and as an input from it on).
_REDUCE_AXES_INPUT = {"ReduceSum": 13}


@dataclasses.dataclass
class Space:
    """The channel axis of one tensor: elements ``base .. base + size - 1`` of the union-find.

    Attributes:
        value: The tensor.
        axis: Its channel axis (non-negative).
        size: Number of channels.
        base: First element id.
    """

    value: ir.Value
    axis: int
    size: int
    base: int

    @property
    def elements(self) -> np.ndarray:
        """Element ids of the channels, in channel order."""
        return np.arange(self.base, self.base + self.size)


@dataclasses.dataclass
class Source:
    """A layer whose output channels can be removed (Conv filters, Gemm/MatMul output features).

    Attributes:
        node: The Conv/Gemm/MatMul node.
        weight: Its weight array (original values).
        out_axis: Axis of ``weight`` that holds output channels.
        space: The output's channel space.
        index: Position in :attr:`ChannelGraph.sources`.
    """

    node: ir.Node
    weight: np.ndarray
    out_axis: int
    space: Space
    index: int

    @property
    def name(self) -> str:
        """The node's name, else its weight's name."""
        return self.node.name or (self.node.inputs[1].name if self.node.inputs[1] is not None else "") or "?"


class ChannelGraph:
    """Channel spaces, element classes, blocking reasons and the edits that removing channels requires.

    Read-only: the analysis records typed edits (:mod:`sftonnx.passes.pruning._edits`); applying a removal is
    :func:`sftonnx.passes.pruning.removal.remove_channels`.

    Args:
        model: The model to analyse (not modified).
        input_shapes: Static shapes for dynamic inputs (shape inference fills other batch-like dims with 1).
    """

    def __init__(self, model: ir.Model, input_shapes: dict[str, tuple[int, ...]] | None = None) -> None:
        self.model = model
        self.const = ConstantReader(model)
        try:
            self.shapes: ShapeTable | None = infer_tensor_shapes(model, input_shapes)
        except Exception as error:  # analysis degrades to the shapes recorded on values
            logger.debug("shape inference failed: %s", error)
            self.shapes = None
        self.spaces: dict[ir.Value, Space] = {}
        self.sources: list[Source] = []
        self.edits: list[_edits.Edit] = []  # what removing channels needs at each node, in graph order
        self._classes: UnionFind[int] = UnionFind()
        self._reasons: dict[int, set[str]] = {}
        self.subgraph_layers = 0
        self._analyse()
        self.roots = np.array([self.find(e) for e in range(len(self._classes))], dtype=np.int64)

    # ----------------------------------------------------------------------------------- union-find
    def _new(self, size: int) -> int:
        base = len(self._classes)
        self._classes.add(range(base, base + size))
        return base

    def find(self, element: int) -> int:
        """The class (root element) of ``element``."""
        return self._classes.find(element)

    def _union(self, a: int, b: int) -> None:
        ra, rb = sorted((self.find(a), self.find(b)))  # the smaller element stays the root
        if self._classes.union(ra, rb) is not None and rb in self._reasons:
            self._reasons.setdefault(ra, set()).update(self._reasons.pop(rb))

    def _union_spaces(self, a: Space, b: Space) -> None:
        if a.base == b.base:
            return
        for offset in range(min(a.size, b.size)):
            self._union(a.base + offset, b.base + offset)

    def _block(self, space: Space, reason: str) -> None:
        for element in range(space.base, space.base + space.size):
            self._reasons.setdefault(self.find(element), set()).add(reason)

    def reasons(self, root: int) -> set[str]:
        """Why the class ``root`` cannot be removed (empty when it can)."""
        return self._reasons.get(root, set())

    # ----------------------------------------------------------------------------------------- spaces
    def space(self, value: ir.Value | None) -> Space | None:
        """The channel space of ``value``, if it carries prunable channels."""
        return None if value is None else self.spaces.get(value)

    def _new_space(self, value: ir.Value, axis: int, size: int) -> Space:
        space = Space(value, axis, size, self._new(size))
        self.spaces[value] = space
        return space

    def _alias(self, value: ir.Value, axis: int, of: Space, offset: int = 0, size: int | None = None) -> Space:
        space = Space(value, axis, of.size if size is None else size, of.base + offset)
        self.spaces[value] = space
        return space

    def _opaque(self, value: ir.Value, axis: int, size: int) -> Space:
        producer = value.producer()
        origin = producer.op_type if producer is not None else "input"
        space = self._new_space(value, axis, size)
        self._block(space, f"channel_from_unprunable_producer:{origin}")
        return space

    def dims(self, value: ir.Value | None) -> tuple | None:
        """Inferred dims of ``value`` (ints, symbols or ``None``), or ``None`` when the rank is unknown."""
        if value is None:
            return None
        info = self.shapes.info(value) if self.shapes is not None else None
        if info is not None and info.shape is not None:
            return tuple(info.shape)
        if value.shape is not None:
            return tuple(d if isinstance(d, int) else None for d in value.shape.dims)
        return None

    def static(self, value: ir.Value | None) -> tuple[int, ...] | None:
        """Static shape of ``value``, or ``None``."""
        dims = self.dims(value)
        if dims is None or not all(isinstance(d, int) for d in dims):
            return None
        return dims  # type: ignore[return-value]

    # --------------------------------------------------------------------------------------- analysis
    def _analyse(self) -> None:
        handlers = {
            "Conv": self._conv, "ConvTranspose": self._conv_transpose, "Gemm": self._gemm, "MatMul": self._matmul,
            "BatchNormalization": self._normalization, "InstanceNormalization": self._normalization,
            "Concat": self._concat, "Split": self._split, "Slice": self._slice, "Flatten": self._flatten,
            "Reshape": self._reshape, "Transpose": self._transpose, "Squeeze": self._squeeze,
            "Unsqueeze": self._unsqueeze, "Resize": self._resize, "Upsample": self._resize, "Pad": self._pad,
            "Shape": self._shape, "CastLike": self._cast_like, "Size": self._size,
        }
        for node in topological_order(self.model.graph):
            spaced = [v for v in node.inputs if v is not None and v in self.spaces]
            if node.domain not in ("", "ai.onnx"):
                self._block_inputs(node, f"unsupported_consumer:{node.op_type}")
                continue
            handler = handlers.get(node.op_type)
            if handler is None:
                if node.op_type in UNARY_OPS:
                    handler = self._unary
                elif node.op_type in ELEMENTWISE_OPS:
                    handler = self._elementwise
                elif node.op_type in POOL_OPS:
                    handler = self._pool
                elif node.op_type in REDUCE_OPS:
                    handler = self._reduce
            if handler is None:
                if spaced:
                    self._block_inputs(node, f"unsupported_consumer:{node.op_type}")
                continue
            if not spaced and handler not in (self._conv, self._gemm, self._matmul):
                continue
            handler(node)
        for value, space in self.spaces.items():
            if value.is_graph_output():
                self._block(space, "channel_reaches_output")
            if any(use.node.graph is not self.model.graph for use in value.uses()):
                self._block(space, "in_subgraph")
        for node in ir.traversal.RecursiveGraphIterator(self.model.graph):
            if node.graph is not self.model.graph and node.op_type in ("Conv", "Gemm", "MatMul"):
                self.subgraph_layers += 1

    def _block_inputs(self, node: ir.Node, reason: str) -> None:
        for value in node.inputs:
            space = self.space(value)
            if space is not None:
                self._block(space, reason)

    def _source(self, node: ir.Node, weight: np.ndarray, out_axis: int, space: Space) -> None:
        self.sources.append(Source(node, weight, out_axis, space, len(self.sources)))

    def _conv(self, node: ir.Node) -> None:
        x = node.inputs[0]
        xs = self.space(x)
        weight = self.const.array(node.inputs[1] if len(node.inputs) > 1 else None)
        group = int(attr(node, "group", 1))
        if weight is None or not is_float(weight) or weight.ndim < 3 or weight.shape[0] % group:
            self._block_inputs(node, "weight_not_constant")
            return
        if xs is not None and xs.axis != 1:
            self._block(xs, "unsupported_consumer:Conv")
            xs = None
        bias_value = node.inputs[2] if len(node.inputs) > 2 else None
        bias = self.const.array(bias_value)
        bias_ok = bias_value is None or (bias is not None and bias.shape == (weight.shape[0],))
        cout, cin_group = weight.shape[0], weight.shape[1]
        ys = None
        if bias_ok:
            ys = self._new_space(node.outputs[0], 1, cout)
            self._source(node, weight, 0, ys)
        if group > 1:
            if ys is None:
                if xs is not None:
                    self._block(xs, "bias_not_constant")
                return
            if xs is None:
                xs = self._opaque(x, 1, cin_group * group)
            if xs.size != cin_group * group:
                self._block(xs, "shape_unknown")
                self._block(ys, "shape_unknown")
            else:
                cout_group = cout // group
                for g in range(group):
                    anchor = ys.base + g * cout_group
                    for i in range(cout_group):
                        self._union(anchor, anchor + i)
                    for i in range(cin_group):
                        self._union(anchor, xs.base + g * cin_group + i)
        self.edits.append(_edits.ConvEdit(node, xs if group == 1 else None, ys, weight, bias, group))

    def _conv_transpose(self, node: ir.Node) -> None:
        xs = self.space(node.inputs[0])
        weight = self.const.array(node.inputs[1] if len(node.inputs) > 1 else None)
        if xs is None:
            return
        if weight is None or not is_float(weight) or int(attr(node, "group", 1)) != 1 or xs.axis != 1:
            self._block(xs, "unsupported_consumer:ConvTranspose")
            return
        self.edits.append(_edits.ConvTransposeEdit(node, xs, weight))

    def _gemm(self, node: ir.Node) -> None:
        a = node.inputs[0]
        weight = self.const.array(node.inputs[1] if len(node.inputs) > 1 else None)
        if weight is None or weight.ndim != 2 or not is_float(weight):
            self._block_inputs(node, "weight_not_constant")
            return
        trans_b = int(attr(node, "transB", 0))
        a_space = self.space(a)
        if a_space is not None and (int(attr(node, "transA", 0)) or a_space.axis != 1):
            self._block(a_space, "unsupported_consumer:Gemm")
            a_space = None
        features = weight.shape[0] if trans_b else weight.shape[1]
        c_value = node.inputs[2] if len(node.inputs) > 2 else None
        c = self.const.array(c_value)
        c_ok = c_value is None or (
            c is not None and c.ndim <= 2 and (c.ndim == 0 or c.shape[-1] in (1, features))
            and (c.ndim < 2 or c.shape[0] == 1)
        )
        ys = None
        if c_ok and node.outputs[0] is not None:
            ys = self._new_space(node.outputs[0], 1, features)
            self._source(node, weight, 0 if trans_b else 1, ys)
        self.edits.append(_edits.GemmEdit(node, a_space, ys, weight, c))

    def _matmul(self, node: ir.Node) -> None:
        a, b = node.inputs[0], node.inputs[1]
        weight = self.const.array(b)
        if weight is None or weight.ndim != 2 or not is_float(weight) or self.space(b) is not None:
            self._block_inputs(node, "unsupported_consumer:MatMul")
            return
        a_space = self.space(a)
        a_dims = self.dims(a)
        if a_space is not None and (a_dims is None or a_space.axis != len(a_dims) - 1):
            self._block(a_space, "unsupported_consumer:MatMul")
            a_space = None
        out_dims = self.dims(node.outputs[0])
        ys = None
        if out_dims is not None and len(out_dims) >= 2:
            ys = self._new_space(node.outputs[0], len(out_dims) - 1, weight.shape[1])
            self._source(node, weight, 1, ys)
        self.edits.append(_edits.MatMulEdit(node, a_space, ys, weight))

    def _normalization(self, node: ir.Node) -> None:
        xs = self.space(node.inputs[0])
        if xs is None:
            return
        count = 5 if node.op_type == "BatchNormalization" else 3
        params = [self.const.array(v) for v in node.inputs[1:count]]
        extra_outputs = any(o.uses() or o.is_graph_output() for o in node.outputs[1:])
        if (xs.axis != 1 or len(node.inputs) < count or extra_outputs
                or any(p is None or p.shape != (xs.size,) for p in params)):
            self._block(xs, f"unsupported_consumer:{node.op_type}")
            return
        self._alias(node.outputs[0], 1, xs)
        self.edits.append(_edits.NormalizationEdit(node, xs, params))  # type: ignore[arg-type]  # checked above

    def _unary(self, node: ir.Node) -> None:
        xs = self.space(node.inputs[0])
        others = [v for v in node.inputs[1:] if v is not None]
        if xs is None or any(v in self.spaces for v in others):
            self._block_inputs(node, f"unsupported_consumer:{node.op_type}")
            return
        if node.op_type == "PRelu":
            self._elementwise(node)
            return
        if node.op_type == "Clip" and any((self.dims(v) or (1,)) not in ((), (1,)) for v in others):
            self._block(xs, "unsupported_consumer:Clip")
            return
        if node.op_type == "Dropout" and len(node.outputs) > 1 and node.outputs[1].uses():
            self._block(xs, "unsupported_consumer:Dropout")
            return
        self._alias(node.outputs[0], xs.axis, xs)

    def _elementwise(self, node: ir.Node) -> None:
        out = node.outputs[0]
        out_dims = self.dims(out)
        inputs = [(i, v) for i, v in enumerate(node.inputs) if v is not None]
        spaced = [(i, v, self.spaces[v]) for i, v in inputs if v in self.spaces]
        reason = f"unsupported_consumer:{node.op_type}"
        if out_dims is None:
            self._block_inputs(node, "shape_unknown")
            return
        from_end = set()
        for _, v, s in spaced:
            dims = self.dims(v)
            from_end.add(None if dims is None else len(dims) - s.axis)
        sizes = {s.size for _, _, s in spaced}
        if len(from_end) != 1 or None in from_end or len(sizes) != 1:
            self._block_inputs(node, reason)
            return
        position = from_end.pop()
        size = sizes.pop()
        master = spaced[0][2]
        constants = []
        coupled = [s for _, _, s in spaced]
        for index, value in inputs:
            if value in self.spaces:
                continue
            dims = self.dims(value)
            if dims is None:
                self._block_inputs(node, "shape_unknown")
                return
            axis = len(dims) - position
            dim = dims[axis] if axis >= 0 else 1
            if dim == 1:
                continue
            if dim != size:
                self._block_inputs(node, reason)
                return
            array = self.const.array(value)
            if array is not None:
                constants.append((index, axis, array))
            else:
                coupled.append(self._opaque(value, axis, size))
        for other in coupled[1:]:
            self._union_spaces(master, other)
        self._alias(out, len(out_dims) - position, master)
        for index, axis, array in constants:
            self.edits.append(_edits.ChannelConstantEdit(node, master, index, axis, array))

    def _pool(self, node: ir.Node) -> None:
        xs = self.space(node.inputs[0])
        if xs is None:
            return
        if xs.axis != 1 or (len(node.outputs) > 1 and node.outputs[1].uses()):
            self._block(xs, f"unsupported_consumer:{node.op_type}")
            return
        self._alias(node.outputs[0], 1, xs)

    def _axes(self, node: ir.Node, input_index: int, rank: int) -> list[int] | None:
        value = attr(node, "axes")
        if value is None and len(node.inputs) > input_index and node.inputs[input_index] is not None:
            array = self.const.array(node.inputs[input_index])
            if array is None:
                return None
            value = array.reshape(-1).tolist()
        if value is None:
            return []
        return sorted(int(a) % rank for a in value)

    def _reduce(self, node: ir.Node) -> None:
        xs = self.space(node.inputs[0])
        dims = self.dims(node.inputs[0])
        if xs is None:
            return
        axes = None if dims is None else self._axes(node, 1, len(dims))
        if not axes or xs.axis in axes:  # none known, reduce-all (empty), or across channels
            self._block(xs, f"unsupported_consumer:{node.op_type}")
            return
        keep = int(attr(node, "keepdims", 1))
        axis = xs.axis if keep else xs.axis - sum(1 for a in axes if a < xs.axis)
        self._alias(node.outputs[0], axis, xs)

    def _resize(self, node: ir.Node) -> None:
        xs = self.space(node.inputs[0])
        if xs is None:
            return
        reason = f"unsupported_consumer:{node.op_type}"
        if any(v in self.spaces for v in node.inputs[1:] if v is not None) or attr(node, "axes") is not None:
            self._block_inputs(node, reason)
            return
        if node.op_type == "Upsample":
            scales = self.const.array(node.inputs[1]) if len(node.inputs) > 1 else None
            if scales is None or scales.reshape(-1)[xs.axis] != 1:
                self._block(xs, reason)
                return
            self._alias(node.outputs[0], xs.axis, xs)
            return
        scales = self.const.array(node.inputs[2]) if len(node.inputs) > 2 and node.inputs[2] is not None else None
        sizes = self.const.array(node.inputs[3]) if len(node.inputs) > 3 and node.inputs[3] is not None else None
        if sizes is not None and sizes.size > xs.axis:
            self._alias(node.outputs[0], xs.axis, xs)
            self.edits.append(_edits.ResizeSizesEdit(node, xs, sizes))
        elif scales is not None and scales.size > xs.axis and scales.reshape(-1)[xs.axis] == 1:
            self._alias(node.outputs[0], xs.axis, xs)
        else:
            self._block(xs, reason)

    def _pad(self, node: ir.Node) -> None:
        xs = self.space(node.inputs[0])
        dims = self.dims(node.inputs[0])
        if xs is None:
            return
        pads = attr(node, "pads")
        if pads is None and len(node.inputs) > 1:
            array = self.const.array(node.inputs[1])
            pads = None if array is None else array.reshape(-1).tolist()
        axes = None
        if dims is not None:
            axes = self._axes(node, 3, len(dims)) if len(node.inputs) > 3 and node.inputs[3] is not None else list(
                range(len(dims)))
        if pads is None or axes is None or any(v in self.spaces for v in node.inputs[1:] if v is not None):
            self._block(xs, "unsupported_consumer:Pad")
            return
        half = len(pads) // 2
        if xs.axis in axes:
            k = axes.index(xs.axis)
            if k >= half or pads[k] != 0 or pads[k + half] != 0:
                self._block(xs, "unsupported_consumer:Pad")
                return
        self._alias(node.outputs[0], xs.axis, xs)

    def _concat(self, node: ir.Node) -> None:
        out_dims = self.dims(node.outputs[0])
        if out_dims is None:
            self._block_inputs(node, "shape_unknown")
            return
        axis = int(attr(node, "axis", 0)) % len(out_dims)
        spaced = [self.spaces[v] for v in node.inputs if v is not None and v in self.spaces]
        if any(s.axis != axis for s in spaced) and axis in {s.axis for s in spaced}:
            self._block_inputs(node, "unsupported_consumer:Concat")
            return
        if axis != spaced[0].axis:  # concatenation along another axis: channels are coupled
            self._elementwise(node)
            return
        if not isinstance(out_dims[axis], int):
            self._block_inputs(node, "shape_unknown")
            return
        out = self._new_space(node.outputs[0], axis, int(out_dims[axis]))
        offset = 0
        for value in node.inputs:
            if value is None:
                continue
            space = self.space(value)
            if space is None:
                dims = self.dims(value)
                size = dims[axis] if dims is not None and len(dims) == len(out_dims) else None
                if not isinstance(size, int):
                    self._block(out, "shape_unknown")
                    return
                space = self._opaque(value, axis, size)
            part = Space(value, axis, space.size, out.base + offset)
            self._union_spaces(part, space)
            offset += space.size
        if offset != out.size:
            self._block(out, "shape_unknown")

    def _split(self, node: ir.Node) -> None:
        xs = self.space(node.inputs[0])
        dims = self.dims(node.inputs[0])
        if xs is None:
            return
        if dims is None:
            self._block(xs, "shape_unknown")
            return
        axis = int(attr(node, "axis", 0)) % len(dims)
        if axis != xs.axis:
            for out in node.outputs:
                self._alias(out, xs.axis, xs)
            return
        sizes = attr(node, "split")
        if sizes is None and len(node.inputs) > 1 and node.inputs[1] is not None:
            array = self.const.array(node.inputs[1])
            sizes = None if array is None else array.reshape(-1).tolist()
        if sizes is None:
            count = len(node.outputs)
            chunk = math.ceil(xs.size / count)
            sizes = [min(chunk, xs.size - k * chunk) for k in range(count)]
        if len(sizes) != len(node.outputs) or sum(sizes) != xs.size or min(sizes) <= 0:
            self._block(xs, "unsupported_consumer:Split")
            return
        offset = 0
        for out, size in zip(node.outputs, sizes, strict=True):
            self._alias(out, axis, xs, offset, int(size))
            offset += int(size)
        self.edits.append(_edits.SplitEdit(node, xs, [int(s) for s in sizes]))

    def _slice(self, node: ir.Node) -> None:
        xs = self.space(node.inputs[0])
        dims = self.dims(node.inputs[0])
        if xs is None:
            return
        if dims is None or len(node.inputs) < 3 or any(v in self.spaces for v in node.inputs[1:] if v is not None):
            self._block(xs, "unsupported_consumer:Slice")
            return
        arrays = [self.const.array(v) if v is not None else None for v in node.inputs[1:5]]
        arrays += [None] * (4 - len(arrays))
        starts, ends, axes, steps = arrays
        if starts is None or ends is None or (len(node.inputs) > 3 and node.inputs[3] is not None and axes is None) or (
                len(node.inputs) > 4 and node.inputs[4] is not None and steps is None):
            self._block(xs, "unsupported_consumer:Slice")
            return
        axes_list = [int(a) % len(dims) for a in (axes.reshape(-1) if axes is not None else range(starts.size))]
        if xs.axis not in axes_list:
            self._alias(node.outputs[0], xs.axis, xs)
            return
        k = axes_list.index(xs.axis)
        step = int(steps.reshape(-1)[k]) if steps is not None else 1
        if step != 1:
            self._block(xs, "unsupported_consumer:Slice")
            return
        start, end = int(starts.reshape(-1)[k]), int(ends.reshape(-1)[k])
        start = max(0, min(xs.size, start + xs.size if start < 0 else start))
        end = max(0, min(xs.size, end + xs.size if end < 0 else end))
        if end <= start:
            self._block(xs, "unsupported_consumer:Slice")
            return
        self._alias(node.outputs[0], xs.axis, xs, start, end - start)
        self.edits.append(_edits.SliceEdit(node, xs, k, start, end, starts, ends))

    def _flatten_like(self, node: ir.Node, xs: Space, axis: int) -> bool:
        dims = self.dims(node.inputs[0])
        if dims is None or xs.axis < axis or not all(isinstance(d, int) for d in dims[axis:]):
            return False
        trailing = tuple(int(d) for d in dims[axis:])
        out = self._new_space(node.outputs[0], 1 if axis > 0 else 1, math.prod(trailing))
        shape = [1] * len(trailing)
        shape[xs.axis - axis] = xs.size
        channel = np.broadcast_to(np.arange(xs.size).reshape(shape), trailing).reshape(-1)
        for feature, c in enumerate(channel.tolist()):
            self._union(out.base + feature, xs.base + c)
        return True

    def _flatten(self, node: ir.Node) -> None:
        xs = self.space(node.inputs[0])
        if xs is None:
            return
        axis = int(attr(node, "axis", 1))
        dims = self.dims(node.inputs[0])
        if dims is None or not self._flatten_like(node, xs, axis % max(len(dims), 1) if axis < 0 else axis):
            self._block(xs, "unsupported_consumer:Flatten")

    def _reshape(self, node: ir.Node) -> None:
        xs = self.space(node.inputs[0])
        if xs is None:
            return
        before, after = self.dims(node.inputs[0]), self.dims(node.outputs[0])
        if before is None or after is None or not all(isinstance(d, int) for d in before[1:]):
            self._block(xs, "shape_unknown")
            return
        # [N, C, ...] -> [N, C * ...]: the element count fixes the first dim even when it is symbolic.
        if xs.axis == 1 and len(after) == 2 and after[1] == math.prod(before[1:]):
            if self._flatten_like(node, xs, 1):
                self.edits.append(_edits.ReshapeFlattenEdit(node, xs))
                return
        shape = self.const.array(node.inputs[1]) if len(node.inputs) > 1 else None
        if (shape is not None and len(after) > xs.axis and after[1: xs.axis + 1] == before[1: xs.axis + 1]
                and int(shape.reshape(-1)[xs.axis]) in (xs.size, -1, 0) and not int(attr(node, "allowzero", 0))):
            self._alias(node.outputs[0], xs.axis, xs)
            self.edits.append(_edits.ReshapeShapeEdit(node, xs, shape))
            return
        users = [use.node for use in node.outputs[0].uses()]
        splits_channels = (len(after) == len(before) + 1 and after[1: xs.axis] == before[1: xs.axis]
                           and isinstance(after[xs.axis], int) and isinstance(after[xs.axis + 1], int)
                           and after[xs.axis] * after[xs.axis + 1] == xs.size)
        if splits_channels and users and all(self._merges_back(u, before) for u in users):
            self._block(xs, "channel_shuffle")  # Reshape-Transpose-Reshape: a permutation of the channels
        else:
            self._block(xs, "unsupported_consumer:Reshape")

    def _merges_back(self, node: ir.Node, shape: tuple) -> bool:
        """Whether ``node`` is a Transpose whose readers are Reshapes back to ``shape`` (a channel shuffle)."""
        if node.op_type != "Transpose":
            return False
        readers = [use.node for use in node.outputs[0].uses()]
        return bool(readers) and all(
            r.op_type == "Reshape" and (self.dims(r.outputs[0]) or ())[1:] == shape[1:] for r in readers)

    def _transpose(self, node: ir.Node) -> None:
        xs = self.space(node.inputs[0])
        dims = self.dims(node.inputs[0])
        if xs is None:
            return
        perm = attr(node, "perm")
        if perm is None:
            if dims is None:
                self._block(xs, "shape_unknown")
                return
            perm = list(range(len(dims)))[::-1]
        self._alias(node.outputs[0], list(perm).index(xs.axis), xs)

    def _squeeze(self, node: ir.Node) -> None:
        xs = self.space(node.inputs[0])
        dims = self.dims(node.inputs[0])
        if xs is None:
            return
        axes = None if dims is None else self._axes(node, 1, len(dims))
        if not axes or xs.axis in axes:
            self._block(xs, "unsupported_consumer:Squeeze")
            return
        self._alias(node.outputs[0], xs.axis - sum(1 for a in axes if a < xs.axis), xs)

    def _unsqueeze(self, node: ir.Node) -> None:
        xs = self.space(node.inputs[0])
        out_dims = self.dims(node.outputs[0])
        if xs is None:
            return
        axes = None if out_dims is None else self._axes(node, 1, len(out_dims))
        if not axes:
            self._block(xs, "unsupported_consumer:Unsqueeze")
            return
        kept_positions = [p for p in range(len(out_dims)) if p not in axes]  # type: ignore[arg-type]
        self._alias(node.outputs[0], kept_positions[xs.axis], xs)

    def _cast_like(self, node: ir.Node) -> None:
        """``CastLike(x, target)`` reads only the element type of ``target``: channel-wise in ``x``."""
        xs = self.space(node.inputs[0])
        if xs is not None:
            self._alias(node.outputs[0], xs.axis, xs)

    def _size(self, node: ir.Node) -> None:
        self._block_inputs(node, "unsupported_consumer:Size")

    def _shape(self, node: ir.Node) -> None:
        xs = self.space(node.inputs[0])
        dims = self.dims(node.inputs[0])
        if xs is None or dims is None:
            if xs is not None:
                self._block(xs, "unsupported_consumer:Shape")
            return
        start = int(attr(node, "start", 0))
        end = attr(node, "end")
        rank = len(dims)
        start = start + rank if start < 0 else start
        end = rank if end is None else (int(end) + rank if int(end) < 0 else int(end))
        if start <= xs.axis < end:
            self._block(xs, "unsupported_consumer:Shape")

    # ---------------------------------------------------------------------------------------- classes
    def class_members(self) -> dict[int, list[tuple[int, int]]]:
        """``{class root: [(source index, channel), ...]}`` for every class holding source channels."""
        members: dict[int, list[tuple[int, int]]] = defaultdict(list)
        for source in self.sources:
            for channel, root in enumerate(self.roots[source.space.base: source.space.base + source.space.size]):
                members[int(root)].append((source.index, channel))
        return dict(members)

    def kept(self, space: Space, removed: np.ndarray) -> np.ndarray:
        """Kept channel indices of ``space`` given the boolean per-element ``removed`` mask."""
        return np.flatnonzero(~removed[space.base: space.base + space.size])

    def spaces_of_class(self) -> dict[int, list[Space]]:
        """``{class root: spaces holding one of its elements}`` (each space once per class)."""
        result: dict[int, list[Space]] = defaultdict(list)
        for space in self._unique_spaces():
            for root in set(self.roots[space.base: space.base + space.size].tolist()):
                result[root].append(space)
        return dict(result)

    def _unique_spaces(self) -> list[Space]:
        return list(self.spaces.values())
