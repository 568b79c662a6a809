"""User data: ``.npz`` files and folders, calibration streams, and the feed dicts verification runs on.

User data (``--data`` and ``--calibration-data`` alike) is one ``.npz`` or a folder of ``.npz`` files:

- A folder means one feed per file, used as it is: no axis is assumed to be a batch, and files may differ in
  shape (text lines of different widths, a recurrent state ``[2, 1, 128]`` next to a frame).
- One ``.npz`` is split along axis 0 in batches (axis 0 = samples) when every input has the same number of
  rows; when its arrays cannot be split consistently (a scalar input, a state whose axis 0 is not the batch),
  it is one feed, used as it is, and the notes say so.

With calibration data and no ``--data``, :func:`hold_out` sets aside the last quarter of the calibration
samples (files of a folder, rows of one ``.npz``, feed dicts of an iterable) for verification when that
makes at least :data:`MIN_HELD_OUT` feeds/samples; the calibrating passes get only the rest.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import pathlib
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any

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

__all__ = [
    "HELD_OUT_FRACTION",
    "MAX_VERIFY_SAMPLES",
    "MIN_HELD_OUT",
    "RANDOM_SAMPLES",
    "DataPart",
    "HeldOut",
    "batches",
    "calibration_feeds",
    "hold_out",
    "load_npz",
    "model_shapes",
    "prepare_feeds",
    "read_feeds",
    "stack_feeds",
    "stackable",
]

#: Samples of user data used for verification at most (in batches), to bound run time.
MAX_VERIFY_SAMPLES = 256
#: Random input sets used for verification when no data is given.
RANDOM_SAMPLES = 2
#: Share of the calibration samples held out for verification when no ``--data`` is given.
HELD_OUT_FRACTION = 0.25
#: Fewest held-out feeds/samples worth verifying on; with fewer, verification uses all calibration samples.
MIN_HELD_OUT = 2

logger = logging.getLogger(__name__)


def load_npz(
    path: str | os.PathLike, specs: Sequence[InputSpec], *, allow_extra: Sequence[str] = (), stacked: bool = True
) -> dict[str, np.ndarray]:
    """Load user data: one array per model input, checked against the input specs (rank, fixed dims, dtype).

    Axis 0 is not assumed to be a batch here: :func:`read_feeds` decides how the arrays become feeds.

    Args:
        path: An ``.npz`` file.
        specs: The model's inputs.
        allow_extra: Keys that may be present besides the inputs (e.g. ``labels``).
        stacked: The file may hold samples along axis 0 (fed in batches of a fixed batch size of 1); false for
            a file that is one feed as it is (a folder's file).

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
        check_shape(array, spec, path.name, stacked=stacked)
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
    for key in allow_extra:
        if key in arrays:
            data[key] = arrays[key]
    return data


def stackable(feeds: Sequence[Mapping[str, np.ndarray]]) -> bool:
    """Whether the feeds concatenate along axis 0.

    Each feed must hold the first feed's inputs, of rank >= 1, with equal trailing dims (the batch axis may differ).
    """
    if not feeds:
        return False
    first = {name: np.asarray(value) for name, value in feeds[0].items()}
    for feed in feeds:
        for name, reference in first.items():
            if name not in feed:
                return False
            array = np.asarray(feed[name])
            if array.ndim == 0 or reference.ndim == 0 or array.shape[1:] != reference.shape[1:]:
                return False
    return True


def stack_feeds(feeds: Sequence[Mapping[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """Feed dicts concatenated along axis 0, one array per input of the first feed (check :func:`stackable`)."""
    return {name: np.concatenate([np.asarray(f[name]) for f in feeds]) for name in feeds[0]}


def batches(
    data: Mapping[str, np.ndarray], names: Sequence[str], batch_size: int
) -> list[dict[str, np.ndarray]]:
    """Split user data along axis 0 into feed dicts of at most ``batch_size`` samples."""
    total = min(len(data[name]) for name in names) if names else 0
    return [{name: data[name][i : i + batch_size] for name in names} for i in range(0, total, batch_size)]


# --------------------------------------------------------------------------------------- reading data
@dataclasses.dataclass(frozen=True)
class DataPart:
    """A part of user data on disk: some files of a folder, or samples ``[start, stop)`` (axis 0) of one ``.npz``.

    Attributes:
        path: The folder or ``.npz`` file.
        files: For a folder, the files in this part (one feed each); ``None`` for one ``.npz``.
        start: First sample (axis 0) of one ``.npz``.
        stop: End of the samples (exclusive) of one ``.npz``; ``None``: to the end.
    """

    path: pathlib.Path
    files: tuple[pathlib.Path, ...] | None = None
    start: int = 0
    stop: int | None = None

    def describe(self) -> str:
        """E.g. ``files 6-8 of 8 in calib/ (f6.npz, f7.npz)`` or ``samples 12-15 of calib.npz``."""
        if self.files is not None:
            names = [f.name for f in self.files]
            shown = ", ".join(names) if len(names) <= 4 else f"{names[0]} ... {names[-1]}"
            return f"{len(names)} file(s) of {self.path} ({shown})"
        stop = "end" if self.stop is None else str(self.stop - 1)
        return f"samples {self.start}..{stop} (axis 0) of {self.path}"


def _npz_files(path: pathlib.Path, what: str) -> tuple[list[pathlib.Path], bool]:
    """The ``.npz`` files of a data path and whether it is a folder."""
    if path.is_dir():
        files = sorted(path.glob("*.npz"))
        if not files:
            raise InputError(f"{what} folder {path} holds no .npz files")
        return files, True
    if path.is_file():
        return [path], False
    raise InputError(f"{what} not found: {path}")


def _split(
    arrays: Mapping[str, np.ndarray], specs: Sequence[InputSpec], batch_size: int
) -> list[dict[str, np.ndarray]] | None:
    """Batches along axis 0 when every input has the same number of rows; ``None`` when they cannot be split.

    A fixed first dimension (the same for every input that has one) sets the batch size.
    """
    names = [spec.name for spec in specs]
    if not names:
        return [{}]
    sizes = {arrays[name].shape[0] if arrays[name].ndim else None for name in names}
    if None in sizes or len(sizes) != 1:
        return None
    fixed = {spec.shape[0] for spec in specs if spec.shape and isinstance(spec.shape[0], int)}
    if len(fixed) > 1:
        return None
    size = fixed.pop() if fixed else batch_size
    total = sizes.pop()
    if total % size and fixed:
        return None
    return [{name: arrays[name][i : i + size] for name in names} for i in range(0, total, size)]


def read_feeds(
    source: str | os.PathLike | DataPart,
    specs: Sequence[InputSpec],
    *,
    batch_size: int = 16,
    what: str = "data",
    notes: list[str] | None = None,
) -> Iterator[tuple[dict[str, np.ndarray], int]]:
    """Stream ``(feed dict, samples it holds)`` from an ``.npz``, a folder of ``.npz`` files or a part of one.

    A folder gives one feed per file, used as it is (counted as one sample); one ``.npz`` is split along
    axis 0 in batches of ``batch_size`` when its arrays can be split consistently, else it is one feed (a
    note says so). Files are read one at a time, so memory is bounded by one file.

    Raises:
        InputError: A missing file/folder, an empty folder, or arrays that do not match the inputs.
    """
    names = [spec.name for spec in specs]
    part = source if isinstance(source, DataPart) else None
    path = part.path if part is not None else pathlib.Path(source)  # type: ignore[arg-type]
    if part is not None and part.files is not None:
        files, folder = list(part.files), True
    else:
        files, folder = _npz_files(path, what)

    def generate() -> Iterator[tuple[dict[str, np.ndarray], int]]:
        for file in files:
            arrays = load_npz(file, specs, allow_extra=("labels",), stacked=not folder)
            if folder:
                yield {name: arrays[name] for name in names}, 1
                continue
            if part is not None:
                arrays = {name: arrays[name][part.start : part.stop] for name in names}
            split = _split(arrays, specs, batch_size)
            if split is None:
                sizes = ", ".join(f"{name} {list(arrays[name].shape)}" for name in names)
                message = (
                    f"{file.name}: its arrays cannot be split along axis 0 consistently ({sizes}), "
                    "so it is one feed, used as it is"
                )
                if notes is not None:
                    notes.append(message)
                logger.info("%s", message)
                yield {name: arrays[name] for name in names}, 1
                continue
            for feed in split:
                yield feed, (len(next(iter(feed.values()))) if feed else 1)

    return generate()


def _check_feed(feed: Mapping[str, np.ndarray], specs: Sequence[InputSpec], label: str) -> dict[str, np.ndarray]:
    missing = [spec.name for spec in specs if spec.name not in feed]
    if missing:
        raise InputError(f"{label} has no array for input(s) {', '.join(missing)}")
    checked = {}
    for spec in specs:
        array = np.asarray(feed[spec.name], dtype=spec.dtype)
        check_shape(array, spec, label)
        checked[spec.name] = array
    return checked


# --------------------------------------------------------------------------------------- calibration
def calibration_feeds(
    source: str | os.PathLike | DataPart | Iterable[Mapping[str, np.ndarray]],
    specs: Sequence[InputSpec],
    *,
    batch_size: int = 16,
    max_samples: int | None = None,
) -> Iterable[dict[str, np.ndarray]]:
    """Stream calibration feed dicts from an ``.npz``, a folder of ``.npz`` files, a part of one, or dicts.

    A folder gives one feed per file as it is (files may differ in shape; no axis is taken for a batch);
    one ``.npz`` is split in batches of ``batch_size`` along axis 0 when its arrays allow it (see
    :func:`read_feeds`). Every array is checked against the input specs (names, rank, fixed dims).
    ``max_samples`` counts rows of a split ``.npz`` and one per file of a folder or per feed dict as is.

    Raises:
        InputError: A missing file/folder, an empty folder, or arrays that do not match the inputs.
    """
    seen = 0

    def limited(feeds: Iterable[tuple[dict[str, np.ndarray], int]]) -> Iterable[dict[str, np.ndarray]]:
        nonlocal seen
        for feed, count in feeds:
            if max_samples is not None and seen >= max_samples:
                return
            if max_samples is not None and seen + count > max_samples and count > 1:
                feed = {k: v[: max_samples - seen] for k, v in feed.items()}
                count = max_samples - seen
            seen += count
            yield feed

    if isinstance(source, (str, os.PathLike, DataPart)):
        return limited(read_feeds(source, specs, batch_size=batch_size, what="calibration data"))

    def from_iterable() -> Iterable[tuple[dict[str, np.ndarray], int]]:
        for index, feed in enumerate(source):  # type: ignore[union-attr]
            batch = _check_feed(feed, specs, f"calibration batch {index}")
            first = next(iter(batch.values()), None)
            yield batch, (len(first) if first is not None and first.ndim else 1)

    return limited(from_iterable())


@dataclasses.dataclass
class HeldOut:
    """Calibration data split for a run without ``--data``.

    Attributes:
        calibration: What the calibrating passes get (a :class:`DataPart`, a list of feed dicts, or the
            source itself when nothing is held out).
        verification: What verification runs on (a :class:`DataPart`, a list of feed dicts, or the source).
        held_out: Whether the verification samples are disjoint from the calibration samples.
        notes: What was held out, for the report.
    """

    calibration: Any
    verification: Any
    held_out: bool
    notes: list[str]


def hold_out(
    source: str | os.PathLike | Iterable[Mapping[str, np.ndarray]],
    *,
    fraction: float = HELD_OUT_FRACTION,
    minimum: int = MIN_HELD_OUT,
) -> HeldOut:
    """Set aside the last ``fraction`` of calibration samples for verification, if that makes ``minimum``.

    Units: files of a folder, rows (axis 0) of one ``.npz`` whose arrays share their first dimension, feed
    dicts of an iterable. With too few (or one ``.npz`` that cannot be split), verification runs on the
    calibration samples themselves, and the notes say so.

    Raises:
        InputError: A missing or unreadable file or folder.
    """
    if isinstance(source, (str, os.PathLike)):
        path = pathlib.Path(source)
        files, folder = _npz_files(path, "calibration data")
        if folder:
            total = len(files)
            unit = "files"
        else:
            try:
                with np.load(path, allow_pickle=False) as archive:
                    sizes = {archive[k].shape[0] if archive[k].ndim else None for k in archive.files if k != "labels"}
            except Exception as error:  # zipfile/pickle/ValueError: not an npz we can read
                raise InputError(f"cannot read {path} as .npz: {error}") from None
            total = sizes.pop() if len(sizes) == 1 and None not in sizes else 1
            unit = "samples"
        held = int(total * fraction)
        if held < minimum:
            return HeldOut(source, source, False, [_in_sample_note(f"{path}", total, unit, minimum, fraction)])
        if folder:
            calibrate = DataPart(path, files=tuple(files[: total - held]))
            verifying = DataPart(path, files=tuple(files[total - held :]))
        else:
            calibrate = DataPart(path, start=0, stop=total - held)
            verifying = DataPart(path, start=total - held, stop=total)
        return HeldOut(calibrate, verifying, True, [_held_note(verifying.describe(), calibrate.describe())])
    feeds = [dict(feed) for feed in source]
    total = len(feeds)
    held = int(total * fraction)
    if held < minimum:
        note = _in_sample_note("the calibration feeds", total, "feeds", minimum, fraction)
        return HeldOut(feeds, feeds, False, [note])
    return HeldOut(
        feeds[: total - held],
        feeds[total - held :],
        True,
        [_held_note(f"calibration feeds {total - held}..{total - 1}", f"feeds 0..{total - held - 1}")],
    )


def _held_note(verifying: str, calibrating: str) -> str:
    return (
        f"verification inputs: held-out calibration data, {verifying}; "
        f"the calibrating passes see only {calibrating}"
    )


def _in_sample_note(where: str, total: int, unit: str, minimum: int, fraction: float) -> str:
    return (
        f"verification inputs: the calibration data itself ({where}: {total} {unit}, too few to hold out "
        f"{minimum} as the last {fraction:.0%}); the check is in-sample"
    )


def prepare_feeds(
    model: ir.Model,
    *,
    data: str | os.PathLike | DataPart | Mapping[str, np.ndarray] | Sequence[Mapping[str, np.ndarray]] | None = None,
    input_shapes: Iterable[str] | Mapping[str, Sequence[int]] | None = None,
    max_samples: int = MAX_VERIFY_SAMPLES,
    random_samples: int = RANDOM_SAMPLES,
    seed: int = 0,
    allow_extra: Sequence[str] = ("labels",),
) -> tuple[list[dict[str, np.ndarray]], dict[str, tuple[int, ...]], list[str]]:
    """Feed dicts for running ``model``: user data, or seeded inputs synthesized to fit it.

    ``data`` is an ``.npz`` (split in batches along axis 0 when its arrays allow it, else one feed), a folder
    of ``.npz`` files (one feed per file, as is; at most ``max_samples`` files), a :class:`DataPart`, a
    mapping of arrays (axis 0 = batch) or a list of feed dicts (used as they are). Without ``data``, inputs
    are synthesized by :func:`~sftonnx.verify.synthesis.synthesize_inputs`: dynamic dimensions resolved from
    weights (``input_shapes`` always win), integer inputs drawn from the ranges their consumers allow; the
    notes state every shape and range used.

    Returns:
        ``(feeds, input shapes of the first feed, notes on what the inputs are)``.

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
    names = [s.name for s in specs]
    notes: list[str] = []
    if isinstance(data, (str, os.PathLike, DataPart)):
        label = data.describe() if isinstance(data, DataPart) else str(data)
        feeds, samples = [], 0
        for feed, count in read_feeds(data, specs, batch_size=_batch_size(specs), notes=notes):
            if samples >= max_samples:
                break
            if count > 1 and samples + count > max_samples:
                feed, count = {k: v[: max_samples - samples] for k, v in feed.items()}, max_samples - samples
            feeds.append(feed)
            samples += count
        as_is = data.files is not None if isinstance(data, DataPart) else pathlib.Path(data).is_dir()
        described = (
            f"{len(feeds)} feed(s) of user data ({label}), one per file, used as they are"
            if as_is
            else f"{samples} samples of user data ({label}) in {len(feeds)} feed(s)"
        )
        notes.append(f"verification inputs: {described}")
    elif isinstance(data, Mapping):
        arrays = _check_mapping(data, specs)
        limited = {k: v[:max_samples] if v.ndim else v for k, v in arrays.items() if k in names}
        split = _split(limited, specs, _batch_size(specs))
        if split is None:
            feeds = [limited]
            notes.append("verification inputs: the data as one feed (its arrays cannot be split along axis 0)")
        else:
            feeds = split
            total = len(next(iter(limited.values()))) if limited else 0
            notes.append(f"verification inputs: {total} samples of user data in {len(feeds)} batch(es)")
    else:
        feeds = [_check_feed(feed, specs, f"data feed {i}") for i, feed in enumerate(data)][:max_samples]
        notes.append(f"verification inputs: {len(feeds)} feed dict(s), used as they are")
    if not feeds:
        raise InputError("the data holds no samples")
    shapes = {name: tuple(feeds[0][name].shape) for name in names}
    return feeds, shapes, notes


def _batch_size(specs: Sequence[InputSpec]) -> int:
    fixed_batch = {s.shape[0] for s in specs if s.shape and isinstance(s.shape[0], int)}
    return fixed_batch.pop() if len(fixed_batch) == 1 else 32


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


def model_shapes(
    model: ir.Model,
    input_shapes: Iterable[str] | Mapping[str, Sequence[int]] | None = None,
    *,
    trial_run: bool = False,
) -> tuple[dict[str, tuple[int, ...]], list[str]]:
    """Concrete single-sample input shapes for statistics (MACs, memory), resolved from the graph.

    The same resolution as the synthesized verification inputs (``input_shapes`` win, then the weights, then
    batch 1 / length 32), so statistics before and after a pipeline, and of ``inspect``, agree with what
    verification ran. ``trial_run`` also runs the model to try longer lengths when the defaults do not fit.

    Raises:
        InputError: ``input_shapes`` that do not match the model's inputs.
    """
    specs = input_specs(model)
    overrides = parse_input_shapes(input_shapes)
    resolve_shapes(specs, overrides)  # checks the overrides against the model
    synthesis = synthesize_inputs(model, specs, overrides, samples=1 if trial_run else 0, trial_run=trial_run)
    return synthesis.shapes, synthesis.notes
