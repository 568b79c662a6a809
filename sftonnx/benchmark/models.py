"""Models to benchmark or compare: signature and size, feeds fitted to each model, the timed feed dict."""

from __future__ import annotations

import dataclasses
import os
import pathlib
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import onnx_ir as ir

from sftonnx import io
from sftonnx import verify as verification
from sftonnx.errors import InputError

__all__ = ["ModelEntry", "check_same_signature", "fit_feeds", "load_entry", "timing_feeds", "unique_labels"]


@dataclasses.dataclass
class ModelEntry:
    """A model to benchmark or compare: where ORT reads it from, and its signature."""

    label: str
    model: str
    source: str | bytes
    specs: list[verification.InputSpec]
    outputs: list[str]
    size: int | None


def load_entry(model: io.ModelSource, label: str | None = None, *, loaded: ir.Model | None = None) -> ModelEntry:
    """Load a model's signature and size; ORT will read it from its file (external data included).

    Args:
        model: A model file, bytes, ``ModelProto`` or ``onnx_ir.Model``.
        label: Its name in tables (default: the file stem).
        loaded: ``model`` already loaded with :func:`sftonnx.io.load` (saves parsing it again).

    Raises:
        InputError: The model cannot be loaded or has inputs sftonnx cannot feed.
    """
    if isinstance(model, (str, os.PathLike)):
        path = pathlib.Path(model)
        loaded = loaded if loaded is not None else io.load(path)
        return ModelEntry(
            label or path.stem,
            str(path),
            str(path),
            verification.input_specs(loaded),
            [v.name or "" for v in loaded.graph.outputs],
            _file_size(path, loaded),
        )
    loaded = loaded if loaded is not None else io.load(model)
    source = bytes(model) if isinstance(model, (bytes, bytearray)) else io.to_bytes(loaded)
    return ModelEntry(
        label or "model",
        "<bytes>" if isinstance(model, (bytes, bytearray)) else "<model>",
        source,
        verification.input_specs(loaded),
        [v.name or "" for v in loaded.graph.outputs],
        len(source),
    )


def _file_size(path: pathlib.Path, model: ir.Model) -> int:
    size = path.stat().st_size
    seen: set[pathlib.Path] = set()
    for graph in (model.graph, *model.graph.subgraphs()):
        for value in graph.initializers.values():
            tensor = value.const_value
            if isinstance(tensor, ir.ExternalTensor):
                data = pathlib.Path(tensor.path)
                if data not in seen and data.is_file():
                    seen.add(data)
                    size += data.stat().st_size
    return size


def unique_labels(models: Sequence[io.ModelSource]) -> list[str]:
    """File stems (``parent/stem`` where stems repeat, ``#n`` if still equal); ``modelN`` for in-memory ones."""
    labels = []
    for index, model in enumerate(models):
        if isinstance(model, (str, os.PathLike)):
            labels.append(pathlib.Path(model).stem)
        else:
            labels.append(f"model{index + 1}")
    for index, model in enumerate(models):
        if labels.count(labels[index]) > 1 and isinstance(model, (str, os.PathLike)):
            path = pathlib.Path(model)
            labels[index] = f"{path.parent.name}/{path.stem}" if path.parent.name else path.stem
    seen: dict[str, int] = {}
    for index, label in enumerate(labels):
        seen[label] = seen.get(label, 0) + 1
        if seen[label] > 1:
            labels[index] = f"{label}#{seen[label]}"
    return labels


def check_same_signature(reference: ModelEntry, candidate: ModelEntry, *, outputs: bool = True) -> None:
    """Both models take the same inputs (and give the same outputs), by name.

    Raises:
        InputError: The input (or output) names or counts differ.
    """
    kinds = [("inputs", [s.name for s in reference.specs], [s.name for s in candidate.specs])]
    if outputs:
        kinds.append(("outputs", reference.outputs, candidate.outputs))
    for kind, ref, cand in kinds:
        if sorted(ref) != sorted(cand):
            raise InputError(
                f"{candidate.label} and {reference.label} have different {kind}: "
                f"{len(cand)} ({', '.join(cand) or 'none'}) vs {len(ref)} ({', '.join(ref) or 'none'})"
            )


def fit_feeds(entry: ModelEntry, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The feeds checked against a model's rank and fixed dims, cast to its input dtypes."""
    fitted = {}
    for spec in entry.specs:
        array = feeds[spec.name]
        verification.check_shape(array, spec, entry.label)
        fitted[spec.name] = array.astype(spec.dtype, copy=False)
    return fitted


def timing_feeds(
    specs: Sequence[verification.InputSpec],
    *,
    data: str | os.PathLike | Mapping[str, np.ndarray] | None,
    input_shapes: Any,
    batch: int | None,
    seed: int = 0,
) -> tuple[dict[str, np.ndarray], int, list[str]]:
    """One feed dict for the timed runs: the first ``batch`` samples of the data, or random inputs."""
    fixed = {s.shape[0] for s in specs if s.shape and isinstance(s.shape[0], int)}
    if data is not None:
        if isinstance(data, (str, os.PathLike)):
            arrays = verification.load_npz(data, specs, allow_extra=("labels",))
            where = pathlib.Path(data).name
        else:
            missing = [s.name for s in specs if s.name not in data]
            if missing:
                raise InputError(f"data has no array for input(s) {', '.join(missing)}")
            arrays = {s.name: np.asarray(data[s.name]) for s in specs}
            where = "the data"
        size = batch or (fixed.pop() if len(fixed) == 1 else 1)
        feeds = {}
        for spec in specs:
            array = arrays[spec.name]
            if array.ndim == 0:
                feeds[spec.name] = array
                continue
            if len(array) < size:
                raise InputError(f"{where}: '{spec.name}' has {len(array)} samples, the batch needs {size}")
            feeds[spec.name] = array[:size]
        return feeds, size, [f"inputs: the first {size} sample(s) of {where}, the same for every model"]
    overrides = verification.parse_input_shapes(input_shapes)
    shapes, notes = verification.resolve_shapes(specs, overrides)
    if batch is not None:
        for spec in specs:
            if spec.name in overrides or not spec.shape:
                continue
            if isinstance(spec.shape[0], int):
                if spec.shape[0] != batch:
                    raise InputError(
                        f"--batch {batch}: input '{spec.name}' has a fixed batch dimension of {spec.shape[0]} "
                        f"({spec.describe()})"
                    )
                continue
            shapes[spec.name] = (batch, *shapes[spec.name][1:])
            notes = [n for n in notes if not n.startswith(f"{spec.name}: dynamic dimension 0 ")]
            notes.append(f"{spec.name}: batch dimension set to {batch} (--batch)")
    feeds = verification.random_feeds(specs, shapes, seed=seed)
    firsts = {shape[0] for shape in shapes.values() if shape}
    size = batch or (firsts.pop() if len(firsts) == 1 else 1)
    notes.append("inputs: one random set (floats ~ N(0,1), integers in [0,8)), the same for every model")
    return feeds, size, notes
