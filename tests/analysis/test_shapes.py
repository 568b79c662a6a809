"""Shape inference on a skeleton copy: dynamic dims, input_shapes validation, fallbacks."""

import onnx
import onnx_ir as ir
import pytest

from sftonnx.analysis import infer_tensor_shapes, tensor_nbytes
from sftonnx.errors import InputError

DYNAMIC = """
<ir_version: 8, opset_import: ["" : 17]>
g (float[N, seq, 4] x, float[N, 4] z, float[4, 6] w) => (float[N, seq, 6] y) { y = MatMul(x, w) }
"""


def test_batch_like_dims_become_one_and_other_symbols_stay():
    table = infer_tensor_shapes(ir.from_onnx_text(DYNAMIC))
    assert table.input_shapes == {"x": (1, "seq", 4), "z": (1, 4), "w": (4, 6)}
    assert table.tensors["y"].shape == (1, "seq", 6)
    assert table.tensors["y"].nbytes is None


def test_input_shapes_bind_symbols_for_other_inputs():
    model = ir.from_onnx_text(DYNAMIC)
    table = infer_tensor_shapes(model, {"x": (3, 7, 4)})
    assert table.input_shapes["z"] == (3, 4)
    assert table.static_shape(model.graph.outputs[0]) == (3, 7, 6)
    assert table.nbytes(model.graph.outputs[0]) == 3 * 7 * 6 * 4


def test_symbol_named_batch_on_a_later_axis_becomes_one():
    model = ir.from_onnx_text("""
    <ir_version: 8, opset_import: ["" : 17]>
    g (float[4, seq, batch_size] x) => (float[4, seq, batch_size] y) { y = Relu(x) }
    """)
    assert infer_tensor_shapes(model).input_shapes == {"x": (4, "seq", 1)}


@pytest.mark.parametrize(
    "shapes, message",
    [
        ({"nope": (1, 2, 4)}, "unknown inputs"),
        ({"x": (1, 4)}, "rank"),
        ({"x": (1, 2, 5)}, "axis 2"),
    ],
)
def test_bad_input_shapes_are_input_errors(shapes, message):
    with pytest.raises(InputError, match=message):
        infer_tensor_shapes(ir.from_onnx_text(DYNAMIC), shapes)


def test_failed_inference_falls_back_to_the_model_shapes(monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("inference exploded")

    monkeypatch.setattr(onnx.shape_inference, "infer_shapes", broken)
    model = ir.from_onnx_text("""
    <ir_version: 8, opset_import: ["" : 17]>
    g (float[2, 3] x) => (float[5] y) <int64[1] s = {5}> { y = Reshape(x, s) }
    """)
    table = infer_tensor_shapes(model)
    assert table.error == "RuntimeError: inference exploded"
    assert table.static_shape(model.graph.inputs[0]) == (2, 3)
    assert table.static_shape(model.graph.outputs[0]) == (5,)


def test_stale_shapes_do_not_block_inference():
    model = ir.from_onnx_text("""
    <ir_version: 8, opset_import: ["" : 17]>
    g (float[2, 3] x, bool c) => (float[2, 3] y) {
      m = Relu(x)
      y = If(c) <then_branch = t () => (float[2, 3] p) { a = Relu(m)
                                                         p = Neg(a) },
                 else_branch = e () => (float[2, 3] q) { q = Neg(m) }>
    }
    """)
    main = next(iter(model.graph))
    inner = next(n for n in ir.traversal.RecursiveGraphIterator(model.graph) if n.outputs[0].name == "a")
    for value in (main.outputs[0], inner.outputs[0]):
        value.type = ir.TensorType(ir.DataType.FLOAT)
        value.shape = ir.Shape([7, 7])  # stale, as a careless rewrite might leave it
    table = infer_tensor_shapes(model)
    assert table.error is None
    assert table.static_shape(main.outputs[0]) == (2, 3)
    assert table.static_shape(inner.outputs[0]) == (2, 3)


def test_tensor_nbytes():
    assert tensor_nbytes(ir.DataType.FLOAT, (2, 3)) == 24
    assert tensor_nbytes(ir.DataType.INT4, (3,)) == 2
    assert tensor_nbytes(ir.DataType.FLOAT, (2, "n")) is None
    assert tensor_nbytes(ir.DataType.STRING, (2,)) is None
    assert tensor_nbytes(None, (2,)) is None
