"""Every lossless pass, and the default preset, over onnx's shipped backend test models.

Where a model directory stores inputs and expected outputs (``test_data_set_*``), the optimized model must
reproduce the stored outputs as closely as onnxruntime reproduces them on the original; otherwise (the
``light_*`` models store no inputs) it must match the original run in onnxruntime on seeded random inputs.
Models below opset 7 must be rejected with a clear InputError; they are then upgraded with onnx's
version converter (what the error advises) and tested like the others. Models that onnxruntime itself
cannot run (locale-dependent string ops, training ops) are skipped with that reason.
"""

from __future__ import annotations

import pathlib

import numpy as np
import onnx
import onnx_ir as ir
import pytest

from sftonnx import io
from sftonnx.errors import InputError
from sftonnx.pass_infra import Numerics
from sftonnx.passes import PRESETS, REGISTRY
from sftonnx.pipeline import Pipeline, build_passes
from tests.helpers import EXACT_ATOL, EXACT_RTOL, LIGHT_MODELS, ONNX_DATA, assert_same_outputs, session

MODEL_DIRS = sorted(
    path.parent
    for suite in ("pytorch-converted", "pytorch-operator", "simple")
    for path in (ONNX_DATA / suite).glob("*/model.onnx")
)
EXACT_PASSES = sorted(name for name, cls in REGISTRY.items() if cls.numerics is Numerics.EXACT)
SPECS = [*EXACT_PASSES, "lossless"]


def _read(path: pathlib.Path, type_proto: onnx.TypeProto):
    kind = type_proto.WhichOneof("value")
    if kind == "tensor_type":
        proto = onnx.TensorProto()
        proto.ParseFromString(path.read_bytes())
        return onnx.numpy_helper.to_array(proto)
    if kind == "sequence_type":
        proto = onnx.SequenceProto()
        proto.ParseFromString(path.read_bytes())
        return onnx.numpy_helper.to_list(proto)
    if kind == "optional_type":
        proto = onnx.OptionalProto()
        proto.ParseFromString(path.read_bytes())
        return onnx.numpy_helper.to_optional(proto)
    raise NotImplementedError(kind)


def _data_sets(model_dir: pathlib.Path, proto: onnx.ModelProto):
    initializers = {i.name for i in proto.graph.initializer}
    inputs = [i for i in proto.graph.input if i.name not in initializers]
    for folder in sorted(model_dir.glob("test_data_set_*")):
        feeds = {i.name: _read(folder / f"input_{n}.pb", i.type) for n, i in enumerate(inputs)}
        outputs = [_read(folder / f"output_{n}.pb", o.type) for n, o in enumerate(proto.graph.output)]
        yield feeds, outputs


def _assert_close(actual, expected, label: str) -> None:
    if isinstance(expected, list):
        assert isinstance(actual, list) and len(actual) == len(expected), label
        for a, e in zip(actual, expected, strict=False):
            _assert_close(a, e, label)
        return
    actual, expected = np.asarray(actual), np.asarray(expected)
    assert actual.shape == expected.shape, f"{label}: shape {actual.shape} != {expected.shape}"
    if expected.dtype.kind in "fc":
        np.testing.assert_allclose(actual, expected, atol=EXACT_ATOL, rtol=EXACT_RTOL, err_msg=label)
    else:
        np.testing.assert_array_equal(actual, expected, err_msg=label)


def _run(model_bytes: bytes, feeds):
    sess = session(model_bytes)
    return sess.run(None, feeds)


@pytest.mark.slow
@pytest.mark.parametrize("spec", SPECS)
@pytest.mark.parametrize("model_dir", MODEL_DIRS, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_pass_keeps_stored_outputs(model_dir: pathlib.Path, spec: str) -> None:
    proto = onnx.load(model_dir / "model.onnx")
    data = list(_data_sets(model_dir, proto))
    original = proto.SerializeToString()
    opset = next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), 0)
    if opset < io.MIN_OPSET:
        with pytest.raises(InputError, match="too old"):
            io.load(original)
        # What the error tells users to do; keeps these models in the suite.
        proto = onnx.version_converter.convert_version(proto, 11)
        original = proto.SerializeToString()
    try:
        reference = [_run(original, feeds) for feeds, _ in data]
    except Exception as error:  # onnxruntime's own limits, not ours
        pytest.skip(f"onnxruntime cannot run the original: {str(error).splitlines()[0][:120]}")
    for (_, expected), got in zip(data, reference, strict=False):
        _assert_close(got, expected, "onnxruntime vs stored (sanity)")

    model = io.load(original)
    Pipeline(build_passes(spec, REGISTRY, PRESETS)).run(model)
    optimized = ir.to_proto(model).SerializeToString()
    for (_, expected), got in zip(data, [_run(optimized, feeds) for feeds, _ in data], strict=False):
        _assert_close(got, expected, f"{spec} on {model_dir.name}")


@pytest.mark.slow
@pytest.mark.parametrize("path", LIGHT_MODELS, ids=lambda p: p.stem)
def test_default_preset_on_light_models(path: pathlib.Path) -> None:
    """The default preset, with per-pass verification, on every light_* model."""
    from sftonnx import api

    # The three models with ~0.5 GB of generated weights take minutes per check: verify them once, at the end.
    heavy = path.stem in ("light_vgg19", "light_bvlc_alexnet", "light_zfnet512")
    result = api.optimize(path, verify_each=not heavy)
    assert result.verification is not None and result.verification.passed
    assert result.report.final.nodes < result.report.original.nodes
    assert_same_outputs(path.read_bytes(), ir.to_proto(result.model).SerializeToString())
    # The stored expected output was produced from a fixed input that is not shipped: check its shape.
    stored = onnx.TensorProto()
    stored.ParseFromString(path.with_name(path.stem + "_output_0.pb").read_bytes())
    assert list(result.model.graph.outputs[0].shape.numpy()) == list(stored.dims)
