"""benchmarks/peers.py: a quick run on digits_cnn writes a table with every peer and a failed row survives."""

from __future__ import annotations

import importlib.util
import json
import pathlib
import sys

import pytest

PEERS_PATH = pathlib.Path(__file__).resolve().parents[1] / "benchmarks" / "peers.py"
EXPECTED_ROWS = (
    "original",
    "onnxsim",
    "onnxslim",
    "ORT quantize_static",
    "ORT quantize_dynamic",
    "sftonnx lossless",
)


@pytest.fixture()
def peers():
    spec = importlib.util.spec_from_file_location("peers_under_test", PEERS_PATH)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    try:
        spec.loader.exec_module(module)
        yield module
    finally:
        sys.modules.pop(spec.name, None)


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


def _run(peers, tmp_path: pathlib.Path) -> tuple[dict[str, dict[str, str]], dict]:
    out, raw = tmp_path / "RESULTS.md", tmp_path / "results.json"
    code = peers.main(
        ["--quick", "--models", "digits_cnn", "--out", str(out), "--json", str(raw), "--work-dir", str(tmp_path / "w")]
    )
    assert code == 0
    return _rows(out.read_text()), json.loads(raw.read_text())


@pytest.mark.slow  # 7-40 s on the shared 2-core machine
def test_quick_run_on_digits_has_every_candidate(peers, tmp_path):
    rows, raw = _run(peers, tmp_path)
    for label in EXPECTED_ROWS:
        assert label in rows, f"no row for {label}: {sorted(rows)}"
    original = rows["original"]
    assert original["status"] == "ok"
    assert original["latency ratio"] == "1.00" and original["size ratio"] == "1.00"
    assert float(original["accuracy"]) > 0.9
    for label, row in rows.items():
        if row["status"] == "ok":
            assert float(row["latency ratio"]) > 0, label
            assert float(row["size ratio"]) > 0, label
        else:
            assert row["status"] in ("failed", "skipped") and row["notes"], label
    assert rows["sftonnx lossless"]["status"] == "ok"
    assert float(rows["sftonnx lossless"]["cosine"]) > 0.9999
    # Every preset registered at run time gets a row.
    from sftonnx.passes import PRESETS

    assert {f"sftonnx {name}" for name in PRESETS} <= set(rows)
    assert raw["complete"] and raw["models"]["digits_cnn"]["benchmark"]["baseline"] == "original"


@pytest.mark.slow
def test_failing_candidate_is_a_failed_row(peers, tmp_path, monkeypatch):
    def boom(source, output, data):
        raise RuntimeError("onnxslim exploded\nsecond line")

    monkeypatch.setattr(peers, "run_onnxslim", boom)
    rows, raw = _run(peers, tmp_path)
    row = rows["onnxslim"]
    assert row["status"] == "failed"
    assert row["notes"] == "RuntimeError: onnxslim exploded"
    assert row["latency ratio"] == "—"
    # The others are still measured.
    assert rows["original"]["latency ratio"] == "1.00"
    assert float(rows["onnxsim"]["latency ratio"]) > 0
    failed = [c for c in raw["models"]["digits_cnn"]["candidates"] if c["label"] == "onnxslim"]
    assert failed[0]["status"] == "failed"
