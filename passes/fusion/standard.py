"""Standard-ONNX folds around Conv and layout ops: Pad into Conv, input normalization into Conv, layout chains.

**Pad into Conv** (``fold-pad``). A constant-mode ``Pad`` with value 0 that pads only spatial axes, read only
by a Conv's data input, is the Conv's own zero padding::

    Conv(Pad(x, p), W, b; pads=q)  ==  Conv(x, W, b; pads=q + p_spatial)

with ``p = [x1_begin, x2_begin, ..., x1_end, x2_end, ...]`` over all axes (Pad) and ``q`` over the spatial
axes only (Conv). Negative pads (crops), other modes (reflect, edge, wrap), a non-zero value, padding of
the batch or channel axis and ``auto_pad`` other than ``NOTSET`` are declined. No arithmetic changes.
``MaxPool(Pad(x, p; mode=edge))`` is ``MaxPool(x; pads=q + p)`` when each window that reads a padded pixel
also reads the edge pixel it copies (dilation 1, no ceil mode, ``q + p <= kernel - 1`` per side); a
``-inf`` constant Pad likewise (MaxPool ignores its own padding).
After ``onnxscript/rewriter/rules/common/_fuse_pad_into_conv.py``.

**Input normalization into Conv** (``fold-input-norm``). A per-input-channel affine map ``x * s + t``
before a Conv folds into its weight and bias::

    Conv(x * s + t, W, b)[o] = sum_{j,k} W[o,j,k] s[j] x[j,.+k] + (b[o] + sum_{j,k} W[o,j,k] t[j])
                             = Conv(x, W', b')[o],   W'[o,j,k] = W[o,j,k] s[j],
                                                     b'[o] = b[o] + sum_{j,k} W[o,j,k] t[j]

(``j`` runs over the input channels of ``o``'s group). ``Div(x, c)`` is ``s = 1/c``, ``Mul`` ``s = c``,
``Add`` ``t = c``, ``Sub(x, c)`` ``t = -c``; chains such as ``(x - mean) / std`` fold one op at a time. The
identity needs every input position the kernel reads to be a real pixel: Conv pads with zeros *after*
normalization, and a zero of the normalized input is ``x = -t/s`` of the raw one, not ``x = 0``. So a shift
(``t != 0``) folds only into a Conv without padding; a pure scale (``0 * s = 0``) folds always.
Computed in float64, cast to the weight's dtype.

**Layout chains** (``collapse-layout``). Pure data-movement ops that compose to one or to none::

    Transpose(Transpose(x, p1), p2)  ->  Transpose(x, q), q[i] = p1[p2[i]]  (Identity when q = id)
    Transpose(x, id)                 ->  Identity(x)
    Reshape(R(x), s)                 ->  Reshape(x, s)   for R in Reshape/Flatten/Squeeze/Unsqueeze, when s
                                                          has no 0 (0 copies a dim of R's output)
    Squeeze(Unsqueeze(x, a), a)      ->  Identity(x);  Unsqueeze(Squeeze(x, a), a) -> Identity(x)
    Reshape(x, s), s == shape(x)     ->  Identity(x)     (s resolved with 0 and one -1 against x's shape)

Identity nodes are left for ``eliminate-identity`` (which also handles graph outputs correctly).
Exact (no arithmetic).

Value: onnxruntime does the Pad and layout rewrites itself at its basic level (``PadFusion``,
``TransposeOptimizer``, ``ReshapeFusion``), so on onnxruntime they are (b) portability -- other runtimes
and onnxruntime with optimizations off get the folded graph -- and (c) enablers (a Pad between Conv and BN
hides the pair from ``fold-bn``). onnxruntime has no fusion of an affine map *before* a Conv, so
``fold-input-norm`` also removes two full passes over the input at run time (a).
"""

from __future__ import annotations

import logging
from typing import ClassVar

import numpy as np
import onnx_ir as ir
from onnxscript.rewriter import MatchContext, MatchResult

from sftonnx.ir_utils import attr
from sftonnx.passes.fusion._helpers import MISSING, node_axes, normalize_axes
from sftonnx.passes.fusion._rules import FusionPass, FusionRule, inspect_linear, validate_ops

__all__ = ["CollapseLayoutPass", "FoldInputNormPass", "FoldPadPass"]

logger = logging.getLogger(__name__)

# ---------------------------------------------------------------------------------------------- fold-pad

_PAD_ATTRIBUTES = {"mode", "pads", "paddings", "value"}
_CONV_ATTRIBUTES = {"auto_pad", "dilations", "group", "kernel_shape", "pads", "strides"}


def _read_pad(rule: FusionRule, context: MatchContext, pad: ir.Node, rank: int | None):
    """A Pad's non-negative pads over all ``rank`` axes (``[b0, b1, ..., e0, e1, ...]``) and its fill value.

    Pads and value are attributes before opset 11 (``paddings`` in Pad-1), inputs from 11; Pad-18 adds
    ``axes``. Returns ``(pads, value)``, or the failed match (skip counted): ``pads_not_constant``,
    ``pad_value_not_constant``, ``pad_value_not_zero`` (a fill of several values), ``axes_not_constant``,
    ``unsupported_pads``, ``rank_unknown``, ``negative_pads``, ``pads_batch_or_channel``.
    """
    pads = attr(pad, "pads", attr(pad, "paddings"))
    if pads is None:
        pads_array = rule.context.array(pad.inputs[1] if len(pad.inputs) > 1 else None)
        if pads_array is None:
            return rule.fail(context, "pads_not_constant")
        pads = pads_array.reshape(-1).tolist()
    pads = [int(p) for p in pads]
    value = float(attr(pad, "value", 0.0))
    if len(pad.inputs) > 2 and pad.inputs[2] is not None:
        fill = rule.context.array(pad.inputs[2])
        if fill is None:
            return rule.fail(context, "pad_value_not_constant")
        if fill.size != 1:
            return rule.fail(context, "pad_value_not_zero", str(fill.shape))
        value = float(np.asarray(fill, np.float64).reshape(()))
    axes = node_axes(rule.context, pad, 3) if len(pad.inputs) > 3 else None
    if axes is MISSING:
        return rule.fail(context, "axes_not_constant")
    if axes is None:
        axes = list(range(len(pads) // 2))
        if rank is not None and len(axes) != rank:
            return rule.fail(context, "unsupported_pads", f"{pads} for rank {rank}")
    normalized = normalize_axes(axes, rank)
    if normalized is None or len(set(normalized)) != len(normalized) or len(pads) != 2 * len(normalized):
        return rule.fail(context, "unsupported_pads", f"pads {pads} axes {axes} rank {rank}")
    if rank is None:
        return rule.fail(context, "rank_unknown")
    full = [0] * (2 * rank)
    for index, axis in enumerate(normalized):
        full[axis], full[rank + axis] = pads[index], pads[len(normalized) + index]
    if any(p < 0 for p in full):
        return rule.fail(context, "negative_pads", str(full))
    if full[0] or full[1] or full[rank] or full[rank + 1]:
        return rule.fail(context, "pads_batch_or_channel", str(full))
    return full, value


class FoldPadIntoConv(FusionRule):
    """``Conv(Pad(x, p), W[, b])`` with zero constant spatial padding -> ``Conv(x, W[, b]; pads += p)``."""

    name = "pad_folded"

    def pattern(self, op, x):
        padded = op.Pad(x, _allow_other_inputs=True, _allow_other_attributes=True, _outputs=["padded"])
        return op.Conv(padded, _allow_other_inputs=True, _allow_other_attributes=True, _outputs=["conv"])

    def check(self, context: MatchContext, x: ir.Value, padded: ir.Value, conv: ir.Value, **_) -> MatchResult:
        """Guards, in order; each failure names the skip key counted by the pass."""
        if (failed := self.check_intermediates(context)) is not None:
            return failed
        pad, conv_node = self.producer_of(padded), self.producer_of(conv)
        if unknown := set(pad.attributes) - _PAD_ATTRIBUTES:
            return self.fail(context, "unsupported_attribute", f"Pad {sorted(unknown)}")
        if unknown := set(conv_node.attributes) - _CONV_ATTRIBUTES:
            return self.fail(context, "unsupported_attribute", f"Conv {sorted(unknown)}")
        if attr(pad, "mode", "constant") != "constant":
            return self.fail(context, "pad_mode_not_constant", str(attr(pad, "mode")))
        if attr(conv_node, "auto_pad", "NOTSET") != "NOTSET":
            return self.fail(context, "conv_auto_pad", str(attr(conv_node, "auto_pad")))
        weight = conv_node.inputs[1] if len(conv_node.inputs) > 1 else None
        rank = None if weight is None or weight.shape is None else len(weight.shape)
        if rank is None and x.shape is not None:
            rank = len(x.shape)
        spec = _read_pad(self, context, pad, rank)
        if isinstance(spec, MatchResult):
            return spec
        full, value = spec
        if value != 0.0:
            return self.fail(context, "pad_value_not_zero", str(value))
        spatial = rank - 2
        conv_pads = [int(p) for p in attr(conv_node, "pads", [0] * (2 * spatial))]
        if len(conv_pads) != 2 * spatial:
            return self.fail(context, "unsupported_pads", f"Conv pads {conv_pads}")
        new_pads = [conv_pads[i] + full[2 + i] for i in range(spatial)] + [
            conv_pads[spatial + i] + full[rank + 2 + i] for i in range(spatial)
        ]
        return self.remember(conv_node, new_pads)

    def rewrite(self, op, x: ir.Value, padded: ir.Value, conv: ir.Value, **_):
        """Emit the Conv reading ``x`` with the summed pads."""
        conv_node = self.producer_of(conv)
        new_pads = self.recall(conv_node)
        attributes = dict(conv_node.attributes)
        attributes["pads"] = ir.AttrInt64s("pads", new_pads)
        return op.op("Conv", x, *conv_node.inputs[1:], _domain=conv_node.domain, _name=conv_node.name,
                     **attributes)


_MAXPOOL_ATTRIBUTES = {"auto_pad", "ceil_mode", "dilations", "kernel_shape", "pads", "storage_order", "strides"}


class FoldPadIntoMaxPool(FusionRule):
    """``MaxPool(Pad(x, p))`` with edge or -inf padding -> ``MaxPool(x; pads += p)`` where that is exact."""

    name = "pad_maxpool_folded"

    def pattern(self, op, x):
        padded = op.Pad(x, _allow_other_inputs=True, _allow_other_attributes=True, _outputs=["padded"])
        return op.MaxPool(padded, _allow_other_attributes=True, _outputs=["pooled"])

    def check(self, context: MatchContext, x: ir.Value, padded: ir.Value, pooled: ir.Value, **_) -> MatchResult:
        """Guards, in order; each failure names the skip key counted by the pass."""
        if (failed := self.check_intermediates(context)) is not None:
            return failed
        pad, pool = self.producer_of(padded), self.producer_of(pooled)
        if unknown := set(pad.attributes) - _PAD_ATTRIBUTES:
            return self.fail(context, "unsupported_attribute", f"Pad {sorted(unknown)}")
        if unknown := set(pool.attributes) - _MAXPOOL_ATTRIBUTES:
            return self.fail(context, "unsupported_attribute", f"MaxPool {sorted(unknown)}")
        mode = attr(pad, "mode", "constant")
        if mode not in ("constant", "edge"):
            return self.fail(context, "pad_mode_not_edge", str(mode))
        if attr(pool, "auto_pad", "NOTSET") != "NOTSET":
            return self.fail(context, "pool_auto_pad", str(attr(pool, "auto_pad")))
        if int(attr(pool, "ceil_mode", 0)):
            return self.fail(context, "pool_ceil_mode")  # extra end windows may start inside the padding
        kernel = [int(k) for k in attr(pool, "kernel_shape", [])]
        spatial = len(kernel)
        if any(int(d) != 1 for d in attr(pool, "dilations", [1] * spatial)):
            return self.fail(context, "pool_dilated")  # a dilated window may skip the edge pixel
        spec = _read_pad(self, context, pad, spatial + 2 if spatial else None)
        if isinstance(spec, MatchResult):
            return spec
        full, value = spec
        if mode == "constant" and value != float("-inf"):
            return self.fail(context, "pad_value_not_neg_inf", str(value))
        rank = spatial + 2
        pool_pads = [int(p) for p in attr(pool, "pads", [0] * (2 * spatial))]
        if len(pool_pads) != 2 * spatial:
            return self.fail(context, "unsupported_pads", f"MaxPool pads {pool_pads}")
        new_pads = [pool_pads[i] + full[2 + i] for i in range(spatial)] + [
            pool_pads[spatial + i] + full[rank + 2 + i] for i in range(spatial)
        ]
        # Every window must keep a real pixel (for edge padding: the very pixel the padding copies).
        if any(new_pads[i] > kernel[i % spatial] - 1 for i in range(2 * spatial)):
            return self.fail(context, "pads_reach_past_window", f"{new_pads} for kernel {kernel}")
        return self.remember(pool, new_pads)

    def rewrite(self, op, x: ir.Value, padded: ir.Value, pooled: ir.Value, **_):
        """Emit the MaxPool reading ``x`` with the summed pads."""
        pool = self.producer_of(pooled)
        attributes = dict(pool.attributes)
        attributes["pads"] = ir.AttrInt64s("pads", self.recall(pool))
        return op.op("MaxPool", x, _domain=pool.domain, _name=pool.name, **attributes)


class FoldPadPass(FusionPass):
    """Fold a zero constant-mode Pad of spatial axes into the Conv that reads it, an edge/-inf one into MaxPool.

    Matches ``Conv(Pad(x, ...), W[, b])`` (Pad-1 ``paddings``, Pad-2 ``pads``/``value`` attributes,
    Pad-11+ inputs, Pad-18 ``axes``) in the main graph, If/Loop/Scan bodies and model-local functions, and
    adds the spatial pads to the Conv's ``pads`` (formula in the module docstring). Also matches
    ``MaxPool(Pad(x, ...))`` with ``edge`` padding or constant ``-inf`` padding (a channels-last export's
    ``Pad(edge) -> MaxPool``, which is what TensorFlow's ``SAME`` pooling becomes) and adds the pads to the
    MaxPool's own (ignored) padding where that is exact: dilation 1, ``ceil_mode=0``, and at most
    ``kernel - 1`` pads per side in total, so every window keeps a real pixel and, for edge padding, the
    very pixel the padding copies: the max is unchanged.

    Declines (``skipped`` keys): ``intermediate_is_graph_output``, ``intermediate_has_other_consumers``
    (the padded tensor is a graph output / read by another node), ``unsupported_attribute`` (an attribute
    the fold does not know), ``pad_mode_not_constant``, ``conv_auto_pad`` (``SAME_*``/``VALID``),
    ``pads_not_constant``, ``pad_value_not_constant``, ``pad_value_not_zero``, ``axes_not_constant``,
    ``unsupported_pads`` (lengths that do not fit the rank), ``rank_unknown``, ``negative_pads`` (a crop),
    ``pads_batch_or_channel``; MaxPool: ``pad_mode_not_edge`` (reflect/wrap), ``pad_value_not_neg_inf``,
    ``pool_auto_pad``, ``pool_ceil_mode``, ``pool_dilated``, ``pads_reach_past_window``. A MaxPool whose
    Indices output is used does not match.

    Statistics: changes ``pad_folded`` (Conv), ``pad_maxpool_folded``.

    Numerics: EXACT (the same zeros, read by the Conv instead of materialized; the same maxima).
    """

    name = "fold-pad"

    def rule_types(self) -> list[type[FusionRule]]:
        """The Pad+Conv and Pad+MaxPool rules."""
        return [FoldPadIntoConv, FoldPadIntoMaxPool]


# -------------------------------------------------------------------------------------- fold-input-norm

NORM_OPS = ("Sub", "Div", "Mul", "Add")


class _FoldInputAffineRule(FusionRule):
    """``Conv(Op(x, c), W, b)`` with ``c`` per input channel -> ``Conv(x, W', b')``."""

    affine: ClassVar[str]

    def pattern(self, op, x, c):
        normalized = getattr(op, self.affine)(x, c, _outputs=["normalized"])
        return op.Conv(normalized, _allow_other_inputs=True, _allow_other_attributes=True, _outputs=["conv"])

    def check(self, context: MatchContext, x: ir.Value, c: ir.Value, normalized: ir.Value, conv: ir.Value,
              **_) -> MatchResult:
        """Guards, in order; each failure names the skip key counted by the pass."""
        operand = self.context.array(c)
        if operand is None:
            # Not an affine map (a residual Add of two tensors, say): no site, so no skip is counted.
            return MatchResult().fail("operand not constant")
        if (failed := self.check_intermediates(context)) is not None:
            return failed
        conv_node = self.producer_of(conv)
        if unknown := set(conv_node.attributes) - _CONV_ATTRIBUTES:
            return self.fail(context, "unsupported_attribute", f"Conv {sorted(unknown)}")
        scales = self.affine in ("Mul", "Div")
        target = inspect_linear(self, context, conv_node, modifies_weight=True)
        if isinstance(target, MatchResult):
            return target
        assert target.weight is not None
        rank, group = target.rank, target.group
        in_channels = target.weight_shape[1] * group
        if x.shape is not None and len(x.shape) != rank:
            return self.fail(context, "operand_changes_shape", f"input rank {len(x.shape)} vs {rank}")
        if operand.ndim > rank:
            return self.fail(context, "operand_changes_shape", f"{operand.shape} vs rank {rank}")
        aligned = (1,) * (rank - operand.ndim) + operand.shape
        if any(size != 1 for axis, size in enumerate(aligned) if axis != 1) or aligned[1] not in (1, in_channels):
            return self.fail(context, "operand_not_per_channel", str(operand.shape))
        values = np.broadcast_to(operand.astype(np.float64).reshape(-1), (in_channels,)).copy()
        if self.affine == "Div":
            with np.errstate(divide="ignore"):
                values = 1.0 / values
        elif self.affine == "Sub":
            values = -values
        if not np.all(np.isfinite(values)):
            return self.fail(context, "operand_not_finite")
        if not scales and np.any(values != 0.0):
            if attr(conv_node, "auto_pad", "NOTSET") not in ("NOTSET", "VALID"):
                return self.fail(context, "conv_pads_nonzero", str(attr(conv_node, "auto_pad")))
            if any(int(p) for p in attr(conv_node, "pads", [])):
                return self.fail(context, "conv_pads_nonzero", str(attr(conv_node, "pads")))
        return self.remember(conv_node, (target, values))

    def rewrite(self, op, x: ir.Value, c: ir.Value, normalized: ir.Value, conv: ir.Value, **_):
        """Emit the Conv reading ``x`` with the folded weight (scale) or bias (shift)."""
        target, values = self.recall(self.producer_of(conv))
        weight = target.weight.astype(np.float64)
        cout, per_group = weight.shape[0], weight.shape[1]
        # per_output[o, j]: the value of input channel j of output channel o's group.
        per_output = np.repeat(values.reshape(target.group, per_group), cout // target.group, axis=0)
        base = target.node.name or target.weight_name
        if self.affine in ("Mul", "Div"):
            scaled = weight * per_output.reshape(cout, per_group, *([1] * (weight.ndim - 2)))
            new_weight = self.new_constant(op, scaled.astype(target.dtype), f"{base}_weight_input_scaled")
            bias = target.node.inputs[2] if len(target.node.inputs) > 2 else None
            inputs = [x, new_weight] if bias is None else [x, new_weight, bias]
        else:
            shift = (weight.reshape(cout, per_group, -1).sum(axis=2) * per_output).sum(axis=1)
            bias_array = target.fused_bias(None, shift)
            bias = self.new_constant(op, bias_array, f"{base}_bias_input_shifted")
            inputs = [x, target.weight_value, bias]
        node = target.node
        return op.op("Conv", *inputs, _domain=node.domain, _name=node.name, **dict(node.attributes))


def _input_rule(affine: str) -> type[_FoldInputAffineRule]:
    return type(
        f"FoldInput{affine}IntoConv",
        (_FoldInputAffineRule,),
        {
            "name": f"input_{affine.lower()}_folded",
            "affine": affine,
            "commute": affine in ("Mul", "Add"),
            "__doc__": f"``Conv({affine}(x, c))``, ``c`` per input channel -> ``Conv(x)``.",
        },
    )


_INPUT_RULES = {affine: _input_rule(affine) for affine in NORM_OPS}


class FoldInputNormPass(FusionPass):
    """Fold a per-input-channel constant Sub/Div/Mul/Add before a Conv into its weight and bias.

    Matches ``Conv(Op(x, c), W[, b])`` for ``Op`` in ``ops`` (``c`` on either side of Mul/Add) anywhere in
    the model, typically an input normalization ``(x - mean) / std`` feeding the first Conv, which folds one
    op per step (formulas and the padding condition in the module docstring). An op whose other operand
    is not a constant is no site (it is not an affine map) and is not counted.

    Declines (``skipped`` keys): ``intermediate_is_graph_output``, ``intermediate_has_other_consumers`` (the
    normalized tensor is a graph output / read by another node), ``unsupported_attribute``,
    ``operand_changes_shape``, ``operand_not_per_channel``, ``operand_not_finite``
    (e.g. a zero std), ``conv_pads_nonzero`` (a shift before a padding Conv: the padded border would differ),
    and the Conv checks ``weight_not_constant``, ``weight_shared``, ``unsupported_dtype``,
    ``unsupported_weight_shape``, ``bias_not_constant``, ``unsupported_bias_shape``.

    Statistics: changes ``input_sub_folded``, ``input_div_folded``, ``input_mul_folded``,
    ``input_add_folded``.

    Numerics: EXACT up to float re-association (weights rescaled in float64).

    Args:
        ops: Which ops before a Conv to fold, any of ``Sub``, ``Div``, ``Mul``, ``Add``.
    """

    name = "fold-input-norm"

    def __init__(self, *, ops: tuple[str, ...] = NORM_OPS) -> None:
        self.ops = validate_ops(self.name, "ops", ops, NORM_OPS)

    def rule_types(self) -> list[type[FusionRule]]:
        """One rule per selected op; scales are tried first (they never depend on the padding)."""
        return [_INPUT_RULES[op] for op in ("Div", "Mul", "Sub", "Add") if op in self.ops]


# -------------------------------------------------------------------------------------- collapse-layout


def _perm(node: ir.Node, rank: int | None) -> list[int] | None:
    """A Transpose's permutation; without ``perm`` it reverses the axes (needs the rank)."""
    perm = attr(node, "perm")
    if perm is not None:
        return [int(p) for p in perm]
    return None if rank is None else list(range(rank))[::-1]


class CollapseTransposes(FusionRule):
    """``Transpose(Transpose(x, p1), p2)`` -> ``Transpose(x, q)``, or ``Identity(x)`` when ``q`` is the identity."""

    name = "transposes_collapsed"

    def pattern(self, op, x):
        return op.Transpose(op.Transpose(x, _outputs=["first"]), _outputs=["second"])

    def check(self, context: MatchContext, x: ir.Value, first: ir.Value, second: ir.Value, **_) -> MatchResult:
        """Guards: intermediates, known attributes, permutations of the same rank."""
        if (failed := self.check_intermediates(context)) is not None:
            return failed
        inner, outer = self.producer_of(first), self.producer_of(second)
        if set(inner.attributes) - {"perm"} or set(outer.attributes) - {"perm"}:
            return self.fail(context, "unsupported_attribute")
        rank = None if x.shape is None else len(x.shape)
        p1, p2 = _perm(inner, rank), _perm(outer, rank)
        if p1 is None or p2 is None:
            return self.fail(context, "rank_unknown")
        if sorted(p1) != list(range(len(p1))) or sorted(p2) != list(range(len(p1))):
            return self.fail(context, "invalid_perm", f"{p1} {p2}")
        return self.remember(outer, [p1[i] for i in p2])

    def rewrite(self, op, x: ir.Value, first: ir.Value, second: ir.Value, **_):
        """One Transpose with the composed permutation, or an Identity."""
        outer = self.producer_of(second)
        perm = self.recall(outer)
        if perm == list(range(len(perm))):
            return op.op("Identity", x, _domain=outer.domain, _name=outer.name)
        return op.op("Transpose", x, perm=perm, _domain=outer.domain, _name=outer.name)


class RemoveIdentityTranspose(FusionRule):
    """``Transpose(x, perm=[0, 1, ..., r-1])`` -> ``Identity(x)``."""

    name = "transpose_noop_removed"

    def pattern(self, op, x):
        return op.Transpose(x, _outputs=["transposed"])

    def check(self, context: MatchContext, x: ir.Value, transposed: ir.Value, **_) -> MatchResult:
        """Only an explicit identity ``perm`` (no ``perm`` means reversed axes)."""
        node = self.producer_of(transposed)
        perm = attr(node, "perm")
        # Not a skip: almost every Transpose is not an identity, so this is no reason worth counting.
        if perm is None or [int(p) for p in perm] != list(range(len(perm))) or set(node.attributes) != {"perm"}:
            return MatchResult().fail("not an identity permutation")
        return MatchResult()

    def rewrite(self, op, x: ir.Value, transposed: ir.Value, **_):
        """An Identity of the input."""
        node = self.producer_of(transposed)
        return op.op("Identity", x, _domain=node.domain, _name=node.name)


_SHAPE_PRODUCERS = ("Reshape", "Flatten", "Squeeze", "Unsqueeze")


class _CollapseIntoReshape(FusionRule):
    """``Reshape(R(x, ...), s)`` -> ``Reshape(x, s)`` when ``s`` does not copy dims of R's output."""

    inner: ClassVar[str]

    def pattern(self, op, x, shape):
        produced = getattr(op, self.inner)(x, _allow_other_inputs=True, _outputs=["produced"])
        return op.Reshape(produced, shape, _outputs=["reshaped"])

    def check(self, context: MatchContext, x: ir.Value, shape: ir.Value, produced: ir.Value,
              reshaped: ir.Value, **_) -> MatchResult:
        """Guards: intermediates, attributes, a constant target shape without 0 (unless allowzero=1)."""
        if (failed := self.check_intermediates(context)) is not None:
            return failed
        outer = self.producer_of(reshaped)
        if set(outer.attributes) - {"allowzero"}:
            return self.fail(context, "unsupported_attribute")
        if int(attr(outer, "allowzero", 0)) == 0:
            target = self.context.array(shape)
            if target is None:
                return self.fail(context, "shape_not_constant")
            if np.any(np.asarray(target) == 0):
                return self.fail(context, "shape_copies_dims", str(target.tolist()))
        return MatchResult()

    def rewrite(self, op, x: ir.Value, shape: ir.Value, reshaped: ir.Value, **_):
        """The outer Reshape reading ``x`` directly."""
        outer = self.producer_of(reshaped)
        return op.op("Reshape", x, shape, _domain=outer.domain, _name=outer.name, **dict(outer.attributes))


def _reshape_rule(inner: str) -> type[_CollapseIntoReshape]:
    return type(
        f"Collapse{inner}IntoReshape",
        (_CollapseIntoReshape,),
        {"name": f"{inner.lower()}_reshape_collapsed", "inner": inner,
         "__doc__": f"``Reshape({inner}(x), s)`` -> ``Reshape(x, s)``."},
    )


_RESHAPE_RULES = {inner: _reshape_rule(inner) for inner in _SHAPE_PRODUCERS}


class _CancelSqueezePair(FusionRule):
    """``Outer(Inner(x, a), a)`` for a Squeeze/Unsqueeze pair with the same axes -> ``Identity(x)``."""

    inner: ClassVar[str]
    outer: ClassVar[str]

    def pattern(self, op, x):
        middle = getattr(op, self.inner)(x, _allow_other_inputs=True, _outputs=["middle"])
        return getattr(op, self.outer)(middle, _allow_other_inputs=True, _outputs=["result"])

    def check(self, context: MatchContext, x: ir.Value, middle: ir.Value, result: ir.Value, **_) -> MatchResult:
        """Both axes lists constant and equal once made non-negative (Squeeze's rank = Unsqueeze's output)."""
        if (failed := self.check_intermediates(context)) is not None:
            return failed
        inner, outer = self.producer_of(middle), self.producer_of(result)
        if set(inner.attributes) - {"axes"} or set(outer.attributes) - {"axes"}:
            return self.fail(context, "unsupported_attribute")
        inner_axes, outer_axes = node_axes(self.context, inner), node_axes(self.context, outer)
        if inner_axes is None or outer_axes is None:
            return self.fail(context, "axes_unknown", "Squeeze without axes")
        if inner_axes is MISSING or outer_axes is MISSING:
            return self.fail(context, "axes_not_constant")
        # The ranks: Unsqueeze output rank = Squeeze input rank = rank(x) + len(axes) (or rank(x)).
        wide = None
        if x.shape is not None:
            wide = len(x.shape) + (len(inner_axes) if self.inner == "Unsqueeze" else 0)
        a = normalize_axes(inner_axes, wide)
        b = normalize_axes(outer_axes, wide)
        if a is None or b is None:
            if inner_axes != outer_axes or any(axis < 0 for axis in inner_axes):
                return self.fail(context, "rank_unknown")
            a = b = inner_axes
        if sorted(set(a)) != sorted(b) or len(set(a)) != len(a):
            return self.fail(context, "axes_differ", f"{inner_axes} vs {outer_axes}")
        return MatchResult()

    def rewrite(self, op, x: ir.Value, result: ir.Value, **_):
        """An Identity of the input."""
        node = self.producer_of(result)
        return op.op("Identity", x, _domain=node.domain, _name=node.name)


class CancelUnsqueezeSqueeze(_CancelSqueezePair):
    """``Squeeze(Unsqueeze(x, a), a)`` -> ``Identity(x)``."""

    name = "unsqueeze_squeeze_cancelled"
    inner, outer = "Unsqueeze", "Squeeze"


class CancelSqueezeUnsqueeze(_CancelSqueezePair):
    """``Unsqueeze(Squeeze(x, a), a)`` -> ``Identity(x)`` (Squeeze only removed size-1 axes at ``a``)."""

    name = "squeeze_unsqueeze_cancelled"
    inner, outer = "Squeeze", "Unsqueeze"


class RemoveNoopReshape(FusionRule):
    """``Reshape(x, s)`` where ``s`` resolves to ``x``'s own shape -> ``Identity(x)``."""

    name = "reshape_noop_removed"

    def pattern(self, op, x, shape):
        return op.Reshape(x, shape, _outputs=["reshaped"])

    def check(self, context: MatchContext, x: ir.Value, shape: ir.Value, reshaped: ir.Value,
              **_) -> MatchResult:
        """``s`` constant; every entry equals ``x``'s static dim, is 0 (copy) or is the one -1."""
        node = self.producer_of(reshaped)
        target = self.context.array(shape)
        # Not counted as skips: most Reshapes do change the shape, that is no reason worth reporting.
        if target is None or x.shape is None or set(node.attributes) - {"allowzero"}:
            return MatchResult().fail("shape unknown")
        allowzero = int(attr(node, "allowzero", 0))
        dims = list(x.shape)
        entries = [int(t) for t in np.asarray(target).reshape(-1)]
        if len(entries) != len(dims):
            return MatchResult().fail("rank changes")
        unknown = 0
        for entry, dim in zip(entries, dims, strict=True):
            if entry == 0 and not allowzero:
                continue  # copies the input's dim
            if entry == -1:
                unknown += 1
                continue
            if not isinstance(dim, int) or dim != entry:
                return MatchResult().fail("dims differ")
        # One -1 is inferred from the element count, which the other (equal) dims force to the same dim.
        if unknown > 1:
            return MatchResult().fail("several -1")
        return MatchResult()

    def rewrite(self, op, x: ir.Value, reshaped: ir.Value, **_):
        """An Identity of the input."""
        node = self.producer_of(reshaped)
        return op.op("Identity", x, _domain=node.domain, _name=node.name)


LAYOUT_RULES = ("transpose", "reshape", "squeeze", "noop")


class CollapseLayoutPass(FusionPass):
    """Collapse chains of Transpose/Reshape/Flatten/Squeeze/Unsqueeze and remove no-op layout ops.

    Rewrites (module docstring for the conditions), in the main graph, If/Loop/Scan bodies and model-local
    functions, to a fixpoint: two Transposes -> one (or an Identity when they cancel); Reshape after
    Reshape/Flatten/Squeeze/Unsqueeze -> one Reshape; Squeeze/Unsqueeze pairs with the same axes ->
    Identity; a Transpose with the identity ``perm`` and a Reshape to the input's own shape -> Identity.
    The Identity nodes are left for ``eliminate-identity``.

    Declines (``skipped`` keys): ``intermediate_is_graph_output``, ``intermediate_has_other_consumers``,
    ``unsupported_attribute``, ``rank_unknown`` (a Transpose without ``perm`` on a value of unknown rank, or
    negative axes), ``invalid_perm``, ``shape_not_constant``, ``shape_copies_dims`` (a 0 in the outer
    Reshape's shape copies a dim of the inner op's output), ``axes_unknown`` (Squeeze without axes),
    ``axes_not_constant``, ``axes_differ``. No-op checks on single Transpose/Reshape nodes count no skips.

    Statistics: changes ``transposes_collapsed``, ``transpose_noop_removed``, ``reshape_reshape_collapsed``,
    ``flatten_reshape_collapsed``, ``squeeze_reshape_collapsed``, ``unsqueeze_reshape_collapsed``,
    ``unsqueeze_squeeze_cancelled``, ``squeeze_unsqueeze_cancelled``, ``reshape_noop_removed``.

    Numerics: EXACT (data movement only).

    Args:
        rules: Which rule groups to run, any of ``transpose`` (pairs), ``reshape`` (chains into a Reshape),
            ``squeeze`` (Squeeze/Unsqueeze pairs), ``noop`` (identity Transpose, same-shape Reshape).
    """

    name = "collapse-layout"

    def __init__(self, *, rules: tuple[str, ...] = LAYOUT_RULES) -> None:
        self.rules = validate_ops(self.name, "rules", rules, LAYOUT_RULES)

    def rule_types(self) -> list[type[FusionRule]]:
        """The selected rule groups; pair rules before no-op rules."""
        chosen: list[type[FusionRule]] = []
        if "transpose" in self.rules:
            chosen.append(CollapseTransposes)
        if "reshape" in self.rules:
            chosen.extend(_RESHAPE_RULES.values())
        if "squeeze" in self.rules:
            chosen.extend([CancelUnsqueezeSqueeze, CancelSqueezeUnsqueeze])
        if "noop" in self.rules:
            chosen.extend([RemoveIdentityTranspose, RemoveNoopReshape])
        return chosen
