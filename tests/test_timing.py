"""The shared latency timer (sftonnx.timing) and the one-line error helper (sftonnx.errors.first_line)."""

from __future__ import annotations

import itertools

import onnx_ir as ir
import pytest

from sftonnx import io, timing
from sftonnx.errors import FIRST_LINE_LIMIT, first_line
from tests.helpers import make_model, seeded

MATMUL = """
<ir_version: 8, opset_import: ["" : 18]>
g (float[2, 4] x) => (float[2, 3] y) {
    y = MatMul(x, w)
}
"""


def fake_clock(step: float = 1.0):
    ticks = itertools.count()
    return lambda: next(ticks) * step


def test_repeats_time_a_batch_of_calls_and_report_the_mean():
    calls: list[str] = []
    # Each call reads no clock: one sample = (clock after the batch - clock before) / repeats = 1 / 4.
    series = timing.interleaved_runs(
        [lambda: calls.append("A"), lambda: calls.append("B")], runs=2, repeats=4, clock=fake_clock()
    )
    assert "".join(calls) == "AAAABBBB" * 2
    assert [s.times for s in series] == [[0.25, 0.25], [0.25, 0.25]]


def test_alternate_reverses_the_order_every_other_round():
    calls: list[str] = []
    runners = [lambda name=name: calls.append(name) for name in "ABC"]
    timing.interleaved_runs(runners, runs=4, alternate=True, clock=fake_clock())
    assert "".join(calls) == "ABC" "CBA" "ABC" "CBA"


def test_a_failing_runner_is_recorded_or_raised():
    def crash():
        raise RuntimeError("kernel exploded\nsecond line")

    ok, failed = timing.interleaved_runs([lambda: None, crash], runs=3, clock=fake_clock())
    assert len(ok.times) == 3 and ok.error is None
    assert failed.times == [] and failed.error == "run 1 failed: kernel exploded"
    with pytest.raises(RuntimeError, match="kernel exploded"):
        timing.interleaved_runs([lambda: None, crash], runs=3, raise_errors=True, clock=fake_clock())


def test_median_latencies_time_each_model_interleaved(tmp_path):
    small = io.to_bytes(make_model(MATMUL, w=seeded((4, 3))))
    path = tmp_path / "m.onnx"
    ir.save(make_model(MATMUL, w=seeded((4, 3), seed=1)), path)
    feeds = {"x": seeded((2, 4)), "unused": seeded((1,))}
    latencies = timing.median_latencies([small, str(path)], feeds, rounds=3, budget_seconds=0.05)
    assert len(latencies) == 2
    assert all(0.0 < value < 0.05 for value in latencies)


@pytest.mark.parametrize(
    ("error", "expected"),
    [
        (ValueError("first\nsecond"), "first"),
        (ValueError("  padded  "), "padded"),
        (KeyError(), "KeyError"),
        ("a message\nmore", "a message"),
    ],
)
def test_first_line(error, expected):
    assert first_line(error) == expected


def test_first_line_cuts_long_lines():
    text = first_line(RuntimeError("x" * 1000))
    assert len(text) == FIRST_LINE_LIMIT and text.endswith("...")
    assert first_line(RuntimeError("y" * 50), limit=10) == "yyyyyyy..."
