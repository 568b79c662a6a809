"""Float16 conversion (``fp16``): float32 weights and compute become float16, with Casts at float32 islands.

Every float32 tensor of the main graph (initializers, Constant nodes, intermediate values) becomes float16,
except around nodes that must stay float32 (:data:`FP32_OPS`), which get ``Cast(to=float)`` on their float
inputs and ``Cast(to=float16)`` on their float outputs. Attributes that name float32 as an output type are
switched (``Cast(to=FLOAT)``, ``ConstantOfShape``'s value, Constant's ``value``/``value_float(s)``). With
``keep_io_types`` (default) float32 graph inputs and outputs stay float32, with Casts right after/before them;
otherwise they become float16 too. Values hold ``|x| <= 65504`` in float16: initializers beyond that are
clipped (counted as ``values_clipped``).

Ops kept in float32 (:data:`FP32_OPS`; extend with ``keep_op_types``), and why:

* no float16 kernel in onnxruntime's CPU EP, or integer/index semantics: ``Range``, ``CumSum``, ``TopK``,
  ``NonMaxSuppression``, ``RoiAlign``, ``Einsum``, random generators (``RandomNormal(Like)``,
  ``RandomUniform(Like)``, ``Multinomial``, ``Bernoulli``), ``EyeLike``;
* float inputs that are really shapes or coordinates: ``Resize`` and ``Upsample`` (scales/roi must be float32
  in the spec, and rounding of output sizes must not move), ``GridSample``;
* accumulations prone to float16 overflow: ``ReduceSumSquare``, ``ReduceLogSumExp``, ``ReduceL2``,
  ``LpNormalization``.

Dtypes of intermediate values come from onnx shape inference (non-strict), completed by running the model
once in onnxruntime on random inputs when inference leaves float values untyped. Models with control flow
(If/Loop/Scan) or local functions are refused (``PreconditionError``): outer-scope values captured by
subgraphs would change type under them.

Statistics: changes ``initializers_converted``, ``constants_converted`` (Constant nodes and ConstantOfShape
fill values), ``values_converted``, ``casts_inserted``, ``casts_retargeted`` (a Cast to float32 now casts to
float16), ``values_clipped``; skipped ``kept_float32`` (nodes run in float32); details
``kept_float32`` (``{op type: count}``).
"""

from __future__ import annotations

import collections
import contextlib
import logging

import numpy as np
import onnx
import onnx_ir as ir

from sftonnx import io, verify
from sftonnx.errors import PassConfigError
from sftonnx.ir_utils import NameAllocator, replace_value
from sftonnx.pass_infra import Numerics, PassReport, SftPass

__all__ = ["FP32_OPS", "ConvertFloat16Pass"]

logger = logging.getLogger(__name__)

FP32_OPS = frozenset(
    {"Range", "CumSum", "TopK", "NonMaxSuppression", "RoiAlign", "Einsum", "RandomNormal", "RandomNormalLike",
     "RandomUniform", "RandomUniformLike", "Multinomial", "Bernoulli", "EyeLike", "Resize", "Upsample",
     "GridSample", "ReduceSumSquare", "ReduceLogSumExp", "ReduceL2", "LpNormalization"}
)
_FLOAT16_MAX = 65504.0
_FLOAT = ir.DataType.FLOAT
_FLOAT16 = ir.DataType.FLOAT16


def _to_half(array: np.ndarray) -> tuple[np.ndarray, int]:
    """``array`` in float16 (finite values clipped to +-65504) and the number clipped, in blocks of rows.

    A memory-mapped weight is converted block by block into the float16 result: the temporaries are one
    block, never a float32 copy of the whole tensor.
    """
    half = np.empty(array.shape, dtype=np.float16)
    flat_in, flat_out = array.reshape(-1), half.reshape(-1)
    clipped = 0
    for start in range(0, flat_in.size, _BLOCK):
        block = flat_in[start : start + _BLOCK]
        clipped += int(np.count_nonzero(np.isfinite(block) & (np.abs(block) > _FLOAT16_MAX)))
        flat_out[start : start + _BLOCK] = np.clip(block, -_FLOAT16_MAX, _FLOAT16_MAX)
    return half, clipped


def _half_type(kind: ir.TypeProtocol | None) -> ir.TypeProtocol:
    """The float16 version of a float32 type, keeping its container (a sequence of tensors stays a sequence)."""
    if isinstance(kind, ir.SequenceType):
        return ir.SequenceType(_half_type(kind.elem_type))
    if isinstance(kind, ir.OptionalType):
        return ir.OptionalType(_half_type(kind.elem_type))
    return ir.TensorType(_FLOAT16)


#: Elements per block of :func:`_to_half`; initializers up to ``_INLINE_BYTES`` stay inline for inference.
_BLOCK = 1 << 22
_INLINE_BYTES = 64 * 1024


def _value_types(model: ir.Model) -> dict[str, ir.DataType]:
    """Element types of the main graph's values: declared, then inferred, then observed in onnxruntime."""
    types: dict[str, ir.DataType] = {}
    for value in model.graph.inputs:
        if value.dtype is not None:
            types[value.name or ""] = value.dtype
    for name, value in model.graph.initializers.items():
        if value.const_value is not None:
            types[name] = value.const_value.dtype
    for node in model.graph:
        for value in node.outputs:
            if value.dtype is not None and value.name:
                types[value.name] = value.dtype
    try:
        # Types need no weights: large initializers are graph inputs of the same type (nothing copied).
        proto, _ = io.structure_proto(model, max_inline_bytes=_INLINE_BYTES)
        proto = onnx.shape_inference.infer_shapes(proto, data_prop=True)
        for info in [*proto.graph.value_info, *proto.graph.output]:
            if info.type.HasField("tensor_type") and info.type.tensor_type.elem_type:
                types.setdefault(info.name, ir.DataType(info.type.tensor_type.elem_type))
    except Exception as error:  # inference is best effort: onnxruntime fills the gaps below
        logger.debug("fp16: shape inference failed: %s", error)
    missing = [v.name for n in model.graph for v in n.outputs if v.name and v.name not in types]
    if missing:
        from sftonnx.analysis.activations import ActivationRunner

        specs = verify.input_specs(model)
        shapes, _ = verify.resolve_shapes(specs)
        runner = ActivationRunner(model, missing)
        for batch in runner.run([verify.random_feeds(specs, shapes)]):
            for name, array in batch.items():
                if isinstance(array, (list, tuple)):  # a sequence: left untyped (onnxruntime infers it)
                    types[name] = ir.DataType.UNDEFINED
                    continue
                kind = {np.dtype(np.float32): _FLOAT, np.dtype(np.float16): _FLOAT16}.get(np.asarray(array).dtype)
                if kind is not None:
                    types[name] = kind
                else:
                    types[name] = ir.DataType.UNDEFINED
    return types


class ConvertFloat16Pass(SftPass):
    """Convert float32 weights and compute to float16 (see the module docstring).

    Args:
        keep_io_types: Keep float32 graph inputs/outputs (Casts at the boundary); else they become float16.
        keep_op_types: Op types to keep in float32 besides :data:`FP32_OPS`.
        keep_nodes: Node names to keep in float32.
    """

    name = "fp16"
    numerics = Numerics.APPROXIMATE

    def __init__(
        self,
        *,
        keep_io_types: bool = True,
        keep_op_types: tuple[str, ...] = (),
        keep_nodes: tuple[str, ...] = (),
    ) -> None:
        if any(not isinstance(op, str) or not op for op in keep_op_types):
            raise PassConfigError("fp16: keep_op_types must be op type names")
        self.keep_io_types = keep_io_types
        self.keep_op_types = tuple(keep_op_types)
        self.keep_nodes = tuple(keep_nodes)

    def requires(self, model: ir.Model) -> None:
        """Refuse control flow and functions (captured outer values would change type under them)."""
        if any(True for _ in model.graph.subgraphs()):
            raise ir.passes.PreconditionError("fp16: models with If/Loop/Scan subgraphs are not supported")
        if model.functions:
            raise ir.passes.PreconditionError("fp16: models with local functions are not supported")

    def rewrite(self, model: ir.Model, report: PassReport) -> None:
        """Retype float32 values to float16 and insert Casts around float32-only nodes and at the boundary."""
        graph = model.graph
        types = _value_types(model)
        keep_ops = FP32_OPS | set(self.keep_op_types)
        kept = [n for n in graph if n.op_type in keep_ops or (n.name and n.name in self.keep_nodes)]
        kept_set = set(map(id, kept))
        fresh = NameAllocator({*types, *graph.initializers, *(n.name for n in graph if n.name)})

        def is_float(value: ir.Value | None) -> bool:
            return value is not None and types.get(value.name or "") == _FLOAT

        # 1. initializers used only by float32 nodes stay float32; the others become float16
        for name, value in list(graph.initializers.items()):
            if value.const_value is None or value.const_value.dtype != _FLOAT:
                continue
            users = {id(use.node) for use in value.uses()}
            if users and users <= kept_set:
                continue
            source = value.const_value
            half, clipped = _to_half(source.numpy())
            value.const_value = ir.tensor(half, name=name)
            if isinstance(source, ir.ExternalTensor):
                with contextlib.suppress(BufferError):  # the float32 pages are not needed again
                    source.release()
            value.type = ir.TensorType(_FLOAT16)
            types[name] = _FLOAT16
            report.changes["initializers_converted"] += 1
            if clipped:
                report.changes["values_clipped"] += clipped
        # 2. graph inputs
        first = next(iter(graph), None)
        for value in list(graph.inputs):
            if not is_float(value) or value.name in graph.initializers:
                continue
            if self.keep_io_types:
                cast_out = ir.Value(name=fresh(f"{value.name}_fp16"), type=ir.TensorType(_FLOAT16), shape=value.shape)
                value.replace_all_uses_with(cast_out)
                cast = ir.Node("", "Cast", [value], attributes=[ir.AttrInt64("to", _FLOAT16)], outputs=[cast_out],
                               name=fresh(f"{value.name}_Cast_fp16"))
                if first is not None:
                    graph.insert_before(first, cast)
                else:
                    graph.append(cast)
                types[cast_out.name or ""] = _FLOAT16
                report.changes["casts_inserted"] += 1
            else:
                value.type = ir.TensorType(_FLOAT16)
                types[value.name or ""] = _FLOAT16
                report.changes["values_converted"] += 1
        # 3. node outputs and type-producing attributes
        for node in list(graph):
            if id(node) in kept_set:
                continue
            if node.op_type == "Constant" and node.domain in ("", "ai.onnx"):
                self._convert_constant(node, types, report)
            elif node.op_type == "Cast" and int(node.attributes["to"].value) == _FLOAT:
                node.attributes["to"] = ir.AttrInt64("to", _FLOAT16)
                report.changes["casts_retargeted"] += 1
            elif node.op_type == "ConstantOfShape" and "value" in node.attributes:
                tensor = node.attributes["value"].as_tensor()
                if tensor.dtype == _FLOAT:
                    half, _ = _to_half(tensor.numpy())
                    node.attributes["value"] = ir.AttrTensor("value", ir.tensor(half))
                    report.changes["constants_converted"] += 1
            for value in node.outputs:
                if is_float(value):
                    value.type = _half_type(value.type)
                    types[value.name or ""] = _FLOAT16
                    report.changes["values_converted"] += 1
        # 4. float32 islands: Casts in and out
        kept_types: collections.Counter[str] = collections.Counter()
        for node in kept:
            kept_types[node.op_type] += 1
            report.skipped["kept_float32"] += 1
            for index, value in enumerate(node.inputs):
                if value is None or types.get(value.name or "") != _FLOAT16:
                    continue
                cast_out = ir.Value(name=fresh(f"{value.name}_fp32"), type=ir.TensorType(_FLOAT), shape=value.shape)
                graph.insert_before(node, ir.Node("", "Cast", [value], attributes=[ir.AttrInt64("to", _FLOAT)],
                                                  outputs=[cast_out], name=fresh(f"{node.name}_input{index}_Cast")))
                node.replace_input_with(index, cast_out)
                report.changes["casts_inserted"] += 1
            for value in node.outputs:
                if not is_float(value):
                    continue
                if value.is_graph_output() and self.keep_io_types:
                    continue
                half = ir.Value(name=fresh(f"{value.name}_fp16"), type=ir.TensorType(_FLOAT16), shape=value.shape)
                # a float16 graph output: the Cast output takes its name
                replace_value(value, half, lambda name: fresh(f"{name}_fp32"))
                cast = ir.Node("", "Cast", [value], attributes=[ir.AttrInt64("to", _FLOAT16)], outputs=[half],
                               name=fresh(f"{value.name}_Cast_fp16"))
                graph.insert_after(node, cast)
                types[half.name or ""] = _FLOAT16
                report.changes["casts_inserted"] += 1
        report.details["kept_float32"] = dict(sorted(kept_types.items()))
        # 5. graph outputs
        for index, value in enumerate(list(graph.outputs)):
            if types.get(value.name or "") != _FLOAT16 or not self.keep_io_types:
                continue
            name = value.name
            value.name = fresh(f"{name}_fp16")
            out = ir.Value(name=name, type=ir.TensorType(_FLOAT), shape=value.shape)
            graph.append(ir.Node("", "Cast", [value], attributes=[ir.AttrInt64("to", _FLOAT)], outputs=[out],
                                 name=fresh(f"{name}_Cast_fp32")))
            graph.outputs[index] = out
            report.changes["casts_inserted"] += 1

    @staticmethod
    def _convert_constant(node: ir.Node, types: dict[str, ir.DataType], report: PassReport) -> None:
        attributes = node.attributes
        if "value" in attributes:
            tensor = attributes["value"].as_tensor()
            if tensor.dtype != _FLOAT:
                return
            half, clipped = _to_half(tensor.numpy())
            attributes["value"] = ir.AttrTensor("value", ir.tensor(half))
            if clipped:
                report.changes["values_clipped"] += clipped
        elif "value_float" in attributes:
            half, _ = _to_half(np.array(attributes["value_float"].value, np.float32))
            del attributes["value_float"]
            attributes["value"] = ir.AttrTensor("value", ir.tensor(half))
        elif "value_floats" in attributes:
            half, _ = _to_half(np.array(attributes["value_floats"].value, np.float32))
            del attributes["value_floats"]
            attributes["value"] = ir.AttrTensor("value", ir.tensor(half))
        else:
            return
        report.changes["constants_converted"] += 1
        for value in node.outputs:
            types[value.name or ""] = _FLOAT
