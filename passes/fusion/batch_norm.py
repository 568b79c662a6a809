"""Fold an inference-mode BatchNormalization into the Conv, ConvTranspose or Gemm that feeds it.

BatchNormalization computes, per channel ``c`` (axis 1 of its input ``y``)::

    bn(y)[c] = gamma[c] * (y[c] - mean[c]) / sqrt(var[c] + eps) + beta[c]
             = s[c] * y[c] + t[c],    s = gamma / sqrt(var + eps),    t = beta - mean * s

With ``y = W * x + b`` (Conv, ConvTranspose, Gemm) that is a linear layer again::

    W' = W * s                        (along the weight's output-channel axis)
    b' = (b - mean) * s + beta        (b = 0 when the bias input is absent; for Gemm b = beta_gemm * C)

computed in float64 from the stored parameters and cast back to the weight's dtype (float16 models stay
float16). The weight's output-channel axis: Conv ``[Cout, Cin/group, k...]`` axis 0; ConvTranspose
``[Cin, Cout/group, k...]``, viewed as ``[group, Cin/group, Cout/group, k...]``, axis 2; Gemm ``B`` axis 1,
or axis 0 with ``transB=1``; Gemm's ``alpha`` scales ``A' B'`` only and stays, its ``beta`` is folded
into ``C'`` and dropped. After ``onnxscript/rewriter/rules/common/_fuse_batchnorm.py`` (idea and
ConvTranspose grouping), with the gaps it leaves closed: training mode, BatchNormalization parameters
that are not constants, a producer output that is also a graph output or read elsewhere, shared
weights, Gemm ``beta``, subgraphs and functions.
"""

from __future__ import annotations

import logging
from typing import ClassVar

import numpy as np
import onnx_ir as ir
from onnxscript.rewriter import MatchContext, MatchResult

from sftonnx.ir_utils import attr
from sftonnx.passes.fusion._rules import (
    LINEAR_OPS,
    FusionPass,
    FusionRule,
    inspect_linear,
    validate_bool,
    validate_ops,
)

__all__ = ["FoldBatchNormPass"]

logger = logging.getLogger(__name__)

_DEFAULT_EPSILON = 1e-5  # BatchNormalization's default ``epsilon``


class _FoldBatchNormRule(FusionRule):
    """``BatchNormalization(P(x, W, b))`` -> ``P(x, W', b')`` for one producer op type ``P``."""

    producer: ClassVar[str]

    def pattern(self, op, x):
        produced = getattr(op, self.producer)(
            x, _allow_other_inputs=True, _allow_other_attributes=True, _outputs=["produced"]
        )
        return op.BatchNormalization(
            produced, _allow_other_inputs=True, _allow_other_attributes=True, _outputs=["normalized"]
        )

    def check(self, context: MatchContext, x: ir.Value, produced: ir.Value, normalized: ir.Value,
              **_) -> MatchResult:
        """Guards, in order; each failure names the skip key counted by the pass."""
        bn = self.producer_of(normalized)
        if _in_training_mode(bn, self.context.opset):
            return self.fail(context, "bn_training_mode")
        if any(v.uses() or v.is_graph_output() for v in bn.outputs[1:]):
            return self.fail(context, "bn_extra_outputs_used")
        if (failed := self.check_intermediates(context)) is not None:
            return failed
        target = inspect_linear(self, context, self.producer_of(produced), modifies_weight=True)
        if isinstance(target, MatchResult):
            return target
        params = self._params(bn)
        if params is None:
            return self.fail(context, "bn_params_not_constant")
        if any(p.shape != (target.channels,) for p in params):
            shapes = [p.shape for p in params]
            return self.fail(context, "bn_shape_mismatch", f"{shapes} vs {target.channels} channels")
        gamma, beta, mean, var = (p.astype(np.float64) for p in params)
        if not np.all(var + _epsilon(bn) > 0):
            return self.fail(context, "bn_variance_not_positive")
        scale = gamma / np.sqrt(var + _epsilon(bn))
        return self.remember(bn, (target, scale, beta - mean * scale))

    def rewrite(self, op, x: ir.Value, produced: ir.Value, normalized: ir.Value, **_):
        """Emit the producer with ``W' = W * s`` and ``b' = (b - mean) * s + beta``."""
        target, scale, shift = self.recall(self.producer_of(normalized))
        node = target.node
        weight_name = target.weight_name
        weight = self.new_constant(op, target.scaled_weight(scale), f"{weight_name}_bn_folded")
        self.context.after_commit(target.move_metadata_uses(weight))
        bias_name = f"{node.name or weight_name}_bias_bn_folded"
        bias = self.new_constant(op, target.fused_bias(scale, shift), bias_name)
        return target.emit(op, x, weight, bias)

    def _params(self, bn: ir.Node) -> list[np.ndarray] | None:
        if len(bn.inputs) < 5:
            return None
        params = [self.context.array(v) for v in bn.inputs[1:5]]
        if any(p is None for p in params):
            return None
        return params


def _epsilon(bn: ir.Node) -> float:
    return float(attr(bn, "epsilon", _DEFAULT_EPSILON))


def _in_training_mode(bn: ir.Node, opset: int) -> bool:
    """Training mode: ``training_mode=1`` (opset 14+), ``is_test=0`` (opset < 7, where 0 is the default)."""
    if attr(bn, "training_mode", 0):
        return True
    is_test = attr(bn, "is_test")
    if is_test is not None:
        return not is_test
    return opset < 7


class FoldConvBatchNorm(_FoldBatchNormRule):
    """``BatchNormalization(Conv(x))`` -> ``Conv(x)``."""

    name = "conv_bn_folded"
    producer = "Conv"


class FoldConvTransposeBatchNorm(_FoldBatchNormRule):
    """``BatchNormalization(ConvTranspose(x))`` -> ``ConvTranspose(x)``."""

    name = "conv_transpose_bn_folded"
    producer = "ConvTranspose"


class FoldGemmBatchNorm(_FoldBatchNormRule):
    """``BatchNormalization(Gemm(a))`` -> ``Gemm(a)`` (BatchNormalization over ``[M, N]``, channels ``N``)."""

    name = "gemm_bn_folded"
    producer = "Gemm"


_RULES: dict[str, type[_FoldBatchNormRule]] = {
    "Conv": FoldConvBatchNorm,
    "ConvTranspose": FoldConvTransposeBatchNorm,
    "Gemm": FoldGemmBatchNorm,
}


class FoldBatchNormPass(FusionPass):
    """Fold inference-mode BatchNormalization into a preceding Conv, ConvTranspose or Gemm.

    Matches ``BatchNormalization(P(x, W[, b]))`` for ``P`` in ``ops`` and replaces both nodes with
    ``P(x, W', b')`` (formulas in the module docstring), writing ``W'`` and ``b'`` as new initializers;
    the old weight is left for dead-node cleanup. Runs in the main graph, in If/Loop/Scan bodies and in
    model-local functions (there, the new tensors are ``Constant`` nodes). ``W``, ``b`` and the
    BatchNormalization parameters may be initializers, ``Constant`` nodes or constant expressions
    (``ConstantOfShape``, ``Unsqueeze``, ``Identity``, ``Shape``, ``Expand``, ``Cast`` of constants;
    see :mod:`sftonnx.passes.fusion._rules`), which are materialized. Initializers that are also graph
    inputs are overridable in IR >= 4 and not folded.

    Declines (``skipped`` keys): ``bn_training_mode`` (``training_mode=1``, or ``is_test=0`` before
    opset 7), ``bn_extra_outputs_used`` (running mean/var outputs read), ``intermediate_is_graph_output``
    (the producer's output is a graph output), ``intermediate_has_other_consumers`` (another node reads
    it), ``weight_not_constant``, ``weight_shared`` (another node reads ``W``; see
    ``clone_shared_weights``), ``unsupported_dtype`` (not float16/32/64), ``unsupported_weight_shape``,
    ``bias_not_constant``, ``unsupported_bias_shape``, ``bn_params_not_constant``, ``bn_shape_mismatch``
    (a parameter is not ``[channels]``), ``bn_variance_not_positive`` (``var + eps <= 0``).

    Statistics: changes ``conv_bn_folded``, ``conv_transpose_bn_folded``, ``gemm_bn_folded``.

    Numerics: EXACT up to float re-association (the fold is computed in float64, rounded once).

    Args:
        ops: Producer op types to fold into, any of ``Conv``, ``ConvTranspose``, ``Gemm``.
        clone_shared_weights: Fold even when other nodes read the weight, by writing a scaled copy (the
            model grows by one weight); by default such sites are skipped as ``weight_shared``.
    """

    name = "fold-bn"

    def __init__(self, *, ops: tuple[str, ...] = LINEAR_OPS, clone_shared_weights: bool = False) -> None:
        self.ops = validate_ops(self.name, "ops", ops, LINEAR_OPS)
        self.clone_shared_weights = validate_bool(self.name, "clone_shared_weights", clone_shared_weights)

    def rule_types(self) -> list[type[FusionRule]]:
        """One rule per producer op in ``ops``."""
        return [_RULES[op] for op in self.ops]
