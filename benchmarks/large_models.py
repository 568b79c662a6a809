"""Models over 2 GiB: sftonnx's presets (and onnxslim) on issue 15's MLP and a generated decoder transformer.

Models (generated under ``--work-dir``, weights in one external-data file each, removed with ``--clean``):

* ``mlp``: three MatMul+Relu layers, 12000x16000 / 16000x12000 / 12000x16000 float32 (2.30 GB), input
  ``x [2, 12000]`` (``models.large.write_mlp``);
* ``decoder``: a decoder-style transformer (vocabulary 32000, width 2048, 16 heads, 10 blocks, tied lm head;
  2.27 GB), ``tokens [1, 16]`` (``models.decoder``, exported from torch).

For each of ``lossless``, ``fast-cpu``, ``int8-dynamic`` and ``fp16``, the CLI is run from the model's folder with
relative paths under ``/usr/bin/time -v``: exit code, wall time, peak resident memory (of the CLI process),
output size (graph + data), the verification's max abs error and min cosine (lossy presets verified on
seeded inputs given with ``--data``), and the latency ratio optimized/original (median of onnxruntime runs on
the same inputs, each model in its own process, one after the other). ``onnxslim`` is run the same way where it
runs. One model at a time (each needs up to about 2.5x its size in memory). Writes ``benchmarks/LARGE.md``.

    python benchmarks/large_models.py --work-dir /tmp/large-models/bench [--models mlp,decoder] [--clean]
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import re
import shutil
import subprocess
import sys
import time

import numpy as np

ROOT = pathlib.Path(__file__).resolve().parent.parent
OUT = pathlib.Path(__file__).resolve().parent / "LARGE.md"
PRESETS = ("lossless", "fast-cpu", "int8-dynamic", "fp16")
LATENCY_RUNS = 10

_LATENCY = r"""
import json, sys, time
import numpy as np, onnxruntime as ort
options = ort.SessionOptions()
options.log_severity_level = 3
session = ort.InferenceSession(sys.argv[1], options, providers=["CPUExecutionProvider"])
feeds = dict(np.load(sys.argv[2]))
session.run(None, feeds)
times = []
for _ in range(int(sys.argv[3])):
    start = time.perf_counter(); out = session.run(None, feeds); times.append(time.perf_counter() - start)
np.save(sys.argv[4], out[0])
print(json.dumps({"median": float(np.median(times))}))
"""


def _generate(name: str, folder: pathlib.Path) -> tuple[pathlib.Path, pathlib.Path]:
    folder.mkdir(parents=True, exist_ok=True)
    model = folder / f"{name}.onnx"
    data = folder / f"{name}.npz"
    if name == "mlp":
        if not model.exists():
            from models.large import write_mlp

            write_mlp(model)
        np.savez(data, x=np.random.default_rng(3).standard_normal((2, 12000)).astype(np.float32))
    else:
        if not model.exists():
            subprocess.run([sys.executable, "-m", "models.decoder", str(model)], cwd=ROOT, check=True)
        np.savez(data, tokens=np.random.default_rng(3).integers(0, 32000, (1, 16)).astype(np.int64))
    return model, data


def _timed(command: list[str], cwd: pathlib.Path) -> dict:
    start = time.perf_counter()
    done = subprocess.run(["/usr/bin/time", "-v", *command], cwd=cwd, capture_output=True, text=True)
    wall = time.perf_counter() - start
    peak = re.search(r"Maximum resident set size \(kbytes\): (\d+)", done.stderr)
    text = done.stderr.split("\tCommand being timed")[0]
    lines = [line.strip() for line in text.splitlines() if line.strip() and not line.startswith("Command exited")]
    error = next((line for line in lines if line.startswith("error:")), "")
    if done.returncode != 0 and not error and lines:
        error = lines[-1]  # a tool without sftonnx's one-line errors: its last line (the exception)
    return {
        "code": done.returncode,
        "seconds": wall,
        "peak_gb": int(peak.group(1)) * 1024 / 1e9 if peak else None,
        "message": error[:160],
    }


def _size(path: pathlib.Path) -> int | None:
    if not path.exists():
        return None
    data = path.with_name(path.name + ".data")
    return path.stat().st_size + (data.stat().st_size if data.exists() else 0)


def _latency(model: pathlib.Path, data: pathlib.Path, out: pathlib.Path) -> float | None:
    done = subprocess.run(
        [sys.executable, "-c", _LATENCY, str(model), str(data), str(LATENCY_RUNS), str(out)],
        capture_output=True, text=True,
    )
    if done.returncode != 0:
        return None
    return json.loads(done.stdout.strip().splitlines()[-1])["median"]


def _errors(reference: np.ndarray, candidate: np.ndarray) -> tuple[float, float]:
    ref, cand = reference.astype(np.float64).ravel(), candidate.astype(np.float64).ravel()
    cosine = float(ref @ cand / (np.linalg.norm(ref) * np.linalg.norm(cand) + 1e-30))
    return float(np.max(np.abs(ref - cand))), cosine


def run_model(name: str, work: pathlib.Path, tools: set[str] | None = None) -> list[dict]:
    folder = work / name
    model, data = _generate(name, folder)
    size = _size(model)
    base_latency = _latency(model, data, folder / "reference.npy")
    reference = np.load(folder / "reference.npy")
    rows = []
    candidates = [(preset, f"{name}.{preset}.onnx") for preset in PRESETS] + [("onnxslim", f"{name}.slim.onnx")]
    for label, output in candidates:
        if tools is not None and label not in tools:
            continue
        if label == "onnxslim":
            command = [sys.executable, "-m", "onnxslim", model.name, output]
        else:
            command = ["sftonnx", "optimize", model.name, output, "--preset", label, "--data", data.name,
                       "--report", f"{output}.json"]
        row = {"model": name, "size_gb": size / 1e9, "tool": label} | _timed(command, folder)
        written = folder / output
        row["output_gb"] = (_size(written) or 0) / 1e9 or None
        row["latency_ratio"] = row["max_abs"] = row["cosine"] = None
        if row["code"] == 0 and written.exists():
            latency = _latency(written, data, folder / "candidate.npy")
            if latency is not None and base_latency:
                row["latency_ratio"] = latency / base_latency
                row["max_abs"], row["cosine"] = _errors(reference, np.load(folder / "candidate.npy"))
        rows.append(row)
        print(json.dumps(row), flush=True)
        for leftover in (written, written.with_name(written.name + ".data"), folder / f"{output}.json"):
            leftover.unlink(missing_ok=True)
    return rows


def _cell(value, fmt: str) -> str:
    return "-" if value is None else format(value, fmt)


def write_table(rows: list[dict], path: pathlib.Path) -> None:
    lines = [
        "# Models over 2 GiB",
        "",
        "Written by `python benchmarks/large_models.py` (see its docstring for the method). Each row: the CLI run "
        "from the model's folder with relative paths (`sftonnx optimize M.onnx OUT.onnx --preset P --data M.npz`, "
        "or `python -m onnxslim M.onnx OUT.onnx`) under `/usr/bin/time -v`. Peak RSS is the CLI process's maximum "
        "resident set size (memory-mapped weight pages included); the issue's bound is 1.5x the model's size + 1 GB. "
        "Latency ratio: median of 10 onnxruntime runs (CPU EP, default threads) of the output / of the original, on "
        "the same inputs; error: max abs and cosine of the output's result vs the original's on those inputs.",
        "",
        "| model | size (GB) | tool / preset | exit | wall (s) | peak RSS (GB) | bound (GB) | output (GB) "
        "| latency ratio | max abs error | cosine | note |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        bound = 1.5 * row["size_gb"] + 1
        lines.append(
            f"| {row['model']} | {row['size_gb']:.2f} | {row['tool']} | {row['code']} | {row['seconds']:.0f} "
            f"| {_cell(row['peak_gb'], '.2f')} | {bound:.2f} | {_cell(row['output_gb'], '.2f')} "
            f"| {_cell(row['latency_ratio'], '.2f')} | {_cell(row['max_abs'], '.3g')} "
            f"| {_cell(row['cosine'], '.6f')} | {row['message'].replace('|', '/')} |"
        )
    path.write_text("\n".join(lines) + "\n")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work-dir", type=pathlib.Path, default=pathlib.Path("/tmp/sftonnx-large"))
    parser.add_argument("--models", default="mlp,decoder")
    parser.add_argument("--out", type=pathlib.Path, default=OUT)
    parser.add_argument("--tools", help="only these presets/onnxslim (comma-separated); other rows are kept")
    parser.add_argument("--clean", action="store_true", help="remove the generated models afterwards")
    args = parser.parse_args(argv)
    sys.path.insert(0, str(ROOT))
    os.environ.setdefault("PYTHONPATH", str(ROOT))
    saved = args.work_dir / "rows.json"  # every measured row, so that --tools re-runs replace only theirs
    rows: list[dict] = json.loads(saved.read_text()) if saved.exists() and args.tools else []
    tools = set(args.tools.split(",")) if args.tools else None
    for name in args.models.split(","):
        for row in run_model(name, args.work_dir, tools):
            rows = [r for r in rows if (r["model"], r["tool"]) != (row["model"], row["tool"])] + [row]
        order = {tool: i for i, tool in enumerate((*PRESETS, "onnxslim"))}
        rows.sort(key=lambda r: (r["model"] != "mlp", order.get(r["tool"], 99)))
        args.work_dir.mkdir(parents=True, exist_ok=True)
        saved.write_text(json.dumps(rows, indent=1))
        write_table(rows, args.out)
        if args.clean:
            shutil.rmtree(args.work_dir / name, ignore_errors=True)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
