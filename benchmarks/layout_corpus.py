"""Issue 16: Transposes, nodes and latency of the corpus models under another checkout's lossless and this one's.

Usage (from the repo root)::

    python benchmarks/layout_corpus.py --baseline /work/main/.venv/bin/sftonnx --work /tmp/layout [MODEL ...]

Per model: ``--baseline`` (another checkout's CLI, e.g. main's) optimizes with its default preset, this checkout's
``sftonnx.api.optimize(preset="lossless")`` with ours, both on the recipe's verification samples; then the
original and both results are timed interleaved (``sftonnx.timing.interleaved_runs``, A B C / C B A, one thread,
up to 40 rounds or 8 s) on the first sample. Prints one line per model and writes ``rows.json`` into ``--work``;
the baseline result is cached there (delete it to redo).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import pathlib
import statistics
import subprocess
import sys

import onnx_ir as ir
import onnxruntime as ort

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from sftonnx import api  # noqa: E402
from sftonnx.timing import interleaved_runs  # noqa: E402
from tests.corpus import harness  # noqa: E402
from tests.corpus.conftest import N_VERIFY, SEED_VERIFY, recipe_samples  # noqa: E402
from tests.corpus.fetch import model_path  # noqa: E402
from tests.corpus.manifest import CORPUS  # noqa: E402


def counts(path: pathlib.Path) -> tuple[int, int]:
    nodes = list(ir.traversal.RecursiveGraphIterator(ir.load(path).graph))
    return sum(n.op_type == "Transpose" for n in nodes), len(nodes)


def runner(path: pathlib.Path, feed: dict):
    options = ort.SessionOptions()
    options.intra_op_num_threads = options.inter_op_num_threads = 1
    options.log_severity_level = 3
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    names = {i.name for i in session.get_inputs()}
    feed = {k: v for k, v in feed.items() if k in names}
    for _ in range(3):
        session.run(None, feed)
    return lambda: session.run(None, feed)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("models", nargs="*")
    parser.add_argument("--baseline", required=True, help="sftonnx CLI of the checkout to compare with")
    parser.add_argument("--work", type=pathlib.Path, required=True)
    args = parser.parse_args()
    rows = []
    for entry in CORPUS:
        if args.models and entry.id not in args.models:
            continue
        path = model_path(entry)
        work = args.work / entry.id
        work.mkdir(parents=True, exist_ok=True)
        feeds = recipe_samples(entry, N_VERIFY, SEED_VERIFY)
        data = harness.data_source(entry, feeds, work, "verify", model=path)
        base, ours = work / "main.onnx", work / "branch.onnx"
        if not base.exists():
            subprocess.run([args.baseline, "optimize", str(path), str(base), "--data", str(data), "--overwrite"],
                           capture_output=True, check=True)
        api.optimize(path, ours, preset="lossless", data=data, overwrite=True)
        series = interleaved_runs([runner(p, feeds[0]) for p in (path, base, ours)], runs=40, duration=8.0,
                                  alternate=True)
        ms = [statistics.median(s.times) * 1e3 for s in series]
        same = hashlib.sha256(base.read_bytes()).digest() == hashlib.sha256(ours.read_bytes()).digest()
        row = {"id": entry.id, "transposes": [counts(p)[0] for p in (path, base, ours)],
               "nodes": [counts(p)[1] for p in (path, base, ours)], "ms": ms, "same_file": same}
        rows.append(row)
        print(f"{entry.id:24s} T {row['transposes']} nodes {row['nodes']} ms {[round(m, 2) for m in ms]} "
              f"ours/baseline {ms[2] / ms[1]:.3f}{' (same file)' if same else ''}", flush=True)
    (args.work / "rows.json").write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
