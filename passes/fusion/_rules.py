"""Shared machinery of the fusion passes: constant lookup, a guarded rule base and a counting driver.

Every fusion here is an onnxscript rewrite rule (:class:`FusionRule`, a ``RewriteRuleClassBase``) whose
guards live in ``check()`` and return ``MatchResult().fail(reason)``. We drive the rules ourselves
(:func:`apply_rules`, through the public ``RewriteRule.try_rewrite``) rather than with
``RewriteRuleSet.apply_to_model``, because that:

* returns one total count, while our reports count ``changes[rule.name]`` per rule;
* rejects a match whose intermediate values have other uses *before* ``check()`` runs, so the reason
  ("the Conv output is also a graph output") is lost; our rules are built with ``remove_nodes=False``
  so that every structural match reaches ``check()``, where :meth:`FusionRule.check_intermediates`
  names the reason, and the driver removes the matched nodes itself once the guards passed;
* registers new initializers under rule-chosen names (overwriting a same-named one), cannot add them to
  functions, and does not list them as graph inputs as IR < 4 models require; the driver names them
  uniquely and emits ``Constant`` nodes where an initializer cannot go;
* always runs constant propagation and unused-node removal over the whole model, even when nothing
  matched, which would modify a model the report calls unmodified.

The driver visits the main graph, every subgraph (If/Loop/Scan bodies) and every model-local function
(:func:`sftonnx.ir_utils.all_graphs`), and sweeps until a sweep changes nothing, so chains such as
Conv -> Mul -> Add fold completely. Skips are the reasons recorded in that last sweep, one per site (the
node the pattern is rooted at), so a site that two commuted variants both reject counts once.

What counts as a constant (:meth:`FusionContext.array`): an initializer, a ``Constant`` node, and the
small constant expressions exporters leave behind: ``ConstantOfShape`` of a constant shape (onnx's
``light_*`` models store every weight that way), ``Unsqueeze`` of a constant (Caffe2 "scale" layers),
``Identity``, ``Shape`` of a constant, ``Expand`` and ``Cast``/``CastLike`` to a float type (torch's
zero bias of a bias-less Conv: ``Expand(CastLike(0, x), Shape(w))``). A fold materializes them into a
new initializer; the old nodes go dead. Readers of a weight that only look at its shape or dtype
(``Shape``, ``Size``, ``CastLike``'s second input) do not make it shared; they are moved to the
rewritten weight.
An initializer that is also a graph input is a default the caller may override when ``ir_version >= 4``,
so it is not a constant there; IR < 4 required every initializer to be listed as an input, so there it
is one (onnxruntime's ``Graph::CanOverrideInitializer`` draws the same line).
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from typing import Any, ClassVar

import numpy as np
import onnx_ir as ir
from onnxscript.rewriter import MatchContext, MatchResult, RewriteRule, RewriteRuleClassBase

from sftonnx.errors import PassConfigError
from sftonnx.ir_utils import (
    NameAllocator,
    all_graphs,
    attr,
    constant_array,
    is_op,
    opset_version,
    reads_metadata_only,
)
from sftonnx.pass_infra import PassReport, SftPass

__all__ = [
    "FLOAT_DTYPES",
    "LINEAR_OPS",
    "FusionContext",
    "FusionPass",
    "FusionRule",
    "LinearTarget",
    "apply_rules",
    "inspect_linear",
    "validate_bool",
    "validate_ops",
]

logger = logging.getLogger(__name__)

#: Weight dtypes the folds handle (computed in float64, cast back to the weight's dtype).
FLOAT_DTYPES = (np.dtype(np.float16), np.dtype(np.float32), np.dtype(np.float64))

#: Producers whose output channels can absorb a per-channel scale and shift.
LINEAR_OPS = ("Conv", "ConvTranspose", "Gemm")

# A sweep that still changed something after this many is logged; the fixpoint is normally reached in 2.
_MAX_SWEEPS = 8
# ConstantOfShape and Expand results larger than this (elements) are not materialized.
_MAX_MATERIALIZED = 1 << 26


class FusionContext:
    """State of one pass call shared by its rules: constant cache, fresh names, skip reasons.

    Nothing here outlives the call that built it.

    Args:
        model: The model being rewritten.
        clone_shared_weights: Whether a rule may write a scaled copy of a weight that other nodes also
            read (the original stays for them), instead of skipping with ``weight_shared``.
    """

    def __init__(self, model: ir.Model, *, clone_shared_weights: bool = False) -> None:
        self.model = model
        self.clone_shared_weights = clone_shared_weights
        self.opset = opset_version(model)
        self.legacy_ir = (model.ir_version or 0) < 4
        self._arrays: dict[ir.Value, np.ndarray | None] = {}
        self._names: NameAllocator | None = None
        self._skips: dict[ir.Node, str] = {}
        self._after_commit: list[Callable[[], None]] = []

    # -- constants ---------------------------------------------------------------------------------

    def array(self, value: ir.Value | None) -> np.ndarray | None:
        """The value's contents if it is a compile-time constant (see the module docstring), else None."""
        if value is None:
            return None
        if value not in self._arrays:
            self._arrays[value] = self._compute(value)
        return self._arrays[value]

    def _compute(self, value: ir.Value) -> np.ndarray | None:
        if value.const_value is not None:
            if value.is_graph_input() and not self.legacy_ir:
                return None  # overridable default
            return constant_array(value)
        producer = value.producer()
        if producer is None:
            return None
        if is_op(producer, "Constant"):
            return constant_array(value)
        if is_op(producer, "Identity"):
            return self.array(producer.inputs[0])
        if is_op(producer, "ConstantOfShape"):
            return self._constant_of_shape(producer)
        if is_op(producer, "Unsqueeze"):
            return self._unsqueeze(producer)
        if is_op(producer, "Shape"):
            return self._shape(producer)
        if is_op(producer, "Expand"):
            return self._expand(producer)
        if is_op(producer, "Cast") or is_op(producer, "CastLike"):
            return self._cast(producer)
        return None

    def _input(self, node: ir.Node, index: int) -> np.ndarray | None:
        return self.array(node.inputs[index]) if len(node.inputs) > index else None

    def _shape(self, node: ir.Node) -> np.ndarray | None:
        # Only of a constant: a declared shape elsewhere may be stale or symbolic.
        data = self._input(node, 0)
        if data is None:
            return None
        start, end = attr(node, "start", 0), attr(node, "end")
        return np.array(data.shape[start:end], dtype=np.int64)  # slicing clamps as Shape-15 specifies

    def _expand(self, node: ir.Node) -> np.ndarray | None:
        data, shape = self._input(node, 0), self._input(node, 1)
        if data is None or shape is None or shape.ndim != 1:
            return None
        try:
            target = np.broadcast_shapes(data.shape, tuple(int(d) for d in shape))
        except ValueError:
            return None
        if int(np.prod(target, dtype=np.int64)) > _MAX_MATERIALIZED:
            return None
        return np.broadcast_to(data, target).copy()

    def _cast(self, node: ir.Node) -> np.ndarray | None:
        # To float types only, from float/int/bool: where numpy's conversion is ONNX's (no saturation rules).
        data = self._input(node, 0)
        if data is None or data.dtype.kind not in "fiub":
            return None
        if node.op_type == "Cast":
            to = attr(node, "to")
            dtype_ir = None if to is None else ir.DataType(to)
        else:
            like = node.inputs[1] if len(node.inputs) > 1 else None
            dtype_ir = None if like is None else like.dtype
        if dtype_ir is None:
            return None
        try:
            dtype = np.dtype(dtype_ir.numpy())
        except Exception:  # types numpy cannot express
            return None
        return data.astype(dtype) if dtype in FLOAT_DTYPES else None

    def _constant_of_shape(self, node: ir.Node) -> np.ndarray | None:
        shape = self.array(node.inputs[0] if node.inputs else None)
        if shape is None or shape.ndim != 1 or (shape < 0).any():
            return None
        if int(np.prod(shape, dtype=np.int64)) > _MAX_MATERIALIZED:
            return None
        fill = node.attributes.get("value")
        fill_array = fill.as_tensor().numpy() if fill is not None else np.zeros(1, np.float32)
        if fill_array.size != 1:
            return None
        return np.full(tuple(int(d) for d in shape), fill_array.reshape(()), dtype=fill_array.dtype)

    def _unsqueeze(self, node: ir.Node) -> np.ndarray | None:
        data = self.array(node.inputs[0] if node.inputs else None)
        axes = attr(node, "axes")
        if axes is None:
            axes_array = self.array(node.inputs[1] if len(node.inputs) > 1 else None)
            axes = None if axes_array is None else [int(a) for a in axes_array.reshape(-1)]
        if data is None or axes is None:
            return None
        rank = data.ndim + len(axes)
        normalized = sorted({int(a) % rank for a in axes} if rank else set())
        if len(normalized) != len(axes):
            return None
        return np.expand_dims(data, tuple(normalized))

    # -- names -------------------------------------------------------------------------------------

    def fresh_name(self, base: str) -> str:
        """A value name used nowhere in the model (any graph, subgraph or function), reserved."""
        if self._names is None:
            self._names = NameAllocator.for_model(self.model)
        return self._names(base)

    def after_commit(self, callback: Callable[[], None]) -> None:
        """Run ``callback`` once the rewrite being built is in place (dropped if it is not applied)."""
        self._after_commit.append(callback)

    # -- skips -------------------------------------------------------------------------------------

    def note_skip(self, site: ir.Node, key: str) -> None:
        """Record why ``site`` was left alone (the first reason of a sweep wins)."""
        self._skips.setdefault(site, key)

    def _forget(self, nodes: Iterable[ir.Node]) -> None:
        for node in nodes:
            self._skips.pop(node, None)

    def _begin_sweep(self) -> None:
        self._skips.clear()

    def _skip_counts(self) -> Counter[str]:
        return Counter(key for node, key in self._skips.items() if node.graph is not None)


class FusionRule(RewriteRuleClassBase):
    """Base of the fusion rules. An instance serves one pass call and reports skips to its context.

    Subclasses set ``name`` (the snake_case ``changes`` key, e.g. ``conv_bn_folded``), implement
    ``pattern``/``check``/``rewrite`` and set ``commute`` when the pattern's Add/Mul may take the
    matched operand on either side.
    """

    name: str
    commute: ClassVar[bool] = False

    def __init__(self, context: FusionContext) -> None:
        super().__init__(type(self).name, remove_nodes=False)
        self.context = context
        self._checked: dict[ir.Node, object] = {}

    def fail(self, match: MatchContext, key: str, detail: str = "") -> MatchResult:
        """Record ``key`` as the skip reason of this site and return the failed match."""
        self.context.note_skip(match.root, key)
        logger.debug("%s: %s at node %r %s", self.name, key, match.root.name, detail)
        return MatchResult().fail(f"{key}: {detail}" if detail else key)

    def check_intermediates(self, match: MatchContext) -> MatchResult | None:
        """Fail unless every value the matched nodes compute, except the replaced outputs, stays inside.

        The matched nodes are removed, so an intermediate value that is a graph output
        (``intermediate_is_graph_output``) or that another node reads (``intermediate_has_other_consumers``)
        blocks the fusion. Returns ``None`` when the match can be replaced.
        """
        matched = set(match.nodes)
        replaced = set(match.output_values)
        for node in match.nodes:
            for value in node.outputs:
                if value in replaced:
                    continue
                if value.is_graph_output():
                    return self.fail(match, "intermediate_is_graph_output", repr(value.name))
                if any(use.node not in matched for use in value.uses()):
                    return self.fail(match, "intermediate_has_other_consumers", repr(value.name))
        return None

    @staticmethod
    def producer_of(value: ir.Value) -> ir.Node:
        """The node computing ``value`` (values bound to a pattern node's output always have one)."""
        node = value.producer()
        assert node is not None, value
        return node

    def remember(self, root: ir.Node, checked: object) -> MatchResult:
        """Keep what ``check()`` computed for the site rooted at ``root`` for ``rewrite()``; succeed."""
        self._checked[root] = checked
        return MatchResult()

    def recall(self, root: ir.Node):
        """What ``check()`` remembered for ``root`` (``rewrite()`` runs right after a passing check)."""
        return self._checked.pop(root)

    def new_constant(self, op, array: np.ndarray, base: str) -> ir.Value:
        """A new initializer holding ``array`` under a fresh name derived from ``base``."""
        name = self.context.fresh_name(base)
        return op.initializer(ir.tensor(np.ascontiguousarray(array), name=name), name=name)


class LinearTarget:
    """A Conv, ConvTranspose or Gemm whose output channels absorb a per-channel scale and shift.

    With ``s`` a per-output-channel scale and ``t`` a per-output-channel shift, ``s * f(x) + t`` equals
    ``f'(x)`` where ``f'`` has the weight scaled by ``s`` along its output-channel axis and bias
    ``b' = s * b + t`` (``b = beta * C`` for Gemm, whose ``beta`` is folded into ``C'`` and dropped). The
    output-channel axis of the weight is 0 for Conv (``[Cout, Cin/group, k...]``), 0 for Gemm with
    ``transB=1`` (``[N, K]``) and 1 without (``[K, N]``); a ConvTranspose weight is
    ``[Cin, Cout/group, k...]``, so output channel ``g * Cout/group + j`` is column ``j`` of the rows of
    group ``g``. Gemm's ``alpha`` multiplies ``A' B'`` only, so it commutes with the scale and stays.

    Attributes:
        node: The producer node.
        weight_value: The weight input.
        weight: The weight's contents (``None`` when only its shape is known).
        weight_shape: The weight's shape.
        bias: The bias (Conv ``B`` / Gemm ``C``) contents, ``None`` when the input is absent.
        channels: Number of output channels.
        rank: Rank of the producer's output (the channel axis is 1).
        dtype: The weight's dtype, which fused tensors are cast back to.
        metadata_uses: Other ``(node, input index)`` readers of the weight that only read its shape or
            dtype (``Shape``, ``Size``, ``CastLike``'s second input, as torch exports emit them); they do
            not make the weight "shared" and are moved to the rewritten weight.
    """

    def __init__(self, node: ir.Node, weight_value: ir.Value, weight: np.ndarray | None,
                 weight_shape: tuple[int, ...], bias: np.ndarray | None, dtype: np.dtype) -> None:
        self.node = node
        self.weight_value = weight_value
        self.weight = weight
        self.weight_shape = weight_shape
        self.bias = bias
        self.dtype = dtype
        self.metadata_uses: list[tuple[ir.Node, int]] = []
        self.group = int(attr(node, "group", 1))
        self.trans_b = bool(attr(node, "transB", 0))
        if node.op_type == "Gemm":
            self.channels = weight_shape[0] if self.trans_b else weight_shape[1]
            self.rank = 2
        elif node.op_type == "ConvTranspose":
            self.channels = weight_shape[1] * self.group
            self.rank = len(weight_shape)
        else:
            self.channels = weight_shape[0]
            self.rank = len(weight_shape)

    @property
    def weight_name(self) -> str:
        """A base for names of tensors derived from the weight."""
        return self.weight_value.name or "weight"

    def scaled_weight(self, scale: np.ndarray) -> np.ndarray:
        """``W * s`` along the output-channel axis, computed in float64, cast to the weight dtype."""
        assert self.weight is not None
        weight = self.weight.astype(np.float64)
        scale = np.asarray(scale, np.float64).reshape(-1)
        if self.node.op_type == "Gemm":
            scaled = weight * (scale[:, None] if self.trans_b else scale[None, :])
        elif self.node.op_type == "ConvTranspose":
            cin, cout_per_group, *kernel = weight.shape
            grouped = weight.reshape(self.group, cin // self.group, cout_per_group, *kernel)
            factors = scale.reshape(self.group, 1, cout_per_group, *([1] * len(kernel)))
            scaled = (grouped * factors).reshape(weight.shape)
        else:
            scaled = weight * scale.reshape(-1, *([1] * (weight.ndim - 1)))
        return scaled.astype(self.dtype)

    def fused_bias(self, scale: np.ndarray | None, shift: np.ndarray | None) -> np.ndarray | None:
        """``b' = s * b + t`` in float64 (``b = beta * C`` for Gemm), cast; ``None`` if there is nothing."""
        if self.bias is None and shift is None:
            return None
        if self.bias is None:
            bias = np.zeros(self.channels, np.float64)
        else:
            bias = self.bias.astype(np.float64)
            if self.node.op_type == "Gemm":
                bias = bias * float(attr(self.node, "beta", 1.0))
        if scale is not None:
            bias = bias * np.asarray(scale, np.float64).reshape(-1)
        if shift is not None:
            bias = bias + np.asarray(shift, np.float64).reshape(-1)
        return bias.astype(self.dtype)

    def move_metadata_uses(self, new_weight: ir.Value) -> Callable[[], None]:
        """A callback moving :attr:`metadata_uses` to ``new_weight`` (for after the rewrite is in place).

        Only where ``new_weight`` became an initializer of the reader's own graph, so it is visible and
        defined before the reader; elsewhere readers keep the original weight, which then stays alive.
        """
        old_weight, uses = self.weight_value, list(self.metadata_uses)

        def move() -> None:
            if not new_weight.is_initializer():
                return
            for user, index in uses:
                if user.graph is new_weight.graph and user.inputs[index] is old_weight:
                    user.replace_input_with(index, new_weight)

        return move

    def emit(self, op, x: ir.Value, weight: ir.Value, bias: ir.Value | None) -> ir.Value:
        """A copy of the producer reading ``weight`` and ``bias``; Gemm's ``beta`` (folded) is dropped."""
        attributes = dict(self.node.attributes)
        if self.node.op_type == "Gemm":
            attributes.pop("beta", None)
        inputs = [x, weight] if bias is None else [x, weight, bias]
        return op.op(self.node.op_type, *inputs, _domain=self.node.domain, _name=self.node.name,
                     **attributes)


def inspect_linear(rule: FusionRule, match: MatchContext, node: ir.Node, *,
                   modifies_weight: bool) -> LinearTarget | MatchResult:
    """Validate ``node`` (Conv/ConvTranspose/Gemm) as a fold target, or fail with the skip reason.

    Reasons: ``weight_not_constant`` (or, when only the bias changes, ``weight_shape_unknown``),
    ``unsupported_dtype`` (weights other than float16/32/64), ``unsupported_weight_shape``,
    ``weight_shared`` (another node reads the weight and ``clone_shared_weights`` is off; only when the
    fold rewrites the weight), ``bias_not_constant``, ``unsupported_bias_shape``.
    """
    context = rule.context
    weight_value = node.inputs[1] if len(node.inputs) > 1 else None
    if weight_value is None:
        return rule.fail(match, "weight_not_constant")
    weight = context.array(weight_value)
    if weight is not None:
        weight_shape, dtype = tuple(weight.shape), weight.dtype
    elif modifies_weight:
        return rule.fail(match, "weight_not_constant")
    else:
        shape = weight_value.shape
        dtype_ir = weight_value.dtype
        if shape is None or not shape.is_static() or dtype_ir is None:
            return rule.fail(match, "weight_shape_unknown")
        weight_shape = tuple(shape.numpy())
        try:
            dtype = np.dtype(dtype_ir.numpy())
        except Exception:  # dtypes numpy cannot express
            return rule.fail(match, "unsupported_dtype")
    if dtype not in FLOAT_DTYPES:
        return rule.fail(match, "unsupported_dtype", str(dtype))
    group = int(attr(node, "group", 1))
    if node.op_type == "Gemm":
        if len(weight_shape) != 2:
            return rule.fail(match, "unsupported_weight_shape", str(weight_shape))
    elif len(weight_shape) < 3 or group < 1 or weight_shape[0] % group:
        return rule.fail(match, "unsupported_weight_shape", f"{weight_shape} group={group}")
    metadata_uses: list[tuple[ir.Node, int]] = []
    if modifies_weight:
        others = [(use.node, use.idx) for use in weight_value.uses() if use.node is not node]
        metadata_uses = [(user, index) for user, index in others if reads_metadata_only(user, index)]
        if len(metadata_uses) < len(others) and not context.clone_shared_weights:
            return rule.fail(match, "weight_shared", repr(weight_value.name))
    bias_value = node.inputs[2] if len(node.inputs) > 2 else None
    bias = context.array(bias_value)
    if bias_value is not None and bias is None:
        return rule.fail(match, "bias_not_constant")
    target = LinearTarget(node, weight_value, weight, weight_shape, bias, dtype)
    target.metadata_uses = metadata_uses
    if bias is not None:
        if node.op_type == "Gemm":
            ok = bias.ndim <= 2 and (bias.ndim == 0 or bias.shape[-1] in (1, target.channels))
        else:
            ok = bias.shape == (target.channels,)
        if not ok:
            return rule.fail(match, "unsupported_bias_shape", str(bias.shape))
    return target


def apply_rules(model: ir.Model, rules: Sequence[RewriteRule], commute: Sequence[bool],
                context: FusionContext, report: PassReport) -> None:
    """Apply ``rules`` everywhere in ``model`` until nothing changes; count per rule into ``report``.

    Args:
        model: The model, rewritten in place.
        rules: Compiled rules (``FusionRule.rule(context)``), tried in order at every node.
        commute: Per rule, whether to also try the variants with Add/Mul operands swapped.
        context: The context the rules were built with (it collects skip reasons).
        report: ``changes[rule.name]`` counts each rewrite; ``skipped`` gets the final sweep's reasons.
    """
    variants: list[RewriteRule] = []
    for rule, swap in zip(rules, commute, strict=True):
        variants.extend(rule.commute() if swap else [rule])
    for sweep in range(1, _MAX_SWEEPS + 1):
        context._begin_sweep()
        applied = 0
        for graph in list(all_graphs(model)):
            for node in graph:
                if node.graph is None:  # removed earlier in this sweep
                    continue
                for rule in variants:
                    context._after_commit.clear()
                    delta = rule.try_rewrite(model, graph, node)
                    if delta is None:
                        continue
                    _commit(model, graph, node, delta, context)
                    for callback in context._after_commit:
                        callback()
                    report.changes[rule.name or type(rule).__name__] += 1
                    applied += 1
                    break
        logger.debug("sweep %d: %d rewrites", sweep, applied)
        if not applied:
            break
    else:
        logger.info("fusion stopped after %d sweeps that all still changed the model", _MAX_SWEEPS)
    report.skipped.update(context._skip_counts())


def _commit(model: ir.Model, graph: ir.Graph | ir.Function, root: ir.Node, delta,
            context: FusionContext) -> None:
    """Put ``delta`` (a ReplacementSubgraph) in place of the matched nodes rooted at ``root``."""
    new_nodes = list(delta.new_nodes)
    if delta.new_initializers:
        if isinstance(graph, ir.Graph) and (graph is model.graph or not context.legacy_ir):
            for value in delta.new_initializers:
                graph.register_initializer(value)
                if context.legacy_ir:  # IR < 4: every initializer must also be a graph input
                    graph.inputs.append(value)
        else:  # functions cannot hold initializers; IR < 4 subgraphs could not list them as inputs
            new_nodes[:0] = [_as_constant_node(value) for value in delta.new_initializers]
    ir.convenience.replace_nodes_and_values(
        graph, root, delta.match.nodes, new_nodes, delta.match.outputs, delta.new_outputs
    )
    context._forget(delta.match.nodes)


def _as_constant_node(value: ir.Value) -> ir.Node:
    """A Constant node producing ``value``'s tensor, taking over ``value``'s uses and name."""
    assert value.const_value is not None
    node = ir.Node("", "Constant", [], [ir.AttrTensor("value", value.const_value)], num_outputs=1)
    output = node.outputs[0]
    output.type, output.shape, output.const_value = value.type, value.shape, value.const_value
    ir.convenience.replace_all_uses_with(value, output)
    output.name = value.name
    return node


def validate_ops(pass_name: str, option: str, ops, allowed: Sequence[str]) -> tuple[str, ...]:
    """Check an op-list option (a non-empty list drawn from ``allowed``); raise PassConfigError."""
    if isinstance(ops, str) or not isinstance(ops, (tuple, list)):
        raise PassConfigError(f"{pass_name}: {option} must be a list of op types, got {ops!r}")
    unknown = [op for op in ops if op not in allowed]
    if unknown or not ops:
        raise PassConfigError(
            f"{pass_name}: {option} must be a non-empty subset of {'|'.join(allowed)}, got {ops!r}"
        )
    return tuple(dict.fromkeys(ops))


def validate_bool(pass_name: str, option: str, value) -> bool:
    """Check a boolean option; raise PassConfigError for anything but ``True``/``False``."""
    if not isinstance(value, bool):
        raise PassConfigError(f"{pass_name}: {option} must be true or false, got {value!r}")
    return value


class FusionPass(SftPass):
    """Base of the fusion passes: build this call's rules, apply them everywhere, count per rule.

    Subclasses implement :meth:`rule_types`; the rules' ``name`` values are the ``changes`` keys.
    """

    clone_shared_weights: bool = False

    def rule_types(self) -> list[type[FusionRule]]:
        """The rule classes this pass applies, in the order they are tried at each node."""
        raise NotImplementedError

    def rule_options(self) -> dict[str, Any]:
        """Keyword options passed to every rule's constructor (after the context)."""
        return {}

    def rewrite(self, model: ir.Model, report: PassReport) -> None:
        """Apply :meth:`rule_types` to every graph of ``model``; see :func:`apply_rules`."""
        context = FusionContext(model, clone_shared_weights=self.clone_shared_weights)
        types = self.rule_types()
        rules = [t.rule(context, **self.rule_options()) for t in types]
        apply_rules(model, rules, [t.commute for t in types], context, report)
