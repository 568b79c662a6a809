"""Removing channels: apply a removal decided on a :class:`~sftonnx.passes.pruning.dependency.ChannelGraph`.

The analysis is read-only and records one typed edit per site (:mod:`sftonnx.passes.pruning._edits`); this
module is the mutation: every edit slices its constants (written as new initializers, the old ones retired by
the caller), renumbers shape inputs and attributes, and the channel axis of every affected value shape shrinks.
With per-channel means of the consumers' inputs, each consumer's bias absorbs the removed channels' mean
contribution (formulas in :mod:`sftonnx.passes.pruning.reconstruction`).
"""

from __future__ import annotations

import dataclasses
from collections import Counter
from collections.abc import Callable

import numpy as np
import onnx_ir as ir

from sftonnx.ir_utils import attr
from sftonnx.passes.pruning import _edits, reconstruction
from sftonnx.passes.pruning._graph import set_constant_input
from sftonnx.passes.pruning.dependency import ChannelGraph, Space

__all__ = ["Removal", "remove_channels"]


@dataclasses.dataclass
class Removal:
    """What :func:`remove_channels` did.

    Attributes:
        stats: ``channels_removed`` (source output channels), ``layers_pruned`` (sources that lost channels),
            ``consumers_rewritten``, ``biases_compensated``, ``reshapes_to_flatten``.
        replaced: Values that inputs were switched away from (to retire once nothing reads them).
        rewritten: Consumers whose input lost channels, ``(node, kept output channels or None)``, for
            reconstruction.
    """

    stats: Counter[str] = dataclasses.field(default_factory=Counter)
    replaced: list[ir.Value] = dataclasses.field(default_factory=list)
    rewritten: list[tuple[ir.Node, np.ndarray | None]] = dataclasses.field(default_factory=list)


def remove_channels(
    graph: ChannelGraph, removed_roots: set[int], *, means: dict[ir.Value, np.ndarray] | None = None
) -> Removal:
    """Remove the channels of the classes ``removed_roots`` from ``graph.model``, rewriting every edit site.

    Args:
        graph: The analysis of the model (its spaces follow a Reshape rewritten as Flatten).
        removed_roots: Classes to remove.
        means: Per-channel means of consumer inputs (by value, over calibration data); when given, each
            consumer's bias absorbs the removed channels' mean contribution.
    """
    return _Remover(graph, removed_roots, means).run()


class _Remover:
    def __init__(self, graph: ChannelGraph, removed_roots: set[int], means: dict[ir.Value, np.ndarray] | None) -> None:
        self.graph = graph
        self.model = graph.model
        self.removed = np.isin(graph.roots, np.fromiter(removed_roots, dtype=np.int64, count=len(removed_roots)))
        # Keyed by space: an edit may rename a value (Reshape -> Flatten) before its consumer is rewritten.
        self.means = {id(space): means[value] for value, space in graph.spaces.items() if value in (means or {})}
        self.result = Removal()
        self.stats = self.result.stats
        self.pending_biases: list[tuple[ir.Node, np.ndarray]] = []
        self.handlers: dict[type[_edits.Edit], Callable] = {
            _edits.ConvEdit: self._conv,
            _edits.ConvTransposeEdit: self._conv_transpose,
            _edits.GemmEdit: self._gemm,
            _edits.MatMulEdit: self._matmul,
            _edits.NormalizationEdit: self._normalization,
            _edits.ChannelConstantEdit: self._channel_constant,
            _edits.ResizeSizesEdit: self._resize_sizes,
            _edits.SplitEdit: self._split,
            _edits.SliceEdit: self._slice,
            _edits.ReshapeFlattenEdit: self._reshape_flatten,
            _edits.ReshapeShapeEdit: self._reshape_shape,
        }

    def run(self) -> Removal:
        graph = self.graph
        for source in graph.sources:
            lost = source.space.size - len(self._kept(source.space))
            if lost:
                self.stats["channels_removed"] += lost
                self.stats["layers_pruned"] += 1
        for edit in graph.edits:
            self.handlers[type(edit)](edit)
        for node, bias in self.pending_biases:  # after the edits, which may rewrite a following bias Add
            if reconstruction.add_output_bias(self.model, node, bias):
                self.stats["biases_compensated"] += 1
        for value, space in graph.spaces.items():
            kept = len(self._kept(space))
            if kept != space.size and value.shape is not None and len(value.shape) > space.axis:
                dims = list(value.shape.dims)
                dims[space.axis] = kept
                value.shape = ir.Shape(dims)
        return self.result

    def _kept(self, space: Space) -> np.ndarray:
        return self.graph.kept(space, self.removed)

    def _kept_pair(self, inputs: Space | None, outputs: Space | None):
        """Kept input and output channels of a layer (``None`` for no space) and whether each lost any."""
        keep_in = None if inputs is None else self._kept(inputs)
        keep_out = None if outputs is None else self._kept(outputs)
        changed_in = keep_in is not None and inputs is not None and len(keep_in) != inputs.size
        changed_out = keep_out is not None and outputs is not None and len(keep_out) != outputs.size
        return keep_in, keep_out, changed_in, changed_out

    def _replace(self, node: ir.Node, index: int, array: np.ndarray, suffix: str) -> None:
        old = node.inputs[index] if index < len(node.inputs) else None
        base = (old.name if old is not None and old.name else (node.name or node.op_type)) + suffix
        if old is not None:
            self.result.replaced.append(old)
        set_constant_input(self.model, node, index, array, base)

    def _conv(self, edit: _edits.ConvEdit) -> None:
        node = edit.node
        xs, ys, group = edit.x, edit.y, edit.group
        weight, bias = edit.weight, edit.bias
        keep_x, keep_y, changed_x, changed_y = self._kept_pair(xs, ys)
        if not (changed_x or changed_y):
            return
        new_weight, new_bias = weight, bias
        if changed_x:
            self.stats["consumers_rewritten"] += 1
            self.result.rewritten.append((node, keep_y if changed_y else None))
            if id(xs) in self.means:
                delta = reconstruction.removed_contribution_conv(weight, self.means[id(xs)], keep_x)
                new_bias = delta if new_bias is None else new_bias + delta.astype(new_bias.dtype)
                self.stats["biases_compensated"] += 1
            new_weight = new_weight[:, keep_x]
        if changed_y:
            new_weight = new_weight[keep_y]
            new_bias = None if new_bias is None else new_bias[keep_y]
            if group > 1:
                node.attributes["group"] = ir.AttrInt64("group", group * len(keep_y) // ys.size)
        self._replace(node, 1, new_weight.astype(weight.dtype), "_pruned")
        if new_bias is not None and (new_bias is not bias or changed_y):
            self._replace(node, 2, np.asarray(new_bias, dtype=weight.dtype), "_pruned")

    def _conv_transpose(self, edit: _edits.ConvTransposeEdit) -> None:
        keep = self._kept(edit.x)
        if len(keep) != edit.x.size:
            self.stats["consumers_rewritten"] += 1
            self._replace(edit.node, 1, edit.weight[keep], "_pruned")

    def _gemm(self, edit: _edits.GemmEdit) -> None:
        node = edit.node
        a, ys, weight, c = edit.a, edit.y, edit.weight, edit.c
        trans_b = int(attr(node, "transB", 0))
        keep_a, keep_y, changed_a, changed_y = self._kept_pair(a, ys)
        if not (changed_a or changed_y):
            return
        kn = weight.T if trans_b else weight  # (K, N)
        features = kn.shape[1]
        alpha, beta = float(attr(node, "alpha", 1.0)), float(attr(node, "beta", 1.0))
        bias = None if c is None else np.broadcast_to(c.reshape(-1) if c.ndim else c, (features,)) * beta
        if changed_a:
            self.stats["consumers_rewritten"] += 1
            self.result.rewritten.append((node, keep_y if changed_y else None))
            if id(a) in self.means:
                delta = alpha * reconstruction.removed_contribution_matmul(kn, self.means[id(a)], keep_a)
                bias = delta if bias is None else bias + delta
                self.stats["biases_compensated"] += 1
            kn = kn[keep_a]
        if changed_y:
            kn = kn[:, keep_y]
            bias = None if bias is None else bias[keep_y]
        self._replace(node, 1, np.ascontiguousarray(kn.T if trans_b else kn).astype(weight.dtype), "_pruned")
        if bias is not None:
            node.attributes["beta"] = ir.AttrFloat32("beta", 1.0)
            self._replace(node, 2, np.asarray(bias, dtype=weight.dtype), "_pruned")

    def _matmul(self, edit: _edits.MatMulEdit) -> None:
        node = edit.node
        a, ys, weight = edit.a, edit.y, edit.weight
        keep_a, keep_y, changed_a, changed_y = self._kept_pair(a, ys)
        if not (changed_a or changed_y):
            return
        new = weight
        if changed_a:
            self.stats["consumers_rewritten"] += 1
            self.result.rewritten.append((node, keep_y if changed_y else None))
            if id(a) in self.means:
                delta = reconstruction.removed_contribution_matmul(weight, self.means[id(a)], keep_a)
                self.pending_biases.append((node, delta[keep_y] if changed_y else delta))
            new = new[keep_a]
        if changed_y:
            new = new[:, keep_y]
        self._replace(node, 1, new, "_pruned")

    def _normalization(self, edit: _edits.NormalizationEdit) -> None:
        keep = self._kept(edit.x)
        if len(keep) == edit.x.size:
            return
        for offset, param in enumerate(edit.params):
            self._replace(edit.node, 1 + offset, param[keep], "_pruned")

    def _channel_constant(self, edit: _edits.ChannelConstantEdit) -> None:
        keep = self._kept(edit.x)
        if len(keep) == edit.x.size:
            return
        array = np.take(edit.array, keep, axis=edit.axis)
        self._replace(edit.node, edit.index, array, "_pruned")

    def _resize_sizes(self, edit: _edits.ResizeSizesEdit) -> None:
        xs = edit.x
        kept = len(self._kept(xs))
        if kept != xs.size:
            sizes = edit.sizes.copy()
            sizes.reshape(-1)[xs.axis] = kept
            self._replace(edit.node, 3, sizes, "_pruned")

    def _split(self, edit: _edits.SplitEdit) -> None:
        xs = edit.x
        mask = ~self.removed[xs.base: xs.base + xs.size]
        if mask.all():
            return
        sizes, offset, new = edit.sizes, 0, []
        for size in sizes:
            new.append(int(mask[offset: offset + size].sum()))
            offset += size
        node = edit.node
        node.attributes.pop("num_outputs", None)
        if "split" in node.attributes:
            node.attributes["split"] = ir.AttrInt64s("split", new)
        else:
            self._replace(node, 1, np.array(new, dtype=np.int64), "_split")

    def _slice(self, edit: _edits.SliceEdit) -> None:
        xs = edit.x
        mask = ~self.removed[xs.base: xs.base + xs.size]
        if mask.all():
            return
        start = int(mask[: edit.start].sum())
        end = start + int(mask[edit.start: edit.end].sum())
        starts, ends = edit.starts.copy(), edit.ends.copy()
        starts.reshape(-1)[edit.k] = start
        ends.reshape(-1)[edit.k] = end
        self._replace(edit.node, 1, starts, "_pruned")
        self._replace(edit.node, 2, ends, "_pruned")

    def _reshape_flatten(self, edit: _edits.ReshapeFlattenEdit) -> None:
        xs = edit.x
        if len(self._kept(xs)) == xs.size:
            return
        node = edit.node
        output = node.outputs[0]
        flatten = ir.Node("", "Flatten", [node.inputs[0]], [ir.AttrInt64("axis", 1)], num_outputs=1,
                          name=(node.name or "reshape") + "_flatten")
        graph = node.graph
        assert graph is not None
        graph.insert_after(node, flatten)
        new_out = flatten.outputs[0]
        new_out.name, new_out.type, new_out.shape = None, output.type, output.shape
        ir.convenience.replace_all_uses_with(output, new_out)
        old_name = output.name
        output.name = None
        new_out.name = old_name
        graph.remove(node)
        self.stats["reshapes_to_flatten"] += 1
        spaces = self.graph.spaces
        spaces[new_out] = spaces.pop(output)
        spaces[new_out].value = new_out

    def _reshape_shape(self, edit: _edits.ReshapeShapeEdit) -> None:
        xs = edit.x
        kept = len(self._kept(xs))
        shape = edit.shape.copy()
        if kept == xs.size or int(shape.reshape(-1)[xs.axis]) != xs.size:
            return
        shape.reshape(-1)[xs.axis] = kept
        self._replace(edit.node, 1, shape, "_pruned")
