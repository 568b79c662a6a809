"""``sftonnx inspect`` (a model's structure and costs) and ``sftonnx passes`` (the registry and presets)."""

from __future__ import annotations

import json
import pathlib
from typing import Annotated

import typer
from rich.table import Table

from sftonnx.cli.app import app, guard, out
from sftonnx.cli.format import fmt_bytes, fmt_int
from sftonnx.cli.options import InputShapes

__all__ = ["inspect", "list_passes"]


@app.command()
@guard
def inspect(
    model: Annotated[pathlib.Path, typer.Argument(help="The .onnx model.")],
    input_shape: InputShapes = None,
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
        f"  nodes {summary.get('node_count')}, params {fmt_int(summary.get('params'))} "
        f"({fmt_bytes(summary.get('param_bytes'))})"
        + (
            f" + {fmt_int(summary['generated_params'])} generated at run time by ConstantOfShape"
            if summary.get("generated_params")
            else ""
        )
        + f", MACs {fmt_int(summary.get('macs_total'))}, "
        f"peak activations {fmt_bytes(summary.get('peak_activation_bytes'))}, "
        f"file {fmt_bytes(summary.get('file_size'))}",
        markup=False,
    )
    table = Table(title="ops")
    table.add_column("op")
    table.add_column("count", justify="right")
    table.add_column("MACs", justify="right")
    macs = summary.get("macs", {})
    for op, count in sorted(summary.get("op_histogram", {}).items(), key=lambda kv: -kv[1]):
        table.add_row(op, str(count), fmt_int(macs[op]) if op in macs else "")
    out.print(table)
    if memory and "memory" in summary:
        plan = summary["memory"]
        out.print(
            f"memory plan: peak live activations {fmt_bytes(plan.get('peak_activation_bytes'))}, "
            f"arena with reuse {fmt_bytes(plan.get('arena_bytes'))}, "
            f"without reuse {fmt_bytes(plan.get('sum_bytes'))}",
            markup=False,
        )
    for note in summary.get("input_notes", []):
        out.print(f"note: {note}", markup=False)


@app.command(name="passes")
@guard
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
