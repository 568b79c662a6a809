"""Verification inputs that fit the model, read from the graph when no user data is given.

Declared input shapes often say little (unnamed or ``-1`` dimensions) and random integers rarely make valid
indices, so the graph is read for what fits:

* Dimensions. Every dynamic dimension of an input becomes a symbol (its declared name, so equal names get
  equal values; a generated name when unnamed). onnx shape inference carries the symbols through the graph
  (Cast, Unsqueeze, Transpose, elementwise ops ...) and the consumers with weights fix them: the input size
  of RNN/GRU/LSTM (``W`` is ``[D, k*H, F]``), the reduction dimension of MatMul/Gemm, Conv channels
  (``W.shape[1] * group``), normalization scales, and broadcast or Concat partners with a fixed dimension.
  ``--input-shape`` wins over all of them. What stays unresolved gets ``DEFAULT_BATCH`` (batch axes) or
  ``DEFAULT_DYNAMIC_DIM``; when such defaults were used the model is run once, and on failure longer
  lengths are tried.
* Values. An integer input (or a float input cast to integers) is followed through the ops that keep its
  values (Cast, Reshape, Unsqueeze, Gather of its rows, Add of a constant ...) to the consumers that say what
  it is: indices of Gather/Scatter (``[0, dim)`` of the indexed axis), the ``sequence_lens`` of a recurrent
  op or a ``length`` input (the sequence length, so masks are full), or a comparison with constants (those
  values, e.g. a sample rate an If compares with 16000). Every choice is stated in the notes of the report.
"""

from __future__ import annotations

import dataclasses
import logging
import re
from collections.abc import Mapping, Sequence

import numpy as np
import onnx
import onnx_ir as ir

from sftonnx.io import PROTOBUF_LIMIT, model_nbytes
from sftonnx.ir_utils import attr, constant_array
from sftonnx.verify.inputs import DEFAULT_BATCH, DEFAULT_DYNAMIC_DIM, InputSpec
from sftonnx.verify.runtime import make_session, ort_failure, run_model

__all__ = ["LONGER_LENGTHS", "Synthesis", "synthesize_inputs"]

logger = logging.getLogger(__name__)

#: Lengths tried, in order, when the model does not run with ``DEFAULT_DYNAMIC_DIM`` for unresolved dims.
LONGER_LENGTHS = (64, 128, 256, 512)

_RECURRENT = {"RNN", "GRU", "LSTM"}
_BROADCAST = {
    "Add", "Sub", "Mul", "Div", "Pow", "Max", "Min", "Sum", "Mean", "Where", "Equal", "Less", "Greater",
    "LessOrEqual", "GreaterOrEqual", "And", "Or", "Xor", "PRelu", "Mod", "BitShift",
}  # fmt: skip
_COMPARE = {"Equal", "Less", "Greater", "LessOrEqual", "GreaterOrEqual"}
# Ops whose output holds (a selection of) the values of input 0: integer values keep their meaning.
_KEEP_VALUES = {
    "Cast", "Identity", "Unsqueeze", "Squeeze", "Reshape", "Flatten", "Transpose", "Expand", "Tile", "Slice",
    "Gather", "GatherElements", "GatherND", "Split", "CastLike", "ReduceMax", "ReduceMin",
}  # fmt: skip
_LENGTH_NAME = re.compile(r"(^|[^a-z])(len|lens|length|lengths|seq_len|seq_lens|seqlen|sequence_length)s?($|[^a-z])")
_LENGTH_OPS = {"Less", "LessOrEqual", "Greater", "GreaterOrEqual", "Range", "Slice", "Sub", "Equal"}
_UNRESOLVED = "unresolved"

Dim = int | str | None


@dataclasses.dataclass
class Synthesis:
    """Synthesized verification inputs."""

    feeds: list[dict[str, np.ndarray]]  # one feed dict per sample
    shapes: dict[str, tuple[int, ...]]  # the concrete shape of every input
    notes: list[str]  # what was chosen and why (shapes, value ranges), for the report


@dataclasses.dataclass
class _Class:
    """What the graph says about one symbolic dimension (a union of equal symbols)."""

    value: int | None = None
    reason: str = ""
    lower: int = 1
    lower_reason: str = ""
    kinds: set[str] = dataclasses.field(default_factory=set)


@dataclasses.dataclass
class _Range:
    """What the consumers of one integer input say about its values."""

    low: int | None = None
    high: int | None = None  # exclusive
    reasons: list[str] = dataclasses.field(default_factory=list)
    length: str | None = None  # why it is a length (then it takes the sequence length)
    length_value: int | None = None
    compared: list[int | float] = dataclasses.field(default_factory=list)
    compared_reason: str = ""


def synthesize_inputs(
    model: ir.Model,
    specs: Sequence[InputSpec],
    overrides: Mapping[str, tuple[int, ...]],
    *,
    samples: int,
    seed: int = 0,
    trial_run: bool = True,
) -> Synthesis:
    """Inputs that fit ``model``: dimensions from weights, integer values from their consumers.

    Args:
        model: The model (not modified).
        specs: Its inputs (:func:`~sftonnx.verify.inputs.input_specs`).
        overrides: Shapes given by the user (already checked by ``resolve_shapes``); they always win.
        samples: Number of feed dicts.
        seed: Seed of the first feed dict (then ``seed + 1`` ...).
        trial_run: When defaults were used for some dimension, run the model once and try longer lengths
            if it fails.
    """
    reader = _GraphReader(model, specs, overrides)
    synthesis = reader.build(DEFAULT_DYNAMIC_DIM, samples=samples, seed=seed)
    if trial_run and reader.model_bytes is not None and reader.guessed_lengths():  # None: over 2 GiB
        error = _try_run(reader.model_bytes, synthesis.feeds[:1])
        if error is not None:
            for length in LONGER_LENGTHS:
                longer = reader.build(length, samples=samples, seed=seed)
                if _try_run(reader.model_bytes, longer.feeds[:1]) is None:
                    longer.notes.append(
                        f"unresolved lengths set to {length}: the model does not run with "
                        f"{DEFAULT_DYNAMIC_DIM} ({error})"
                    )
                    return longer
    return synthesis


def _try_run(source: bytes, feeds: Sequence[Mapping[str, np.ndarray]]) -> str | None:
    """None when the model runs on the feeds, else onnxruntime's first error line (its log kept quiet)."""
    try:
        run_model(make_session(source, optimization="basic", log_severity=4), feeds)
    except Exception as error:  # onnxruntime's error types vary by build
        return ort_failure(error)
    return None


# ------------------------------------------------------------------------------------------ reading
class _GraphReader:
    """Symbols for the inputs' dynamic dims, shape inference over them, and what consumers say."""

    def __init__(self, model: ir.Model, specs: Sequence[InputSpec], overrides: Mapping[str, tuple[int, ...]]):
        self.model = model
        self.specs = list(specs)
        self.overrides = dict(overrides)
        self.parent: dict[str, str] = {}
        self.classes: dict[str, _Class] = {}
        # input name -> per axis: an int (fixed or given) or a symbol
        self.input_dims: dict[str, list[int | str]] = {}
        self.axes: dict[str, set[int]] = {}  # symbol -> the input axes it appears at
        for spec in self.specs:
            dims: list[int | str] = []
            given = self.overrides.get(spec.name)
            for axis, dim in enumerate(spec.shape or ()):
                if isinstance(dim, int):
                    dims.append(dim)
                    continue
                symbol = dim if isinstance(dim, str) and dim else f"sftonnx:{spec.name}:{axis}"
                self._add(symbol)
                self.axes.setdefault(symbol, set()).add(axis)
                if given is not None:
                    self._fix(symbol, given[axis], f"--input-shape {spec.name}")
                dims.append(symbol)
            self.input_dims[spec.name] = dims
        self.model_bytes: bytes | None = None
        self.inferred: dict[str, tuple[Dim, ...]] = {}
        self._infer()
        self.ranges: dict[str, _Range] = {}
        for node in ir.traversal.RecursiveGraphIterator(model.graph):
            if node.domain in ("", "ai.onnx"):
                try:
                    self._constrain(node)
                except Exception as error:  # a malformed node says nothing; never fail over it
                    logger.debug("input synthesis: ignoring %s '%s': %s", node.op_type, node.name, error)

    # ----------------------------------------------------------------------------- symbol classes
    def _add(self, symbol: str) -> None:
        if symbol not in self.parent:
            self.parent[symbol] = symbol
            self.classes[symbol] = _Class()

    def _find(self, symbol: str) -> str:
        while self.parent[symbol] != symbol:
            self.parent[symbol] = self.parent[self.parent[symbol]]
            symbol = self.parent[symbol]
        return symbol

    def _cls(self, symbol: str) -> _Class:
        return self.classes[self._find(symbol)]

    def _union(self, a: str, b: str) -> None:
        ra, rb = self._find(a), self._find(b)
        if ra == rb:
            return
        first, second = self.classes[ra], self.classes[rb]
        if first.value is None and second.value is not None:
            first.value, first.reason = second.value, second.reason
        if second.lower > first.lower:
            first.lower, first.lower_reason = second.lower, second.lower_reason
        first.kinds |= second.kinds
        self.parent[rb] = ra

    def _fix(self, symbol: str, value: int, reason: str) -> None:
        cls = self._cls(symbol)
        if cls.value is None and value > 0:
            cls.value, cls.reason = int(value), reason
        elif cls.value != value:
            logger.debug("input synthesis: %s is %s (%s), also %s (%s)", symbol, cls.value, cls.reason, value, reason)

    def _known(self, dim: Dim) -> str | None:
        """The symbol class of ``dim`` when it is one of the inputs' symbols."""
        return dim if isinstance(dim, str) and dim in self.parent else None

    def _relate(self, dim: Dim, other: Dim, reason: str) -> None:
        """``dim`` and ``other`` must be equal."""
        a, b = self._known(dim), self._known(other)
        if a and b:
            self._union(a, b)
        elif a and isinstance(other, int) and other > 0:
            self._fix(a, other, reason)
        elif b and isinstance(dim, int) and dim > 0:
            self._fix(b, dim, reason)

    # ------------------------------------------------------------------------------------ shapes
    def _infer(self) -> None:
        """Run onnx shape inference with the inputs' symbols; keep every value's inferred dims."""
        if model_nbytes(self.model) > PROTOBUF_LIMIT:
            return
        try:
            proto = ir.to_proto(self.model)
            self.model_bytes = proto.SerializeToString()
            for value in proto.graph.input:
                dims = self.input_dims.get(value.name)
                if dims is None or not value.type.HasField("tensor_type"):
                    continue
                shape = value.type.tensor_type.shape
                if len(shape.dim) != len(dims):
                    shape.ClearField("dim")
                    for _ in dims:
                        shape.dim.add()
                for proto_dim, dim in zip(shape.dim, dims, strict=True):
                    if isinstance(dim, int):
                        proto_dim.dim_value = dim
                    else:
                        proto_dim.dim_param = dim
            inferred = onnx.shape_inference.infer_shapes(proto, data_prop=True)
        except Exception as error:  # inference is a help, never a requirement
            logger.debug("input synthesis: shape inference failed: %s", error)
            return
        self._collect(inferred.graph)

    def _collect(self, graph: onnx.GraphProto) -> None:
        for info in [*graph.input, *graph.value_info, *graph.output]:
            if info.type.HasField("tensor_type") and info.type.tensor_type.HasField("shape"):
                self.inferred[info.name] = tuple(
                    d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else (d.dim_param or None)
                    for d in info.type.tensor_type.shape.dim
                )
        for node in graph.node:
            for attribute in node.attribute:
                if attribute.type == onnx.AttributeProto.GRAPH:
                    self._collect(attribute.g)
                elif attribute.type == onnx.AttributeProto.GRAPHS:
                    for sub in attribute.graphs:
                        self._collect(sub)

    def shape(self, value: ir.Value | None) -> tuple[Dim, ...] | None:
        """Dims of ``value``: constant shape, inferred dims, else its declared shape."""
        if value is None:
            return None
        if value.const_value is not None:
            return tuple(value.const_value.shape)
        if value.name in self.input_dims and value.is_graph_input():
            return tuple(self.input_dims[value.name])
        if value.name in self.inferred:
            return self.inferred[value.name]
        if value.shape is None:
            return None
        return tuple(
            d if isinstance(d, int) and d > 0 else (d.value if isinstance(d, ir.SymbolicDim) else None)
            for d in value.shape.dims
        )

    def resolved(self, dim: Dim, length: int) -> int | None:
        """A concrete value for ``dim`` (after constraints), or None."""
        if isinstance(dim, int):
            return dim
        symbol = self._known(dim)
        return self._value(symbol, length)[0] if symbol else None

    def _value(self, symbol: str, length: int) -> tuple[int, str]:
        cls = self._cls(symbol)
        if cls.value is not None:
            return cls.value, cls.reason
        if "length" in cls.kinds:
            fill = length
        elif "batch" in cls.kinds:
            fill = DEFAULT_BATCH
        else:  # a batch when it is axis 0 wherever it appears
            fill = DEFAULT_BATCH if self._axes(symbol) == {0} else length
        if cls.lower > fill:
            return cls.lower, cls.lower_reason
        return fill, _UNRESOLVED

    def _axes(self, symbol: str) -> set[int]:
        """The input axes at which the symbols of ``symbol``'s class appear."""
        root = self._find(symbol)
        return {axis for s, axes in self.axes.items() if self._find(s) == root for axis in axes}

    def guessed_lengths(self) -> bool:
        """Whether some dimension got a default length (a trial run may find a better one)."""
        chosen = [
            self._value(d, DEFAULT_DYNAMIC_DIM) for dims in self.input_dims.values() for d in dims if isinstance(d, str)
        ]
        return (DEFAULT_DYNAMIC_DIM, _UNRESOLVED) in chosen

    # ------------------------------------------------------------------------------- constraints
    def _constrain(self, node: ir.Node) -> None:
        op = node.op_type
        inputs = list(node.inputs)
        shapes = [self.shape(v) for v in inputs]
        if op in _RECURRENT and len(inputs) >= 2 and shapes[0] and shapes[1] and len(shapes[0]) == 3:
            x, w = shapes[0], shapes[1]
            layout = attr(node, "layout", 0)
            seq_axis, batch_axis = (1, 0) if layout else (0, 1)
            self._relate(x[2], w[2] if len(w) == 3 else None, f"{op} weight '{inputs[1].name}'")
            self._kind(x[seq_axis], "length")
            self._kind(x[batch_axis], "batch")
        elif op == "MatMul" and len(inputs) == 2 and shapes[0] and shapes[1]:
            a, b = shapes[0], shapes[1]
            k_b = b[0] if len(b) == 1 else b[-2]
            self._relate(a[-1], k_b, f"MatMul weight '{inputs[1].name}'")
            if len(a) >= 2 and len(b) >= 2:
                for da, db in zip(reversed(a[:-2]), reversed(b[:-2]), strict=False):
                    if da != 1 and db != 1:
                        self._relate(da, db, f"MatMul '{node.name}' batch dims")
        elif op == "Gemm" and len(inputs) >= 2 and shapes[0] and shapes[1] and len(shapes[0]) == len(shapes[1]) == 2:
            a, b = shapes[0], shapes[1]
            k_a = a[0] if attr(node, "transA", 0) else a[1]
            k_b = b[1] if attr(node, "transB", 0) else b[0]
            self._relate(k_a, k_b, f"Gemm weight '{inputs[1].name}'")
        elif op in ("Conv", "ConvTranspose") and len(inputs) >= 2 and shapes[0] and shapes[1]:
            x, w = shapes[0], shapes[1]
            group = attr(node, "group", 1)
            if len(w) >= 2:
                channels = w[1] * group if op == "Conv" and isinstance(w[1], int) else w[0]
                self._relate(
                    x[1] if len(x) > 1 else None,
                    channels,
                    f"{op} weight '{inputs[1].name}'" + (f" (group {group})" if group != 1 else ""),
                )
            self._kind(x[0], "batch")
            for dim in x[2:]:
                self._kind(dim, "length")
        elif op == "Scan" and (count := attr(node, "num_scan_inputs", 0)):
            axes = list(attr(node, "scan_input_axes", None) or [0] * count)
            for shape, axis in zip(shapes[len(inputs) - count :], axes, strict=False):
                if shape:
                    self._kind(shape[axis], "length")  # the scanned axis is a sequence
        elif op in ("MaxPool", "AveragePool", "LpPool", "GlobalAveragePool", "GlobalMaxPool") and shapes[0]:
            self._kind(shapes[0][0], "batch")
            for dim in shapes[0][2:]:
                self._kind(dim, "length")
        elif op == "LayerNormalization" and len(inputs) >= 2 and shapes[0] and shapes[1]:
            axis = attr(node, "axis", -1)
            x, scale = shapes[0], shapes[1]
            axis = axis + len(x) if axis < 0 else axis
            for dim, fixed in zip(x[axis:], scale[-(len(x) - axis) :], strict=False):
                self._relate(dim, fixed, f"LayerNormalization scale '{inputs[1].name}'")
        elif op in ("BatchNormalization", "InstanceNormalization") and len(inputs) >= 2 and shapes[0] and shapes[1]:
            if len(shapes[0]) > 1 and shapes[1]:
                self._relate(shapes[0][1], shapes[1][0], f"{op} scale '{inputs[1].name}'")
        elif op in _BROADCAST:
            self._broadcast(node, inputs, shapes)
        elif op == "Concat":
            self._concat(node, shapes)
        elif op == "Reshape" and len(inputs) == 2 and shapes[0] and (target := constant_array(inputs[1])) is not None:
            # A constant target without -1/0 fixes the one unknown dimension of the data: numel must match.
            unknown = [d for d in shapes[0] if not isinstance(d, int)]
            known = int(np.prod([d for d in shapes[0] if isinstance(d, int)]))
            if len(unknown) == 1 and (symbol := self._known(unknown[0])) and target.size and (target > 0).all():
                total = int(np.prod(target))
                if total % known == 0:
                    self._fix(symbol, total // known, f"Reshape '{node.name}' to {target.tolist()}")
        elif op in ("Gather", "GatherElements") and len(inputs) == 2 and shapes[0]:
            indices = constant_array(inputs[1])
            axis = attr(node, "axis", 0)
            axis = axis + len(shapes[0]) if axis < 0 else axis
            symbol = self._known(shapes[0][axis]) if 0 <= axis < len(shapes[0]) else None
            if symbol and indices is None and "batch" not in symbol.lower():
                self._cls(symbol).kinds.add("length")  # rows read by computed indices: more than one
            elif symbol and indices is not None and indices.size and op == "Gather":
                needed = int(max(indices.max() + 1, -indices.min()))
                cls = self._cls(symbol)
                if needed > cls.lower:
                    cls.lower, cls.lower_reason = needed, f"Gather '{node.name}' reads index {needed - 1}"

    def _kind(self, dim: Dim, kind: str) -> None:
        if symbol := self._known(dim):
            self._cls(symbol).kinds.add(kind)

    def _broadcast(self, node: ir.Node, inputs: list, shapes: list) -> None:
        known = [(v, s) for v, s in zip(inputs, shapes, strict=True) if v is not None and s is not None]
        for i, (value, shape) in enumerate(known):
            for other_value, other in known[i + 1 :]:
                for da, db in zip(reversed(shape), reversed(other), strict=False):
                    if da == 1 or db == 1:
                        continue
                    partner = other_value if self._known(da) else value
                    self._relate(da, db, f"broadcast with '{partner.name}' in {node.op_type} '{node.name}'")

    def _concat(self, node: ir.Node, shapes: list) -> None:
        known = [s for s in shapes if s is not None]
        if len(known) < 2 or len({len(s) for s in known}) != 1:
            return
        axis = attr(node, "axis", 0)
        axis = axis + len(known[0]) if axis < 0 else axis
        for position in range(len(known[0])):
            if position == axis:
                continue
            column = [s[position] for s in known]
            for dim in column[1:]:
                self._relate(column[0], dim, f"Concat '{node.name}'")

    # ----------------------------------------------------------------------------- integer values
    def value_range(self, spec: InputSpec, length: int) -> _Range:
        """Follow ``spec``'s input through value-keeping ops to the consumers that say what it holds."""
        found = _Range()
        value = next((v for v in self.model.graph.inputs if v.name == spec.name), None)
        if value is None:
            return found
        name_is_length = bool(_LENGTH_NAME.search(spec.name.lower()))
        stack: list[tuple[ir.Value, int]] = [(value, 0)]
        seen: set[int] = set()
        while stack:
            current, offset = stack.pop()
            if id(current) in seen:
                continue
            seen.add(id(current))
            for node, index in current.uses():
                if node.domain not in ("", "ai.onnx"):
                    continue
                self._use(node, index, offset, found, name_is_length, length, stack)
        return found

    def _use(self, node, index, offset, found: _Range, name_is_length, length, stack) -> None:
        op = node.op_type
        inputs = list(node.inputs)
        if (op in _KEEP_VALUES and index == 0) or op == "Concat":
            stack.extend((out, offset) for out in node.outputs)
            return
        if op in ("Add", "Sub") and len(inputs) == 2:
            other = constant_array(inputs[1 - index])
            if other is not None and other.size == 1 and np.dtype(other.dtype).kind in "iu":
                if op == "Add":
                    stack.extend((out, offset + int(other.item())) for out in node.outputs)
                    return
                if index == 0:
                    stack.extend((out, offset - int(other.item())) for out in node.outputs)
                    return
        if op in ("Gather", "GatherElements", "ScatterElements") and index == 1:
            data = inputs[0]
            shape = self.shape(data)
            axis = attr(node, "axis", 0)
            if shape:
                axis = axis + len(shape) if axis < 0 else axis
                rows = self.resolved(shape[axis], length) if 0 <= axis < len(shape) else None
                if rows:
                    embedding = op == "Gather" and data.const_value is not None and len(shape) == 2 and axis == 0
                    reason = (
                        f"Gather on embedding '{data.name}' ({rows} rows)"
                        if embedding
                        else f"{op} '{node.name}' into '{data.name}' (dim {axis} = {rows})"
                    )
                    self._bound(found, -offset, rows - offset, reason)
            return
        if op in ("GatherND", "ScatterND") and index == 1:
            data, indices = self.shape(inputs[0]), self.shape(inputs[1])
            batch_dims = attr(node, "batch_dims", 0) if op == "GatherND" else 0
            if data:
                depth = indices[-1] if indices and isinstance(indices[-1], int) else 1
                dims = [self.resolved(d, length) for d in data[batch_dims : batch_dims + depth]]
                if dims and all(dims):
                    rows = min(dims)  # type: ignore[type-var]
                    reason = f"{op} '{node.name}' into '{inputs[0].name}' (dim {batch_dims} = {rows})"
                    self._bound(found, -offset, rows - offset, reason)
            return
        if op == "OneHot" and index == 0:
            depth = constant_array(inputs[1]) if len(inputs) > 1 else None
            if depth is not None and depth.size == 1:
                size = int(depth.item())
                self._bound(found, -offset, size - offset, f"OneHot '{node.name}' (depth {size})")
            return
        if op in _RECURRENT and index == 4:
            x = self.shape(inputs[0])
            steps = self.resolved(x[1 if attr(node, "layout", 0) else 0], length) if x and len(x) == 3 else None
            if found.length is None:
                found.length = f"sequence_lens of {op} '{node.name}'"
                found.length_value = steps
            return
        if name_is_length and op in _LENGTH_OPS:
            if found.length is None:
                found.length = f"a length feeding {op} '{node.name}'"
            return
        if op in _COMPARE and len(inputs) == 2:
            other = constant_array(inputs[1 - index])
            if other is not None and 0 < other.size <= 16 and not found.compared:
                found.compared = sorted({v - offset for v in other.ravel().tolist()})
                found.compared_reason = f"{op} '{node.name}' with a constant"

    @staticmethod
    def _bound(found: _Range, low: int, high: int, reason: str) -> None:
        found.low = low if found.low is None else max(found.low, low)
        found.high = high if found.high is None else min(found.high, high)
        found.reasons.append(reason)

    # ------------------------------------------------------------------------------------- build
    def build(self, length: int, *, samples: int, seed: int) -> Synthesis:
        """Shapes, value ranges and feeds with ``length`` for unresolved non-batch dimensions."""
        notes: list[str] = []
        shapes: dict[str, tuple[int, ...]] = {}
        for spec in self.specs:
            if spec.name in self.overrides:
                shapes[spec.name] = tuple(self.overrides[spec.name])
                continue
            dims = []
            for axis, dim in enumerate(self.input_dims[spec.name]):
                if isinstance(dim, int):
                    dims.append(dim)
                    continue
                value, reason = self._value(dim, length)
                declared = spec.shape[axis] if spec.shape else None
                if reason == _UNRESOLVED:
                    notes.append(f"{spec.name}: dynamic dimension {axis} ('{declared or '?'}') set to {value}")
                else:
                    notes.append(f"{spec.name}: dim {axis} set to {value} from {reason}")
                dims.append(value)
            shapes[spec.name] = tuple(dims)
        plans = {spec.name: self._plan(spec, shapes, length, notes) for spec in self.specs}
        feeds = []
        for sample in range(samples):
            rng = np.random.default_rng(seed + sample)
            feeds.append({spec.name: plans[spec.name](rng, shapes[spec.name]) for spec in self.specs})
        return Synthesis(feeds, shapes, notes)

    def _plan(self, spec: InputSpec, shapes: Mapping[str, tuple[int, ...]], length: int, notes: list[str]):
        """A function ``(rng, shape) -> array`` for ``spec``, with a note saying what it draws."""
        dtype = np.dtype(spec.dtype)
        if dtype.kind == "b":
            return lambda rng, shape: rng.integers(0, 2, shape).astype(dtype)
        found = self.value_range(spec, length)
        integer = dtype.kind in "iu"
        kind = "integers" if integer else "integer-valued floats"
        if found.low is not None and found.high is not None:
            low, high = found.low, found.high
            if integer:
                info = np.iinfo(dtype)
                low, high = max(low, int(info.min)), min(high, int(info.max) + 1)
            if high > low:
                notes.append(f"{spec.name}: {kind} in [{low}, {high}) from {_listed(found.reasons)}")
                return lambda rng, shape: rng.integers(low, high, shape).astype(dtype)
            notes.append(f"{spec.name}: its consumers allow no common range ({_listed(found.reasons)})")
        if not integer:
            return lambda rng, shape: rng.standard_normal(shape).astype(dtype)
        name_is_length = bool(_LENGTH_NAME.search(spec.name.lower()))
        if found.length is None and name_is_length and not found.compared:
            found.length = "its name"
        if found.length is not None:
            steps = found.length_value or self._sequence_length(spec, shapes) or length
            notes.append(f"{spec.name}: set to {steps}, the full sequence length ({found.length})")
            return lambda rng, shape: np.full(shape, steps, dtype)
        if found.compared:
            values = np.asarray(found.compared, dtype=dtype)
            shown = ", ".join(str(v) for v in found.compared)
            notes.append(f"{spec.name}: values {{{shown}}} it is compared with ({found.compared_reason})")
            return lambda rng, shape: rng.choice(values, size=shape).astype(dtype)
        notes.append(f"{spec.name}: integers in [0, 8) (no consumer says more)")
        return lambda rng, shape: rng.integers(0, 8, shape).astype(dtype)

    def _sequence_length(self, spec: InputSpec, shapes: Mapping[str, tuple[int, ...]]) -> int | None:
        """Axis 1 of another input with the same leading dimension (``ids [B, L]`` for ``lengths [B]``)."""
        mine = shapes.get(spec.name, ())
        lead = mine[0] if mine else None
        candidates = [
            shape[1]
            for name, shape in shapes.items()
            if name != spec.name and len(shape) >= 2 and (lead is None or shape[0] == lead)
        ]
        return max(candidates) if candidates else None


def _listed(reasons: Sequence[str], shown: int = 2) -> str:
    """The first distinct reasons, and how many more."""
    unique = list(dict.fromkeys(reasons))
    return ", ".join(unique[:shown]) + (f" and {len(unique) - shown} more" if len(unique) > shown else "")
