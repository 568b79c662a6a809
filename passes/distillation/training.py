"""Knowledge distillation in torch: the student (current model) learns the teacher's (original's) outputs.

The teacher runs in onnxruntime on the calibration samples (no labels); the student is the current model as a
:class:`~sftonnx.passes.distillation.torch_graph.TorchGraph`, whose float initializers are trained with Adam.
Per output, the loss follows the output's kind (:func:`sftonnx.verify.output_kind`, decided on the teacher's
outputs), with temperature ``T``::

    probs    T^2 * KL(softmax(log p_t / T) || softmax(log p_s / T))        over the last axis
    scores   T^2 * KL(softmax(z_t / T) || softmax(z_s / T)) + MSE(z_s, z_t) / mean(z_t^2)
    sigmoid  binary KL(p_t || p_s) per element
    values   MSE(y_s, y_t) / mean(y_t^2)
    labels   none (integer outputs carry no gradient)

Feature matching (``feature_weight > 0``) adds the normalized MSE of float tensors both graphs still hold
under the same name and shape (pruning and factorization keep the names of the tensors they leave whole).

Samples: units of one sample each (rows of one ``.npz``; files of a folder or feed dicts as they are). When
every unit holds one row of a batch axis (and the model's first dimension is not fixed), mini-batches are
stacked; otherwise the gradients of up to 4 units (whole sequences or images of their own shapes) make a step.
``augment=mixup`` (off by default) blends pairs of float samples (``lam ~ U(0, 1)``) and asks the teacher for
those too, which multiplies a small calibration set. The last ``holdout`` fraction of units is never trained on: its
loss decides early stopping, and the weights with the lowest held-out loss are the ones kept.
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import numpy as np
import onnx_ir as ir
import torch

from sftonnx import verify
from sftonnx.passes.distillation.torch_graph import TorchGraph, to_tensor

__all__ = ["LR_CANDIDATES", "DistillResult", "Options", "distill"]

logger = logging.getLogger(__name__)

_EPS = 1e-8
#: Learning rates the probe may try when none is given, ascending. They are relative: each tensor's step is scaled by
#: its RMS (``_lr_scales``), so 1e-3 moves a weight of RMS 0.1 by about 1e-4 per step. The probe starts at
#: ``_PROBE_START`` and walks (see ``_Run.probe``): a CNN+LSTM text recognizer (ddddocr) diverges at 3e-4 and trains at
#: 1e-4, the digits CNN pruned without refit wants 3e-2.
LR_CANDIDATES = (3e-5, 1e-4, 3e-4, 1e-3, 3e-3, 1e-2, 3e-2)
#: Where the probe's walk starts (the candidate nearest to it).
_PROBE_START = 1e-3
#: Candidates the probe's time share is planned for (a walk usually tries 3-4; more run while time is left).
_PROBE_PLANNED = 4
#: A probe candidate whose held-out gain is at least this share of the best one's counts as just as good (the walk
#: goes on upward through it, and the largest such lr is chosen).
_PROBE_TIE = 0.8
#: Share of the time budget all probes together may use.
_PROBE_SHARE = 0.25
#: Steps per probe when the time allows (every candidate gets as many as the first one had time for).
_PROBE_STEPS = 30
#: Gradients are clipped to this many times the running mean of their (clipped) norm.
_CLIP = 4.0
#: An epoch whose held-out loss exceeds the best by this share of the gain so far (of the best loss when that is
#: larger), or is not finite, restores the best weights at half the lr.
_DIVERGED = 0.5
#: Share of the training samples that ``mixup`` replaces by blends of two samples.
_MIX_SHARE = 0.5
#: Augmented samples get Gaussian noise of up to this share of the input's standard deviation.
_NOISE = 0.1


@dataclasses.dataclass
class DistillResult:
    """What one distillation run did.

    Attributes:
        loss_before: Held-out loss of the student before training.
        loss_after: Held-out loss of the kept weights.
        epochs: Epochs run (a started epoch counts).
        steps: Optimizer steps.
        seconds: Training wall time (teacher runs included).
        stopped: ``epochs``, ``early_stop`` or ``time_budget``.
        kinds: Per output, its kind (the loss used).
        features: Names of the intermediate tensors matched.
        train_units, holdout_units: Samples trained on / held out.
        improved: Whether the kept weights beat the starting ones on the held-out part.
        sparse_tensors: Weight tensors whose exact zeros were kept at zero.
        lr: The learning rate trained with (given, or chosen by the probe).
        lr_probe: Per candidate lr, its held-out loss after the probe's steps (``None``: lr was given).
        lr_backoffs: Times a diverging epoch sent training back to the best weights at half the lr.
        clipped_steps: Optimizer steps whose gradient norm was clipped.
        agreement_before, agreement_after: Held-out top-1 agreement with the teacher (probability/score
            outputs; ``None`` without such outputs). Weights whose agreement fell are not kept (``improved``).
    """

    loss_before: float
    loss_after: float
    epochs: int
    steps: int
    seconds: float
    stopped: str
    kinds: dict[str, str]
    features: list[str]
    train_units: int
    holdout_units: int
    stacked: bool
    augment: str
    improved: bool
    sparse_tensors: int = 0
    lr: float = 0.0
    lr_probe: list[dict[str, Any]] | None = None
    lr_backoffs: int = 0
    clipped_steps: int = 0
    agreement_before: float | None = None
    agreement_after: float | None = None


@dataclasses.dataclass(frozen=True)
class Options:
    """Training options (see :class:`~sftonnx.passes.distillation.distill.DistillPass`)."""

    epochs: int
    lr: float | None
    batch_size: int
    temperature: float
    time_budget: float
    holdout: float
    patience: int
    feature_weight: float
    augment: str
    seed: int
    #: Called as ``progress(seconds, time_budget, text)`` after each probe and epoch.
    progress: Callable[[float, float, str], None] | None = None


def _stackable(units: Sequence[Mapping[str, np.ndarray]], fixed_batch: bool) -> bool:
    if fixed_batch or len(units) < 2:
        return False
    first = {k: v.shape for k, v in units[0].items()}
    return all(
        {k: v.shape for k, v in unit.items()} == first and all(v.ndim and v.shape[0] == 1 for v in unit.values())
        for unit in units
    )


class _Teacher:
    """The original model in onnxruntime, with the matched intermediate tensors as extra outputs."""

    def __init__(self, source: bytes | str, features: Sequence[str]) -> None:
        self.features = list(features)
        if features:
            model = ir.load(source) if isinstance(source, str) else ir.from_proto(_parse(source))
            values = {v.name: v for n in model.graph for v in n.outputs if v is not None}
            model.graph.outputs.extend(values[name] for name in features)
            with verify.session_source(model) as extended:  # a temporary file for external data: read at creation
                self.session = verify.make_session(extended, threads=1)
        else:
            self.session = verify.make_session(source, threads=1)
        self.input_names = [i.name for i in self.session.get_inputs()]
        self.output_names = [o.name for o in self.session.get_outputs()]

    def __call__(self, feed: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        results = self.session.run(None, {k: v for k, v in feed.items() if k in self.input_names})
        return dict(zip(self.output_names, results, strict=True))


def _parse(source: bytes):
    import onnx

    proto = onnx.ModelProto()
    proto.ParseFromString(source)
    return proto


def shared_features(student: ir.Model, teacher_source: bytes | str) -> list[str]:
    """Float tensors produced by Conv/Gemm/MatMul/norm nodes in both graphs under one name and equal static shape."""
    teacher = ir.load(teacher_source) if isinstance(teacher_source, str) else ir.from_proto(_parse(teacher_source))
    producing = {"Conv", "ConvTranspose", "Gemm", "MatMul", "BatchNormalization", "LayerNormalization", "LSTM", "GRU"}
    teacher_values = {
        v.name: v for n in teacher.graph if n.op_type in producing for v in n.outputs if v is not None and v.name
    }
    outputs = {v.name for v in student.graph.outputs}
    names = []
    for node in student.graph:
        if node.op_type not in producing:
            continue
        for value in node.outputs:
            if value is None or value.name in outputs or value.name not in teacher_values:
                continue
            other = teacher_values[value.name]
            if value.shape is not None and other.shape is not None and value.shape != other.shape:
                continue
            names.append(value.name)
    return names


def _loss(kind: str, student: torch.Tensor, teacher: torch.Tensor, temperature: float) -> torch.Tensor:
    student = student.float()
    if kind == "probs":
        s = torch.log(student.clamp_min(1e-12)) / temperature
        t = torch.log(teacher.clamp_min(1e-12)) / temperature
        return _kl(t, s) * temperature**2
    if kind == "scores":
        squeezed_s, squeezed_t = _squeeze_trailing(student), _squeeze_trailing(teacher)
        kl = _kl(squeezed_t / temperature, squeezed_s / temperature) * temperature**2
        return kl + _normalized_mse(student, teacher)
    if kind == "sigmoid":
        s = student.clamp(1e-6, 1 - 1e-6)
        t = teacher.clamp(1e-6, 1 - 1e-6)
        return (t * torch.log(t / s) + (1 - t) * torch.log((1 - t) / (1 - s))).mean()
    return _normalized_mse(student, teacher)


def _squeeze_trailing(x: torch.Tensor) -> torch.Tensor:
    while x.dim() > 2 and x.shape[-1] == 1:
        x = x.squeeze(-1)
    return x


def _kl(teacher_logits: torch.Tensor, student_logits: torch.Tensor) -> torch.Tensor:
    t_log = torch.log_softmax(teacher_logits, dim=-1)
    s_log = torch.log_softmax(student_logits, dim=-1)
    return (t_log.exp() * (t_log - s_log)).sum(-1).mean()


def _normalized_mse(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    return ((student - teacher) ** 2).mean() / (teacher.pow(2).mean() + _EPS)


class _Trainer:
    def __init__(self, graph: TorchGraph, teacher: _Teacher, kinds: dict[str, str], options: Options) -> None:
        self.graph = graph
        self.teacher = teacher
        self.kinds = kinds
        self.options = options
        self.features: list[str] = list(teacher.features)

    def loss(self, feed: Mapping[str, np.ndarray], targets: Mapping[str, np.ndarray]) -> torch.Tensor:
        outputs = self.graph({k: to_tensor(v) for k, v in feed.items()}, keep=self.features)
        total = torch.zeros(())
        for name, kind in self.kinds.items():
            if kind == "labels" or name not in outputs:
                continue
            target = torch.from_numpy(np.asarray(targets[name], dtype=np.float32))
            if outputs[name].shape != target.shape:
                shapes = f"{tuple(outputs[name].shape)} vs the teacher's {tuple(target.shape)}"
                raise ValueError(f"student output '{name}' has shape {shapes}")
            total = total + _loss(kind, outputs[name], target, self.options.temperature)
        if self.features and self.options.feature_weight > 0:
            matched = 0
            feature_loss = torch.zeros(())
            for name in self.features:
                student, target = outputs.get(name), targets.get(name)
                if student is None or target is None or tuple(student.shape) != target.shape:
                    continue
                reference = torch.from_numpy(target.astype(np.float32))
                feature_loss = feature_loss + _normalized_mse(student.float(), reference)
                matched += 1
            if matched:
                total = total + self.options.feature_weight * feature_loss / matched
        return total


def distill(
    student: ir.Model,
    teacher_source: bytes | str,
    units: Sequence[Mapping[str, np.ndarray]],
    options: Options,
    *,
    fixed_batch: bool,
    train_quantized_weights: bool,
    train_scales: bool = False,
) -> tuple[DistillResult, TorchGraph]:
    """Train the student's float weights against the teacher; returns the result and the trained module.

    The module holds the kept (best held-out) weights; :meth:`TorchGraph.write_back` puts them into ``student``.
    torch runs on one thread for the call (restored after): the small per-op kernels of an interpreted graph
    ran 5x slower on two threads of a shared 2-core machine than on one.
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return _Run(student, teacher_source, units, options, fixed_batch, train_quantized_weights, train_scales).run()
    finally:
        torch.set_num_threads(threads)


Item = tuple[Mapping[str, np.ndarray], Mapping[str, np.ndarray]]


class _Batches:
    """The feeds of each optimizer step, labelled by the teacher: stacked mini-batches or up to 4 whole units.

    With ``mixup``, a share ``_MIX_SHARE`` of the samples are blends ``lam * a + (1 - lam) * b`` of two calibration
    samples (``lam ~ U(0, 1)``); samples of different shapes (sequences, text lines of other lengths) are first
    cropped to their common shape at random offsets. The teacher labels every blend, so a small unlabeled set
    yields new training pairs every epoch. Teacher outputs of the plain samples are cached.
    """

    def __init__(self, units: Sequence[Mapping[str, np.ndarray]], teacher: _Teacher, *, stacked: bool,
                 augment: str, batch_size: int) -> None:
        self.units = list(units)
        self.teacher = teacher
        self.stacked = stacked
        self.augment = augment
        self.per_step = batch_size if stacked else min(batch_size, 4)
        self._cache: dict[int, dict[str, np.ndarray]] = {}
        self._std = {
            k: float(np.concatenate([np.asarray(u[k], np.float64).ravel() for u in self.units]).std())
            for k in self.units[0]
        } if augment != "none" else {}

    def _noisy(self, feed: dict[str, np.ndarray], rng: np.random.Generator, rows: int | None = None) -> dict:
        """``feed`` plus N(0, s * std) per input, ``s ~ U(0, _NOISE)`` per sample (``rows``: per row of axis 0)."""
        if _NOISE <= 0:
            return feed
        noisy = {}
        for k, v in feed.items():
            scale = rng.uniform(0.0, _NOISE, size=(rows,) + (1,) * (v.ndim - 1)) if rows else rng.uniform(0.0, _NOISE)
            noisy[k] = (v + rng.standard_normal(v.shape) * scale * self._std[k]).astype(v.dtype, copy=False)
        return noisy

    @property
    def steps_per_epoch(self) -> int:
        return max(1, -(-len(self.units) // self.per_step))

    def epoch(self, rng: np.random.Generator) -> Iterator[list[Item]]:
        """The steps of one pass over the units in a random order."""
        order = rng.permutation(len(self.units))
        for begin in range(0, len(order), self.per_step):
            batch = [int(i) for i in order[begin : begin + self.per_step]]
            if self.stacked:
                yield [self._stacked(batch, rng)]
            else:
                yield [self._single(i, rng) for i in batch]

    def _stacked(self, batch: list[int], rng: np.random.Generator) -> Item:
        feed = verify.stack_feeds([self.units[i] for i in batch])
        if self.augment == "mixup":
            partner = rng.permutation(len(batch))
            lam = rng.uniform(0.0, 1.0, size=len(batch)).astype(np.float32)
            lam[rng.random(len(batch)) >= _MIX_SHARE] = 1.0
            feed = {
                k: _blend(v, v[partner], lam.reshape((-1,) + (1,) * (v.ndim - 1))) for k, v in feed.items()
            }
            feed = self._noisy(feed, rng, rows=len(batch))
        return feed, self.teacher(feed)

    def _single(self, index: int, rng: np.random.Generator) -> Item:
        if self.augment == "mixup" and len(self.units) > 1 and rng.random() < _MIX_SHARE:
            other = int(rng.integers(len(self.units) - 1))
            other += other >= index
            feed = _mix_pair(self.units[index], self.units[other], float(rng.uniform(0.0, 1.0)), rng)
            if feed is not None:
                feed = self._noisy(feed, rng)
                return feed, self.teacher(feed)
        if index not in self._cache:
            self._cache[index] = self.teacher(self.units[index])
        return self.units[index], self._cache[index]


def _lr_scales(weights: Mapping[str, torch.Tensor]) -> list[float]:
    """Per trainable tensor, the factor its learning rate is multiplied by: its RMS at the start (relative steps).

    Adam moves every weight by about ``lr`` per step whatever its size, so one absolute ``lr`` is too large for
    small weights (basic-pitch's CQT filters, RMS 4e-3, shared by 9 convolutions) while it is right for weights of
    RMS 0.1. Scaled by its RMS, a step changes every tensor by about the same share (as Adafactor's relative
    step). A tensor that is all zeros gets 0, it stays as it is: it is a layer exported without that term
    (basic-pitch's CQT convolutions share a zero bias; any bias there turns silent frequency bins into
    loud ones under the log, and the training loss rose 60% in one step). Log-space Q/DQ scale deltas (keys
    ``s*``, zero at the start and relative already) get 1.
    """
    scales = []
    for key, value in weights.items():
        if key.startswith("s"):
            scales.append(1.0)
        else:
            scales.append(float(value.detach().float().pow(2).mean().sqrt()) if value.numel() else 0.0)
    return scales


def _blend(a: np.ndarray, b: np.ndarray, lam: np.ndarray | float) -> np.ndarray:
    return (lam * a + (1 - lam) * b).astype(a.dtype, copy=False)


def _mix_pair(
    a: Mapping[str, np.ndarray], b: Mapping[str, np.ndarray], lam: float, rng: np.random.Generator
) -> dict[str, np.ndarray] | None:
    """``lam * a + (1 - lam) * b`` per input, both cropped to their common shape; ``None`` if they cannot be.

    Inputs whose shapes differ must differ alike (one pair of shapes, e.g. ``[T1, F]`` and ``[T2, F]``): they are
    cropped at the same offsets, so inputs that must agree in length still do.
    """
    if a.keys() != b.keys():
        return None
    pairs = {(a[k].shape, b[k].shape) for k in a if a[k].shape != b[k].shape}
    if len(pairs) > 1 or any(len(sa) != len(sb) for sa, sb in pairs):
        return None
    crops: tuple[tuple[slice, ...], tuple[slice, ...]] | None = None
    if pairs:
        ((shape_a, shape_b),) = pairs
        common = [min(x, y) for x, y in zip(shape_a, shape_b, strict=True)]
        crops = (_crop(shape_a, common, rng), _crop(shape_b, common, rng))
    mixed = {}
    for key, value in a.items():
        other = b[key]
        if value.shape != other.shape:
            assert crops is not None
            value, other = value[crops[0]], other[crops[1]]
        mixed[key] = _blend(value, other, np.float32(lam))
    return mixed


def _crop(shape: Sequence[int], common: Sequence[int], rng: np.random.Generator) -> tuple[slice, ...]:
    """Slices taking ``common`` elements per axis of ``shape`` at random offsets."""
    offsets = [int(rng.integers(size - length + 1)) for size, length in zip(shape, common, strict=True)]
    return tuple(slice(o, o + length) for o, length in zip(offsets, common, strict=True))


class _Run:
    """One distillation: the optional learning-rate probe, then training with decay, clipping and back-off."""

    def __init__(self, student, teacher_source, units, options: Options, fixed_batch: bool,
                 train_quantized_weights: bool, train_scales: bool = False) -> None:
        self.start = time.perf_counter()
        self.options = options
        torch.manual_seed(options.seed)
        self.graph = TorchGraph(student, train_quantized_weights=train_quantized_weights, train_scales=train_scales)
        self.features = shared_features(student, teacher_source) if options.feature_weight > 0 else []
        teacher = _Teacher(teacher_source, self.features)
        held = max(1, int(round(len(units) * options.holdout))) if len(units) > 1 else 0
        self.train_units = list(units[: len(units) - held])
        holdout_units = list(units[len(units) - held :]) or list(units)
        stacked = _stackable(units, fixed_batch)
        float_inputs = all(np.dtype(v.dtype).kind == "f" for v in units[0].values())
        self.augment = options.augment if float_inputs and len(self.train_units) > 1 else "none"
        size = options.batch_size
        self.holdout_feeds = (
            [verify.stack_feeds(holdout_units[i : i + size]) for i in range(0, len(holdout_units), size)]
            if stacked
            else holdout_units
        )
        self.holdout_targets = [teacher(feed) for feed in self.holdout_feeds]
        self.kinds = {
            name: verify.output_kind([t[name] for t in self.holdout_targets]) for name in self.graph.output_names
        }
        self.trainer = _Trainer(self.graph, teacher, self.kinds, options)
        self.batches = _Batches(self.train_units, teacher, stacked=stacked, augment=self.augment, batch_size=size)
        self.stacked = stacked
        self.holdout_count = len(holdout_units)
        self.params = list(self.graph.weights.values())
        self.lr_scales = _lr_scales(self.graph.weights)
        self.steps = self.epochs = self.clipped = self.backoffs = 0
        self.norm_mean: float | None = None
        self.probe_steps = 0

    # ------------------------------------------------------------------ pieces
    def elapsed(self) -> float:
        return time.perf_counter() - self.start

    def evaluate(self) -> float:
        with torch.no_grad():
            values = [
                float(self.trainer.loss(f, t)) for f, t in zip(self.holdout_feeds, self.holdout_targets, strict=True)
            ]
        value = float(np.mean(values))
        return value if np.isfinite(value) else float("inf")

    def agreement(self) -> float | None:
        """Held-out top-1 agreement with the teacher over the last axis of probability/score outputs (else None)."""
        names = [name for name, kind in self.kinds.items() if kind in ("probs", "scores")]
        if not names:
            return None
        agree = total = 0
        with torch.no_grad():
            for feed, targets in zip(self.holdout_feeds, self.holdout_targets, strict=True):
                outputs = self.graph({k: to_tensor(v) for k, v in feed.items()})
                for name in names:
                    student = _squeeze_trailing(outputs[name].float()).argmax(-1)
                    teacher = _squeeze_trailing(torch.from_numpy(np.asarray(targets[name], np.float32))).argmax(-1)
                    agree += int((student == teacher).sum())
                    total += teacher.numel()
        return agree / total if total else None

    def state(self) -> dict[str, torch.Tensor]:
        return {k: v.detach().clone() for k, v in self.graph.weights.state_dict().items()}

    def optimizer(self, lr: float) -> torch.optim.Optimizer:
        """Adam with one group per tensor: a step moves each tensor by about ``lr`` times its own scale."""
        groups = [{"params": [p], "scale": scale, "lr": lr * scale} for p, scale in zip(self.params, self.lr_scales,
                                                                                        strict=True)]
        return torch.optim.Adam(groups, lr=lr)

    def step(self, optimizer: torch.optim.Optimizer, items: list[Item], lr: float) -> float:
        """One optimizer step at ``lr``: gradients clipped to ``_CLIP`` times their running mean norm."""
        optimizer.zero_grad()
        total = 0.0
        for feed, targets in items:
            loss = self.trainer.loss(feed, targets) / len(items)
            if not torch.isfinite(loss):
                optimizer.zero_grad()
                return float("inf")
            loss.backward()
            total += loss.item()
        limit = _CLIP * self.norm_mean if self.norm_mean is not None else float("inf")
        norm = float(torch.nn.utils.clip_grad_norm_(self.params, limit))
        if not np.isfinite(norm):
            optimizer.zero_grad()
            return float("inf")
        self.clipped += norm > limit
        kept = min(norm, limit)
        self.norm_mean = kept if self.norm_mean is None else 0.9 * self.norm_mean + 0.1 * kept
        for group in optimizer.param_groups:
            group["lr"] = lr * group["scale"]
        optimizer.step()
        self.steps += 1
        return total

    def report(self, text: str) -> None:
        logger.info("distill: %s", text)
        if self.options.progress is not None:
            self.options.progress(min(self.elapsed(), self.options.time_budget), self.options.time_budget, text)

    # ------------------------------------------------------------------ phases
    def probe(self, loss_before: float, rng_seed: int) -> tuple[float, list[dict[str, float]], Any]:
        """Choose the lr by a walk over ``LR_CANDIDATES``, each candidate trained from the same start.

        The walk starts at the candidate nearest ``_PROBE_START`` and tries its smaller neighbour. It goes down
        only while the smaller lr is clearly better (the current one wins less than ``_PROBE_TIE`` of its
        held-out gain), else up while the larger lr is as good as the best so far (at least ``_PROBE_TIE`` of the
        best gain); it also stops when the candidates run out or the probe's share of the time budget is spent
        (the untried candidates are listed as skipped). Every candidate trains the same number of steps: 30, or
        as many as the first one had time for in its share. The choice is the largest lr that did not diverge
        and won at least ``_PROBE_TIE`` of the best gain: a short probe cannot rank near-equal rates, and the
        larger one learns faster in the many steps that follow while it is stable.

        Returns the chosen lr, the table (the candidates in the order tried, then the skipped ones) and the
        chosen candidate's (weights, optimizer) to continue from. A candidate that ends worse than the start or
        not finite counts as diverged; with none below the start, the smallest lr tried is chosen and training
        restarts from the starting weights.
        """
        start_state = self.state()
        probe_start = self.elapsed()
        budget = _PROBE_SHARE * self.options.time_budget
        limit = _PROBE_STEPS
        table: list[dict[str, float]] = []
        losses: dict[int, float] = {}
        states: dict[int, tuple[Any, Any, int]] = {}

        def holds(index: int, best_gain: float) -> bool:
            # a candidate that did not diverge and won at least _PROBE_TIE of the best gain: as good, for a probe
            return index in states and loss_before - losses[index] >= _PROBE_TIE * best_gain

        def as_good(a: int, b: int) -> bool:
            gain_a, gain_b = loss_before - losses[a], loss_before - losses[b]
            return gain_a >= _PROBE_TIE * gain_b if gain_b > 0 else losses[a] <= losses[b]

        def attempt(index: int) -> float:
            nonlocal limit
            lr = LR_CANDIDATES[index]
            self.graph.weights.load_state_dict(start_state)
            self.norm_mean = None
            optimizer = self.optimizer(lr)
            rng = np.random.default_rng(rng_seed)
            # each candidate's share of the time counts from its first step (torch's first optimizer step in a
            # process imports for seconds)
            share = (budget - (self.elapsed() - probe_start)) / max(1, _PROBE_PLANNED - len(losses))
            deadline = float("inf")
            done = 0
            warmup = _PROBE_STEPS // 4  # the same ramp whatever the time allows: one step is never at full lr
            while done < limit and self.elapsed() < deadline:
                for items in self.batches.epoch(rng):
                    self.step(optimizer, items, lr * min(1.0, (done + 1) / warmup))
                    done += 1
                    if done == 1:
                        deadline = self.elapsed() + share
                    if done >= limit or self.elapsed() >= deadline:
                        break
            limit = done if not losses else limit  # every candidate gets the steps the first one had time for
            loss = self.evaluate()
            diverged = not loss < loss_before
            table.append({"lr": lr, "held_out": round(loss, 6) if np.isfinite(loss) else None, "steps": done,
                          "diverged": diverged, "skipped": False})
            note = " (diverged)" if diverged else ""
            self.report(f"lr probe {lr:g}: held-out {loss:.5f} after {done} steps{note}")
            losses[index] = loss if np.isfinite(loss) else float("inf")
            if not diverged:
                states[index] = (self.state(), copy.deepcopy(optimizer.state_dict()), done)
            best_gain = max(loss_before - losses[i] for i in states) if states else 0.0
            for i in [i for i in states if not holds(i, best_gain)]:
                del states[i]  # no longer a choice: only the weights of candidates that hold are kept
            return losses[index]

        def time_left() -> bool:
            # steps so slow that the probe's share is spent: choose among the candidates tried
            return self.elapsed() - probe_start <= budget

        first = min(range(len(LR_CANDIDATES)), key=lambda i: abs(np.log(LR_CANDIDATES[i] / _PROBE_START)))
        current = first
        attempt(first)
        direction = 1
        if first > 0 and time_left():
            attempt(first - 1)
            if not as_good(first, first - 1):  # down only when the smaller lr is clearly better
                current, direction = first - 1, -1
        following = current + direction
        while 0 <= following < len(LR_CANDIDATES) and following not in losses and time_left():
            attempt(following)
            # up while the larger lr is as good as the best so far; down while the smaller one is clearly better
            going_on = (
                as_good(following, min(losses, key=losses.get)) if direction > 0 else not as_good(current, following)
            )
            if not going_on:
                break
            current, following = following, following + direction
        table.extend(
            {"lr": lr, "held_out": None, "steps": 0, "diverged": False, "skipped": True}
            for index, lr in enumerate(LR_CANDIDATES)
            if index not in losses
        )
        if not states:
            self.graph.weights.load_state_dict(start_state)
            return LR_CANDIDATES[min(losses)], table, None
        chosen = max(states)  # the largest lr that holds: a short probe cannot tell near-equal ones apart, and
        weights, optimizer_state, self.probe_steps = states[chosen]  # the larger learns faster while it is stable
        return LR_CANDIDATES[chosen], table, (weights, optimizer_state)

    def run(self) -> tuple[DistillResult, TorchGraph]:
        options = self.options
        masked = _keep_zeros(self.graph)
        loss_before = self.evaluate()
        agreement_before = self.agreement()
        best, best_state = loss_before, self.state()
        logger.info(
            "distill: %d train / %d held-out samples, %d parameter tensors, loss %.5f before",
            len(self.train_units), self.holdout_count, len(self.graph.parameter_names), loss_before,
        )
        table: list[dict[str, float]] | None = None
        resume = None
        lr = options.lr
        if lr is None:
            lr, table, resume = self.probe(loss_before, options.seed)
        optimizer = self.optimizer(lr)
        if resume is not None:
            weights, optimizer_state = resume
            self.graph.weights.load_state_dict(weights)
            optimizer.load_state_dict(optimizer_state)
            current = self.evaluate()
            if current < best:
                best, best_state = current, self.state()
        rng = np.random.default_rng(options.seed + 1)
        total_steps = options.epochs * self.batches.steps_per_epoch
        # Without a probe: linear warm-up (Adam's first steps move every weight by about lr, whatever its scale).
        # After it, Adam's moments are warm already. Then cosine decay to the end of the run, whichever ends it
        # first: the epochs or the time budget.
        warmup = min(50, max(10, total_steps // 20))
        ramped = 0  # steps of the warm-up already done (by the probe whose weights training continues from)
        if resume is not None:
            warmup, ramped = _PROBE_STEPS // 4, self.probe_steps
        phase_start, phase_time = self.steps, max(options.time_budget - self.elapsed(), 1e-3)
        time_start = self.elapsed()
        scale = 1.0
        stale, stopped = 0, "epochs"
        for epoch in range(options.epochs):
            self.epochs = epoch + 1
            losses = []
            for items in self.batches.epoch(rng):
                done = self.steps - phase_start
                progress = max(done / total_steps, (self.elapsed() - time_start) / phase_time)
                factor = min(1.0, (ramped + done + 1) / warmup) * 0.5 * (1.0 + np.cos(np.pi * min(progress, 1.0)))
                losses.append(self.step(optimizer, items, lr * scale * factor))
                if self.elapsed() > options.time_budget:
                    stopped = "time_budget"
                    break
            current = self.evaluate()
            train = float(np.mean(losses)) if losses else float("nan")
            self.report(f"epoch {self.epochs}/{options.epochs} lr {lr * scale:.2g}: loss {train:.5f}, "
                        f"held-out {current:.5f} (best {best:.5f})")
            improved = current < best - 1e-9
            if improved:
                best, stale = current, 0
                best_state = self.state()
            if not improved:
                stale += 1
                if not current < best + _DIVERGED * max(loss_before - best, best):
                    # a too-large step wrecked the weights: back to the best ones, at half the learning rate
                    self.graph.weights.load_state_dict(best_state)
                    optimizer = self.optimizer(lr)
                    self.norm_mean = None
                    scale *= 0.5
                    self.backoffs += 1
            if stopped == "time_budget":
                break
            if stale >= options.patience:
                stopped = "early_stop"
                break
        self.graph.weights.load_state_dict(best_state)
        # a lower loss is not enough: on a text recognizer the held-out loss fell by 8% while top-1 agreement with
        # the teacher fell too; such weights are not written
        agreement_after = self.agreement() if best < loss_before else agreement_before
        agreement_fell = (
            agreement_before is not None and agreement_after is not None and agreement_after < agreement_before
        )
        result = DistillResult(
            loss_before=loss_before,
            loss_after=best,
            epochs=self.epochs,
            steps=self.steps,
            seconds=self.elapsed(),
            stopped=stopped,
            kinds=self.kinds,
            features=self.features,
            train_units=len(self.train_units),
            holdout_units=self.holdout_count,
            stacked=self.stacked,
            augment=self.augment,
            # at least 1% (and 1e-6): below that, float noise between torch and onnxruntime
            improved=loss_before - best > max(0.01 * abs(loss_before), 1e-6) and not agreement_fell,
            agreement_before=agreement_before,
            agreement_after=agreement_after,
            sparse_tensors=masked,
            lr=lr,
            lr_probe=table,
            lr_backoffs=self.backoffs,
            clipped_steps=self.clipped,
        )
        return result, self.graph


def _keep_zeros(graph: TorchGraph) -> int:
    """Keep exact zeros of sparse weights at zero (magnitude pruning's sparsity survives training).

    A weight tensor (2+ dims) with at least 1% exact zeros gets its gradient masked there; Adam then never moves
    those entries (their moments stay zero). Returns the number of tensors masked.
    """
    count = 0
    for param in graph.weights.values():
        if param.dim() < 2:
            continue
        mask = param.detach() != 0
        if float((~mask).float().mean()) >= 0.01:
            param.register_hook(lambda grad, mask=mask: grad * mask)
            count += 1
    return count


def describe(result: DistillResult) -> dict[str, Any]:
    """JSON-able details for the pass report."""
    return {
        "loss_before": round(result.loss_before, 6),
        "loss_after": round(result.loss_after, 6),
        "epochs": result.epochs,
        "steps": result.steps,
        "seconds": round(result.seconds, 2),
        "stopped": result.stopped,
        "lr": result.lr,
        "lr_probe": result.lr_probe,
        "lr_backoffs": result.lr_backoffs,
        "clipped_steps": result.clipped_steps,
        "agreement_before": None if result.agreement_before is None else round(result.agreement_before, 6),
        "agreement_after": None if result.agreement_after is None else round(result.agreement_after, 6),
        "output_kinds": result.kinds,
        "features_matched": len(result.features),
        "train_samples": result.train_units,
        "holdout_samples": result.holdout_units,
        "stacked_batches": result.stacked,
        "augment": result.augment,
        "sparse_tensors_kept": result.sparse_tensors,
    }
