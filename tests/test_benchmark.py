"""Benchmark harness: statistics, ratios, interleaving, EP fallback, accuracy, outputs and CLI errors."""

from __future__ import annotations

import csv
import itertools
import json

import numpy as np
import onnx_ir as ir
import pytest

# Not `from sftonnx import benchmark`: the package's lazy attribute of that name is api.benchmark.
import sftonnx.benchmark as bench
from sftonnx import api
from sftonnx.benchmark import sessions
from sftonnx.errors import InputError
from tests.helpers import assert_clean_error, make_model, run_cli, seeded

CLASSIFIER = """
<ir_version: 8, opset_import: ["" : 18]>
classifier (float[N, 4] x) => (float[N, 3] y) {
    y = MatMul(x, w)
}
"""

# Loads fine (N is dynamic) but cannot run: 4*N elements never reshape to [3].
CRASHES = """
<ir_version: 8, opset_import: ["" : 18]>
crashes (float[N, 4] x) => (float[3] y) {
    shape = Constant<value = int64[1] {3}>()
    y = Reshape(x, shape)
}
"""

FIXED_BATCH = """
<ir_version: 8, opset_import: ["" : 18]>
fixed (float[1, 4] x) => (float[1, 3] y) {
    y = MatMul(x, w)
}
"""

# Loads in onnx-ir but not in onnxruntime: the inner dimensions of MatMul disagree.
BROKEN = """
<ir_version: 8, opset_import: ["" : 18]>
broken (float[2, 4] x) => (float[2, 3] y) {
    y = MatMul(x, w)
}
"""

W = seeded((4, 3))
W_OTHER = seeded((4, 3), seed=1)
CUDA_REASON = bench.provider_unavailable_reason("cuda")


def save(path, text=CLASSIFIER, **initializers):
    ir.save(make_model(text, **initializers), path)
    return path


@pytest.fixture
def models(tmp_path):
    return save(tmp_path / "base.onnx", w=W), save(tmp_path / "other.onnx", w=W_OTHER)


sftonnx = run_cli




# ------------------------------------------------------------------------------------------ statistics
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_latency_statistics_are_ordered_and_consistent(seed):
    times = np.random.default_rng(seed).gamma(2.0, 0.004, size=57)
    stats = bench.latency_stats(times, batch=8)
    assert stats.runs == 57 and stats.batch == 8
    assert stats.min_ms <= stats.p50_ms <= stats.p90_ms <= stats.p99_ms <= stats.max_ms
    assert stats.min_ms <= stats.mean_ms <= stats.max_ms
    assert stats.mean_ms == pytest.approx(times.mean() * 1e3)
    assert stats.p50_ms == pytest.approx(np.median(times) * 1e3)
    assert stats.throughput == pytest.approx(8 / (stats.mean_ms / 1e3))
    assert stats.throughput == pytest.approx(8 * len(times) / times.sum())


def test_latency_statistics_need_runs():
    with pytest.raises(ValueError):
        bench.latency_stats([], batch=1)


# -------------------------------------------------------------------------------------------- ratios
def test_ratios_are_candidate_over_baseline():
    baseline = {"latency_p50": 10.0, "throughput": 100.0, "size": 1000.0, "memory": 50.0}
    candidate = {"latency_p50": 5.0, "throughput": 200.0, "size": 250.0, "memory": None}
    assert bench.compute_ratios(baseline, candidate) == {
        "latency_p50": 0.5,
        "throughput": 2.0,
        "size": 0.25,
        "memory": None,
    }
    assert bench.compute_ratios(baseline, baseline) == dict.fromkeys(bench.RATIO_KEYS, 1.0)


def test_ratios_are_unknown_without_a_usable_baseline():
    assert bench.compute_ratios({"latency_p50": 0.0, "size": None}, {"latency_p50": 3.0, "size": 7.0}) == dict.fromkeys(
        bench.RATIO_KEYS
    )
    assert bench.compute_ratios({}, {"size": 1.0}) == dict.fromkeys(bench.RATIO_KEYS)


def _row(label, provider, p50=None, size=100, status="ok"):
    row = bench.BenchmarkRow(label, label, provider, file_size_bytes=size)
    if p50 is not None:
        row.latency = bench.LatencyStats(10, 2, p50, p50, p50, p50, p50, p50, 0.0, 2 / (p50 / 1e3))
    if status != "ok":
        row.fail(status, "reason")
    return row


def test_ratios_are_taken_per_provider_against_the_first_model():
    rows = [
        _row("a", "cpu", p50=4.0, size=100),
        _row("b", "cpu", p50=2.0, size=50),
        _row("a", "cuda", status="unavailable"),
        _row("b", "cuda", status="unavailable"),
    ]
    bench.apply_ratios(rows)
    assert rows[0].ratios == {"latency_p50": 1.0, "throughput": 1.0, "size": 1.0, "memory": None}
    assert rows[1].ratios == {"latency_p50": 0.5, "throughput": 2.0, "size": 0.5, "memory": None}
    assert rows[2].ratios == {} and rows[3].ratios == {}


def test_ratios_are_unknown_when_the_baseline_row_failed():
    rows = [_row("a", "cpu", status="failed"), _row("b", "cpu", p50=2.0)]
    bench.apply_ratios(rows)
    assert rows[1].ratios == dict.fromkeys(bench.RATIO_KEYS)


# ---------------------------------------------------------------------------------------- interleaving
def test_runs_are_interleaved_model_by_model():
    calls: list[str] = []
    runners = [lambda name=name: calls.append(name) for name in "ABC"]
    fake_clock = itertools.count().__next__  # every run lasts one "second"
    series = bench.interleaved_runs(runners, runs=4, clock=fake_clock)
    assert "".join(calls) == "ABC" * 4
    assert [s.times for s in series] == [[1.0] * 4] * 3
    assert all(s.error is None for s in series)


def test_a_crashing_runner_is_dropped_and_the_others_go_on():
    calls: list[str] = []

    def crashing():
        calls.append("B")
        if calls.count("B") == 3:
            raise RuntimeError("onnxruntime exploded\nsecond line")

    series = bench.interleaved_runs([lambda: calls.append("A"), crashing], runs=5)
    assert "".join(calls) == "ABABABAA"
    assert len(series[0].times) == 5 and series[0].error is None
    assert len(series[1].times) == 2 and series[1].error == "run 3 failed: onnxruntime exploded"


def test_duration_bounds_the_rounds_and_progress_is_reported():
    seen = []
    fake_clock = itertools.count().__next__
    series = bench.interleaved_runs(
        [lambda: None, lambda: None], duration=10.0, clock=fake_clock, progress=lambda *a: seen.append(a)
    )
    rounds = len(series[0].times)
    assert rounds == len(series[1].times) and 1 <= rounds <= 10
    assert len(seen) == rounds and seen[-1][1] == 10.0


def test_models_are_interleaved_in_the_benchmark(models, monkeypatch):
    calls: list[str] = []
    original = sessions.Runner.__call__

    def recording(self):
        calls.append(self.session._model_path_for_test)
        return original(self)

    created = sessions.create_session

    def tagged(source, ep, **kwargs):
        session = created(source, ep, **kwargs)
        session._model_path_for_test = "A" if source.endswith("base.onnx") else "B"
        return session

    monkeypatch.setattr(sessions.Runner, "__call__", recording)
    monkeypatch.setattr(sessions, "create_session", tagged)
    bench.run_benchmark(list(models), runs=3, warmup=1, memory=False)
    # first run and warm-up per model, then the timed rounds A B A B A B
    assert "".join(calls) == "AA" + "BB" + "AB" * 3


# ------------------------------------------------------------------------------------------- providers
def test_provider_names():
    assert bench.parse_providers("cpu, CUDA,cpu") == ["cpu", "cuda"]
    assert bench.parse_providers(["TensorrtExecutionProvider"]) == ["tensorrt"]
    with pytest.raises(InputError, match="unknown execution provider 'rocm'"):
        bench.parse_providers("cpu,rocm")
    with pytest.raises(InputError, match="at least one"):
        bench.parse_providers(" , ")


@pytest.mark.skipif(CUDA_REASON is None, reason="this onnxruntime build provides CUDA")
def test_cuda_row_is_unavailable_on_a_cpu_only_build(models):
    result = api.benchmark(list(models), providers="cpu,cuda", runs=3, warmup=0, memory=False)
    cpu = [row for row in result.rows if row.provider == "cpu"]
    cuda = [row for row in result.rows if row.provider == "cuda"]
    assert [row.status for row in cpu] == ["ok", "ok"]
    assert [row.status for row in cuda] == ["unavailable", "unavailable"]
    for row in cuda:
        assert row.message.startswith("CUDA EP not available: ")
        assert row.latency is None and row.first_run_ms is None and row.session_seconds is None
        assert row.to_json()["latency"] is None and row.ratios == {}


def test_silent_cpu_fallback_is_reported_not_timed(models, monkeypatch):
    # Pretend the build lists CUDA: onnxruntime then falls back to the CPU when creating the session.
    monkeypatch.setattr(sessions, "provider_unavailable_reason", lambda ep, available=None: None)
    result = bench.run_benchmark([models[0]], providers="cuda", runs=3, warmup=0, memory=False)
    (row,) = result.rows
    if row.session_providers and row.session_providers[0] == "CUDAExecutionProvider":
        pytest.skip("a usable GPU is present: no fallback to observe")
    assert row.status == "unavailable"
    assert row.message.startswith("CUDA EP not available: onnxruntime fell back to CPUExecutionProvider")
    assert row.latency is None and row.first_run_ms is None


@pytest.mark.gpu
@pytest.mark.skipif(CUDA_REASON is not None, reason=CUDA_REASON or "")
def test_cuda_with_io_binding(models):
    result = bench.run_benchmark(list(models), providers="cuda", runs=5, warmup=1, io_binding=True)
    for row in result.rows:
        if row.status == "unavailable":
            pytest.skip(row.message)
        assert row.ok and row.session_providers[0] == "CUDAExecutionProvider"
        assert row.latency.runs == 5
    assert any("--io-binding" in note for note in result.notes)


# ------------------------------------------------------------------------------------------- benchmark
def test_benchmark_rows_statistics_memory_and_ratios(models):
    result = api.benchmark(list(models), runs=6, warmup=1, batch=4)
    base, other = result.rows
    assert result.baseline == "base" and [base.label, other.label] == ["base", "other"]
    for row in (base, other):
        assert row.ok and row.session_providers == ["CPUExecutionProvider"]
        assert row.latency.runs == 6 and row.latency.batch == 4
        assert row.latency.p50_ms <= row.latency.p90_ms <= row.latency.p99_ms
        assert row.session_seconds > 0 and row.first_run_ms > 0
        assert row.file_size_bytes > 0
        assert row.peak_rss_bytes > 0 and 0 <= row.rss_growth_bytes <= row.peak_rss_bytes
    assert base.ratios == dict.fromkeys(bench.RATIO_KEYS, 1.0)
    assert other.ratios["latency_p50"] == pytest.approx(other.latency.p50_ms / base.latency.p50_ms)
    assert other.ratios["size"] == pytest.approx(other.file_size_bytes / base.file_size_bytes)
    assert result.settings["input_shapes"] == {"x": [4, 4]}
    assert any("interleaved run by run (A B A B ...)" in note for note in result.notes)
    assert any("x: batch dimension set to 4" in note for note in result.notes)


def test_a_model_that_crashes_the_runtime_fails_its_row_only(tmp_path, models):
    crashing = save(tmp_path / "crashes.onnx", CRASHES)
    result = bench.run_benchmark([models[0], crashing, models[1]], runs=3, warmup=1, memory=False)
    statuses = {row.label: row.status for row in result.rows}
    assert statuses == {"base": "ok", "crashes": "failed", "other": "ok"}
    failed = result.rows[1]
    assert "failed" in failed.message and failed.latency is None
    assert result.rows[2].latency.runs == 3


def test_user_data_is_timed(tmp_path, models):
    data = tmp_path / "inputs.npz"
    np.savez(data, x=seeded((10, 4)))
    result = bench.run_benchmark(list(models), data=data, batch=5, runs=2, warmup=0, memory=False)
    assert result.settings["input_shapes"] == {"x": [5, 4]} and result.settings["batch"] == 5
    assert any("the first 5 sample(s) of inputs.npz" in note for note in result.notes)


def test_bad_options_are_input_errors(tmp_path, models):
    fixed = save(tmp_path / "fixed.onnx", FIXED_BATCH, w=W)
    with pytest.raises(InputError, match="fixed batch dimension of 1"):
        bench.run_benchmark([fixed], batch=4, memory=False)
    with pytest.raises(InputError, match="--runs must be at least 1"):
        bench.run_benchmark(list(models), runs=0)
    with pytest.raises(InputError, match="at least one model"):
        bench.run_benchmark([])
    data = tmp_path / "few.npz"
    np.savez(data, x=seeded((2, 4)))
    with pytest.raises(InputError, match="has 2 samples, the batch needs 8"):
        bench.run_benchmark(list(models), data=data, batch=8, memory=False)


def test_size_counts_external_data(tmp_path):
    from sftonnx import io

    path = tmp_path / "external.onnx"
    io.save(make_model(CLASSIFIER, w=W), path, external_data=True, size_threshold_bytes=16)
    data = tmp_path / "external.onnx.data"
    assert data.stat().st_size >= W.nbytes
    entry = bench.load_entry(path)
    assert entry.size == path.stat().st_size + data.stat().st_size


# -------------------------------------------------------------------------------------------- accuracy
def _labelled_data(path, n=40, wrong=0):
    x = seeded((n, 4), seed=5)
    labels = np.argmax(x @ W, axis=1)
    labels[:wrong] = (labels[:wrong] + 1) % 3
    np.savez(path, x=x, labels=labels)
    return x, labels


def test_eval_labels_gives_top1_accuracy(tmp_path, models):
    x, labels = _labelled_data(tmp_path / "labelled.npz")
    result = bench.run_benchmark(list(models), evaluate=tmp_path / "labelled.npz", runs=2, warmup=0, memory=False)
    expected_other = float(np.mean(np.argmax(x @ W_OTHER, axis=1) == labels))
    assert expected_other < 1.0
    assert [row.accuracy for row in result.rows] == [1.0, pytest.approx(expected_other)]


def test_eval_labels_with_known_mistakes(tmp_path, models):
    _labelled_data(tmp_path / "labelled.npz", n=40, wrong=10)
    result = bench.run_benchmark([models[0]], evaluate=tmp_path / "labelled.npz", runs=1, warmup=0, memory=False)
    assert result.rows[0].accuracy == pytest.approx(0.75)


def test_eval_labels_needs_labels(tmp_path, models):
    np.savez(tmp_path / "unlabelled.npz", x=seeded((4, 4)))
    with pytest.raises(InputError, match="no 'labels' array"):
        bench.run_benchmark(list(models), evaluate=tmp_path / "unlabelled.npz", memory=False)


def test_eval_user_metric_gets_the_session(tmp_path, models, monkeypatch):
    (tmp_path / "my_metric.py").write_text(
        "def score(session):\n    return 0.25 + len(session.get_inputs()) / 4\n"
        "def broken(session):\n    raise ValueError('metric exploded')\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    result = bench.run_benchmark([models[0]], evaluate="my_metric:score", runs=1, warmup=0, memory=False)
    assert result.rows[0].accuracy == 0.5
    with pytest.raises(InputError, match="raised ValueError: metric exploded"):
        bench.run_benchmark([models[0]], evaluate="my_metric:broken", runs=1, warmup=0, memory=False)
    with pytest.raises(InputError, match="has no function 'missing'"):
        bench.run_benchmark([models[0]], evaluate="my_metric:missing", runs=1, warmup=0, memory=False)


# ------------------------------------------------------------------------------------------------- CLI
def test_cli_writes_table_json_csv_and_plot(tmp_path, models):
    _labelled_data(tmp_path / "labelled.npz")
    out_json, out_csv, out_png = tmp_path / "b.json", tmp_path / "b.csv", tmp_path / "b.png"
    result = sftonnx(
        "bench", *models, "--ep", "cpu,cuda", "--runs", "4", "--warmup", "1", "--eval", tmp_path / "labelled.npz",
        "--json", out_json, "--csv", out_csv, "--plot", out_png, "--no-memory",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "benchmark (baseline: base)" in result.stdout and "interleaved run by run" in result.stdout
    data = json.loads(out_json.read_text())
    assert set(data) == {"settings", "notes", "baseline", "rows"}
    assert data["settings"]["providers"] == ["cpu", "cuda"] and data["settings"]["interleaved"] is True
    row = data["rows"][0]
    assert {
        "model", "label", "provider", "status", "message", "session_providers", "file_size_bytes",
        "session_seconds", "first_run_ms", "latency", "peak_rss_bytes", "rss_growth_bytes", "gpu_memory_bytes",
        "accuracy", "ratios",
    } == set(row)  # fmt: skip
    assert set(row["latency"]) == {
        "runs", "batch", "mean_ms", "p50_ms", "p90_ms", "p99_ms", "min_ms", "max_ms", "std_ms", "throughput",
    }  # fmt: skip
    assert row["accuracy"] == 1.0 and row["peak_rss_bytes"] is None  # memory: see the API test
    with out_csv.open() as handle:
        lines = list(csv.DictReader(handle))
    assert tuple(lines[0]) == bench.CSV_COLUMNS and len(lines) == 4
    assert [line["provider"] for line in lines] == ["cpu", "cpu", "cuda", "cuda"]
    assert out_png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    if CUDA_REASON is not None:
        assert [line["status"] for line in lines[2:]] == ["unavailable", "unavailable"]
        assert all(line["latency_p50_ms"] == "" for line in lines[2:])
        assert "CUDA EP not available" in result.stdout


def test_cli_unknown_ep_is_one_line_exit_2(models):
    assert_clean_error(sftonnx("bench", *models, "--ep", "cpu,rocm"), 2, "unknown execution provider 'rocm'")


def test_cli_missing_input_in_data_is_exit_2(tmp_path, models):
    np.savez(tmp_path / "inputs.npz", y=seeded((3, 4)))
    result = sftonnx("bench", *models, "--data", tmp_path / "inputs.npz", "--runs", "1")
    assert_clean_error(result, 2, "has no array for input 'x'")


def test_cli_model_onnxruntime_cannot_load_is_exit_2(tmp_path, models):
    broken = save(tmp_path / "broken.onnx", BROKEN, w=seeded((3, 3)))
    result = sftonnx("bench", broken, "--runs", "1", "--no-memory")
    assert_clean_error(result, 2, "broken: onnxruntime cannot load the model")


def test_cli_failing_user_metric_is_exit_2(tmp_path, models):
    (tmp_path / "bad_metric.py").write_text("def score(session):\n    raise RuntimeError('no labels here')\n")
    result = sftonnx("bench", *models, "--runs", "1", "--no-memory", "--eval", "bad_metric:score", cwd=tmp_path)
    assert_clean_error(result, 2, "--eval bad_metric:score raised RuntimeError: no labels here")
