"""Reconstruction (prune-channels{reconstruct=true}) and bias compensation: formulas, exact recovery of a
linearly redundant channel, real accuracy on the digits CNN, and an end-to-end pipeline run."""

from __future__ import annotations

import pathlib

import numpy as np
import pytest

from sftonnx import io
from sftonnx.api import optimize
from sftonnx.passes.pruning import PruneChannelsPass
from sftonnx.passes.pruning.reconstruction import removed_contribution_conv, removed_contribution_matmul
from sftonnx.verify import Budget
from tests.helpers import make_model, random_feeds, run_ort, seeded

HEADER = '<ir_version: 8, opset_import: ["" : 17]>'
MODELS = pathlib.Path(__file__).resolve().parents[3] / "models" / "onnx"
DIGITS = str(MODELS / "digits_cnn.onnx")
DIGITS_TEST = str(MODELS / "digits_test.npz")
DIGITS_CALIB = str(MODELS / "digits_calib.npz")


def test_removed_contribution_formulas_match_brute_force():
    weight, mean = seeded((3, 5, 2, 2)), seeded((5,), 1)
    keep = np.array([0, 3])
    x = np.broadcast_to(mean[:, None, None], (5, 2, 2))  # a constant input equal to the means
    full = np.einsum("ocij,cij->o", weight, x)
    kept = np.einsum("ocij,cij->o", weight[:, keep], x[keep])
    np.testing.assert_allclose(removed_contribution_conv(weight, mean, keep), full - kept, rtol=1e-5)
    kn = seeded((5, 4), 2)
    np.testing.assert_allclose(removed_contribution_matmul(kn, mean, keep), mean @ kn - mean[keep] @ kn[keep],
                               rtol=1e-5, atol=1e-6)


LINEAR = f"""{HEADER}
g (float[8,6] x, float[6,4] w1, float[4] b1, float[3,4] w2, float[3] b2) => (float[8,3] y) {{
    h = MatMul(x, w1)
    hb = Add(h, b1)
    y = Gemm <transB = 1> (hb, w2, b2)
}}"""


def test_reconstruction_recovers_a_linearly_redundant_feature_exactly():
    w1 = seeded((6, 4), 1)
    w1[:, 3] = 0.05 * w1[:, 0] - 0.05 * w1[:, 1]  # feature 3: smallest norm, a combination of 0 and 1
    arrays = dict(w1=w1, b1=np.zeros(4, np.float32), w2=seeded((3, 4), 2), b2=seeded((3,), 3))
    original = io.to_bytes(make_model(LINEAR, **arrays))
    calibration = [random_feeds(original, seed) for seed in range(4)]
    plain = make_model(LINEAR, **arrays)
    PruneChannelsPass(ratio=0.25, compensate_bias=False)(plain)
    model = make_model(LINEAR, **arrays)
    report = PruneChannelsPass(ratio=0.25, reconstruct=True, ridge=0.0, calibration_data=calibration)(model)
    assert report.changes["channels_removed"] == 1 and report.changes["layers_reconstructed"] == 1
    feeds = random_feeds(original, seed=9)
    expected = run_ort(original, feeds)[0]
    assert np.abs(run_ort(plain, feeds)[0] - expected).max() > 1e-2
    np.testing.assert_allclose(run_ort(model, feeds)[0], expected, atol=1e-4, rtol=1e-3)
    error = next(iter(report.details["reconstruction"].values()))
    assert error["error_after"] < 1e-4 < error["error_before"]


def _accuracy(model) -> float:
    data = np.load(DIGITS_TEST)
    return float((run_ort(model, {"input": data["input"]})[0].argmax(axis=1) == data["labels"]).mean())


@pytest.mark.parametrize("ratio", [0.3, 0.5])
def test_reconstruction_recovers_digits_accuracy(ratio):
    baseline = _accuracy(io.load(DIGITS))
    plain = io.load(DIGITS)
    PruneChannelsPass(ratio=ratio, compensate_bias=False)(plain)
    rebuilt = io.load(DIGITS)
    report = PruneChannelsPass(ratio=ratio, reconstruct=True, calibration_data=DIGITS_CALIB)(rebuilt)
    assert report.changes["layers_reconstructed"] == 2
    assert _accuracy(rebuilt) >= baseline - 0.01
    assert _accuracy(rebuilt) >= _accuracy(plain)
    if ratio == 0.5:
        assert _accuracy(rebuilt) > _accuracy(plain) + 0.01


def test_pipeline_end_to_end_on_digits():
    pruner = PruneChannelsPass(ratio=0.5, reconstruct=True, calibration_data=DIGITS_CALIB)
    result = optimize(DIGITS, passes=[pruner], data=DIGITS_TEST, budget=Budget(min_cosine=0.99), verify_each=True)
    row = result.report.rows[0]
    assert row.status == "ok" and row.changes["channels_removed"] == 64
    assert row.after.params < 0.4 * row.before.params and row.after.macs < 0.4 * row.before.macs
    assert result.verification.passed
