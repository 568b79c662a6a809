"""Building ``quantize``'s result: a copy of the float model with the planned Q/DQ pairs inserted."""

from __future__ import annotations

import collections
import logging
from collections.abc import Mapping

import numpy as np
import onnx_ir as ir
from onnx_ir.passes.common import RemoveUnusedNodesPass, TopologicalSortPass

from sftonnx import io
from sftonnx.ir_utils import NameAllocator, constant_array, replace_value
from sftonnx.passes.quantization._plan import Plan
from sftonnx.passes.quantization._sites import Site

__all__ = ["build_quantized", "initializer"]

logger = logging.getLogger(__name__)

_INT32_MAX = 2**31 - 1


def initializer(graph: ir.Graph, name: str, array: np.ndarray, ir_version: int) -> ir.Value:
    """Register ``array`` as initializer ``name`` (also a graph input in IR < 4 models, as that IR requires)."""
    tensor = ir.tensor(array, name=name)
    value = ir.Value(name=name, shape=ir.Shape(array.shape), type=ir.TensorType(tensor.dtype), const_value=tensor)
    graph.register_initializer(value)
    if ir_version < 4:
        graph.inputs.append(value)
    return value


class _Builder:
    """Inserts the planned Q/DQ nodes into a copy of the float model."""

    def __init__(self, model: ir.Model, plan: Plan, sites: Mapping[str, Site], *, weight_qmax: int,
                 per_channel: bool, bias_offsets: Mapping[str, np.ndarray] | None = None) -> None:
        self.model = model
        self.graph = model.graph
        self.plan = plan
        self.sites = sites
        self.weight_qmax = weight_qmax
        self.per_channel = per_channel
        self.bias_offsets = bias_offsets or {}
        self.values: dict[str, ir.Value] = {v.name: v for v in self.graph.inputs if v.name}
        self.values.update({name: v for name, v in self.graph.initializers.items()})
        for node in self.graph:
            for v in node.outputs:
                if v.name:
                    self.values[v.name] = v
        self.nodes = {node.name: node for node in self.graph}
        self.fresh = NameAllocator({*self.values, *(n.name for n in self.graph)})
        self.scale_values: dict[str, tuple[ir.Value, ir.Value]] = {}
        self.dequantized: dict[str, ir.Value] = {}
        self.counts: collections.Counter[str] = collections.Counter()
        self.first_node = next(iter(self.graph), None)

    def const(self, base: str, array: np.ndarray) -> ir.Value:
        return initializer(self.graph, self.fresh(base), array, self.model.ir_version)

    def _insert_after_producer(self, value: ir.Value, nodes: list[ir.Node]) -> None:
        producer = value.producer()
        if producer is not None:
            self.graph.insert_after(producer, nodes)
        elif self.first_node is not None:
            self.graph.insert_before(self.first_node, nodes)
        else:
            self.graph.extend(nodes)

    def run(self) -> None:
        # activations: one Q/DQ pair per tensor, every reader switched to the DQ output
        for tensor in sorted(self.plan.params):
            self._quantize_activation(tensor)
        for name in sorted(self.plan.chosen):
            site = self.sites[name]
            node = self.nodes[name]
            for tensor in site.consts:
                self._quantize_constant(node, tensor)
            if site.weight is not None:
                self._quantize_weight(node, site)
            self.counts["nodes_quantized"] += 1

    def _group_scale(self, tensor: str) -> tuple[ir.Value, ir.Value]:
        root = self.plan.group_of[tensor]
        if root not in self.scale_values:
            scale, zero = self.plan.params[tensor]
            self.scale_values[root] = (
                self.const(f"{root}_scale", np.array(scale, dtype=np.float32)),
                self.const(f"{root}_zero_point", np.array(zero)),
            )
        return self.scale_values[root]

    def _quantize_activation(self, tensor: str) -> None:
        value = self.values[tensor]
        scale, zero = self._group_scale(tensor)
        quantized = ir.Value(name=self.fresh(f"{tensor}_quantized"))
        dequantized = ir.Value(name=self.fresh(f"{tensor}_dequantized"))
        dequantized.type = value.type
        dequantized.shape = value.shape
        # switch every reader first, then create Q (so Q itself keeps reading the float tensor)
        # a graph output keeps its name: it becomes the DQ output, the float tensor is renamed
        replace_value(value, dequantized, lambda _: self.fresh(f"{tensor}_float"))
        q = ir.Node("", "QuantizeLinear", [value, scale, zero], outputs=[quantized],
                    name=self.fresh(f"{tensor}_QuantizeLinear"))
        dq = ir.Node("", "DequantizeLinear", [quantized, scale, zero], outputs=[dequantized],
                     name=self.fresh(f"{tensor}_DequantizeLinear"))
        self._insert_after_producer(value, [q, dq])
        self.dequantized[tensor] = dequantized
        self.counts["activations_quantized"] += 1

    def _dequantize_node(self, base: str, data: np.ndarray, scale: np.ndarray, zero: np.ndarray,
                         axis: int | None, before: ir.Node) -> ir.Value:
        data_v = self.const(f"{base}_quantized", data)
        scale_v = self.const(f"{base}_scale", scale.astype(np.float32))
        zero_v = self.const(f"{base}_zero_point", zero)
        out = ir.Value(name=self.fresh(f"{base}_dequantized"), shape=ir.Shape(data.shape),
                       type=ir.TensorType(ir.DataType.FLOAT))
        attributes = {"axis": ir.AttrInt64("axis", axis)} if axis is not None else {}
        node = ir.Node("", "DequantizeLinear", [data_v, scale_v, zero_v], attributes=attributes, outputs=[out],
                       name=self.fresh(f"{base}_DequantizeLinear"))
        self.graph.insert_before(before, node)
        return out

    def _quantize_constant(self, node: ir.Node, tensor: str) -> None:
        scale, zero = self.plan.const_params[tensor]
        key = f"const:{tensor}"
        if key not in self.dequantized:
            array = constant_array(self.values.get(tensor) or _input_named(node, tensor))
            assert array is not None
            info = np.iinfo(np.asarray(zero).dtype)
            q = np.clip(np.round(array.astype(np.float64) / float(scale)) + int(zero), info.min, info.max)
            self.dequantized[key] = self._dequantize_node(
                tensor, q.astype(np.asarray(zero).dtype), np.array(scale), np.array(zero), None, node)
            self.counts["constants_quantized"] += 1
        for index, value in enumerate(node.inputs):
            if value is not None and value.name == tensor:
                node.replace_input_with(index, self.dequantized[key])

    def _quantize_weight(self, node: ir.Node, site: Site) -> None:
        assert site.weight is not None
        name, index, axis = site.weight
        weight_value = node.inputs[index]
        weight = constant_array(weight_value)
        assert weight is not None and weight_value is not None
        weight = weight.astype(np.float64)
        input_scale = None
        if site.acts and site.acts[0] in self.plan.params:
            input_scale = float(self.plan.params[site.acts[0]][0])
        bias = None
        if site.bias is not None:
            bias_value = node.inputs[site.bias[1]]
            bias_array = constant_array(bias_value)
            bias = None if bias_array is None else bias_array.astype(np.float64).reshape(-1)
        if site.node in self.bias_offsets:
            offset = self.bias_offsets[site.node]
            bias = -offset if bias is None else bias - offset
        qmax = self.weight_qmax
        if axis >= 0:
            moved = np.moveaxis(weight, axis, 0)
            amax = np.abs(moved.reshape(moved.shape[0], -1)).max(axis=1)
        else:
            amax = np.array([np.abs(weight).max(initial=0.0)])
        scale = np.where(amax > 0, amax / qmax, 1.0).astype(np.float32)
        if bias is not None and input_scale is not None:
            # widen a channel's weight scale when its bias would not fit int32 at s_x * s_w
            channel_scale = _bias_channel_scale(scale, bias.size, site.op_type, weight.shape, axis)
            needed = np.abs(bias) / (input_scale * (_INT32_MAX - 1))
            if np.any(needed > channel_scale):
                logger.debug("%s: widening weight scales so the int32 bias fits", site.node)
                if scale.size == 1:
                    scale = np.maximum(scale, np.float32(needed.max() * 1.001))
                elif scale.size == bias.size:
                    scale = np.maximum(scale, (needed * 1.001).astype(np.float32))
        if axis >= 0:
            shape = [1] * weight.ndim
            shape[axis] = -1
            q = np.clip(np.round(weight / scale.astype(np.float64).reshape(shape)), -qmax - 1, qmax)
            scale_arr, zero = scale, np.zeros(scale.shape, np.int8)
        else:
            q = np.clip(np.round(weight / float(scale[0])), -qmax - 1, qmax)
            scale_arr, zero = np.array(scale[0], np.float32), np.array(0, np.int8)
        dq = self._dequantize_node(name, q.astype(np.int8), scale_arr, zero, axis if axis >= 0 else None, node)
        node.replace_input_with(index, dq)
        self.counts["weights_quantized"] += 1
        if bias is not None and input_scale is not None:
            assert site.bias is not None
            channel_scale = _bias_channel_scale(scale, bias.size, site.op_type, weight.shape, axis)
            bias_scale = (np.float32(input_scale) * channel_scale.astype(np.float32)).astype(np.float32)
            bias_scale = np.where(bias_scale > 0, bias_scale, np.float32(1e-30)).astype(np.float32)
            q_bias = np.clip(np.round(bias / bias_scale.astype(np.float64)), -_INT32_MAX, _INT32_MAX).astype(np.int32)
            per_channel_bias = bias_scale.size > 1
            dq_bias = self._dequantize_node(
                site.bias[0] or f"{name}_bias", q_bias,
                bias_scale if per_channel_bias else np.array(bias_scale.reshape(-1)[0], np.float32),
                np.zeros(bias_scale.shape, np.int32) if per_channel_bias else np.array(0, np.int32),
                0 if per_channel_bias else None, node)
            node.replace_input_with(site.bias[1], dq_bias)
            self.counts["biases_quantized"] += 1
        elif bias is not None and site.node in self.bias_offsets:
            # no activation scale (input not quantized): keep a float bias, corrected
            corrected = self.const(f"{name}_bias_corrected", bias.astype(np.float32))
            if site.bias is not None:
                node.replace_input_with(site.bias[1], corrected)


def _input_named(node: ir.Node, name: str) -> ir.Value | None:
    return next((v for v in node.inputs if v is not None and v.name == name), None)


def _bias_channel_scale(scale: np.ndarray, channels: int, op_type: str, weight_shape: tuple[int, ...],
                        axis: int) -> np.ndarray:
    """The weight scale of each output channel (bias element)."""
    if scale.size == 1:
        return np.full(channels, scale.reshape(-1)[0], dtype=np.float32)
    if scale.size == channels:
        return scale
    # ConvTranspose with groups: axis 1 holds Cout/group channels, repeated for every group
    return np.tile(scale, channels // scale.size).astype(np.float32)


def build_quantized(
    float_bytes: bytes,
    plan: Plan,
    sites: Mapping[str, Site],
    *,
    weight_qmax: int = 127,
    per_channel: bool = True,
    bias_offsets: Mapping[str, np.ndarray] | None = None,
) -> tuple[ir.Model, collections.Counter[str]]:
    """A fresh copy of the float model with ``plan``'s Q/DQ inserted; returns it and the change counts."""
    model = io.load(float_bytes, validate=False)
    builder = _Builder(model, plan, sites, weight_qmax=weight_qmax, per_channel=per_channel,
                       bias_offsets=bias_offsets)
    builder.run()
    RemoveUnusedNodesPass()(model)
    _drop_unused_initializers(model)
    TopologicalSortPass()(model)
    return model, builder.counts


def _drop_unused_initializers(model: ir.Model) -> None:
    graph_inputs = {v.name for v in model.graph.inputs}
    for name, value in list(model.graph.initializers.items()):
        if not value.uses() and not value.is_graph_output():
            del model.graph.initializers[name]
            if name in graph_inputs:
                model.graph.inputs.remove(value)
