"""Accuracy-aware automatic optimization (``--preset auto``): sensitivity analysis, then a budgeted search.

Method (issue #8):

1. **Candidates that need no search.** Every fixed preset that exists at run time (``lossless``, ``fast-cpu``,
   ``int8``, ``int8-dynamic``, ``fp16``, ``compact``, ``max``) is evaluated, so the result is never worse than the best
   preset that meets the budget. The ``lossless`` result is the *base* every lossy configuration starts from;
   the reproducer spec is ``lossless,<lossy passes>``.
2. **Per-layer sensitivity.** For each lossy technique registered in ``sftonnx.passes.REGISTRY`` and each
   layer it can target (Conv/Gemm/MatMul with a constant weight, named), the technique is applied to that
   layer alone at each level - ``quantize`` / ``quantize-dynamic``: int8 or float; ``prune-channels``:
   ``ratio`` 0.25 / 0.5 / 0.75; ``factorize-conv`` / ``factorize-gemm``: ``ratio`` (parameters kept) 0.5 / 0.25 - and
   the loss on the evaluation set is measured. Probes that change nothing (a layer the pass declines) drop
   the layer from that technique.
3. **Greedy back-off per technique.** Start with every layer at its most aggressive level that is feasible
   on its own; then back off (one level down) the layer with the largest probe loss, again and again: a
   *ladder* of configurations from most to least aggressive. The first feasible rung is found by galloping
   (rungs 0, 1, 3, 7, ...) and bisection, assuming that backing off never hurts.
4. **Compatible techniques.** A feasible structural configuration (channel pruning, factorization) gets the
   quantization ladder added on top, searched the same way.
5. **Selection.** Every non-probe candidate that ran is timed on the target EP with
   :func:`sftonnx.benchmark.run_benchmark` (interleaved with the original, serially), the front-runners once
   more; the chosen model is the fastest (``objective=latency``) or smallest (``objective=size``) feasible one.
6. **Distillation step.** With torch and calibration data, a lossy choice is trained against the original
   (``distill``, within what is left of ``time_budget``) and replaced by the result only when that lowers its
   budgeted loss; the step is reported with its time in ``SearchResult.steps`` (one skipped row, with the
   install hint, without torch).

Budgets (:class:`SearchBudget`):

* with ``evaluate`` (``labels.npz`` for top-1 accuracy, or ``module:function`` / a callable taking an
  ``onnxruntime.InferenceSession`` and returning a higher-is-better float), ``max_accuracy_drop`` bounds
  ``metric(original) - metric(candidate)``. Top-1 accuracy from labels is in **percent**, so ``1.0`` means one
  percentage point; a user metric is used in its own units.
* without labels, ``max_error`` bounds the **output error** ``1 - min cosine`` over the model's outputs (cosine
  similarity of all samples of an output flattened together, as :func:`sftonnx.verify.compare_outputs`
  computes it) against the original, on ``data`` or seeded random inputs, and ``min_agreement`` the task
  metric of each output's kind (argmax, threshold or label agreement). Candidates get the verdict of the very
  :class:`sftonnx.verify.Budget` the final verification checks
  (``Budget(min_cosine=1 - max_error, min_agreement=min_agreement)``, :meth:`SearchBudget.output_budget`), so
  the search never picks a model its final check refuses; a continuous score (the share of that budget used,
  :meth:`SearchBudget.score`) ranks probes for the back-off.

Candidates are cached on disk, keyed by (model hash, spec, data hashes, seed): an interrupted search resumes
where it stopped. Candidate evaluation may run in parallel processes; latency never does (see
:func:`measure_latency`). This package never prints: progress goes to a callback.

Modules: :mod:`~sftonnx.search.budget` (candidates, budget, ordering), :mod:`~sftonnx.search.techniques`
(what is searched per layer), :mod:`~sftonnx.search.ladder` (back-off ladders and their search),
:mod:`~sftonnx.search.cache` (records and hashes on disk), :mod:`~sftonnx.search.evaluation` (building and
measuring candidates, the process pool), :mod:`~sftonnx.search.latency` (timing),
:mod:`~sftonnx.search.pareto` (front and plot), :mod:`~sftonnx.search.run` (:func:`run_search` in phases)
and :mod:`~sftonnx.search.result` (:class:`SearchResult`).
"""

from __future__ import annotations

from sftonnx.search.budget import BudgetNotMetError, Candidate, SearchBudget
from sftonnx.search.cache import CACHE_VERSION
from sftonnx.search.latency import measure_latency
from sftonnx.search.pareto import pareto_front, write_pareto_plot
from sftonnx.search.result import SearchResult
from sftonnx.search.run import BASE_PRESET, FIXED_PRESETS, RANDOM_SAMPLES, measure_model, run_search
from sftonnx.search.techniques import TECHNIQUES, Technique, available_techniques

__all__ = [
    "BASE_PRESET",
    "CACHE_VERSION",
    "FIXED_PRESETS",
    "RANDOM_SAMPLES",
    "TECHNIQUES",
    "BudgetNotMetError",
    "Candidate",
    "SearchBudget",
    "SearchResult",
    "Technique",
    "available_techniques",
    "measure_latency",
    "measure_model",
    "pareto_front",
    "run_search",
    "write_pareto_plot",
]
