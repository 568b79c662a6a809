"""Records of the channel analysis: channel spaces, and the rewrites removing channels needs (one class a kind).

:class:`~sftonnx.passes.pruning.dependency.ChannelGraph` records them while it analyses the graph (read-only);
:func:`sftonnx.passes.pruning.removal.remove_channels` applies them. Every record holds the node, the channel
spaces it reads or writes, and the original constants (weights, parameters, shape inputs) that get sliced.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import onnx_ir as ir

__all__ = [
    "ChannelConstantEdit",
    "ConvEdit",
    "ConvTransposeEdit",
    "Edit",
    "GemmEdit",
    "MatMulEdit",
    "NormalizationEdit",
    "ReshapeFlattenEdit",
    "ReshapeShapeEdit",
    "ResizeSizesEdit",
    "SliceEdit",
    "Space",
    "SplitEdit",
]


@dataclasses.dataclass
class Space:
    """The channel axis of one tensor: elements ``base .. base + size - 1`` of the union-find.

    Attributes:
        value: The tensor.
        axis: Its channel axis (non-negative).
        size: Number of channels.
        base: First element id.
    """

    value: ir.Value
    axis: int
    size: int
    base: int

    @property
    def elements(self) -> np.ndarray:
        """Element ids of the channels, in channel order."""
        return np.arange(self.base, self.base + self.size)


@dataclasses.dataclass
class Edit:
    """Base of the edit records: the node to rewrite."""

    node: ir.Node


@dataclasses.dataclass
class ConvEdit(Edit):
    """A Conv: input channels ``x`` (group 1 only) slice ``W[:, c]``; output channels ``y`` slice ``W[o]``, ``B[o]``.

    A grouped conv losing whole groups also gets a smaller ``group``.
    """

    x: Space | None
    y: Space | None
    weight: np.ndarray
    bias: np.ndarray | None
    group: int


@dataclasses.dataclass
class ConvTransposeEdit(Edit):
    """A ConvTranspose (group 1) reading channels ``x``: slices ``W[c]``."""

    x: Space
    weight: np.ndarray


@dataclasses.dataclass
class GemmEdit(Edit):
    """A Gemm: input features ``a`` slice the rows of ``B`` as ``[K, N]``; output features ``y``, columns and ``C``."""

    a: Space | None
    y: Space | None
    weight: np.ndarray
    c: np.ndarray | None


@dataclasses.dataclass
class MatMulEdit(Edit):
    """A MatMul with a constant 2-D ``B``: input features ``a`` slice its rows, output features ``y`` its columns."""

    a: Space | None
    y: Space | None
    weight: np.ndarray


@dataclasses.dataclass
class NormalizationEdit(Edit):
    """BatchNormalization/InstanceNormalization over channels ``x``: every per-channel parameter is sliced."""

    x: Space
    params: list[np.ndarray]


@dataclasses.dataclass
class ChannelConstantEdit(Edit):
    """A per-channel constant operand (input ``index``, channel axis ``axis``) of an elementwise op."""

    x: Space
    index: int
    axis: int
    array: np.ndarray


@dataclasses.dataclass
class ResizeSizesEdit(Edit):
    """A Resize given by ``sizes``: the channel entry becomes the kept count."""

    x: Space
    sizes: np.ndarray


@dataclasses.dataclass
class SplitEdit(Edit):
    """A Split along channels: each output's size becomes its kept count."""

    x: Space
    sizes: list[int]


@dataclasses.dataclass
class SliceEdit(Edit):
    """A Slice along channels (entry ``k`` of its axes, ``[start, end)`` of the input): bounds renumbered."""

    x: Space
    k: int
    start: int
    end: int
    starts: np.ndarray
    ends: np.ndarray


@dataclasses.dataclass
class ReshapeFlattenEdit(Edit):
    """A Reshape ``[N, C, ...] -> [N, C * ...]``: rewritten as ``Flatten`` so it follows the kept channels."""

    x: Space


@dataclasses.dataclass
class ReshapeShapeEdit(Edit):
    """A Reshape that keeps the channel axis, given by a constant ``shape``: the channel entry is renumbered."""

    x: Space
    shape: np.ndarray
