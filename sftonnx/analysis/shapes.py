"""Tensor shapes and dtypes for analysis, from onnx shape inference on a skeleton copy of the model.

The model itself is never touched: a lightweight ``ModelProto`` is built from it (nodes, graph inputs and
outputs, small initializers inline; large or external initializers become typed graph inputs so their data is
neither copied nor loaded), dynamic input dimensions are filled in, and
``onnx.shape_inference.infer_shapes(..., data_prop=True)`` runs on that. Results are looked up by value name;
a value the inference did not reach falls back to the shape and type recorded on the ``onnx_ir`` value only
when it is a constant or a graph input (or inference failed altogether): value_info stored in the file is
never trusted, so a model and its simplified copy get the same shapes. Shape arithmetic that onnx's data
propagation does not follow (``Shape -> Gather -> Mul -> Concat -> Reshape``) is folded on the skeleton and
inference rerun, so shapes follow from the given input shapes alone.

Dynamic dimensions: the caller's ``input_shapes`` give full shapes for named graph inputs; the symbols
they bind (``batch`` in ``["batch", 3, 224, 224]``) are reused for the same symbol in other inputs. Any
remaining dimension that is batch-like (axis 0, or a symbol whose name contains ``batch``) is taken as 1;
other symbolic dimensions stay symbolic, and whatever depends on them has no static size.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from collections.abc import Iterator, Mapping, Sequence

import numpy as np
import onnx
import onnx_ir as ir

from sftonnx.errors import InputError

__all__ = ["Dim", "ShapeTable", "TensorInfo", "infer_tensor_shapes", "tensor_nbytes"]

logger = logging.getLogger(__name__)

#: One dimension: a size, a symbol (``"batch"``) or ``None`` when nothing is known.
Dim = int | str | None

#: Initializers up to this size are kept inline for shape inference (data propagation reads shape tensors);
#: larger ones are declared as typed graph inputs instead, so their data is not copied.
_INLINE_INITIALIZER_BYTES = 16 * 1024


def tensor_nbytes(dtype: ir.DataType | None, shape: Sequence[Dim] | None) -> int | None:
    """Bytes of a dense tensor, or ``None`` when the dtype, the rank or any dimension is unknown.

    Sub-byte types (INT4, FLOAT4E2M1, ...) are rounded up to whole bytes; strings have no fixed size.
    """
    if dtype is None or shape is None or dtype in (ir.DataType.UNDEFINED, ir.DataType.STRING):
        return None
    if not all(isinstance(d, int) and d >= 0 for d in shape):
        return None
    return math.ceil(math.prod(shape) * dtype.bitwidth / 8)  # type: ignore[arg-type]


@dataclasses.dataclass(frozen=True)
class TensorInfo:
    """Element type and shape of one tensor.

    Attributes:
        dtype: Element type, ``None`` when unknown (or not a tensor).
        shape: Dimensions (sizes, symbols or ``None``), or ``None`` when even the rank is unknown.
    """

    dtype: ir.DataType | None
    shape: tuple[Dim, ...] | None

    @property
    def static_shape(self) -> tuple[int, ...] | None:
        """The shape when every dimension is a known size, else ``None``."""
        if self.shape is None or not all(isinstance(d, int) and d >= 0 for d in self.shape):
            return None
        return self.shape  # type: ignore[return-value]

    @property
    def nbytes(self) -> int | None:
        """Bytes of the tensor, ``None`` when dtype or shape is not fully known."""
        return tensor_nbytes(self.dtype, self.shape)


@dataclasses.dataclass
class ShapeTable:
    """Inferred tensor types of a model, looked up by value.

    Attributes:
        tensors: Inferred info by value name (every graph, subgraphs included).
        input_shapes: The shapes assumed for the main graph's (non-initializer) inputs after filling in
            dynamic dimensions; dimensions left symbolic stay strings.
        error: Why shape inference failed, when it did (lookups then use only the shapes on the model).
    """

    tensors: dict[str, TensorInfo] = dataclasses.field(default_factory=dict)
    input_shapes: dict[str, tuple[Dim, ...]] = dataclasses.field(default_factory=dict)
    error: str | None = None

    def info(self, value: ir.Value | None) -> TensorInfo | None:
        """Info for ``value``: the inferred one, else what the model records (see below), else ``None``.

        The model's own record is used only for constants, graph inputs, or when inference failed altogether.
        Shapes recorded on intermediate values (value_info) are not used when inference ran: whether a file
        carries them depends on the tool that wrote it, and figures such as MACs must not change with that.
        """
        if value is None:
            return None
        inferred = self.tensors.get(value.name) if value.name else None
        if inferred is not None and inferred.shape is not None and inferred.dtype is not None:
            return inferred
        trusted = self.error is not None or value.const_value is not None or value.is_graph_input()
        own = _value_info(value) if trusted else None
        if inferred is None:
            return own
        if own is None:
            return inferred
        shape = inferred.shape if inferred.shape is not None else own.shape
        return TensorInfo(inferred.dtype or own.dtype, shape)

    def static_shape(self, value: ir.Value | None) -> tuple[int, ...] | None:
        """The value's shape when fully known, else ``None``."""
        info = self.info(value)
        return None if info is None else info.static_shape

    def nbytes(self, value: ir.Value | None) -> int | None:
        """The value's size in bytes when dtype and shape are fully known, else ``None``."""
        info = self.info(value)
        return None if info is None else info.nbytes


def infer_tensor_shapes(
    model: ir.Model, input_shapes: Mapping[str, Sequence[int]] | None = None
) -> ShapeTable:
    """Run onnx shape inference (with data propagation) on a skeleton copy of ``model``.

    Args:
        model: The model; not modified.
        input_shapes: Full static shapes for graph inputs by name, used instead of their declared
            (dynamic) shapes. Other batch-like dimensions are taken as 1 (see the module docstring).

    Returns:
        The inferred table. When onnx shape inference itself fails, the table records the error (and a
        warning is logged) and lookups fall back to the shapes stored on the model.

    Raises:
        InputError: ``input_shapes`` names an unknown input, has the wrong rank, or contradicts a static
            dimension of the model.
    """
    proto = _skeleton(model)
    assumed = _fill_input_shapes(proto.graph, model, dict(input_shapes or {}))
    table = ShapeTable(input_shapes=assumed)
    try:
        inferred = onnx.shape_inference.infer_shapes(proto, data_prop=True)
    except Exception as error:  # onnx raises assorted types on models it cannot infer
        logger.warning("shape inference failed, using the shapes stored on the model: %s", error)
        table.error = f"{type(error).__name__}: {error}"
        inferred = proto
    else:
        inferred = _infer_with_folding(proto, inferred)
    for graph in _proto_graphs(inferred.graph):
        for value_info in (*graph.input, *graph.value_info, *graph.output):
            info = _from_type_proto(value_info.type)
            if info is not None:
                table.tensors[value_info.name] = info
        for tensor in graph.initializer:
            dims = tuple(int(d) for d in tensor.dims)
            table.tensors[tensor.name] = TensorInfo(_dtype(tensor.data_type), dims)
    return table


#: Rounds of "fold the shape computations inference made static, infer again".
_FOLD_ROUNDS = 8
#: Largest result (elements) folding computes: shape arithmetic, never activations or weights.
_FOLD_MAX_ELEMENTS = 4096
#: Default-domain operators evaluated on constant inputs while folding (shape arithmetic).
_FOLDABLE = frozenset(
    {
        "Abs", "Add", "Cast", "Ceil", "Concat", "ConstantOfShape", "Div", "Equal", "Expand",
        "Floor", "Gather", "Greater", "Identity", "Less", "Max", "Min", "Mod", "Mul", "Neg", "Not",
        "Range", "ReduceMax", "ReduceMin", "ReduceProd", "ReduceSum", "Reshape", "Shape", "Size", "Slice",
        "Sqrt", "Squeeze", "Sub", "Tile", "Transpose", "Unsqueeze", "Where",
    }
)  # fmt: skip


def _infer_with_folding(proto: onnx.ModelProto, inferred: onnx.ModelProto) -> onnx.ModelProto:
    """Fold the main graph's shape computations on the skeleton and infer again, until nothing changes.

    onnx's data propagation follows only some shape arithmetic (a ``Shape -> Gather -> Mul -> Concat ->
    Reshape`` chain of a PyTorch LSTM export stops it), so a model's shapes would depend on whether a
    simplifier folded such chains before: its MACs changed under ``simplify``. Evaluating them here, from the
    shapes the given inputs imply, makes the result the same either way.
    """
    for _ in range(_FOLD_ROUNDS):
        if not _fold_shape_computations(proto, inferred):
            break
        try:
            inferred = onnx.shape_inference.infer_shapes(proto, data_prop=True)
        except Exception as error:  # keep the last successful inference
            logger.debug("shape inference after folding failed: %s", error)
            break
    return inferred


class _LazyShapes(dict):
    """``{name: TensorInfo}`` of a graph's inferred values, converted from their protos on first lookup."""

    def __init__(self, graph: onnx.GraphProto) -> None:
        super().__init__()
        self._types = {vi.name: vi.type for vi in (*graph.input, *graph.value_info, *graph.output)}

    def get(self, name: str, default: TensorInfo | None = None) -> TensorInfo | None:  # type: ignore[override]
        """The info of ``name`` (``default`` when inference has nothing for it)."""
        if name not in self and name in self._types:
            info = _from_type_proto(self._types[name])
            if info is not None:
                self[name] = info
        return super().get(name, default)


def _fold_shape_computations(proto: onnx.ModelProto, inferred: onnx.ModelProto) -> int:
    """Replace main-graph nodes whose outputs are small constants (given ``inferred``) by initializers."""
    graph = proto.graph
    shapes = _LazyShapes(inferred.graph)
    known: dict[str, np.ndarray] = {}
    for tensor in graph.initializer:
        shapes[tensor.name] = TensorInfo(_dtype(tensor.data_type), tuple(int(d) for d in tensor.dims))
        if math.prod(tensor.dims) <= _FOLD_MAX_ELEMENTS and tensor.data_type != onnx.TensorProto.STRING:
            known[tensor.name] = ir.serde.deserialize_tensor(tensor).numpy()
    opsets = {entry.domain or "": entry.version for entry in proto.opset_import}
    kept: list[onnx.NodeProto] = []
    folded = 0
    for node in graph.node:
        outputs = None
        if node.domain in ("", "ai.onnx") and node.op_type == "Constant":
            value = _constant_value(node)
            if value is not None and node.output:
                known[node.output[0]] = value  # read only: folding a Constant into an initializer gains nothing
            kept.append(node)
            continue
        if node.domain in ("", "ai.onnx") and node.op_type in _FOLDABLE:
            outputs = _evaluate(node, known, shapes, opsets, proto.ir_version)
        if outputs is None:
            kept.append(node)
            continue
        for name, array in zip(node.output, outputs, strict=False):
            if name:
                known[name] = array
                tensor = ir.serde.serialize_tensor(ir.Tensor(array, name=name))
                graph.initializer.append(tensor)
        folded += 1
    if folded:
        del graph.node[:]
        graph.node.extend(kept)
    return folded


def _evaluate(
    node: onnx.NodeProto,
    known: Mapping[str, np.ndarray],
    shapes: Mapping[str, TensorInfo],
    opsets: Mapping[str, int],
    ir_version: int,
) -> list[np.ndarray] | None:
    """The outputs of ``node`` when they follow from known shapes and constants and are small, else None."""
    if node.op_type in ("Shape", "Size"):
        info = shapes.get(node.input[0]) if node.input else None
        shape = info.static_shape if info is not None else None
        if shape is None:
            return None
        if node.op_type == "Size":
            return [np.array(math.prod(shape), dtype=np.int64)]
        attributes = {a.name: a.i for a in node.attribute}
        start, end = attributes.get("start", 0), attributes.get("end", len(shape))
        return [np.array(shape[start:end], dtype=np.int64)]
    names = [name for name in node.input if name]
    if any(name not in known for name in names):
        return None
    if _result_too_large(node, known, shapes):
        return None
    try:
        from onnx.reference import ReferenceEvaluator

        outputs = ReferenceEvaluator(_one_node_model(node, known, opsets, ir_version)).run(
            None, {name: known[name] for name in names}
        )
    except Exception as error:  # the reference runtime raises assorted types; such a node just stays
        logger.debug("not folding %s '%s': %s", node.op_type, node.name, error)
        return None
    arrays = [np.asarray(output) for output in outputs]
    if any(array.size > _FOLD_MAX_ELEMENTS or array.dtype.kind not in "biuf" for array in arrays):
        return None
    return arrays


def _constant_value(node: onnx.NodeProto) -> np.ndarray | None:
    """A small numeric Constant node's value, else None."""
    for attribute in node.attribute:
        if attribute.name == "value" and attribute.type == onnx.AttributeProto.TENSOR:
            tensor = attribute.t
            if math.prod(tensor.dims) > _FOLD_MAX_ELEMENTS or tensor.data_type == onnx.TensorProto.STRING:
                return None
            try:
                return ir.serde.deserialize_tensor(tensor).numpy()
            except Exception:  # unreadable (external, malformed): not folded
                return None
        if attribute.name == "value_int":
            return np.array(attribute.i, dtype=np.int64)
        if attribute.name == "value_ints":
            return np.array(list(attribute.ints), dtype=np.int64)
        if attribute.name == "value_float":
            return np.array(attribute.f, dtype=np.float32)
        if attribute.name == "value_floats":
            return np.array(list(attribute.floats), dtype=np.float32)
    return None


def _result_too_large(node: onnx.NodeProto, known: Mapping[str, np.ndarray], shapes: Mapping[str, TensorInfo]) -> bool:
    """Whether an output would exceed the folding limit (checked before computing it: generated weights)."""
    for name in node.output:
        info = shapes.get(name)
        if info is not None and info.static_shape is not None and math.prod(info.static_shape) > _FOLD_MAX_ELEMENTS:
            return True
    try:
        if node.op_type == "ConstantOfShape":
            return math.prod(int(d) for d in known[node.input[0]].reshape(-1)) > _FOLD_MAX_ELEMENTS
        if node.op_type == "Expand":
            shape = np.broadcast_shapes(known[node.input[0]].shape, tuple(int(d) for d in known[node.input[1]]))
            return math.prod(shape) > _FOLD_MAX_ELEMENTS
        if node.op_type == "Tile":
            return known[node.input[0]].size * math.prod(int(r) for r in known[node.input[1]]) > _FOLD_MAX_ELEMENTS
        if node.op_type == "Range":
            start, limit, delta = (float(known[name]) for name in node.input[:3])
            return delta == 0 or math.ceil((limit - start) / delta) > _FOLD_MAX_ELEMENTS
    except (ValueError, TypeError, IndexError, OverflowError):  # malformed: let the reference runtime decide
        return True
    return False


def _one_node_model(
    node: onnx.NodeProto, known: Mapping[str, np.ndarray], opsets: Mapping[str, int], ir_version: int
) -> onnx.ModelProto:
    model = onnx.ModelProto()
    model.ir_version = ir_version
    for domain, version in opsets.items():
        entry = model.opset_import.add()
        entry.domain, entry.version = domain, version
    model.graph.name = "fold"
    model.graph.node.add().CopyFrom(node)
    for name in dict.fromkeys(name for name in node.input if name):
        value_info = model.graph.input.add()
        value_info.name = name
        tensor_type = value_info.type.tensor_type
        tensor_type.elem_type = ir.DataType.from_numpy(known[name].dtype).value
        tensor_type.shape.SetInParent()
        for size in known[name].shape:
            tensor_type.shape.dim.add().dim_value = size
    for name in node.output:
        if name:
            model.graph.output.add().name = name
    return model


def _skeleton(model: ir.Model) -> onnx.ModelProto:
    """A ModelProto of ``model`` without large tensor data and without (possibly stale) value_info."""
    proto = onnx.ModelProto()
    # IR version 4 lets initializers be absent from the graph inputs, which the skeleton relies on.
    proto.ir_version = max(model.ir_version, 4)
    for domain, version in model.opset_imports.items():
        opset = proto.opset_import.add()
        opset.domain = domain
        opset.version = version
    graph = proto.graph
    graph.name = model.graph.name or "main"
    declared = {value.name for value in model.graph.inputs}
    for value in model.graph.inputs:
        ir.serde.serialize_value_into(graph.input.add(), value)
    for name, value in model.graph.initializers.items():
        tensor = value.const_value
        inline = (
            tensor is not None
            and not isinstance(tensor, ir.ExternalTensor)
            and tensor.dtype != ir.DataType.STRING
            and tensor.nbytes <= _INLINE_INITIALIZER_BYTES
        )
        if inline:
            tensor_proto = graph.initializer.add()
            ir.serde.serialize_tensor_into(tensor_proto, tensor)  # type: ignore[arg-type]
            tensor_proto.name = name
        elif name not in declared:
            _declare_input(graph.input.add(), value)
    for node in _sorted_nodes(model.graph):
        ir.serde.serialize_node_into(graph.node.add(), node, model_ir_version=model.ir_version)
    for value in model.graph.outputs:
        ir.serde.serialize_value_into(graph.output.add(), value)
    for function in model.functions.values():
        ir.serde.serialize_function_into(proto.functions.add(), function, model_ir_version=model.ir_version)
    opset = model.opset_imports.get("", model.opset_imports.get("ai.onnx", 0))
    for subgraph in _proto_graphs(graph):
        _standard_stand_ins(subgraph, opset)
        del subgraph.value_info[:]
        # Declared output shapes are often wrong in exported models ([1, seqlen] for a [T, 1, 8210] result)
        # and a contradiction stops all of onnx inference: infer them instead, keeping only the element type.
        for output in subgraph.output:
            if output.type.HasField("tensor_type"):
                output.type.tensor_type.ClearField("shape")
        if subgraph is not graph:
            for value_info in subgraph.input:
                _clear_nonpositive_dims(value_info)
    return proto


#: onnxruntime contrib ops (what ``ort-offline`` and ``fuse-ort`` write) that onnx shape inference does not know,
#: and the standard op with the same output shape: ``{op_type: (standard op_type, inputs kept, attributes kept)}``.
_STAND_INS: dict[str, tuple[str, int, frozenset[str]]] = {
    "FusedConv": ("Conv", 3, frozenset({"auto_pad", "dilations", "group", "kernel_shape", "pads", "strides"})),
    "FusedGemm": ("Gemm", 3, frozenset({"alpha", "beta", "transA", "transB"})),
    "FusedMatMul": ("MatMul", 2, frozenset()),
    "Gelu": ("Identity", 1, frozenset()),
    "FastGelu": ("Identity", 1, frozenset()),
    "QuickGelu": ("Identity", 1, frozenset()),
    "BiasGelu": ("Identity", 1, frozenset()),
}


def _standard_stand_ins(graph: onnx.GraphProto, opset: int) -> None:
    """Replace contrib ops of known output shape by standard ones in the skeleton, so inference goes on."""
    for node in graph.node:
        if node.domain != "com.microsoft" or node.op_type not in _STAND_INS or len(node.output) != 1:
            continue
        attributes = {attribute.name: attribute.i for attribute in node.attribute}
        if node.op_type == "FusedMatMul" and (attributes.get("transA") or attributes.get("transB")):
            if opset >= 12:  # Einsum's first opset
                _fused_matmul_as_einsum(node, attributes)
            continue
        op_type, arity, kept = _STAND_INS[node.op_type]
        node.domain, node.op_type = "", op_type
        del node.input[arity:]
        keep = [attribute for attribute in node.attribute if attribute.name in kept]
        del node.attribute[:]
        node.attribute.extend(keep)


def _fused_matmul_as_einsum(node: onnx.NodeProto, attributes: Mapping[str, int]) -> None:
    """A FusedMatMul with a transposed operand as the Einsum of the same shape (batch transposes: left alone)."""
    if attributes.get("transBatchA") or attributes.get("transBatchB"):
        return
    left = "...ji" if attributes.get("transA") else "...ij"
    right = "...kj" if attributes.get("transB") else "...jk"
    node.domain, node.op_type = "", "Einsum"
    del node.input[2:]
    del node.attribute[:]
    equation = node.attribute.add()
    equation.name, equation.type, equation.s = "equation", onnx.AttributeProto.STRING, f"{left},{right}->...ik".encode()


def _clear_nonpositive_dims(value_info: onnx.ValueInfoProto) -> None:
    """Make declared dimensions <= 0 (Paddle's dynamic -1) unknown."""
    if value_info.type.HasField("tensor_type"):
        for dim in value_info.type.tensor_type.shape.dim:
            if dim.HasField("dim_value") and dim.dim_value <= 0:
                dim.Clear()


def _sorted_nodes(graph: ir.Graph) -> list[ir.Node]:
    """The nodes in topological order (inference reads them in order), or as stored when there is a cycle."""
    from sftonnx.analysis.memory import topological_order  # memory imports this module

    try:
        return topological_order(graph)
    except InputError:
        return list(graph)


def _declare_input(value_info: onnx.ValueInfoProto, value: ir.Value) -> None:
    """Declare an initializer as a typed graph input (dtype and shape from its tensor)."""
    value_info.name = value.name or ""
    tensor = value.const_value
    dtype = tensor.dtype if tensor is not None else value.dtype
    shape = tensor.shape if tensor is not None else value.shape
    tensor_type = value_info.type.tensor_type
    tensor_type.elem_type = dtype.value if dtype is not None else 0
    if shape is not None:
        tensor_type.shape.SetInParent()
        for dim in shape:
            entry = tensor_type.shape.dim.add()
            if isinstance(dim, int):
                entry.dim_value = dim
            elif dim.value is not None:
                entry.dim_param = dim.value


def _fill_input_shapes(
    graph: onnx.GraphProto, model: ir.Model, requested: dict[str, Sequence[int]]
) -> dict[str, tuple[Dim, ...]]:
    """Write concrete input shapes into the skeleton's graph inputs; return the shapes assumed."""
    initializers = set(model.graph.initializers)
    inputs = {vi.name: vi for vi in graph.input if vi.name not in initializers}
    unknown = sorted(set(requested) - set(inputs))
    if unknown:
        raise InputError(f"input_shapes names unknown inputs {unknown}; the inputs are {sorted(inputs)}")
    symbols: dict[str, int] = {}
    for name, shape in requested.items():
        dims = inputs[name].type.tensor_type.shape.dim
        if not inputs[name].type.tensor_type.HasField("shape"):
            continue  # rank unknown: the requested shape is taken as is
        if len(dims) != len(shape):
            raise InputError(f"input '{name}' has rank {len(dims)}, input_shapes gives {tuple(shape)}")
        for axis, (dim, size) in enumerate(zip(dims, shape, strict=True)):
            if dim.HasField("dim_value") and dim.dim_value > 0 and dim.dim_value != size:
                raise InputError(
                    f"input '{name}' has size {dim.dim_value} on axis {axis}, input_shapes gives {size}"
                )
            if dim.HasField("dim_param"):
                symbols.setdefault(dim.dim_param, int(size))
    assumed: dict[str, tuple[Dim, ...]] = {}
    for name, value_info in inputs.items():
        tensor_type = value_info.type.tensor_type
        if not value_info.type.HasField("tensor_type"):
            continue
        if name in requested:
            tensor_type.shape.Clear()
            tensor_type.shape.SetInParent()
            for size in requested[name]:
                tensor_type.shape.dim.add().dim_value = int(size)
        elif tensor_type.HasField("shape"):
            for axis, dim in enumerate(tensor_type.shape.dim):
                if dim.HasField("dim_value") and dim.dim_value > 0:
                    continue
                if dim.HasField("dim_value"):  # Paddle's -1 (or 0) for a dynamic dimension
                    dim.Clear()
                if dim.HasField("dim_param") and dim.dim_param in symbols:
                    dim.dim_value = symbols[dim.dim_param]
                elif axis == 0 or "batch" in dim.dim_param.lower():
                    dim.dim_value = 1
        info = _from_type_proto(value_info.type)
        if info is not None and info.shape is not None:
            assumed[name] = info.shape
    return assumed


def _proto_graphs(graph: onnx.GraphProto) -> Iterator[onnx.GraphProto]:
    """``graph`` and every subgraph nested in its nodes' attributes."""
    yield graph
    for node in graph.node:
        for attribute in node.attribute:
            if attribute.type == onnx.AttributeProto.GRAPH:
                yield from _proto_graphs(attribute.g)
            elif attribute.type == onnx.AttributeProto.GRAPHS:
                for subgraph in attribute.graphs:
                    yield from _proto_graphs(subgraph)


def _dtype(elem_type: int) -> ir.DataType | None:
    try:
        dtype = ir.DataType(elem_type)
    except ValueError:
        return None
    return None if dtype == ir.DataType.UNDEFINED else dtype


def _from_type_proto(type_proto: onnx.TypeProto) -> TensorInfo | None:
    if not type_proto.HasField("tensor_type"):
        return None
    tensor_type = type_proto.tensor_type
    shape: tuple[Dim, ...] | None = None
    if tensor_type.HasField("shape"):
        shape = tuple(
            (int(d.dim_value) if d.dim_value >= 0 else None) if d.HasField("dim_value") else (d.dim_param or None)
            for d in tensor_type.shape.dim
        )
    return TensorInfo(_dtype(tensor_type.elem_type), shape)


def _value_info(value: ir.Value) -> TensorInfo | None:
    """What the ``onnx_ir`` value itself records (its constant's shape when it has one)."""
    tensor = value.const_value
    if tensor is not None:
        return TensorInfo(tensor.dtype, tuple(tensor.shape))  # type: ignore[arg-type]
    if value.type is None and value.shape is None:
        return None
    shape = None
    if value.shape is not None:
        shape = tuple((d if d >= 0 else None) if isinstance(d, int) else d.value for d in value.shape)
    return TensorInfo(value.dtype, shape)
