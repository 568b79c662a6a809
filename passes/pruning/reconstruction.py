"""Repairing a layer after its input channels were removed: bias compensation and least-squares refits.

**Bias compensation** (needs only per-channel input means). A consumer computes
``y_o = sum_c sum_k W[o, c, k] * x_c(k) + b_o``. Dropping input channels ``R`` loses, on average,
``delta_o = sum_{c in R} mean(x_c) * sum_k W[o, c, k]`` (Conv; spatial means, exact away from zero padding),
``delta = alpha * mean(x_R) @ B[R, :]`` (Gemm; ``B`` as ``(K, N)``) or ``mean(x_R) @ B[R, :]`` (MatMul), so
``b'_o = b_o + delta_o`` keeps each output's mean. A MatMul without a following bias ``Add`` gets one.

**Reconstruction** (channel pruning by reconstruction, after He, Zhang & Sun, ICCV 2017, and Luo et al.,
ThiNet 2017). For each consumer in topological order, with ``P`` its pruned model's input patches
(im2col rows; Gemm/MatMul input rows) at sampled positions of the calibration data and ``Y`` the original
model's output there (restricted to the kept output channels), solve the ridge problem::

    [W'; b'] = argmin ||Y - P W'^T - 1 b'^T||^2 + lambda ||W'||^2
             = (A^T A + lambda * D)^-1 A^T Y,   A = [P, 1],  D = diag(1, ..., 1, 0),
    lambda  = ridge * mean(diag(P^T P))

accumulating ``A^T A`` and ``A^T Y`` batch by batch in float64 (memory ``O(d^2)``, not ``O(samples)``).
Inputs come from the already repaired upstream layers, so each refit also absorbs earlier layers' error.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np
import onnx_ir as ir

from sftonnx import io
from sftonnx.analysis.activations import ActivationRunner
from sftonnx.ir_utils import attr, constant_array, fresh_name, is_op, make_initializer

__all__ = [
    "add_output_bias",
    "channel_means",
    "reconstruct",
    "removed_contribution_conv",
    "removed_contribution_matmul",
]

logger = logging.getLogger(__name__)

#: Rows (patches) accumulated per layer at most, spread evenly over the calibration batches.
MAX_ROWS = 8192


def removed_contribution_conv(weight: np.ndarray, mean: np.ndarray, keep: np.ndarray) -> np.ndarray:
    """``delta_o = sum_{c not in keep} mean[c] * sum_k W[o, c, k]`` for a group-1 Conv weight ``[O, C, k...]``."""
    removed = np.setdiff1d(np.arange(weight.shape[1]), keep)
    sums = weight[:, removed].reshape(weight.shape[0], len(removed), -1).sum(axis=2, dtype=np.float64)
    return (sums @ mean[removed].astype(np.float64)).astype(weight.dtype)


def removed_contribution_matmul(kn: np.ndarray, mean: np.ndarray, keep: np.ndarray) -> np.ndarray:
    """``delta = mean[R] @ B[R, :]`` for a weight ``B`` laid out ``(K, N)`` and removed rows ``R``."""
    removed = np.setdiff1d(np.arange(kn.shape[0]), keep)
    return (mean[removed].astype(np.float64) @ kn[removed].astype(np.float64)).astype(kn.dtype)


def channel_means(model: ir.Model, spaces: Sequence[tuple[ir.Value, int]],
                  feeds: Sequence[dict[str, np.ndarray]]) -> dict[ir.Value, np.ndarray]:
    """Mean of each value over every axis but its channel ``axis``, on the calibration feeds."""
    if not spaces or not feeds:
        return {}
    runner = ActivationRunner(model, [value.name for value, _ in spaces])
    sums: dict[str, np.ndarray] = {}
    counts: dict[str, int] = {}
    for batch in runner.run(feeds):
        for value, axis in spaces:
            data = np.moveaxis(batch[value.name], axis, 0)
            data = data.reshape(data.shape[0], -1).astype(np.float64)
            sums[value.name] = sums.get(value.name, 0) + data.sum(axis=1)
            counts[value.name] = counts.get(value.name, 0) + data.shape[1]
    return {value: sums[value.name] / max(counts[value.name], 1) for value, _ in spaces}


def add_output_bias(model: ir.Model, node: ir.Node, bias: np.ndarray) -> bool:
    """Add ``bias`` (one value per output feature) to ``node``'s output.

    Folds it into a following ``Add`` with a constant operand of shape ``[..., 1|N]`` (a new initializer),
    else inserts an ``Add``. Returns ``False`` (nothing done) when the output is a graph output.
    """
    output = node.outputs[0]
    uses = list(output.uses())
    if output.is_graph_output():
        return False
    if len(uses) == 1 and is_op(uses[0].node, "Add") and len(uses[0].node.inputs) == 2:
        add = uses[0].node
        other_index = 1 - uses[0].idx
        other = add.inputs[other_index]
        array = constant_array(other)
        if (array is not None and other is not None and len(other.uses()) == 1 and array.ndim >= 1
                and all(d == 1 for d in array.shape[:-1]) and array.shape[-1] in (1, bias.size)):
            new = (array + bias.reshape((1,) * (array.ndim - 1) + (-1,))).astype(array.dtype)
            value = make_initializer(model.graph, (other.name or "bias") + "_compensated", new)
            if model.ir_version < 4:
                model.graph.inputs.append(value)
            add.replace_input_with(other_index, value)
            return True
    graph = node.graph
    if graph is None:
        return False
    bias_value = make_initializer(graph, (node.name or "matmul") + "_bias", bias)
    if model.ir_version < 4:
        model.graph.inputs.append(bias_value)
    add = ir.Node("", "Add", [output, bias_value], num_outputs=1, name=(node.name or "matmul") + "_bias_add")
    new_output = add.outputs[0]
    new_output.name = fresh_name(graph, (output.name or "matmul") + "_biased")
    new_output.type, new_output.shape = output.type, output.shape
    graph.insert_after(node, add)
    for use in uses:
        use.node.replace_input_with(use.idx, new_output)
    return True


# ------------------------------------------------------------------------------------ least squares
class _Normal:
    """Accumulates ``A^T A`` and ``A^T Y`` with ``A = [P, 1]`` in float64."""

    def __init__(self, flush_rows: int = 8192) -> None:
        self.gram: np.ndarray | None = None
        self.cross: np.ndarray | None = None
        self.energy = 0.0
        self.rows = 0
        self.flush_rows = flush_rows
        self._pending: list[tuple[np.ndarray, np.ndarray]] = []
        self._pending_rows = 0

    def update(self, patches: np.ndarray, targets: np.ndarray) -> None:
        """Add rows; they are buffered so that the ``d x d`` products run on large blocks."""
        self._pending.append((patches, targets))
        self._pending_rows += patches.shape[0]
        if self._pending_rows >= self.flush_rows:
            self.flush()

    def flush(self) -> None:
        """Fold the buffered rows into the sums."""
        if not self._pending:
            return
        patches = np.concatenate([p for p, _ in self._pending]).astype(np.float64)
        y = np.concatenate([t for _, t in self._pending]).astype(np.float64)
        self._pending, self._pending_rows = [], 0
        a = np.concatenate([patches, np.ones((patches.shape[0], 1))], axis=1)
        gram, cross = a.T @ a, a.T @ y
        self.gram = gram if self.gram is None else self.gram + gram
        self.cross = cross if self.cross is None else self.cross + cross
        self.energy += float(np.sum(y * y))
        self.rows += patches.shape[0]

    def relative_error(self, weight: np.ndarray, bias: np.ndarray) -> float:
        """``||Y - P W - 1 b^T|| / ||Y||`` over the accumulated rows, from the normal-equation sums."""
        assert self.gram is not None and self.cross is not None
        full = np.concatenate([weight, bias.reshape(1, -1)], axis=0)
        residual = self.energy - 2.0 * float(np.sum(full * self.cross)) + float(np.sum(full * (self.gram @ full)))
        return float(np.sqrt(max(residual, 0.0) / max(self.energy, 1e-30)))

    def solve(self, ridge: float) -> tuple[np.ndarray, np.ndarray]:
        """``(W' as (d, outputs), b')``."""
        self.flush()
        assert self.gram is not None and self.cross is not None
        d = self.gram.shape[0] - 1
        scale = float(np.mean(np.diag(self.gram)[:d])) if d else 0.0
        regularized = self.gram.copy()
        regularized[np.arange(d), np.arange(d)] += ridge * max(scale, 1e-12)
        try:
            solution = np.linalg.solve(regularized, self.cross)
        except np.linalg.LinAlgError:  # singular without a ridge: minimum-norm solution
            solution = np.linalg.lstsq(regularized, self.cross, rcond=None)[0]
        return solution[:d], solution[d]


def _conv_geometry(node: ir.Node, x_shape: tuple[int, ...], weight_shape: tuple[int, ...]):
    spatial = len(weight_shape) - 2
    if spatial != 2 or attr(node, "auto_pad", "NOTSET") not in ("NOTSET", b"NOTSET"):
        return None
    kernel = tuple(weight_shape[2:])
    strides = tuple(attr(node, "strides", None) or (1,) * spatial)
    dilations = tuple(attr(node, "dilations", None) or (1,) * spatial)
    pads = tuple(attr(node, "pads", None) or (0,) * (2 * spatial))
    return kernel, strides, dilations, pads


def _conv_patches(x: np.ndarray, geometry, positions: np.ndarray) -> np.ndarray:
    """im2col rows ``[S, C * kh * kw]`` at output positions ``(n, ho, wo)``."""
    (kh, kw), (sh, sw), (dh, dw), (pt, pl, pb, pr) = geometry
    padded = np.pad(x, ((0, 0), (0, 0), (pt, pb), (pl, pr)))
    n, ho, wo = positions
    rows = ho[:, None] * sh + np.arange(kh)[None, :] * dh
    cols = wo[:, None] * sw + np.arange(kw)[None, :] * dw
    patches = padded[n[:, None, None], :, rows[:, :, None], cols[:, None, :]]  # [S, kh, kw, C]
    return patches.transpose(0, 3, 1, 2).reshape(len(n), -1)


def reconstruct(model: ir.Model, original: bytes, layers: Sequence[tuple[ir.Node, np.ndarray | None]],
                feeds: Sequence[dict[str, np.ndarray]], *, ridge: float = 1e-2, seed: int = 0
                ) -> dict[str, tuple[float, float]]:
    """Refit each layer's weight and bias by ridge least squares (module docstring), in order.

    Args:
        model: The pruned model, rewritten in place.
        original: The model before pruning, serialized (targets come from it; output names are shared).
        layers: ``(node, kept output channels or None)`` for each consumer whose input lost channels.
        feeds: Calibration feed dicts.
        ridge: Relative ridge strength (``lambda / mean(diag(P^T P))``).
        seed: Seed of the sampled output positions.

    Returns:
        ``{layer name: (relative output error before, after the refit)}``, the error being
        ``||Y - Y'|| / ||Y||`` on the sampled rows (before: the pruned, compensated weights).
    """
    original_model = io.load(original, validate=False)
    errors: dict[str, tuple[float, float]] = {}
    for index, (node, keep_y) in enumerate(layers):
        name = node.name or node.outputs[0].name or f"layer_{index}"
        try:
            error = _refit(model, original_model, node, keep_y, feeds, ridge, seed + index)
        except Exception as failure:  # a refit that cannot run leaves the compensated layer as it is
            logger.warning("reconstruction of '%s' skipped: %s", name, failure)
            continue
        if error is not None:
            errors[name] = error
    return errors


def _refit(model: ir.Model, original: ir.Model, node: ir.Node, keep_y: np.ndarray | None,
           feeds: Sequence[dict[str, np.ndarray]], ridge: float, seed: int) -> tuple[float, float] | None:
    x_value, y_value = node.inputs[0], node.outputs[0]
    weight = constant_array(node.inputs[1])
    if x_value is None or weight is None or y_value.name is None:
        return None
    kind = node.op_type
    if kind == "Gemm" and int(attr(node, "transA", 0)):
        return None
    if kind == "Conv" and int(attr(node, "group", 1)) != 1:
        return None
    pruned_runner = ActivationRunner(model, [x_value.name])
    original_runner = ActivationRunner(original, [y_value.name])
    rng = np.random.default_rng(seed)
    normal = _Normal()
    per_batch = max(1, MAX_ROWS // max(len(feeds), 1))
    geometry = None
    for feed, pruned, target in zip(feeds, pruned_runner.run(feeds), original_runner.run(feeds), strict=True):
        del feed
        x = pruned[x_value.name]
        y = target[y_value.name]
        if kind == "Conv":
            geometry = geometry or _conv_geometry(node, x.shape, weight.shape)
            if geometry is None or x.ndim != 4:
                return None
            n, _, ho, wo = y.shape
            count = min(per_batch, n * ho * wo)
            flat = rng.choice(n * ho * wo, size=count, replace=False)
            positions = np.unravel_index(flat, (n, ho, wo))
            patches = _conv_patches(x, geometry, positions)
            targets = y[positions[0], :, positions[1], positions[2]]  # [S, O]
        else:
            patches = x.reshape(-1, x.shape[-1])
            targets = y.reshape(-1, y.shape[-1])
            if patches.shape[0] > per_batch:
                rows = rng.choice(patches.shape[0], size=per_batch, replace=False)
                patches, targets = patches[rows], targets[rows]
        if keep_y is not None:
            targets = targets[:, keep_y]
        normal.update(patches, targets)
    normal.flush()
    if normal.gram is None:
        return None
    solved, bias = normal.solve(ridge)
    before = _current_error(model, node, weight, keep_y, normal)
    after = normal.relative_error(solved, bias)
    dtype = weight.dtype
    from sftonnx.passes.pruning._graph import set_constant_input

    if kind == "Conv":
        new_weight = solved.T.reshape(weight.shape).astype(dtype)
        set_constant_input(model, node, 1, new_weight, (node.inputs[1].name or "weight") + "_refit")
        set_constant_input(model, node, 2, bias.astype(dtype), (node.name or "conv") + "_bias_refit")
    elif kind == "Gemm":
        trans_b = int(attr(node, "transB", 0))
        new_weight = (solved.T if trans_b else solved).astype(dtype)
        node.attributes["alpha"] = ir.AttrFloat32("alpha", 1.0)
        node.attributes["beta"] = ir.AttrFloat32("beta", 1.0)
        set_constant_input(model, node, 1, new_weight, (node.inputs[1].name or "weight") + "_refit")
        set_constant_input(model, node, 2, bias.astype(dtype), (node.name or "gemm") + "_bias_refit")
    else:
        set_constant_input(model, node, 1, solved.astype(dtype), (node.inputs[1].name or "weight") + "_refit")
        add_output_bias(model, node, bias.astype(dtype))
    return before, after


def _current_error(model: ir.Model, node: ir.Node, weight: np.ndarray, keep_y: np.ndarray | None,
                   normal: _Normal) -> float:
    """Relative error of the layer as pruned (before the refit); MatMul biases live in a later Add."""
    del model, keep_y
    outputs = weight.shape[0]
    if node.op_type == "Conv":
        as_rows = weight.reshape(outputs, -1).T
    elif node.op_type == "Gemm":
        alpha = float(attr(node, "alpha", 1.0))
        as_rows = (weight.T if int(attr(node, "transB", 0)) else weight) * alpha
    else:
        as_rows = weight
    bias_value = node.inputs[2] if node.op_type in ("Conv", "Gemm") and len(node.inputs) > 2 else None
    bias = constant_array(bias_value)
    if bias is None:
        bias = np.zeros(as_rows.shape[1])
    elif node.op_type == "Gemm":
        bias = np.broadcast_to(bias.reshape(-1) * float(attr(node, "beta", 1.0)), (as_rows.shape[1],))
    return normal.relative_error(as_rows.astype(np.float64), np.asarray(bias, dtype=np.float64))
