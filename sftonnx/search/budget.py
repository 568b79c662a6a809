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
    """What a candidate must meet: an accuracy drop on an evaluation set and/or the verification's output budget.

    The output budget is the one the final verification holds the written model to
    (:meth:`output_budget`, a :class:`sftonnx.verify.Budget`): cosine ``>= 1 - max_error`` and, with
    ``min_agreement``, the task metric of each output's kind (argmax, threshold or label agreement; see
    :mod:`sftonnx.verify.metrics`). A candidate is feasible only when that verdict passes on the search's
    inputs, so the search never picks a model its final check refuses.

    Attributes:
        max_accuracy_drop: Largest ``metric(original) - metric(candidate)`` (percentage points for labels).
        max_error: Largest ``1 - min cosine`` over outputs against the original.
        min_agreement: Least task agreement per decision output (``None``: cosine only, the task metrics off).
    """

    max_accuracy_drop: float | None = None
    max_error: float | None = None
    min_agreement: float | None = None

    def __post_init__(self) -> None:
        if self.max_accuracy_drop is None and self.max_error is None and self.min_agreement is None:
            raise InputError("auto: give --max-accuracy-drop (with --eval) or --max-error")
        for name in ("max_accuracy_drop", "max_error"):
            value = getattr(self, name)
            if value is not None and (not math.isfinite(value) or value < 0):
                raise InputError(f"auto: {name.replace('_', '-')} must be a finite number >= 0, got {value}")
        if self.min_agreement is not None and not 0.0 <= self.min_agreement <= 1.0:
            raise InputError(f"auto: min-agreement must be in [0, 1], got {self.min_agreement}")

    def output_budget(self) -> verification.Budget | None:
        """The output limits as a :class:`sftonnx.verify.Budget` (``None`` without ``max_error``/``min_agreement``)."""
        if self.max_error is None and self.min_agreement is None:
            return None
        return verification.Budget(
            min_cosine=None if self.max_error is None else 1.0 - self.max_error, min_agreement=self.min_agreement
        )

    def feasible(self, candidate: Candidate) -> bool:
        """Whether an evaluated candidate meets every limit (the output budget: its verification verdict)."""
        if candidate.status != "ok":
            return False
        if self.max_accuracy_drop is not None and (
            candidate.drop is None or not candidate.drop <= self.max_accuracy_drop + 1e-9
        ):
            return False
        return self.output_budget() is None or candidate.within_budget is True

    def score(self, candidate: Candidate) -> float:
        """How much of the output budget a candidate uses: ``<= 1`` within it, continuous (ranks back-offs).

        The largest of ``(1 - cosine) / max_error`` over outputs judged by cosine and ``(1 - agreement) /
        (1 - min_agreement)`` over outputs judged by their task metric; a candidate whose verdict failed scores
        at least just above 1 (the verdict may fail on a rule no figure here shows, e.g. a ~0 output that moved).
        """
        if candidate.status != "ok":
            return math.inf
        parts = [0.0]
        if self.max_error is not None:
            error = candidate.judged_error if candidate.judged_error is not None else candidate.error
            parts.append(_ratio(math.inf if error is None else error, self.max_error))
        if self.min_agreement is not None and candidate.agreement is not None:
            parts.append(_ratio(1.0 - candidate.agreement, 1.0 - self.min_agreement))
        value = max(parts)
        return max(value, 1.0 + 1e-6) if candidate.within_budget is False else value

    def loss(self, candidate: Candidate) -> tuple[float, float]:
        """Sort key for "how harmful": (budgeted loss, output error); failures sort last.

        The budgeted loss is the accuracy drop with an accuracy budget, else :meth:`score`.
        """
        if candidate.status != "ok":
            return (math.inf, math.inf)
        error = candidate.error if candidate.error is not None else math.inf
        if self.max_accuracy_drop is not None:
            drop = candidate.drop if candidate.drop is not None else math.inf
            return (drop, self.score(candidate) if self.output_budget() is not None else error)
        return (self.score(candidate), error)

    def describe(self) -> str:
        """E.g. ``accuracy drop <= 1 point`` or ``output error (1 - cosine) <= 0.01``."""
        parts = []
        if self.max_accuracy_drop is not None:
            parts.append(f"accuracy drop <= {self.max_accuracy_drop:g}")
        if self.max_error is not None:
            parts.append(f"output error (1 - min cosine) <= {self.max_error:g}")
        if self.min_agreement is not None:
            parts.append(f"task agreement >= {self.min_agreement:g}")
        return " and ".join(parts)

    def verification_budget(self, chosen: Candidate) -> verification.Budget:
        """The :class:`sftonnx.verify.Budget` the final write is verified with, consistent with the search.

        With an output budget: exactly :meth:`output_budget` (the same limits on the same inputs the search
        judged every candidate with). With an accuracy budget only: the chosen model's own cosine on the
        verification inputs, minus a margin for float noise - so the check proves that the written model is the
        one whose accuracy was measured (a distilled choice too: its trained weights are copied from the model
        the search measured, see :func:`sftonnx.api.optimize_auto`).
        """
        budget = self.output_budget()
        if budget is not None:
            return budget
        cosine = chosen.cosine if chosen.cosine is not None else 0.0
        return verification.Budget(min_cosine=max(-1.0, cosine - 1e-4), min_agreement=None)


def _ratio(value: float, allowance: float) -> float:
    """``value / allowance``; a zero allowance makes any positive value huge (but ordered)."""
    return value / allowance if allowance > 0 else (0.0 if value <= 0 else value * 1e12)


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
        kind: ``original``, ``preset``, ``probe`` (sensitivity), ``search`` (a ladder rung), ``combo`` or
            ``distill`` (the chosen candidate after knowledge distillation).
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
        agreement: Worst task agreement over the outputs the output budget judges by it.
        judged_error: ``1 - min cosine`` over the outputs the output budget judges by cosine.
        within_budget: The output budget's verdict (``None`` without an output budget).
        budget_failure: The first reason the verdict failed.
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
    agreement: float | None = None
    judged_error: float | None = None
    within_budget: bool | None = None
    budget_failure: str = ""
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
    for name in ("error", "cosine", "max_abs", "top1_agreement", "metric", "agreement", "judged_error"):
        value = record.get(name)
        setattr(candidate, name, None if value is None else float(value))
    passed = record.get("within_budget")
    candidate.within_budget = None if passed is None else bool(passed)
    candidate.budget_failure = str(record.get("budget_failure") or "")
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
