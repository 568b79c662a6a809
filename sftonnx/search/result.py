"""What :func:`~sftonnx.search.run.run_search` returns."""

from __future__ import annotations

import dataclasses
from typing import Any

from sftonnx.search.budget import Candidate, SearchBudget, objective_key

__all__ = ["SearchResult"]


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
        stats: ``evaluated`` (computed now) and ``cached`` (read from the cache) candidate counts, ``seconds``.
        cache_dir: Where candidates are cached.
        calibration_data: The calibration data the specs were evaluated with (pass it along to reproduce).
        verify_data: The inputs verification and the output error used.
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
    #: Candidates were judged on synthesized inputs (allowed explicitly: ``allow_random_verification``).
    random_inputs: bool = False

    @property
    def timed(self) -> list[Candidate]:
        """Candidates with a latency (the original first)."""
        return [c for c in [self.baseline, *self.candidates] if c.latency_ms is not None]

    def ranked(self) -> list[Candidate]:
        """Feasible candidates, best first by the objective."""
        feasible = [c for c in self.candidates if c.feasible and c.kind != "probe"]
        return sorted(feasible, key=lambda c: objective_key(c, self.objective))

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
        }
