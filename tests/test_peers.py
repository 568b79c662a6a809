"""benchmarks/peers.py: a quick run on digits_cnn, NNCF as a candidate, corpus inputs, failed rows survive."""

from __future__ import annotations

import importlib.util
import json
import pathlib
import sys

import numpy as np
import onnx_ir as ir
import pytest

PEERS_PATH = pathlib.Path(__file__).resolve().parents[1] / "benchmarks" / "peers.py"
EXPECTED_ROWS = (
    "original",
    "onnxsim",
    "onnxslim",
    "ORT quantize_static",
    "ORT quantize_dynamic",
    "NNCF",
    "NNCF transformer",
    "sftonnx lossless",
)


def _load_peers():
    spec = importlib.util.spec_from_file_location("peers_under_test", PEERS_PATH)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def peers():
    try:
        yield _load_peers()
    finally:
        sys.modules.pop("peers_under_test", None)


def _rows(markdown: str) -> dict[str, dict[str, str]]:
    lines = [line for line in markdown.splitlines() if line.startswith("| ")]
    header = [cell.strip() for cell in lines[0].strip("|").split("|")]
    rows = {}
    for line in lines[1:]:
        cells = [cell.strip() for cell in line.strip().strip("|").split(" | ")]
        if cells[0] == "candidate":
            continue
        rows[cells[0]] = dict(zip(header, cells, strict=False))
    return rows


def _run(peers, folder: pathlib.Path) -> tuple[dict[str, dict[str, str]], dict]:
    out, raw = folder / "RESULTS.md", folder / "results.json"
    from sftonnx.passes import PRESETS

    # Every registered preset, not `auto`: its search is minutes without a warm cache and has its own tests.
    presets = ",".join(PRESETS)
    argv = ["--quick", "--models", "digits_cnn", "--presets", presets, "--out", str(out), "--json", str(raw)]
    code = peers.main([*argv, "--work-dir", str(folder / "w")])
    assert code == 0
    return _rows(out.read_text()), json.loads(raw.read_text())


@pytest.fixture(scope="module")
def quick_run(peers, tmp_path_factory):
    """One quick run on digits_cnn shared by the tests below, with onnxslim made to fail (a failed row)."""

    def boom(source, output, data):
        raise RuntimeError("onnxslim exploded\nsecond line")

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(peers, "run_onnxslim", boom)
        yield _run(peers, tmp_path_factory.mktemp("peers"))


@pytest.mark.slow  # one run: ~60 s idle (compact and max are most of it), 3 min on a loaded machine
def test_quick_run_on_digits_has_every_candidate(quick_run):
    rows, raw = quick_run
    for label in EXPECTED_ROWS:
        assert label in rows, f"no row for {label}: {sorted(rows)}"
    original = rows["original"]
    assert original["status"] == "ok"
    assert original["latency ratio"] == "1.00" and original["size ratio"] == "1.00"
    assert float(original["accuracy"]) > 0.9
    assert original["task metric"] == "argmax 1.0000"  # digits logits: argmax agreement with itself
    for label, row in rows.items():
        if row["status"] == "ok":
            assert float(row["latency ratio"]) > 0, label
            assert float(row["size ratio"]) > 0, label
            kind, value = row["task metric"].split()
            assert kind == "argmax" and 0.9 < float(value) <= 1.0, label
        else:
            assert row["status"] in ("failed", "skipped") and row["notes"], label
    assert rows["sftonnx lossless"]["status"] == "ok"
    assert float(rows["sftonnx lossless"]["cosine"]) > 0.9999
    # digits_cnn has no MatMul of two activations: NNCF's transformer mode does not apply.
    assert rows["NNCF transformer"]["status"] == "skipped"
    assert "no attention MatMul" in rows["NNCF transformer"]["notes"]
    if importlib.util.find_spec("nncf") is None:
        assert rows["NNCF"]["status"] == "skipped" and "nncf is not installed" in rows["NNCF"]["notes"]
    else:
        assert rows["NNCF"]["status"] == "ok" and float(rows["NNCF"]["size ratio"]) < 0.5  # int8 weights
    # Every preset registered at run time gets a row.
    from sftonnx.passes import PRESETS

    assert {f"sftonnx {name}" for name in PRESETS} <= set(rows)
    assert "sftonnx auto" not in rows  # not asked for
    assert raw["complete"] and raw["models"]["digits_cnn"]["benchmark"]["baseline"] == "original"


@pytest.mark.slow
def test_failing_candidate_is_a_failed_row(quick_run):
    rows, raw = quick_run
    row = rows["onnxslim"]
    assert row["status"] == "failed"
    assert row["notes"] == "RuntimeError: onnxslim exploded"
    assert row["latency ratio"] == "—"
    # The others are still measured.
    assert rows["original"]["latency ratio"] == "1.00"
    assert float(rows["onnxsim"]["latency ratio"]) > 0
    failed = [c for c in raw["models"]["digits_cnn"]["candidates"] if c["label"] == "onnxslim"]
    assert failed[0]["status"] == "failed"


# --------------------------------------------------------------------------------------- fast cases
ATTENTION = """
<ir_version: 8, opset_import: ["" : 17]>
attention (float[2, 4] x) => (float[2, 4] y) <float[4, 4] w = {W}> {
    q = MatMul (x, w)
    kt = Transpose <perm = [1, 0]> (q)
    scores = MatMul (q, kt)
    p = Softmax (scores)
    y = MatMul (p, q)
}
"""
LOOP_CARRIES_WEIGHT = """
<ir_version: 8, opset_import: ["" : 17]>
recurrent (float[1, 4] x, int64 n) => (float[1, 4] y, float[4, 4] w_out) <float[4, 4] w = {W}, bool keep = {1}> {
    y, w_out = Loop (n, keep, x, w) <body = step (int64 i, bool c, float[1, 4] h, float[4, 4] r)
        => (bool c_out, float[1, 4] h_out, float[4, 4] r_out) {
        c_out = Identity (c)
        h_out = MatMul (h, r)
        r_out = Identity (r)
    }>
}
"""


def _text_model(text: str) -> ir.Model:
    weight = ", ".join(f"{v:.3f}" for v in np.random.default_rng(0).standard_normal(16))
    return ir.from_onnx_text(text.replace("{W}", "{" + weight + "}"))


def test_graph_facts_sees_attention_but_not_a_recurrent_weight(peers):
    assert peers.graph_facts(_text_model(ATTENTION)) == (False, True, True)
    # The body's MatMul takes the carried weight, passed through unchanged from an initializer: no attention.
    assert peers.graph_facts(_text_model(LOOP_CARRIES_WEIGHT)) == (False, True, False)


def test_missing_nncf_is_a_skipped_row_not_a_crash(peers, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "nncf", None)  # `import nncf` raises ImportError
    data = peers.ModelData(
        "m", tmp_path / "m.onnx", [], None, None, tmp_path, None, [], None, False, True, attention=True
    )
    for transformer in (False, True):
        status, reason = peers._attempt(
            lambda s, o, d, t=transformer: peers.run_nncf(s, o, d, transformer=t),
            data.path,
            tmp_path / "out.onnx",
            data,
            tmp_path,
        )
        assert status == "skipped"
        assert reason.startswith("nncf is not installed") and "sftonnx[bench]" in reason
    assert not (tmp_path / "error.txt").exists()


def test_slow_candidate_is_stopped_at_its_time_cap(peers, tmp_path):
    import time

    def stall(source, output, data):
        time.sleep(60)

    started = time.monotonic()
    status, reason = peers._attempt_forked(stall, tmp_path / "m.onnx", tmp_path / "o.onnx", None, tmp_path, 1.0, 4)
    assert (status, reason) == ("failed", "timeout: stopped after 1 s")
    assert time.monotonic() - started < 20


def test_used_up_model_cap_skips_the_remaining_candidates(peers, tmp_path, monkeypatch):
    import time

    monkeypatch.setattr(peers, "_preload", lambda: None)  # the caps are under test, not the imports
    monkeypatch.setattr(peers, "run_onnxsim", lambda source, output, data: time.sleep(30))
    data = peers.prepare_model("digits_cnn", tmp_path / "w")
    rows = peers.make_candidates(
        data, tmp_path / "w", ["lossless", "fp16"], peers=["onnxsim"], auto=False, limits=peers.Limits(60, 0.01, None)
    )
    assert [r.label for r in rows] == ["original", "onnxsim", "sftonnx lossless", "sftonnx fp16"]
    # The first (stalling) candidate gets what is left of the 10 ms (stopped) or nothing (skipped); the rest are
    # skipped.
    assert rows[1].optimize_s is None or rows[1].optimize_s < 5
    assert (rows[1].status, rows[1].message) in (
        ("failed", "timeout: stopped after 0 s"),
        ("skipped", "not run: the model's time cap (0 s) was used up"),
    )
    for row in rows[2:]:
        assert (row.status, row.message) == ("skipped", "not run: the model's time cap (0 s) was used up")
        assert row.path is None


def test_candidate_over_its_memory_cap_is_a_failed_row(peers, tmp_path):
    def hog(source, output, data):
        return str(np.ones(2**31, dtype=np.uint8).sum())  # 2 GiB under a 1 GiB address-space cap

    status, reason = peers._attempt_forked(hog, tmp_path / "m.onnx", tmp_path / "o.onnx", None, tmp_path, 60.0, 1)
    assert status == "failed" and "MemoryError" in reason


def test_bad_peer_name_is_one_line_exit_2(peers, capsys):
    with pytest.raises(SystemExit) as stopped:
        peers.parse_args(["--peers", "onnxsim,quark"])
    assert stopped.value.code == 2
    assert "--peers: unknown quark" in capsys.readouterr().err


@pytest.mark.slow  # nncf.quantize on digits_cnn: ~5 s
def test_nncf_candidate_quantizes_digits_and_keeps_accuracy(peers, tmp_path):
    pytest.importorskip("nncf", reason="nncf is in the bench extra, not in dev")
    data = peers.prepare_model("digits_cnn", tmp_path / "w")
    output = tmp_path / "nncf.onnx"
    note = peers.run_nncf(data.path, output, data)
    assert note.startswith("nncf ") and f"{len(peers._calibration_feeds(data))} calibration batches" in note
    ops = [node.op_type for node in ir.load(output).graph]
    convs = ops.count("Conv")
    assert convs > 0 and ops.count("QuantizeLinear") >= convs and ops.count("DequantizeLinear") >= 2 * convs
    rows = [peers.Candidate("original", "original", str(data.path)), peers.Candidate("NNCF", "peer", str(output))]
    peers.evaluate(data, rows)
    original, quantized = rows
    assert quantized.status == "ok" and quantized.size_ratio < 0.5
    assert quantized.accuracy >= original.accuracy - 0.01
    assert quantized.metric_kind == "argmax" and quantized.metric > 0.98
    with pytest.raises(peers.NotApplicable, match="no attention MatMul"):
        peers.run_nncf(data.path, tmp_path / "t.onnx", data, transformer=True)


@pytest.mark.corpus
@pytest.mark.slow  # ~10 s idle (ORT's quantizer and the lossless preset on a 20 kB model), 30 s on a loaded machine
def test_corpus_model_gets_disjoint_recipe_data_and_is_timed_on_a_real_feed(peers, tmp_path):
    from tests.corpus.fetch import CorpusUnavailable

    try:
        data = peers.prepare_model("surfaces_gbr", tmp_path / "w")  # 20 kB: Scaler + MLP surrogate
    except CorpusUnavailable as error:
        pytest.skip(str(error))
    assert data.source == "corpus" and data.real_data and data.quantizable and not data.attention
    calib, evaluation = peers._calibration_feeds(data), data.eval_feeds
    assert (len(calib), len(evaluation)) == (peers.CORPUS_CALIB, peers.CORPUS_EVAL)
    seen = {f["input"].tobytes() for f in calib}
    assert not any(f["input"].tobytes() in seen for f in evaluation)  # held-out samples are not calibration ones
    # sftonnx reads the same calibration samples from the file the presets get.
    from sftonnx import verify

    streamed = np.concatenate([f["input"] for f in verify.calibration_feeds(data.calibration, data.specs)])
    np.testing.assert_array_equal(streamed, np.concatenate([f["input"] for f in calib]))
    rows = peers.make_candidates(
        data, tmp_path / "w", ["lossless"], peers=["ort-dynamic", "nncf-transformer"], limits=peers.Limits(120, 300, 4)
    )
    assert [r.label for r in rows] == ["original", "ORT quantize_dynamic", "NNCF transformer", "sftonnx lossless"]
    assert rows[2].status == "skipped"
    peers.evaluate(data, rows)
    bench = peers.time_candidates(data, rows, peers.Timing(runs=5, duration=1.0, warmup=1))
    assert bench is not None and bench["baseline"] == "original"
    original, dynamic, _, lossless = rows
    assert original.metric == 1.0 and original.latency_ratio == 1.0
    assert lossless.status == "ok" and lossless.metric_kind == "cosine" and lossless.metric > 0.9999
    assert dynamic.status == "ok" and 0.9 < dynamic.metric <= 1.0 and dynamic.latency_ratio > 0
    assert 0 < original.latency_runs <= 5
