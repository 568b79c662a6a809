"""Candidate evaluation: build a spec's model, measure it against the original, in this process or a pool.

Evaluation may run in spawned worker processes (:class:`CandidateEvaluator`); everything a worker needs is in
the picklable :class:`Task`. Latency is never measured here (see :mod:`sftonnx.search.latency`).
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import dataclasses
import hashlib
import logging
import math
import multiprocessing
import pathlib
import time
from collections.abc import Callable, Generator, Sequence
from typing import Any

import numpy as np

from sftonnx import io
from sftonnx import verify as verification
from sftonnx.errors import InputError, first_line
from sftonnx.evaluate import make_evaluator
from sftonnx.search.cache import read_record, write_record

__all__ = ["CandidateEvaluator", "Task", "evaluate_job", "measure"]


@dataclasses.dataclass(frozen=True)
class Task:
    """Everything a (possibly spawned) process needs to evaluate candidates; picklable."""

    key: str
    original_path: str
    folder: str
    evaluate: Any  # str (labels.npz or module:function) or a callable, or None
    verify_data: str | None
    input_shapes: tuple[tuple[str, tuple[int, ...]], ...]
    calibration: str | None
    threads: int
    scale: float  # metric multiplier (100 for top-1 from labels: percent)
    budget: verification.Budget | None = None  # the output budget candidates are judged with (the final check's)

    @property
    def judged_with(self) -> str:
        """The output budget as text: a cached record judged with another budget is measured again."""
        return repr(self.budget)


@dataclasses.dataclass
class _State:
    feeds: list[dict[str, np.ndarray]]
    names: list[str]
    expected: list[list[np.ndarray]]
    evaluator: Callable[[Any], float] | None


_STATES: dict[str, _State] = {}  # per process: the original's outputs and the evaluator, built once


def _state(task: Task) -> _State:
    if task.key in _STATES:
        return _STATES[task.key]
    original = io.load(task.original_path)
    feeds, _, _ = verification.prepare_feeds(original, data=task.verify_data, input_shapes=dict(task.input_shapes))
    session = verification.make_session(task.original_path, threads=task.threads)
    expected = verification.run_model(session, feeds)
    evaluator = None
    if task.evaluate is not None:
        # The same evaluator as `sftonnx bench --eval`, so accuracy means the same thing everywhere.
        evaluator, _ = make_evaluator(task.evaluate, verification.input_specs(original), None)
    state = _State(feeds, [o.name for o in session.get_outputs()], expected, evaluator)
    _STATES[task.key] = state
    return state


@contextlib.contextmanager
def _quiet_passes() -> Generator[None, None, None]:
    """Passes warn once per run (e.g. random calibration); over hundreds of candidates that is noise."""
    passes_logger = logging.getLogger("sftonnx.passes")
    level = passes_logger.level
    passes_logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        passes_logger.setLevel(level)


def measure(task: Task, path: str) -> dict[str, Any]:
    """Output error against the original, the output budget's verdict and the evaluation metric of ``path``.

    With ``task.budget`` the outputs are judged exactly as the final verification judges them
    (:func:`sftonnx.verify.compare_outputs`): ``within_budget`` is the verdict, ``budget_failure`` its first
    reason, ``agreement`` the worst task agreement and ``judged_error`` the worst ``1 - cosine`` over the
    outputs judged by each.
    """
    state = _state(task)
    session = verification.make_session(path, threads=task.threads)
    outputs = verification.run_model(session, state.feeds)
    comparison = verification.compare_outputs(state.names, state.expected, outputs, budget=task.budget)
    worst = comparison.worst()
    record: dict[str, Any] = {
        "cosine": worst["cosine"],
        "error": max(0.0, 1.0 - float(worst["cosine"])) if comparison.outputs else math.inf,
        "max_abs": worst["max_abs"],
        "top1_agreement": worst["top1_agreement"],
        "judged_with": task.judged_with,
    }
    if not all(m.shape_ok for m in comparison.outputs):
        record["error"] = math.inf
    if task.budget is not None:
        judged = [m.judged_by.split("+") for m in comparison.outputs]
        agreements = [m.agreement() for m, by in zip(comparison.outputs, judged, strict=True) if "agreement" in by]
        cosines = [m.cosine for m, by in zip(comparison.outputs, judged, strict=True) if "cosine" in by]
        record["within_budget"] = comparison.passed
        record["budget_failure"] = comparison.failures[0] if comparison.failures else ""
        record["agreement"] = min((a for a in agreements if a is not None), default=None)
        record["judged_error"] = max(0.0, 1.0 - min(cosines)) if cosines else 0.0
    if state.evaluator is not None:
        record["metric"] = float(state.evaluator(session)) * task.scale
    return record


def _remeasure(task: Task, record: dict[str, Any]) -> dict[str, Any]:
    """A cached record judged with another output budget: its cached model measured again (not rebuilt)."""
    started = time.perf_counter()
    fresh = {k: v for k, v in record.items() if k != "cached"}
    try:
        fresh.update(measure(task, record["model_path"]))
    except InputError as error:
        fresh.update(status="fatal", message=str(error))
    except Exception as error:  # onnxruntime cannot run the candidate: it fails alone
        fresh.update(status="failed", message=f"cannot run the model: {first_line(error)}")
    fresh["seconds"] = float(record.get("seconds") or 0.0) + time.perf_counter() - started
    fresh["remeasured"] = True
    return fresh


def evaluate_job(task: Task, job: dict[str, Any]) -> dict[str, Any]:
    """Build one candidate (``job['spec']`` applied to ``job['source']``), write it to the cache and measure it.

    Returns a record; ``status`` is ``fatal`` when the evaluation function itself failed (a usage error).
    """
    from sftonnx.passes import PRESETS, REGISTRY
    from sftonnx.pipeline import build_passes, optimize_model

    started = time.perf_counter()
    folder = pathlib.Path(task.folder)
    path = folder / f"{job['key']}.onnx"
    record: dict[str, Any] = {"key": job["key"], "spec": job["spec"], "status": "ok", "message": ""}
    try:
        with _quiet_passes():
            built = build_passes(job["spec"], REGISTRY, PRESETS, extra={"calibration_data": task.calibration})
            result = optimize_model(
                job["source"],
                path,
                built,
                verify_result=False,
                input_shapes=dict(task.input_shapes) or None,
                overwrite=True,
            )
    except Exception as error:  # any pipeline failure makes this candidate fail, not the search
        record.update(status="failed", message=first_line(error))
        record["seconds"] = time.perf_counter() - started
        return record
    lossy = [row for row in result.report.rows if row.numerics != "exact"]
    record["changed"] = any(row.changes for row in lossy) if lossy else True
    record["rows"] = [
        {"pass": row.name, "status": row.status, "message": row.message, "seconds": round(row.seconds, 3),
         "changes": dict(row.changes), "skipped": dict(row.skipped), "details": row.details}
        for row in lossy
    ]
    record["size_bytes"] = result.report.output_size
    record["model_path"] = str(path)
    record["sha256"] = hashlib.sha256(path.read_bytes()).hexdigest()
    try:
        record.update(measure(task, str(path)))
    except InputError as error:  # the user's metric failed: stop the search with its message
        record.update(status="fatal", message=str(error))
    except Exception as error:  # onnxruntime cannot run the candidate: it fails alone
        record.update(status="failed", message=f"cannot run the model: {first_line(error)}")
    record["seconds"] = time.perf_counter() - started
    return record


def _worker_init() -> None:
    logging.getLogger("sftonnx").setLevel(logging.ERROR)


class CandidateEvaluator:
    """Runs candidate jobs through the disk cache, in this process or a spawned process pool."""

    def __init__(self, task: Task, workers: int, progress: Callable[[float, float, str], None] | None) -> None:
        self.task = task
        self.workers = workers
        self.progress = progress
        self.done = 0
        self.total = 0
        self.evaluated = 0
        self.cached = 0
        self.remeasured = 0  # cached models measured again under another output budget (counted in evaluated)
        self.pool: concurrent.futures.ProcessPoolExecutor | None = None

    def __enter__(self) -> CandidateEvaluator:
        if self.workers > 1:
            self.pool = concurrent.futures.ProcessPoolExecutor(
                max_workers=self.workers,
                mp_context=multiprocessing.get_context("spawn"),
                initializer=_worker_init,
            )
        return self

    def __exit__(self, *exc: object) -> None:
        if self.pool is not None:
            self.pool.shutdown(wait=True, cancel_futures=True)

    def run(self, jobs: Sequence[dict[str, Any]], phase: str) -> list[dict[str, Any]]:
        """Records for ``jobs`` (each ``{key, spec, source}``), from the cache or evaluated (in parallel).

        Raises:
            InputError: The evaluation function failed on a candidate.
        """
        folder = pathlib.Path(self.task.folder)
        results: dict[int, dict[str, Any]] = {}
        todo: list[int] = []
        self.total += len(jobs)
        stale: dict[int, dict[str, Any]] = {}
        for index, job in enumerate(jobs):
            cached = read_record(folder, job["key"])
            if cached is not None and (
                cached.get("status") != "ok" or cached.get("judged_with") == self.task.judged_with
            ):
                results[index] = cached | {"cached": True}
                self.cached += 1
                self._tick(phase)
            else:
                if cached is not None:  # built already, judged with another output budget: measure again only
                    stale[index] = cached
                todo.append(index)

        def work(index: int) -> tuple[Callable[..., dict[str, Any]], tuple[Any, ...]]:
            if index in stale:
                return _remeasure, (self.task, stale[index])
            return evaluate_job, (self.task, jobs[index])

        if self.pool is None:
            for index in todo:
                function, arguments = work(index)
                results[index] = self._store(function(*arguments), phase)
        else:
            futures = {}
            for index in todo:
                function, arguments = work(index)
                futures[self.pool.submit(function, *arguments)] = index
            for future in concurrent.futures.as_completed(futures):
                results[futures[future]] = self._store(future.result(), phase)
        return [results[i] for i in range(len(jobs))]

    def _store(self, record: dict[str, Any], phase: str) -> dict[str, Any]:
        if record["status"] == "fatal":
            raise InputError(record["message"])
        self.evaluated += 1
        self.remeasured += bool(record.pop("remeasured", False))
        write_record(pathlib.Path(self.task.folder), record)
        self._tick(phase)
        return record | {"cached": False}

    def _tick(self, phase: str) -> None:
        self.done += 1
        if self.progress is not None:
            self.progress(self.done, self.total, phase)
