"""Dynamic int8 quantization of MatMul/Gemm weights (``quantize-dynamic``), for transformers and MLPs.

Weights are quantized once, offline; activations are quantized at run time, per call, from their own range,
so no calibration data is needed. Each ``MatMul(x, W)`` with a constant 2-D float32 ``W [K, N]`` (and each
``Gemm(A, B, C)`` with a constant ``B``, ``transA=0``) becomes::

    x_q, s_x, z_x = DynamicQuantizeLinear(x)                 # uint8, s_x = (max(x, 0) - min(x, 0)) / 255
    acc = MatMulInteger(x_q, W_q, z_x)                        # int32, W_q int8 symmetric (zero point 0)
    y   = Cast(acc, float) * (s_x * s_w)                      # s_w per output column n (per_channel) or one
    y   = alpha * y + beta * C                                # Gemm only (alpha folded into s_w)

with ``s_w[n] = max_k |W[k, n]| / 127`` (63 with ``reduce_range``). This is the pattern onnxruntime's
``quantize_dynamic`` writes; onnxruntime's CPU EP fuses it into ``DynamicQuantizeMatMul`` (int8 GEMM with the
scales applied in its epilogue), which was the fastest form we measured (``details["int8_ops"]`` shows what
onnxruntime runs). The MatMulInteger form is standard ONNX, so the model stays portable.

Convolutions are never touched: ``ConvInteger`` runs about 3x slower than float Conv on onnxruntime's CPU EP
and wrecked accuracy on real OCR models (FIELD-NOTES); use the static ``quantize`` pass for CNNs.

A model below opset 11 is converted first (``opset_upgraded``); a call that quantizes nothing, or finds int8
slower, puts the model back exactly as it came in and reports no change.

Statistics: changes ``matmuls_quantized``, ``gemms_quantized``, ``weights_quantized``, ``opset_upgraded``; skipped
``weight_not_constant``, ``weight_not_2d``, ``weight_not_float32``, ``gemm_trans_a``, ``excluded``,
``weight_too_small`` (fewer than ``min_weight_elements``), ``in_subgraph`` (nodes in subgraphs/functions are left
alone), ``conv_left_float`` (counted, by design), ``slower_than_float`` (``ensure_faster``); details
``reduce_range``, ``int8_ops``, ``latency_ms``.
"""

from __future__ import annotations

import collections
import dataclasses
import logging
import re

import numpy as np
import onnx_ir as ir

from sftonnx import io, verify
from sftonnx.errors import PassConfigError
from sftonnx.ir_utils import (
    NameAllocator,
    attr,
    constant_array,
    is_op,
    nested_node_count,
    opset_version,
    replace_value,
    restore_model,
    upgrade_opset,
)
from sftonnx.pass_infra import Numerics, PassReport, SftPass
from sftonnx.passes.quantization._kernels import INTEGER_OPS, cpu_has_vnni, ort_optimized_graph
from sftonnx.timing import median_latencies as measure_latency

__all__ = ["QuantizeDynamicPass"]

logger = logging.getLogger(__name__)


def _quantize_weight(weight: np.ndarray, per_channel: bool, qmax: int) -> tuple[np.ndarray, np.ndarray]:
    """Symmetric int8 ``W [K, N]``: ``(W_q, s_w)`` with ``s_w`` of shape ``[N]`` or ``[]``.

    Computed in blocks of rows, so a memory-mapped multi-GB weight is never copied whole (the temporaries are
    one float64 block); the result is the same as on the whole matrix at once.
    """
    rows = max(1, _BLOCK_ELEMENTS // max(1, weight.shape[1]))
    amax = np.zeros(weight.shape[1], dtype=np.float64) if per_channel else np.float64(0.0)
    for start in range(0, weight.shape[0], rows):
        block = np.abs(weight[start : start + rows].astype(np.float64))
        amax = np.maximum(amax, block.max(axis=0) if per_channel else block.max(initial=0.0))
    amax = np.asarray(amax)
    scale = np.where(amax > 0, amax / qmax, 1.0).astype(np.float32)
    divisor = scale.astype(np.float64)
    q = np.empty(weight.shape, dtype=np.int8)
    for start in range(0, weight.shape[0], rows):
        block = weight[start : start + rows].astype(np.float64) / divisor
        q[start : start + rows] = np.clip(np.round(block), -qmax - 1, qmax)
    return q, scale


#: Elements per block of :func:`_quantize_weight` (8 MB of float64 temporaries).
_BLOCK_ELEMENTS = 1 << 20


class QuantizeDynamicPass(SftPass):
    """Dynamic int8 quantization of MatMul and Gemm with constant weights (see the module docstring).

    Args:
        per_channel: One weight scale per output column (else one per tensor).
        reduce_range: 7-bit weights; default: on for x86 CPUs without VNNI (u8s8 saturation), else off.
        exclude_nodes: Node names to leave in float.
        exclude_op_types: ``MatMul`` and/or ``Gemm`` to leave in float.
        exclude_pattern: Regular expression; nodes whose name matches stay float.
        min_weight_elements: Leave weights with fewer elements in float (tiny GEMMs gain nothing).
        ensure_faster: Measure latency on random inputs and keep the float model unless int8 is faster.
    """

    name = "quantize-dynamic"
    numerics = Numerics.APPROXIMATE

    def __init__(
        self,
        *,
        per_channel: bool = True,
        reduce_range: bool | None = None,
        exclude_nodes: tuple[str, ...] = (),
        exclude_op_types: tuple[str, ...] = (),
        exclude_pattern: str | None = None,
        min_weight_elements: int = 0,
        ensure_faster: bool = False,
    ) -> None:
        if min_weight_elements < 0:
            raise PassConfigError(f"quantize-dynamic: min_weight_elements must be >= 0, got {min_weight_elements}")
        if exclude_pattern:
            try:
                re.compile(exclude_pattern)
            except re.error as error:
                raise PassConfigError(
                    f"quantize-dynamic: exclude_pattern is not a regular expression: {error}"
                ) from None
        self.per_channel = per_channel
        self.reduce_range = reduce_range
        self.exclude_nodes = tuple(exclude_nodes)
        self.exclude_op_types = tuple(exclude_op_types)
        self.exclude_pattern = exclude_pattern
        self.min_weight_elements = min_weight_elements
        self.ensure_faster = ensure_faster

    def rewrite(self, model: ir.Model, report: PassReport) -> None:
        """Rewrite every qualifying MatMul/Gemm of the main graph into the dynamic int8 pattern."""
        # DynamicQuantizeLinear needs opset 11 (MatMulInteger 10): convert older models first. The model as it
        # came in is kept when it may have to be restored (nothing quantized after a conversion, or slower).
        needs_upgrade = opset_version(model) < 11
        original = io.to_bytes(model) if self.ensure_faster or needs_upgrade else None
        previous = upgrade_opset(model, 11, why="quantize-dynamic needs DynamicQuantizeLinear")
        if previous is not None:
            report.details["opset_converted"] = [previous, 11]
            report.changes["opset_upgraded"] += 1
        reduce_range = self.reduce_range if self.reduce_range is not None else cpu_has_vnni() is False
        report.details["reduce_range"] = reduce_range
        if nested := nested_node_count(model):  # nodes in subgraphs and functions are left alone
            report.skipped["in_subgraph"] += nested
        rewriter = _Rewriter(model, qmax=63 if reduce_range else 127, per_channel=self.per_channel)
        for index, node in enumerate(list(model.graph)):
            label = node.name or f"{node.op_type}_{index}"
            reason = self._decline_reason(node, label)
            if reason is None:
                operands = rewriter.operands(node, self.min_weight_elements)
                if isinstance(operands, str):
                    reason = operands
                else:
                    weight = operands.weight_value
                    rewriter.replace(node, label, operands, report)
                    del operands  # the last view of the float weight: its file pages can be unmapped now
                    io.release_mapped_value(weight)
                    continue
            if reason != "not_a_site":
                report.skipped[reason] += 1
        if not (report.changes["matmuls_quantized"] or report.changes["gemms_quantized"]):
            if original is not None and previous is not None:  # the conversion alone is not worth a change
                restore_model(model, io.load(original, validate=False))
                report.details.pop("opset_converted", None)
            report.changes.clear()
            return
        _drop_dead_transposes(model.graph)
        _drop_unused_initializers(model.graph)
        if self.ensure_faster and original is not None:
            quantized = io.to_bytes(model)
            report.details["int8_ops"] = _int8_ops(quantized)
            self._keep_if_faster(model, original, quantized, report)
        else:
            with verify.session_source(model) as source:  # a file for large models: weights not copied
                report.details["int8_ops"] = _int8_ops(source)

    def _decline_reason(self, node: ir.Node, label: str) -> str | None:
        """Why ``node`` is left alone before its operands are read (``not_a_site``: not counted), else None."""
        if node.domain not in ("", "ai.onnx"):
            return "not_a_site"
        if node.op_type in ("Conv", "ConvTranspose"):
            return "conv_left_float"
        if node.op_type not in ("MatMul", "Gemm"):
            return "not_a_site"
        pattern = self.exclude_pattern
        if (
            label in self.exclude_nodes
            or node.op_type in self.exclude_op_types
            or (pattern is not None and re.search(pattern, label))
        ):
            return "excluded"
        if len(node.inputs) < 2 or node.inputs[0] is None or node.inputs[1] is None:
            return "not_a_site"
        return None

    def _keep_if_faster(self, model: ir.Model, original: bytes, quantized: bytes, report: PassReport) -> None:
        specs = verify.input_specs(io.load(original, validate=False))
        shapes, _ = verify.resolve_shapes(specs)
        feeds = verify.random_feeds(specs, shapes)
        float_time, int8_time = measure_latency([original, quantized], feeds)
        report.details["latency_ms"] = {"float": round(float_time * 1e3, 4), "int8": round(int8_time * 1e3, 4)}
        if int8_time >= float_time:
            logger.warning("quantize-dynamic: int8 model is not faster: kept float")
            report.changes.clear()
            report.details.pop("opset_converted", None)
            report.skipped["slower_than_float"] += 1
            restore_model(model, io.load(original, validate=False))


@dataclasses.dataclass
class _Operands:
    """What the rewrite of one MatMul/Gemm reads: its weight as ``[K, N]`` and the Gemm's alpha and bias."""

    weight_value: ir.Value
    weight: np.ndarray
    transposed: bool = False
    alpha: float = 1.0
    bias: ir.Value | None = None
    bias_array: np.ndarray | None = None  # a constant bias, already multiplied by beta


class _Rewriter:
    """One call's rewriting state: fresh names, new initializers, and quantized weights shared by readers."""

    def __init__(self, model: ir.Model, *, qmax: int, per_channel: bool) -> None:
        self.model = model
        self.graph = model.graph
        self.qmax = qmax
        self.per_channel = per_channel
        graph = model.graph
        self.fresh = NameAllocator(
            {*(v.name for n in graph for v in n.outputs), *graph.initializers, *(v.name for v in graph.inputs),
             *(n.name for n in graph if n.name)}
        )
        self.weights: dict[tuple[str, bool], tuple[ir.Value, ir.Value]] = {}

    def initializer(self, base: str, array: np.ndarray) -> ir.Value:
        """A new initializer under a fresh name (also a graph input in IR < 4 models)."""
        name = self.fresh(base)
        tensor = ir.tensor(array, name=name)
        value = ir.Value(name=name, shape=ir.Shape(array.shape), type=ir.TensorType(tensor.dtype), const_value=tensor)
        self.graph.register_initializer(value)
        if self.model.ir_version < 4:
            self.graph.inputs.append(value)
        return value

    @staticmethod
    def operands(node: ir.Node, min_elements: int) -> _Operands | str:
        """The node's weight, alpha and bias, or the skip key saying why it stays float."""
        weight_value = node.inputs[1]
        assert weight_value is not None
        weight = constant_array(weight_value)
        if weight is None:
            weight = _transposed_constant(weight_value)
        if weight is None:
            return "weight_not_constant"
        if weight.ndim != 2:
            return "weight_not_2d"
        if weight.dtype != np.float32:
            return "weight_not_float32"
        if weight.size < min_elements:
            return "weight_too_small"
        operands = _Operands(weight_value, weight)
        if node.op_type != "Gemm":
            return operands
        if int(attr(node, "transA", 0)):
            return "gemm_trans_a"
        operands.transposed = bool(int(attr(node, "transB", 0)))
        operands.alpha = float(attr(node, "alpha", 1.0))
        if len(node.inputs) > 2 and node.inputs[2] is not None:
            c = constant_array(node.inputs[2])
            beta = float(attr(node, "beta", 1.0))
            if c is None and beta != 1.0:
                return "weight_not_constant"
            if c is None:
                operands.bias = node.inputs[2]
            else:
                operands.bias_array = (beta * c).astype(np.float32)
        return operands

    def quantized_weight(self, operands: _Operands, label: str, report: PassReport) -> tuple[ir.Value, ir.Value]:
        """``(W_q, s_w * alpha)`` initializers, made once per weight (and layout) and shared by its readers."""
        key = (operands.weight_value.name or label, operands.transposed)
        if key not in self.weights:
            matrix = operands.weight.T if operands.transposed else operands.weight
            q, scale = _quantize_weight(matrix, self.per_channel, self.qmax)
            name = operands.weight_value.name
            self.weights[key] = (
                self.initializer(f"{name}_quantized", q),
                self.initializer(f"{name}_scale", (scale * np.float32(operands.alpha)).astype(np.float32)),
            )
            report.changes["weights_quantized"] += 1
        elif operands.alpha != 1.0:
            logger.debug("%s: shared weight with alpha != 1 uses the first reader's scale", label)
        return self.weights[key]

    def replace(self, node: ir.Node, label: str, operands: _Operands, report: PassReport) -> None:
        """Put the DynamicQuantizeLinear/MatMulInteger pattern in place of ``node`` (see the module docstring)."""
        fresh, graph = self.fresh, self.graph
        bias = operands.bias
        if operands.bias_array is not None:
            bias_input = node.inputs[2]
            assert bias_input is not None
            bias = self.initializer(f"{bias_input.name}_scaled", operands.bias_array)
        w_q, w_scale = self.quantized_weight(operands, label, report)
        output = node.outputs[0]
        x_q = ir.Value(name=fresh(f"{label}_input_quantized"))
        x_scale = ir.Value(name=fresh(f"{label}_input_scale"))
        x_zero = ir.Value(name=fresh(f"{label}_input_zero_point"))
        acc = ir.Value(name=fresh(f"{label}_accumulator"))
        acc_float = ir.Value(name=fresh(f"{label}_accumulator_float"))
        scale = ir.Value(name=fresh(f"{label}_output_scale"))
        scaled = ir.Value(name=fresh(f"{label}_scaled"), type=output.type, shape=output.shape)
        new_nodes = [
            ir.Node("", "DynamicQuantizeLinear", [node.inputs[0]], outputs=[x_q, x_scale, x_zero],
                    name=fresh(f"{label}_DynamicQuantizeLinear")),
            ir.Node("", "MatMulInteger", [x_q, w_q, x_zero], outputs=[acc], name=fresh(f"{label}_MatMulInteger")),
            ir.Node("", "Cast", [acc], attributes=[ir.AttrInt64("to", ir.DataType.FLOAT)], outputs=[acc_float],
                    name=fresh(f"{label}_Cast")),
            ir.Node("", "Mul", [x_scale, w_scale], outputs=[scale], name=fresh(f"{label}_scales_mul")),
            ir.Node("", "Mul", [acc_float, scale], outputs=[scaled], name=fresh(f"{label}_output_scale_mul")),
        ]
        result = scaled
        if bias is not None:
            biased = ir.Value(name=fresh(f"{label}_biased"), type=output.type, shape=output.shape)
            new_nodes.append(ir.Node("", "Add", [scaled, bias], outputs=[biased], name=fresh(f"{label}_bias_add")))
            result = biased
        graph.insert_before(node, new_nodes)
        replace_value(output, result, lambda name: fresh(f"{name}_float"))
        graph.remove(node, safe=True)
        report.changes["matmuls_quantized" if node.op_type == "MatMul" else "gemms_quantized"] += 1


def _transposed_constant(value: ir.Value) -> np.ndarray | None:
    """``W.T`` (a view, nothing copied) when ``value`` is ``Transpose(W)`` of a constant 2-D ``W``, else None.

    PyTorch exports ``nn.Linear`` as ``MatMul(x, Transpose(W))``; on models whose weights are external or over
    2 GiB ``simplify`` does not fold that Transpose (it never copies a large weight), so it is read through here.
    """
    producer = value.producer()
    if producer is None or not is_op(producer, "Transpose") or len(producer.inputs) != 1:
        return None
    source = constant_array(producer.inputs[0])
    perm = attr(producer, "perm", None)
    if source is None or source.ndim != 2 or (perm is not None and list(perm) != [1, 0]):
        return None
    return source.T


def _drop_dead_transposes(graph: ir.Graph) -> None:
    """Remove the Transpose nodes of weights whose only readers were quantized (their float weight goes next)."""
    for node in list(graph):
        if is_op(node, "Transpose") and not any(out.uses() or out.is_graph_output() for out in node.outputs):
            graph.remove(node, safe=True)


def _drop_unused_initializers(graph: ir.Graph) -> None:
    """Remove the float weights nothing reads any more (and their IR < 4 graph-input entries)."""
    for name, value in list(graph.initializers.items()):
        if not value.uses() and not value.is_graph_output():
            del graph.initializers[name]
            if value in graph.inputs:
                graph.inputs.remove(value)


def _int8_ops(quantized: bytes | str) -> dict[str, int]:
    """The integer kernels in the graph onnxruntime runs, by op type (it must load what we wrote)."""
    try:
        graph = ort_optimized_graph(quantized)
    except Exception as error:  # we wrote a model onnxruntime refuses: never hand it on
        raise RuntimeError(f"onnxruntime cannot load the dynamically quantized model: {error}") from error
    counts = collections.Counter(n.op_type for n in graph.node if n.op_type in INTEGER_OPS)
    return dict(sorted(counts.items()))
