"""Model IO: loading from every source, validation errors, atomic and external-data saving."""

from __future__ import annotations

import numpy as np
import onnx
import onnx_ir as ir
import pytest

from sftonnx import io
from sftonnx.errors import InputError
from tests.helpers import make_model, run_ort, seeded

TINY = """
<ir_version: 8, opset_import: ["" : 18]>
tiny (float[N, 4] x) => (float[N, 3] y) {
    y = MatMul(x, w)
}
"""


def tiny() -> ir.Model:
    return make_model(TINY, w=seeded((4, 3)))


def test_load_from_path_bytes_proto_and_model(tmp_path):
    model = tiny()
    path = tmp_path / "m.onnx"
    io.save(model, path)
    proto = onnx.load(path)
    for source in (path, str(path), path.read_bytes(), proto, model):
        loaded = io.load(source)
        assert [n.op_type for n in loaded.graph] == ["MatMul"]
        np.testing.assert_array_equal(loaded.graph.initializers["w"].const_value.numpy(), seeded((4, 3)))


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"", "empty"),
        (b"this is not a model at all\n", "not"),
        (None, "not a valid ONNX model|not an ONNX model"),  # truncated protobuf
    ],
)
def test_bad_files_raise_input_error(tmp_path, content, message):
    path = tmp_path / "bad.onnx"
    if content is None:
        content = ir.to_proto(tiny()).SerializeToString()[:-7]
    path.write_bytes(content)
    with pytest.raises(InputError, match=message):
        io.load(path)


def test_missing_file_and_directory(tmp_path):
    with pytest.raises(InputError, match="not found"):
        io.load(tmp_path / "nope.onnx")
    with pytest.raises(InputError, match="directory"):
        io.load(tmp_path)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('<ir_version: 8, opset_import: ["" : 5]> g (float[2] x) => (float[2] y) { y = Relu(x) }', "too old"),
        ('<ir_version: 8, opset_import: ["" : 99]> g (float[2] x) => (float[2] y) { y = Relu(x) }', "newer"),
        (
            '<ir_version: 8, opset_import: ["" : 18, "acme.ops" : 1]> g (float[2] x) => (float[2] y) '
            "{ y = acme.ops.Frobnicate(x) }",
            "acme.ops",
        ),
        ('<ir_version: 8, opset_import: ["" : 18]> g (float[2] x) => () { }', "empty|no outputs"),
    ],
)
def test_unsupported_models_are_rejected(text, message):
    with pytest.raises(InputError, match=message):
        io.load(ir.to_proto(ir.from_onnx_text(text)).SerializeToString())


def test_save_is_atomic_and_refuses_overwrite(tmp_path):
    path = tmp_path / "out.onnx"
    io.save(tiny(), path)
    before = path.read_bytes()
    with pytest.raises(InputError, match="exists"):
        io.save(tiny(), path, overwrite=False)
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.onnx"]  # no staging leftovers


def test_save_failure_leaves_no_file(tmp_path, monkeypatch):
    path = tmp_path / "out.onnx"

    def explode(model):
        raise RuntimeError("disk full")

    monkeypatch.setattr(io, "to_bytes", explode)
    with pytest.raises(RuntimeError):
        io.save(tiny(), path)
    assert list(tmp_path.iterdir()) == []


def test_external_data_roundtrip(tmp_path):
    big = make_model(TINY.replace("4", "512").replace("3", "256"), w=seeded((512, 256)))
    path = tmp_path / "ext.onnx"
    io.save(big, path, external_data=True)
    assert (tmp_path / "ext.onnx.data").stat().st_size == 512 * 256 * 4
    assert path.stat().st_size < 10_000
    loaded = io.load(path)
    x = seeded((2, 512), seed=1)
    expected = x @ seeded((512, 256))
    np.testing.assert_allclose(run_ort(loaded, {"x": x})[0], expected, rtol=1e-4, atol=1e-4)
    # Rewriting a model that reads its weights from the data file it is about to replace.
    io.save(loaded, path, external_data=True)
    np.testing.assert_allclose(run_ort(io.load(path), {"x": x})[0], expected, rtol=1e-4, atol=1e-4)


def test_model_over_protobuf_limit_goes_external(tmp_path, monkeypatch):
    monkeypatch.setattr(io, "PROTOBUF_LIMIT", 10)  # pretend 48 bytes of weights is past 2 GiB
    path = tmp_path / "m.onnx"
    io.save(tiny(), path)
    assert (tmp_path / "m.onnx.data").exists()
    with pytest.raises(InputError, match="2 GiB"):
        io.to_bytes(tiny())


def paddle_style_model() -> onnx.ModelProto:
    """Conv -> Reshape -> MatMul with the batch declared as ``dim_value: -1`` (as Paddle exports write it),
    on the input, the output, a value_info and inside an If branch; one 0 dimension on an intermediate."""
    from onnx import TensorProto, helper, numpy_helper

    branch_out = helper.make_tensor_value_info("b", TensorProto.FLOAT, [-1, 10])
    then_g = helper.make_graph([helper.make_node("Relu", ["y0"], ["b"])], "then", [], [branch_out])
    else_g = helper.make_graph(
        [helper.make_node("Neg", ["y0"], ["n"]), helper.make_node("Relu", ["n"], ["b2"])],
        "else",
        [],
        [helper.make_tensor_value_info("b2", TensorProto.FLOAT, [-1, 10])],
        value_info=[helper.make_tensor_value_info("n", TensorProto.FLOAT, [-1, 10])],
    )
    nodes = [
        helper.make_node("Conv", ["x", "w"], ["c"]),
        helper.make_node("Reshape", ["c", "shape"], ["r"]),
        helper.make_node("MatMul", ["r", "m"], ["y0"]),
        helper.make_node("If", ["cond"], ["y"], then_branch=then_g, else_branch=else_g),
    ]
    graph = helper.make_graph(
        nodes,
        "paddle",
        [
            helper.make_tensor_value_info("x", TensorProto.FLOAT, [-1, 3, 6, 6]),
            helper.make_tensor_value_info("cond", TensorProto.BOOL, []),
        ],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [-1, 10])],
        [
            numpy_helper.from_array(seeded((4, 3, 3, 3)), "w"),
            numpy_helper.from_array(np.array([-1, 64], dtype=np.int64), "shape"),
            numpy_helper.from_array(seeded((64, 10), seed=1), "m"),
        ],
        value_info=[
            helper.make_tensor_value_info("c", TensorProto.FLOAT, [-1, 4, 4, 4]),
            helper.make_tensor_value_info("r", TensorProto.FLOAT, [0, 64]),
        ],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


def test_nonpositive_declared_dims_load_as_dynamic():
    model = io.load(paddle_style_model())
    values = {v.name: v for v in ir.traversal.RecursiveGraphIterator(model.graph) for v in v.outputs}
    values.update({v.name: v for v in model.graph.inputs})
    unknown = ir.SymbolicDim(None)
    assert list(values["x"].shape) == [unknown, 3, 6, 6]
    assert list(model.graph.outputs[0].shape) == [unknown, 10]
    assert list(values["c"].shape) == [unknown, 4, 4, 4]
    assert list(values["r"].shape) == [unknown, 64]
    branches = list(model.graph)[-1].attributes
    assert list(branches["then_branch"].as_graph().outputs[0].shape) == [unknown, 10]
    else_g = branches["else_branch"].as_graph()
    assert list(else_g.outputs[0].shape) == [unknown, 10]
    assert list(list(else_g)[0].outputs[0].shape) == [unknown, 10]
    assert model.graph.initializers["shape"].const_value.numpy().tolist() == [-1, 64]  # data is not a shape
    for value in values.values():
        if value.shape is not None:
            assert all(not isinstance(d, int) or d > 0 for d in value.shape), value


def test_cli_optimizes_a_model_with_minus_one_batch(tmp_path):
    """Every preset used to crash here: random inputs of shape (-1, 3, 6, 6)."""
    from tests.helpers import run_cli

    path, out = tmp_path / "paddle.onnx", tmp_path / "out.onnx"
    onnx.save(paddle_style_model(), path)
    result = run_cli("optimize", path, out)
    assert result.returncode == 0, result.stderr
    assert "verified" in result.stdout
    assert io.load(out).graph.inputs[0].shape[0] == ir.SymbolicDim(None)


def _matmul_proto() -> onnx.ModelProto:
    return ir.to_proto(tiny())


def _undefined_attribute(proto: onnx.ModelProto) -> None:
    """An attribute whose type field was lost: protobuf and onnx-ir read it, onnx-ir cannot write it."""
    attribute = proto.graph.node[0].attribute.add()
    attribute.name = "alpha"
    attribute.f = 1.0  # type stays UNDEFINED (0)


def _missing_external_file(proto: onnx.ModelProto) -> None:
    """The model was copied without its .data file."""
    tensor = proto.graph.initializer[0]
    tensor.ClearField("raw_data")
    tensor.data_location = onnx.TensorProto.EXTERNAL
    entry = tensor.external_data.add()
    entry.key, entry.value = "location", "weights.onnx.data"


def _truncated_external_file(proto: onnx.ModelProto, folder) -> None:
    _missing_external_file(proto)
    (folder / "weights.onnx.data").write_bytes(b"\0" * 20)  # w needs 4 * 3 * 4 = 48 bytes


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (_undefined_attribute, "the model cannot be serialized: node"),
        (_missing_external_file, "external data of tensor 'w' not found: weights.onnx.data"),
        (_truncated_external_file, "external data of tensor 'w' is truncated"),
    ],
)
def test_models_that_load_but_cannot_be_written_are_input_errors(tmp_path, mutate, message):
    from tests.helpers import assert_clean_error, run_cli

    proto = _matmul_proto()
    if mutate is _truncated_external_file:
        mutate(proto, tmp_path)
    else:
        mutate(proto)
    path, out = tmp_path / "mutated.onnx", tmp_path / "out.onnx"
    path.write_bytes(proto.SerializeToString())
    with pytest.raises(InputError, match=message.replace("'", ".")):
        io.load(path)
    assert_clean_error(run_cli("optimize", path, out), 2, message)
    assert not out.exists()
    assert_clean_error(run_cli("inspect", path), 2, message)
