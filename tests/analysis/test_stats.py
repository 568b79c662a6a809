"""Operator histogram, parameter counts and MACs on tiny hand-checked models."""

import json

import numpy as np
import onnx_ir as ir
import pytest

from sftonnx.analysis import (
    UNKNOWN_SHAPE,
    count_macs,
    generated_constant_stats,
    infer_tensor_shapes,
    op_histogram,
    parameter_stats,
    summarize,
)
from tests.helpers import make_model, random_feeds, run_ort, seeded

# Conv: 4 -> 6 channels in 2 groups, 3x3 kernel, dilation 2 (effective 5x5), stride 2, pad 1 on a 9x9 input:
# out = floor((9 + 2 - 5) / 2) + 1 = 4, so Y is [1, 6, 4, 4].
CONV = """
<ir_version: 8, opset_import: ["" : 17]>
g (float[N, 4, 9, 9] x, float[6, 2, 3, 3] w) => (float[N, 6, 4, 4] y) {
  y = Conv <group = 2, strides = [2, 2], pads = [1, 1, 1, 1], dilations = [2, 2]> (x, w)
}
"""
# N * Cout * prod(out spatial) * (Cin / group) * prod(kernel) = 1 * 6 * 16 * 2 * 9
CONV_MACS = 1728

# ConvTranspose: 4 -> 4 channels in 2 groups (W is [Cin, Cout/group, kh, kw]), 3x3, stride 2 on 5x5 -> 11x11.
CONV_TRANSPOSE = """
<ir_version: 8, opset_import: ["" : 17]>
g (float[1, 4, 5, 5] x, float[4, 2, 3, 3] w) => (float[1, 4, 11, 11] y) {
  y = ConvTranspose <group = 2, strides = [2, 2]> (x, w)
}
"""
# N * Cin * prod(in spatial) * (Cout / group) * prod(kernel) = 1 * 4 * 25 * 2 * 9
CONV_TRANSPOSE_MACS = 1800

# Gemm with both transposes: A is [K, M] = [5, 2], B is [N, K] = [7, 5]: M * N * K = 2 * 7 * 5.
GEMM = """
<ir_version: 8, opset_import: ["" : 17]>
g (float[5, 2] a, float[7, 5] b, float[7] c) => (float[2, 7] y) {
  y = Gemm <transA = 1, transB = 1> (a, b, c)
}
"""
GEMM_MACS = 70

# Batched MatMul with broadcasting: [2, 1, 3, 4] @ [5, 4, 6] -> [2, 5, 3, 6]: 2 * 5 * (3 * 6 * 4);
# and a vector times a matrix: [4] @ [4, 6] -> [6]: 4 * 6.
MATMULS = """
<ir_version: 8, opset_import: ["" : 17]>
g (float[2, 1, 3, 4] a, float[5, 4, 6] b, float[4] v, float[4, 6] m) => (float[2, 5, 3, 6] y, float[6] z) {
  y = MatMul(a, b)
  z = MatMul(v, m)
}
"""
MATMUL_MACS = 720 + 24

SUBGRAPHS = """
<ir_version: 8, opset_import: ["" : 17, "com.microsoft" : 1]>
g (float[2, 4] x, bool c) => (float[2, 4] y) {
  r = Relu(x)
  g = com.microsoft.Gelu(r)
  y = If(c) <then_branch = t () => (float[2, 4] a) { a = Relu(g) },
             else_branch = e () => (float[2, 4] b) { n = Neg(g)
                                                     b = Relu(n) }>
}
"""


def test_op_histogram_counts_subgraph_nodes_and_names_domains():
    model = ir.from_onnx_text(SUBGRAPHS)
    assert op_histogram(model) == {"Relu": 3, "If": 1, "Neg": 1, "com.microsoft::Gelu": 1}


def test_parameter_stats_counts_initializers_constants_and_subgraph_initializers():
    model = ir.from_onnx_text("""
    <ir_version: 8, opset_import: ["" : 17]>
    g (float[4, 3] x, bool c) => (float[4, 3] y) <float[4, 3] w = {1,2,3,4,5,6,7,8,9,10,11,12}> {
      s = Constant <value = int64[2] {4, 3}> ()
      f = Constant <value_floats = [1.0, 2.0, 3.0]> ()
      r = Reshape(x, s)
      a = Add(r, w)
      y = If(c) <then_branch = t () => (float[4, 3] p) <float[3] k = {1.0, 2.0, 3.0}> { p = Add(a, k) },
                 else_branch = e () => (float[4, 3] q) { q = Add(a, f) }>
    }
    """)
    # w: 12 floats (48 B); s: 2 int64 (16 B); f: 3 floats (12 B); k (in the then branch): 3 floats (12 B).
    assert parameter_stats(model) == (20, 88)
    assert generated_constant_stats(model) == (0, 0)


def test_parameter_stats_counts_initializers_that_are_also_graph_inputs():
    model = ir.from_onnx_text("""
    <ir_version: 3, opset_import: ["" : 9]>
    g (float[3] x, float[3] b) => (float[3] y) <float[3] b = {1.0, 2.0, 3.0}> {
      y = Add(x, b)
    }
    """)
    assert model.graph.inputs[1].name == "b"
    assert parameter_stats(model) == (3, 12)


def test_generated_constant_stats_counts_constant_of_shape_weights():
    # How onnx's light_* models store weights: only the shape, filled by ConstantOfShape.
    model = ir.from_onnx_text("""
    <ir_version: 8, opset_import: ["" : 17]>
    g (float[2, 8] x) => (float[2, 16] y) <int64[2] w_shape = {8, 16}> {
      w = ConstantOfShape <value = float[1] {0.02}> (w_shape)
      h = ConstantOfShape <value = int8[1] {3}> (w_shape)
      y = MatMul(x, w)
    }
    """)
    assert parameter_stats(model) == (2, 16)
    assert generated_constant_stats(model) == (2 * 128, 128 * 4 + 128 * 1)
    # The generated weight has an inferred shape, so the MatMul is counted: 2 * 16 * 8.
    assert count_macs(model) == {"MatMul": 256, UNKNOWN_SHAPE: 0}


def test_conv_macs_with_stride_padding_groups_and_dilation():
    model = make_model(CONV, w=seeded((6, 2, 3, 3)))
    assert infer_tensor_shapes(model).static_shape(model.graph.outputs[0]) == (1, 6, 4, 4)
    (output,) = run_ort(model, random_feeds(model, dim=1))
    assert output.shape == (1, 6, 4, 4)  # the hand-computed shape is what onnxruntime produces
    assert count_macs(model) == {"Conv": CONV_MACS, UNKNOWN_SHAPE: 0}


def test_conv_macs_scale_with_the_batch_given_in_input_shapes():
    model = make_model(CONV, w=seeded((6, 2, 3, 3)))
    assert count_macs(model, {"x": (3, 4, 9, 9)}) == {"Conv": 3 * CONV_MACS, UNKNOWN_SHAPE: 0}


def test_conv_transpose_macs():
    model = make_model(CONV_TRANSPOSE, w=seeded((4, 2, 3, 3)))
    (output,) = run_ort(model, random_feeds(model))
    assert output.shape == (1, 4, 11, 11)
    assert count_macs(model) == {"ConvTranspose": CONV_TRANSPOSE_MACS, UNKNOWN_SHAPE: 0}


def test_gemm_macs_honour_trans_a_and_trans_b():
    # transA only swaps M and K (MACs are M * K * N either way); transB decides which dim of B is N.
    model = make_model(GEMM, b=seeded((7, 5)), c=seeded(7))
    assert count_macs(model) == {"Gemm": GEMM_MACS, UNKNOWN_SHAPE: 0}


def test_gemm_macs_without_transposes_differ():
    # Same input shapes read without transposes: A is [M, K] = [5, 2] and B [K, N] would need K = 2 rows,
    # so use B = [2, 7]: 5 * 7 * 2.
    model = ir.from_onnx_text("""
    <ir_version: 8, opset_import: ["" : 17]>
    g (float[5, 2] a, float[2, 7] b) => (float[5, 7] y) { y = Gemm(a, b) }
    """)
    assert count_macs(model) == {"Gemm": 70, UNKNOWN_SHAPE: 0}
    model = ir.from_onnx_text("""
    <ir_version: 8, opset_import: ["" : 17]>
    g (float[5, 3] a, float[3, 7] b) => (float[5, 7] y) { y = Gemm(a, b) }
    """)
    assert count_macs(model) == {"Gemm": 105, UNKNOWN_SHAPE: 0}


def test_batched_and_vector_matmul_macs():
    model = ir.from_onnx_text(MATMULS)
    assert count_macs(model) == {"MatMul": MATMUL_MACS, UNKNOWN_SHAPE: 0}


def test_quantized_ops_use_their_weight_input():
    model = ir.from_onnx_text("""
    <ir_version: 8, opset_import: ["" : 17]>
    g (uint8[1, 4, 6, 6] x, float xs, uint8 xz, uint8[8, 4, 3, 3] w, float ws, uint8 wz, float ys, uint8 yz,
       uint8[3, 5] a, uint8[5, 2] b) => (uint8[1, 8, 4, 4] y, int32[3, 2] z) {
      y = QLinearConv(x, xs, xz, w, ws, wz, ys, yz)
      z = MatMulInteger(a, b)
    }
    """)
    # QLinearConv: 1 * 8 * 16 * 4 * 9; MatMulInteger: 3 * 2 * 5.
    assert count_macs(model) == {"MatMulInteger": 30, "QLinearConv": 4608, UNKNOWN_SHAPE: 0}


def test_unknown_dims_are_counted_not_fatal_and_input_shapes_resolve_them():
    model = ir.from_onnx_text("""
    <ir_version: 8, opset_import: ["" : 17]>
    g (float[batch, seq, 4] x, float[4, 6] w) => (float[batch, seq, 6] y) { y = MatMul(x, w) }
    """)
    assert count_macs(model) == {UNKNOWN_SHAPE: 1}  # batch becomes 1, seq stays unknown
    assert count_macs(model, {"x": (2, 10, 4)}) == {"MatMul": 2 * 10 * 6 * 4, UNKNOWN_SHAPE: 0}


def test_count_macs_includes_subgraph_nodes():
    model = ir.from_onnx_text("""
    <ir_version: 8, opset_import: ["" : 17]>
    g (float[2, 3] x, float[3, 4] w, bool c) => (float[2, 4] y) {
      y = If(c) <then_branch = t () => (float[2, 4] a) { a = MatMul(x, w) },
                 else_branch = e () => (float[2, 4] b) { b = MatMul(x, w) }>
    }
    """)
    assert count_macs(model) == {"MatMul": 2 * 24, UNKNOWN_SHAPE: 0}


def test_analysis_leaves_the_model_unchanged():
    model = make_model(CONV, w=seeded((6, 2, 3, 3)))
    before = ir.to_proto(model).SerializeToString()
    summarize(model, input_shapes={"x": (2, 4, 9, 9)})
    assert ir.to_proto(model).SerializeToString() == before
    assert [str(d) for d in model.graph.inputs[0].shape] == ["N", "4", "9", "9"]


def test_summarize_is_json_able_and_consistent():
    model = make_model(CONV, w=seeded((6, 2, 3, 3)))
    model.producer_name = "unit"
    summary = summarize(model, input_shapes={"x": (2, 4, 9, 9)}, file_size=1234)
    data = json.loads(json.dumps(summary.to_json()))
    assert data["inputs"] == [{"name": "x", "dtype": "FLOAT", "shape": ["N", 4, 9, 9]}]
    assert data["outputs"] == [{"name": "y", "dtype": "FLOAT", "shape": ["N", 6, 4, 4]}]
    assert data["assumed_input_shapes"] == {"x": [2, 4, 9, 9]}
    assert data["opset_imports"] == {"": 17}
    assert data["producer"] == "unit"
    assert data["node_count"] == 1 and data["op_histogram"] == {"Conv": 1}
    assert (data["params"], data["param_bytes"]) == (108, 432)
    assert data["macs"] == {"Conv": 2 * CONV_MACS} and data["macs_total"] == 2 * CONV_MACS
    assert data["macs_unknown_nodes"] == 0
    # x (2*4*9*9 floats) and y (2*6*4*4 floats) are live together at the only step.
    assert data["peak_activation_bytes"] == data["arena_bytes"] == (648 + 192) * 4
    assert data["file_size"] == 1234 and data["shape_inference_error"] is None


def test_summarize_does_not_load_external_data(tmp_path):
    model = make_model(GEMM, b=seeded((7, 5)), c=seeded(7))
    path = tmp_path / "gemm.onnx"
    ir.save(model, path, external_data="gemm.onnx.data", size_threshold_bytes=0)
    loaded = ir.load(path)
    (tmp_path / "gemm.onnx.data").unlink()  # any read of the weights would now fail
    summary = summarize(loaded)
    assert (summary.params, summary.param_bytes) == (42, 168)
    assert summary.macs == {"Gemm": GEMM_MACS}


@pytest.mark.parametrize("dtype, itemsize", [(np.float16, 2), (np.int8, 1), (np.float64, 8)])
def test_parameter_bytes_follow_the_dtype(dtype, itemsize):
    model = make_model(GEMM, b=seeded((7, 5)).astype(dtype), c=seeded(7))
    assert parameter_stats(model) == (42, 35 * itemsize + 7 * 4)


def test_minus_one_dims_never_give_negative_macs_or_bytes():
    """A model read without sftonnx.io (which clears them) still has Paddle's -1 batch dims."""
    from onnx import TensorProto, helper, numpy_helper

    graph = helper.make_graph(
        [helper.make_node("Conv", ["x", "w"], ["y"])],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [-1, 4, 9, 9])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [-1, 6, 7, 7])],
        [numpy_helper.from_array(seeded((6, 4, 3, 3)), "w")],
    )
    model = ir.serde.deserialize_model(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]))
    assert model.graph.inputs[0].shape[0] == -1
    summary = summarize(model)
    assert summary.assumed_input_shapes == {"x": (1, 4, 9, 9)}
    assert summary.macs == {"Conv": 6 * 49 * 4 * 9}
    assert summary.peak_activation_bytes > 0 and summary.arena_bytes > 0
    assert count_macs(model, {"x": (2, 4, 9, 9)})["Conv"] == 2 * 6 * 49 * 4 * 9


# The flatten size is computed from Shape at run time, with opset-12 Unsqueeze (axes attribute): onnx's data
# propagation stops there, so MatMul's input shape is known only once the chain is folded (as simplify does).
SHAPE_COMPUTED_FLATTEN = """
<ir_version: 7, opset_import: ["" : 12]>
g (float[1, 3, 8, 8] x) => (float[1, 10] y) {
    c = Conv <pads = [1, 1, 1, 1]> (x, w)
    r = Relu(c)
    s = Shape(r)
    zero = Constant <value = int64 {0}> ()
    one = Constant <value = int64 {1}> ()
    two = Constant <value = int64 {2}> ()
    three = Constant <value = int64 {3}> ()
    n = Gather <axis = 0> (s, zero)
    ch = Gather <axis = 0> (s, one)
    h = Gather <axis = 0> (s, two)
    wd = Gather <axis = 0> (s, three)
    hw = Mul(h, wd)
    chw = Mul(ch, hw)
    n1 = Unsqueeze <axes = [0]> (n)
    chw1 = Unsqueeze <axes = [0]> (chw)
    shape = Concat <axis = 0> (n1, chw1)
    f = Reshape(r, shape)
    y = MatMul(f, m)
}
"""
SHAPE_COMPUTED_FLATTEN_MACS = {"Conv": 4 * 64 * 3 * 9, "MatMul": 256 * 10}


def test_macs_are_the_same_before_and_after_simplify():
    from sftonnx.passes.cleanup import SimplifyPass

    model = make_model(SHAPE_COMPUTED_FLATTEN, w=seeded((4, 3, 3, 3)), m=seeded((256, 10), 1))
    before = count_macs(model)
    assert SimplifyPass()(model).changes["nodes_removed"] >= 10  # the shape chain is folded into a constant
    after = count_macs(model)
    assert before == after == {**SHAPE_COMPUTED_FLATTEN_MACS, UNKNOWN_SHAPE: 0}


def test_macs_ignore_shapes_stored_on_intermediate_values():
    """value_info in the file (written by one tool, not another) must not change the figures."""
    text = SHAPE_COMPUTED_FLATTEN.replace("float[1, 3, 8, 8] x", "float[N, 3, H, W] x")
    text = text.replace("float[1, 10] y", "float[N, 10] y")
    model = make_model(text, w=seeded((4, 3, 3, 3)), m=seeded((256, 10), 1))
    plain = count_macs(model)
    flattened = next(node for node in model.graph if node.op_type == "Reshape").outputs[0]
    flattened.shape = ir.Shape([1, 256])  # as if the file carried value_info from an earlier run
    assert count_macs(model) == plain == {UNKNOWN_SHAPE: 2}  # H and W unknown: Conv and MatMul
    assert count_macs(model, {"x": (1, 3, 8, 8)}) == {**SHAPE_COMPUTED_FLATTEN_MACS, UNKNOWN_SHAPE: 0}


def test_onnxruntime_fused_ops_count_as_their_standard_op_and_keep_shapes_flowing():
    """ort-offline writes FusedConv/FusedGemm, which onnx inference does not know: MACs must not drop."""
    model = make_model(
        """
<ir_version: 8, opset_import: ["" : 17, "com.microsoft" : 1]>
g (float[1, 4, 9, 9] x, float[6, 2, 3, 3] w) => (float[1, 5] y) {
  c = com.microsoft.FusedConv <activation = "Relu", group = 2, strides = [2, 2], pads = [1, 1, 1, 1],
                               dilations = [2, 2]> (x, w)
  f = Reshape(c, shape)
  g = com.microsoft.FusedGemm <activation = "Relu", transB = 1> (f, k)
  t = com.microsoft.FusedMatMul <transB = 1, alpha = 0.5> (g, q)
  y = MatMul(t, m)
}
""",
        shape=np.array([1, 96], dtype=np.int64),
        k=seeded((7, 96)),
        q=seeded((3, 7)),
        m=seeded((3, 5)),
    )
    assert count_macs(model) == {
        "MatMul": 3 * 5,
        "com.microsoft::FusedConv": CONV_MACS,
        "com.microsoft::FusedGemm": 96 * 7,
        "com.microsoft::FusedMatMul": 7 * 3,
        UNKNOWN_SHAPE: 0,
    }
