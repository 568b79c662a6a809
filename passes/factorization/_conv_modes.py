"""The three factorizations of ``factorize-conv`` (and Tucker on 1x1 kernels): spectra, options, builders.

The math, notation and costs are in :mod:`sftonnx.passes.factorization.conv`, the pass that uses them.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import numpy as np
import onnx_ir as ir

from sftonnx.passes.factorization import _support
from sftonnx.passes.factorization.lowrank import (
    Option,
    WeightedSVD,
    rank_for_energy,
    refit_output,
    relative_tail,
)

__all__ = [
    "Built",
    "ConvSite",
    "FactorMode",
    "Layer",
    "Pointwise",
    "Separable",
    "Spatial",
    "Tucker",
    "geometry_attrs",
    "pointwise_attrs",
]

_RIDGE = 1e-9


# --------------------------------------------------------------------------------------------- site
@dataclasses.dataclass
class ConvSite:
    """A Conv to factor: weight in float64, geometry, and pixel counts for MAC weights."""

    node: ir.Node
    weight: np.ndarray  # (O, C_i, *k), float64
    dtype: np.dtype
    geometry: _support.ConvGeometry
    out_pixels: int = 1  # output pixels per sample (1 when unknown: per-pixel costs)
    in_ratio: float = 1.0  # input pixels / output pixels
    width_ratio: float = 1.0  # input width / output width (spatial mode)
    gram: np.ndarray | None = None  # (g, C_i K, C_i K) im2col autocorrelation

    @property
    def g(self) -> int:
        return self.geometry.group

    @property
    def out_channels(self) -> int:
        return int(self.weight.shape[0])

    @property
    def ci(self) -> int:
        return int(self.weight.shape[1])

    @property
    def co(self) -> int:
        return self.out_channels // self.g

    @property
    def taps(self) -> int:
        return int(math.prod(self.weight.shape[2:]))

    @property
    def params(self) -> int:
        return int(self.weight.size)

    @property
    def macs(self) -> float:
        return float(self.out_pixels * self.weight.size)

    def grouped(self) -> np.ndarray:
        """``(g, C_o, C_i, K)``."""
        return self.weight.reshape(self.g, self.co, self.ci, self.taps)


@dataclasses.dataclass
class Layer:
    """One Conv of a factored chain."""

    weight: np.ndarray
    attributes: dict[str, Any]


@dataclasses.dataclass
class Built:
    """A chain of Convs (the last one takes the bias) and the kernel it computes."""

    layers: list[Layer]
    reconstructed: np.ndarray  # (O, C_i, *k)


def geometry_attrs(geometry: _support.ConvGeometry, kernel, strides, dilations, pads, group: int) -> dict[str, Any]:
    attrs: dict[str, Any] = {
        "kernel_shape": [int(k) for k in kernel],
        "strides": [int(s) for s in strides],
        "dilations": [int(d) for d in dilations],
        "group": int(group),
    }
    if geometry.auto_pad not in ("NOTSET", ""):
        attrs["auto_pad"] = geometry.auto_pad
    else:
        attrs["pads"] = [int(p) for p in pads]
    return attrs


def pointwise_attrs(rank: int, group: int) -> dict[str, Any]:
    return {"kernel_shape": [1] * rank, "group": int(group)}


# --------------------------------------------------------------------------------------------- modes
class FactorMode:
    """Spectra of one factorization of one Conv, its options, and the builder of its Convs."""

    name: str
    conv: ConvSite

    def options(self) -> list[Option]:
        raise NotImplementedError

    def by_energy(self, energy: float) -> tuple[int, ...]:
        raise NotImplementedError

    def by_rank(self, rank: int) -> tuple[int, ...]:
        raise NotImplementedError

    def cost(self, ranks: tuple[int, ...]) -> tuple[float, int]:
        raise NotImplementedError

    def error(self, ranks: tuple[int, ...]) -> float:
        raise NotImplementedError

    def build(self, ranks: tuple[int, ...]) -> Built:
        raise NotImplementedError

    def option(self, ranks: tuple[int, ...]) -> Option:
        macs, params = self.cost(ranks)
        return Option(macs, params, self.error(ranks), (self.name, ranks))


class _SingleRank(FactorMode):
    """A mode with one rank whose spectrum is ``self.svd`` (options, rank choice and error from its tail)."""

    svd: WeightedSVD
    tail: np.ndarray

    def options(self) -> list[Option]:
        return [self.option((r,)) for r in range(1, self.svd.full_rank + 1)]

    def by_energy(self, energy: float) -> tuple[int, ...]:
        return (rank_for_energy(self.tail, energy),)

    def by_rank(self, rank: int) -> tuple[int, ...]:
        return (min(rank, self.svd.full_rank),)

    def error(self, ranks: tuple[int, ...]) -> float:
        return float(self.tail[ranks[0]])


class Separable(_SingleRank):
    name = "separable"

    def __init__(self, conv: ConvSite) -> None:
        self.conv = conv
        g, co, ci, k = conv.g, conv.co, conv.ci, conv.taps
        self.slices = conv.grouped().transpose(0, 2, 1, 3).reshape(g * ci, co, k)  # S_c: (C_o x K)
        gram = None
        if conv.gram is not None:  # each channel's K x K diagonal block of Sigma_p
            blocks = conv.gram.reshape(g, ci, k, ci, k)
            gram = np.einsum("gakal->gakl", blocks).reshape(g * ci, k, k)
        self.svd = WeightedSVD.of(self.slices, right_gram=gram)
        self.tail = relative_tail(self.svd.energy())

    def cost(self, ranks: tuple[int, ...]) -> tuple[float, int]:
        (m,) = ranks
        c = self.conv
        params = c.g * c.ci * m * c.taps + c.out_channels * c.ci * m
        return float(c.out_pixels * params), params

    def build(self, ranks: tuple[int, ...]) -> Built:
        (m,) = ranks
        c, geo = self.conv, self.conv.geometry
        g, co, ci = c.g, c.co, c.ci
        left, right = self.svd.factors(m)  # (g C_i, C_o, m), (g C_i, m, K)
        if c.gram is not None:  # pointwise refit by least squares under the full Sigma_p (cross-channel terms)
            k = c.taps
            expand = np.zeros((g, ci, m, ci, k))
            blocks = right.reshape(g, ci, m, k)
            for channel in range(ci):
                expand[:, channel, :, channel, :] = blocks[:, channel]
            weight = c.grouped().reshape(g, co, ci * k)
            fitted = refit_output(weight, expand.reshape(g, ci * m, ci * k), c.gram)  # (g, C_o, C_i m)
            left = fitted.reshape(g, co, ci, m).transpose(0, 2, 1, 3).reshape(g * ci, co, m)
        depthwise = right.reshape(g * ci * m, 1, *geo.kernel)
        pointwise = left.reshape(g, ci, co, m).transpose(0, 2, 1, 3).reshape(g * co, ci * m, *([1] * geo.rank))
        reconstructed = (left @ right).reshape(g, ci, co, c.taps).transpose(0, 2, 1, 3).reshape(c.weight.shape)
        return Built(
            [
                Layer(depthwise, geometry_attrs(geo, geo.kernel, geo.strides, geo.dilations, geo.pads, g * ci)),
                Layer(pointwise, pointwise_attrs(geo.rank, g)),
            ],
            reconstructed,
        )


class Spatial(_SingleRank):
    name = "spatial"

    def __init__(self, conv: ConvSite) -> None:
        self.conv = conv
        g, co, ci = conv.g, conv.co, conv.ci
        kh, kw = conv.geometry.kernel
        # M[(c, a), (o, b)] = W[o, c, a, b]
        self.matrix = conv.weight.reshape(g, co, ci, kh, kw).transpose(0, 2, 3, 1, 4).reshape(g, ci * kh, co * kw)
        gram = None
        if conv.gram is not None:  # vertical patches: taps with the same horizontal offset, averaged over it
            blocks = conv.gram.reshape(g, ci, kh, kw, ci, kh, kw)
            gram = np.einsum("gcabdeb->gcade", blocks).reshape(g, ci * kh, ci * kh) / kw
        self.svd = WeightedSVD.of(self.matrix, left_gram=gram)
        self.tail = relative_tail(self.svd.energy())

    def cost(self, ranks: tuple[int, ...]) -> tuple[float, int]:
        (r,) = ranks
        c = self.conv
        kh, kw = c.geometry.kernel
        vertical = c.g * r * c.ci * kh
        horizontal = c.out_channels * r * kw
        return float(c.out_pixels * (vertical * c.width_ratio + horizontal)), vertical + horizontal

    def build(self, ranks: tuple[int, ...]) -> Built:
        (r,) = ranks
        c, geo = self.conv, self.conv.geometry
        g, co, ci = c.g, c.co, c.ci
        kh, kw = geo.kernel
        left, right = self.svd.factors(r)  # (g, C_i kh, r), (g, r, C_o kw)
        if c.gram is not None:  # horizontal refit by least squares under the full Sigma_p (cross-column terms)
            # q[(t, b)] = sum_{c, a} V[t, c, a] p[(c, a, b)]
            expand = np.einsum("gxt,bd->gtbxd", left, np.eye(kw)).reshape(g, r * kw, ci * kh * kw)
            weight = c.grouped().reshape(g, co, ci * kh * kw)
            fitted = refit_output(weight, expand, c.gram).reshape(g, co, r, kw)  # H[o, t, b]
            right = fitted.transpose(0, 2, 1, 3).reshape(g, r, co * kw)
        vertical = left.transpose(0, 2, 1).reshape(g * r, ci, kh, 1)
        horizontal = right.reshape(g, r, co, kw).transpose(0, 2, 1, 3).reshape(g * co, r, 1, kw)
        (sh, sw), (dh, dw) = geo.strides, geo.dilations
        top, left_pad, bottom, right_pad = geo.pads
        reconstructed = (
            (left @ right).reshape(g, ci, kh, co, kw).transpose(0, 3, 1, 2, 4).reshape(c.weight.shape)
        )
        return Built(
            [
                Layer(vertical, geometry_attrs(geo, (kh, 1), (sh, 1), (dh, 1), (top, 0, bottom, 0), g)),
                Layer(horizontal, geometry_attrs(geo, (1, kw), (1, sw), (1, dw), (0, left_pad, 0, right_pad), g)),
            ],
            reconstructed,
        )


class Tucker(FactorMode):
    name = "tucker"

    def __init__(self, conv: ConvSite, iterations: int) -> None:
        self.conv = conv
        self.iterations = iterations
        g, co, ci, k = conv.g, conv.co, conv.ci, conv.taps
        grouped = conv.grouped()  # (g, C_o, C_i, K)
        self.channel_gram = None
        if conv.gram is not None:  # channel autocorrelation: taps averaged
            self.channel_gram = np.einsum("gakbk->gab", conv.gram.reshape(g, ci, k, ci, k)) / k
        # input unfolding (C_o K x C_i): which input-channel subspace the kernel reads
        self.input_matrix = grouped.transpose(0, 1, 3, 2).reshape(g, co * k, ci)
        self.input_svd = WeightedSVD.of(self.input_matrix, right_gram=self.channel_gram)
        self.input_tail = relative_tail(self.input_svd.energy())
        # output unfolding (C_o x C_i K): which output subspace it writes (output PCA with data)
        self.output_matrix = grouped.reshape(g, co, ci * k)
        self.output_svd = WeightedSVD.of(self.output_matrix, right_gram=conv.gram)
        self.output_tail = relative_tail(self.output_svd.energy())
        self.max_r1 = min(ci, self.input_svd.full_rank)
        self.max_r2 = min(co, self.output_svd.full_rank)

    def _normalize(self, r1: int, r2: int) -> tuple[int, int]:
        r1 = max(1, min(r1, self.max_r1))
        r2 = max(1, min(r2, self.max_r2, r1 * self.conv.taps))
        return r1, r2

    def options(self) -> list[Option]:
        c = self.conv
        seen: set[tuple[int, int]] = set()
        for r1 in range(1, self.max_r1 + 1):
            seen.add(self._normalize(r1, math.ceil(r1 * c.co / c.ci)))
            seen.add(self._normalize(r1, c.co))
        for r2 in range(1, self.max_r2 + 1):
            seen.add(self._normalize(c.ci, r2))
        return [self.option(ranks) for ranks in sorted(seen)]

    def by_energy(self, energy: float) -> tuple[int, ...]:
        return self._normalize(rank_for_energy(self.input_tail, energy), rank_for_energy(self.output_tail, energy))

    def by_rank(self, rank: int) -> tuple[int, ...]:
        return self._normalize(rank, rank)

    def cost(self, ranks: tuple[int, ...]) -> tuple[float, int]:
        r1, r2 = ranks
        c = self.conv
        first = c.g * r1 * c.ci if r1 < c.ci else 0
        core = c.g * r2 * r1 * c.taps
        last = c.out_channels * r2 if r2 < c.co else 0
        return float(c.out_pixels * (first * c.in_ratio + core + last)), first + core + last

    def error(self, ranks: tuple[int, ...]) -> float:
        r1, r2 = ranks
        drop_in = self.input_tail[r1] if r1 < self.conv.ci else 0.0
        drop_out = self.output_tail[r2] if r2 < self.conv.co else 0.0
        return float(min(drop_in + drop_out, 1.0))

    def _fit_core(self, a: np.ndarray | None, r2: int) -> tuple[np.ndarray, np.ndarray]:
        """Given the input projection ``A`` (``(g, r1, C_i)``, ``None`` = identity), fit core and ``U``.

        Least squares ``G1 = W Sigma_p A~^T (A~ Sigma_p A~^T)^{-1}`` with ``A~ = A (x) I_K``, then the
        (whitened by ``A~ Sigma_p A~^T``) SVD of ``G1``'s output unfolding at rank ``r2``.
        Returns ``(U (g, C_o, r2), core (g, r2, r1 K))``.
        """
        c = self.conv
        k = c.taps
        w_out = self.output_matrix  # (g, C_o, C_i K)
        sigma = c.gram
        if a is None:
            g1, z_gram = w_out, sigma
        else:
            r1 = a.shape[1]
            eye = np.eye(k)
            expand = np.einsum("gjc,tu->gjtcu", a, eye).reshape(c.g, r1 * k, c.ci * k)  # A (x) I_K
            if sigma is None:
                z_gram = expand @ np.swapaxes(expand, -1, -2)
                cross = w_out @ np.swapaxes(expand, -1, -2)
            else:
                z_gram = expand @ sigma @ np.swapaxes(expand, -1, -2)
                cross = w_out @ sigma @ np.swapaxes(expand, -1, -2)
            ridge = _RIDGE * np.trace(z_gram, axis1=-2, axis2=-1)[..., None, None] / z_gram.shape[-1]
            system = z_gram + ridge * np.eye(z_gram.shape[-1])
            g1 = np.swapaxes(np.linalg.solve(system, np.swapaxes(cross, -1, -2)), -1, -2)
        if r2 >= c.co:
            return np.broadcast_to(np.eye(c.co), (c.g, c.co, c.co)).copy(), g1
        return WeightedSVD.of(g1, right_gram=z_gram).factors(r2)

    def build(self, ranks: tuple[int, ...]) -> Built:
        r1, r2 = ranks
        c, geo = self.conv, self.conv.geometry
        g, co, ci, k = c.g, c.co, c.ci, c.taps
        a = None if r1 >= ci else self.input_svd.factors(r1)[1]  # (g, r1, C_i)
        u, core = self._fit_core(a, r2)
        for _ in range(self.iterations if a is not None and r2 < co else 0):
            basis, _ = np.linalg.qr(u)  # (g, C_o, r2) orthonormal output subspace
            projected = np.swapaxes(basis, -1, -2) @ self.output_matrix  # (g, r2, C_i K)
            projected = projected.reshape(g, r2, ci, k).transpose(0, 1, 3, 2).reshape(g, r2 * k, ci)
            a = WeightedSVD.of(projected, right_gram=self.channel_gram).factors(r1)[1]
            u, core = self._fit_core(a, r2)
        width = ci if a is None else r1
        height = co if r2 >= co else r2
        layers: list[Layer] = []
        point = [1] * geo.rank
        if a is not None:
            layers.append(Layer(a.reshape(g * r1, ci, *point), pointwise_attrs(geo.rank, g)))
        core_weight = core.reshape(g * height, width, *geo.kernel)
        layers.append(Layer(core_weight, geometry_attrs(geo, geo.kernel, geo.strides, geo.dilations, geo.pads, g)))
        if r2 < co:
            layers.append(Layer(u.reshape(g * co, r2, *point), pointwise_attrs(geo.rank, g)))
        # reconstructed kernel: U @ core @ (A (x) I)
        full = u @ core  # (g, C_o, width K)
        full = full.reshape(g, co, width, k)
        if a is not None:
            full = np.einsum("gojt,gjc->goct", full, a)
        return Built(layers, full.reshape(c.weight.shape))


class Pointwise(_SingleRank):
    """Tucker mode on a 1x1 kernel: two 1x1 Convs of rank ``r`` (the first keeps the geometry)."""

    name = "tucker"

    def __init__(self, conv: ConvSite) -> None:
        self.conv = conv
        self.matrix = conv.grouped()[..., 0]  # (g, C_o, C_i)
        self.svd = WeightedSVD.of(self.matrix, right_gram=conv.gram)
        self.tail = relative_tail(self.svd.energy())

    def cost(self, ranks: tuple[int, ...]) -> tuple[float, int]:
        (r,) = ranks
        c = self.conv
        params = c.g * r * c.ci + c.out_channels * r
        return float(c.out_pixels * params), params

    def build(self, ranks: tuple[int, ...]) -> Built:
        (r,) = ranks
        c, geo = self.conv, self.conv.geometry
        left, right = self.svd.factors(r)  # (g, C_o, r), (g, r, C_i)
        point = [1] * geo.rank
        first = right.reshape(c.g * r, c.ci, *point)
        second = left.reshape(c.g * c.co, r, *point)
        return Built(
            [
                Layer(first, geometry_attrs(geo, geo.kernel, geo.strides, geo.dilations, geo.pads, c.g)),
                Layer(second, pointwise_attrs(geo.rank, c.g)),
            ],
            (left @ right).reshape(c.weight.shape),
        )
