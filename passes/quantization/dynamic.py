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
``weight_too_small`` (fewer than ``min_weight_elements``), ``subgraph`` (nodes in subgraphs/functions are left
alone), ``conv_left_float`` (counted, by design), ``slower_than_float`` (``ensure_faster``); details
``reduce_range``, ``int8_ops``, ``latency_ms``.
"""

from __future__ import annotations

import collections
import logging
import re

import numpy as np
import onnx_ir as ir

from sftonnx import io, verify
from sftonnx.errors import PassConfigError
from sftonnx.ir_utils import attr, constant_array, name_allocator, opset_version, restore_model, upgrade_opset
from sftonnx.pass_infra import Numerics, PassReport, SftPass
from sftonnx.passes.quantization.qdq import INTEGER_OPS, cpu_has_vnni, measure_latency, ort_optimized_graph

__all__ = ["QuantizeDynamicPass"]

logger = logging.getLogger(__name__)


def _quantize_weight(weight: np.ndarray, per_channel: bool, qmax: int) -> tuple[np.ndarray, np.ndarray]:
    """Symmetric int8 ``W [K, N]``: ``(W_q, s_w)`` with ``s_w`` of shape ``[N]`` or ``[]``."""
    w = weight.astype(np.float64)
    amax = np.abs(w).max(axis=0) if per_channel else np.array(np.abs(w).max(initial=0.0))
    scale = np.where(amax > 0, amax / qmax, 1.0).astype(np.float32)
    q = np.clip(np.round(w / scale.astype(np.float64)), -qmax - 1, qmax).astype(np.int8)
    return q, scale


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
        qmax = 63 if reduce_range else 127
        subgraph_nodes = sum(1 for g in model.graph.subgraphs() for _ in g) + sum(
            1 for f in model.functions.values() for _ in f)
        if subgraph_nodes:
            report.skipped["subgraph"] += subgraph_nodes
        pattern = re.compile(self.exclude_pattern) if self.exclude_pattern else None
        graph = model.graph
        taken = {v.name for n in graph for v in n.outputs} | set(graph.initializers) | {v.name for v in graph.inputs}
        taken |= {n.name for n in graph if n.name}
        fresh = name_allocator(taken)

        def initializer(base: str, array: np.ndarray) -> ir.Value:
            name = fresh(base)
            tensor = ir.tensor(array, name=name)
            value = ir.Value(name=name, shape=ir.Shape(array.shape), type=ir.TensorType(tensor.dtype),
                             const_value=tensor)
            graph.register_initializer(value)
            if model.ir_version < 4:
                graph.inputs.append(value)
            return value

        weight_cache: dict[tuple[str, bool], tuple[ir.Value, ir.Value]] = {}
        for index, node in enumerate(list(graph)):
            if node.domain not in ("", "ai.onnx"):
                continue
            if node.op_type in ("Conv", "ConvTranspose"):
                report.skipped["conv_left_float"] += 1
                continue
            if node.op_type not in ("MatMul", "Gemm"):
                continue
            label = node.name or f"{node.op_type}_{index}"
            if (
                label in self.exclude_nodes
                or node.op_type in self.exclude_op_types
                or (pattern is not None and pattern.search(label))
            ):
                report.skipped["excluded"] += 1
                continue
            if len(node.inputs) < 2 or node.inputs[0] is None or node.inputs[1] is None:
                continue
            weight_value = node.inputs[1]
            weight = constant_array(weight_value)
            if weight is None:
                report.skipped["weight_not_constant"] += 1
                continue
            if weight.ndim != 2:
                report.skipped["weight_not_2d"] += 1
                continue
            if weight.dtype != np.float32:
                report.skipped["weight_not_float32"] += 1
                continue
            if weight.size < self.min_weight_elements:
                report.skipped["weight_too_small"] += 1
                continue
            alpha, bias = 1.0, None
            transposed = False
            if node.op_type == "Gemm":
                if int(attr(node, "transA", 0)):
                    report.skipped["gemm_trans_a"] += 1
                    continue
                transposed = bool(int(attr(node, "transB", 0)))
                alpha = float(attr(node, "alpha", 1.0))
                if len(node.inputs) > 2 and node.inputs[2] is not None:
                    c = constant_array(node.inputs[2])
                    beta = float(attr(node, "beta", 1.0))
                    bias = node.inputs[2] if c is None and beta == 1.0 else None
                    if c is None and beta != 1.0:
                        report.skipped["weight_not_constant"] += 1
                        continue
                    if c is not None:
                        bias = initializer(f"{node.inputs[2].name}_scaled", (beta * c).astype(np.float32))
            key = (weight_value.name or label, transposed)
            if key not in weight_cache:
                matrix = weight.T if transposed else weight
                q, scale = _quantize_weight(matrix, self.per_channel, qmax)
                weight_cache[key] = (
                    initializer(f"{weight_value.name}_quantized", q),
                    initializer(f"{weight_value.name}_scale", (scale * np.float32(alpha)).astype(np.float32)),
                )
                report.changes["weights_quantized"] += 1
            elif alpha != 1.0:
                logger.debug("%s: shared weight with alpha != 1 uses the first reader's scale", label)
            w_q, w_scale = weight_cache[key]
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
            if output.is_graph_output():
                name = output.name
                output.name = fresh(f"{name}_float")
                output.replace_all_uses_with(result, replace_graph_outputs=True)
                result.name = name
            else:
                output.replace_all_uses_with(result)
            graph.remove(node, safe=True)
            report.changes["matmuls_quantized" if node.op_type == "MatMul" else "gemms_quantized"] += 1
        if not (report.changes["matmuls_quantized"] or report.changes["gemms_quantized"]):
            if original is not None and previous is not None:  # the conversion alone is not worth a change
                restore_model(model, io.load(original, validate=False))
                report.details.pop("opset_converted", None)
            report.changes.clear()
            return
        for name, value in list(graph.initializers.items()):
            if not value.uses() and not value.is_graph_output():
                del graph.initializers[name]
                if value in graph.inputs:
                    graph.inputs.remove(value)
        quantized = io.to_bytes(model)
        try:
            int_ops = collections.Counter(
                n.op_type for n in ort_optimized_graph(quantized).node if n.op_type in INTEGER_OPS)
            report.details["int8_ops"] = dict(sorted(int_ops.items()))
        except Exception as error:  # we wrote a model onnxruntime refuses: never hand it on
            raise RuntimeError(f"onnxruntime cannot load the dynamically quantized model: {error}") from error
        if self.ensure_faster and original is not None:
            self._keep_if_faster(model, original, quantized, report)

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

