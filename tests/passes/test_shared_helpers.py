"""The helpers shared by the passes: constant reading, metadata-only readers, names, union-find, value swap."""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

from sftonnx.ir_utils import NameAllocator, constant_array, reads_metadata_only, replace_value
from sftonnx.passes._union_find import UnionFind

MODEL = """
<ir_version: 8, opset_import: ["" : 18]>
g (float[2] x) => (float[2] y, int64[1] s) {
    c = Constant <value_floats = [1.0, 2.0]> ()
    k = Constant <value_int = 3> ()
    a = Add(x, c)
    t = CastLike(k, a)
    s = Shape(a)
    y = Mul(a, t)
}
"""


def nodes(model: ir.Model) -> dict[str, ir.Node]:
    return {node.outputs[0].name: node for node in model.graph}


def test_constant_array_reads_every_constant_form_and_nothing_else():
    model = ir.from_onnx_text(MODEL)
    by_output = nodes(model)
    np.testing.assert_array_equal(constant_array(by_output["c"].outputs[0]), np.array([1.0, 2.0], np.float32))
    assert constant_array(by_output["k"].outputs[0]).tolist() == 3
    assert constant_array(by_output["a"].outputs[0]) is None
    assert constant_array(model.graph.inputs[0]) is None and constant_array(None) is None


def test_constant_array_leaves_the_model_alone():
    """onnx_ir's get_const_tensor names a Constant's ``value`` tensor in place; reading must not change bytes."""
    model = ir.from_onnx_text(MODEL.replace("value_floats = [1.0, 2.0]", "value = float[2] {1.0, 2.0}"))
    before = ir.to_proto(model).SerializeToString()
    assert constant_array(nodes(model)["c"].outputs[0]).tolist() == [1.0, 2.0]
    assert ir.to_proto(model).SerializeToString() == before


def test_castlike_reads_only_the_type_of_its_second_input():
    by_output = nodes(ir.from_onnx_text(MODEL))
    assert reads_metadata_only(by_output["t"], 1) and not reads_metadata_only(by_output["t"], 0)
    assert reads_metadata_only(by_output["s"], 0)
    assert not reads_metadata_only(by_output["y"], 0) and not reads_metadata_only(by_output["a"], 1)


def test_name_allocator_avoids_every_name_of_the_model_and_reserves_what_it_hands_out():
    model = ir.from_onnx_text(MODEL)
    fresh = NameAllocator.for_model(model)
    assert fresh("a") == "a_1" and fresh("a") == "a_2" and fresh("new") == "new" and fresh("new") == "new_1"
    named = NameAllocator.for_model(model, node_names=True)
    next(iter(model.graph)).name = "node"
    assert NameAllocator.for_model(model, node_names=True)("node") == "node_1" and named("node") == "node"


def test_union_find_keeps_the_first_root_and_reports_what_it_absorbed():
    sets: UnionFind[str] = UnionFind(["a", "b", "c"])
    assert sets.union("a", "b") == "b" and sets.union("b", "a") is None
    assert sets.union("c", "b") == "a"  # c's root c absorbs a's set
    assert {sets.find(x) for x in "abc"} == {"c"} and sets.find("d") == "d" and len(sets) == 4


def test_replace_value_keeps_graph_output_names():
    model = ir.from_onnx_text(MODEL)
    output = model.graph.outputs[0]
    new = ir.Value(name="relu_out")
    replace_value(output, new, lambda name: f"{name}_before")
    model.graph.append(ir.node("Relu", [output], outputs=[new]))  # made after: it reads the old value
    assert model.graph.outputs[0] is new and new.name == "y" and output.name == "y_before"
    assert [use.node.op_type for use in output.uses()] == ["Relu"]
