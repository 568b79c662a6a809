"""Rank selection, (whitened) truncated SVD and global rank allocation shared by the factorization passes.

A linear layer ``y = W x`` (``W`` is ``m x n``) is replaced by ``y = L (R x)`` with ``L`` ``m x r`` and
``R`` ``r x n``. Two objectives are used:

* weight error (no data): ``||W - L R||_F``. Its minimizer is the truncated SVD ``W = U S V^T``,
  ``L = U_r S_r^{1/2}``, ``R = S_r^{1/2} V_r^T`` (Eckart-Young); the squared error at rank ``r`` is
  ``sum_{i > r} s_i^2``.
* output error (calibration data): ``E ||(W - L R) x||^2 = ||(W - L R) Sigma^{1/2}||_F^2`` with the input
  autocorrelation ``Sigma = E[x x^T]``. Its minimizer is the *whitened* SVD: factor
  ``W Sigma^{1/2} = U S V^T``, then ``L = U_r S_r^{1/2}``, ``R = S_r^{1/2} V_r^T Sigma^{-1/2}``; the
  squared output error at rank ``r`` is again ``sum_{i > r} s_i^2`` and ``sum_i s_i^2 = E||W x||^2``.
  (After SVD-LLM / ASVD; ``Sigma^{-1/2}`` uses eigenvalues floored at ``EIGEN_FLOOR * lambda_max`` so
  unused input directions cannot blow the factors up. At full rank ``L R = W`` whatever the floor.)

:class:`WeightedSVD` does both, batched over leading axes, with an optional left weight as well (the
``Sigma`` of the rows: ``||Sigma_l^{1/2} (M - L R)||``). Relative errors (``tail / total``) make layers
comparable; :func:`allocate` spends a global MAC budget over per-layer options greedily by error removed
per MAC along each layer's lower convex hull of still-affordable options (a multiple-choice knapsack
heuristic).
"""

from __future__ import annotations

import dataclasses
import heapq
import logging
from collections.abc import Sequence
from typing import Any

import numpy as np

__all__ = [
    "EIGEN_FLOOR",
    "Option",
    "WeightedSVD",
    "allocate",
    "psd_sqrt",
    "rank_for_energy",
    "rank_for_error",
    "refit_output",
    "relative_tail",
]

logger = logging.getLogger(__name__)

#: Eigenvalues of an autocorrelation matrix are floored at this fraction of the largest one.
EIGEN_FLOOR = 1e-6
#: Slack when comparing retained energy with a requested fraction (float64 sums of squares).
_ENERGY_SLACK = 1e-9


def psd_sqrt(sigma: np.ndarray, floor: float = EIGEN_FLOOR) -> tuple[np.ndarray, np.ndarray]:
    """Square root and inverse square root of symmetric PSD matrices (batched over leading axes).

    ``Sigma = Q diag(w) Q^T``; ``w`` is floored at ``floor * max(w)`` (and at a tiny absolute value) so the
    inverse exists. Returns ``(Q diag(w)^{1/2} Q^T, Q diag(w)^{-1/2} Q^T)``.
    """
    sigma = np.asarray(sigma, dtype=np.float64)
    sigma = 0.5 * (sigma + np.swapaxes(sigma, -1, -2))
    w, q = np.linalg.eigh(sigma)
    top = np.max(w, axis=-1, keepdims=True)
    w = np.maximum(w, np.maximum(floor * top, 1e-30))
    qt = np.swapaxes(q, -1, -2)
    root = (q * np.sqrt(w)[..., None, :]) @ qt
    inverse = (q / np.sqrt(w)[..., None, :]) @ qt
    return root, inverse


@dataclasses.dataclass
class WeightedSVD:
    """SVD of ``Sigma_l^{1/2} M Sigma_r^{1/2}``, batched, with the inverse weights kept for the factors.

    Attributes:
        u: Left singular vectors, ``(..., m, k)``.
        s: Singular values, descending, ``(..., k)``.
        vt: Right singular vectors, ``(..., k, n)``.
        left_inv: ``Sigma_l^{-1/2}`` or ``None`` (unweighted rows).
        right_inv: ``Sigma_r^{-1/2}`` or ``None`` (unweighted columns).
    """

    u: np.ndarray
    s: np.ndarray
    vt: np.ndarray
    left_inv: np.ndarray | None = None
    right_inv: np.ndarray | None = None

    @classmethod
    def of(
        cls,
        matrix: np.ndarray,
        *,
        left_gram: np.ndarray | None = None,
        right_gram: np.ndarray | None = None,
    ) -> WeightedSVD:
        """Decompose ``matrix`` (``(..., m, n)``) weighted by optional row/column autocorrelations.

        Args:
            matrix: The matrices to factor.
            left_gram: ``(..., m, m)`` PSD weight on the rows (``None``: identity).
            right_gram: ``(..., n, n)`` PSD weight on the columns, e.g. the input autocorrelation of
                ``y = M x`` (``None``: identity).
        """
        weighted = np.asarray(matrix, dtype=np.float64)
        left_inv = right_inv = None
        if left_gram is not None:
            root, left_inv = psd_sqrt(left_gram)
            weighted = root @ weighted
        if right_gram is not None:
            root, right_inv = psd_sqrt(right_gram)
            weighted = weighted @ root
        u, s, vt = np.linalg.svd(weighted, full_matrices=False)
        return cls(u, s, vt, left_inv, right_inv)

    @property
    def full_rank(self) -> int:
        """Number of singular values per matrix."""
        return int(self.s.shape[-1])

    def energy(self) -> np.ndarray:
        """Squared singular values, ``(..., k)``."""
        return self.s**2

    def factors(self, rank: int) -> tuple[np.ndarray, np.ndarray]:
        """``(L, R)`` with ``L @ R`` the best rank-``rank`` approximation in the weighted norm.

        ``L = Sigma_l^{-1/2} U_r S_r^{1/2}`` (``(..., m, r)``), ``R = S_r^{1/2} V_r^T Sigma_r^{-1/2}``
        (``(..., r, n)``); singular values are split evenly so both factors have similar magnitude.
        """
        rank = max(1, min(int(rank), self.full_rank))
        root = np.sqrt(self.s[..., :rank])
        left = self.u[..., :, :rank] * root[..., None, :]
        right = root[..., :, None] * self.vt[..., :rank, :]
        if self.left_inv is not None:
            left = self.left_inv @ left
        if self.right_inv is not None:
            right = right @ self.right_inv
        return left, right


def refit_output(weight: np.ndarray, expand: np.ndarray, gram: np.ndarray, ridge: float = 1e-9) -> np.ndarray:
    """Least-squares output factor given the input-side factor, under the input autocorrelation.

    For ``y = W p`` approximated as ``y ~ F q`` with the intermediate ``q = E p`` fixed, the ``F`` that
    minimizes ``E ||W p - F E p||^2 = tr((W - F E) Sigma (W - F E)^T)`` is
    ``F = W Sigma E^T (E Sigma E^T + lambda I)^{-1}`` (``lambda`` a tiny ridge relative to the trace).
    Unlike per-slice fits it accounts for all correlations in ``Sigma``; never worse than any other ``F``.

    Args:
        weight: ``W``, ``(..., m, n)``.
        expand: ``E``, ``(..., q, n)``.
        gram: ``Sigma``, ``(..., n, n)``.
        ridge: Regularization relative to ``tr(E Sigma E^T) / q``.

    Returns:
        ``F``, ``(..., m, q)``.
    """
    et = np.swapaxes(expand, -1, -2)
    inner = expand @ gram @ et
    scale = np.trace(inner, axis1=-2, axis2=-1)[..., None, None] / inner.shape[-1]
    system = inner + ridge * np.maximum(scale, 1e-30) * np.eye(inner.shape[-1])
    cross = weight @ gram @ et  # (..., m, q)
    return np.swapaxes(np.linalg.solve(system, np.swapaxes(cross, -1, -2)), -1, -2)


def relative_tail(energy: np.ndarray) -> np.ndarray:
    """Relative squared error at each rank ``r = 0..k`` when ``r`` components of every matrix are kept.

    Args:
        energy: Squared singular values ``(..., k)``; leading axes are matrices truncated at the same rank
            (e.g. the input channels of a separable factorization) and summed.

    Returns:
        ``err`` of length ``k + 1``: ``err[r] = sum_{i >= r} energy[..., i] / sum energy`` (``err[k] = 0``).
    """
    per_rank = np.asarray(energy, dtype=np.float64).reshape(-1, energy.shape[-1]).sum(axis=0)
    total = float(per_rank.sum())
    if total <= 0.0:
        return np.zeros(per_rank.size + 1)
    tail = np.concatenate([np.cumsum(per_rank[::-1])[::-1], [0.0]]) / total
    return np.clip(tail, 0.0, 1.0)


def rank_for_energy(tail: np.ndarray, energy: float) -> int:
    """Smallest rank ``r >= 1`` that keeps at least ``energy`` of the total (``1 - tail[r] >= energy``)."""
    for rank in range(1, len(tail)):
        if 1.0 - tail[rank] >= energy - _ENERGY_SLACK:
            return rank
    return len(tail) - 1


def rank_for_error(tail: np.ndarray, max_error: float) -> int:
    """Smallest rank ``r >= 1`` whose relative error ``sqrt(tail[r])`` is at most ``max_error``."""
    for rank in range(1, len(tail)):
        if np.sqrt(tail[rank]) <= max_error + _ENERGY_SLACK:
            return rank
    return len(tail) - 1


@dataclasses.dataclass(frozen=True)
class Option:
    """One way to treat a layer: its cost and its relative squared (output or weight) error.

    Attributes:
        macs: Multiply-accumulates of the layer after the rewrite (per sample).
        params: Weight elements after the rewrite.
        error: Relative squared error (``0`` for the original layer).
        choice: What to build (ranks, mode); ``None`` keeps the original layer.
    """

    macs: float
    params: int
    error: float
    choice: Any = None


def allocate(candidates: Sequence[Sequence[Option]], mac_budget: float) -> tuple[list[Option], bool]:
    """Pick one option per layer so that total MACs stay within ``mac_budget`` and total error is low.

    Every layer starts at its cheapest option. Then, repeatedly, the step that removes the most relative
    error per added MAC is taken: for each layer the step goes to the option (among those with less error
    whose extra MACs still fit the remaining budget) with the steepest error decrease per MAC, i.e. the
    next vertex of the lower convex hull of the affordable options. Steps are re-evaluated lazily when the
    remaining budget shrinks, so a large hull step that no longer fits gives way to smaller ones. Gains
    below ``1e-12`` (round-off in the tail of a spectrum) are not worth MACs. Each layer's list should
    contain its original (``choice=None``) option.

    Returns:
        The chosen option per layer, and whether the budget was met (``False`` when even the cheapest
        options exceed it; the cheapest are returned then).
    """
    pools = [sorted(options, key=lambda o: (o.macs, o.error)) for options in candidates]
    current = [pool[0] for pool in pools]
    total = sum(option.macs for option in current)
    met = total <= mac_budget * (1 + 1e-12)

    def best_step(layer: int) -> tuple[float, Option] | None:
        here = current[layer]
        room = mac_budget - total
        best: tuple[float, Option] | None = None
        for option in pools[layer]:
            gain = here.error - option.error
            cost = option.macs - here.macs
            if gain <= 1e-12 or cost > room:
                continue
            slope = gain / max(cost, 1e-12)
            if best is None or slope > best[0]:
                best = (slope, option)
        return best

    heap: list[tuple[float, int]] = []
    for layer in range(len(pools)):
        step = best_step(layer)
        if step is not None:
            heapq.heappush(heap, (-step[0], layer))
    while heap:
        negative, layer = heapq.heappop(heap)
        step = best_step(layer)
        if step is None:
            continue
        if step[0] < -negative * (1 - 1e-9):  # the budget shrank since this entry: re-queue at its new slope
            heapq.heappush(heap, (-step[0], layer))
            continue
        total += step[1].macs - current[layer].macs
        current[layer] = step[1]
        following = best_step(layer)
        if following is not None:
            heapq.heappush(heap, (-following[0], layer))
    return current, met
