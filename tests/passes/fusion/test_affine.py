"""FoldAffinePass (fold-affine): per-channel constant Mul/Add after Conv/ConvTranspose/Gemm folded in."""

from __future__ import annotations

import numpy as np
import onnx_ir as ir
import pytest

from sftonnx.errors import PassConfigError
from sftonnx.passes.fusion import FoldAffinePass, FoldBatchNormPass
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
    randomize_weights,
    run_unoptimized,
)

HEADER = '<ir_version: 8, opset_import: ["" : 17]>'
FLOAT16_ATOL = FLOAT16_RTOL = 2e-2


def dims(shape: tuple[int, ...]) -> str:
    return ",".join(map(str, shape))


def conv_affine(op: str, c_shape: tuple[int, ...], *, left: bool = False, bias: bool = True,
                extra_outputs: str = "", dtype: str = "float") -> str:
    operands = "c, k" if left else "k, c"
    b_decl, b_use = (f", {dtype}[6] b", ", b") if bias else ("", "")
    return f"""{HEADER}
g ({dtype}[1,4,8,8] x, {dtype}[6,4,3,3] w{b_decl}, {dtype}[{dims(c_shape)}] c)
  => ({dtype}[1,6,8,8] y{extra_outputs}) {{
    k = Conv<pads=[1,1,1,1]>(x, w{b_use})
    y = {op}({operands})
}}"""


def conv_affine_model(op: str, c_shape: tuple[int, ...], *, c=None, **kwargs) -> ir.Model:
    dtype = np.float16 if kwargs.get("dtype") == "float16" else np.float32
    arrays = {"w": seeded((6, 4, 3, 3), 1, dtype=dtype), "c": seeded(c_shape, 3, dtype=dtype) if c is None else c}
    if kwargs.get("bias", True):
        arrays["b"] = seeded((6,), 2, dtype=dtype)
    return make_model(conv_affine(op, c_shape, **kwargs), **arrays)


def assert_folds(model: ir.Model, changes: dict[str, int], ops: list[str], pass_=None, **tolerances) -> None:
    original = ir.to_proto(model).SerializeToString()
    report = (pass_ or FoldAffinePass())(model)
    assert report.changes == changes
    assert not report.skipped
    assert op_types(model) == ops
    check_model(model)
    assert_same_outputs(original, model, **tolerances)


def assert_unchanged(model: ir.Model, expected_skips: dict[str, int], pass_=None) -> None:
    text = ir.to_onnx_text(model)
    report = (pass_ or FoldAffinePass())(model)
    assert not report.modified and not report.changes
    assert report.skipped == expected_skips
    assert ir.to_onnx_text(model) == text


# -- positive cases ---------------------------------------------------------------------------------


@pytest.mark.parametrize("op", ["Mul", "Add"])
@pytest.mark.parametrize(
    ("c_shape", "left"),
    [((6, 1, 1), False), ((1, 6, 1, 1), True), ((), False), ((1,), True), ((1, 1, 1, 1), False)],
    ids=["C11", "1C11-left", "scalar", "1-left", "1111"],
)
def test_folds_per_channel_constant_into_conv(op, c_shape, left):
    model = conv_affine_model(op, c_shape, left=left)
    assert_folds(model, {f"conv_{op.lower()}_folded": 1}, ["Conv"])


@pytest.mark.parametrize("op", ["Sub", "Div"])
@pytest.mark.parametrize("c_shape", [(6, 1, 1), (1, 6, 1, 1), ()])
def test_folds_sub_and_div_by_a_per_channel_constant(op, c_shape):
    model = conv_affine_model(op, c_shape)
    assert_folds(model, {f"conv_{op.lower()}_folded": 1}, ["Conv"])


@pytest.mark.parametrize("op", ["Sub", "Div"])
def test_sub_and_div_with_the_constant_first_are_not_affine_maps_of_the_conv(op):
    model = conv_affine_model(op, (6, 1, 1), left=True)
    assert_unchanged(model, {})


def test_div_by_zero_is_declined():
    c = seeded((6, 1, 1), 3)
    c[2] = 0.0
    assert_unchanged(conv_affine_model("Div", (6, 1, 1), c=c), {"operand_not_finite": 1})


def test_folds_a_decomposed_batch_norm_chain():
    text = f"""{HEADER}
g (float[1,4,8,8] x, float[6,4,3,3] w, float[1,6,1,1] b, float[1,6,1,1] m, float[1,6,1,1] s, float[1,6,1,1] t)
  => (float[1,6,8,8] y) {{
    k = Conv<pads=[1,1,1,1]>(x, w)
    a = Add(k, b)
    d = Sub(a, m)
    e = Mul(d, s)
    y = Add(e, t)
}}"""
    arrays = {name: seeded((1, 6, 1, 1), seed) for seed, name in enumerate("bmst", 2)}
    model = make_model(text, w=seeded((6, 4, 3, 3), 1), **arrays)
    assert_folds(model, {"conv_add_folded": 2, "conv_sub_folded": 1, "conv_mul_folded": 1}, ["Conv"])


def test_add_creates_the_bias_of_a_conv_without_one():
    model = conv_affine_model("Add", (6, 1, 1), bias=False)
    original_weight = model.graph.initializers["w"]
    assert_folds(model, {"conv_add_folded": 1}, ["Conv"])
    conv = next(iter(model.graph))
    assert conv.inputs[1] is original_weight  # Add changes the bias only
    assert len(conv.inputs) == 3


def test_mul_without_bias_keeps_no_bias():
    model = conv_affine_model("Mul", (6, 1, 1), bias=False)
    assert_folds(model, {"conv_mul_folded": 1}, ["Conv"])
    assert len(next(iter(model.graph)).inputs) == 2


def test_folds_a_mul_add_chain():
    text = f"""{HEADER}
g (float[1,4,8,8] x, float[6,4,3,3] w, float[6] b, float[6,1,1] sc, float[1,6,1,1] sh) => (float[1,6,8,8] y) {{
    k = Conv<pads=[1,1,1,1], strides=[1,1]>(x, w, b)
    m = Mul(sc, k)
    y = Add(m, sh)
}}"""
    model = make_model(text, w=seeded((6, 4, 3, 3), 1), b=seeded((6,), 2), sc=seeded((6, 1, 1), 3),
                       sh=seeded((1, 6, 1, 1), 4))
    assert_folds(model, {"conv_mul_folded": 1, "conv_add_folded": 1}, ["Conv"])


@pytest.mark.parametrize(
    ("op", "attributes", "c_shape", "has_bias"),
    [
        ("Mul", "transB=1, beta=0.5", (5,), True),
        ("Mul", "alpha=2.0", (1, 5), False),
        ("Add", "transB=1, beta=0.5", (1, 5), True),
        ("Add", "transA=1", (), False),
    ],
)
def test_folds_into_gemm(op, attributes, c_shape, has_bias):
    trans_a, trans_b = "transA=1" in attributes, "transB=1" in attributes
    a_shape, w_shape = ((4, 3) if trans_a else (3, 4)), ((5, 4) if trans_b else (4, 5))
    bias_decl, bias_use = (", float[5] cc", ", cc") if has_bias else ("", "")
    text = f"""{HEADER}
g (float[{dims(a_shape)}] a, float[{dims(w_shape)}] w{bias_decl}, float[{dims(c_shape)}] c) => (float[3,5] y) {{
    k = Gemm<{attributes}>(a, w{bias_use})
    y = {op}(k, c)
}}"""
    arrays = {"w": seeded(w_shape, 1), "c": seeded(c_shape, 3)}
    if has_bias:
        arrays["cc"] = seeded((5,), 2)
    assert_folds(make_model(text, **arrays), {f"gemm_{op.lower()}_folded": 1}, ["Gemm"])


def test_folds_mul_into_conv_transpose_with_group_2():
    text = f"""{HEADER}
g (float[1,4,5,5] x, float[4,3,3,3] w, float[6] b, float[6,1,1] c) => (float[1,6,11,11] y) {{
    k = ConvTranspose<group=2, strides=[2,2]>(x, w, b)
    y = Mul(k, c)
}}"""
    model = make_model(text, w=seeded((4, 3, 3, 3), 1), b=seeded((6,), 2), c=seeded((6, 1, 1), 3))
    assert_folds(model, {"conv_transpose_mul_folded": 1}, ["ConvTranspose"])


def test_folds_float16_model():
    model = conv_affine_model("Mul", (1, 6, 1, 1), dtype="float16")
    assert_folds(model, {"conv_mul_folded": 1}, ["Conv"], atol=FLOAT16_ATOL, rtol=FLOAT16_RTOL)
    assert next(iter(model.graph)).inputs[1].const_value.dtype == ir.DataType.FLOAT16


def test_folds_unsqueezed_constant():
    # Caffe2 "scale" layers: Mul/Add by Unsqueeze(initializer [C], axes=[1,2]) -> [C,1,1].
    text = f"""{HEADER}
g (float[1,4,8,8] x, float[6,4,3,3] w, float[6] sc, int64[2] axes) => (float[1,6,8,8] y) {{
    k = Conv<pads=[1,1,1,1]>(x, w)
    u = Unsqueeze(sc, axes)
    y = Mul(k, u)
}}"""
    model = make_model(text, w=seeded((6, 4, 3, 3), 1), sc=seeded((6,), 3), axes=np.array([1, 2], np.int64))
    original = ir.to_proto(model).SerializeToString()
    report = FoldAffinePass()(model)
    assert report.changes == {"conv_mul_folded": 1}
    assert op_types(model) == ["Unsqueeze", "Conv"]  # the Unsqueeze is dead now
    assert_same_outputs(original, model)


def test_folds_inside_if_branches():
    text = f"""{HEADER}
g (bool cond, float[1,4,8,8] x, float[6,4,3,3] w, float[6,1,1] c, float[6,4,3,3] w2) => (float[1,6,8,8] y) {{
    y = If(cond) <
        then_branch = then_g () => (float[1,6,8,8] t) {{
            k = Conv<pads=[1,1,1,1]>(x, w)
            t = Mul(k, c)
        }},
        else_branch = else_g () => (float[1,6,8,8] e) {{
            k2 = Conv<pads=[1,1,1,1]>(x, w2)
            e = Add(c, k2)
        }}
    >
}}"""
    model = ir.from_onnx_text(text)
    bind_initializers(model, w=seeded((6, 4, 3, 3), 1), w2=seeded((6, 4, 3, 3), 2), c=seeded((6, 1, 1), 3))
    original = ir.to_proto(model).SerializeToString()
    report = FoldAffinePass()(model)
    assert report.changes == {"conv_mul_folded": 1, "conv_add_folded": 1}
    assert all_op_types(model) == ["If", "Conv", "Conv"]
    check_model(model)
    for cond in (True, False):
        feeds = {"cond": np.array(cond), "x": seeded((1, 4, 8, 8), 7)}
        expected = run_ort(original, feeds)[0]
        np.testing.assert_allclose(run_ort(model, feeds)[0], expected, atol=EXACT_ATOL, rtol=EXACT_RTOL)


def test_shared_weight_still_folds_an_add():
    text = f"""{HEADER}
g (float[1,4,8,8] x, float[6,4,3,3] w, float[6,1,1] c) => (float[1,6,8,8] y, float[1,6,8,8] z) {{
    k = Conv<pads=[1,1,1,1]>(x, w)
    y = Add(k, c)
    z = Conv<pads=[1,1,1,1]>(x, w)
}}"""
    model = make_model(text, w=seeded((6, 4, 3, 3), 1), c=seeded((6, 1, 1), 3))
    assert_folds(model, {"conv_add_folded": 1}, ["Conv", "Conv"])


# -- negative cases ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("op", "c_shape", "reason"),
    [
        ("Mul", (1, 1, 8, 8), "operand_not_per_channel"),
        ("Mul", (6, 8, 8), "operand_not_per_channel"),
        ("Add", (1, 6, 1, 8), "operand_not_per_channel"),
        ("Add", (2, 6, 1, 1), "operand_not_per_channel"),  # would broadcast the batch to 2
        ("Mul", (1, 1, 6, 1, 1), "operand_changes_shape"),
    ],
)
def test_skips_operand_that_is_not_per_channel(op, c_shape, reason):
    text = conv_affine(op, c_shape)
    if c_shape in ((2, 6, 1, 1), (1, 1, 6, 1, 1)):  # the output really has the broadcast shape
        out = "2,6,8,8" if len(c_shape) == 4 else "1,1,6,8,8"
        text = text.replace("[1,6,8,8] y", f"[{out}] y")
    model = make_model(text, w=seeded((6, 4, 3, 3), 1), b=seeded((6,), 2), c=seeded(c_shape, 3))
    assert_unchanged(model, {reason: 1})


def test_skips_non_constant_operand():
    model = make_model(conv_affine("Mul", (6, 1, 1)), w=seeded((6, 4, 3, 3), 1), b=seeded((6,), 2))
    assert_unchanged(model, {"operand_not_constant": 1})


def test_skips_non_finite_operand():
    c = seeded((6, 1, 1), 3)
    c[2] = np.inf
    assert_unchanged(conv_affine_model("Mul", (6, 1, 1), c=c), {"operand_not_finite": 1})


def test_skips_when_conv_output_is_graph_output():
    text = conv_affine("Mul", (6, 1, 1), extra_outputs=", float[1,6,8,8] k")
    model = make_model(text, w=seeded((6, 4, 3, 3), 1), b=seeded((6,), 2), c=seeded((6, 1, 1), 3))
    assert_unchanged(model, {"intermediate_is_graph_output": 1})


def test_skips_mul_with_shared_weight_unless_cloning():
    text = f"""{HEADER}
g (float[1,4,8,8] x, float[6,4,3,3] w, float[6,1,1] c) => (float[1,6,8,8] y, float[1,6,8,8] z) {{
    k = Conv<pads=[1,1,1,1]>(x, w)
    y = Mul(k, c)
    z = Conv<pads=[1,1,1,1]>(x, w)
}}"""
    model = make_model(text, w=seeded((6, 4, 3, 3), 1), c=seeded((6, 1, 1), 3))
    assert_unchanged(model, {"weight_shared": 1})
    assert_folds(model, {"conv_mul_folded": 1}, ["Conv", "Conv"], FoldAffinePass(clone_shared_weights=True))


def test_respects_affine_ops_option():
    model = conv_affine_model("Mul", (6, 1, 1))
    assert_unchanged(model, {}, FoldAffinePass(affine_ops=("Add",)))


@pytest.mark.parametrize(
    "options",
    [{"ops": ("Relu",)}, {"affine_ops": ("Pow",)}, {"affine_ops": ()}, {"clone_shared_weights": 1}],
)
def test_rejects_bad_options(options):
    with pytest.raises(PassConfigError):
        FoldAffinePass(**options)


# -- onnx light models ------------------------------------------------------------------------------

LIGHT_WITH_SCALE = [p for p in LIGHT_MODELS if p.stem in ("light_inception_v2", "light_densenet121")]


@pytest.mark.slow
@pytest.mark.parametrize("path", LIGHT_WITH_SCALE, ids=lambda p: p.stem)
def test_light_models_after_fold_bn(path):
    # Caffe2 exports: Conv -> BatchNormalization -> Mul(Unsqueeze(scale)) -> Add(Unsqueeze(bias)).
    model = randomize_weights(ir.load(path))
    for site in _scale_layer_outputs(model):  # compare every fold site, not only the softmax
        site.type = site.type or ir.TensorType(ir.DataType.FLOAT)
        site.shape = site.shape or ir.Shape([None] * 4)
        model.graph.outputs.append(site)
    original = ir.to_proto(model).SerializeToString()
    folded_bn = FoldBatchNormPass()(model).changes["conv_bn_folded"]
    report = FoldAffinePass()(model)
    assert folded_bn == len(model.graph.outputs) - 1 > 0
    assert report.changes == {"conv_mul_folded": folded_bn, "conv_add_folded": folded_bn}
    check_model(model)
    feeds = random_feeds(original)
    for e, a in zip(run_unoptimized(original, feeds), run_unoptimized(model, feeds), strict=True):
        np.testing.assert_allclose(a, e, atol=EXACT_ATOL, rtol=EXACT_RTOL)


def _producer_op(value: ir.Value) -> str | None:
    producer = value.producer()
    return None if producer is None else producer.op_type


def _scale_layer_outputs(model: ir.Model) -> list[ir.Value]:
    """Outputs of ``Add(Mul(BatchNormalization(Conv(x)), scale), bias)`` chains."""
    outputs = []
    for node in model.graph:
        if node.op_type == "Add" and _producer_op(node.inputs[0]) == "Mul":
            bn_out = node.inputs[0].producer().inputs[0]
            if _producer_op(bn_out) == "BatchNormalization" and _producer_op(bn_out.producer().inputs[0]) == "Conv":
                outputs.append(node.outputs[0])
    return outputs
