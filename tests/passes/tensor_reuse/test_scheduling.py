"""schedule-memory: lower planned peak on a breadth-first branchy graph, keep results bit-identical."""

from __future__ import annotations

import numpy as np
import onnx_ir as ir
import pytest

from sftonnx.analysis import plan_memory
from sftonnx.errors import PassConfigError
from sftonnx.passes.tensor_reuse.scheduling import ScheduleMemoryPass
from tests.helpers import make_model, random_feeds, run_ort, seeded

# Four branches, each expanding 4 -> 64 channels then reducing back to 4, stored breadth-first: all four
# 64-channel tensors are live together. Finishing one branch before starting the next keeps one alive.
BRANCHY = """
<ir_version: 8, opset_import: ["" : 18]>
g (float[1, 4, 16, 16] x) => (float[1, 16, 16, 16] y) {
    e0 = Conv(x, we0)
    e1 = Conv(x, we1)
    e2 = Conv(x, we2)
    e3 = Conv(x, we3)
    r0 = Conv(e0, wr0)
    r1 = Conv(e1, wr1)
    r2 = Conv(e2, wr2)
    r3 = Conv(e3, wr3)
    y = Concat <axis = 1> (r0, r1, r2, r3)
}
"""


def branchy() -> ir.Model:
    weights = {f"we{i}": seeded((64, 4, 1, 1), seed=i) for i in range(4)}
    weights |= {f"wr{i}": seeded((4, 64, 1, 1), seed=10 + i) for i in range(4)}
    return make_model(BRANCHY, **weights)


def test_schedule_lowers_peak_and_keeps_outputs_identical():
    model = branchy()
    original = ir.to_proto(model).SerializeToString()
    before = plan_memory(model).peak_activation_bytes
    report = ScheduleMemoryPass()(model)
    after = plan_memory(model).peak_activation_bytes
    assert report.changes["nodes_reordered"] > 0
    assert report.details["peak_before"] == before and report.details["peak_after"] == after
    branch = 64 * 16 * 16 * 4
    assert before >= 4 * branch and after < 2 * branch + 2 * 16 * 16 * 16 * 4
    feeds = random_feeds(original)
    np.testing.assert_array_equal(run_ort(model, feeds)[0], run_ort(original, feeds)[0])


def test_linear_graph_is_left_alone():
    model = make_model("""
<ir_version: 8, opset_import: ["" : 18]>
g (float[1, 4] x) => (float[1, 4] y) { a = Relu(x)  b = Neg(a)  c = Abs(b)  y = Relu(c) }
""")
    text = ir.to_onnx_text(model)
    report = ScheduleMemoryPass()(model)
    assert not report.modified and report.skipped == {"no_lower_peak": 1}
    assert ir.to_onnx_text(model) == text


def test_min_gain_threshold_and_bad_option():
    model = branchy()
    report = ScheduleMemoryPass(min_gain=0.9)(model)
    assert not report.modified and report.skipped == {"no_lower_peak": 1}
    with pytest.raises(PassConfigError, match="min_gain"):
        ScheduleMemoryPass(min_gain=1.5)
