"""The shared fusion machinery: what counts as a constant, skip accounting, sweeps to a fixpoint."""

from __future__ import annotations

import numpy as np
import onnx_ir as ir
import pytest

from sftonnx.passes.fusion import FoldAffinePass
from sftonnx.passes.fusion._rules import FusionContext
from tests.helpers import assert_same_outputs, make_model, op_types, seeded


def _value(model: ir.Model, name: str) -> ir.Value:
    for node in model.graph:
        for output in node.outputs:
            if output.name == name:
                return output
    raise KeyError(name)


EXPRESSIONS = """<ir_version: 8, opset_import: ["" : 17]>
g (float[2,3] x, int64[2] shape) => (float[2,3] y) {
    floats = Constant<value_floats=[1.0, 2.0]>()
    ints = Constant<value_int=7>()
    zeros = ConstantOfShape(shape)
    filled = ConstantOfShape<value=double[1] {1.5}>(shape)
    axes = Constant<value_ints=[0, -1]>()
    unsqueezed = Unsqueeze(floats, axes)
    shape_tail = Shape<start=-1>(zeros)
    expanded = Expand(floats, shape)
    cast_float = Cast<to=10>(ints)
    cast_int = Cast<to=7>(floats)
    like = CastLike(ints, x)
    copied = Identity(unsqueezed)
    dynamic = Relu(x)
    shape_of_dynamic = Shape(x)
    y = Add(x, dynamic)
}"""


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("floats", np.array([1.0, 2.0], np.float32)),
        ("ints", np.array(7, np.int64)),
        ("zeros", np.zeros((3, 2), np.float32)),
        ("filled", np.full((3, 2), 1.5, np.float64)),
        ("unsqueezed", np.array([[[1.0], [2.0]]], np.float32)),
        ("shape_tail", np.array([2], np.int64)),
        ("expanded", np.broadcast_to(np.array([1.0, 2.0], np.float32), (3, 2))),
        ("cast_float", np.array(7, np.float16)),
        ("like", np.array(7, np.float32)),
        ("copied", np.array([[[1.0], [2.0]]], np.float32)),
        ("cast_int", None),  # float -> int conversion rules are not numpy's: not evaluated
        ("dynamic", None),
        ("shape_of_dynamic", None),  # a declared shape may be stale: only shapes of constants
    ],
)
def test_constant_expressions(name, expected):
    model = make_model(EXPRESSIONS, shape=np.array([3, 2], np.int64))
    array = FusionContext(model).array(_value(model, name))
    if expected is None:
        assert array is None
    else:
        assert array is not None and array.dtype == expected.dtype
        np.testing.assert_array_equal(array, expected)


def test_initializer_that_is_an_input_is_constant_only_before_ir4():
    model = make_model("""<ir_version: 8, opset_import: ["" : 17]>
g (float[2] x) => (float[2] y) { y = Add(x, c) }""", c=np.ones(2, np.float32))
    model.graph.inputs.append(model.graph.initializers["c"])
    assert FusionContext(model).array(model.graph.initializers["c"]) is None
    model.ir_version = 3
    np.testing.assert_array_equal(FusionContext(model).array(model.graph.initializers["c"]), np.ones(2))


def test_fresh_names_avoid_every_graph():
    model = make_model("""<ir_version: 8, opset_import: ["" : 17]>
g (float[2] x) => (float[2] y) { w = Relu(x)  y = Relu(w) }""")
    context = FusionContext(model)
    assert context.fresh_name("w") == "w_1"
    assert context.fresh_name("w") == "w_2"
    assert context.fresh_name("fresh") == "fresh"


def test_a_site_rejected_by_both_commuted_variants_counts_once():
    # Add(conv1, conv2): each side is a Conv output and the other operand is not a constant.
    text = """<ir_version: 8, opset_import: ["" : 17]>
g (float[1,2,4,4] x, float[3,2,1,1] w1, float[3,2,1,1] w2) => (float[1,3,4,4] y) {
    a = Conv(x, w1)
    b = Conv(x, w2)
    y = Add(a, b)
}"""
    model = make_model(text, w1=seeded((3, 2, 1, 1), 1), w2=seeded((3, 2, 1, 1), 2))
    report = FoldAffinePass()(model)
    assert report.skipped == {"operand_not_constant": 1}
    assert not report.changes


def test_chains_fold_to_a_fixpoint_in_any_order():
    # Mul then Add then Mul, constants on alternating sides: three folds into one Conv.
    text = """<ir_version: 8, opset_import: ["" : 17]>
g (float[1,2,4,4] x, float[3,2,1,1] w, float[3,1,1] a, float[3,1,1] b, float[3,1,1] c) => (float[1,3,4,4] y) {
    k = Conv(x, w)
    m = Mul(a, k)
    n = Add(m, b)
    y = Mul(c, n)
}"""
    model = make_model(text, w=seeded((3, 2, 1, 1), 1), a=seeded((3, 1, 1), 2), b=seeded((3, 1, 1), 3),
                       c=seeded((3, 1, 1), 4))
    original = ir.to_proto(model).SerializeToString()
    report = FoldAffinePass()(model)
    assert report.changes == {"conv_mul_folded": 2, "conv_add_folded": 1}
    assert op_types(model) == ["Conv"]
    assert_same_outputs(original, model)
