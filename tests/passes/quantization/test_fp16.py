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


# ------------------------------------------------------------------ nodes that cannot take float16 stay float32
ML_HEADER = '<ir_version: 8, opset_import: ["" : 17, "ai.onnx.ml" : 3]>'


def _kept(model: ir.Model, op_type: str) -> ir.Node:
    node = next(n for n in model.graph if n.op_type == op_type)
    assert all(v.dtype == ir.DataType.FLOAT for v in [*node.inputs, *node.outputs] if v is not None
               and v.dtype in (ir.DataType.FLOAT, ir.DataType.FLOAT16))
    return node


def test_ml_domain_op_stays_float32_and_reads_the_float32_input():
    """ai.onnx.ml's Scaler takes float/double/int only: it runs on the float32 input, its output is cast."""
    text = f"""{ML_HEADER}
g (float[N,4] x) => (float[N,3] y) {{
    s = ai.onnx.ml.Scaler <offset = [0.5, -1.0, 0.0, 2.0], scale = [2.0, 0.5, 1.0, 3.0]> (x)
    y = MatMul(s, w)
}}"""
    model = make_model(text, w=seeded((4, 3)))
    original = io.to_bytes(model)
    report = ConvertFloat16Pass()(model)
    check_model(model)
    assert report.skipped == {"no_float16_type": 1}
    assert report.details["kept_float32_reasons"] == {"no_float16_type": {"Scaler": 1}}
    scaler = _kept(model, "Scaler")
    assert scaler.inputs[0] is model.graph.inputs[0]  # no float16 round trip in front of it
    assert ops(model) == {"Scaler": 1, "Cast": 2, "MatMul": 1}  # Scaler -> fp16 -> MatMul -> fp32
    assert model.graph.initializers["w"].const_value.dtype == ir.DataType.FLOAT16
    x = seeded((5, 4), seed=3)
    assert cosine(run_ort(original, {"x": x})[0], run_ort(model, {"x": x})[0]) >= FP16_MIN_COSINE


def test_model_of_float32_only_ops_is_left_unchanged():
    """A scikit-learn pipeline (Scaler -> LinearRegressor): nothing may change, not even a Cast pair."""
    text = f"""{ML_HEADER}
g (float[N,2] x) => (float[N,1] y) {{
    s = ai.onnx.ml.Scaler <offset = [0.5, -1.0], scale = [2.0, 0.5]> (x)
    y = ai.onnx.ml.LinearRegressor <coefficients = [0.25, -3.0], intercepts = [1.5]> (s)
}}"""
    model = make_model(text)
    before = ir.to_onnx_text(model)
    report = ConvertFloat16Pass()(model)
    assert not report.modified
    assert report.skipped == {"no_float16_type": 2}
    assert ir.to_onnx_text(model) == before


DQL_MODEL = f"""{HEADER}
g (float[N,4] x) => (float[N,3] y) {{
    h = Relu(x)
    q, s, z = DynamicQuantizeLinear(h)
    m = MatMulInteger(q, wq, z, wz)
    mf = Cast <to = 1> (m)
    ws = Mul(s, wscale)
    y = Mul(mf, ws)
}}"""


def _dql_model() -> ir.Model:
    rng = np.random.default_rng(0)
    return make_model(DQL_MODEL, wq=rng.integers(0, 255, (4, 3)).astype(np.uint8), wz=np.array(128, np.uint8),
                      wscale=np.array(0.02, np.float32))


def test_dynamic_quantize_linear_stays_float32_behind_casts():
    """DynamicQuantizeLinear takes float32 only (an ORT-quantized model like ddddocr's common_old)."""
    model = _dql_model()
    original = io.to_bytes(model)
    report = ConvertFloat16Pass()(model)
    check_model(model)  # onnx checker + strict shape inference + onnxruntime load
    assert report.skipped == {"no_float16_type": 1}
    quantize = _kept(model, "DynamicQuantizeLinear")
    assert quantize.inputs[0].producer().op_type == "Cast"  # Relu ran in float16
    assert report.changes["casts_retargeted"] == 1  # Cast(to=float) of the integer product now gives float16
    x = seeded((6, 4), seed=2)
    assert cosine(run_ort(original, {"x": x})[0], run_ort(model, {"x": x})[0]) >= FP16_MIN_COSINE


def test_constant_of_shape_without_value_gets_a_float16_zero():
    """ConstantOfShape's absent value is a float32 zero: retyping its output alone breaks inference (minimol)."""
    text = f"""{HEADER}
g (float[N,4] x) => (float[N,4] y) {{
    h = MatMul(x, w)
    shape = Shape(h)
    zero = ConstantOfShape(shape)
    y = Add(h, zero)
}}"""
    model = make_model(text, w=seeded((4, 4)))
    original = io.to_bytes(model)
    report = ConvertFloat16Pass()(model)
    check_model(model)
    fill = next(n for n in model.graph if n.op_type == "ConstantOfShape").attributes["value"].as_tensor()
    assert fill.dtype == ir.DataType.FLOAT16 and fill.numpy().tolist() == [0.0]
    assert report.changes["constants_converted"] == 1 and not report.skipped
    x = seeded((3, 4), seed=5)
    assert cosine(run_ort(original, {"x": x})[0], run_ort(model, {"x": x})[0]) >= FP16_MIN_COSINE


@pytest.mark.parametrize(("reduction", "skipped"), [("add", {"no_float16_kernel": 1}), ("none", {})])
def test_scatter_with_reduction_stays_float32(reduction, skipped):
    """onnxruntime's CPU ScatterElements has no float16 'add'/'mul' (fails when it runs); without one it has."""
    text = f"""{HEADER}
g (float[N,4] x, int64[N,4] i) => (float[N,4] y) {{
    h = MatMul(x, w)
    y = ScatterElements <axis = 0, reduction = "{reduction}"> (h, i, h)
}}"""
    model = make_model(text, w=seeded((4, 4)))
    original = io.to_bytes(model)
    report = ConvertFloat16Pass()(model)
    check_model(model)
    assert dict(report.skipped) == skipped
    feeds = {"x": seeded((3, 4), seed=1), "i": np.random.default_rng(0).integers(0, 3, (3, 4))}
    assert cosine(run_ort(original, feeds)[0], run_ort(model, feeds)[0]) >= FP16_MIN_COSINE


@pytest.mark.parametrize(("perm", "skipped"), [((1, 0, 2), {"ort_fusion_crash": 1}), ((0, 2, 1), {})])
def test_batch_transpose_into_matmul_stays_float32(perm, skipped):
    """Transpose(perm=[1, 0, 2]) -> MatMul(2-D weight) in float16 crashes onnxruntime 1.32's session creation
    (MatmulTransposeFusion; lac_encoder's output layer): the Transpose stays float32, the MatMul does not."""
    text = f"""{HEADER}
g (float[4,4,8] x) => (float[4,M,5] y) {{
    t = Transpose <perm = [{", ".join(map(str, perm))}]> (x)
    y = MatMul(t, w)
}}"""
    model = make_model(text, w=seeded((8 if perm == (1, 0, 2) else 4, 5)))
    original = io.to_bytes(model)
    report = ConvertFloat16Pass()(model)
    assert dict(report.skipped) == skipped
    matmul = next(n for n in model.graph if n.op_type == "MatMul")
    assert matmul.inputs[0].dtype == ir.DataType.FLOAT16
    assert (matmul.inputs[0].producer().op_type == "Cast") == bool(skipped)  # the fusion cannot match
    check_model(model)
    x = seeded((4, 4, 8), seed=6)
    assert cosine(run_ort(original, {"x": x})[0], run_ort(model, {"x": x})[0]) >= FP16_MIN_COSINE


def test_graph_failing_strict_inference_is_refused_and_model_unchanged(monkeypatch):
    """A misjudged schema (simulated: every op said to take float16) leaves a graph strict inference rejects:
    the pass refuses with the reason, the model is untouched, and a preset skips the pass instead of failing."""
    from sftonnx.passes.quantization import fp16
    from sftonnx.pipeline import Pipeline

    monkeypatch.setattr(fp16, "_schema_allows_float16", lambda *args: True)
    model = _dql_model()
    before = ir.to_onnx_text(model)
    with pytest.raises(ir.passes.PreconditionError, match="fails strict shape inference.*DynamicQuantizeLinear"):
        ConvertFloat16Pass()(model)
    assert ir.to_onnx_text(model) == before
    report = Pipeline([(ConvertFloat16Pass(), True)]).run(model)
    assert [(row.name, row.status) for row in report.rows] == [("fp16", "skipped")]
    assert "strict shape inference" in report.rows[0].message
    assert ir.to_onnx_text(model) == before


def test_fp16_preset_runs_lossless_then_fp16_and_skips_what_fp16_refuses(tmp_path):
    """``--preset fp16`` is "lossless,fp16{...}" (not the bare pass of the same name); on a model with an If the
    fp16 pass is skipped with its reason, as any preset pass (exit 0, not 2)."""
    from sftonnx import api
    from sftonnx.passes import PRESETS

    text = f"""{HEADER}
g (float[N,5] x) => (float[N,5] z) {{
    h = MatMul(x, w)
    zero = Constant <value_float = 0.0> ()
    s = ReduceSum <keepdims = 0> (h)
    c = Greater(s, zero)
    z = If(c) <then_branch = t () => (float[N,5] o) {{ o = Relu(h) }},
               else_branch = e () => (float[N,5] o) {{ o = Neg(h) }}>
}}"""
    model = make_model(text, w=seeded((5, 5)))
    data = {"x": seeded((4, 5), seed=7)}
    result = api.optimize(model, tmp_path / "out.onnx", preset="fp16", data=data)
    names = [row.name for row in result.report.rows]
    assert names == [*(r.name for r in api.optimize(model, preset="lossless", data=data).report.rows), "fp16"]
    assert PRESETS["fp16"].startswith("lossless,")
    assert result.report.rows[-1].status == "skipped"
    assert "subgraphs" in result.report.rows[-1].message
    assert (tmp_path / "out.onnx").is_file()


def test_epsilon_guard_that_vanishes_in_float16_stays_float32():
    """``log(x * x + 1e-10)``: 1e-10 is 0 in float16 and x * x underflows for |x| < 2.4e-4, so log gives -inf
    (basic-pitch's normalized log spectrogram, then NaN). The Add and the Log stay float32, the Mul does not."""
    text = f"""{HEADER}
g (float[N,4] x) => (float[N,4] y) {{
    h = MatMul(x, w)
    sq = Mul(h, h)
    eps = Constant <value_float = 1e-10> ()
    guarded = Add(sq, eps)
    y = Log(guarded)
}}"""
    model = make_model(text, w=np.eye(4, dtype=np.float32))
    original = io.to_bytes(model)
    report = ConvertFloat16Pass()(model)
    check_model(model)
    assert report.skipped == {"float16_underflow": 2}
    assert report.details["kept_float32"] == {"Add": 1, "Log": 1}
    add = _kept(model, "Add")
    assert add.inputs[1].producer().op_type == "Constant"  # the epsilon itself stays float32 (no Cast pair)
    assert add.inputs[1].producer().attributes["value_float"].value == pytest.approx(1e-10)
    x = np.zeros((3, 4), np.float32)  # silence: the original gives log(1e-10), float16 without the guard -inf
    x[1], x[2] = 1e-5, seeded((4,), seed=8)
    expected, actual = run_ort(original, {"x": x})[0], run_ort(model, {"x": x})[0]
    assert np.isfinite(actual).all()
    assert np.abs(actual - expected).max() < 1.0  # at worst log(1e-10) for log(2e-10): finite, same scale


def test_dequantize_output_dtype_follows_the_float16_scale():
    """DequantizeLinear (opset 23) names its output type in ``output_dtype``: float32 becomes float16 with it."""
    text = """<ir_version: 10, opset_import: ["" : 23]>
g (float[N,4] x) => (float[N,3] y) {
    w = DequantizeLinear <output_dtype = 1> (wq, scale, zero)
    y = MatMul(x, w)
}"""
    rng = np.random.default_rng(0)
    model = make_model(text, wq=rng.integers(-100, 100, (4, 3)).astype(np.int8),
                       scale=np.array(0.01, np.float32), zero=np.array(0, np.int8))
    original = io.to_bytes(model)
    report = ConvertFloat16Pass()(model)
    check_model(model)
    dequantize = next(n for n in model.graph if n.op_type == "DequantizeLinear")
    assert dequantize.attributes["output_dtype"].value == ir.DataType.FLOAT16
    assert report.changes["dtypes_retargeted"] == 1 and not report.skipped
    x = seeded((3, 4), seed=9)
    assert cosine(run_ort(original, {"x": x})[0], run_ort(model, {"x": x})[0]) >= FP16_MIN_COSINE
