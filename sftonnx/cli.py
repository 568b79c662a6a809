"""The ``sftonnx`` command. The only module that prints or exits.

Exit codes: 0 success; 1 a bug (traceback with ``--debug``); 2 bad usage or input; 3 verification failed.
"""

from __future__ import annotations

import functools
import json
import logging
import pathlib
import sys
import traceback
from collections.abc import Callable
from typing import Annotated, Any, TypeVar

import typer
from rich.console import Console
from rich.table import Table

from sftonnx.errors import EXIT_BUG, SftonnxError

__all__ = ["app", "main"]

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="ONNX graph-rewrite optimizer: fold, fuse, prune, factorize and quantize, verified against the original.",
)
# Wide tables when piped to a file or CI log (rich would otherwise wrap at 80 columns).
out = Console(highlight=False, soft_wrap=True, width=None if sys.stdout.isatty() else 200)
err = Console(stderr=True, highlight=False, soft_wrap=True)
_state = {"debug": False}

F = TypeVar("F", bound=Callable[..., Any])


def _guard(function: F) -> F:
    """Turn sftonnx errors into one line on stderr and their exit code; bugs into exit 1."""

    @functools.wraps(function)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return function(*args, **kwargs)
        except SftonnxError as error:
            if _state["debug"]:
                traceback.print_exc()
            err.print(f"error: {error}", markup=False)
            raise typer.Exit(error.exit_code) from None
        except (typer.Exit, typer.Abort, KeyboardInterrupt):
            raise
        except Exception as error:  # a bug: short message, traceback only with --debug
            if _state["debug"]:
                traceback.print_exc()
            text = str(error).strip().splitlines()[0] if str(error).strip() else ""
            err.print(
                f"internal error: {type(error).__name__}: {text} (rerun with --debug for the traceback)", markup=False
            )
            raise typer.Exit(EXIT_BUG) from None

    return wrapper  # type: ignore[return-value]


@app.callback()
def _main(
    debug: Annotated[bool, typer.Option("--debug", help="Show tracebacks and debug logs.")] = False,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Show info logs.")] = False,
) -> None:
    _state["debug"] = debug
    level = logging.DEBUG if debug else logging.INFO if verbose else logging.WARNING
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr, force=True)
    # onnxsim and onnxruntime can be chatty on stderr at import; keep our own logs readable.
    logging.getLogger("onnxscript").setLevel(max(level, logging.WARNING))


def _fmt_int(value: int | None) -> str:
    if value is None:
        return "?"
    for unit, size in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(value) >= size:
            return f"{value / size:.2f}{unit}"
    return str(value)


def _fmt_bytes(value: int | None) -> str:
    if value is None:
        return "?"
    for unit, size in (("GB", 2**30), ("MB", 2**20), ("kB", 2**10)):
        if value >= size:
            return f"{value / size:.2f} {unit}"
    return f"{value} B"


def _arrow(before: Any, after: Any, fmt: Callable[[Any], str]) -> str:
    if before == after:
        return fmt(after)
    return f"{fmt(before)} → {fmt(after)}"


def _report_table(report) -> Table:
    table = Table(title="passes", show_lines=False)
    columns = ("pass", "status", "changes", "skipped", "time", "nodes", "params", "weights", "MACs")
    columns += ("error vs original",)
    for column in columns:
        table.add_column(column, overflow="fold")
    for row in report.rows:
        before, after = row.before, row.after or row.before
        changes = ", ".join(f"{k}={v}" for k, v in row.changes.items()) or "-"
        skipped = ", ".join(f"{k}={v}" for k, v in row.skipped.items()) or "-"
        error = "-"
        if row.error:
            top1 = row.error.get("top1_agreement")
            error = f"max abs {row.error['max_abs']:.2g}, cos {row.error['cosine']:.5f}" + (
                f", top1 {top1:.3f}" if top1 is not None else ""
            )
        status = row.status if not row.message else f"{row.status}: {row.message}"
        table.add_row(
            row.spec,
            status,
            changes,
            skipped,
            f"{row.seconds:.2f}s",
            _arrow(before.nodes, after.nodes, str) if before and after else "?",
            _arrow(before.params, after.params, _fmt_int) if before and after else "?",
            _arrow(before.param_bytes, after.param_bytes, _fmt_bytes) if before and after else "?",
            _arrow(before.macs, after.macs, _fmt_int) if before and after else "?",
            error,
        )
    return table


def _write_json(path: pathlib.Path | None, payload: Any) -> None:
    if path is None:
        return
    try:
        path.write_text(json.dumps(payload, indent=2, default=str))
    except OSError as error:
        from sftonnx.errors import InputError

        raise InputError(f"cannot write {path}: {error.strerror or error}") from None


@app.command()
@_guard
def optimize(
    model: Annotated[pathlib.Path, typer.Argument(help="Input .onnx model.")],
    output: Annotated[pathlib.Path, typer.Argument(help="Where to write the optimized model.")],
    passes: Annotated[str | None, typer.Option(help='Pass spec, e.g. "simplify,fold-bn,prune{rate=0.3}".')] = None,
    preset: Annotated[
        str | None, typer.Option(help="Preset used when --passes is not given (default: by --target).")
    ] = None,
    target: Annotated[
        str,
        typer.Option(help="standard: portable ONNX (preset lossless); ort: onnxruntime contrib ops (preset fast-cpu)."),
    ] = "standard",
    data: Annotated[
        pathlib.Path | None,
        typer.Option(help=".npz with one array per input (axis 0 = batch), or a folder of .npz (one feed per file)."),
    ] = None,
    input_shape: Annotated[
        list[str] | None, typer.Option("--input-shape", help="Fill dynamic dims: name=1x3x224x224 (repeatable).")
    ] = None,
    calibration_data: Annotated[
        pathlib.Path | None, typer.Option(help="Calibration .npz (or folder of them) for lossy passes.")
    ] = None,
    no_verify: Annotated[bool, typer.Option("--no-verify", help="Skip the numerical comparison.")] = False,
    verify_each: Annotated[bool, typer.Option("--verify-each", help="Compare after every pass.")] = False,
    dump_dir: Annotated[
        pathlib.Path | None, typer.Option(help="Save the model before a failing pass here (a reproducer).")
    ] = None,
    atol: Annotated[float, typer.Option(help="Absolute tolerance (lossless pipelines).")] = 1e-4,
    rtol: Annotated[float, typer.Option(help="Relative tolerance (lossless pipelines).")] = 1e-3,
    min_cosine: Annotated[float, typer.Option(help="Least cosine similarity per output (lossy pipelines).")] = 0.99,
    min_agreement: Annotated[
        float, typer.Option(help="Least argmax/threshold/label agreement per decision output (lossy pipelines).")
    ] = 0.99,
    allow_random_verification: Annotated[
        bool,
        typer.Option(
            "--allow-random-verification", help="Verify lossy passes on random inputs when no real data is given."
        ),
    ] = False,
    report: Annotated[pathlib.Path | None, typer.Option(help="Write the report as JSON here.")] = None,
    overwrite: Annotated[bool, typer.Option(help="Allow replacing an existing output (or the input).")] = False,
    external_data: Annotated[
        bool | None, typer.Option("--external-data/--no-external-data", help="Default: only past 2 GiB.")
    ] = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="Print only errors.")] = False,
    eval_: Annotated[
        str | None,
        typer.Option("--eval", help="--preset auto: labels.npz (top-1 %) or module:function (higher is better)."),
    ] = None,
    max_accuracy_drop: Annotated[
        float | None, typer.Option(help="--preset auto: largest metric drop (points for labels; default 1.0).")
    ] = None,
    max_error: Annotated[
        float | None,
        typer.Option(help="--preset auto: largest 1 - min cosine vs the original (default 1 - --min-cosine)."),
    ] = None,
    objective: Annotated[str, typer.Option(help="--preset auto: latency (p50 on --ep) or size.")] = "latency",
    workers: Annotated[int, typer.Option(help="--preset auto: processes evaluating candidates.")] = 1,
    seed: Annotated[int, typer.Option(help="--preset auto: seed of the random inputs.")] = 0,
    ep: Annotated[str, typer.Option("--ep", help="--preset auto: execution provider latency is measured on.")] = "cpu",
    cache_dir: Annotated[
        pathlib.Path | None, typer.Option(help="--preset auto: candidate cache (default .sftonnx-cache/ by OUTPUT).")
    ] = None,
    pareto_json: Annotated[
        pathlib.Path | None, typer.Option(help="--preset auto: write the Pareto front as JSON here.")
    ] = None,
    pareto_plot: Annotated[
        pathlib.Path | None, typer.Option(help="--preset auto: write a latency/size/loss PNG here.")
    ] = None,
) -> None:
    """Optimize MODEL into OUTPUT, verify it against the original, and print a per-pass report.

    With --preset auto, search per-layer quantization, pruning and factorization within an accuracy budget
    (--eval with --max-accuracy-drop, or --max-error) for the fastest (or smallest) model, then write it.
    """
    from sftonnx import api
    from sftonnx.verify import Budget, Tolerance

    if passes is None and preset == "auto":
        _optimize_auto(
            model,
            output,
            evaluate=eval_,
            max_accuracy_drop=max_accuracy_drop,
            max_error=max_error if max_error is not None or eval_ else 1.0 - min_cosine,
            objective=objective,
            data=data,
            calibration_data=calibration_data,
            input_shape=input_shape,
            ep=ep,
            seed=seed,
            workers=workers,
            cache_dir=cache_dir,
            overwrite=overwrite,
            external_data=external_data,
            report=report,
            pareto_json=pareto_json,
            pareto_plot=pareto_plot,
            quiet=quiet,
            allow_random_verification=allow_random_verification,
        )
        return
    progress = None
    if not quiet and err.is_terminal:
        progress = lambda i, n, name: err.print(f"[{i + 1}/{n}] {name}", style="dim")  # noqa: E731
    if target not in ("standard", "ort"):
        from sftonnx.errors import InputError

        raise InputError(f"--target must be standard or ort, got '{target}'")
    result = api.optimize(
        model,
        output,
        passes=passes,
        preset=preset or ("fast-cpu" if target == "ort" else "lossless"),
        data=data,
        verify=not no_verify,
        input_shapes=input_shape,
        tolerance=Tolerance(atol=atol, rtol=rtol),
        budget=Budget(min_cosine=min_cosine, min_agreement=min_agreement),
        verify_each=verify_each,
        dump_dir=dump_dir,
        overwrite=overwrite,
        external_data=external_data,
        calibration_data=calibration_data,
        progress=progress,
        allow_random_verification=allow_random_verification,
    )
    rep = result.report
    _write_json(report, rep.to_json())
    if quiet:
        return
    out.print(_report_table(rep))
    for note in rep.input_notes + rep.warnings:
        out.print(f"note: {note}", markup=False)
    original, final = rep.original, rep.final
    if original and final:
        out.print(
            f"nodes {original.nodes} → {final.nodes}, params {_fmt_int(original.params)} → {_fmt_int(final.params)}, "
            f"MACs {_fmt_int(original.macs)} → {_fmt_int(final.macs)}, "
            f"file {_fmt_bytes(rep.input_size)} → {_fmt_bytes(rep.output_size)}",
            markup=False,
        )
    if result.verification is not None:
        worst = result.verification.worst()
        mode = rep.verification.get("mode") if rep.verification else ""
        top1, agreement = worst.get("top1_agreement"), worst.get("agreement")
        out.print(
            f"verified ({mode}): max abs error {worst['max_abs']:.3g}, min cosine {worst['cosine']:.6f}"
            + (f", top-1 agreement {top1:.4f}" if top1 is not None else "")
            + (f", min task agreement {agreement:.4f}" if agreement is not None else ""),
            markup=False,
        )
    else:
        out.print("not verified (--no-verify)")
    out.print(f"wrote {output}", markup=False)


def _optimize_auto(
    model: pathlib.Path,
    output: pathlib.Path,
    *,
    pareto_json: pathlib.Path | None,
    pareto_plot: pathlib.Path | None,
    report: pathlib.Path | None,
    quiet: bool,
    input_shape: list[str] | None,
    **options: Any,
) -> None:
    """``optimize --preset auto``: run the search with a progress bar, print the front, write the chosen model."""
    import contextlib

    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from sftonnx import api, search

    show_progress = not quiet and err.is_terminal
    bar = Progress(
        TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
        console=err, transient=True,
    )
    task = bar.add_task("auto: starting", total=None)

    def on_progress(done: float, total: float, phase: str) -> None:
        bar.update(task, completed=done, total=total, description=f"auto: {phase}")

    found = None
    try:
        with bar if show_progress else contextlib.nullcontext():
            result = api.optimize_auto(
                model, output, input_shapes=input_shape, progress=on_progress if show_progress else None, **options
            )
        found = result.search
    except search.BudgetNotMetError as error:
        found = error.result
        if not quiet:
            out.print(_auto_table(found))
        _write_auto_files(found, pareto_json, pareto_plot)
        raise
    _write_json(report, result.report_json())
    _write_auto_files(found, pareto_json, pareto_plot)
    if quiet:
        return
    out.print(_auto_table(found))
    for note in found.notes + result.report.warnings:
        out.print(f"note: {note}", markup=False)
    chosen = found.chosen
    out.print(
        f"chosen: {chosen.name} ({found.budget.describe()}, objective {found.objective}; "
        f"{found.stats['evaluated']} candidates evaluated, {found.stats['cached']} from the cache {found.cache_dir})",
        markup=False,
    )
    out.print(f"spec: {chosen.spec}", markup=False)
    calibration = f" --calibration-data {found.calibration_data}" if found.calibration_data else ""
    out.print(f"reproduce: sftonnx optimize {model} {output} --passes '{chosen.spec}'{calibration}", markup=False)
    if result.verification is not None:
        worst = result.verification.worst()
        out.print(f"verified (budget): min cosine {worst['cosine']:.6f}, max abs error {worst['max_abs']:.3g}")
    for path in (report, pareto_json, pareto_plot):
        if path is not None:
            out.print(f"wrote {path}", markup=False)
    out.print(f"wrote {output}", markup=False)


def _write_auto_files(found: Any, pareto_json: pathlib.Path | None, pareto_plot: pathlib.Path | None) -> None:
    from sftonnx import search

    if pareto_json is not None:
        names = set(found.pareto)
        _write_json(
            pareto_json,
            {
                "objective": found.objective,
                "budget": found.budget.describe(),
                "chosen": found.chosen.name if found.chosen else None,
                "spec": found.chosen.spec if found.chosen else None,
                "baseline": found.baseline.to_json(),
                "pareto": [c.to_json() for c in found.timed if c.name in names],
                "timed": [c.to_json() for c in found.timed],
            },
        )
    if pareto_plot is not None:
        search.write_pareto_plot(found, pareto_plot)


def _auto_table(found: Any) -> Table:
    """The original, every preset, the Pareto front and the choice, with their figures."""
    accuracy = found.budget.max_accuracy_drop is not None
    base = found.baseline
    rows = [base] + [
        c
        for c in found.candidates
        if c.kind == "preset" or c.name in found.pareto or c is found.chosen or c is found.best
    ]
    table = Table(title=f"auto: {found.budget.describe()}, objective {found.objective}")
    columns = ["candidate", "meets budget", "p50 ms", "×p50", "size", "×size"]
    columns += ["metric", "drop"] if accuracy else []
    columns += ["1 - cosine", "spec"]
    for name in columns:
        table.add_column(name, justify="left" if name in ("candidate", "spec", "meets budget") else "right",
                         overflow="fold")
    for c in rows:
        mark = " ★" if c is found.chosen else " ◆" if c.name in found.pareto else ""
        status = "yes" if c.feasible else ("no" if c.status == "ok" else f"failed: {c.message[:60]}")
        cells = [
            c.name + mark,
            status,
            _fmt_ms(c.latency_ms),
            _fmt_ratio(c.latency_ms / base.latency_ms if c.latency_ms and base.latency_ms else None),
            _fmt_bytes(c.size_bytes),
            _fmt_ratio(c.size_bytes / base.size_bytes if c.size_bytes and base.size_bytes else None),
        ]
        if accuracy:
            cells += ["-" if c.metric is None else f"{c.metric:.3f}", "-" if c.drop is None else f"{c.drop:.3f}"]
        cells += ["-" if c.error is None else f"{c.error:.2e}", c.spec or "-"]
        table.add_row(*cells)
    table.caption = "★ chosen, ◆ Pareto front (latency, size, loss); ratios to the original"
    return table


@app.command()
@_guard
def inspect(
    model: Annotated[pathlib.Path, typer.Argument(help="The .onnx model.")],
    input_shape: Annotated[list[str] | None, typer.Option("--input-shape", help="name=1x3x224x224")] = None,
    memory: Annotated[bool, typer.Option("--memory", help="Add the static activation-memory plan.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Show a model's opset, inputs/outputs, ops, parameters, MACs and activation memory."""
    from sftonnx import api

    summary = api.inspect(model, input_shapes=input_shape, memory=memory)
    if as_json:
        out.print_json(json.dumps(summary, default=str))
        return
    out.print(f"[bold]{model}[/bold]  opset {summary.get('opset_imports')}  ir {summary.get('ir_version')}")
    for kind in ("inputs", "outputs"):
        for item in summary.get(kind, []):
            out.print(f"  {kind[:-1]:6} {item['name']}: {item['dtype']}{item['shape']}", markup=False)
    out.print(
        f"  nodes {summary.get('node_count')}, params {_fmt_int(summary.get('params'))} "
        f"({_fmt_bytes(summary.get('param_bytes'))})"
        + (
            f" + {_fmt_int(summary['generated_params'])} generated at run time by ConstantOfShape"
            if summary.get("generated_params")
            else ""
        )
        + f", MACs {_fmt_int(summary.get('macs_total'))}, "
        f"peak activations {_fmt_bytes(summary.get('peak_activation_bytes'))}, "
        f"file {_fmt_bytes(summary.get('file_size'))}",
        markup=False,
    )
    table = Table(title="ops")
    table.add_column("op")
    table.add_column("count", justify="right")
    table.add_column("MACs", justify="right")
    macs = summary.get("macs", {})
    for op, count in sorted(summary.get("op_histogram", {}).items(), key=lambda kv: -kv[1]):
        table.add_row(op, str(count), _fmt_int(macs[op]) if op in macs else "")
    out.print(table)
    if memory and "memory" in summary:
        plan = summary["memory"]
        out.print(
            f"memory plan: peak live activations {_fmt_bytes(plan.get('peak_activation_bytes'))}, "
            f"arena with reuse {_fmt_bytes(plan.get('arena_bytes'))}, "
            f"without reuse {_fmt_bytes(plan.get('sum_bytes'))}",
            markup=False,
        )
    for note in summary.get("input_notes", []):
        out.print(f"note: {note}", markup=False)


@app.command(name="passes")
@_guard
def list_passes(
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """List the passes with their options, and the presets."""
    from sftonnx.pass_infra import pass_options
    from sftonnx.passes import PRESET_DOCS, PRESETS, REGISTRY

    payload = {
        "passes": {
            name: {
                "numerics": cls.numerics.value,
                "doc": (cls.__doc__ or "").strip().splitlines()[0],
                "options": {
                    o.name: {"type": o.type_name, "default": o.default, "doc": o.doc}
                    for o in pass_options(cls).values()
                },
            }
            for name, cls in REGISTRY.items()
        },
        "presets": {name: {"spec": spec, "doc": PRESET_DOCS.get(name, "")} for name, spec in PRESETS.items()},
    }
    # `auto` is a search, not a spec (sftonnx.search): listed here, never expanded inside a spec.
    payload["presets"].setdefault(
        "auto",
        {
            "spec": "(search; see --eval, --max-accuracy-drop, --max-error, --objective)",
            "doc": PRESET_DOCS.get("auto", "Accuracy-aware search over per-layer lossy passes and every preset."),
        },
    )
    if as_json:
        out.print_json(json.dumps(payload, default=str))
        return
    table = Table(title="passes")
    for column in ("pass", "numerics", "what it does", "options"):
        table.add_column(column, overflow="fold")
    for name, info in payload["passes"].items():
        options = "\n".join(f"{k}: {v['type']} = {v['default']}" for k, v in info["options"].items()) or "-"
        table.add_row(name, info["numerics"], info["doc"], options)
    out.print(table)
    presets = Table(title="presets")
    for column in ("preset", "passes", "what it is for"):
        presets.add_column(column, overflow="fold")
    for name, info in payload["presets"].items():
        presets.add_row(name, info["spec"], info["doc"])
    out.print(presets)


def _fmt_ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.3g}" if value < 10 else f"{value:.1f}"


def _fmt_ratio(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}×"


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
            "size": _fmt_bytes(row.file_size_bytes),
            "session": "-" if row.session_seconds is None else f"{row.session_seconds:.3f}s",
            "first ms": _fmt_ms(row.first_run_ms),
            "mean ms": _fmt_ms(lat.mean_ms if lat else None),
            "p50 ms": _fmt_ms(lat.p50_ms if lat else None),
            "p90 ms": _fmt_ms(lat.p90_ms if lat else None),
            "p99 ms": _fmt_ms(lat.p99_ms if lat else None),
            "samples/s": "-" if lat is None else f"{lat.throughput:.1f}",
            "peak RSS": "-" if row.peak_rss_bytes is None else _fmt_bytes(row.peak_rss_bytes),
            "Δ RSS": "-" if row.rss_growth_bytes is None else _fmt_bytes(row.rss_growth_bytes),
            "GPU mem": "-" if row.gpu_memory_bytes is None else _fmt_bytes(row.gpu_memory_bytes),
            "accuracy": "-" if row.accuracy is None else f"{row.accuracy:.4f}",
        }
        for key, name in zip(RATIO_KEYS, ("×p50", "×thr", "×size", "×mem"), strict=True):
            line[name] = _fmt_ratio(ratios.get(key))
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
@_guard
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
    input_shape: Annotated[
        list[str] | None, typer.Option("--input-shape", help="Fill dynamic dims: name=1x3x224x224 (repeatable).")
    ] = None,
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
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="Print only errors.")] = False,
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
    _write_json(json_path, result.to_json())
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
@_guard
def compare(
    reference: Annotated[pathlib.Path, typer.Argument(help="Model A (the reference).")],
    candidate: Annotated[pathlib.Path, typer.Argument(help="Model B, with the same input and output names.")],
    data: Annotated[
        pathlib.Path | None,
        typer.Option(help=".npz with one array per input (axis 0 = batch), or a folder of .npz (one feed per file)."),
    ] = None,
    input_shape: Annotated[
        list[str] | None, typer.Option("--input-shape", help="Fill dynamic dims: name=1x3x224x224 (repeatable).")
    ] = None,
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
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="Print only errors.")] = False,
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
    _write_json(json_path, result.to_json())
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


def main() -> None:
    """Entry point of the ``sftonnx`` console script."""
    app()


if __name__ == "__main__":
    main()
