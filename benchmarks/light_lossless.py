"""The default preset on every onnx ``light_*`` model: node counts and latency, original vs optimized.

Each model is optimized with ``sftonnx.api.optimize`` (default preset, verified against the original), then
benchmarked side by side with the original in one ``sftonnx.api.benchmark`` call (interleaved runs, batch 1,
CPU EP). Writes a Markdown table to ``benchmarks/LIGHT.md`` (or ``--out``).

    python benchmarks/light_lossless.py [--runs 30] [--out benchmarks/LIGHT.md]
"""

from __future__ import annotations

import argparse
import datetime
import pathlib
import platform
import time

import onnx
import onnxruntime

from sftonnx import api

OUT_DIR = pathlib.Path(__file__).parent / "out" / "light"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=30)
    parser.add_argument("--out", type=pathlib.Path, default=pathlib.Path(__file__).parent / "LIGHT.md")
    args = parser.parse_args(argv)
    light = sorted((pathlib.Path(onnx.__file__).parent / "backend" / "test" / "data" / "light").glob("light_*.onnx"))
    OUT_DIR.mkdir(parents=True, exist_ok=True)
    rows = []
    for path in light:
        target = OUT_DIR / path.name
        start = time.perf_counter()
        result = api.optimize(path, target, overwrite=True)
        seconds = time.perf_counter() - start
        bench = api.benchmark([path, target], runs=args.runs, warmup=3, memory=False)
        base, opt = bench.rows[0], bench.rows[1]
        rows.append(
            (
                path.stem,
                result.report.original.nodes,
                result.report.final.nodes,
                base.latency.p50_ms,
                opt.latency.p50_ms,
                opt.ratios["latency_p50"],
                result.verification.worst()["max_abs"],
                seconds,
            )
        )
        print(rows[-1], flush=True)
    lines = [
        "# Default preset (`lossless`) on onnx's light_* models",
        "",
        f"{datetime.date.today()}, `python benchmarks/light_lossless.py --runs {args.runs}`; "
        f"{platform.processor() or platform.machine()}, onnxruntime {onnxruntime.__version__}, CPU EP, batch 1, "
        "original and optimized interleaved run by run. Latency ratio = optimized p50 / original p50 "
        "(below 1 is faster). The light models generate their weights at run time (ConstantOfShape), so the "
        "optimized files, which store them, are larger.",
        "",
        "| model | nodes before | nodes after | node ratio | p50 before (ms) | p50 after (ms) | latency ratio | "
        "max abs error | optimize (s) |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for name, before, after, base_ms, opt_ms, ratio, error, seconds in rows:
        lines.append(
            f"| {name} | {before} | {after} | {after / before:.2f} | {base_ms:.2f} | {opt_ms:.2f} | {ratio:.2f} | "
            f"{error:.2g} | {seconds:.1f} |"
        )
    args.out.write_text("\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
