"""Activation liveness over an execution order, peak memory, and a static arena plan with buffer reuse.

Model of execution: the main graph's nodes run one per step in the given (default: topological) order.
A tensor is live from the step that produces it to the last step that reads it, both included, so a node's
inputs and outputs are live together (no in-place execution is assumed). Graph inputs are live from step 0,
graph outputs until the last step; a tensor nobody reads lives only at its own step. A node with subgraphs
(If, Loop, Scan) reads every outer value its subgraphs read, at its own step; memory inside subgraphs is not
modelled.

Only activations count. Constants are weights: initializers (also those that are graph inputs), Constant
outputs, and outputs of deterministic default-domain nodes whose inputs are all constant (what onnxruntime
folds when it loads a model, such as ConstantOfShape of a shape initializer).

Sizes come from shape inference (:mod:`sftonnx.analysis.shapes`); tensors whose size is unknown are listed in
``unknown_size`` and left out of every byte figure.

Reuse plan: greedy by size, best fit. Tensors are placed largest first (ties: earlier start, then graph
order); each goes into the smallest gap, among the tensors already placed whose lifetimes overlap its own,
that fits it, else above the highest of them. ``arena_bytes`` is the resulting arena size; it is at least
``peak_activation_bytes`` and at most ``sum_bytes``. (After the "greedy by size" strategy of TFLite's
arena planner and onnxruntime's memory patterns; our own code.)
"""

from __future__ import annotations

import dataclasses
import heapq
import logging
from collections.abc import Mapping, Sequence
from typing import Any, Literal

import numpy as np
import onnx_ir as ir

from sftonnx.analysis.shapes import ShapeTable, infer_tensor_shapes
from sftonnx.errors import InputError

__all__ = ["MemoryPlan", "TensorLifetime", "constant_values", "node_reads", "plan_memory", "topological_order"]

logger = logging.getLogger(__name__)

#: Operators whose outputs are never folded into constants even when all inputs are constant.
_NONDETERMINISTIC = frozenset(
    {"RandomNormal", "RandomNormalLike", "RandomUniform", "RandomUniformLike", "Multinomial", "Bernoulli"}
)


@dataclasses.dataclass(frozen=True)
class TensorLifetime:
    """One activation's lifetime and placement.

    Attributes:
        name: Value name (``"<unnamed:N>"`` for a value without one).
        kind: ``"input"`` (a graph input), ``"output"`` (a graph output computed by a node) or
            ``"intermediate"``.
        start: First step at which the tensor is live.
        end: Last step at which the tensor is live (inclusive).
        nbytes: Size in bytes, ``None`` when unknown.
        offset: Byte offset in the planned arena, ``None`` when the size is unknown.
    """

    name: str
    kind: Literal["input", "output", "intermediate"]
    start: int
    end: int
    nbytes: int | None
    offset: int | None

    def to_json(self) -> dict[str, Any]:
        """A JSON-able dict."""
        return dataclasses.asdict(self)


@dataclasses.dataclass(frozen=True)
class MemoryPlan:
    """Activation memory of one execution order.

    Attributes:
        steps: Nodes in the order (one step each).
        nodes: Node label per step (name, or ``op_type#step`` for an unnamed node).
        tensors: Every activation, in order of first appearance.
        step_bytes: Live bytes at each step (known sizes only).
        peak_activation_bytes: Largest entry of ``step_bytes`` (0 without activations).
        peak_step: The first step with the peak, ``None`` when there are no steps.
        live_at_peak: Names of the tensors live at ``peak_step``.
        arena_bytes: Arena size of the greedy reuse plan.
        sum_bytes: Total bytes of all activations (no reuse).
        unknown_size: Names of activations whose size is unknown.
        shape_inference_error: Why onnx shape inference failed, when it did.
    """

    steps: int
    nodes: list[str]
    tensors: list[TensorLifetime]
    step_bytes: list[int]
    peak_activation_bytes: int
    peak_step: int | None
    live_at_peak: list[str]
    arena_bytes: int
    sum_bytes: int
    unknown_size: list[str]
    shape_inference_error: str | None = None

    @property
    def peak_node(self) -> str | None:
        """Label of the node that runs at the peak step."""
        if self.peak_step is None or self.peak_step >= len(self.nodes):
            return None
        return self.nodes[self.peak_step]

    def to_json(self) -> dict[str, Any]:
        """A JSON-able dict: the attributes plus ``peak_node``."""
        data = dataclasses.asdict(self)
        data["peak_node"] = self.peak_node
        return data


def topological_order(graph: ir.Graph) -> list[ir.Node]:
    """The graph's nodes in a topological order that keeps the stored order wherever it is valid.

    Reads by subgraphs (outer values an If/Loop/Scan body uses) count as reads by the node owning them.
    The graph is not modified (unlike ``Graph.sort``).

    Raises:
        InputError: The graph has a cycle.
    """
    nodes = list(graph)
    index = {node: position for position, node in enumerate(nodes)}
    waiting = [0] * len(nodes)
    dependants: list[list[int]] = [[] for _ in nodes]
    for position, node in enumerate(nodes):
        producers = {index[p] for v in node_reads(node) if (p := v.producer()) is not None and p in index}
        producers.discard(position)
        waiting[position] = len(producers)
        for producer in producers:
            dependants[producer].append(position)
    ready = [position for position, count in enumerate(waiting) if count == 0]
    heapq.heapify(ready)
    order: list[ir.Node] = []
    while ready:
        position = heapq.heappop(ready)
        order.append(nodes[position])
        for dependant in dependants[position]:
            waiting[dependant] -= 1
            if waiting[dependant] == 0:
                heapq.heappush(ready, dependant)
    if len(order) != len(nodes):
        stuck = len(nodes) - len(order)
        raise InputError(f"graph '{graph.name}' has a cycle; {stuck} nodes cannot be ordered")
    return order


def plan_memory(
    model: ir.Model,
    input_shapes: Mapping[str, Sequence[int]] | None = None,
    order: Sequence[ir.Node] | None = None,
    *,
    shapes: ShapeTable | None = None,
) -> MemoryPlan:
    """Liveness, peak and arena plan of the main graph's activations for one execution order.

    Args:
        model: The model; not modified.
        input_shapes: Static shapes for dynamic graph inputs by name (other batch-like dims are taken as 1).
        order: The main graph's nodes in the order to evaluate (each exactly once, topologically valid), so a
            scheduling pass can compare candidate orders without touching the model. Default:
            :func:`topological_order`.
        shapes: A table already inferred for this model (``input_shapes`` is then ignored); pass it when
            evaluating many orders.

    Returns:
        The plan.

    Raises:
        ValueError: ``order`` is not a topologically valid permutation of the main graph's nodes.
        InputError: The graph has a cycle, or ``input_shapes`` does not fit the model's inputs.
    """
    graph = model.graph
    if shapes is None:
        shapes = infer_tensor_shapes(model, input_shapes)
    order = topological_order(graph) if order is None else _checked_order(graph, order)
    constants = constant_values(graph, order)
    last = max(len(order) - 1, 0)

    values: list[ir.Value] = []
    start: dict[ir.Value, int] = {}
    end: dict[ir.Value, int] = {}
    for value in graph.inputs:
        if value not in constants and value not in start:
            values.append(value)
            start[value] = end[value] = 0
    for step, node in enumerate(order):
        for value in node_reads(node):
            if value in start:
                end[value] = max(end[value], step)
        for value in node.outputs:
            if value not in constants and value not in start:
                values.append(value)
                start[value] = end[value] = step
    for value in graph.outputs:
        if value in start:
            end[value] = last

    inputs = set(graph.inputs)
    outputs = set(graph.outputs)
    names = _labels(values)
    sizes = {value: shapes.nbytes(value) for value in values}
    known = [value for value in values if sizes[value] is not None]
    offsets = _best_fit_offsets([(sizes[v], start[v], end[v]) for v in known])  # type: ignore[misc]
    offset_of = dict(zip(known, offsets, strict=True))

    delta = np.zeros(last + 2, dtype=np.int64)
    for value in known:
        delta[start[value]] += sizes[value]
        delta[end[value] + 1] -= sizes[value]
    step_bytes = [int(b) for b in np.cumsum(delta)[: last + 1]]
    peak = max(step_bytes) if step_bytes else 0
    peak_step = step_bytes.index(peak) if step_bytes else None
    live = [names[v] for v in known if peak_step is not None and start[v] <= peak_step <= end[v]]
    arena = max((offset_of[v] + sizes[v] for v in known), default=0)  # type: ignore[operator]

    tensors = [
        TensorLifetime(
            name=names[value],
            kind="input" if value in inputs else "output" if value in outputs else "intermediate",
            start=start[value],
            end=end[value],
            nbytes=sizes[value],
            offset=offset_of.get(value),
        )
        for value in values
    ]
    unknown = [names[value] for value in values if sizes[value] is None]
    if unknown:
        logger.debug("%d activations of unknown size left out of the memory plan", len(unknown))
    return MemoryPlan(
        steps=len(order),
        nodes=[node.name or f"{node.op_type}#{step}" for step, node in enumerate(order)],
        tensors=tensors,
        step_bytes=step_bytes,
        peak_activation_bytes=peak,
        peak_step=peak_step,
        live_at_peak=live,
        arena_bytes=int(arena),
        sum_bytes=sum(sizes[v] for v in known),  # type: ignore[misc]
        unknown_size=unknown,
        shape_inference_error=shapes.error,
    )


def node_reads(node: ir.Node) -> list[ir.Value]:
    """Values ``node`` reads: its inputs and whatever its subgraphs read (outer or not)."""
    reads = [value for value in node.inputs if value is not None]
    for attribute in node.attributes.values():
        if attribute.type == ir.AttributeType.GRAPH:
            subgraphs = [attribute.as_graph()]
        elif attribute.type == ir.AttributeType.GRAPHS:
            subgraphs = list(attribute.as_graphs())
        else:
            continue
        for subgraph in subgraphs:
            for inner in ir.traversal.RecursiveGraphIterator(subgraph):
                reads.extend(value for value in inner.inputs if value is not None)
            reads.extend(subgraph.outputs)  # a body may return an outer value directly
    return reads


def _checked_order(graph: ir.Graph, order: Sequence[ir.Node]) -> list[ir.Node]:
    nodes = set(graph)
    order = list(order)
    if len(order) != len(nodes) or set(order) != nodes:
        raise ValueError("order must list every node of the main graph exactly once")
    done: set[ir.Node] = set()
    for node in order:
        for value in node_reads(node):
            producer = value.producer()
            if producer in nodes and producer not in done and producer is not node:
                raise ValueError(
                    f"order runs node '{node.name or node.op_type}' before "
                    f"'{producer.name or producer.op_type}', which produces its input '{value.name}'"
                )
        done.add(node)
    return order


def constant_values(graph: ir.Graph, order: Sequence[ir.Node]) -> set[ir.Value]:
    """Initializers and everything computable from them alone (folded at load time, so weights)."""
    constants: set[ir.Value] = set(graph.initializers.values())
    for node in order:
        foldable = (
            node.domain in ("", "ai.onnx")
            and node.op_type not in _NONDETERMINISTIC
            and all(
                attribute.type not in (ir.AttributeType.GRAPH, ir.AttributeType.GRAPHS)
                for attribute in node.attributes.values()
            )
            and all(value is None or value in constants for value in node.inputs)
        )
        if foldable:
            constants.update(value for value in node.outputs)
    return constants


def _labels(values: list[ir.Value]) -> dict[ir.Value, str]:
    labels: dict[ir.Value, str] = {}
    unnamed = 0
    for value in values:
        if value.name:
            labels[value] = value.name
        else:
            labels[value] = f"<unnamed:{unnamed}>"
            unnamed += 1
    return labels


def _best_fit_offsets(tensors: list[tuple[int, int, int]]) -> list[int]:
    """Arena offsets for ``(nbytes, start, end)`` tensors, greedy by size with best fit (module docstring)."""
    count = len(tensors)
    offsets = [0] * count
    placed_start = np.empty(count, dtype=np.int64)
    placed_end = np.empty(count, dtype=np.int64)
    placed_low = np.empty(count, dtype=np.int64)
    placed_high = np.empty(count, dtype=np.int64)
    placed = 0
    for index in sorted(range(count), key=lambda i: (-tensors[i][0], tensors[i][1], i)):
        size, first, last = tensors[index]
        if size == 0:
            continue
        overlap = (placed_start[:placed] <= last) & (placed_end[:placed] >= first)
        lows = placed_low[:placed][overlap]
        highs = placed_high[:placed][overlap]
        ranking = np.argsort(lows, kind="stable")
        best: int | None = None
        best_gap = 0
        top = 0
        for low, high in zip(lows[ranking].tolist(), highs[ranking].tolist(), strict=True):
            gap = low - top
            if gap >= size and (best is None or gap < best_gap):
                best, best_gap = top, gap
            top = max(top, high)
        offset = top if best is None else best
        offsets[index] = offset
        placed_start[placed], placed_end[placed] = first, last
        placed_low[placed], placed_high[placed] = offset, offset + size
        placed += 1
    return offsets
