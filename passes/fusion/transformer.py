"""Standard-ONNX fusions of decomposed transformer blocks: LayerNormalization, Gelu and Softmax.

**LayerNormalization** (``fuse-layernorm``, opset >= 17). Over the trailing axes ``A`` of ``x``::

    mu = ReduceMean(x, A);  d = x - mu;  var = ReduceMean(d^2, A)       (d^2 as Pow(d, 2) or d * d)
    y  = d / Sqrt(var + eps) * scale [+ bias]                          (or d * Reciprocal(Sqrt(...)))
       = LayerNormalization(x, scale [, bias]; axis=-|A|, epsilon=eps)

``scale`` and ``bias`` are broadcast to the normalized shape (the trailing ``|A|`` dims of ``x``). A
following ``Add`` of a constant folds into the bias of an existing ``LayerNormalization`` without one.
onnxruntime computes it in float32 (``stash_type=1``), double inputs in double. After
``onnxscript/rewriter/rules/fusion/_layer_norm.py`` (which takes ``axes=[-1]`` only).

**Gelu** (``fuse-gelu``, opset >= 20)::

    x * 0.5 * (1 + erf(x / sqrt(2)))                                  ->  Gelu(x)
    x * 0.5 * (1 + tanh(sqrt(2/pi) * (x + 0.044715 x^3)))             ->  Gelu(x; approximate="tanh")

in any association of the outer products (``(x * 0.5) * g``, ``(x * g) * 0.5``, ``x * (g * 0.5)``), with
``x / sqrt(2)`` or ``x * (1/sqrt(2))`` and ``x^3`` as ``Pow(x, 3)`` or products of ``x``. Constants must
equal the exact ones up to four ulps of their dtype. Gelu exists from opset 20 only: a model with an older
opset is declined (``opset_too_old``), unless ``upgrade_opset=true`` and every op of the model keeps its
meaning at opset 20 (see :func:`opset_20_blockers`); the default import is then raised to 20, which older
runtimes (onnxruntime < 1.17, many converters) cannot load -- hence opt-in.

**Softmax** (``fuse-softmax``)::

    e = Exp(x - ReduceMax(x, a));  e / ReduceSum(e, a)   ->  Softmax(x; axis=a)
    e = Exp(x);                    e / ReduceSum(e, a)   ->  Softmax(x; axis=a)

with ``keepdims=1`` and one axis ``a``. Softmax subtracts the maximum itself, so the second form gives the
same values wherever the original does not overflow (``exp(x) = inf`` made it NaN; the fused one is
finite). Before opset 13 Softmax flattens the axes from ``axis`` on, so there ``a`` must be the last axis.

Value (measured, see ``benchmarks/fusion_bench.py``): onnxruntime fuses decomposed LayerNorm and Gelu
itself at its extended level (into contrib ops), so on onnxruntime's default level these fusions bring
(b) portability -- the fused op in standard ONNX for other runtimes and for onnxruntime at ``basic`` --
and (c) they are what ``fuse-ort`` and ``ort-offline`` build SkipLayerNormalization/BiasGelu from.
onnxruntime has no Softmax fusion, so ``fuse-softmax`` is also (a) faster on onnxruntime.

Size: about 600 lines because the three rule families share their matching helpers (constant checks up to
ulps, association-insensitive product matching, the opset-20 blocker list); a split would export those
helpers across modules for no reader's benefit.
"""

from __future__ import annotations

import logging
import math
from typing import ClassVar

import numpy as np
import onnx
import onnx_ir as ir
from onnxscript.rewriter import MatchContext, MatchResult
from onnxscript.rewriter.pattern import OrValue

from sftonnx.ir_utils import all_graphs, attr, is_op
from sftonnx.pass_infra import PassReport
from sftonnx.passes.fusion._helpers import MISSING, close_to, node_axes, normalize_axes, remove_if_dead, scalar
from sftonnx.passes.fusion._rules import (
    FusionContext,
    FusionPass,
    FusionRule,
    apply_rules,
    validate_bool,
    validate_ops,
)

__all__ = ["FuseGeluPass", "FuseLayerNormPass", "FuseSoftmaxPass", "opset_20_blockers"]

logger = logging.getLogger(__name__)

_LN_DTYPES = (ir.DataType.FLOAT16, ir.DataType.BFLOAT16, ir.DataType.FLOAT, ir.DataType.DOUBLE)

# ------------------------------------------------------------------------------------------- LayerNorm


def _reduce_axes(rule: FusionRule, node: ir.Node) -> list[int] | str:
    """Axes of a ReduceMean/Sum/Max node that keeps dims, or the skip key that rules it out."""
    if set(node.attributes) - {"axes", "keepdims", "noop_with_empty_axes"}:
        return "unsupported_attribute"
    if int(attr(node, "keepdims", 1)) != 1:
        return "keepdims_false"
    axes = node_axes(rule.context, node)
    if axes is MISSING:
        return "axes_not_constant"
    if not axes:  # no axes: all of them (or none with noop_with_empty_axes): not a per-row reduction
        return "axes_unknown"
    return axes


class FuseLayerNorm(FusionRule):
    """``scale * (x - mean) / sqrt(var + eps)`` over trailing axes -> ``LayerNormalization(x, scale)``."""

    name = "layer_norm_fused"
    commute = True

    def pattern(self, op, x, two, eps, scale):
        mean = op.ReduceMean(x, _allow_other_inputs=True, _outputs=["mean"])
        deviation = op.Sub(x, mean)
        squared = OrValue([op.Pow(deviation, two), op.Mul(deviation, deviation)])
        variance = op.ReduceMean(squared, _allow_other_inputs=True, _outputs=["variance"])
        std = op.Sqrt(op.Add(variance, eps))
        normalized = OrValue([op.Div(deviation, std), op.Mul(deviation, op.Reciprocal(std))])
        return op.Mul(normalized, scale, _outputs=["scaled"])

    def check(self, context: MatchContext, x: ir.Value, eps: ir.Value, scale: ir.Value, mean: ir.Value,
              variance: ir.Value, scaled: ir.Value, two: ir.Value | None = None, **_) -> MatchResult:
        """Guards, in order; each failure names the skip key counted by the pass."""
        if self.context.opset < 17:
            return self.fail(context, "opset_too_old", str(self.context.opset))
        if (failed := self.check_intermediates(context)) is not None:
            return failed
        rank = None if x.shape is None else len(x.shape)
        axes_lists = []
        for node in (self.producer_of(mean), self.producer_of(variance)):
            axes = _reduce_axes(self, node)
            if isinstance(axes, str):
                return self.fail(context, axes)
            axes_lists.append(axes)
        first = normalize_axes(axes_lists[0], rank)
        second = normalize_axes(axes_lists[1], rank)
        if first is None or second is None:
            # Unknown rank: only negative trailing axes can be checked.
            first, second = sorted(axes_lists[0]), sorted(axes_lists[1])
            count = len(first)
            if first != second or first != list(range(-count, 0)):
                return self.fail(context, "axes_not_trailing", f"{axes_lists}")
        else:
            count = len(first)
            if sorted(first) != sorted(second) or rank is None or sorted(first) != list(range(rank - count, rank)):
                return self.fail(context, "axes_not_trailing", f"{axes_lists} rank {rank}")
        if two is not None:
            exponent = scalar(self.context, two)
            if exponent != 2.0:
                return self.fail(context, "exponent_not_two", str(exponent))
        epsilon = scalar(self.context, eps)
        if epsilon is None or not epsilon >= 0.0:
            return self.fail(context, "epsilon_not_constant")
        dtype = x.dtype or scale.dtype
        if dtype not in _LN_DTYPES:
            return self.fail(context, "unsupported_dtype", str(dtype))
        # The normalized shape: the trailing dims of x (static), else the scale's own shape.
        normalized_shape = None
        if x.shape is not None:
            dims = list(x.shape)[-count:]
            if all(isinstance(d, int) for d in dims):
                normalized_shape = tuple(dims)
        scale_array = self.context.array(scale)
        if scale_array is None:
            if scale.shape is None or not scale.shape.is_static() or scale.dtype != dtype:
                return self.fail(context, "scale_shape_unknown")
            if normalized_shape is not None and tuple(scale.shape.numpy()) != normalized_shape:
                return self.fail(context, "scale_not_per_feature", str(scale.shape))
            if normalized_shape is None and len(scale.shape) != count:
                return self.fail(context, "scale_not_per_feature", str(scale.shape))
            return self.remember(self.producer_of(scaled), (count, epsilon, dtype, None))
        if scale_array.dtype != dtype.numpy():
            return self.fail(context, "unsupported_dtype", f"scale {scale_array.dtype}")
        trimmed = scale_array.reshape(scale_array.shape[_leading_ones(scale_array.shape, count):])
        if trimmed.ndim > count or (rank is not None and scale_array.ndim > rank):
            return self.fail(context, "scale_not_per_feature", str(scale_array.shape))
        if normalized_shape is None:
            if trimmed.ndim != count or (count == 1 and trimmed.size == 1):
                return self.fail(context, "normalized_shape_unknown", str(scale_array.shape))
            normalized_shape = trimmed.shape
        try:
            full = np.broadcast_to(trimmed, normalized_shape)
        except ValueError:
            return self.fail(context, "scale_not_per_feature", f"{scale_array.shape} vs {normalized_shape}")
        return self.remember(self.producer_of(scaled), (count, epsilon, dtype, np.ascontiguousarray(full)))

    def rewrite(self, op, x: ir.Value, scale: ir.Value, scaled: ir.Value, **_):
        """Emit ``LayerNormalization(x, scale)``; a constant scale is written at the normalized shape."""
        root = self.producer_of(scaled)
        count, epsilon, dtype, full = self.recall(root)
        if full is not None and full.shape != array_shape(self.context, scale):
            scale = self.new_constant(op, full, f"{scale.name or 'scale'}_normalized_shape")
        stash = ir.DataType.DOUBLE if dtype == ir.DataType.DOUBLE else ir.DataType.FLOAT
        return op.op("LayerNormalization", x, scale, axis=-count, epsilon=epsilon, stash_type=stash.value,
                     _name=root.name)


def _leading_ones(shape: tuple[int, ...], keep: int) -> int:
    """How many leading size-1 dims of ``shape`` can go while keeping at least ``keep`` dims."""
    drop = 0
    while len(shape) - drop > keep and shape[drop] == 1:
        drop += 1
    return drop


class FoldLayerNormBias(FusionRule):
    """``Add(LayerNormalization(x, scale), b)`` -> ``LayerNormalization(x, scale, b)``, ``b`` per feature."""

    name = "layer_norm_bias_folded"
    commute = True

    def pattern(self, op, x, scale, bias):
        normalized = op.LayerNormalization(x, scale, _outputs=["normalized"])
        return op.Add(normalized, bias, _outputs=["summed"])

    def check(self, context: MatchContext, x: ir.Value, scale: ir.Value, bias: ir.Value, normalized: ir.Value,
              summed: ir.Value, **_) -> MatchResult:
        """The LayerNormalization's only output is read by this Add; ``b`` broadcasts to the scale's shape."""
        if (failed := self.check_intermediates(context)) is not None:
            return failed
        node = self.producer_of(normalized)
        if len(node.outputs) != 1 or set(node.attributes) - {"axis", "epsilon", "stash_type"}:
            return self.fail(context, "unsupported_attribute")
        array = self.context.array(bias)
        if array is None:
            return self.fail(context, "bias_not_constant")
        if scale.shape is None or not scale.shape.is_static():
            return self.fail(context, "scale_shape_unknown")
        scale_shape = tuple(scale.shape.numpy())
        if x.dtype is not None and array.dtype != x.dtype.numpy():
            return self.fail(context, "unsupported_dtype", str(array.dtype))
        trimmed = array.reshape(array.shape[_leading_ones(array.shape, len(scale_shape)):])
        rank = None if x.shape is None else len(x.shape)
        if trimmed.ndim > len(scale_shape) or array.ndim > (rank if rank is not None else len(scale_shape)):
            return self.fail(context, "bias_not_per_feature", str(array.shape))
        try:
            full = np.broadcast_to(trimmed, scale_shape)
        except ValueError:
            return self.fail(context, "bias_not_per_feature", f"{array.shape} vs {scale_shape}")
        return self.remember(self.producer_of(summed), np.ascontiguousarray(full))

    def rewrite(self, op, x: ir.Value, scale: ir.Value, bias: ir.Value, normalized: ir.Value, summed: ir.Value,
                **_):
        """The LayerNormalization with the bias as its third input."""
        full = self.recall(self.producer_of(summed))
        node = self.producer_of(normalized)
        if full.shape != array_shape(self.context, bias):
            bias = self.new_constant(op, full, f"{bias.name or 'bias'}_normalized_shape")
        return op.op("LayerNormalization", x, scale, bias, _domain=node.domain, _name=node.name,
                     **dict(node.attributes))


def array_shape(context: FusionContext, value: ir.Value) -> tuple[int, ...] | None:
    """Shape of a constant value's contents (``None`` when it is not a constant)."""
    array = context.array(value)
    return None if array is None else array.shape


class FuseLayerNormPass(FusionPass):
    """Fuse decomposed layer normalization into ``LayerNormalization`` (opset >= 17).

    Matches ``Mul(d / Sqrt(ReduceMean(d^2) + eps), scale)`` with ``d = x - ReduceMean(x)`` (formula and
    variants in the module docstring), then folds a following constant ``Add`` into the bias; in the main
    graph, If/Loop/Scan bodies and model-local functions. A decomposed norm without a ``scale`` Mul is not
    matched.

    Declines (``skipped`` keys): ``opset_too_old``, ``intermediate_is_graph_output``,
    ``intermediate_has_other_consumers``, ``unsupported_attribute``, ``keepdims_false``, ``axes_not_constant``,
    ``axes_unknown`` (a ReduceMean over all axes), ``axes_not_trailing`` (different axes in the two means, or
    not the trailing ones), ``exponent_not_two``, ``epsilon_not_constant``, ``unsupported_dtype``,
    ``scale_shape_unknown``, ``scale_not_per_feature``, ``normalized_shape_unknown``, ``bias_not_constant``,
    ``bias_not_per_feature``.

    Statistics: changes ``layer_norm_fused``, ``layer_norm_bias_folded``.

    Numerics: EXACT up to float rounding (mean/variance accumulated in float32 instead of the input type).

    Args:
        fold_bias: Also fold a constant ``Add`` after a ``LayerNormalization`` without bias into it.
    """

    name = "fuse-layernorm"

    def __init__(self, *, fold_bias: bool = True) -> None:
        self.fold_bias = validate_bool(self.name, "fold_bias", fold_bias)

    def rule_types(self) -> list[type[FusionRule]]:
        """The LayerNorm rule, then the bias fold."""
        return [FuseLayerNorm, FoldLayerNormBias] if self.fold_bias else [FuseLayerNorm]


# ------------------------------------------------------------------------------------------------ Gelu

_SQRT2 = math.sqrt(2.0)
_TANH_C = math.sqrt(2.0 / math.pi)
_TANH_K = 0.044715


def _other(node: ir.Node, value: ir.Value) -> ir.Value | None:
    """The other input of a binary node one of whose inputs is ``value``."""
    if len(node.inputs) != 2:
        return None
    if node.inputs[0] is value:
        return node.inputs[1]
    if node.inputs[1] is value:
        return node.inputs[0]
    return None


def _producer(value: ir.Value | None, op_type: str) -> ir.Node | None:
    node = None if value is None else value.producer()
    if node is None or not is_op(node, op_type) or set(node.attributes):
        return None
    return node


class _GeluRule(FusionRule):
    """``x * 0.5 * (1 + F(arg(x)))`` in three associations; ``arg(x)`` is checked by hand in ``check``."""

    gate_op: ClassVar[str]
    approximate: ClassVar[str]
    arrangement: ClassVar[int]
    commute = True

    def pattern(self, op, x, arg, one, half):
        gate = op.Add(getattr(op, self.gate_op)(arg), one, _outputs=["gate"])
        if self.arrangement == 0:
            return op.Mul(op.Mul(x, half), gate, _outputs=["out"])
        if self.arrangement == 1:
            return op.Mul(op.Mul(x, gate), half, _outputs=["out"])
        return op.Mul(x, op.Mul(gate, half), _outputs=["out"])

    def check(self, context: MatchContext, x: ir.Value, arg: ir.Value, one: ir.Value, half: ir.Value,
              out: ir.Value, **_) -> MatchResult:
        """Guards, in order; each failure names the skip key counted by the pass."""
        if self.context.opset < 20:
            return self.fail(context, "opset_too_old", str(self.context.opset))
        if (failed := self.check_intermediates(context)) is not None:
            return failed
        if any(n.attributes for n in context.nodes):
            return self.fail(context, "unsupported_attribute")
        if self.context.array(one) is None or self.context.array(half) is None:
            # Another association of the products bound a tensor where a constant belongs: not this
            # variant, and no reason about the site (the variant that fits reports it).
            return MatchResult().fail("1 or 0.5 not a constant")
        if not close_to(self.context, one, 1.0) or not close_to(self.context, half, 0.5):
            return self.fail(context, "constant_mismatch", "1 or 0.5")
        inner = self.inner_nodes(arg, x)
        if isinstance(inner, str):
            return self.fail(context, inner)
        if x.dtype is not None and x.dtype not in _LN_DTYPES:
            return self.fail(context, "unsupported_dtype", str(x.dtype))
        return self.remember(self.producer_of(out), inner)

    def inner_nodes(self, arg: ir.Value, x: ir.Value) -> list[ir.Node] | str:
        """The nodes computing ``arg`` from ``x`` (producers first), or the skip key."""
        raise NotImplementedError

    def rewrite(self, op, x: ir.Value, out: ir.Value, **_):
        """Emit ``Gelu(x)``; the hand-checked inner nodes are removed by the pass once unread."""
        root = self.producer_of(out)
        inner = self.recall(root)
        if isinstance(self.context, _GeluContext):
            self.context.orphans.extend(inner)
        return op.op("Gelu", x, approximate=self.approximate, _name=root.name)


class _GeluContext(FusionContext):
    """A fusion context that also collects the hand-checked nodes the Gelu rewrites replaced."""

    def __init__(self, model: ir.Model) -> None:
        super().__init__(model)
        self.orphans: list[ir.Node] = []


class _ErfGeluRule(_GeluRule):
    gate_op, approximate = "Erf", "none"

    def inner_nodes(self, arg: ir.Value, x: ir.Value) -> list[ir.Node] | str:
        """``arg = x / sqrt(2)`` or ``x * (1/sqrt(2))``."""
        if (node := _producer(arg, "Div")) is not None and node.inputs[0] is x:
            constant, target = node.inputs[1], _SQRT2
        elif (node := _producer(arg, "Mul")) is not None and (constant := _other(node, x)) is not None:
            target = 1.0 / _SQRT2
        else:
            return "pattern_mismatch"
        return [node] if close_to(self.context, constant, target) else "constant_mismatch"


class _TanhGeluRule(_GeluRule):
    gate_op, approximate = "Tanh", "tanh"

    def inner_nodes(self, arg: ir.Value, x: ir.Value) -> list[ir.Node] | str:
        """``arg = c * (x + k * x^3)``, ``x^3`` as ``Pow(x, 3)``, ``x * (x * x)`` or ``(x * x) * x``."""
        scaled = _producer(arg, "Mul")
        if scaled is None:
            return "pattern_mismatch"
        for c_index in (0, 1):
            inner = _producer(scaled.inputs[1 - c_index], "Add")
            if inner is None or not close_to(self.context, scaled.inputs[c_index], _TANH_C):
                continue
            cubic_term = _other(inner, x)
            cubic_mul = _producer(cubic_term, "Mul")
            if cubic_mul is None:
                continue
            for k_index in (0, 1):
                if not close_to(self.context, cubic_mul.inputs[k_index], _TANH_K):
                    continue
                cube_nodes = _cube_nodes(self.context, cubic_mul.inputs[1 - k_index], x)
                if cube_nodes is not None:
                    return [*cube_nodes, cubic_mul, inner, scaled]
            return "constant_mismatch"
        return "pattern_mismatch"


def _cube_nodes(context: FusionContext, value: ir.Value | None, x: ir.Value) -> list[ir.Node] | None:
    """The nodes computing ``x^3`` as ``value`` (``Pow(x, 3)`` or two products), else ``None``."""
    if (node := _producer(value, "Pow")) is not None:
        return [node] if node.inputs[0] is x and scalar(context, node.inputs[1]) == 3.0 else None
    node = _producer(value, "Mul")
    if node is None:
        return None
    square_value = _other(node, x)
    square = _producer(square_value, "Mul")
    if square is None or square.inputs[0] is not x or square.inputs[1] is not x:
        return None
    return [square, node]


def _gelu_rule(base: type[_GeluRule], arrangement: int) -> type[_GeluRule]:
    kind = "erf" if base is _ErfGeluRule else "tanh"
    return type(f"Fuse{kind.title()}Gelu{arrangement}", (base,),
                {"name": f"{kind}_gelu_fused", "arrangement": arrangement,
                 "__doc__": f"The {kind} form of GELU, outer products associated as variant {arrangement}."})


_GELU_RULES = {kind: [_gelu_rule(base, a) for a in range(3)]
               for kind, base in (("erf", _ErfGeluRule), ("tanh", _TanhGeluRule))}

# Ops whose schema changed between opset 17 and 20 in a way that keeps every model valid at the old
# version meaning the same at 20 (new optional attributes/inputs, new types, float8 saturation).
_COMPATIBLE_BUMPS = frozenset({
    "AveragePool", "Cast", "CastLike", "Constant", "ConstantOfShape", "DequantizeLinear", "Equal", "Identity",
    "If", "IsInf", "IsNaN", "LpPool", "Loop", "OptionalGetElement", "OptionalHasElement", "Pad",
    "QuantizeLinear", "ReduceMax", "ReduceMin", "Reshape", "Resize", "Scan", "ScatterElements", "ScatterND",
    "Shape", "Size", "Split",
})
# Reduce ops whose ``axes`` moved from an attribute to an input in opset 18.
_REDUCE_18 = frozenset({
    "ReduceL1", "ReduceL2", "ReduceLogSum", "ReduceLogSumExp", "ReduceMax", "ReduceMean", "ReduceMin",
    "ReduceProd", "ReduceSumSquare",
})


def opset_20_blockers(model: ir.Model) -> list[str]:
    """Why the model's default opset cannot be raised to 20 unchanged (empty: it can).

    Allowed from opset 17-19 only, without model-local functions (they import opsets of their own). Every
    default-domain op must have the same schema at 20, or a change listed as compatible (new optional
    attributes/inputs or types); a Reduce op that still has an ``axes`` attribute (opset 17) is not, nor
    are ``GridSample`` (modes renamed in 20) and ``DFT`` (``axis`` became an input).
    """
    version = model.opset_imports.get("", 0)
    if not 17 <= version <= 19:
        return [f"opset {version}"]
    if model.functions:
        return ["model-local functions"]
    blockers: set[str] = set()
    for graph in all_graphs(model):
        for node in graph:
            if node.domain not in ("", "ai.onnx"):
                continue
            try:
                old = onnx.defs.get_schema(node.op_type, version, "").since_version
                new = onnx.defs.get_schema(node.op_type, 20, "").since_version
            except onnx.defs.SchemaError:
                blockers.add(f"unknown op {node.op_type}")
                continue
            if old == new:
                continue
            if node.op_type in _REDUCE_18 and "axes" in node.attributes:
                blockers.add(f"{node.op_type} with axes attribute")
            elif node.op_type not in _COMPATIBLE_BUMPS and node.op_type not in _REDUCE_18:
                blockers.add(node.op_type)
    return sorted(blockers)


class FuseGeluPass(FusionPass):
    """Fuse the decomposed erf and tanh forms of GELU into ``Gelu`` (opset 20).

    Matches the forms in the module docstring in the main graph, If/Loop/Scan bodies and model-local
    functions. The outer products are matched as a pattern; the argument of ``Erf``/``Tanh`` is checked by
    hand (it must be computed from the same ``x``), and its nodes are removed when nothing else reads them.

    Opset: ``Gelu`` is an opset-20 op. Below 20 every site is declined as ``opset_too_old``, unless
    ``upgrade_opset`` is set: then, when :func:`opset_20_blockers` finds nothing, the default opset import
    is raised to 20 (counted as ``opset_upgraded``) -- only if at least one site fused, else the model is
    left as it was. When a GELU was found but the upgrade is blocked, ``skipped['opset_upgrade_blocked']``
    counts it and ``details['opset_blockers']`` says why.

    Declines (``skipped`` keys): ``opset_too_old``, ``opset_upgrade_blocked``,
    ``intermediate_is_graph_output``, ``intermediate_has_other_consumers``, ``unsupported_attribute``,
    ``constant_mismatch`` (a constant that is not exactly 1, 0.5, sqrt(2), sqrt(2/pi) or 0.044715),
    ``pattern_mismatch`` (the Erf/Tanh argument is not the expected expression of ``x``),
    ``unsupported_dtype``.

    Statistics: changes ``erf_gelu_fused``, ``tanh_gelu_fused``, ``opset_upgraded``.

    Numerics: EXACT up to float rounding (the kernel's erf/tanh versus the separate ops).

    Args:
        forms: Which forms to fuse, any of ``erf``, ``tanh``.
        upgrade_opset: Raise an opset 17-19 model to 20 when that changes no op's meaning.
    """

    name = "fuse-gelu"

    def __init__(self, *, forms: tuple[str, ...] = ("erf", "tanh"), upgrade_opset: bool = False) -> None:
        self.forms = validate_ops(self.name, "forms", forms, ("erf", "tanh"))
        self.upgrade_opset = validate_bool(self.name, "upgrade_opset", upgrade_opset)

    def rule_types(self) -> list[type[FusionRule]]:
        """Three associations per selected form."""
        return [rule for form in self.forms for rule in _GELU_RULES[form]]

    def rewrite(self, model: ir.Model, report: PassReport) -> None:
        """Apply the rules (after a tentative opset upgrade) and remove the replaced inner nodes."""
        original = model.opset_imports.get("", model.opset_imports.get("ai.onnx", 0))
        upgraded = False
        blockers: list[str] = []
        if self.upgrade_opset and original < 20:
            blockers = opset_20_blockers(model)
            if not blockers:
                model.opset_imports[""] = 20
                upgraded = True
        context = _GeluContext(model)
        rules = [t.rule(context) for t in self.rule_types()]
        apply_rules(model, rules, [True] * len(rules), context, report)
        remove_if_dead(context.orphans)
        if blockers and report.skipped.get("opset_too_old"):  # a blocked upgrade is news only with a site
            logger.info("fuse-gelu: opset %d kept: %s", original, ", ".join(blockers))
            report.details["opset_blockers"] = blockers
            report.skipped["opset_upgrade_blocked"] += 1
        if upgraded:
            if sum(report.changes.values()):
                report.changes["opset_upgraded"] = 1
            else:
                model.opset_imports[""] = original


# --------------------------------------------------------------------------------------------- Softmax


class _SoftmaxRule(FusionRule):
    """``Div(e, ReduceSum(e, a))`` with ``e = Exp(...)`` -> ``Softmax(x; axis=a)``."""

    stable: ClassVar[bool]

    def pattern(self, op, x):
        if self.stable:
            shifted = op.Sub(x, op.ReduceMax(x, _allow_other_inputs=True, _outputs=["maximum"]))
            exp = op.Exp(shifted)
        else:
            exp = op.Exp(x)
        return op.Div(exp, op.ReduceSum(exp, _allow_other_inputs=True, _outputs=["total"]), _outputs=["out"])

    def check(self, context: MatchContext, x: ir.Value, total: ir.Value, out: ir.Value,
              maximum: ir.Value | None = None, **_) -> MatchResult:
        """Guards, in order; each failure names the skip key counted by the pass."""
        if (failed := self.check_intermediates(context)) is not None:
            return failed
        rank = None if x.shape is None else len(x.shape)
        reductions = [self.producer_of(total)] + ([self.producer_of(maximum)] if maximum is not None else [])
        found = []
        for node in reductions:
            axes = _reduce_axes(self, node)
            if isinstance(axes, str):
                return self.fail(context, axes)
            if len(axes) != 1:
                return self.fail(context, "several_axes", str(axes))
            found.append(axes[0])
        normalized = normalize_axes(found, rank)
        if normalized is None:
            normalized = found  # unknown rank: the axes must be spelled alike
        if len(set(normalized)) != 1:
            return self.fail(context, "axes_differ", str(found))
        axis = found[0]
        if self.context.opset < 13 and not (axis == -1 or (rank is not None and normalized[0] == rank - 1)):
            return self.fail(context, "axis_not_last", f"axis {axis} before opset 13")
        if x.dtype is not None and x.dtype not in _LN_DTYPES:
            return self.fail(context, "unsupported_dtype", str(x.dtype))
        return self.remember(self.producer_of(out), axis)

    def rewrite(self, op, x: ir.Value, out: ir.Value, **_):
        """Emit ``Softmax(x; axis)``."""
        root = self.producer_of(out)
        return op.op("Softmax", x, axis=self.recall(root), _name=root.name)


class FuseStableSoftmax(_SoftmaxRule):
    """``e = Exp(x - ReduceMax(x, a))``, ``e / ReduceSum(e, a)`` -> ``Softmax(x, a)``."""

    name = "softmax_fused"
    stable = True


class FuseUnstableSoftmax(_SoftmaxRule):
    """``e = Exp(x)``, ``e / ReduceSum(e, a)`` -> ``Softmax(x, a)`` (which no longer overflows)."""

    name = "unshifted_softmax_fused"
    stable = False


class FuseSoftmaxPass(FusionPass):
    """Fuse decomposed softmax (Exp / ReduceSum / Div, with or without the max subtraction) into ``Softmax``.

    Matches the forms in the module docstring in the main graph, If/Loop/Scan bodies and model-local
    functions; the form with ``ReduceMax`` is tried first.

    Declines (``skipped`` keys): ``intermediate_is_graph_output``, ``intermediate_has_other_consumers``,
    ``unsupported_attribute``, ``keepdims_false``, ``axes_not_constant``, ``axes_unknown`` (a reduction
    over all axes), ``several_axes``, ``axes_differ`` (ReduceMax and ReduceSum over different axes),
    ``axis_not_last`` (before opset 13), ``unsupported_dtype``.

    Statistics: changes ``softmax_fused``, ``unshifted_softmax_fused``.

    Numerics: EXACT up to float rounding; where ``exp(x)`` overflowed the original gave NaN and the fused
    op gives the right value.

    Args:
        unshifted: Also fuse the form without the max subtraction.
    """

    name = "fuse-softmax"

    def __init__(self, *, unshifted: bool = True) -> None:
        self.unshifted = validate_bool(self.name, "unshifted", unshifted)

    def rule_types(self) -> list[type[FusionRule]]:
        """The shifted form first (it contains the unshifted one)."""
        return [FuseStableSoftmax, FuseUnstableSoftmax] if self.unshifted else [FuseStableSoftmax]
