"""Small helpers on ``onnx_ir`` objects. Plain functions, no wrapper classes."""

from __future__ import annotations

import itertools
from collections.abc import Iterator

import numpy as np
import onnx_ir as ir

__all__ = [
    "adopt_model",
    "all_graphs",
    "attr",
    "constant_array",
    "fresh_name",
    "is_op",
    "make_initializer",
    "name_allocator",
    "opset_version",
    "restore_model",
    "upgrade_opset",
    "sole_consumer",
]


def all_graphs(model: ir.Model) -> Iterator[ir.Graph | ir.Function]:
    """The main graph, every subgraph (If/Loop/Scan bodies) and every local function."""
    yield model.graph
    yield from model.graph.subgraphs()
    for function in model.functions.values():
        yield function
        yield from function.subgraphs()


def is_op(node: ir.Node, op_type: str, domain: str = "") -> bool:
    """Whether ``node`` is ``domain::op_type`` (``ai.onnx`` counts as the default domain)."""
    node_domain = "" if node.domain == "ai.onnx" else node.domain
    return node.op_type == op_type and node_domain == domain


def constant_array(value: ir.Value | None) -> np.ndarray | None:
    """The value's constant contents as a numpy array (initializer or Constant node), else ``None``."""
    if value is None:
        return None
    tensor = value.const_value
    if tensor is None:
        producer = value.producer()
        if producer is None or not is_op(producer, "Constant"):
            return None
        attribute = producer.attributes.get("value")
        if attribute is None or attribute.type != ir.AttributeType.TENSOR:
            return None
        tensor = attribute.as_tensor()
    try:
        return tensor.numpy()
    except Exception:  # external data missing, string tensors of odd shapes
        return None


def attr(node: ir.Node, name: str, default=None):
    """An attribute's Python value, or ``default`` when absent."""
    attribute = node.attributes.get(name)
    if attribute is None:
        return default
    return attribute.value


def sole_consumer(value: ir.Value) -> ir.Node | None:
    """The one node that reads ``value``, or ``None`` when it has several readers or is a graph output."""
    if value.is_graph_output():
        return None
    users = {use.node for use in value.uses()}
    if len(users) != 1 or len(value.uses()) != 1:
        return None
    return next(iter(users))


def fresh_name(graph: ir.Graph | ir.Function, base: str) -> str:
    """A value name not yet used in ``graph`` (or its subgraphs), derived from ``base``."""
    taken = _names(graph)
    if base not in taken:
        return base
    for index in itertools.count(1):
        candidate = f"{base}_{index}"
        if candidate not in taken:
            return candidate
    raise AssertionError("unreachable")


def _names(graph: ir.Graph | ir.Function) -> set[str]:
    names: set[str] = {v.name for v in graph.inputs if v.name}
    if isinstance(graph, ir.Graph):
        names.update(graph.initializers)
    for node in ir.traversal.RecursiveGraphIterator(graph):
        names.update(v.name for v in node.outputs if v.name)
    return names


def make_initializer(graph: ir.Graph, name: str, array: np.ndarray) -> ir.Value:
    """Add ``array`` as a new initializer of ``graph`` under a fresh name and return its value."""
    unique = fresh_name(graph, name)
    tensor = ir.tensor(array, name=unique)
    value = ir.Value(name=unique, shape=ir.Shape(array.shape), type=ir.TensorType(tensor.dtype), const_value=tensor)
    graph.register_initializer(value)
    return value


def opset_version(model: ir.Model, domain: str = "") -> int:
    """The model's imported opset version for ``domain`` (0 when not imported)."""
    if domain == "":
        return model.opset_imports.get("", model.opset_imports.get("ai.onnx", 0))
    return model.opset_imports.get(domain, 0)


def adopt_model(model: ir.Model, new_model: ir.Model) -> None:
    """Make ``model`` hold ``new_model``'s graph and functions, keeping the caller's ``Model`` object.

    For in-place passes built on tools that return a new model (onnxsim, onnxruntime's offline optimizer).
    """
    model.graph = new_model.graph
    model.functions.clear()
    model.functions.update(new_model.functions)
    model.ir_version = max(model.ir_version, new_model.ir_version)


def restore_model(model: ir.Model, saved: ir.Model) -> None:
    """Make ``model`` equal ``saved`` again (graph, functions, opset imports, IR version), keeping the object.

    For passes that decline after they started rewriting: ``saved`` is the model loaded from the bytes taken
    before the first change, so the caller's model serializes exactly as it did.
    """
    adopt_model(model, saved)
    model.ir_version = saved.ir_version


def upgrade_opset(model: ir.Model, minimum: int, *, why: str) -> int | None:
    """Convert ``model`` in place to default-domain opset ``minimum`` with onnx's version converter.

    Args:
        model: The model (kept as the same object).
        minimum: The opset the caller needs.
        why: Who needs it, for the error (e.g. ``"quantize-dynamic needs DynamicQuantizeLinear"``).

    Returns:
        The previous opset when the model was converted, ``None`` when it already was new enough.

    Raises:
        onnx_ir.passes.PreconditionError: onnx cannot convert the model.
    """
    import onnx

    version = opset_version(model)
    if version >= minimum:
        return None
    try:
        proto = onnx.version_converter.convert_version(ir.to_proto(model), minimum)
    except Exception as error:  # the converter raises various C++ errors
        raise ir.passes.PreconditionError(
            f"{why} (opset >= {minimum}) and onnx cannot convert this opset-{version} model: {error}"
        ) from None
    converted = ir.from_proto(proto)
    imports = dict(converted.opset_imports)  # Model.opset_imports is the graph's dict: copy before adopting
    adopt_model(model, converted)
    model.opset_imports.clear()
    model.opset_imports.update(imports)
    model.ir_version = max(model.ir_version, converted.ir_version)
    return version


def name_allocator(taken: set[str]):
    """A function ``fresh(base)`` returning ``base``, ``base_1``, ... not in ``taken`` (which it extends).

    For passes that create many values: one scan of the graph up front instead of one per name.
    """

    def fresh(base: str) -> str:
        name, index = base, 0
        while name in taken:
            index += 1
            name = f"{base}_{index}"
        taken.add(name)
        return name

    return fresh
