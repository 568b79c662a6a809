"""Lossless clean-up passes: simplification (onnxsim), identity/dead-node elimination, CSE, dedup.

These wrap well-kept implementations (onnxsim's constant folding and onnx-optimizer, onnx-ir's common
passes) in the sftonnx pass contract: options validated up front, statistics counted, and failures of the
wrapped tool degraded to a warning plus a report entry instead of a broken model.
"""

from __future__ import annotations

import logging
import re
import sys
from collections import Counter

import onnx_ir as ir
import onnx_ir.passes.common as common_passes

from sftonnx import io
from sftonnx.errors import PassConfigError, first_line
from sftonnx.ir_utils import adopt_model
from sftonnx.pass_infra import PassReport, SftPass

__all__ = [
    "DeduplicateInitializersPass",
    "EliminateCommonSubexpressionsPass",
    "EliminateDeadNodesPass",
    "EliminateIdentityPass",
    "SimplifyPass",
]

logger = logging.getLogger(__name__)

_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(B|KB|MB|GB)?\s*$", re.IGNORECASE)


def _all_nodes(model: ir.Model) -> Counter[str]:
    histogram: Counter[str] = Counter()
    for node in ir.traversal.RecursiveGraphIterator(model.graph):
        histogram[f"{node.domain}::{node.op_type}" if node.domain else node.op_type] += 1
    for function in model.functions.values():
        for node in ir.traversal.RecursiveGraphIterator(function):
            histogram[node.op_type] += 1
    return histogram


def _count_node_delta(before: Counter[str], after: Counter[str], report: PassReport) -> bool:
    """Count removed/added nodes (per op type, net); True when the op histograms differ."""
    removed = sum((before - after).values())
    added = sum((after - before).values())
    if removed:
        report.changes["nodes_removed"] += removed
    if added:
        report.changes["nodes_added"] += added
    return bool(removed or added)


class SimplifyPass(SftPass):
    """Constant folding, shape-driven simplification and onnx-optimizer eliminations, via onnxsim.

    The graph is topologically sorted first (onnxsim refuses unsorted graphs). When onnxsim fails on a
    model (unsupported op, shape inference crash, a model it cannot serialize), the model is left as it
    was, a warning is logged and the failure is recorded in the report: the rest of the pipeline goes on.
    BatchNormalization folding is left to ``fold-bn`` (which counts and checks what it does) unless
    ``fuse_bn`` is set.

    Statistics: changes ``nodes_removed``, ``nodes_added`` (net per op type); skipped
    ``simplifier_failed``, ``nonstandard_ops``, ``nothing_simplified`` (same ops) and ``more_nodes`` (onnxsim's
    result has more nodes): in those cases the model is left as it was. ``details['simplifier_error']`` holds
    onnxsim's message; ``details['weights_kept_out']`` counts the weights onnxsim did not see.

    Models with external data or over 2 GiB: onnxsim gets the graph with every weight over 64 kB replaced by a
    graph input of the same type and shape (:func:`sftonnx.io.structure_proto`), and the weights are put back
    as they were (still memory-mapped) in its result. Nothing is folded through those weights, so no weight
    is ever copied, and nothing depends on the working folder.

    Args:
        max_folded_size: Largest tensor constant folding may create, e.g. ``64MB``; bigger results stay as
            the nodes that compute them (keeps generated weights from bloating the file).
        fuse_bn: Let onnxsim fold BatchNormalization into Conv too.
        subgraphs: Simplify If/Loop/Scan bodies too.
        portable: Keep the result standard ONNX: onnxsim's fusions into onnxruntime contrib ops are turned off,
            and a result that still gains a non-standard domain is discarded (skip ``nonstandard_ops``).
    """

    name = "simplify"

    def __init__(
        self, *, max_folded_size: str = "1.5GB", fuse_bn: bool = False, subgraphs: bool = True, portable: bool = True
    ) -> None:
        if not _SIZE.match(max_folded_size):
            raise PassConfigError(f"simplify: max_folded_size must look like 64MB or 1.5GB, got '{max_folded_size}'")
        self.max_folded_size = max_folded_size.strip().upper().replace(" ", "")
        self.fuse_bn = fuse_bn
        self.subgraphs = subgraphs
        self.portable = portable

    def rewrite(self, model: ir.Model, report: PassReport) -> None:
        """Run onnxsim on a serialized copy and adopt its graph when it succeeds."""
        onnxsim = _import_onnxsim()

        before = _all_nodes(model)
        moved: list[str] = []
        try:
            # Sorted on a copy: the model itself changes only if onnxsim's result is adopted. A model with
            # external data or over 2 GiB goes without its large weights (graph inputs in their place, put
            # back below): onnxsim then never copies them, and never resolves an external file against the
            # working folder.
            if io.has_external_data(model) or io.model_nbytes(model) > io.PROTOBUF_LIMIT:
                proto, moved = io.structure_proto(model, max_inline_bytes=_INLINE_BYTES)
                copy = ir.serde.deserialize_model(proto)
            else:
                copy = ir.serde.deserialize_model(ir.to_proto(model))
            common_passes.TopologicalSortPass()(copy)
            proto = ir.to_proto(copy)
            simplified, _ = onnxsim.simplify(
                proto,
                check_n=0,  # we verify numerics ourselves, against the original
                skip_fuse_bn=not self.fuse_bn,
                include_subgraph=self.subgraphs,
                tensor_size_threshold=self.max_folded_size,
                certify=False,
                # onnxsim's attention fusions emit com.microsoft ops: not portable ONNX (fuse-ort does that job).
                skipped_optimizers=list(_CONTRIB_OPTIMIZERS) if self.portable else None,
            )
            new_model = ir.serde.deserialize_model(simplified)
            if moved:
                _restore_weights(model, new_model, moved)
                report.details["weights_kept_out"] = len(moved)
        except Exception as error:  # onnxsim raises assorted RuntimeError/ValueError/C++ errors
            message = first_line(error)
            logger.warning("simplify: onnxsim failed, model left unsimplified: %s", message)
            report.skipped["simplifier_failed"] += 1
            report.details["simplifier_error"] = message
            return
        added = _domains(new_model) - _domains(model)
        if self.portable and added:
            logger.warning("simplify: onnxsim introduced non-standard ops (%s); model left unsimplified", added)
            report.skipped["nonstandard_ops"] += 1
            report.details["nonstandard_domains"] = sorted(added)
            return
        after = _all_nodes(new_model)
        if sum(after.values()) > sum(before.values()):
            # onnxsim's rewrites can trade nodes for more nodes (seen on a TCN: 171 -> 172); a cleanup never grows.
            report.skipped["more_nodes"] += 1
            report.details["simplified_nodes"] = sum(after.values())
            return
        if not _count_node_delta(before, after, report):
            # Same ops: onnxsim only renamed, reordered or annotated; keep the model as it was (honest no-op).
            report.skipped["nothing_simplified"] += 1
            return
        adopt_model(model, new_model)


#: Weights over this size are kept out of onnxsim's copy of a model with external data (not folded through).
_INLINE_BYTES = 64 * 1024


def _restore_weights(model: ir.Model, new_model: ir.Model, moved: list[str]) -> None:
    """Turn the graph inputs that stood in for ``model``'s large weights back into those initializers.

    The tensors are ``model``'s own objects (memory-mapped external tensors stay so). Initializers keep
    ``model``'s order, so the weights are written in the order they came in.
    """
    graph = new_model.graph
    originals = model.graph.initializers
    by_name = {value.name: value for value in graph.inputs}
    for name in moved:
        value = by_name.get(name)
        if value is None:  # onnxsim dropped an unused weight
            continue
        graph.inputs.remove(value)
        value.const_value = originals[name].const_value
        graph.register_initializer(value)
    rank = {name: index for index, name in enumerate(originals)}
    ordered = sorted(graph.initializers.values(), key=lambda v: rank.get(v.name or "", len(rank)))
    graph.initializers.clear()
    for value in ordered:
        graph.register_initializer(value)


#: onnxsim optimizers that produce onnxruntime contrib ops (``com.microsoft``).
_CONTRIB_OPTIMIZERS = ("fuse_attention", "fuse_qkv")


def _domains(model: ir.Model) -> set[str]:
    return {node.domain for node in ir.traversal.RecursiveGraphIterator(model.graph)} - {"", "ai.onnx"}


def _import_onnxsim():
    """Import onnxsim on first use, without letting it import torch.

    onnxsim probes for torch at import time (an optional PPQ integration, wrapped in ``try``), which costs
    seconds and hundreds of MB; ``sftonnx optimize`` must not load torch. Marking ``torch`` as unimportable
    for the duration of the import makes that probe fail fast, as it does where torch is not installed.
    """
    if "onnxsim" in sys.modules:
        return sys.modules["onnxsim"]
    blocked = "torch" not in sys.modules
    if blocked:
        sys.modules["torch"] = None  # type: ignore[assignment]
    try:
        import onnxsim
    finally:
        if blocked and "torch" in sys.modules and sys.modules["torch"] is None:
            del sys.modules["torch"]
    return onnxsim


class _WrappedPass(SftPass):
    """Runs an onnx-ir common pass and counts node/initializer deltas."""

    def _inner(self) -> ir.passes.PassBase:
        raise NotImplementedError

    def rewrite(self, model: ir.Model, report: PassReport) -> None:
        """Run the wrapped onnx-ir pass and count what it removed."""
        before = _all_nodes(model)
        initializers = _initializer_count(model)
        self._inner()(model)
        _count_node_delta(before, _all_nodes(model), report)
        removed = initializers - _initializer_count(model)
        if removed > 0:
            report.changes["initializers_removed"] += removed


def _initializer_count(model: ir.Model) -> int:
    return len(model.graph.initializers) + sum(len(g.initializers) for g in model.graph.subgraphs())


class EliminateIdentityPass(SftPass):
    """Remove Identity nodes, rewiring their consumers (graph outputs keep their names).

    ``y = Identity(x)`` in a graph G (main graph, If/Loop/Scan body at any depth, or a function body):

    * ``y`` is no graph output: every use of ``y`` (in G and in subgraphs nested in it) reads ``x`` instead.
    * ``y`` is an output of G: ``x`` takes over the output and its name, which is only safe when ``x`` is
      computed by a node of G itself and is not already a graph output. Otherwise the node stays:
      renaming a graph input or initializer changes the model's interface; renaming an outer-scope value
      (a branch that returns a value of the enclosing graph) would rename it for every other branch and
      graph that reads it, and would make one value the output of two graphs; a value that already is an
      output would be listed twice.

    After onnx-ir's ``IdentityEliminationPass`` (rules 1-3), with the nested-subgraph cases it does not
    guard (it failed with "already an output of a different graph" on nested If branches).

    Statistics: changes ``nodes_removed``; skipped ``graph_input_to_output`` (``x`` is a graph input or
    initializer), ``outer_scope_to_output`` (``x`` is defined outside G), ``value_already_output``
    (``x`` already is a graph output), ``output_of_other_graph`` (``y`` is returned by a nested graph).
    """

    name = "eliminate-identity"

    def rewrite(self, model: ir.Model, report: PassReport) -> None:
        """Visit every node of every graph and function and eliminate the Identity nodes that allow it."""
        graphs: list[ir.Graph | ir.Function] = [model.graph, *model.functions.values()]
        for graph in graphs:
            for node in ir.traversal.RecursiveGraphIterator(graph):
                reason = _eliminate_identity(node)
                if reason == "removed":
                    report.changes["nodes_removed"] += 1
                elif reason:
                    report.skipped[reason] += 1
                    logger.debug("eliminate-identity: kept %s (%s)", node.name or node.outputs[0].name, reason)


def _eliminate_identity(node: ir.Node) -> str | None:
    """Remove ``node`` if it is an Identity that can go; return ``"removed"``, a skip reason, or ``None``."""
    if node.op_type != "Identity" or node.domain not in ("", "ai.onnx"):
        return None
    if len(node.inputs) != 1 or len(node.outputs) != 1 or node.inputs[0] is None:
        return None
    source, result = node.inputs[0], node.outputs[0]
    graph = node.graph
    if graph is None:
        return None
    renames = result.is_graph_output()
    if renames:
        if result.graph is not graph:
            return "output_of_other_graph"
        if source.is_graph_input() or source.is_initializer():
            return "graph_input_to_output"
        producer = source.producer()
        if producer is None or producer.graph is not graph:
            return "outer_scope_to_output"
        if source.is_graph_output():
            return "value_already_output"
    _merge_type(source, result)
    ir.convenience.replace_all_uses_with(result, source, replace_graph_outputs=True)
    if renames:
        source.name = result.name
    graph.remove(node, safe=True)
    return "removed"


def _merge_type(source: ir.Value, result: ir.Value) -> None:
    """Give ``source`` what ``result`` knows about type and shape that ``source`` does not."""
    if source.type is None:
        source.type = result.type
    if result.shape is None:
        return
    if source.shape is None:
        source.shape = result.shape
        return
    if len(source.shape) != len(result.shape):
        return  # contradictory declarations: keep the producer's
    dims = []
    for mine, theirs in zip(source.shape, result.shape, strict=True):
        if isinstance(mine, int):
            dims.append(mine)
        elif isinstance(theirs, int) or (mine.value is None and theirs.value is not None):
            dims.append(theirs)
        else:
            dims.append(mine)
    source.shape = ir.Shape(dims)


class EliminateDeadNodesPass(_WrappedPass):
    """Remove nodes and initializers that no graph output depends on.

    Statistics: changes ``nodes_removed``, ``initializers_removed``.
    """

    name = "eliminate-dead"

    def _inner(self) -> ir.passes.PassBase:
        return common_passes.RemoveUnusedNodesPass()


class EliminateCommonSubexpressionsPass(_WrappedPass):
    """Merge nodes that compute the same op on the same inputs with the same attributes.

    Nodes with subgraphs and non-deterministic ops (RandomNormal, ...) are never merged (onnx-ir's CSE).

    Statistics: changes ``nodes_removed``.

    Args:
        size_limit: Largest constant (elements) compared by value when deciding that two nodes match.
    """

    name = "cse"

    def __init__(self, *, size_limit: int = 10) -> None:
        if size_limit < 0:
            raise PassConfigError(f"cse: size_limit must be >= 0, got {size_limit}")
        self.size_limit = size_limit

    def _inner(self) -> ir.passes.PassBase:
        return common_passes.CommonSubexpressionEliminationPass(size_limit=self.size_limit)


class DeduplicateInitializersPass(_WrappedPass):
    """Share initializers with identical dtype, shape and contents (main graph and subgraphs).

    Statistics: changes ``initializers_removed``.

    Args:
        size_limit: Largest initializer (elements) compared byte by byte; larger ones are compared by hash.
    """

    name = "dedup"

    def __init__(self, *, size_limit: int = 1 << 30) -> None:
        if size_limit <= 0:
            raise PassConfigError(f"dedup: size_limit must be > 0, got {size_limit}")
        self.size_limit = size_limit

    def _inner(self) -> ir.passes.PassBase:
        return common_passes.DeduplicateHashedInitializersPass(size_limit=self.size_limit)
