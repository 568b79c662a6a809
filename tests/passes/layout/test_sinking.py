"""sink-transposes (passes/layout/sinking.py): Transposes pushed through commuting ops until they cancel."""

from __future__ import annotations

import numpy as np
import onnx_ir as ir
import pytest

from sftonnx.errors import PassConfigError
from sftonnx.passes.fusion import FoldAffinePass, FoldPadPass
from sftonnx.passes.layout import SinkTransposesPass
from tests.helpers import assert_same_outputs, make_model, op_types, seeded
from tests.passes.fusion.support import check_model

HEADER = '<ir_version: 8, opset_import: ["" : 17]>'
TO_NHWC, TO_NCHW = "[0,2,3,1]", "[0,3,1,2]"


def transposes(model: ir.Model) -> int:
    return sum(1 for node in ir.traversal.RecursiveGraphIterator(model.graph) if node.op_type == "Transpose")


def run(model: ir.Model, pass_=None):
    """Run the pass; check the model stays valid, keeps its outputs and never gains Transposes."""
    original = ir.to_proto(model).SerializeToString()
    before = transposes(model)
    inputs = [(v.name, str(v.shape)) for v in model.graph.inputs]
    outputs = [(v.name, str(v.shape)) for v in model.graph.outputs]
    report = (pass_ or SinkTransposesPass())(model)
    assert transposes(model) <= before
    assert [(v.name, str(v.shape)) for v in model.graph.inputs] == inputs
    assert [(v.name, str(v.shape)) for v in model.graph.outputs] == outputs
    check_model(model)
    assert_same_outputs(original, model)
    return report


def channels_last_block(*, residual: bool = False) -> ir.Model:
    """A channels-last export: Conv between Transposes, bias and batch norm decomposed on the last axis."""
    skip = "r = Add(a4, h)\n    z = Relu(r)" if residual else "z = Relu(a4)"
    # With a residual, the block input is the channels-last output of a previous Conv (as in a ResNet).
    head = (f"s0 = Transpose<perm={TO_NCHW}>(x)\n    c0 = Conv(s0, w2)\n    s1 = Transpose<perm={TO_NHWC}>(c0)\n"
            "    h = Relu(s1)") if residual else "h = Relu(x)"
    text = f"""{HEADER}
g (float[1,6,6,4] x) => (float[1,6,6,4] y) {{
    {head}
    t0 = Transpose<perm={TO_NCHW}>(h)
    k = Conv<pads=[1,1,1,1]>(t0, w)
    t1 = Transpose<perm={TO_NHWC}>(k)
    a1 = Add(t1, bias)
    a2 = Sub(a1, mean)
    a3 = Mul(a2, scale)
    a4 = Add(a3, shift)
    {skip}
    t2 = Transpose<perm={TO_NCHW}>(z)
    k2 = Conv(t2, w2)
    y = Transpose<perm={TO_NHWC}>(k2)
}}"""
    arrays = {name: seeded((1, 1, 1, 4), seed) for seed, name in enumerate(["bias", "mean", "scale", "shift"], 3)}
    return make_model(text, w=seeded((4, 4, 3, 3), 1), w2=seeded((4, 4, 1, 1), 2), **arrays)


def test_channels_last_chain_cancels_and_affine_chain_reaches_the_conv():
    model = channels_last_block()
    report = run(model)
    # Transposes: NHWC->NCHW at the input (hoisted above the Relu onto the graph input), 1 at the output.
    assert report.changes["transposes_removed"] == 2
    assert report.changes["transposes_sunk"] >= 5
    assert report.skipped == {"graph_output": 1, "graph_input": 1}
    assert op_types(model) == ["Transpose", "Relu", "Conv", "Add", "Sub", "Mul", "Add", "Relu", "Conv", "Transpose"]
    conv = [n for n in model.graph if n.op_type == "Conv"][0]
    add = conv.outputs[0].uses()[0].node
    assert add.inputs[1].const_value.shape == (1, 4, 1, 1)  # the per-channel constant re-laid out NCHW
    folded = FoldAffinePass()(model)
    assert folded.changes == {"conv_add_folded": 2, "conv_sub_folded": 1, "conv_mul_folded": 1}
    assert op_types(model) == ["Transpose", "Relu", "Conv", "Relu", "Conv", "Transpose"]


def test_residual_branches_with_the_same_permutation_cancel():
    model = channels_last_block(residual=True)
    report = run(model)
    assert transposes(model) == 2  # the input and output boundary only
    assert report.changes["transposes_removed"] == 4
    assert op_types(model) == ["Transpose", "Conv", "Relu", "Conv", "Add", "Sub", "Mul", "Add", "Add", "Relu", "Conv",
                               "Transpose"]


def test_reduce_without_keepdims_absorbs_the_transpose():
    text = f"""{HEADER}
g (float[1,4,5,6] x) => (float[1,4] y) {{
    k = Conv(x, w)
    t = Transpose<perm={TO_NHWC}>(k)
    r = Relu(t)
    y = ReduceMean<axes=[1,2], keepdims=0>(r)
}}"""
    model = make_model(text, w=seeded((4, 4, 1, 1), 1))
    report = run(model)
    assert transposes(model) == 0
    assert report.changes == {"transposes_removed": 1, "transposes_sunk": 2}
    reduce = model.graph.node(2)
    assert list(reduce.attributes["axes"].value) == [2, 3]


@pytest.mark.parametrize(
    ("line", "out_shape"),
    [
        ("z = Concat<axis=3>(r, r)", "1,5,6,8"),
        ("z = Softmax<axis=-1>(r)", "1,5,6,4"),
        ("z, z2 = Split<axis=3>(r, sp)", "1,5,6,2"),
        ("z = Pad<mode=\"reflect\">(r, pads)", "1,6,9,4"),
        ("z = Slice(r, starts, ends, axes)", "1,3,6,2"),
        ("z = ReduceSum<keepdims=1>(r, raxes)", "1,1,1,4"),
        ("z = Resize<mode=\"nearest\">(r, roi, scales)", "1,10,12,4"),
        ("z = Clip(r, lo, hi)", "1,5,6,4"),
        ("z = PRelu(r, slope)", "1,5,6,4"),
        ("z = ArgMax<axis=3, keepdims=0>(r)", "1,5,6"),
    ],
    ids=["concat", "softmax", "split", "pad", "slice", "reduce-input-axes", "resize", "clip", "prelu", "argmax"],
)
def test_axes_are_renamed_when_crossing(line, out_shape):
    out_type = "int64" if "ArgMax" in line else "float"
    text = f"""{HEADER}
g (float[1,4,5,6] x) => ({out_type}[{out_shape}] y) {{
    t = Transpose<perm={TO_NHWC}>(x)
    r = Relu(t)
    {line}
    y = Transpose<perm=[0,1,2,3]>(z)
}}"""
    if "ArgMax" in line:
        text = text.replace("perm=[0,1,2,3]", "perm=[0,1,2]")
    arrays = {
        "pads": np.array([0, 1, 2, 0, 0, 0, 1, 0], np.int64),
        "starts": np.array([1, 0], np.int64),
        "ends": np.array([4, 2], np.int64),
        "axes": np.array([1, -1], np.int64),
        "raxes": np.array([1, 2], np.int64),
        "roi": np.zeros((0,), np.float32),
        "scales": np.array([1, 2, 2, 1], np.float32),
        "lo": np.array(-0.5, np.float32),
        "hi": np.array(0.5, np.float32),
        "slope": seeded((4,), 7),
        "sp": np.array([2, 2], np.int64),
    }
    used = {k: v for k, v in arrays.items() if k in line.split("(", 1)[1]}
    model = make_model(text, **used)
    report = run(model)
    assert report.changes["transposes_sunk"] >= 2
    assert transposes(model) == 1
    if "ArgMax" not in line:  # the sunk Transpose composed with the trailing one (ArgMax needs none after it)
        assert report.changes["transposes_merged"] == 1


def test_hoists_onto_the_graph_input_so_the_pad_folds_into_the_conv():
    text = f"""{HEADER}
g (float[1,6,6,3] x) => (float[1,4,8,8] y) {{
    p = Pad<mode="constant">(x, pads)
    t = Transpose<perm={TO_NCHW}>(p)
    y = Conv(t, w)
}}"""
    model = make_model(text, pads=np.array([0, 2, 2, 0, 0, 2, 2, 0], np.int64), w=seeded((4, 3, 3, 3), 1))
    report = run(model)
    assert report.changes == {"transposes_hoisted": 1}
    assert op_types(model) == ["Transpose", "Pad", "Conv"]
    assert FoldPadPass()(model).changes == {"pad_folded": 1}


def test_other_operand_without_the_permutation_is_left_alone():
    text = f"""{HEADER}
g (float[1,4,5,6] x, float[1,5,6,4] z) => (float[1,5,6,4] y) {{
    t = Transpose<perm={TO_NHWC}>(x)
    y = Add(t, z)
}}"""
    model = make_model(text)
    before = ir.to_onnx_text(model)
    report = SinkTransposesPass()(model)
    assert not report.modified and report.skipped == {"adds_transposes": 1}
    assert ir.to_onnx_text(model) == before


@pytest.mark.parametrize(
    ("body", "opset", "skip"),
    [
        ("t = Transpose<perm=[0,3,1,2]>(x)\n    y = Conv(t, w)", 17, "blocked_by_conv"),
        ("t = Transpose<perm=[0,3,1,2]>(x)\n    y = Softmax<axis=1>(t)", 11, "softmax_coerced_2d"),
        ("t = Transpose<perm=[0,3,1,2]>(x)\n    y = Reshape(t, shape)", 17, "blocked_by_reshape"),
    ],
    ids=["conv", "softmax-opset-11", "reshape"],
)
def test_ops_it_cannot_cross_are_counted(body, opset, skip):
    out = "float[1,4,4,4] y" if "Conv" in body else ("float[1,48] y" if "Reshape" in body else "float[1,3,4,4] y")
    text = f"""<ir_version: 8, opset_import: ["" : {opset}]>
g (float[1,4,4,3] x) => ({out}) {{
    {body}
}}"""
    model = make_model(text, w=seeded((4, 3, 1, 1), 1), shape=np.array([1, 48], np.int64))
    before = ir.to_onnx_text(model)
    report = SinkTransposesPass()(model)
    assert not report.modified and report.skipped == {skip: 1}
    assert ir.to_onnx_text(model) == before


def test_transposes_inside_an_if_branch_cancel():
    text = f"""{HEADER}
g (bool c, float[1,4,5,6] x) => (float[1,4,5,6] y) {{
    y = If(c) <
        then_branch = th () => (float[1,4,5,6] a) {{
            t = Transpose<perm={TO_NHWC}>(x)
            r = Relu(t)
            a = Transpose<perm={TO_NCHW}>(r)
        }},
        else_branch = el () => (float[1,4,5,6] b) {{ b = Neg(x) }}
    >
}}"""
    model = make_model(text)
    report = run(model)
    assert report.changes == {"transposes_removed": 2, "transposes_sunk": 1}
    assert transposes(model) == 0


def test_pair_cancelling_between_graph_input_and_output_is_declined():
    text = f"""{HEADER}
g (float[1,4,5,6] x) => (float[1,4,5,6] y) {{
    t = Transpose<perm={TO_NHWC}>(x)
    y = Transpose<perm={TO_NCHW}>(t)
}}"""
    model = make_model(text)
    report = SinkTransposesPass()(model)
    assert not report.modified
    assert transposes(model) == 2


@pytest.mark.parametrize("value", [0, -1])
def test_bad_options(value):
    with pytest.raises(PassConfigError, match="max_rounds"):
        SinkTransposesPass(max_rounds=value)


def test_transposes_inside_a_local_function_cancel_with_the_constant_relaid():
    text = """<ir_version: 8, opset_import: ["" : 17, "local" : 1]>
g (float[1,4,5,6] x) => (float[1,4,5,6] y) {
    y = local.f(x)
}
<domain: "local", opset_import: ["" : 17]>
f (a) => (b) {
    t = Transpose<perm=[0,2,3,1]>(a)
    c = Constant<value = float[1,1,1,4] {1.0, -2.0, 3.0, 0.5}>()
    m = Mul(t, c)
    b = Transpose<perm=[0,3,1,2]>(m)
}"""
    model = ir.from_onnx_text(text)
    report = run(model)
    assert report.changes == {"transposes_removed": 2, "transposes_sunk": 1}
    function = next(iter(model.functions.values()))
    assert [n.op_type for n in function] == ["Constant", "Constant", "Mul"]
    mul = [n for n in function if n.op_type == "Mul"][0]
    assert mul.inputs[1].const_value is None  # a Constant node: functions hold no initializers
    assert mul.inputs[1].producer().attributes["value"].value.shape == (1, 4, 1, 1)


def with_shapes(model: ir.Model) -> ir.Model:
    import onnx

    return ir.from_proto(onnx.shape_inference.infer_shapes(ir.to_proto(model)))


def test_a_move_that_would_transpose_more_data_is_declined():
    text = f"""{HEADER}
g (float[1,4,5,6] x) => (float[1,10,12,4] y) {{
    t = Transpose<perm={TO_NHWC}>(x)
    y = Resize<mode="nearest">(t, roi, scales)
}}"""
    model = with_shapes(make_model(text, roi=np.zeros((0,), np.float32), scales=np.array([1, 2, 2, 1], np.float32)))
    before = ir.to_onnx_text(model)
    report = SinkTransposesPass()(model)
    assert not report.modified and report.skipped == {"grows_data": 1}
    assert ir.to_onnx_text(model) == before


@pytest.mark.parametrize(
    "line",
    ['p = Pad<mode="constant">(t, pads)', 'p = Resize<mode="nearest">(t, roi, scales)'],
    ids=["pad", "resize"],
)
def test_a_pair_around_a_growing_op_cancels_by_hoisting(line):
    out = "1,4,7,8" if "Pad" in line else "1,4,10,12"
    text = f"""{HEADER}
g (float[1,4,5,6] x) => (float[1,4,{out.split(",", 2)[2]}] y) {{
    k = Conv(x, w)
    t = Transpose<perm={TO_NHWC}>(k)
    {line}
    s = Transpose<perm={TO_NCHW}>(p)
    y = Conv(s, w)
}}"""
    model = with_shapes(make_model(text, w=seeded((4, 4, 1, 1), 1), roi=np.zeros((0,), np.float32),
                                   scales=np.array([1, 2, 2, 1], np.float32),
                                   pads=np.array([0, 1, 1, 0, 0, 1, 1, 0], np.int64)))
    report = run(model)
    assert report.changes == {"transposes_removed": 2, "transposes_hoisted": 1}
    assert op_types(model) == ["Conv", line.split("<")[0].split()[-1], "Conv"]


def test_moves_that_cancel_nothing_are_undone():
    text = f"""{HEADER}
g (float[1,4,5,6] x) => (float[1,4,5,6] y) {{
    k = Conv(x, w)
    t = Transpose<perm={TO_NHWC}>(k)
    r = Relu(t)
    s = Sigmoid(r)
    y = Reshape(s, shape)
}}"""
    model = make_model(text, w=seeded((4, 4, 1, 1), 1), shape=np.array([1, 4, 5, 6], np.int64))
    before = ir.to_onnx_text(model)
    report = SinkTransposesPass()(model)
    assert not report.modified
    assert report.skipped == {"no_transpose_removed": 1, "blocked_by_reshape": 1}
    assert ir.to_onnx_text(model) == before


@pytest.mark.parametrize("opset", [11, 17])
def test_squeeze_and_unsqueeze_are_crossed_so_the_pair_cancels(opset):
    """A converter's NHWC round trip around a 3-D activation: Transpose, Squeeze, Elu, Unsqueeze, Transpose."""
    squeeze, unsqueeze = (("Squeeze<axes=[1]>(t)", "Unsqueeze<axes=[1]>(e)") if opset < 13
                          else ("Squeeze(t, one)", "Unsqueeze(e, one)"))
    text = f"""<ir_version: 8, opset_import: ["" : {opset}]>
g (float[2,4,1,6] x) => (float[2,4,1,6] y) {{
    k = Conv(x, w)
    t = Transpose<perm={TO_NHWC}>(k)
    q = {squeeze}
    e = Elu(q)
    u = {unsqueeze}
    s = Transpose<perm={TO_NCHW}>(u)
    y = Conv(s, w)
}}"""
    arrays = {"w": seeded((4, 4, 1, 1), 1)}
    if opset >= 13:
        arrays["one"] = np.array([1], np.int64)
    model = with_shapes(make_model(text, **arrays))
    report = run(model)
    assert report.changes["transposes_removed"] == 2
    assert op_types(model) == ["Conv", "Squeeze", "Elu", "Unsqueeze", "Conv"]


def test_unsqueeze_between_two_transposes_of_different_rank():
    text = f"""{HEADER}
g (float[2,3,4] x) => (float[2,1,3,4] y) {{
    t = Transpose<perm=[2,0,1]>(x)
    u = Unsqueeze(t, ax)
    y = Transpose<perm=[2,1,3,0]>(u)
}}"""
    model = make_model(text, ax=np.array([1], np.int64))
    report = run(model)
    assert report.changes["transposes_removed"] == 2
    assert op_types(model) == ["Unsqueeze"]
