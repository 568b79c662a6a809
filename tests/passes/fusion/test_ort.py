"""fuse-ort (passes/fusion/ort.py): onnxscript's onnxruntime fusions, counted and verified."""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

from sftonnx import io
from sftonnx.passes.fusion.ort import FuseOrtPass
from tests.helpers import EXACT_ATOL, EXACT_RTOL, make_model, run_ort, seeded


def test_fuse_ort_leaves_unmatched_model_untouched():
    model = make_model("""<ir_version: 8, opset_import: ["" : 18]>
g (float[2,4] x) => (float[2,3] y) {
    y = MatMul(x, w)
}""", w=seeded((4, 3)))
    text = ir.to_onnx_text(model)
    report = FuseOrtPass()(model)
    assert not report.modified and report.skipped == {"no_fusion_found": 1}
    assert ir.to_onnx_text(model) == text


def test_fuse_ort_fuses_bias_gelu():
    model = make_model("""<ir_version: 8, opset_import: ["" : 18]>
g (float[2,5,16] x) => (float[2,5,16] y) {
    l = Add(x, bias)
    a = Div(l, r2)
    e = Erf(a)
    g1 = Add(e, one)
    h1 = Mul(half, g1)
    y = Mul(l, h1)
}""", bias=seeded((16,), 1), r2=np.array(np.sqrt(2), np.float32), one=np.array(1, np.float32),
        half=np.array(0.5, np.float32))
    original = ir.to_proto(model).SerializeToString()
    report = FuseOrtPass()(model)
    assert report.changes["bias_gelu_fused"] == 1
    assert [(n.domain, n.op_type) for n in model.graph] == [("com.microsoft", "BiasGelu")]
    feeds = {"x": seeded((2, 5, 16), 4)}
    np.testing.assert_allclose(run_ort(model, feeds)[0], run_ort(original, feeds)[0], atol=EXACT_ATOL,
                               rtol=EXACT_RTOL)


def test_fuse_ort_fuses_tiny_bert_attention():
    import models

    model = io.load(models.ensure("tiny_bert"))
    original = io.to_bytes(model)
    report = FuseOrtPass()(model)
    assert report.changes["attention_fused"] == 2
    assert report.changes["skip_layer_normalization_fused"] == 4
    assert report.changes["bias_gelu_fused"] == 2
    feeds = {"input_ids": np.random.default_rng(0).integers(0, 100, (3, 32)).astype(np.int64)}
    for expected, actual in zip(run_ort(original, feeds), run_ort(model, feeds), strict=True):
        np.testing.assert_allclose(actual, expected, atol=EXACT_ATOL, rtol=EXACT_RTOL)
