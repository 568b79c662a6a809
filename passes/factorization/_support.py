"""Plumbing shared by the factorization passes: options, constant weights, names, calibration statistics.

Calibration statistics are input autocorrelations ``Sigma = E[x x^T]`` of the layers to factor, streamed
batch by batch through :class:`~sftonnx.analysis.activations.ActivationRunner` (main graph only):

* Gemm/MatMul: ``x`` is a row of the (transposed, for ``transA``) left operand, flattened over batch axes.
* Conv: ``x`` is an im2col patch at an output position (explicit or ``auto_pad`` padding, strides and
  dilations as the Conv applies them), one ``(C_in/group * prod(kernel))``-square matrix per group, with
  patch entries ordered ``(channel, kernel offsets...)`` like ``W[o].reshape(-1)``. At most
  ``MAX_ROWS_PER_BATCH`` positions per batch are used (a seeded random subset).

The estimate is shrunk towards a multiple of the identity by ``d / (d + 10 rows)`` (see
:meth:`GramRequest.result`), so layers that see few rows (a pooler reading one token per sample) are not
fitted to the handful of directions the calibration set happens to span.
"""

from __future__ import annotations

import dataclasses
import itertools
import logging
import math
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import numpy as np
import onnx_ir as ir

from sftonnx import ir_utils
from sftonnx.errors import InputError, PassConfigError

__all__ = [
    "FLOAT_TYPES",
    "MAX_ROWS_PER_BATCH",
    "ConvGeometry",
    "Criterion",
    "GramRequest",
    "add_initializer",
    "collect_grams",
    "conv_patches",
    "layer_name",
    "make_criterion",
    "resolve_weight",
    "sites",
    "validate_layers",
]

logger = logging.getLogger(__name__)

#: Weight element types the passes factor (computed in float64, written back in the weight's type).
FLOAT_TYPES = (ir.DataType.FLOAT, ir.DataType.DOUBLE, ir.DataType.FLOAT16)
#: Positions (rows) per calibration batch that enter an autocorrelation matrix.
MAX_ROWS_PER_BATCH = 4096
#: Shrinkage of autocorrelations towards the identity: ``a = d / (d + SHRINK_ROWS * rows)``.
SHRINK_ROWS = 10
#: Default when no rank criterion is given.
DEFAULT_ENERGY = 0.9


# ------------------------------------------------------------------------------------------- options
@dataclasses.dataclass(frozen=True)
class Criterion:
    """How ranks are chosen: ``kind`` is ``energy``, ``ratio``, ``rank``, ``max_error`` or ``budget``."""

    kind: str
    value: float


def make_criterion(
    pass_name: str,
    *,
    energy: float | None,
    ratio: float | None,
    rank: int | None,
    max_error: float | None,
    budget: float | None,
) -> Criterion:
    """Validate the rank options of a pass; at most one may be given (default ``energy=0.9``).

    Raises:
        PassConfigError: More than one criterion, or a value out of range.
    """
    given = {
        name: value
        for name, value in (
            ("energy", energy),
            ("ratio", ratio),
            ("rank", rank),
            ("max_error", max_error),
            ("budget", budget),
        )
        if value is not None
    }
    if len(given) > 1:
        raise PassConfigError(
            f"{pass_name}: give at most one of energy, ratio, rank, max_error, budget (got {', '.join(given)})"
        )
    if not given:
        return Criterion("energy", DEFAULT_ENERGY)
    kind, value = next(iter(given.items()))
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise PassConfigError(f"{pass_name}: {kind} must be a number, got {value!r}")
    if kind == "energy" and not 0.0 < value <= 1.0:
        raise PassConfigError(f"{pass_name}: energy must be in (0, 1], got {value}")
    if kind in ("ratio", "budget", "max_error") and not 0.0 < value < 1.0:
        raise PassConfigError(f"{pass_name}: {kind} must be in (0, 1), got {value}")
    if kind == "rank" and (int(value) != value or value < 1):
        raise PassConfigError(f"{pass_name}: rank must be a positive integer, got {value}")
    return Criterion(kind, float(value))


def validate_layers(pass_name: str, layers: Sequence[str], known: Iterable[str]) -> None:
    """Every name in ``layers`` must name a candidate node.

    Raises:
        PassConfigError: Names no candidate node (the message lists a few known names).
    """
    known_set = set(known)
    unknown = [name for name in layers if name not in known_set]
    if unknown:
        sample = ", ".join(sorted(known_set)[:8]) or "(none)"
        raise PassConfigError(
            f"{pass_name}: layers {', '.join(repr(n) for n in unknown)} name no candidate node "
            f"(node or output names, e.g. {sample})"
        )


def layer_name(node: ir.Node) -> str:
    """The name a node is reported under: its name, else its first output's name."""
    return node.name or (node.outputs[0].name if node.outputs and node.outputs[0].name else node.op_type)


def layer_names(node: ir.Node) -> set[str]:
    """Names ``layers=`` may use for a node: node name and first output name."""
    names = {node.name} if node.name else set()
    if node.outputs and node.outputs[0].name:
        names.add(node.outputs[0].name)
    return names


# -------------------------------------------------------------------------------------------- graphs
def sites(model: ir.Model, op_types: Sequence[str]) -> Iterator[tuple[ir.Node, str | None]]:
    """Default-domain nodes of ``op_types`` anywhere in the model, with where they live.

    Yields ``(node, place)``: ``place`` is ``None`` for the main graph, ``"in_subgraph"`` for If/Loop/Scan
    bodies and ``"in_function"`` for model-local functions (the skip keys of a pass that declines there).
    """
    for node in ir.traversal.RecursiveGraphIterator(model.graph):
        if node.op_type in op_types and node.domain in ("", "ai.onnx"):
            yield node, (None if node.graph is model.graph else "in_subgraph")
    for function in model.functions.values():
        for node in ir.traversal.RecursiveGraphIterator(function):
            if node.op_type in op_types and node.domain in ("", "ai.onnx"):
                yield node, "in_function"


def resolve_weight(value: ir.Value | None) -> tuple[np.ndarray | None, str | None]:
    """A weight's constant contents, or the skip key saying why it cannot be factored.

    Accepts an initializer (not an overridable graph input), a ``Constant`` node, and ``Transpose`` or
    ``Identity`` of those (exporters emit ``Transpose(W)`` for ``x @ W^T``). Every value on that chain must
    have one reader, or factoring would duplicate a weight other nodes keep reading (readers of the shape or
    type only, :func:`sftonnx.ir_utils.reads_metadata_only`, as exporters emit to build zero biases, do not count:
    the original stays for them until constant folding removes them).

    Returns:
        ``(array, None)`` or ``(None, "weight_not_constant" | "weight_shared")``.
    """
    chain: list[ir.Value] = []
    current = value
    transforms: list[tuple[int, ...] | None] = []
    array = None
    for _ in range(4):
        if current is None:
            return None, "weight_not_constant"
        chain.append(current)
        if current.const_value is not None:
            if current.is_graph_input():
                return None, "weight_not_constant"
            array = ir_utils.constant_array(current)
            break
        producer = current.producer()
        if producer is None:
            return None, "weight_not_constant"
        if ir_utils.is_op(producer, "Constant"):
            array = ir_utils.constant_array(current)
            break
        if ir_utils.is_op(producer, "Transpose") and len(producer.inputs) == 1:
            perm = ir_utils.attr(producer, "perm")
            transforms.append(tuple(perm) if perm is not None else ())
            current = producer.inputs[0]
            continue
        if ir_utils.is_op(producer, "Identity"):
            transforms.append(None)
            current = producer.inputs[0]
            continue
        return None, "weight_not_constant"
    if array is None:
        return None, "weight_not_constant"
    if any(_readers(v) > 1 or v.is_graph_output() for v in chain):
        return None, "weight_shared"
    for perm in reversed(transforms):
        if perm is None:
            continue
        array = np.transpose(array, perm if perm else None)
    return np.asarray(array), None


def _readers(value: ir.Value) -> int:
    """Nodes that read ``value``'s contents (see :func:`sftonnx.ir_utils.reads_metadata_only`)."""
    return sum(1 for use in value.uses() if not ir_utils.reads_metadata_only(use.node, use.idx))


def add_initializer(graph: ir.Graph, names: ir_utils.NameAllocator, base: str, array: np.ndarray) -> ir.Value:
    """Register ``array`` as an initializer of ``graph`` (a subgraph's own, for nodes in bodies)."""
    name = names(base or "factor")
    tensor = ir.tensor(np.ascontiguousarray(array), name=name)
    value = ir.Value(name=name, shape=ir.Shape(array.shape), type=ir.TensorType(tensor.dtype), const_value=tensor)
    graph.register_initializer(value)
    return value


# ------------------------------------------------------------------------------------- conv geometry
@dataclasses.dataclass(frozen=True)
class ConvGeometry:
    """Spatial attributes of a Conv, normalized (``kernel`` from the weight when the attribute is absent).

    Attributes:
        kernel: Kernel sizes per spatial axis.
        strides: Strides per spatial axis.
        dilations: Dilations per spatial axis.
        pads: ``[x1_begin, x2_begin, ..., x1_end, x2_end, ...]`` (used when ``auto_pad`` is ``NOTSET``).
        auto_pad: ``NOTSET``, ``SAME_UPPER``, ``SAME_LOWER`` or ``VALID``.
        group: The ``group`` attribute.
    """

    kernel: tuple[int, ...]
    strides: tuple[int, ...]
    dilations: tuple[int, ...]
    pads: tuple[int, ...]
    auto_pad: str
    group: int

    @classmethod
    def of(cls, node: ir.Node, weight_shape: Sequence[int]) -> ConvGeometry:
        """Read the attributes of Conv ``node`` whose weight has ``weight_shape``."""
        rank = len(weight_shape) - 2
        kernel = tuple(int(k) for k in (ir_utils.attr(node, "kernel_shape") or weight_shape[2:]))
        strides = tuple(int(s) for s in (ir_utils.attr(node, "strides") or (1,) * rank))
        dilations = tuple(int(d) for d in (ir_utils.attr(node, "dilations") or (1,) * rank))
        pads = tuple(int(p) for p in (ir_utils.attr(node, "pads") or (0,) * (2 * rank)))
        auto_pad = ir_utils.attr(node, "auto_pad", "NOTSET") or "NOTSET"
        if isinstance(auto_pad, bytes):
            auto_pad = auto_pad.decode()
        return cls(kernel, strides, dilations, pads, auto_pad, int(ir_utils.attr(node, "group", 1) or 1))

    @property
    def rank(self) -> int:
        """Number of spatial axes."""
        return len(self.kernel)

    def explicit_pads(self, spatial: Sequence[int]) -> tuple[int, ...]:
        """Begin/end pads as applied to an input of spatial size ``spatial`` (resolves ``auto_pad``)."""
        if self.auto_pad in ("NOTSET", ""):
            return self.pads
        begins, ends = [], []
        for size, k, s, d in zip(spatial, self.kernel, self.strides, self.dilations, strict=True):
            if self.auto_pad == "VALID":
                begins.append(0)
                ends.append(0)
                continue
            out = -(-size // s)
            total = max((out - 1) * s + (k - 1) * d + 1 - size, 0)
            small, large = total // 2, total - total // 2
            begins.append(small if self.auto_pad == "SAME_UPPER" else large)
            ends.append(large if self.auto_pad == "SAME_UPPER" else small)
        return tuple(begins + ends)

    def output_size(self, spatial: Sequence[int]) -> tuple[int, ...]:
        """Output spatial size for an input of spatial size ``spatial``."""
        pads = self.explicit_pads(spatial)
        r = self.rank
        return tuple(
            (spatial[i] + pads[i] + pads[i + r] - self.dilations[i] * (self.kernel[i] - 1) - 1) // self.strides[i] + 1
            for i in range(r)
        )


def conv_patches(x: np.ndarray, geometry: ConvGeometry) -> np.ndarray:
    """im2col: ``(group, C_in/group * prod(kernel), N * prod(output spatial))`` patches of ``x`` (NC...)."""
    n, c = x.shape[:2]
    spatial = x.shape[2:]
    r = geometry.rank
    pads = geometry.explicit_pads(spatial)
    out = geometry.output_size(spatial)
    padded = np.pad(x, [(0, 0), (0, 0)] + [(pads[i], pads[i + r]) for i in range(r)])
    taps = []
    for offsets in itertools.product(*(range(k) for k in geometry.kernel)):
        index = tuple(
            slice(o * d, o * d + s * (size - 1) + 1, s)
            for o, d, s, size in zip(offsets, geometry.dilations, geometry.strides, out, strict=True)
        )
        taps.append(padded[(slice(None), slice(None), *index)])
    cols = np.stack(taps, axis=2)  # (n, c, K, *out)
    g = geometry.group
    cols = cols.reshape(n, g, (c // g) * len(taps), -1)
    return cols.transpose(1, 2, 0, 3).reshape(g, (c // g) * len(taps), -1)


# -------------------------------------------------------------------------------------- calibration
@dataclasses.dataclass
class GramRequest:
    """One autocorrelation to collect: for the input ``value_name`` of a Gemm/MatMul or a Conv.

    Attributes:
        key: Caller's key for the result.
        value_name: The activation feeding the layer.
        geometry: Conv geometry (im2col patches), or ``None`` for a matrix input.
        transpose: Matrix input is ``A`` of Gemm with ``transA=1`` (rows are its columns).
    """

    key: Any
    value_name: str
    geometry: ConvGeometry | None = None
    transpose: bool = False
    gram: np.ndarray | None = None
    rows: int = 0

    def update(self, x: np.ndarray, rng: np.random.Generator) -> None:
        """Add one batch of activations."""
        x = np.asarray(x, dtype=np.float64)
        if self.geometry is not None:
            # im2col of a whole batch at high resolution is huge (112x112x64x9 per sample): keep just enough
            # samples for the rows we sample anyway, before building the patches.
            spatial = int(np.prod(x.shape[2:])) if x.ndim > 2 else 1
            keep = max(1, -(-4 * MAX_ROWS_PER_BATCH // max(spatial, 1)))
            if x.shape[0] > keep:
                x = x[np.sort(rng.choice(x.shape[0], keep, replace=False))]
            cols = conv_patches(x, self.geometry)
        else:
            if self.transpose:
                x = x.T
            cols = x.reshape(-1, x.shape[-1]).T[None]  # (1, features, rows)
        if cols.shape[-1] > MAX_ROWS_PER_BATCH:
            cols = cols[..., rng.choice(cols.shape[-1], MAX_ROWS_PER_BATCH, replace=False)]
        gram = cols @ np.swapaxes(cols, -1, -2)
        self.gram = gram if self.gram is None else self.gram + gram
        self.rows += cols.shape[-1]

    def result(self) -> np.ndarray | None:
        """Shrunk ``E[x x^T]`` (``(group, d, d)``; group is 1 for matrices), or ``None`` without data.

        ``(1 - a) Sigma + a (tr(Sigma) / d) I`` with ``a = d / (d + 10 rows)``: with few rows ``Sigma`` is
        rank-deficient and a whitened fit would treat every unseen input direction as free to drop (it
        overfits the calibration set); the shrinkage fades as rows outnumber dimensions.
        """
        if self.gram is None or self.rows == 0:
            return None
        sigma = self.gram / self.rows
        dim = sigma.shape[-1]
        alpha = dim / (dim + SHRINK_ROWS * self.rows)
        scale = np.trace(sigma, axis1=-2, axis2=-1)[..., None, None] / dim
        return (1 - alpha) * sigma + alpha * scale * np.eye(dim)


def collect_grams(
    model: ir.Model, requests: Sequence[GramRequest], calibration_data: Any, samples: int
) -> dict[Any, np.ndarray]:
    """Run the calibration data through ``model`` and return ``{request.key: E[x x^T]}``.

    Raises:
        InputError: The data does not match the model's inputs, or holds no samples.
    """
    from sftonnx import verify
    from sftonnx.analysis.activations import ActivationRunner

    if not requests:
        return {}
    specs = verify.input_specs(model)
    feeds = verify.calibration_feeds(calibration_data, specs, batch_size=16, max_samples=samples)
    runner = ActivationRunner(model, [r.value_name for r in requests])
    by_name: dict[str, list[GramRequest]] = {}
    for request in requests:
        by_name.setdefault(request.value_name, []).append(request)
    rng = np.random.default_rng(0)

    def update(batch: dict[str, np.ndarray]) -> None:
        for name, group in by_name.items():
            for request in group:
                request.update(batch[name], rng)

    if runner.reduce(feeds, update) == 0:
        raise InputError("calibration data holds no samples")
    results = {}
    for request in requests:
        gram = request.result()
        if gram is not None:
            results[request.key] = gram
    return results
