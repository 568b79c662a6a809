"""Accuracy recovery for int8 quantization, used as options of ``quantize`` (see ``QuantizeStaticPass``).

* Cross-layer equalization (``equalize=true``; Nagel et al. 2019, "Data-Free Quantization", section 4.1):
  for ``y = W2 f(W1 x + b1)`` with ``f`` positively homogeneous per channel (identity, Relu, MaxPool),
  ``f(s x) = s f(x)`` for ``s > 0``, so channel ``i`` between the layers can be rescaled::

      W1'[i] = W1[i] / s_i,   b1'[i] = b1[i] / s_i,   W2'[:, i] = W2[:, i] * s_i,
      s_i = sqrt(r1_i / r2_i),  r1_i = max |W1[i]|,  r2_i = max |W2[:, i]|

  which makes both ranges ``sqrt(r1_i r2_i)`` and per-tensor (and per-channel) weight quantization finer.
  Exact in real arithmetic (float32 rounding only). Conv -> [Relu|MaxPool]* -> Conv chains, ``group=1``,
  unshared constant weights; two sweeps.
* Bias correction (``bias_correction=true``; Nagel et al. 2019 section 4.2, empirical form): quantizing
  ``W`` shifts each output channel's mean by ``E[(W_q - W) x] = E[W_q x] - E[W x]``; it is subtracted from the
  bias. For Conv the exact shift is ``mean over positions of conv(W_q - W, E_n[x])`` with ``E_n[x]`` the mean
  input over the calibration samples (a linear map commutes with the mean); when input sizes vary between
  batches the per-channel mean ``sum_{i,k} (W_q - W)[o, i, k] E[x_i]`` is used (padding ignored). Gemm:
  ``alpha (W_q - W)^T E[a]``. MatMul has no bias and is left alone; ConvTranspose too.
* SmoothQuant (``smooth_alpha``; Xiao et al. 2023): for an activation ``x`` read only by MatMul/Gemm with
  constant weights, per input channel ``k``::

      s_k = max|x_k|**alpha / max|W_k,:|**(1 - alpha),     x' = x / s,     W'[k, :] = s_k W[k, :]

  moving outlier channels' range from activations (per-tensor scales) to weights (per-channel scales). A
  ``Mul(x, 1/s)`` is inserted (it is quantized like any Mul); readers sharing ``x`` (Q, K, V projections)
  share ``s``, taken over all their weights.
* Automatic mixed precision (``max_error``): each quantized layer (Conv, Gemm, MatMul, Add, ...) is
  quantized alone and the model output error on the kept calibration samples measured (its sensitivity);
  then the ``k`` most sensitive layers are left float, ``k`` the smallest (binary search) for which the fully
  quantized model's error is at most ``max_error``. Errors: ``cosine`` = ``1 - cosine`` (worst output),
  ``max_abs`` = largest absolute difference, ``mean_abs`` = mean absolute difference / mean absolute float
  output. ``details["sensitivity"]`` lists the error with every layer int8, the final error, and the layers
  kept float with their sensitivity.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import numpy as np
import onnx_ir as ir

from sftonnx import io, verify
from sftonnx.ir_utils import attr, constant_array
from sftonnx.passes.quantization import calibration as calib

__all__ = [
    "bias_correction_inputs",
    "bias_offsets",
    "equalize_cross_layer",
    "mixed_precision",
    "output_error",
    "smooth_quant",
]

logger = logging.getLogger(__name__)

_HOMOGENEOUS = frozenset({"Relu", "MaxPool"})


# ------------------------------------------------------------------------------ cross-layer equalization
def _sole_reader(value: ir.Value) -> ir.Node | None:
    if value.is_graph_output():
        return None
    uses = list(value.uses())
    if len(uses) != 1:
        return None
    return uses[0].node


def _private_const(node: ir.Node, index: int) -> np.ndarray | None:
    """A constant input only ``node`` reads (so it may be rewritten), as an array."""
    value = node.inputs[index] if index < len(node.inputs) else None
    if value is None or value.const_value is None or value.is_graph_output():
        return None
    if len({use.node for use in value.uses()}) != 1 or value.is_graph_input():
        return None
    return value.const_value.numpy()


def _set_const(node: ir.Node, index: int, array: np.ndarray) -> None:
    value = node.inputs[index]
    assert value is not None
    value.const_value = ir.tensor(array.astype(value.const_value.numpy().dtype), name=value.name)


def equalize_cross_layer(model: ir.Model, sweeps: int = 2) -> int:
    """Cross-layer equalization of Conv -> [Relu|MaxPool]* -> Conv chains in the main graph, in place.

    Returns:
        The number of channels rescaled (summed over sweeps).
    """
    pairs = []
    for node in model.graph:
        if node.op_type != "Conv" or node.domain not in ("", "ai.onnx") or int(attr(node, "group", 1)) != 1:
            continue
        current = node.outputs[0]
        nxt = _sole_reader(current)
        while nxt is not None and nxt.op_type in _HOMOGENEOUS and len(nxt.outputs) == 1:
            current = nxt.outputs[0]
            nxt = _sole_reader(current)
        if nxt is None or nxt.op_type != "Conv" or int(attr(nxt, "group", 1)) != 1 or nxt.inputs[0] is not current:
            continue
        pairs.append((node, nxt))
    changed = 0
    for _ in range(sweeps):
        for first, second in pairs:
            w1, w2 = _private_const(first, 1), _private_const(second, 1)
            if w1 is None or w2 is None or w1.shape[0] != w2.shape[1]:
                continue
            bias = _private_const(first, 2) if len(first.inputs) > 2 and first.inputs[2] is not None else None
            if len(first.inputs) > 2 and first.inputs[2] is not None and bias is None:
                continue
            r1 = np.abs(w1.reshape(w1.shape[0], -1)).max(axis=1).astype(np.float64)
            r2 = np.abs(np.moveaxis(w2, 1, 0).reshape(w2.shape[1], -1)).max(axis=1).astype(np.float64)
            scale = np.where((r1 > 0) & (r2 > 0), np.sqrt(r1 / np.where(r2 > 0, r2, 1.0)), 1.0)
            if np.allclose(scale, 1.0, rtol=1e-3):
                continue
            shape1 = (-1,) + (1,) * (w1.ndim - 1)
            shape2 = (1, -1) + (1,) * (w2.ndim - 2)
            _set_const(first, 1, w1 / scale.reshape(shape1))
            if bias is not None:
                _set_const(first, 2, bias / scale)
            _set_const(second, 1, w2 * scale.reshape(shape2))
            changed += int(np.sum(~np.isclose(scale, 1.0)))
    return changed


# ------------------------------------------------------------------------------------------ SmoothQuant
def _smoothable_readers(value: ir.Value) -> list[tuple[ir.Node, np.ndarray, bool]] | None:
    """Readers of ``value`` if all are MatMul/Gemm(transA=0) with ``value`` as A and a private constant B."""
    readers = []
    for use in value.uses():
        node = use.node
        if use.idx != 0 or node.op_type not in ("MatMul", "Gemm") or node.domain not in ("", "ai.onnx"):
            return None
        if node.op_type == "Gemm" and int(attr(node, "transA", 0)):
            return None
        weight = _private_const(node, 1)
        if weight is None or weight.ndim != 2:
            return None
        readers.append((node, weight, node.op_type == "Gemm" and bool(int(attr(node, "transB", 0)))))
    return readers or None


def smooth_quant(model: ir.Model, source: Iterable[Mapping[str, np.ndarray]], *, alpha: float) -> int:
    """SmoothQuant scale migration for MatMul/Gemm inputs of the main graph, in place.

    Returns:
        The number of input channels smoothed.
    """
    candidates: dict[str, tuple[ir.Value, list[tuple[ir.Node, np.ndarray, bool]]]] = {}
    for node in model.graph:
        for value in node.outputs:
            if value.name and not value.is_graph_output() and (readers := _smoothable_readers(value)):
                candidates[value.name] = (value, readers)
    for value in model.graph.inputs:
        if value.name and (readers := _smoothable_readers(value)):
            candidates[value.name] = (value, readers)
    if not candidates:
        return 0
    stats = calib.calibrate(model, [], source, absmax_names=list(candidates))
    smoothed = 0
    for name, (value, readers) in candidates.items():
        act_max = stats.channel_absmax.get(name)
        if act_max is None:
            continue
        weight_max = np.zeros(act_max.shape, dtype=np.float64)
        for _, weight, trans_b in readers:
            rows = weight.T if trans_b else weight  # (K, N)
            if rows.shape[0] != act_max.shape[0]:
                break
            weight_max = np.maximum(weight_max, np.abs(rows).max(axis=1))
        else:
            scale = np.where(
                (act_max > 0) & (weight_max > 0),
                np.power(np.maximum(act_max, 1e-8), alpha) / np.power(np.maximum(weight_max, 1e-8), 1.0 - alpha),
                1.0,
            )
            scale = np.clip(scale, 1e-4, 1e4)
            inverse = ir.Value(name=f"{name}_smooth_inverse", shape=ir.Shape(scale.shape),
                               type=ir.TensorType(ir.DataType.FLOAT),
                               const_value=ir.tensor((1.0 / scale).astype(np.float32), name=f"{name}_smooth_inverse"))
            model.graph.register_initializer(inverse)
            smoothed_value = ir.Value(name=f"{name}_smoothed", type=value.type, shape=value.shape)
            mul = ir.Node("", "Mul", [value, inverse], outputs=[smoothed_value], name=f"{name}_SmoothQuant")
            for node, weight, trans_b in readers:
                factor = scale.reshape((1, -1) if trans_b else (-1, 1))
                _set_const(node, 1, weight * factor)
                node.replace_input_with(0, smoothed_value)
            producer = value.producer()
            if producer is not None:
                model.graph.insert_after(producer, mul)
            else:
                model.graph.insert_before(next(iter(model.graph)), mul)
            smoothed += int(scale.size)
    return smoothed


# -------------------------------------------------------------------------------------- bias correction
def bias_correction_inputs(model: ir.Model, sites: Mapping[str, Any]) -> dict[str, int]:
    """``{input tensor: channel axis}`` of the layers bias correction applies to (Conv, Gemm)."""
    wanted: dict[str, int] = {}
    nodes = {node.name: node for node in model.graph}
    for name, site in sites.items():
        if site.weight is None or not site.acts:
            continue
        node = nodes[name]
        if site.op_type == "Conv":
            wanted[site.acts[0]] = 1
        elif site.op_type == "Gemm":
            wanted[site.acts[0]] = 0 if int(attr(node, "transA", 0)) else 1
    return wanted


def _dequantized_weight(weight: np.ndarray, axis: int, qmax: int) -> np.ndarray:
    """``dq(q(W))`` exactly as the QDQ builder quantizes weights (symmetric int8)."""
    weight = weight.astype(np.float64)
    if axis >= 0:
        moved = np.moveaxis(weight, axis, 0)
        amax = np.abs(moved.reshape(moved.shape[0], -1)).max(axis=1)
        shape = [1] * weight.ndim
        shape[axis] = -1
        scale = np.where(amax > 0, amax / qmax, 1.0).astype(np.float32).astype(np.float64).reshape(shape)
    else:
        amax = float(np.abs(weight).max(initial=0.0))
        scale = np.float64(np.float32(amax / qmax if amax > 0 else 1.0))
    return np.clip(np.round(weight / scale), -qmax - 1, qmax) * scale


def _conv_mean_output(node: ir.Node, delta: np.ndarray, mean_input: np.ndarray) -> np.ndarray:
    """``mean over positions of conv(delta, mean_input)`` per output channel, computed in onnxruntime."""
    x = ir.Value(name="x", shape=ir.Shape((1, *mean_input.shape)), type=ir.TensorType(ir.DataType.FLOAT))
    w = ir.Value(name="w", shape=ir.Shape(delta.shape), type=ir.TensorType(ir.DataType.FLOAT),
                 const_value=ir.tensor(delta.astype(np.float32), name="w"))
    y = ir.Value(name="y", type=ir.TensorType(ir.DataType.FLOAT))
    conv = ir.Node("", "Conv", [x, w], attributes=list(node.attributes.values()), outputs=[y], name="conv")
    graph = ir.Graph([x], [y], nodes=[conv], initializers=[w], opset_imports={"": 13})
    session = verify.make_session(io.to_bytes(ir.Model(graph, ir_version=8)), optimization="disable")
    (out,) = session.run(None, {"x": mean_input[None].astype(np.float32)})
    return out.reshape(out.shape[1], -1).mean(axis=1).astype(np.float64)


def bias_offsets(
    model: ir.Model, sites: Mapping[str, Any], sums: Mapping[str, calib.MeanStats], *, qmax: int
) -> dict[str, np.ndarray]:
    """``{node: E[(W_q - W) x] per output channel}`` for Conv and Gemm sites whose input means were collected."""
    nodes = {node.name: node for node in model.graph}
    offsets: dict[str, np.ndarray] = {}
    for name, site in sites.items():
        if site.weight is None or not site.acts or site.acts[0] not in sums:
            continue
        node = nodes[name]
        weight = constant_array(node.inputs[1])
        if weight is None:
            continue
        _, _, axis = site.weight
        delta = _dequantized_weight(weight, axis, qmax) - weight.astype(np.float64)
        stats = sums[site.acts[0]]
        try:
            if site.op_type == "Conv":
                sample_mean = stats.sample_mean()
                if sample_mean is not None and sample_mean.ndim == weight.ndim - 1:
                    offsets[name] = _conv_mean_output(node, delta, sample_mean)
                else:
                    group = int(attr(node, "group", 1))
                    mean = stats.channel_mean().reshape(group, -1)  # (group, Cin/group)
                    per_in = delta.reshape(delta.shape[0], delta.shape[1], -1).sum(axis=2)  # (Cout, Cin/g)
                    out_per_group = delta.shape[0] // group
                    offsets[name] = np.concatenate(
                        [per_in[g * out_per_group:(g + 1) * out_per_group] @ mean[g] for g in range(group)])
            elif site.op_type == "Gemm":
                mean = stats.channel_mean()
                eff = delta.T if int(attr(node, "transB", 0)) else delta  # (K, N)
                offsets[name] = float(attr(node, "alpha", 1.0)) * (mean @ eff)
        except Exception as error:  # onnxruntime failed on the helper conv: skip this layer, say why
            logger.warning("bias correction skipped for %s: %s", name, error)
    return offsets


# ------------------------------------------------------------------------------------- mixed precision
def output_error(
    reference: Sequence[Sequence[np.ndarray]], actual: Sequence[Sequence[np.ndarray]], metric: str
) -> float:
    """Error of ``actual`` against ``reference`` outputs (per sample batch, per output) by ``metric``."""
    worst = 0.0
    for index in range(len(reference[0]) if reference else 0):
        ref = np.concatenate([np.asarray(r[index], np.float64).ravel() for r in reference])
        act = np.concatenate([np.asarray(a[index], np.float64).ravel() for a in actual])
        if metric == "cosine":
            norm = np.linalg.norm(ref) * np.linalg.norm(act)
            value = 1.0 - (float(ref @ act / norm) if norm > 0 else float(np.allclose(ref, act)))
        elif metric == "max_abs":
            value = float(np.max(np.abs(ref - act))) if ref.size else 0.0
        else:
            value = float(np.mean(np.abs(ref - act)) / max(np.mean(np.abs(ref)), 1e-12)) if ref.size else 0.0
        worst = max(worst, value)
    return worst


def mixed_precision(
    *,
    original_bytes: bytes,
    samples: Sequence[Mapping[str, np.ndarray]],
    chosen: Sequence[str],
    sites: Mapping[str, Any],
    build: Callable[[set[str]], ir.Model],
    max_error: float,
    metric: str,
) -> tuple[list[str], dict[str, Any]]:
    """Nodes to keep float so the output error is at most ``max_error`` (see the module docstring).

    Returns:
        ``(nodes kept float, details)``.
    """
    if not samples:
        return [], {"note": "no calibration samples kept: mixed precision skipped"}
    reference = verify.run_model(verify.make_session(original_bytes), samples)

    def error_of(nodes: set[str]) -> float:
        model = build(nodes)
        return output_error(reference, verify.run_model(verify.make_session(io.to_bytes(model)), samples), metric)

    chosen_set = set(chosen)
    full = error_of(chosen_set)
    info: dict[str, Any] = {"metric": metric, "max_error": max_error, "error_all_int8": full}
    if full <= max_error:
        info["error_final"] = full
        return [], info
    # a layer is a compute node plus the Relu/Clip folded into it
    followers: dict[str, list[str]] = {}
    for name in chosen:
        site = sites[name]
        if site.kind == "act":
            for other in chosen:
                if sites[other].kind == "compute" and sites[other].output == site.acts[0]:
                    followers.setdefault(other, []).append(name)
    layers = [n for n in chosen if sites[n].kind == "compute"]
    sensitivity = {layer: error_of({layer, *followers.get(layer, [])}) for layer in layers}
    ranked = sorted(layers, key=lambda n: sensitivity[n], reverse=True)

    def without(k: int) -> set[str]:
        removed = set(ranked[:k])
        for layer in ranked[:k]:
            removed.update(followers.get(layer, []))
        return chosen_set - removed

    low, high = 0, len(ranked)  # error(low) > max_error; find the smallest k with error <= max_error
    errors = {0: full}
    while high - low > 1:
        middle = (low + high) // 2
        errors[middle] = error_of(without(middle))
        if errors[middle] <= max_error:
            high = middle
        else:
            low = middle
    if high not in errors:
        errors[high] = error_of(without(high))
    kept = ranked[:high]
    info["error_final"] = errors[high]
    info["kept_float"] = {n: sensitivity[n] for n in kept}
    info["most_sensitive"] = {n: sensitivity[n] for n in ranked[:10]}
    if errors[high] > max_error:
        info["note"] = "max_error not reached even with every layer float (pass-through ops stay int8)"
    result = list(kept)
    for layer in kept:
        result.extend(followers.get(layer, []))
    return result, info
