"""Synthesized verification inputs: dimensions from weights, integer ranges from consumers, stated in notes."""

from __future__ import annotations

import numpy as np
import onnx
import onnx_ir as ir
import pytest

from sftonnx import verify
from sftonnx.errors import InputError
from sftonnx.pipeline import Verifier
from tests.helpers import assert_clean_error, make_model, run_cli, run_ort, seeded

LSTM = """
<ir_version: 8, opset_import: ["" : 18]>
g (float[T, ?] x) => (float[T, 1, 1, 8] y) {
    axes = Constant <value_ints = [1]> ()
    xb = Unsqueeze(x, axes)
    y, h = LSTM <hidden_size = 8> (xb, W, R)
}
"""

EMBEDDING = """
<ir_version: 8, opset_import: ["" : 18]>
g (int64[B, L] ids) => (float[B, L, 4] y) {
    y = Gather(emb, ids)
}
"""

GATHER_DIM = """
<ir_version: 8, opset_import: ["" : 18]>
g (float[B, 5] x, int64[3] pick) => (float[B, 3] y) {
    y = Gather <axis = 1> (x, pick)
}
"""

SCATTER = """
<ir_version: 8, opset_import: ["" : 18]>
g (float[5, 3] data, int64[2, 3] idx, float[2, 3] upd) => (float[5, 3] y) {
    y = ScatterElements <axis = 0> (data, idx, upd)
}
"""

RNN = """
<ir_version: 8, opset_import: ["" : 18]>
g (float[T, 1, 3] x, int32[1] lens) => (float[T, 1, 1, 4] y) {
    y, h = RNN <hidden_size = 4> (x, W, R, , lens)
}
"""

SAMPLE_RATE = """
<ir_version: 8, opset_import: ["" : 18]>
g (float[4] x, int64 sr) => (float[4] y) {
    rate = Constant <value = int64 {16000}> ()
    is_16k = Equal(sr, rate)
    y = If (is_16k) <
        then_branch = t () => (float[4] a) { a = Identity(x) },
        else_branch = e () => (float[4] b) {
            bad = Constant <value_ints = [3, 5]> ()
            b = Reshape(x, bad)
        }
    >
}
"""

GRAPH = """
<ir_version: 8, opset_import: ["" : 18]>
g (float[N, 4] feat, int64[2, E] edge_index) => (float[E, 4] y) {
    zero = Constant <value = int64 {0}> ()
    src = Gather <axis = 0> (edge_index, zero)
    y = Gather(feat, src)
}
"""

FLOAT_IDS = """
<ir_version: 8, opset_import: ["" : 18]>
g (float[?, ?] chars) => (float[?, ?, 8] y) {
    ids = Cast <to = 7> (chars)
    y = Gather(emb, ids)
}
"""

FIXED_RESHAPE = """
<ir_version: 8, opset_import: ["" : 18]>
g (float[?] x) => (float[7, 3] y) {
    shape = Constant <value = int64[2] {7, 3}> ()
    y = Reshape(x, shape)
}
"""

# No length fits both reshapes.
UNFIT = """
<ir_version: 8, opset_import: ["" : 18]>
g (float[?] x) => (float[7, 3] y, float[4, 5] z) {
    a = Constant <value = int64[2] {7, 3}> ()
    y = Reshape(x, a)
    b = Constant <value = int64[2] {4, 5}> ()
    z = Reshape(x, b)
}
"""


def lstm_model(features: int = 266, hidden: int = 8) -> ir.Model:
    return make_model(LSTM, W=seeded((1, 4 * hidden, features)), R=seeded((1, 4 * hidden, hidden), seed=1))


def prepare(model: ir.Model, **kwargs):
    return verify.prepare_feeds(model, **kwargs)


def test_lstm_weight_fixes_unnamed_feature_dim_and_model_runs():
    model = lstm_model()
    feeds, shapes, notes = prepare(model)
    assert shapes == {"x": (verify.DEFAULT_DYNAMIC_DIM, 266)}
    assert "x: dim 1 set to 266 from LSTM weight 'W'" in notes
    # T feeds the LSTM's sequence axis: a length, not a batch of 1.
    assert "x: dynamic dimension 0 ('T') set to 32" in notes
    assert len(feeds) == verify.RANDOM_SAMPLES and feeds[0]["x"].shape == (32, 266)
    (y,) = run_ort(model, feeds[0])
    assert y.shape == (32, 1, 1, 8) and np.isfinite(y).all()


def test_matmul_inside_a_scan_body_fixes_the_feature_dim():
    model = ir.from_onnx_text(
        """
        <ir_version: 8, opset_import: ["" : 18]>
        g (float[T, ?] x, float[2] h0) => (float[2] h, float[T, 2] ys)
          <float[3, 2] W = {1, 2, 3, 4, 5, 6}> {
            h, ys = Scan <num_scan_inputs = 1, body = step (float[2] s, float[?] xt) => (float[2] s2, float[2] y) {
                p = MatMul(xt, W)
                s2 = Add(s, p)
                y = Identity(s2)
            }> (h0, x)
        }
        """
    )
    feeds, shapes, notes = prepare(model)
    assert shapes == {"x": (32, 3), "h0": (2,)}
    assert "x: dim 1 set to 3 from MatMul weight 'W'" in notes
    _, ys = run_ort(model, feeds[0])
    assert ys.shape == (32, 2)


def test_gather_on_embedding_of_two_rows():
    model = make_model(EMBEDDING, emb=seeded((2, 4)))
    feeds, shapes, notes = prepare(model)
    ids = np.concatenate([f["ids"].ravel() for f in feeds])
    assert ids.min() == 0 and ids.max() == 1 and feeds[0]["ids"].dtype == np.int64
    assert "ids: integers in [0, 2) from Gather on embedding 'emb' (2 rows)" in notes
    run_ort(model, feeds[0])


def test_offset_before_gather_shifts_the_range():
    model = make_model(
        """
        <ir_version: 8, opset_import: ["" : 18]>
        g (int64[B, L] ids) => (float[B, L, 4] y) {
            one = Constant <value = int64 {1}> ()
            shifted = Sub(ids, one)
            y = Gather(emb, shifted)
        }
        """,
        emb=seeded((4, 4)),
    )
    feeds, _, notes = prepare(model)
    ids = np.concatenate([f["ids"].ravel() for f in feeds])
    assert ids.min() == 1 and ids.max() == 4
    assert "ids: integers in [1, 5) from Gather on embedding 'emb' (4 rows)" in notes
    run_ort(model, feeds[0])


def test_gather_indices_into_a_dim_of_five():
    model = make_model(GATHER_DIM)
    feeds, _, notes = prepare(model)
    picks = np.concatenate([f["pick"] for f in feeds])
    assert 0 <= picks.min() and picks.max() < 5 and len(set(picks.tolist())) > 1
    assert any(n.startswith("pick: integers in [0, 5) from Gather") and "(dim 1 = 5)" in n for n in notes)
    run_ort(model, feeds[0])


def test_scatter_elements_indices_stay_in_data():
    model = make_model(SCATTER)
    feeds, _, notes = prepare(model)
    idx = np.concatenate([f["idx"].ravel() for f in feeds])
    assert idx.max() < 5 and idx.max() >= 3  # random over [0, 5), not the old [0, 8)
    assert any(n.startswith("idx: integers in [0, 5) from ScatterElements") for n in notes)
    assert "upd" not in " ".join(n for n in notes if "integers" in n)
    run_ort(model, feeds[0])


def test_rnn_sequence_lens_are_the_full_length():
    model = make_model(RNN, W=seeded((1, 4, 3)), R=seeded((1, 4, 4), seed=1))
    feeds, shapes, notes = prepare(model)
    assert shapes["x"] == (32, 1, 3)
    assert feeds[0]["lens"].tolist() == [32] and feeds[0]["lens"].dtype == np.int32
    assert any(n.startswith("lens: set to 32, the full sequence length (sequence_lens of RNN") for n in notes)
    run_ort(model, feeds[0])


def test_sample_rate_compared_in_if_gets_the_constant():
    model = make_model(SAMPLE_RATE)
    feeds, _, notes = prepare(model)
    assert [int(f["sr"]) for f in feeds] == [16000, 16000]
    assert any(n.startswith("sr: values {16000} it is compared with (Equal") for n in notes)
    # The else branch cannot run: the synthesized feeds are what make the original runnable.
    source = ir.to_proto(model).SerializeToString()
    verifier = Verifier(source, feeds)
    assert np.array_equal(verifier.expected[0][0], feeds[0]["x"])
    with pytest.raises(InputError, match="cannot run the input model"):
        Verifier(source, [{"x": feeds[0]["x"], "sr": np.array(8000, np.int64)}])


def test_edge_index_stays_below_the_node_count():
    model = make_model(GRAPH)
    feeds, shapes, notes = prepare(model)
    nodes = shapes["feat"][0]
    assert nodes > 1  # rows read by computed indices: more than one node
    assert feeds[0]["edge_index"].max() < nodes and len(np.unique(feeds[0]["edge_index"])) > 1
    assert any(n.startswith(f"edge_index: integers in [0, {nodes}) from Gather") for n in notes)
    run_ort(model, feeds[0])


def test_float_character_ids_cast_to_indices():
    model = make_model(FLOAT_IDS, emb=seeded((43, 8)))
    feeds, _, notes = prepare(model)
    chars = feeds[0]["chars"]
    assert chars.dtype == np.float32 and np.array_equal(chars, np.round(chars)) and 0 <= chars.min() < chars.max() < 43
    assert "chars: integer-valued floats in [0, 43) from Gather on embedding 'emb' (43 rows)" in notes
    run_ort(model, feeds[0])


def paddle_model() -> ir.Model:
    """MatMul on x float[-1, 4], the way Paddle writes a dynamic batch."""
    import onnx.helper as oh  # tests may use onnx.helper

    graph = oh.make_graph(
        [oh.make_node("MatMul", ["x", "w"], ["y"])],
        "paddle",
        [oh.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [-1, 4])],
        [oh.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [-1, 3])],
        [onnx.numpy_helper.from_array(seeded((4, 3)), "w")],
    )
    return ir.from_proto(oh.make_model(graph, opset_imports=[oh.make_opsetid("", 13)]))


def test_paddle_minus_one_is_a_dynamic_dim():
    model = paddle_model()
    (spec,) = verify.input_specs(model)
    assert spec.shape == (None, 4)
    feeds, shapes, notes = prepare(model)
    assert shapes == {"x": (1, 4)} and "x: dynamic dimension 0 ('?') set to 1" in notes
    run_ort(model, feeds[0])
    _, shapes, _ = prepare(model, input_shapes=["x=3x4"])
    assert shapes == {"x": (3, 4)}


def test_input_shape_wins_and_same_named_dims_follow():
    feeds, shapes, notes = prepare(lstm_model(), input_shapes=["x=7x266"])
    assert shapes == {"x": (7, 266)} and feeds[0]["x"].shape == (7, 266)
    assert not any(n.startswith("x: dim") or n.startswith("x: dynamic") for n in notes)
    two = make_model(
        """
        <ir_version: 8, opset_import: ["" : 18]>
        g (float[N, K] a, float[N, K] b) => (float[N, K] y) { y = Add(a, b) }
        """
    )
    _, shapes, notes = prepare(two, input_shapes=["a=3x5"])
    assert shapes == {"a": (3, 5), "b": (3, 5)}
    assert "b: dim 0 set to 3 from --input-shape a" in notes


def test_longer_lengths_are_tried_when_defaults_do_not_run():
    # A 40x40 convolution without padding does not run on the default 32x32 image.
    model = make_model(
        """
        <ir_version: 8, opset_import: ["" : 18]>
        g (float[1, 1, H, W] x) => (float[1, 2, ?, ?] y) {
            y = Conv(x, w)
        }
        """,
        w=seeded((2, 1, 40, 40)),
    )
    feeds, shapes, notes = prepare(model)
    assert shapes["x"] == (1, 1, 64, 64)
    assert any(n.startswith("unresolved lengths set to 64: the model does not run with 32 (Conv") for n in notes)
    (y,) = run_ort(model, feeds[0])
    assert y.shape == (1, 2, 25, 25)


def test_constant_reshape_fixes_the_unknown_dim():
    model = make_model(FIXED_RESHAPE)
    feeds, shapes, notes = prepare(model)
    assert shapes == {"x": (21,)} and "x: dim 0 set to 21 from Reshape '' to [7, 3]" in notes
    run_ort(model, feeds[0])


def test_nothing_fits_exits_2_with_one_line(tmp_path):
    path = tmp_path / "unfit.onnx"
    ir.save(make_model(UNFIT), path)
    result = run_cli("optimize", path, tmp_path / "out.onnx")
    assert_clean_error(result, 2, "cannot run the input model")
    line = result.stderr.strip()
    assert "Reshape" in line and "the synthesized inputs do not fit (tried x=21)" in line
    assert "--data FILE.npz (arrays x)" in line and "--input-shape x=D0" in line
    assert not (tmp_path / "out.onnx").exists()
