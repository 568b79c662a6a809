"""Input specs, shapes, user data and metrics."""

from __future__ import annotations

import numpy as np
import pytest

from sftonnx import verify
from sftonnx.errors import InputError
from tests.helpers import make_model, seeded

IMAGE = """
<ir_version: 8, opset_import: ["" : 18]>
g (float[batch, 3, H, W] image, int64[batch, 5] ids) => (float[batch, 3, H, W] y) {
    y = Relu(image)
}
"""


def specs():
    return verify.input_specs(make_model(IMAGE))


def test_defaults_for_dynamic_dims_are_stated():
    shapes, notes = verify.resolve_shapes(specs())
    assert shapes == {"image": (1, 3, 32, 32), "ids": (1, 5)}
    assert any("image: dynamic dimension 0 ('batch') set to 1" in n for n in notes)
    assert any("dimension 2 ('H') set to 32" in n for n in notes)


def test_input_shape_overrides():
    shapes, notes = verify.resolve_shapes(specs(), verify.parse_input_shapes(["image=2x3x64x48", "ids=2x5"]))
    assert shapes == {"image": (2, 3, 64, 48), "ids": (2, 5)} and notes == []


@pytest.mark.parametrize(
    ("arg", "message"),
    [
        ("image=2x3x64", "rank 3 given"),
        ("image=2x4x64x64", "dimension 1 is fixed to 3"),
        ("label=1x3", "not a model input"),
        ("image:1x3x2x2", "expects name="),
        ("image=0x3x2x2", "positive"),
    ],
)
def test_bad_input_shapes(arg, message):
    with pytest.raises(InputError, match=message):
        verify.resolve_shapes(specs(), verify.parse_input_shapes([arg]))


def test_npz_checks(tmp_path):
    good = tmp_path / "good.npz"
    np.savez(good, image=seeded((4, 3, 8, 8)), ids=np.zeros((4, 5), np.int32), labels=np.arange(4))
    data = verify.load_npz(good, specs(), allow_extra=["labels"])
    assert data["ids"].dtype == np.int64 and data["labels"].tolist() == [0, 1, 2, 3]
    missing = tmp_path / "missing.npz"
    np.savez(missing, image=seeded((4, 3, 8, 8)))
    with pytest.raises(InputError, match="no array for input 'ids'"):
        verify.load_npz(missing, specs())
    wrong = tmp_path / "wrong.npz"
    np.savez(wrong, image=seeded((4, 1, 8, 8)), ids=np.zeros((4, 5), np.int64))
    with pytest.raises(InputError, match="dimension 1 is 1, the model fixes it to 3"):
        verify.load_npz(wrong, specs())
    (tmp_path / "junk.npz").write_text("junk")
    with pytest.raises(InputError, match="cannot read"):
        verify.load_npz(tmp_path / "junk.npz", specs())


def test_metrics_and_limits():
    expected = [[np.array([[1.0, 2.0, 3.0], [3.0, 2.0, 1.0]], np.float32)]]
    close = [[expected[0][0] + 1e-6]]
    swapped = [[expected[0][0][::-1].copy()]]
    ok = verify.compare_outputs(["p"], expected, close, tolerance=verify.Tolerance())
    assert ok.passed and ok.outputs[0].top1_agreement == 1.0 and ok.outputs[0].max_abs < 1e-5
    bad = verify.compare_outputs(["p"], expected, swapped, tolerance=verify.Tolerance())
    assert not bad.passed and bad.outputs[0].top1_agreement == 0.0 and bad.outputs[0].max_abs == 2.0
    assert "beyond atol" in bad.failures[0]
    budget = verify.compare_outputs(["p"], expected, swapped, budget=verify.Budget(min_cosine=0.5))
    assert budget.passed and 0.5 < budget.outputs[0].cosine < 1.0
    shape = verify.compare_outputs(["p"], expected, [[expected[0][0][:1]]], tolerance=verify.Tolerance())
    assert not shape.passed and "shape" in shape.failures[0]


def test_nan_in_same_place_is_equal_and_new_nan_is_not():
    expected = [[np.array([np.nan, 1.0], np.float32)]]
    assert verify.compare_outputs(
        ["o"], expected, [[np.array([np.nan, 1.0], np.float32)]], tolerance=verify.Tolerance()
    ).passed
    assert not verify.compare_outputs(
        ["o"],
        [[np.array([0.0, 1.0], np.float32)]],
        [[np.array([np.nan, 1.0], np.float32)]],
        tolerance=verify.Tolerance(),
    ).passed


def test_calibration_feeds_from_iterables_are_checked():
    good = list(verify.calibration_feeds([{"image": seeded((2, 3, 8, 8)), "ids": np.zeros((2, 5))}], specs()))
    assert good[0]["ids"].dtype == np.int64
    with pytest.raises(InputError, match="calibration batch 0: 'image' dimension 1 is 4"):
        list(verify.calibration_feeds([{"image": seeded((2, 4, 8, 8)), "ids": np.zeros((2, 5))}], specs()))
    with pytest.raises(InputError, match="no array for input"):
        list(verify.calibration_feeds([{"image": seeded((2, 3, 8, 8))}], specs()))
    with pytest.raises(InputError, match="not found"):
        verify.calibration_feeds("/nonexistent/calib.npz", specs())
