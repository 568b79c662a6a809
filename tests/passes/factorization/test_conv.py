"""FactorizeConvPass (factorize-conv): separable, spatial and Tucker-2 Conv factorizations."""

from __future__ import annotations

import pathlib

import numpy as np
import onnx
import onnx_ir as ir
import pytest

from sftonnx.errors import InputError, PassConfigError
from sftonnx.passes.factorization import FactorizeConvPass
from sftonnx.passes.factorization.lowrank import rank_for_energy, relative_tail
from sftonnx.pipeline import Pipeline, build_passes
from tests.helpers import EXACT_ATOL, EXACT_RTOL, make_model, op_types, run_ort, seeded, to_bytes

HEADER = '<ir_version: 8, opset_import: ["" : 17]>'
REGISTRY = {FactorizeConvPass.name: FactorizeConvPass}
#: Lossy checks of this module (the lossless tolerance lives in tests/helpers.py).
DIGITS_MIN_ACCURACY = 0.97
DATA_AWARE_MARGIN = 0.8  # data-aware output error must be below this fraction of the weight-only one


def conv_text(attrs: str, *, cin: int, cout: int, k=(3, 3), group: int = 1, bias: bool = True, hw=(11, 9)) -> str:
    b_decl, b_use = (f", float[{cout}] b", ", b") if bias else ("", "")
    kernel = ",".join(map(str, k))
    spatial = ",".join(map(str, hw))
    return f"""{HEADER}
g (float[N,{cin},{spatial}] x, float[{cout},{cin // group},{kernel}] w{b_decl}) => (float[n,c,h,w] y) {{
    y = Conv<{attrs}>(x, w{b_use})
}}"""


def conv_model(attrs: str = "pads=[1,1,1,1]", *, cin=6, cout=8, k=(3, 3), group=1, bias=True, hw=(11, 9), w=None):
    arrays = {"w": seeded((cout, cin // group, *k), 1) if w is None else w}
    if bias:
        arrays["b"] = seeded((cout,), 2)
    return make_model(conv_text(attrs, cin=cin, cout=cout, k=k, group=group, bias=bias, hw=hw), **arrays)


def low_multilinear_rank(cout: int, cin: int, group: int, r1: int, r2: int, k=(3, 3), seed: int = 0) -> np.ndarray:
    """A grouped kernel that is exactly ``U G A`` per group (Tucker ranks ``r1``, ``r2``)."""
    rng = np.random.default_rng(seed)
    blocks = []
    for _ in range(group):
        core = rng.standard_normal((r2, r1, *k))
        a = rng.standard_normal((r1, cin // group))
        u = rng.standard_normal((cout // group, r2))
        blocks.append(np.einsum("or,rj...,jc->oc...", u, core, a))
    return np.concatenate(blocks).astype(np.float32)


def check_model(model: ir.Model) -> None:
    proto = ir.to_proto(model)
    onnx.checker.check_model(proto, full_check=True)
    onnx.shape_inference.infer_shapes(proto, check_type=True, strict_mode=True)


def feeds_for(model, seed=0, batch=2):
    x = next(v for v in model.graph.inputs if v.name == "x")
    shape = [batch, *[d for d in x.shape.dims[1:]]]
    return {"x": np.random.default_rng(seed).standard_normal(shape).astype(np.float32)}


def assert_exact(original: bytes, model: ir.Model) -> None:
    feeds = feeds_for(model)
    expected = run_ort(original, feeds)[0]
    actual = run_ort(model, feeds)[0]
    assert actual.shape == expected.shape
    np.testing.assert_allclose(actual, expected, atol=EXACT_ATOL, rtol=EXACT_RTOL)


def conv_nodes(model: ir.Model) -> list[ir.Node]:
    return [n for n in model.graph if n.op_type == "Conv"]


def attrs_of(node: ir.Node) -> dict:
    return {k: (list(a.value) if isinstance(a.value, (list, tuple)) else a.value) for k, a in node.attributes.items()}


GEOMETRIES = {
    "asymmetric_pads_stride_dilation": ("pads=[1,0,2,1], strides=[2,1], dilations=[1,2]", 1),
    "same_upper_stride": ('auto_pad="SAME_UPPER", strides=[2,3]', 1),
    "same_lower_stride": ('auto_pad="SAME_LOWER", strides=[2,2]', 1),
    "valid": ('auto_pad="VALID"', 1),
    "groups_pads": ("group=2, pads=[1,1,1,1], strides=[1,2]", 2),
}


# -- full-rank exactness ----------------------------------------------------------------------------


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("geometry", list(GEOMETRIES))
@pytest.mark.parametrize("mode", ["separable", "spatial"])
def test_full_rank_is_exact(mode, geometry, bias):
    attrs, group = GEOMETRIES[geometry]
    model = conv_model(attrs, group=group, bias=bias)
    original = to_bytes(model)
    report = FactorizeConvPass(mode=mode, energy=1.0, force=True)(model)
    assert report.changes[f"{mode}_factorized"] == 1 and not report.skipped
    assert op_types(model) == ["Conv", "Conv"]
    first, second = conv_nodes(model)
    assert (len(second.inputs) == 3) == bias and len(first.inputs) == 2  # bias on the last factor only
    layer = report.details["layers"]["y"]
    assert layer["weight_error"] < 1e-6
    check_model(model)
    assert_exact(original, model)


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("geometry", list(GEOMETRIES))
def test_tucker_is_exact_at_the_kernels_multilinear_rank(geometry, bias):
    attrs, group = GEOMETRIES[geometry]
    w = low_multilinear_rank(8, 6, group, r1=2, r2=3)
    model = conv_model(attrs, group=group, bias=bias, w=w)
    original = to_bytes(model)
    report = FactorizeConvPass(mode="tucker", energy=1.0)(model)  # no force: it also saves MACs
    assert report.changes["tucker_factorized"] == 1 and report.changes["params_removed"] > 0
    assert report.details["layers"]["y"]["ranks"] == [2, 3]
    assert op_types(model) == ["Conv", "Conv", "Conv"]
    first, core, last = conv_nodes(model)
    assert attrs_of(first)["kernel_shape"] == [1, 1] and "pads" not in attrs_of(first)
    assert attrs_of(core)["kernel_shape"] == [3, 3] and attrs_of(core)["group"] == group
    assert (len(last.inputs) == 3) == bias
    check_model(model)
    assert_exact(original, model)


def test_tucker_on_1x1_kernel_is_two_pointwise_convs_exact_at_full_rank():
    model = conv_model("pads=[0,1,1,0], strides=[2,2]", cin=6, cout=5, k=(1, 1))
    original = to_bytes(model)
    report = FactorizeConvPass(mode="tucker", rank=5, force=True)(model)
    assert report.changes["pointwise_factorized"] == 1
    first, second = conv_nodes(model)
    assert attrs_of(first)["strides"] == [2, 2] and attrs_of(first)["pads"] == [0, 1, 1, 0]
    assert attrs_of(second)["kernel_shape"] == [1, 1]
    check_model(model)
    assert_exact(original, model)


def test_spatial_puts_vertical_attributes_on_kx1_and_horizontal_on_1xk():
    model = conv_model("pads=[1,2,3,4], strides=[2,3], dilations=[2,1]", k=(3, 5))
    original = to_bytes(model)
    FactorizeConvPass(mode="spatial", energy=1.0, force=True)(model)
    vertical, horizontal = conv_nodes(model)
    assert attrs_of(vertical) | {} == {
        "kernel_shape": [3, 1], "strides": [2, 1], "dilations": [2, 1], "pads": [1, 0, 3, 0], "group": 1,
    }
    assert attrs_of(horizontal) == {
        "kernel_shape": [1, 5], "strides": [1, 3], "dilations": [1, 1], "pads": [0, 2, 0, 4], "group": 1,
    }
    assert_exact(original, model)


def test_separable_depthwise_output_order_follows_onnx_groups():
    model = conv_model("pads=[1,1,1,1]", cin=4, cout=6)
    original = to_bytes(model)
    report = FactorizeConvPass(mode="separable", rank=2, force=True)(model)
    depthwise, pointwise = conv_nodes(model)
    assert attrs_of(depthwise)["group"] == 4
    assert list(depthwise.inputs[1].const_value.shape) == [8, 1, 3, 3]  # channel c -> outputs 2c, 2c+1
    assert list(pointwise.inputs[1].const_value.shape) == [6, 8, 1, 1]
    # rank-2 output equals the rank-2 SVD of each input channel's (C_out x 9) slice, applied by hand
    w = seeded((6, 4, 3, 3), 1).astype(np.float64)
    approx = np.empty_like(w)
    for c in range(4):
        u, s, vt = np.linalg.svd(w[:, c].reshape(6, 9), full_matrices=False)
        approx[:, c] = ((u[:, :2] * s[:2]) @ vt[:2]).reshape(6, 3, 3)
    reference = conv_model("pads=[1,1,1,1]", cin=4, cout=6, w=approx.astype(np.float32))
    feeds = feeds_for(model)
    np.testing.assert_allclose(run_ort(model, feeds)[0], run_ort(reference, feeds)[0], atol=EXACT_ATOL, rtol=EXACT_RTOL)
    assert report.details["layers"]["y"]["ranks"] == [2]
    assert not np.allclose(run_ort(original, feeds)[0], run_ort(model, feeds)[0], atol=1e-2)


def test_spatial_on_depthwise_conv_is_exact_at_full_rank():
    model = conv_model("group=6, pads=[1,1,1,1]", cin=6, cout=6, group=6)
    original = to_bytes(model)
    report = FactorizeConvPass(mode="spatial", rank=3, force=True)(model)
    assert report.changes["spatial_factorized"] == 1
    assert [attrs_of(n)["group"] for n in conv_nodes(model)] == [6, 6]
    assert_exact(original, model)
    # rank 1 is the only one that saves MACs on a 3x3 depthwise kernel: 3 + 3 < 9 > 3 * 2 + 3 * 2
    depthwise = "group=6, pads=[1,1,1,1]"
    assert FactorizeConvPass(mode="spatial", rank=1)(conv_model(depthwise, group=6, cin=6, cout=6)).modified
    skipped = FactorizeConvPass(mode="spatial", rank=2)(conv_model(depthwise, group=6, cin=6, cout=6))
    assert skipped.skipped == {"no_mac_reduction": 1}


def test_data_aware_full_rank_is_exact():
    model = conv_model('auto_pad="SAME_UPPER", strides=[2,2]')
    original = to_bytes(model)
    data = [feeds_for(model, seed=s, batch=4) for s in range(3)]
    report = FactorizeConvPass(mode="separable", energy=1.0, force=True, calibration_data=data)(model)
    assert report.details["layers"]["y"]["output_error"] < 1e-6
    assert_exact(original, model)


# -- rank selection -----------------------------------------------------------------------------------


def spatial_kernel(singular_values, cin=4, cout=5, seed=0) -> np.ndarray:
    """A 3x3 kernel whose spatial matrix M[(c,a),(o,b)] has the given singular values."""
    rng = np.random.default_rng(seed)
    u, _ = np.linalg.qr(rng.standard_normal((cin * 3, cin * 3)))
    v, _ = np.linalg.qr(rng.standard_normal((cout * 3, cout * 3)))
    s = np.zeros(min(cin, cout) * 3)
    s[: len(singular_values)] = singular_values
    m = (u[:, : len(s)] * s) @ v[:, : len(s)].T
    return m.reshape(cin, 3, cout, 3).transpose(2, 0, 1, 3).astype(np.float32)


@pytest.mark.parametrize(("energy", "rank"), [(0.75, 1), (0.9, 2), (0.995, 3), (1.0, 4)])
def test_spatial_rank_by_energy(energy, rank):
    w = spatial_kernel([10.0, 5.0, 1.0, 0.5])  # energies 100, 25, 1, 0.25
    model = conv_model(cin=4, cout=5, w=w)
    report = FactorizeConvPass(mode="spatial", energy=energy, force=True)(model)
    assert report.details["layers"]["y"]["ranks"] == [rank]


def test_separable_rank_by_energy_matches_the_slices_spectrum():
    w = seeded((16, 4, 3, 3), 3)
    slices = w.astype(np.float64).transpose(1, 0, 2, 3).reshape(4, 16, 9)
    expected = rank_for_energy(relative_tail(np.linalg.svd(slices, compute_uv=False) ** 2), 0.8)
    model = conv_model(cin=4, cout=16, w=w)
    report = FactorizeConvPass(mode="separable", energy=0.8, force=True)(model)
    assert report.details["layers"]["y"]["ranks"] == [expected]
    assert expected in range(2, 9)


@pytest.mark.parametrize("mode", ["separable", "spatial", "tucker"])
def test_rank_by_parameter_ratio(mode):
    model = conv_model(cin=16, cout=16, w=seeded((16, 16, 3, 3), 4))
    report = FactorizeConvPass(mode=mode, ratio=0.3)(model)
    layer = report.details["layers"]["y"]
    assert layer["params_after"] <= 0.3 * layer["params_before"]
    assert report.changes["params_removed"] == layer["params_before"] - layer["params_after"]


def test_rank_by_error_bound():
    w = spatial_kernel([10.0, 5.0, 1.0, 0.5])
    model = conv_model(cin=4, cout=5, w=w)
    report = FactorizeConvPass(mode="spatial", max_error=0.12, force=True)(model)
    layer = report.details["layers"]["y"]
    assert layer["ranks"] == [2]  # sqrt(1.25 / 126.25) = 0.0995 <= 0.12 < sqrt(26.25 / 126.25)
    assert layer["weight_error"] <= 0.12


def test_auto_picks_the_cheapest_mode_meeting_the_criterion():
    model = conv_model(cin=16, cout=16, w=seeded((16, 16, 3, 3), 5))
    report = FactorizeConvPass(energy=0.8)(model)
    chosen = report.details["layers"]["y"]
    costs = {}
    for mode in ("separable", "spatial", "tucker"):
        other = conv_model(cin=16, cout=16, w=seeded((16, 16, 3, 3), 5))
        costs[mode] = FactorizeConvPass(mode=mode, energy=0.8, force=True)(other).details["layers"]["y"]["macs_after"]
    assert chosen["macs_after"] == min(costs.values())
    assert chosen["mode"] == min(costs, key=costs.get)


# -- guards, options, errors ------------------------------------------------------------------------


def test_skips_when_no_mac_reduction():
    model = conv_model(cin=6, cout=2, w=seeded((2, 6, 3, 3), 1))  # rank-2 depthwise + pointwise > 2*6*9
    text = ir.to_onnx_text(model)
    report = FactorizeConvPass(mode="separable", energy=1.0)(model)
    assert not report.modified and report.skipped == {"no_mac_reduction": 1}
    assert ir.to_onnx_text(model) == text


@pytest.mark.parametrize(
    ("mode", "k", "group", "reason"),
    [
        ("separable", (1, 1), 1, "kernel_1x1"),
        ("spatial", (1, 1), 1, "kernel_1x1"),
        ("spatial", (1, 3), 1, "kernel_1d"),
        ("separable", (3, 3), 6, "depthwise"),
    ],
)
def test_inapplicable_convs_are_skipped_with_a_reason(mode, k, group, reason):
    two = f"""{HEADER}
g (float[1,6,8,8] x, float[6,{6 // group},{k[0]},{k[1]}] w, float[6,6,3,3] v) => (float[n,c,h,w] z) {{
    y = Conv<group={group}>(x, w)
    z = Conv<pads=[1,1,1,1]>(y, v)
}}"""
    model = make_model(two, w=seeded((6, 6 // group, *k), 1), v=seeded((6, 6, 3, 3), 2))
    report = FactorizeConvPass(mode=mode, rank=1)(model)
    assert report.skipped == {reason: 1}
    assert report.changes[f"{mode}_factorized"] == 1


@pytest.mark.parametrize("mode", ["separable", "spatial"])
def test_requested_mode_applying_to_no_conv_is_a_precondition_error(mode):
    model = conv_model(k=(1, 1))
    with pytest.raises(ir.passes.PreconditionError, match=f"mode={mode} applies to no Conv.*kernel_1x1"):
        FactorizeConvPass(mode=mode)(model)
    pipeline = Pipeline(build_passes(f"factorize-conv{{mode={mode}}}", REGISTRY, {}))
    with pytest.raises(InputError) as raised:
        pipeline.run(conv_model(k=(1, 1)))
    assert raised.value.exit_code == 2
    # in a preset it is skipped, and auto never complains
    skipped = Pipeline(build_passes("p", REGISTRY, {"p": f"factorize-conv{{mode={mode}}}"}))
    assert skipped.run(conv_model(k=(1, 1))).rows[0].status == "skipped"
    assert not FactorizeConvPass()(conv_model(k=(1, 1), cin=2, cout=2)).modified


@pytest.mark.parametrize(
    "options",
    [
        {"mode": "diagonal"},
        {"energy": 0.0},
        {"energy": 1.5},
        {"ratio": 1.0},
        {"ratio": 0.0},
        {"budget": 1.2},
        {"rank": 0},
        {"rank": 2.5},
        {"max_error": 0.0},
        {"energy": 0.9, "rank": 3},
        {"iterations": -1},
        {"calibration_samples": 0},
    ],
)
def test_bad_options(options):
    with pytest.raises(PassConfigError):
        FactorizeConvPass(**options)


@pytest.mark.parametrize(
    "spec", ["factorize-conv{mode=diagonal}", "factorize-conv{energy=2}", "factorize-conv{ranks=3}"]
)
def test_bad_options_in_spec(spec):
    with pytest.raises(PassConfigError):
        build_passes(spec, REGISTRY, {})


def test_spec_round_trip():
    (pass_, _), = build_passes("factorize-conv{mode=tucker, energy=0.8, layers=a|b}", REGISTRY, {})
    assert (pass_.mode, pass_.criterion.kind, pass_.criterion.value) == ("tucker", "energy", 0.8)
    assert pass_.layers == ("a", "b")
    assert pass_.spec() == "factorize-conv{mode=tucker, energy=0.8, layers=a|b}"


TWO_CONVS = f"""{HEADER}
g (float[N,8,10,10] x, float[8,8,3,3] w1, float[8,8,3,3] w2) => (float[n,c,h,w] z) {{
    [first] y = Conv<pads=[1,1,1,1]>(x, w1)
    r = Relu(y)
    [second] z = Conv<pads=[1,1,1,1]>(r, w2)
}}"""


def test_layers_option_targets_named_convs_and_rejects_unknown_names():
    model = make_model(TWO_CONVS, w1=seeded((8, 8, 3, 3), 1), w2=seeded((8, 8, 3, 3), 2))
    report = FactorizeConvPass(mode="tucker", rank=2, layers=("second",))(model)
    assert report.changes["tucker_factorized"] == 1 and report.skipped == {"not_in_layers": 1}
    assert list(report.details["layers"]) == ["second"]
    fresh = make_model(TWO_CONVS, w1=seeded((8, 8, 3, 3), 1), w2=seeded((8, 8, 3, 3), 2))
    text = ir.to_onnx_text(fresh)
    with pytest.raises(PassConfigError, match="'third'"):
        FactorizeConvPass(mode="tucker", layers=("third",))(fresh)
    assert ir.to_onnx_text(fresh) == text


def test_shared_weight_is_left_alone():
    shared = f"""{HEADER}
g (float[1,8,10,10] x, float[8,8,3,3] w) => (float[n,c,h,w] z) {{
    y = Conv<pads=[1,1,1,1]>(x, w)
    z = Conv<pads=[1,1,1,1]>(y, w)
}}"""
    model = make_model(shared, w=seeded((8, 8, 3, 3), 1))
    text = ir.to_onnx_text(model)
    report = FactorizeConvPass(rank=2)(model)
    assert not report.modified and report.skipped == {"weight_shared": 2}
    assert ir.to_onnx_text(model) == text
    with pytest.raises(ir.passes.PreconditionError, match="weight_shared: 2"):
        FactorizeConvPass(mode="tucker")(model)


def test_dynamic_weight_is_skipped():
    model = make_model(conv_text("pads=[1,1,1,1]", cin=6, cout=8, bias=False))
    report = FactorizeConvPass(rank=2)(model)
    assert not report.modified and report.skipped == {"weight_not_constant": 1}


WITH_IF = f"""{HEADER}
g (float[1,8,10,10] x, bool cond) => (float[1,8,10,10] z) {{
    z = If (cond) <
        then_branch = then_g () => (float[1,8,10,10] t) {{ t = Conv<pads=[1,1,1,1]>(x, w) }},
        else_branch = else_g () => (float[1,8,10,10] e) {{ e = Relu(x) }}
    >
}}"""


def if_model() -> ir.Model:
    model = ir.from_onnx_text(WITH_IF)
    value = ir.Value(name="w", shape=ir.Shape([8, 8, 3, 3]), type=ir.TensorType(ir.DataType.FLOAT),
                     const_value=ir.tensor(low_multilinear_rank(8, 8, 1, 2, 2)))
    model.graph.register_initializer(value)
    conv = next(n for n in ir.traversal.RecursiveGraphIterator(model.graph) if n.op_type == "Conv")
    conv.replace_input_with(1, value)
    return model


def test_conv_in_if_branch_is_factored_weight_only():
    model = if_model()
    original = to_bytes(model)
    report = FactorizeConvPass(mode="tucker", energy=1.0)(model)
    assert report.changes["tucker_factorized"] == 1
    branch = [n.op_type for n in ir.traversal.RecursiveGraphIterator(model.graph) if n.graph is not model.graph]
    assert branch.count("Conv") == 3
    check_model(model)
    feeds = {"x": seeded((1, 8, 10, 10), 7), "cond": np.array(True)}
    np.testing.assert_allclose(run_ort(model, feeds)[0], run_ort(original, feeds)[0], atol=EXACT_ATOL, rtol=EXACT_RTOL)


def test_conv_in_if_branch_is_skipped_with_calibration_data():
    model = if_model()
    data = [{"x": seeded((2, 8, 10, 10), 1), "cond": np.array(True)}]
    report = FactorizeConvPass(energy=1.0, calibration_data=data)(model)
    assert not report.modified and report.skipped == {"in_subgraph": 1}


# -- budget and data-aware fits ---------------------------------------------------------------------


def correlated_inputs(seed: int, batch: int = 8, channels: int = 8, size: int = 10) -> np.ndarray:
    """Inputs whose channels mix 2 smooth latent maps (plus a little noise): far from white."""
    rng = np.random.default_rng(seed)
    mix = np.random.default_rng(99).standard_normal((channels, 2)) * np.array([3.0, 0.3])
    latent = np.cumsum(np.cumsum(rng.standard_normal((batch, 2, size, size)), axis=2), axis=3) / size
    noise = 0.05 * rng.standard_normal((batch, channels, size, size))
    return (np.einsum("cl,blhw->bchw", mix, latent) + noise).astype(np.float32)


def output_error(original: bytes, model: ir.Model, x: np.ndarray) -> float:
    expected = run_ort(original, {"x": x})[0]
    actual = run_ort(model, {"x": x})[0]
    return float(np.linalg.norm(actual - expected) / np.linalg.norm(expected))


@pytest.mark.parametrize(("mode", "rank"), [("separable", 1), ("spatial", 3), ("tucker", 2)])
def test_data_aware_beats_weight_only_on_output_error_at_equal_rank(mode, rank):
    calibration = [{"x": correlated_inputs(seed)} for seed in range(4)]
    held_out = correlated_inputs(100)
    errors = {}
    for label, data in (("weight", None), ("data", calibration)):
        model = make_model(TWO_CONVS, w1=seeded((8, 8, 3, 3), 1), w2=seeded((8, 8, 3, 3), 2))
        original = to_bytes(model)
        report = FactorizeConvPass(mode=mode, rank=rank, layers=("first",), calibration_data=data, force=True)(model)
        assert report.details["layers"]["first"]["ranks"][0] == rank
        errors[label] = output_error(original, model, held_out)
    assert errors["data"] < DATA_AWARE_MARGIN * errors["weight"], errors


def test_budget_keeps_at_most_that_fraction_of_macs():
    big = f"""{HEADER}
g (float[1,16,12,12] x, float[16,16,3,3] w1, float[16,16,3,3] w2, float[16,16,1,1] w3) => (float[n,c,h,w] z) {{
    y = Conv<pads=[1,1,1,1]>(x, w1)
    r = Relu(y)
    s = Conv<pads=[1,1,1,1], strides=[2,2]>(r, w2)
    z = Conv(s, w3)
}}"""
    model = make_model(big, w1=seeded((16, 16, 3, 3), 1), w2=seeded((16, 16, 3, 3), 2), w3=seeded((16, 16, 1, 1), 3))
    original = to_bytes(model)
    report = FactorizeConvPass(budget=0.4)(model)
    assert report.details["budget_met"] and report.details["macs_kept"] <= 0.4
    layers = report.details["layers"]
    total_before = 144 * 16 * 16 * 9 + 36 * 16 * 16 * 9 + 36 * 16 * 16
    kept = sum(v["macs_after"] for v in layers.values()) + sum(
        m for name, m in (("y", 144 * 16 * 16 * 9), ("s", 36 * 16 * 16 * 9), ("z", 36 * 16 * 16)) if name not in layers
    )
    assert kept <= 0.4 * total_before
    check_model(model)
    assert output_error(original, model, seeded((1, 16, 12, 12), 5)) < 1.0


# -- real models ------------------------------------------------------------------------------------

MODELS = pathlib.Path(__file__).resolve().parents[3] / "models" / "onnx"


def digits_accuracy(model) -> float:
    test = np.load(MODELS / "digits_test.npz")
    logits = run_ort(model, {"input": test["input"]})[0]
    return float((logits.argmax(1) == test["labels"]).mean())


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["separable", "spatial", "tucker"])
def test_digits_data_aware_half_budget_keeps_accuracy(mode):
    from sftonnx import api
    from sftonnx.verify import Budget

    result = api.optimize(
        str(MODELS / "digits_cnn.onnx"),
        passes=[FactorizeConvPass(mode=mode, budget=0.5, calibration_data=str(MODELS / "digits_calib.npz"))],
        data=str(MODELS / "digits_test.npz"),
        budget=Budget(min_cosine=0.99),
    )
    row = result.report.rows[0]
    assert row.changes[f"{mode}_factorized"] >= 1
    assert row.details["macs_kept"] <= 0.5
    # the Gemm is untouched, so the model keeps a bit more than half of its MACs
    assert row.after.macs < 0.6 * row.before.macs
    assert digits_accuracy(result.model) >= DIGITS_MIN_ACCURACY


def test_hooi_iterations_never_increase_the_weight_error():
    errors = []
    for iterations in (0, 1, 4):
        model = conv_model(cin=12, cout=16, w=seeded((16, 12, 3, 3), 8))
        report = FactorizeConvPass(mode="tucker", rank=4, iterations=iterations)(model)
        errors.append(report.details["layers"]["y"]["weight_error"])
    assert errors[0] >= errors[1] - 1e-9 >= errors[2] - 2e-9
    assert errors[2] < errors[0]


def test_spec_leaves_in_memory_calibration_data_out():
    data = [{"x": seeded((2, 6, 11, 9), 1)}]
    assert FactorizeConvPass(mode="tucker", calibration_data=data).spec() == "factorize-conv{mode=tucker}"
    assert "calibration_data=c.npz" in FactorizeConvPass(calibration_data="c.npz").spec()
