"""Factorized convolutions: depthwise-separable, spatially separable (Kx1 + 1xK) and Tucker-2.

Notation: ``W`` is ``O x C_i x k`` per group (``O = C_out``, ``C_i = C_in / group``, ``k`` the kernel, ``K`` its
number of taps), ``g`` the group count, ``P`` the output pixels. Costs are MACs per output pixel.

``separable`` (depthwise multiplier ``m``): for each input channel ``c`` the slice ``S_c = W[:, c, :]``
(``C_o x K``, ``C_o = O / g``) is truncated to rank ``m``: ``S_c ~ sum_t p_{c,t} d_{c,t}^T``. The filters
``d_{c,t}`` form a depthwise Conv (``group = C_in``, output channel ``c m + t`` - ONNX puts the ``m``
outputs of input channel ``c`` consecutively) that carries the original strides, pads/auto_pad and
dilations; the vectors ``p_{c,t}`` form a 1x1 Conv (``group = g``, input channel ``c_local m + t``) with
the bias. Exact for ``m = min(C_o, K)``. Cost ``C_in m K + O C_i m`` vs ``O C_i K``.

``spatial`` (2-D, rank ``r`` per group): ``M[(c, a), (o, b)] = W[o, c, a, b]`` (``C_i k_h x C_o k_w``) is
truncated to rank ``r``: ``M ~ V H``. ``V`` is a ``k_h x 1`` Conv (``C_in -> g r``) with the vertical
stride, dilation and pads (top/bottom) or ``auto_pad``; ``H`` a ``1 x k_w`` Conv (``g r -> O``) with the
horizontal ones (left/right) and the bias. The first Conv has no bias, so horizontal zero padding of its
output equals padding its input: exact for ``r = min(C_i k_h, C_o k_w)``. Cost
``g r C_i k_h (W_in / W_out) + O r k_w``.

``tucker`` (ranks ``r1``, ``r2`` per group): ``W ~ G x_in A^T x_out U`` - a 1x1 Conv ``A`` (``C_in -> g r1``,
no padding, stride 1, so it commutes with zero padding), the core ``k`` Conv ``G`` (``g r1 -> g r2``) with the
original geometry, and a 1x1 Conv ``U`` (``g r2 -> O``) with the bias; a factor at full rank is left out
(Tucker-1). ``A`` starts from the SVD of the input unfolding (HOSVD); the core and ``U`` are then fitted
given ``A`` (least squares, then SVD of the output unfolding), and ``iterations`` HOOI rounds refit ``A``
against the projected output. A 1x1 kernel is factored as two 1x1 Convs (rank ``r``, the first one with
the original geometry). Cost ``g r1 C_i (P_in / P) + g r2 r1 K + O r2``.

Data-aware (calibration data): ``Sigma_p = E[p p^T]`` over im2col patches ``p`` (per group) weights each
fit by the layer's inputs, so factors minimize output rather than weight error: separable uses each
channel's ``K x K`` diagonal block of ``Sigma_p``, spatial the vertical-patch autocorrelation (taps at the
same horizontal offset averaged), Tucker the channel autocorrelation (taps averaged) for ``A`` and the full
``Sigma_p`` for the core and ``U`` (``E ||W p - W_hat p||^2 = tr(dW Sigma_p dW^T)``). Cross-channel (separable)
and cross-column (spatial) correlations are ignored in those fits; at full rank all stay exact.
"""

from __future__ import annotations

import logging
import math
from typing import Any, Literal

import numpy as np
import onnx_ir as ir

from sftonnx import ir_utils
from sftonnx.errors import PassConfigError
from sftonnx.pass_infra import Numerics, PassReport, SftPass
from sftonnx.passes.factorization import _support
from sftonnx.passes.factorization._conv_modes import (
    Built,
    ConvSite,
    FactorMode,
    Pointwise,
    Separable,
    Spatial,
    Tucker,
)
from sftonnx.passes.factorization.lowrank import (
    Option,
    allocate,
)

__all__ = ["MODES", "FactorizeConvPass"]

logger = logging.getLogger(__name__)

Mode = Literal["auto", "separable", "spatial", "tucker"]
#: Concrete factorization modes (``auto`` chooses among them per Conv).
MODES = ("separable", "spatial", "tucker")


# ------------------------------------------------------------------------------------------- the pass
class FactorizeConvPass(SftPass):
    """Replace Convs by cheaper factored Conv chains: depthwise-separable, Kx1+1xK, or Tucker-2.

    Matches default-domain ``Conv`` with a constant weight (initializer or ``Constant``; ``Transpose``/
    ``Identity`` of one), any strides, explicit or ``auto_pad`` padding, dilations, groups and bias (kept on
    the last Conv of the chain, which may be any value). ``mode`` picks the factorization (formulas in the
    module docstring); ``auto`` evaluates every mode that applies and keeps the cheapest that meets the
    rank criterion (or, under ``budget``, lets the allocation choose among all of them). Ranks: retained
    energy of each mode's spectrum (default 0.9; Tucker applies it to both unfoldings), a parameter
    ratio, a fixed rank (separable multiplier, spatial rank, Tucker ``r1 = r2``), a relative error bound,
    or a global MAC budget over all candidate Convs (greedy on error removed per MAC). With
    ``calibration_data`` spectra and factors are whitened by the layer's im2col input autocorrelation
    (output error instead of weight error). Rewrites Convs in If/Loop/Scan bodies (weight-only); with
    calibration data those are skipped. A mode requested explicitly that applies to no Conv raises
    ``ir.passes.PreconditionError`` from :meth:`requires`.

    Declines (``skipped`` keys): ``weight_not_constant``, ``weight_shared``, ``unsupported_dtype``,
    ``kernel_1x1`` (separable, spatial), ``kernel_1d`` (spatial: a kernel side of 1), ``not_2d`` (spatial
    on a 1-D/3-D Conv), ``depthwise`` (separable on a Conv with one input and one output channel per
    group), ``no_mac_reduction`` (the chosen ranks do not reduce MACs), ``kept_by_budget``,
    ``in_subgraph`` (with calibration data), ``in_function``, ``not_in_layers``.

    Statistics: changes ``separable_factorized``, ``spatial_factorized``, ``tucker_factorized``,
    ``pointwise_factorized`` (Tucker mode on 1x1 kernels), ``params_removed``; details ``layers`` (per
    Conv: mode, ranks, MACs and params before/after, relative weight error and, with data, relative
    output error on the calibration patches) and ``macs_kept`` (fraction over candidate Convs).

    Numerics: APPROXIMATE (exact at full rank up to float re-association).

    Args:
        mode: ``separable``, ``spatial``, ``tucker``, or ``auto`` (cheapest applicable per Conv).
        energy: Smallest ranks retaining this fraction of each spectrum's squared singular values, (0, 1].
        ratio: Keep at most this fraction of each Conv's parameters, in (0, 1).
        rank: Use this rank (capped per Conv).
        max_error: Cheapest ranks whose relative (output, with data; else weight) error is at most this.
        budget: Fraction of the candidate Convs' MACs to keep overall, in (0, 1).
        layers: Only these Convs (node or output names); an unknown name is an error.
        iterations: HOOI refinement rounds for Tucker (0 = sequentially truncated HOSVD).
        calibration_data: ``.npz`` path, folder of ``.npz`` or iterable of feed dicts (data-aware fits).
        calibration_samples: Samples of calibration data used at most.
        force: Also rewrite where the factorization does not reduce MACs (full-rank checks).
    """

    name = "factorize-conv"
    numerics = Numerics.APPROXIMATE
    uses_calibration = True

    def __init__(
        self,
        *,
        mode: Mode = "auto",
        energy: float | None = None,
        ratio: float | None = None,
        rank: int | None = None,
        max_error: float | None = None,
        budget: float | None = None,
        layers: tuple[str, ...] = (),
        iterations: int = 2,
        calibration_data: Any = None,
        calibration_samples: int = 256,
        force: bool = False,
    ) -> None:
        if mode not in ("auto", *MODES):
            raise PassConfigError(f"{self.name}: mode must be auto|separable|spatial|tucker, got {mode!r}")
        self.mode = mode
        self.criterion = _support.make_criterion(
            self.name, energy=energy, ratio=ratio, rank=rank, max_error=max_error, budget=budget
        )
        self.energy, self.ratio, self.rank, self.max_error, self.budget = energy, ratio, rank, max_error, budget
        self.layers = tuple(layers)
        if isinstance(iterations, bool) or int(iterations) != iterations or not 0 <= iterations <= 50:
            raise PassConfigError(f"{self.name}: iterations must be an integer in [0, 50], got {iterations}")
        self.iterations = int(iterations)
        if isinstance(calibration_samples, bool) or int(calibration_samples) < 1:
            raise PassConfigError(f"{self.name}: calibration_samples must be >= 1, got {calibration_samples}")
        self.calibration_data = calibration_data
        self.calibration_samples = int(calibration_samples)
        self.force = bool(force)

    # ----------------------------------------------------------------------------------- requires
    def requires(self, model: ir.Model) -> None:
        """An explicitly requested mode must apply to at least one (selected) Conv.

        Raises:
            ir.passes.PreconditionError: ``mode`` is not ``auto`` and no Conv can take it.
        """
        if self.mode == "auto":
            return
        candidates = list(_support.sites(model, ("Conv",)))
        if self.layers:
            known = set().union(*(_support.layer_names(n) for n, _ in candidates)) if candidates else set()
            if not set(self.layers) <= known:
                return  # rewrite() reports the unknown names as a configuration error
        reasons: dict[str, int] = {}
        for node, place in candidates:
            if self.layers and not (_support.layer_names(node) & set(self.layers)):
                continue
            conv = self._inspect(node, place)
            reason = conv if isinstance(conv, str) else _mode_reason(self.mode, conv)
            if reason is None:
                return
            reasons[reason] = reasons.get(reason, 0) + 1
        why = ", ".join(f"{k}: {v}" for k, v in sorted(reasons.items())) or "the model has no Conv"
        raise ir.passes.PreconditionError(f"{self.name}: mode={self.mode} applies to no Conv in this model ({why})")

    # ------------------------------------------------------------------------------------ rewrite
    def rewrite(self, model: ir.Model, report: PassReport) -> None:
        """Pick modes and ranks for every candidate Conv, then replace each chosen one by its chain."""
        candidates = list(_support.sites(model, ("Conv",)))
        if self.layers:
            known = set().union(*(_support.layer_names(n) for n, _ in candidates)) if candidates else set()
            _support.validate_layers(self.name, self.layers, known)
        convs: list[ConvSite] = []
        for node, place in candidates:
            if self.layers and not (_support.layer_names(node) & set(self.layers)):
                report.skipped["not_in_layers"] += 1
                continue
            conv = self._inspect(node, place)
            if isinstance(conv, str):
                report.skipped[conv] += 1
                logger.debug("%s: %s skipped: %s", self.name, _support.layer_name(node), conv)
                continue
            convs.append(conv)
        if not convs:
            return
        _fill_pixels(model, convs)
        if self.calibration_data is not None:
            requests = [
                _support.GramRequest(id(c.node), c.node.inputs[0].name or "", geometry=c.geometry) for c in convs
            ]
            grams = _support.collect_grams(model, requests, self.calibration_data, self.calibration_samples)
            for conv in convs:
                conv.gram = grams.get(id(conv.node))
        analyses: list[list[FactorMode]] = []
        usable: list[ConvSite] = []
        for conv in convs:
            modes, reason = self._modes(conv)
            if not modes:
                report.skipped[reason or "no_mac_reduction"] += 1
                continue
            usable.append(conv)
            analyses.append(modes)
        choices = self._choose(usable, analyses, report)
        names = ir_utils.NameAllocator.for_model(model)
        layers: dict[str, Any] = {}
        before = sum(c.macs for c in usable)
        after = 0.0
        for conv, modes, choice in zip(usable, analyses, choices, strict=True):
            if choice is None:
                after += conv.macs
                continue
            mode = next(m for m in modes if m.name == choice[0])
            macs, params = mode.cost(choice[1])
            if not self.force and macs >= conv.macs:
                report.skipped["no_mac_reduction"] += 1
                after += conv.macs
                continue
            built = mode.build(choice[1])
            layers[_support.layer_name(conv.node)] = self._replace(conv, mode, choice[1], built, names, macs, params)
            key = "pointwise_factorized" if isinstance(mode, Pointwise) else f"{mode.name}_factorized"
            report.changes[key] += 1
            if conv.params > params:
                report.changes["params_removed"] += conv.params - params
            after += macs
        report.details["layers"] = layers
        report.details["macs_kept"] = after / before if before else 1.0

    def _inspect(self, node: ir.Node, place: str | None) -> ConvSite | str:
        if place == "in_function" or (place == "in_subgraph" and self.calibration_data is not None):
            return place  # the place is the skip key
        if len(node.inputs) < 2 or node.inputs[0] is None:
            return "weight_not_constant"
        array, reason = _support.resolve_weight(node.inputs[1])
        if array is None:
            return reason or "weight_not_constant"
        if array.ndim < 3:
            return "weight_not_constant"
        if ir.DataType.from_numpy(array.dtype) not in _support.FLOAT_TYPES:
            return "unsupported_dtype"
        geometry = _support.ConvGeometry.of(node, array.shape)
        if (
            geometry.group < 1
            or array.shape[0] % geometry.group
            or len(geometry.kernel) != array.ndim - 2
            or tuple(array.shape[2:]) != geometry.kernel
        ):
            return "weight_not_constant"
        return ConvSite(node, array.astype(np.float64), array.dtype, geometry)

    def _modes(self, conv: ConvSite) -> tuple[list[FactorMode], str | None]:
        wanted = MODES if self.mode == "auto" else (self.mode,)
        modes: list[FactorMode] = []
        first_reason = None
        for name in wanted:
            reason = _mode_reason(name, conv)
            if reason is not None:
                first_reason = first_reason or reason
                continue
            if name == "separable":
                modes.append(Separable(conv))
            elif name == "spatial":
                modes.append(Spatial(conv))
            elif conv.taps == 1:
                modes.append(Pointwise(conv))
            else:
                modes.append(Tucker(conv, self.iterations))
        return modes, first_reason

    def _choose(self, convs: list[ConvSite], analyses: list[list[FactorMode]], report: PassReport) -> list[Any]:
        kind, value = self.criterion.kind, self.criterion.value
        if kind == "budget":
            candidates = []
            for conv, modes in zip(convs, analyses, strict=True):
                options = [Option(conv.macs, conv.params, 0.0, None)]
                for mode in modes:
                    options.extend(o for o in mode.options() if o.macs < conv.macs)
                candidates.append(options)
            chosen, met = allocate(candidates, value * sum(c.macs for c in convs))
            if not met:
                logger.warning("%s: budget %.3g cannot be met even at the smallest ranks", self.name, value)
            report.details["budget_met"] = met
            result = []
            for option in chosen:
                if option.choice is None:
                    report.skipped["kept_by_budget"] += 1
                result.append(option.choice)
            return result
        result = []
        for conv, modes in zip(convs, analyses, strict=True):
            picks = [self._pick(conv, mode, kind, value) for mode in modes]
            reducing = [p for p in picks if p.macs < conv.macs] or ([] if not self.force else picks)
            best = min(reducing, key=lambda o: o.macs) if reducing else picks[0]
            result.append(best.choice)
        return result

    def _pick(self, conv: ConvSite, mode: FactorMode, kind: str, value: float) -> Option:
        if kind == "energy":
            return mode.option(mode.by_energy(value))
        if kind == "rank":
            return mode.option(mode.by_rank(int(value)))
        options = sorted(mode.options(), key=lambda o: (o.macs, o.error))
        if kind == "ratio":
            fitting = [o for o in options if o.params <= value * conv.params]
            return min(fitting, key=lambda o: o.error) if fitting else options[0]
        fitting = [o for o in options if np.sqrt(o.error) <= value]  # max_error
        return fitting[0] if fitting else min(options, key=lambda o: o.error)

    def _replace(
        self,
        conv: ConvSite,
        mode: FactorMode,
        ranks: tuple[int, ...],
        built: Built,
        names: ir_utils.NameAllocator,
        macs: float,
        params: int,
    ) -> dict[str, Any]:
        node = conv.node
        graph = node.graph
        assert graph is not None
        base = _support.layer_name(node)
        bias = node.inputs[2] if len(node.inputs) > 2 else None
        current = node.inputs[0]
        new_nodes = []
        element = ir.TensorType(ir.DataType.from_numpy(conv.dtype))
        for index, layer in enumerate(built.layers):
            weight = _support.add_initializer(
                graph, names, f"{base}_{mode.name}{index}_weight", layer.weight.astype(conv.dtype)
            )
            last = index == len(built.layers) - 1
            inputs = [current, weight] + ([bias] if last and bias is not None else [])
            new = ir.node("Conv", inputs, layer.attributes, name=names(f"{base}_{mode.name}{index}"))
            if not last:
                new.outputs[0].name = names(f"{base}_{mode.name}{index}_out")
                new.outputs[0].type = element
            new_nodes.append(new)
            current = new.outputs[0]
        ir.convenience.replace_nodes_and_values(graph, node, [node], new_nodes, [node.outputs[0]], [current])
        delta = conv.weight - built.reconstructed
        norm = float(np.linalg.norm(conv.weight))
        record: dict[str, Any] = {
            "mode": mode.name if not isinstance(mode, Pointwise) else "pointwise",
            "ranks": list(ranks),
            "macs_before": conv.macs,
            "macs_after": macs,
            "params_before": conv.params,
            "params_after": params,
            "weight_error": float(np.linalg.norm(delta) / norm) if norm else 0.0,
        }
        if conv.gram is not None:
            record["output_error"] = _output_error(conv, delta)
        logger.debug("%s: %s -> %s %s", self.name, base, mode.name, ranks)
        return record


def _mode_reason(mode: str, conv: ConvSite) -> str | None:
    """Why ``mode`` cannot factor ``conv`` structurally (``None`` when it can)."""
    if mode == "tucker":
        return None
    if conv.taps == 1:
        return "kernel_1x1"
    if mode == "separable":
        return "depthwise" if conv.ci == 1 and conv.co == 1 else None
    if conv.geometry.rank != 2:
        return "not_2d"
    if 1 in conv.geometry.kernel:
        return "kernel_1d"
    return None


def _output_error(conv: ConvSite, delta: np.ndarray) -> float:
    """``sqrt(tr(dW Sigma_p dW^T) / tr(W Sigma_p W^T))`` over groups (relative output error on the data)."""
    assert conv.gram is not None
    g = conv.g
    d = delta.reshape(g, conv.co, -1)
    w = conv.weight.reshape(g, conv.co, -1)
    num = float(np.einsum("goi,gij,goj->", d, conv.gram, d))
    den = float(np.einsum("goi,gij,goj->", w, conv.gram, w))
    return float(np.sqrt(max(num, 0.0) / den)) if den > 0 else 0.0


def _fill_pixels(model: ir.Model, convs: list[ConvSite]) -> None:
    """Output pixels per sample and input/output pixel ratios from inferred shapes (else from strides)."""
    from sftonnx.analysis import infer_tensor_shapes

    try:
        shapes = infer_tensor_shapes(model)
    except Exception as error:  # noqa: BLE001 - MAC weights are a refinement; fall back to strides
        logger.debug("shape inference failed: %s", error)
        shapes = None
    for conv in convs:
        geo = conv.geometry
        conv.in_ratio = float(math.prod(geo.strides))
        conv.width_ratio = float(geo.strides[-1])
        info = shapes.info(conv.node.inputs[0]) if shapes is not None else None
        x = info.shape if info is not None else None
        if x is None or len(x) != geo.rank + 2 or not all(isinstance(d, int) and d > 0 for d in x[2:]):
            continue
        out = geo.output_size(x[2:])
        if min(out) <= 0:
            continue
        conv.out_pixels = int(math.prod(out))
        conv.in_ratio = math.prod(x[2:]) / conv.out_pixels
        conv.width_ratio = x[-1] / out[-1]

