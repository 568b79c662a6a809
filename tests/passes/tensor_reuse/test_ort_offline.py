"""ort-offline: onnxruntime's optimized graph saved in the model, verified against the original."""

from __future__ import annotations

import pytest

from sftonnx import api
from sftonnx.errors import PassConfigError
from sftonnx.passes.tensor_reuse.ort_offline import OrtOfflinePass
from tests.helpers import LIGHT_MODELS, make_model, seeded

CONV_BN_RELU = """
<ir_version: 8, opset_import: ["" : 18]>
g (float[1, 3, 8, 8] x) => (float[1, 4, 8, 8] y) {
    c = Conv <pads = [1, 1, 1, 1]> (x, w, b)
    n = BatchNormalization(c, s, bias, mean, var)
    y = Relu(n)
}
"""


@pytest.mark.parametrize("level", ["basic", "extended"])
def test_ort_offline_folds_and_verifies(level):
    model = make_model(
        CONV_BN_RELU,
        w=seeded((4, 3, 3, 3)),
        b=seeded(4),
        s=seeded(4, 1) + 2,
        bias=seeded(4, 2),
        mean=seeded(4, 3),
        var=abs(seeded(4, 4)) + 0.5,
    )
    result = api.optimize(model, passes=[OrtOfflinePass(level=level)], verify_each=True)
    ops = [(n.domain, n.op_type) for n in result.model.graph]
    assert ("", "BatchNormalization") not in ops
    if level == "extended":
        assert ("com.microsoft", "FusedConv") in ops  # Conv+Relu fused into a contrib op
    assert result.verification.passed and result.report.rows[0].changes["nodes_removed"] >= 1


def test_level_all_needs_consent():
    with pytest.raises(PassConfigError, match="allow_layout"):
        OrtOfflinePass(level="all")


def test_ort_offline_on_light_squeezenet():
    path = next(p for p in LIGHT_MODELS if p.stem == "light_squeezenet")
    result = api.optimize(path, passes="simplify,ort-offline{level=basic}")
    assert result.verification.passed
