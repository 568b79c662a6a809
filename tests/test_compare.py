"""`sftonnx compare`: per-output metrics, limits that gate a pipeline (exit 3), and signature errors (exit 2)."""

from __future__ import annotations

import json

import numpy as np
import onnx_ir as ir
import pytest

from sftonnx import api
from sftonnx.errors import InputError
from sftonnx.verify import Budget, Tolerance
from tests.helpers import assert_clean_error, make_model, run_cli, seeded

CLASSIFIER = """
<ir_version: 8, opset_import: ["" : 18]>
classifier (float[N, 4] x) => (float[N, 3] y) {
    y = MatMul(x, w)
}
"""

RENAMED_INPUT = """
<ir_version: 8, opset_import: ["" : 18]>
renamed (float[N, 4] image) => (float[N, 3] y) {
    y = MatMul(image, w)
}
"""

TWO_OUTPUTS = """
<ir_version: 8, opset_import: ["" : 18]>
two (float[N, 4] x) => (float[N, 3] y, float[N, 3] z) {
    y = MatMul(x, w)
    z = Relu(y)
}
"""

TWO_OUTPUTS_SWAPPED = """
<ir_version: 8, opset_import: ["" : 18]>
swapped (float[N, 4] x) => (float[N, 3] z, float[N, 3] y) {
    y = MatMul(x, w)
    z = Relu(y)
}
"""

W = seeded((4, 3))
# Small perturbation: outputs stay close (cosine ~0.999) but not within 0.9999.
W_PERTURBED = W + seeded((4, 3), seed=7, scale=0.05)


def save(path, text=CLASSIFIER, w=W):
    ir.save(make_model(text, w=w), path)
    return path


@pytest.fixture
def pair(tmp_path):
    return save(tmp_path / "a.onnx"), save(tmp_path / "b.onnx", w=W_PERTURBED)


sftonnx = run_cli




def test_api_metrics_of_a_perturbed_model(pair):
    result = api.compare(*pair)
    (metric,) = result.comparison.outputs
    assert metric.name == "y" and metric.shape_ok
    assert 0 < metric.max_abs < 1 and metric.mean_rel > 0
    assert 0.99 < metric.cosine < 0.9999
    assert metric.top1_agreement is not None and 0 < metric.top1_agreement <= 1
    assert result.passed and result.limits == {}  # nothing checked unless asked


def test_api_limits_are_checked_only_when_given(pair):
    assert not api.compare(*pair, budget=Budget(min_cosine=0.9999)).passed
    assert api.compare(*pair, budget=Budget(min_cosine=0.99)).passed
    failed = api.compare(*pair, tolerance=Tolerance(atol=1e-3, rtol=0.0))
    assert not failed.passed and "beyond atol=0.001" in failed.comparison.failures[0]
    assert failed.limits == {"atol": 1e-3, "rtol": 0.0}


def test_api_identical_models_match_exactly(tmp_path):
    a, b = save(tmp_path / "a.onnx"), save(tmp_path / "b.onnx")
    (metric,) = api.compare(a, b, tolerance=Tolerance(atol=0.0, rtol=0.0)).comparison.outputs
    assert metric.max_abs == 0.0 and metric.cosine == pytest.approx(1.0) and metric.top1_agreement == 1.0


def test_api_outputs_are_matched_by_name(tmp_path):
    a, b = save(tmp_path / "a.onnx", TWO_OUTPUTS), save(tmp_path / "b.onnx", TWO_OUTPUTS_SWAPPED)
    result = api.compare(a, b, tolerance=Tolerance(atol=0.0, rtol=0.0))
    assert [m.name for m in result.comparison.outputs] == ["y", "z"] and result.passed


def test_api_user_data(tmp_path, pair):
    np.savez(tmp_path / "inputs.npz", x=seeded((5, 4)), labels=np.zeros(5, dtype=np.int64))
    result = api.compare(*pair, data=tmp_path / "inputs.npz")
    assert any("5 samples of user data" in note for note in result.notes)


def test_api_signature_mismatch_is_an_input_error(tmp_path):
    a = save(tmp_path / "a.onnx")
    with pytest.raises(InputError, match="different inputs"):
        api.compare(a, save(tmp_path / "renamed.onnx", RENAMED_INPUT))
    with pytest.raises(InputError, match="different outputs: 2 .* vs 1"):
        api.compare(a, save(tmp_path / "two.onnx", TWO_OUTPUTS))


def test_cli_identical_models_exit_0(tmp_path):
    a, b = save(tmp_path / "a.onnx"), save(tmp_path / "b.onnx")
    result = sftonnx("compare", a, b, "--min-cosine", "0.9999", "--atol", "1e-6")
    assert result.returncode == 0, result.stderr
    assert "within limits" in result.stdout and "1.000000" in result.stdout


def test_cli_perturbed_weights_exit_3_and_json(tmp_path, pair):
    out = tmp_path / "compare.json"
    result = sftonnx("compare", *pair, "--min-cosine", "0.9999", "--json", out)
    assert_clean_error(result, 3, "differs from")
    assert "cosine" in result.stderr and "< 0.9999" in result.stderr
    assert "max abs error" in result.stdout  # the table is printed before failing
    data = json.loads(out.read_text())
    assert set(data) == {"reference", "candidate", "limits", "passed", "failures", "outputs", "notes"}
    assert data["passed"] is False and data["limits"] == {"min_cosine": 0.9999}
    assert set(data["outputs"][0]) >= {"name", "max_abs", "mean_rel", "cosine", "top1_agreement"}


def test_cli_perturbed_weights_without_limits_exit_0(pair):
    result = sftonnx("compare", *pair)
    assert result.returncode == 0, result.stderr
    assert "no limits given" in result.stdout


def test_cli_atol_alone_gates(pair):
    assert_clean_error(sftonnx("compare", *pair, "--atol", "1e-3"), 3, "beyond atol=0.001 rtol=0")


def test_cli_different_inputs_exit_2(tmp_path):
    a, b = save(tmp_path / "a.onnx"), save(tmp_path / "b.onnx", RENAMED_INPUT)
    assert_clean_error(sftonnx("compare", a, b), 2, "have different inputs: 1 (image) vs 1 (x)")


def test_cli_missing_input_in_data_exit_2(tmp_path, pair):
    np.savez(tmp_path / "inputs.npz", image=seeded((3, 4)))
    assert_clean_error(sftonnx("compare", *pair, "--data", tmp_path / "inputs.npz"), 2, "no array for input 'x'")


def test_cli_reports_task_metrics_in_table_and_json(tmp_path, pair):
    out = tmp_path / "compare.json"
    np.savez(tmp_path / "inputs.npz", x=seeded((200, 4)))
    result = sftonnx("compare", *pair, "--data", tmp_path / "inputs.npz", "--min-agreement", "0.999", "--json", out)
    data = json.loads(out.read_text())
    metric = data["outputs"][0]
    assert metric["kind"] == "scores" and metric["decisions"] == 200
    assert 0.9 < metric["argmax_agreement"] < 1.0  # the perturbed weights flip a few decisions
    assert metric["threshold_agreement"] is None and data["limits"] == {"min_agreement": 0.999}
    assert "argmax agreement" in result.stdout and "scores" in result.stdout
    assert_clean_error(result, 3, "argmax agreement")


def test_api_data_folder_is_one_feed_per_file(tmp_path, pair):
    folder = tmp_path / "feeds"
    folder.mkdir()
    for index, rows in enumerate((3, 7)):
        np.savez(folder / f"f{index}.npz", x=seeded((rows, 4), seed=index))
    result = api.compare(*pair, data=folder)
    assert any("2 feed(s) of user data" in note for note in result.notes)
    assert result.comparison.outputs[0].decisions == 3 + 7
