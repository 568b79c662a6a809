"""Fold a per-channel constant Mul, Add, Sub or Div after a Conv, ConvTranspose or Gemm into its weight and bias.

For a producer ``y = W * x + b`` with output channels on axis 1 and a constant ``c`` that holds one value
per output channel (or a single value)::

    y * c = (W * c) * x + b * c       ->  W' = W * c (along the output-channel axis),  b' = b * c
    y + c =  W      * x + (b + c)     ->  W' = W,                                      b' = b + c
    y - c  is  y + (-c),   y / c  is  y * (1 / c)   (``c`` the second operand; a zero in ``c`` is declined)

(Gemm: ``b = beta * C``; its ``beta`` is folded into ``C'`` and dropped, ``alpha`` stays.) ``c`` may be
on either side of the Mul/Add (only on the right of Sub/Div). Per channel means: ``c`` has at most the
output's rank, and, aligned to the output's trailing axes, every axis but the channel axis 1 has size 1
while axis 1 has size 1 or ``channels`` (e.g. ``[C, 1, 1]``, ``[1, C, 1, 1]``, a scalar for Conv; ``[C]``,
``[1, C]`` for Gemm). A constant of higher rank would broadcast the output to a new shape; one that varies
along batch or spatial axes is not a per-channel affine map; both are declined. Computed in float64, cast
back to the weight's dtype. Chains (``Conv -> Add -> Sub -> Mul -> Add``, a decomposed batch norm) fold
step by step. After ``onnxscript/rewriter/rules/common/_fuse_conv_affine.py`` (which takes scalars only
and needs a bias).
"""

from __future__ import annotations

import logging
from typing import ClassVar

import numpy as np
import onnx_ir as ir
from onnxscript.rewriter import MatchContext, MatchResult

from sftonnx.passes.fusion._rules import (
    LINEAR_OPS,
    FusionPass,
    FusionRule,
    inspect_linear,
    validate_bool,
    validate_ops,
)

__all__ = ["FoldAffinePass"]

logger = logging.getLogger(__name__)

AFFINE_OPS = ("Mul", "Add", "Sub", "Div")
#: Whether the op scales (Mul, Div: weight and bias) or shifts (Add, Sub: bias only).
_SCALES = {"Mul": True, "Div": True, "Add": False, "Sub": False}


class _FoldAffineRule(FusionRule):
    """``Op(P(x, W, b), c)`` -> ``P(x, W', b')`` for one producer ``P`` and one ``Op`` in Mul/Add/Sub/Div."""

    producer: ClassVar[str]
    affine: ClassVar[str]

    def pattern(self, op, x, c):
        produced = getattr(op, self.producer)(
            x, _allow_other_inputs=True, _allow_other_attributes=True, _outputs=["produced"]
        )
        return getattr(op, self.affine)(produced, c, _outputs=["combined"])

    def check(self, context: MatchContext, x: ir.Value, c: ir.Value, produced: ir.Value,
              combined: ir.Value, **_) -> MatchResult:
        """Guards, in order; each failure names the skip key counted by the pass."""
        if (failed := self.check_intermediates(context)) is not None:
            return failed
        operand = self.context.array(c)
        if operand is None:
            return self.fail(context, "operand_not_constant")
        target = inspect_linear(self, context, self.producer_of(produced), modifies_weight=_SCALES[self.affine])
        if isinstance(target, MatchResult):
            return target
        if operand.ndim > target.rank:
            return self.fail(context, "operand_changes_shape", f"{operand.shape} vs rank {target.rank}")
        aligned = (1,) * (target.rank - operand.ndim) + operand.shape
        if any(size != 1 for axis, size in enumerate(aligned) if axis != 1) or aligned[1] not in (
            1,
            target.channels,
        ):
            return self.fail(context, "operand_not_per_channel", f"{operand.shape}")
        values = operand.astype(np.float64)
        if self.affine == "Div":
            with np.errstate(divide="ignore"):
                values = 1.0 / values
        elif self.affine == "Sub":
            values = -values
        if not np.all(np.isfinite(values)):
            return self.fail(context, "operand_not_finite")
        per_channel = np.broadcast_to(values.reshape(-1), (target.channels,)).copy()
        return self.remember(self.producer_of(combined), (target, per_channel))

    def rewrite(self, op, x: ir.Value, c: ir.Value, produced: ir.Value, combined: ir.Value, **_):
        """Emit the producer with the constant folded into its weight (Mul) and bias."""
        target, per_channel = self.recall(self.producer_of(combined))
        node: ir.Node = target.node
        base = node.name or target.weight_name
        if _SCALES[self.affine]:
            weight = self.new_constant(op, target.scaled_weight(per_channel), f"{base}_weight_scaled")
            self.context.after_commit(target.move_metadata_uses(weight))
            bias_array = target.fused_bias(per_channel, None)
        else:
            weight = target.weight_value
            bias_array = target.fused_bias(None, per_channel)
        bias = None if bias_array is None else self.new_constant(op, bias_array, f"{base}_bias_folded")
        return target.emit(op, x, weight, bias)


def _rule(producer: str, affine: str) -> type[_FoldAffineRule]:
    snake = {"Conv": "conv", "ConvTranspose": "conv_transpose", "Gemm": "gemm"}[producer]
    return type(
        f"Fold{producer}{affine}",
        (_FoldAffineRule,),
        {
            "name": f"{snake}_{affine.lower()}_folded",
            "producer": producer,
            "affine": affine,
            "commute": affine in ("Mul", "Add"),
            "__doc__": f"``{affine}({producer}(x), c)``, ``c`` per-channel constant -> ``{producer}(x)``.",
        },
    )


_RULES: dict[tuple[str, str], type[_FoldAffineRule]] = {
    (producer, affine): _rule(producer, affine) for producer in LINEAR_OPS for affine in AFFINE_OPS
}


class FoldAffinePass(FusionPass):
    """Fold a per-channel constant Mul/Add that follows a Conv, ConvTranspose or Gemm into it.

    Matches ``Mul(P(x, W[, b]), c)`` and ``Add(P(x, W[, b]), c)`` (``c`` on either side), ``Sub(P(...), c)``
    and ``Div(P(...), c)`` for ``P`` in ``ops`` and replaces both nodes with ``P(x, W', b')`` (formulas in
    the module docstring), writing the new tensors as initializers; for Add/Sub only the bias changes and the
    weight input is kept. Runs in the
    main graph, in If/Loop/Scan bodies and in model-local functions. ``c``, ``W`` and ``b`` may be
    initializers, ``Constant`` nodes or constant expressions (``ConstantOfShape``, ``Unsqueeze``,
    ``Identity``, ``Shape``, ``Expand``, ``Cast`` of constants; see :mod:`sftonnx.passes.fusion._rules`).

    Declines (``skipped`` keys): ``intermediate_is_graph_output``, ``intermediate_has_other_consumers``
    (the producer's output is a graph output / read by another node), ``operand_not_constant``,
    ``operand_changes_shape`` (``c`` has a higher rank than the output), ``operand_not_per_channel``
    (``c`` varies along a batch/spatial axis, or its channel size is wrong), ``operand_not_finite``
    (inf/nan would not survive re-association; a zero divisor), ``weight_not_constant`` (Mul/Div),
    ``weight_shape_unknown`` (Add/Sub with a dynamic weight of unknown shape), ``weight_shared`` (Mul/Div,
    another node reads ``W``),
    ``unsupported_dtype``, ``unsupported_weight_shape``, ``bias_not_constant``,
    ``unsupported_bias_shape``.

    Statistics: changes ``<producer>_<op>_folded`` for producer ``conv``, ``conv_transpose``, ``gemm``
    and op ``mul``, ``add``, ``sub``, ``div`` (e.g. ``conv_mul_folded``, ``gemm_add_folded``).

    Numerics: EXACT up to float re-association.

    Args:
        ops: Producer op types to fold into, any of ``Conv``, ``ConvTranspose``, ``Gemm``.
        affine_ops: Which following ops to fold, any of ``Mul``, ``Add``, ``Sub``, ``Div``.
        clone_shared_weights: Fold a Mul even when other nodes read the weight, by writing a scaled
            copy; by default such sites are skipped as ``weight_shared``.
    """

    name = "fold-affine"

    def __init__(self, *, ops: tuple[str, ...] = LINEAR_OPS, affine_ops: tuple[str, ...] = AFFINE_OPS,
                 clone_shared_weights: bool = False) -> None:
        self.ops = validate_ops(self.name, "ops", ops, LINEAR_OPS)
        self.affine_ops = validate_ops(self.name, "affine_ops", affine_ops, AFFINE_OPS)
        self.clone_shared_weights = validate_bool(self.name, "clone_shared_weights", clone_shared_weights)

    def rule_types(self) -> list[type[FusionRule]]:
        """One rule per (producer, Mul/Add) pair selected by the options."""
        return [_RULES[(producer, affine)] for producer in self.ops for affine in self.affine_ops]
