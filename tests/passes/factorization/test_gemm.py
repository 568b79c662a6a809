"""FactorizeGemmPass (factorize-gemm): low-rank Gemm and MatMul."""

from __future__ import annotations

import numpy as np
import onnx
import onnx_ir as ir
import pytest

from sftonnx.errors import PassConfigError
from sftonnx.passes.factorization import FactorizeGemmPass
from sftonnx.pipeline import build_passes
from tests.helpers import EXACT_ATOL, EXACT_RTOL, make_model, op_types, run_ort, seeded, to_bytes

HEADER = '<ir_version: 8, opset_import: ["" : 17]>'
REGISTRY = {FactorizeGemmPass.name: FactorizeGemmPass}
#: Lossy checks of this module (the lossless tolerance lives in tests/helpers.py).
DATA_AWARE_MARGIN = 0.8
BERT_MIN_COSINE = {0.7: 0.985, 0.5: 0.975}  # budget -> cosine of both outputs on random token ids


def check_model(model: ir.Model) -> None:
    proto = ir.to_proto(model)
    onnx.checker.check_model(proto, full_check=True)
    onnx.shape_inference.infer_shapes(proto, check_type=True, strict_mode=True)


def gemm_model(*, trans_a: int = 0, trans_b: int = 0, alpha=1.0, beta=1.0, bias: bool = True, m=5, k=24, n=20):
    a_shape = f"{k},{m}" if trans_a else f"{m},{k}"
    b_shape = (n, k) if trans_b else (k, n)
    c_decl, c_use = (f", float[{n}] c", ", c") if bias else ("", "")
    text = f"""{HEADER}
g (float[{a_shape}] a, float[{b_shape[0]},{b_shape[1]}] w{c_decl}) => (float[{m},{n}] y) {{
    y = Gemm<alpha={alpha}, beta={beta}, transA={trans_a}, transB={trans_b}>(a, w{c_use})
}}"""
    arrays = {"w": seeded(b_shape, 1)}
    if bias:
        arrays["c"] = seeded((n,), 2)
    return make_model(text, **arrays)


MATMUL_3D = f"""{HEADER}
g (float[N,7,64] x, float[64,48] w) => (float[N,7,48] y) {{
    y = MatMul(x, w)
}}"""

# exporter layout: x @ Transpose(W) with W an initializer, then a bias Add
EXPORTED = f"""{HEADER}
g (float[N,7,64] x, float[48,64] w, float[48] b) => (float[N,7,48] y) {{
    wt = Transpose<perm=[1,0]>(w)
    h = MatMul(x, wt)
    y = Add(h, b)
}}"""


def feeds(model: ir.Model, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    result = {}
    for value in model.graph.inputs:
        shape = [d if isinstance(d, int) else 3 for d in value.shape.dims]
        result[value.name] = rng.standard_normal(shape).astype(np.float32)
    return result


def assert_exact(original: bytes, model: ir.Model) -> None:
    inputs = feeds(model)
    actual, expected = run_ort(model, inputs)[0], run_ort(original, inputs)[0]
    np.testing.assert_allclose(actual, expected, atol=EXACT_ATOL, rtol=EXACT_RTOL)


# -- full-rank exactness ----------------------------------------------------------------------------


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize(
    ("trans_a", "trans_b", "alpha", "beta"), [(0, 0, 1.0, 1.0), (1, 1, 0.5, 2.0), (0, 1, 2.0, 0.5)]
)
def test_gemm_full_rank_is_exact(trans_a, trans_b, alpha, beta, bias):
    model = gemm_model(trans_a=trans_a, trans_b=trans_b, alpha=alpha, beta=beta, bias=bias)
    original = to_bytes(model)
    report = FactorizeGemmPass(energy=1.0, force=True)(model)
    assert report.changes["gemm_factorized"] == 1 and not report.skipped
    assert op_types(model) == ["Gemm", "Gemm"]
    first, second = list(model.graph)
    assert first.attributes.get_int("transA", 0) == trans_a
    assert first.attributes.get_float("alpha", 1.0) == alpha and "beta" not in first.attributes
    assert (len(second.inputs) == 3) == bias
    assert second.attributes.get_float("beta", 1.0) == (beta if bias else 1.0)
    assert report.details["layers"]["y"]["rank"] == 20
    check_model(model)
    assert_exact(original, model)


def test_batched_matmul_full_rank_is_exact():
    model = make_model(MATMUL_3D, w=seeded((64, 48), 1))
    original = to_bytes(model)
    report = FactorizeGemmPass(rank=48, force=True)(model)
    assert report.changes["matmul_factorized"] == 1
    assert op_types(model) == ["MatMul", "MatMul"]
    check_model(model)
    assert_exact(original, model)


def test_transposed_initializer_weight_as_exported():
    model = make_model(EXPORTED, w=seeded((48, 64), 1), b=seeded((48,), 2))
    original = to_bytes(model)
    report = FactorizeGemmPass(energy=1.0, force=True)(model)
    assert report.changes["matmul_factorized"] == 1
    assert [n.op_type for n in model.graph if n.outputs[0].uses() or n.outputs[0].is_graph_output()] == [
        "MatMul",
        "MatMul",
        "Add",
    ]
    assert_exact(original, model)


# -- rank selection ---------------------------------------------------------------------------------


def with_spectrum(singular_values, k=24, n=20, seed=0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    u, _ = np.linalg.qr(rng.standard_normal((k, k)))
    v, _ = np.linalg.qr(rng.standard_normal((n, n)))
    s = np.zeros(n)
    s[: len(singular_values)] = singular_values
    return ((u[:, :n] * s) @ v.T).astype(np.float32)


@pytest.mark.parametrize(("energy", "rank"), [(0.7, 1), (0.9, 2), (0.995, 3), (1.0, 4)])
def test_rank_by_energy(energy, rank):
    model = gemm_model()
    model.graph.initializers["w"].const_value = ir.tensor(with_spectrum([10.0, 5.0, 1.0, 0.5]), name="w")
    report = FactorizeGemmPass(energy=energy)(model)
    layer = report.details["layers"]["y"]
    assert layer["rank"] == rank
    assert layer["params_after"] == rank * (24 + 20)


def test_rank_by_parameter_ratio_and_error_bound():
    model = make_model(MATMUL_3D, w=seeded((64, 48), 1))
    report = FactorizeGemmPass(ratio=0.5)(model)
    layer = report.details["layers"]["y"]
    assert layer["rank"] == int(0.5 * 64 * 48 / (64 + 48)) == 13
    assert layer["macs_after"] == 7 * 13 * (64 + 48) and layer["macs_before"] == 7 * 64 * 48
    assert report.changes == {"matmul_factorized": 1, "params_removed": 64 * 48 - 13 * 112}
    bounded = make_model(MATMUL_3D, w=seeded((64, 48), 1))
    layer = FactorizeGemmPass(max_error=0.5)(bounded).details["layers"]["y"]
    assert layer["weight_error"] <= 0.5
    tighter = FactorizeGemmPass(max_error=0.3, force=True)(make_model(MATMUL_3D, w=seeded((64, 48), 1)))
    assert tighter.details["layers"]["y"]["rank"] > layer["rank"]


def test_skips_when_rank_does_not_reduce_macs():
    model = gemm_model(k=8, n=8)  # full rank 8 >= 8 * 8 / 16
    text = ir.to_onnx_text(model)
    report = FactorizeGemmPass(energy=1.0)(model)
    assert not report.modified and report.skipped == {"no_mac_reduction": 1}
    assert ir.to_onnx_text(model) == text


def test_budget_spreads_ranks_over_layers():
    two = f"""{HEADER}
g (float[N,64] x, float[64,64] w1, float[64,64] w2) => (float[N,64] z) {{
    y = MatMul(x, w1)
    r = Relu(y)
    z = MatMul(r, w2)
}}"""
    easy = with_spectrum([10.0, 9.0, 0.1], k=64, n=64)
    model = make_model(two, w1=easy, w2=seeded((64, 64), 2))
    report = FactorizeGemmPass(budget=0.5)(model)
    assert report.details["budget_met"] and report.details["macs_kept"] <= 0.5
    layers = report.details["layers"]
    # the nearly rank-2 weight gets a tiny rank, the dense one the rest of the budget
    assert layers["y"]["rank"] <= 3 and layers["z"]["rank"] > 3


# -- guards, options ----------------------------------------------------------------------------------


def test_shared_weight_is_left_alone():
    shared = f"""{HEADER}
g (float[N,64] x, float[64,64] w) => (float[N,64] z) {{
    y = MatMul(x, w)
    z = MatMul(y, w)
}}"""
    model = make_model(shared, w=seeded((64, 64), 1))
    text = ir.to_onnx_text(model)
    report = FactorizeGemmPass(rank=4)(model)
    assert not report.modified and report.skipped == {"weight_shared": 2}
    assert ir.to_onnx_text(model) == text


def test_shared_transposed_initializer_is_left_alone():
    tied = f"""{HEADER}
g (float[N,7,64] x, float[48,64] w) => (float[N,7,48] y, float[48,64] w_out) {{
    wt = Transpose<perm=[1,0]>(w)
    y = MatMul(x, wt)
    w_out = Identity(w)
}}"""
    model = make_model(tied, w=seeded((48, 64), 1))
    report = FactorizeGemmPass(rank=4)(model)
    assert not report.modified and report.skipped == {"weight_shared": 1}


def test_activation_times_activation_and_3d_weights_are_skipped():
    text = f"""{HEADER}
g (float[2,4,8] a, float[2,8,4] b, float[2,8,4] w3) => (float[2,4,4] y, float[2,4,4] z) {{
    y = MatMul(a, b)
    z = MatMul(a, w3)
}}"""
    model = make_model(text, w3=seeded((2, 8, 4), 1))
    report = FactorizeGemmPass()(model)
    assert report.skipped == {"weight_not_constant": 1, "weight_not_2d": 1}


@pytest.mark.parametrize(
    "options",
    [
        {"energy": 0.0},
        {"energy": 1.01},
        {"ratio": 1.0},
        {"rank": 0},
        {"rank": -3},
        {"budget": 0.0},
        {"max_error": 1.0},
        {"ratio": 0.5, "budget": 0.5},
        {"ops": ("Conv",)},
        {"ops": ()},
        {"calibration_samples": 0},
    ],
)
def test_bad_options(options):
    with pytest.raises(PassConfigError):
        FactorizeGemmPass(**options)


def test_spec_parses_the_documented_forms():
    (energy, _), (ratio, _) = build_passes("factorize-gemm{energy=0.9},factorize-gemm{ratio=0.5}", REGISTRY, {})
    assert (energy.criterion.kind, energy.criterion.value) == ("energy", 0.9)
    assert (ratio.criterion.kind, ratio.criterion.value) == ("ratio", 0.5)
    with pytest.raises(PassConfigError):
        build_passes("factorize-gemm{energy=0.9, ratio=0.5}", REGISTRY, {})


def test_layers_and_ops_select_nodes():
    two = f"""{HEADER}
g (float[N,64] x, float[64,64] w1, float[64,64] w2) => (float[N,64] z) {{
    [first] y = Gemm(x, w1)
    [second] z = MatMul(y, w2)
}}"""
    model = make_model(two, w1=seeded((64, 64), 1), w2=seeded((64, 64), 2))
    report = FactorizeGemmPass(rank=4, layers=("second",))(model)
    assert report.changes["matmul_factorized"] == 1 and report.skipped == {"not_in_layers": 1}
    model = make_model(two, w1=seeded((64, 64), 1), w2=seeded((64, 64), 2))
    report = FactorizeGemmPass(rank=4, ops=("Gemm",))(model)
    assert report.changes["gemm_factorized"] == 1 and "matmul_factorized" not in report.changes
    with pytest.raises(PassConfigError, match="'third'"):
        FactorizeGemmPass(layers=("third",))(make_model(two, w1=seeded((64, 64), 1), w2=seeded((64, 64), 2)))


WITH_LOOP_BODY = f"""{HEADER}
g (float[2,64] x, bool cond) => (float[2,48] z) {{
    z = If (cond) <
        then_branch = then_g () => (float[2,48] t) {{ t = MatMul(x, w) }},
        else_branch = else_g () => (float[2,48] e) {{ e = MatMul(x, w2) }}
    >
}}"""


def if_model() -> ir.Model:
    model = ir.from_onnx_text(WITH_LOOP_BODY)
    for name, seed in (("w", 1), ("w2", 2)):
        value = ir.Value(
            name=name,
            shape=ir.Shape([64, 48]),
            type=ir.TensorType(ir.DataType.FLOAT),
            const_value=ir.tensor(seeded((64, 48), seed)),
        )
        model.graph.register_initializer(value)
        for node in ir.traversal.RecursiveGraphIterator(model.graph):
            if node.op_type == "MatMul" and node.inputs[1].name == name:
                node.replace_input_with(1, value)
    return model


def test_matmul_in_if_branches_is_factored_weight_only_and_skipped_with_data():
    model = if_model()
    original = to_bytes(model)
    report = FactorizeGemmPass(rank=48, force=True)(model)
    assert report.changes["matmul_factorized"] == 2
    check_model(model)
    for cond in (True, False):
        inputs = {"x": seeded((2, 64), 3), "cond": np.array(cond)}
        np.testing.assert_allclose(
            run_ort(model, inputs)[0], run_ort(original, inputs)[0], atol=EXACT_ATOL, rtol=EXACT_RTOL
        )
    data = [{"x": seeded((4, 64), 5), "cond": np.array(True)}]
    skipped = FactorizeGemmPass(rank=4, calibration_data=data)(if_model())
    assert not skipped.modified and skipped.skipped == {"in_subgraph": 2}


# -- data-aware -----------------------------------------------------------------------------------------


def correlated_rows(seed: int, rows: int = 256) -> np.ndarray:
    """Rows in a 64-D space dominated by 6 directions with very different scales (plus small noise)."""
    basis = np.linalg.qr(np.random.default_rng(7).standard_normal((64, 6)))[0]
    rng = np.random.default_rng(seed)
    latent = rng.standard_normal((rows, 6)) * np.array([8.0, 4.0, 2.0, 1.0, 0.5, 0.25])
    return (latent @ basis.T + 0.01 * rng.standard_normal((rows, 64))).astype(np.float32).reshape(-1, 8, 64)


def test_data_aware_beats_weight_only_on_output_error_at_equal_rank():
    calibration = [{"x": correlated_rows(seed)} for seed in range(3)]
    held_out = correlated_rows(100)
    errors = {}
    for label, data in (("weight", None), ("data", calibration)):
        model = make_model(MATMUL_3D.replace("7", "8"), w=seeded((64, 48), 1))
        original = to_bytes(model)
        report = FactorizeGemmPass(rank=4, calibration_data=data)(model)
        assert report.details["layers"]["y"]["rank"] == 4
        expected = run_ort(original, {"x": held_out})[0]
        errors[label] = float(np.linalg.norm(run_ort(model, {"x": held_out})[0] - expected) / np.linalg.norm(expected))
        if data is not None:  # the estimate (on the shrunk calibration autocorrelation) is in the right range
            assert 0.5 * errors[label] <= report.details["layers"]["y"]["output_error"] <= 2 * errors[label]
    assert errors["data"] < DATA_AWARE_MARGIN * errors["weight"], errors


# -- real model -------------------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("budget", sorted(BERT_MIN_COSINE))
def test_tiny_bert_budget(budget):
    import models
    from sftonnx import api
    from sftonnx.verify import Budget

    path = models.ensure("tiny_bert")
    rng = np.random.default_rng(0)
    calibration = [{"input_ids": rng.integers(0, 1000, (8, 32)).astype(np.int64)} for _ in range(4)]
    result = api.optimize(
        str(path),
        passes=[FactorizeGemmPass(budget=budget, calibration_data=calibration)],
        budget=Budget(min_cosine=BERT_MIN_COSINE[budget], min_agreement=None),
        allow_random_verification=True,  # random token ids stand in for text here, as in the calibration
    )
    row = result.report.rows[0]
    assert row.changes["matmul_factorized"] >= 4  # the budget goes to the FFN MatMuls first (most MACs)
    assert row.details["macs_kept"] <= budget
    assert result.verification.passed
    weight_only = api.optimize(
        str(path), passes=[FactorizeGemmPass(budget=budget)], budget=Budget(min_cosine=0.0, min_agreement=None),
        allow_random_verification=True,
    )
    assert min(o.cosine for o in weight_only.verification.outputs) < min(o.cosine for o in result.verification.outputs)


def test_opset_9_gemm_factors_get_the_required_bias():
    """Before opset 11 Gemm's C input is required (found on light_resnet50): the factors carry zero biases."""
    w = seeded((64, 48))
    model = make_model(
        """
<ir_version: 4, opset_import: ["" : 9]>
g (float[2, 64] x) => (float[2, 48] y) {
    y = Gemm(x, w, b)
}
""",
        w=w,
        b=seeded(48, seed=2),
    )
    original = to_bytes(model)
    report = FactorizeGemmPass(rank=64, force=True)(model)
    assert report.changes["gemm_factorized"] == 1
    assert [len(n.inputs) for n in model.graph if n.op_type == "Gemm"] == [3, 3]
    onnx.checker.check_model(ir.to_proto(model))
    x = seeded((2, 64), seed=1)
    np.testing.assert_allclose(
        run_ort(model, {"x": x})[0], run_ort(original, {"x": x})[0], atol=EXACT_ATOL, rtol=EXACT_RTOL
    )
