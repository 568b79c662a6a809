"""What :func:`~sftonnx.search.run.run_search` returns."""

from __future__ import annotations

import dataclasses
from typing import Any

from sftonnx.search.budget import Candidate, SearchBudget, objective_key

__all__ = ["SearchResult", "SearchStep"]


@dataclasses.dataclass
class SearchStep:
    """An optional step after the selection (knowledge distillation of the chosen candidate).

    Attributes:
        name: The step (``distill``).
        status: ``kept`` (its result is the choice), ``discarded`` (ran; did not help), ``skipped`` or ``failed``.
        message: Why, with the figures before and after.
        seconds: Wall time the step took (building and measuring its candidate).
        time_budget: The training seconds it was given.
        details: The pass's details (``loss_before``, ``loss_after``, ``epochs``, ``stopped``, ...).
        candidate: The name of the candidate it made (``None`` when it did not run).
    """

    name: str
    status: str
    message: str = ""
    seconds: float = 0.0
    time_budget: float | None = None
    details: dict[str, Any] = dataclasses.field(default_factory=dict)
    candidate: str | None = None

    def to_json(self) -> dict[str, Any]:
        """JSON-able dict."""
        return dataclasses.asdict(self)


@dataclasses.dataclass
class SearchResult:
    """What :func:`run_search` found.

    Attributes:
        chosen: The selected candidate (``None`` when none met the budget).
        best: ``chosen``, or the candidate closest to the budget when none met it.
        candidates: Every evaluated candidate (probes included).
        pareto: Names of the timed candidates on the (latency, size, loss) front.
        baseline: The original model's figures.
        budget: The budget searched under.
        objective: ``latency`` or ``size``.
        sensitivity: ``{technique: {layer: {level option: loss}}}`` from the probes.
        notes: How inputs, calibration and timing were done.
        stats: ``evaluated`` (computed now) and ``cached`` (read from the cache) candidate counts; ``remeasured``
            (of the evaluated: cached models measured again under another output budget, not rebuilt); ``seconds``.
        cache_dir: Where candidates are cached.
        calibration_data: The calibration data the specs were evaluated with (pass it along to reproduce).
        verify_data: The inputs verification and the output error used.
        task: The evaluation task (to measure a written model the same way).
        random_inputs: Candidates were judged on synthesized inputs (allowed explicitly).
        steps: The optional steps after the selection (distillation), in order, with their time.
    """

    chosen: Candidate | None
    best: Candidate | None
    candidates: list[Candidate]
    pareto: list[str]
    baseline: Candidate
    budget: SearchBudget
    objective: str
    sensitivity: dict[str, dict[str, dict[str, float | None]]]
    notes: list[str]
    stats: dict[str, Any]
    cache_dir: str
    calibration_data: str | None
    verify_data: str | None
    task: Any = dataclasses.field(default=None, repr=False)
    random_inputs: bool = False
    steps: list[SearchStep] = dataclasses.field(default_factory=list)

    @property
    def timed(self) -> list[Candidate]:
        """Candidates with a latency (the original first)."""
        return [c for c in [self.baseline, *self.candidates] if c.latency_ms is not None]

    def ranked(self) -> list[Candidate]:
        """Feasible candidates: ``chosen`` first (it may be a distilled one), then best first by the objective."""
        feasible = [c for c in self.candidates if c.feasible and c.kind != "probe" and c is not self.chosen]
        ordered = sorted(feasible, key=lambda c: objective_key(c, self.objective))
        return [self.chosen, *ordered] if self.chosen is not None else ordered

    def to_json(self) -> dict[str, Any]:
        """JSON-able dict; ``spec`` is the exact pass spec reproducing the chosen model without search."""
        by_name = {c.name: c for c in self.candidates}
        return {
            "spec": self.chosen.spec if self.chosen else None,
            "chosen": self.chosen.to_json() if self.chosen else None,
            "best": self.best.to_json() if self.best else None,
            "objective": self.objective,
            "budget": dataclasses.asdict(self.budget) | {"text": self.budget.describe()},
            "baseline": self.baseline.to_json(),
            "pareto": [by_name[name].to_json() if name in by_name else name for name in self.pareto],
            "candidates": [c.to_json() for c in self.candidates],
            "sensitivity": self.sensitivity,
            "notes": self.notes,
            "stats": self.stats,
            "cache_dir": self.cache_dir,
            "calibration_data": self.calibration_data,
            "verify_data": self.verify_data,
            "random_inputs": self.random_inputs,
            "steps": [step.to_json() for step in self.steps],
        }
