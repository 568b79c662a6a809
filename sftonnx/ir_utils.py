"""Small helpers on ``onnx_ir`` objects, one per job the passes share.

Plain functions, no wrappers of onnx-ir objects (:class:`NameAllocator` only holds the set of names taken).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator

import numpy as np
import onnx_ir as ir

__all__ = [
    "adopt_model",
    "all_graphs",
    "attr",
    "constant_array",
    "NameAllocator",
    "fresh_name",
    "is_op",
    "make_initializer",
    "nested_node_count",
    "opset_version",
    "reads_metadata_only",
    "replace_value",
    "restore_model",
    "sole_consumer",
    "upgrade_opset",
]


def all_graphs(model: ir.Model) -> Iterator[ir.Graph | ir.Function]:
    """The main graph, every subgraph (If/Loop/Scan bodies) and every local function."""
    yield model.graph
    yield from model.graph.subgraphs()
    for function in model.functions.values():
        yield function
        yield from function.subgraphs()


def nested_node_count(model: ir.Model) -> int:
    """Nodes outside the main graph: in If/Loop/Scan bodies (at any depth) and in local functions."""
    return sum(1 for g in model.graph.subgraphs() for _ in g) + sum(1 for f in model.functions.values() for _ in f)


def is_op(node: ir.Node, op_type: str, domain: str = "") -> bool:
    """Whether ``node`` is ``domain::op_type`` (``ai.onnx`` counts as the default domain)."""
    node_domain = "" if node.domain == "ai.onnx" else node.domain
    return node.op_type == op_type and node_domain == domain


def constant_array(value: ir.Value | None) -> np.ndarray | None:
    """The value's constant contents as a numpy array, else ``None``.

    The one constant reader of the passes: an initializer, or a ``Constant`` node in any of its forms
    (``value``, ``value_float(s)``, ``value_int(s)``, ...), read with ``onnx_ir.convenience.get_const_tensor``.
    A ``value`` attribute is read directly, because ``get_const_tensor`` renames that attribute's tensor in
    place (a reader must not change the model). Passes that fold constant expressions (fusion's
    ``FusionContext.array``, pruning's ``ConstantReader``) build on it.
    """
    if value is None:
        return None
    try:
        tensor = value.const_value
        if tensor is None:
            producer = value.producer()
            if producer is None or not is_op(producer, "Constant"):
                return None
            attribute = producer.attributes.get("value")
            if attribute is not None:
                tensor = attribute.as_tensor() if attribute.type == ir.AttributeType.TENSOR else None
            else:
                tensor = ir.convenience.get_const_tensor(value)  # builds a new tensor for the other forms
        return None if tensor is None else tensor.numpy()
    except Exception:  # malformed Constant nodes, external data missing, odd string tensors
        return None


def reads_metadata_only(node: ir.Node, index: int) -> bool:
    """Whether ``node`` reads only the shape or element type of its input ``index``, never its values.

    ``Shape`` and ``Size`` read the shape; ``CastLike`` reads only the element type of its second input (its
    target type). A pass that rewrites a weight's values (same shape and dtype) may leave such readers on the
    old tensor or move them to the new one: they are not "other users" of the values.
    """
    if node.domain not in ("", "ai.onnx"):
        return False
    return node.op_type in ("Shape", "Size") or (node.op_type == "CastLike" and index == 1)


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


class NameAllocator:
    """Fresh names: ``base``, else ``base_1``, ``base_2``, ... whichever is free; each one handed out is reserved.

    The one name allocator of the passes (value names, node names, initializer names).

    Args:
        taken: Names already in use.
    """

    def __init__(self, taken: Iterable[str] = ()) -> None:
        self.taken = set(taken)

    @classmethod
    def for_model(cls, model: ir.Model, *, node_names: bool = False) -> NameAllocator:
        """An allocator avoiding every value name of the model (all graphs and functions), and node names."""
        taken: set[str] = set()
        for graph in all_graphs(model):
            taken |= _names(graph, node_names=node_names, recursive=False)
        return cls(taken)

    @classmethod
    def for_graph(cls, graph: ir.Graph | ir.Function, *, node_names: bool = False) -> NameAllocator:
        """An allocator avoiding the value names of ``graph`` and its subgraphs (and node names)."""
        return cls(_names(graph, node_names=node_names, recursive=True))

    def __call__(self, base: str) -> str:
        """A free name derived from ``base``, reserved."""
        name, index = base, 0
        while name in self.taken:
            index += 1
            name = f"{base}_{index}"
        self.taken.add(name)
        return name


def fresh_name(graph: ir.Graph | ir.Function, base: str) -> str:
    """A value name not yet used in ``graph`` (or its subgraphs), derived from ``base`` (one-off use).

    Passes that create many names build one :class:`NameAllocator` instead (one scan of the graph).
    """
    return NameAllocator.for_graph(graph)(base)


def _names(graph: ir.Graph | ir.Function, *, node_names: bool, recursive: bool) -> set[str]:
    names: set[str] = {v.name for v in graph.inputs if v.name}
    names.update(v.name for v in graph.outputs if v.name)
    if isinstance(graph, ir.Graph):
        names.update(graph.initializers)
    nodes = ir.traversal.RecursiveGraphIterator(graph) if recursive else graph
    for node in nodes:
        names.update(v.name for v in node.outputs if v.name)
        if node_names and node.name:
            names.add(node.name)
    return names


def replace_value(old: ir.Value, new: ir.Value, rename: Callable[[str], str]) -> None:
    """Make every reader of ``old`` read ``new``; a graph output ``old`` is replaced by ``new`` under its name.

    The graph's interface keeps its names: when ``old`` is a graph output, ``new`` takes its place and its name,
    and ``old`` is renamed ``rename(old name)``. Create the nodes that read ``old`` to compute ``new`` after
    this call, or they would be switched to ``new`` too.
    """
    if old.is_graph_output():
        name = old.name or ""
        old.name = rename(name)
        old.replace_all_uses_with(new, replace_graph_outputs=True)
        new.name = name
    else:
        old.replace_all_uses_with(new)


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
