"""simplify, eliminate-identity, eliminate-dead, cse, dedup."""

from __future__ import annotations

import numpy as np
import onnx_ir as ir
import pytest

from sftonnx.errors import PassConfigError
from sftonnx.passes.cleanup import (
    DeduplicateInitializersPass,
    EliminateCommonSubexpressionsPass,
    EliminateDeadNodesPass,
    EliminateIdentityPass,
    SimplifyPass,
)
from tests.helpers import assert_same_outputs, make_model, op_types, run_ort, seeded, to_bytes

FOLDABLE = """
<ir_version: 8, opset_import: ["" : 18]>
g (float[N, 4] x) => (float[N, 4] y) {
    two = Constant <value = float {2.0}> ()
    s = Add(two, two)
    shape = Shape(x)
    c = Cast <to = 1> (shape)
    i = Identity(x)
    m = Mul(i, s)
    y = Relu(m)
}
"""

WITH_IF = """
<ir_version: 8, opset_import: ["" : 18]>
g (float[N, 4] x, bool cond) => (float[N, 4] y) {
    y = If (cond) <
        then_branch = then_g () => (float[N, 4] t) { a = Identity(x)  t = Relu(a) },
        else_branch = else_g () => (float[N, 4] e) { b = Identity(x)  e = Neg(b) }
    >
}
"""


def test_simplify_folds_constants_and_removes_dead_shape():
    model = make_model(FOLDABLE)
    original = to_bytes(model)
    report = SimplifyPass()(model)
    assert report.modified and report.changes == {"nodes_removed": 4}
    assert op_types(model) == ["Constant", "Mul", "Relu"]  # Add folded into a Constant; Shape/Cast dead
    from sftonnx.ir_utils import constant_array

    assert constant_array(list(model.graph)[1].inputs[1]) == 4.0
    assert_same_outputs(original, model)


def test_simplify_sorts_unsorted_graph_first():
    model = make_model(FOLDABLE)
    nodes = list(model.graph)
    # Move the last node to the front: onnxsim alone rejects this ("must be topologically sorted").
    last = nodes[-1]
    model.graph.remove(last)
    model.graph.insert_before(nodes[0], last)
    assert op_types(model)[0] == "Relu"
    report = SimplifyPass()(model)
    assert not report.skipped and op_types(model) == ["Constant", "Mul", "Relu"]


def test_simplify_survives_onnxsim_failure(monkeypatch):
    import onnxsim

    def boom(*args, **kwargs):
        raise RuntimeError("Nodes in a graph must be topologically sorted\nmore")

    monkeypatch.setattr(onnxsim, "simplify", boom)
    model = make_model(FOLDABLE)
    text = ir.to_onnx_text(model)
    report = SimplifyPass()(model)
    assert not report.modified and report.skipped == {"simplifier_failed": 1}
    assert report.details["simplifier_error"] == "Nodes in a graph must be topologically sorted"
    assert ir.to_onnx_text(model) == text


def test_simplify_bad_option():
    with pytest.raises(PassConfigError, match="max_folded_size"):
        SimplifyPass(max_folded_size="lots")


def test_identity_elimination_in_subgraphs():
    model = make_model(WITH_IF)
    original = to_bytes(model)
    report = EliminateIdentityPass()(model)
    assert report.changes == {"nodes_removed": 2}
    branches = [attr.value for attr in list(model.graph)[0].attributes.values()]
    assert all("Identity" not in op_types_of(g) for g in branches)
    for cond in (True, False):
        from tests.helpers import run_ort

        x = seeded((2, 4))
        feeds = {"x": x, "cond": np.array(cond)}
        np.testing.assert_array_equal(run_ort(model, feeds)[0], run_ort(original, feeds)[0])


def op_types_of(graph: ir.Graph) -> list[str]:
    return [node.op_type for node in graph]


def test_identity_on_graph_output_keeps_output_name():
    model = make_model("""
<ir_version: 8, opset_import: ["" : 18]>
g (float[2] x) => (float[2] y) { r = Relu(x)  y = Identity(r) }
""")
    EliminateIdentityPass()(model)
    assert [o.name for o in model.graph.outputs] == ["y"] and op_types(model) == ["Relu"]


NESTED_IF = """
<ir_version: 8, opset_import: ["" : 18]>
g (float[2, 4] x, bool c1, bool c2) => (float[2, 4] y, float[2, 4] z) {
    h = Relu(x)
    hi = Identity(h)
    y = If (c1) <
        then_branch = t1 () => (float[2, 4] t1o) {
            t1o = If (c2) <
                then_branch = t2 () => (float[2, 4] t2o) { t2o = Identity(hi) },
                else_branch = e2 () => (float[2, 4] e2o) { e2o = Identity(hi) }
            >
        },
        else_branch = e1 () => (float[2, 4] e1o) { n = Neg(hi)  e1o = Identity(n) }
    >
    z = Identity(h)
}
"""


def test_identity_elimination_in_nested_if_keeps_outer_scope_outputs():
    """Both inner branches return the outer value `hi` through an Identity: those two must stay.

    onnx-ir's pass renamed `hi` to the first branch's output name and then failed on the second branch
    ("already an output of a different graph"). `hi = Identity(h)` is read inside three subgraphs.
    """
    model = make_model(NESTED_IF)
    original = to_bytes(model)
    report = EliminateIdentityPass()(model)
    assert report.changes == {"nodes_removed": 3}  # hi, e1o, z
    assert report.skipped == {"outer_scope_to_output": 2}  # t2o, e2o
    assert [o.name for o in model.graph.outputs] == ["y", "z"]
    assert op_types(model) == ["Relu", "If"]
    outer = list(model.graph)[1]
    inner = list(outer.attributes["then_branch"].as_graph())[0]
    for branch in ("then_branch", "else_branch"):
        identity = list(inner.attributes[branch].as_graph())[0]
        assert identity.op_type == "Identity" and identity.inputs[0].name == "z"  # h took the name z
    assert op_types_of(outer.attributes["else_branch"].as_graph()) == ["Neg"]
    import onnx

    onnx.checker.check_model(ir.to_proto(model), full_check=True)
    for c1 in (True, False):
        for c2 in (True, False):
            feeds = {"x": seeded((2, 4)), "c1": np.array(c1), "c2": np.array(c2)}
            for expected, actual in zip(run_ort(original, feeds), run_ort(model, feeds), strict=True):
                np.testing.assert_array_equal(actual, expected)


def test_identity_of_graph_input_or_existing_output_stays():
    model = make_model("""
<ir_version: 8, opset_import: ["" : 18]>
g (float[2] x) => (float[2] r, float[2] y, float[2] z) { r = Relu(x)  y = Identity(r)  z = Identity(x) }
""")
    text = ir.to_onnx_text(model)
    report = EliminateIdentityPass()(model)
    assert not report.modified
    assert report.skipped == {"value_already_output": 1, "graph_input_to_output": 1}
    assert ir.to_onnx_text(model) == text


def test_identity_of_graph_output_read_elsewhere_keeps_both_names():
    model = make_model("""
<ir_version: 8, opset_import: ["" : 18]>
g (float[2] x) => (float[2] r, float[2] z) { r = Relu(x)  i = Identity(r)  z = Neg(i) }
""")
    original = to_bytes(model)
    report = EliminateIdentityPass()(model)
    assert report.changes == {"nodes_removed": 1} and not report.skipped
    assert [o.name for o in model.graph.outputs] == ["r", "z"] and op_types(model) == ["Relu", "Neg"]
    assert_same_outputs(original, model)


def test_dead_nodes_and_unused_initializers_removed():
    model = make_model(
        """
<ir_version: 8, opset_import: ["" : 18]>
g (float[N, 4] x) => (float[N, 3] y) { unused = MatMul(x, w2)  y = MatMul(x, w) }
""",
        w=seeded((4, 3)),
        w2=seeded((4, 5)),
    )
    report = EliminateDeadNodesPass()(model)
    assert report.changes == {"nodes_removed": 1, "initializers_removed": 1}
    assert list(model.graph.initializers) == ["w"]


def test_cse_merges_duplicates_but_not_random_ops():
    model = make_model("""
<ir_version: 8, opset_import: ["" : 18]>
g (float[N, 4] x) => (float[N, 4] y, float[2] z) {
    a = Relu(x)
    b = Relu(x)
    y = Add(a, b)
    r1 = RandomNormal <shape = [2]> ()
    r2 = RandomNormal <shape = [2]> ()
    z = Sub(r1, r2)
}
""")
    report = EliminateCommonSubexpressionsPass()(model)
    assert report.changes == {"nodes_removed": 1}
    assert op_types(model).count("RandomNormal") == 2 and op_types(model).count("Relu") == 1


def test_cse_bad_option():
    with pytest.raises(PassConfigError, match="size_limit"):
        EliminateCommonSubexpressionsPass(size_limit=-1)


def test_dedup_shares_identical_initializers_only():
    weight = seeded((4, 3))
    model = make_model(
        """
<ir_version: 8, opset_import: ["" : 18]>
g (float[N, 4] x) => (float[N, 3] y, float[N, 3] z, float[N, 3] u) {
    y = MatMul(x, w1)
    z = MatMul(x, w2)
    u = MatMul(x, w3)
}
""",
        w1=weight,
        w2=weight.copy(),
        w3=weight + 1e-3,
    )
    original = to_bytes(model)
    report = DeduplicateInitializersPass()(model)
    assert report.changes == {"initializers_removed": 1}
    assert len(model.graph.initializers) == 2
    assert_same_outputs(original, model)
    assert not DeduplicateInitializersPass()(model).modified


def test_simplify_keeps_transformer_standard_onnx():
    """onnxsim fuses attention into com.microsoft::Attention by default; the portable simplify must not."""
    pytest.importorskip("torch")
    import models
    from sftonnx import io

    model = io.load(models.ensure("tiny_bert"))
    original = to_bytes(model)
    report = SimplifyPass()(model)
    assert report.changes["nodes_removed"] > 0 and not report.skipped
    domains = {node.domain for node in ir.traversal.RecursiveGraphIterator(model.graph)}
    assert domains <= {"", "ai.onnx"}, domains
    assert_same_outputs(original, model)
    contrib = io.load(original)
    SimplifyPass(portable=False)(contrib)
    assert any(node.domain == "com.microsoft" for node in contrib.graph)
