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
``maxpool_indices_used``, ``subgraph`` (nodes in If/Loop/Scan bodies and functions are left alone),
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
import dataclasses
import functools
import logging
import os
import re
import statistics
import tempfile
import time
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Literal

import numpy as np
import onnx
import onnx_ir as ir
from onnx_ir.passes.common import RemoveUnusedNodesPass, TopologicalSortPass

from sftonnx import io, verify
from sftonnx.errors import PassConfigError
from sftonnx.ir_utils import adopt_model, attr, constant_array, is_op, restore_model, upgrade_opset
from sftonnx.pass_infra import Numerics, PassReport, SftPass
from sftonnx.passes.quantization import calibration as calib
from sftonnx.passes.quantization.calibration import CalibrationSource, Range

__all__ = [
    "COMPUTE_OPS",
    "INTEGER_OPS",
    "PASS_THROUGH_OPS",
    "QuantizeStaticPass",
    "cpu_has_vnni",
    "measure_latency",
    "ort_optimized_graph",
]

logger = logging.getLogger(__name__)

#: Ops run as integer kernels by onnxruntime when wrapped in DQ -> op -> Q (output has its own scale).
COMPUTE_OPS = frozenset(
    {"Conv", "ConvTranspose", "Gemm", "MatMul", "Add", "Mul", "Concat", "AveragePool", "GlobalAveragePool",
     "Sigmoid", "LeakyRelu"}
)
#: Data-movement ops: input and output share one scale; onnxruntime drops the pairs and moves int8 data.
PASS_THROUGH_OPS = frozenset({"MaxPool", "Reshape", "Transpose", "Flatten", "Squeeze", "Unsqueeze"})
#: Activations folded into the preceding quantized op's output range.
ACTIVATION_OPS = frozenset({"Relu", "Clip"})
QUANTIZABLE_OPS = COMPUTE_OPS | PASS_THROUGH_OPS | ACTIVATION_OPS
#: Op types of onnxruntime's integer kernels (what ``check_kernels`` looks for in its optimized graph).
INTEGER_OPS = frozenset(
    {"QLinearConv", "QLinearMatMul", "MatMulInteger", "ConvInteger", "QGemm", "QLinearAdd", "QLinearMul",
     "QLinearConcat", "QLinearAveragePool", "QLinearGlobalAveragePool", "QLinearSigmoid", "QLinearLeakyRelu",
     "QLinearConvTranspose", "QLinearSoftmax", "QLinearWhere", "DynamicQuantizeMatMul", "MatMulIntegerToFloat",
     "QLinearReduceMean", "QAttention", "DynamicQuantizeLSTM", "QEmbedLayerNormalization"}
)
_QDQ_OPS = frozenset({"QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear"})
_INT32_MAX = 2**31 - 1
_MIN_OPSET = 13  # per-axis DequantizeLinear


# ------------------------------------------------------------------------------------------ CPU, latency
@functools.lru_cache(maxsize=1)
def cpu_has_vnni() -> bool | None:
    """Whether this x86 CPU has VNNI (AVX512-VNNI or AVX-VNNI); ``None`` when unknown (not Linux/x86)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as handle:
            text = handle.read()
    except OSError:
        return None
    flags = set()
    for line in text.splitlines():
        if line.startswith("flags"):
            flags.update(line.split(":", 1)[1].split())
            break
    if not flags:
        return None  # e.g. ARM ("Features"): no u8s8 saturation issue there
    if "avx2" not in flags and "sse4_1" not in flags:
        return None
    return "avx512_vnni" in flags or "avx_vnni" in flags


def measure_latency(
    sources: Sequence[bytes | str],
    feeds: Mapping[str, np.ndarray],
    *,
    rounds: int = 7,
    budget_seconds: float = 3.0,
) -> list[float]:
    """Median latency (seconds per run) of each model on ``feeds``, measured interleaved in one process.

    Every round runs each model back to back (order alternating per round) for a batch of runs sized so
    that a round takes about ``budget_seconds / rounds``; the median over rounds resists the noise of other
    processes sharing the CPU.
    """
    sessions = [verify.make_session(source) for source in sources]
    inputs = [{i.name: feeds[i.name] for i in s.get_inputs()} for s in sessions]
    for session, feed in zip(sessions, inputs, strict=True):
        for _ in range(2):
            session.run(None, feed)
    start = time.perf_counter()
    sessions[0].run(None, inputs[0])
    single = max(time.perf_counter() - start, 1e-5)
    repeats = max(1, int(budget_seconds / rounds / len(sessions) / single))
    samples: list[list[float]] = [[] for _ in sessions]
    for round_index in range(rounds):
        order = range(len(sessions)) if round_index % 2 == 0 else reversed(range(len(sessions)))
        for index in order:
            session, feed = sessions[index], inputs[index]
            start = time.perf_counter()
            for _ in range(repeats):
                session.run(None, feed)
            samples[index].append((time.perf_counter() - start) / repeats)
    return [statistics.median(s) for s in samples]


def ort_optimized_graph(source: bytes, level: str = "extended") -> onnx.GraphProto:
    """The graph onnxruntime's CPU EP actually runs (saved through ``optimized_model_filepath``)."""
    with tempfile.TemporaryDirectory(prefix="sftonnx-q-") as folder:
        path = os.path.join(folder, "optimized.onnx")
        verify.make_session(source, optimization=level, optimized_model_path=path)
        proto = onnx.load(path, load_external_data=False)
    return proto.graph


def float_islands(
    graph: onnx.GraphProto, names: Iterable[str]
) -> tuple[set[str], collections.Counter[str], collections.Counter[str]]:
    """Which of ``names`` onnxruntime runs in float (reading a DequantizeLinear output), and its op counts.

    A node is matched by name, or by a name onnxruntime derived from it (``<name>_...`` after its own fusions).

    Returns:
        ``(islands, integer kernels by op type, float ops reading dequantized tensors by op type)``.
    """
    produced_by_dq = {out for node in graph.node if node.op_type == "DequantizeLinear" for out in node.output}
    wanted = set(names)
    islands: set[str] = set()
    float_ops: collections.Counter[str] = collections.Counter()
    for node in graph.node:
        if node.op_type in _QDQ_OPS or node.op_type in INTEGER_OPS:
            continue
        if not any(i in produced_by_dq for i in node.input):
            continue
        float_ops[node.op_type] += 1
        if node.name in wanted:
            islands.add(node.name)
            continue
        for name in wanted:
            if node.name.startswith(name + "_"):
                islands.add(name)
    int_ops = collections.Counter(n.op_type for n in graph.node if n.op_type in INTEGER_OPS)
    return islands, int_ops, float_ops


# ------------------------------------------------------------------------------------------------ sites
@dataclasses.dataclass
class Site:
    """A node that may be quantized, with the roles of its inputs.

    Attributes:
        node: Node name (unique; unnamed nodes are named first).
        op_type: The op.
        kind: ``compute``, ``pass`` (data movement) or ``act`` (Relu/Clip).
        acts: Activation inputs (tensor names) that get Q/DQ.
        consts: Constant float inputs quantized like activations (per tensor), e.g. an Add's constant operand.
        weight: Constant weight input name, its index and per-channel axis.
        bias: Constant bias input name and its index.
        output: The (first) output.
    """

    node: str
    op_type: str
    kind: str
    acts: list[str]
    consts: list[str] = dataclasses.field(default_factory=list)
    weight: tuple[str, int, int] | None = None
    bias: tuple[str, int] | None = None
    output: str = ""


def _name_nodes(graph: ir.Graph) -> int:
    """Give every unnamed (or duplicate-named) node of the main graph a unique name; returns how many."""
    seen: set[str] = set()
    renamed = 0
    for index, node in enumerate(graph):
        if not node.name or node.name in seen:
            base = f"{node.op_type}_{index}"
            name = base
            while name in seen:
                name += "_"
            node.name = name
            renamed += 1
        seen.add(node.name)
    return renamed


def _excluded(node: ir.Node, nodes: Sequence[str], op_types: Sequence[str], pattern: re.Pattern | None) -> bool:
    return (
        node.name in nodes
        or node.op_type in op_types
        or (pattern is not None and pattern.search(node.name or "") is not None)
    )


def find_sites(
    model: ir.Model,
    *,
    exclude_nodes: Sequence[str] = (),
    exclude_op_types: Sequence[str] = (),
    exclude_pattern: str | None = None,
    op_types: Iterable[str] = QUANTIZABLE_OPS,
    per_channel: bool = True,
) -> tuple[dict[str, Site], dict[str, str]]:
    """Quantizable nodes of the main graph and the reasons others are not: ``({name: Site}, {name: reason})``."""
    pattern = re.compile(exclude_pattern) if exclude_pattern else None
    allowed = set(op_types)
    sites: dict[str, Site] = {}
    declined: dict[str, str] = {}
    for node in model.graph:
        if node.domain not in ("", "ai.onnx") or node.op_type in ("Constant", "QuantizeLinear", "DequantizeLinear"):
            continue
        if node.op_type not in allowed or node.op_type not in QUANTIZABLE_OPS:
            if node.op_type not in _NEUTRAL_OPS:
                declined[node.name] = "op_not_quantizable"
            continue
        if _excluded(node, exclude_nodes, exclude_op_types, pattern):
            declined[node.name] = "excluded"
            continue
        site_or_reason = _site(node, per_channel)
        if isinstance(site_or_reason, str):
            declined[node.name] = site_or_reason
        else:
            sites[node.name] = site_or_reason
    return sites, declined


#: Ops that carry no float math worth listing when left alone (shape plumbing).
_NEUTRAL_OPS = frozenset(
    {"Shape", "Size", "Gather", "Cast", "CastLike", "ConstantOfShape", "Range", "Identity", "Expand",
     "Slice", "Split", "Equal", "Where", "NonZero", "Not", "And", "Or", "Less", "Greater", "Dropout"}
)


def _is_const(value: ir.Value | None) -> bool:
    return value is not None and constant_array(value) is not None


def _scalar_constant(value: ir.Value | None) -> np.ndarray | None:
    """``constant_array`` plus Constant nodes written with ``value_float(s)``/``value_int(s)``."""
    array = constant_array(value)
    if array is not None or value is None:
        return array
    producer = value.producer()
    if producer is None or not is_op(producer, "Constant"):
        return None
    for key, dtype in (("value_float", np.float32), ("value_floats", np.float32), ("value_int", np.int64),
                       ("value_ints", np.int64)):
        if key in producer.attributes:
            return np.asarray(producer.attributes[key].value, dtype=dtype)
    return None


def folded_constant(value: ir.Value | None) -> np.ndarray | None:
    """A constant, also through ``Cast``/``CastLike`` of a constant (exporters emit ``CastLike(6.0, x)``)."""
    array = _scalar_constant(value)
    if array is not None or value is None:
        return array
    producer = value.producer()
    if producer is None or producer.op_type not in ("Cast", "CastLike") or producer.domain not in ("", "ai.onnx"):
        return None
    inner = _scalar_constant(producer.inputs[0]) if producer.inputs else None
    if inner is None:
        return None
    if producer.op_type == "Cast":
        target = attr(producer, "to")
        dtype = ir.DataType(target).numpy() if target is not None else None
    else:
        like = producer.inputs[1] if len(producer.inputs) > 1 else None
        dtype = like.dtype.numpy() if like is not None and like.dtype is not None else None
    # an untyped CastLike target: the caller only quantizes float32 tensors, so float32 is what it needs
    return inner.astype(dtype if dtype is not None else np.float32)


def _site(node: ir.Node, per_channel: bool) -> Site | str:
    op = node.op_type
    inputs = list(node.inputs)
    if not inputs or inputs[0] is None or not node.outputs:
        return "input_not_float"
    output = node.outputs[0].name or ""
    if op in ("Conv", "ConvTranspose"):
        if len(inputs) < 2 or not _is_const(inputs[1]):
            return "weight_not_constant"
        weight = constant_array(inputs[1])
        assert weight is not None
        axis = (0 if op == "Conv" else 1) if per_channel and weight.ndim > 1 else -1
        bias = None
        if len(inputs) > 2 and inputs[2] is not None:
            if not _is_const(inputs[2]):
                return "bias_not_constant"
            bias = (inputs[2].name or "", 2)
        return Site(node.name, op, "compute", [inputs[0].name or ""], weight=(inputs[1].name or "", 1, axis),
                    bias=bias, output=output)
    if op == "Gemm":
        if len(inputs) < 2 or inputs[1] is None:
            return "input_not_float"
        if len(inputs) > 2 and inputs[2] is not None and float(attr(node, "beta", 1.0)) != 1.0:
            return "gemm_beta"
        acts = [inputs[0].name or ""]
        weight = None
        if _is_const(inputs[1]):
            array = constant_array(inputs[1])
            assert array is not None
            axis = (0 if int(attr(node, "transB", 0)) else 1) if per_channel and array.ndim == 2 else -1
            weight = (inputs[1].name or "", 1, axis)
        else:
            acts.append(inputs[1].name or "")
        bias = None
        if len(inputs) > 2 and inputs[2] is not None:
            array = constant_array(inputs[2])
            if array is None:
                return "bias_not_constant"
            if weight is None or array.ndim > 2 or (array.ndim == 2 and array.shape[0] != 1):
                return "bias_not_per_channel"
            bias = (inputs[2].name or "", 2)
        return Site(node.name, op, "compute", acts, weight=weight, bias=bias, output=output)
    if op == "MatMul":
        if len(inputs) < 2 or inputs[1] is None:
            return "input_not_float"
        if _is_const(inputs[0]):
            return "weight_not_constant"  # constant A: not a layout the int8 kernels take
        if _is_const(inputs[1]):
            array = constant_array(inputs[1])
            assert array is not None
            axis = array.ndim - 1 if per_channel and array.ndim >= 2 else -1
            return Site(node.name, op, "compute", [inputs[0].name or ""], weight=(inputs[1].name or "", 1, axis),
                        output=output)
        return Site(node.name, op, "compute", [inputs[0].name or "", inputs[1].name or ""], output=output)
    if op in ("Add", "Mul"):
        if len(inputs) != 2 or inputs[1] is None:
            return "input_not_float"
        acts = [v.name or "" for v in inputs if not _is_const(v)]
        consts = [v.name or "" for v in inputs if _is_const(v)]
        if not acts:
            return "input_not_float"
        return Site(node.name, op, "compute", acts, consts=consts, output=output)
    if op == "Concat":
        if any(v is None for v in inputs):
            return "input_not_float"
        acts = [v.name or "" for v in inputs if not _is_const(v)]
        consts = [v.name or "" for v in inputs if _is_const(v)]
        return Site(node.name, op, "compute", acts, consts=consts, output=output)
    if op == "MaxPool" and len(node.outputs) > 1 and (node.outputs[1].uses() or node.outputs[1].is_graph_output()):
        return "maxpool_indices_used"
    if op == "Clip":
        for extra in inputs[1:]:
            if extra is not None and folded_constant(extra) is None:
                return "clip_bounds_not_constant"
    if _is_const(inputs[0]):
        return "input_not_float"
    kind = "pass" if op in PASS_THROUGH_OPS else ("act" if op in ACTIVATION_OPS else "compute")
    return Site(node.name, op, kind, [inputs[0].name or ""], output=output)


def calibration_tensors(model: ir.Model, sites: Mapping[str, Site]) -> list[str]:
    """Activation tensors whose ranges the plan may need (inputs and outputs of every site)."""
    names: list[str] = []
    for site in sites.values():
        names.extend(site.acts)
        names.append(site.output)
    return list(dict.fromkeys(n for n in names if n))


# ------------------------------------------------------------------------------------------------- plan
class _UnionFind:
    def __init__(self) -> None:
        self.parent: dict[str, str] = {}

    def find(self, item: str) -> str:
        self.parent.setdefault(item, item)
        while self.parent[item] != item:
            self.parent[item] = self.parent[self.parent[item]]
            item = self.parent[item]
        return item

    def union(self, a: str, b: str) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            self.parent[rb] = ra


@dataclasses.dataclass
class Plan:
    """Which tensors get Q/DQ and with which parameters, for a chosen set of nodes.

    Attributes:
        chosen: Nodes quantized.
        params: ``{tensor: (scale, zero point)}`` for activations (shared within a group).
        group_of: ``{tensor: group root}``.
        const_params: ``{constant tensor: (scale, zero point)}``.
        declined: ``{node: reason}`` for nodes dropped while planning.
    """

    chosen: set[str]
    params: dict[str, tuple[np.float32, np.integer]]
    group_of: dict[str, str]
    const_params: dict[str, tuple[np.float32, np.integer]]
    declined: dict[str, str]


class _Graph:
    """Name-level view of the float model's main graph (stable across copies loaded from the same bytes)."""

    def __init__(self, model: ir.Model) -> None:
        self.producer: dict[str, str] = {}
        self.consumers: dict[str, list[str]] = collections.defaultdict(list)
        self.op: dict[str, str] = {}
        self.outputs = {v.name for v in model.graph.outputs}
        self.consts: dict[str, np.ndarray] = {}
        for node in model.graph:
            self.op[node.name] = node.op_type
            for value in node.outputs:
                if value.name:
                    self.producer[value.name] = node.name
            for value in node.inputs:
                if value is not None and value.name:
                    self.consumers[value.name].append(node.name)
                    if value.name not in self.consts:
                        array = constant_array(value)
                        if array is not None:
                            self.consts[value.name] = array

    def sole_consumer(self, tensor: str) -> str | None:
        users = self.consumers.get(tensor, [])
        if tensor in self.outputs or len(users) != 1:
            return None
        return users[0]


def make_plan(
    graph: _Graph,
    sites: Mapping[str, Site],
    chosen: Iterable[str],
    ranges: Mapping[str, Range],
    *,
    activation: Literal["uint8", "int8"],
    symmetric: bool,
) -> Plan:
    """Plan Q/DQ for ``chosen``: tensor groups, their shared ranges, and nodes declined for degenerate ranges."""
    chosen_set = set(chosen)
    declined: dict[str, str] = {}
    while True:
        groups = _UnionFind()
        needed: set[str] = set()
        sources: set[str] = set()
        users: dict[str, set[str]] = collections.defaultdict(set)  # tensor -> chosen nodes needing it
        dropped: dict[str, str] = {}

        def need(tensor: str, node: str, source: bool = True) -> None:
            # closes over this iteration's collections only (called before the loop moves on)
            needed.add(tensor)  # noqa: B023
            groups.find(tensor)  # noqa: B023
            users[tensor].add(node)  # noqa: B023
            if source:
                sources.add(tensor)  # noqa: B023

        fused_producers: dict[str, str] = {}  # producer node -> activation node folded into it
        for name in chosen_set:
            site = sites[name]
            if site.kind != "act":
                continue
            producer = graph.producer.get(site.acts[0])
            if (
                producer is None
                or producer not in chosen_set
                or sites[producer].kind != "compute"
                or graph.sole_consumer(site.acts[0]) != name
            ):
                dropped[name] = "activation_not_fusable"
            else:
                fused_producers[producer] = name
        if dropped:
            declined.update(dropped)
            chosen_set -= set(dropped)
            continue
        for name in chosen_set:
            site = sites[name]
            if site.kind != "act":
                for tensor in site.acts:
                    need(tensor, name)
            if site.kind == "compute":
                if name in fused_producers:
                    continue  # the activation's output carries the range
                need(site.output, name)
                if site.op_type == "Concat":
                    for tensor in site.acts:
                        groups.union(site.output, tensor)
            elif site.kind == "pass":
                need(site.output, name)
                groups.union(site.acts[0], site.output)
            else:  # act folded into its producer
                need(site.output, name)
                if symmetric:  # the producer's output is quantized too, with this output's scale
                    need(site.acts[0], name, source=False)
                    users[site.acts[0]].add(graph.producer[site.acts[0]])
                    groups.union(site.output, site.acts[0])
                else:
                    users[site.output].add(graph.producer[site.acts[0]])
        group_range: dict[str, Range] = {}
        for tensor in needed:
            root = groups.find(tensor)
            if tensor not in sources:
                group_range.setdefault(root, Range(0.0, 0.0))
                continue
            rng = ranges.get(tensor, Range(0.0, 0.0))
            group_range[root] = group_range[root].union(rng) if root in group_range else rng
        bad_roots = {root for root, rng in group_range.items() if rng.degenerate}
        for tensor in needed:
            if groups.find(tensor) in bad_roots:
                for node in users[tensor]:
                    dropped[node] = "degenerate_range"
        if dropped:
            declined.update(dropped)
            chosen_set -= set(dropped)
            continue
        params = {}
        group_params = {
            root: calib.quant_params(rng, activation, symmetric=symmetric) for root, rng in group_range.items()
        }
        for tensor in needed:
            params[tensor] = group_params[groups.find(tensor)]
        const_params: dict[str, tuple[np.float32, np.integer]] = {}
        for name in chosen_set:
            for tensor in sites[name].consts:
                array = graph.consts[tensor].astype(np.float64)
                rng = Range(min(float(array.min(initial=0.0)), 0.0), max(float(array.max(initial=0.0)), 0.0))
                if rng.degenerate:  # an all-zero constant quantizes exactly with any scale
                    rng = Range(0.0, 1.0)
                const_params[tensor] = calib.quant_params(rng, activation, symmetric=symmetric)
        return Plan(chosen_set, params, {t: groups.find(t) for t in needed}, const_params, declined)


# ------------------------------------------------------------------------------------------------ apply
_NP_INT = {"uint8": np.uint8, "int8": np.int8}


def _initializer(graph: ir.Graph, name: str, array: np.ndarray, ir_version: int) -> ir.Value:
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
        self.taken = set(self.values) | {n.name for n in self.graph}
        self.scale_values: dict[str, tuple[ir.Value, ir.Value]] = {}
        self.dequantized: dict[str, ir.Value] = {}
        self.counts: collections.Counter[str] = collections.Counter()
        self.first_node = next(iter(self.graph), None)

    def fresh(self, base: str) -> str:
        name = base
        index = 0
        while name in self.taken:
            index += 1
            name = f"{base}_{index}"
        self.taken.add(name)
        return name

    def const(self, base: str, array: np.ndarray) -> ir.Value:
        return _initializer(self.graph, self.fresh(base), array, self.model.ir_version)

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
        if value.is_graph_output():
            # the graph output keeps its name: it becomes the DQ output, the float tensor is renamed
            original_name = value.name
            value.name = self.fresh(f"{tensor}_float")
            value.replace_all_uses_with(dequantized, replace_graph_outputs=True)
            dequantized.name = original_name
        else:
            value.replace_all_uses_with(dequantized)
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


# ---------------------------------------------------------------------------------------------- the pass
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
        _upgrade_opset(model, report)
        report.changes["nodes_renamed"] += _name_nodes(model.graph)
        if folded := _fold_clip_bounds(model):
            details["clip_bounds_folded"] = folded
            report.changes["clip_bounds_folded"] += folded
        if sums := _sum_to_add(model):
            details["sum_rewritten_as_add"] = sums
            report.changes["sums_rewritten_as_add"] += sums
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
        subgraph_nodes = sum(1 for g in model.graph.subgraphs() for _ in g) + sum(
            1 for f in model.functions.values() for _ in f)
        if subgraph_nodes:
            report.skipped["subgraph"] += subgraph_nodes

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

        float_bytes = io.to_bytes(model)
        graph = _Graph(model)
        sites, declined = find_sites(
            model, exclude_nodes=self.exclude_nodes, exclude_op_types=self.exclude_op_types,
            exclude_pattern=self.exclude_pattern, per_channel=self.per_channel)
        bias_inputs = recovery.bias_correction_inputs(model, sites) if self.bias_correction else {}
        result = calib.calibrate(
            model, calibration_tensors(model, sites), source, sum_names=bias_inputs,
            keep_samples=self.sensitivity_samples)
        # tensors that turned out not to be float leave their nodes float
        for name, site in list(sites.items()):
            tensors = [*site.acts, site.output]
            if any(result.dtypes.get(t) is not None and np.dtype(result.dtypes[t]).kind != "f" for t in tensors):
                declined[name] = "input_not_float"
                del sites[name]
        ranges = {
            name: calib.compute_range(hist, self.method, symmetric=symmetric, percentile=self.percentile)
            for name, hist in result.histograms.items()
        }
        qmax = 63 if reduce_range else 127
        offsets: dict[str, np.ndarray] = {}
        if self.bias_correction:
            offsets = recovery.bias_offsets(model, sites, result.channel_sums, qmax=qmax)
            report.changes["biases_corrected"] += len(offsets)

        def build(chosen: Iterable[str]) -> tuple[ir.Model, Plan, collections.Counter[str]]:
            plan = make_plan(graph, sites, chosen, ranges, activation=activation, symmetric=symmetric)
            built, counts = build_quantized(float_bytes, plan, sites, weight_qmax=qmax,
                                            per_channel=self.per_channel, bias_offsets=offsets)
            return built, plan, counts

        chosen = set(sites)
        quantized, plan, counts = build(chosen)
        kernel_drops: dict[str, str] = {}
        if self.check_kernels and self.target == "cpu" and plan.chosen:
            for _ in range(4):
                try:
                    optimized = ort_optimized_graph(io.to_bytes(quantized))
                except Exception as error:  # onnxruntime refused our model: a bug, but never ship it
                    raise RuntimeError(f"onnxruntime cannot load the quantized model: {error}") from error
                islands, int_ops, float_ops = float_islands(optimized, plan.chosen)
                details["int8_ops"] = dict(sorted(int_ops.items()))
                details["float_ops_on_dequantized"] = dict(sorted(float_ops.items()))
                islands -= set(kernel_drops)
                if not islands:
                    break
                kernel_drops.update(dict.fromkeys(islands, "not_int8_in_onnxruntime"))
                chosen = plan.chosen - islands
                quantized, plan, counts = build(chosen)
        if self.max_error is not None and plan.chosen:
            keep_float, info = recovery.mixed_precision(
                original_bytes=float_bytes, samples=result.samples, chosen=sorted(plan.chosen),
                sites=sites, build=lambda c: build(c)[0], max_error=self.max_error, metric=self.error_metric)
            details["sensitivity"] = info
            if keep_float:
                quantized, plan, counts = build(plan.chosen - set(keep_float))
                kernel_drops.update(dict.fromkeys(keep_float, "kept_float_for_accuracy"))

        all_declined = {**declined, **plan.declined, **kernel_drops}
        for reason in all_declined.values():
            report.skipped[reason] += 1
        details["float_nodes"] = dict(sorted(all_declined.items()))
        details["float_op_types"] = sorted({graph.op[n] for n, r in all_declined.items()
                                            if r == "op_not_quantizable" and n in graph.op})
        if self.ensure_faster and plan.chosen:
            feeds = result.samples[0] if result.samples else None
            if feeds is not None:
                float_time, int8_time = measure_latency([original, io.to_bytes(quantized)], feeds)
                details["latency_ms"] = {"float": round(float_time * 1e3, 4), "int8": round(int8_time * 1e3, 4)}
                if int8_time >= float_time:
                    logger.warning("quantize: int8 model is not faster (%.3f ms vs %.3f ms float): kept float",
                                   int8_time * 1e3, float_time * 1e3)
                    report.skipped["slower_than_float"] += 1
                    _decline(model, original, report)
                    details["warnings"] = warnings
                    return
        if warnings:
            details["warnings"] = warnings
        if not counts.get("nodes_quantized"):
            _decline(model, original, report)  # the pre-rewrites alone are not worth a changed model
            return
        report.changes.update({k: v for k, v in counts.items() if v})
        adopt_model(model, quantized)
        model.opset_imports.update(quantized.opset_imports)


def _fold_clip_bounds(model: ir.Model) -> int:
    """Clip bounds computed by Cast/CastLike of constants become float initializers (an exact rewrite).

    Exporters emit ``Clip(x, CastLike(0.0, x), CastLike(6.0, x))``; the CastLike nodes read ``x`` too, so
    ``x`` would have three readers and the Clip could not be folded into the producer's Q, and onnxruntime
    only removes a Clip whose bounds are initializers.
    """
    folded = 0
    for node in model.graph:
        if not is_op(node, "Clip"):
            continue
        for index in (1, 2):
            value = node.inputs[index] if index < len(node.inputs) else None
            if value is None or constant_array(value) is not None:
                continue
            array = folded_constant(value)
            if array is None:
                continue
            name = f"{value.name}_folded"
            while name in model.graph.initializers:
                name += "_"
            node.replace_input_with(index, _initializer(model.graph, name, np.asarray(array, np.float32),
                                                        model.ir_version))
            folded += 1
    if folded:
        RemoveUnusedNodesPass()(model)
    return folded


def _sum_to_add(model: ir.Model) -> int:
    """Two-input ``Sum`` (old exporters' residual add) becomes ``Add`` (exact), which has an int8 kernel."""
    rewritten = 0
    for node in list(model.graph):
        if is_op(node, "Sum") and len(node.inputs) == 2 and all(v is not None for v in node.inputs):
            add = ir.Node("", "Add", list(node.inputs), name=node.name, num_outputs=1)
            model.graph.insert_before(node, add)
            output = node.outputs[0]
            if output.is_graph_output():
                name = output.name
                output.name = f"{name}_sum"
                output.replace_all_uses_with(add.outputs[0], replace_graph_outputs=True)
                add.outputs[0].name = name
            else:
                output.replace_all_uses_with(add.outputs[0])
                add.outputs[0].name = output.name
                output.name = f"{output.name}_sum"
            model.graph.remove(node, safe=True)
            rewritten += 1
    return rewritten


def _upgrade_opset(model: ir.Model, report: PassReport) -> None:
    """Per-axis DequantizeLinear needs opset 13: convert older models with onnx's version converter."""
    previous = upgrade_opset(model, _MIN_OPSET, why="quantize needs per-axis DequantizeLinear")
    if previous is not None:
        report.details["opset_converted"] = [previous, _MIN_OPSET]
        report.changes["opset_upgraded"] += 1


#: Details that describe rewrites a declining call undoes.
_UNDONE_DETAILS = ("opset_converted", "clip_bounds_folded", "sum_rewritten_as_add")


def _decline(model: ir.Model, original: bytes, report: PassReport) -> None:
    """Put the model back as it came in (every counted change undone); the skip counts stay."""
    restore_model(model, io.load(original, validate=False))
    report.changes.clear()
    for key in _UNDONE_DETAILS:
        report.details.pop(key, None)


def is_quantize_node(node: ir.Node) -> bool:
    """Whether ``node`` is a standard QuantizeLinear or DequantizeLinear."""
    return is_op(node, "QuantizeLinear") or is_op(node, "DequantizeLinear")
