"""Model inputs: what a caller must feed, concrete shapes for dynamic dimensions, and synthesized inputs.

Dynamic dimensions are filled from ``--input-shape`` or the defaults below (the report states which were used).
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Iterable, Mapping, Sequence

import numpy as np
import onnx_ir as ir

from sftonnx.errors import InputError

__all__ = [
    "DEFAULT_BATCH",
    "DEFAULT_DYNAMIC_DIM",
    "InputSpec",
    "check_shape",
    "input_specs",
    "parse_input_shapes",
    "random_feeds",
    "resolve_shapes",
    "unfit_hint",
]

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
            # dim_value <= 0 (Paddle writes -1) is a dynamic dimension, not a size.
            shape = tuple(
                (d if d > 0 else None) if isinstance(d, int) else (d.value if d.value else None)
                for d in value.shape.dims
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



def check_shape(array: np.ndarray, spec: InputSpec, label: str, *, stacked: bool = False) -> None:
    """Rank and fixed dimensions of ``array`` must match the input spec.

    With ``stacked``, ``array`` holds samples along axis 0 that will be fed in batches of the model's fixed
    batch size, so a fixed batch dimension of 1 does not have to match axis 0.

    Raises:
        InputError: Naming ``label``, the input and the offending dimension.
    """
    if spec.shape is None:
        return
    if array.ndim != len(spec.shape):
        raise InputError(f"{label}: '{spec.name}' has shape {list(array.shape)}, the model expects {spec.describe()}")
    for axis, (got, fixed) in enumerate(zip(array.shape, spec.shape, strict=True)):
        if isinstance(fixed, int) and fixed != got and not (stacked and axis == 0 and fixed == 1):
            raise InputError(f"{label}: '{spec.name}' dimension {axis} is {got}, the model fixes it to {fixed}")


def unfit_hint(specs: Sequence[InputSpec], shapes: Mapping[str, tuple[int, ...]]) -> str:
    """What to say when the model does not run on synthesized inputs: the inputs guessed, and what to give.

    Names the inputs whose shape or values were guessed (dynamic dimensions, integer values), the shapes
    tried, and the ``--data`` / ``--input-shape`` options that replace them.
    """
    dynamic = [s for s in specs if s.shape is None or any(not isinstance(d, int) for d in s.shape)]
    integer = [s for s in specs if np.dtype(s.dtype).kind in "iu" and s not in dynamic]
    named = [*dynamic, *integer] or list(specs)

    def shape_text(spec: InputSpec) -> str:
        return "x".join(str(d) for d in shapes.get(spec.name, ())) or "scalar"

    tried = ", ".join(
        f"{s.name}={shape_text(s)}" + (" integers" if np.dtype(s.dtype).kind in "iu" else "") for s in named
    )

    def template(spec: InputSpec) -> str:
        dims = spec.shape or shapes.get(spec.name, ())
        return "x".join(str(d) if isinstance(d, int) else f"D{axis}" for axis, d in enumerate(dims)) or "D0"

    advice = f"give real inputs with --data FILE.npz (arrays {', '.join(s.name for s in specs)})"
    if dynamic:
        advice += " or the shapes with --input-shape " + " ".join(f"{s.name}={template(s)}" for s in dynamic)
    return f"the synthesized inputs do not fit (tried {tried}): {advice}"
