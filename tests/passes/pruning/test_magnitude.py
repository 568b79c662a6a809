"""PruneMagnitudePass (prune): statistics, shared weights, global vs per-layer, first/last layers, options."""

from __future__ import annotations

import numpy as np
import onnx_ir as ir
import pytest

from sftonnx.errors import InputError, PassConfigError
from sftonnx.passes.pruning import PruneMagnitudePass
from sftonnx.pipeline import Pipeline
from tests.helpers import assert_within_budget, make_model, seeded

HEADER = '<ir_version: 8, opset_import: ["" : 17]>'

MATMUL_4x3 = f"""{HEADER}
g (float[2,4] x, float[4,3] w) => (float[2,3] y) {{
    y = MatMul(x, w)
}}"""

TWO_MATMULS_SHARING_W = f"""{HEADER}
g (float[2,4] x, float[4,4] w) => (float[2,4] z) {{
    y = MatMul(x, w)
    z = MatMul(y, w)
}}"""

CHAIN = f"""{HEADER}
g (float[2,8] x, float[8,8] a, float[8,8] b, float[8,8] c) => (float[2,8] z) {{
    h1 = MatMul(x, a)
    h2 = MatMul(h1, b)
    z = MatMul(h2, c)
}}"""

NOTHING = f"""{HEADER}
g (float[2,4] x) => (float[2,4] y) {{
    y = Relu(x)
}}"""

IF_BODY = f"""{HEADER}
g (float[2,4] x, bool cond, float[4,4] w) => (float[2,4] y) {{
    y = If (cond) <
        then_branch = then_g () => (float[2,4] t) {{ t = MatMul(x, w) }},
        else_branch = else_g () => (float[2,4] e) {{ e = Identity(x) }}
    >
}}"""


def test_prune_zeroes_half_of_matmul_weight():
    w = seeded((4, 3))
    model = make_model(MATMUL_4x3, w=w)
    original = ir.to_proto(model).SerializeToString()
    report = PruneMagnitudePass(rate=0.5)(model)
    assert report.changes == {"tensors_pruned": 1, "weights_zeroed": 6}
    assert [node.op_type for node in model.graph] == ["MatMul"]
    pruned = model.graph.initializers["w"].const_value.numpy()
    order = np.argsort(np.abs(w).ravel())
    assert set(np.flatnonzero(pruned.ravel() == 0)) == set(order[:6])
    np.testing.assert_array_equal(pruned.ravel()[order[6:]], w.ravel()[order[6:]])
    assert report.details["layers"]["w"] == {"size": 12, "zeroed": 6, "sparsity": 0.5}
    assert report.details["weight_bytes"] == 48
    assert report.details["weight_gzip_bytes_after"] < report.details["weight_gzip_bytes_before"]
    assert_within_budget(original, model, min_cosine=0.5)


def test_prune_threshold_zeroes_exactly_the_small_weights():
    w = np.array([[0.001, -0.5, 0.02], [-0.009, 2.0, 0.0], [0.3, -0.011, 0.05], [1.0, 0.009, -0.2]], np.float32)
    model = make_model(MATMUL_4x3, w=w)
    report = PruneMagnitudePass(threshold=0.01)(model)
    # |w| < 0.01: 0.001, -0.009, 0.009 (0.0 already zero, -0.011 is not below).
    assert report.changes == {"tensors_pruned": 1, "weights_zeroed": 3}
    assert report.details["layers"]["w"]["sparsity"] == round(4 / 12, 4)


def test_prune_leaves_shared_weight_alone():
    model = make_model(TWO_MATMULS_SHARING_W, w=seeded((4, 4)))
    text = ir.to_onnx_text(model)
    report = PruneMagnitudePass()(model)
    assert not report.modified and report.skipped == {"weight_shared": 2}
    assert ir.to_onnx_text(model) == text


def test_prune_skips_first_and_last_of_three_layers():
    model = make_model(CHAIN, a=seeded((8, 8), 1), b=seeded((8, 8), 2), c=seeded((8, 8), 3))
    report = PruneMagnitudePass(rate=0.25)(model)
    assert report.changes == {"tensors_pruned": 1, "weights_zeroed": 16}
    assert report.skipped == {"first_or_last_layer": 2}
    assert set(report.details["layers"]) == {"b"}
    report = PruneMagnitudePass(rate=0.25, skip_first_last=False)(model := make_model(
        CHAIN, a=seeded((8, 8), 1), b=seeded((8, 8), 2), c=seeded((8, 8), 3)))
    assert report.changes == {"tensors_pruned": 3, "weights_zeroed": 48}


def test_prune_global_ranks_across_layers_with_a_cap():
    small, large = seeded((8, 8), 1, scale=0.01), seeded((8, 8), 2)
    layer = PruneMagnitudePass(rate=0.5, skip_first_last=False)(
        make_model(CHAIN, a=small, b=large, c=seeded((8, 8), 3)))
    assert [layer.details["layers"][k]["zeroed"] for k in "abc"] == [32, 32, 32]
    # Global: the 96 smallest of 192 weights; 'a' is 100x smaller, so it goes first, up to its cap (56).
    model = make_model(CHAIN, a=small, b=large, c=seeded((8, 8), 3))
    report = PruneMagnitudePass(rate=0.5, scope="global", max_rate=0.875, skip_first_last=False)(model)
    zeroed = [report.details["layers"][k]["zeroed"] for k in "abc"]
    assert zeroed[0] == 56 and sum(zeroed) == 96
    assert report.changes["weights_zeroed"] == 96


def test_prune_visits_if_bodies():
    model = ir.from_onnx_text(IF_BODY)
    weight = next(v for v in model.graph.inputs if v.name == "w")  # read inside the then-branch
    model.graph.inputs.remove(weight)
    weight.const_value = ir.tensor(seeded((4, 4)), name="w")
    model.graph.register_initializer(weight)
    report = PruneMagnitudePass(rate=0.5)(model)
    assert report.changes == {"tensors_pruned": 1, "weights_zeroed": 8}
    assert np.count_nonzero(model.graph.initializers["w"].const_value.numpy() == 0) == 8


@pytest.mark.parametrize(
    "options",
    [
        {"rate": 0.0},
        {"rate": 1.0},
        {"rate": -0.2},
        {"rate": 0.5, "threshold": 0.1},
        {"threshold": -0.1},
        {"max_rate": 0.0},
        {"scope": "model"},
        {"threshold": 0.1, "scope": "global"},
        {"sparse_storage": True},
    ],
)
def test_prune_rejects_bad_options(options):
    with pytest.raises(PassConfigError):
        PruneMagnitudePass(**options)


def test_prune_nothing_prunable_is_a_precondition_error():
    model = ir.from_onnx_text(NOTHING)
    with pytest.raises(ir.passes.PreconditionError):
        PruneMagnitudePass()(model)
    with pytest.raises(InputError) as error:  # explicitly requested: exit 2
        Pipeline([PruneMagnitudePass()]).run(ir.from_onnx_text(NOTHING))
    assert error.value.exit_code == 2
    report = Pipeline([(PruneMagnitudePass(), True)]).run(ir.from_onnx_text(NOTHING))  # from a preset
    assert report.rows[0].status == "skipped"


def test_prune_ignores_shape_readers_when_checking_sharing():
    text = f"""{HEADER}
    g (float[2,4] x, float[4,3] w) => (float[2,3] y, int64[2] s) {{
        y = MatMul(x, w)
        s = Shape(w)
    }}"""
    model = make_model(text, w=seeded((4, 3)))
    report = PruneMagnitudePass(rate=0.5)(model)
    assert report.changes == {"tensors_pruned": 1, "weights_zeroed": 6}
