"""share-weights: transposed / reshaped copies share one initializer; outputs bit-identical."""

from __future__ import annotations

import numpy as np
import onnx_ir as ir
import pytest

from sftonnx.errors import PassConfigError
from sftonnx.passes.tensor_reuse.weights import ShareWeightsPass
from tests.helpers import make_model, random_feeds, run_ort, seeded

TIED = """
<ir_version: 8, opset_import: ["" : 18]>
g (float[N, 64] x) => (float[N, 32] y, float[N, 64] z, float[N, 2048] f) {
    y = MatMul(x, w)
    z = MatMul(y, wt)
    f = Mul(flat_in, wflat)
}
"""


def tied() -> ir.Model:
    w = seeded((64, 32))
    model = make_model(
        TIED, w=w, wt=w.T.copy(), wflat=w.reshape(1, 2048).copy(), flat_in=np.ones((1, 2048), np.float32)
    )
    return model


def test_transposed_and_reshaped_copies_are_shared():
    model = tied()
    original = ir.to_proto(model).SerializeToString()
    report = ShareWeightsPass()(model)
    assert report.changes == {"initializers_shared": 2}
    assert report.details["bytes_saved"] == 2 * 64 * 32 * 4
    assert sorted(n.op_type for n in model.graph if n.op_type in ("Transpose", "Reshape")) == ["Reshape", "Transpose"]
    assert "wt" not in model.graph.initializers and "wflat" not in model.graph.initializers
    feeds = random_feeds(original)
    for got, expected in zip(run_ort(model, feeds), run_ort(original, feeds), strict=True):
        np.testing.assert_array_equal(got, expected)


def test_unrelated_weights_and_small_ones_untouched():
    model = make_model(
        TIED,
        w=seeded((64, 32)),
        wt=seeded((32, 64), seed=3),
        wflat=seeded((1, 2048), seed=4),
        flat_in=np.ones((1, 2048), np.float32),
    )
    assert not ShareWeightsPass()(model).modified
    small = tied()
    assert not ShareWeightsPass(min_elements=4096)(small).modified


def test_bad_option():
    with pytest.raises(PassConfigError, match="min_elements"):
        ShareWeightsPass(min_elements=0)
