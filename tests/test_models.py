"""The models/ zoo: unoptimized exports with a dynamic batch, and the committed digits classifier."""

from __future__ import annotations

import collections
import pathlib
import subprocess
import sys

import numpy as np
import onnx
import onnxruntime as ort
import pytest

import models

ROOT = pathlib.Path(__file__).resolve().parents[1]
COMMITTED = ROOT / "models" / "onnx"
STANDARD_DOMAINS = {"", "ai.onnx"}

# torch.export's pytree emits this FutureWarning on every export in torch 2.13.
pytestmark = pytest.mark.filterwarnings("ignore:.*LeafSpec:FutureWarning")


def _session(path: pathlib.Path) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.log_severity_level = 3
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def _feeds(name: str, batch: int, seed: int = 0) -> dict[str, np.ndarray]:
    spec = models.MODELS[name]
    rng = np.random.default_rng(seed)
    if spec.dtype == "int64":
        array = rng.integers(0, spec.high, (batch, *spec.shape), dtype=np.int64)
    else:
        array = rng.standard_normal((batch, *spec.shape)).astype(np.float32)
    return {spec.input_name: array}


def _op_counts(proto: onnx.ModelProto) -> collections.Counter[str]:
    return collections.Counter(node.op_type for node in proto.graph.node)


# --- registry (no torch needed) ---------------------------------------------------------------------


def test_importing_the_registry_does_not_import_torch():
    code = "import sys, models; assert models.MODELS; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_ensure_rejects_unknown_name(tmp_path):
    with pytest.raises(KeyError, match="unknown model 'resnet50'"):
        models.ensure("resnet50", tmp_path)
    assert not list(tmp_path.iterdir())


def test_ensure_returns_existing_file_without_exporting(tmp_path):
    existing = tmp_path / "resnet18.onnx"
    existing.write_bytes(b"not exported")
    assert models.ensure("resnet18", tmp_path) == existing
    assert existing.read_bytes() == b"not exported"


# --- exported zoo -----------------------------------------------------------------------------------


@pytest.fixture(scope="module", params=sorted(models.MODELS))
def exported(request, tmp_path_factory) -> tuple[str, pathlib.Path]:
    pytest.importorskip("torch")
    name = request.param
    path = models.ensure(name, tmp_path_factory.mktemp(name))
    return name, path


@pytest.mark.torch
@pytest.mark.slow
def test_export_is_valid_standard_onnx_with_symbolic_batch(exported):
    name, path = exported
    spec = models.MODELS[name]
    proto = onnx.load(str(path))
    onnx.checker.check_model(proto, full_check=True)
    assert {o.domain for o in proto.opset_import} <= STANDARD_DOMAINS
    assert {n.domain for n in proto.graph.node} <= STANDARD_DOMAINS
    assert not proto.functions
    assert [o.version for o in proto.opset_import if o.domain in STANDARD_DOMAINS] == [models.DEFAULT_OPSET]
    assert [i.name for i in proto.graph.input] == [spec.input_name]
    assert [o.name for o in proto.graph.output] == list(spec.output_names)
    for value in [*proto.graph.input, *proto.graph.output]:
        first = value.type.tensor_type.shape.dim[0]
        assert first.dim_param and not first.HasField("dim_value"), value.name


@pytest.mark.torch
@pytest.mark.slow
def test_export_runs_in_onnxruntime_at_batch_1_and_3_and_matches_torch(exported):
    import torch

    from models import nets

    name, path = exported
    module, _ = nets.build(name)  # same seed as the export: the same weights
    session = _session(path)
    for batch in (1, 3):
        feeds = _feeds(name, batch, seed=batch)
        actual = session.run(None, feeds)
        with torch.no_grad():
            expected = module(*(torch.from_numpy(a) for a in feeds.values()))
        expected = expected if isinstance(expected, tuple) else (expected,)
        assert len(actual) == len(expected)
        for got, want in zip(actual, expected, strict=True):
            assert got.shape == tuple(want.shape) and got.shape[0] == batch
            np.testing.assert_allclose(got, want.numpy(), atol=1e-4, rtol=0)
        if batch == 3:  # rows are independent inputs, so a model mixing the batch would show here
            assert not np.allclose(actual[0][0], actual[0][1])


@pytest.mark.torch
@pytest.mark.slow
def test_export_keeps_the_patterns_our_passes_must_find(exported):
    name, path = exported
    ops = _op_counts(onnx.load(str(path)))
    if name == "small_cnn":
        assert ops["Conv"] == 2 and ops["Relu"] == 2 and ops["Gemm"] == 1
    elif name == "resnet18":
        # optimize=False: Conv+BN is not folded by the exporter; 17 3x3 convs + 3 1x1 downsample convs.
        assert ops["Conv"] == 20 and ops["BatchNormalization"] == 20
        assert ops["Add"] == 8  # one residual add per BasicBlock
    elif name == "mobilenetv2":
        assert ops["Conv"] == 52 and ops["BatchNormalization"] == 52
        assert ops["Clip"] == 35  # ReLU6
        assert ops["Add"] == 10  # residual inverted-residual blocks
    elif name == "tiny_bert":
        assert ops["Softmax"] == 2  # one per layer
        assert ops["LayerNormalization"] + ops["ReduceMean"] // 2 == 5  # embeddings + 2 per layer
        assert ops["MatMul"] >= 4 and ops["Gather"] >= 2
    else:
        pytest.fail(f"no structural expectations for {name}")


@pytest.mark.torch
@pytest.mark.slow
def test_export_batchnorm_statistics_are_not_trivial(exported):
    name, path = exported
    proto = onnx.load(str(path))
    inits = {t.name: onnx.numpy_helper.to_array(t) for t in proto.graph.initializer}
    norms = [n for n in proto.graph.node if n.op_type == "BatchNormalization"]
    assert bool(norms) == (name in ("resnet18", "mobilenetv2"))
    for node in norms:  # folding an identity BatchNorm would prove nothing
        scale, bias, mean, var = (inits[name] for name in node.input[1:5])
        assert not np.allclose(scale, 1) and not np.allclose(bias, 0), node.name
        assert not np.allclose(mean, 0) and not np.allclose(var, 1), node.name


@pytest.mark.slow
@pytest.mark.torch
def test_export_is_deterministic(tmp_path):
    pytest.importorskip("torch")
    from models import export

    first = export.export("small_cnn", tmp_path / "a")
    second = export.export("small_cnn", tmp_path / "b")
    assert first.read_bytes() == second.read_bytes()


# --- committed digits classifier ----------------------------------------------------------------------


def test_committed_digits_files_are_consistent():
    proto = onnx.load(str(COMMITTED / "digits_cnn.onnx"))
    onnx.checker.check_model(proto, full_check=True)
    (input_value,) = proto.graph.input
    assert input_value.type.tensor_type.shape.dim[0].dim_param
    with np.load(COMMITTED / "digits_test.npz") as test, np.load(COMMITTED / "digits_calib.npz") as calib:
        assert sorted(test.files) == sorted([input_value.name, "labels"])
        assert calib.files == [input_value.name]
        images, labels, calibration = test[input_value.name], test["labels"], calib[input_value.name]
    assert images.dtype == np.float32 and images.shape == (540, 1, 8, 8)
    assert labels.dtype == np.int64 and labels.shape == (540,)
    assert sorted(set(labels.tolist())) == list(range(10))
    assert calibration.dtype == np.float32 and calibration.shape == (200, 1, 8, 8)
    for array in (images, calibration):
        assert array.min() == 0.0 and array.max() == 1.0


def test_committed_digits_model_is_accurate_in_onnxruntime():
    session = _session(COMMITTED / "digits_cnn.onnx")
    with np.load(COMMITTED / "digits_test.npz") as test:
        images, labels = test[session.get_inputs()[0].name], test["labels"]
    (logits,) = session.run(None, {session.get_inputs()[0].name: images})
    accuracy = float(np.mean(logits.argmax(axis=1) == labels))
    assert accuracy >= 0.95
    # The same model on shuffled labels is at chance: the accuracy comes from the model, not the data.
    shuffled = np.random.default_rng(0).permutation(labels)
    assert float(np.mean(logits.argmax(axis=1) == shuffled)) < 0.3


@pytest.mark.torch
@pytest.mark.slow
def test_digits_script_reproduces_committed_files(tmp_path):
    pytest.importorskip("torch")
    pytest.importorskip("sklearn")
    from models import digits

    result = digits.train_and_export(tmp_path)
    assert result.torch_accuracy == result.onnx_accuracy >= 0.95
    for name in (digits.TEST_FILE, digits.CALIB_FILE):
        assert (tmp_path / name).read_bytes() == (COMMITTED / name).read_bytes(), name
    with np.load(COMMITTED / digits.TEST_FILE) as test:
        logits = _session(COMMITTED / digits.MODEL_FILE).run(
            None, {digits.INPUT_NAME: test[digits.INPUT_NAME]}
        )
        committed_accuracy = float(np.mean(logits[0].argmax(axis=1) == test["labels"]))
    assert result.onnx_accuracy == pytest.approx(committed_accuracy, abs=0.01)
