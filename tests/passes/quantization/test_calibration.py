"""Calibration: streaming histograms, range methods, degenerate tensors, calibration sources."""

from __future__ import annotations

import numpy as np
import pytest

from sftonnx.errors import InputError, PassConfigError
from sftonnx.passes.quantization.calibration import (
    METHODS,
    CalibrationSource,
    Range,
    TensorHistogram,
    calibrate,
    compute_range,
    quant_params,
)
from tests.helpers import make_model, seeded

MLP = """<ir_version: 8, opset_import: ["" : 17]>
g (float[N,4] x) => (float[N,3] y) {
    h = MatMul(x, w)
    y = Relu(h)
}"""


def outlier_data(seed: int = 0) -> np.ndarray:
    data = np.random.default_rng(seed).standard_normal(200_000).astype(np.float32)
    data[:6] = [40, -35, 50, 30, 45, -42]
    return data


def test_two_batches_equal_one_concatenated_batch_with_range_growth():
    data = outlier_data()
    streamed = TensorHistogram()
    streamed.update(data[1000:100_000])  # no outliers yet: narrow bins
    streamed.update(data[:1000] * 3)  # range grows: bins merge
    streamed.update(data[100_000:])
    whole = TensorHistogram()
    whole.update(np.concatenate([data[1000:100_000], data[:1000] * 3, data[100_000:]]).astype(np.float64))
    assert streamed.exponent == whole.exponent
    np.testing.assert_array_equal(streamed.counts, whole.counts)
    assert (streamed.min, streamed.max, streamed.count) == (whole.min, whole.max, whole.count)
    merged = TensorHistogram()
    part = TensorHistogram()
    part.update(data[:1000] * 3)
    merged.update(data[1000:])
    merged.merge(part)
    np.testing.assert_array_equal(merged.counts, whole.counts)


def test_histogram_memory_is_bounded_by_bins():
    hist = TensorHistogram(bins=256)
    for seed in range(50):
        hist.update(seeded((64, 64), seed=seed, scale=1 + seed))
    assert hist.counts.shape == (256,) and hist.count == 50 * 64 * 64


def test_nonfinite_values_are_ignored():
    hist = TensorHistogram()
    hist.update(np.array([1.0, np.nan, -2.0, np.inf], np.float32))
    assert (hist.count, hist.nonfinite, hist.min, hist.max) == (2, 2, -2.0, 1.0)


@pytest.mark.parametrize("symmetric", [False, True])
def test_entropy_and_percentile_clip_outliers_minmax_does_not_mse_between(symmetric):
    hist = TensorHistogram()
    hist.update(outlier_data())
    ranges = {m: compute_range(hist, m, symmetric=symmetric) for m in METHODS}
    assert ranges["minmax"].hi == 50.0
    assert ranges["minmax"].lo == (-50.0 if symmetric else -42.0)
    for method in ("entropy", "percentile"):
        assert 3.0 < ranges[method].hi < 10.0, (method, ranges[method])
    assert ranges["percentile"].hi < ranges["mse"].hi < ranges["minmax"].hi
    if symmetric:
        assert all(r.lo == -r.hi for r in ranges.values())


def test_one_sided_data_keeps_zero_as_lower_bound():
    hist = TensorHistogram()
    hist.update(np.abs(outlier_data()))
    for method in METHODS:
        rng = compute_range(hist, method)
        assert rng.lo == 0.0 and rng.hi > 0
    scale, zero = quant_params(compute_range(hist, "minmax"), "uint8", symmetric=False)
    assert zero == 0 and np.isclose(scale, 50 / 255)


@pytest.mark.parametrize("method", METHODS)
def test_degenerate_tensors_do_not_crash(method):
    zeros = TensorHistogram()
    zeros.update(np.zeros((4, 4), np.float32))
    assert compute_range(zeros, method).degenerate
    empty = TensorHistogram()
    empty.update(np.zeros((0, 3), np.float32))
    assert compute_range(empty, method).degenerate
    constant = TensorHistogram()
    constant.update(np.full(10, 3.0, np.float32))
    assert compute_range(constant, method) == Range(0.0, 3.0)


def test_no_calibration_data_is_a_config_error_unless_random_allowed():
    model = make_model(MLP, w=seeded((4, 3)))
    with pytest.raises(PassConfigError, match="no calibration data"):
        CalibrationSource(None, model)
    source = CalibrationSource(None, model, allow_random=True, random_batches=2)
    assert source.random and "NOT representative" in source.description
    assert len(list(source)) == 2


def test_bad_calibration_data_is_an_input_error(tmp_path):
    model = make_model(MLP, w=seeded((4, 3)))
    wrong_name = tmp_path / "wrong_name.npz"
    np.savez(wrong_name, z=np.zeros((2, 4), np.float32))
    with pytest.raises(InputError, match="no array for input 'x'"):
        calibrate(model, ["h"], CalibrationSource(str(wrong_name), model))
    wrong_shape = tmp_path / "wrong_shape.npz"
    np.savez(wrong_shape, x=np.zeros((2, 5), np.float32))
    with pytest.raises(InputError, match="dimension 1"):
        calibrate(model, ["h"], CalibrationSource(str(wrong_shape), model))
    with pytest.raises(InputError, match="no array for input"):
        calibrate(model, ["h"], CalibrationSource([{"y": np.zeros((2, 4), np.float32)}], model))


def test_calibrate_streams_a_folder_and_collects_means(tmp_path):
    model = make_model(MLP, w=seeded((4, 3)))
    for index in range(3):
        np.savez(tmp_path / f"part{index}.npz", x=seeded((5, 4), seed=index))
    result = calibrate(model, ["h", "y"], CalibrationSource(str(tmp_path), model, batch_size=2),
                       sum_names={"x": 1}, keep_samples=4)
    assert result.batches == 3  # a folder is one feed per file, as it is (no batch axis assumed)
    everything = np.concatenate([seeded((5, 4), seed=i) for i in range(3)])
    np.testing.assert_allclose(result.channel_sums["x"].channel_mean(), everything.mean(axis=0), rtol=1e-6)
    assert result.histograms["y"].min >= 0.0
    assert [len(s["x"]) for s in result.samples] == [5]  # the first file, whole: feeds are not cut
    # One .npz keeps its meaning: split along axis 0 in batches.
    single = calibrate(model, ["h"], CalibrationSource(str(tmp_path / "part0.npz"), model, batch_size=2))
    assert single.batches == 3  # 2 + 2 + 1


RECURRENT = """
<ir_version: 8, opset_import: ["" : 18]>
g (float[1, T, 4] x, float[2, 1, 3] state) => (float[1, T, 4] h, float[2, 1, 3] next) {
    h = Relu(x)
    next = Tanh(state)
}
"""


def test_calibration_folder_with_state_input_and_different_widths(tmp_path):
    """A state input [2, 1, 128]-like and text lines of different widths: one feed per file, as it is."""
    model = make_model(RECURRENT)
    for index, width in enumerate((6, 11, 3)):
        np.savez(tmp_path / f"line{index}.npz", x=seeded((1, width, 4), seed=index),
                 state=seeded((2, 1, 3), seed=10 + index))
    result = calibrate(model, ["h", "next"], CalibrationSource(str(tmp_path), model), keep_samples=10)
    assert result.batches == 3
    assert [s["x"].shape for s in result.samples] == [(1, 6, 4), (1, 11, 4), (1, 3, 4)]
    assert result.histograms["next"].max <= 1.0 and result.histograms["h"].min >= 0.0
