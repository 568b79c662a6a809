"""fuse-layernorm, fuse-gelu, fuse-softmax (passes/fusion/transformer.py)."""

from __future__ import annotations

import numpy as np
import onnx_ir as ir
import pytest

from sftonnx.errors import PassConfigError
from sftonnx.passes.fusion.transformer import FuseGeluPass, FuseLayerNormPass, FuseSoftmaxPass, opset_20_blockers
from tests.helpers import make_model, op_types, run_ort, seeded
from tests.passes.fusion.support import all_op_types, assert_fused, assert_unchanged, bind_initializers, check_model


def header(opset: int) -> str:
    return f'<ir_version: 8, opset_import: ["" : {opset}]>'



# -- LayerNorm ----------------------------------------------------------------------------------------

def layernorm_text(opset: int = 18, *, square: str = "Pow(d, two)", normalize: str = "Div(d, sd)",
                   axes: tuple[int, int] = (-1, -1), bias: bool = True) -> str:
    if opset >= 18:
        means = [f"ReduceMean(x, a{i})" for i in range(2)]
        means[1] = means[1].replace("x,", "sq,")
    else:
        means = [f"ReduceMean<axes=[{axes[0]}]>(x)", f"ReduceMean<axes=[{axes[1]}]>(sq)"]
    tail = "    y = Add(sc, beta)" if bias else "    y = Identity(sc)"
    return f"""{header(opset)}
g (float[2,5,16] x) => (float[2,5,16] y) {{
    mu = {means[0]}
    d = Sub(x, mu)
    sq = {square}
    var = {means[1]}
    ve = Add(var, eps)
    sd = Sqrt(ve)
    inv = Reciprocal(sd)
    n = {normalize}
    sc = Mul(n, gamma)
{tail}
}}"""


def layernorm_model(opset: int = 18, axes=(-1, -1), gamma_shape=(16,), **kwargs) -> ir.Model:
    arrays = {"two": np.array(2.0, np.float32), "eps": np.array(1e-5, np.float32),
              "gamma": seeded(gamma_shape, 1), "beta": seeded((16,), 2)}
    if opset >= 18:
        arrays["a0"], arrays["a1"] = np.array([axes[0]], np.int64), np.array([axes[1]], np.int64)
    model = make_model(layernorm_text(opset, axes=axes, **kwargs), **arrays)
    ir.passes.common.RemoveUnusedNodesPass()(model)  # the unused Reciprocal of the Div form
    return model


@pytest.mark.parametrize("opset", [17, 18])
@pytest.mark.parametrize("square", ["Pow(d, two)", "Mul(d, d)"])
@pytest.mark.parametrize("normalize", ["Div(d, sd)", "Mul(inv, d)"])
def test_fuse_layernorm(opset, square, normalize):
    model = layernorm_model(opset, square=square, normalize=normalize)
    assert_fused(model, FuseLayerNormPass(), {"layer_norm_fused": 1, "layer_norm_bias_folded": 1},
                 ["LayerNormalization"])
    node = model.graph.node(0)
    assert node.attributes["axis"].value == -1
    assert node.attributes["epsilon"].value == pytest.approx(1e-5)


def test_fuse_layernorm_broadcasts_scalar_scale_to_normalized_shape():
    model = layernorm_model(gamma_shape=(1,), bias=False)
    assert_fused(model, FuseLayerNormPass(), {"layer_norm_fused": 1}, ["LayerNormalization", "Identity"])
    assert model.graph.node(0).inputs[1].const_value.shape == (16,)


@pytest.mark.parametrize(
    ("kwargs", "reason"),
    [
        ({"opset": 16}, "opset_too_old"),
        ({"axes": (1, 1)}, "axes_not_trailing"),
        ({"axes": (-1, 1)}, "axes_not_trailing"),
    ],
)
def test_fuse_layernorm_declines(kwargs, reason):
    model = layernorm_model(**kwargs)
    assert_unchanged(model, FuseLayerNormPass(), {reason: 1})


def test_fuse_layernorm_declines_wrong_exponent():
    model = layernorm_model()
    model.graph.initializers["two"].const_value = ir.tensor(np.array(3.0, np.float32), name="two")
    assert_unchanged(model, FuseLayerNormPass(), {"exponent_not_two": 1})


def test_fuse_layernorm_in_if_branch():
    text = f"""{header(18)}
g (bool cond, float[2,5,16] x, float two, float eps, float[16] gamma, int64[1] a) => (float[2,5,16] y) {{
    y = If(cond) <
        then_branch = t () => (float[2,5,16] o) {{
            mu = ReduceMean(x, a)
            d = Sub(x, mu)
            sq = Pow(d, two)
            var = ReduceMean(sq, a)
            ve = Add(var, eps)
            sd = Sqrt(ve)
            n = Div(d, sd)
            o = Mul(n, gamma)
        }},
        else_branch = e () => (float[2,5,16] c) {{
            c = Identity(x)
        }}
    >
}}"""
    model = bind_initializers(ir.from_onnx_text(text), two=np.array(2.0, np.float32),
                              eps=np.array(1e-5, np.float32), gamma=seeded((16,), 1), a=np.array([-1], np.int64))
    original = ir.to_proto(model).SerializeToString()
    report = FuseLayerNormPass()(model)
    assert report.changes == {"layer_norm_fused": 1}
    assert all_op_types(model) == ["If", "LayerNormalization", "Identity"]
    check_model(model)
    feeds = {"cond": np.array(True), "x": seeded((2, 5, 16), 3)}
    np.testing.assert_allclose(run_ort(model, feeds)[0], run_ort(original, feeds)[0], atol=1e-4, rtol=1e-3)


# -- Gelu ---------------------------------------------------------------------------------------------

GELU_CONSTANTS = {"r2": np.array(np.sqrt(2), np.float32), "one": np.array(1, np.float32),
                  "half": np.array(0.5, np.float32), "k": np.array(0.044715, np.float32),
                  "cc": np.array(np.sqrt(2 / np.pi), np.float32), "three": np.array(3, np.float32)}

ERF_FORMS = {
    # torch: x * (0.5 * (1 + erf(x / sqrt2)))
    "torch": "a = Div(x, r2)\n e = Erf(a)\n g1 = Add(e, one)\n h1 = Mul(half, g1)\n y = Mul(x, h1)",
    # (x * 0.5) * (1 + erf(x * (1/sqrt2)))
    "halved": "a = Mul(x, ir2)\n e = Erf(a)\n g1 = Add(one, e)\n xh = Mul(x, half)\n y = Mul(xh, g1)",
    # (x * (1 + erf)) * 0.5
    "late_half": "a = Div(x, r2)\n e = Erf(a)\n g1 = Add(e, one)\n xg = Mul(g1, x)\n y = Mul(xg, half)",
}
TANH_FORMS = {
    "pow": "c3 = Pow(x, three)\n k3 = Mul(c3, k)\n s = Add(x, k3)\n t = Mul(cc, s)\n th = Tanh(t)\n"
           " g2 = Add(one, th)\n xh = Mul(half, x)\n y = Mul(xh, g2)",
    "products": "c = Mul(x, x)\n c3 = Mul(c, x)\n k3 = Mul(k, c3)\n s = Add(k3, x)\n t = Mul(s, cc)\n th = Tanh(t)\n"
                " g2 = Add(th, one)\n h2 = Mul(g2, half)\n y = Mul(x, h2)",
}


def gelu_model(body: str, opset: int = 20, **overrides) -> ir.Model:
    arrays = {**GELU_CONSTANTS, "ir2": np.array(1 / np.sqrt(2), np.float32), **overrides}
    used = {name: array for name, array in arrays.items() if f" {name})" in body or f"({name}," in body
            or f", {name})" in body}
    return make_model(f"""{header(opset)}
g (float[2,5,16] x) => (float[2,5,16] y) {{
 {body}
}}""", **used)


@pytest.mark.parametrize("form", ERF_FORMS)
def test_fuse_gelu_erf(form):
    model = gelu_model(ERF_FORMS[form])
    assert_fused(model, FuseGeluPass(), {"erf_gelu_fused": 1}, ["Gelu"])
    assert model.graph.node(0).attributes["approximate"].value == "none"


@pytest.mark.parametrize("form", TANH_FORMS)
def test_fuse_gelu_tanh(form):
    model = gelu_model(TANH_FORMS[form])
    assert_fused(model, FuseGeluPass(), {"tanh_gelu_fused": 1}, ["Gelu"])
    assert model.graph.node(0).attributes["approximate"].value == "tanh"


def test_fuse_gelu_declines_old_opset_by_default():
    model = gelu_model(ERF_FORMS["torch"], opset=18)
    assert_unchanged(model, FuseGeluPass(), {"opset_too_old": 1})


def test_fuse_gelu_upgrades_opset_when_asked():
    model = gelu_model(ERF_FORMS["torch"], opset=18)
    assert_fused(model, FuseGeluPass(upgrade_opset=True), {"erf_gelu_fused": 1, "opset_upgraded": 1}, ["Gelu"])
    assert model.opset_imports[""] == 20


def test_fuse_gelu_upgrade_blocked_by_reduce_axes_attribute():
    model = make_model(f"""{header(17)}
g (float[2,5,16] x) => (float[2,5,16] y, float[2,5,1] m) {{
    a = Div(x, r2)
    e = Erf(a)
    g1 = Add(e, one)
    h1 = Mul(half, g1)
    y = Mul(x, h1)
    m = ReduceMean<axes=[-1]>(x)
}}""", r2=GELU_CONSTANTS["r2"], one=GELU_CONSTANTS["one"], half=GELU_CONSTANTS["half"])
    assert opset_20_blockers(model) == ["ReduceMean with axes attribute"]
    assert_unchanged(model, FuseGeluPass(upgrade_opset=True), {"opset_upgrade_blocked": 1, "opset_too_old": 1})


def test_fuse_gelu_declines_rounded_constant():
    model = gelu_model(ERF_FORMS["torch"], r2=np.array(1.4142, np.float32))
    assert_unchanged(model, FuseGeluPass(), {"constant_mismatch": 1})


def test_fuse_gelu_declines_other_argument():
    model = make_model(f"""{header(20)}
g (float[2,5,16] x, float[2,5,16] z) => (float[2,5,16] y) {{
    a = Div(z, r2)
    e = Erf(a)
    g1 = Add(e, one)
    h1 = Mul(half, g1)
    y = Mul(x, h1)
}}""", r2=GELU_CONSTANTS["r2"], one=GELU_CONSTANTS["one"], half=GELU_CONSTANTS["half"])
    assert_unchanged(model, FuseGeluPass(), {"pattern_mismatch": 1})


def test_fuse_gelu_bad_option():
    with pytest.raises(PassConfigError):
        FuseGeluPass(forms=("sigmoid",))


# -- Softmax ------------------------------------------------------------------------------------------

def softmax_model(opset: int = 18, stable: bool = True, axes=(-1, -1)) -> ir.Model:
    if opset >= 18:
        maximum, total = "ReduceMax(x, a0)", "ReduceSum(e, a1)"
    elif opset >= 13:
        maximum, total = f"ReduceMax<axes=[{axes[0]}]>(x)", "ReduceSum(e, a1)"
    else:
        maximum, total = f"ReduceMax<axes=[{axes[0]}]>(x)", f"ReduceSum<axes=[{axes[1]}]>(e)"
    body = f"mx = {maximum}\n    s = Sub(x, mx)\n    e = Exp(s)" if stable else "e = Exp(x)"
    arrays = {"a0": np.array([axes[0]], np.int64), "a1": np.array([axes[1]], np.int64)}
    text = f"""{header(opset)}
g (float[2,5,16] x) => (float[2,5,16] y) {{
    {body}
    t = {total}
    y = Div(e, t)
}}"""
    return make_model(text, **{k: v for k, v in arrays.items() if k in text})


@pytest.mark.parametrize("opset", [11, 13, 18])
def test_fuse_softmax_stable(opset):
    model = softmax_model(opset)
    assert_fused(model, FuseSoftmaxPass(), {"softmax_fused": 1}, ["Softmax"])


def test_fuse_softmax_unshifted_on_middle_axis():
    model = softmax_model(stable=False, axes=(1, 1))
    assert_fused(model, FuseSoftmaxPass(), {"unshifted_softmax_fused": 1}, ["Softmax"])
    assert model.graph.node(0).attributes["axis"].value == 1


def test_fuse_softmax_unshifted_off():
    assert_unchanged(softmax_model(stable=False), FuseSoftmaxPass(unshifted=False), {})


def test_fuse_softmax_declines_middle_axis_before_opset_13():
    assert_unchanged(softmax_model(11, axes=(1, 1)), FuseSoftmaxPass(), {"axis_not_last": 1})


def test_fuse_softmax_declines_different_axes():
    model = softmax_model(axes=(1, -1))
    report = FuseSoftmaxPass()(model)
    # The shifted form is declined; the unshifted one still fuses Exp(x - max)/sum, which is exact.
    assert report.changes == {"unshifted_softmax_fused": 1}
    assert op_types(model) == ["ReduceMax", "Sub", "Softmax"]


def test_fuse_softmax_declines_exp_read_elsewhere():
    model = make_model(f"""{header(18)}
g (float[2,5,16] x) => (float[2,5,16] y, float[2,5,16] e) {{
    e = Exp(x)
    t = ReduceSum(e, a)
    y = Div(e, t)
}}""", a=np.array([-1], np.int64))
    assert_unchanged(model, FuseSoftmaxPass(), {"intermediate_is_graph_output": 1})
