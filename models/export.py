"""Export the model zoo to ONNX, unoptimized, with a dynamic batch dimension, and verify it in onnxruntime.

``python -m models.export NAME [NAME ...|all] --out-dir models/onnx --opset 18``

Exports use ``torch.onnx.export(..., dynamo=True, optimize=False)``: torch 2.13 optimizes by default, which
already folds Conv+BatchNormalization and hides exactly what sftonnx's passes must find. Exported onnxscript
functions are inlined so the files hold standard ops only, and every file is checked: onnx checker, no
custom (``pkg.*``) domains, a symbolic batch dimension, and onnxruntime outputs within 1e-4 of torch.
"""

from __future__ import annotations

import argparse
import collections
import dataclasses
import logging
import os
import pathlib
import sys
import tempfile
import warnings
from collections.abc import Sequence

import numpy as np
import onnx
import onnx_ir as ir
import onnx_ir.passes.common as ir_common
import onnxruntime as ort
import torch

import models
from models import nets

__all__ = ["ExportCheck", "check", "export", "export_checked", "export_module", "main", "quiet_exporter"]

BATCH_DIM = "batch"
MAX_ABS_DIFF = 1e-4
_STACK_TRACE = "pkg.torch.onnx.stack_trace"


@dataclasses.dataclass(frozen=True)
class ExportCheck:
    """Facts about an exported file, gathered by :func:`check`.

    Attributes:
        path: The ONNX file.
        nodes: Node count of the main graph.
        size: File size in bytes.
        max_abs_diff: Largest |onnxruntime - torch| over all outputs and checked batch sizes.
        op_types: Op histogram of the main graph.
    """

    path: pathlib.Path
    nodes: int
    size: int
    max_abs_diff: float
    op_types: dict[str, int]

    def __str__(self) -> str:
        return (
            f"{self.path.stem:<12} {self.nodes:5d} nodes {self.size / 1e6:7.2f} MB  "
            f"max|ort-torch| {self.max_abs_diff:.2e}  {self.path}"
        )


def _to_standard_ops(model: ir.Model) -> None:
    """Inline onnxscript functions, drop source paths, and fail on any op outside the standard domains."""
    if model.functions:
        ir_common.InlinePass()(model)
    ir_common.RemoveUnusedOpsetsPass()(model)
    domains = set(model.opset_imports)
    for node in ir.traversal.RecursiveGraphIterator(model.graph):
        domains.add(node.domain)
        # Absolute paths and line numbers: they would make the files differ between checkouts and edits.
        node.metadata_props.pop(_STACK_TRACE, None)
    custom = sorted(d for d in domains if d not in ("", "ai.onnx"))
    if custom or model.functions:
        raise RuntimeError(f"export left custom domains {custom} / {len(model.functions)} functions")


def export_module(
    module: torch.nn.Module,
    example_inputs: tuple[torch.Tensor, ...],
    path: str | os.PathLike[str],
    *,
    input_names: Sequence[str],
    output_names: Sequence[str],
    opset: int = models.DEFAULT_OPSET,
) -> pathlib.Path:
    """Export ``module`` (in eval mode) with a dynamic first dimension on every input; write atomically.

    Args:
        module: The net; it is switched to eval mode.
        example_inputs: Example positional inputs, batch size >= 2 (1 would be specialised by torch.export).
        path: Destination ``.onnx`` file; its directory is created.
        input_names: ONNX names of the inputs.
        output_names: ONNX names of the outputs.
        opset: Target opset of the default domain.

    Returns:
        The written path.
    """
    module.eval()
    batch = torch.export.Dim(BATCH_DIM, min=1, max=65536)
    dynamic_shapes = tuple({0: batch} for _ in example_inputs)
    program = torch.onnx.export(
        module,
        example_inputs,
        dynamo=True,
        optimize=False,
        opset_version=opset,
        input_names=list(input_names),
        output_names=list(output_names),
        dynamic_shapes=dynamic_shapes,
        verbose=False,
    )
    if program is None:  # pragma: no cover - dynamo=True always returns a program
        raise RuntimeError("torch.onnx.export returned no program")
    model = program.model
    _to_standard_ops(model)
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # Atomic: tests and benchmarks may call models.ensure() concurrently.
    fd, tmp = tempfile.mkstemp(suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        ir.save(model, tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return path


def _session(path: pathlib.Path) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.log_severity_level = 3
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def check(
    path: str | os.PathLike[str],
    module: torch.nn.Module,
    inputs: Sequence[tuple[torch.Tensor, ...]],
    *,
    atol: float = MAX_ABS_DIFF,
) -> ExportCheck:
    """Check an exported file against its torch module.

    Args:
        path: The ONNX file.
        module: The net it was exported from, in eval mode.
        inputs: Input tuples to compare on (use several batch sizes to exercise the dynamic batch).
        atol: Largest allowed |onnxruntime - torch|.

    Returns:
        Node count, size, op histogram and the largest difference seen.

    Raises:
        RuntimeError: If the checker fails, a custom domain is present, an input has a fixed batch dimension,
            or outputs differ by more than ``atol``.
    """
    path = pathlib.Path(path)
    proto = onnx.load(str(path))
    onnx.checker.check_model(proto, full_check=True)
    custom = sorted(o.domain for o in proto.opset_import if o.domain not in ("", "ai.onnx"))
    custom += sorted({n.domain for n in proto.graph.node if n.domain not in ("", "ai.onnx")})
    if custom or proto.functions:
        raise RuntimeError(f"{path}: custom domains {custom}, {len(proto.functions)} functions")
    for value in proto.graph.input:
        first = value.type.tensor_type.shape.dim[0]
        if first.HasField("dim_value") or not first.dim_param:
            raise RuntimeError(f"{path}: input {value.name!r} has no symbolic batch dimension")
    session = _session(path)
    names = [i.name for i in session.get_inputs()]
    worst = 0.0
    with torch.no_grad():
        for args in inputs:
            expected = module(*args)
            expected = expected if isinstance(expected, tuple) else (expected,)
            actual = session.run(None, {n: a.numpy() for n, a in zip(names, args, strict=True)})
            for want, got in zip(expected, actual, strict=True):
                if tuple(want.shape) != got.shape:
                    raise RuntimeError(f"{path}: output shape {got.shape}, torch gives {tuple(want.shape)}")
                worst = max(worst, float(np.max(np.abs(want.numpy() - got))))
    if not worst < atol:
        raise RuntimeError(f"{path}: onnxruntime differs from torch by {worst:.3g} (limit {atol:g})")
    ops = dict(collections.Counter(node.op_type for node in proto.graph.node))
    return ExportCheck(path, len(proto.graph.node), path.stat().st_size, worst, ops)


def _sample_inputs(name: str, batch: int, seed: int) -> tuple[torch.Tensor, ...]:
    spec = models.MODELS[name]
    generator = torch.Generator().manual_seed(seed)
    if spec.dtype == "int64":
        return (torch.randint(0, spec.high, (batch, *spec.shape), generator=generator),)
    return (torch.randn((batch, *spec.shape), generator=generator),)


def export_checked(
    name: str,
    out_dir: str | os.PathLike[str] = models.DEFAULT_OUT_DIR,
    opset: int = models.DEFAULT_OPSET,
    *,
    seed: int = 0,
) -> ExportCheck:
    """Build, export and verify one registered net as ``out_dir/<name>.onnx`` (batch sizes 1 and 3).

    Args:
        name: A key of ``models.MODELS``.
        out_dir: Output directory (created if needed).
        opset: Target opset.
        seed: Seed of the weights, BatchNorm statistics and inputs; the same seed gives the same file.

    Returns:
        What :func:`check` found.
    """
    spec = models.MODELS[name]
    module, example = nets.build(name, seed=seed)
    path = export_module(
        module,
        example,
        pathlib.Path(out_dir) / f"{name}.onnx",
        input_names=[spec.input_name],
        output_names=spec.output_names,
        opset=opset,
    )
    return check(path, module, [_sample_inputs(name, batch, seed + 2) for batch in (1, 3)])


def export(
    name: str,
    out_dir: str | os.PathLike[str] = models.DEFAULT_OUT_DIR,
    opset: int = models.DEFAULT_OPSET,
    *,
    seed: int = 0,
) -> pathlib.Path:
    """Export and verify one registered net; see :func:`export_checked`.

    Returns:
        Path of the ONNX file, ``out_dir/<name>.onnx``.
    """
    return export_checked(name, out_dir, opset, seed=seed).path


def quiet_exporter() -> None:
    """Silence the exporter's harmless chatter (missing torchvision ops, pytree deprecations) in scripts."""
    logging.getLogger("torch.onnx").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", category=DeprecationWarning)


def main(argv: Sequence[str] | None = None) -> int:
    """Command line entry point; prints one line per exported model."""
    parser = argparse.ArgumentParser(prog="python -m models.export", description=__doc__.splitlines()[0])
    parser.add_argument(
        "names", nargs="+", metavar="NAME", help=f"'all' or any of {', '.join(models.MODELS)}"
    )
    parser.add_argument("--out-dir", type=pathlib.Path, default=models.DEFAULT_OUT_DIR)
    parser.add_argument("--opset", type=int, default=models.DEFAULT_OPSET)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    names = list(models.MODELS) if "all" in args.names else args.names
    unknown = [n for n in names if n not in models.MODELS]
    if unknown:
        parser.error(f"unknown model(s) {', '.join(unknown)}; known: {', '.join(models.MODELS)}")
    quiet_exporter()
    for name in names:
        print(export_checked(name, args.out_dir, args.opset, seed=args.seed), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
