"""Tensor shapes and dtypes for analysis, from onnx shape inference on a skeleton copy of the model.

The model itself is never touched: a lightweight ``ModelProto`` is built from it (nodes, graph inputs and
outputs, small initializers inline; large or external initializers become typed graph inputs so their data is
neither copied nor loaded), dynamic input dimensions are filled in, and
``onnx.shape_inference.infer_shapes(..., data_prop=True)`` runs on that. Results are looked up by value name;
a value the inference did not reach falls back to the shape and type recorded on the ``onnx_ir`` value.

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
        """Info for ``value``: the inferred one, else what the value itself records, else ``None``."""
        if value is None:
            return None
        inferred = self.tensors.get(value.name) if value.name else None
        if inferred is not None and inferred.shape is not None and inferred.dtype is not None:
            return inferred
        own = _value_info(value)
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
    for graph in _proto_graphs(inferred.graph):
        for value_info in (*graph.input, *graph.value_info, *graph.output):
            info = _from_type_proto(value_info.type)
            if info is not None:
                table.tensors[value_info.name] = info
        for tensor in graph.initializer:
            dims = tuple(int(d) for d in tensor.dims)
            table.tensors[tensor.name] = TensorInfo(_dtype(tensor.data_type), dims)
    return table


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
    for node in model.graph:
        ir.serde.serialize_node_into(graph.node.add(), node, model_ir_version=model.ir_version)
    for value in model.graph.outputs:
        ir.serde.serialize_value_into(graph.output.add(), value)
    for function in model.functions.values():
        ir.serde.serialize_function_into(proto.functions.add(), function, model_ir_version=model.ir_version)
    for subgraph in _proto_graphs(graph):
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


def _clear_nonpositive_dims(value_info: onnx.ValueInfoProto) -> None:
    """Make declared dimensions <= 0 (Paddle's dynamic -1) unknown."""
    if value_info.type.HasField("tensor_type"):
        for dim in value_info.type.tensor_type.shape.dim:
            if dim.HasField("dim_value") and dim.dim_value <= 0:
                dim.Clear()


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
