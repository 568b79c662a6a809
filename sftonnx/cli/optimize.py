"""``sftonnx optimize`` (a spec or preset, or ``--preset auto``: the search) and its tables."""

from __future__ import annotations

import contextlib
import pathlib
from typing import Annotated, Any

import typer
from rich.table import Table

from sftonnx.cli.app import app, err, guard, out
from sftonnx.cli.format import arrow, fmt_bytes, fmt_int, fmt_ms, fmt_ratio, write_json
from sftonnx.cli.options import InputShapes, Quiet, SampleData

__all__ = ["optimize"]


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
            arrow(before.nodes, after.nodes, str) if before and after else "?",
            arrow(before.params, after.params, fmt_int) if before and after else "?",
            arrow(before.param_bytes, after.param_bytes, fmt_bytes) if before and after else "?",
            arrow(before.macs, after.macs, fmt_int) if before and after else "?",
            error,
        )
    return table


@app.command()
@guard
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
    data: SampleData = None,
    input_shape: InputShapes = None,
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
        bool | None,
        typer.Option(
            "--external-data/--no-external-data",
            help="Default: when the input has external data or the result is past 2 GiB.",
        ),
    ] = None,
    quiet: Quiet = False,
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
    time_budget: Annotated[
        float | None,
        typer.Option(help="--preset auto: seconds for the search; distillation trains in what is left (at most 60 s)."),
    ] = None,
    distill: Annotated[
        bool,
        typer.Option(
            "--distill/--no-distill",
            help="--preset auto: distill the chosen lossy model against the original (torch, --calibration-data).",
        ),
    ] = True,
) -> None:
    """Optimize MODEL into OUTPUT, verify it against the original, and print a per-pass report.

    With --preset auto, search per-layer quantization, pruning and factorization within an accuracy budget
    (--eval with --max-accuracy-drop, or --max-error and --min-agreement) for the fastest (or smallest) model,
    distill it against the original when torch and --calibration-data allow, then write it.
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
            min_agreement=min_agreement,
            time_budget=time_budget,
            distill=distill,
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
    progress = pass_progress = None
    bar = contextlib.nullcontext()
    if not quiet and err.is_terminal:
        progress, pass_progress, bar = _pass_progress_bar()
    if target not in ("standard", "ort"):
        from sftonnx.errors import InputError

        raise InputError(f"--target must be standard or ort, got '{target}'")
    with bar:
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
            pass_progress=pass_progress,
        )
    rep = result.report
    write_json(report, rep.to_json())
    if quiet:
        return
    out.print(_report_table(rep))
    for note in rep.input_notes + rep.warnings:
        out.print(f"note: {note}", markup=False)
    original, final = rep.original, rep.final
    if original and final:
        out.print(
            f"nodes {original.nodes} → {final.nodes}, params {fmt_int(original.params)} → {fmt_int(final.params)}, "
            f"MACs {fmt_int(original.macs)} → {fmt_int(final.macs)}, "
            f"file {fmt_bytes(rep.input_size)} → {fmt_bytes(rep.output_size)}",
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


def _pass_progress_bar() -> tuple[Any, Any, Any]:
    """``(progress, pass_progress, bar)`` for a terminal run of ``optimize``.

    A line per pass, and a transient bar with the text of passes that report progress during their run
    (``distill``: its time budget and held-out loss).
    """
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    bar = Progress(TextColumn("{task.description}"), BarColumn(), TimeElapsedColumn(), console=err, transient=True)
    task = bar.add_task("", total=None, visible=False)

    def progress(index: int, total: int, name: str) -> None:
        bar.console.print(f"[{index + 1}/{total}] {name}", style="dim", markup=False)
        bar.update(task, visible=False, completed=0, total=None)

    def pass_progress(name: str, done: float, total: float, text: str) -> None:
        bar.update(task, visible=True, completed=done, total=total, description=f"{name}: {text}")

    return progress, pass_progress, bar


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
    write_json(report, result.report_json())
    _write_auto_files(found, pareto_json, pareto_plot)
    if quiet:
        return
    out.print(_auto_table(found))
    for note in found.notes + result.report.warnings:
        out.print(f"note: {note}", markup=False)
    for step in found.steps:
        took = f" ({step.seconds:.1f} s, training up to {step.time_budget:g} s)" if step.time_budget else ""
        out.print(f"step {step.name}: {step.status}{took}: {step.message}", markup=False)
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
        agreement = worst.get("agreement")
        out.print(
            f"verified (budget): min cosine {worst['cosine']:.6f}, max abs error {worst['max_abs']:.3g}"
            + (f", min task agreement {agreement:.4f}" if agreement is not None else "")
        )
    for path in (report, pareto_json, pareto_plot):
        if path is not None:
            out.print(f"wrote {path}", markup=False)
    out.print(f"wrote {output}", markup=False)


def _write_auto_files(found: Any, pareto_json: pathlib.Path | None, pareto_plot: pathlib.Path | None) -> None:
    from sftonnx import search

    if pareto_json is not None:
        names = set(found.pareto)
        write_json(
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
        if c.kind in ("preset", "distill") or c.name in found.pareto or c is found.chosen or c is found.best
    ]
    table = Table(title=f"auto: {found.budget.describe()}, objective {found.objective}")
    columns = ["candidate", "meets budget", "p50 ms", "×p50", "size", "×size"]
    agreement = found.budget.min_agreement is not None
    columns += ["metric", "drop"] if accuracy else []
    columns += ["1 - cosine"] + (["agreement"] if agreement else []) + ["spec"]
    for name in columns:
        table.add_column(name, justify="left" if name in ("candidate", "spec", "meets budget") else "right",
                         overflow="fold")
    for c in rows:
        mark = " ★" if c is found.chosen else " ◆" if c.name in found.pareto else ""
        status = "yes" if c.feasible else ("no" if c.status == "ok" else f"failed: {c.message[:60]}")
        cells = [
            c.name + mark,
            status,
            fmt_ms(c.latency_ms),
            fmt_ratio(c.latency_ms / base.latency_ms if c.latency_ms and base.latency_ms else None),
            fmt_bytes(c.size_bytes),
            fmt_ratio(c.size_bytes / base.size_bytes if c.size_bytes and base.size_bytes else None),
        ]
        if accuracy:
            cells += ["-" if c.metric is None else f"{c.metric:.3f}", "-" if c.drop is None else f"{c.drop:.3f}"]
        cells += ["-" if c.error is None else f"{c.error:.2e}"]
        cells += (["-" if c.agreement is None else f"{c.agreement:.4f}"] if agreement else []) + [c.spec or "-"]
        table.add_row(*cells)
    table.caption = "★ chosen, ◆ Pareto front (latency, size, loss); ratios to the original"
    return table
