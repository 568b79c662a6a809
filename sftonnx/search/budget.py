"""What a search candidate is and what it must meet: :class:`Candidate`, :class:`SearchBudget`, the ordering keys."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from sftonnx import verify as verification
from sftonnx.errors import InputError, VerificationError

if TYPE_CHECKING:
    from sftonnx.search.result import SearchResult

__all__ = ["BudgetNotMetError", "Candidate", "SearchBudget", "fill_figures", "objective_key"]


@dataclasses.dataclass(frozen=True)
class SearchBudget:
    """What a candidate must meet: an accuracy drop on an evaluation set and/or an output error.

    Attributes:
        max_accuracy_drop: Largest ``metric(original) - metric(candidate)`` (percentage points for labels).
        max_error: Largest ``1 - min cosine`` over outputs against the original.
    """

    max_accuracy_drop: float | None = None
    max_error: float | None = None

    def __post_init__(self) -> None:
        if self.max_accuracy_drop is None and self.max_error is None:
            raise InputError("auto: give --max-accuracy-drop (with --eval) or --max-error")
        for name in ("max_accuracy_drop", "max_error"):
            value = getattr(self, name)
            if value is not None and (not math.isfinite(value) or value < 0):
                raise InputError(f"auto: {name.replace('_', '-')} must be a finite number >= 0, got {value}")

    def feasible(self, candidate: Candidate) -> bool:
        """Whether an evaluated candidate meets every limit."""
        if candidate.status != "ok":
            return False
        if self.max_accuracy_drop is not None and (
            candidate.drop is None or not candidate.drop <= self.max_accuracy_drop + 1e-9
        ):
            return False
        return self.max_error is None or (candidate.error is not None and candidate.error <= self.max_error)

    def loss(self, candidate: Candidate) -> tuple[float, float]:
        """Sort key for "how harmful": (budgeted loss, output error); failures sort last."""
        if candidate.status != "ok":
            return (math.inf, math.inf)
        error = candidate.error if candidate.error is not None else math.inf
        if self.max_accuracy_drop is not None:
            drop = candidate.drop if candidate.drop is not None else math.inf
            return (drop, error)
        return (error, error)

    def describe(self) -> str:
        """E.g. ``accuracy drop <= 1 point`` or ``output error (1 - cosine) <= 0.01``."""
        parts = []
        if self.max_accuracy_drop is not None:
            parts.append(f"accuracy drop <= {self.max_accuracy_drop:g}")
        if self.max_error is not None:
            parts.append(f"output error (1 - min cosine) <= {self.max_error:g}")
        return " and ".join(parts)

    def verification_budget(self, chosen: Candidate) -> verification.Budget:
        """The :class:`sftonnx.verify.Budget` the final write is verified with, consistent with the search.

        With an output-error budget: ``min_cosine = 1 - max_error`` (the same figure on the same inputs).
        With an accuracy budget only: the chosen model's own cosine on the verification inputs, minus a margin
        for float noise - so the check proves that the written model is the one whose accuracy was measured.
        """
        if self.max_error is not None:
            # min_agreement=None: the search measures cosine, so its final check holds the same figure.
            return verification.Budget(min_cosine=1.0 - self.max_error, min_agreement=None)
        cosine = chosen.cosine if chosen.cosine is not None else 0.0
        return verification.Budget(min_cosine=max(-1.0, cosine - 1e-4), min_agreement=None)


class BudgetNotMetError(VerificationError):
    """No candidate met the budget (exit 3); ``result`` holds the search, ``result.best`` the closest one."""

    def __init__(self, message: str, *, result: SearchResult) -> None:
        super().__init__(message, metrics=result.best.to_json() if result.best else {})
        self.result = result


# ---------------------------------------------------------------------------------------- candidates
@dataclasses.dataclass
class Candidate:
    """One evaluated configuration.

    Attributes:
        name: Short label (``preset:int8``, ``quantize#0``, ``probe:prune-channels:conv1@ratio=0.5``).
        kind: ``original``, ``preset``, ``probe`` (sensitivity), ``search`` (a ladder rung) or ``combo``.
        spec: The exact pass spec that reproduces the model from the original (``""`` for the original).
        status: ``ok`` or ``failed`` (the pipeline raised; ``message`` says why).
        message: Why it failed, or a note.
        changed: Whether the lossy passes changed anything (probes that do not are ignored).
        size_bytes: The written model file (with external data).
        metric: The evaluation metric (top-1 % for labels), when an evaluation is given.
        drop: ``metric(original) - metric``.
        error: ``1 - min cosine`` over outputs against the original on the verification inputs.
        cosine: Worst cosine over outputs.
        max_abs: Largest absolute output difference.
        top1_agreement: Top-1 agreement with the original (classifier-like outputs).
        latency_ms: p50 latency on the target EP (only for timed candidates).
        feasible: Whether it meets the budget.
        model_path: The cached model file.
        cached: Whether the record came from the cache.
        seconds: Evaluation time.
    """

    name: str
    kind: str
    spec: str
    status: str = "ok"
    message: str = ""
    changed: bool = True
    size_bytes: int | None = None
    metric: float | None = None
    drop: float | None = None
    error: float | None = None
    cosine: float | None = None
    max_abs: float | None = None
    top1_agreement: float | None = None
    latency_ms: float | None = None
    feasible: bool = False
    model_path: str | None = None
    sha256: str | None = None
    cached: bool = False
    seconds: float = 0.0

    def to_json(self) -> dict[str, Any]:
        """JSON-able dict."""
        return dataclasses.asdict(self)



def fill_figures(candidate: Candidate, record: Mapping[str, Any], reference_metric: float | None) -> None:
    """Copy an evaluation record's figures onto ``candidate``; ``drop`` against ``reference_metric``."""
    for name in ("error", "cosine", "max_abs", "top1_agreement", "metric"):
        value = record.get(name)
        setattr(candidate, name, None if value is None else float(value))
    if candidate.metric is not None and reference_metric is not None:
        candidate.drop = reference_metric - candidate.metric
    elif reference_metric is None and candidate.metric is not None:
        candidate.drop = 0.0



def objective_key(candidate: Candidate, objective: str) -> tuple[float, ...]:
    """Sort key, best first: latency then size (``objective=latency``) or size then latency; unknown last."""
    latency = candidate.latency_ms if candidate.latency_ms is not None else math.inf
    size = float(candidate.size_bytes) if candidate.size_bytes is not None else math.inf
    error = candidate.error if candidate.error is not None else math.inf
    return (latency, size, error) if objective == "latency" else (size, latency, error)
