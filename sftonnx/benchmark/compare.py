"""``sftonnx compare``: two models run on the same inputs, their outputs compared by name."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from sftonnx import verify as verification
from sftonnx.benchmark import sessions
from sftonnx.benchmark.models import ModelEntry, check_same_signature, fit_feeds
from sftonnx.errors import InputError, first_line

__all__ = ["CompareResult", "compare_entries"]


@dataclasses.dataclass
class CompareResult:
    """Output metrics of a candidate model against a reference on the same inputs.

    Attributes:
        reference: The reference model (``A``).
        candidate: The compared model (``B``).
        comparison: Per-output metrics and failures (from :func:`sftonnx.verify.compare_outputs`).
        limits: The limits checked (``atol``/``rtol``/``min_cosine``; absent when not given).
        notes: How the inputs were made.
    """

    reference: str
    candidate: str
    comparison: verification.Comparison
    limits: dict[str, float]
    notes: list[str]

    @property
    def passed(self) -> bool:
        """Whether every checked limit held."""
        return self.comparison.passed

    def to_json(self) -> dict[str, Any]:
        """Keys: ``reference``, ``candidate``, ``limits``, ``passed``, ``failures``, ``outputs``, ``notes``."""
        return {
            "reference": self.reference,
            "candidate": self.candidate,
            "limits": self.limits,
            **self.comparison.to_json(),
            "notes": self.notes,
        }


def compare_entries(
    reference: ModelEntry,
    candidate: ModelEntry,
    feeds: Sequence[Mapping[str, np.ndarray]],
    *,
    tolerance: verification.Tolerance | None = None,
    budget: verification.Budget | None = None,
    notes: Sequence[str] = (),
) -> CompareResult:
    """Run both models on CPU on the same feeds and compare their outputs, matched by name.

    Args:
        reference: The reference model (its output order is used).
        candidate: The model compared with it (same input and output names: :func:`check_same_signature`).
        feeds: Feed dicts for the reference's inputs (cast to the candidate's input dtypes when they differ).
        tolerance: Elementwise ``atol``/``rtol`` limits, checked when given.
        budget: Cosine (and other) limits, checked when given.
        notes: How the feeds were made (kept in the result).

    Raises:
        InputError: onnxruntime cannot load or run either model on these inputs.
    """
    check_same_signature(reference, candidate)
    outputs = []
    for entry in (reference, candidate):
        try:
            session = sessions.create_session(entry.source, "cpu", threads=0, spinning=True)
        except Exception as error:  # onnxruntime raises assorted types for models it cannot load
            raise InputError(f"{entry.label}: onnxruntime cannot load the model: {first_line(error)}") from None
        try:
            outputs.append([session.run(reference.outputs, fit_feeds(entry, feed)) for feed in feeds])
        except InputError:
            raise
        except Exception as error:  # the model does not run on these inputs
            raise InputError(f"{entry.label}: onnxruntime cannot run the model: {first_line(error)}") from None
    comparison = verification.compare_outputs(
        reference.outputs, outputs[0], outputs[1], tolerance=tolerance, budget=budget
    )
    limits: dict[str, float] = {}
    if tolerance is not None:
        limits.update(atol=tolerance.atol, rtol=tolerance.rtol)
    if budget is not None:
        limits.update({k: v for k, v in dataclasses.asdict(budget).items() if v is not None})
    return CompareResult(reference.model, candidate.model, comparison, limits, list(notes))
