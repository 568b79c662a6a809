"""QuantizeDynamicPass (quantize-dynamic): MatMul/Gemm with int8 weights, activations quantized at run time."""

from __future__ import annotations

import numpy as np
import onnx_ir as ir
import pytest

from sftonnx import io, verify
from sftonnx.errors import PassConfigError
from sftonnx.passes.quantization import QuantizeDynamicPass
from tests.helpers import make_model, seeded
from tests.passes.quantization.support import INT8_MIN_COSINE, check_model, feeds_for, min_cosine, ops, ort_ops

HEADER = '<ir_version: 8, opset_import: ["" : 17]>'

MLP = f"""{HEADER}
g (float[N,4,64] x) => (float[N,4,32] y) {{
    h = MatMul(x, w1)
    r = Relu(h)
    y = MatMul(r, w2)
}}"""

GEMM_AND_CONV = f"""{HEADER}
g (float[N,3,4,4] x, float[N,48] v) => (float[N,3,4,4] c, float[N,16] y) {{
    c = Conv(x, wc)
    y = Gemm <transB = 1, alpha = 0.5, beta = 2.0> (v, w, b)
}}"""


def test_matmuls_become_dynamic_int8_and_onnxruntime_fuses_them():
    model = make_model(MLP, w1=seeded((64, 32), scale=0.1), w2=seeded((32, 32), seed=1, scale=0.1))
    original = io.to_bytes(model)
    report = QuantizeDynamicPass()(model)
    assert report.changes == {"matmuls_quantized": 2, "weights_quantized": 2}
    check_model(model)
    counts = ops(model)
    assert counts["MatMulInteger"] == 2 and counts["DynamicQuantizeLinear"] == 2 and counts["MatMul"] == 0
    assert "w1" not in model.graph.initializers  # no float copy left
    assert [o.name for o in model.graph.outputs] == ["y"]
    assert report.details["int8_ops"] == {"DynamicQuantizeMatMul": 2}
    assert ort_ops(model)["DynamicQuantizeMatMul"] == 2
    assert min_cosine(original, model, feeds_for(model, seed=3)) >= INT8_MIN_COSINE


def test_gemm_alpha_beta_trans_b_and_conv_left_alone():
    model = make_model(GEMM_AND_CONV, wc=seeded((3, 3, 1, 1)), w=seeded((16, 48), seed=1), b=seeded((16,), seed=2))
    original = io.to_bytes(model)
    report = QuantizeDynamicPass(per_channel=False)(model)
    assert report.changes == {"gemms_quantized": 1, "weights_quantized": 1}
    assert report.skipped == {"conv_left_float": 1}
    assert ops(model)["Conv"] == 1 and ops(model)["ConvInteger"] == 0
    assert min_cosine(original, model, feeds_for(model, seed=3)) >= INT8_MIN_COSINE


def test_activation_weights_and_exclusions_are_skipped():
    text = f"""{HEADER}
g (float[N,8] x, float[8,8] w_in) => (float[N,8] y) {{
    h = MatMul(x, w_in)
    y = MatMul(h, w)
}}"""
    model = make_model(text, w=seeded((8, 8)))
    before = ir.to_onnx_text(model)
    report = QuantizeDynamicPass(exclude_op_types=("MatMul",))(model)
    assert not report.modified and report.skipped == {"excluded": 2}
    assert ir.to_onnx_text(model) == before
    report = QuantizeDynamicPass(min_weight_elements=100)(model)
    assert report.skipped == {"weight_not_constant": 1, "weight_too_small": 1}


def test_bad_options():
    with pytest.raises(PassConfigError):
        QuantizeDynamicPass(min_weight_elements=-1)
    with pytest.raises(PassConfigError):
        QuantizeDynamicPass(exclude_pattern="[")


def test_tiny_bert_dynamic_cosine():
    import models
    from sftonnx.passes.cleanup import SimplifyPass

    model = io.load(models.ensure("tiny_bert"))
    SimplifyPass()(model)  # weights are Transpose(constant) in the export
    original = io.to_bytes(model)
    report = QuantizeDynamicPass()(model)
    assert report.changes["weights_quantized"] >= 7
    ids = np.random.default_rng(0).integers(0, 1000, (16, 32)).astype(np.int64)
    expected = verify.make_session(original).run(None, {"input_ids": ids})
    actual = verify.make_session(io.to_bytes(model)).run(None, {"input_ids": ids})
    for e, a in zip(expected, actual, strict=True):
        e, a = e.ravel().astype(np.float64), a.ravel().astype(np.float64)
        assert e @ a / np.linalg.norm(e) / np.linalg.norm(a) >= 0.99


def test_old_opset_is_converted_first():
    """DynamicQuantizeLinear needs opset 11: an opset-9 model is upgraded, not broken (found on light_resnet50)."""
    model = make_model(
        """
<ir_version: 4, opset_import: ["" : 9]>
g (float[2, 64] x) => (float[2, 32] y) {
    y = MatMul(x, w)
}
""",
        w=seeded((64, 32)),
    )
    original = io.to_bytes(model)
    report = QuantizeDynamicPass()(model)
    assert report.changes["opset_upgraded"] == 1 and report.details["opset_converted"] == [9, 11]
    assert report.changes["matmuls_quantized"] == 1
    check_model(model)
    assert min_cosine(original, model, feeds_for(io.load(original))) >= INT8_MIN_COSINE


def test_old_opset_is_left_alone_when_nothing_is_quantized():
    """The opset conversion alone is no reason to change the model: a declining call restores it exactly."""
    model = make_model(
        """
<ir_version: 4, opset_import: ["" : 9]>
g (float[2, 64] x) => (float[2, 32] y) {
    y = MatMul(x, w)
}
""",
        w=seeded((64, 32)),
    )
    original = ir.to_proto(model).SerializeToString()
    report = QuantizeDynamicPass(exclude_op_types=("MatMul",))(model)
    assert not report.modified and report.skipped == {"excluded": 1} and "opset_converted" not in report.details
    assert ir.to_proto(model).SerializeToString() == original


def test_weight_behind_a_transpose_is_quantized_and_the_float_copy_dropped():
    """PyTorch's ``MatMul(x, Transpose(W))`` (left unfolded on external-data models) is read through."""
    text = f"""{HEADER}
g (float[N,4,64] x) => (float[N,4,32] y) {{
    wt = Transpose <perm = [1, 0]> (w)
    y = MatMul(x, wt)
}}"""
    model = make_model(text, w=seeded((32, 64), scale=0.1))
    original = io.to_bytes(model)
    report = QuantizeDynamicPass()(model)
    assert report.changes == {"matmuls_quantized": 1, "weights_quantized": 1}
    assert ops(model)["Transpose"] == 0 and "w" not in model.graph.initializers
    (quantized,) = [v for v in model.graph.initializers.values() if v.const_value.dtype == ir.DataType.INT8]
    assert quantized.const_value.shape == (64, 32)
    assert min_cosine(original, model, feeds_for(model, seed=3)) >= INT8_MIN_COSINE
