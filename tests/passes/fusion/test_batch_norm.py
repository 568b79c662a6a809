"""FoldBatchNormPass (fold-bn): Conv/ConvTranspose/Gemm + BatchNormalization folded into weights."""

from __future__ import annotations

import numpy as np
import onnx_ir as ir
import pytest
from onnx_ir.passes.common import RemoveUnusedNodesPass

from sftonnx.errors import PassConfigError
from sftonnx.passes.fusion import FoldBatchNormPass
from tests.helpers import (
    EXACT_ATOL,
    EXACT_RTOL,
    LIGHT_MODELS,
    assert_same_outputs,
    make_model,
    op_types,
    random_feeds,
    run_ort,
    seeded,
)
from tests.passes.fusion.support import (
    all_op_types,
    bind_initializers,
    check_model,
    positive_variance,
    randomize_weights,
    run_unoptimized,
)

HEADER = '<ir_version: 8, opset_import: ["" : 17]>'
# float16 rounds the original's intermediate (the Conv output) as well as our folded weights.
FLOAT16_ATOL = FLOAT16_RTOL = 2e-2


SHARED = f"""{HEADER}
g (float[1,4,5,5] x, float[3,4,1,1] w, float[3] s, float[3] bb, float[3] m, float[3] v,
   float[3] s2, float[3] bb2, float[3] m2, float[3] v2) => (float[1,3,5,5] y, float[1,3,5,5] z) {{
    c = Conv(x, w)
    y = BatchNormalization(c, s, bb, m, v)
    c2 = Conv(x, w)
    z = BatchNormalization(c2, s2, bb2, m2, v2)
}}"""


def bn_params(channels: int, seed: int = 10, dtype=np.float32, suffix: str = "") -> dict[str, np.ndarray]:
    names = ("s", "bb", "m", "v")
    arrays = (
        seeded((channels,), seed, dtype=dtype),
        seeded((channels,), seed + 1, dtype=dtype),
        seeded((channels,), seed + 2, dtype=dtype),
        positive_variance((channels,), seed + 3, dtype=dtype),
    )
    return {f"{name}{suffix}": array for name, array in zip(names, arrays, strict=True)}


def conv_bn(attributes: str = "pads=[1,1,1,1]", *, cin=4, cout=6, k=3, size=8, out="8,8", bias=True,
            bn_attributes: str = "epsilon=0.001", dtype: str = "float") -> str:
    b_decl = f", {dtype}[{cout}] b" if bias else ""
    b_use = ", b" if bias else ""
    group = 1
    for part in attributes.split(","):
        if part.strip().startswith("group="):
            group = int(part.split("=")[1])
    return f"""{HEADER}
g ({dtype}[1,{cin},{size},{size}] x, {dtype}[{cout},{cin // group},{k},{k}] w{b_decl},
   {dtype}[{cout}] s, {dtype}[{cout}] bb, {dtype}[{cout}] m, {dtype}[{cout}] v)
  => ({dtype}[1,{cout},{out}] y) {{
    c = Conv<{attributes}>(x, w{b_use})
    y = BatchNormalization<{bn_attributes}>(c, s, bb, m, v)
}}"""


def conv_bn_model(**kwargs) -> ir.Model:
    text = conv_bn(**kwargs)
    cin, cout, k = kwargs.get("cin", 4), kwargs.get("cout", 6), kwargs.get("k", 3)
    group = 2 if "group=2" in kwargs.get("attributes", "") else 1
    arrays = {"w": seeded((cout, cin // group, k, k), 1), **bn_params(cout)}
    if kwargs.get("bias", True):
        arrays["b"] = seeded((cout,), 2)
    return make_model(text, **arrays)


# -- positive cases ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("attributes", "out", "bias"),
    [
        ("pads=[1,1,1,1]", "8,8", True),
        ("pads=[1,1,1,1]", "8,8", False),
        ("group=2, strides=[2,2], dilations=[2,2], pads=[2,2,2,2]", "4,4", True),
        ("group=2, strides=[1,2], pads=[0,1,0,1]", "6,4", False),
    ],
    ids=["bias", "no-bias", "group-stride-dilation", "group-asymmetric"],
)
def test_folds_conv_bn(attributes, out, bias):
    model = conv_bn_model(attributes=attributes, out=out, bias=bias)
    original = ir.to_proto(model).SerializeToString()
    report = FoldBatchNormPass()(model)
    assert report.changes == {"conv_bn_folded": 1}
    assert not report.skipped
    assert op_types(model) == ["Conv"]
    conv = next(iter(model.graph))
    assert list(conv.attributes) == [a.split("=")[0] for a in attributes.split(", ")]
    assert len(conv.inputs) == 3  # a bias is created when the Conv had none
    check_model(model)
    assert_same_outputs(original, model)


def test_folds_conv_transpose_bn_with_group_2():
    # ConvTranspose weight is [Cin, Cout/group, k, k]: 4 inputs, group 2, 3 outputs per group -> 6 channels.
    text = f"""{HEADER}
g (float[1,4,5,5] x, float[4,3,3,3] w, float[6] b, float[6] s, float[6] bb, float[6] m, float[6] v)
  => (float[1,6,11,11] y) {{
    c = ConvTranspose<group=2, strides=[2,2]>(x, w, b)
    y = BatchNormalization(c, s, bb, m, v)
}}"""
    model = make_model(text, w=seeded((4, 3, 3, 3), 1), b=seeded((6,), 2), **bn_params(6))
    original = ir.to_proto(model).SerializeToString()
    report = FoldBatchNormPass()(model)
    assert report.changes == {"conv_transpose_bn_folded": 1}
    assert op_types(model) == ["ConvTranspose"]
    check_model(model)
    assert_same_outputs(original, model)


@pytest.mark.parametrize(
    ("attributes", "b_shape"),
    [
        ("", None),
        ("transB=1", (5,)),
        ("alpha=0.5, beta=2.0", (1, 5)),
        ("transA=1, transB=1, alpha=1.5, beta=0.25", (3, 5)),
        ("beta=3.0", (3, 1)),
    ],
    ids=["plain-no-C", "transB", "alpha-beta", "transA-transB-full-C", "column-C"],
)
def test_folds_gemm_bn(attributes, b_shape):
    trans_a, trans_b = "transA=1" in attributes, "transB=1" in attributes
    a_shape = (4, 3) if trans_a else (3, 4)
    w_shape = (5, 4) if trans_b else (4, 5)
    c_decl = "" if b_shape is None else f", float[{','.join(map(str, b_shape))}] cc"
    c_use = "" if b_shape is None else ", cc"
    text = f"""{HEADER}
g (float[{a_shape[0]},{a_shape[1]}] a, float[{w_shape[0]},{w_shape[1]}] w{c_decl},
   float[5] s, float[5] bb, float[5] m, float[5] v) => (float[3,5] y) {{
    c = Gemm<{attributes}>(a, w{c_use})
    y = BatchNormalization(c, s, bb, m, v)
}}""".replace("Gemm<>", "Gemm")
    arrays = {"w": seeded(w_shape, 1), **bn_params(5)}
    if b_shape is not None:
        arrays["cc"] = seeded(b_shape, 2)
    model = make_model(text, **arrays)
    original = ir.to_proto(model).SerializeToString()
    report = FoldBatchNormPass()(model)
    assert report.changes == {"gemm_bn_folded": 1}
    assert op_types(model) == ["Gemm"]
    gemm = next(iter(model.graph))
    assert "beta" not in gemm.attributes  # folded into C'
    check_model(model)
    assert_same_outputs(original, model)


def test_folds_float16_model():
    model = make_model(
        conv_bn("group=2, strides=[2,2], pads=[1,1,1,1]", out="4,4", dtype="float16"),
        w=seeded((6, 2, 3, 3), 1, dtype=np.float16),
        b=seeded((6,), 2, dtype=np.float16),
        **bn_params(6, dtype=np.float16),
    )
    original = ir.to_proto(model).SerializeToString()
    report = FoldBatchNormPass()(model)
    assert report.changes == {"conv_bn_folded": 1}
    conv = next(iter(model.graph))
    assert conv.inputs[1].const_value.dtype == ir.DataType.FLOAT16
    assert conv.inputs[2].const_value.dtype == ir.DataType.FLOAT16
    check_model(model)
    assert_same_outputs(original, model, atol=FLOAT16_ATOL, rtol=FLOAT16_RTOL)


def test_folds_constant_nodes_and_constant_of_shape():
    # Weights as ConstantOfShape of a shape initializer (onnx's light_* models) and BN params as Constants.
    text = f"""{HEADER}
g (float[1,2,5,5] x, int64[4] wshape) => (float[1,3,5,5] y) {{
    w = ConstantOfShape<value=float[1] {{0.02}}>(wshape)
    s = Constant<value_floats=[1.5, -0.5, 2.0]>()
    bb = Constant<value=float[3] {{0.1, 0.2, 0.3}}>()
    m = Constant<value=float[3] {{1.0, -1.0, 0.5}}>()
    v = Constant<value=float[3] {{0.5, 2.0, 1.0}}>()
    c = Conv<pads=[1,1,1,1]>(x, w)
    y = BatchNormalization(c, s, bb, m, v)
}}"""
    model = make_model(text, wshape=np.array([3, 2, 3, 3], np.int64))
    original = ir.to_proto(model).SerializeToString()
    report = FoldBatchNormPass()(model)
    assert report.changes == {"conv_bn_folded": 1}
    assert "BatchNormalization" not in op_types(model)  # the Constant nodes are left for dead-node cleanup
    check_model(model)
    assert_same_outputs(original, model)


def test_folds_inside_if_branches():
    text = f"""{HEADER}
g (bool cond, float[1,4,6,6] x, float[6,4,3,3] w, float[6] s, float[6] bb, float[6] m, float[6] v)
  => (float[1,6,6,6] y) {{
    y = If(cond) <
        then_branch = then_g () => (float[1,6,6,6] t) {{
            c = Conv<pads=[1,1,1,1]>(x, w)
            t = BatchNormalization(c, s, bb, m, v)
        }},
        else_branch = else_g () => (float[1,6,6,6] e) {{
            c2 = Conv<pads=[1,1,1,1], dilations=[1,1]>(x, w2)
            e = BatchNormalization<epsilon=0.01>(c2, s, bb, m, v)
        }}
    >
}}""".replace("float[6] v)\n", "float[6] v, float[6,4,3,3] w2)\n")
    model = ir.from_onnx_text(text)
    bind_initializers(model, w=seeded((6, 4, 3, 3), 1), w2=seeded((6, 4, 3, 3), 2), **bn_params(6))
    original = ir.to_proto(model).SerializeToString()
    report = FoldBatchNormPass()(model)
    assert report.changes == {"conv_bn_folded": 2}
    assert all_op_types(model) == ["If", "Conv", "Conv"]
    check_model(model)
    for cond in (True, False):
        feeds = {"cond": np.array(cond), "x": seeded((1, 4, 6, 6), 7)}
        expected = run_ort(original, feeds)[0]
        np.testing.assert_allclose(run_ort(model, feeds)[0], expected, atol=EXACT_ATOL, rtol=EXACT_RTOL)


def test_folds_inside_a_model_local_function():
    # Functions cannot hold initializers: the folded weight and bias become Constant nodes.
    w = ", ".join(f"{v:.4f}" for v in seeded((3 * 2 * 3 * 3,), 1))
    text = f"""<ir_version: 8, opset_import: ["" : 17, "local" : 1]>
g (float[1,2,5,5] x) => (float[1,3,5,5] y) {{
    y = local.ConvBn(x)
}}
<domain: "local", opset_import: ["" : 17]>
ConvBn (a) => (z) {{
    w = Constant<value=float[3,2,3,3] {{{w}}}>()
    s = Constant<value=float[3] {{1.5, -0.5, 2.0}}>()
    bb = Constant<value=float[3] {{0.1, 0.2, 0.3}}>()
    m = Constant<value=float[3] {{1.0, -1.0, 0.5}}>()
    v = Constant<value=float[3] {{0.5, 2.0, 1.0}}>()
    c = Conv<pads=[1,1,1,1]>(a, w)
    z = BatchNormalization(c, s, bb, m, v)
}}"""
    model = ir.from_onnx_text(text)
    original = ir.to_proto(model).SerializeToString()
    report = FoldBatchNormPass()(model)
    assert report.changes == {"conv_bn_folded": 1}
    function = next(iter(model.functions.values()))
    assert [node.op_type for node in function][-3:] == ["Constant", "Constant", "Conv"]
    assert not model.graph.initializers
    check_model(model)
    assert_same_outputs(original, model)


def test_folds_torch_export_idioms():
    # torch.onnx.export (dynamo, optimize=False) gives a bias-less Conv a zero bias computed as
    # Expand(CastLike(0, x), Shape(w)); the Shape reader does not make the weight "shared" and is moved
    # to the folded weight, so the original can be dropped. A second Shape reader stays live (output).
    text = f"""{HEADER}
g (float[1,4,8,8] x, float[6,4,3,3] w, float[6] s, float[6] bb, float[6] m, float[6] v)
  => (float[1,6,8,8] y, int64[4] wshape) {{
    ws = Shape<start=0, end=1>(w)
    zero = Constant<value=float {{0.0}}>()
    zl = CastLike(zero, x)
    b = Expand(zl, ws)
    c = Conv<pads=[1,1,1,1]>(x, w, b)
    y = BatchNormalization(c, s, bb, m, v)
    wshape = Shape(w)
}}"""
    model = make_model(text, w=seeded((6, 4, 3, 3), 1), **bn_params(6))
    weight = model.graph.initializers["w"]
    original = ir.to_proto(model).SerializeToString()
    report = FoldBatchNormPass()(model)
    assert report.changes == {"conv_bn_folded": 1}
    assert not report.skipped
    assert not weight.uses()  # both Shape readers moved to the folded weight
    check_model(model)
    assert_same_outputs(original, model)


def test_folds_legacy_ir3_initializers_listed_as_inputs():
    # IR 3 requires every initializer to be a graph input; there they are constants, not overridable.
    model = conv_bn_model()
    model.ir_version = 3
    for name in ("w", "b", "s", "bb", "m", "v"):
        model.graph.inputs.append(model.graph.initializers[name])
    original = ir.to_proto(model).SerializeToString()
    report = FoldBatchNormPass()(model)
    assert report.changes == {"conv_bn_folded": 1}
    new_weight = next(iter(model.graph)).inputs[1]
    assert new_weight.is_graph_input()  # the new initializers are listed as inputs too
    check_model(model)
    assert_same_outputs(original, model)


def test_clone_shared_weights_folds_both_sites():
    model = make_model(SHARED, w=seeded((3, 4, 1, 1), 1), **bn_params(3), **bn_params(3, seed=20, suffix="2"))
    original = ir.to_proto(model).SerializeToString()
    report = FoldBatchNormPass(clone_shared_weights=True)(model)
    assert report.changes == {"conv_bn_folded": 2}
    assert op_types(model) == ["Conv", "Conv"]
    assert_same_outputs(original, model)


# -- negative cases ---------------------------------------------------------------------------------

def assert_unchanged(model: ir.Model, expected_skips: dict[str, int], pass_=None) -> None:
    text = ir.to_onnx_text(model)
    report = (pass_ or FoldBatchNormPass())(model)
    assert not report.modified
    assert not report.changes
    assert report.skipped == expected_skips
    assert ir.to_onnx_text(model) == text


def test_skips_shared_weight():
    model = make_model(SHARED, w=seeded((3, 4, 1, 1), 1), **bn_params(3), **bn_params(3, seed=20, suffix="2"))
    assert_unchanged(model, {"weight_shared": 2})


def test_skips_weight_read_by_another_op_even_if_only_a_shape_op_reads_it_too():
    text = SHARED.replace("    c2 = Conv(x, w)", "    ws = Shape(w)\n    c2 = Conv(x, w)")
    model = make_model(text, w=seeded((3, 4, 1, 1), 1), **bn_params(3), **bn_params(3, seed=20, suffix="2"))
    assert_unchanged(model, {"weight_shared": 2})


def test_skips_training_mode():
    model = conv_bn_model(bn_attributes="training_mode=1")
    assert_unchanged(model, {"bn_training_mode": 1})


def test_skips_when_conv_output_is_graph_output():
    text = conv_bn().replace("=> (float[1,6,8,8] y)", "=> (float[1,6,8,8] y, float[1,6,8,8] c)")
    model = make_model(text, w=seeded((6, 4, 3, 3), 1), b=seeded((6,), 2), **bn_params(6))
    assert_unchanged(model, {"intermediate_is_graph_output": 1})


def test_skips_when_conv_output_has_another_consumer():
    text = conv_bn().replace("=> (float[1,6,8,8] y)", "=> (float[1,6,8,8] y, float[1,6,8,8] r)").replace(
        "    y = Batch", "    r = Relu(c)\n    y = Batch"
    )
    model = make_model(text, w=seeded((6, 4, 3, 3), 1), b=seeded((6,), 2), **bn_params(6))
    assert_unchanged(model, {"intermediate_has_other_consumers": 1})


def test_skips_non_constant_bn_params():
    arrays = bn_params(6)
    del arrays["m"]  # stays a graph input
    model = make_model(conv_bn(), w=seeded((6, 4, 3, 3), 1), b=seeded((6,), 2), **arrays)
    assert_unchanged(model, {"bn_params_not_constant": 1})


def test_skips_overridable_initializer_in_ir4_and_later():
    model = ir.from_onnx_text(conv_bn())
    bind_initializers(model, w=seeded((6, 4, 3, 3), 1), b=seeded((6,), 2), **bn_params(6))
    value = model.graph.initializers["v"]
    model.graph.inputs.append(value)  # an initializer that is also an input: a caller-overridable default
    assert_unchanged(model, {"bn_params_not_constant": 1})


def test_skips_non_constant_weight():
    model = make_model(conv_bn(), b=seeded((6,), 2), **bn_params(6))
    assert_unchanged(model, {"weight_not_constant": 1})


def test_skips_non_positive_variance():
    arrays = bn_params(6)
    arrays["v"][0] = -1.0
    model = make_model(conv_bn(), w=seeded((6, 4, 3, 3), 1), b=seeded((6,), 2), **arrays)
    assert_unchanged(model, {"bn_variance_not_positive": 1})


def test_respects_ops_option():
    model = conv_bn_model()
    text = ir.to_onnx_text(model)
    report = FoldBatchNormPass(ops=("Gemm",))(model)
    assert not report.modified and not report.skipped
    assert ir.to_onnx_text(model) == text


def test_model_without_batchnorm_is_left_alone():
    model = make_model(f"{HEADER}\ng (float[2,3] x) => (float[2,3] y) {{ y = Relu(x) }}")
    assert_unchanged(model, {})


@pytest.mark.parametrize(
    "options",
    [{"ops": ("Relu",)}, {"ops": ()}, {"ops": "Conv"}, {"clone_shared_weights": "yes"}],
)
def test_rejects_bad_options(options):
    with pytest.raises(PassConfigError):
        FoldBatchNormPass(**options)


# -- onnx light models ------------------------------------------------------------------------------

LIGHT_WITH_BN = [
    p for p in LIGHT_MODELS
    if p.stem in ("light_resnet50", "light_inception_v2", "light_densenet121", "light_shufflenet")
]


@pytest.mark.slow
@pytest.mark.parametrize("weights", ["as-stored", "random"])
@pytest.mark.parametrize("path", LIGHT_WITH_BN, ids=lambda p: p.stem)
def test_light_models(path, weights):
    # IR 3 models whose weights (and many BN parameters) are ConstantOfShape(shape initializer) nodes:
    # fold-bn materializes them. With the stored all-0.02 weights every logit is equal, so a "random" copy
    # gets seeded Conv/Gemm weights, and every fold site (BN output) is compared, not only the softmax.
    model = ir.load(path)
    if weights == "random":
        randomize_weights(model)
    sites = [
        n for n in model.graph
        if n.op_type == "BatchNormalization" and n.inputs[0].producer() is not None
        and n.inputs[0].producer().op_type == "Conv"
    ]
    for bn in sites:  # graph outputs need a type and shape; these are 2-D image convs (NCHW)
        bn.outputs[0].type = bn.outputs[0].type or ir.TensorType(ir.DataType.FLOAT)
        bn.outputs[0].shape = bn.outputs[0].shape or ir.Shape([None] * 4)
        model.graph.outputs.append(bn.outputs[0])
    original = ir.to_proto(model).SerializeToString()
    nodes_before = len(model.graph)
    report = FoldBatchNormPass()(model)
    assert len(sites) > 0
    assert report.changes == {"conv_bn_folded": len(sites)}
    assert not report.skipped
    assert len(model.graph) == nodes_before - len(sites)
    check_model(model)
    # Unoptimized sessions: onnxruntime would otherwise fold Conv+BN in the original itself.
    feeds = random_feeds(original)
    expected = run_unoptimized(original, feeds)
    actual = run_unoptimized(model, feeds)
    for e, a in zip(expected, actual, strict=True):
        np.testing.assert_allclose(a, e, atol=EXACT_ATOL, rtol=EXACT_RTOL)


# -- the models/ zoo (torch exports, dynamo, optimize=False) -----------------------------------------


@pytest.mark.torch
@pytest.mark.parametrize("name", ["resnet18", "mobilenetv2"])
def test_zoo_torch_exports(name):
    models = pytest.importorskip("models")
    model = ir.load(models.ensure(name))
    batchnorms = sum(1 for node in model.graph if node.op_type == "BatchNormalization")
    original = ir.to_proto(model).SerializeToString()
    report = FoldBatchNormPass()(model)
    assert report.changes == {"conv_bn_folded": batchnorms} and batchnorms > 0
    assert not report.skipped
    RemoveUnusedNodesPass()(model)
    assert len(ir.to_proto(model).SerializeToString()) <= len(original)  # the original weights are gone
    check_model(model)
    feeds = random_feeds(original)
    for e, a in zip(run_unoptimized(original, feeds), run_unoptimized(model, feeds), strict=True):
        np.testing.assert_allclose(a, e, atol=EXACT_ATOL, rtol=EXACT_RTOL)
