"""Output metrics and the limits they are held to.

Lossless (EXACT) pipelines: every element must satisfy
``|optimized - original| <= atol + rtol * |original| + scale_rtol * max|original|`` with ``atol = 1e-4``,
``rtol = 1e-3`` and ``scale_rtol = 1e-6`` (float32 re-association in folded weights stays well inside it).

Lossy (APPROXIMATE) pipelines are held to a :class:`Budget`, per output, on real data (``--data`` or held-out
calibration samples; see :mod:`sftonnx.verify.data`). Each output gets a *kind*, decided from the original's
values, which says what agreement means for it:

========== ============================================================ =====================================
kind       when (original's outputs)                                     task metric
========== ============================================================ =====================================
labels     integer or bool                                              fraction of equal elements
probs      float in [0, 1], rank >= 2, last axis >= 2, sums to 1 on it  argmax agreement (near-ties agree)
sigmoid    float in [0, 1] otherwise (a probability map)                same side of 0.5, per element
scores     other float, rank 2 or 3 (trailing 1s dropped), last >= 2   argmax agreement (near-ties agree)
values     anything else                                               none (cosine only)
========== ============================================================ =====================================

Near-ties: a pick the original scores within ``TIE_FRACTION`` (1%) of the row's range below its best
counts as agreeing (an argmax among near-equal scores is decided by rounding, not by the model).

Default budget (``Budget()``: ``--min-cosine 0.99 --min-agreement 0.99``):

- ``labels``, ``probs`` and ``sigmoid`` outputs are decisions: the output passes when its agreement is
  ``>= 0.99``, measured over at least ``MIN_DECISIONS`` (100) decisions (positions, samples or elements);
  their cosine is reported, not judged. A per-element map can be ~0 everywhere (a text detector's map on a
  blank region) where cosine says nothing, and an int8 detector whose map falls on the same side of 0.5 on
  99% of the pixels finds the same text. With fewer decisions the agreement is too coarse to stand alone
  and cosine ``>= 0.99`` must hold too.
- ``scores`` (unnormalised logits, but also regressions that merely look like them) must hold both: argmax
  agreement ``>= 0.99`` and cosine ``>= 0.99``. A recognizer whose per-position argmax agreement falls to
  0.61 is refused whatever its cosine. A rank-3 output with fewer than ``MIN_DECISIONS`` rows (a detector
  head ``[1, 84, anchors]``) may not hold classes on its last axis at all, and one flip is already more than
  1%: there cosine decides and the agreement is reported.
- ``values`` outputs are held to cosine ``>= 0.99``; when the original is negligible (RMS below
  ``NEGLIGIBLE_RMS``) cosine is meaningless, and the optimized output must then stay within
  ``NEGLIGIBLE_RMS * 10`` of it in max abs error instead.

``Budget(min_agreement=None)`` switches the task metrics off (cosine on every output, as the accuracy-aware
search uses it). ``max_abs`` and ``min_top1`` limits are optional extras.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import numpy as np

__all__ = [
    "classifier_like",
    "DEFAULT_ATOL",
    "DEFAULT_MIN_AGREEMENT",
    "DEFAULT_MIN_COSINE",
    "DEFAULT_RTOL",
    "DEFAULT_SCALE_RTOL",
    "MIN_DECISIONS",
    "NEGLIGIBLE_RMS",
    "THRESHOLD",
    "Budget",
    "Comparison",
    "OutputMetrics",
    "Tolerance",
    "compare_outputs",
    "output_kind",
]

DEFAULT_ATOL = 1e-4
DEFAULT_RTOL = 1e-3
#: Tolerance relative to an output's largest magnitude (float32 summation error), see :class:`Tolerance`.
DEFAULT_SCALE_RTOL = 1e-6
DEFAULT_MIN_COSINE = 0.99
#: An argmax pick within this fraction of the row's range below the original's best is a near-tie (agrees).
TIE_FRACTION = 0.01
#: Least agreement (argmax, same side of the threshold, equal labels) of a decision output.
DEFAULT_MIN_AGREEMENT = 0.99
#: Decisions an agreement must be measured over to decide an output alone (else cosine must hold too).
MIN_DECISIONS = 100
#: Threshold of ``sigmoid`` outputs (probability maps).
THRESHOLD = 0.5
#: Root-mean-square below which an original output is ~0 everywhere and its cosine says nothing.
NEGLIGIBLE_RMS = 1e-3

# ------------------------------------------------------------------------------------------- metrics
@dataclasses.dataclass(frozen=True)
class Tolerance:
    """Elementwise ``|actual - expected| <= atol + rtol * |expected| + scale_rtol * max|expected|`` (lossless).

    The last term is the float32 rounding of the sums that made the output: their error scales with the
    magnitude of the terms, not of the result, so an element near 0 in an output whose values reach 7e4 (a
    detector's heat-map logits) moves by a few 1e-2 when a lossless fold re-associates them. ``scale_rtol``
    (1e-6, about 8 float32 ulps at the output's largest magnitude) is negligible for outputs of ordinary size.
    """

    atol: float = DEFAULT_ATOL
    rtol: float = DEFAULT_RTOL
    scale_rtol: float = DEFAULT_SCALE_RTOL


@dataclasses.dataclass(frozen=True)
class Budget:
    """Limits for lossy passes, checked per output; ``None`` means not checked."""

    min_cosine: float | None = DEFAULT_MIN_COSINE
    max_abs: float | None = None
    min_top1: float | None = None
    min_agreement: float | None = DEFAULT_MIN_AGREEMENT


@dataclasses.dataclass
class OutputMetrics:
    """How far one output of the optimized model is from the original's."""

    name: str
    max_abs: float
    mean_rel: float
    cosine: float
    top1_agreement: float | None
    within_tolerance: bool
    shape_ok: bool = True
    kind: str = "values"
    argmax_agreement: float | None = None
    threshold_agreement: float | None = None
    label_agreement: float | None = None
    decisions: int = 0
    judged_by: str = ""

    def agreement(self) -> float | None:
        """The task metric of this output's kind (``None`` for ``values``)."""
        return {
            "labels": self.label_agreement,
            "probs": self.argmax_agreement,
            "scores": self.argmax_agreement,
            "sigmoid": self.threshold_agreement,
        }.get(self.kind)

    def to_json(self) -> dict[str, Any]:
        """JSON-able dict."""
        return dataclasses.asdict(self)


@dataclasses.dataclass
class Comparison:
    """Metrics per output over all samples, and whether the limits held."""

    outputs: list[OutputMetrics]
    passed: bool
    failures: list[str]

    def worst(self) -> dict[str, float | None]:
        """Worst value of each metric over outputs (for report tables)."""
        if not self.outputs:
            return {"max_abs": 0.0, "mean_rel": 0.0, "cosine": 1.0, "top1_agreement": None, "agreement": None}

        def least(field: str) -> float | None:
            values = [getattr(m, field) for m in self.outputs if getattr(m, field) is not None]
            return min(values) if values else None

        agreements = [a for m in self.outputs if (a := m.agreement()) is not None]
        return {
            "max_abs": max(m.max_abs for m in self.outputs),
            "mean_rel": max(m.mean_rel for m in self.outputs),
            "cosine": min(m.cosine for m in self.outputs),
            "top1_agreement": least("top1_agreement"),
            "argmax_agreement": least("argmax_agreement"),
            "threshold_agreement": least("threshold_agreement"),
            "agreement": min(agreements) if agreements else None,
        }

    def to_json(self) -> dict[str, Any]:
        """JSON-able dict."""
        return {
            "passed": self.passed,
            "failures": self.failures,
            "outputs": [m.to_json() for m in self.outputs],
        }


def classifier_like(array: np.ndarray) -> bool:
    """A float ``[N, C]`` output (trailing 1-dims squeezed) with C > 1: top-1 agreement means something."""
    squeezed = (
        array.reshape(array.shape[:2]) if array.ndim > 2 and all(d == 1 for d in array.shape[2:]) else array
    )
    return squeezed.ndim == 2 and squeezed.shape[1] > 1 and np.dtype(array.dtype).kind == "f"


def _squeeze_trailing(array: np.ndarray) -> np.ndarray:
    """Drop trailing unit axes (``[N, C, 1, 1]`` -> ``[N, C]``), keeping at least one axis."""
    shape = list(array.shape)
    while len(shape) > 1 and shape[-1] == 1:
        shape.pop()
    return array.reshape(shape)


def output_kind(samples: Sequence[np.ndarray]) -> str:
    """What agreement means for an output, from the original's values (see the module docstring).

    Returns:
        ``labels``, ``probs``, ``sigmoid``, ``scores`` or ``values``.
    """
    arrays = [np.asarray(a) for a in samples]
    if not arrays or any(a.size == 0 for a in arrays):
        return "values"
    kinds = {np.dtype(a.dtype).kind for a in arrays}
    if kinds <= set("iub"):
        return "labels"
    if kinds != {"f"} or not all(np.isfinite(a).all() for a in arrays):
        return "values"
    squeezed = [_squeeze_trailing(a) for a in arrays]
    if all(float(a.min()) >= 0.0 and float(a.max()) <= 1.0 for a in arrays):
        if all(
            s.ndim >= 2 and s.shape[-1] >= 2 and np.allclose(s.astype(np.float64).sum(-1), 1.0, atol=1e-2)
            for s in squeezed
        ):
            return "probs"
        return "sigmoid"
    if all(s.ndim in (2, 3) and s.shape[-1] >= 2 for s in squeezed):
        return "scores"
    return "values"


def _argmax_agrees(expected: np.ndarray, actual: np.ndarray) -> np.ndarray:
    """Per position: does the optimized model pick the original's top-1 over the last axis, up to near-ties?

    A pick counts as agreeing when the original scores it within ``TIE_FRACTION`` of the row's range below its
    own best: among near-equal scores (a detector's anchors, a blank against a character at a boundary) the
    argmax is decided by rounding, not by the model; a real change of decision picks what the original scored
    clearly lower.
    """
    e = _squeeze_trailing(expected).astype(np.float64)
    picked = np.argmax(_squeeze_trailing(actual), axis=-1)
    best = e.max(axis=-1)
    at_pick = np.take_along_axis(e, picked[..., None], axis=-1)[..., 0]
    return (at_pick >= best - TIE_FRACTION * (best - e.min(axis=-1))).ravel()


def _task_metrics(kind: str, exp: Sequence[np.ndarray], act: Sequence[np.ndarray]) -> dict[str, Any]:
    """Agreement fields of one output (all samples pooled) and the number of decisions behind them."""
    if kind in ("probs", "scores"):
        pooled = np.concatenate([_argmax_agrees(e, a) for e, a in zip(exp, act, strict=True)])
        return {"argmax_agreement": float(pooled.mean()), "decisions": int(pooled.size)}
    if kind == "sigmoid":
        same = np.concatenate(
            [((e >= THRESHOLD) == (a >= THRESHOLD)).ravel() for e, a in zip(exp, act, strict=True)]
        )
        return {"threshold_agreement": float(same.mean()), "decisions": int(same.size)}
    if kind == "labels":
        equal = np.concatenate([(e == a).ravel() for e, a in zip(exp, act, strict=True)])
        return {"label_agreement": float(equal.mean()), "decisions": int(equal.size)}
    return {}


def compare_outputs(
    names: Sequence[str],
    expected: Sequence[Sequence[np.ndarray]],
    actual: Sequence[Sequence[np.ndarray]],
    *,
    tolerance: Tolerance | None = None,
    budget: Budget | None = None,
) -> Comparison:
    """Compare per-sample output lists of two models.

    Args:
        names: Output names (of the original model).
        expected: Per sample, the original's outputs.
        actual: Per sample, the optimized model's outputs.
        tolerance: Elementwise limits (lossless); checked when given.
        budget: Per-output limits (lossy, see the module docstring); checked when given.
    """
    metrics: list[OutputMetrics] = []
    failures: list[str] = []
    for index, name in enumerate(names):
        exp = [sample[index] for sample in expected]
        act = [sample[index] if index < len(sample) else None for sample in actual]
        if any(a is None or a.shape != e.shape for a, e in zip(act, exp, strict=False)):
            got = [None if a is None else list(a.shape) for a in act]
            metrics.append(OutputMetrics(name, float("inf"), float("inf"), 0.0, None, False, shape_ok=False))
            failures.append(f"output '{name}': shape {got[0]} instead of {list(exp[0].shape)}")
            continue
        e_all = np.concatenate([np.asarray(e, dtype=np.float64).ravel() for e in exp]) if exp else np.zeros(0)
        a_all = np.concatenate([np.asarray(a, dtype=np.float64).ravel() for a in act]) if act else np.zeros(0)
        both_nan = np.isnan(e_all) & np.isnan(a_all)
        same_inf = np.isinf(e_all) & (e_all == a_all)
        ok_special = both_nan | same_inf
        diff = np.where(ok_special, 0.0, np.abs(a_all - e_all))
        diff = np.nan_to_num(diff, nan=np.inf)
        finite_e = np.where(ok_special, 0.0, e_all)
        max_abs = float(diff.max()) if diff.size else 0.0
        mean_rel = float(np.mean(diff / (np.abs(finite_e) + 1e-6))) if diff.size else 0.0
        e_f, a_f = np.where(ok_special, 0, e_all), np.where(ok_special, 0, a_all)
        norm = float(np.linalg.norm(e_f) * np.linalg.norm(a_f))
        cosine = float(e_f @ a_f / norm) if norm > 0 and np.isfinite(norm) else float(np.allclose(e_f, a_f))
        top1 = None
        if all(classifier_like(e) for e in exp):
            agree = [
                np.argmax(e.reshape(e.shape[0], -1), axis=1) == np.argmax(a.reshape(a.shape[0], -1), axis=1)
                for e, a in zip(exp, act, strict=False)
            ]
            top1 = float(np.mean(np.concatenate(agree)))
        kind = output_kind(exp)
        metric = OutputMetrics(name, max_abs, mean_rel, cosine, top1, True, kind=kind, **_task_metrics(kind, exp, act))
        problems: list[str] = []
        if tolerance is not None:
            metric.judged_by = "tolerance"
            scale = float(np.max(np.abs(finite_e[np.isfinite(finite_e)]), initial=0.0))
            limit = tolerance.atol + tolerance.rtol * np.abs(finite_e) + tolerance.scale_rtol * scale
            if np.dtype(exp[0].dtype).kind not in "fc":
                limit = np.zeros_like(limit)
            bad = diff > limit
            if bad.any():
                worst = int(np.argmax(diff - limit))
                problems.append(
                    f"output '{name}': {int(bad.sum())} of {bad.size} elements beyond atol={tolerance.atol:g} "
                    f"rtol={tolerance.rtol:g} (max abs error {max_abs:.3g}, at expected value {e_all[worst]:.4g})"
                )
        if budget is not None:
            problems.extend(_check_budget(metric, budget, e_f, rank=_squeeze_trailing(exp[0]).ndim))
        metric.within_tolerance = not problems
        failures.extend(problems)
        metrics.append(metric)
    return Comparison(metrics, not failures, failures)


_AGREEMENT_NAMES = {
    "labels": "label agreement",
    "probs": "argmax agreement",
    "scores": "argmax agreement",
    "sigmoid": f"agreement on the side of {THRESHOLD:g}",
}


def _check_budget(metric: OutputMetrics, budget: Budget, reference: np.ndarray, *, rank: int) -> list[str]:
    """The budget's verdict on one output (see the module docstring); sets ``metric.judged_by``."""
    name, problems, judged = metric.name, [], []
    agreement = metric.agreement() if budget.min_agreement is not None else None
    judge_cosine = budget.min_cosine is not None
    few_rows = metric.decisions < MIN_DECISIONS and rank == 3
    if agreement is not None and metric.kind == "scores" and few_rows and judge_cosine:
        # Few rows of rank-3 raw scores (a detector head [1, 84, anchors]): the last axis may be anchors, not
        # classes, and one flip is already > 1%; cosine decides, the agreement is reported.
        agreement = None
    if agreement is not None:
        judged.append("agreement")
        if agreement < budget.min_agreement:  # type: ignore[operator]
            problems.append(
                f"output '{name}' ({metric.kind}): {_AGREEMENT_NAMES[metric.kind]} {agreement:.4f} "
                f"< {budget.min_agreement:g} over {metric.decisions} decisions"
            )
        if metric.kind != "scores" and metric.decisions >= MIN_DECISIONS:
            judge_cosine = False  # a decision output measured on enough decisions: agreement decides
    negligible = reference.size == 0 or float(np.sqrt(np.mean(reference**2))) < NEGLIGIBLE_RMS
    if judge_cosine and negligible and budget.min_agreement is not None:
        judge_cosine = False  # cosine of a ~0 output says nothing
        if agreement is None:
            judged.append("max_abs(negligible reference)")
            if metric.max_abs > NEGLIGIBLE_RMS * 10:
                problems.append(
                    f"output '{name}': the original is ~0 (RMS < {NEGLIGIBLE_RMS:g}) and the optimized output "
                    f"departs from it by {metric.max_abs:.4g}"
                )
    if judge_cosine:
        judged.append("cosine")
        if metric.cosine < budget.min_cosine:  # type: ignore[operator]
            problems.append(f"output '{name}': cosine {metric.cosine:.5f} < {budget.min_cosine:g}")
    if budget.max_abs is not None:
        judged.append("max_abs")
        if metric.max_abs > budget.max_abs:
            problems.append(f"output '{name}': max abs error {metric.max_abs:.4g} > {budget.max_abs:g}")
    if budget.min_top1 is not None and metric.top1_agreement is not None:
        judged.append("top1")
        if metric.top1_agreement < budget.min_top1:
            problems.append(f"output '{name}': top-1 agreement {metric.top1_agreement:.4f} < {budget.min_top1:g}")
    metric.judged_by = "+".join(judged) if metric.judged_by == "" else metric.judged_by + "+" + "+".join(judged)
    return problems
