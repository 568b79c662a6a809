"""Float16 conversion (``fp16``): float32 weights and compute become float16, with Casts at float32 islands.

Every float32 tensor of the main graph (initializers, Constant nodes, intermediate values) becomes float16,
except around nodes that must stay float32, which get ``Cast(to=float)`` on their float16 inputs and
``Cast(to=float16)`` on the float outputs that float16 nodes read. Values read only by float32 nodes (graph
inputs, initializers, Constant/ConstantOfShape/Cast outputs) stay float32 without a Cast pair, so a model made
only of float32-only nodes comes out unchanged. Attributes that name float32 as an output type are switched
(``Cast(to=FLOAT)``, ``dtype``/``output_dtype``, ``ConstantOfShape``'s value, also when it is absent and
defaults to a float32 zero, Constant's ``value``/``value_float(s)``). With ``keep_io_types`` (default) float32
graph inputs and outputs stay float32, with Casts right after/before them; otherwise they become float16 too
(except inputs that only float32 nodes read).
Values hold ``|x| <= 65504`` in float16: initializers beyond that are clipped (counted as ``values_clipped``).

A node stays float32 (skip key in brackets) when:

* its op is on the block list :data:`FP32_OPS` (``float32_op``): no float16 kernel in onnxruntime's CPU EP or
  integer/index semantics (``Range``, ``CumSum``, ``TopK``, ``NonMaxSuppression``, ``RoiAlign``, ``Einsum``,
  random generators, ``EyeLike``), float inputs that are really shapes or coordinates (``Resize``,
  ``Upsample``, ``GridSample``), accumulations prone to float16 overflow (``ReduceSumSquare``,
  ``ReduceLogSumExp``, ``ReduceL2``, ``LpNormalization``);
* ``keep_op_types`` or ``keep_nodes`` name it (``kept_by_option``);
* its schema at the model's opset does not allow float16 on one of its float inputs or outputs
  (``no_float16_type``): read from the type constraints in ``onnx.defs`` (``DynamicQuantizeLinear``, every
  ``ai.onnx.ml`` op, ``DequantizeLinear`` before opset 19, ``LayerNormalization``'s float-only mean output...);
* onnx has no schema for it (``no_schema``): custom and onnxruntime contrib domains (``com.microsoft``);
* the schema allows float16 but onnxruntime's CPU EP cannot run it in float16, not even by its own fallback
  to float32 (``no_float16_kernel``): ``ScatterElements``/``ScatterND`` with a ``reduction``
  (:data:`ORT_CPU_FLOAT32_REDUCTIONS`);
* it reads a small float constant with a nonzero value that is 0 in float16, an epsilon guard
  (``Add(Mul(x, x), 1e-10) -> Log``), and so do the ``Log``/``Sqrt``/``Reciprocal``/``Div``/``Pow`` nodes that
  read its output (``float16_underflow``): in float16 the guard vanishes and log(0) = -inf turns into NaNs (a
  TensorFlow audio model's normalized log spectrogram);
* it is a Transpose that moves the batch axis (``perm=[1, 0, 2]``, ``[1, 2, 0]``, ``[1, 2, 0, 3]``...) and
  feeds a MatMul (``ort_fusion_crash``): onnxruntime's MatmulTransposeFusion crashes the process while creating
  the session on such float16 pairs (1.32, with a 2-D weight: the exported graph of the recurrent encoder
  lac_encoder, and madmom's TCN once ``sink-transposes`` has run).

Dtypes of intermediate values come from onnx shape inference (strict, else lenient), completed by running the model
once in onnxruntime on random inputs when inference leaves float values untyped. Models with control flow
(If/Loop/Scan) or local functions are refused (``PreconditionError``): outer-scope values captured by
subgraphs would change type under them. The conversion works on a clone of the graph; when the original passes
strict shape inference and the float16 graph does not, the pass refuses the same way (model unchanged), so a
preset skips it with the reason instead of failing.

Statistics: changes ``initializers_converted``, ``constants_converted`` (Constant nodes and ConstantOfShape
fill values), ``values_converted``, ``casts_inserted``, ``casts_retargeted`` (a Cast to float32 now casts to
float16), ``dtypes_retargeted`` (other float32 ``dtype``/``output_dtype`` attributes), ``values_clipped``;
skipped, one per node kept in float32: ``float32_op``, ``kept_by_option``, ``no_float16_type``, ``no_schema``,
``no_float16_kernel``, ``float16_underflow``, ``ort_fusion_crash``; details ``kept_float32``
(``{op type: count}``) and ``kept_float32_reasons`` (``{skip key: {op type: count}}``).
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
from sftonnx.ir_utils import NameAllocator
from sftonnx.pass_infra import Numerics, PassReport, SftPass

__all__ = ["FP32_OPS", "ORT_CPU_FLOAT32_REDUCTIONS", "ConvertFloat16Pass"]

logger = logging.getLogger(__name__)

FP32_OPS = frozenset(
    {"Range", "CumSum", "TopK", "NonMaxSuppression", "RoiAlign", "Einsum", "RandomNormal", "RandomNormalLike",
     "RandomUniform", "RandomUniformLike", "Multinomial", "Bernoulli", "EyeLike", "Resize", "Upsample",
     "GridSample", "ReduceSumSquare", "ReduceLogSumExp", "ReduceL2", "LpNormalization"}
)
#: Default-domain ops whose schema allows float16 but whose onnxruntime CPU kernel has no float16 version of
#: their ``reduction`` (onnxruntime 1.32: "MLFloat16 data type is not supported with ScatterElements opset 16
#: when reduction is 'add'", raised when the node runs: no fallback to float32). Kept float32 when
#: ``reduction`` is set to anything but ``"none"`` (float16 accumulation would lose precision anyway).
ORT_CPU_FLOAT32_REDUCTIONS = frozenset({"ScatterElements", "ScatterND"})


def _batch_transpose(perm: tuple[int, ...] | list[int]) -> bool:
    """Whether ``perm`` moves the leading (batch) axis in front of the last one or two axes.

    onnxruntime's MatmulTransposeFusion folds such a Transpose into FusedMatMul (``transBatchA/B``); on float16,
    with a 2-D other operand, onnxruntime 1.32 crashes (segmentation fault) while creating the session.
    """
    rank = len(perm)
    middle = list(range(1, rank - 1))
    return rank >= 3 and list(perm) in ([*middle, 0, rank - 1], [*middle, rank - 1, 0])
_FLOAT16_MAX = 65504.0
_FLOAT = ir.DataType.FLOAT
_FLOAT16 = ir.DataType.FLOAT16
#: Producers whose float32 output may stay float32 when only float32 nodes read it (no Cast pair needed).
_PRODUCERS = frozenset({"Constant", "ConstantOfShape", "Cast"})
#: Attributes that name the element type of a node's output.
_DTYPE_ATTRIBUTES = ("dtype", "output_dtype")


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


def _value_types(model: ir.Model) -> tuple[dict[str, ir.DataType], bool]:
    """Element types of the main graph's values, and whether the model passes strict shape inference.

    Types are declared, else inferred by onnx, else observed in onnxruntime on random inputs.
    """
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
    # Types need no weights: large initializers are graph inputs of the same type (nothing copied).
    proto, _ = io.structure_proto(model, max_inline_bytes=_INLINE_BYTES)
    strict = True
    try:
        inferred = onnx.shape_inference.infer_shapes(proto, check_type=True, strict_mode=True, data_prop=True)
    except Exception as error:  # InferenceError and C++ errors: the lenient run below still types most values
        logger.debug("fp16: strict shape inference fails on the input: %s", error)
        strict = False
        try:
            inferred = onnx.shape_inference.infer_shapes(proto, data_prop=True)
        except Exception as error:  # inference is best effort: onnxruntime fills the gaps below
            logger.debug("fp16: shape inference failed: %s", error)
            inferred = None
    if inferred is not None:
        for info in [*inferred.graph.value_info, *inferred.graph.output]:
            if info.type.HasField("tensor_type") and info.type.tensor_type.elem_type:
                types.setdefault(info.name, ir.DataType(info.type.tensor_type.elem_type))
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
                types[name] = kind if kind is not None else ir.DataType.UNDEFINED
    return types, strict


def _strict_inference_problem(model: ir.Model) -> str | None:
    """The first line of strict shape inference's error on ``model``'s structure, or ``None`` when it passes."""
    proto, _ = io.structure_proto(model, max_inline_bytes=_INLINE_BYTES)
    try:
        onnx.shape_inference.infer_shapes(proto, check_type=True, strict_mode=True, data_prop=True)
    except Exception as error:  # InferenceError and C++ errors
        return (str(error).strip().splitlines() or [type(error).__name__])[0][:300]
    return None


#: Ops whose result goes out of range when an epsilon that guarded their input vanished (log 0, 1/0, sqrt 0 / 0).
_GUARDED_OPS = frozenset({"Log", "Sqrt", "Reciprocal", "Div", "Pow"})
#: Constants up to this many elements are checked for values that vanish in float16 (epsilons are scalars).
_GUARD_ELEMENTS = 16


def _small_constant(value: ir.Value | None) -> np.ndarray | None:
    """The float32 array of a small initializer or Constant-node output, else ``None``."""
    if value is None:
        return None
    tensor = value.const_value
    producer = value.producer()
    if tensor is None and producer is not None and producer.op_type == "Constant" and not producer.inputs:
        attribute = producer.attributes.get("value")
        if attribute is not None and attribute.type == ir.AttributeType.TENSOR:
            tensor = attribute.as_tensor()
        elif (attribute := producer.attributes.get("value_float")) is not None:
            return np.array([attribute.value], np.float32)
    if tensor is None or tensor.dtype != _FLOAT or tensor.size > _GUARD_ELEMENTS:
        return None
    return tensor.numpy()


def _reads_vanishing_constant(node: ir.Node) -> bool:
    """Whether ``node`` reads a small float32 constant with a nonzero value that is 0 in float16.

    Such constants are epsilons (``log(x^2 + 1e-10)``, ``1 / sqrt(var + 1e-12)``): in float16 the guard is gone.
    """
    for value in node.inputs:
        array = _small_constant(value)
        if array is not None:
            nonzero = array[np.isfinite(array) & (array != 0)]
            if nonzero.size and bool((nonzero.astype(np.float16) == 0).any()):
                return True
    return False


def _formal_types(parameters, index: int) -> list[str] | None:
    """Allowed type strings of formal parameter ``index`` (the last one repeats when variadic), ``None`` if none."""
    if index < len(parameters):
        return [parameters[index].type_str]
    if parameters and parameters[-1].option == onnx.defs.OpSchema.FormalParameterOption.Variadic:
        return [parameters[-1].type_str]
    return None


def _schema_allows_float16(schema: onnx.defs.OpSchema, inputs: list[int], outputs: list[int]) -> bool:
    """Whether every listed input and output of ``schema`` may be float16 (type constraints resolved)."""
    constraints = {c.type_param_str: list(c.allowed_type_strs) for c in schema.type_constraints}
    for parameters, indices in ((schema.inputs, inputs), (schema.outputs, outputs)):
        for index in indices:
            formal = _formal_types(parameters, index)
            if formal is None:
                return False
            allowed = constraints.get(formal[0], formal)
            if not any("(float16)" in kind for kind in allowed):  # "(float16)" excludes "tensor(bfloat16)"
                return False
    return True


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
        """Convert a clone of the graph; adopt it only when it passes the checks the original passes.

        Raises:
            ir.passes.PreconditionError: The float16 graph fails strict shape inference while the original
                passes it (the model is left unchanged).
        """
        types, strict = _value_types(model)
        work = model.clone()
        released = self._convert(work, types, report)
        if not any(report.changes.values()):
            return
        if strict and (problem := _strict_inference_problem(work)):
            raise ir.passes.PreconditionError(f"fp16: the float16 graph fails strict shape inference: {problem}")
        model.graph = work.graph
        for tensor in released:
            with contextlib.suppress(BufferError):  # the float32 pages are not needed again
                tensor.release()

    def _keep_reason(self, node: ir.Node, types: dict[str, ir.DataType], opsets: dict[str, int]) -> str | None:
        """The skip key when ``node`` must run in float32, else ``None``."""
        if node.op_type in self.keep_op_types or (node.name and node.name in self.keep_nodes):
            return "kept_by_option"
        domain = "" if node.domain == "ai.onnx" else node.domain
        if domain == "" and node.op_type in FP32_OPS:
            return "float32_op"
        inputs = [i for i, v in enumerate(node.inputs) if v is not None and types.get(v.name or "") == _FLOAT]
        outputs = [i for i, v in enumerate(node.outputs) if types.get(v.name or "") == _FLOAT]
        if not inputs and not outputs:
            return None  # nothing float32 to convert (integer ops, ConvInteger, shapes)
        version = opsets.get(domain, opsets.get("ai.onnx") if domain == "" else None)
        try:
            schema = onnx.defs.get_schema(node.op_type, version if version is not None else 1, domain)
        except onnx.defs.SchemaError:
            return "no_schema"
        if not _schema_allows_float16(schema, inputs, outputs):
            return "no_float16_type"
        if domain == "" and node.op_type == "Transpose" and "perm" in node.attributes:
            if _batch_transpose(node.attributes["perm"].value) and any(
                use.node.op_type == "MatMul" and use.node.domain in ("", "ai.onnx") for use in node.outputs[0].uses()
            ):
                return "ort_fusion_crash"
        if domain == "" and node.op_type in ORT_CPU_FLOAT32_REDUCTIONS:
            reduction = node.attributes.get("reduction")
            if reduction is not None and reduction.value != "none":
                return "no_float16_kernel"
        return None

    def _convert(self, model: ir.Model, types: dict[str, ir.DataType], report: PassReport) -> list:
        """Retype float32 values to float16 and insert Casts around float32 nodes and at the boundary.

        Returns:
            The external float32 tensors replaced by float16 ones (to release once the result is adopted).
        """
        graph = model.graph
        opsets = dict(model.opset_imports)
        reasons = {id(n): reason for n in graph if (reason := self._keep_reason(n, types, opsets)) is not None}
        for node in graph:  # epsilon guards: the node that adds the epsilon and the Log/Sqrt/Div reading it
            if id(node) not in reasons and node.domain in ("", "ai.onnx") and _reads_vanishing_constant(node):
                reasons[id(node)] = "float16_underflow"
                for value in node.outputs:
                    for use in value.uses():
                        if use.node.op_type in _GUARDED_OPS and use.node.domain in ("", "ai.onnx"):
                            reasons.setdefault(id(use.node), "float16_underflow")
        kept = [n for n in graph if id(n) in reasons]
        fresh = NameAllocator({*types, *graph.initializers, *(n.name for n in graph if n.name)})
        released: list = []

        def is_float(value: ir.Value | None) -> bool:
            return value is not None and types.get(value.name or "") == _FLOAT

        def float32_only(value: ir.Value) -> bool:
            """Only float32 nodes read ``value`` (and it is no graph output that must become float16)."""
            if value.is_graph_output() and not self.keep_io_types:
                return False
            return all(id(use.node) in reasons for use in value.uses())

        # 1. initializers read only by float32 nodes stay float32; the others become float16
        for name, value in list(graph.initializers.items()):
            if value.const_value is None or value.const_value.dtype != _FLOAT or float32_only(value):
                continue
            source = value.const_value
            half, clipped = _to_half(source.numpy())
            value.const_value = ir.tensor(half, name=name)
            if isinstance(source, ir.ExternalTensor):
                released.append(source)
            value.type = ir.TensorType(_FLOAT16)
            types[name] = _FLOAT16
            report.changes["initializers_converted"] += 1
            if clipped:
                report.changes["values_clipped"] += clipped
        # 2. graph inputs (float32 nodes keep reading the float32 input)
        first = next(iter(graph), None)
        for value in list(graph.inputs):
            if not is_float(value) or value.name in graph.initializers or float32_only(value):
                continue
            if self.keep_io_types:
                cast_out = ir.Value(name=fresh(f"{value.name}_fp16"), type=ir.TensorType(_FLOAT16), shape=value.shape)
                for use in list(value.uses()):
                    if id(use.node) not in reasons:
                        use.node.replace_input_with(use.idx, cast_out)
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
            if id(node) in reasons:
                continue
            default_domain = node.domain in ("", "ai.onnx")
            floats = [v for v in node.outputs if is_float(v)]
            if default_domain and node.op_type in _PRODUCERS and floats and all(map(float32_only, floats)):
                continue  # a float32 constant or Cast read only by float32 nodes: no Cast pair
            if default_domain and node.op_type == "Constant":
                self._convert_constant(node, types, report)
                floats = [v for v in node.outputs if is_float(v)]
            elif default_domain and node.op_type == "Cast" and int(node.attributes["to"].value) == _FLOAT:
                node.attributes["to"] = ir.AttrInt64("to", _FLOAT16)
                report.changes["casts_retargeted"] += 1
            elif default_domain and node.op_type == "ConstantOfShape" and floats:
                # the fill value sets the output type; absent, it is a float32 zero
                attribute = node.attributes.get("value")
                fill = attribute.as_tensor().numpy() if attribute is not None else np.zeros(1, np.float32)
                half, _ = _to_half(np.asarray(fill, np.float32))
                node.attributes["value"] = ir.AttrTensor("value", ir.tensor(half))
                report.changes["constants_converted"] += 1
            elif floats:
                for key in _DTYPE_ATTRIBUTES:
                    attribute = node.attributes.get(key)
                    if attribute is not None and attribute.type == ir.AttributeType.INT and attribute.value == _FLOAT:
                        node.attributes[key] = ir.AttrInt64(key, _FLOAT16)
                        report.changes["dtypes_retargeted"] += 1
            for value in floats:
                value.type = _half_type(value.type)
                types[value.name or ""] = _FLOAT16
                report.changes["values_converted"] += 1
        # 4. float32 islands: one Cast in per float16 value they read, one Cast out per value float16 nodes read
        kept_types: collections.Counter[str] = collections.Counter()
        why: dict[str, collections.Counter[str]] = collections.defaultdict(collections.Counter)
        to_float: dict[int, ir.Value] = {}
        for node in kept:
            reason = reasons[id(node)]
            kept_types[node.op_type] += 1
            why[reason][node.op_type] += 1
            report.skipped[reason] += 1
            for index, value in enumerate(node.inputs):
                if value is None or types.get(value.name or "") != _FLOAT16:
                    continue
                if id(value) not in to_float:  # kept nodes come in graph order: before the first reader
                    cast_out = ir.Value(name=fresh(f"{value.name}_fp32"), type=ir.TensorType(_FLOAT),
                                        shape=value.shape)
                    graph.insert_before(node, ir.Node("", "Cast", [value], attributes=[ir.AttrInt64("to", _FLOAT)],
                                                      outputs=[cast_out], name=fresh(f"{value.name}_Cast_fp32")))
                    to_float[id(value)] = cast_out
                    report.changes["casts_inserted"] += 1
                node.replace_input_with(index, to_float[id(value)])
            for value in node.outputs:
                if not is_float(value):
                    continue
                readers = [use for use in value.uses() if id(use.node) not in reasons]
                output = value.is_graph_output() and not self.keep_io_types
                if not readers and not output:
                    continue
                half = ir.Value(name=fresh(f"{value.name}_fp16"), type=ir.TensorType(_FLOAT16), shape=value.shape)
                for use in readers:
                    use.node.replace_input_with(use.idx, half)
                if output:  # a float16 graph output: the Cast output takes its name
                    name = value.name or ""
                    value.name = fresh(f"{name}_fp32")
                    half.name = name
                    for position, out in enumerate(list(graph.outputs)):
                        if out is value:
                            graph.outputs[position] = half
                graph.insert_after(node, ir.Node("", "Cast", [value], attributes=[ir.AttrInt64("to", _FLOAT16)],
                                                 outputs=[half], name=fresh(f"{value.name}_Cast_fp16")))
                types[half.name or ""] = _FLOAT16
                report.changes["casts_inserted"] += 1
        report.details["kept_float32"] = dict(sorted(kept_types.items()))
        report.details["kept_float32_reasons"] = {key: dict(sorted(ops.items())) for key, ops in sorted(why.items())}
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
        return released

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
