"""Low-rank factorization of Gemm and MatMul with a constant 2-D weight: one product becomes two.

With ``B'`` the ``K x N`` weight as applied (``B'=B^T`` for ``transB=1``) and ``W = B'^T`` the linear map
``y = W x`` (``N x K``), a rank-``r`` factorization ``W ~ L R`` (``L``: ``N x r``, ``R``: ``r x K``) gives::

    Gemm:   Y = alpha * A' B' + beta * C  ->  T = Gemm(A, R^T; alpha, transA),  Y = Gemm(T, L^T, C; beta)
    MatMul: Y = X B                       ->  T = MatMul(X, R^T),                Y = MatMul(T, L^T)

so ``alpha``/``transA`` stay on the first product and the bias ``C`` (with ``beta``) on the second. ``X`` of
MatMul may have any rank >= 2 (batched transformer activations); the weight must be 2-D. Cost per output
row drops from ``K N`` to ``r (K + N)`` MACs (and parameters), a saving only when ``r < K N / (K + N)``.

``L, R`` come from the truncated SVD of ``W`` (weight error), or with calibration data from the whitened
SVD of ``W Sigma^{1/2}`` with ``Sigma = E[x x^T]`` over the layer's input rows (output error), see
:mod:`sftonnx.passes.factorization.lowrank`. Both are exact at full rank.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from typing import Any

import numpy as np
import onnx_ir as ir

from sftonnx import ir_utils
from sftonnx.errors import PassConfigError
from sftonnx.pass_infra import Numerics, PassReport, SftPass
from sftonnx.passes.factorization import _support
from sftonnx.passes.factorization.lowrank import (
    Option,
    WeightedSVD,
    allocate,
    rank_for_energy,
    rank_for_error,
    relative_tail,
)

__all__ = ["FactorizeGemmPass"]

logger = logging.getLogger(__name__)

_OPS = ("Gemm", "MatMul")


@dataclasses.dataclass
class _Site:
    node: ir.Node
    weight: np.ndarray  # B' (K x N) as applied: y_row = x_row @ B'
    rows: int  # output rows per sample (MAC weight); 1 when unknown
    svd: WeightedSVD | None = None
    tail: np.ndarray | None = None

    @property
    def k(self) -> int:
        return int(self.weight.shape[0])

    @property
    def n(self) -> int:
        return int(self.weight.shape[1])

    def macs(self, rank: int | None) -> int:
        per_row = self.k * self.n if rank is None else rank * (self.k + self.n)
        return self.rows * per_row

    def params(self, rank: int | None) -> int:
        return self.k * self.n if rank is None else rank * (self.k + self.n)


class FactorizeGemmPass(SftPass):
    """Replace a Gemm/MatMul with a constant 2-D weight by two thinner products (truncated SVD).

    Matches default-domain ``Gemm`` (any ``alpha``, ``beta``, ``transA``, ``transB``; ``C`` kept on the
    second Gemm) and ``MatMul`` whose second input is a constant 2-D weight (initializer, ``Constant``, or
    ``Transpose``/``Identity`` of one). The rank is chosen per layer by retained energy
    ``sum_{i<=r} s_i^2 / sum s_i^2`` (default 0.9), by a parameter ratio (``r = floor(ratio K N / (K+N))``),
    by a fixed rank, by a relative error bound, or by a global MAC budget over all candidate layers
    (greedy on error removed per MAC). With ``calibration_data`` the singular values are those of the
    whitened ``W Sigma^{1/2}``, so energy and error are output energy and output error. Rewrites nodes in
    If/Loop/Scan bodies (weight-only); with calibration data those are skipped (activations there are not
    observable). Formulas in the module docstring.

    Declines (``skipped`` keys): ``weight_not_constant``, ``weight_shared`` (another node reads the weight),
    ``weight_not_2d``, ``unsupported_dtype``, ``no_mac_reduction`` (chosen rank ``>= K N / (K + N)``),
    ``kept_by_budget`` (the global budget keeps it whole), ``in_subgraph`` (with calibration data),
    ``in_function`` (model-local function bodies), ``not_in_layers``.

    Statistics: changes ``gemm_factorized``, ``matmul_factorized``, ``params_removed``; details
    ``layers`` (per layer: rank, full rank, MACs and params before/after, relative weight error and, with
    data, estimated relative output error) and ``macs_kept`` (fraction over candidate layers).

    Numerics: APPROXIMATE (exact at full rank, up to float re-association).

    Args:
        energy: Keep the smallest rank retaining this fraction of squared singular values, in (0, 1].
        ratio: Keep this fraction of the layer's parameters (and MACs), in (0, 1).
        rank: Use this rank (capped at ``min(K, N)``).
        max_error: Smallest rank whose relative (output, with data; else weight) error is at most this.
        budget: Fraction of the candidate layers' MACs to keep overall, in (0, 1); ranks go where they
            remove the most error per MAC.
        layers: Only these nodes (node or output names); an unknown name is an error.
        ops: Which op types to factor, any of ``Gemm``, ``MatMul``.
        calibration_data: ``.npz`` path, folder of ``.npz`` or iterable of feed dicts: data-aware ranks
            and factors (whitened SVD).
        calibration_samples: Samples of calibration data used at most.
        force: Also rewrite where the rank does not reduce MACs (full-rank checks).
    """

    name = "factorize-gemm"
    numerics = Numerics.APPROXIMATE
    uses_calibration = True

    def __init__(
        self,
        *,
        energy: float | None = None,
        ratio: float | None = None,
        rank: int | None = None,
        max_error: float | None = None,
        budget: float | None = None,
        layers: tuple[str, ...] = (),
        ops: tuple[str, ...] = _OPS,
        calibration_data: Any = None,
        calibration_samples: int = 256,
        force: bool = False,
    ) -> None:
        self.criterion = _support.make_criterion(
            self.name, energy=energy, ratio=ratio, rank=rank, max_error=max_error, budget=budget
        )
        self.energy, self.ratio, self.rank, self.max_error, self.budget = energy, ratio, rank, max_error, budget
        self.layers = tuple(layers)
        bad = [op for op in ops if op not in _OPS]
        if bad or not ops:
            raise PassConfigError(f"{self.name}: ops must be a non-empty subset of Gemm|MatMul, got {list(ops)}")
        self.ops = tuple(ops)
        if isinstance(calibration_samples, bool) or int(calibration_samples) < 1:
            raise PassConfigError(f"{self.name}: calibration_samples must be >= 1, got {calibration_samples}")
        self.calibration_data = calibration_data
        self.calibration_samples = int(calibration_samples)
        self.force = bool(force)

    # ---------------------------------------------------------------------------------------------
    def rewrite(self, model: ir.Model, report: PassReport) -> None:
        """Choose ranks for every candidate, then replace each chosen node by two products."""
        candidates = list(_support.sites(model, self.ops))
        if self.layers:
            known = set().union(*(_support.layer_names(n) for n, _ in candidates)) if candidates else set()
            _support.validate_layers(self.name, self.layers, known)
        data_aware = self.calibration_data is not None
        shapes = _shape_table(model)
        found: list[_Site] = []
        for node, place in candidates:
            if self.layers and not (_support.layer_names(node) & set(self.layers)):
                report.skipped["not_in_layers"] += 1
                continue
            site_or_reason = self._inspect(node, place, data_aware, shapes)
            if isinstance(site_or_reason, str):
                report.skipped[site_or_reason] += 1
                logger.debug("%s: %s skipped: %s", self.name, _support.layer_name(node), site_or_reason)
                continue
            found.append(site_or_reason)
        if not found:
            return
        grams: dict[Any, np.ndarray] = {}
        if data_aware:
            requests = [
                _support.GramRequest(
                    id(site.node),
                    site.node.inputs[0].name or "",
                    transpose=bool(ir_utils.attr(site.node, "transA", 0)) and site.node.op_type == "Gemm",
                )
                for site in found
            ]
            grams = _support.collect_grams(model, requests, self.calibration_data, self.calibration_samples)
        for site in found:
            gram = grams.get(id(site.node))
            site.svd = WeightedSVD.of(site.weight.T, right_gram=None if gram is None else gram[0])
            site.tail = relative_tail(site.svd.energy())
        ranks = self._choose(found, report)
        names = ir_utils.NameAllocator.for_model(model)
        layers: dict[str, Any] = {}
        for site, rank in zip(found, ranks, strict=True):
            if rank is None:
                continue
            if site.params(rank) >= site.params(None) and not self.force:
                report.skipped["no_mac_reduction"] += 1
                continue
            layers[_support.layer_name(site.node)] = self._replace(site, rank, names, data_aware)
            report.changes[f"{site.node.op_type.lower()}_factorized"] += 1
            if site.params(None) > site.params(rank):
                report.changes["params_removed"] += site.params(None) - site.params(rank)
        before = sum(site.macs(None) for site in found)
        after = sum(site.macs(ranks[i]) for i, site in enumerate(found) if _site_rewritten(site, ranks[i], self.force))
        after += sum(site.macs(None) for i, site in enumerate(found) if not _site_rewritten(site, ranks[i], self.force))
        report.details["layers"] = layers
        report.details["macs_kept"] = after / before if before else 1.0

    def _inspect(self, node: ir.Node, place: str | None, data_aware: bool, shapes) -> _Site | str:
        if place == "in_function" or (place == "in_subgraph" and data_aware):
            return place  # the place is the skip key
        if len(node.inputs) < 2 or node.inputs[0] is None:
            return "weight_not_constant"
        array, reason = _support.resolve_weight(node.inputs[1])
        if array is None:
            return reason or "weight_not_constant"
        if array.ndim != 2:
            return "weight_not_2d"
        if ir.DataType.from_numpy(array.dtype) not in _support.FLOAT_TYPES:
            return "unsupported_dtype"
        if node.op_type == "Gemm" and ir_utils.attr(node, "transB", 0):
            array = array.T
        rows = 1
        info = shapes.info(node.inputs[0]) if shapes is not None else None
        if info is not None and info.shape is not None and len(info.shape) >= 2:
            # symbolic dims (batch, or what inference could not resolve after a Reshape) count as 1
            dims = [d if isinstance(d, int) and d > 0 else 1 for d in info.shape]
            if node.op_type == "Gemm":
                rows = dims[1] if ir_utils.attr(node, "transA", 0) else dims[0]
            else:
                rows = math.prod(dims[:-1])
        return _Site(node, np.asarray(array), max(int(rows), 1))

    def _choose(self, sites: list[_Site], report: PassReport) -> list[int | None]:
        kind, value = self.criterion.kind, self.criterion.value
        if kind != "budget":
            ranks: list[int | None] = []
            for site in sites:
                assert site.tail is not None and site.svd is not None
                full = site.svd.full_rank
                if kind == "energy":
                    rank = rank_for_energy(site.tail, value)
                elif kind == "max_error":
                    rank = rank_for_error(site.tail, value)
                elif kind == "rank":
                    rank = min(int(value), full)
                else:  # ratio of parameters
                    rank = min(max(1, math.floor(value * site.k * site.n / (site.k + site.n))), full)
                ranks.append(rank)
            return ranks
        options = []
        for site in sites:
            assert site.tail is not None and site.svd is not None
            layer = [Option(site.macs(None), site.params(None), 0.0, None)]
            for rank in range(1, site.svd.full_rank + 1):
                if site.params(rank) < site.params(None):
                    layer.append(Option(site.macs(rank), site.params(rank), float(site.tail[rank]), rank))
            options.append(layer)
        total = sum(site.macs(None) for site in sites)
        chosen, met = allocate(options, value * total)
        if not met:
            logger.warning("%s: budget %.3g cannot be met even at rank 1 everywhere", self.name, value)
        report.details["budget_met"] = met
        result: list[int | None] = []
        for option in chosen:
            if option.choice is None:
                report.skipped["kept_by_budget"] += 1
            result.append(option.choice)
        return result

    def _replace(self, site: _Site, rank: int, names: ir_utils.NameAllocator, data_aware: bool) -> dict[str, Any]:
        assert site.svd is not None and site.tail is not None
        node = site.node
        graph = node.graph
        assert graph is not None
        left, right = site.svd.factors(rank)  # W (N x K) ~ left (N x r) @ right (r x K)
        dtype = site.weight.dtype
        base = _support.layer_name(node)
        first_weight = _support.add_initializer(graph, names, f"{base}_lowrank_in", right.T.astype(dtype))
        second_weight = _support.add_initializer(graph, names, f"{base}_lowrank_out", left.T.astype(dtype))
        if node.op_type == "Gemm":
            first_attrs: dict[str, Any] = {}
            alpha = float(ir_utils.attr(node, "alpha", 1.0))
            if alpha != 1.0:
                first_attrs["alpha"] = alpha
            if ir_utils.attr(node, "transA", 0):
                first_attrs["transA"] = 1
            # Before opset 11 Gemm's C is required: give the factors zero biases there.
            needs_c = _default_opset(graph) < 11
            first_inputs = [node.inputs[0], first_weight]
            if needs_c:
                zeros = np.zeros(rank, dtype=dtype)
                first_inputs.append(_support.add_initializer(graph, names, f"{base}_lowrank_zero", zeros))
            first = ir.node("Gemm", first_inputs, first_attrs, name=names(f"{base}_lowrank_in"))
            bias = node.inputs[2] if len(node.inputs) > 2 else None
            if bias is None and needs_c:
                zeros = np.zeros(left.shape[0], dtype=dtype)
                bias = _support.add_initializer(graph, names, f"{base}_lowrank_bias", zeros)
            second_attrs: dict[str, Any] = {}
            beta = float(ir_utils.attr(node, "beta", 1.0))
            if bias is not None and beta != 1.0:
                second_attrs["beta"] = beta
            inputs = [first.outputs[0], second_weight] + ([bias] if bias is not None else [])
            second = ir.node("Gemm", inputs, second_attrs, name=names(f"{base}_lowrank_out"))
        else:
            first = ir.node("MatMul", [node.inputs[0], first_weight], name=names(f"{base}_lowrank_in"))
            second = ir.node("MatMul", [first.outputs[0], second_weight], name=names(f"{base}_lowrank_out"))
        first.outputs[0].name = names(f"{base}_lowrank")
        first.outputs[0].type = ir.TensorType(ir.DataType.from_numpy(dtype))
        ir.convenience.replace_nodes_and_values(
            graph, node, [node], [first, second], [node.outputs[0]], [second.outputs[0]]
        )
        reconstructed = (left @ right).T
        weight = site.weight.astype(np.float64)
        norm = float(np.linalg.norm(weight))
        record: dict[str, Any] = {
            "op": node.op_type,
            "rank": rank,
            "full_rank": site.svd.full_rank,
            "macs_before": site.macs(None),
            "macs_after": site.macs(rank),
            "params_before": site.params(None),
            "params_after": site.params(rank),
            "weight_error": float(np.linalg.norm(weight - reconstructed) / norm) if norm else 0.0,
        }
        if data_aware:
            record["output_error"] = float(np.sqrt(site.tail[rank]))
        logger.debug("%s: %s rank %d of %d", self.name, base, rank, site.svd.full_rank)
        return record


def _site_rewritten(site: _Site, rank: int | None, force: bool) -> bool:
    return rank is not None and (force or site.params(rank) < site.params(None))


def _shape_table(model: ir.Model):
    """Inferred shapes (batch 1) for MAC weights, or ``None`` when inference is impossible."""
    from sftonnx.analysis import infer_tensor_shapes

    try:
        return infer_tensor_shapes(model)
    except Exception as error:  # noqa: BLE001 - MAC weights are a refinement; fall back to per-row costs
        logger.debug("shape inference failed: %s", error)
        return None


def _default_opset(graph: ir.Graph) -> int:
    imports = graph.opset_imports
    return imports.get("", imports.get("ai.onnx", 0))
