"""fold-pad, fold-input-norm, collapse-layout (passes/fusion/standard.py), plus the zoo run of all new passes."""

from __future__ import annotations

import numpy as np
import onnx_ir as ir
import pytest

from sftonnx.errors import PassConfigError
from sftonnx.passes.fusion.ort import FuseOrtPass
from sftonnx.passes.fusion.standard import CollapseLayoutPass, FoldInputNormPass, FoldPadPass
from sftonnx.passes.fusion.transformer import FuseGeluPass, FuseLayerNormPass, FuseSoftmaxPass
from tests.helpers import LIGHT_MODELS, assert_same_outputs, make_model, op_types, run_ort, seeded
from tests.passes.fusion.support import all_op_types, assert_fused, assert_unchanged, bind_initializers, check_model

HEADER = '<ir_version: 8, opset_import: ["" : 18]>'



# -- fold-pad -----------------------------------------------------------------------------------------

def pad_model(pads: list[int], *, mode: str = "constant", value: float | None = None, conv_pads=(0, 0, 0, 0),
              header: str = HEADER, legacy: bool = False) -> ir.Model:
    out = 8 - 2 + (pads[2] + pads[6] + conv_pads[0] + conv_pads[2])
    out_w = 8 - 2 + (pads[3] + pads[7] + conv_pads[1] + conv_pads[3])
    value_arg = "" if value is None else ", v"
    pad_line = (f"p = Pad<mode=\"{mode}\", pads={list(pads)}>(x)" if legacy
                else f"p = Pad<mode=\"{mode}\">(x, pads{value_arg})")
    arrays = {"w": seeded((4, 3, 3, 3), 1), "b": seeded((4,), 2)}
    if not legacy:
        arrays["pads"] = np.array(pads, np.int64)
    if value is not None:
        arrays["v"] = np.array(value, np.float32)
    return make_model(f"""{header}
g (float[1,3,8,8] x) => (float[1,4,{out},{out_w}] y) {{
    {pad_line}
    y = Conv<pads={list(conv_pads)}>(p, w, b)
}}""", **arrays)


def test_fold_pad_adds_spatial_pads_to_conv():
    model = pad_model([0, 0, 1, 2, 0, 0, 1, 0], conv_pads=(1, 0, 0, 1))
    assert_fused(model, FoldPadPass(), {"pad_folded": 1}, ["Conv"])
    assert list(model.graph.node(0).attributes["pads"].value) == [2, 2, 1, 1]


def test_fold_pad_handles_opset_10_attribute_form():
    model = pad_model([0, 0, 1, 1, 0, 0, 1, 1], header='<ir_version: 5, opset_import: ["" : 10]>', legacy=True)
    assert_fused(model, FoldPadPass(), {"pad_folded": 1}, ["Conv"])


@pytest.mark.parametrize(
    ("kwargs", "reason"),
    [
        ({"pads": [0, 0, 1, 1, 0, 0, 1, 1], "mode": "reflect"}, "pad_mode_not_constant"),
        ({"pads": [0, 0, 1, 1, 0, 0, 1, 1], "value": 1.0}, "pad_value_not_zero"),
        ({"pads": [0, 1, 1, 1, 0, 0, 1, 1]}, "pads_batch_or_channel"),
        ({"pads": [0, 0, 1, 1, 0, 0, -1, 1]}, "negative_pads"),
    ],
)
def test_fold_pad_declines(kwargs, reason):
    pads = kwargs.pop("pads")
    if reason == "pads_batch_or_channel":  # channel padding changes the Conv's input channels: build by hand
        model = make_model(f"""{HEADER}
g (float[1,3,8,8] x) => (float[1,4,8,8] y) {{
    p = Pad(x, pads)
    y = Conv(p, w, b)
}}""", w=seeded((4, 4, 3, 3), 1), b=seeded((4,), 2), pads=np.array(pads, np.int64))
    else:
        model = pad_model(pads, **kwargs)
    assert_unchanged(model, FoldPadPass(), {reason: 1})


def test_fold_pad_declines_pad_read_elsewhere():
    model = make_model(f"""{HEADER}
g (float[1,3,8,8] x) => (float[1,4,8,8] y, float[1,3,10,10] p) {{
    p = Pad(x, pads)
    y = Conv(p, w)
}}""", w=seeded((4, 3, 3, 3), 1), pads=np.array([0, 0, 1, 1, 0, 0, 1, 1], np.int64))
    assert_unchanged(model, FoldPadPass(), {"intermediate_is_graph_output": 1})


def maxpool_model(pads: list[int], *, mode: str = "edge", value: float | None = None, kernel: int = 3,
                  pool: str = "strides=[2,2]", size: int = 9) -> ir.Model:
    value_arg = "" if value is None else ", v"
    arrays = {"pads": np.array(pads, np.int64)}
    if value is not None:
        arrays["v"] = np.array(value, np.float32)
    return make_model(f"""{HEADER}
g (float[1,3,{size},{size}] x) => (float[1,3,?,?] y) {{
    p = Pad<mode="{mode}">(x, pads{value_arg})
    y = MaxPool<kernel_shape=[{kernel},{kernel}], {pool}>(p)
}}""", **arrays)


@pytest.mark.parametrize(
    ("pads", "kwargs"),
    [
        ([0, 0, 0, 0, 0, 0, 1, 1], {}),  # channels-last export of TensorFlow's SAME pooling
        ([0, 0, 1, 2, 0, 0, 2, 1], {}),  # at the limit: kernel - 1 per side
        ([0, 0, 1, 0, 0, 0, 0, 1], {"pool": "strides=[1,1], pads=[1,1,1,0]"}),  # with the pool's own pads
        ([0, 0, 2, 2, 0, 0, 2, 2], {"mode": "constant", "value": float("-inf")}),
        ([0, 0, 1, 1, 0, 0, 1, 1], {"size": 8, "kernel": 2, "pool": "strides=[2,2]"}),
    ],
    ids=["tf-same", "limit", "pool-pads", "neg-inf", "kernel-2"],
)
def test_fold_pad_into_maxpool(pads, kwargs):
    model = maxpool_model(pads, **kwargs)
    assert_fused(model, FoldPadPass(), {"pad_maxpool_folded": 1}, ["MaxPool"])


@pytest.mark.parametrize(
    ("pads", "kwargs", "reason"),
    [
        ([0, 0, 0, 0, 0, 0, 3, 1], {}, "pads_reach_past_window"),
        ([0, 0, 0, 0, 0, 0, 1, 1], {"pool": "strides=[1,1], pads=[0,0,2,0]"}, "pads_reach_past_window"),
        ([0, 0, 0, 0, 0, 0, 1, 1], {"pool": "strides=[2,2], ceil_mode=1"}, "pool_ceil_mode"),
        ([0, 0, 0, 0, 0, 0, 1, 1], {"pool": "dilations=[2,2]"}, "pool_dilated"),
        ([0, 0, 1, 1, 0, 0, 1, 1], {"mode": "reflect"}, "pad_mode_not_edge"),
        ([0, 0, 1, 1, 0, 0, 1, 1], {"mode": "constant", "value": 0.0}, "pad_value_not_neg_inf"),
        ([0, 1, 0, 0, 0, 0, 1, 1], {}, "pads_batch_or_channel"),
    ],
)
def test_fold_pad_into_maxpool_declines(pads, kwargs, reason):
    assert_unchanged(maxpool_model(pads, **kwargs), FoldPadPass(), {reason: 1})


def test_edge_pad_into_a_dilated_maxpool_would_change_the_maxima():
    """The dilation guard is needed: a dilated window reads the copy of the edge pixel but not the pixel."""
    model = maxpool_model([0, 0, 0, 0, 0, 0, 1, 1], kernel=2, pool="strides=[1,1], dilations=[2,2]", size=5)
    folded = make_model(f"""{HEADER}
g (float[1,3,5,5] x) => (float[1,3,?,?] y) {{
    y = MaxPool<kernel_shape=[2,2], strides=[1,1], dilations=[2,2], pads=[0,0,1,1]>(x)
}}""")
    x = {"x": seeded((1, 3, 5, 5), 4)}
    expected, actual = run_ort(model, x)[0], run_ort(folded, x)[0]
    assert expected.shape == actual.shape == (1, 3, 4, 4)
    assert not np.array_equal(actual, expected)


def test_fold_pad_in_if_branch():
    model = bind_initializers(ir.from_onnx_text(f"""{HEADER}
g (bool cond, float[1,3,8,8] x, float[4,3,3,3] w, int64[8] pads) => (float[1,4,8,8] y) {{
    y = If(cond) <
        then_branch = t () => (float[1,4,8,8] a) {{
            p = Pad(x, pads)
            a = Conv(p, w)
        }},
        else_branch = e () => (float[1,4,8,8] c) {{
            c = Conv<pads=[1,1,1,1]>(x, w)
        }}
    >
}}"""), w=seeded((4, 3, 3, 3), 1), pads=np.array([0, 0, 1, 1, 0, 0, 1, 1], np.int64))
    original = ir.to_proto(model).SerializeToString()
    report = FoldPadPass()(model)
    assert report.changes == {"pad_folded": 1}
    assert all_op_types(model) == ["If", "Conv", "Conv"]
    check_model(model)
    for cond in (True, False):
        feeds = {"cond": np.array(cond), "x": seeded((1, 3, 8, 8), 5)}
        np.testing.assert_allclose(run_ort(model, feeds)[0], run_ort(original, feeds)[0], atol=1e-4, rtol=1e-3)


# -- fold-input-norm ----------------------------------------------------------------------------------

def norm_model(conv_attrs: str = "", group: int = 1, ops: tuple[str, str] = ("Sub", "Div")) -> ir.Model:
    cin = 4
    pads = "pads=[1,1,1,1]" in conv_attrs
    size = 8 if pads else 6
    return make_model(f"""{HEADER}
g (float[2,{cin},8,8] x) => (float[2,4,{size},{size}] y) {{
    s = {ops[0]}(x, m)
    d = {ops[1]}(s, sd)
    y = Conv<group={group}{conv_attrs}>(d, w, b)
}}""", w=seeded((4, cin // group, 3, 3), 1), b=seeded((4,), 2), m=seeded((1, cin, 1, 1), 3),
        sd=(np.abs(seeded((cin, 1, 1), 4)) + 0.5).astype(np.float32))


@pytest.mark.parametrize("group", [1, 2, 4])
def test_fold_input_norm_folds_sub_div(group):
    assert_fused(norm_model(group=group), FoldInputNormPass(), {"input_div_folded": 1, "input_sub_folded": 1},
                 ["Conv"])


def test_fold_input_norm_folds_mul_add():
    assert_fused(norm_model(ops=("Mul", "Add")), FoldInputNormPass(), {"input_add_folded": 1, "input_mul_folded": 1},
                 ["Conv"])


def test_fold_input_norm_keeps_shift_before_padded_conv():
    model = norm_model(", pads=[1,1,1,1]")
    original = ir.to_proto(model).SerializeToString()
    report = FoldInputNormPass()(model)
    # The scale folds (a zero stays zero); the shift would change the padded border.
    assert report.changes == {"input_div_folded": 1}
    assert report.skipped == {"conv_pads_nonzero": 1}
    assert op_types(model) == ["Sub", "Conv"]
    assert_same_outputs(original, model)


def test_fold_input_norm_declines_non_per_channel_and_dynamic():
    model = make_model(f"""{HEADER}
g (float[1,4,8,8] x, float[1,4,1,1] m) => (float[1,4,6,6] y, float[1,4,6,6] z) {{
    s = Sub(x, m)
    y = Conv(s, w)
    d = Div(x, sp)
    z = Conv(d, w2)
}}""", w=seeded((4, 4, 3, 3), 1), w2=seeded((4, 4, 3, 3), 2), sp=np.abs(seeded((1, 1, 8, 8), 3)) + 1)
    assert_unchanged(model, FoldInputNormPass(), {"operand_not_per_channel": 1})


def test_fold_input_norm_bad_option():
    with pytest.raises(PassConfigError):
        FoldInputNormPass(ops=("Exp",))


# -- collapse-layout ----------------------------------------------------------------------------------

def test_collapse_layout_chains():
    model = make_model(f"""{HEADER}
g (float[2,3,4,5] x) => (float[2,3,20] y, float[4,5,3,2] z) {{
    t1 = Transpose<perm=[0,2,1,3]>(x)
    t2 = Transpose<perm=[0,2,1,3]>(t1)
    r1 = Reshape(t2, s1)
    r2 = Reshape(r1, s2)
    u = Unsqueeze(r2, a)
    y = Squeeze(u, a)
    t3 = Transpose<perm=[0,1,3,2]>(x)
    z = Transpose<perm=[3,2,1,0]>(t3)
}}""", s1=np.array([6, 20], np.int64), s2=np.array([2, 3, 20], np.int64), a=np.array([1], np.int64))
    assert_fused(model, CollapseLayoutPass(),
                 {"transposes_collapsed": 2, "reshape_reshape_collapsed": 1, "unsqueeze_squeeze_cancelled": 1},
                 ["Identity", "Reshape", "Identity", "Transpose"])


def test_collapse_layout_noops():
    model = make_model(f"""{HEADER}
g (float[2,3,4] x) => (float[2,3,4] y, float[2,3,4] z) {{
    y = Reshape(x, s)
    z = Transpose<perm=[0,1,2]>(x)
}}""", s=np.array([0, -1, 4], np.int64))
    assert_fused(model, CollapseLayoutPass(), {"reshape_noop_removed": 1, "transpose_noop_removed": 1},
                 ["Identity", "Identity"])


def test_collapse_layout_declines():
    model = make_model(f"""{HEADER}
g (float[2,3,4,5] x) => (float[2,4,3,5] y, float[6,20] r, float[2,3,4,5] z) {{
    t1 = Transpose<perm=[0,2,1,3]>(x)
    y = Identity(t1)
    t2 = Transpose<perm=[0,2,1,3]>(t1)
    r1 = Reshape(t2, s1)
    r = Reshape(r1, s2)
    u = Unsqueeze(x, a)
    z = Squeeze(u, b)
}}""", s1=np.array([6, 20], np.int64), s2=np.array([0, 20], np.int64), a=np.array([0], np.int64),
        b=np.array([0], np.int64))
    model.graph.outputs[2].shape = None
    report = CollapseLayoutPass()(model)
    # t2 reads t1 which has another reader; s2 copies a dim of r1 (0); only the Unsqueeze/Squeeze pair goes.
    assert report.changes == {"unsqueeze_squeeze_cancelled": 1}
    assert report.skipped == {"intermediate_has_other_consumers": 1, "shape_copies_dims": 1}


def test_collapse_layout_squeeze_axes_differ():
    model = make_model(f"""{HEADER}
g (float[2,1,4,1] x) => (float[2,1,4,1] y) {{
    s = Squeeze(x, a)
    y = Unsqueeze(s, b)
}}""", a=np.array([1], np.int64), b=np.array([3], np.int64))
    model.graph.outputs[0].shape = ir.Shape([2, 4, 1, 1])
    assert_unchanged(model, CollapseLayoutPass(), {"axes_differ": 1})


# -- the model zoo and onnx's light models --------------------------------------------------------------

ALL_PASSES = [FoldPadPass, FoldInputNormPass, CollapseLayoutPass, FuseLayerNormPass, FuseGeluPass, FuseSoftmaxPass,
              FuseOrtPass]


def zoo_paths():
    import pathlib

    root = pathlib.Path(__file__).resolve().parents[3] / "models" / "onnx"
    return sorted(root.glob("*.onnx")) + LIGHT_MODELS


@pytest.mark.slow
@pytest.mark.parametrize("path", zoo_paths(), ids=lambda p: p.stem)
def test_every_new_pass_keeps_zoo_outputs(path):
    from sftonnx import io

    original = io.to_bytes(io.load(path))
    for cls in ALL_PASSES:
        model = io.load(original)
        kwargs = {"upgrade_opset": True} if cls is FuseGeluPass else {}
        report = cls(**kwargs)(model)
        if report.modified:
            check_model(model)
            assert_same_outputs(original, model)
