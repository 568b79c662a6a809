"""User data: ``.npz`` files and folders, calibration streams, and the feed dicts verification runs on."""

from __future__ import annotations

import logging
import os
import pathlib
from collections.abc import Iterable, Mapping, Sequence

import numpy as np
import onnx_ir as ir

from sftonnx.errors import InputError
from sftonnx.verify.inputs import (
    InputSpec,
    check_shape,
    input_specs,
    parse_input_shapes,
    resolve_shapes,
)
from sftonnx.verify.synthesis import synthesize_inputs

__all__ = ["MAX_VERIFY_SAMPLES", "RANDOM_SAMPLES", "batches", "calibration_feeds", "load_npz", "prepare_feeds"]

#: Samples of user data used for verification at most (in batches), to bound run time.
MAX_VERIFY_SAMPLES = 256
#: Random input sets used for verification when no data is given.
RANDOM_SAMPLES = 2

logger = logging.getLogger(__name__)


def load_npz(
    path: str | os.PathLike, specs: Sequence[InputSpec], *, allow_extra: Sequence[str] = ()
) -> dict[str, np.ndarray]:
    """Load user data: one array per model input (axis 0 = batch), checked against the input specs.

    Args:
        path: An ``.npz`` file.
        specs: The model's inputs.
        allow_extra: Keys that may be present besides the inputs (e.g. ``labels``).

    Raises:
        InputError: The file is missing or unreadable, an input is missing, or a shape/rank does not match.
    """
    path = pathlib.Path(path)
    if not path.is_file():
        raise InputError(f"data file not found: {path}")
    try:
        with np.load(path, allow_pickle=False) as archive:
            arrays = {key: archive[key] for key in archive.files}
    except Exception as error:  # zipfile/pickle/ValueError: not an npz we can read
        raise InputError(f"cannot read {path} as .npz: {error}") from None
    data: dict[str, np.ndarray] = {}
    for spec in specs:
        if spec.name not in arrays:
            raise InputError(
                f"{path.name} has no array for input '{spec.name}' (it has: {', '.join(arrays) or 'nothing'})"
            )
        array = arrays[spec.name]
        check_shape(array, spec, path.name)
        if array.dtype != spec.dtype:
            if np.dtype(array.dtype).kind != np.dtype(spec.dtype).kind and not (
                np.dtype(array.dtype).kind in "iu" and np.dtype(spec.dtype).kind in "iu"
            ):
                raise InputError(
                    f"{path.name}: '{spec.name}' has dtype {array.dtype}, the model expects {np.dtype(spec.dtype)}"
                )
            array = array.astype(spec.dtype)
        data[spec.name] = array
    unknown = set(arrays) - {s.name for s in specs} - set(allow_extra)
    if unknown:
        logger.warning(
            "%s: ignoring arrays that are not model inputs: %s", path.name, ", ".join(sorted(unknown))
        )
    sizes = {len(a) for a in data.values() if a.ndim}
    if len(sizes) > 1:
        raise InputError(f"{path.name}: inputs have different numbers of samples (axis 0): {sorted(sizes)}")
    for key in allow_extra:
        if key in arrays:
            data[key] = arrays[key]
    return data


def batches(
    data: Mapping[str, np.ndarray], names: Sequence[str], batch_size: int
) -> list[dict[str, np.ndarray]]:
    """Split user data along axis 0 into feed dicts of at most ``batch_size`` samples."""
    total = min(len(data[name]) for name in names) if names else 0
    return [{name: data[name][i : i + batch_size] for name in names} for i in range(0, total, batch_size)]


# --------------------------------------------------------------------------------------- calibration
def calibration_feeds(
    source: str | os.PathLike | Iterable[Mapping[str, np.ndarray]],
    specs: Sequence[InputSpec],
    *,
    batch_size: int = 16,
    max_samples: int | None = None,
) -> Iterable[dict[str, np.ndarray]]:
    """Stream calibration feed dicts from an ``.npz``, a folder of ``.npz`` files, or an iterable of dicts.

    Files are read one at a time and split into batches of ``batch_size`` along axis 0, so memory is bounded
    by one file plus one batch. Every array is checked against the input specs (names, rank, fixed dims).

    Raises:
        InputError: A missing file/folder, an empty folder, or arrays that do not match the inputs.
    """
    names = [spec.name for spec in specs]
    seen = 0

    def limited(feeds: Iterable[dict[str, np.ndarray]]) -> Iterable[dict[str, np.ndarray]]:
        nonlocal seen
        for feed in feeds:
            if max_samples is not None and seen >= max_samples:
                return
            count = len(next(iter(feed.values()))) if feed else 0
            if max_samples is not None and seen + count > max_samples:
                feed = {k: v[: max_samples - seen] for k, v in feed.items()}
                count = max_samples - seen
            seen += count
            yield feed

    if isinstance(source, (str, os.PathLike)):
        path = pathlib.Path(source)
        if path.is_dir():
            files = sorted(path.glob("*.npz"))
            if not files:
                raise InputError(f"calibration folder {path} holds no .npz files")
        elif path.is_file():
            files = [path]
        else:
            raise InputError(f"calibration data not found: {path}")

        def from_files() -> Iterable[dict[str, np.ndarray]]:
            for file in files:
                data = load_npz(file, specs, allow_extra=("labels",))
                yield from batches(data, names, batch_size)

        return limited(from_files())

    def from_iterable() -> Iterable[dict[str, np.ndarray]]:
        for index, feed in enumerate(source):  # type: ignore[union-attr]
            missing = [n for n in names if n not in feed]
            if missing:
                raise InputError(f"calibration batch {index} has no array for input(s) {', '.join(missing)}")
            batch = {}
            for spec in specs:
                array = np.asarray(feed[spec.name], dtype=spec.dtype)
                check_shape(array, spec, f"calibration batch {index}")
                batch[spec.name] = array
            yield batch

    return limited(from_iterable())


def prepare_feeds(
    model: ir.Model,
    *,
    data: str | os.PathLike | Mapping[str, np.ndarray] | None = None,
    input_shapes: Iterable[str] | Mapping[str, Sequence[int]] | None = None,
    max_samples: int = MAX_VERIFY_SAMPLES,
    random_samples: int = RANDOM_SAMPLES,
    seed: int = 0,
    allow_extra: Sequence[str] = ("labels",),
) -> tuple[list[dict[str, np.ndarray]], dict[str, tuple[int, ...]], list[str]]:
    """Feed dicts for running ``model``: user data split in batches, or seeded inputs synthesized to fit it.

    Without ``data``, inputs are synthesized by :func:`~sftonnx.verify.synthesis.synthesize_inputs`: dynamic
    dimensions resolved from weights (``input_shapes`` always win), integer inputs drawn from the ranges their
    consumers allow; the notes state every shape and range used.

    Returns:
        ``(feeds, concrete input shapes, notes on defaults used)``.

    Raises:
        InputError: Data or shapes that do not match the model's inputs.
    """
    specs = input_specs(model)
    overrides = parse_input_shapes(input_shapes)
    if data is None:
        resolve_shapes(specs, overrides)  # checks the overrides against the model
        synthesis = synthesize_inputs(model, specs, overrides, samples=random_samples, seed=seed)
        notes = [
            *synthesis.notes,
            f"verification inputs: {random_samples} synthesized sets (floats ~ N(0,1) unless stated above)",
        ]
        return synthesis.feeds, synthesis.shapes, notes
    if isinstance(data, (str, os.PathLike)):
        arrays = load_npz(data, specs, allow_extra=allow_extra)
    else:
        arrays = _check_mapping(data, specs)
    names = [s.name for s in specs]
    fixed_batch = {s.shape[0] for s in specs if s.shape and isinstance(s.shape[0], int)}
    batch = fixed_batch.pop() if len(fixed_batch) == 1 else 32
    limited = {k: v[:max_samples] for k, v in arrays.items() if k in names}
    feeds = batches(limited, names, batch)
    if not feeds:
        raise InputError("the data holds no samples")
    shapes = {name: tuple(feeds[0][name].shape) for name in names}
    total = len(next(iter(limited.values()))) if limited else 0
    notes = [f"verification inputs: {total} samples of user data in batches of {batch}"]
    return feeds, shapes, notes


def _check_mapping(
    data: Mapping[str, np.ndarray], specs: Sequence[InputSpec]
) -> dict[str, np.ndarray]:
    arrays = {}
    for spec in specs:
        if spec.name not in data:
            raise InputError(f"data has no array for input '{spec.name}'")
        array = np.asarray(data[spec.name])
        if spec.shape is not None and array.ndim != len(spec.shape):
            raise InputError(f"data '{spec.name}' has rank {array.ndim}, the model expects {spec.describe()}")
        arrays[spec.name] = array.astype(spec.dtype, copy=False)
    return arrays
