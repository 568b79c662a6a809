"""summarize and plan_memory over onnx's light_* models, against independent counts and known figures."""

import json
import math

import numpy as np
import onnx
import onnx_ir as ir
import pytest
from onnx import numpy_helper

from sftonnx.analysis import plan_memory, summarize
from tests.helpers import LIGHT_MODELS

FLOAT = 4


def _by_name(stem):
    return next(path for path in LIGHT_MODELS if path.stem == stem)


@pytest.fixture(scope="module", params=LIGHT_MODELS, ids=lambda path: path.stem)
def light(request):
    path = request.param
    model = ir.load(path)
    before = ir.to_proto(model).SerializeToString()
    summary = summarize(model, file_size=path.stat().st_size)
    plan = plan_memory(model)
    return path, model, before, summary, plan


def test_summary_is_complete_json_and_model_untouched(light):
    path, model, before, summary, _ = light
    data = json.loads(json.dumps(summary.to_json()))
    assert data["file_size"] == path.stat().st_size
    assert data["shape_inference_error"] is None
    assert data["macs_unknown_nodes"] == 0
    assert data["macs_total"] > 0 and set(data["macs"]) <= {"Conv", "Gemm"}
    assert data["node_count"] == sum(data["op_histogram"].values()) == len(model.graph)
    assert ir.to_proto(model).SerializeToString() == before


def test_params_match_the_initializers_and_constant_of_shape_nodes(light):
    path, _, _, summary, _ = light
    proto = onnx.load(path)
    initializers = {tensor.name: tensor for tensor in proto.graph.initializer}
    assert summary.params == sum(math.prod(tensor.dims) for tensor in proto.graph.initializer)
    assert summary.param_bytes == sum(numpy_helper.to_array(t).nbytes for t in proto.graph.initializer)
    generated = [
        int(np.prod(numpy_helper.to_array(initializers[node.input[0]])))
        for node in proto.graph.node
        if node.op_type == "ConstantOfShape"
    ]
    assert summary.generated_params == sum(generated)
    assert summary.generated_param_bytes == FLOAT * sum(generated)


def test_memory_plan_is_consistent(light):
    _, model, _, summary, plan = light
    assert summary.peak_activation_bytes == plan.peak_activation_bytes > 0
    assert plan.peak_activation_bytes <= plan.arena_bytes <= plan.sum_bytes
    # Only the (unused) Dropout masks of opset 9 have no inferred shape.
    producers = {out.name: node.op_type for node in model.graph for out in node.outputs}
    assert {producers[name] for name in plan.unknown_size} <= {"Dropout"}
    # No two tensors live at the same step share arena bytes.
    known = [t for t in plan.tensors if t.nbytes]
    for step in range(plan.steps):
        spans = sorted((t.offset, t.offset + t.nbytes) for t in known if t.start <= step <= t.end)
        assert all(end <= next_start for (_, end), (next_start, _) in zip(spans, spans[1:], strict=False))
        assert sum(high - low for low, high in spans) == plan.step_bytes[step]


def test_resnet50_figures():
    summary = summarize(ir.load(_by_name("light_resnet50")))
    assert summary.macs_total == pytest.approx(4.09e9, rel=0.01)  # the published ResNet-50 (v1.5) figure
    assert summary.generated_params == pytest.approx(25.56e6, rel=0.01)
    # The largest activations hold 64 x 112 x 112 = 256 x 56 x 56 floats; at most three are live at once
    # (the residual Sum's two inputs while the shortcut BatchNorm writes its output).
    assert summary.peak_activation_bytes == 3 * 802816 * FLOAT


def test_vgg19_figures_match_the_architecture():
    summary = summarize(ir.load(_by_name("light_vgg19")))
    conv, size, in_channels = 0, 224, 3
    for channels, layers in [(64, 2), (128, 2), (256, 4), (512, 4), (512, 4)]:
        for _ in range(layers):
            conv += size * size * channels * in_channels * 9
            in_channels = channels
        size //= 2
    assert summary.macs == {"Conv": conv, "Gemm": 512 * 7 * 7 * 4096 + 4096 * 4096 + 4096 * 1000}
    assert summary.macs_total == pytest.approx(19.6e9, rel=0.01)
    # A plain chain: the peak is conv1_2 reading and writing 64 x 224 x 224 floats.
    assert summary.peak_activation_bytes == 2 * 64 * 224 * 224 * FLOAT
