"""The torch rendering of ONNX graphs: op by op equal to onnxruntime, parameters mapped to initializers."""

from __future__ import annotations

import pathlib

import numpy as np
import onnx_ir as ir
import pytest

from sftonnx import io
from tests.helpers import EXACT_ATOL, make_model, run_ort, seeded

torch = pytest.importorskip("torch")

from sftonnx.passes.distillation.torch_graph import TorchGraph, UnsupportedGraphError  # noqa: E402

pytestmark = pytest.mark.torch

MODELS = pathlib.Path(__file__).resolve().parents[3] / "models" / "onnx"


def header(opset: int = 20) -> str:
    return f'<ir_version: 8, opset_import: ["" : {opset}]>'


def assert_matches_ort(model: ir.Model, feeds: dict[str, np.ndarray], atol: float = EXACT_ATOL) -> TorchGraph:
    graph = TorchGraph(model)
    expected = run_ort(model, feeds)
    actual = graph.run_numpy(feeds)
    assert len(actual) == len(expected)
    for exp, act in zip(expected, actual, strict=True):
        assert exp.shape == act.shape
        assert exp.dtype == act.dtype or np.issubdtype(exp.dtype, np.integer) == np.issubdtype(act.dtype, np.integer)
        scale = max(1.0, float(np.max(np.abs(exp)))) if exp.size else 1.0
        np.testing.assert_allclose(act.astype(np.float64), exp.astype(np.float64), atol=atol * scale, rtol=0)
    return graph


# (name, graph body, initializers, input shapes) -- x is the float input of every case
CASES = {
    "conv_asymmetric_pads_groups_dilations": (
        "(float[2,4,9,8] x) => (float[2,6,?,?] y) { y = Conv <group=2, pads=[1,0,2,1], strides=[2,1], "
        "dilations=[1,2], kernel_shape=[3,3]> (x, w, b) }",
        {"w": seeded((6, 2, 3, 3), 1), "b": seeded((6,), 2)},
    ),
    "conv_same_upper_1d": (
        "(float[2,3,11] x) => (float[2,4,?] y) { y = Conv <auto_pad=\"SAME_UPPER\", strides=[2]> (x, w) }",
        {"w": seeded((4, 3, 4), 1)},
    ),
    "conv_transpose_output_padding": (
        "(float[1,4,5,6] x) => (float[1,3,?,?] y) { y = ConvTranspose <strides=[2,2], pads=[1,0,0,1], "
        "output_padding=[1,0]> (x, w, b) }",
        {"w": seeded((4, 3, 3, 3), 1), "b": seeded((3,), 2)},
    ),
    "gemm_transposes": (
        "(float[3,5] x) => (float[4,4] y) { y = Gemm <transA=1, transB=1, alpha=0.5, beta=2.0> (x, w, c) }",
        {"w": seeded((4, 3), 1), "c": seeded((4,), 2)},
    ),
    "pools": (
        "(float[2,3,9,9] x) => (float[2,3,?,?] y, float[2,3,?,?] z, float[2,3,?,?] g) { "
        "y = MaxPool <kernel_shape=[3,3], strides=[2,2], pads=[0,1,1,0], ceil_mode=1> (x) "
        "z = AveragePool <kernel_shape=[3,2], strides=[2,2], pads=[1,1,1,0], count_include_pad=0> (x) "
        "g = GlobalAveragePool (x) }",
        {},
    ),
    "resize_modes": (
        "(float[1,2,5,7] x) => (float[1,2,?,?] a, float[1,2,?,?] b, float[1,2,?,?] c) { "
        "a = Resize <mode=\"nearest\", coordinate_transformation_mode=\"asymmetric\", nearest_mode=\"floor\"> (x, , s) "
        "b = Resize <mode=\"linear\", coordinate_transformation_mode=\"half_pixel\"> (x, , , sz) "
        "c = Resize <mode=\"linear\", coordinate_transformation_mode=\"align_corners\"> (x, , s) }",
        {"s": np.array([1, 1, 2, 1.5], np.float32), "sz": np.array([1, 2, 8, 5], np.int64)},
    ),
    "pad_modes_slice_split": (
        "(float[2,3,6,5] x) => (float[?,?,?,?] a, float[?,?,?,?] b, float[?,?,?,?] c, float[?,?,?,?] d, "
        "float[?,?,?,?] e) { a = Pad <mode=\"reflect\"> (x, p) b = Pad <mode=\"edge\"> (x, p) "
        "c = Slice (x, st, en, ax, sp) d, e = Split <axis=2> (x, sz) }",
        {
            "p": np.array([0, 0, 1, 2, 0, 0, 2, 1], np.int64),
            "st": np.array([-1, 0], np.int64), "en": np.array([-100, 4], np.int64),
            "ax": np.array([2, 3], np.int64), "sp": np.array([-2, 3], np.int64),
            "sz": np.array([2, 4], np.int64),
        },
    ),
    "shape_arithmetic": (
        "(float[2,3,4] x) => (float[?,?] y, float[?,?,?] z) { s = Shape (x) i = Gather <axis=0> (s, k) "
        "u = Unsqueeze (i, zero) t = Concat <axis=0> (u, m1) y = Reshape (x, t) "
        "c = ConstantOfShape <value=float[1] {0.5}> (s) z = Add (x, c) }",
        {"k": np.array(0, np.int64), "zero": np.array([0], np.int64), "m1": np.array([-1], np.int64)},
    ),
    "norms_and_activations": (
        "(float[2,4,3,3] x) => (float[2,4,3,3] y, float[2,4,3,3] z, float[2,36] s) { "
        "b = BatchNormalization <epsilon=1e-3> (x, g, be, mu, var) l = LayerNormalization <axis=-2> (b, lg, lb) "
        "e = Elu (l) h = HardSigmoid (e) c = Clip (h, lo, hi) y = Gelu (c) z = Erf (l) "
        "f = Flatten (x) s = LogSoftmax (f) }",
        {"g": seeded((4,), 1), "be": seeded((4,), 2), "mu": seeded((4,), 3), "var": np.abs(seeded((4,), 4)) + 0.1,
         "lg": seeded((3, 3), 5), "lb": seeded((3, 3), 6), "lo": np.array(0.1, np.float32),
         "hi": np.array(0.6, np.float32)},
    ),
    "reductions_where_pow": (
        "(float[2,3,4] x) => (float[?,?] a, float[?,?,?] b, float[?,?,?] c) { "
        "a = ReduceMean <keepdims=0> (x, ax) m = ReduceMax (x, ax2) q = Pow (x, two) "
        "k = Greater (x, m) b = Where (k, x, q) c = Sqrt (q) }",
        {"ax": np.array([2], np.int64), "ax2": np.array([-1], np.int64), "two": np.array(2.0, np.float32)},
    ),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_ops_match_onnxruntime(case):
    body, inits = CASES[case]
    model = make_model(f"{header()}\ng {body}", **inits)
    shape = [int(d) for d in body.split("float[", 1)[1].split("]", 1)[0].split(",")]
    assert_matches_ort(model, {"x": seeded(shape, 7)})


def test_softmax_before_opset_13_flattens_from_axis():
    model = make_model(f"{header(11)}\ng (float[2,3,4] x) => (float[2,3,4] y) {{ y = Softmax (x) }}")
    assert_matches_ort(model, {"x": seeded((2, 3, 4))})


@pytest.mark.parametrize(
    ("op", "gates", "extra"),
    [("LSTM", 4, ""), ("GRU", 3, ", linear_before_reset=1"), ("GRU", 3, ""), ("RNN", 1, "")],
)
@pytest.mark.parametrize("direction", ["forward", "reverse", "bidirectional"])
def test_recurrent_ops_match_onnxruntime(op, gates, extra, direction):
    dirs, hidden, inputs = (2 if direction == "bidirectional" else 1), 5, 3
    outputs = "y, yh, yc" if op == "LSTM" else "y, yh"
    declared = ", float[?,?,?] yc" if op == "LSTM" else ""
    model = make_model(
        f"{header()}\ng (float[6,2,3] x, int32[2] lens) => (float[?,?,?,?] y, float[?,?,?] yh{declared}) "
        f"{{ {outputs} = {op} <hidden_size={hidden}, direction=\"{direction}\"{extra}> (x, w, r, b, lens, h0) }}",
        w=seeded((dirs, gates * hidden, inputs), 1, 0.5),
        r=seeded((dirs, gates * hidden, hidden), 2, 0.5),
        b=seeded((dirs, 2 * gates * hidden), 3, 0.5),
        h0=seeded((dirs, 2, hidden), 4),
    )
    assert_matches_ort(model, {"x": seeded((6, 2, 3), 5), "lens": np.array([6, 4], np.int32)})


def test_qdq_runs_as_fake_quantization_exactly():
    model = make_model(
        f"{header()}\ng (float[2,4] x) => (float[2,3] y) {{ q = QuantizeLinear (x, s, z) "
        "d = DequantizeLinear (q, s, z) "
        "wd = DequantizeLinear <axis=0> (wq, ws) y = Gemm <transB=1> (d, wd) }",
        s=np.array(0.02, np.float32), z=np.array(128, np.uint8),
        wq=np.array(np.random.default_rng(0).integers(-127, 128, (3, 4)), np.int8),
        ws=np.array([0.01, 0.02, 0.03], np.float32),
    )
    assert_matches_ort(model, {"x": seeded((2, 4))}, atol=1e-6)


def test_parameters_map_to_weight_initializers_only():
    model = make_model(
        f"{header()}\ng (float[2,3] x) => (float[2,4] y) {{ h = Gemm (x, w, b) r = Reshape (h, shp) y = Mul (r, k) }}",
        w=seeded((3, 4)), b=seeded((4,), 1), shp=np.array([2, 4], np.int64), k=np.array(2.0, np.float32),
    )
    graph = TorchGraph(model)
    assert sorted(graph.parameter_names.values()) == ["b", "k", "w"]
    assert all(p.requires_grad for p in graph.parameters())
    shapes = {name: value.const_value.numpy().shape for name, value in model.graph.initializers.items()}
    assert graph.write_back(model) == 3
    assert {name: value.const_value.numpy().shape for name, value in model.graph.initializers.items()} == shapes
    assert shapes["k"] == ()  # a scalar stays a scalar


def test_write_back_changes_initializers_and_onnxruntime_sees_it():
    model = make_model(f"{header()}\ng (float[2,3] x) => (float[2,4] y) {{ y = Gemm (x, w, b) }}",
                       w=seeded((3, 4)), b=seeded((4,), 1))
    graph = TorchGraph(model)
    with torch.no_grad():
        for param in graph.parameters():
            param.mul_(2.0)
    feeds = {"x": seeded((2, 3), 2)}
    expected = graph.run_numpy(feeds)[0]
    assert graph.write_back(model) == 2
    assert model.graph.initializers["w"].const_value.numpy().dtype == np.float32
    np.testing.assert_allclose(run_ort(model, feeds)[0], expected, atol=1e-5)
    np.testing.assert_allclose(model.graph.initializers["b"].const_value.numpy(), 2 * seeded((4,), 1), rtol=1e-6)


def test_gradients_reach_every_parameter_of_the_digits_cnn():
    model = io.load(str(MODELS / "digits_cnn.onnx"))
    graph = TorchGraph(model)
    x = np.load(MODELS / "digits_test.npz")["input"][:8]
    graph({"input": x})[graph.output_names[0]].square().sum().backward()
    assert len(graph.parameter_names) == 6
    assert all(p.grad is not None and float(p.grad.abs().sum()) > 0 for p in graph.parameters())


def test_unsupported_ops_are_named_in_one_error():
    model = make_model(
        '<ir_version: 8, opset_import: ["" : 18, "ai.onnx.ml" : 3]>\ng (float[2,3] x) => (float[2,3] y, int64[?] z) '
        '{ y = ai.onnx.ml.Scaler <scale=[2.0]> (x) z = NonZero (x) }'
    )
    with pytest.raises(UnsupportedGraphError, match=r"NonZero \(1\), ai.onnx.ml::Scaler \(1\)"):
        TorchGraph(model)


def test_digits_cnn_matches_onnxruntime():
    model = io.load(str(MODELS / "digits_cnn.onnx"))
    x = np.load(MODELS / "digits_test.npz")["input"][:32]
    assert_matches_ort(model, {"input": x})


@pytest.mark.slow
@pytest.mark.parametrize("name", ["small_cnn", "resnet18", "mobilenetv2", "tiny_bert"])
def test_zoo_models_match_onnxruntime(name, tmp_path_factory):
    import models

    path = models.ensure(name, tmp_path_factory.mktemp(name))
    spec = models.MODELS[name]
    rng = np.random.default_rng(0)
    if spec.dtype == "int64":
        x = rng.integers(0, spec.high, (2, *spec.shape), dtype=np.int64)
    else:
        x = rng.standard_normal((2, *spec.shape)).astype(np.float32)
    assert_matches_ort(io.load(str(path)), {spec.input_name: x})


# ------------------------------------------------------------------------ recurrent: fused kernels vs loop
GATES = {"LSTM": 4, "GRU": 3, "RNN": 1}


def recurrent_model(op, direction="forward", attrs="", *, layout=0, lens=True, states=True, peepholes=False,
                    hidden=5, inputs=3, steps=6, batch=2):
    """One LSTM/GRU/RNN node reading every optional input it is given, with seeded weights, and its feeds."""
    dirs = 2 if direction == "bidirectional" else 1
    gates = GATES[op]
    time_major = (steps, batch) if layout == 0 else (batch, steps)
    args = ["x", "w", "r", "b", "lens" if lens else "", "h0" if states else ""]
    if op == "LSTM":
        args += ["c0" if states else "", "p" if peepholes else ""]
    outputs = "y, yh, yc" if op == "LSTM" else "y, yh"
    declared = ", float[?,?,?] yc" if op == "LSTM" else ""
    inits = {
        "w": seeded((dirs, gates * hidden, inputs), 1, 0.5),
        "r": seeded((dirs, gates * hidden, hidden), 2, 0.5),
        "b": seeded((dirs, 2 * gates * hidden), 3, 0.5),
    }
    if states:  # the same values in either layout
        inits["h0"] = seeded((dirs, batch, hidden), 4)
        if op == "LSTM":
            inits["c0"] = seeded((dirs, batch, hidden), 6)
        if layout:
            inits = {k: v.transpose(1, 0, 2) if k in ("h0", "c0") else v for k, v in inits.items()}
    if peepholes:
        inits["p"] = seeded((dirs, 3 * hidden), 8, 0.5)
    x_decl = ",".join(map(str, (*time_major, inputs)))
    model = make_model(
        f"{header()}\ng (float[{x_decl}] x, int32[{batch}] lens) => (float[?,?,?,?] y, float[?,?,?] yh{declared}) "
        f"{{ {outputs} = {op} <hidden_size={hidden}, direction=\"{direction}\", layout={layout}{attrs}> "
        f"({', '.join(args).rstrip(', ')}) }}",
        **inits,
    )
    if not lens:
        model.graph.inputs[:] = [v for v in model.graph.inputs if v.name != "lens"]
    feeds = {"x": seeded((steps, batch, inputs), 5)}
    if layout:
        feeds["x"] = np.ascontiguousarray(feeds["x"].transpose(1, 0, 2))
    if lens:
        feeds["lens"] = np.array([steps] + [steps - 2 - i % (steps - 2) for i in range(batch - 1)], np.int32)
    return model, feeds


FUSED_CASES = {
    "lstm": ("LSTM", ""),
    "gru": ("GRU", ", linear_before_reset=1"),
    "rnn_tanh": ("RNN", ""),
    "rnn_relu": ("RNN", ', activations=["Relu", "Relu"]'),
    "lstm_default_activations": ("LSTM", ', activations=["Sigmoid", "Tanh", "Tanh", "Sigmoid", "Tanh", "Tanh"]'),
}


def assert_close(actual, expected, atol=1e-5):
    assert len(actual) == len(expected)
    for act, exp in zip(actual, expected, strict=True):
        assert act.shape == exp.shape
        np.testing.assert_allclose(act, exp, atol=atol, rtol=0)


@pytest.mark.parametrize("case", sorted(FUSED_CASES))
@pytest.mark.parametrize("direction", ["forward", "reverse", "bidirectional"])
@pytest.mark.parametrize(("lens", "layout"), [(False, 0), (True, 0), (True, 1)], ids=["nolens", "varying", "layout1"])
def test_fused_recurrent_equals_loop_and_onnxruntime(case, direction, lens, layout):
    op, attrs = FUSED_CASES[case]
    if case == "rnn_relu" and direction != "bidirectional":
        attrs = ', activations=["Relu"]'
    if case == "lstm_default_activations" and direction != "bidirectional":
        attrs = ', activations=["Sigmoid", "Tanh", "Tanh"]'
    model, feeds = recurrent_model(op, direction, attrs, layout=layout, lens=lens)
    fused = TorchGraph(model)
    actual = fused.run_numpy(feeds)
    assert list(fused.recurrent_paths.values()) == ["fused"]
    loop = TorchGraph(model, fused_recurrent=False)
    assert_close(actual, loop.run_numpy(feeds))
    assert list(loop.recurrent_paths.values()) == ["loop: disabled"]
    if layout:  # onnxruntime runs only layout 0: compare with the same node in layout 0, transposed
        model, feeds = recurrent_model(op, direction, attrs, layout=0, lens=lens)
        actual = [actual[0].transpose(1, 2, 0, 3), *(a.transpose(1, 0, 2) for a in actual[1:])]
    assert_close(actual, run_ort(model, feeds))


@pytest.mark.parametrize(
    ("op", "attrs", "peepholes", "path"),
    [
        ("LSTM", "", False, "fused"),
        ("LSTM", "", True, "peephole BPTT"),
        ("GRU", ", linear_before_reset=1", False, "fused"),
        ("RNN", "", False, "fused"),
    ],
)
def test_recurrent_nodes_without_bias_or_initial_states_match_onnxruntime(op, attrs, peepholes, path):
    model, feeds = recurrent_model(op, "bidirectional", attrs, states=False, peepholes=peepholes)
    next(iter(model.graph)).replace_input_with(3, None)  # no B
    graph = assert_matches_ort(model, feeds, atol=1e-5)
    assert list(graph.recurrent_paths.values()) == [path]
    assert sorted(graph.parameter_names.values()) == (["p", "r", "w"] if peepholes else ["r", "w"])


def test_fused_recurrent_handles_wider_batches_and_a_bigger_hidden_size():
    model, feeds = recurrent_model("LSTM", "bidirectional", hidden=32, inputs=16, steps=12, batch=5)
    graph = assert_matches_ort(model, feeds, atol=1e-5)
    assert set(graph.recurrent_paths.values()) == {"fused"}


@pytest.mark.parametrize(
    ("op", "attrs", "peepholes", "reason"),
    [
        ("LSTM", ", clip=0.4", True, "clip"),
        ("LSTM", ", input_forget=1", False, "input_forget"),
        ("LSTM", ", clip=0.4", False, "clip"),
        ("LSTM", ', activations=["Sigmoid", "Relu", "Tanh", "Sigmoid", "Relu", "Tanh"]', False, "activations"),
        ("GRU", "", False, "linear_before_reset_0"),
        ("GRU", ", linear_before_reset=1, clip=0.3", False, "clip"),
        ("RNN", ', activations=["Sigmoid", "Sigmoid"]', False, "activations"),
        ("RNN", ', activations=["Tanh", "Relu"]', False, "activations"),
        ("RNN", ", clip=0.2", False, "clip"),
    ],
)
def test_unsupported_recurrent_attributes_fall_back_to_the_loop(op, attrs, peepholes, reason):
    model, feeds = recurrent_model(op, "bidirectional", attrs, peepholes=peepholes)
    graph = assert_matches_ort(model, feeds, atol=1e-5)
    assert list(graph.recurrent_paths.values()) == [f"loop: {reason}"]


@pytest.mark.parametrize("direction", ["forward", "reverse", "bidirectional"])
@pytest.mark.parametrize("lens", [False, True], ids=["full", "varying"])
def test_peephole_lstm_runs_the_hand_written_bptt_equal_to_the_loop_and_onnxruntime(direction, lens):
    model, feeds = recurrent_model("LSTM", direction, peepholes=True, lens=lens, batch=3)
    graph = assert_matches_ort(model, feeds, atol=1e-5)
    assert list(graph.recurrent_paths.values()) == ["peephole BPTT"]
    loop = TorchGraph(model, fused_recurrent=False)
    assert_close(graph.run_numpy(feeds), loop.run_numpy(feeds))
    _loss(graph, feeds).backward()
    _loss(loop, feeds).backward()
    assert sorted(graph.parameter_names.values()) == ["b", "p", "r", "w"]
    for key, param in graph.weights.items():
        assert float(param.grad.abs().sum()) > 0
        np.testing.assert_allclose(param.grad.numpy(), loop.weights[key].grad.numpy(), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize(("masked", "reverse"), [(False, False), (False, True), (True, False), (True, True)])
def test_peephole_bptt_passes_gradcheck(masked, reverse):
    from sftonnx.passes.distillation.torch_graph import _PeepholeLSTM

    steps, batch, hidden = 5, 3, 4
    generator = torch.Generator().manual_seed(0)

    def rand(*shape, scale=1.0):
        return (torch.randn(*shape, generator=generator, dtype=torch.float64) * scale).requires_grad_()

    inputs = (rand(steps, batch, 4 * hidden), rand(hidden, 4 * hidden, scale=0.5), rand(3 * hidden, scale=0.5),
              rand(batch, hidden), rand(batch, hidden))
    mask = None
    if masked:
        lens = torch.tensor([5, 3, 1])
        mask = (torch.arange(steps).unsqueeze(1) < lens.unsqueeze(0)).double().unsqueeze(-1)
    assert torch.autograd.gradcheck(lambda *a: _PeepholeLSTM.apply(*a, mask, reverse), inputs)


@pytest.mark.parametrize(("op", "attrs"), [("LSTM", ""), ("GRU", ", linear_before_reset=1")])
def test_a_zero_sequence_length_falls_back_to_the_loop(op, attrs):
    model, feeds = recurrent_model(op, "bidirectional", attrs, batch=3)
    feeds["lens"] = np.array([6, 0, 3], np.int32)
    graph = assert_matches_ort(model, feeds, atol=1e-5)
    assert list(graph.recurrent_paths.values()) == ["loop: zero_length"]


def _loss(graph: TorchGraph, feeds) -> torch.Tensor:
    outputs = graph(feeds)
    weights = [torch.linspace(-1.0, 1.0, outputs[n].numel()).reshape(outputs[n].shape) for n in graph.output_names]
    pairs = zip(graph.output_names, weights, strict=True)
    return sum((outputs[n] * k).sum() + outputs[n].square().sum() for n, k in pairs)


@pytest.mark.parametrize(("op", "attrs"), [("LSTM", ""), ("GRU", ", linear_before_reset=1"), ("RNN", "")])
@pytest.mark.parametrize("lens", [False, True], ids=["full", "varying"])
def test_fused_gradients_reach_w_r_b_and_equal_the_loop_gradients(op, attrs, lens):
    model, feeds = recurrent_model(op, "bidirectional", attrs, lens=lens)
    grads = {}
    for fused in (True, False):
        graph = TorchGraph(model, fused_recurrent=fused)
        _loss(graph, feeds).backward()
        grads[fused] = {graph.parameter_names[k]: p.grad.numpy().copy() for k, p in graph.weights.items()}
        assert set(graph.recurrent_paths.values()) == {"fused" if fused else "loop: disabled"}
    assert sorted(grads[True]) == ["b", "r", "w"]
    for name, grad in grads[True].items():
        assert np.all(np.abs(grad).reshape(grad.shape[0], -1).sum(axis=1) > 0), name  # both directions
        np.testing.assert_allclose(grad, grads[False][name], rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize(("op", "attrs"), [("LSTM", ""), ("GRU", ", linear_before_reset=1"), ("RNN", "")])
def test_recurrent_weights_round_trip_exactly(op, attrs):
    model, feeds = recurrent_model(op, "bidirectional", attrs)
    before = {n: v.const_value.numpy().copy() for n, v in model.graph.initializers.items()}
    graph = TorchGraph(model)
    assert graph.write_back(model) == 3
    for name in ("w", "r", "b"):
        assert np.array_equal(model.graph.initializers[name].const_value.numpy(), before[name])
    # One SGD step, fused and loop from the same start, lands on the same ONNX-ordered weights.
    trained = {}
    for fused in (True, False):
        graph = TorchGraph(model, fused_recurrent=fused)
        optimizer = torch.optim.SGD(graph.parameters(), lr=0.05)
        _loss(graph, feeds).backward()
        optimizer.step()
        trained[fused] = graph
    expected = trained[True].run_numpy(feeds)
    assert trained[True].write_back(model) == 3
    for key, name in trained[True].parameter_names.items():
        written = model.graph.initializers[name].const_value.numpy()
        assert np.array_equal(written, trained[True].weights[key].detach().numpy())
        assert not np.array_equal(written, before[name])
        loop_key = next(k for k, n in trained[False].parameter_names.items() if n == name)
        np.testing.assert_allclose(written, trained[False].weights[loop_key].detach().numpy(), rtol=1e-5, atol=1e-6)
    assert_close(run_ort(model, feeds), expected)


# ---------------------------------------------------------------------------------- QAT of scales (LSQ)
def qdq_conv_model(*, sx=0.02, sy=0.05, bias_scale=None, seed=0):
    """x -> Q/DQ (uint8) -> Conv(DQ int8 per-channel weight, DQ int32 bias at s_x * s_w) -> Q/DQ; and its float
    twin (the same Conv on the dequantized float weight and bias) as the teacher."""
    rng = np.random.default_rng(seed)
    w = seeded((4, 3, 3, 3), seed + 1, 0.3)
    sw = (np.abs(w).reshape(4, -1).max(axis=1) / 127).astype(np.float32)
    wq = np.clip(np.round(w / sw.reshape(4, 1, 1, 1)), -128, 127).astype(np.int8)
    b = seeded((4,), seed + 2, 0.5)
    sb = (np.float32(sx) * sw).astype(np.float32) if bias_scale is None else bias_scale
    bq = np.round(b / sb).astype(np.int32)
    body = (
        "(float[2,3,6,6] x) => (float[2,4,6,6] y) { xq = QuantizeLinear (x, sx, zx) xd = DequantizeLinear (xq, sx, zx) "
        "wd = DequantizeLinear <axis=0> (wq, sw, zw) bd = DequantizeLinear <axis=0> (bq, sb, zb) "
        "c = Conv <pads=[1,1,1,1]> (xd, wd, bd) cq = QuantizeLinear (c, sy, zy) y = DequantizeLinear (cq, sy, zy) }"
    )
    model = make_model(
        f"{header()}\ng {body}",
        sx=np.array(sx, np.float32), zx=np.array(128, np.uint8), wq=wq, sw=sw, zw=np.zeros(4, np.int8),
        bq=bq, sb=sb, zb=np.zeros(4, np.int32), sy=np.array(sy, np.float32), zy=np.array(128, np.uint8),
    )
    teacher = make_model(
        f"{header()}\ng (float[2,3,6,6] x) => (float[2,4,6,6] y) {{ y = Conv <pads=[1,1,1,1]> (x, w, b) }}",
        w=(wq.astype(np.float32) * sw.reshape(4, 1, 1, 1)), b=(bq * sb).astype(np.float32),
    )
    feeds = {"x": (rng.standard_normal((2, 3, 6, 6)) * 0.6).astype(np.float32)}
    return model, teacher, feeds


def test_train_scales_makes_scales_parameters_and_ties_the_bias_scale():
    model, _, feeds = qdq_conv_model()
    graph = assert_matches_ort_qdq(model, feeds, train_scales=True)
    assert sorted(graph.parameter_names.values()) == ["sw", "sx", "sy"]
    assert graph.tied_bias_scales == {"sb": ("sx", "sw")}
    assert all(p.requires_grad for p in graph.parameters())
    plain = TorchGraph(model)
    assert plain.parameter_names == {} and plain.tied_bias_scales == {}


def assert_matches_ort_qdq(model, feeds, **options) -> TorchGraph:
    graph = TorchGraph(model, **options)
    np.testing.assert_allclose(graph.run_numpy(feeds)[0], run_ort(model, feeds)[0], atol=1e-5, rtol=0)
    return graph


def test_scale_gradient_is_the_lsq_gradient():
    s, zero = 0.01, 128
    body = "(float[64] x) => (float[64] y) { q = QuantizeLinear (x, s, z) y = DequantizeLinear (q, s, z) }"
    model = make_model(f"{header()}\ng {body}", s=np.array(s, np.float32), z=np.array(zero, np.uint8))
    x = seeded((64,), 3, 1.0)  # |x| up to ~2.5: many values beyond the range [-1.28, 1.27] saturate
    g = seeded((64,), 4)
    graph = TorchGraph(model, train_scales=True)
    (graph({"x": x})["y"] * torch.from_numpy(g)).sum().backward()
    (param,) = graph.parameters()
    v = x.astype(np.float64) / np.float32(s)
    q = np.round(v) + zero
    inside = (q >= 0) & (q <= 255)
    dy_ds = np.where(inside, np.round(v) - v, np.clip(q, 0, 255) - zero)  # LSQ: round(v) - v, or the bound
    assert 0 < inside.sum() < 64
    np.testing.assert_allclose(float(param.grad), float(np.float32(s) * np.sum(g * dy_ds)), rtol=1e-4)


def test_trained_scales_write_back_positive_and_requantize_weights_and_tied_bias():
    model, _, feeds = qdq_conv_model()
    initial = {n: v.const_value.numpy().copy() for n, v in model.graph.initializers.items()}
    graph = TorchGraph(model, train_quantized_weights=True, train_scales=True)
    key = {name: k for k, name in graph.parameter_names.items()}
    with torch.no_grad():
        graph.weights[key["sx"]].add_(np.log(0.8))
        graph.weights[key["sw"]].add_(torch.tensor([0.3, -0.2, 0.1, 0.0]))
        graph.weights[key["wq"]].add_(torch.from_numpy(seeded((4, 3, 3, 3), 9, 0.01)))
        graph.weights[key["bq"]].add_(0.05)
        shadow_w = graph.weights[key["wq"]].detach().numpy().copy()
        shadow_b = graph.weights[key["bq"]].detach().numpy().copy()
    expected = graph.run_numpy(feeds)[0]
    assert graph.write_back(model) == 6  # sx, sw, sy, wq, bq, sb
    written = {n: v.const_value.numpy() for n, v in model.graph.initializers.items()}
    np.testing.assert_allclose(written["sx"], initial["sx"] * 0.8, rtol=1e-6)
    np.testing.assert_allclose(written["sw"], initial["sw"] * np.exp([0.3, -0.2, 0.1, 0.0]), rtol=1e-6)
    assert all(written[n].dtype == np.float32 and np.all(written[n] > 0) for n in ("sx", "sw", "sy", "sb"))
    assert np.array_equal(written["sb"], written["sx"] * written["sw"])  # float32 product, as the kernels assume
    assert written["bq"].dtype == np.int32 and written["wq"].dtype == np.int8
    np.testing.assert_array_equal(written["bq"], np.round(shadow_b / written["sb"]).astype(np.int32))
    requantized = np.clip(np.round(shadow_w / written["sw"].reshape(4, 1, 1, 1)), -128, 127)
    assert np.abs(written["wq"].astype(np.int64) - requantized).max() <= 1  # float32 ties at .5 may round apart
    assert not np.array_equal(written["wq"], initial["wq"])
    np.testing.assert_allclose(run_ort(model, feeds)[0], expected, atol=1e-5, rtol=0)


def test_training_scales_alone_brings_a_coarse_qdq_model_closer_to_its_float_twin():
    model, teacher, feeds = qdq_conv_model(sx=0.2, sy=0.2)  # 10x too coarse for x ~ N(0, 0.6)
    target = torch.from_numpy(run_ort(teacher, feeds)[0])
    weights_before = model.graph.initializers["wq"].const_value.numpy().copy()
    graph = TorchGraph(model, train_scales=True)
    optimizer = torch.optim.Adam(graph.parameters(), lr=0.05)
    losses = []
    for _ in range(60):
        optimizer.zero_grad()
        loss = (graph(feeds)["y"] - target).square().mean()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    before = float(np.mean((run_ort(model, feeds)[0] - target.numpy()) ** 2))
    graph.write_back(model)
    after = float(np.mean((run_ort(model, feeds)[0] - target.numpy()) ** 2))
    assert after < 0.2 * before  # measured: 0.0074 -> 0.00036
    assert abs(after - (graph(feeds)["y"] - target).square().mean().item()) < 1e-6
    assert float(model.graph.initializers["sx"].const_value.numpy()) < 0.2
    assert np.array_equal(model.graph.initializers["wq"].const_value.numpy(), weights_before)  # scales only


def test_a_bias_scale_other_than_sx_times_sw_is_neither_tied_nor_trained():
    model, _, feeds = qdq_conv_model(bias_scale=np.full(4, 1e-3, np.float32))
    bias_before = model.graph.initializers["bq"].const_value.numpy().copy()
    graph = assert_matches_ort_qdq(model, feeds, train_scales=True)
    assert graph.tied_bias_scales == {}
    assert sorted(graph.parameter_names.values()) == ["sw", "sx", "sy"]
    with torch.no_grad():
        for param in graph.parameters():
            param.add_(0.1)
    graph.write_back(model)
    assert np.array_equal(model.graph.initializers["bq"].const_value.numpy(), bias_before)
    np.testing.assert_array_equal(model.graph.initializers["sb"].const_value.numpy(), np.full(4, 1e-3, np.float32))


@pytest.mark.parametrize("per_channel", [True, False])
def test_quantized_digits_cnn_with_trainable_scales_matches_onnxruntime_and_round_trips_bit_for_bit(per_channel):
    from sftonnx.api import optimize
    from sftonnx.verify import Budget

    spec = f"quantize{{method=minmax, per_channel={str(per_channel).lower()}}}"
    model = optimize(str(MODELS / "digits_cnn.onnx"), passes=spec, calibration_data=str(MODELS / "digits_calib.npz"),
                     budget=Budget(min_cosine=0.5, min_agreement=0.5)).model
    feeds = {"input": np.load(MODELS / "digits_test.npz")["input"][:32]}
    graph = TorchGraph(model, train_quantized_weights=True, train_scales=True)
    np.testing.assert_array_equal(graph.run_numpy(feeds)[0], run_ort(model, feeds)[0])
    biases = [n for n in model.graph if n.op_type == "DequantizeLinear" and n.inputs[0].dtype == ir.DataType.INT32]
    assert len(graph.tied_bias_scales) == len(biases) == 3  # per-tensor s_w: broadcast to the per-channel bias scale
    before = {name: value.const_value.numpy().copy() for name, value in model.graph.initializers.items()}
    graph.write_back(model)
    for name, value in model.graph.initializers.items():
        array = value.const_value.numpy()
        assert array.dtype == before[name].dtype and np.array_equal(array, before[name]), name


#: Recurrent models of the public corpus, and how their LSTM/GRU/RNN nodes run.
RECURRENT_CORPUS = {
    "ddddocr_common": "fused",  # CNN + bidirectional LSTM (H=512)
    "lac_encoder": "fused",  # bidirectional GRUs
    "madmom_beats_blstm": "peephole BPTT",  # LSTMs with peepholes
    "madmom_downbeats_bgru": "fused",  # GRUs (linear_before_reset=1)
    "madmom_notes_brnn": "fused",  # simple RNNs
    "madmom_onsets_rnn": "fused",
    "piper_tashkeel": "fused",  # bidirectional GRUs with sequence_lens
}


@pytest.mark.corpus
@pytest.mark.parametrize(
    "entry_id",
    [pytest.param(e, marks=[pytest.mark.slow] if e == "ddddocr_common" else []) for e in sorted(RECURRENT_CORPUS)],
)
def test_recurrent_corpus_models_match_onnxruntime_and_train_every_recurrent_weight(entry_id):
    from tests.corpus.conftest import fetch_or_skip, recipe_samples
    from tests.corpus.manifest import BY_ID

    entry = BY_ID[entry_id]
    model = io.load(str(fetch_or_skip(entry)))
    feeds = recipe_samples(entry, 2, 0)
    graph = TorchGraph(model)
    for feed in feeds:
        for expected, actual in zip(run_ort(model, feed), graph.run_numpy(feed), strict=True):
            assert expected.shape == actual.shape
            if expected.dtype.kind == "f":
                assert np.abs(actual - expected).max() <= 1e-4 * np.abs(expected).max()  # measured <= 1.9e-5
            else:
                np.testing.assert_array_equal(actual, expected)
    assert set(graph.recurrent_paths.values()) == {RECURRENT_CORPUS[entry_id]}
    outputs = graph(feeds[0])
    sum(outputs[n].square().mean() for n in graph.output_names if outputs[n].dtype.is_floating_point).backward()
    recurrent = {v.name for node in model.graph if node.op_type in ("LSTM", "GRU", "RNN") for v in node.inputs[1:4]}
    keys = {name: key for key, name in graph.parameter_names.items()}
    assert recurrent and recurrent <= set(keys)
    for name in recurrent:
        assert float(graph.weights[keys[name]].grad.abs().sum()) > 0, name
