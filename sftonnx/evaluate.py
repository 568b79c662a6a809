"""Accuracy evaluators: the metric ``sftonnx bench --eval`` reports and the ``auto`` search budgets.

An evaluator takes an ``onnxruntime.InferenceSession`` and returns a higher-is-better float. Two sources:

* a **labels file** (``.npz`` holding one array per input and a ``labels`` array): top-1 accuracy as a
  fraction, the argmax over the first output's last axis (trailing unit axes squeezed first), over batches
  of the samples;
* a **user metric** ``module:function`` (a module on the path or a ``file.py``) or a callable, called with
  the session. Its failure is a usage error (:class:`~sftonnx.errors.InputError`, one line).

Both the benchmark and the search build evaluators here, so accuracy means the same thing everywhere.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import pathlib
import sys
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from sftonnx import verify as verification
from sftonnx.errors import InputError, first_line

__all__ = ["Evaluator", "is_labels_file", "labels_evaluator", "make_evaluator", "metric_evaluator", "top1"]

Evaluator = Callable[[Any], float]


def is_labels_file(evaluate: str | os.PathLike) -> bool:
    """Whether an ``--eval`` value names a labels file (``.npz`` or an existing file) rather than a function."""
    text = os.fspath(evaluate)
    return text.endswith(".npz") or pathlib.Path(text).is_file()


def make_evaluator(
    evaluate: str | os.PathLike | Evaluator | None,
    specs: Sequence[verification.InputSpec],
    batch: int | None,
) -> tuple[Evaluator | None, str | None]:
    """The evaluator for an ``--eval`` value, and a note saying what it measures (``(None, None)`` for none).

    Args:
        evaluate: ``labels.npz``, ``module:function``, a callable, or ``None``.
        specs: The model's inputs (the labels file must hold one array per input).
        batch: Batch size for a labels file whose model has no fixed batch dimension (default 32).

    Raises:
        InputError: A labels file without usable labels, or a function that cannot be imported.
    """
    if evaluate is None:
        return None, None
    if callable(evaluate):
        return evaluate, f"accuracy: user metric {getattr(evaluate, '__name__', 'function')}"
    if is_labels_file(evaluate):
        return labels_evaluator(os.fspath(evaluate), specs, batch)
    return metric_evaluator(os.fspath(evaluate))


def labels_evaluator(
    path: str | os.PathLike, specs: Sequence[verification.InputSpec], batch: int | None
) -> tuple[Evaluator, str]:
    """Top-1 accuracy (a fraction) over the labelled samples of ``path``, and its note.

    Raises:
        InputError: No ``labels`` array, or as many labels as samples.
    """
    data = verification.load_npz(path, specs, allow_extra=("labels",))
    name = pathlib.Path(path).name
    if "labels" not in data:
        raise InputError(f"{name} has no 'labels' array (needed for --eval top-1 accuracy)")
    labels = np.asarray(data["labels"])
    if labels.ndim >= 2:
        labels = labels.reshape(labels.shape[0], -1).argmax(axis=1)  # one-hot / scores
    labels = labels.reshape(-1)
    names = [s.name for s in specs]
    samples = min(len(data[n]) for n in names) if names else 0
    if len(labels) != samples:
        raise InputError(f"{name}: 'labels' has {len(labels)} entries for {samples} input samples")
    fixed = {s.shape[0] for s in specs if s.shape and isinstance(s.shape[0], int)}
    size = fixed.pop() if len(fixed) == 1 else (batch or 32)
    feeds = verification.batches(data, names, size)

    def evaluate(session: Any) -> float:
        first = session.get_outputs()[0].name
        predictions = []
        for feed in feeds:
            (output,) = session.run([first], feed)
            predictions.append(top1(np.asarray(output)))
        predicted = np.concatenate(predictions) if predictions else np.zeros(0, dtype=np.int64)
        return float(np.mean(predicted == labels[: len(predicted)])) if predicted.size else float("nan")

    return evaluate, f"accuracy: top-1 over {samples} labelled samples of {name}"


def top1(output: np.ndarray) -> np.ndarray:
    """Argmax over the last axis after squeezing trailing unit axes (``[N, C, 1, 1]`` → ``[N, C]``)."""
    while output.ndim > 2 and output.shape[-1] == 1:
        output = output.reshape(output.shape[:-1])
    if output.ndim == 1:
        output = output.reshape(1, -1)
    return output.argmax(axis=-1).reshape(-1)


def metric_evaluator(spec: str) -> tuple[Evaluator, str]:
    """The user metric ``module:function`` (or ``file.py:function``), wrapped to fail in one line, and its note.

    Raises:
        InputError: Not ``module:function``, or the module or function cannot be found or imported.
    """
    module_name, _, function_name = spec.rpartition(":")
    if not module_name or not function_name:
        raise InputError(f"--eval expects labels.npz or module:function, got '{spec}'")
    module = _import_module(module_name, spec)
    function = getattr(module, function_name, None)
    if not callable(function):
        raise InputError(f"--eval {spec}: module '{module_name}' has no function '{function_name}'")

    def evaluate(session: Any) -> float:
        try:
            value = function(session)
        except Exception as error:  # a user metric: its failure is a usage error, reported in one line
            raise InputError(f"--eval {spec} raised {type(error).__name__}: {first_line(error)}") from None
        try:
            return float(value)
        except (TypeError, ValueError):
            raise InputError(f"--eval {spec} returned {type(value).__name__}, expected a float") from None

    return evaluate, f"accuracy: user metric {spec}"


def _import_module(name: str, spec: str) -> Any:
    try:
        if name.endswith(".py"):
            path = pathlib.Path(name)
            if not path.is_file():
                raise InputError(f"--eval {spec}: file not found: {path}")
            module_spec = importlib.util.spec_from_file_location(path.stem, path)
            if module_spec is None or module_spec.loader is None:
                raise InputError(f"--eval {spec}: cannot import {path}")
            module = importlib.util.module_from_spec(module_spec)
            module_spec.loader.exec_module(module)
            return module
        try:
            return importlib.import_module(name)
        except ModuleNotFoundError as error:
            if error.name != name.split(".")[0] or os.getcwd() in sys.path:
                raise
            # The console script does not put the working folder on sys.path (python -m does): try it once.
            sys.path.insert(0, os.getcwd())
            try:
                return importlib.import_module(name)
            finally:
                sys.path.remove(os.getcwd())
    except InputError:
        raise
    except Exception as error:  # any import-time failure of user code
        raise InputError(
            f"--eval {spec}: cannot import '{name}': {type(error).__name__}: {first_line(error)}"
        ) from None
