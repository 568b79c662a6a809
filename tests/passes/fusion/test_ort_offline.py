"""ort-offline: onnxruntime's optimized graph saved in the model, verified against the original."""

from __future__ import annotations

import onnx
import onnx_ir as ir
import pytest

from sftonnx import api
from sftonnx.errors import PassConfigError
from sftonnx.passes.fusion import ort_offline
from sftonnx.passes.fusion.ort_offline import OrtOfflinePass
from tests.helpers import LIGHT_MODELS, assert_same_outputs, make_model, seeded, to_bytes

CONV_BN_RELU = """
<ir_version: 8, opset_import: ["" : 18]>
g (float[1, 3, 8, 8] x) => (float[1, 4, 8, 8] y) {
    c = Conv <pads = [1, 1, 1, 1]> (x, w, b)
    n = BatchNormalization(c, s, bias, mean, var)
    y = Relu(n)
}
"""


def _conv_bn_relu():
    return make_model(CONV_BN_RELU, w=seeded((4, 3, 3, 3)), b=seeded(4), s=seeded(4, 1) + 2, bias=seeded(4, 2),
                      mean=seeded(4, 3), var=abs(seeded(4, 4)) + 0.5)


@pytest.mark.parametrize("level", ["basic", "extended"])
def test_ort_offline_folds_and_verifies(level):
    model = _conv_bn_relu()
    result = api.optimize(model, passes=[OrtOfflinePass(level=level)], verify_each=True)
    ops = [(n.domain, n.op_type) for n in result.model.graph]
    assert ("", "BatchNormalization") not in ops
    if level == "extended":
        assert ("com.microsoft", "FusedConv") in ops  # Conv+Relu fused into a contrib op
    assert result.verification.passed and result.report.rows[0].changes["nodes_removed"] >= 1


# LayerNorm written out, as opset-12 exporters (paddle2onnx) do: onnxruntime fuses it into a default-domain
# LayerNormalization, which onnx has only from opset 17, so the checker rejects what onnxruntime saves.
LAYER_NORM_OPSET_12 = """
<ir_version: 7, opset_import: ["" : 12]>
g (float[2, 5, 8] x) => (float[2, 5, 8] y) {
    mean = ReduceMean <axes = [-1]> (x)
    d = Sub(x, mean)
    two = Constant <value = float {2.0}> ()
    sq = Pow(d, two)
    var = ReduceMean <axes = [-1]> (sq)
    eps = Constant <value = float {1e-5}> ()
    ve = Add(var, eps)
    sd = Sqrt(ve)
    n = Div(d, sd)
    sc = Mul(n, gamma)
    y = Add(sc, beta)
}
"""


def test_ort_offline_turns_off_fusions_the_checker_rejects():
    model = make_model(LAYER_NORM_OPSET_12, gamma=seeded(8) + 1, beta=seeded(8, 1))
    original = to_bytes(model)
    report = OrtOfflinePass()(model)
    assert report.skipped == {"nonstandard_fusions_disabled": 1}
    assert "LayerNormFusionL1" in report.details["disabled_optimizers"]
    assert report.changes == {"nodes_removed": 2}  # the two Constants folded; the LayerNorm stays written out
    assert "LayerNormalization" not in [node.op_type for node in model.graph]
    assert model.opset_imports[""] == 12
    onnx.checker.check_model(ir.to_proto(model))
    assert_same_outputs(original, model)
    result = api.optimize(original, passes="ort-offline", verify_each=True)  # the pipeline's checks agree
    assert result.verification.passed and result.report.rows[0].status == "ok"


def test_ort_offline_leaves_model_unchanged_when_no_result_is_valid(monkeypatch):
    monkeypatch.setattr(ort_offline, "_check", lambda optimized, held: "onnx checker: made up")
    # IR 3 with the initializers listed as inputs: the pass rewrites those for onnxruntime, on a copy only.
    model = make_model(
        CONV_BN_RELU.replace("ir_version: 8", "ir_version: 3").replace(": 18", ": 9"),
        w=seeded((4, 3, 3, 3)),
        b=seeded(4),
        s=seeded(4, 1) + 2,
        bias=seeded(4, 2),
        mean=seeded(4, 3),
        var=abs(seeded(4, 4)) + 0.5,
    )
    for value in model.graph.initializers.values():
        model.graph.inputs.append(value)
    text = ir.to_onnx_text(model)
    report = OrtOfflinePass()(model)
    assert not report.modified and report.skipped == {"invalid_ort_output": 1}
    assert report.details["invalid_ort_output"] == "onnx checker: made up"
    assert ir.to_onnx_text(model) == text and model.ir_version == 3


def test_level_all_needs_consent():
    with pytest.raises(PassConfigError, match="allow_layout"):
        OrtOfflinePass(level="all")


def test_ort_offline_on_light_squeezenet():
    path = next(p for p in LIGHT_MODELS if p.stem == "light_squeezenet")
    result = api.optimize(path, passes="simplify,ort-offline{level=basic}")
    assert result.verification.passed


def test_ort_offline_on_a_model_with_external_data(tmp_path):
    from sftonnx import io

    model = _conv_bn_relu()
    original = to_bytes(model)
    io.save(model, tmp_path / "m.onnx", external_data=True, size_threshold_bytes=16)
    loaded = io.load(tmp_path / "m.onnx")
    assert isinstance(loaded.graph.initializers["w"].const_value, ir.ExternalTensor)
    report = OrtOfflinePass()(loaded)
    assert report.changes["nodes_removed"] >= 1 and not report.skipped
    assert_same_outputs(original, loaded)
