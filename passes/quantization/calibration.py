"""Calibration: streaming activation statistics and the clipping range of each quantized tensor.

Calibration data is whatever the user gave (``.npz`` file, folder of ``.npz`` files, or an iterable of feed
dicts); :func:`sftonnx.verify.calibration_feeds` streams it batch by batch and checks it against the model's
inputs, and :class:`sftonnx.analysis.activations.ActivationRunner` runs a copy of the model that exposes the
tensors we want. Memory is bounded by one batch plus one histogram per tensor.

Streaming histogram (:class:`TensorHistogram`): ``N`` bins (``N`` even) of width ``w = 2**e`` laid out
symmetrically around 0, bin ``k`` covering ``[k w, (k + 1) w)`` for ``k = -N/2 .. N/2 - 1``. ``e`` is the
smallest integer with ``N/2 * w > max |x|``. When a batch exceeds the range, the width doubles (pairs of bins
merge, exactly, because the grid stays anchored at 0) until it fits. The width therefore depends only on the
largest ``|x|`` seen, so streaming several batches gives exactly the histogram of their concatenation. The
exact minimum and maximum are tracked beside it. Non-finite values are counted and ignored.

Range methods (``lo <= 0 <= hi`` always; the quantization grid must hold 0 exactly):

* ``minmax``: ``[min(x), max(x)]``.
* ``percentile``: ``hi`` = the ``p``-th percentile, ``lo`` = the ``(100 - p)``-th (of ``|x|`` for symmetric
  quantization, ``[-t, t]``).
* ``entropy`` (TensorRT's KL calibration, Migacz 2017, "8-bit inference with TensorRT"): for each candidate
  threshold ``t = i w``, reference ``P`` = histogram of ``|x|`` clipped to the first ``i`` bins (outliers added
  to the last bin), candidate ``Q`` = ``P`` quantized to ``L`` levels (bins merged in ``L`` groups, each
  group's mass spread evenly over its non-empty bins); pick the ``t`` minimizing ``KL(P || Q) =
  sum P log(P / Q)``. ``L = 128`` for symmetric int8, ``L = 256`` for one-sided uint8 data.
* ``mse``: the range ``[f lo, f hi]``, ``f`` in (0, 1], that minimizes the expected quantization error
  ``sum_b n_b (c_b - dq(q(c_b)))**2`` over bin centres ``c_b`` with counts ``n_b``.

A range with ``hi - lo == 0`` (constant-zero or never-seen tensor) is *degenerate*: callers must leave such
tensors in float (onnxruntime's own histogram calibrators crash on them: "Too many bins for data range").
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any, Literal

import numpy as np
import onnx_ir as ir

from sftonnx import verify
from sftonnx.analysis.activations import ActivationRunner
from sftonnx.errors import InputError, PassConfigError

__all__ = [
    "DEFAULT_BINS",
    "METHODS",
    "CalibrationResult",
    "MeanStats",
    "Range",
    "CalibrationSource",
    "Method",
    "TensorHistogram",
    "calibrate",
    "compute_range",
    "quant_params",
]

logger = logging.getLogger(__name__)

Method = Literal["minmax", "percentile", "entropy", "mse"]
METHODS: tuple[str, ...] = ("minmax", "percentile", "entropy", "mse")
#: Bins of a streaming histogram (both signs): at least N/4 of them cover ``[0, max |x|]``.
DEFAULT_BINS = 4096


class TensorHistogram:
    """Streaming min/max and a zero-anchored, power-of-two-width histogram of one tensor.

    Args:
        bins: Number of bins, even.

    Attributes:
        counts: ``int64[bins]``, bin ``k`` (index ``k + bins/2``) counts values in ``[k w, (k+1) w)``.
        exponent: ``w = 2**exponent``; ``None`` until a non-zero value has been seen.
        min: Smallest finite value seen (``inf`` before any).
        max: Largest finite value seen (``-inf`` before any).
        count: Finite values seen.
        nonfinite: NaN/inf values seen (ignored).
    """

    def __init__(self, bins: int = DEFAULT_BINS) -> None:
        if bins < 4 or bins % 2:
            raise ValueError(f"bins must be an even number >= 4, got {bins}")
        self.bins = bins
        self.counts = np.zeros(bins, dtype=np.int64)
        self.exponent: int | None = None
        self.min = math.inf
        self.max = -math.inf
        self.count = 0
        self.nonfinite = 0

    @property
    def width(self) -> float:
        """Bin width ``w`` (0 before a non-zero value was seen)."""
        return 0.0 if self.exponent is None else math.ldexp(1.0, self.exponent)

    @property
    def half(self) -> int:
        """``N / 2``: bins on each side of zero."""
        return self.bins // 2

    def _exponent_for(self, amax: float) -> int:
        """Smallest ``e`` with ``N/2 * 2**e > amax``."""
        _, e = math.frexp(amax / self.half)  # amax / half < 2**e
        while self.half * math.ldexp(1.0, e) <= amax:
            e += 1
        while self.half * math.ldexp(1.0, e - 1) > amax:
            e -= 1
        return e

    def _grow(self, exponent: int) -> None:
        """Double the width until ``2**exponent``; pairs of bins merge exactly."""
        assert self.exponent is not None
        while self.exponent < exponent:
            # old bin k -> new bin floor(k / 2); the old range lands in the middle half of the new one
            k = np.arange(-self.half, self.half)
            merged = np.zeros_like(self.counts)
            np.add.at(merged, np.floor_divide(k, 2) + self.half, self.counts)
            self.counts = merged
            self.exponent += 1

    def update(self, array: np.ndarray) -> None:
        """Add the values of ``array`` (any shape, any float dtype)."""
        data = np.asarray(array).ravel()
        if data.dtype not in (np.float32, np.float64):
            data = data.astype(np.float32)
        if data.size == 0:
            return
        low, high = float(data.min()), float(data.max())
        if not (math.isfinite(low) and math.isfinite(high)):
            finite = np.isfinite(data)
            self.nonfinite += int((~finite).sum())
            data = data[finite]
            if data.size == 0:
                return
            low, high = float(data.min()), float(data.max())
        self.min, self.max = min(self.min, low), max(self.max, high)
        self.count += int(data.size)
        amax = max(abs(low), abs(high))
        if amax == 0.0:
            if self.exponent is None:
                self.exponent = -1000  # any width holds zeros; grown when non-zero values arrive
            self.counts[self.half] += data.size
            return
        needed = self._exponent_for(amax)
        if self.exponent is None:
            self.exponent = needed
        elif needed > self.exponent:
            self._grow(needed)
        # x * 2**-e is exact in binary floating point, so float32 data bins exactly as in float64
        scaled = data * data.dtype.type(math.ldexp(1.0, -self.exponent))
        index = np.floor(scaled, out=scaled).astype(np.int64)
        index += self.half
        np.clip(index, 0, self.bins - 1, out=index)
        self.counts += np.bincount(index, minlength=self.bins)

    def merge(self, other: TensorHistogram) -> None:
        """Add another histogram of the same bin count (e.g. from another worker)."""
        if other.bins != self.bins:
            raise ValueError("cannot merge histograms with different bin counts")
        if other.exponent is None:
            self.nonfinite += other.nonfinite
            return
        other_counts = other.counts
        if self.exponent is None:
            self.exponent, self.counts = other.exponent, other.counts.copy()
        else:
            if other.exponent > self.exponent:
                self._grow(other.exponent)
            elif other.exponent < self.exponent:
                copy = TensorHistogram(self.bins)
                copy.exponent, copy.counts = other.exponent, other.counts.copy()
                copy._grow(self.exponent)
                other_counts = copy.counts
            self.counts = self.counts + other_counts
        self.min, self.max = min(self.min, other.min), max(self.max, other.max)
        self.count += other.count
        self.nonfinite += other.nonfinite

    def positive_side(self) -> np.ndarray:
        """Histogram of ``|x|``: ``fold[k]`` counts ``k w <= |x| < (k + 1) w``, trailing empty bins trimmed."""
        upper = self.counts[self.half :]
        lower = self.counts[: self.half][::-1]
        folded = upper + lower
        nonzero = np.flatnonzero(folded)
        return folded[: nonzero[-1] + 1] if nonzero.size else folded[:1]

    def one_side(self, positive: bool) -> np.ndarray:
        """Histogram of ``x >= 0`` (or of ``-x`` for ``x < 0``), trailing empty bins trimmed."""
        side = self.counts[self.half :] if positive else self.counts[: self.half][::-1]
        nonzero = np.flatnonzero(side)
        return side[: nonzero[-1] + 1] if nonzero.size else side[:1]


@dataclasses.dataclass(frozen=True)
class Range:
    """A calibrated clipping range ``[lo, hi]`` with ``lo <= 0 <= hi``."""

    lo: float
    hi: float

    @property
    def degenerate(self) -> bool:
        """True when the range is empty (all zeros or never seen) or not finite."""
        return not (math.isfinite(self.lo) and math.isfinite(self.hi)) or self.hi - self.lo <= 0.0

    def union(self, other: Range) -> Range:
        """The smallest range holding both."""
        return Range(min(self.lo, other.lo), max(self.hi, other.hi))


def compute_range(
    hist: TensorHistogram,
    method: str = "minmax",
    *,
    symmetric: bool = False,
    percentile: float = 99.99,
    levels: int | None = None,
) -> Range:
    """The clipping range of one tensor by ``method`` (see the module docstring for the formulas).

    Args:
        hist: The tensor's statistics.
        method: ``minmax``, ``percentile``, ``entropy`` or ``mse``.
        symmetric: Symmetric quantization (int8, zero point 0): the range is ``[-t, t]``.
        percentile: For ``percentile``: the kept share of values, in percent.
        levels: Quantization levels over the clipped magnitude (default 128 symmetric / 256 one-sided).
    """
    if hist.count == 0:
        return Range(0.0, 0.0)
    lo, hi = min(hist.min, 0.0), max(hist.max, 0.0)
    one_sided = lo == 0.0 or hi == 0.0
    if method == "minmax" or hist.width == 0.0 or hi - lo == 0.0:
        result = Range(lo, hi)
    elif method == "percentile":
        result = _percentile_range(hist, percentile, symmetric, lo, hi)
    elif method == "entropy":
        if levels is None:
            levels = 256 if (one_sided and not symmetric) else 128
        result = _entropy_range(hist, levels, symmetric, lo, hi)
    elif method == "mse":
        result = _mse_range(hist, symmetric, lo, hi)
    else:
        raise PassConfigError(f"unknown calibration method '{method}' (methods: {', '.join(METHODS)})")
    if symmetric:
        amax = max(-result.lo, result.hi)
        return Range(-amax, amax)
    return result


def _percentile_range(hist: TensorHistogram, percentile: float, symmetric: bool, lo: float, hi: float) -> Range:
    w = hist.width
    if symmetric:
        folded = hist.positive_side().astype(np.float64)
        cdf = np.cumsum(folded) / folded.sum()
        index = int(np.searchsorted(cdf, percentile / 100.0))
        t = min((index + 1) * w, max(-lo, hi))
        return Range(-t, t)
    counts = hist.counts.astype(np.float64)
    cdf = np.cumsum(counts) / counts.sum()
    upper = int(np.searchsorted(cdf, percentile / 100.0))
    lower = int(np.searchsorted(cdf, 1.0 - percentile / 100.0))
    high = min((upper - hist.half + 1) * w, hi)
    low = max((lower - hist.half) * w, lo)
    return Range(min(low, 0.0), max(high, 0.0))


def _kl_threshold(folded: np.ndarray, levels: int) -> int:
    """Bins kept (``i``) minimizing ``KL(P || Q)``; after TensorRT's entropy calibration (Migacz 2017)."""
    total_bins = folded.size
    if total_bins <= levels:
        return total_bins
    hist = folded.astype(np.float64)
    candidates = np.arange(levels, total_bins + 1)
    if candidates.size > 512:  # bound the search; the KL curve is smooth at this resolution
        candidates = np.unique(np.linspace(levels, total_bins, 512).astype(np.int64))
    best_i, best_kl = total_bins, math.inf
    for i in candidates:
        reference = hist[:i].copy()
        reference[i - 1] += hist[i:].sum()
        kept = hist[:i]
        nonzero = kept > 0
        # merge the i bins into `levels` groups, then spread each group's mass over its non-empty bins
        group = (np.arange(i) * levels) // i
        mass = np.bincount(group, weights=kept, minlength=levels)
        filled = np.bincount(group, weights=nonzero.astype(np.float64), minlength=levels)
        expanded = np.where(nonzero, mass[group] / np.maximum(filled[group], 1.0), 0.0)
        p = reference / reference.sum()
        q_sum = expanded.sum()
        if q_sum == 0:
            continue
        q = expanded / q_sum
        mask = p > 0
        # bins where P > 0 but Q == 0 (outlier mass moved to the last bin): smooth as TensorRT does
        q_masked = np.where(q[mask] > 0, q[mask], 1e-12)
        kl = float(np.sum(p[mask] * np.log(p[mask] / q_masked)))
        if kl < best_kl:
            best_kl, best_i = kl, int(i)
    return best_i


def _entropy_range(hist: TensorHistogram, levels: int, symmetric: bool, lo: float, hi: float) -> Range:
    w = hist.width
    if not symmetric and (lo == 0.0 or hi == 0.0):
        positive = hi > 0.0
        side = hist.one_side(positive)
        t = min(_kl_threshold(side, levels) * w, hi if positive else -lo)
        return Range(0.0, t) if positive else Range(-t, 0.0)
    folded = hist.positive_side()
    t = _kl_threshold(folded, levels) * w
    return Range(max(lo, -t), min(hi, t))


def _qdq(values: np.ndarray, lo: np.ndarray, hi: np.ndarray, levels: int) -> np.ndarray:
    """Quantize-dequantize ``values`` (broadcast against candidate ranges ``lo``/``hi``)."""
    scale = (hi - lo) / levels
    scale = np.where(scale > 0, scale, 1.0)
    zero = np.round(-lo / scale)
    q = np.clip(np.round(values / scale) + zero, 0, levels)
    return (q - zero) * scale


def _mse_range(hist: TensorHistogram, symmetric: bool, lo: float, hi: float) -> Range:
    w = hist.width
    counts = hist.counts.astype(np.float64)
    used = np.flatnonzero(counts)
    centres = (np.arange(hist.bins)[used] - hist.half + 0.5) * w
    weights = counts[used]
    # keep the search exact at the ends: the extreme bins' centres lie within [lo, hi]
    centres = np.clip(centres, lo, hi)
    if symmetric:
        amax = max(-lo, hi)
        lo, hi = -amax, amax
    factors = np.linspace(0.02, 1.0, 200)[:, None]
    levels = 254 if symmetric else 255
    errors = (weights * (centres - _qdq(centres[None, :], factors * lo, factors * hi, levels)) ** 2).sum(axis=1)
    best = float(factors[int(np.argmin(errors)), 0])
    return Range(best * lo, best * hi)


def quant_params(rng: Range, dtype: Literal["uint8", "int8"], *, symmetric: bool) -> tuple[np.float32, np.integer]:
    """Scale and zero point of a range.

    ``uint8`` asymmetric: ``s = (hi - lo) / 255``, ``z = round(-lo / s)`` clipped to [0, 255].
    ``int8`` symmetric: ``s = max(|lo|, |hi|) / 127``, ``z = 0``. ``int8`` asymmetric (one-sided ranges,
    so that onnxruntime can drop a following Relu): ``s = (hi - lo) / 255``, ``z = round(-128 - lo / s)``.
    """
    if symmetric:
        amax = max(-rng.lo, rng.hi)
        scale = np.float32(amax / 127.0) if amax > 0 else np.float32(1.0)
        return scale, (np.int8(0) if dtype == "int8" else np.uint8(128))
    scale_f = (rng.hi - rng.lo) / 255.0
    scale = np.float32(scale_f) if scale_f > 0 else np.float32(1.0)
    if dtype == "uint8":
        return scale, np.uint8(np.clip(round(-rng.lo / float(scale)), 0, 255))
    return scale, np.int8(np.clip(round(-128 - rng.lo / float(scale)), -128, 127))


# ----------------------------------------------------------------------------------------------- sources
class CalibrationSource:
    """Re-iterable access to the user's calibration data.

    Paths (file or folder) are re-read on every pass over them. An iterable that is its own iterator (a
    generator) can be read once only: when a second pass is needed it is cached in memory on the first pass
    (logged), so pass a list or a path for large data.

    Args:
        data: ``.npz`` path, folder of ``.npz`` files, or an iterable of feed dicts; ``None`` = no data.
        model: The model whose inputs the data must match.
        batch_size: Samples per batch read from files.
        max_samples: Stop after this many samples (``None``: all).
        allow_random: With no data, calibrate on seeded N(0, 1) inputs (floats) instead of failing.
        random_batches: Number of random batches when ``allow_random`` applies.

    Raises:
        PassConfigError: No data and ``allow_random`` is false.
    """

    def __init__(
        self,
        data: Any,
        model: ir.Model,
        *,
        batch_size: int = 16,
        max_samples: int | None = None,
        allow_random: bool = False,
        random_batches: int = 4,
        pass_name: str = "quantize",
    ) -> None:
        self.specs = verify.input_specs(model)
        self.batch_size = batch_size
        self.max_samples = max_samples
        self.random = data is None
        self._cache: list[dict[str, np.ndarray]] | None = None
        self._data = data
        if data is None:
            if not allow_random:
                raise PassConfigError(
                    f"{pass_name}: no calibration data. Give representative inputs (--calibration-data "
                    "FILE.npz or a folder of .npz; API: calibration_data=...), or pass allow_random=true to "
                    "calibrate on random N(0,1) inputs (ranges will not match real data)."
                )
            shapes, _ = verify.resolve_shapes(self.specs)
            self._cache = [
                verify.random_feeds(self.specs, {k: (batch_size, *v[1:]) if v else v for k, v in shapes.items()},
                                    seed=i)
                for i in range(random_batches)
            ]
            self.description = f"{random_batches} random batches (N(0,1)); NOT representative calibration"
            logger.warning("%s: calibrating on random inputs: %s", pass_name, self.description)
        elif isinstance(data, (str, os.PathLike)):
            self.description = f"user data from {os.fspath(data)}"
        elif isinstance(data, verify.DataPart):  # calibration samples, the held-out ones left out
            self.description = f"user data: {data.describe()}"
        else:
            if isinstance(data, Iterator):
                self._one_shot = True
            self.description = "user feed dicts"
        self._passes = 0

    def __iter__(self) -> Iterator[dict[str, np.ndarray]]:
        """One pass over the data as checked feed dicts."""
        self._passes += 1
        if self._cache is not None:
            return iter(self._cache)
        if isinstance(self._data, Iterator):
            if self._passes > 1:
                raise InputError("calibration data is a one-shot iterator and was already consumed")
            cache: list[dict[str, np.ndarray]] = []
            self._cache = cache

            def caching() -> Iterator[dict[str, np.ndarray]]:
                for feed in self._feeds(self._data):
                    cache.append(feed)
                    yield feed

            logger.info("calibration data is an iterator: caching it in memory for later passes")
            return caching()
        return iter(self._feeds(self._data))

    def _feeds(self, data: Any) -> Iterable[dict[str, np.ndarray]]:
        return verify.calibration_feeds(data, self.specs, batch_size=self.batch_size, max_samples=self.max_samples)


# ---------------------------------------------------------------------------------------------- collect
@dataclasses.dataclass
class CalibrationResult:
    """What one streamed pass over the calibration data collected.

    Attributes:
        histograms: ``{tensor name: TensorHistogram}`` for every requested float tensor.
        dtypes: ``{tensor name: numpy dtype}`` as observed (non-float tensors get no histogram).
        channel_sums: ``{tensor name: MeanStats}`` for bias correction.
        channel_absmax: ``{tensor name: max |x| over all axes but the last}`` (SmoothQuant).
        samples: The first batches (up to ``keep_samples`` samples) for later evaluation.
        batches: Batches seen.
    """

    histograms: dict[str, TensorHistogram]
    dtypes: dict[str, np.dtype]
    channel_sums: dict[str, MeanStats]
    channel_absmax: dict[str, np.ndarray]
    samples: list[dict[str, np.ndarray]]
    batches: int


def calibrate(
    model: ir.Model,
    names: Sequence[str],
    source: Iterable[Mapping[str, np.ndarray]],
    *,
    bins: int = DEFAULT_BINS,
    sum_names: Mapping[str, int] | None = None,
    absmax_names: Sequence[str] = (),
    keep_samples: int = 0,
    progress: Callable[[int], None] | None = None,
) -> CalibrationResult:
    """Stream ``source`` through ``model`` once, collecting histograms of ``names``.

    Args:
        model: The float model (not modified).
        names: Tensors to build histograms of (float ones only; others are recorded in ``dtypes``).
        source: Feed dicts.
        bins: Histogram bins.
        sum_names: ``{tensor: channel axis}``: accumulate the per-sample mean (sum over axis 0, while shapes
            agree) and the per-channel mean along that axis (bias correction).
        absmax_names: Tensors whose per-last-axis-channel ``max |x|`` is tracked (SmoothQuant).
        keep_samples: Keep the first batches up to this many samples.
        progress: Called with the number of batches seen after each batch.

    Raises:
        InputError: The data does not match the model, or holds no batch.
    """
    sum_names = dict(sum_names or {})
    wanted = list(dict.fromkeys([*names, *sum_names, *absmax_names]))
    runner = ActivationRunner(model, wanted)
    histograms: dict[str, TensorHistogram] = {}
    dtypes: dict[str, np.dtype] = {}
    sums: dict[str, MeanStats] = {}
    absmax: dict[str, np.ndarray] = {}
    samples: list[dict[str, np.ndarray]] = []
    kept = 0
    batches = 0
    name_set, sum_set, absmax_set = set(names), dict(sum_names), set(absmax_names)

    def keep(source_iter: Iterable[Mapping[str, np.ndarray]]) -> Iterator[Mapping[str, np.ndarray]]:
        nonlocal kept
        for feed in source_iter:
            if kept < keep_samples:
                samples.append(dict(feed))
                kept += len(next(iter(feed.values()))) if feed else 1
            yield feed

    try:
        for batch in runner.run(keep(source)):
            batches += 1
            for name, array in batch.items():
                array = np.asarray(array)
                dtypes.setdefault(name, array.dtype)
                if array.dtype.kind != "f":
                    continue
                if name in name_set:
                    histograms.setdefault(name, TensorHistogram(bins)).update(array)
                if name in sum_set and array.ndim >= 1 and array.shape[0] > 0:
                    _accumulate(sums, name, array, sum_set[name])
                if name in absmax_set and array.ndim >= 1:
                    amax = np.abs(array.reshape(-1, array.shape[-1])).max(axis=0)
                    absmax[name] = amax if name not in absmax else np.maximum(absmax[name], amax)
            if progress is not None:
                progress(batches)
    except InputError:
        raise
    except Exception as error:  # onnxruntime rejects the feeds: a data problem, said as such
        raise InputError(f"calibration: onnxruntime cannot run the model on the calibration data: {error}") from None
    if batches == 0:
        raise InputError("calibration: the calibration data holds no samples")
    return CalibrationResult(histograms, dtypes, sums, absmax, samples, batches)


@dataclasses.dataclass
class MeanStats:
    """Running means of one tensor for bias correction.

    Attributes:
        axis: The channel axis.
        sample_sum: Sum over axis 0 (the batch) while every batch had the same per-sample shape, else None.
        samples: Samples summed into ``sample_sum``.
        channel_sum: Sum over every axis but ``axis``.
        channel_count: Values per channel summed into ``channel_sum``.
    """

    axis: int
    sample_sum: np.ndarray | None
    samples: int
    channel_sum: np.ndarray
    channel_count: int

    def sample_mean(self) -> np.ndarray | None:
        """``E[x]`` over samples, shape of one sample (None when shapes varied)."""
        return None if self.sample_sum is None else self.sample_sum / max(self.samples, 1)

    def channel_mean(self) -> np.ndarray:
        """``E[x]`` per channel."""
        return self.channel_sum / max(self.channel_count, 1)


def _accumulate(sums: dict[str, MeanStats], name: str, array: np.ndarray, axis: int) -> None:
    data = array.astype(np.float64)
    axis = axis % data.ndim
    per_channel = np.moveaxis(data, axis, -1).reshape(-1, data.shape[axis])
    channel_sum = per_channel.sum(axis=0)
    count = per_channel.shape[0]
    sample_sum = data.sum(axis=0)
    previous = sums.get(name)
    if previous is None:
        sums[name] = MeanStats(axis, sample_sum, data.shape[0], channel_sum, count)
        return
    if previous.channel_sum.shape != channel_sum.shape:
        return  # channel count changed: not a tensor bias correction can use; keep the first shape
    previous.channel_sum += channel_sum
    previous.channel_count += count
    if previous.sample_sum is not None and previous.sample_sum.shape == sample_sum.shape:
        previous.sample_sum += sample_sum
        previous.samples += data.shape[0]
    else:
        previous.sample_sum = None
