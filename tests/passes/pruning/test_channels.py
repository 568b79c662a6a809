"""PruneChannelsPass (prune-channels): dependency rules on tiny graphs (exact when removed filters are zero),
declines, options, and real models (residual, depthwise, concat, channel shuffle)."""

from __future__ import annotations

import numpy as np
import onnx
import onnx_ir as ir
import pytest

from sftonnx import io
from sftonnx.errors import InputError, PassConfigError
from sftonnx.passes.pruning import PruneChannelsPass
from sftonnx.pipeline import Pipeline
from tests.helpers import LIGHT_MODELS, assert_same_outputs, make_model, random_feeds, run_ort, seeded

HEADER = '<ir_version: 8, opset_import: ["" : 17]>'


def check(model: ir.Model) -> None:
    """What the pipeline checks after a pass: onnx checker and strict shape inference."""
    proto = ir.to_proto(model)
    onnx.checker.check_model(proto, full_check=True)
    onnx.shape_inference.infer_shapes(proto, check_type=True, strict_mode=True)


def weight(model: ir.Model, node_name: str, index: int = 1) -> np.ndarray:
    node = next(n for n in model.graph if n.name == node_name)
    return node.inputs[index].const_value.numpy()


def zero_filters(array: np.ndarray, channels, axis: int = 0) -> np.ndarray:
    array = array.copy()
    index = [slice(None)] * array.ndim
    index[axis] = list(channels)
    array[tuple(index)] = 0
    return array


CONV_BN_RELU_CONV = f"""{HEADER}
g (float[1,3,6,6] x, float[4,3,3,3] w1, float[4] s, float[4] bb, float[4] m, float[4] v, float[2,4,3,3] w2,
   float[2] b2) => (float[1,2,6,6] y) {{
    [conv1] c1 = Conv <pads = [1,1,1,1]> (x, w1)
    [bn1] n1 = BatchNormalization (c1, s, bb, m, v)
    r1 = Relu(n1)
    [conv2] y = Conv <pads = [1,1,1,1]> (r1, w2, b2)
}}"""


def conv_bn_model(zero=(1, 3), beta_zero=True):
    bb = seeded((4,), 11)
    m = seeded((4,), 12)
    if beta_zero:  # BN(0) = beta - gamma * mean / sigma = 0 on the zero channels
        bb[list(zero)] = 0
        m[list(zero)] = 0
    return make_model(
        CONV_BN_RELU_CONV,
        w1=zero_filters(seeded((4, 3, 3, 3), 1), zero), s=seeded((4,), 10), bb=bb, m=m,
        v=np.abs(seeded((4,), 13)) + 0.5, w2=seeded((2, 4, 3, 3), 2), b2=seeded((2,), 3),
    )


def test_conv_bn_relu_conv_removes_zero_filters_exactly():
    model = conv_bn_model()
    original = io.to_bytes(model)
    w2 = weight(model, "conv2")
    report = PruneChannelsPass(ratio=0.5)(model)
    assert report.changes == {"channels_removed": 2, "layers_pruned": 1, "consumers_rewritten": 1}
    assert report.skipped == {"channel_reaches_output": 2}
    assert weight(model, "conv1").shape == (2, 3, 3, 3)
    np.testing.assert_array_equal(weight(model, "conv2"), w2[:, [0, 2]])
    bn = next(n for n in model.graph if n.op_type == "BatchNormalization")
    assert all(v.const_value.shape == (2,) for v in bn.inputs[1:])
    assert report.details["layers"]["conv1"] == {"channels": 4, "kept": 2}
    check(model)
    assert_same_outputs(original, model)


def test_bias_compensation_is_exact_for_constant_channels():
    """Zero filters with BN beta != 0 give constant channels: a 1x1 consumer absorbs them exactly."""
    text = CONV_BN_RELU_CONV.replace("float[2,4,3,3] w2", "float[2,4,1,1] w2").replace(
        '[conv2] y = Conv <pads = [1,1,1,1]>', '[conv2] y = Conv')
    bb = np.abs(seeded((4,), 11)) + 0.1  # positive: the constant survives the Relu
    model = make_model(text, w1=zero_filters(seeded((4, 3, 3, 3), 1), (0, 2)), s=seeded((4,), 10), bb=bb,
                       m=seeded((4,), 12), v=np.abs(seeded((4,), 13)) + 0.5, w2=seeded((2, 4, 1, 1), 2),
                       b2=seeded((2,), 3))
    original = io.to_bytes(model)
    calibration = [random_feeds(model, seed) for seed in range(2)]
    plain = io.load(original)
    PruneChannelsPass(ratio=0.5, compensate_bias=False)(plain)
    with pytest.raises(AssertionError):
        assert_same_outputs(original, plain)
    report = PruneChannelsPass(ratio=0.5, reconstruct=False, compensate_bias=True, calibration_data=calibration)(
        model
    )
    assert report.changes["biases_compensated"] == 1
    check(model)
    assert_same_outputs(original, model)


RESIDUAL = f"""{HEADER}
g (float[1,3,5,5] x, float[4,3,3,3] w1, float[4,4,3,3] w2, float[2,4,1,1] w3) => (float[1,2,5,5] y) {{
    [conv_a] a = Conv <pads = [1,1,1,1]> (x, w1)
    r = Relu(a)
    [conv_b] b = Conv <pads = [1,1,1,1]> (r, w2)
    s = Add(a, b)
    t = Relu(s)
    [conv_out] y = Conv (t, w3)
}}"""


def test_residual_channels_are_pruned_jointly():
    w1 = zero_filters(seeded((4, 3, 3, 3), 1), (2,))
    w2 = zero_filters(seeded((4, 4, 3, 3), 2), (2,))
    model = make_model(RESIDUAL, w1=w1, w2=w2, w3=seeded((2, 4, 1, 1), 3))
    original = io.to_bytes(model)
    report = PruneChannelsPass(ratio=0.25)(model)
    assert report.changes == {"channels_removed": 2, "layers_pruned": 2, "consumers_rewritten": 2}
    assert list(report.details["layers"]) == ["conv_a", "conv_b", "conv_out"]
    assert weight(model, "conv_a").shape == (3, 3, 3, 3)
    assert weight(model, "conv_b").shape == (3, 3, 3, 3)  # its input (r) and output (b) lose channel 2
    np.testing.assert_array_equal(weight(model, "conv_b"), w2[[0, 1, 3]][:, [0, 1, 3]])
    check(model)
    assert_same_outputs(original, model)


def test_residual_with_graph_input_is_left_whole():
    text = f"""{HEADER}
    g (float[1,4,5,5] x, float[4,4,3,3] w1, float[2,4,1,1] w2) => (float[1,2,5,5] y) {{
        a = Conv <pads = [1,1,1,1]> (x, w1)
        s = Add(a, x)
        y = Conv(s, w2)
    }}"""
    model = make_model(text, w1=seeded((4, 4, 3, 3)), w2=seeded((2, 4, 1, 1)))
    report = PruneChannelsPass(ratio=0.5)(model)
    assert not report.modified
    assert report.skipped["channel_from_unprunable_producer:input"] == 4


CONCAT = f"""{HEADER}
g (float[1,2,4,4] x, float[3,2,3,3] wa, float[5,2,1,1] wb, float[2,8,1,1] wc) => (float[1,2,4,4] y) {{
    [conv_a] a = Conv <pads = [1,1,1,1]> (x, wa)
    [conv_b] b = Conv (x, wb)
    ra = Relu(a)
    c = Concat <axis = 1> (ra, b)
    [conv_c] y = Conv (c, wc)
}}"""


def test_concat_offsets_reach_the_consumer():
    wc = seeded((2, 8, 1, 1), 3)
    model = make_model(CONCAT, wa=zero_filters(seeded((3, 2, 3, 3), 1), (1,)),
                       wb=zero_filters(seeded((5, 2, 1, 1), 2), (2, 4)), wc=wc)
    original = io.to_bytes(model)
    report = PruneChannelsPass(ratio=0.5)(model)
    assert report.changes == {"channels_removed": 3, "layers_pruned": 2, "consumers_rewritten": 1}
    # a keeps 0, 2 (offsets 0, 2); b keeps 0, 1, 3 (offsets 3, 4, 6 in the concatenation)
    np.testing.assert_array_equal(weight(model, "conv_c"), wc[:, [0, 2, 3, 4, 6]])
    check(model)
    assert_same_outputs(original, model)


DEPTHWISE = f"""{HEADER}
g (float[1,3,6,6] x, float[4,3,1,1] w1, float[4,1,3,3] wd, float[4] bd, float[8,2,1,1] wg,
   float[2,8,1,1] w3) => (float[1,2,6,6] y) {{
    [expand] a = Conv (x, w1)
    r = Clip(a)
    [depthwise] d = Conv <group = 4, pads = [1,1,1,1]> (r, wd, bd)
    e = Relu(d)
    [grouped] g2 = Conv <group = 2> (e, wg)
    [project] y = Conv (g2, w3)
}}"""


def test_depthwise_follows_its_producer_and_groups_shrink():
    bd = seeded((4,), 5)
    bd[[2, 3]] = -1.0  # zero input + negative bias -> Relu gives 0: the removed channels are exactly zero
    # Group 1 of the grouped conv reads channels 2, 3 and writes 4..7: one class with expand 2, 3.
    model = make_model(DEPTHWISE, w1=zero_filters(seeded((4, 3, 1, 1), 1), (2, 3)), wd=seeded((4, 1, 3, 3), 2),
                       bd=bd, wg=zero_filters(seeded((8, 2, 1, 1), 3), (4, 5, 6, 7)),
                       w3=seeded((2, 8, 1, 1), 4))
    original = io.to_bytes(model)
    report = PruneChannelsPass(ratio=0.5)(model)
    nodes = {n.name: n for n in model.graph}
    assert nodes["depthwise"].attributes["group"].value == 2
    assert weight(model, "depthwise").shape == (2, 1, 3, 3)
    # The grouped conv (2 groups of 2 in / 4 out) couples whole groups with the depthwise channels.
    assert nodes["grouped"].attributes["group"].value == 1
    assert weight(model, "grouped").shape == (4, 2, 1, 1)
    assert weight(model, "project").shape == (2, 4, 1, 1)
    assert report.changes["channels_removed"] == 2 + 2 + 4
    check(model)
    assert_same_outputs(original, model)


FLATTEN_GEMM = f"""{HEADER}
g (float[2,3,3,3] x, float[4,3,3,3] w, float[5,36] wf, float[5] bf) => (float[2,5] y) {{
    [conv] c = Conv <pads = [1,1,1,1]> (x, w)
    r = Relu(c)
    f = {{FLATTEN}}
    [fc] y = Gemm <transB = 1> (f, wf, bf)
}}"""


@pytest.mark.parametrize(
    ("flatten", "rewritten"),
    [("Flatten <axis = 1> (r)", 0), ("Reshape(r, shape)", 1)],
    ids=["flatten", "reshape"],
)
def test_flatten_into_gemm_removes_h_times_w_features_per_channel(flatten, rewritten):
    text = FLATTEN_GEMM.replace("{FLATTEN}", flatten)
    if "shape" in flatten:
        text = text.replace("float[5] bf)", "float[5] bf, int64[2] shape)")
    wf = seeded((5, 36), 2)
    extra = {"shape": np.array([-1, 36], np.int64)} if "shape" in flatten else {}
    model = make_model(text, w=zero_filters(seeded((4, 3, 3, 3), 1), (0, 2)), wf=wf, bf=seeded((5,), 3), **extra)
    original = io.to_bytes(model)
    report = PruneChannelsPass(ratio=0.5)(model)
    features = [f for c in (1, 3) for f in range(c * 9, c * 9 + 9)]
    np.testing.assert_array_equal(weight(model, "fc"), wf[:, features])
    assert report.changes.get("reshapes_to_flatten", 0) == rewritten
    assert report.skipped == {"channel_reaches_output": 5}
    check(model)
    assert_same_outputs(original, model)


def test_channels_reaching_a_graph_output_are_kept():
    text = f"""{HEADER}
    g (float[1,3,4,4] x, float[4,3,1,1] w) => (float[1,4,4,4] y) {{
        c = Conv(x, w)
        y = Relu(c)
    }}"""
    model = make_model(text, w=seeded((4, 3, 1, 1)))
    before = ir.to_onnx_text(model)
    report = PruneChannelsPass(ratio=0.5)(model)
    assert not report.modified and report.skipped == {"channel_reaches_output": 4}
    assert ir.to_onnx_text(model) == before


def test_channel_shuffle_is_left_unpruned():
    text = f"""{HEADER}
    g (float[1,3,4,4] x, float[4,3,1,1] w1, float[2,4,1,1] w2, int64[5] s1, int64[4] s2) => (float[1,2,4,4] y) {{
        a = Conv(x, w1)
        b = Reshape(a, s1)
        t = Transpose <perm = [0,2,1,3,4]> (b)
        c = Reshape(t, s2)
        y = Conv(c, w2)
    }}"""
    model = make_model(text, w1=seeded((4, 3, 1, 1)), w2=seeded((2, 4, 1, 1)),
                       s1=np.array([1, 2, 2, 4, 4], np.int64), s2=np.array([1, 4, 4, 4], np.int64))
    report = PruneChannelsPass(ratio=0.5)(model)
    assert not report.modified
    assert report.skipped["channel_shuffle"] == 4


def test_round_to_keeps_multiples():
    text = f"""{HEADER}
    g (float[1,3,4,4] x, float[16,3,1,1] w1, float[2,16,1,1] w2) => (float[1,2,4,4] y) {{
        [conv1] a = Conv (x, w1)
        y = Conv(a, w2)
    }}"""
    model = make_model(text, w1=seeded((16, 3, 1, 1)), w2=seeded((2, 16, 1, 1)))
    report = PruneChannelsPass(ratio=0.6, round_to=8)(model)  # 9 would go; 7 kept -> rounded up to 8
    assert report.details["layers"]["conv1"] == {"channels": 16, "kept": 8}
    check(model)


def test_layers_option_restricts_and_global_scope_ranks_across_layers():
    wa, wb = seeded((3, 2, 3, 3), 1, scale=0.01), seeded((5, 2, 1, 1), 2)
    model = make_model(CONCAT, wa=wa, wb=wb, wc=seeded((2, 8, 1, 1), 3))
    report = PruneChannelsPass(ratio=0.5, layers=("conv_b",))(model)
    assert report.details["layers"]["conv_a"]["kept"] == 3 and report.details["layers"]["conv_b"]["kept"] == 3
    assert report.skipped["layer_not_selected"] == 3 + 2  # conv_a, and conv_c (whose output is the graph output)
    model = make_model(CONCAT, wa=wa, wb=wb, wc=seeded((2, 8, 1, 1), 3))
    report = PruneChannelsPass(ratio=0.25, scope="global")(model)  # 2 of 8 groups, scores normalized per layer
    layers = report.details["layers"]
    assert layers["conv_a"]["kept"] + layers["conv_b"]["kept"] == 6
    check(model)


@pytest.mark.parametrize(
    "options",
    [{"ratio": 0.0}, {"ratio": 1.0}, {"ratio": -0.5}, {"ratio": 1.5}, {"round_to": 0}, {"max_ratio": 1.0},
     {"reconstruct": True}, {"criterion": "activation"}, {"criterion": "taylor"}, {"ridge": -1.0}],
)
def test_bad_options_are_config_errors(options):
    with pytest.raises(PassConfigError):
        PruneChannelsPass(**options)


def test_unknown_layer_name_is_a_config_error():
    model = conv_bn_model()
    with pytest.raises(PassConfigError, match="nope"):
        PruneChannelsPass(layers=("conv1", "nope"))(model)


def test_nothing_prunable_is_a_precondition_error():
    text = f"""{HEADER}
    g (float[1,4] x) => (float[1,4] y) {{
        y = Relu(x)
    }}"""
    with pytest.raises(ir.passes.PreconditionError):
        PruneChannelsPass()(ir.from_onnx_text(text))
    with pytest.raises(InputError):
        Pipeline([PruneChannelsPass()]).run(ir.from_onnx_text(text))


IF_MODEL = f"""{HEADER}
g (float[1,3,4,4] x, float[4,3,1,1] w1, float[2,4,1,1] w2, float[2,4,1,1] w3, bool cond) => (float[1,2,4,4] y) {{
    [conv1] a = Conv (x, w1)
    y = If (cond) <
        then_branch = then_g () => (float[1,2,4,4] t) {{ t = Conv(a, w2) }},
        else_branch = else_g () => (float[1,2,4,4] e) {{ e = Conv(a, w3) }}
    >
}}"""


def test_channels_read_inside_if_bodies_are_left_whole():
    model = ir.from_onnx_text(IF_MODEL)
    arrays = {"w1": seeded((4, 3, 1, 1)), "w2": seeded((2, 4, 1, 1), 1), "w3": seeded((2, 4, 1, 1), 2)}
    for name, array in arrays.items():
        value = next(v for v in model.graph.inputs if v.name == name)
        model.graph.inputs.remove(value)
        value.const_value = ir.tensor(array, name=name)
        model.graph.register_initializer(value)
    report = PruneChannelsPass(ratio=0.5)(model)
    assert not report.modified
    assert report.skipped["in_subgraph"] == 4 + 2  # conv1's channels, and the two convs inside the bodies


# ------------------------------------------------------------------------------------------ real models
def _run_and_check(original: bytes, model: ir.Model) -> None:
    check(model)
    feeds = random_feeds(original)
    for expected, actual in zip(run_ort(original, feeds), run_ort(model, feeds), strict=True):
        assert expected.shape == actual.shape
        assert np.all(np.isfinite(actual))


@pytest.mark.parametrize("name", ["resnet18", "mobilenetv2"])
def test_zoo_models_shrink_and_keep_output_shapes(name):
    models = pytest.importorskip("models")
    try:
        path = models.ensure(name)
    except Exception as error:  # export needs torch
        pytest.skip(f"cannot export {name}: {error}")
    from sftonnx.analysis import UNKNOWN_SHAPE, count_macs, parameter_stats

    model = io.load(path)
    original = io.to_bytes(model)
    macs_before = sum(v for k, v in count_macs(model).items() if k != UNKNOWN_SHAPE)
    params_before = parameter_stats(model)[0]
    report = PruneChannelsPass(ratio=0.5)(model)
    _run_and_check(original, model)
    macs_after = sum(v for k, v in count_macs(model).items() if k != UNKNOWN_SHAPE)
    # Inner layers lose half their inputs and half their outputs: about a quarter of the work remains.
    assert macs_after < 0.35 * macs_before
    assert parameter_stats(model)[0] < 0.35 * params_before
    assert report.skipped == {"channel_reaches_output": 10}


LIGHT = {path.stem: path for path in LIGHT_MODELS}


@pytest.mark.slow
@pytest.mark.parametrize(
    ("name", "expected"),
    [("light_densenet121", "pruned"), ("light_inception_v1", "pruned"), ("light_inception_v2", "pruned"),
     ("light_squeezenet", "pruned"), ("light_shufflenet", "channel_shuffle")],
)
def test_light_models_with_concat_and_shuffle(name, expected):
    from sftonnx.passes.cleanup import SimplifyPass

    model = io.load(str(LIGHT[name]))
    SimplifyPass()(model)  # their weights are ConstantOfShape outputs until folded
    original = io.to_bytes(model)
    report = PruneChannelsPass(ratio=0.5)(model)
    _run_and_check(original, model)
    if expected == "pruned":
        assert report.changes["channels_removed"] > 0
    else:  # the shuffled channels (and everything coupled to them) stay: safe, and said so
        assert report.skipped["channel_shuffle"] > 0
