"""ConvertFloat16Pass (fp16): float16 weights and compute, float32 islands and boundaries."""

from __future__ import annotations

import numpy as np
import onnx_ir as ir
import pytest

from sftonnx import io
from sftonnx.passes.quantization import ConvertFloat16Pass
from tests.helpers import cosine, make_model, run_ort, seeded
from tests.passes.quantization.support import check_model, ops

HEADER = '<ir_version: 8, opset_import: ["" : 17]>'
FP16_MIN_COSINE = 0.999

MODEL = f"""{HEADER}
g (float[N,8] x) => (float[N,8] y, float[K] r) {{
    h = MatMul(x, w)
    s = Constant <value_float = 0.5> ()
    m = Mul(h, s)
    y = Relu(m)
    start = Constant <value_float = 0.0> ()
    limit = Constant <value_float = 3.0> ()
    delta = Constant <value_float = 0.5> ()
    r = Range(start, limit, delta)
}}"""


def test_weights_and_compute_become_float16_io_stays_float32():
    model = make_model(MODEL, w=seeded((8, 8)))
    original = io.to_bytes(model)
    report = ConvertFloat16Pass()(model)
    check_model(model)
    assert model.graph.initializers["w"].const_value.dtype == ir.DataType.FLOAT16
    assert [v.dtype for v in model.graph.inputs] == [ir.DataType.FLOAT]
    assert [v.dtype for v in model.graph.outputs] == [ir.DataType.FLOAT, ir.DataType.FLOAT]
    assert report.details["kept_float32"] == {"Range": 1}
    assert report.skipped == {"float32_op": 1}
    assert report.details["kept_float32_reasons"] == {"float32_op": {"Range": 1}}
    assert [n.op_type for n in model.graph].count("Cast") == report.changes["casts_inserted"] == 2  # x in, y out
    assert report.changes["initializers_converted"] == 1 and report.changes["casts_inserted"] >= 2
    x = seeded((3, 8), seed=4)
    for e, a in zip(run_ort(original, {"x": x}), run_ort(model, {"x": x}), strict=True):
        assert a.dtype == np.float32 and cosine(e, a) >= FP16_MIN_COSINE


def test_without_keep_io_types_inputs_and_outputs_are_float16():
    model = make_model(MODEL, w=seeded((8, 8)))
    ConvertFloat16Pass(keep_io_types=False)(model)
    check_model(model)
    assert model.graph.inputs[0].dtype == ir.DataType.FLOAT16
    outputs = run_ort(model, {"x": seeded((2, 8)).astype(np.float16)})
    assert outputs[0].dtype == np.float16 and outputs[1].dtype == np.float16
    assert ops(model)["Range"] == 1


def test_subgraphs_are_refused():
    text = f"""{HEADER}
g (float[N,5] x, bool c) => (float[N,5] z) {{
    z = If(c) <then_branch = t () => (float[N,5] o) {{ o = Relu(x) }},
               else_branch = e () => (float[N,5] o) {{ o = Neg(x) }}>
}}"""
    with pytest.raises(ir.passes.PreconditionError):
        ConvertFloat16Pass()(make_model(text))


def test_resnet18_float16_cosine():
    import models

    model = io.load(models.ensure("resnet18"))
    original = io.to_bytes(model)
    ConvertFloat16Pass()(model)
    x = np.random.default_rng(0).standard_normal((8, 3, 32, 32)).astype(np.float32)
    expected, actual = run_ort(original, {"input": x}), run_ort(model, {"input": x})
    assert cosine(expected[0], actual[0]) >= FP16_MIN_COSINE


def test_sequence_values_keep_their_container_type():
    """PyTorch exports ``split`` as SplitToSequence -> SequenceAt with an untyped sequence in between; it must
    not be retyped as a float16 tensor (strict shape inference then rejects SequenceAt)."""
    text = f"""{HEADER}
g (float[N,6] x) => (float[N,3] y) {{
    h = MatMul(x, w)
    split = Constant <value_ints = [3, 3]> ()
    s = SplitToSequence <axis = 1> (h, split)
    i = Constant <value_int = 1> ()
    y = SequenceAt(s, i)
}}"""
    model = make_model(text, w=seeded((6, 6)))
    original = io.to_bytes(model)
    report = ConvertFloat16Pass()(model)
    check_model(model)  # onnx checker + strict shape inference + onnxruntime load
    sequence = next(n for n in model.graph if n.op_type == "SplitToSequence").outputs[0]
    assert not isinstance(sequence.type, ir.TensorType)
    assert report.changes["initializers_converted"] == 1
    x = seeded((2, 6), seed=1)
    assert cosine(run_ort(original, {"x": x})[0], run_ort(model, {"x": x})[0]) >= FP16_MIN_COSINE
