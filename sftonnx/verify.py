"""Numerical verification: sample inputs, onnxruntime runs, and output metrics.

The optimized model is run against the original on the same inputs: random ones built from the model's
input specs (dynamic dimensions filled from ``--input-shape`` or the defaults below, which the report
states), or user data from an ``.npz`` file (keys = input names, axis 0 = batch).

Default tolerance for lossless (EXACT) passes: every element must satisfy
``|optimized - original| <= atol + rtol * |original|`` with ``atol = 1e-4`` and ``rtol = 1e-3``
(float32 re-association in folded weights stays well inside it). Lossy (APPROXIMATE) passes are held to a
budget: cosine similarity ``>= 0.99`` per output by default, and optionally max abs error and top-1
agreement.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import pathlib
import re
import tempfile
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np
import onnx
import onnx_ir as ir

from sftonnx.errors import InputError
from sftonnx.io import PROTOBUF_LIMIT, model_nbytes, to_bytes

__all__ = [
    "DEFAULT_ATOL",
    "DEFAULT_BATCH",
    "DEFAULT_DYNAMIC_DIM",
    "DEFAULT_MIN_COSINE",
    "DEFAULT_RTOL",
    "Budget",
    "Comparison",
    "InputSpec",
    "OutputMetrics",
    "Tolerance",
    "calibration_feeds",
    "check_shape",
    "compare_outputs",
    "find_first_divergence",
    "input_specs",
    "load_npz",
    "make_session",
    "parse_input_shapes",
    "random_feeds",
    "resolve_shapes",
    "run_model",
    "session_source",
]

logger = logging.getLogger(__name__)

DEFAULT_ATOL = 1e-4
DEFAULT_RTOL = 1e-3
DEFAULT_MIN_COSINE = 0.99
#: Symbolic first (batch) dimension, when no ``--input-shape`` names it.
DEFAULT_BATCH = 1
#: Any other symbolic dimension (sequence length, image side), when no ``--input-shape`` names it.
DEFAULT_DYNAMIC_DIM = 32

_NP_DTYPES = {
    ir.DataType.FLOAT: np.float32,
    ir.DataType.DOUBLE: np.float64,
    ir.DataType.FLOAT16: np.float16,
    ir.DataType.INT64: np.int64,
    ir.DataType.INT32: np.int32,
    ir.DataType.INT16: np.int16,
    ir.DataType.INT8: np.int8,
    ir.DataType.UINT8: np.uint8,
    ir.DataType.UINT16: np.uint16,
    ir.DataType.UINT32: np.uint32,
    ir.DataType.UINT64: np.uint64,
    ir.DataType.BOOL: np.bool_,
}


# --------------------------------------------------------------------------------------------- inputs
@dataclasses.dataclass(frozen=True)
class InputSpec:
    """A graph input that must be fed: name, numpy dtype and shape (``str``/``None`` for symbolic dims)."""

    name: str
    dtype: np.dtype
    shape: tuple[int | str | None, ...] | None

    def describe(self) -> str:
        """E.g. ``input float32[batch,3,224,224]``."""
        dims = "?" if self.shape is None else ",".join("?" if d is None else str(d) for d in self.shape)
        return f"{self.name} {np.dtype(self.dtype).name}[{dims}]"


def input_specs(model: ir.Model) -> list[InputSpec]:
    """The inputs a caller must feed (graph inputs that are not also initializers with defaults).

    Models exported with IR version < 4 list every initializer as a graph input too (onnx's ``light_*``
    models do): those have a default value and are not fed.

    Raises:
        InputError: An input has a type sftonnx cannot generate or feed (sequences, maps, strings).
    """
    specs = []
    for value in model.graph.inputs:
        if value.name in model.graph.initializers:
            continue
        if not isinstance(value.type, ir.TensorType):
            raise InputError(f"input '{value.name}' has type {value.type}: only tensor inputs are supported")
        dtype = _NP_DTYPES.get(value.dtype) if value.dtype is not None else None
        if dtype is None:
            raise InputError(
                f"input '{value.name}' has element type {value.dtype}, which sftonnx cannot feed"
            )
        shape = None
        if value.shape is not None:
            shape = tuple(
                d if isinstance(d, int) else (d.value if d.value else None) for d in value.shape.dims
            )
        specs.append(InputSpec(value.name or "", np.dtype(dtype), shape))
    return specs


_SHAPE_ARG = re.compile(r"^\s*([^=]+?)\s*=\s*(\d+(?:\s*[x,]\s*\d+)*)\s*$")


def parse_input_shapes(
    items: Iterable[str] | Mapping[str, Sequence[int]] | None,
) -> dict[str, tuple[int, ...]]:
    """Parse ``name=1x3x224x224`` strings (or pass a mapping through) into ``{name: shape}``.

    Raises:
        InputError: An item is not of the form ``name=AxBxC`` with positive integers.
    """
    if items is None:
        return {}
    if isinstance(items, Mapping):
        return {str(k): tuple(int(d) for d in v) for k, v in items.items()}
    shapes: dict[str, tuple[int, ...]] = {}
    for item in items:
        for part in [p for p in re.split(r"\s+|;", item) if p]:
            match = _SHAPE_ARG.match(part)
            if not match:
                raise InputError(f"--input-shape expects name=1x3x224x224, got '{part}'")
            dims = tuple(int(d) for d in re.split(r"\s*[x,]\s*", match.group(2)))
            if any(d <= 0 for d in dims):
                raise InputError(f"--input-shape dimensions must be positive, got '{part}'")
            shapes[match.group(1)] = dims
    return shapes


def resolve_shapes(
    specs: Sequence[InputSpec], overrides: Mapping[str, tuple[int, ...]] | None = None
) -> tuple[dict[str, tuple[int, ...]], list[str]]:
    """Concrete shapes for every input, and notes saying which defaults were used.

    Raises:
        InputError: An override names no input, has the wrong rank, or contradicts a fixed dimension.
    """
    overrides = dict(overrides or {})
    by_name = {spec.name: spec for spec in specs}
    for name in overrides:
        if name not in by_name:
            known = ", ".join(by_name) or "(none)"
            raise InputError(f"--input-shape names '{name}', which is not a model input (inputs: {known})")
    shapes: dict[str, tuple[int, ...]] = {}
    notes: list[str] = []
    for spec in specs:
        if spec.name in overrides:
            shape = overrides[spec.name]
            if spec.shape is not None:
                if len(shape) != len(spec.shape):
                    raise InputError(
                        f"--input-shape {spec.name}: rank {len(shape)} given, the model expects rank "
                        f"{len(spec.shape)} ({spec.describe()})"
                    )
                for axis, (given, fixed) in enumerate(zip(shape, spec.shape, strict=False)):
                    if isinstance(fixed, int) and fixed != given:
                        raise InputError(
                            f"--input-shape {spec.name}: dimension {axis} is fixed to {fixed} in the model, "
                            f"got {given}"
                        )
            shapes[spec.name] = tuple(shape)
            continue
        if spec.shape is None:
            raise InputError(f"input '{spec.name}' has no shape in the model: give it with --input-shape")
        dims = []
        for axis, dim in enumerate(spec.shape):
            if isinstance(dim, int):
                dims.append(dim)
            else:
                fill = DEFAULT_BATCH if axis == 0 else DEFAULT_DYNAMIC_DIM
                notes.append(f"{spec.name}: dynamic dimension {axis} ('{dim or '?'}') set to {fill}")
                dims.append(fill)
        shapes[spec.name] = tuple(dims)
    return shapes, notes


def random_feeds(
    specs: Sequence[InputSpec], shapes: Mapping[str, tuple[int, ...]], *, seed: int = 0
) -> dict[str, np.ndarray]:
    """Random inputs: floats ~ N(0, 1); integers in [0, 8) (safe as token ids and indices); random bools."""
    rng = np.random.default_rng(seed)
    feeds: dict[str, np.ndarray] = {}
    for spec in specs:
        shape = shapes[spec.name]
        kind = np.dtype(spec.dtype).kind
        if kind == "f":
            feeds[spec.name] = rng.standard_normal(shape).astype(spec.dtype)
        elif kind in "iu":
            feeds[spec.name] = rng.integers(0, 8, shape).astype(spec.dtype)
        else:
            feeds[spec.name] = rng.integers(0, 2, shape).astype(spec.dtype)
    return feeds


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


# ---------------------------------------------------------------------------------------- onnxruntime
def session_source(model: ir.Model | bytes | str | os.PathLike, workdir: str | None = None) -> bytes | str:
    """What ``onnxruntime.InferenceSession`` takes: bytes, or a file path for models over 2 GiB."""
    if isinstance(model, (bytes, str, os.PathLike)):
        return model if isinstance(model, bytes) else str(model)
    if model_nbytes(model) <= PROTOBUF_LIMIT:
        return to_bytes(model)
    folder = workdir or tempfile.mkdtemp(prefix="sftonnx-verify-")
    path = os.path.join(folder, "model.onnx")
    ir.save(model, path, external_data="model.onnx.data")
    return path


def make_session(
    source: bytes | str,
    *,
    providers: Sequence[Any] = ("CPUExecutionProvider",),
    optimization: str = "all",
    threads: int = 0,
    optimized_model_path: str | None = None,
):
    """An onnxruntime session (warnings silenced). Raises whatever onnxruntime raises."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    options.intra_op_num_threads = threads
    options.graph_optimization_level = {
        "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
        "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
        "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
        "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
    }[optimization]
    if optimized_model_path:
        options.optimized_model_filepath = optimized_model_path
    return ort.InferenceSession(source, options, providers=list(providers))


def run_model(session, feeds_list: Sequence[Mapping[str, np.ndarray]]) -> list[list[np.ndarray]]:
    """Run every feed dict; returns one list of outputs per feed."""
    wanted = {i.name for i in session.get_inputs()}
    return [session.run(None, {k: v for k, v in feeds.items() if k in wanted}) for feeds in feeds_list]


# ------------------------------------------------------------------------------------------- metrics
@dataclasses.dataclass(frozen=True)
class Tolerance:
    """Elementwise ``|actual - expected| <= atol + rtol * |expected|`` (lossless passes)."""

    atol: float = DEFAULT_ATOL
    rtol: float = DEFAULT_RTOL


@dataclasses.dataclass(frozen=True)
class Budget:
    """Limits for lossy passes, checked per output; ``None`` means not checked."""

    min_cosine: float | None = DEFAULT_MIN_COSINE
    max_abs: float | None = None
    min_top1: float | None = None


@dataclasses.dataclass
class OutputMetrics:
    """How far one output of the optimized model is from the original's."""

    name: str
    max_abs: float
    mean_rel: float
    cosine: float
    top1_agreement: float | None
    within_tolerance: bool
    shape_ok: bool = True

    def to_json(self) -> dict[str, Any]:
        """JSON-able dict."""
        return dataclasses.asdict(self)


@dataclasses.dataclass
class Comparison:
    """Metrics per output over all samples, and whether the limits held."""

    outputs: list[OutputMetrics]
    passed: bool
    failures: list[str]

    def worst(self) -> dict[str, float | None]:
        """Worst value of each metric over outputs (for report tables)."""
        if not self.outputs:
            return {"max_abs": 0.0, "mean_rel": 0.0, "cosine": 1.0, "top1_agreement": None}
        top1 = [m.top1_agreement for m in self.outputs if m.top1_agreement is not None]
        return {
            "max_abs": max(m.max_abs for m in self.outputs),
            "mean_rel": max(m.mean_rel for m in self.outputs),
            "cosine": min(m.cosine for m in self.outputs),
            "top1_agreement": min(top1) if top1 else None,
        }

    def to_json(self) -> dict[str, Any]:
        """JSON-able dict."""
        return {
            "passed": self.passed,
            "failures": self.failures,
            "outputs": [m.to_json() for m in self.outputs],
        }


def _classifier_like(array: np.ndarray) -> bool:
    squeezed = (
        array.reshape(array.shape[:2]) if array.ndim > 2 and all(d == 1 for d in array.shape[2:]) else array
    )
    return squeezed.ndim == 2 and squeezed.shape[1] > 1 and np.dtype(array.dtype).kind == "f"


def compare_outputs(
    names: Sequence[str],
    expected: Sequence[Sequence[np.ndarray]],
    actual: Sequence[Sequence[np.ndarray]],
    *,
    tolerance: Tolerance | None = None,
    budget: Budget | None = None,
) -> Comparison:
    """Compare per-sample output lists of two models.

    Args:
        names: Output names (of the original model).
        expected: Per sample, the original's outputs.
        actual: Per sample, the optimized model's outputs.
        tolerance: Elementwise limits (lossless); checked when given.
        budget: Aggregate limits (lossy); checked when given.
    """
    metrics: list[OutputMetrics] = []
    failures: list[str] = []
    for index, name in enumerate(names):
        exp = [sample[index] for sample in expected]
        act = [sample[index] if index < len(sample) else None for sample in actual]
        if any(a is None or a.shape != e.shape for a, e in zip(act, exp, strict=False)):
            got = [None if a is None else list(a.shape) for a in act]
            metrics.append(OutputMetrics(name, float("inf"), float("inf"), 0.0, None, False, shape_ok=False))
            failures.append(f"output '{name}': shape {got[0]} instead of {list(exp[0].shape)}")
            continue
        e_all = np.concatenate([np.asarray(e, dtype=np.float64).ravel() for e in exp]) if exp else np.zeros(0)
        a_all = np.concatenate([np.asarray(a, dtype=np.float64).ravel() for a in act]) if act else np.zeros(0)
        both_nan = np.isnan(e_all) & np.isnan(a_all)
        same_inf = np.isinf(e_all) & (e_all == a_all)
        ok_special = both_nan | same_inf
        diff = np.where(ok_special, 0.0, np.abs(a_all - e_all))
        diff = np.nan_to_num(diff, nan=np.inf)
        finite_e = np.where(ok_special, 0.0, e_all)
        max_abs = float(diff.max()) if diff.size else 0.0
        mean_rel = float(np.mean(diff / (np.abs(finite_e) + 1e-6))) if diff.size else 0.0
        e_f, a_f = np.where(ok_special, 0, e_all), np.where(ok_special, 0, a_all)
        norm = float(np.linalg.norm(e_f) * np.linalg.norm(a_f))
        cosine = float(e_f @ a_f / norm) if norm > 0 and np.isfinite(norm) else float(np.allclose(e_f, a_f))
        top1 = None
        if all(_classifier_like(e) for e in exp):
            agree = [
                np.argmax(e.reshape(e.shape[0], -1), axis=1) == np.argmax(a.reshape(a.shape[0], -1), axis=1)
                for e, a in zip(exp, act, strict=False)
            ]
            top1 = float(np.mean(np.concatenate(agree)))
        within = True
        if tolerance is not None:
            limit = tolerance.atol + tolerance.rtol * np.abs(finite_e)
            if np.dtype(exp[0].dtype).kind not in "fc":
                limit = np.zeros_like(limit)
            bad = diff > limit
            if bad.any():
                within = False
                worst = int(np.argmax(diff - limit))
                failures.append(
                    f"output '{name}': {int(bad.sum())} of {bad.size} elements beyond atol={tolerance.atol:g} "
                    f"rtol={tolerance.rtol:g} (max abs error {max_abs:.3g}, at expected value {e_all[worst]:.4g})"
                )
        if budget is not None:
            if budget.min_cosine is not None and cosine < budget.min_cosine:
                within = False
                failures.append(f"output '{name}': cosine {cosine:.5f} < {budget.min_cosine:g}")
            if budget.max_abs is not None and max_abs > budget.max_abs:
                within = False
                failures.append(f"output '{name}': max abs error {max_abs:.4g} > {budget.max_abs:g}")
            if budget.min_top1 is not None and top1 is not None and top1 < budget.min_top1:
                within = False
                failures.append(f"output '{name}': top-1 agreement {top1:.4f} < {budget.min_top1:g}")
        metrics.append(OutputMetrics(name, max_abs, mean_rel, cosine, top1, within))
    return Comparison(metrics, not failures, failures)


# ------------------------------------------------------------------------------ locating divergence
def _with_intermediate_outputs(source: bytes) -> tuple[bytes, list[str]]:
    """The model with every typed intermediate tensor of the main graph added as a graph output."""
    proto = onnx.ModelProto()
    proto.ParseFromString(source)
    try:
        proto = onnx.shape_inference.infer_shapes(proto, data_prop=True)
    except Exception as error:  # best effort: values without inferred types are simply not compared
        logger.debug("shape inference for divergence search failed: %s", error)
    typed = {vi.name: vi for vi in proto.graph.value_info if vi.type.HasField("tensor_type")}
    existing = {o.name for o in proto.graph.output}
    order: list[str] = []
    for node in proto.graph.node:
        for name in node.output:
            if name and name in typed and name not in existing:
                proto.graph.output.append(typed[name])
                existing.add(name)
                order.append(name)
            elif name in existing:
                order.append(name)
    return proto.SerializeToString(), order


def find_first_divergence(
    reference: bytes,
    candidate: bytes,
    feeds: Mapping[str, np.ndarray],
    tolerance: Tolerance,
) -> str | None:
    """Name of the first tensor, in the candidate's node order, that differs from the same-named reference tensor.

    Both models are run with optimizations disabled and every intermediate tensor exposed. Tensors that
    exist in only one model (renamed or fused away) are not compared. Returns ``None`` when nothing
    diverges, or when the models are too large to expose intermediates.
    """
    if len(reference) > PROTOBUF_LIMIT // 2 or len(candidate) > PROTOBUF_LIMIT // 2:
        return None
    try:
        ref_source, _ = _with_intermediate_outputs(reference)
        cand_source, order = _with_intermediate_outputs(candidate)
        ref_session = make_session(ref_source, optimization="disable")
        cand_session = make_session(cand_source, optimization="disable")
        ref_values = dict(
            zip([o.name for o in ref_session.get_outputs()], run_model(ref_session, [feeds])[0], strict=False)
        )
        cand_values = dict(
            zip([o.name for o in cand_session.get_outputs()], run_model(cand_session, [feeds])[0], strict=False)
        )
    except Exception as error:  # the search is a diagnostic: never let it hide the real failure
        logger.debug("divergence search failed: %s", error)
        return None
    for name in order:
        if name not in ref_values or name not in cand_values:
            continue
        ref, cand = ref_values[name], cand_values[name]
        if ref.shape != cand.shape:
            return name
        if np.dtype(ref.dtype).kind == "f":
            if not np.allclose(cand, ref, atol=tolerance.atol, rtol=tolerance.rtol, equal_nan=True):
                return name
        elif not np.array_equal(cand, ref):
            return name
    return None


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


def check_shape(array: np.ndarray, spec: InputSpec, label: str) -> None:
    """Rank and fixed dimensions of ``array`` must match the input spec.

    Raises:
        InputError: Naming ``label``, the input and the offending dimension.
    """
    if spec.shape is None:
        return
    if array.ndim != len(spec.shape):
        raise InputError(f"{label}: '{spec.name}' has shape {list(array.shape)}, the model expects {spec.describe()}")
    for axis, (got, fixed) in enumerate(zip(array.shape, spec.shape, strict=True)):
        if isinstance(fixed, int) and fixed != got:
            raise InputError(f"{label}: '{spec.name}' dimension {axis} is {got}, the model fixes it to {fixed}")
