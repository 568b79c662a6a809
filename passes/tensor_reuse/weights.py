"""Weight reuse: initializers that are transposed or reshaped copies of another share its storage.

Exact duplicates are the ``dedup`` pass's job. Exporters also emit a weight twice in another layout (tied
embeddings stored once as [V, H] and again transposed as [H, V] for the output projection; a Conv weight and
its flattened Gemm twin). This pass keeps one copy and computes the other with a Transpose or Reshape node
of it, which onnxruntime folds back into a constant when it loads the model: the file shrinks, results are
bit-identical.
"""

from __future__ import annotations

import logging
from collections import defaultdict

import numpy as np
import onnx_ir as ir

from sftonnx.errors import PassConfigError
from sftonnx.ir_utils import make_initializer
from sftonnx.pass_infra import PassReport, SftPass

__all__ = ["ShareWeightsPass"]

logger = logging.getLogger(__name__)


class ShareWeightsPass(SftPass):
    """Replace initializers that equal another initializer transposed (2-D) or reshaped by that computation.

    Only main-graph initializers that are not graph inputs (overridable defaults) are considered; subgraph
    initializers are left alone.

    Statistics: changes ``initializers_shared``; details ``bytes_saved``.

    Args:
        min_elements: Smallest initializer (elements) worth sharing.
    """

    name = "share-weights"

    def __init__(self, *, min_elements: int = 1024) -> None:
        if min_elements < 1:
            raise PassConfigError(f"share-weights: min_elements must be >= 1, got {min_elements}")
        self.min_elements = min_elements

    def rewrite(self, model: ir.Model, report: PassReport) -> None:
        """Group initializers by (dtype, size, fingerprint of the multiset of values) and link layout copies."""
        graph = model.graph
        inputs = {value.name for value in graph.inputs}
        groups: dict[tuple, list[ir.Value]] = defaultdict(list)
        for value in list(graph.initializers.values()):
            tensor = value.const_value
            if tensor is None or value.name in inputs or tensor.size < self.min_elements:
                continue
            array = tensor.numpy()
            if array.dtype.kind not in "biuf":
                continue
            groups[(array.dtype.str, array.size, _fingerprint(array))].append(value)
            del array
            if isinstance(tensor, ir.ExternalTensor):
                _unmap(tensor)  # read once, block by block: do not keep every weight's pages mapped
        saved = 0
        for members in groups.values():
            if len(members) < 2:
                continue
            keep = members[0]
            kept = keep.const_value.numpy()
            for other in members[1:]:
                array = other.const_value.numpy()
                if array.shape == kept.shape and np.array_equal(array, kept):
                    continue  # an exact duplicate: dedup's job
                if kept.ndim == 2 and array.shape == kept.T.shape and np.array_equal(array, kept.T):
                    node = ir.node("Transpose", [keep], attributes={"perm": [1, 0]}, name=f"{other.name}_share")
                elif np.array_equal(array.reshape(-1), kept.reshape(-1)):
                    shape = make_initializer(graph, f"{other.name}_shape", np.array(array.shape, dtype=np.int64))
                    node = ir.node("Reshape", [keep, shape], name=f"{other.name}_share")
                else:
                    continue
                graph.insert_before(next(iter(graph)), node) if len(graph) else graph.append(node)
                result = node.outputs[0]
                result.name = f"{other.name}_shared"
                result.shape, result.type = other.shape, other.type
                ir.convenience.replace_all_uses_with(other, result)
                graph.initializers.pop(other.name)
                saved += other.const_value.nbytes if other.const_value is not None else array.nbytes
                report.changes["initializers_shared"] += 1
        if saved:
            report.details["bytes_saved"] = int(saved)


#: Elements per block when fingerprinting (bounds the temporaries to a few tens of MB).
_BLOCK = 1 << 22


def _fingerprint(array: np.ndarray) -> tuple[int, int]:
    """A permutation-invariant fingerprint of the values: sums of their bit patterns and of their squares.

    Equal for any two layouts of the same values (a transpose, a reshape); integer sums mod 2**64 are exact, so
    the order of the blocks does not matter. Computed block by block: no sorted copy of a multi-GB weight
    (grouping used to sort and hash each weight). Members of a group are compared exactly afterwards.
    """
    flat = array.reshape(-1)
    bits = flat.view(np.dtype(f"u{flat.dtype.itemsize}")) if flat.dtype.kind != "b" else flat.view(np.uint8)
    total = squares = np.uint64(0)
    with np.errstate(over="ignore"):
        for start in range(0, bits.size, _BLOCK):
            block = bits[start : start + _BLOCK].astype(np.uint64)
            total += block.sum(dtype=np.uint64)
            squares += (block * block).sum(dtype=np.uint64)
    return int(total), int(squares)


def _unmap(tensor: ir.ExternalTensor) -> None:
    try:
        tensor.release()
    except BufferError:  # a view of the mapping is still referenced
        pass
