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
``augment=mixup`` blends pairs of float samples (``lam ~ U(0, 1)``) and asks the teacher for those too,
which multiplies a small calibration set. The last ``holdout`` fraction of units is never trained on: its
loss decides early stopping, and the weights with the lowest held-out loss are the ones kept.
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import time
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import onnx_ir as ir
import torch

from sftonnx import verify
from sftonnx.passes.distillation.torch_graph import TorchGraph, to_tensor

__all__ = ["DistillResult", "distill"]

logger = logging.getLogger(__name__)

_EPS = 1e-8


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


@dataclasses.dataclass(frozen=True)
class Options:
    """Training options (see :class:`~sftonnx.passes.distillation.distill.DistillPass`)."""

    epochs: int
    lr: float
    batch_size: int
    temperature: float
    time_budget: float
    holdout: float
    patience: int
    feature_weight: float
    augment: str
    seed: int


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
) -> tuple[DistillResult, TorchGraph]:
    """Train the student's float weights against the teacher; returns the result and the trained module.

    The module holds the kept (best held-out) weights; :meth:`TorchGraph.write_back` puts them into ``student``.
    torch runs on one thread for the call (restored after): the small per-op kernels of an interpreted graph
    ran 5x slower on two threads of a shared 2-core machine than on one.
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return _distill(student, teacher_source, units, options, fixed_batch, train_quantized_weights)
    finally:
        torch.set_num_threads(threads)


def _distill(student, teacher_source, units, options, fixed_batch, train_quantized_weights):
    start = time.perf_counter()
    torch.manual_seed(options.seed)
    rng = np.random.default_rng(options.seed)
    graph = TorchGraph(student, train_quantized_weights=train_quantized_weights)
    features = shared_features(student, teacher_source) if options.feature_weight > 0 else []
    teacher = _Teacher(teacher_source, features)

    held = max(1, int(round(len(units) * options.holdout))) if len(units) > 1 else 0
    train_units = list(units[: len(units) - held])
    holdout_units = list(units[len(units) - held :]) or list(units)
    stacked = _stackable(units, fixed_batch)
    float_inputs = all(np.dtype(v.dtype).kind == "f" for v in units[0].values())
    augment = options.augment if (stacked and float_inputs) else "none"

    holdout_feeds = (
        [
            verify.stack_feeds(holdout_units[i : i + options.batch_size])
            for i in range(0, len(holdout_units), options.batch_size)
        ]
        if stacked
        else holdout_units
    )
    holdout_targets = [teacher(feed) for feed in holdout_feeds]
    train_targets = None if augment != "none" else [teacher(unit) for unit in train_units] if not stacked else None
    kinds = {name: verify.output_kind([t[name] for t in holdout_targets]) for name in graph.output_names}
    trainer = _Trainer(graph, teacher, kinds, options)

    def evaluate() -> float:
        with torch.no_grad():
            values = [float(trainer.loss(f, t)) for f, t in zip(holdout_feeds, holdout_targets, strict=True)]
        return float(np.mean(values))

    masked = _keep_zeros(graph)
    loss_before = evaluate()
    best, best_state = loss_before, copy.deepcopy(graph.weights.state_dict())
    optimizer = torch.optim.Adam(graph.parameters(), lr=options.lr)
    logger.info(
        "distill: %d train / %d held-out samples, %d parameters tensors, loss %.5f before",
        len(train_units), len(holdout_units), len(graph.parameter_names), loss_before,
    )
    epochs = steps = stale = 0
    # Unstacked units (a folder of files, sequences of different lengths) are whole inputs each: up to 4 units per step.
    per_step = options.batch_size if stacked else min(options.batch_size, 4)
    total_steps = options.epochs * max(1, -(-len(train_units) // per_step))
    warmup = min(50, max(10, total_steps // 20))
    for group in optimizer.param_groups:
        group["lr"] = options.lr / warmup
    stopped = "epochs"
    unit_targets_cache: dict[int, dict[str, np.ndarray]] = {}
    for epoch in range(options.epochs):
        epochs = epoch + 1
        order = rng.permutation(len(train_units))
        train_losses = []
        for begin in range(0, len(order), per_step):
            batch = [int(i) for i in order[begin : begin + per_step]]
            optimizer.zero_grad()
            if stacked:
                feed = verify.stack_feeds([train_units[i] for i in batch])
                if augment == "mixup":
                    partner = rng.permutation(len(batch))
                    lam = rng.beta(1.0, 1.0, size=len(batch)).astype(np.float32)
                    feed = {
                        k: lam.reshape((-1,) + (1,) * (v.ndim - 1)) * v
                        + (1 - lam.reshape((-1,) + (1,) * (v.ndim - 1))) * v[partner]
                        for k, v in feed.items()
                    }
                    targets = teacher(feed)
                else:
                    targets = teacher(feed)
                loss = trainer.loss(feed, targets)
                loss.backward()
                train_losses.append(loss.item())
            else:
                for i in batch:
                    if train_targets is not None:
                        targets = train_targets[i]
                    else:
                        targets = unit_targets_cache.setdefault(i, teacher(train_units[i]))
                    loss = trainer.loss(train_units[i], targets) / len(batch)
                    loss.backward()
                    train_losses.append(loss.item() * len(batch))
            optimizer.step()
            steps += 1
            # linear warm-up (Adam's first steps move every weight by about lr, whatever its scale), then cosine
            # decay over the run, whichever ends it first: the epochs or the time budget
            progress = max(steps / total_steps, (time.perf_counter() - start) / options.time_budget)
            factor = min(1.0, (steps + 1) / warmup) * 0.5 * (1.0 + np.cos(np.pi * min(progress, 1.0)))
            for group in optimizer.param_groups:
                group["lr"] = options.lr * factor
            if time.perf_counter() - start > options.time_budget:
                stopped = "time_budget"
                break
        current = evaluate()
        logger.info(
            "distill: epoch %d/%d train loss %.5f, held-out %.5f (best %.5f)",
            epochs, options.epochs, float(np.mean(train_losses)) if train_losses else float("nan"), current, best,
        )
        if current < best - 1e-9:
            best, stale = current, 0
            best_state = copy.deepcopy(graph.weights.state_dict())
        else:
            stale += 1
        if stopped == "time_budget":
            break
        if stale >= options.patience:
            stopped = "early_stop"
            break
    graph.weights.load_state_dict(best_state)
    result = DistillResult(
        loss_before=loss_before,
        loss_after=best,
        epochs=epochs,
        steps=steps,
        seconds=time.perf_counter() - start,
        stopped=stopped,
        kinds=kinds,
        features=features,
        train_units=len(train_units),
        holdout_units=len(holdout_units),
        stacked=stacked,
        augment=augment,
        # at least 1% (and 1e-6): below that, float noise between torch and onnxruntime
        improved=loss_before - best > max(0.01 * abs(loss_before), 1e-6),
        sparse_tensors=masked,
    )
    return result, graph


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
        "output_kinds": result.kinds,
        "features_matched": len(result.features),
        "train_samples": result.train_units,
        "holdout_samples": result.holdout_units,
        "stacked_batches": result.stacked,
        "augment": result.augment,
        "sparse_tensors_kept": result.sparse_tensors,
    }
