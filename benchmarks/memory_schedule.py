"""schedule-memory: planned peak activation memory and measured onnxruntime RSS, before vs after.

Models: onnx's light_inception_v1 and light_densenet121 (after the lossless preset without
schedule-memory), and a branchy net of ours built here (eight 1x1 expand -> 1x1 reduce branches over a
64x56x56 input, stored breadth-first, as some exporters emit inception-like blocks). For each: the static
plan's peak (sftonnx.analysis.plan_memory) of the stored order and of the scheduled order, and onnxruntime's
peak RSS growth for both models (sftonnx.api.benchmark, a fresh process per model), at ORT's default
optimization level and with its memory-pattern planner. Writes benchmarks/MEMORY.md.

    python benchmarks/memory_schedule.py
"""

from __future__ import annotations

import pathlib

import numpy as np
import onnx
import onnx_ir as ir

from sftonnx import api, io
from sftonnx.analysis import plan_memory
from sftonnx.passes.tensor_reuse.scheduling import ScheduleMemoryPass

OUT = pathlib.Path(__file__).parent / "out" / "memory"
LIGHT = pathlib.Path(onnx.__file__).parent / "backend" / "test" / "data" / "light"
NO_SCHEDULE = (
    "simplify,fold-pad,fold-bn{clone_shared_weights=true},fold-affine{clone_shared_weights=true},fold-input-norm,"
    "matmul-add-to-gemm,collapse-layout,eliminate-identity,cse,dedup,eliminate-dead"
)


def branchy(branches: int = 8) -> ir.Model:
    rng = np.random.default_rng(0)
    lines = [f"e{i} = Conv(x, we{i})" for i in range(branches)]
    lines += [f"r{i} = Conv(e{i}, wr{i})" for i in range(branches)]
    lines.append(f"y = Concat <axis = 1> ({', '.join(f'r{i}' for i in range(branches))})")
    text = (
        '<ir_version: 8, opset_import: ["" : 18]>\n'
        f"g (float[1, 64, 56, 56] x) => (float[1, {16 * branches}, 56, 56] y) {{\n    "
        + "\n    ".join(lines)
        + "\n}"
    )
    model = ir.from_onnx_text(text)
    graph = model.graph
    values = {v.name: (node, i) for node in graph for i, v in enumerate(node.inputs) if v is not None}
    for i in range(branches):
        for name, shape in ((f"we{i}", (256, 64, 1, 1)), (f"wr{i}", (16, 256, 1, 1))):
            array = (rng.standard_normal(shape) * 0.05).astype(np.float32)
            value = ir.Value(name=name, shape=ir.Shape(shape), type=ir.TensorType(ir.DataType.FLOAT),
                             const_value=ir.tensor(array, name=name))
            graph.register_initializer(value)
            node, index = values[name]
            node.replace_input_with(index, value)
    return model


def main() -> int:
    OUT.mkdir(parents=True, exist_ok=True)
    rows = []
    sources = {
        "light_inception_v1": LIGHT / "light_inception_v1.onnx",
        "light_densenet121": LIGHT / "light_densenet121.onnx",
        "branchy (ours)": branchy(),
    }
    for label, source in sources.items():
        base = OUT / f"{label.split()[0]}.base.onnx"
        api.optimize(source, base, passes=NO_SCHEDULE, overwrite=True)
        model = io.load(base)
        before = plan_memory(model).peak_activation_bytes
        report = ScheduleMemoryPass()(model)
        after = plan_memory(model).peak_activation_bytes
        scheduled = OUT / f"{label.split()[0]}.scheduled.onnx"
        api.optimize(base, scheduled, passes="schedule-memory", overwrite=True)
        bench = api.benchmark([base, scheduled], runs=20, warmup=3, memory=True)
        rss = [row.rss_growth_bytes for row in bench.rows]
        p50 = [row.latency.p50_ms for row in bench.rows]
        rows.append((label, before, after, report.changes.get("nodes_reordered", 0), rss[0], rss[1], p50[0], p50[1]))
        print(rows[-1], flush=True)
    mb = 2**20
    lines = [
        "# Memory-aware scheduling: planned peak vs what onnxruntime uses",
        "",
        "`python benchmarks/memory_schedule.py`; CPU EP, batch 1, onnxruntime defaults (memory patterns on). "
        "Planned peak = largest sum of live activations under the static liveness model (no in-place reuse). "
        "RSS growth = peak resident memory of a fresh process running the model minus its memory before the "
        "session (weights included), one process per model.",
        "",
        "| model | planned peak before (MiB) | planned peak after (MiB) | nodes reordered | ORT RSS growth before "
        "(MiB) | ORT RSS growth after (MiB) | p50 before (ms) | p50 after (ms) |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for label, before, after, moved, rss0, rss1, t0, t1 in rows:
        lines.append(
            f"| {label} | {before / mb:.2f} | {after / mb:.2f} | {moved} | "
            f"{(rss0 or 0) / mb:.1f} | {(rss1 or 0) / mb:.1f} | {t0:.2f} | {t1:.2f} |"
        )
    (pathlib.Path(__file__).parent / "MEMORY.md").write_text("\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
