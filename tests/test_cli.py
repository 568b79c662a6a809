"""The command line, through a subprocess: outputs, reports, and one-line errors with documented exit codes."""

from __future__ import annotations

import importlib.metadata
import json
import re
import subprocess
import sys

import onnx_ir as ir
import pytest

from tests.helpers import LIGHT_MODELS, assert_clean_error, make_model, run_cli, seeded

TINY = """
<ir_version: 8, opset_import: ["" : 18]>
tiny (float[N, 4] x) => (float[N, 3] y) {
    i = Identity(x)
    y = MatMul(i, w)
}
"""


sftonnx = run_cli




def test_version_prints_the_installed_version():
    result = sftonnx("--version")
    assert result.returncode == 0, result.stderr
    assert result.stdout == f"sftonnx {importlib.metadata.version('sftonnx')}\n"
    assert re.fullmatch(r"sftonnx \d+\.\d+\.\d+\S*\n", result.stdout)


def test_help_lists_the_commands_in_order():
    result = sftonnx("--help")
    assert result.returncode == 0, result.stderr
    listed = re.findall(r"^\W*(optimize|inspect|passes|bench|compare)\s", result.stdout, flags=re.MULTILINE)
    assert listed == ["optimize", "inspect", "passes", "bench", "compare"]


@pytest.fixture
def tiny_path(tmp_path):
    path = tmp_path / "tiny.onnx"
    ir.save(make_model(TINY, w=seeded((4, 3))), path)
    return path


def test_optimize_writes_model_and_report(tiny_path, tmp_path):
    out, report = tmp_path / "out.onnx", tmp_path / "report.json"
    result = sftonnx("optimize", tiny_path, out, "--report", report, "--verify-each")
    assert result.returncode == 0, result.stderr
    assert "verified (tolerance)" in result.stdout and "nodes 2 → 1" in result.stdout
    data = json.loads(report.read_text())
    assert [row["name"] for row in data["rows"]][:1] == ["simplify"]
    assert data["verification"]["passed"] is True
    assert [n.op_type for n in ir.load(out).graph] == ["MatMul"]


def _write(path, content: bytes):
    path.write_bytes(content)
    return path


BAD_MODELS = {
    "not_onnx": (b"hello world, not a model\n", "not"),
    "truncated": (None, "not a valid ONNX model"),
    "unknown_domain": (
        '<ir_version: 8, opset_import: ["" : 18, "acme" : 1]> g (float[2] x) => (float[2] y) { y = acme.Foo(x) }',
        "domain 'acme'",
    ),
    "opset_old": (
        '<ir_version: 8, opset_import: ["" : 4]> g (float[2] x) => (float[2] y) { y = Relu(x) }',
        "too old",
    ),
    "opset_new": (
        '<ir_version: 8, opset_import: ["" : 99]> g (float[2] x) => (float[2] y) { y = Relu(x) }',
        "newer",
    ),
    "empty_graph": ('<ir_version: 8, opset_import: ["" : 18]> g (float[2] x) => () { }', "empty"),
}


@pytest.mark.parametrize("case", sorted(BAD_MODELS))
def test_bad_models_exit_2_with_one_line(case, tmp_path, tiny_path):
    content, message = BAD_MODELS[case]
    if content is None:
        content = tiny_path.read_bytes()[:-9]
    elif isinstance(content, str):
        content = ir.to_proto(ir.from_onnx_text(content)).SerializeToString()
    path = _write(tmp_path / "bad.onnx", content)
    out = tmp_path / "out.onnx"
    assert_clean_error(sftonnx("optimize", path, out), 2, message)
    assert not out.exists()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--input-shape", "x=2x5"], "dimension 1 is fixed to 4"),
        (["--input-shape", "nope=2x4"], "not a model input"),
        (["--input-shape", "x=2by4"], "expects name="),
        (["--passes", "simplfy"], "did you mean simplify"),
        (["--passes", "cse{size_limit=-1}"], "size_limit must be >= 0"),
        (["--preset", "turbo"], "unknown preset"),
    ],
)
def test_bad_options_exit_2(tiny_path, tmp_path, args, message):
    out = tmp_path / "out.onnx"
    assert_clean_error(sftonnx("optimize", tiny_path, out, *args), 2, message)
    assert not out.exists()


def test_missing_file_and_same_output(tiny_path, tmp_path):
    assert_clean_error(sftonnx("optimize", tmp_path / "missing.onnx", tmp_path / "o.onnx"), 2, "not found")
    before = tiny_path.read_bytes()
    assert_clean_error(sftonnx("optimize", tiny_path, tiny_path), 2, "--overwrite")
    assert tiny_path.read_bytes() == before


def test_passes_lists_registry_and_presets():
    result = sftonnx("passes", "--json")
    assert result.returncode == 0
    data = json.loads(result.stdout)
    assert "simplify" in data["passes"] and data["presets"]["lossless"]["spec"].startswith("simplify")
    assert data["passes"]["cse"]["options"]["size_limit"]["type"] == "int"


@pytest.mark.skipif(not LIGHT_MODELS, reason="onnx ships no light models")
def test_inspect_json_light_model():
    path = next(p for p in LIGHT_MODELS if p.stem == "light_squeezenet")
    result = sftonnx("inspect", path, "--json", "--memory")
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    assert data["op_histogram"]["Conv"] == 26
    assert data["memory"]["peak_activation_bytes"] > 0


def test_optimize_never_imports_torch(tiny_path, tmp_path):
    code = (
        "import sys; from sftonnx import cli\n"
        "sys.argv = ['sftonnx', 'optimize', sys.argv[1], sys.argv[2], '-q']\n"
        "try:\n    cli.main()\nexcept SystemExit as exit:\n    assert not exit.code, exit.code\n"
        "import sftonnx.passes  # the whole registry\n"
        "assert 'torch' not in sys.modules, 'torch imported'\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code, str(tiny_path), str(tmp_path / "o.onnx")],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "o.onnx").exists()


def test_lossy_passes_without_real_data_exit_2_unless_allowed(tiny_path, tmp_path):
    out, report = tmp_path / "out.onnx", tmp_path / "report.json"
    result = sftonnx("optimize", tiny_path, out, "--passes", "prune{rate=0.3}")
    assert_clean_error(result, 2, "lossy passes are verified on real data: give --data or --calibration-data")
    assert not out.exists()
    # A preset whose quantize would refuse to calibrate without data says the same first.
    result = sftonnx("optimize", tiny_path, out, "--preset", "int8")
    assert_clean_error(result, 2, "lossy passes are verified on real data")
    assert "lossy here: quantize" in result.stderr
    result = sftonnx(
        "optimize", tiny_path, out, "--passes", "prune{rate=0.3}", "--allow-random-verification",
        "--min-cosine", "0", "--min-agreement", "0", "--report", report,
    )
    assert result.returncode == 0, result.stderr
    assert "random inputs (--allow-random-verification)" in result.stdout
    data = json.loads(report.read_text())
    assert data["random_verification"] is True
    assert any("--allow-random-verification" in note for note in data["input_notes"])


def test_data_folder_of_different_widths_verifies_a_lossy_pass(tmp_path):
    import numpy as np

    model = tmp_path / "seq.onnx"
    text = """
    <ir_version: 8, opset_import: ["" : 18]>
    seq (float[1, T, 4] x, float[2, 1, 3] state) => (float[1, T, 3] y, float[2, 1, 3] next) {
        y = MatMul(x, w)
        next = Tanh(state)
    }
    """
    ir.save(make_model(text, w=seeded((4, 3))), model)
    folder = tmp_path / "lines"
    folder.mkdir()
    for index, width in enumerate((5, 9, 13)):
        np.savez(folder / f"l{index}.npz", x=seeded((1, width, 4), seed=index), state=seeded((2, 1, 3), seed=9))
    out, report = tmp_path / "out.onnx", tmp_path / "report.json"
    result = sftonnx(
        "optimize", model, out, "--passes", "quantize", "--data", folder, "--calibration-data", folder,
        "--report", report, "--min-cosine", "0.95",
    )
    assert result.returncode == 0, result.stderr
    data = json.loads(report.read_text())
    assert data["random_verification"] is False
    assert any("3 feed(s) of user data" in note for note in data["input_notes"])
    outputs = {o["name"]: o for o in data["verification"]["outputs"]}
    assert outputs["y"]["kind"] == "scores" and outputs["y"]["decisions"] == 5 + 9 + 13
