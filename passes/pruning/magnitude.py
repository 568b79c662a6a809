"""Unstructured magnitude pruning: zero the smallest weights of Conv, ConvTranspose, Gemm and MatMul.

What it buys: onnxruntime's CPU kernels are dense, so zeros cost the same time as any other weight. The
benefit is a smaller *compressed* model (zeros compress well: the report gives the raw and the
gzip-compressed size of the pruned layers' weights before and after) and a starting point for sparse
kernels elsewhere. Sparse storage in the file is not offered: onnxruntime does load ``sparse_initializer``
entries (it densifies them at load time), but onnx-ir, which every pass works on, drops them when it reads
a model, so a pass cannot emit them; ``sparse_storage=true`` is rejected with that explanation.

Selection, per weight tensor ``W`` with ``n`` elements:

* ``threshold=eps``: zero every ``w`` with ``|w| < eps``;
* ``rate=r`` (``scope=layer``): zero the ``floor(r * n)`` elements of smallest ``|w|``;
* ``rate=r, scope=global``: zero the ``floor(r * N)`` smallest ``|w|`` over all pruned tensors
  (``N = sum n``), taking at most ``floor(max_rate * n)`` from any one tensor (ties broken by position).
"""

from __future__ import annotations

import logging
import math
import zlib
from typing import Literal

import numpy as np
import onnx_ir as ir

from sftonnx.analysis import topological_order
from sftonnx.errors import PassConfigError
from sftonnx.ir_utils import reads_metadata_only
from sftonnx.pass_infra import Numerics, PassReport, SftPass

__all__ = ["PRUNABLE_OPS", "PruneMagnitudePass"]

logger = logging.getLogger(__name__)

#: Operators whose weight (input 1) is pruned.
PRUNABLE_OPS = ("Conv", "ConvTranspose", "Gemm", "MatMul")
_FLOAT_TYPES = {ir.DataType.FLOAT, ir.DataType.FLOAT16, ir.DataType.DOUBLE, ir.DataType.BFLOAT16}


def _is_prunable(node: ir.Node) -> bool:
    return node.domain in ("", "ai.onnx") and node.op_type in PRUNABLE_OPS and len(node.inputs) >= 2


def _weight_status(model: ir.Model, node: ir.Node) -> str | None:
    """``None`` when the node's weight can be pruned in place, else the skip key."""
    weight = node.inputs[1]
    if weight is None or weight.const_value is None:
        return "weight_not_constant"
    if model.ir_version >= 4 and weight in model.graph.inputs:
        return "weight_not_constant"  # a graph input with a default: the caller may feed another
    if weight.const_value.dtype not in _FLOAT_TYPES:
        return "unsupported_dtype"
    if len(_value_readers(weight)) > 1 or weight.is_graph_output():
        return "weight_shared"
    return None


def _value_readers(value: ir.Value) -> list[ir.Node]:
    """Nodes that read the value's contents.

    Readers of the shape or type only (:func:`sftonnx.ir_utils.reads_metadata_only`) do not count: zeroing keeps
    both (torch's unoptimized export builds every conv bias from ``Shape(W)``).
    """
    return [use.node for use in value.uses() if not reads_metadata_only(use.node, use.idx)]


def _compressed_size(arrays: list[np.ndarray]) -> int:
    return sum(len(zlib.compress(np.ascontiguousarray(a).tobytes(), 6)) for a in arrays)


class PruneMagnitudePass(SftPass):
    """Zero the smallest-magnitude weights of Conv, ConvTranspose, Gemm and MatMul.

    Matches those ops (main graph and If/Loop/Scan bodies) whose weight (input 1) is an initializer used by
    that node only; selection rules in the module docstring. With ``skip_first_last`` the first and last
    prunable layers in topological order of the main graph stay dense when there are at least three (they
    are the most sensitive; with fewer there would be nothing left to prune). Local functions are not
    visited (``details['functions_not_visited']``).

    Declines (``skipped`` keys): ``weight_not_constant``, ``weight_shared`` (another node reads its values,
    or it is a graph output: never edited; ``Shape``/``Size`` readers do not count), ``unsupported_dtype``,
    ``first_or_last_layer``.

    Statistics: changes ``tensors_pruned``, ``weights_zeroed`` (elements that were non-zero and are now
    zero). ``details``: ``layers`` (per weight: ``size``, ``zeroed``, ``sparsity``), ``sparsity`` (over the
    pruned tensors), ``weight_bytes``, ``weight_gzip_bytes_before``, ``weight_gzip_bytes_after``.

    Numerics: APPROXIMATE.

    Args:
        rate: Fraction of weights to zero, in (0, 1); the default 0.5 applies when no threshold is given.
        threshold: Zero every weight with ``|w| < threshold`` (>= 0); excludes ``rate``.
        scope: ``layer`` (the rate per tensor) or ``global`` (one ranking over all tensors).
        max_rate: With ``scope=global``, the largest fraction zeroed in any one tensor, in (0, 1].
        skip_first_last: Leave the first and last prunable layers dense (when there are at least three).
        sparse_storage: Not supported (see the module docstring); ``true`` is a configuration error.
    """

    name = "prune"
    numerics = Numerics.APPROXIMATE

    def __init__(
        self,
        *,
        rate: float | None = None,
        threshold: float | None = None,
        scope: Literal["layer", "global"] = "layer",
        max_rate: float = 0.95,
        skip_first_last: bool = True,
        sparse_storage: bool = False,
    ) -> None:
        if rate is not None and threshold is not None:
            raise PassConfigError("prune: give either rate or threshold, not both")
        if rate is not None and (isinstance(rate, bool) or not 0.0 < rate < 1.0):
            raise PassConfigError(f"prune: rate must be in (0, 1), got {rate}")
        if threshold is not None and (isinstance(threshold, bool) or not threshold >= 0.0):
            raise PassConfigError(f"prune: threshold must be >= 0, got {threshold}")
        if scope not in ("layer", "global"):
            raise PassConfigError(f"prune: scope must be layer|global, got '{scope}'")
        if scope == "global" and threshold is not None:
            raise PassConfigError("prune: scope=global ranks by rate; a threshold is already model-wide")
        if not 0.0 < max_rate <= 1.0:
            raise PassConfigError(f"prune: max_rate must be in (0, 1], got {max_rate}")
        if sparse_storage:
            raise PassConfigError(
                "prune: sparse_storage is not supported: onnx-ir drops sparse_initializer entries, so a pass "
                "cannot write them (onnxruntime would load them, densified); compare weight_gzip_bytes instead"
            )
        self.rate = rate
        self.threshold = threshold
        self.scope = scope
        self.max_rate = max_rate
        self.skip_first_last = skip_first_last
        self.sparse_storage = sparse_storage

    def requires(self, model: ir.Model) -> None:
        """Raise ``PreconditionError`` when no Conv/ConvTranspose/Gemm/MatMul has a constant float weight."""
        for node in ir.traversal.RecursiveGraphIterator(model.graph):
            if _is_prunable(node) and _weight_status(model, node) in (None, "weight_shared"):
                return
        raise ir.passes.PreconditionError(
            "prune: no Conv, ConvTranspose, Gemm or MatMul with a constant float weight (initializer)"
        )

    def rewrite(self, model: ir.Model, report: PassReport) -> None:
        """Choose the weights, zero the selected elements, and report sizes and sparsity."""
        targets = self._targets(model, report)
        if model.functions:
            report.details["functions_not_visited"] = len(model.functions)
        if not targets:
            return
        arrays = [value.const_value.numpy() for value in targets]  # type: ignore[union-attr]
        masks = self._masks(arrays)
        before = _compressed_size(arrays)
        pruned_arrays = []
        layers = {}
        for value, array, mask in zip(targets, arrays, masks, strict=True):
            zeroed = int(np.count_nonzero(array[mask]))
            new = np.where(mask, np.zeros((), dtype=array.dtype), array).astype(array.dtype)
            pruned_arrays.append(new)
            layers[value.name] = {
                "size": int(array.size),
                "zeroed": zeroed,
                "sparsity": round(float(np.count_nonzero(new == 0)) / max(array.size, 1), 4),
            }
            if zeroed:
                value.const_value = ir.tensor(new, name=value.name)
                report.changes["tensors_pruned"] += 1
                report.changes["weights_zeroed"] += zeroed
        total = sum(a.size for a in pruned_arrays)
        report.details.update(
            layers=layers,
            sparsity=round(sum(int(np.count_nonzero(a == 0)) for a in pruned_arrays) / max(total, 1), 4),
            weight_bytes=int(sum(a.nbytes for a in pruned_arrays)),
            weight_gzip_bytes_before=before,
            weight_gzip_bytes_after=_compressed_size(pruned_arrays),
        )

    def _targets(self, model: ir.Model, report: PassReport) -> list[ir.Value]:
        """Prunable weights, in order; counts the skipped ones."""
        main = [n for n in topological_order(model.graph) if _is_prunable(n)]
        order = main + [
            n for n in ir.traversal.RecursiveGraphIterator(model.graph)
            if n.graph is not model.graph and _is_prunable(n)
        ]
        eligible = []
        for node in order:
            status = _weight_status(model, node)
            if status is not None:
                report.skipped[status] += 1
            else:
                eligible.append(node)
        if self.skip_first_last:
            main_eligible = [n for n in eligible if n.graph is model.graph]
            if len(main_eligible) >= 3:
                ends = {main_eligible[0], main_eligible[-1]}
                report.skipped["first_or_last_layer"] += len(ends)
                eligible = [n for n in eligible if n not in ends]
        return [n.inputs[1] for n in eligible]  # type: ignore[misc]

    def _masks(self, arrays: list[np.ndarray]) -> list[np.ndarray]:
        """Boolean masks of the elements to zero (selection rules in the module docstring)."""
        magnitudes = [np.abs(a.astype(np.float64)).reshape(-1) for a in arrays]
        if self.threshold is not None:
            return [(m < self.threshold).reshape(a.shape) for m, a in zip(magnitudes, arrays, strict=True)]
        rate = 0.5 if self.rate is None else self.rate
        if self.scope == "layer":
            counts = [math.floor(rate * m.size) for m in magnitudes]
        else:
            counts = _global_counts(magnitudes, rate, self.max_rate)
        masks = []
        for m, a, count in zip(magnitudes, arrays, counts, strict=True):
            mask = np.zeros(m.size, dtype=bool)
            if count:
                mask[np.argsort(m, kind="stable")[:count]] = True
            masks.append(mask.reshape(a.shape))
        return masks


def _global_counts(magnitudes: list[np.ndarray], rate: float, max_rate: float) -> list[int]:
    """How many elements each tensor gives up when the ``floor(rate * N)`` smallest overall go, capped."""
    target = math.floor(rate * sum(m.size for m in magnitudes))
    candidates = []
    owners = []
    for index, m in enumerate(magnitudes):
        cap = math.floor(max_rate * m.size)
        smallest = np.sort(m, kind="stable")[:cap]
        candidates.append(smallest)
        owners.append(np.full(smallest.size, index))
    if not candidates:
        return []
    values = np.concatenate(candidates)
    owner = np.concatenate(owners)
    chosen = owner[np.argsort(values, kind="stable")[:target]]
    return np.bincount(chosen, minlength=len(magnitudes)).tolist()
