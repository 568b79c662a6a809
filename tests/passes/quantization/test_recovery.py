"""Accuracy recovery options of quantize: bias correction, equalization, SmoothQuant, mixed precision."""

from __future__ import annotations

import numpy as np
import pytest

from sftonnx import io
from sftonnx.passes.quantization import QuantizeStaticPass
from sftonnx.passes.quantization.recovery import equalize_cross_layer, output_error
from tests.helpers import assert_same_outputs, make_model, seeded
from tests.passes.quantization.support import feeds_for, mean_abs_error, min_cosine

HEADER = '<ir_version: 8, opset_import: ["" : 17]>'

GEMM = f"""{HEADER}
g (float[N,64] x) => (float[N,16] y) {{ y = Gemm <transB = 1> (x, w, b) }}"""

CONVS = f"""{HEADER}
g (float[N,4,8,8] x) => (float[N,4,8,8] y) {{
    a = Conv <pads = [1, 1, 1, 1]> (x, w1, b1)
    r = Relu(a)
    y = Conv <pads = [1, 1, 1, 1]> (r, w2, b2)
}}"""

MLP = f"""{HEADER}
g (float[N,32] x) => (float[N,16] y) {{
    h = MatMul(x, w1)
    y = MatMul(h, w2)
}}"""


def gemm_model():
    weight = seeded((16, 64), scale=0.05)
    weight[:, 0] = 3.0  # one large column: a coarse per-tensor scale with biased rounding
    return make_model(GEMM, w=weight, b=seeded((16,), seed=1))


def conv_model():
    w1 = seeded((4, 4, 3, 3))
    w1[0] *= 30.0
    w1[1] *= 0.05
    return make_model(CONVS, w1=w1, b1=seeded((4,), seed=1), w2=seeded((4, 4, 3, 3), seed=3), b2=seeded((4,), seed=2))


def test_bias_correction_reduces_error():
    calib = feeds_for(gemm_model(), batches=8, low=0.0, high=1.0)
    test = feeds_for(gemm_model(), batches=4, seed=9, low=0.0, high=1.0)
    errors = {}
    for corrected in (False, True):
        model = gemm_model()
        original = io.to_bytes(model)
        report = QuantizeStaticPass(calibration_data=calib, per_channel=False, bias_correction=corrected)(model)
        errors[corrected] = mean_abs_error(original, model, test)
        assert report.changes["biases_corrected"] == int(corrected)
    assert errors[True] < 0.75 * errors[False], errors


def test_cross_layer_equalization_is_exact_and_reduces_error():
    model = conv_model()
    original = io.to_bytes(model)
    assert equalize_cross_layer(model) > 0
    assert_same_outputs(original, model, atol=1e-3, rtol=1e-3)
    calib = feeds_for(conv_model(), batches=4)
    test = feeds_for(conv_model(), batches=2, seed=9)
    errors = {}
    for equalize in (False, True):
        model = conv_model()
        QuantizeStaticPass(calibration_data=calib, per_channel=False, equalize=equalize)(model)
        errors[equalize] = mean_abs_error(original, model, test)
    assert errors[True] < 0.95 * errors[False], errors


def test_smooth_quant_moves_outlier_channels_into_weights():
    def outliers(seed):
        feeds = feeds_for(make_model(MLP, w1=seeded((32, 16)), w2=seeded((16, 16))), batches=4, seed=seed)
        for feed in feeds:
            feed["x"][:, 3] *= 100.0
        return feeds

    calib, test = outliers(0), outliers(9)
    errors = {}
    for alpha in (None, 0.5):
        model = make_model(MLP, w1=seeded((32, 16)), w2=seeded((16, 16), seed=1))
        original = io.to_bytes(model)
        report = QuantizeStaticPass(calibration_data=calib, smooth_alpha=alpha)(model)
        errors[alpha] = mean_abs_error(original, model, test)
        # x (32 channels, read by the first MatMul) and h (16, read by the second)
        assert report.changes["channels_smoothed"] == (48 if alpha is not None else 0)
    assert errors[0.5] < errors[None], errors


def test_mixed_precision_keeps_the_most_sensitive_layer_float():
    w2 = seeded((16, 16), seed=1, scale=0.1)
    w2[0, 0] = 40.0  # per-tensor: this layer's weights quantize terribly

    def model():
        return make_model(MLP, w1=seeded((32, 16)), w2=w2)

    calib = feeds_for(model(), batches=4)
    plain = model()
    original = io.to_bytes(plain)
    QuantizeStaticPass(calibration_data=calib, per_channel=False)(plain)
    plain_error = 1 - min_cosine(original, plain, calib)
    mixed = model()
    report = QuantizeStaticPass(calibration_data=calib, per_channel=False, max_error=plain_error / 4)(mixed)
    mixed_error = 1 - min_cosine(original, mixed, calib)
    sensitivity = report.details["sensitivity"]
    assert list(sensitivity["kept_float"]) == ["MatMul_1"]
    assert report.details["float_nodes"]["MatMul_1"] == "kept_float_for_accuracy"
    assert report.skipped["kept_float_for_accuracy"] == 1 and report.changes["weights_quantized"] == 1
    assert mixed_error < plain_error / 2  # measured per batch here, over all samples by the pass
    assert sensitivity["error_final"] <= plain_error / 4


@pytest.mark.parametrize(
    ("metric", "actual", "expected"),
    [("cosine", [2.0, 2.0], 0.0), ("max_abs", [2.0, 1.0], 1.0), ("mean_abs", [1.5, 1.5], 0.5)],
)
def test_output_error_metrics(metric, actual, expected):
    reference = [[np.array([1.0, 1.0])]]
    assert output_error(reference, [[np.array(actual)]], metric) == pytest.approx(expected)
