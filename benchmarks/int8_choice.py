"""What ``--preset int8`` (the ``quantize-int8`` chooser) picks per model, with time and peak memory.

Usage (from the repo root)::

    python benchmarks/int8_choice.py --models malviz_resnet18 ddddocr_common --timeout 300
    python benchmarks/int8_choice.py --zoo            # the digits CNN and TinyBert (models/)

Each model runs in its own child process (``python benchmarks/int8_choice.py --one ID``), so its peak RSS
(the child's ``ru_maxrss``: the whole optimize run, loading and verification included)
and wall time are its own. Corpus models: calibration = 8 recipe samples (seed 1), verification = 4 (seed 0),
the task metric on 8 other held-out recipe samples (seed 2, ``tests.corpus.harness.task_metrics``). Zoo: digits
calibration/test files; TinyBert: seeded token ids. Prints one markdown row per model.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import resource
import subprocess
import sys
import tempfile
import time

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def _row_of(result) -> dict:
    for row in result.report.rows:
        if row.name == "quantize-int8":
            return {"status": row.status, "changes": row.changes, "skipped": row.skipped, "details": row.details,
                    "seconds": row.seconds}
    return {}


def one_corpus(model_id: str, workdir: pathlib.Path) -> dict:
    from sftonnx import api
    from sftonnx.errors import SftonnxError
    from tests.corpus import harness
    from tests.corpus.fetch import model_path
    from tests.corpus.manifest import BY_ID
    from tests.corpus.recipes import samples

    entry = BY_ID[model_id]
    path = model_path(entry)
    data = harness.data_source(entry, samples(entry, n=4, seed=0), workdir, "verify", model=path)
    calibration = harness.data_source(entry, samples(entry, n=8, seed=1), workdir, "calibration", model=path)
    out = workdir / "out.onnx"
    start = time.perf_counter()
    try:
        result = api.optimize(path, out, preset="int8", data=data, calibration_data=calibration, overwrite=True)
    except SftonnxError as error:
        return {"model": model_id, "exit": error.exit_code, "error": str(error).splitlines()[0][:200],
                "seconds": time.perf_counter() - start}
    seconds = time.perf_counter() - start
    row = _row_of(result)
    held = samples(entry, n=8, seed=2)
    kinds = harness.metric_kinds(entry, harness.run_models(path, held[:1])[0])
    metrics = harness.task_metrics(harness.run_models(path, held), harness.run_models(out, held), kinds)
    named = [k for k in kinds if k != "-"]
    worst = min(zip(metrics, named, strict=True)) if metrics else None
    return {"model": model_id, "exit": 0, "seconds": seconds, "row": row, "held_out": worst}


def one_zoo(name: str, workdir: pathlib.Path) -> dict:
    import numpy as np

    import models
    from sftonnx import api

    if name == "digits":
        path = ROOT / "models/onnx/digits_cnn.onnx"
        calibration, data = ROOT / "models/onnx/digits_calib.npz", ROOT / "models/onnx/digits_test.npz"
    else:
        path = pathlib.Path(models.ensure("tiny_bert"))
        rng = np.random.default_rng(1)
        calibration, data = workdir / "calib.npz", workdir / "test.npz"
        np.savez(calibration, input_ids=rng.integers(0, 1000, (32, 32)).astype(np.int64))
        np.savez(data, input_ids=rng.integers(0, 1000, (16, 32)).astype(np.int64))
    out = workdir / "out.onnx"
    start = time.perf_counter()
    result = api.optimize(path, out, preset="int8", data=data, calibration_data=calibration, overwrite=True)
    seconds = time.perf_counter() - start
    verification = result.report.verification or {}
    return {"model": name, "exit": 0, "seconds": seconds, "row": _row_of(result),
            "held_out": (verification.get("worst", {}) or {}).get("cosine"), "verification": verification}


def child(model_id: str) -> None:
    with tempfile.TemporaryDirectory(prefix="int8c-") as tmp:
        if model_id in ("digits", "tiny_bert"):
            record = one_zoo(model_id, pathlib.Path(tmp))
        else:
            record = one_corpus(model_id, pathlib.Path(tmp))
    record["rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    print("RESULT " + json.dumps(record, default=str))


def markdown(record: dict, rss_mb: float) -> str:
    model = record["model"]
    if record.get("exit") != 0:
        return (f"| {model} | exit {record.get('exit')}: {record.get('error', '')} | | | "
                f"{record.get('seconds', 0):.0f} | {rss_mb:.0f} | |")
    details = record["row"].get("details", {})
    chosen = details.get("chosen") or "float kept"
    paths = details.get("paths") or {}
    path_text = f"{paths.get('static', 0)}s/{paths.get('dynamic', 0)}d/{paths.get('float', 0)}f" if paths else ""
    ratios = {c["name"]: c.get("latency_ratio") for c in details.get("candidates", [])}
    cands = "; ".join(
        f"{c['name']} {c.get('latency_ratio') or '-'}x used {c.get('budget_used')} {c.get('outcome')}"
        for c in details.get("candidates", []))
    ratio = ratios.get(details.get("chosen")) if details.get("chosen") else None
    held = record.get("held_out")
    held_text = f"{held[1]} {held[0]:.4f}" if isinstance(held, list) else (f"{held}" if held is not None else "")
    reason = details.get("reason", "")
    return (f"| {model} | {chosen} {path_text} | {ratio if ratio is not None else '-'} | {held_text} | "
            f"{record['seconds']:.0f} | {rss_mb:.0f} | {cands} {('— ' + reason) if reason else ''} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="*", default=[])
    parser.add_argument("--zoo", action="store_true")
    parser.add_argument("--timeout", type=float, default=300)
    parser.add_argument("--one")
    args = parser.parse_args()
    if args.one:
        child(args.one)
        return
    names = [*args.models, *(["digits", "tiny_bert"] if args.zoo else [])]
    print("| model | chosen (static/dynamic/float MatMul-Gemm-Conv) | latency vs fp32 | held-out metric | "
          "seconds | peak RSS MB | candidates |")
    print("|---|---|---|---|---|---|---|")
    for name in names:
        try:
            done = subprocess.run([sys.executable, __file__, "--one", name], capture_output=True, text=True,
                                  timeout=args.timeout)
        except subprocess.TimeoutExpired:
            print(f"| {name} | timeout after {args.timeout:.0f} s | | | | | |", flush=True)
            continue
        lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
        if not lines:
            print(f"| {name} | crashed: {done.stderr.strip().splitlines()[-1:] } | | | | | |", flush=True)
            continue
        record = json.loads(lines[-1][7:])
        print(markdown(record, record.get("rss_mb", float("nan"))), flush=True)


if __name__ == "__main__":
    main()
