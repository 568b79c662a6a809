"""Memory-aware scheduling: reorder the main graph's nodes to lower the peak of live activations.

On branchy graphs (inception blocks, dense blocks, U-Net skips) the stored node order is often breadth-first:
every branch's first layer runs before any branch finishes, so all their outputs are live together. A
different topological order computes the same values in the same way (results are bit-identical) but can
free tensors earlier.

Candidates: the stored order, and greedy list schedules that, among the nodes whose inputs are ready, run the
one with the smallest net allocation ``bytes(outputs) - bytes(inputs it reads last)`` (ties: the stored order),
with and without a one-step look-ahead that prefers finishing a branch. Each candidate is evaluated with the
static liveness model of :mod:`sftonnx.analysis.memory`; the best is applied only if it lowers the planned
peak. Sizes come from shape inference with batch-like dimensions set to 1.
"""

from __future__ import annotations

import logging

import onnx_ir as ir

from sftonnx.analysis.memory import constant_values, node_reads, plan_memory, topological_order
from sftonnx.analysis.shapes import ShapeTable, infer_tensor_shapes
from sftonnx.pass_infra import PassReport, SftPass

__all__ = ["ScheduleMemoryPass"]

logger = logging.getLogger(__name__)


class ScheduleMemoryPass(SftPass):
    """Reorder nodes (a topological order) to lower the planned peak activation memory.

    Results are unchanged: every node computes the same values from the same inputs. Only the main graph is
    reordered (subgraph bodies keep their order). Measured (benchmarks/MEMORY.md): onnxruntime's peak RSS did
    not change on a branchy net whose planned peak fell from 25.3 to 5.2 MiB, so onnxruntime's own execution
    order and arena already capture this; the pass is for runtimes that execute in stored order (and costs
    nothing where it does not help).

    Statistics: changes ``nodes_reordered``; skipped ``no_lower_peak``, ``unknown_sizes``. Details:
    ``peak_before``, ``peak_after`` (bytes), ``strategy``.

    Args:
        min_gain: Apply a new order only if it lowers the planned peak by at least this fraction.
    """

    name = "schedule-memory"

    def __init__(self, *, min_gain: float = 0.0) -> None:
        from sftonnx.errors import PassConfigError

        if not 0.0 <= min_gain < 1.0:
            raise PassConfigError(f"schedule-memory: min_gain must be in [0, 1), got {min_gain}")
        self.min_gain = min_gain

    def rewrite(self, model: ir.Model, report: PassReport) -> None:
        """Evaluate candidate orders and apply the one with the lowest planned peak."""
        graph = model.graph
        if len(graph) < 3:
            report.skipped["no_lower_peak"] += 1
            return
        shapes = infer_tensor_shapes(model)
        stored = topological_order(graph)
        baseline = plan_memory(model, order=stored, shapes=shapes)
        if baseline.unknown_size and baseline.peak_activation_bytes == 0:
            report.skipped["unknown_sizes"] += 1
            return
        best_order, best_peak, best_name = stored, baseline.peak_activation_bytes, "stored"
        for strategy, lookahead in (("greedy", False), ("greedy-lookahead", True)):
            order = _greedy_order(graph, shapes, lookahead=lookahead)
            peak = plan_memory(model, order=order, shapes=shapes).peak_activation_bytes
            logger.debug("schedule-memory: %s peak %d (stored %d)", strategy, peak, baseline.peak_activation_bytes)
            if peak < best_peak:
                best_order, best_peak, best_name = order, peak, strategy
        report.details.update(
            {"peak_before": baseline.peak_activation_bytes, "peak_after": best_peak, "strategy": best_name}
        )
        gain = 1.0 - best_peak / baseline.peak_activation_bytes if baseline.peak_activation_bytes else 0.0
        if best_order is stored or gain <= self.min_gain:
            report.details["peak_after"] = baseline.peak_activation_bytes
            report.skipped["no_lower_peak"] += 1
            return
        current = list(graph)
        moved = sum(1 for a, b in zip(current, best_order, strict=True) if a is not b)
        graph.remove(current, safe=False)
        graph.extend(best_order)
        report.changes["nodes_reordered"] += moved


def _greedy_order(graph: ir.Graph, shapes: ShapeTable, *, lookahead: bool) -> list[ir.Node]:
    nodes = list(graph)
    index = {node: position for position, node in enumerate(nodes)}
    constants = constant_values(graph, topological_order(graph))
    outputs = set(graph.outputs)

    def size(value: ir.Value) -> int:
        if value in constants:
            return 0
        return shapes.nbytes(value) or 0

    all_reads = [list(dict.fromkeys(node_reads(node))) for node in nodes]
    # Sizes count activations only, but order must respect every producer, constant ones included.
    reads = [[v for v in values if v not in constants] for values in all_reads]
    readers: dict[ir.Value, int] = {}
    waiting = [0] * len(nodes)
    dependants: list[list[int]] = [[] for _ in nodes]
    for position, values in enumerate(all_reads):
        producers = set()
        for value in values:
            readers[value] = readers.get(value, 0) + 1
            producer = value.producer()
            if producer is not None and producer in index and index[producer] != position:
                producers.add(index[producer])
        waiting[position] = len(producers)
        for producer in producers:
            dependants[producer].append(position)

    def net(position: int) -> int:
        allocated = sum(size(v) for v in nodes[position].outputs)
        freed = sum(size(v) for v in reads[position] if readers[v] == 1 and v not in outputs)
        return allocated - freed

    ready = {position for position, count in enumerate(waiting) if count == 0}
    order: list[ir.Node] = []
    while ready:

        def score(position: int) -> tuple[int, int]:
            value = net(position)
            if lookahead:
                # Prefer a node that makes a dependant ready which then frees memory (finish the branch).
                follow = [d for d in dependants[position] if waiting[d] == 1]
                if follow:
                    value += min(0, min(net(d) for d in follow))
            return value, position

        chosen = min(ready, key=score)
        ready.remove(chosen)
        order.append(nodes[chosen])
        for value in reads[chosen]:
            readers[value] -= 1
        for dependant in dependants[chosen]:
            waiting[dependant] -= 1
            if waiting[dependant] == 0:
                ready.add(dependant)
    if len(order) != len(nodes):  # cycle: keep the stored order (the pipeline's checks report it)
        return nodes
    return order
