"""Greedy back-off ladders per technique, and the gallop-and-bisect search for their first feasible rung.

The searches are generators (they yield specs and receive evaluated candidates), so :func:`drive` can
advance several of them a step per round and evaluate each round's specs together, in parallel.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Generator, Mapping, Sequence

from sftonnx.search.budget import Candidate, SearchBudget
from sftonnx.search.techniques import Technique

__all__ = ["SearchGen", "drive", "ladder", "search_ladder"]

logger = logging.getLogger(__name__)


def ladder(
    technique: Technique,
    layers: Sequence[str],
    probes: Mapping[tuple[str, str, int], Candidate],
    budget: SearchBudget,
) -> list[dict[str, int]]:
    """Configurations from most to least aggressive: start where each layer is feasible alone, back off the worst.

    Each rung lowers the level of the layer whose current level had the largest probe loss (ties: graph
    order), skipping levels whose probe failed or was infeasible on its own. The all-zero configuration
    (nothing applied) is not a rung.
    """

    def usable(layer: str, level: int) -> bool:
        probe = probes.get((technique.name, layer, level))
        return probe is not None and probe.status == "ok" and probe.changed and budget.feasible(probe)

    def loss(layer: str, level: int) -> tuple[float, float]:
        return budget.loss(probes[(technique.name, layer, level)])

    config: dict[str, int] = {}
    for layer in layers:
        levels = [lv for lv in range(len(technique.levels), 0, -1) if usable(layer, lv)]
        config[layer] = levels[0] if levels else 0
    rungs = []
    while any(config.values()):
        rungs.append(dict(config))
        active = [layer for layer in layers if config[layer] > 0]
        worst = max(active, key=lambda layer: (loss(layer, config[layer]), -layers.index(layer)))
        level = config[worst] - 1
        while level > 0 and not usable(worst, level):
            level -= 1
        config[worst] = level
    return rungs


SearchGen = Generator[str, Candidate, "str | None"]


def search_ladder(rungs: Sequence[str], *, name: str) -> SearchGen:
    """Find the first feasible rung by galloping (0, 1, 3, 7, ...) then bisection; yields specs, gets candidates.

    Returns the lossy spec of the rung found, or ``None``.
    """
    rungs = [r for r in rungs if r]
    if not rungs:
        return None
    lo, hi = -1, None  # last rung known infeasible, first rung known feasible
    index, step = 0, 1
    while True:
        candidate = yield rungs[index]
        if candidate.feasible:
            hi = index
            break
        lo = index
        if index == len(rungs) - 1:
            break
        index, step = min(len(rungs) - 1, index + step), step * 2
    if hi is None:
        logger.debug("auto: no feasible rung for %s", name)
        return None
    while hi - lo > 1:
        middle = (lo + hi) // 2
        candidate = yield rungs[middle]
        if candidate.feasible:
            hi = middle
        else:
            lo = middle
    return rungs[hi]


def drive(
    searches: Mapping[str, SearchGen],
    run: Callable[[Sequence[str], Sequence[str]], list[Candidate]],
    budget: SearchBudget,
) -> dict[str, str | None]:
    """Advance every search one step per round; each round's specs are evaluated together (in parallel).

    Deterministic: rounds depend only on the candidates' figures, never on which worker finishes first.
    """
    del budget  # feasibility is on the candidates already
    found: dict[str, str | None] = {}
    pending: dict[str, str] = {}
    for name, search in searches.items():
        try:
            pending[name] = next(search)
        except StopIteration as stop:
            found[name] = stop.value
    counter: dict[str, int] = {}
    while pending:
        names = list(pending)
        labels = []
        for name in names:
            counter[name] = counter.get(name, 0) + 1
            labels.append(f"{name}#{counter[name]}")
        results = run([pending[n] for n in names], labels)
        for name, candidate in zip(names, results, strict=True):
            try:
                pending[name] = searches[name].send(candidate)
            except StopIteration as stop:
                found[name] = stop.value
                del pending[name]
    return found
