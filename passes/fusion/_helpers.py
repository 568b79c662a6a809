"""Small helpers shared by the standard-ONNX and transformer fusion modules.

Reading ``axes`` that moved from an attribute to an input across opsets, comparing constants with the
tolerance of their dtype, and removing nodes a rewrite left without readers.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

import numpy as np
import onnx_ir as ir

from sftonnx.ir_utils import attr
from sftonnx.passes.fusion._rules import FusionContext

__all__ = ["MISSING", "close_to", "node_axes", "normalize_axes", "remove_if_dead", "scalar"]

logger = logging.getLogger(__name__)

#: Returned by :func:`node_axes` when the axes input exists but is not a constant.
MISSING = object()


def node_axes(context: FusionContext, node: ir.Node, input_index: int = 1):
    """The node's ``axes`` as a list of ints: attribute (old opsets) or constant input (new ones).

    Returns ``None`` when neither is given (the op's default, e.g. "all axes"), or :data:`MISSING` when
    the input is given but is not a constant.
    """
    axes = attr(node, "axes")
    if axes is not None:
        return [int(a) for a in axes]
    value = node.inputs[input_index] if len(node.inputs) > input_index else None
    if value is None:
        return None
    array = context.array(value)
    if array is None:
        return MISSING
    return [int(a) for a in np.asarray(array).reshape(-1)]


def normalize_axes(axes: Iterable[int], rank: int | None) -> list[int] | None:
    """Axes made non-negative with ``rank``; ``None`` when a negative axis meets an unknown rank."""
    result = []
    for axis in axes:
        if axis < 0:
            if rank is None:
                return None
            axis += rank
        if rank is not None and not 0 <= axis < rank:
            return None
        result.append(axis)
    return result


def scalar(context: FusionContext, value: ir.Value | None) -> float | None:
    """The value as a Python float when it is a constant with exactly one element, else ``None``."""
    array = context.array(value)
    if array is None or array.size != 1 or array.dtype.kind not in "fiu":
        return None
    return float(np.asarray(array, np.float64).reshape(()))


def close_to(context: FusionContext, value: ir.Value | None, target: float) -> bool:
    """Whether ``value`` is a one-element constant equal to ``target`` up to rounding in its dtype.

    The tolerance is four units in the last place of the constant's dtype (float32: ``4.8e-7``
    relative), so ``1.4142135`` passes for ``sqrt(2)`` but a hand-rounded ``1.4142`` does not.
    """
    array = context.array(value)
    if array is None or array.size != 1 or array.dtype.kind != "f":
        return False
    number = float(np.asarray(array, np.float64).reshape(()))
    return abs(number - target) <= 4 * float(np.finfo(array.dtype).eps) * abs(target)


def remove_if_dead(nodes: Iterable[ir.Node]) -> int:
    """Remove those of ``nodes`` (given producers first) whose outputs nobody reads; return how many.

    Rules that check part of a chain by hand (outside their pattern) leave those nodes behind when they
    replace the chain's output; this removes them when nothing else reads them.
    """
    removed = 0
    for node in reversed(list(nodes)):
        graph = node.graph
        if graph is None:
            continue
        if any(out.uses() or out.is_graph_output() for out in node.outputs):
            continue
        graph.remove(node, safe=True)
        removed += 1
    return removed
