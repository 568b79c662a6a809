"""QuantizeStaticPass (quantize): QDQ placement, weight/bias encoding, shared scales, exclusions, kernels."""

from __future__ import annotations

import pathlib

import numpy as np
import onnx_ir as ir
import pytest

from sftonnx import io, verify
from sftonnx.errors import PassConfigError
from sftonnx.passes.quantization import QuantizeStaticPass, qdq
from tests.helpers import make_model, seeded
from tests.passes.quantization.support import (
    DIGITS_MAX_DROP,
    INT8_MIN_COSINE,
    check_model,
    feeds_for,
    min_cosine,
    ops,
    ort_ops,
)

HEADER = '<ir_version: 8, opset_import: ["" : 17]>'
MODELS = pathlib.Path(__file__).resolve().parents[3] / "models" / "onnx"

CONV = f"""{HEADER}
g (float[N,3,8,8] x) => (float[N,4,8,8] y) {{
    c = Conv <pads = [1, 1, 1, 1]> (x, w, b)
    y = Relu(c)
}}"""

CONV_TRANSPOSE = f"""{HEADER}
g (float[N,4,5,5] x) => (float[N,6,10,10] y) {{
    y = ConvTranspose <strides = [2, 2]> (x, w, b)
}}"""

GEMM = f"""{HEADER}
g (float[N,5] x) => (float[N,3] y) {{
    y = Gemm <transB = {{trans_b}}> (x, w, b)
}}"""

MATMUL = f"""{HEADER}
g (float[N,5] x) => (float[N,3] y) {{
    y = MatMul(x, w)
}}"""

CONCAT = f"""{HEADER}
g (float[N,3,8,8] x) => (float[N,6,8,8] y) {{
    a = Conv(x, w1)
    ra = Relu(a)
    b = Conv(x, w2)
    rb = Relu(b)
    cat = Concat <axis = 1> (ra, rb)
    y = Conv(cat, w3)
}}"""

MAXPOOL = f"""{HEADER}
g (float[N,3,8,8] x) => (float[N,4,4,4] y) {{
    a = Conv(x, w1)
    r = Relu(a)
    p = MaxPool <kernel_shape = [2, 2], strides = [2, 2]> (r)
    y = Conv(p, w2)
}}"""

SOFTMAX = f"""{HEADER}
g (float[N,5] x) => (float[N,3] y) {{
    h = MatMul(x, w)
    y = Softmax(h)
}}"""

DEGENERATE = f"""{HEADER}
g (float[N,3,8,8] x) => (float[N,4,8,8] y, float[N,4,8,8] z) {{
    y = Conv(x, zero_w)
    z = Conv(x, w)
}}"""

SUM_MODEL = f"""{HEADER}
g (float[N,3,8,8] x) => (float[N,4,8,8] y) {{
    a = Conv <pads = [1, 1, 1, 1]> (x, w)
    y = Sum(a, a)
}}"""


def quantize(model, **options):
    options.setdefault("calibration_data", feeds_for(model))
    return QuantizeStaticPass(**options)(model)


def dq_of(model: ir.Model, node: ir.Node, index: int) -> ir.Node:
    producer = node.inputs[index].producer()
    assert producer is not None and producer.op_type == "DequantizeLinear"
    return producer


def test_conv_weight_per_channel_axis0_bias_int32_and_relu_folded():
    model = make_model(CONV, w=seeded((4, 3, 3, 3)), b=seeded((4,), seed=1))
    original = io.to_bytes(model)
    report = quantize(model)
    assert report.changes == {"nodes_quantized": 2, "activations_quantized": 2, "weights_quantized": 1,
                              "biases_quantized": 1, "nodes_renamed": 2}  # the two nodes had no names
    check_model(model)
    conv = next(n for n in model.graph if n.op_type == "Conv")
    weight_dq = dq_of(model, conv, 1)
    assert weight_dq.attributes["axis"].value == 0
    assert weight_dq.inputs[0].const_value.dtype == ir.DataType.INT8
    assert weight_dq.inputs[1].const_value.numpy().shape == (4,)
    # no float copy of the weight is left
    assert "w" not in model.graph.initializers and "b" not in model.graph.initializers
    bias_dq = dq_of(model, conv, 2)
    assert bias_dq.inputs[0].const_value.dtype == ir.DataType.INT32
    input_scale = dq_of(model, conv, 0).inputs[1].const_value.numpy()
    weight_scale = weight_dq.inputs[1].const_value.numpy()
    bias_scale = bias_dq.inputs[1].const_value.numpy()
    np.testing.assert_array_equal(bias_scale, (input_scale * weight_scale).astype(np.float32))
    # the Relu is folded: Conv output feeds Relu directly, one Q after the Relu (zero point 0 = qmin)
    assert conv.outputs[0].consumers()[0].op_type == "Relu"
    assert ops(model)["QuantizeLinear"] == 2
    assert min_cosine(original, model, feeds_for(model, seed=5)) >= INT8_MIN_COSINE
    assert ort_ops(model)["QLinearConv"] == 1


def test_conv_transpose_weight_axis_is_1():
    model = make_model(CONV_TRANSPOSE, w=seeded((4, 6, 3, 3)), b=seeded((6,), seed=1))
    original = io.to_bytes(model)
    report = quantize(model, check_kernels=False)
    assert report.changes["weights_quantized"] == 1
    conv = next(n for n in model.graph if n.op_type == "ConvTranspose")
    weight_dq = dq_of(model, conv, 1)
    assert weight_dq.attributes["axis"].value == 1
    assert weight_dq.inputs[1].const_value.numpy().shape == (6,)
    assert dq_of(model, conv, 2).inputs[1].const_value.numpy().shape == (6,)
    assert min_cosine(original, model, feeds_for(model, seed=5)) >= INT8_MIN_COSINE


@pytest.mark.parametrize(("trans_b", "shape", "axis"), [(1, (3, 5), 0), (0, (5, 3), 1)])
def test_gemm_weight_axis_follows_trans_b(trans_b, shape, axis):
    model = make_model(GEMM.replace("{trans_b}", str(trans_b)), w=seeded(shape), b=seeded((3,), seed=2))
    original = io.to_bytes(model)
    report = quantize(model)
    assert report.changes["biases_quantized"] == 1
    gemm = next(n for n in model.graph if n.op_type == "Gemm")
    assert dq_of(model, gemm, 1).attributes["axis"].value == axis
    assert min_cosine(original, model, feeds_for(model, seed=5)) >= INT8_MIN_COSINE


def test_matmul_weight_axis_is_last_and_per_tensor_on_request():
    model = make_model(MATMUL, w=seeded((5, 3)))
    quantize(model)
    matmul = next(n for n in model.graph if n.op_type == "MatMul")
    assert dq_of(model, matmul, 1).attributes["axis"].value == 1
    model = make_model(MATMUL, w=seeded((5, 3)))
    quantize(model, per_channel=False)
    weight_dq = dq_of(model, next(n for n in model.graph if n.op_type == "MatMul"), 1)
    assert "axis" not in weight_dq.attributes and weight_dq.inputs[1].const_value.numpy().shape == ()


def test_concat_inputs_and_output_share_one_scale():
    model = make_model(CONCAT, w1=seeded((3, 3, 1, 1)), w2=seeded((3, 3, 1, 1), seed=1, scale=5.0),
                       w3=seeded((6, 6, 1, 1), seed=2))
    original = io.to_bytes(model)
    quantize(model)
    concat = next(n for n in model.graph if n.op_type == "Concat")
    scales = {dq_of(model, concat, i).inputs[1].name for i in range(2)}
    out_q = concat.outputs[0].consumers()[0]
    assert out_q.op_type == "QuantizeLinear"
    scales.add(out_q.inputs[1].name)
    assert len(scales) == 1
    # x, relu a, relu b, concat, final conv output: one pair each; no requantize pairs
    assert ops(model)["QuantizeLinear"] == 5
    assert min_cosine(original, model, feeds_for(model, seed=5)) >= INT8_MIN_COSINE
    assert ort_ops(model)["QLinearConcat"] == 1


def test_maxpool_shares_its_input_scale_and_runs_on_int8():
    model = make_model(MAXPOOL, w1=seeded((4, 3, 1, 1)), w2=seeded((4, 4, 1, 1), seed=1))
    quantize(model)
    pool = next(n for n in model.graph if n.op_type == "MaxPool")
    out_q = pool.outputs[0].consumers()[0]
    assert dq_of(model, pool, 0).inputs[1] is out_q.inputs[1]
    assert ops(model)["QuantizeLinear"] == 4  # x, relu output, maxpool output, final conv output
    optimized = ort_ops(model)
    assert optimized["QLinearConv"] == 2 and optimized["DequantizeLinear"] == 1  # only the final output


@pytest.mark.parametrize(
    "options",
    [{"exclude_nodes": ("second",)}, {"exclude_op_types": ("MatMul",)}, {"exclude_pattern": "^sec"}],
)
def test_exclusion_by_name_type_or_pattern(options):
    text = f"""{HEADER}
g (float[N,5] x) => (float[N,3] y) {{
    h = MatMul(x, w1)
    y = MatMul(h, w2)
}}"""
    model = make_model(text, w1=seeded((5, 5)), w2=seeded((5, 3), seed=1))
    list(model.graph)[1].name = "second"
    report = quantize(model, **options)
    assert report.skipped["excluded"] == (2 if "exclude_op_types" in options else 1)
    second = next(n for n in model.graph if n.name == "second")
    assert second.inputs[1].name == "w2"  # float weight untouched
    assert report.details["float_nodes"]["second"] == "excluded"


def test_degenerate_activation_stays_float_and_the_rest_is_quantized():
    model = make_model(DEGENERATE, zero_w=np.zeros((4, 3, 1, 1), np.float32), w=seeded((4, 3, 1, 1)))
    report = quantize(model, method="entropy")
    assert report.skipped["degenerate_range"] == 1
    convs = [n for n in model.graph if n.op_type == "Conv"]
    zero_conv = next(n for n in convs if n.inputs[1].name == "zero_w")
    assert zero_conv.name in report.details["float_nodes"]
    other = next(n for n in convs if n is not zero_conv)
    assert dq_of(model, other, 1).inputs[0].const_value.dtype == ir.DataType.INT8
    assert [o.name for o in model.graph.outputs] == ["y", "z"]


def test_unquantizable_ops_are_listed_not_dropped():
    model = make_model(SOFTMAX, w=seeded((5, 3)))
    report = quantize(model)
    assert report.details["float_op_types"] == ["Softmax"]
    assert report.skipped["op_not_quantizable"] == 1
    assert ops(model)["Softmax"] == 1


def test_no_calibration_data_is_an_error_unless_random_allowed():
    with pytest.raises(PassConfigError, match="no calibration data"):
        QuantizeStaticPass()
    model = make_model(MATMUL, w=seeded((5, 3)))
    report = QuantizeStaticPass(allow_random=True)(model)
    assert report.changes["weights_quantized"] == 1
    assert "random" in report.details["calibration"] and report.details["warnings"]


@pytest.mark.parametrize(
    "options", [{"method": "kl"}, {"activation": "int4"}, {"percentile": 20.0}, {"exclude_pattern": "("},
                {"smooth_alpha": 2.0}, {"target": "npu"}],
)
def test_bad_options(options):
    with pytest.raises(PassConfigError):
        QuantizeStaticPass(calibration_data=[], **options)


def test_int8_symmetric_activations():
    model = make_model(CONV, w=seeded((4, 3, 3, 3)), b=seeded((4,), seed=1))
    original = io.to_bytes(model)
    quantize(model, activation="int8")
    zero_points = [n.inputs[2].const_value.numpy() for n in model.graph if n.op_type == "QuantizeLinear"]
    assert all(z.dtype == np.int8 and z == 0 for z in zero_points)
    assert min_cosine(original, model, feeds_for(model, seed=5)) >= INT8_MIN_COSINE
    assert ort_ops(model)["QLinearConv"] == 1


def test_reduce_range_without_vnni(monkeypatch):
    qdq.cpu_has_vnni.cache_clear()
    monkeypatch.setattr(qdq, "cpu_has_vnni", lambda: False)
    model = make_model(MATMUL, w=seeded((5, 3)))
    report = quantize(model)
    assert report.details["reduce_range"] is True
    weight = dq_of(model, next(n for n in model.graph if n.op_type == "MatMul"), 1).inputs[0].const_value.numpy()
    assert weight.max() <= 63 and weight.min() >= -64


def test_target_cuda_warns():
    model = make_model(MATMUL, w=seeded((5, 3)))
    report = quantize(model, target="cuda")
    assert any("CUDA" in w for w in report.details["warnings"])


def test_slower_int8_model_is_rolled_back(monkeypatch):
    monkeypatch.setattr(qdq, "measure_latency", lambda sources, feeds, **_: [1e-3, 2e-3])
    model = make_model(MATMUL, w=seeded((5, 3)))
    text = ir.to_onnx_text(model)
    report = quantize(model, ensure_faster=True)
    assert not report.modified and report.skipped["slower_than_float"] == 1
    assert report.details["latency_ms"] == {"float": 1.0, "int8": 2.0}
    assert ir.to_onnx_text(model) == text


def test_nodes_onnxruntime_runs_in_float_are_dequantized(monkeypatch):
    """A node onnxruntime leaves as DQ -> op -> Q loses its pairs (check_kernels)."""
    model = make_model(MAXPOOL, w1=seeded((4, 3, 1, 1)), w2=seeded((4, 4, 1, 1), seed=1))
    real = qdq.float_islands
    first = {}

    def pretend_second_conv_is_float(graph, names):
        islands, int_ops, float_ops = real(graph, names)
        if not first:
            first["done"] = True
            islands = islands | {n for n in names if n.startswith("node_Conv") and n.endswith("3")}
        return islands, int_ops, float_ops

    for index, node in enumerate(model.graph):
        node.name = f"node_{node.op_type}_{index}"
    monkeypatch.setattr(qdq, "float_islands", pretend_second_conv_is_float)
    report = quantize(model)
    assert report.skipped["not_int8_in_onnxruntime"] == 1
    last_conv = next(n for n in model.graph if n.name == "node_Conv_3")
    assert last_conv.inputs[1].name == "w2"


def test_unknown_intermediate_shapes_and_subgraphs_are_handled():
    text = f"""{HEADER}
g (float[N,5] x, bool c) => (float[N,3] y, float[N,5] z) {{
    y = MatMul(x, w)
    z = If(c) <then_branch = t () => (float[N,5] o) {{ o = Relu(x) }},
               else_branch = e () => (float[N,5] o) {{ o = Neg(x) }}>
}}"""
    model = make_model(text, w=seeded((5, 3)))
    feeds = [{"x": seeded((4, 5), seed=i), "c": np.array(True)} for i in range(3)]
    original = io.to_bytes(model)
    report = quantize(model, calibration_data=feeds)
    assert report.skipped["in_subgraph"] == 2 and report.changes["weights_quantized"] == 1
    assert min_cosine(original, model, feeds) >= INT8_MIN_COSINE


@pytest.fixture(scope="module")
def digits():
    path = MODELS / "digits_cnn.onnx"
    test = dict(np.load(MODELS / "digits_test.npz"))
    model = io.load(path)
    original = io.to_bytes(model)
    report = QuantizeStaticPass(calibration_data=str(MODELS / "digits_calib.npz"))(model)
    return original, model, report, test


def test_digits_int8_kernels_are_really_used(digits):
    _, model, report, _ = digits
    optimized = ort_ops(model)
    assert optimized["QLinearConv"] == 2 and optimized["QGemm"] == 1
    assert optimized["Conv"] == 0 and optimized["Gemm"] == 0
    assert report.details["int8_ops"] == {"QGemm": 1, "QLinearConv": 2}


def test_digits_int8_accuracy_within_0_3_points(digits):
    original, model, _, test = digits
    labels = test.pop("labels") if "labels" in test else test["labels"]
    accuracy = {}
    for label, source in (("fp32", original), ("int8", io.to_bytes(model))):
        logits = verify.make_session(source).run(None, {"input": test["input"]})[0]
        accuracy[label] = float((logits.argmax(axis=1) == labels).mean())
    print(f"digits top-1: fp32 {accuracy['fp32']:.4f}, int8 {accuracy['int8']:.4f}")
    assert accuracy["int8"] >= accuracy["fp32"] - DIGITS_MAX_DROP / 100


def test_conv_transpose_that_onnxruntime_runs_in_float_is_dequantized():
    """onnxruntime has no int8 fusion for this ConvTranspose: check_kernels removes its Q/DQ pairs."""
    model = make_model(CONV_TRANSPOSE, w=seeded((4, 6, 3, 3)), b=seeded((6,), seed=1))
    original = ir.to_proto(model).SerializeToString()
    report = quantize(model)
    assert report.skipped == {"not_int8_in_onnxruntime": 1} and not report.modified
    assert ops(model)["QuantizeLinear"] == 0
    assert ir.to_proto(model).SerializeToString() == original  # declined: the unnamed node was not renamed


def test_renaming_and_sum_to_add_are_counted():
    """The preparation steps change the model, so they are counted like any other change."""
    model = make_model(SUM_MODEL, w=seeded((4, 3, 3, 3)))
    report = quantize(model)
    assert report.changes["nodes_renamed"] == 2 and report.changes["sums_rewritten_as_add"] == 1
    assert report.changes["nodes_quantized"] >= 2 and report.modified
    assert ops(model)["Sum"] == 0


def test_pipeline_end_to_end_with_budget():
    from sftonnx.api import optimize
    from sftonnx.verify import Budget

    model = make_model(CONCAT, w1=seeded((3, 3, 1, 1)), w2=seeded((3, 3, 1, 1), seed=1),
                       w3=seeded((6, 6, 1, 1), seed=2))
    calibration = feeds_for(model)
    # Verified on held-back feeds of the same distribution (lossy passes need data to be judged on).
    result = optimize(model, passes=[QuantizeStaticPass(calibration_data=calibration[:-1])],
                      data=calibration[-1:], budget=Budget(min_cosine=INT8_MIN_COSINE))
    assert result.verification.passed
    assert result.report.rows[0].changes["nodes_quantized"] == 6
