"""FuseMatMulAddPass (matmul-add-to-gemm): 2-D MatMul + bias Add -> Gemm."""

from __future__ import annotations

import numpy as np
import onnx_ir as ir
import pytest

from sftonnx.errors import PassConfigError
from sftonnx.passes.fusion import FuseMatMulAddPass
from tests.helpers import EXACT_ATOL, EXACT_RTOL, assert_same_outputs, make_model, op_types, run_ort, seeded
from tests.passes.fusion.support import all_op_types, bind_initializers, check_model

HEADER = '<ir_version: 8, opset_import: ["" : 17]>'


def dims(shape) -> str:
    return ",".join(map(str, shape))


def matmul_add(a_shape, c_shape, out_shape, *, left: bool = False, extra_outputs: str = "",
               dtype: str = "float") -> str:
    operands = "c, p" if left else "p, c"
    return f"""{HEADER}
g ({dtype}[{dims(a_shape)}] a, {dtype}[3,5] b, {dtype}[{dims(c_shape)}] c)
  => ({dtype}[{dims(out_shape)}] y{extra_outputs}) {{
    p = MatMul(a, b)
    y = Add({operands})
}}"""


def matmul_add_model(a_shape, c_shape, out_shape=(4, 5), *, b=True, c=True, **kwargs) -> ir.Model:
    dtype = np.float16 if kwargs.get("dtype") == "float16" else np.float32
    arrays = {}
    if b:
        arrays["b"] = seeded((3, 5), 1, dtype=dtype)
    if c:
        arrays["c"] = seeded(c_shape, 2, dtype=dtype)
    return make_model(matmul_add(a_shape, c_shape, out_shape, **kwargs), **arrays)


def assert_unchanged(model: ir.Model, expected_skips: dict[str, int], pass_=None) -> None:
    text = ir.to_onnx_text(model)
    report = (pass_ or FuseMatMulAddPass())(model)
    assert not report.modified and not report.changes
    assert report.skipped == expected_skips
    assert ir.to_onnx_text(model) == text


# -- positive cases ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("a_shape", "c_shape", "left"),
    [
        ((4, 3), (5,), False),
        ((4, 3), (1, 5), True),
        ((4, 3), (4, 5), False),
        ((4, 3), (4, 1), True),
        ((4, 3), (), False),
        (("M", 3), (5,), False),
    ],
    ids=["vector", "row-left", "full", "column-left", "scalar", "symbolic-M"],
)
def test_fuses_2d_matmul_and_bias(a_shape, c_shape, left):
    out_shape = ("M", 5) if a_shape[0] == "M" else (4, 5)
    model = matmul_add_model(a_shape, c_shape, out_shape, left=left)
    original = ir.to_proto(model).SerializeToString()
    report = FuseMatMulAddPass()(model)
    assert report.changes == {"matmul_add_fused": 1}
    assert not report.skipped
    assert op_types(model) == ["Gemm"]
    gemm = next(iter(model.graph))
    assert not gemm.attributes  # alpha = beta = 1, no transposes
    assert gemm.outputs[0].name == "y"
    check_model(model)
    assert_same_outputs(original, model)


def test_fuses_float16():
    model = matmul_add_model((4, 3), (5,), dtype="float16")
    original = ir.to_proto(model).SerializeToString()
    report = FuseMatMulAddPass()(model)
    assert report.changes == {"matmul_add_fused": 1}
    assert_same_outputs(original, model, atol=1e-2, rtol=1e-2)


def test_dynamic_weight_option_fuses_a_2d_value_weight():
    model = matmul_add_model((4, 3), (5,), b=False)
    original = ir.to_proto(model).SerializeToString()
    report = FuseMatMulAddPass(dynamic_weight=True)(model)
    assert report.changes == {"matmul_add_fused": 1}
    assert op_types(model) == ["Gemm"]
    assert_same_outputs(original, model)


def test_fuses_inside_if_branches():
    text = f"""{HEADER}
g (bool cond, float[4,3] a, float[3,5] b, float[5] c) => (float[4,5] y) {{
    y = If(cond) <
        then_branch = then_g () => (float[4,5] t) {{
            p = MatMul(a, b)
            t = Add(p, c)
        }},
        else_branch = else_g () => (float[4,5] e) {{
            q = MatMul(a, b)
            e = Add(c, q)
        }}
    >
}}"""
    model = ir.from_onnx_text(text)
    bind_initializers(model, b=seeded((3, 5), 1), c=seeded((5,), 2))
    original = ir.to_proto(model).SerializeToString()
    report = FuseMatMulAddPass()(model)
    assert report.changes == {"matmul_add_fused": 2}
    assert all_op_types(model) == ["If", "Gemm", "Gemm"]
    check_model(model)
    for cond in (True, False):
        feeds = {"cond": np.array(cond), "a": seeded((4, 3), 7)}
        expected = run_ort(original, feeds)[0]
        np.testing.assert_allclose(run_ort(model, feeds)[0], expected, atol=EXACT_ATOL, rtol=EXACT_RTOL)


def test_fuses_inside_a_model_local_function():
    # Functions cannot hold initializers: the bias stays the Constant the function defines.
    text = f"""<ir_version: 8, opset_import: ["" : 17, "local" : 1]>
g (float[4,3] a) => (float[4,5] y) {{
    y = local.Dense(a)
}}
<domain: "local", opset_import: ["" : 17]>
Dense (x) => (z) {{
    w = Constant<value=float[3,5] {{{", ".join(map(str, seeded((15,), 1).round(3).tolist()))}}}>()
    c = Constant<value=float[5] {{0.1, 0.2, 0.3, 0.4, 0.5}}>()
    p = MatMul(x, w)
    z = Add(p, c)
}}"""
    model = ir.from_onnx_text(text)
    function = next(iter(model.functions.values()))
    function.inputs[0].shape = ir.Shape([4, 3])  # a rank the rule can read
    function.inputs[0].type = ir.TensorType(ir.DataType.FLOAT)
    original = ir.to_proto(model).SerializeToString()
    report = FuseMatMulAddPass()(model)
    assert report.changes == {"matmul_add_fused": 1}
    assert [node.op_type for node in function] == ["Constant", "Constant", "Gemm"]
    assert_same_outputs(original, model)


# -- negative cases ---------------------------------------------------------------------------------


def test_skips_3d_matmul():
    model = matmul_add_model((2, 4, 3), (5,), (2, 4, 5))
    assert_unchanged(model, {"input_not_2d": 1})


def test_skips_input_of_unknown_rank():
    model = make_model(matmul_add((4, 3), (5,), (4, 5)).replace("float[4,3] a", "float a"),
                       b=seeded((3, 5), 1), c=seeded((5,), 2))
    model.graph.inputs[0].shape = None
    assert_unchanged(model, {"input_rank_unknown": 1})


def test_skips_non_constant_weight():
    assert_unchanged(matmul_add_model((4, 3), (5,), b=False), {"weight_not_constant": 1})


def test_skips_non_constant_bias():
    assert_unchanged(matmul_add_model((4, 3), (5,), c=False), {"bias_not_constant": 1})


@pytest.mark.parametrize(
    ("a_shape", "c_shape", "out_shape"),
    [((4, 3), (2, 4, 5), (2, 4, 5)), ((1, 3), (4, 5), (4, 5)), (("M", 3), (4, 5), (4, 5))],
    ids=["rank-3-bias", "rows-broadcast", "rows-vs-symbolic-M"],
)
def test_skips_bias_that_changes_the_output_shape(a_shape, c_shape, out_shape):
    assert_unchanged(matmul_add_model(a_shape, c_shape, out_shape), {"bias_changes_shape": 1})


def test_skips_when_matmul_output_is_graph_output():
    model = matmul_add_model((4, 3), (5,), extra_outputs=", float[4,5] p")
    assert_unchanged(model, {"intermediate_is_graph_output": 1})


def test_skips_integer_matmul():
    text = matmul_add((4, 3), (5,), (4, 5), dtype="int32")
    model = make_model(text, b=np.ones((3, 5), np.int32), c=np.ones(5, np.int32))
    assert_unchanged(model, {"unsupported_dtype": 1})


@pytest.mark.parametrize("options", [{"dynamic_weight": "yes"}, {"dynamic_weight": None}])
def test_rejects_bad_options(options):
    with pytest.raises(PassConfigError):
        FuseMatMulAddPass(**options)
