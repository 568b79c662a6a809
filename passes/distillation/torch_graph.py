"""An ONNX graph (onnx-ir) run op by op in torch, with its float weights as trainable parameters.

:class:`TorchGraph` is a ``torch.nn.Module`` that interprets the main graph node by node with torch functions,
so autograd differentiates the model with respect to its initializers. It is what the ``distill`` pass trains.

- Float initializers read by weight-bearing ops (Conv/ConvTranspose weight and bias, Gemm/MatMul constant
  operands, BatchNormalization/InstanceNormalization/LayerNormalization scale and bias, PRelu slope,
  LSTM/GRU/RNN W/R/B, float constants of Add/Sub/Mul/Div except divisors and those whose result feeds
  Log/Sqrt/Reciprocal/Pow or a divisor) become ``nn.Parameter``; ``parameter_names`` maps
  each parameter key back to its initializer. Other constants are buffers. :meth:`TorchGraph.write_back` puts
  the trained values into the initializers (same shape and dtype; the graph is not changed).
- QuantizeLinear/DequantizeLinear run as fake quantization: ``q = clip(round(x / s) + z)`` with a
  straight-through estimator (the gradient passes ``round`` and the clip's inside unchanged), ``q`` held as a
  float tensor of integer values. With ``train_quantized_weights``, an integer weight read by a
  DequantizeLinear gets a float shadow parameter (its dequantized value) that is fake-quantized with the same
  scale on every forward; :meth:`TorchGraph.write_back` requantizes it into the integer initializer.
- With ``train_scales`` (LSQ-style QAT of scales), every positive float32 scale initializer read only as a
  Q/DQ scale is trained in log space, ``s = s0 * exp(u)`` with the parameter ``u`` starting at 0 (so it stays
  positive, and an untrained scale is written back bit for bit). Through the straight-through round, the
  gradient of ``DQ(Q(x))`` with respect to ``s`` is LSQ's: ``round(x/s) - x/s`` inside the range, the bound
  ``qmin - z`` / ``qmax - z`` outside. An int32 bias of Conv/ConvTranspose/Gemm whose scale is ``s_x * s_w`` (as
  the quantizers write it, and as onnxruntime's fused integer kernels assume) keeps that scale tied to the
  trained ``s_x`` and ``s_w`` and gets a float shadow; write-back requantizes it at the new product. A bias scale
  that is not that product is left alone (neither tied nor trained).
- LSTM/GRU/RNN run with torch's fused kernels (``torch._VF.lstm``/``gru``/``rnn_tanh``/``rnn_relu``, oneDNN
  for LSTM on CPU) when the node fits them: default activations (or Relu for RNN), no clip, no LSTM
  peepholes or input_forget, GRU linear_before_reset=1, every sequence length >= 1 (varying lengths run as a
  packed sequence). The parameters stay the ONNX W/R/B tensors; torch's flat weights are reordered copies
  built on every call (LSTM gates iofc -> ifgo, GRU zrh -> rzn; Wb/Rb are b_ih/b_hh), so gradients reach the
  ONNX tensors and write-back needs no reordering. Other nodes run the step-by-step loop, which also handles
  clip, peepholes and input_forget; ``recurrent_paths`` says which ran and why.
- Op semantics follow the ONNX operator specs (and onnxruntime where the spec leaves room); the converters
  onnx2torch and onnx2pytorch were read for the torch idioms. Shapes are computed at run time, so dynamic
  shapes, Shape/Gather/Concat chains and Reshape by computed shapes work.

Anything outside :data:`~sftonnx.passes.distillation.support.SUPPORTED_OPS` (other domains, If/Loop/Scan)
is refused at construction with :class:`UnsupportedGraphError`, naming every such op.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import numpy as np
import onnx_ir as ir
import torch
import torch.nn.functional as F  # noqa: N812 - the usual torch spelling
from torch import nn

from sftonnx.errors import InputError
from sftonnx.ir_utils import constant_array, opset_version
from sftonnx.passes.distillation.support import unsupported_ops

__all__ = ["TRAINABLE_INPUTS", "TorchGraph", "UnsupportedGraphError"]

#: Per op type, the input positions whose float initializer becomes a trainable parameter (None: any input).
TRAINABLE_INPUTS: dict[str, tuple[int, ...] | None] = {
    "Conv": (1, 2),
    "ConvTranspose": (1, 2),
    "Gemm": (0, 1, 2),
    "MatMul": (0, 1),
    "BatchNormalization": (1, 2),
    "InstanceNormalization": (1, 2),
    "LayerNormalization": (1, 2),
    "PRelu": (1,),
    "LSTM": (1, 2, 3, 7),
    "GRU": (1, 2, 3),
    "RNN": (1, 2, 3),
    "Add": None,
    "Sub": None,
    "Mul": None,
    "Div": None,
    "Einsum": None,
}


class UnsupportedGraphError(InputError):
    """The graph holds ops the torch rendering cannot run (named in the message)."""


# --------------------------------------------------------------------------------------------- helpers
_NUMPY_TO_TORCH = {
    np.dtype(np.float32): torch.float32,
    np.dtype(np.float64): torch.float64,
    np.dtype(np.float16): torch.float16,
    np.dtype(np.int64): torch.int64,
    np.dtype(np.int32): torch.int32,
    np.dtype(np.int16): torch.int16,
    np.dtype(np.int8): torch.int8,
    np.dtype(np.uint8): torch.uint8,
    np.dtype(np.bool_): torch.bool,
}


def _torch_dtype(data_type: int | ir.DataType) -> torch.dtype:
    dtype = ir.DataType(int(data_type)).numpy()
    if dtype not in _NUMPY_TO_TORCH:
        name = ir.DataType(int(data_type)).name
        raise UnsupportedGraphError(f"torch rendering: element type {name} is not supported")
    return _NUMPY_TO_TORCH[dtype]


def to_tensor(array: np.ndarray) -> torch.Tensor:
    """A torch tensor holding ``array`` (copied; unsigned 16/32/64-bit ints become int64)."""
    array = np.asarray(array)
    if array.dtype in (np.uint16, np.uint32, np.uint64, np.int16) or array.dtype.kind == "U":
        array = array.astype(np.int64)
    return torch.from_numpy(np.array(array, copy=True))


class _Attrs:
    def __init__(self, node: ir.Node) -> None:
        self.node = node

    def __call__(self, name: str, default: Any = None) -> Any:
        attribute = self.node.attributes.get(name)
        if attribute is None:
            return default
        value = attribute.value
        if isinstance(value, tuple):
            return list(value)
        return value


def _ints(tensor: torch.Tensor | None) -> list[int] | None:
    return None if tensor is None else [int(v) for v in tensor.reshape(-1).tolist()]


def _axis(axis: int, rank: int) -> int:
    return axis + rank if axis < 0 else axis


def _is_float(tensor: torch.Tensor) -> bool:
    return tensor.dtype.is_floating_point


# ------------------------------------------------------------------------------------ spatial helpers
def _explicit_pads(node: ir.Node, x: torch.Tensor, kernel: Sequence[int], strides, dilations) -> list[int]:
    """Conv/pool pads ``[b1, b2, ..., e1, e2, ...]`` with ``auto_pad`` resolved on the input's shape."""
    at = _Attrs(node)
    spatial = len(kernel)
    auto_pad = at("auto_pad", "NOTSET")
    if isinstance(auto_pad, bytes):
        auto_pad = auto_pad.decode()
    if auto_pad in ("SAME_UPPER", "SAME_LOWER"):
        pads_begin, pads_end = [], []
        for i in range(spatial):
            size = x.shape[2 + i]
            out = -(-size // strides[i])
            total = max(0, (out - 1) * strides[i] + (kernel[i] - 1) * dilations[i] + 1 - size)
            small = total // 2
            pads_begin.append(small if auto_pad == "SAME_UPPER" else total - small)
            pads_end.append(total - small if auto_pad == "SAME_UPPER" else small)
        return pads_begin + pads_end
    if auto_pad == "VALID":
        return [0] * (2 * spatial)
    return list(at("pads", [0] * (2 * spatial)))


def _torch_pad(pads: Sequence[int]) -> list[int]:
    """ONNX spatial pads ``[b1, b2, e1, e2]`` as ``F.pad``'s list (last axis first)."""
    spatial = len(pads) // 2
    result: list[int] = []
    for i in reversed(range(spatial)):
        result += [pads[i], pads[spatial + i]]
    return result


def _symmetric(pads: Sequence[int]) -> list[int] | None:
    spatial = len(pads) // 2
    return list(pads[:spatial]) if list(pads[:spatial]) == list(pads[spatial:]) else None


_CONV = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}
_CONV_T = {1: F.conv_transpose1d, 2: F.conv_transpose2d, 3: F.conv_transpose3d}
_MAXPOOL = {1: F.max_pool1d, 2: F.max_pool2d, 3: F.max_pool3d}
_AVGPOOL = {1: F.avg_pool1d, 2: F.avg_pool2d, 3: F.avg_pool3d}


# ------------------------------------------------------------------------------------------------ ops
def _conv(node, x, w, b=None):
    at = _Attrs(node)
    spatial = w.dim() - 2
    kernel = at("kernel_shape", list(w.shape[2:]))
    strides = at("strides", [1] * spatial)
    dilations = at("dilations", [1] * spatial)
    pads = _explicit_pads(node, x, kernel, strides, dilations)
    padding = _symmetric(pads)
    if padding is None:
        x, padding = F.pad(x, _torch_pad(pads)), [0] * spatial
    return _CONV[spatial](x, w, b, strides, padding, dilations, at("group", 1))


def _conv_transpose(node, x, w, b=None):
    at = _Attrs(node)
    spatial = w.dim() - 2
    group = at("group", 1)
    kernel = at("kernel_shape", list(w.shape[2:]))
    strides = at("strides", [1] * spatial)
    dilations = at("dilations", [1] * spatial)
    output_padding = at("output_padding", [0] * spatial)
    auto_pad = at("auto_pad", "NOTSET")
    output_shape = at("output_shape")
    if output_shape is not None or auto_pad in ("SAME_UPPER", "SAME_LOWER"):
        if output_shape is None:
            output_shape = [x.shape[2 + i] * strides[i] for i in range(spatial)]
        output_shape = list(output_shape)[-spatial:]
        pads_begin, pads_end = [], []
        for i in range(spatial):
            total = (
                strides[i] * (x.shape[2 + i] - 1) + output_padding[i] + (kernel[i] - 1) * dilations[i] + 1
                - output_shape[i]
            )
            total = max(total, 0)
            if auto_pad == "SAME_UPPER":
                pads_begin.append(total // 2)
                pads_end.append(total - total // 2)
            else:
                pads_begin.append(total - total // 2)
                pads_end.append(total // 2)
        pads = pads_begin + pads_end
    elif auto_pad == "VALID":
        pads = [0] * (2 * spatial)
    else:
        pads = list(at("pads", [0] * (2 * spatial)))
    padding = _symmetric(pads)
    if padding is not None and all(p < s or p < d for p, s, d in zip(output_padding, strides, dilations, strict=True)):
        return _CONV_T[spatial](x, w, b, strides, padding, output_padding, group, dilations)
    y = _CONV_T[spatial](x, w, b, strides, 0, output_padding, group, dilations)
    slices = [slice(None), slice(None)]
    for i in range(spatial):
        slices.append(slice(pads[i], y.shape[2 + i] - pads[spatial + i]))
    return y[tuple(slices)]


def _gemm(node, a, b, c=None):
    at = _Attrs(node)
    if at("transA", 0):
        a = a.transpose(0, 1)
    if at("transB", 0):
        b = b.transpose(0, 1)
    y = a @ b
    alpha, beta = at("alpha", 1.0), at("beta", 1.0)
    if alpha != 1.0:
        y = y * alpha
    if c is not None:
        y = y + (c * beta if beta != 1.0 else c)
    return y


def _max_pool(node, x):
    at = _Attrs(node)
    if len(node.outputs) > 1 and node.outputs[1] is not None and node.outputs[1].uses():
        raise UnsupportedGraphError("torch rendering: MaxPool's Indices output is not supported")
    kernel = at("kernel_shape")
    spatial = len(kernel)
    strides = at("strides", [1] * spatial)
    dilations = at("dilations", [1] * spatial)
    pads = _explicit_pads(node, x, kernel, strides, dilations)
    padding = _symmetric(pads)
    if padding is None or any(2 * p > k for p, k in zip(padding, kernel, strict=True)):
        x, padding = F.pad(x, _torch_pad(pads), value=-math.inf), [0] * spatial
    return _MAXPOOL[spatial](x, kernel, strides, padding, dilations, ceil_mode=bool(at("ceil_mode", 0)))


def _average_pool(node, x):
    at = _Attrs(node)
    kernel = at("kernel_shape")
    spatial = len(kernel)
    strides = at("strides", [1] * spatial)
    if any(d != 1 for d in at("dilations", [1] * spatial)):
        raise UnsupportedGraphError("torch rendering: AveragePool with dilations is not supported")
    pads = _explicit_pads(node, x, kernel, strides, [1] * spatial)
    ceil = bool(at("ceil_mode", 0))
    pool = _AVGPOOL[spatial]
    if not any(pads):
        return pool(x, kernel, strides, 0, ceil_mode=ceil)
    padded = F.pad(x, _torch_pad(pads))
    if at("count_include_pad", 0):
        return pool(padded, kernel, strides, 0, ceil_mode=ceil)
    mask = F.pad(torch.ones((1, 1, *x.shape[2:]), dtype=x.dtype), _torch_pad(pads))
    return pool(padded, kernel, strides, 0, ceil_mode=ceil) / pool(mask, kernel, strides, 0, ceil_mode=ceil)


def _batch_norm(node, x, scale, bias, mean, var):
    return F.batch_norm(x, mean, var, scale, bias, False, 0.0, _Attrs(node)("epsilon", 1e-5))


def _instance_norm(node, x, scale, bias):
    return F.instance_norm(x, weight=scale, bias=bias, eps=_Attrs(node)("epsilon", 1e-5))


def _layer_norm(node, x, scale, bias=None):
    at = _Attrs(node)
    axis = _axis(at("axis", -1), x.dim())
    dims = list(range(axis, x.dim()))
    compute = x.float() if x.dtype == torch.float16 else x
    mean = compute.mean(dim=dims, keepdim=True)
    var = ((compute - mean) ** 2).mean(dim=dims, keepdim=True)
    y = ((compute - mean) / torch.sqrt(var + at("epsilon", 1e-5))).to(x.dtype) * scale
    return y + bias if bias is not None else y


def _softmax(node, x, *, log: bool, opset: int):
    at = _Attrs(node)
    fn = F.log_softmax if log else F.softmax
    if opset >= 13:
        return fn(x, dim=at("axis", -1))
    axis = _axis(at("axis", 1), x.dim())
    shape = x.shape
    flat = x.reshape(int(np.prod(shape[:axis], dtype=np.int64)), -1)
    return fn(flat, dim=1).reshape(shape)


def _clip(node, x, low=None, high=None, *, opset: int):
    at = _Attrs(node)
    if opset < 11:
        low_v, high_v = at("min"), at("max")
        return torch.clamp(x, min=low_v, max=high_v)
    if low is not None:
        x = torch.maximum(x, low.to(x.dtype))
    if high is not None:
        x = torch.minimum(x, high.to(x.dtype))
    return x


def _gelu(node, x):
    approximate = _Attrs(node)("approximate", "none")
    return F.gelu(x, approximate="tanh" if approximate == "tanh" else "none")


def _div(node, a, b):
    if _is_float(a) or _is_float(b):
        return a / b
    return torch.div(a, b, rounding_mode="trunc")


def _pow(node, a, b):
    if _is_float(a) and not _is_float(b):
        b = b.to(a.dtype)
    return torch.pow(a, b).to(a.dtype)


def _mod(node, a, b):
    if _Attrs(node)("fmod", 0):
        return torch.fmod(a, b)
    return torch.remainder(a, b)


def _variadic(fn):
    def run(node, *args):
        result = args[0]
        for arg in args[1:]:
            result = fn(result, arg)
        return result

    return run


def _mean(node, *args):
    return _variadic(torch.add)(node, *args) / len(args)


def _reshape(node, x, shape):
    target = _ints(shape)
    allowzero = _Attrs(node)("allowzero", 0)
    if not allowzero:
        target = [x.shape[i] if v == 0 else v for i, v in enumerate(target)]
    return x.reshape(target)


def _flatten(node, x):
    axis = _axis(_Attrs(node)("axis", 1), x.dim())
    return x.reshape(int(np.prod(x.shape[:axis], dtype=np.int64)), -1)


def _transpose(node, x):
    perm = _Attrs(node)("perm", list(reversed(range(x.dim()))))
    return x.permute(*perm)


def _concat(node, *args):
    axis = _Attrs(node)("axis")
    present = [a for a in args if a is not None]
    dtype = present[0].dtype
    return torch.cat([a.to(dtype) for a in present], dim=axis)


def _split(node, x, split=None, *, opset: int):
    at = _Attrs(node)
    axis = _axis(at("axis", 0), x.dim())
    parts = _ints(split) if split is not None else at("split")
    count = len(node.outputs)
    if parts is None:
        size = x.shape[axis]
        num = at("num_outputs", count)
        chunk = -(-size // num)
        parts = [min(chunk, size - i * chunk) for i in range(num)]
    return tuple(torch.split(x, list(parts), dim=axis))


def _slice(node, x, starts=None, ends=None, axes=None, steps=None, *, opset: int):
    at = _Attrs(node)
    if opset < 10:
        starts_l, ends_l, axes_l, steps_l = at("starts"), at("ends"), at("axes"), None
    else:
        starts_l, ends_l, axes_l, steps_l = _ints(starts), _ints(ends), _ints(axes), _ints(steps)
    if axes_l is None:
        axes_l = list(range(len(starts_l)))
    if steps_l is None:
        steps_l = [1] * len(starts_l)
    for start, end, axis, step in zip(starts_l, ends_l, axes_l, steps_l, strict=True):
        axis = _axis(axis, x.dim())
        size = x.shape[axis]
        start = start + size if start < 0 else start
        end = end + size if end < 0 else end
        if step > 0:
            start, end = min(max(start, 0), size), min(max(end, 0), size)
            index = [slice(None)] * x.dim()
            index[axis] = slice(start, end, step)
            x = x[tuple(index)]
        else:
            start, end = min(max(start, 0), size - 1), min(max(end, -1), size - 1)
            indices = torch.arange(start, end, step, dtype=torch.int64)
            x = x.index_select(axis, indices)
    return x


def _squeeze(node, x, axes=None, *, opset: int):
    axes_l = _Attrs(node)("axes") if opset < 13 else _ints(axes)
    if axes_l is None:
        return x.squeeze()
    dims = sorted((_axis(a, x.dim()) for a in axes_l), reverse=True)
    for dim in dims:
        x = x.squeeze(dim)
    return x


def _unsqueeze(node, x, axes=None, *, opset: int):
    axes_l = _Attrs(node)("axes") if opset < 13 else _ints(axes)
    rank = x.dim() + len(axes_l)
    for dim in sorted(_axis(a, rank) for a in axes_l):
        x = x.unsqueeze(dim)
    return x


def _gather(node, x, indices):
    axis = _axis(_Attrs(node)("axis", 0), x.dim())
    indices = indices.to(torch.int64)
    indices = torch.where(indices < 0, indices + x.shape[axis], indices)
    flat = x.index_select(axis, indices.reshape(-1))
    return flat.reshape((*x.shape[:axis], *indices.shape, *x.shape[axis + 1 :]))


def _gather_elements(node, x, indices):
    axis = _axis(_Attrs(node)("axis", 0), x.dim())
    indices = indices.to(torch.int64)
    indices = torch.where(indices < 0, indices + x.shape[axis], indices)
    return torch.gather(x, axis, indices)


def _gather_nd(node, x, indices):
    if _Attrs(node)("batch_dims", 0):
        raise UnsupportedGraphError("torch rendering: GatherND with batch_dims is not supported")
    indices = indices.to(torch.int64)
    depth = indices.shape[-1]
    sizes = torch.tensor(x.shape[:depth], dtype=torch.int64)
    indices = torch.where(indices < 0, indices + sizes, indices)
    return x[tuple(indices[..., i] for i in range(depth))]


def _scatter_elements(node, x, indices, updates):
    at = _Attrs(node)
    axis = _axis(at("axis", 0), x.dim())
    indices = indices.to(torch.int64)
    indices = torch.where(indices < 0, indices + x.shape[axis], indices)
    reduction = at("reduction", "none")
    if reduction == "none":
        return torch.scatter(x, axis, indices, updates)
    if reduction == "add":
        return torch.scatter_add(x, axis, indices, updates)
    reduce = {"mul": "prod", "max": "amax", "min": "amin"}[reduction]
    return torch.scatter_reduce(x, axis, indices, updates, reduce=reduce)


def _expand(node, x, shape):
    target = torch.broadcast_shapes(tuple(x.shape), tuple(_ints(shape)))
    return x.expand(target)


def _tile(node, x, repeats):
    return x.repeat(*_ints(repeats))


def _range(node, start, limit, delta):
    return torch.arange(start.item(), limit.item(), delta.item(), dtype=start.dtype)


def _pad(node, x, pads=None, value=None, axes=None, *, opset: int):
    at = _Attrs(node)
    mode = at("mode", "constant")
    if opset < 11:
        pad_list, fill = list(at("pads")), at("value", 0.0)
    else:
        pad_list = _ints(pads)
        fill = value.item() if value is not None and value.numel() else 0
    rank = x.dim()
    axes_l = [_axis(a, rank) for a in _ints(axes)] if axes is not None else list(range(rank))
    count = len(axes_l)
    begin = dict(zip(axes_l, pad_list[:count], strict=True))
    end = dict(zip(axes_l, pad_list[count:], strict=True))
    padded = [a for a in range(rank) if begin.get(a, 0) or end.get(a, 0)]
    if not padded:
        return x
    first = min(padded)
    torch_pads: list[int] = []
    for axis in reversed(range(first, rank)):
        torch_pads += [begin.get(axis, 0), end.get(axis, 0)]
    if mode == "constant":
        return F.pad(x, torch_pads, value=fill)
    torch_mode = {"reflect": "reflect", "edge": "replicate", "wrap": "circular"}.get(mode)
    if torch_mode is None:
        raise UnsupportedGraphError(f"torch rendering: Pad mode '{mode}' is not supported")
    spatial = rank - first
    # torch pads the last 1-3 axes of a tensor with batch/channel axes in front: add them when missing
    lead = max(0, spatial + 2 - rank)
    y = x.reshape((1,) * lead + tuple(x.shape)) if lead else x
    if spatial > 3:
        raise UnsupportedGraphError(f"torch rendering: Pad mode '{mode}' over {spatial} axes is not supported")
    y = F.pad(y, torch_pads, mode=torch_mode)
    return y.reshape(y.shape[lead:]) if lead else y


def _resize_coordinates(mode: str, out: int, size: int, scale: float) -> np.ndarray:
    x = np.arange(out, dtype=np.float64)
    if mode == "half_pixel":
        return (x + 0.5) / scale - 0.5
    if mode == "pytorch_half_pixel":
        return (x + 0.5) / scale - 0.5 if out > 1 else np.zeros(out)
    if mode == "align_corners":
        return x * (size - 1) / (out - 1) if out > 1 else np.zeros(out)
    if mode == "asymmetric":
        return x / scale
    raise UnsupportedGraphError(f"torch rendering: Resize coordinate_transformation_mode '{mode}' is not supported")


def _resize(node, x, roi=None, scales=None, sizes=None, *, opset: int):
    at = _Attrs(node)
    if opset < 11:  # Resize-10: (X, scales)
        scales, sizes = roi, None
    mode = at("mode", "nearest")
    coordinate_mode = at("coordinate_transformation_mode", "half_pixel" if opset >= 11 else "asymmetric")
    nearest_mode = at("nearest_mode", "round_prefer_floor")
    if at("antialias", 0) or mode not in ("nearest", "linear") or at("axes") is not None:
        raise UnsupportedGraphError(
            f"torch rendering: Resize with mode '{mode}', antialias or axes is not supported"
        )
    rank = x.dim()
    if sizes is not None and sizes.numel():
        out_sizes = _ints(sizes)
        scale_list = [out_sizes[i] / x.shape[i] for i in range(rank)]
    else:
        scale_list = [float(v) for v in scales.reshape(-1).tolist()]
        out_sizes = [int(math.floor(x.shape[i] * scale_list[i])) for i in range(rank)]
    for axis in range(rank):
        size, out, scale = x.shape[axis], out_sizes[axis], scale_list[axis]
        if size == out and scale == 1.0:
            continue
        coords = _resize_coordinates(coordinate_mode, out, size, scale)
        if mode == "nearest":
            rounding = {
                "round_prefer_floor": lambda c: np.ceil(c - 0.5),
                "round_prefer_ceil": lambda c: np.floor(c + 0.5),
                "floor": np.floor,
                "ceil": np.ceil,
            }[nearest_mode]
            index = np.clip(rounding(coords), 0, size - 1).astype(np.int64)
            x = x.index_select(axis, torch.from_numpy(index))
        else:
            coords = np.clip(coords, 0, size - 1)
            low = np.floor(coords).astype(np.int64)
            high = np.minimum(low + 1, size - 1)
            weight_shape = [1] * rank
            weight_shape[axis] = out
            weight = torch.from_numpy((coords - low).astype(np.float32)).to(x.dtype).reshape(weight_shape)
            a = x.index_select(axis, torch.from_numpy(low))
            b = x.index_select(axis, torch.from_numpy(high))
            x = a + (b - a) * weight
    return x


def _shape(node, x):
    at = _Attrs(node)
    shape = list(x.shape)
    start, end = at("start", 0), at("end")
    return torch.tensor(shape[start:end] if end is not None else shape[start:], dtype=torch.int64)


def _size(node, x):
    return torch.tensor(x.numel(), dtype=torch.int64)


def _cast(node, x):
    return x.to(_torch_dtype(_Attrs(node)("to")))


def _cast_like(node, x, like):
    return x.to(like.dtype)


def _constant_of_shape(node, shape):
    value = _Attrs(node)("value")
    array = value.numpy() if value is not None else np.zeros(1, np.float32)
    fill = to_tensor(array).reshape(-1)[0]
    return torch.full(tuple(_ints(shape)), fill.item(), dtype=fill.dtype)


def _identity(node, x, *rest):
    return x


def _dropout(node, x, *rest):
    if len(node.outputs) > 1 and node.outputs[1] is not None and node.outputs[1].uses():
        return x, torch.ones_like(x, dtype=torch.bool)
    return x


def _where(node, condition, a, b):
    return torch.where(condition.bool(), a, b)


def _reduce(fn_name: str):
    def run(node, x, axes=None, *, opset: int):
        at = _Attrs(node)
        takes_input = opset >= (13 if fn_name == "sum" else 18)
        axes_l = _ints(axes) if takes_input else at("axes")
        keep = bool(at("keepdims", 1))
        if not axes_l:
            if at("noop_with_empty_axes", 0):
                return x
            axes_l = list(range(x.dim()))
        dims = sorted({_axis(a, x.dim()) for a in axes_l})
        if fn_name == "mean":
            return x.mean(dim=dims, keepdim=keep)
        if fn_name == "sum":
            return x.sum(dim=dims, keepdim=keep)
        if fn_name == "sum_square":
            return (x * x).sum(dim=dims, keepdim=keep)
        if fn_name == "l2":
            return torch.sqrt((x * x).sum(dim=dims, keepdim=keep))
        if fn_name == "max":
            return torch.amax(x, dim=dims, keepdim=keep)
        if fn_name == "min":
            return torch.amin(x, dim=dims, keepdim=keep)
        for dim in reversed(dims):  # prod
            x = x.prod(dim=dim, keepdim=keep)
        return x

    return run


def _arg(largest: bool):
    def run(node, x):
        at = _Attrs(node)
        axis = _axis(at("axis", 0), x.dim())
        keep = bool(at("keepdims", 1))
        if at("select_last_index", 0):
            flipped = x.flip(axis)
            index = (flipped.argmax if largest else flipped.argmin)(dim=axis, keepdim=keep)
            return x.shape[axis] - 1 - index
        return (x.argmax if largest else x.argmin)(dim=axis, keepdim=keep)

    return run


def _topk(node, x, k):
    at = _Attrs(node)
    values, indices = torch.topk(
        x, int(k.reshape(-1)[0]), dim=at("axis", -1), largest=bool(at("largest", 1)), sorted=bool(at("sorted", 1))
    )
    return values, indices


def _reverse_sequence(node, x, lengths):
    at = _Attrs(node)
    batch_axis, time_axis = at("batch_axis", 1), at("time_axis", 0)
    steps = x.shape[time_axis]
    time = torch.arange(steps).unsqueeze(1)  # [T, 1]
    lens = lengths.to(torch.int64).unsqueeze(0)  # [1, B]
    index = torch.where(time < lens, lens - 1 - time, time)  # [T, B]
    if batch_axis < time_axis:
        index = index.transpose(0, 1)
    shape = [1] * x.dim()
    shape[time_axis], shape[batch_axis] = x.shape[time_axis], x.shape[batch_axis]
    index = index.reshape(shape).expand(x.shape)
    return torch.gather(x, time_axis, index)


def _einsum(node, *args):
    return torch.einsum(_Attrs(node)("equation"), *args)


def _prelu(node, x, slope):
    return torch.where(x < 0, x * slope, x)


def _hard_sigmoid(node, x):
    at = _Attrs(node)
    return torch.clamp(x * at("alpha", 0.2) + at("beta", 0.5), 0.0, 1.0)


def _unary(fn: Callable[[torch.Tensor], torch.Tensor]):
    def run(node, x):
        return fn(x)

    return run


# ------------------------------------------------------------------------------------------ recurrent
_ACTIVATIONS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "Sigmoid": torch.sigmoid,
    "Tanh": torch.tanh,
    "Relu": torch.relu,
}


#: Per op, the ONNX gate each of torch's gates is (torch LSTM i,f,g,o from ONNX i,o,f,c; GRU r,z,n from z,r,h).
_TORCH_GATE_ORDER = {"LSTM": (0, 2, 3, 1), "GRU": (1, 0, 2), "RNN": (0,)}
_DEFAULT_ACTIVATIONS = {"LSTM": ["Sigmoid", "Tanh", "Tanh"], "GRU": ["Sigmoid", "Tanh"], "RNN": ["Tanh"]}


def _activation_names(node, directions: int) -> list[str]:
    defaults = _DEFAULT_ACTIVATIONS[node.op_type]
    names = _Attrs(node)("activations") or defaults * directions
    names = [n.decode() if isinstance(n, bytes) else n for n in names]
    return names * directions if len(names) == len(defaults) else names


def _activations(node, defaults: list[str], directions: int) -> list[list[Callable]]:
    names = _activation_names(node, directions)
    unknown = sorted({n for n in names if n not in _ACTIVATIONS})
    if unknown:
        raise UnsupportedGraphError(f"torch rendering: {node.op_type} activations {unknown} are not supported")
    per = len(defaults)
    return [[_ACTIVATIONS[n] for n in names[d * per : (d + 1) * per]] for d in range(directions)]


def _fused_blocker(node, x, w, r, b, lengths, initial_h, initial_c, peepholes, directions: int) -> str | None:
    """Why torch's fused kernel cannot run this LSTM/GRU/RNN (None: it can)."""
    at = _Attrs(node)
    op = node.op_type
    names = _activation_names(node, directions)
    if op == "RNN":
        if len(set(names)) != 1 or names[0] not in ("Tanh", "Relu"):
            return "activations"
    elif names != _DEFAULT_ACTIVATIONS[op] * directions:
        return "activations"
    if at("clip") is not None:
        return "clip"
    if op == "LSTM" and at("input_forget", 0):
        return "input_forget"
    if op == "LSTM" and peepholes is not None:
        return "peepholes"
    if op == "GRU" and not at("linear_before_reset", 0):
        return "linear_before_reset_0"
    if x.dtype not in (torch.float32, torch.float64) or any(
        t is not None and t.dtype != x.dtype for t in (w, r, b, initial_h, initial_c)
    ):
        return "dtype"
    if x.shape[0] == 0 or x.shape[1] == 0:
        return "empty"
    if lengths is not None and bool((lengths.to(torch.int64) < 1).any()):
        return "zero_length"
    return None


def _torch_gates(tensor: torch.Tensor, op: str) -> torch.Tensor:
    """ONNX-ordered gate blocks along axis 0 in torch's order (a differentiable copy)."""
    order = _TORCH_GATE_ORDER[op]
    if len(order) == 1:
        return tensor.contiguous()
    chunks = tensor.chunk(len(order), dim=0)
    return torch.cat([chunks[i] for i in order], dim=0)


def _recurrent_fused(node, x, w, r, b, lengths, initial_h, initial_c, directions: int):
    """One LSTM/GRU/RNN layer with torch's fused kernel (``torch._VF``); x is ``[T, B, I]``.

    Weights stay in ONNX layout as parameters: the torch-ordered flat weights are built from them on every call,
    so gradients flow back to W/R/B and write-back needs no reordering. ONNX's two biases Wb/Rb are torch's
    b_ih/b_hh. Varying ``sequence_lens`` run as a packed sequence (outputs past a sequence's end are zero, Y_h
    is its last valid state, as in ONNX).
    """
    op = node.op_type
    steps, batch = x.shape[0], x.shape[1]
    hidden = r.shape[-1]
    flat: list[torch.Tensor] = []
    gates = len(_TORCH_GATE_ORDER[op])
    for d in range(directions):
        flat += [_torch_gates(w[d], op), _torch_gates(r[d], op)]
        if b is not None:
            flat += [_torch_gates(b[d, : gates * hidden], op), _torch_gates(b[d, gates * hidden :], op)]
    h0 = initial_h if initial_h is not None else x.new_zeros(directions, batch, hidden)
    hx: Any = h0
    if op == "LSTM":
        hx = (h0, initial_c if initial_c is not None else x.new_zeros(directions, batch, hidden))
    if op == "RNN":
        kernel = torch._VF.rnn_relu if _activation_names(node, directions)[0] == "Relu" else torch._VF.rnn_tanh
    else:
        kernel = torch._VF.lstm if op == "LSTM" else torch._VF.gru
    # (has_biases, num_layers, dropout, train, bidirectional): train only picks oneDNN's training propagation
    options = (b is not None, 1, 0.0, torch.is_grad_enabled(), directions == 2)
    lens = lengths.to(torch.int64) if lengths is not None else None
    if lens is not None and bool((lens >= steps).all()):
        lens = None
    reverse = _Attrs(node)("direction", "forward") == "reverse"
    if reverse:  # torch runs one direction forward only: reverse each sequence in time, and the outputs back
        x = _flip_time(x, lens)
    if lens is None:
        result = kernel(x.contiguous(), hx, flat, *options, False)  # batch_first=False
        y = result[0]
    else:
        packed = nn.utils.rnn.pack_padded_sequence(x, lens.cpu(), enforce_sorted=False)
        order, unorder = packed.sorted_indices, packed.unsorted_indices
        hx = tuple(h.index_select(1, order) for h in hx) if op == "LSTM" else hx.index_select(1, order)
        result = kernel(packed.data, packed.batch_sizes, hx, flat, *options)
        packed_y = nn.utils.rnn.PackedSequence(result[0], packed.batch_sizes, order, unorder)
        y = nn.utils.rnn.pad_packed_sequence(packed_y, total_length=steps)[0]
        result = (y, *(h.index_select(1, unorder) for h in result[1:]))
    if reverse:
        y = _flip_time(y, lens)
    y = y.reshape(steps, batch, directions, hidden).permute(0, 2, 1, 3)  # [T, D, B, H]
    return (y, result[1], result[2]) if op == "LSTM" else (y, result[1])


def _flip_time(x: torch.Tensor, lens: torch.Tensor | None) -> torch.Tensor:
    """``x[T, B, ...]`` with each sequence's first ``lens[b]`` steps reversed (all of them when ``lens`` is None)."""
    if lens is None:
        return x.flip(0)
    time = torch.arange(x.shape[0]).unsqueeze(1)  # [T, 1]
    index = torch.where(time < lens.unsqueeze(0), lens.unsqueeze(0) - 1 - time, time)  # [T, B]
    index = index.reshape(*index.shape, *([1] * (x.dim() - 2))).expand(x.shape)
    return torch.gather(x, 0, index)


def _recurrent(
    node, x, w, r, b=None, lengths=None, initial_h=None, initial_c=None, peepholes=None, *, fused=True, paths=None
):
    """LSTM, GRU and RNN (ONNX gate orders: LSTM i,o,f,c; GRU z,r,h).

    With ``fused``, torch's fused kernel runs the layer when it can express it (default activations, no clip,
    no LSTM input_forget or peepholes, GRU linear_before_reset=1, float32/64, every sequence length >= 1);
    otherwise a Python loop over the time steps does. An LSTM that only peepholes keep from the fused kernel
    runs a loop with a hand-written backward (:class:`_PeepholeLSTM`, no autograd graph per step). ``paths`` (a
    dict) records per node "fused", "peephole BPTT" or "loop: <reason>".
    """
    at = _Attrs(node)
    directions = 2 if at("direction", "forward") == "bidirectional" else 1
    if at("layout", 0):
        x = x.transpose(0, 1)
        initial_h = initial_h.transpose(0, 1) if initial_h is not None else None
        initial_c = initial_c.transpose(0, 1) if initial_c is not None else None
    blocker = "disabled"
    if fused:
        blocker = _fused_blocker(node, x, w, r, b, lengths, initial_h, initial_c, peepholes, directions)
    bptt = blocker == "peepholes" and (
        _fused_blocker(node, x, w, r, b, lengths, initial_h, initial_c, None, directions) is None
        and peepholes.dtype == x.dtype
    )
    if paths is not None:
        paths[node.name or node.op_type] = (
            "fused" if blocker is None else "peephole BPTT" if bptt else f"loop: {blocker}"
        )
    if blocker is None:
        outputs = _recurrent_fused(node, x, w, r, b, lengths, initial_h, initial_c, directions)
    elif bptt:
        outputs = _peephole_lstm(node, x, w, r, b, lengths, initial_h, initial_c, peepholes, directions)
    else:
        outputs = _recurrent_loop(node, x, w, r, b, lengths, initial_h, initial_c, peepholes)
    if at("layout", 0):
        y, *states = outputs
        outputs = (y.permute(2, 0, 1, 3), *(s.transpose(0, 1) for s in states))
    return outputs


def _length_mask(lengths, steps: int, dtype):
    """``[T, B, 1]`` of 1 where a time step is within its sequence's length; ``None`` when every one is full."""
    if lengths is None or not bool((lengths.to(torch.int64) < steps).any()):
        return None
    lens = lengths.to(torch.int64)
    return (torch.arange(steps).unsqueeze(1) < lens.unsqueeze(0)).to(dtype).unsqueeze(-1)


def _peephole_lstm(node, x, w, r, b, lengths, initial_h, initial_c, peepholes, directions: int):
    """An LSTM with peepholes and default activations, as :func:`_recurrent_loop` computes it.

    The input projection runs through autograd, the recurrence through :class:`_PeepholeLSTM`.
    """
    steps, batch = x.shape[0], x.shape[1]
    hidden = r.shape[-1]
    mask = _length_mask(lengths, steps, x.dtype)
    reverse_only = _Attrs(node)("direction", "forward") == "reverse"
    ys, hs, cs = [], [], []
    for d in range(directions):
        projected = x @ w[d].transpose(0, 1)  # [T, B, 4H]
        if b is not None:
            projected = projected + (b[d, : 4 * hidden] + b[d, 4 * hidden :])
        h0 = initial_h[d] if initial_h is not None else x.new_zeros(batch, hidden)
        c0 = initial_c[d] if initial_c is not None else x.new_zeros(batch, hidden)
        y, h, c = _PeepholeLSTM.apply(projected, r[d].transpose(0, 1), peepholes[d], h0, c0, mask,
                                      reverse_only or d == 1)
        ys.append(y)
        hs.append(h)
        cs.append(c)
    return torch.stack(ys, dim=1), torch.stack(hs), torch.stack(cs)


class _PeepholeLSTM(torch.autograd.Function):
    """The recurrence of one LSTM direction with peepholes, forward and backward through time by hand.

    Inputs: ``gates_x [T, B, 4H]`` (x W^T + Wb + Rb, ONNX gate order i, o, f, c), ``r_t [H, 4H]`` (R^T),
    ``p [3H]`` (P_i, P_o, P_f), ``h0``/``c0 [B, H]``, ``mask [T, B, 1]`` or None (1 inside a sequence), and
    whether to run from the last step. Per step, with default activations::

        g = gates_x[t] + h r_t;  i = sig(g_i + P_i c);  f = sig(g_f + P_f c);  u = tanh(g_c)
        c' = f c + i u;  o = sig(g_o + P_o c');  h' = o tanh(c')

    and past a sequence's end (mask 0) the state is carried unchanged and the output is 0. Returns
    ``(y [T, B, H], h_last, c_last)``. The backward pass runs the same steps in reverse with the chain rule
    written out, so autograd records one node for the whole sequence instead of ~20 per step.
    """

    @staticmethod
    def forward(ctx, gates_x, r_t, p, h0, c0, mask, reverse):  # noqa: D102
        steps, hidden = gates_x.shape[0], r_t.shape[0]
        p_i, p_o, p_f = p[:hidden], p[hidden : 2 * hidden], p[2 * hidden :]
        h, c = h0, c0
        saved = {k: [None] * steps for k in ("h", "c", "i", "f", "o", "u", "cn", "tc")}
        y = gates_x.new_empty(steps, *h0.shape)
        for t in range(steps - 1, -1, -1) if reverse else range(steps):
            g = torch.addmm(gates_x[t], h, r_t)
            i = torch.sigmoid(torch.addcmul(g[:, :hidden], p_i, c))
            f = torch.sigmoid(torch.addcmul(g[:, 2 * hidden : 3 * hidden], p_f, c))
            u = torch.tanh(g[:, 3 * hidden :])
            cn = torch.addcmul(f * c, i, u)
            o = torch.sigmoid(torch.addcmul(g[:, hidden : 2 * hidden], p_o, cn))
            tc = torch.tanh(cn)
            hn = o * tc
            for key, value in (("h", h), ("c", c), ("i", i), ("f", f), ("o", o), ("u", u), ("cn", cn), ("tc", tc)):
                saved[key][t] = value
            if mask is None:
                h, c, y[t] = hn, cn, hn
            else:
                m = mask[t]
                h, c, y[t] = torch.lerp(h, hn, m), torch.lerp(c, cn, m), m * hn
        h_s, c_s, i_s, f_s, o_s, u_s, cn_s, tc_s = (torch.stack(saved[k]) for k in saved)
        # the backward's per-step factors, computed once for all steps
        factors = (
            tc_s * o_s * (1 - o_s),  # d g_o / d h'
            o_s * (1 - tc_s * tc_s),  # d c' / d h' (through tanh)
            u_s * i_s * (1 - i_s),  # d g_i / d c'
            c_s * f_s * (1 - f_s),  # d g_f / d c'
            i_s * (1 - u_s * u_s),  # d g_c / d c'
            f_s,  # d c / d c'
        )
        ctx.save_for_backward(r_t, p, mask if mask is not None else torch.empty(0), h_s, c_s, cn_s, *factors)
        ctx.reverse, ctx.masked = reverse, mask is not None
        return y, h, c

    @staticmethod
    def backward(ctx, dy, dh_last, dc_last):  # noqa: D102
        r_t, p, mask, hs, cs, cn_s, a_o, b_c, a_i, a_f, a_u, f_s = ctx.saved_tensors
        steps, hidden = hs.shape[0], r_t.shape[0]
        p_i, p_o, p_f = p[:hidden], p[hidden : 2 * hidden], p[2 * hidden :]
        dh = dh_last if dh_last is not None else hs.new_zeros(hs.shape[1:])
        dc = dc_last if dc_last is not None else hs.new_zeros(hs.shape[1:])
        dy = dy if dy is not None else hs.new_zeros(hs.shape)
        dgates = hs.new_empty(steps, hs.shape[1], 4 * hidden)
        r = r_t.transpose(0, 1)
        for t in range(steps) if ctx.reverse else range(steps - 1, -1, -1):
            if ctx.masked:
                m = mask[t]
                dhn, dcn, dh_keep, dc_keep = m * (dh + dy[t]), m * dc, (1 - m) * dh, (1 - m) * dc
            else:
                dhn, dcn, dh_keep, dc_keep = dh + dy[t], dc, None, None
            dgo = dhn * a_o[t]
            dcn = torch.addcmul(torch.addcmul(dcn, dhn, b_c[t]), dgo, p_o)
            dgi, dgf = dcn * a_i[t], dcn * a_f[t]
            dgates[t] = torch.cat([dgi, dgo, dgf, dcn * a_u[t]], dim=1)
            dc = torch.addcmul(torch.addcmul(dcn * f_s[t], dgi, p_i), dgf, p_f)
            dh = dgates[t] @ r
            if dh_keep is not None:
                dh, dc = dh + dh_keep, dc + dc_keep
        flat = dgates.reshape(-1, 4 * hidden)
        d_r_t = hs.reshape(-1, hidden).transpose(0, 1) @ flat
        d_p = torch.cat([
            (dgates[..., :hidden] * cs).sum((0, 1)),
            (dgates[..., hidden : 2 * hidden] * cn_s).sum((0, 1)),
            (dgates[..., 2 * hidden : 3 * hidden] * cs).sum((0, 1)),
        ])
        return dgates, d_r_t, d_p, dh, dc, None, None


def _recurrent_loop(node, x, w, r, b=None, lengths=None, initial_h=None, initial_c=None, peepholes=None):
    """The reference rendering of LSTM/GRU/RNN (``x`` is ``[T, B, I]``): one time step at a time in Python.

    It runs what the fused kernels cannot: other activations, clip, peepholes, input_forget, both GRU forms.
    ``clip`` bounds every activation's input to [-clip, clip] except the LSTM output's h(C) (as onnxruntime);
    ``input_forget`` couples the LSTM gates: f = 1 - i.
    """
    at = _Attrs(node)
    op = node.op_type
    gates = {"LSTM": 4, "GRU": 3, "RNN": 1}[op]
    direction = at("direction", "forward")
    directions = 2 if direction == "bidirectional" else 1
    acts = _activations(node, _DEFAULT_ACTIVATIONS[op], directions)
    clip = at("clip")
    bound = (lambda v: v.clamp(-clip, clip)) if clip is not None else (lambda v: v)
    coupled = op == "LSTM" and bool(at("input_forget", 0))
    steps, batch = x.shape[0], x.shape[1]
    hidden = r.shape[-1]
    mask = _length_mask(lengths, steps, x.dtype)
    ys, hs, cs = [], [], []
    for d in range(directions):
        reverse = direction == "reverse" or d == 1
        rd_t = r[d].transpose(0, 1)  # [H, gates*H]
        bias_w = b[d, : gates * hidden] if b is not None else None
        bias_r = b[d, gates * hidden :] if b is not None else None
        projected = x @ w[d].transpose(0, 1)  # [T, B, gates*H]
        if bias_w is not None:
            # Rb joins Wb outside the loop, except GRU's Rbh, which the reset gate multiplies (linear_before_reset)
            if op == "GRU":
                zeros = bias_r.new_zeros(hidden)
                bias_r, bias_w = bias_r[2 * hidden :], bias_w + torch.cat([bias_r[: 2 * hidden], zeros])
            else:
                bias_w, bias_r = bias_w + bias_r, None
            projected = projected + bias_w
        h = initial_h[d] if initial_h is not None else x.new_zeros(batch, hidden)
        c = initial_c[d] if (op == "LSTM" and initial_c is not None) else x.new_zeros(batch, hidden)
        if peepholes is not None:
            p_i, p_o, p_f = peepholes[d].chunk(3)
        outputs: list[torch.Tensor | None] = [None] * steps
        order = range(steps - 1, -1, -1) if reverse else range(steps)
        for t in order:
            xt = projected[t]
            if op == "LSTM":
                f_act, g_act, h_act = acts[d]
                i_g, o_g, f_g, c_g = torch.addmm(xt, h, rd_t).chunk(4, dim=-1)
                if peepholes is not None:
                    i_g, f_g = torch.addcmul(i_g, p_i, c), torch.addcmul(f_g, p_f, c)
                i_t, c_t = f_act(bound(i_g)), g_act(bound(c_g))
                f_t = 1.0 - i_t if coupled else f_act(bound(f_g))
                c_new = f_t * c + i_t * c_t
                if peepholes is not None:
                    o_g = torch.addcmul(o_g, p_o, c_new)
                h_new = f_act(bound(o_g)) * h_act(c_new)
            elif op == "GRU":
                f_act, g_act = acts[d]
                x_zr, x_h = xt[:, : 2 * hidden], xt[:, 2 * hidden :]
                z_t, r_t = f_act(bound(x_zr + h @ rd_t[:, : 2 * hidden])).chunk(2, dim=-1)
                r_h = rd_t[:, 2 * hidden :]
                if at("linear_before_reset", 0):
                    hr_h = h @ r_h if bias_r is None else torch.addmm(bias_r, h, r_h)
                    h_tilde = g_act(bound(x_h + r_t * hr_h))
                else:
                    hr_h = (r_t * h) @ r_h
                    h_tilde = g_act(bound(x_h + (hr_h if bias_r is None else hr_h + bias_r)))
                h_new = (1.0 - z_t) * h_tilde + z_t * h
                c_new = c
            else:
                (f_act,) = acts[d]
                h_new = f_act(bound(torch.addmm(xt, h, rd_t)))
                c_new = c
            if mask is not None:
                m = mask[t]
                h = m * h_new + (1.0 - m) * h
                c = m * c_new + (1.0 - m) * c
                outputs[t] = m * h_new
            else:
                h, c = h_new, c_new
                outputs[t] = h_new
        ys.append(torch.stack(outputs))  # [T, B, H]
        hs.append(h)
        cs.append(c)
    y = torch.stack(ys, dim=1)  # [T, D, B, H]
    y_h = torch.stack(hs)
    y_c = torch.stack(cs)
    if lengths is not None and bool((lengths == 0).any()):  # onnxruntime: an empty sequence's states are zero
        empty = (lengths.to(torch.int64) == 0).to(x.dtype).reshape(1, batch, 1)
        y_h, y_c = y_h * (1.0 - empty), y_c * (1.0 - empty)
    return (y, y_h, y_c) if op == "LSTM" else (y, y_h)


# --------------------------------------------------------------------------------------- quantization
class _RoundSTE(torch.autograd.Function):
    """``round`` whose gradient is the identity (the straight-through estimator)."""

    @staticmethod
    def forward(ctx, x):  # noqa: D102
        return torch.round(x)

    @staticmethod
    def backward(ctx, grad):  # noqa: D102
        return grad


def _broadcast_param(param: torch.Tensor, x: torch.Tensor, axis: int) -> torch.Tensor:
    if param.dim() == 0 or param.numel() == 1:
        return param.reshape(())
    shape = [1] * x.dim()
    shape[_axis(axis, x.dim())] = param.numel()
    return param.reshape(shape)


def _qrange(dtype: torch.dtype) -> tuple[int, int]:
    return {torch.uint8: (0, 255), torch.int8: (-128, 127), torch.int32: (-(2**31), 2**31 - 1)}.get(dtype, (-128, 127))


def fake_quantize(x: torch.Tensor, scale, zero_point, axis: int, qdtype: torch.dtype) -> torch.Tensor:
    """``clip(round(x / s) + z, qmin, qmax)`` as a float tensor of integer values, with a straight-through round."""
    lo, hi = _qrange(qdtype)
    s = _broadcast_param(scale.to(torch.float32), x, axis)
    z = _broadcast_param(zero_point.to(torch.float32), x, axis) if zero_point is not None else 0.0
    q = _RoundSTE.apply(x / s) + z
    return torch.clamp(q, lo, hi)


def _quantize_linear(node, x, scale, zero_point=None):
    qdtype = zero_point.dtype if zero_point is not None else torch.uint8
    if node.attributes.get("output_dtype") is not None:
        qdtype = _torch_dtype(_Attrs(node)("output_dtype"))
    return fake_quantize(x, scale, zero_point, _Attrs(node)("axis", 1), qdtype)


def _dequantize_linear(node, q, scale, zero_point=None):
    axis = _Attrs(node)("axis", 1)
    s = _broadcast_param(scale, q, axis)
    z = _broadcast_param(zero_point.to(torch.float32), q, axis) if zero_point is not None else 0.0
    return (q.to(torch.float32) - z) * s


# --------------------------------------------------------------------------------------------- table
_OPS: dict[str, Callable[..., Any]] = {
    "Conv": _conv,
    "ConvTranspose": _conv_transpose,
    "Gemm": _gemm,
    "MatMul": lambda node, a, b: torch.matmul(a, b),
    "BatchNormalization": _batch_norm,
    "InstanceNormalization": _instance_norm,
    "LayerNormalization": _layer_norm,
    "PRelu": _prelu,
    "Einsum": _einsum,
    "Add": lambda node, a, b: a + b,
    "Sub": lambda node, a, b: a - b,
    "Mul": lambda node, a, b: a * b,
    "Div": _div,
    "Pow": _pow,
    "Mod": _mod,
    "Max": _variadic(torch.maximum),
    "Min": _variadic(torch.minimum),
    "Sum": _variadic(torch.add),
    "Mean": _mean,
    "Abs": _unary(torch.abs),
    "Neg": _unary(torch.neg),
    "Exp": _unary(torch.exp),
    "Log": _unary(torch.log),
    "Sqrt": _unary(torch.sqrt),
    "Reciprocal": _unary(torch.reciprocal),
    "Floor": _unary(torch.floor),
    "Ceil": _unary(torch.ceil),
    "Round": _unary(torch.round),
    "Sign": _unary(torch.sign),
    "Sin": _unary(torch.sin),
    "Cos": _unary(torch.cos),
    "Tanh": _unary(torch.tanh),
    "Sigmoid": _unary(torch.sigmoid),
    "Relu": _unary(torch.relu),
    "LeakyRelu": lambda node, x: F.leaky_relu(x, _Attrs(node)("alpha", 0.01)),
    "Elu": lambda node, x: F.elu(x, _Attrs(node)("alpha", 1.0)),
    "Selu": lambda node, x: _Attrs(node)("gamma", 1.0507009873554805)
    * torch.where(x > 0, x, _Attrs(node)("alpha", 1.6732632423543772) * (torch.exp(x) - 1)),
    "HardSigmoid": _hard_sigmoid,
    "HardSwish": _unary(F.hardswish),
    "Softplus": _unary(F.softplus),
    "Softsign": _unary(F.softsign),
    "Erf": _unary(torch.erf),
    "Gelu": _gelu,
    "Mish": _unary(F.mish),
    "IsNaN": _unary(torch.isnan),
    "IsInf": _unary(torch.isinf),
    "Equal": lambda node, a, b: torch.eq(a, b),
    "Less": lambda node, a, b: torch.lt(a, b),
    "LessOrEqual": lambda node, a, b: torch.le(a, b),
    "Greater": lambda node, a, b: torch.gt(a, b),
    "GreaterOrEqual": lambda node, a, b: torch.ge(a, b),
    "And": lambda node, a, b: torch.logical_and(a, b),
    "Or": lambda node, a, b: torch.logical_or(a, b),
    "Xor": lambda node, a, b: torch.logical_xor(a, b),
    "Not": lambda node, a: torch.logical_not(a),
    "Where": _where,
    "Reshape": _reshape,
    "Flatten": _flatten,
    "Transpose": _transpose,
    "Concat": _concat,
    "Gather": _gather,
    "GatherElements": _gather_elements,
    "GatherND": _gather_nd,
    "ScatterElements": _scatter_elements,
    "Expand": _expand,
    "Tile": _tile,
    "Range": _range,
    "Shape": _shape,
    "Size": _size,
    "Cast": _cast,
    "CastLike": _cast_like,
    "ConstantOfShape": _constant_of_shape,
    "Identity": _identity,
    "Dropout": _dropout,
    "ReverseSequence": _reverse_sequence,
    "TopK": _topk,
    "ArgMax": _arg(True),
    "ArgMin": _arg(False),
    "MaxPool": _max_pool,
    "AveragePool": _average_pool,
    "GlobalAveragePool": lambda node, x: x.mean(dim=tuple(range(2, x.dim())), keepdim=True),
    "GlobalMaxPool": lambda node, x: torch.amax(x, dim=tuple(range(2, x.dim())), keepdim=True),
    "QuantizeLinear": _quantize_linear,
    "DequantizeLinear": _dequantize_linear,
}

#: LSTM/GRU/RNN, run by ``_recurrent`` (fused kernel or loop).
_RECURRENT_OPS = frozenset({"LSTM", "GRU", "RNN"})

#: Ops whose semantics depend on the opset (called with ``opset=``).
_OPSET_OPS: dict[str, Callable[..., Any]] = {
    "Softmax": lambda node, x, *, opset: _softmax(node, x, log=False, opset=opset),
    "LogSoftmax": lambda node, x, *, opset: _softmax(node, x, log=True, opset=opset),
    "Clip": _clip,
    "Split": _split,
    "Slice": _slice,
    "Squeeze": _squeeze,
    "Unsqueeze": _unsqueeze,
    "Pad": _pad,
    "Resize": _resize,
    "ReduceMean": _reduce("mean"),
    "ReduceSum": _reduce("sum"),
    "ReduceMax": _reduce("max"),
    "ReduceMin": _reduce("min"),
    "ReduceProd": _reduce("prod"),
    "ReduceSumSquare": _reduce("sum_square"),
    "ReduceL2": _reduce("l2"),
}


# -------------------------------------------------------------------------------------------- module
#: Ops defined only on part of the reals: an elementwise constant feeding them (log(x + 1e-10)) is not trained.
_RESTRICTED_DOMAIN = frozenset({"Log", "Sqrt", "Reciprocal", "Pow"})


def _feeds_restricted_domain(node: ir.Node) -> bool:
    """Whether an output of ``node`` feeds Log/Sqrt/Reciprocal/Pow or a divisor (a trained epsilon can cross 0)."""
    return any(
        use.node.op_type in _RESTRICTED_DOMAIN or (use.node.op_type == "Div" and use.idx == 1)
        for output in node.outputs
        for use in output.uses()
    )


class TorchGraph(nn.Module):
    """The main graph of an ONNX model as a torch module (see the module docstring).

    Args:
        model: The model; it is read, not changed, until :meth:`write_back`.
        train_quantized_weights: Give integer weights read by a DequantizeLinear a float shadow parameter
            (QAT); otherwise they stay fixed.
        train_scales: Train the Q/DQ scales too (in log space; see the module docstring); int32 biases at
            ``s_x * s_w`` stay at that product.
        fused_recurrent: Run LSTM/GRU/RNN with torch's fused kernels where they express the node (see
            ``_recurrent``); False keeps the step-by-step loop everywhere (the reference).

    Attributes:
        parameter_names: ``{parameter key: initializer name}`` for every trainable tensor.
        input_names, output_names: The graph's inputs (without initializers) and outputs.
        recurrent_paths: ``{LSTM/GRU/RNN node name: "fused" or "loop: <reason>"}`` of the last forward.
        tied_bias_scales: ``{bias scale initializer: (s_x initializer, s_w initializer)}`` (``train_scales``).

    Raises:
        UnsupportedGraphError: The graph holds ops the rendering cannot run (all of them named).
    """

    def __init__(
        self,
        model: ir.Model,
        *,
        train_quantized_weights: bool = False,
        train_scales: bool = False,
        fused_recurrent: bool = True,
    ) -> None:
        super().__init__()
        missing = unsupported_ops(model)
        if missing:
            listed = ", ".join(f"{op} ({count})" for op, count in sorted(missing.items()))
            raise UnsupportedGraphError(f"torch rendering cannot run these ops: {listed}")
        self.opset = opset_version(model)
        self.fused_recurrent = fused_recurrent
        self.recurrent_paths: dict[str, str] = {}
        self.graph = model.graph
        self.nodes = list(model.graph)
        self.input_names = [v.name for v in model.graph.inputs if v.name not in model.graph.initializers]
        self.output_names = [v.name for v in model.graph.outputs]
        self.weights = nn.ParameterDict()
        self.parameter_names: dict[str, str] = {}
        self._constants: dict[str, torch.Tensor] = {}
        #: Float shadows of integer initializers read by a DequantizeLinear: {initializer name: _Shadow}
        self._shadows: dict[str, _Shadow] = {}
        #: Scales trained in log space, s = s0 * exp(u) with the parameter u = 0 at the start: {name: s0}
        self._log_scales: dict[str, torch.Tensor] = {}
        #: Bias scales kept equal to s_x * s_w: {bias scale name: (s_x name, s_w name)}, and their shapes
        self.tied_bias_scales: dict[str, tuple[str, str]] = {}
        self._tied_shapes: dict[str, tuple[int, ...]] = {}
        graph_inputs = {v.name for v in model.graph.inputs}
        trainable = self._trainable_names()
        if train_scales:
            self._find_scales(graph_inputs)
        self._find_shadows(train_quantized_weights, train_scales)
        for name, value in model.graph.initializers.items():
            array = value.const_value.numpy() if value.const_value is not None else None
            if array is None:
                continue
            if name in self._shadows:
                shadow = self._shadows[name]
                scale = model.graph.initializers[shadow.scale].const_value.numpy()
                floats = torch.from_numpy(_dequantize(array, scale, shadow.zero, shadow.axis))
                if shadow.key is None:
                    shadow.fixed = floats
                else:
                    self.weights[shadow.key] = nn.Parameter(floats)
                    self.parameter_names[shadow.key] = name
            elif name in self._log_scales:
                key = f"s{sum(1 for k in self.weights if k.startswith('s'))}"
                self._log_scales[name] = to_tensor(array)
                self.weights[key] = nn.Parameter(torch.zeros(array.shape, dtype=torch.float32))
                self.parameter_names[key] = name
            elif name in trainable and name not in graph_inputs:
                key = f"w{len(self.weights)}"
                self.weights[key] = nn.Parameter(to_tensor(array).float())
                self.parameter_names[key] = name
            else:
                self._constants[name] = to_tensor(array)
        self._key_of = {name: key for key, name in self.parameter_names.items()}
        self._dtypes = {name: value.const_value.numpy().dtype for name, value in model.graph.initializers.items()
                        if value.const_value is not None}
        for node in self.nodes:
            if node.op_type == "Constant":
                array = constant_array(node.outputs[0])
                if array is None:
                    raise UnsupportedGraphError(f"torch rendering: Constant '{node.name}' cannot be read")
                self._constants[node.outputs[0].name] = to_tensor(array)

    def _trainable_names(self) -> set[str]:
        names: set[str] = set()
        for node in self.nodes:
            positions = TRAINABLE_INPUTS.get(node.op_type, ())
            for index, value in enumerate(node.inputs):
                if value is None or not value.is_initializer() or value.const_value is None:
                    continue
                if positions is not None and index not in positions:
                    continue
                if positions is None and (_feeds_restricted_domain(node) or (node.op_type == "Div" and index == 1)):
                    continue
                if value.const_value.dtype in (ir.DataType.FLOAT, ir.DataType.FLOAT16, ir.DataType.DOUBLE):
                    names.add(value.name)
        return names

    def _find_scales(self, graph_inputs: set[str]) -> None:
        """Scales to train (positive float initializers read only as Q/DQ scales) and bias scales to tie."""
        for node in self.nodes:
            if node.op_type != "DequantizeLinear":
                continue
            tied = _tied_bias_scale(node)
            if tied is not None:
                self.tied_bias_scales[node.inputs[1].name] = tied
                self._tied_shapes[node.inputs[1].name] = tuple(node.inputs[1].const_value.numpy().shape)
        for node in self.nodes:
            if node.op_type not in ("QuantizeLinear", "DequantizeLinear") or len(node.inputs) < 2:
                continue
            scale = node.inputs[1]
            if scale is None or not scale.is_initializer() or scale.const_value is None:
                continue
            if scale.name in graph_inputs or scale.name in self.tied_bias_scales:
                continue
            data = node.inputs[0]
            if node.op_type == "DequantizeLinear" and (data is None or data.dtype == ir.DataType.INT32):
                continue  # an untied int32 bias keeps its scale: kernels read it as s_x * s_w
            array = scale.const_value.numpy()
            if array.dtype != np.float32 or not np.all(array > 0):
                continue
            if all(user.op_type in ("QuantizeLinear", "DequantizeLinear") and index == 1
                   for user, index in scale.uses()):
                self._log_scales[scale.name] = torch.ones(())  # s0 is read with the initializers

    def _find_shadows(self, quantized: bool, train_scales: bool) -> None:
        for node in self.nodes:
            if node.op_type != "DequantizeLinear" or not self._qat_site(node):
                continue
            weight, scale = node.inputs[0], node.inputs[1]
            zero = node.inputs[2] if len(node.inputs) > 2 else None
            is_bias = weight.const_value.dtype == ir.DataType.INT32
            if is_bias and not (train_scales and scale.name in self.tied_bias_scales):
                continue  # an int32 bias needs a float shadow only when its (tied) scale moves
            if not is_bias and not quantized:
                continue
            self._shadows[weight.name] = _Shadow(
                key=f"q{len(self._shadows)}" if quantized else None,
                scale=scale.name,
                zero=zero.const_value.numpy() if zero is not None else None,
                axis=_Attrs(node)("axis", 1),
                dtype=weight.const_value.numpy().dtype,
            )

    @staticmethod
    def _qat_site(node: ir.Node) -> bool:
        weight = node.inputs[0]
        scale = node.inputs[1] if len(node.inputs) > 1 else None
        zero = node.inputs[2] if len(node.inputs) > 2 else None
        if weight is None or not weight.is_initializer() or weight.const_value is None or scale is None:
            return False
        if scale.const_value is None or (zero is not None and zero.const_value is None):
            return False
        kinds = (ir.DataType.INT8, ir.DataType.UINT8, ir.DataType.INT32)
        return weight.const_value.dtype in kinds and len(weight.uses()) == 1

    # ------------------------------------------------------------------------------------- running
    def _weights_env(self) -> dict[str, torch.Tensor]:
        """Initializer values as the graph reads them: parameters, scales, tied bias scales, fake-quantized shadows."""
        env: dict[str, torch.Tensor] = {}
        for key, param in self.weights.items():
            name = self.parameter_names[key]
            if name in self._log_scales:
                env[name] = self._log_scales[name] * torch.exp(param)
            elif name not in self._shadows:
                env[name] = param
        for name, (input_scale, weight_scale) in self.tied_bias_scales.items():
            s_x = env[input_scale] if input_scale in env else self._constants[input_scale]
            s_w = env[weight_scale] if weight_scale in env else self._constants[weight_scale]
            product, shape = s_x.reshape(()) * s_w.reshape(-1), self._tied_shapes[name]
            env[name] = product.expand(shape) if shape else product.reshape(())
        for name, shadow in self._shadows.items():
            floats = shadow.fixed if shadow.key is None else self.weights[shadow.key]
            scale = env[shadow.scale] if shadow.scale in env else self._constants[shadow.scale]
            zero = torch.from_numpy(shadow.zero) if shadow.zero is not None else None
            env[name] = fake_quantize(floats, scale, zero, shadow.axis, _NUMPY_TO_TORCH[np.dtype(shadow.dtype)])
        return env

    def forward(
        self, feeds: Mapping[str, torch.Tensor | np.ndarray], keep: Iterable[str] = ()
    ) -> dict[str, torch.Tensor]:
        """Run the graph: ``{output name: tensor}`` plus the intermediate tensors named in ``keep``."""
        env: dict[str, torch.Tensor] = dict(self._constants)
        env.update(self._weights_env())
        for name in self.input_names:
            value = feeds[name]
            env[name] = value if isinstance(value, torch.Tensor) else to_tensor(value)
        for node in self.nodes:
            if node.op_type == "Constant":
                continue
            args = [env[v.name] if v is not None and v.name else None for v in node.inputs]
            while args and args[-1] is None:
                args.pop()
            try:
                if node.op_type in _RECURRENT_OPS:
                    result = _recurrent(node, *args, fused=self.fused_recurrent, paths=self.recurrent_paths)
                elif node.op_type in _OPSET_OPS:
                    result = _OPSET_OPS[node.op_type](node, *args, opset=self.opset)
                else:
                    result = _OPS[node.op_type](node, *args)
            except UnsupportedGraphError:
                raise
            except Exception as error:
                raise UnsupportedGraphError(
                    f"torch rendering failed at {node.op_type} node '{node.name}': {error}"
                ) from error
            results = result if isinstance(result, tuple) else (result,)
            for value, tensor in zip(node.outputs, results, strict=False):
                if value is not None and value.name:
                    env[value.name] = tensor
        wanted = [*self.output_names, *keep]
        return {name: env[name] for name in wanted if name in env}

    def run_numpy(self, feeds: Mapping[str, np.ndarray]) -> list[np.ndarray]:
        """Outputs as numpy arrays in graph-output order (no gradients)."""
        with torch.no_grad():
            outputs = self(feeds)
        return [outputs[name].detach().numpy() for name in self.output_names]

    # ---------------------------------------------------------------------------------- write back
    def write_back(self, model: ir.Model) -> int:
        """Put the trained values into the model's initializers (same names, shapes, dtypes); returns the count.

        Trained scales are written as ``exp(log s)`` (positive), tied bias scales as ``s_x * s_w``, and shadow
        weights are requantized with their scale and zero point as written (int32 biases at ``s_x * s_w``).
        """
        with torch.no_grad():
            env = self._weights_env()
        names = [*self.parameter_names.values(), *self.tied_bias_scales, *self._shadows]
        for name in dict.fromkeys(names):
            array = env[name].detach().numpy().astype(self._dtypes[name]).reshape(self._shape(model, name))
            if name in self._log_scales or name in self.tied_bias_scales:
                array = np.maximum(array, np.finfo(array.dtype).tiny)  # s0 * exp(u) can underflow; a scale stays > 0
            model.graph.initializers[name].const_value = ir.tensor(np.array(array, order="C"), name=name)
        return len(dict.fromkeys(names))

    @staticmethod
    def _shape(model: ir.Model, name: str) -> tuple[int, ...]:
        return tuple(model.graph.initializers[name].const_value.shape.numpy())


class _Shadow:
    """A float stand-in for an integer initializer read by a DequantizeLinear (fake-quantized on every read)."""

    def __init__(self, *, key: str | None, scale: str, zero: np.ndarray | None, axis: int, dtype: np.dtype) -> None:
        self.key = key  # the parameter key; None: a fixed float tensor (`fixed`)
        self.scale = scale  # the scale initializer's name
        self.zero = zero
        self.axis = axis
        self.dtype = dtype
        self.fixed: torch.Tensor | None = None


def _dequantize(array: np.ndarray, scale: np.ndarray, zero: np.ndarray | None, axis: int) -> np.ndarray:
    shape = [1] * array.ndim
    if scale.size > 1:
        shape[_axis(axis, array.ndim)] = scale.size
    offset = zero.astype(np.float64).reshape(shape) if zero is not None else 0.0
    return ((array.astype(np.float64) - offset) * scale.astype(np.float64).reshape(shape)).astype(np.float32)


def _dq_scale(value: ir.Value | None) -> ir.Value | None:
    """The constant scale of the DequantizeLinear that produces ``value`` (None otherwise)."""
    producer = value.producer() if value is not None else None
    if producer is None or producer.op_type != "DequantizeLinear" or len(producer.inputs) < 2:
        return None
    scale = producer.inputs[1]
    return scale if scale is not None and scale.is_initializer() and scale.const_value is not None else None


def _tied_bias_scale(dq: ir.Node) -> tuple[str, str] | None:
    """``(s_x, s_w)`` names when ``dq`` dequantizes an int32 bias of Conv/ConvTranspose/Gemm at ``s_x * s_w``.

    The integer kernels onnxruntime fuses a QDQ group into add the int32 bias to the ``s_x * s_w`` accumulator,
    so a bias scale equal to that product (as the quantizers write it) must stay equal when the scales train.
    """
    data, scale = dq.inputs[0], dq.inputs[1] if len(dq.inputs) > 1 else None
    if data is None or data.dtype != ir.DataType.INT32 or scale is None or scale.const_value is None:
        return None
    uses = dq.outputs[0].uses()
    if len(uses) != 1 or len(scale.uses()) != 1:
        return None
    user, index = uses[0]
    if user.op_type not in ("Conv", "ConvTranspose", "Gemm") or index != 2:
        return None
    s_x, s_w = _dq_scale(user.inputs[0]), _dq_scale(user.inputs[1])
    if s_x is None or s_w is None or s_x.const_value.size != 1:
        return None
    s_b, x_arr, w_arr = (v.const_value.numpy().reshape(-1) for v in (scale, s_x, s_w))
    if w_arr.size not in (1, s_b.size) or not np.allclose(s_b, x_arr[0] * w_arr, rtol=1e-6, atol=0):
        return None
    return s_x.name, s_w.name
