"""``sftonnx bench`` (models timed side by side) and ``sftonnx compare`` (outputs of two models)."""

from __future__ import annotations

import pathlib
from typing import Annotated, Any

import typer
from rich.table import Table

from sftonnx.cli.app import app, err, guard, out
from sftonnx.cli.format import fmt_bytes, fmt_ms, fmt_ratio, write_json
from sftonnx.cli.options import InputShapes, Quiet, SampleData

__all__ = ["bench", "compare"]


def _bench_tables(result: Any, width: int) -> tuple[list[Table], list[str]]:
    """The results as one table, or as several when one would be wider than ``width`` (a narrow terminal).

    Also returns the messages of rows that are not ok, numbered as the status column refers to them.
    """
    from rich.measure import Measurement

    from sftonnx.benchmark import RATIO_KEYS

    rows = result.rows
    show_gpu = any(row.gpu_memory_bytes is not None for row in rows)
    show_accuracy = any(row.accuracy is not None for row in rows) or bool(result.settings.get("eval"))
    messages: list[str] = []
    cells: list[dict[str, str]] = []
    for row in rows:
        lat = row.latency
        ratios = row.ratios or {}
        status = row.status
        if row.message:
            text = row.message if row.ok else f"{row.status}: {row.message}"
            if text not in messages:
                messages.append(text)
            status += f" [{messages.index(text) + 1}]"
        line = {
            "model": row.label,
            "EP": row.provider,
            "status": status,
            "size": fmt_bytes(row.file_size_bytes),
            "session": "-" if row.session_seconds is None else f"{row.session_seconds:.3f}s",
            "first ms": fmt_ms(row.first_run_ms),
            "mean ms": fmt_ms(lat.mean_ms if lat else None),
            "p50 ms": fmt_ms(lat.p50_ms if lat else None),
            "p90 ms": fmt_ms(lat.p90_ms if lat else None),
            "p99 ms": fmt_ms(lat.p99_ms if lat else None),
            "samples/s": "-" if lat is None else f"{lat.throughput:.1f}",
            "peak RSS": "-" if row.peak_rss_bytes is None else fmt_bytes(row.peak_rss_bytes),
            "Δ RSS": "-" if row.rss_growth_bytes is None else fmt_bytes(row.rss_growth_bytes),
            "GPU mem": "-" if row.gpu_memory_bytes is None else fmt_bytes(row.gpu_memory_bytes),
            "accuracy": "-" if row.accuracy is None else f"{row.accuracy:.4f}",
        }
        for key, name in zip(RATIO_KEYS, ("×p50", "×thr", "×size", "×mem"), strict=True):
            line[name] = fmt_ratio(ratios.get(key))
        cells.append(line)
    keys = ["model", "EP", "status"]
    timing = ["size", "session", "first ms", "mean ms", "p50 ms", "p90 ms", "p99 ms", "samples/s"]
    other = ["peak RSS", "Δ RSS"] + ["GPU mem"] * show_gpu + ["accuracy"] * show_accuracy
    other += ["×p50", "×thr", "×size", "×mem"]

    def table(title: str, columns: list[str]) -> Table:
        built = Table(title=title)
        for name in columns:
            built.add_column(name, justify="left" if name in keys else "right", no_wrap=name in ("model", "EP"))
        for line in cells:
            built.add_row(*(line[name] for name in columns))
        return built

    def fits(columns: list[str]) -> bool:
        built = table("", columns)
        return Measurement.get(out, out.options.update(max_width=10_000), built).maximum <= width

    # Pack the figures into as few tables as fit the terminal (one on a wide one); keys repeat in each.
    groups: list[list[str]] = [[]]
    for name in timing + other:
        lead = keys if len(groups) == 1 else keys[:2]
        if groups[-1] and not fits(lead + groups[-1] + [name]):
            groups.append([])
        groups[-1].append(name)
    tables = [
        table(
            f"benchmark (baseline: {result.baseline})" if index == 0 else "benchmark (continued)",
            (keys if index == 0 else keys[:2]) + group,
        )
        for index, group in enumerate(groups)
    ]
    return tables, [f"[{index}] {text}" for index, text in enumerate(messages, 1)]


@app.command()
@guard
def bench(
    models: Annotated[list[pathlib.Path], typer.Argument(help="Models to benchmark; the first is the baseline.")],
    ep: Annotated[
        str, typer.Option("--ep", help="Execution providers: cpu, cuda, tensorrt (comma-separated).")
    ] = "cpu",
    runs: Annotated[int | None, typer.Option(help="Timed runs per model (default 100 unless --duration).")] = None,
    duration: Annotated[float | None, typer.Option(help="Seconds of timed rounds per EP instead of --runs.")] = None,
    warmup: Annotated[int, typer.Option(help="Untimed runs per model after the first run.")] = 10,
    threads: Annotated[int, typer.Option(help="Intra-op threads (0: onnxruntime's default).")] = 0,
    batch: Annotated[int | None, typer.Option(help="Batch size: fills a dynamic first dimension.")] = None,
    input_shape: InputShapes = None,
    data: Annotated[
        pathlib.Path | None, typer.Option(help=".npz with one array per input (first --batch samples).")
    ] = None,
    eval_: Annotated[
        str | None, typer.Option("--eval", help="labels.npz (inputs + labels) for top-1 accuracy, or module:function.")
    ] = None,
    io_binding: Annotated[
        bool, typer.Option("--io-binding", help="CUDA/TensorRT: keep inputs/outputs on the GPU.")
    ] = False,
    memory: Annotated[bool, typer.Option("--memory/--no-memory", help="Per-model memory (a process each).")] = True,
    spin: Annotated[bool, typer.Option("--spin", help="Keep ORT's spinning intra-op threads.")] = False,
    json_path: Annotated[pathlib.Path | None, typer.Option("--json", help="Write the results as JSON here.")] = None,
    csv_path: Annotated[pathlib.Path | None, typer.Option("--csv", help="Write one CSV line per row here.")] = None,
    plot: Annotated[pathlib.Path | None, typer.Option(help="Write a latency-vs-size PNG here.")] = None,
    quiet: Quiet = False,
) -> None:
    """Time MODELS side by side (interleaved run by run): latency, throughput, memory, size, accuracy."""
    import contextlib

    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    from sftonnx import api
    from sftonnx.benchmark import write_csv, write_plot

    show_progress = not quiet and err.is_terminal
    progress = Progress(TextColumn("{task.description}"), BarColumn(), TimeElapsedColumn(), console=err, transient=True)
    tasks: dict[str, Any] = {}

    def on_progress(done: float, total: float, text: str) -> None:
        key = text.split(":", 1)[0]
        if key not in tasks:
            tasks[key] = progress.add_task(text, total=total)
        progress.update(tasks[key], completed=done, total=total, description=text)

    with progress if show_progress else contextlib.nullcontext():
        result = api.benchmark(
            models,
            providers=ep,
            runs=runs,
            duration=duration,
            warmup=warmup,
            threads=threads,
            batch=batch,
            input_shapes=input_shape,
            data=data,
            evaluate=eval_,
            io_binding=io_binding,
            memory=memory,
            spinning=spin,
            progress=on_progress if show_progress else None,
        )
    write_json(json_path, result.to_json())
    if csv_path is not None:
        write_csv(result, csv_path)
    if plot is not None:
        write_plot(result, plot)
    failed = [row for row in result.rows if row.status == "failed"]
    for row in failed:
        err.print(f"warning: {row.label} [{row.provider}] failed: {row.message}", markup=False)
    if quiet:
        return
    tables, messages = _bench_tables(result, out.width)
    for table in tables:
        out.print(table)
    for message in messages:
        out.print(message, markup=False)
    for note in result.notes:
        out.print(f"note: {note}", markup=False)
    out.print(
        "ratios: row / baseline on the same EP (×p50 below 1 is faster, ×thr above 1 is more throughput)",
        markup=False,
    )
    for path in (json_path, csv_path, plot):
        if path is not None:
            out.print(f"wrote {path}", markup=False)


@app.command()
@guard
def compare(
    reference: Annotated[pathlib.Path, typer.Argument(help="Model A (the reference).")],
    candidate: Annotated[pathlib.Path, typer.Argument(help="Model B, with the same input and output names.")],
    data: SampleData = None,
    input_shape: InputShapes = None,
    atol: Annotated[
        float | None, typer.Option(help="Fail (exit 3) beyond this absolute error (rtol 0 if not given).")
    ] = None,
    rtol: Annotated[
        float | None, typer.Option(help="Fail (exit 3) beyond this relative error (atol 0 if not given).")
    ] = None,
    min_cosine: Annotated[
        float | None, typer.Option(help="Fail (exit 3) below this cosine similarity per output.")
    ] = None,
    min_agreement: Annotated[
        float | None,
        typer.Option(help="Fail (exit 3) below this argmax/threshold/label agreement (with --min-cosine: budget)."),
    ] = None,
    json_path: Annotated[pathlib.Path | None, typer.Option("--json", help="Write the metrics as JSON here.")] = None,
    quiet: Quiet = False,
) -> None:
    """Compare the outputs of A and B on the same inputs; exit 3 when a given limit is exceeded."""
    from sftonnx import api
    from sftonnx.errors import VerificationError
    from sftonnx.verify import Budget, Tolerance

    tolerance = None
    if atol is not None or rtol is not None:
        tolerance = Tolerance(atol=atol or 0.0, rtol=rtol or 0.0)
    budget = None
    if min_cosine is not None or min_agreement is not None:
        budget = Budget(min_cosine=min_cosine, min_agreement=min_agreement)
    result = api.compare(reference, candidate, data=data, input_shapes=input_shape, tolerance=tolerance, budget=budget)
    write_json(json_path, result.to_json())
    if not quiet:
        table = Table(title=f"{candidate} vs {reference}")
        columns = ("output", "kind", "max abs error", "mean rel error", "cosine", "top-1 agreement",
                   "argmax agreement", "threshold agreement", "within limits")
        for column in columns:
            table.add_column(column, justify="left" if column in ("output", "kind") else "right")
        for metric in result.comparison.outputs:
            top1 = "-" if metric.top1_agreement is None else f"{metric.top1_agreement:.4f}"
            if not metric.shape_ok:
                table.add_row(metric.name, "-", "shape differs", "-", "-", "-", "-", "-", "no")
                continue
            argmax = "-" if metric.argmax_agreement is None else f"{metric.argmax_agreement:.4f}"
            threshold = "-" if metric.threshold_agreement is None else f"{metric.threshold_agreement:.4f}"
            table.add_row(
                metric.name,
                metric.kind,
                f"{metric.max_abs:.3g}",
                f"{metric.mean_rel:.3g}",
                f"{metric.cosine:.6f}",
                top1,
                argmax,
                threshold,
                "yes" if metric.within_tolerance else "no",
            )
        out.print(table)
        for note in result.notes:
            out.print(f"note: {note}", markup=False)
        limits = ", ".join(f"{k}={v:g}" for k, v in result.limits.items())
        unlimited = "no limits given (--atol/--rtol/--min-cosine/--min-agreement): metrics only"
        out.print(f"limits: {limits}" if limits else unlimited)
        if json_path is not None:
            out.print(f"wrote {json_path}", markup=False)
    if not result.passed:
        raise VerificationError(
            f"{candidate} differs from {reference} beyond the limits: " + "; ".join(result.comparison.failures[:3]),
            metrics=result.to_json(),
        )
    if not quiet:
        out.print("within limits" if result.limits else "compared", markup=False)
