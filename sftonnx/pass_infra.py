"""The pass contract: :class:`SftPass`, :class:`PassReport`, :class:`Numerics` and option parsing.

Every sftonnx pass is an ``onnx_ir`` in-place pass, so it also runs inside onnx-ir's own PassManager.
That manager's ``Sequential`` rebuilds a plain ``PassResult`` and drops our statistics, so
:mod:`sftonnx.pipeline` calls passes itself.
"""

from __future__ import annotations

import collections
import dataclasses
import enum
import inspect
import logging
import os
import types
import typing
from collections import Counter
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, ClassVar, final

import onnx_ir as ir

from sftonnx.errors import PassConfigError

if TYPE_CHECKING:
    import numpy as np

    from sftonnx.verify.metrics import Budget

__all__ = [
    "Numerics",
    "OptionInfo",
    "PassReport",
    "SftPass",
    "VerificationData",
    "coerce_option",
    "pass_options",
]

logger = logging.getLogger(__name__)

#: Constructor keywords that carry data handed over by the pipeline rather than options of the pass.
_DATA_OPTIONS = frozenset({"calibration_data"})


class Numerics(enum.Enum):
    """Whether a pass keeps the model's outputs (EXACT) or trades accuracy for speed/size (APPROXIMATE)."""

    EXACT = "exact"
    APPROXIMATE = "approximate"


@dataclasses.dataclass
class PassReport(ir.passes.PassResult):
    """Result of one pass: the model plus what it rewrote and why it left sites alone.

    Attributes:
        changes: Counts of rewrites, keyed by past-tense snake_case names (``weights_zeroed``).
        skipped: Counts of sites left alone, keyed by the condition (``weight_shared``).
        details: Optional JSON-able extras (per-layer sparsity, layers kept in float, ...).
    """

    changes: Counter[str] = dataclasses.field(default_factory=Counter)
    skipped: Counter[str] = dataclasses.field(default_factory=Counter)
    details: dict[str, Any] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(frozen=True)
class VerificationData:
    """What the pipeline's final verification will hold the result to, for passes that judge their own choice.

    Attributes:
        feeds: The verification feed dicts, each run as one call (as :meth:`sftonnx.pipeline.Verifier.outputs`
            runs them).
        expected: Per feed, the original model's outputs (the model the pipeline started from, before any pass).
        names: The original's output names, in the order of ``expected``.
        budget: The lossy budget of the final check (:class:`sftonnx.verify.Budget`).
    """

    feeds: Sequence[Mapping[str, np.ndarray]]
    expected: Sequence[Sequence[np.ndarray]]
    names: Sequence[str]
    budget: Budget


class SftPass(ir.passes.InPlacePass):
    """Base class of sftonnx passes.

    Subclasses set ``name`` (the kebab-case registry/CLI name) and ``numerics``, take keyword-only typed
    options validated in ``__init__`` (raise :class:`~sftonnx.errors.PassConfigError`), and implement
    :meth:`rewrite`. Nothing outlives a call: counters live in the report.
    """

    name: ClassVar[str]
    numerics: ClassVar[Numerics] = Numerics.EXACT
    #: Whether the pass accepts calibration data (the pipeline passes ``--calibration-data`` to it).
    uses_calibration: ClassVar[bool] = False
    #: Whether the pass needs the model the pipeline started from (``distill``'s teacher); the Pipeline sets
    #: the instance attribute ``original`` (bytes, or a path for models over 2 GiB) for the call only.
    uses_original: ClassVar[bool] = False
    #: Whether the pass judges its candidates on the final verification's inputs too (``quantize-int8``): the
    #: Pipeline sets the instance attribute ``verification`` (a :class:`VerificationData`, or ``None`` when the
    #: run verifies nothing) for the call only, so a result the final check would refuse is refused by the pass.
    uses_verification: ClassVar[bool] = False
    #: Whether leaving the model as it came is one of the pass's own outcomes (``quantize-int8`` keeps float when
    #: no candidate qualifies): when the final verification refuses a result this pass changed, the pipeline
    #: keeps the model from before the pass (re-running only the passes after it) and records the refusal in the
    #: report instead of failing. Lossy passes without such an alternative keep the exit-3 refusal.
    revert_on_failure: ClassVar[bool] = False
    #: Whether the pass reports progress during its run (``distill``'s epochs and loss): when the caller gives the
    #: pipeline a ``pass_progress`` callback, the Pipeline sets the instance attribute ``progress`` for the call
    #: only, called as ``progress(done, total, text)``.
    reports_progress: ClassVar[bool] = False

    @final
    def call(self, model: ir.Model) -> PassReport:
        """Run :meth:`rewrite` and derive ``modified`` from the counted changes."""
        report = PassReport(model, modified=False)
        self.rewrite(model, report)
        report.modified = sum(report.changes.values()) > 0
        return report

    def rewrite(self, model: ir.Model, report: PassReport) -> None:
        """Rewrite ``model`` in place and count what was done in ``report``."""
        raise NotImplementedError

    def options(self) -> dict[str, Any]:
        """The options this instance was built with (for reports and reproducer specs).

        Data handed over by the pipeline (``calibration_data``) is kept when it is a path, which a spec can
        spell and a reproducer can reuse, and left out when it is in memory (arrays, iterables of feeds).
        """
        return {
            name: getattr(self, name)
            for name in pass_options(type(self))
            if hasattr(self, name)
            and (name not in _DATA_OPTIONS or isinstance(getattr(self, name), (str, os.PathLike)))
        }

    def spec(self) -> str:
        """A spec string that rebuilds this pass, e.g. ``prune{rate=0.3}``."""
        defaults = {name: info.default for name, info in pass_options(type(self)).items()}
        given = {k: v for k, v in self.options().items() if defaults.get(k, inspect.Parameter.empty) != v}
        if not given:
            return self.name
        return self.name + "{" + ", ".join(f"{k}={_format_value(v)}" for k, v in given.items()) + "}"


@dataclasses.dataclass(frozen=True)
class OptionInfo:
    """A pass option as declared by the constructor signature."""

    name: str
    annotation: Any
    default: Any
    doc: str = ""

    @property
    def type_name(self) -> str:
        """Human-readable type, e.g. ``float`` or ``minmax|entropy``."""
        return _type_name(self.annotation)


def pass_options(cls: type[SftPass]) -> collections.OrderedDict[str, OptionInfo]:
    """The keyword options of a pass class, read from its ``__init__`` signature and docstring."""
    try:
        hints = typing.get_type_hints(cls.__init__)
    except Exception:  # unresolvable annotations: fall back to raw ones
        hints = {}
    docs = _arg_docs(cls.__init__.__doc__ or "") | _arg_docs(cls.__doc__ or "")
    options: collections.OrderedDict[str, OptionInfo] = collections.OrderedDict()
    for param in inspect.signature(cls.__init__).parameters.values():
        if param.kind is not inspect.Parameter.KEYWORD_ONLY:
            continue
        annotation = hints.get(param.name, param.annotation)
        options[param.name] = OptionInfo(param.name, annotation, param.default, docs.get(param.name, ""))
    return options


def coerce_option(pass_name: str, info: OptionInfo, raw: str) -> Any:
    """Parse the text ``raw`` given for an option into the option's declared type.

    Raises:
        PassConfigError: The text does not parse as that type.
    """
    try:
        return _coerce(info.annotation, raw.strip())
    except (ValueError, TypeError) as error:
        raise PassConfigError(
            f"{pass_name}: option '{info.name}' expects {info.type_name}, got '{raw}' ({error})"
        ) from None


def _coerce(annotation: Any, raw: str) -> Any:
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if annotation is inspect.Parameter.empty or annotation is Any:
        return _guess(raw)
    if origin in (typing.Union, types.UnionType):
        if type(None) in args and raw.lower() in ("none", "null", ""):
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(arg, raw)
            except (ValueError, TypeError) as error:
                errors.append(str(error))
        raise ValueError("; ".join(errors))
    if origin is typing.Literal:
        for arg in args:
            if str(arg).lower() == raw.lower():
                return arg
        raise ValueError(f"must be one of {'|'.join(map(str, args))}")
    if origin in (tuple, list):
        parts = [p for p in raw.replace(";", "|").split("|") if p.strip()] if raw else []
        item = args[0] if args else str
        return (
            type(origin)(_coerce(item, p.strip()) for p in parts)
            if origin is list
            else tuple(_coerce(item, p.strip()) for p in parts)
        )
    if annotation is bool:
        lowered = raw.lower()
        if lowered in ("true", "1", "yes", "on"):
            return True
        if lowered in ("false", "0", "no", "off"):
            return False
        raise ValueError("not a boolean")
    if annotation is int:
        return int(raw)
    if annotation is float:
        return float(raw)
    if annotation is str:
        return raw
    if isinstance(annotation, type) and issubclass(annotation, enum.Enum):
        return annotation(raw)
    return _guess(raw)


def _guess(raw: str) -> Any:
    for parse in (int, float):
        try:
            return parse(raw)
        except ValueError:
            pass
    if raw.lower() in ("true", "false"):
        return raw.lower() == "true"
    return raw


def _type_name(annotation: Any) -> str:
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin is typing.Literal:
        return "|".join(map(str, args))
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_type_name(a) for a in args if a is not type(None)) + (
            " or none" if type(None) in args else ""
        )
    if origin in (tuple, list):
        return f"list of {_type_name(args[0]) if args else 'str'} (a|b|c)"
    return getattr(annotation, "__name__", str(annotation))


def _format_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (list, tuple)):
        return "|".join(map(str, value))
    return str(value)


def _arg_docs(doc: str) -> dict[str, str]:
    """Parse the ``Args:`` section of a Google docstring into {name: first line of description}."""
    result: dict[str, str] = {}
    in_args = False
    current = None
    for line in doc.splitlines():
        stripped = line.strip()
        if stripped in ("Args:", "Options:"):
            in_args = True
            continue
        if in_args:
            if not stripped:
                current = None
                continue
            if stripped.endswith(":") and " " not in stripped:
                in_args = False
                continue
            name, sep, text = stripped.partition(":")
            if sep and name.isidentifier():
                current = name
                result[name] = text.strip()
            elif current:
                result[current] += " " + stripped
    return result
