"""Static int8 quantization in QDQ form (``quantize``): QuantizeLinear/DequantizeLinear pairs around int8 ops.

The model stays standard ONNX (TensorRT-style explicit quantization); onnxruntime's CPU EP fuses each
``DQ -> op -> Q`` group into an integer kernel (QLinearConv, QGemm, QLinearMatMul, QLinearAdd,
QLinearConcat, QLinearAveragePool, ...) and drops the pairs around data-movement ops (MaxPool, Reshape,
Transpose, Flatten, Squeeze, Unsqueeze), which then run on int8 data. The phases follow onnxruntime's
quantizer (``onnxruntime/quantization/qdq_quantizer.py``): choose tensors, calibrate, insert one Q/DQ pair
per chosen tensor; the code is ours.

Quantization (``q`` integer, ``x`` real)::

    q = clip(round(x / s) + z, qmin, qmax),        x ~ (q - z) * s

* Weights (Conv, ConvTranspose, Gemm, MatMul with a constant ``B``): int8, symmetric (``z = 0``),
  ``s_c = max |W_c| / 127`` per output channel ``c`` by default (63 with ``reduce_range``). The channel axis
  is the weight's output-channel axis: Conv ``[Cout, Cin/g, k...]`` axis 0; ConvTranspose ``[Cin, Cout/g,
  k...]`` axis 1; Gemm ``B`` axis 0 with ``transB=1`` else axis 1; MatMul ``B [..., K, N]`` the last axis.
  They are stored as int8 initializers read by a DequantizeLinear; the float copies are removed.
* Biases (Conv/ConvTranspose input 2, Gemm ``C``): int32, ``z = 0``, ``s_b[c] = s_x * s_w[c]`` (the scale of the
  integer accumulator, which the fused kernels add the bias to). A channel whose bias would overflow int32
  gets a larger weight scale ``s_w[c] = |b_c| / (s_x (2**31 - 1))``.
* Activations: one scale per tensor, from the calibrated range ``[lo, hi]`` (``lo <= 0 <= hi``):
  ``uint8`` asymmetric ``s = (hi - lo) / 255, z = round(-lo / s)`` (default), or ``int8`` symmetric
  ``s = max(|lo|, |hi|) / 127, z = 0``.

Shared scales (one range, the union of the members' ranges, for a group of tensors): a Concat's inputs and
output (QLinearConcat is then a copy); a data-movement op's input and output (onnxruntime drops the DQ/Q pair
only when they match). A Relu or Clip directly after a quantized op (its sole reader) is folded into the
op's output range: only the activation's output is quantized (with ``uint8`` its zero point is 0 = qmin, so
onnxruntime removes the Relu/Clip and the clamping happens in the integer kernel); with symmetric ``int8`` the
op's output is quantized too, with the activation output's scale (saturating the negative side is harmless
before a Relu).

Declined sites are counted in ``skipped`` and listed in ``details["float_nodes"]`` (never dropped silently):
``excluded``, ``op_not_quantizable`` (op types with no int8 kernel, listed in ``details["float_op_types"]``),
``input_not_float``, ``weight_not_constant``, ``gemm_beta``, ``degenerate_range`` (a tensor whose calibrated
range is empty: constant zeros or never seen; it stays float and so do the nodes that need it),
``activation_not_fusable`` (a Relu/Clip not directly after a quantized op), ``clip_bounds_not_constant``,
``maxpool_indices_used``, ``in_subgraph`` (nodes in If/Loop/Scan bodies and functions are left alone),
``not_int8_in_onnxruntime`` (``check_kernels``: onnxruntime would run the node in float between DQ and Q,
so its pairs are removed), ``kept_float_for_accuracy`` (``max_error``), and ``slower_than_float``
(``ensure_faster``: the whole model is restored).

Calibration data is required (exit 2 without it) unless ``allow_random=true``, which calibrates on seeded
N(0, 1) inputs, logs a warning and records ``details["calibration"]``: random inputs do not exercise the
ranges of real data, so the result is only good for structure tests and latency measurements.

CPU features: without VNNI (``avx512_vnni``/``avx_vnni`` in ``/proc/cpuinfo``), x86 u8s8 kernels sum pairs of
``u8 * s8`` products in int16 (``vpmaddubsw``), which saturates; ``reduce_range`` (default: automatic)
quantizes weights to 7 bits there, as onnxruntime recommends. ``target=cuda`` warns (the CUDA EP has few
int8 kernels; use TensorRT or ``fp16``); ``target=tensorrt`` forces symmetric int8 activations.

Before planning, the main graph is prepared (each step counted): an opset below 13 is converted
(``opset_upgraded``), unnamed or duplicate-named nodes get unique names (``nodes_renamed``), Clip bounds computed
by Cast/CastLike of constants become initializers (``clip_bounds_folded``) and two-input Sums become Adds
(``sums_rewritten_as_add``). A call that quantizes no node (or finds int8 slower) puts the model back exactly as
it came in and reports no change.

Statistics: changes ``nodes_quantized``, ``activations_quantized``, ``weights_quantized``,
``biases_quantized``, ``constants_quantized``, ``channels_equalized``, ``biases_corrected``,
``channels_smoothed``, ``opset_upgraded``, ``nodes_renamed``, ``clip_bounds_folded``, ``sums_rewritten_as_add``;
skipped as listed above; details ``calibration``, ``method``, ``float_nodes``
(``{node: reason}``), ``float_op_types``, ``int8_ops`` (onnxruntime's integer kernels, by op type),
``reduce_range``, ``latency_ms`` (``{"float": ..., "int8": ...}``), ``sensitivity``, ``error``, ``warnings``.
"""

from __future__ import annotations

import collections
import logging
import re
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Literal, NamedTuple

import numpy as np
import onnx_ir as ir

from sftonnx import io
from sftonnx.errors import PassConfigError
from sftonnx.ir_utils import adopt_model, nested_node_count, restore_model, upgrade_opset
from sftonnx.pass_infra import Numerics, PassReport, SftPass
from sftonnx.passes.quantization import calibration as calib
from sftonnx.passes.quantization._build import build_quantized
from sftonnx.passes.quantization._kernels import INTEGER_OPS, cpu_has_vnni, float_islands, ort_optimized_graph
from sftonnx.passes.quantization._plan import NameGraph, Plan, make_plan
from sftonnx.passes.quantization._prerewrite import fold_clip_bounds, name_nodes, sum_to_add
from sftonnx.passes.quantization._sites import COMPUTE_OPS, PASS_THROUGH_OPS, calibration_tensors, find_sites
from sftonnx.passes.quantization.calibration import CalibrationSource
from sftonnx.timing import median_latencies as measure_latency

__all__ = [
    "COMPUTE_OPS",
    "INTEGER_OPS",
    "PASS_THROUGH_OPS",
    "QuantizeStaticPass",
    "StaticCandidate",
    "StaticQuantizer",
    "cpu_has_vnni",
    "decline",
    "drop_float_islands",
    "float_islands",
    "measure_latency",
    "ort_optimized_graph",
    "prepare",
]

logger = logging.getLogger(__name__)

_MIN_OPSET = 13  # per-axis DequantizeLinear


class QuantizeStaticPass(SftPass):
    """Static int8 quantization with QuantizeLinear/DequantizeLinear pairs (see the module docstring).

    Args:
        method: Activation range calibration: ``minmax``, ``percentile``, ``entropy`` (KL) or ``mse``.
        per_channel: Per-output-channel weight scales (else one per tensor).
        activation: ``uint8`` (asymmetric) or ``int8`` (symmetric, zero point 0) activations.
        calibration_data: ``.npz`` path, folder of ``.npz`` or an iterable of feed dicts (required unless
            ``allow_random``).
        allow_random: With no calibration data, calibrate on random N(0,1) inputs (a warning is recorded).
        percentile: Kept share of values for ``method=percentile``, in percent.
        max_samples: Calibration samples used at most (0: all).
        batch_size: Samples per calibration batch read from files.
        exclude_nodes: Node names to leave in float.
        exclude_op_types: Op types to leave in float.
        exclude_pattern: Regular expression; nodes whose name matches stay float.
        reduce_range: 7-bit weights; default: on for x86 CPUs without VNNI (u8s8 saturation), else off.
        target: ``cpu``, ``cuda`` (warns: few int8 kernels) or ``tensorrt`` (forces symmetric int8).
        check_kernels: Load the result in onnxruntime, find nodes it would run in float between DQ and Q,
            and remove their pairs (repeated until none is left).
        ensure_faster: Measure latency (interleaved, medians) and keep the float model unless int8 is faster.
        equalize: Cross-layer equalization of Conv -> Relu -> Conv chains before calibration (data-free).
        bias_correction: Correct each quantized layer's bias by ``E[W_q x] - E[W x]`` (calibration means).
        smooth_alpha: SmoothQuant migration strength for MatMul/Gemm inputs (none: off; 0.5 typical).
        max_error: Keep the most sensitive layers float until the output error on calibration samples is at
            most this (see ``error_metric``); none: off.
        error_metric: ``cosine`` (``1 - cosine``, worst output), ``max_abs`` or ``mean_abs`` (relative to the
            mean absolute float output).
        sensitivity_samples: Calibration samples kept for the sensitivity analysis and the speed check.
    """

    name = "quantize"
    numerics = Numerics.APPROXIMATE
    uses_calibration = True

    def __init__(
        self,
        *,
        method: Literal["minmax", "percentile", "entropy", "mse"] = "minmax",
        per_channel: bool = True,
        activation: Literal["uint8", "int8"] = "uint8",
        calibration_data: Any = None,
        allow_random: bool = False,
        percentile: float = 99.99,
        max_samples: int = 1024,
        batch_size: int = 32,
        exclude_nodes: tuple[str, ...] = (),
        exclude_op_types: tuple[str, ...] = (),
        exclude_pattern: str | None = None,
        reduce_range: bool | None = None,
        target: Literal["cpu", "cuda", "tensorrt"] = "cpu",
        check_kernels: bool = True,
        ensure_faster: bool = False,
        equalize: bool = False,
        bias_correction: bool = False,
        smooth_alpha: float | None = None,
        max_error: float | None = None,
        error_metric: Literal["cosine", "max_abs", "mean_abs"] = "cosine",
        sensitivity_samples: int = 64,
    ) -> None:
        if method not in calib.METHODS:
            raise PassConfigError(f"quantize: method must be one of {'|'.join(calib.METHODS)}, got '{method}'")
        if activation not in ("uint8", "int8"):
            raise PassConfigError(f"quantize: activation must be uint8 or int8, got '{activation}'")
        if target not in ("cpu", "cuda", "tensorrt"):
            raise PassConfigError(f"quantize: target must be cpu, cuda or tensorrt, got '{target}'")
        if not 50.0 < percentile <= 100.0:
            raise PassConfigError(f"quantize: percentile must be in (50, 100], got {percentile}")
        if max_samples < 0 or batch_size < 1 or sensitivity_samples < 1:
            raise PassConfigError("quantize: max_samples >= 0, batch_size >= 1 and sensitivity_samples >= 1")
        if smooth_alpha is not None and not 0.0 <= smooth_alpha <= 1.0:
            raise PassConfigError(f"quantize: smooth_alpha must be in [0, 1], got {smooth_alpha}")
        if max_error is not None and max_error < 0:
            raise PassConfigError(f"quantize: max_error must be >= 0, got {max_error}")
        if error_metric not in ("cosine", "max_abs", "mean_abs"):
            raise PassConfigError(f"quantize: error_metric must be cosine, max_abs or mean_abs, got '{error_metric}'")
        if exclude_pattern:
            try:
                re.compile(exclude_pattern)
            except re.error as error:
                raise PassConfigError(f"quantize: exclude_pattern is not a regular expression: {error}") from None
        if calibration_data is None and not allow_random:
            raise PassConfigError(
                "quantize: no calibration data. Give representative inputs (--calibration-data FILE.npz or a "
                "folder of .npz; API: calibration_data=...), or pass allow_random=true to calibrate on random "
                "N(0,1) inputs (the ranges will not match real data)."
            )
        self.method = method
        self.per_channel = per_channel
        self.activation = activation
        self.calibration_data = calibration_data
        self.allow_random = allow_random
        self.percentile = percentile
        self.max_samples = max_samples
        self.batch_size = batch_size
        self.exclude_nodes = tuple(exclude_nodes)
        self.exclude_op_types = tuple(exclude_op_types)
        self.exclude_pattern = exclude_pattern
        self.reduce_range = reduce_range
        self.target = target
        self.check_kernels = check_kernels
        self.ensure_faster = ensure_faster
        self.equalize = equalize
        self.bias_correction = bias_correction
        self.smooth_alpha = smooth_alpha
        self.max_error = max_error
        self.error_metric = error_metric
        self.sensitivity_samples = sensitivity_samples

    # ---------------------------------------------------------------------------------------- rewrite
    def rewrite(self, model: ir.Model, report: PassReport) -> None:
        """Calibrate, plan and insert Q/DQ; then check kernels, accuracy and speed as configured."""
        from sftonnx.passes.quantization import recovery

        details = report.details
        warnings: list[str] = []
        original = io.to_bytes(model)  # restored as is when nothing is quantized or int8 turns out slower
        prepare(model, report)
        symmetric, activation, reduce_range = self._scheme(details, warnings)
        if nested := nested_node_count(model):
            report.skipped["in_subgraph"] += nested

        source = CalibrationSource(self.calibration_data, model, batch_size=self.batch_size,
                                   max_samples=self.max_samples or None, allow_random=self.allow_random)
        details["calibration"] = source.description
        details["method"] = self.method
        if source.random:
            warnings.append("calibrated on random inputs: ranges do not reflect real data")
        if self.equalize:
            report.changes["channels_equalized"] += recovery.equalize_cross_layer(model)
        if self.smooth_alpha is not None:
            report.changes["channels_smoothed"] += recovery.smooth_quant(model, source, alpha=self.smooth_alpha)

        quantizer = StaticQuantizer(
            model, source, per_channel=self.per_channel, activation=activation, symmetric=symmetric,
            reduce_range=reduce_range, exclude_nodes=self.exclude_nodes, exclude_op_types=self.exclude_op_types,
            exclude_pattern=self.exclude_pattern, bias_correction=self.bias_correction,
            keep_samples=self.sensitivity_samples)
        if self.bias_correction:
            report.changes["biases_corrected"] += len(quantizer.offsets)
        float_bytes, graph, sites = quantizer.float_bytes, quantizer.graph, quantizer.sites
        declined, result = quantizer.declined, quantizer.result
        ranges = quantizer.ranges(self.method, self.percentile)

        def build(chosen: Iterable[str]) -> _Candidate:
            return quantizer.build(chosen, ranges)

        candidate = build(set(sites))
        kept_float: dict[str, str] = {}
        if self.check_kernels and self.target == "cpu" and candidate.plan.chosen:
            candidate = drop_float_islands(candidate, build, kept_float, details)
        if self.max_error is not None and candidate.plan.chosen:
            keep_float, info = recovery.mixed_precision(
                original_bytes=float_bytes, samples=result.samples, chosen=sorted(candidate.plan.chosen),
                sites=sites, build=lambda c: build(c).model, max_error=self.max_error, metric=self.error_metric)
            details["sensitivity"] = info
            if keep_float:
                candidate = build(candidate.plan.chosen - set(keep_float))
                kept_float.update(dict.fromkeys(keep_float, "kept_float_for_accuracy"))

        all_declined = {**declined, **candidate.plan.declined, **kept_float}
        for reason in all_declined.values():
            report.skipped[reason] += 1
        details["float_nodes"] = dict(sorted(all_declined.items()))
        details["float_op_types"] = sorted({graph.op[n] for n, r in all_declined.items()
                                            if r == "op_not_quantizable" and n in graph.op})
        if warnings:
            details["warnings"] = warnings
        if self.ensure_faster and candidate.plan.chosen and result.samples:
            if not _faster(original, candidate.model, result.samples[0], details):
                report.skipped["slower_than_float"] += 1
                decline(model, original, report)
                return
        if not candidate.counts.get("nodes_quantized"):
            decline(model, original, report)  # the preparation alone is not worth a changed model
            return
        report.changes.update({k: v for k, v in candidate.counts.items() if v})
        adopt_model(model, candidate.model)
        model.opset_imports.update(candidate.model.opset_imports)

    def _scheme(self, details: dict[str, Any], warnings: list[str]) -> tuple[bool, Literal["uint8", "int8"], bool]:
        """``(symmetric, activation type, reduce_range)`` for the target; warnings for what the target changes."""
        symmetric = self.activation == "int8"
        activation = self.activation
        if self.target == "tensorrt" and not symmetric:
            symmetric, activation = True, "int8"
            warnings.append("target=tensorrt: activations quantized to symmetric int8 (TensorRT needs zero point 0)")
        if self.target == "cuda":
            message = ("target=cuda: onnxruntime's CUDA EP has few int8 kernels and will mostly dequantize; "
                       "use TensorRT (target=tensorrt) or the fp16 pass for GPU speed")
            logger.warning("quantize: %s", message)
            warnings.append(message)
        reduce_range = self.reduce_range
        if reduce_range is None:
            reduce_range = self.target == "cpu" and cpu_has_vnni() is False
        details["reduce_range"] = reduce_range
        return symmetric, activation, reduce_range


class StaticCandidate(NamedTuple):
    """A quantized copy of the float model, the plan it was built from, and its change counts."""

    model: ir.Model
    plan: Plan
    counts: collections.Counter[str]


_Candidate = StaticCandidate


class StaticQuantizer:
    """One calibration of a (prepared) float model, from which QDQ copies for any set of nodes are built.

    Calibrating is the expensive step (one streamed pass over the data); building a copy for another node
    set or another range method only re-plans and re-inserts Q/DQ (``quantize``'s mixed precision and the
    ``quantize-int8`` chooser build many).

    Args:
        model: The float model, prepared (see :func:`prepare`); not modified.
        source: Calibration feed dicts (re-iterable).
        per_channel: Per-output-channel weight scales.
        activation: ``uint8`` or ``int8`` activations.
        symmetric: Symmetric activation ranges (zero point 0).
        reduce_range: 7-bit weights.
        exclude_nodes: Node names left float.
        exclude_op_types: Op types left float.
        exclude_pattern: Regular expression; matching node names stay float.
        bias_correction: Collect input means and compute bias offsets.
        keep_samples: Calibration samples kept in ``result.samples``.
    """

    def __init__(
        self,
        model: ir.Model,
        source: Iterable[Mapping[str, np.ndarray]],
        *,
        per_channel: bool = True,
        activation: Literal["uint8", "int8"] = "uint8",
        symmetric: bool = False,
        reduce_range: bool = False,
        exclude_nodes: Iterable[str] = (),
        exclude_op_types: Iterable[str] = (),
        exclude_pattern: str | None = None,
        bias_correction: bool = False,
        keep_samples: int = 0,
    ) -> None:
        from sftonnx.passes.quantization import recovery

        self.per_channel = per_channel
        self.activation: Literal["uint8", "int8"] = activation
        self.symmetric = symmetric
        self.qmax = 63 if reduce_range else 127
        self.float_bytes = io.to_bytes(model)
        self.graph = NameGraph(model)
        self.sites, self.declined = find_sites(
            model, exclude_nodes=tuple(exclude_nodes), exclude_op_types=tuple(exclude_op_types),
            exclude_pattern=exclude_pattern, per_channel=per_channel)
        bias_inputs = recovery.bias_correction_inputs(model, self.sites) if bias_correction else {}
        self.result = calib.calibrate(
            model, calibration_tensors(model, self.sites), source, sum_names=bias_inputs, keep_samples=keep_samples)
        # tensors that turned out not to be float leave their nodes float
        dtypes = self.result.dtypes
        for name, site in list(self.sites.items()):
            tensors = [*site.acts, site.output]
            if any(dtypes.get(t) is not None and np.dtype(dtypes[t]).kind != "f" for t in tensors):
                self.declined[name] = "input_not_float"
                del self.sites[name]
        self.offsets: dict[str, np.ndarray] = {}
        if bias_correction:
            self.offsets = recovery.bias_offsets(model, self.sites, self.result.channel_sums, qmax=self.qmax)

    def ranges(self, method: str, percentile: float = 99.99) -> dict[str, calib.Range]:
        """Each calibrated tensor's clipping range by ``method`` (cheap: computed from the histograms)."""
        return {
            name: calib.compute_range(hist, method, symmetric=self.symmetric, percentile=percentile)
            for name, hist in self.result.histograms.items()
        }

    def build(self, chosen: Iterable[str], ranges: Mapping[str, calib.Range]) -> StaticCandidate:
        """A QDQ copy of the float model with ``chosen`` nodes quantized using ``ranges``."""
        plan = make_plan(self.graph, self.sites, chosen, ranges, activation=self.activation, symmetric=self.symmetric)
        built, counts = build_quantized(self.float_bytes, plan, self.sites, weight_qmax=self.qmax,
                                        per_channel=self.per_channel, bias_offsets=self.offsets)
        return StaticCandidate(built, plan, counts)


def prepare(model: ir.Model, report: PassReport) -> None:
    """The exact rewrites before planning (see :mod:`._prerewrite`), each counted in ``report``."""
    _upgrade_opset(model, report)
    report.changes["nodes_renamed"] += name_nodes(model.graph)
    if folded := fold_clip_bounds(model):
        report.details["clip_bounds_folded"] = folded
        report.changes["clip_bounds_folded"] += folded
    if sums := sum_to_add(model):
        report.details["sum_rewritten_as_add"] = sums
        report.changes["sums_rewritten_as_add"] += sums


def drop_float_islands(candidate: _Candidate, build: Callable[[Iterable[str]], _Candidate],
                        kept_float: dict[str, str], details: dict[str, Any]) -> _Candidate:
    """Remove the pairs of nodes onnxruntime would run in float between DQ and Q, until none is left."""
    for _ in range(4):
        try:
            optimized = ort_optimized_graph(io.to_bytes(candidate.model))
        except Exception as error:  # onnxruntime refused our model: a bug, but never ship it
            raise RuntimeError(f"onnxruntime cannot load the quantized model: {error}") from error
        islands, int_ops, float_ops = float_islands(optimized, candidate.plan.chosen)
        details["int8_ops"] = dict(sorted(int_ops.items()))
        details["float_ops_on_dequantized"] = dict(sorted(float_ops.items()))
        islands -= set(kept_float)
        if not islands:
            break
        kept_float.update(dict.fromkeys(islands, "not_int8_in_onnxruntime"))
        candidate = build(candidate.plan.chosen - islands)
    return candidate


def _faster(original: bytes, quantized: ir.Model, feeds: Mapping[str, np.ndarray], details: dict[str, Any]) -> bool:
    """Whether the int8 model runs faster than the float one on ``feeds`` (``details["latency_ms"]``)."""
    float_time, int8_time = measure_latency([original, io.to_bytes(quantized)], feeds)
    details["latency_ms"] = {"float": round(float_time * 1e3, 4), "int8": round(int8_time * 1e3, 4)}
    if int8_time >= float_time:
        logger.warning("quantize: int8 model is not faster (%.3f ms vs %.3f ms float): kept float",
                       int8_time * 1e3, float_time * 1e3)
        return False
    return True


def _upgrade_opset(model: ir.Model, report: PassReport) -> None:
    """Per-axis DequantizeLinear needs opset 13: convert older models with onnx's version converter."""
    previous = upgrade_opset(model, _MIN_OPSET, why="quantize needs per-axis DequantizeLinear")
    if previous is not None:
        report.details["opset_converted"] = [previous, _MIN_OPSET]
        report.changes["opset_upgraded"] += 1


#: Details that describe rewrites a declining call undoes.
_UNDONE_DETAILS = ("opset_converted", "clip_bounds_folded", "sum_rewritten_as_add")


def decline(model: ir.Model, original: bytes, report: PassReport) -> None:
    """Put the model back as it came in (every counted change undone); the skip counts stay."""
    restore_model(model, io.load(original, validate=False))
    report.changes.clear()
    for key in _UNDONE_DETAILS:
        report.details.pop(key, None)
