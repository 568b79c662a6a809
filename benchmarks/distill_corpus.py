"""What ``distill`` wins back after compression: digits CNN and corpus models, before/after, time and memory.

Usage (from the repo root)::

    python benchmarks/distill_corpus.py                     # digits rows + the default corpus models
    python benchmarks/distill_corpus.py --models madmom_key_cnn --budget 60 --out benchmarks/DISTILL.md
    python benchmarks/distill_corpus.py --no-digits --models ddddocr_common --n-cal 128 --budget 240
    python benchmarks/distill_corpus.py --no-digits --models madmom_key_cnn --options '{"augment": "mixup"}'

Rows:
- ``digits_pruned``: ``prune-channels{ratio=0.5, reconstruct=false}`` (no least-squares refit), then ``distill``
  with its defaults (automatic lr) against the fp32 model; metric: top-1 on ``digits_test.npz`` (540 labelled
  samples). Calibration: the first 150 rows of ``digits_calib.npz``, verification the last 50 (as the pipeline
  splits it).
- ``digits_pruned_train``: the same, but calibrated and distilled on the whole training split without its labels
  (1257 images from ``models.digits.load_split``; needs scikit-learn): the unlabeled data a user distills with.
- ``digits_refit``: ``prune-channels{ratio=0.5}`` with its least-squares refit on the 150 calibration rows (plain
  refit, for comparison), then ``distill`` on the same rows.
- ``digits_max``: the ``max`` preset without its ``distill`` step, and the ``max`` preset itself.
- corpus models: ``compact`` without its ``distill`` step (calibration = ``N_CAL`` recipe samples, seed 1;
  verification = 4 samples, seed 0), then ``distill{time_budget=B}`` on that model with the original as teacher
  (what ``compact`` does in one run); metric: the corpus task metric (``tests.corpus.harness.task_metrics``:
  argmax agreement or cosine with the original) on ``N_HELD`` other recipe samples (seed 2), never trained on.

Each step runs in its own child process (``--step``), so the distill step's peak RSS (``ru_maxrss`` of that child:
teacher session, torch graph and training) and its seconds are its own. Latency: onnxruntime CPU, one thread,
fp32 / before / after interleaved over ``--runs`` rounds on the first held-out sample, median ratio to fp32.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import subprocess
import sys
import time

import numpy as np

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

MODELS = ROOT / "models" / "onnx"
DIGITS = MODELS / "digits_cnn.onnx"
DIGITS_CALIB = MODELS / "digits_calib.npz"
DIGITS_TEST = MODELS / "digits_test.npz"
CORPUS = ["madmom_key_cnn", "madmom_chords_cnnfeat", "ddddocr_common", "madmom_beats_tcn"]
N_CAL, N_VERIFY, N_HELD = 32, 4, 16


def _loose():
    from sftonnx.verify import Budget

    return Budget(min_cosine=1e-3, min_agreement=1e-3)


def _without_distill(spec: str) -> str:
    return ",".join(part for part in _split(spec) if not part.startswith("distill"))


def _split(spec: str) -> list[str]:
    parts, depth, current = [], 0, ""
    for char in spec:
        depth += (char == "{") - (char == "}")
        if char == "," and depth == 0:
            parts.append(current)
            current = ""
        else:
            current += char
    return parts + [current] if current else parts


def _distill_row(result) -> dict:
    for row in result.report.rows:
        if row.name == "distill":
            return {"status": row.status, "message": row.message, "changes": row.changes, "skipped": row.skipped,
                    "details": row.details, "seconds": row.seconds}
    return {}


# ----------------------------------------------------------------------------------------------- steps (children)
def _digits_data(work: pathlib.Path, *, train_split: bool = False) -> tuple[pathlib.Path, pathlib.Path]:
    data = np.load(DIGITS_CALIB)["input"]
    calibration, verification = work / "digits_cal.npz", work / "digits_verify.npz"
    if train_split:
        from models.digits import load_split

        calibration = work / "digits_train.npz"
        np.savez(calibration, input=load_split()[0])
    else:
        np.savez(calibration, input=data[:150])
    np.savez(verification, input=data[150:])
    return calibration, verification


DIGITS_SPECS = {
    "digits_pruned": "prune-channels{ratio=0.5, reconstruct=false}",
    "digits_pruned_train": "prune-channels{ratio=0.5, reconstruct=false}",
    "digits_refit": "prune-channels{ratio=0.5}",
}


def _corpus_data(model_id: str, work: pathlib.Path, n_cal: int) -> tuple[pathlib.Path, pathlib.Path, pathlib.Path]:
    from tests.corpus import harness
    from tests.corpus.fetch import model_path
    from tests.corpus.manifest import BY_ID
    from tests.corpus.recipes import samples

    entry = BY_ID[model_id]
    path = model_path(entry)
    verification = harness.data_source(entry, samples(entry, n=N_VERIFY, seed=0), work, f"{model_id}_verify",
                                       model=path)
    calibration = harness.data_source(entry, samples(entry, n=n_cal, seed=1), work, f"{model_id}_cal", model=path)
    return path, calibration, verification


def step(kind: str, name: str, work: pathlib.Path, budget: float, n_cal: int, options: dict) -> dict:
    """One child's work: ``before`` writes the compressed model, ``after`` distills it (or runs the full preset)."""
    from sftonnx import api
    from sftonnx.passes import PRESETS
    from sftonnx.passes.distillation.distill import DistillPass

    before, after = work / f"{name}.before.onnx", work / f"{name}.after.onnx"
    start = time.perf_counter()
    if name in DIGITS_SPECS:
        calibration, verification = _digits_data(work, train_split=name == "digits_pruned_train")
        teacher = DIGITS
        spec = DIGITS_SPECS[name]
    elif name == "digits_max":
        calibration, verification = _digits_data(work)
        teacher = DIGITS
        spec = PRESETS["max"]
    else:
        teacher, calibration, verification = _corpus_data(name, work, n_cal)
        spec = _without_distill(PRESETS["compact"])
    # the final check must not stop a run whose metric this table reports; max keeps the default budget, which its
    # int8 step also uses to choose a scheme
    budget_ = None if name == "digits_max" else _loose()
    common = dict(data=verification, calibration_data=calibration, budget=budget_, overwrite=True)
    if kind == "before":
        api.optimize(teacher, before, passes=_without_distill(spec), **common)
        return {"seconds": time.perf_counter() - start}
    if name == "digits_max":  # distill sits between compact and quantize-int8: run the whole preset
        result = api.optimize(teacher, after, preset="max", **common)
    else:
        distill = DistillPass(teacher=str(teacher), calibration_data=calibration, time_budget=budget, **options)
        result = api.optimize(before, after, passes=[distill], **common)
    return {"seconds": time.perf_counter() - start, "distill": _distill_row(result)}


def _child(kind: str, name: str, work: pathlib.Path, budget: float, n_cal: int, options: dict) -> dict:
    """Run ``step`` in a child process; its result plus the child's peak RSS in MB."""
    out = work / f"{name}.{kind}.json"
    command = [sys.executable, __file__, "--step", kind, name, "--work", str(work), "--budget", str(budget),
               "--json", str(out), "--n-cal", str(n_cal), "--options", json.dumps(options)]
    process = subprocess.Popen(command, cwd=ROOT)
    _, status, usage = os.wait4(process.pid, 0)
    if status != 0:
        raise RuntimeError(f"{name} {kind}: child exited with status {status}")
    result = json.loads(out.read_text())
    result["peak_mb"] = usage.ru_maxrss / 1024
    return result


# ----------------------------------------------------------------------------------------------- metrics (parent)
def _session(path: pathlib.Path):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.log_severity_level = 3
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def _latency(paths: list[pathlib.Path], feed: dict, runs: int) -> list[float]:
    """Median seconds per model over ``runs`` interleaved rounds (3 warm-up runs each)."""
    sessions = [_session(p) for p in paths]
    for session in sessions:
        for _ in range(3):
            session.run(None, feed)
    times: list[list[float]] = [[] for _ in paths]
    for _ in range(runs):
        for k, session in enumerate(sessions):
            clock = time.perf_counter()
            session.run(None, feed)
            times[k].append(time.perf_counter() - clock)
    return [float(np.median(t)) for t in times]


def _digits_top1(path: pathlib.Path) -> float:
    data = np.load(DIGITS_TEST)
    out = _session(path).run(None, {"input": data["input"]})[0]
    return float((out.argmax(1) == data["labels"]).mean())


def measure(name: str, work: pathlib.Path, runs: int) -> dict:
    before, after = work / f"{name}.before.onnx", work / f"{name}.after.onnx"
    if name.startswith("digits"):
        teacher = DIGITS
        metric = "top-1 (digits_test)"
        values = [_digits_top1(p) for p in (teacher, before, after)]
        feed = {"input": np.load(DIGITS_TEST)["input"][:1]}
    else:
        from tests.corpus import harness
        from tests.corpus.fetch import model_path
        from tests.corpus.manifest import BY_ID
        from tests.corpus.recipes import samples

        entry = BY_ID[name]
        teacher = model_path(entry)
        held = samples(entry, n=N_HELD, seed=2)
        reference = harness.run_models(teacher, held)
        kinds = harness.metric_kinds(entry, reference[0])
        metric = "/".join(k for k in kinds if k != "-") + " vs original"
        values = [1.0] + [float(np.mean(harness.task_metrics(reference, harness.run_models(p, held), kinds)))
                          for p in (before, after)]
        feed = held[0]
    seconds = _latency([teacher, before, after], feed, runs)
    return {"metric": metric, "fp32": values[0], "before": values[1], "after": values[2],
            "latency_before": seconds[1] / seconds[0], "latency_after": seconds[2] / seconds[0]}


def _row(name: str, rec: dict) -> str:
    d = rec.get("distill", {})
    details = d.get("details", {})
    probe = [row for row in details.get("lr_probe") or [] if not row.get("skipped")]
    chosen = details.get("lr")
    outcome = d.get("status", "?") + (f" ({d.get('message')})" if d.get("message") else "")
    if d.get("skipped"):
        outcome += " " + ",".join(d["skipped"])
    return (
        f"| {name} | {rec['metric']} | {rec['fp32']:.4f} | {rec['before']:.4f} | **{rec['after']:.4f}** | "
        f"{rec['latency_before']:.2f}x / {rec['latency_after']:.2f}x | {details.get('seconds', float('nan')):.1f} | "
        f"{rec['peak_mb']:.0f} | {chosen:g} ({len(probe)} probed) | {details.get('epochs')} / "
        f"{details.get('stopped')} | {details.get('loss_before')} -> {details.get('loss_after')} | {outcome} |"
        if chosen is not None
        else f"| {name} | {rec['metric']} | {rec['fp32']:.4f} | {rec['before']:.4f} | {rec['after']:.4f} | "
        f"{rec['latency_before']:.2f}x / {rec['latency_after']:.2f}x | - | {rec['peak_mb']:.0f} | - | - | - | "
        f"{outcome} |"
    )


HEADER = (
    "| model | metric | fp32 | before distill | after distill | latency vs fp32 (before / after) | distill s | "
    "peak RSS MB (distill step) | lr (auto) | epochs / stopped | held-out loss | distill row |\n"
    "|---|---|---|---|---|---|---|---|---|---|---|---|"
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="*", default=None, help="corpus model ids (default: %(default)s)")
    parser.add_argument("--no-digits", action="store_true")
    parser.add_argument("--budget", type=float, default=60.0, help="distill time_budget, seconds")
    parser.add_argument("--n-cal", type=int, default=N_CAL, help="corpus calibration samples (default: %(default)s)")
    parser.add_argument("--options", type=json.loads, default={},
                        help='extra distill options as JSON, e.g. \'{"feature_weight": 1}\'')
    parser.add_argument("--runs", type=int, default=30, help="latency rounds")
    parser.add_argument("--work", type=pathlib.Path, default=None,
                        help="working folder; a compressed model found there is reused (default: "
                        "~/.cache/sftonnx/distill/cal<N-CAL>)")
    parser.add_argument("--out", type=pathlib.Path, default=None, help="write the markdown table here")
    parser.add_argument("--step", nargs=2, metavar=("KIND", "NAME"), help=argparse.SUPPRESS)
    parser.add_argument("--json", type=pathlib.Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.work is None:
        args.work = pathlib.Path.home() / ".cache" / "sftonnx" / "distill" / f"cal{args.n_cal}"
    args.work.mkdir(parents=True, exist_ok=True)
    if args.step:
        import logging

        logging.basicConfig(level=logging.WARNING, format="%(relativeCreated)7.0f ms %(message)s")
        logging.getLogger("sftonnx.passes.distillation").setLevel(logging.INFO)
        result = step(args.step[0], args.step[1], args.work, args.budget, args.n_cal, args.options)
        args.json.write_text(json.dumps(result))
        return
    names = ([] if args.no_digits else [*DIGITS_SPECS, "digits_max"]) + (
        CORPUS if args.models is None else args.models
    )
    rows = []
    for name in names:
        if not (args.work / f"{name}.before.onnx").exists():
            _child("before", name, args.work, args.budget, args.n_cal, args.options)
        rec = _child("after", name, args.work, args.budget, args.n_cal, args.options)
        rec.update(measure(name, args.work, args.runs))
        row = _row(name, rec)
        print(row, flush=True)
        rows.append(row)
    table = HEADER + "\n" + "\n".join(rows)
    print(table)
    if args.out:
        args.out.write_text(table + "\n")


if __name__ == "__main__":
    main()
