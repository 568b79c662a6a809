"""Models with external data, end to end: the same code path as models over 2 GiB, on small models.

A small MLP (``models.large.write_mlp`` scaled down: weights of 75-77 kB, above the size that keeps a weight
out of onnxsim's copy) is saved with its weights in ``big.onnx.data``. It is optimized from its own folder and
from another one, with relative and absolute paths, under lossless, int8-dynamic and fp16; the result must
verify, be written with ``<output>.data`` beside it (relative location), never touch the input's files, and
compute what the numpy reference computes.
"""

from __future__ import annotations

import hashlib
import os
import pathlib

import numpy as np
import onnx
import onnx_ir as ir
import onnxruntime as ort
import pytest

from models.large import reference_mlp, write_mlp
from sftonnx import api, io, verify
from sftonnx.passes.cleanup import SimplifyPass
from tests.helpers import make_model

SCALE = 0.01  # weights 120x160, 160x120, 120x160


@pytest.fixture
def mlp(tmp_path) -> pathlib.Path:
    folder = tmp_path / "model"
    folder.mkdir()
    return write_mlp(folder / "big.onnx", scale=SCALE)


def _digest(folder: pathlib.Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}


def _inputs(rows: int = 2) -> dict[str, np.ndarray]:
    return {"x": np.random.default_rng(7).standard_normal((rows, 120)).astype(np.float32)}


def _run_elsewhere(path: pathlib.Path, feeds, cwd: pathlib.Path) -> np.ndarray:
    """Run the written model from a folder that is not its own (its data must be found by relative location)."""
    previous = os.getcwd()
    os.chdir(cwd)
    try:
        return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, feeds)[0]
    finally:
        os.chdir(previous)


def _locations(path: pathlib.Path) -> set[str]:
    proto = onnx.load(str(path), load_external_data=False)
    return {
        entry.value
        for tensor in proto.graph.initializer
        if tensor.data_location == onnx.TensorProto.EXTERNAL
        for entry in tensor.external_data
        if entry.key == "location"
    }


@pytest.mark.parametrize("where", ["model_folder", "other_folder"])
@pytest.mark.parametrize("absolute", [False, True], ids=["relative", "absolute"])
@pytest.mark.parametrize("preset", ["lossless", "int8-dynamic", "fp16"])
def test_external_data_model_optimizes_from_any_folder(mlp, tmp_path, monkeypatch, where, absolute, preset):
    folder = mlp.parent
    other = tmp_path / "elsewhere"
    other.mkdir()
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    before = _digest(folder)
    cwd = folder if where == "model_folder" else other
    monkeypatch.chdir(cwd)
    if absolute:
        source, output = mlp, out_dir / "big.opt.onnx"
    else:
        source = pathlib.Path(os.path.relpath(mlp, cwd))
        output = pathlib.Path(os.path.relpath(out_dir / "big.opt.onnx", cwd))
    data = _inputs()
    result = api.optimize(source, output, preset=preset, data=data if preset != "lossless" else None)

    assert result.verification is not None and result.verification.passed
    assert _digest(folder) == before  # the input's files are untouched
    written = out_dir / "big.opt.onnx"
    assert sorted(p.name for p in out_dir.iterdir()) == ["big.opt.onnx", "big.opt.onnx.data"]
    assert _locations(written) == {"big.opt.onnx.data"}  # named after the output, relative
    assert written.stat().st_size < 20_000  # weights are in the data file, not in the graph
    expected = reference_mlp(data["x"], scale=SCALE)
    actual = _run_elsewhere(written, data, tmp_path)
    if preset == "lossless":
        np.testing.assert_allclose(actual, expected, rtol=1e-4, atol=1e-4)
    else:
        cosine = float(np.dot(actual.ravel(), expected.ravel()) / np.linalg.norm(actual) / np.linalg.norm(expected))
        assert cosine > 0.99


def test_lossless_keeps_weights_memory_mapped(mlp):
    """No pass of the lossless preset copies a weight: the written model's weights came straight from the file."""
    result = api.optimize(mlp, mlp.parent / "out.onnx", preset="lossless")
    simplify = next(row for row in result.report.rows if row.name == "simplify")
    assert simplify.details["weights_kept_out"] == 3
    weights = [value.const_value for value in result.model.graph.initializers.values()]
    assert len(weights) == 3 and all(isinstance(t, ir.ExternalTensor) for t in weights)
    # After saving, the returned model reads from the file it was written to.
    assert {pathlib.Path(t.path).name for t in weights} == {"out.onnx.data"}
    assert result.report.input_size == mlp.stat().st_size + (mlp.parent / "big.onnx.data").stat().st_size


def test_verification_leaves_no_temporary_files(mlp, tmp_path, monkeypatch):
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    monkeypatch.setenv("TMPDIR", str(scratch))
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", None)  # re-read TMPDIR
    api.optimize(mlp, mlp.parent / "out.onnx", preset="lossless", verify_each=True)
    assert list(scratch.iterdir()) == []


def test_session_source_stages_external_models_and_cleans_up(mlp):
    model = io.load(mlp)
    with verify.session_source(model) as source:
        assert isinstance(source, str) and pathlib.Path(source).is_file()
        folder = pathlib.Path(source).parent
        out = ort.InferenceSession(source, providers=["CPUExecutionProvider"]).run(None, _inputs(2))[0]
    assert not folder.exists()
    np.testing.assert_allclose(out, reference_mlp(_inputs(2)["x"], scale=SCALE), rtol=1e-4, atol=1e-4)


def test_overwriting_the_input_keeps_the_returned_model_valid(mlp):
    data = _inputs(2)
    result = api.optimize(mlp, mlp, preset="lossless", overwrite=True)
    assert sorted(p.name for p in mlp.parent.iterdir()) == ["big.onnx", "big.onnx.data"]
    # The in-memory result reads the new data file (offsets of the new layout), not stale offsets.
    for value in result.model.graph.initializers.values():
        assert isinstance(value.const_value, ir.ExternalTensor)
        assert value.const_value.numpy().shape == tuple(value.shape)
    expected = reference_mlp(data["x"], scale=SCALE)
    np.testing.assert_allclose(_run_elsewhere(mlp, data, mlp.parent.parent), expected, rtol=1e-4, atol=1e-4)
    with verify.session_source(result.model) as source:
        again = ort.InferenceSession(source, providers=["CPUExecutionProvider"]).run(None, data)[0]
    np.testing.assert_allclose(again, expected, rtol=1e-4, atol=1e-4)


def test_loading_makes_external_folders_absolute(mlp, monkeypatch):
    monkeypatch.chdir(mlp.parent)
    model = io.load("big.onnx")
    folders = {pathlib.Path(t.base_dir) for _, t in io.external_tensors(model)}
    assert folders == {mlp.parent.resolve()}
    monkeypatch.chdir(mlp.parent.parent)  # later reads do not depend on the working folder
    assert io.to_bytes(model)
    assert io.has_external_data(model)  # to_bytes leaves the model reading from its files


def test_structure_proto_has_no_weights_and_leaves_model_alone(mlp):
    model = io.load(mlp)
    text = ir.to_onnx_text(model)
    proto, moved = io.structure_proto(model, max_inline_bytes=1024)
    assert moved == ["w0", "w1", "w2"]
    assert [value.name for value in proto.graph.input] == ["x", "w0", "w1", "w2"]
    assert len(proto.graph.initializer) == 0 and proto.ByteSize() < 5_000
    onnx.checker.check_model(proto)
    assert ir.to_onnx_text(model) == text
    assert list(model.graph.initializers) == ["w0", "w1", "w2"]


def test_simplify_folds_small_external_constants_and_keeps_large_weights(tmp_path):
    """Transpose(Transpose(w_small)) folds (small weights are read in); the large weight is only passed through."""
    text = """
    <ir_version: 8, opset_import: ["" : 17]>
    g (float[2, 160] x) => (float[2, 16] y) {
        h = MatMul(x, big)
        t = Transpose <perm = [1, 0]> (small)
        tt = Transpose <perm = [1, 0]> (t)
        y = MatMul(h, tt)
    }
    """
    rng = np.random.default_rng(0)
    model = make_model(
        text,
        big=rng.standard_normal((160, 160)).astype(np.float32),
        small=rng.standard_normal((160, 16)).astype(np.float32),
    )
    path = tmp_path / "m.onnx"
    io.save(model, path, external_data=True, size_threshold_bytes=0)
    loaded = io.load(path)
    x = rng.standard_normal((2, 160)).astype(np.float32)
    expected = ort.InferenceSession(str(path)).run(None, {"x": x})[0]
    report = SimplifyPass()(loaded)
    assert report.changes == {"nodes_removed": 2}
    assert report.details["weights_kept_out"] == 1
    assert isinstance(loaded.graph.initializers["big"].const_value, ir.ExternalTensor)
    with verify.session_source(loaded) as source:
        actual = ort.InferenceSession(source).run(None, {"x": x})[0]
    np.testing.assert_allclose(actual, expected, rtol=1e-5, atol=1e-5)


def test_copy_model_shares_weights_and_their_folder(mlp, monkeypatch):
    model = io.load(mlp)
    copy = io.copy_model(model)
    assert copy is not model and copy.graph is not model.graph
    for name, value in copy.graph.initializers.items():
        assert value.const_value is model.graph.initializers[name].const_value
    monkeypatch.chdir(mlp.parent.parent)  # the copy's weights are found from anywhere
    with verify.session_source(copy) as source:
        out = ort.InferenceSession(source, providers=["CPUExecutionProvider"]).run(None, _inputs())[0]
    np.testing.assert_allclose(out, reference_mlp(_inputs()["x"], scale=SCALE), rtol=1e-4, atol=1e-4)
