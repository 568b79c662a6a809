"""sftonnx on the public real-model corpus (tests/corpus): one markdown table, one row per model.

Usage (from the repo root)::

    python benchmarks/corpus.py                         # every model, writes benchmarks/CORPUS.md
    python benchmarks/corpus.py --models ddddocr_det lac_encoder --out /tmp/c.md
    python benchmarks/corpus.py --presets lossless,fast-cpu --runs 30

Per model: exporter and opset (manifest), nodes before/after the default preset (main graph), the latency ratio
optimized/original (interleaved A B A B with ``sftonnx.benchmark.interleaved_runs``, one thread, ``--runs``
rounds on the first verification sample, median over median), the verification inputs (recipe samples: one
stacked .npz or a folder of one feed per file), and the outcome of each preset: the exit code of
``sftonnx.api.optimize(preset=P)`` (the CLI's exit codes: 0/1/2/3, run in a forked child; -1 when stopped after
``--timeout`` seconds; 128 + signal when onnxruntime crashed the child) and the error's first line. ``int8`` and
``compact`` get calibration samples from the recipe (seed 1, distinct from the verification samples, seed 0);
their written models, and ``fp16``'s, are scored on held-out samples (seed 2) with the task metric
(``tests.corpus.harness.TASK_METRICS``: argmax agreement over the last axis for classifier/sequence outputs,
cosine for detectors, maps and embeddings; the worst output). Presets other than ``lossless`` that wrote a model
also get their own latency ratio in the cell.
Models are fetched into ``$SFTONNX_CORPUS`` (see tests/corpus/fetch.py).
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import pathlib
import platform
import sys
import tempfile
import time

import numpy as np

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from sftonnx.benchmark import interleaved_runs  # noqa: E402
from tests.corpus import harness  # noqa: E402
from tests.corpus.fetch import CorpusUnavailable, model_path  # noqa: E402
from tests.corpus.manifest import CORPUS, Entry  # noqa: E402
from tests.corpus.recipes import samples  # noqa: E402

PRESETS = ("lossless", "fast-cpu", "int8", "compact")
LOSSY = {"int8", "compact"}
#: Presets whose written model is scored with the task metric on held-out samples (lossy, fp16 included).
SCORED = LOSSY | {"fp16"}


def run_forked(entry: Entry, path: pathlib.Path, preset: str, output: pathlib.Path, timeout: float, **data):
    """``harness.run_preset`` in a forked child (modules already imported), killed after ``timeout`` seconds."""
    import multiprocessing

    context = multiprocessing.get_context("fork")
    queue = context.Queue()

    def child() -> None:
        outcome = harness.run_preset(entry, path, preset, output, **data)
        queue.put(dataclasses.asdict(outcome))

    start = time.perf_counter()
    process = context.Process(target=child)
    process.start()
    result = None
    while result is None and time.perf_counter() - start < timeout:
        try:
            result = queue.get(timeout=1.0)
        except Exception:  # queue.Empty: still running, or dead without an answer (onnxruntime crashed it)
            if not process.is_alive() and queue.empty():
                process.join()
                return harness.Outcome(
                    preset,
                    128 - (process.exitcode or 0) if (process.exitcode or 0) < 0 else process.exitcode or 1,
                    f"crashed: the process died (exit code {process.exitcode}) without a result",
                    harness.node_count(path),
                    seconds=time.perf_counter() - start,
                )
    if result is None:
        process.kill()
        process.join()
        return harness.Outcome(
            preset,
            -1,
            f"timeout: stopped after {timeout:.0f} s",
            harness.node_count(path),
            seconds=time.perf_counter() - start,
        )
    process.join()
    return harness.Outcome(**result)


def _session(path: pathlib.Path):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.log_severity_level = 3
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def latency_ratio(original: pathlib.Path, optimized: pathlib.Path, feed: dict, runs: int) -> float:
    sessions = [_session(original), _session(optimized)]
    for session in sessions:  # warm-up
        session.run(None, feed)
    series = interleaved_runs([lambda s=s: s.run(None, feed) for s in sessions], runs=runs)
    if any(s.error for s in series):
        raise RuntimeError(next(s.error for s in series if s.error))
    return float(np.median(series[1].times) / np.median(series[0].times))


def measure(entry: Entry, presets: list[str], runs: int, work: pathlib.Path, timeout: float) -> dict:
    row: dict = {"id": entry.id, "exporter": entry.exporter, "opset": entry.opset}
    try:
        path = model_path(entry)
    except CorpusUnavailable as error:
        row["error"] = str(error)
        return row
    verify = samples(entry, n=4, seed=0)
    data = harness.data_source(entry, verify, work, "verify", model=path)
    calibration = harness.data_source(entry, samples(entry, n=8, seed=1), work, "calibration", model=path)
    row["inputs"] = f"{len(verify)} recipe samples ({entry.recipe}), " + (
        "stacked .npz" if data.suffix == ".npz" else "folder"
    )
    row["nodes_before"] = harness.node_count(path)
    for preset in presets:
        out = work / f"{preset}.onnx"
        outcome = run_forked(
            entry, path, preset, out, timeout, data=data, calibration=calibration if preset in LOSSY else None
        )
        text = outcome.describe()
        if outcome.exit_code == 0 and preset == "lossless":
            row["nodes_after"] = outcome.nodes_after
            try:
                row["latency"] = latency_ratio(path, out, verify[0], runs)
            except Exception as error:  # noqa: BLE001 - reported in the table
                row["latency_error"] = str(error).splitlines()[0][:120]
        if outcome.exit_code == 0 and preset != "lossless":
            try:
                text += f" (latency {latency_ratio(path, out, verify[0], runs):.2f})"
            except Exception as error:  # noqa: BLE001 - reported in the table
                text += f" (latency error: {str(error).splitlines()[0][:80]})"
        if outcome.exit_code == 0 and preset in SCORED:
            held_out = samples(entry, n=8, seed=2)
            reference = harness.run_models(path, held_out)
            kinds = harness.metric_kinds(entry, reference[0])
            metrics = harness.task_metrics(reference, harness.run_models(out, held_out), kinds)
            used = [k for k in kinds if k != "-"]
            if metrics:
                worst = int(np.argmin(metrics))
                text += f" ({used[worst]} {metrics[worst]:.3f})"
        row[preset] = f"{text} [{outcome.seconds:.0f}s]"
        print(f"  {entry.id} {preset}: {row[preset]}", flush=True)
    return row


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def table(rows: list[dict], presets: list[str]) -> str:
    head = ["model", "exporter", "opset", "nodes before→after", "latency opt/orig", "verification inputs", *presets]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in rows:
        if "error" in row:
            cells = [row["id"], row["exporter"], str(row["opset"]), "", "", row["error"], *[""] * len(presets)]
        else:
            nodes = f"{row['nodes_before']}→{row.get('nodes_after', '–')}"
            latency = f"{row['latency']:.2f}" if "latency" in row else row.get("latency_error", "–")
            cells = [row["id"], row["exporter"], str(row["opset"]), nodes, latency, row["inputs"]]
            cells += [row.get(p, "") for p in presets]
        lines.append("| " + " | ".join(_cell(str(c)) for c in cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="*", help="corpus ids (default: all)")
    parser.add_argument("--presets", default=",".join(PRESETS))
    parser.add_argument("--runs", type=int, default=30, help="interleaved rounds for the latency ratio")
    parser.add_argument("--timeout", type=float, default=600, help="seconds per optimize run (then 'timeout')")
    parser.add_argument("--json", type=pathlib.Path, help="also write the rows here (after every model)")
    parser.add_argument("--merge", type=pathlib.Path, nargs="*", help="only render the table from --json files")
    parser.add_argument("--out", type=pathlib.Path, default=ROOT / "benchmarks" / "CORPUS.md")
    args = parser.parse_args(argv)
    presets = [p for p in args.presets.split(",") if p]
    entries = [e for e in CORPUS if not args.models or e.id in args.models]
    rows: list[dict] = []
    started = time.time()
    if args.merge:
        merged = {row["id"]: row for path in args.merge for row in json.loads(path.read_text())["rows"]}
        missing = {"error": "not measured in this run (stopped at the time limit)"}
        rows = [merged.get(e.id, {"id": e.id, "exporter": e.exporter, "opset": e.opset} | missing) for e in CORPUS]
        seconds = sum(json.loads(path.read_text())["seconds"] for path in args.merge)
    else:
        for entry in entries:
            print(f"{entry.id} ...", flush=True)
            with tempfile.TemporaryDirectory() as tmp:
                rows.append(measure(entry, presets, args.runs, pathlib.Path(tmp), args.timeout))
            if args.json:
                args.json.write_text(json.dumps({"rows": rows, "seconds": time.time() - started}, indent=1))
        seconds = time.time() - started
    import onnxruntime

    import sftonnx

    header = (
        "# sftonnx on the public real-model corpus\n\n"
        f"`python benchmarks/corpus.py` on {datetime.date.today()} ({platform.machine()}, "
        f"onnxruntime {onnxruntime.__version__}, sftonnx {getattr(sftonnx, '__version__', '?')}), "
        f"{seconds:.0f} s of runs. Models and inputs: tests/corpus (manifest.py, recipes.py).\n\n"
        "Preset cells: exit code of `sftonnx.api.optimize(preset=P)` as the CLI gives it "
        "(0 written; 1 internal error; 2 input refused; "
        f"3 verification refused; -1 stopped after {args.timeout:.0f} s) and the "
        "error's first line; lossy presets that wrote a model add the worst task metric on 8 held-out recipe "
        "samples (argmax agreement over the last axis, or cosine); [s] is the optimize time. Latency: median "
        f"optimized / median original over {args.runs} interleaved single-thread runs on one verification sample "
        "(lossless preset).\n\n"
    )
    args.out.write_text(header + table(rows, presets) + "\n")
    print(table(rows, presets))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
