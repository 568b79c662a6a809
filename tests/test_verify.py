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
    cosine_only = verify.Budget(min_cosine=0.5, min_agreement=None)
    budget = verify.compare_outputs(["p"], expected, swapped, budget=cosine_only)
    assert budget.passed and 0.5 < budget.outputs[0].cosine < 1.0
    # With the task metric on, the flipped decisions refuse it whatever the cosine limit.
    task = verify.compare_outputs(["p"], expected, swapped, budget=verify.Budget(min_cosine=0.5))
    assert not task.passed and "argmax agreement 0.0000 < 0.99" in task.failures[0]
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


# ------------------------------------------------------------------------------------- the task gate
def _logits_with_agreement(rng, shape, agreement):
    """Logits [.., C] and a copy whose argmax differs at a ``1 - agreement`` share of the positions."""
    logits = rng.standard_normal(shape).astype(np.float32) * 0.1
    positions = int(np.prod(shape[:-1]))
    flat = logits.reshape(positions, shape[-1])
    labels = rng.integers(0, shape[-1], positions)
    flat[np.arange(positions), labels] += 8.0  # a clear winner per position
    changed = flat.copy()
    flips = rng.choice(positions, int(round(positions * (1 - agreement))), replace=False)
    changed[flips, (labels[flips] + 1) % shape[-1]] += 9.0  # another class wins there
    return logits, changed.reshape(shape)


def test_sequence_logits_with_61_percent_argmax_agreement_are_refused():
    rng = np.random.default_rng(0)
    # A recognizer's per-position outputs [T, B, C]: 100 positions x 2 samples, 40 classes.
    pairs = [_logits_with_agreement(rng, (100, 1, 40), 0.61) for _ in range(2)]
    expected, actual = [[e] for e, _ in pairs], [[a] for _, a in pairs]
    result = verify.compare_outputs(["logits"], expected, actual, budget=verify.Budget())
    metric = result.outputs[0]
    assert metric.kind == "scores" and metric.decisions == 200
    assert metric.argmax_agreement == pytest.approx(0.61)
    assert not result.passed and "argmax agreement 0.61" in result.failures[0]
    # The same drift kept under 1% of the positions passes the agreement (cosine judged too for scores).
    close = [_logits_with_agreement(rng, (50, 1, 40), 1.0) for _ in range(2)]
    ok = verify.compare_outputs(["logits"], [[e] for e, _ in close], [[e * 1.001] for e, _ in close])
    assert ok.outputs[0].argmax_agreement == 1.0
    assert verify.compare_outputs(
        ["logits"], [[e] for e, _ in close], [[e * 1.001] for e, _ in close], budget=verify.Budget()
    ).passed


def test_batch_first_sequence_probabilities_are_judged_by_argmax_agreement():
    rng = np.random.default_rng(1)
    logits, changed = _logits_with_agreement(rng, (4, 64, 12), 0.97)  # [B, T, C] softmax outputs

    def softmax(x):
        z = np.exp(x - x.max(-1, keepdims=True))
        return (z / z.sum(-1, keepdims=True)).astype(np.float32)

    result = verify.compare_outputs(["probs"], [[softmax(logits)]], [[softmax(changed)]], budget=verify.Budget())
    metric = result.outputs[0]
    assert metric.kind == "probs" and metric.decisions == 256
    assert metric.argmax_agreement == pytest.approx(0.97, abs=0.005)
    assert not result.passed and "argmax agreement" in result.failures[0]


def test_sigmoid_map_near_zero_on_noise_is_accepted_when_same_side_of_threshold():
    rng = np.random.default_rng(2)
    # A text detector's map on noise: ~1e-5 everywhere; the int8 model's map is unrelated noise of that size.
    reference = (rng.random((1, 1, 64, 64)) * 2e-5).astype(np.float32)
    candidate = (rng.random((1, 1, 64, 64)) * 2e-5).astype(np.float32)
    result = verify.compare_outputs(["map"], [[reference]], [[candidate]], budget=verify.Budget())
    metric = result.outputs[0]
    assert metric.kind == "sigmoid" and metric.threshold_agreement == 1.0 and metric.decisions == 4096
    assert metric.cosine < 0.9  # cosine would have refused it
    assert result.passed and metric.judged_by == "agreement"
    # Pixels that cross 0.5 are what matters: 3% of them crossing is refused.
    page = np.where(rng.random((1, 1, 64, 64)) < 0.2, 0.95, 0.02).astype(np.float32)
    crossed = page.copy().reshape(-1)
    flips = rng.choice(crossed.size, int(crossed.size * 0.03), replace=False)
    crossed[flips] = 1.0 - crossed[flips]  # 0.95 <-> 0.05-ish: the other side of 0.5
    crossed = crossed.reshape(page.shape)
    bad = verify.compare_outputs(["map"], [[page]], [[crossed]], budget=verify.Budget())
    assert bad.outputs[0].threshold_agreement == pytest.approx(0.97, abs=0.002)
    assert not bad.passed and "agreement on the side of 0.5" in bad.failures[0]


def test_int8_detector_with_low_cosine_on_one_output_but_agreeing_map_is_accepted():
    rng = np.random.default_rng(3)
    page = np.clip(rng.random((2, 1, 32, 32)) ** 4, 0, 1).astype(np.float32)
    noisy = np.clip(page + rng.normal(0, 0.05, page.shape), 0, 1).astype(np.float32)
    noisy = np.where((page >= 0.5) != (noisy >= 0.5), page, noisy)  # same decisions
    result = verify.compare_outputs(["map"], [[page]], [[noisy]], budget=verify.Budget(min_cosine=0.999))
    metric = result.outputs[0]
    assert metric.kind == "sigmoid" and metric.threshold_agreement == 1.0
    assert metric.cosine < 0.999 and result.passed


def test_classifier_outputs_need_agreement_and_cosine_on_few_samples():
    rng = np.random.default_rng(4)
    logits, changed = _logits_with_agreement(rng, (8, 10), 7 / 8)  # one of 8 decisions flipped
    result = verify.compare_outputs(["logits"], [[logits]], [[changed]], budget=verify.Budget(min_cosine=0.0))
    metric = result.outputs[0]
    assert metric.kind == "scores" and metric.decisions == 8 and metric.argmax_agreement == 0.875
    assert metric.top1_agreement == 0.875 and not result.passed
    same = verify.compare_outputs(["logits"], [[logits]], [[logits + 0.5]], budget=verify.Budget())
    assert same.outputs[0].argmax_agreement == 1.0 and not same.passed  # cosine still judged: shifted logits
    assert "cosine" in same.failures[0] and same.outputs[0].judged_by == "agreement+cosine"
    # Integer outputs (argmax done in the graph) are decisions too.
    labels = verify.compare_outputs(
        ["ids"], [[np.arange(200, dtype=np.int64) % 7]], [[np.arange(200, dtype=np.int64) % 5]], budget=verify.Budget()
    )
    assert labels.outputs[0].kind == "labels" and not labels.passed


def test_output_kinds():
    assert verify.output_kind([np.zeros((1, 5, 1, 1), np.float32) + np.arange(5, dtype=np.float32)[:, None, None]]) == (
        "scores"
    )
    assert verify.output_kind([np.full((2, 4), 0.25, np.float32)]) == "probs"
    assert verify.output_kind([np.full((1, 1, 8, 8), 0.3, np.float32)]) == "sigmoid"
    assert verify.output_kind([np.ones((1, 3, 8, 8), np.float32) * 2]) == "values"
    assert verify.output_kind([np.ones((3,), np.int64)]) == "labels"


# -------------------------------------------------------------------------------------- real data
STATEFUL = """
<ir_version: 8, opset_import: ["" : 18]>
g (float[1, T, 4] x, float[2, 1, 3] state) => (float[1, T, 4] y, float[2, 1, 3] next) {
    y = Relu(x)
    next = Sigmoid(state)
}
"""


def _stateful_folder(folder, widths=(5, 9, 7, 12)):
    folder.mkdir()
    rng = np.random.default_rng(0)
    for index, width in enumerate(widths):
        np.savez(
            folder / f"s{index:02d}.npz",
            x=rng.standard_normal((1, width, 4)).astype(np.float32),
            state=rng.standard_normal((2, 1, 3)).astype(np.float32),
        )
    return folder


def test_folder_of_npz_is_one_feed_per_file_as_is(tmp_path):
    model = make_model(STATEFUL)
    folder = _stateful_folder(tmp_path / "data")
    feeds, shapes, notes = verify.prepare_feeds(model, data=folder)
    assert [f["x"].shape for f in feeds] == [(1, 5, 4), (1, 9, 4), (1, 7, 4), (1, 12, 4)]
    assert all(f["state"].shape == (2, 1, 3) for f in feeds)
    assert shapes == {"x": (1, 5, 4), "state": (2, 1, 3)}
    assert "one per file" in notes[-1]
    calibration = list(verify.calibration_feeds(folder, verify.input_specs(model)))
    assert [f["x"].shape[1] for f in calibration] == [5, 9, 7, 12]
    assert len(list(verify.calibration_feeds(folder, verify.input_specs(model), max_samples=2))) == 2


def test_single_npz_that_cannot_be_split_is_one_feed(tmp_path):
    model = make_model(STATEFUL)
    path = tmp_path / "one.npz"
    np.savez(path, x=np.ones((1, 6, 4), np.float32), state=np.ones((2, 1, 3), np.float32))
    feeds, _, notes = verify.prepare_feeds(model, data=path)
    assert len(feeds) == 1 and feeds[0]["state"].shape == (2, 1, 3)
    assert any("cannot be split along axis 0" in n for n in notes)
    # A splittable .npz keeps its meaning: axis 0 = samples, in batches.
    image = tmp_path / "image.npz"
    np.savez(image, image=seeded((40, 3, 8, 8)), ids=np.zeros((40, 5), np.int64))
    feeds, _, _ = verify.prepare_feeds(make_model(IMAGE), data=image)
    assert [len(f["image"]) for f in feeds] == [32, 8]


@pytest.mark.parametrize(("count", "held"), [(8, 2), (12, 3), (7, 0)])
def test_hold_out_splits_folders_files_and_feeds(tmp_path, count, held):
    folder = _stateful_folder(tmp_path / "data", widths=range(3, 3 + count))
    split = verify.hold_out(folder)
    assert split.held_out == bool(held)
    if held:
        assert [f.name for f in split.verification.files] == [f"s{i:02d}.npz" for i in range(count - held, count)]
        assert [f.name for f in split.calibration.files] == [f"s{i:02d}.npz" for i in range(count - held)]
        assert "held-out" in split.notes[0]
    else:
        assert split.verification == split.calibration == folder and "in-sample" in split.notes[0]
    path = tmp_path / "rows.npz"
    np.savez(path, image=seeded((count, 3, 8, 8)), ids=np.zeros((count, 5), np.int64))
    rows = verify.hold_out(path)
    if held:
        assert (rows.calibration.start, rows.calibration.stop) == (0, count - held)
        assert (rows.verification.start, rows.verification.stop) == (count - held, count)
        feeds = list(verify.calibration_feeds(rows.calibration, specs()))
        assert sum(len(f["image"]) for f in feeds) == count - held
    feeds_split = verify.hold_out(iter([{"image": seeded((1, 3, 8, 8))} for _ in range(count)]))
    assert len(feeds_split.verification) == (held or count)


def test_lossless_tolerance_scales_with_the_outputs_magnitude():
    """float32 sums err in proportion to their terms: a near-0 element of a 7e4-scale output may move by 0.04."""
    from sftonnx.verify import Tolerance, compare_outputs

    expected = np.array([[7e4, -6.5e4, -0.01025, 3.0]], dtype=np.float32)
    nudged = expected.copy()
    nudged[0, 2] += 0.039
    assert compare_outputs(["hm"], [[expected]], [[nudged]], tolerance=Tolerance()).passed
    assert not compare_outputs(["hm"], [[expected]], [[nudged]], tolerance=Tolerance(scale_rtol=0.0)).passed
    broken = expected.copy()
    broken[0, 2] += 0.5  # far beyond 1e-6 * 7e4 = 0.07: a real change is still caught
    assert not compare_outputs(["hm"], [[expected]], [[broken]], tolerance=Tolerance()).passed


def test_argmax_agreement_counts_near_ties_and_refuses_real_changes():
    """Anchors with near-equal scores are a tie, not a changed decision; a recognizer's changed character is not."""
    from sftonnx.verify import Budget, compare_outputs

    rng = np.random.default_rng(0)
    logits = rng.normal(size=(200, 1, 30)).astype(np.float32)  # [T, B, C] sequence logits
    logits[:, 0, 0] = logits.max(axis=-1)[:, 0] + 0.001  # column 0 leads every row by a hair (near-tie)
    swapped = logits.copy()
    swapped[:, 0, 0] -= 0.002  # the runner-up now wins by a hair: a tie flip, not a new decision
    tie = compare_outputs(["y"], [[logits]], [[swapped]], budget=Budget(min_cosine=0.99))
    assert tie.outputs[0].argmax_agreement == 1.0 and tie.passed
    changed = logits.copy()
    rows = np.arange(0, 200, 5)  # 20% of the positions pick what the original scored lowest
    changed[rows, 0, np.argmin(logits[rows, 0], axis=-1)] += 20.0
    refused = compare_outputs(["y"], [[logits]], [[changed]], budget=Budget(min_cosine=None))
    assert refused.outputs[0].argmax_agreement == 0.8 and not refused.passed


def test_detector_head_with_few_rows_is_judged_by_cosine():
    """A [1, 84, anchors] head: argmax over anchors is no decision; with < 100 rows cosine decides."""
    from sftonnx.verify import Budget, compare_outputs

    rng = np.random.default_rng(1)
    head = rng.uniform(0, 320, size=(1, 84, 2100)).astype(np.float32)
    noisy = head + rng.normal(0, 5.0, size=head.shape).astype(np.float32)  # quantization-like noise
    result = compare_outputs(["output0"], [[head]], [[noisy]], budget=Budget())
    metric = result.outputs[0]
    assert metric.kind == "scores" and metric.decisions == 84 and metric.argmax_agreement < 0.99
    assert result.passed and metric.judged_by == "cosine"
    broken = compare_outputs(["output0"], [[head]], [[rng.permutation(noisy, axis=2)]], budget=Budget())
    assert not broken.passed  # a scrambled head still fails on cosine
