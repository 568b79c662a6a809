"""Output metrics and the limits they are held to.

Default tolerance for lossless (EXACT) passes: every element must satisfy
``|optimized - original| <= atol + rtol * |original|`` with ``atol = 1e-4`` and ``rtol = 1e-3``
(float32 re-association in folded weights stays well inside it). Lossy (APPROXIMATE) passes are held to a
budget: cosine similarity ``>= 0.99`` per output by default, and optionally max abs error and top-1
agreement.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import numpy as np

__all__ = [
    "DEFAULT_ATOL",
    "DEFAULT_MIN_COSINE",
    "DEFAULT_RTOL",
    "Budget",
    "Comparison",
    "OutputMetrics",
    "Tolerance",
    "compare_outputs",
]

DEFAULT_ATOL = 1e-4
DEFAULT_RTOL = 1e-3
DEFAULT_MIN_COSINE = 0.99

# ------------------------------------------------------------------------------------------- metrics
@dataclasses.dataclass(frozen=True)
class Tolerance:
    """Elementwise ``|actual - expected| <= atol + rtol * |expected|`` (lossless passes)."""

    atol: float = DEFAULT_ATOL
    rtol: float = DEFAULT_RTOL


@dataclasses.dataclass(frozen=True)
class Budget:
    """Limits for lossy passes, checked per output; ``None`` means not checked."""

    min_cosine: float | None = DEFAULT_MIN_COSINE
    max_abs: float | None = None
    min_top1: float | None = None


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
            return {"max_abs": 0.0, "mean_rel": 0.0, "cosine": 1.0, "top1_agreement": None}
        top1 = [m.top1_agreement for m in self.outputs if m.top1_agreement is not None]
        return {
            "max_abs": max(m.max_abs for m in self.outputs),
            "mean_rel": max(m.mean_rel for m in self.outputs),
            "cosine": min(m.cosine for m in self.outputs),
            "top1_agreement": min(top1) if top1 else None,
        }

    def to_json(self) -> dict[str, Any]:
        """JSON-able dict."""
        return {
            "passed": self.passed,
            "failures": self.failures,
            "outputs": [m.to_json() for m in self.outputs],
        }


def _classifier_like(array: np.ndarray) -> bool:
    squeezed = (
        array.reshape(array.shape[:2]) if array.ndim > 2 and all(d == 1 for d in array.shape[2:]) else array
    )
    return squeezed.ndim == 2 and squeezed.shape[1] > 1 and np.dtype(array.dtype).kind == "f"


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
        budget: Aggregate limits (lossy); checked when given.
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
        if all(_classifier_like(e) for e in exp):
            agree = [
                np.argmax(e.reshape(e.shape[0], -1), axis=1) == np.argmax(a.reshape(a.shape[0], -1), axis=1)
                for e, a in zip(exp, act, strict=False)
            ]
            top1 = float(np.mean(np.concatenate(agree)))
        within = True
        if tolerance is not None:
            limit = tolerance.atol + tolerance.rtol * np.abs(finite_e)
            if np.dtype(exp[0].dtype).kind not in "fc":
                limit = np.zeros_like(limit)
            bad = diff > limit
            if bad.any():
                within = False
                worst = int(np.argmax(diff - limit))
                failures.append(
                    f"output '{name}': {int(bad.sum())} of {bad.size} elements beyond atol={tolerance.atol:g} "
                    f"rtol={tolerance.rtol:g} (max abs error {max_abs:.3g}, at expected value {e_all[worst]:.4g})"
                )
        if budget is not None:
            if budget.min_cosine is not None and cosine < budget.min_cosine:
                within = False
                failures.append(f"output '{name}': cosine {cosine:.5f} < {budget.min_cosine:g}")
            if budget.max_abs is not None and max_abs > budget.max_abs:
                within = False
                failures.append(f"output '{name}': max abs error {max_abs:.4g} > {budget.max_abs:g}")
            if budget.min_top1 is not None and top1 is not None and top1 < budget.min_top1:
                within = False
                failures.append(f"output '{name}': top-1 agreement {top1:.4f} < {budget.min_top1:g}")
        metrics.append(OutputMetrics(name, max_abs, mean_rel, cosine, top1, within))
    return Comparison(metrics, not failures, failures)

