"""Liveness, peak activation memory and the greedy reuse plan on tiny hand-checked graphs."""

import json

import onnx_ir as ir
import pytest

from sftonnx.analysis import plan_memory, topological_order
from sftonnx.analysis.memory import _best_fit_offsets
from sftonnx.errors import InputError

# x: [1, 16] float = 64 B. Steps and lifetimes (inclusive):
#   0 a = Relu(x)        a [0, 2]  64 B
#   1 b = Neg(a)         b [1, 2]  64 B
#   2 c = Concat(a, b)   c [2, 3] 128 B
#   3 d = Relu(c)        d [3, 4] 128 B
#   4 e = Concat(d, x)   e [4, 4] 192 B (graph output); x [0, 4] (read again at step 4)
# Live bytes per step: 128, 192, 320, 320, 384 -> peak 384 at step 4 (x, d, e). No reuse: 640.
BRANCHY = """
<ir_version: 8, opset_import: ["" : 17]>
g (float[1, 16] x) => (float[1, 48] e) {
  a = Relu(x)
  b = Neg(a)
  c = Concat <axis = 1> (a, b)
  d = Relu(c)
  e = Concat <axis = 1> (d, x)
}
"""

# Two independent branches, each a big Concat reduced to one number, then added.
TWO_BRANCHES = """
<ir_version: 8, opset_import: ["" : 17]>
g (float[1, 16] x) => (float[1, 1] out) {
  a1 = Concat <axis = 1> (x, x, x, x)
  a2 = ReduceSum(a1)
  b1 = Concat <axis = 1> (x, x, x, x)
  b2 = ReduceSum(b1)
  out = Add(a2, b2)
}
"""


def _lifetimes(plan):
    return {t.name: (t.start, t.end, t.nbytes) for t in plan.tensors}


def test_branchy_graph_lifetimes_peak_and_arena():
    plan = plan_memory(ir.from_onnx_text(BRANCHY))
    assert _lifetimes(plan) == {
        "x": (0, 4, 64), "a": (0, 2, 64), "b": (1, 2, 64),
        "c": (2, 3, 128), "d": (3, 4, 128), "e": (4, 4, 192),
    }
    assert plan.step_bytes == [128, 192, 320, 320, 384]
    assert plan.peak_activation_bytes == 384
    assert plan.peak_step == 4
    assert sorted(plan.live_at_peak) == ["d", "e", "x"]
    assert plan.sum_bytes == 640
    # Greedy by size, best fit: e@0; c@0 (disjoint from e); d@192 (above e and c); x@320; a@128 (the gap
    # between c and x); b@192 (the 128-byte gap between a and x, the best fit).
    offsets = {t.name: t.offset for t in plan.tensors}
    assert offsets == {"e": 0, "c": 0, "d": 192, "x": 320, "a": 128, "b": 192}
    assert plan.arena_bytes == 384
    assert {t.name: t.kind for t in plan.tensors} == {
        "x": "input", "a": "intermediate", "b": "intermediate", "c": "intermediate", "d": "intermediate",
        "e": "output",
    }


def test_arena_never_overlaps_live_tensors():
    plan = plan_memory(ir.from_onnx_text(BRANCHY))
    for first in plan.tensors:
        for second in plan.tensors:
            if first is second or first.end < second.start or second.end < first.start:
                continue
            disjoint = (first.offset + first.nbytes <= second.offset
                        or second.offset + second.nbytes <= first.offset)
            assert disjoint, (first, second)


def test_order_changes_the_peak_and_leaves_the_model_alone():
    model = ir.from_onnx_text(TWO_BRANCHES)
    text = ir.to_onnx_text(model)
    a1, a2, b1, b2, add = list(model.graph)
    # Branch by branch: peak x + a1 + a2 = 64 + 256 + 4.
    assert plan_memory(model).peak_activation_bytes == 324
    assert plan_memory(model, order=[a1, a2, b1, b2, add]).peak_activation_bytes == 324
    # Both big Concats first: x + a1 + b1 live at step 1.
    interleaved = plan_memory(model, order=[a1, b1, a2, b2, add])
    assert interleaved.peak_activation_bytes == 576
    assert interleaved.peak_step == 1 and interleaved.peak_node == "Concat#1"
    assert ir.to_onnx_text(model) == text
    assert list(model.graph) == [a1, a2, b1, b2, add]


def test_invalid_orders_are_rejected():
    model = ir.from_onnx_text(TWO_BRANCHES)
    a1, a2, b1, b2, add = list(model.graph)
    with pytest.raises(ValueError, match="before"):
        plan_memory(model, order=[a2, a1, b1, b2, add])
    with pytest.raises(ValueError, match="exactly once"):
        plan_memory(model, order=[a1, a2, b1, b2])


def test_graph_output_lives_to_the_end_and_unread_tensor_only_at_its_step():
    model = ir.from_onnx_text("""
    <ir_version: 8, opset_import: ["" : 17]>
    g (float[1, 16] x) => (float[1, 16] early, float[1, 16] late) {
      early = Relu(x)
      unused = Neg(x)
      late = Sigmoid(x)
    }
    """)
    plan = plan_memory(model)
    assert _lifetimes(plan) == {
        "x": (0, 2, 64), "early": (0, 2, 64), "unused": (1, 1, 64), "late": (2, 2, 64),
    }
    assert plan.peak_activation_bytes == 192


def test_uses_inside_nested_subgraphs_extend_lifetimes():
    model = ir.from_onnx_text("""
    <ir_version: 8, opset_import: ["" : 17]>
    g (float[1, 16] x, bool c) => (float[1, 16] y) {
      big = Relu(x)
      other = Neg(x)
      y = If(c) <
        then_branch = t () => (float[1, 16] p) {
          p = If(c) <then_branch = tt () => (float[1, 16] q) { q = Sigmoid(big) },
                     else_branch = te () => (float[1, 16] r) { r = Identity(other) }>
        },
        else_branch = e () => (float[1, 16] s) { s = Identity(other) }>
    }
    """)
    plan = plan_memory(model)
    lifetimes = _lifetimes(plan)
    assert lifetimes["big"] == (0, 2, 64)  # read by the nested If body, so live until the outer If runs
    assert lifetimes["other"] == (1, 2, 64)
    assert lifetimes["c"] == (0, 2, 1)
    assert lifetimes["x"] == (0, 1, 64)
    # Steps 1 (x, big, other, c) and 2 (big, other, c, y) tie; without the subgraph reads big would end at 0.
    assert plan.step_bytes == [129, 193, 193]
    assert plan.peak_step == 1


def test_constants_and_folded_constants_are_not_activations():
    model = ir.from_onnx_text("""
    <ir_version: 3, opset_import: ["" : 9]>
    g (float[2, 8] x, int64[2] w_shape) => (float[2, 16] y) <int64[2] w_shape = {8, 16}> {
      w = ConstantOfShape <value = float[1] {0.02}> (w_shape)
      k = Constant <value = float[1] {2.0}> ()
      s = Mul(w, k)
      y = MatMul(x, s)
    }
    """)
    plan = plan_memory(model)
    assert _lifetimes(plan) == {"x": (0, 3, 64), "y": (3, 3, 128)}


def test_random_ops_are_not_folded():
    model = ir.from_onnx_text("""
    <ir_version: 8, opset_import: ["" : 17]>
    g (float[2, 8] x) => (float[2, 8] y) {
      noise = RandomNormal <shape = [2, 8]> ()
      y = Add(x, noise)
    }
    """)
    assert set(_lifetimes(plan_memory(model))) == {"x", "noise", "y"}


def test_symbolic_batch_filled_by_input_shapes_and_shared_symbols():
    model = ir.from_onnx_text("""
    <ir_version: 8, opset_import: ["" : 17]>
    g (float[N, 4] x, float[N, 4] z) => (float[N, 4] y) { y = Add(x, z) }
    """)
    assert plan_memory(model).peak_activation_bytes == 3 * 16  # N taken as 1
    plan = plan_memory(model, {"x": (5, 4)})  # binds N = 5 for z too
    assert {t.name: t.nbytes for t in plan.tensors} == {"x": 80, "z": 80, "y": 80}
    assert plan.unknown_size == []


def test_unknown_sizes_are_listed_and_left_out():
    model = ir.from_onnx_text("""
    <ir_version: 8, opset_import: ["" : 17]>
    g (float[batch, seq] x, float[4] w) => (float[batch, seq] y, float[4] v) {
      y = Relu(x)
      v = Neg(w)
    }
    """)
    plan = plan_memory(model)
    assert sorted(plan.unknown_size) == ["x", "y"]
    assert plan.peak_activation_bytes == plan.sum_bytes == plan.arena_bytes == 32  # w and v
    assert {t.name: t.offset for t in plan.tensors}["x"] is None


def test_unsorted_graph_is_ordered_without_mutation():
    model = ir.from_onnx_text("""
    <ir_version: 8, opset_import: ["" : 17]>
    g (float[1, 16] x) => (float[1, 16] y) {
      y = Neg(a)
      a = Relu(x)
    }
    """)
    assert [n.op_type for n in topological_order(model.graph)] == ["Relu", "Neg"]
    assert _lifetimes(plan_memory(model)) == {"x": (0, 0, 64), "a": (0, 1, 64), "y": (1, 1, 64)}
    assert [n.op_type for n in model.graph] == ["Neg", "Relu"]


def test_cycle_is_an_input_error():
    model = ir.from_onnx_text("""
    <ir_version: 8, opset_import: ["" : 17]>
    g (float[1, 16] x) => (float[1, 16] y) {
      a = Add(x, b)
      b = Relu(a)
      y = Neg(b)
    }
    """)
    with pytest.raises(InputError, match="cycle"):
        plan_memory(model)


def test_to_json_is_json_able():
    data = json.loads(json.dumps(plan_memory(ir.from_onnx_text(BRANCHY)).to_json()))
    assert data["peak_activation_bytes"] == 384 and data["arena_bytes"] == 384 and data["sum_bytes"] == 640
    assert data["peak_node"] == "Concat#4"
    assert data["tensors"][0] == {
        "name": "x", "kind": "input", "start": 0, "end": 4, "nbytes": 64, "offset": 320,
    }


def test_reuse_prefers_the_tightest_gap():
    # (bytes, first step, last step). Largest first: A@0, B@100 (above A), C@200 (above A and B),
    # D@295 (above all three). At step 2 only B [100, 200) and D [295, 385) are live, leaving gaps of 100
    # bytes at 0 and 95 bytes at 200: T (20 bytes, step 2) goes into the tighter one, at 200.
    tensors = [(100, 0, 0), (100, 0, 2), (95, 0, 0), (90, 0, 2), (20, 2, 2)]
    assert _best_fit_offsets(tensors) == [0, 100, 200, 295, 200]
