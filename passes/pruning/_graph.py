"""Graph helpers of the pruning passes: reading constants (folding constant chains), writing initializers.

Exporters often compute parameters instead of storing them: torch's unoptimized export builds every
Conv's zero bias as ``Expand(CastLike(0, x), Expand(Shape(W)[0:1], [1]))``. A pruning pass has to slice
such a bias together with the filters, so :class:`ConstantReader` evaluates a value whose producers only
depend on constants (initializers, ``Constant`` nodes, ``Shape`` of statically shaped values, and the
type-only second input of ``CastLike``) with onnx's reference evaluator. Nothing in the model changes when
a value is read; the pass writes the sliced result as a new initializer and the chain becomes dead.
"""

from __future__ import annotations

import logging

import numpy as np
import onnx
import onnx_ir as ir

from sftonnx.ir_utils import constant_array, is_op, make_initializer

__all__ = ["ConstantReader", "is_float", "retire", "set_constant_input"]

logger = logging.getLogger(__name__)

#: Largest producer chain evaluated to read one constant.
_MAX_CHAIN = 64
_NON_DETERMINISTIC = {"RandomNormal", "RandomNormalLike", "RandomUniform", "RandomUniformLike", "Multinomial"}
_FLOAT_TYPES = {ir.DataType.FLOAT, ir.DataType.FLOAT16, ir.DataType.DOUBLE, ir.DataType.BFLOAT16}


def is_float(array: np.ndarray) -> bool:
    """Whether ``array`` holds floating-point numbers."""
    return np.dtype(array.dtype).kind == "f"


class ConstantReader:
    """Reads the constant contents of values, evaluating constant-only producer chains when needed.

    Values that are graph inputs are never constant, except initializers listed as inputs in models with
    IR version < 4 (where every initializer must be listed; onnx's ``light_*`` models).

    Args:
        model: The model (not modified).
    """

    def __init__(self, model: ir.Model) -> None:
        self.model = model
        self._cache: dict[ir.Value, np.ndarray | None] = {}
        self._inputs = {id(v) for v in model.graph.inputs}
        self._overridable = model.ir_version >= 4

    def is_input(self, value: ir.Value) -> bool:
        """Whether ``value`` can be fed by the caller (a graph input that is not a fixed initializer)."""
        if id(value) not in self._inputs:
            return False
        return self._overridable or value.const_value is None

    def array(self, value: ir.Value | None) -> np.ndarray | None:
        """The value's constant contents, or ``None`` when it depends on run-time data."""
        if value is None:
            return None
        if value in self._cache:
            return self._cache[value]
        result = None
        if not self.is_input(value):
            result = constant_array(value)
            if result is None and value.producer() is not None:
                try:
                    result = self._evaluate(value)
                except Exception as error:  # the reference evaluator raises assorted errors
                    logger.debug("cannot fold '%s': %s", value.name, error)
                    result = None
        self._cache[value] = result
        return result

    def _evaluate(self, target: ir.Value) -> np.ndarray | None:
        """Evaluate ``target`` from its constant-only producers with onnx's reference evaluator."""
        from onnx.reference import ReferenceEvaluator

        order: list[ir.Node] = []
        leaves: dict[ir.Value, np.ndarray] = {}
        seen: set[ir.Node] = set()
        stack: list[tuple[ir.Node, bool]] = [(target.producer(), False)]  # type: ignore[list-item]
        while stack:
            node, expanded = stack.pop()
            if expanded:
                order.append(node)
                continue
            if node in seen:
                continue
            seen.add(node)
            if len(seen) > _MAX_CHAIN or node.op_type in _NON_DETERMINISTIC or node.graph is not self.model.graph:
                return None
            if any(attr.type in (ir.AttributeType.GRAPH, ir.AttributeType.GRAPHS) for attr in node.attributes.values()):
                return None
            stack.append((node, True))
            for index, value in enumerate(node.inputs):
                if value is None or value in leaves:
                    continue
                known = None if self.is_input(value) else constant_array(value)
                if known is not None:
                    leaves[value] = known
                    continue
                if is_op(node, "Shape") and value.shape is not None and value.shape.is_static():
                    # Only the shape is read: a zero-filled stand-in of the static shape is enough.
                    leaves[value] = np.zeros(tuple(int(d) for d in value.shape), dtype=_np_dtype(value))
                    continue
                if is_op(node, "CastLike") and index == 1 and value.dtype is not None:
                    leaves[value] = np.zeros((0,), dtype=_np_dtype(value))  # only the element type is read
                    continue
                producer = value.producer()
                if producer is None:
                    return None
                stack.append((producer, False))
        feeds = {value.name: array for value, array in leaves.items()}
        proto = _chain_model(order, leaves, target, self.model)
        result = ReferenceEvaluator(proto).run(None, feeds)[0]
        return np.asarray(result)


def _np_dtype(value: ir.Value) -> np.dtype:
    return np.dtype(value.dtype.numpy()) if value.dtype is not None else np.dtype(np.float32)


def _chain_model(order: list[ir.Node], leaves: dict[ir.Value, np.ndarray], target: ir.Value,
                 model: ir.Model) -> onnx.ModelProto:
    """A model holding copies of ``order`` with the leaves as typed inputs and ``target`` as output."""
    mapping: dict[ir.Value, ir.Value] = {}
    inputs = []
    for value, array in leaves.items():
        copy = ir.Value(name=value.name, type=ir.TensorType(ir.DataType.from_numpy(array.dtype)),
                        shape=ir.Shape(array.shape))
        mapping[value] = copy
        inputs.append(copy)
    nodes = []
    for node in order:
        new_inputs = [None if v is None else mapping[v] for v in node.inputs]
        attributes = [ir.Attr(a.name, a.type, a.value) for a in node.attributes.values()]
        outputs = [ir.Value(name=o.name) for o in node.outputs]
        nodes.append(ir.Node(node.domain, node.op_type, new_inputs, attributes, outputs=outputs,
                             version=node.version, name=node.name))
        mapping.update(zip(node.outputs, outputs, strict=True))
    out = mapping[target]
    out.type = target.type or ir.TensorType(ir.DataType.FLOAT)
    graph = ir.Graph(inputs, [out], nodes=nodes, opset_imports=dict(model.opset_imports), name="fold")
    return ir.to_proto(ir.Model(graph, ir_version=min(model.ir_version, 10)))


def set_constant_input(model: ir.Model, node: ir.Node, index: int, array: np.ndarray, base: str) -> ir.Value:
    """Give ``node`` a new initializer holding ``array`` as input ``index`` (other readers keep the old one).

    In models with IR version < 4 the new initializer is listed as a graph input too, as that IR requires.
    Old values that nothing reads any more are removed by the pipeline's clean-up (or :func:`retire`).
    """
    value = make_initializer(model.graph, base, np.ascontiguousarray(array))
    if model.ir_version < 4:
        model.graph.inputs.append(value)
    while len(node.inputs) <= index:
        node.resize_inputs(len(node.inputs) + 1)
    node.replace_input_with(index, value)
    return value


def retire(model: ir.Model, values: list[ir.Value]) -> None:
    """Drop replaced initializers that nothing reads any more (and their IR < 4 graph-input entries)."""
    for value in values:
        if value.uses() or value.is_graph_output() or value.name not in model.graph.initializers:
            continue
        if model.graph.initializers[value.name] is not value:
            continue
        if value in model.graph.inputs:
            if model.ir_version >= 4:
                continue  # a real input with a default: part of the interface
            model.graph.inputs.remove(value)
        del model.graph.initializers[value.name]
