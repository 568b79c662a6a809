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
from collections import defaultdict

import numpy as np
import onnx_ir as ir

from sftonnx.analysis import ShapeTable, infer_tensor_shapes, topological_order
from sftonnx.ir_utils import attr
from sftonnx.passes._union_find import UnionFind
from sftonnx.passes.pruning import _edits
from sftonnx.passes.pruning._edits import Space
from sftonnx.passes.pruning._graph import ConstantReader, is_float
from sftonnx.passes.pruning._layout_rules import LayoutRules

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


class ChannelGraph(LayoutRules):
    """Channel spaces, element classes, blocking reasons and the edits that removing channels requires.

    Read-only: the analysis records typed edits (:mod:`sftonnx.passes.pruning._edits`); applying a removal is
    :func:`sftonnx.passes.pruning.removal.remove_channels`. The rules of the layers with weights (sources and
    consumers) are here; those of channel-wise and data-movement ops are in
    :class:`~sftonnx.passes.pruning._layout_rules.LayoutRules`.

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
