"""Channel rules of the ops without weights: channel-wise ops pass channels on, data movement moves them.

Part of :class:`~sftonnx.passes.pruning.dependency.ChannelGraph` (see its module docstring for the model):
each rule reads the channel spaces of a node's inputs and either aliases them on its outputs (maybe on another
axis, or a range of them), couples them with other spaces, records an edit for the constants that must follow
(per-channel operands, Resize sizes, Split sizes, Slice bounds, Reshape shapes), or blocks them with a reason.
"""

from __future__ import annotations

import math

import numpy as np
import onnx_ir as ir

from sftonnx.ir_utils import attr
from sftonnx.passes.pruning import _edits
from sftonnx.passes.pruning._edits import Space

__all__ = ["LayoutRules"]


class LayoutRules:
    """The per-op rules for ops without weights; mixed into ``ChannelGraph``, whose state they use.

    ``spaces``, ``edits``, ``const`` and the helpers ``space``, ``dims``, ``_alias``, ``_new_space``,
    ``_opaque``, ``_block``, ``_block_inputs``, ``_union`` and ``_union_spaces`` come from ``ChannelGraph``.
    """

    spaces: dict[ir.Value, Space]
    edits: list[_edits.Edit]

    def _unary(self, node: ir.Node) -> None:
        xs = self.space(node.inputs[0])
        others = [v for v in node.inputs[1:] if v is not None]
        if xs is None or any(v in self.spaces for v in others):
            self._block_inputs(node, f"unsupported_consumer:{node.op_type}")
            return
        if node.op_type == "PRelu":
            self._elementwise(node)
            return
        if node.op_type == "Clip" and any((self.dims(v) or (1,)) not in ((), (1,)) for v in others):
            self._block(xs, "unsupported_consumer:Clip")
            return
        if node.op_type == "Dropout" and len(node.outputs) > 1 and node.outputs[1].uses():
            self._block(xs, "unsupported_consumer:Dropout")
            return
        self._alias(node.outputs[0], xs.axis, xs)

    def _elementwise(self, node: ir.Node) -> None:
        out = node.outputs[0]
        out_dims = self.dims(out)
        inputs = [(i, v) for i, v in enumerate(node.inputs) if v is not None]
        spaced = [(i, v, self.spaces[v]) for i, v in inputs if v in self.spaces]
        reason = f"unsupported_consumer:{node.op_type}"
        if out_dims is None:
            self._block_inputs(node, "shape_unknown")
            return
        from_end = set()
        for _, v, s in spaced:
            dims = self.dims(v)
            from_end.add(None if dims is None else len(dims) - s.axis)
        sizes = {s.size for _, _, s in spaced}
        if len(from_end) != 1 or None in from_end or len(sizes) != 1:
            self._block_inputs(node, reason)
            return
        position = from_end.pop()
        size = sizes.pop()
        master = spaced[0][2]
        constants = []
        coupled = [s for _, _, s in spaced]
        for index, value in inputs:
            if value in self.spaces:
                continue
            dims = self.dims(value)
            if dims is None:
                self._block_inputs(node, "shape_unknown")
                return
            axis = len(dims) - position
            dim = dims[axis] if axis >= 0 else 1
            if dim == 1:
                continue
            if dim != size:
                self._block_inputs(node, reason)
                return
            array = self.const.array(value)
            if array is not None:
                constants.append((index, axis, array))
            else:
                coupled.append(self._opaque(value, axis, size))
        for other in coupled[1:]:
            self._union_spaces(master, other)
        self._alias(out, len(out_dims) - position, master)
        for index, axis, array in constants:
            self.edits.append(_edits.ChannelConstantEdit(node, master, index, axis, array))

    def _pool(self, node: ir.Node) -> None:
        xs = self.space(node.inputs[0])
        if xs is None:
            return
        if xs.axis != 1 or (len(node.outputs) > 1 and node.outputs[1].uses()):
            self._block(xs, f"unsupported_consumer:{node.op_type}")
            return
        self._alias(node.outputs[0], 1, xs)

    def _axes(self, node: ir.Node, input_index: int, rank: int) -> list[int] | None:
        value = attr(node, "axes")
        if value is None and len(node.inputs) > input_index and node.inputs[input_index] is not None:
            array = self.const.array(node.inputs[input_index])
            if array is None:
                return None
            value = array.reshape(-1).tolist()
        if value is None:
            return []
        return sorted(int(a) % rank for a in value)

    def _reduce(self, node: ir.Node) -> None:
        xs = self.space(node.inputs[0])
        dims = self.dims(node.inputs[0])
        if xs is None:
            return
        axes = None if dims is None else self._axes(node, 1, len(dims))
        if not axes or xs.axis in axes:  # none known, reduce-all (empty), or across channels
            self._block(xs, f"unsupported_consumer:{node.op_type}")
            return
        keep = int(attr(node, "keepdims", 1))
        axis = xs.axis if keep else xs.axis - sum(1 for a in axes if a < xs.axis)
        self._alias(node.outputs[0], axis, xs)

    def _resize(self, node: ir.Node) -> None:
        xs = self.space(node.inputs[0])
        if xs is None:
            return
        reason = f"unsupported_consumer:{node.op_type}"
        if any(v in self.spaces for v in node.inputs[1:] if v is not None) or attr(node, "axes") is not None:
            self._block_inputs(node, reason)
            return
        if node.op_type == "Upsample":
            scales = self.const.array(node.inputs[1]) if len(node.inputs) > 1 else None
            if scales is None or scales.reshape(-1)[xs.axis] != 1:
                self._block(xs, reason)
                return
            self._alias(node.outputs[0], xs.axis, xs)
            return
        scales = self.const.array(node.inputs[2]) if len(node.inputs) > 2 and node.inputs[2] is not None else None
        sizes = self.const.array(node.inputs[3]) if len(node.inputs) > 3 and node.inputs[3] is not None else None
        if sizes is not None and sizes.size > xs.axis:
            self._alias(node.outputs[0], xs.axis, xs)
            self.edits.append(_edits.ResizeSizesEdit(node, xs, sizes))
        elif scales is not None and scales.size > xs.axis and scales.reshape(-1)[xs.axis] == 1:
            self._alias(node.outputs[0], xs.axis, xs)
        else:
            self._block(xs, reason)

    def _pad(self, node: ir.Node) -> None:
        xs = self.space(node.inputs[0])
        dims = self.dims(node.inputs[0])
        if xs is None:
            return
        pads = attr(node, "pads")
        if pads is None and len(node.inputs) > 1:
            array = self.const.array(node.inputs[1])
            pads = None if array is None else array.reshape(-1).tolist()
        axes = None
        if dims is not None:
            axes = self._axes(node, 3, len(dims)) if len(node.inputs) > 3 and node.inputs[3] is not None else list(
                range(len(dims)))
        if pads is None or axes is None or any(v in self.spaces for v in node.inputs[1:] if v is not None):
            self._block(xs, "unsupported_consumer:Pad")
            return
        half = len(pads) // 2
        if xs.axis in axes:
            k = axes.index(xs.axis)
            if k >= half or pads[k] != 0 or pads[k + half] != 0:
                self._block(xs, "unsupported_consumer:Pad")
                return
        self._alias(node.outputs[0], xs.axis, xs)

    def _concat(self, node: ir.Node) -> None:
        out_dims = self.dims(node.outputs[0])
        if out_dims is None:
            self._block_inputs(node, "shape_unknown")
            return
        axis = int(attr(node, "axis", 0)) % len(out_dims)
        spaced = [self.spaces[v] for v in node.inputs if v is not None and v in self.spaces]
        if any(s.axis != axis for s in spaced) and axis in {s.axis for s in spaced}:
            self._block_inputs(node, "unsupported_consumer:Concat")
            return
        if axis != spaced[0].axis:  # concatenation along another axis: channels are coupled
            self._elementwise(node)
            return
        if not isinstance(out_dims[axis], int):
            self._block_inputs(node, "shape_unknown")
            return
        out = self._new_space(node.outputs[0], axis, int(out_dims[axis]))
        offset = 0
        for value in node.inputs:
            if value is None:
                continue
            space = self.space(value)
            if space is None:
                dims = self.dims(value)
                size = dims[axis] if dims is not None and len(dims) == len(out_dims) else None
                if not isinstance(size, int):
                    self._block(out, "shape_unknown")
                    return
                space = self._opaque(value, axis, size)
            part = Space(value, axis, space.size, out.base + offset)
            self._union_spaces(part, space)
            offset += space.size
        if offset != out.size:
            self._block(out, "shape_unknown")

    def _split(self, node: ir.Node) -> None:
        xs = self.space(node.inputs[0])
        dims = self.dims(node.inputs[0])
        if xs is None:
            return
        if dims is None:
            self._block(xs, "shape_unknown")
            return
        axis = int(attr(node, "axis", 0)) % len(dims)
        if axis != xs.axis:
            for out in node.outputs:
                self._alias(out, xs.axis, xs)
            return
        sizes = attr(node, "split")
        if sizes is None and len(node.inputs) > 1 and node.inputs[1] is not None:
            array = self.const.array(node.inputs[1])
            sizes = None if array is None else array.reshape(-1).tolist()
        if sizes is None:
            count = len(node.outputs)
            chunk = math.ceil(xs.size / count)
            sizes = [min(chunk, xs.size - k * chunk) for k in range(count)]
        if len(sizes) != len(node.outputs) or sum(sizes) != xs.size or min(sizes) <= 0:
            self._block(xs, "unsupported_consumer:Split")
            return
        offset = 0
        for out, size in zip(node.outputs, sizes, strict=True):
            self._alias(out, axis, xs, offset, int(size))
            offset += int(size)
        self.edits.append(_edits.SplitEdit(node, xs, [int(s) for s in sizes]))

    def _slice(self, node: ir.Node) -> None:
        xs = self.space(node.inputs[0])
        dims = self.dims(node.inputs[0])
        if xs is None:
            return
        if dims is None or len(node.inputs) < 3 or any(v in self.spaces for v in node.inputs[1:] if v is not None):
            self._block(xs, "unsupported_consumer:Slice")
            return
        arrays = [self.const.array(v) if v is not None else None for v in node.inputs[1:5]]
        arrays += [None] * (4 - len(arrays))
        starts, ends, axes, steps = arrays
        if starts is None or ends is None or (len(node.inputs) > 3 and node.inputs[3] is not None and axes is None) or (
                len(node.inputs) > 4 and node.inputs[4] is not None and steps is None):
            self._block(xs, "unsupported_consumer:Slice")
            return
        axes_list = [int(a) % len(dims) for a in (axes.reshape(-1) if axes is not None else range(starts.size))]
        if xs.axis not in axes_list:
            self._alias(node.outputs[0], xs.axis, xs)
            return
        k = axes_list.index(xs.axis)
        step = int(steps.reshape(-1)[k]) if steps is not None else 1
        if step != 1:
            self._block(xs, "unsupported_consumer:Slice")
            return
        start, end = int(starts.reshape(-1)[k]), int(ends.reshape(-1)[k])
        start = max(0, min(xs.size, start + xs.size if start < 0 else start))
        end = max(0, min(xs.size, end + xs.size if end < 0 else end))
        if end <= start:
            self._block(xs, "unsupported_consumer:Slice")
            return
        self._alias(node.outputs[0], xs.axis, xs, start, end - start)
        self.edits.append(_edits.SliceEdit(node, xs, k, start, end, starts, ends))

    def _flatten_like(self, node: ir.Node, xs: Space, axis: int) -> bool:
        dims = self.dims(node.inputs[0])
        if dims is None or xs.axis < axis or not all(isinstance(d, int) for d in dims[axis:]):
            return False
        trailing = tuple(int(d) for d in dims[axis:])
        out = self._new_space(node.outputs[0], 1 if axis > 0 else 1, math.prod(trailing))
        shape = [1] * len(trailing)
        shape[xs.axis - axis] = xs.size
        channel = np.broadcast_to(np.arange(xs.size).reshape(shape), trailing).reshape(-1)
        for feature, c in enumerate(channel.tolist()):
            self._union(out.base + feature, xs.base + c)
        return True

    def _flatten(self, node: ir.Node) -> None:
        xs = self.space(node.inputs[0])
        if xs is None:
            return
        axis = int(attr(node, "axis", 1))
        dims = self.dims(node.inputs[0])
        if dims is None or not self._flatten_like(node, xs, axis % max(len(dims), 1) if axis < 0 else axis):
            self._block(xs, "unsupported_consumer:Flatten")

    def _reshape(self, node: ir.Node) -> None:
        xs = self.space(node.inputs[0])
        if xs is None:
            return
        before, after = self.dims(node.inputs[0]), self.dims(node.outputs[0])
        if before is None or after is None or not all(isinstance(d, int) for d in before[1:]):
            self._block(xs, "shape_unknown")
            return
        # [N, C, ...] -> [N, C * ...]: the element count fixes the first dim even when it is symbolic.
        if xs.axis == 1 and len(after) == 2 and after[1] == math.prod(before[1:]):
            if self._flatten_like(node, xs, 1):
                self.edits.append(_edits.ReshapeFlattenEdit(node, xs))
                return
        shape = self.const.array(node.inputs[1]) if len(node.inputs) > 1 else None
        if (shape is not None and len(after) > xs.axis and after[1: xs.axis + 1] == before[1: xs.axis + 1]
                and int(shape.reshape(-1)[xs.axis]) in (xs.size, -1, 0) and not int(attr(node, "allowzero", 0))):
            self._alias(node.outputs[0], xs.axis, xs)
            self.edits.append(_edits.ReshapeShapeEdit(node, xs, shape))
            return
        users = [use.node for use in node.outputs[0].uses()]
        splits_channels = (len(after) == len(before) + 1 and after[1: xs.axis] == before[1: xs.axis]
                           and isinstance(after[xs.axis], int) and isinstance(after[xs.axis + 1], int)
                           and after[xs.axis] * after[xs.axis + 1] == xs.size)
        if splits_channels and users and all(self._merges_back(u, before) for u in users):
            self._block(xs, "channel_shuffle")  # Reshape-Transpose-Reshape: a permutation of the channels
        else:
            self._block(xs, "unsupported_consumer:Reshape")

    def _merges_back(self, node: ir.Node, shape: tuple) -> bool:
        """Whether ``node`` is a Transpose whose readers are Reshapes back to ``shape`` (a channel shuffle)."""
        if node.op_type != "Transpose":
            return False
        readers = [use.node for use in node.outputs[0].uses()]
        return bool(readers) and all(
            r.op_type == "Reshape" and (self.dims(r.outputs[0]) or ())[1:] == shape[1:] for r in readers)

    def _transpose(self, node: ir.Node) -> None:
        xs = self.space(node.inputs[0])
        dims = self.dims(node.inputs[0])
        if xs is None:
            return
        perm = attr(node, "perm")
        if perm is None:
            if dims is None:
                self._block(xs, "shape_unknown")
                return
            perm = list(range(len(dims)))[::-1]
        self._alias(node.outputs[0], list(perm).index(xs.axis), xs)

    def _squeeze(self, node: ir.Node) -> None:
        xs = self.space(node.inputs[0])
        dims = self.dims(node.inputs[0])
        if xs is None:
            return
        axes = None if dims is None else self._axes(node, 1, len(dims))
        if not axes or xs.axis in axes:
            self._block(xs, "unsupported_consumer:Squeeze")
            return
        self._alias(node.outputs[0], xs.axis - sum(1 for a in axes if a < xs.axis), xs)

    def _unsqueeze(self, node: ir.Node) -> None:
        xs = self.space(node.inputs[0])
        out_dims = self.dims(node.outputs[0])
        if xs is None:
            return
        axes = None if out_dims is None else self._axes(node, 1, len(out_dims))
        if not axes:
            self._block(xs, "unsupported_consumer:Unsqueeze")
            return
        kept_positions = [p for p in range(len(out_dims)) if p not in axes]  # type: ignore[arg-type]
        self._alias(node.outputs[0], kept_positions[xs.axis], xs)

    def _cast_like(self, node: ir.Node) -> None:
        """``CastLike(x, target)`` reads only the element type of ``target``: channel-wise in ``x``."""
        xs = self.space(node.inputs[0])
        if xs is not None:
            self._alias(node.outputs[0], xs.axis, xs)

    def _size(self, node: ir.Node) -> None:
        self._block_inputs(node, "unsupported_consumer:Size")

    def _shape(self, node: ir.Node) -> None:
        xs = self.space(node.inputs[0])
        dims = self.dims(node.inputs[0])
        if xs is None or dims is None:
            if xs is not None:
                self._block(xs, "unsupported_consumer:Shape")
            return
        start = int(attr(node, "start", 0))
        end = attr(node, "end")
        rank = len(dims)
        start = start + rank if start < 0 else start
        end = rank if end is None else (int(end) + rank if int(end) < 0 else int(end))
        if start <= xs.axis < end:
            self._block(xs, "unsupported_consumer:Shape")
