"""The default preset and the lossless passes over onnx's shipped backend test models.

Every model runs the default preset (``lossless``) with per-pass verification, which names the first pass that
changes the outputs; each single lossless pass then runs alone only on the models it can change: what a pass
needs is a few op types or structural facts of the model (:data:`APPLIES`), read from the proto at collection,
and :func:`test_passes_marked_inapplicable_change_nothing` runs every pass on every model where the table says
it cannot apply and requires it to report no change. The first pass of the preset is not run alone: the
preset case already runs it alone on the unchanged model, verified.

Where a model directory stores inputs and expected outputs (``test_data_set_*``), the optimized model must
reproduce the stored outputs as closely as onnxruntime reproduces them on the original; otherwise (the
``light_*`` models store no inputs) it must match the original run in onnxruntime on seeded random inputs.
Models below opset 7 must be rejected with a clear InputError; they are then upgraded with onnx's
version converter (what the error advises) and tested like the others. Models that onnxruntime itself
cannot run (locale-dependent string ops, training ops) are skipped with that reason.
"""

from __future__ import annotations

import dataclasses
import functools
import pathlib
from collections import Counter
from collections.abc import Callable, Iterable, Iterator

import numpy as np
import onnx
import onnx_ir as ir
import pytest

from sftonnx import io, verify
from sftonnx.errors import InputError
from sftonnx.pass_infra import Numerics
from sftonnx.passes import PRESETS, REGISTRY
from sftonnx.pipeline import Pipeline, Verifier, build_passes
from tests.helpers import EXACT_ATOL, EXACT_RTOL, LIGHT_MODELS, ONNX_DATA, assert_same_outputs, session

MODEL_DIRS = sorted(
    path.parent
    for suite in ("pytorch-converted", "pytorch-operator", "simple")
    for path in (ONNX_DATA / suite).glob("*/model.onnx")
)
EXACT_PASSES = sorted(name for name, cls in REGISTRY.items() if cls.numerics is Numerics.EXACT)
PRESET = "lossless"
UPGRADE_OPSET = 11


def _first_of_preset() -> str | None:
    """The preset's first pass when it runs with its default options: it sees the model unchanged."""
    first, _ = build_passes(PRESET, REGISTRY, PRESETS)[0]
    return first.name if first.spec() == REGISTRY[first.name]().spec() else None


#: Not run alone: the preset case already runs it alone on the unchanged model, with verification.
ALONE_IN_PRESET = _first_of_preset()


def _model_id(model_dir: pathlib.Path) -> str:
    return f"{model_dir.parent.name}/{model_dir.name}"


def _opset(proto: onnx.ModelProto) -> int:
    return next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), 0)


# ------------------------------------------------------------------------------------------ applicability
def _graphs(graph: onnx.GraphProto) -> Iterator[onnx.GraphProto]:
    """The graph and every If/Loop/Scan body in it."""
    yield graph
    for node in graph.node:
        for attribute in node.attribute:
            if attribute.type == onnx.AttributeProto.GRAPH:
                yield from _graphs(attribute.g)
            for body in attribute.graphs:
                yield from _graphs(body)


@dataclasses.dataclass(frozen=True)
class Facts:
    """What the lossless passes need to find in a model before they can change it, read from its proto.

    Every fact over-approximates (when in doubt it is true): a pass the table calls applicable may still
    find nothing, but one it calls inapplicable must change nothing (checked on every model below).
    """

    ops: frozenset[str]  # op types in the graph, its subgraphs and model-local functions
    nodes: int  # nodes in the graph and its subgraphs
    foldable: bool  # a Constant node, or a node whose inputs are all constants (or that has none)
    dead_code: bool  # a node or initializer that no node and no graph output reads
    repeated_node: bool  # two nodes of one graph with the same op, attributes and non-constant inputs
    duplicate_initializers: bool  # two initializers with the same dtype, shape and contents
    shareable_initializers: bool  # two main-graph initializers (not inputs) of share-weights' size, as many elements
    several_orders: bool  # two consecutive main-graph nodes not connected: another topological order exists

    @classmethod
    def of(cls, proto: onnx.ModelProto) -> Facts:
        graphs = list(_graphs(proto.graph))
        nodes = [node for graph in graphs for node in graph.node]
        constants = {t.name for graph in graphs for t in graph.initializer}
        constants |= {out for node in nodes if node.op_type == "Constant" for out in node.output}
        read = {name for node in nodes for name in node.input} | {o.name for g in graphs for o in g.output}
        repeated = False
        for graph in graphs:
            keys = Counter(
                (
                    node.domain,
                    node.op_type,
                    tuple(a.SerializeToString() for a in node.attribute),
                    tuple("<constant>" if name in constants else name for name in node.input),
                )
                for node in graph.node
            )
            repeated = repeated or any(count > 1 for count in keys.values())
        contents = Counter(  # initializers that are graph inputs or outputs are left alone
            (t.data_type, tuple(t.dims), onnx.numpy_helper.to_array(t).tobytes())
            for graph in graphs
            for t in graph.initializer
            if t.name not in {v.name for v in [*graph.input, *graph.output]}
        )
        min_elements = REGISTRY["share-weights"]().min_elements
        inputs = {i.name for i in proto.graph.input}
        sizes = Counter(
            (t.data_type, int(np.prod(t.dims)))
            for t in proto.graph.initializer
            if t.name not in inputs and np.prod(t.dims) >= min_elements
        )
        main = list(proto.graph.node)
        return cls(
            ops=frozenset(node.op_type for node in nodes) | {n.op_type for f in proto.functions for n in f.node},
            nodes=len(nodes),
            foldable=any(
                node.op_type == "Constant" or all(not name or name in constants for name in node.input)
                for node in nodes
            ),
            dead_code=any(not any(out in read for out in node.output if out) for node in nodes)
            or any(t.name not in read for graph in graphs for t in graph.initializer),
            repeated_node=repeated,
            duplicate_initializers=any(count > 1 for count in contents.values()),
            shareable_initializers=any(count > 1 for count in sizes.values()),
            several_orders=any(not set(a.output) & set(b.input) for a, b in zip(main, main[1:], strict=False)),
        )


def _needs(*groups: Iterable[str]) -> Callable[[Facts], bool]:
    """Applicable when the model holds every op type of one group (the ops one pattern of the pass matches)."""
    sets = [frozenset(group) for group in groups]
    return lambda facts: any(group <= facts.ops for group in sets)


_LINEAR = ("Conv", "ConvTranspose", "Gemm")
# onnxruntime's graph transformers (basic and extended levels), by the op types they start from: single nodes
# it may remove or move (no-op eliminations, the transpose optimizer), and ops it fuses with a neighbour.
_ORT_SINGLE = frozenset("Identity Dropout Slice Unsqueeze Expand Cast Transpose Reshape".split())
_ORT_FUSED = frozenset(
    "Conv MatMul Gemm BatchNormalization Add Sub Mul Div Pad Erf Tanh ReduceMean Softmax Sigmoid Relu Clip Gather "
    "Not Where".split()
)

#: Per lossless pass (except the preset's first): can it change a model with these facts?
APPLIES: dict[str, Callable[[Facts], bool]] = {
    "eliminate-identity": _needs({"Identity"}),
    "eliminate-dead": lambda facts: facts.dead_code,
    "cse": lambda facts: facts.repeated_node,
    "dedup": lambda facts: facts.duplicate_initializers,
    "share-weights": lambda facts: facts.shareable_initializers,
    "schedule-memory": lambda facts: facts.several_orders,
    "fold-bn": _needs(*({"BatchNormalization", op} for op in _LINEAR)),
    "fold-affine": _needs(*({op, affine} for op in _LINEAR for affine in ("Mul", "Add", "Sub", "Div"))),
    "matmul-add-to-gemm": _needs({"MatMul", "Add"}),
    "fold-pad": _needs({"Pad", "Conv"}, {"Pad", "MaxPool"}),
    "fold-input-norm": _needs(*({affine, "Conv"} for affine in ("Sub", "Div", "Mul", "Add"))),
    "collapse-layout": _needs({"Transpose"}, {"Reshape"}, {"Squeeze", "Unsqueeze"}),
    "sink-transposes": _needs({"Transpose"}),
    "fuse-layernorm": _needs({"ReduceMean", "Sub", "Sqrt"}, {"LayerNormalization", "Add"}),
    "fuse-gelu": _needs({"Erf", "Mul", "Add"}, {"Tanh", "Mul", "Add"}),
    "fuse-softmax": _needs({"Exp", "ReduceSum", "Div"}),
    # onnxscript's ort_fusions: attention and FusedMatMul (MatMul; Gemm is unfused to MatMul first), Gelu forms,
    # RMS and skip normalizations, rotary embeddings, Softmax between Casts, GroupNorm from InstanceNormalization.
    "fuse-ort": _needs(
        {"MatMul"}, {"Gemm"}, {"Erf"}, {"Tanh", "Mul"}, {"Gelu", "Add"}, {"ReduceMean"}, {"LayerNormalization", "Add"},
        {"SimplifiedLayerNormalization", "Add"}, {"Neg", "Concat"}, {"Cos"}, {"Sin"}, {"Softmax", "Cast"},
        {"InstanceNormalization"},
    ),
    "ort-offline": lambda facts: (
        facts.foldable or bool(facts.ops & _ORT_SINGLE) or (facts.nodes > 1 and bool(facts.ops & _ORT_FUSED))
    ),
}


def _always(facts: Facts) -> bool:
    return True


@functools.cache
def _tested_model(model_dir: pathlib.Path) -> bytes:
    """The model as the tests optimize it: upgraded to opset 11 when older than opset 7."""
    proto = onnx.load(model_dir / "model.onnx")
    if _opset(proto) < io.MIN_OPSET:
        proto = onnx.version_converter.convert_version(proto, UPGRADE_OPSET)
    return proto.SerializeToString()


@functools.cache
def _facts(model_dir: pathlib.Path) -> Facts:
    return Facts.of(onnx.load_from_string(_tested_model(model_dir)))


def _applies(name: str, model_dir: pathlib.Path) -> bool:
    return name != ALONE_IN_PRESET and APPLIES.get(name, _always)(_facts(model_dir))


SINGLE_PASS_CASES = [
    pytest.param(model_dir, name, id=f"{_model_id(model_dir)}-{name}")
    for model_dir in MODEL_DIRS
    for name in EXACT_PASSES
    if _applies(name, model_dir)
]


# ------------------------------------------------------------------------------------------------ data
def _read(path: pathlib.Path, type_proto: onnx.TypeProto):
    kind = type_proto.WhichOneof("value")
    if kind == "tensor_type":
        proto = onnx.TensorProto()
        proto.ParseFromString(path.read_bytes())
        return onnx.numpy_helper.to_array(proto)
    if kind == "sequence_type":
        proto = onnx.SequenceProto()
        proto.ParseFromString(path.read_bytes())
        return onnx.numpy_helper.to_list(proto)
    if kind == "optional_type":
        proto = onnx.OptionalProto()
        proto.ParseFromString(path.read_bytes())
        return onnx.numpy_helper.to_optional(proto)
    raise NotImplementedError(kind)


def _data_sets(model_dir: pathlib.Path, proto: onnx.ModelProto):
    initializers = {i.name for i in proto.graph.initializer}
    inputs = [i for i in proto.graph.input if i.name not in initializers]
    for folder in sorted(model_dir.glob("test_data_set_*")):
        feeds = {i.name: _read(folder / f"input_{n}.pb", i.type) for n, i in enumerate(inputs)}
        outputs = [_read(folder / f"output_{n}.pb", o.type) for n, o in enumerate(proto.graph.output)]
        yield feeds, outputs


def _assert_close(actual, expected, label: str) -> None:
    if isinstance(expected, list):
        assert isinstance(actual, list) and len(actual) == len(expected), label
        for a, e in zip(actual, expected, strict=False):
            _assert_close(a, e, label)
        return
    actual, expected = np.asarray(actual), np.asarray(expected)
    assert actual.shape == expected.shape, f"{label}: shape {actual.shape} != {expected.shape}"
    if expected.dtype.kind in "fc":
        np.testing.assert_allclose(actual, expected, atol=EXACT_ATOL, rtol=EXACT_RTOL, err_msg=label)
    else:
        np.testing.assert_array_equal(actual, expected, err_msg=label)


def _run(model_bytes: bytes, feeds):
    sess = session(model_bytes)
    return sess.run(None, feeds)


def _prepare(model_dir: pathlib.Path) -> tuple[bytes, list]:
    """The model to optimize and its stored data sets; skips models that onnxruntime itself cannot run.

    A model older than opset 7 must first be refused by ``io.load``; it is then upgraded, as the error advises.
    """
    proto = onnx.load(model_dir / "model.onnx")
    data = list(_data_sets(model_dir, proto))
    if _opset(proto) < io.MIN_OPSET:
        with pytest.raises(InputError, match="too old"):
            io.load(proto.SerializeToString())
    original = _tested_model(model_dir)
    assert _opset(onnx.load_from_string(original)) >= io.MIN_OPSET
    try:
        reference = [_run(original, feeds) for feeds, _ in data]
    except Exception as error:  # onnxruntime's own limits, not ours
        pytest.skip(f"onnxruntime cannot run the original: {str(error).splitlines()[0][:120]}")
    for (_, expected), got in zip(data, reference, strict=False):
        _assert_close(got, expected, "onnxruntime vs stored (sanity)")
    return original, data


def _assert_stored_outputs(model: ir.Model, data: list, label: str) -> None:
    optimized = ir.to_proto(model).SerializeToString()
    for feeds, expected in data:
        _assert_close(_run(optimized, feeds), expected, label)


# ----------------------------------------------------------------------------------------------- tests
@pytest.mark.parametrize("model_dir", MODEL_DIRS, ids=_model_id)
def test_default_preset_keeps_stored_outputs(model_dir: pathlib.Path) -> None:
    """The preset with per-pass verification: a pass that changes the outputs is named by the error."""
    original, data = _prepare(model_dir)
    tolerance = verify.Tolerance(atol=EXACT_ATOL, rtol=EXACT_RTOL)
    verifier = Verifier(original, [feeds for feeds, _ in data], tolerance=tolerance)
    model = io.load(original)
    Pipeline(build_passes(PRESET, REGISTRY, PRESETS), verifier=verifier, verify_each=True).run(model)
    _assert_stored_outputs(model, data, f"{PRESET} on {model_dir.name}")


@pytest.mark.parametrize(("model_dir", "name"), SINGLE_PASS_CASES)
def test_pass_keeps_stored_outputs(model_dir: pathlib.Path, name: str) -> None:
    """Each lossless pass alone, on the models it can change (``APPLIES``)."""
    original, data = _prepare(model_dir)
    model = io.load(original)
    Pipeline(build_passes(name, REGISTRY, PRESETS)).run(model)
    _assert_stored_outputs(model, data, f"{name} on {model_dir.name}")


@pytest.mark.parametrize("model_dir", MODEL_DIRS, ids=_model_id)
def test_passes_marked_inapplicable_change_nothing(model_dir: pathlib.Path) -> None:
    """The applicability table is right: every pass it leaves out for a model reports no change there."""
    original, _ = _prepare(model_dir)  # ort-offline needs a model onnxruntime can run
    changed = {}
    for name in EXACT_PASSES:
        if name == ALONE_IN_PRESET or _applies(name, model_dir):
            continue
        [(pass_, _)] = build_passes(name, REGISTRY, PRESETS)
        report = pass_(io.load(original))
        if report.modified:
            changed[name] = dict(report.changes)
    assert not changed, f"APPLIES rules these out on {_model_id(model_dir)} ({_facts(model_dir)}), but: {changed}"


def test_applicability_table_names_every_lossless_pass() -> None:
    """A new lossless pass runs on every model (``_always``) until the table says what it needs."""
    assert ALONE_IN_PRESET in EXACT_PASSES
    assert set(APPLIES) == set(EXACT_PASSES) - {ALONE_IN_PRESET}


@pytest.mark.slow
@pytest.mark.parametrize("path", LIGHT_MODELS, ids=lambda p: p.stem)
def test_default_preset_on_light_models(path: pathlib.Path) -> None:
    """The default preset, with per-pass verification, on every light_* model."""
    from sftonnx import api

    # The three models with ~0.5 GB of generated weights take minutes per check: verify them once, at the end.
    heavy = path.stem in ("light_vgg19", "light_bvlc_alexnet", "light_zfnet512")
    result = api.optimize(path, verify_each=not heavy)
    assert result.verification is not None and result.verification.passed
    assert result.report.final.nodes < result.report.original.nodes
    assert_same_outputs(path.read_bytes(), ir.to_proto(result.model).SerializeToString())
    # The stored expected output was produced from a fixed input that is not shipped: check its shape.
    stored = onnx.TensorProto()
    stored.ParseFromString(path.with_name(path.stem + "_output_0.pb").read_bytes())
    assert list(result.model.graph.outputs[0].shape.numpy()) == list(stored.dims)
