"""Turn ``Add(MatMul(A, B), C)`` with a 2-D ``A`` into ``Gemm(A, B, C)``.

``Gemm(A, B, C) = alpha * A @ B + beta * C`` with the defaults ``alpha = beta = 1``, ``transA = transB = 0``
is exactly ``MatMul(A, B) + C`` when ``A`` is ``[M, K]``, ``B`` is ``[K, N]`` and ``C`` broadcasts to
``[M, N]`` without changing the output's shape. Gemm is 2-D only: a batched MatMul (``A`` of rank 3 or
more, or of unknown rank) must not become a Gemm, so ``A``'s rank is read from its value's shape and the
site is declined when it is not known to be 2. ``C`` must be unidirectionally broadcastable to
``[M, N]``: of rank at most 2 (a higher rank would turn the output into a batch), last axis ``1`` or
``N``, and first axis ``1`` or the static ``M`` (a larger first axis against ``M = 1`` would broadcast
the output to more rows). No arithmetic changes, so the rewrite is exact. After
``onnxscript/rewriter/rules/common/_matmul_add_to_gemm.py`` (which has no bias-shape guard and also
folds Transposes into ``transA``/``transB``; we do not).
"""

from __future__ import annotations

import logging
from typing import Any

import onnx_ir as ir
from onnxscript.rewriter import MatchContext, MatchResult

from sftonnx.passes.fusion._rules import FLOAT_DTYPES, FusionPass, FusionRule, validate_bool

__all__ = ["FuseMatMulAddPass"]

logger = logging.getLogger(__name__)

# Gemm with unidirectional broadcasting of C (the form we emit) exists from opset 7.
_MIN_OPSET = 7


class MatMulAddToGemm(FusionRule):
    """``Add(MatMul(a, b), c)`` (``c`` on either side of the Add) -> ``Gemm(a, b, c)``."""

    name = "matmul_add_fused"
    commute = True

    def __init__(self, context, *, dynamic_weight: bool = False) -> None:
        super().__init__(context)
        self.dynamic_weight = dynamic_weight

    def pattern(self, op, a, b, c):
        return op.Add(op.MatMul(a, b, _outputs=["product"]), c, _outputs=["summed"])

    def check(self, context: MatchContext, a: ir.Value, b: ir.Value, c: ir.Value, product: ir.Value,
              summed: ir.Value, **_) -> MatchResult:
        """Guards, in order; each failure names the skip key counted by the pass."""
        if self.context.opset < _MIN_OPSET:
            return self.fail(context, "opset_too_old", str(self.context.opset))
        if (failed := self.check_intermediates(context)) is not None:
            return failed
        if a.shape is None:
            return self.fail(context, "input_rank_unknown")
        if len(a.shape) != 2:
            return self.fail(context, "input_not_2d", f"rank {len(a.shape)}")
        weight = self.context.array(b)
        if weight is not None:
            weight_shape, dtype = weight.shape, weight.dtype
        elif not self.dynamic_weight:
            return self.fail(context, "weight_not_constant")
        elif b.shape is None or b.dtype is None:
            return self.fail(context, "weight_shape_unknown")
        else:
            weight_shape = tuple(b.shape)
            try:
                dtype = b.dtype.numpy()
            except Exception:  # dtypes numpy cannot express
                return self.fail(context, "unsupported_dtype")
        if len(weight_shape) != 2:
            return self.fail(context, "weight_not_2d", f"rank {len(weight_shape)}")
        if dtype not in FLOAT_DTYPES:
            return self.fail(context, "unsupported_dtype", str(dtype))
        bias = self.context.array(c)
        if bias is None:
            return self.fail(context, "bias_not_constant")
        rows, columns = a.shape[0], weight_shape[1]
        if bias.ndim > 2:
            return self.fail(context, "bias_changes_shape", f"{bias.shape} has rank > 2")
        aligned = (1,) * (2 - bias.ndim) + bias.shape
        if aligned[1] not in (1, columns):
            return self.fail(context, "bias_shape_mismatch", f"{bias.shape} vs N={columns}")
        if aligned[0] != 1 and aligned[0] != rows:  # rows may be symbolic: then only 1 is safe
            return self.fail(context, "bias_changes_shape", f"{bias.shape} vs M={rows}")
        return MatchResult()

    def rewrite(self, op, a: ir.Value, b: ir.Value, c: ir.Value, product: ir.Value, **_):
        """Emit ``Gemm(a, b, c)`` with default attributes."""
        matmul = self.producer_of(product)
        return op.op("Gemm", a, b, c, _domain=matmul.domain, _name=matmul.name)


class FuseMatMulAddPass(FusionPass):
    """Replace ``MatMul`` + ``Add`` of a bias by one ``Gemm`` where the MatMul is 2-D.

    Matches ``Add(MatMul(A, B), C)`` and ``Add(C, MatMul(A, B))`` in the main graph, If/Loop/Scan bodies
    and model-local functions, and replaces both nodes with ``Gemm(A, B, C)`` (conditions in the module
    docstring). ``B`` and ``C`` may be initializers, ``Constant`` nodes or constant expressions.

    Declines (``skipped`` keys): ``opset_too_old`` (before opset 7), ``intermediate_is_graph_output``,
    ``intermediate_has_other_consumers`` (the MatMul output is a graph output / read by another node),
    ``input_rank_unknown`` (``A`` has no shape), ``input_not_2d`` (a batched MatMul), ``weight_not_constant``
    (``B`` dynamic and ``dynamic_weight`` off), ``weight_shape_unknown``, ``weight_not_2d``,
    ``unsupported_dtype`` (Gemm is used for float16/32/64 only), ``bias_not_constant``,
    ``bias_changes_shape`` (``C`` of rank > 2, or with more rows than a static ``M``, or any rows when
    ``M`` is symbolic), ``bias_shape_mismatch``.

    Statistics: changes ``matmul_add_fused``.

    Numerics: EXACT (same arithmetic in one kernel).

    Args:
        dynamic_weight: Also fuse when ``B`` is not a constant but a 2-D value of known shape.
    """

    name = "matmul-add-to-gemm"

    def __init__(self, *, dynamic_weight: bool = False) -> None:
        self.dynamic_weight = validate_bool(self.name, "dynamic_weight", dynamic_weight)

    def rule_types(self) -> list[type[FusionRule]]:
        """The single MatMul+Add rule."""
        return [MatMulAddToGemm]

    def rule_options(self) -> dict[str, Any]:
        """``dynamic_weight`` for the rule."""
        return {"dynamic_weight": self.dynamic_weight}
