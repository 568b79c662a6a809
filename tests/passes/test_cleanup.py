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
from tests.helpers import assert_same_outputs, make_model, op_types, seeded, to_bytes

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
