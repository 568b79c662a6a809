"""``distill``: train the compressed model's float weights to reproduce the original model's outputs.

Imports no torch at module level: the registry imports this module, and ``sftonnx optimize`` must stay free of
torch unless a distillation pass actually runs.
"""

from __future__ import annotations

import itertools
import logging
import os
from collections.abc import Callable
from typing import Any, ClassVar, Literal

import numpy as np
import onnx_ir as ir

from sftonnx.errors import InputError, PassConfigError
from sftonnx.ir_utils import opset_version
from sftonnx.pass_infra import Numerics, PassReport, SftPass
from sftonnx.passes.distillation.support import TORCH_HINT, torch_available, unsupported_ops

__all__ = ["DistillPass"]

logger = logging.getLogger(__name__)


class DistillPass(SftPass):
    """Knowledge distillation: fine-tune the current (compressed) model against the original, with torch.

    The teacher is the original model (the one the pipeline was given, or ``teacher``) run in onnxruntime on the
    calibration data; no labels are needed. The student is the current model rendered op by op in torch
    (:mod:`~sftonnx.passes.distillation.torch_graph`); its float weights (Conv/Gemm/MatMul/norm/recurrent
    weights and biases, float constants of Add/Sub/Mul/Div) are trained with Adam, seeded. The loss per output
    follows its kind (KL with temperature on probabilities and scores, binary KL on probability maps, normalized
    MSE on other values; see :mod:`~sftonnx.passes.distillation.training`), plus optional feature matching at
    tensors both graphs share by name. The last ``holdout`` fraction of the calibration samples is never trained
    on; the weights with the lowest held-out loss are kept, and written back only when that loss is at least 1%
    lower than before training. The graph is not changed: same nodes, same initializer names, shapes and dtypes; exact
    zeros of sparse weights (after ``prune``) stay zero.

    With a QDQ model (after ``quantize``), QuantizeLinear/DequantizeLinear run as fake quantization with a
    straight-through estimator, so the float weights learn under int8 rounding (quantization-aware
    fine-tuning); ``train_quantized=true`` also fine-tunes int8 weights through a float shadow copy and
    requantizes them with their existing scales; ``train_scales=true`` trains the Q/DQ scales too (LSQ-style, in
    log space so they stay positive; int32 biases at ``s_x * s_w`` stay tied to that product and are
    requantized), written back as a standard QDQ model with the new scales.

    Declines (``requires``, a skip row inside presets, exit 2 when asked for explicitly): torch not installed
    (``distillation skipped: install with pip install "sftonnx[torch]"``), no calibration data, ops the torch
    rendering cannot run (named), no teacher.

    Learning rate: relative, each tensor's Adam step scaled by that tensor's RMS at the start (so one rate suits
    weights of every size: a step changes each tensor by about the same share). Given (``lr``), or chosen by a
    probe that walks over ``LR_CANDIDATES`` (3e-5, 1e-4, 3e-4, 1e-3, 3e-3, 1e-2, 3e-2): it starts at 1e-3,
    tries 3e-4, goes down while the smaller rate is clearly better and up while the larger one is as good (80%
    of the best held-out gain), until 25% of the time budget is spent; each candidate trains from the same start
    for the same few steps (30, or fewer when the time does not allow them). Training continues from the largest
    candidate that won at least 80% of the best gain without diverging
    (none: the smallest lr tried, from the start), finishing the probe's warm-up. Then cosine decay to the end of the
    epochs or the time budget; gradients are clipped to 4x their running norm, and an epoch whose held-out loss
    jumps back (half the gain so far lost, or not finite) restores the best weights at half the lr. Training
    samples: the calibration samples as they are; with ``augment=mixup``, half of them are blends of two
    calibration samples (cropped to a common shape when they differ, e.g. sequences of other lengths) plus a
    little Gaussian noise, labelled by the teacher (off by default: on a text recognizer and a chord recognizer
    it made the held-out agreement fall where the plain samples raised it). Tensors that are all zeros (terms
    the exporter left out, such as zero biases) are not trained. Progress: ``progress(seconds, time_budget,
    text)`` (the attribute, set by the caller) after each probe and epoch, and the same lines as INFO logs
    (``sftonnx -v``).

    Statistics: changes ``initializers_trained``; skipped ``no_improvement`` (nothing written: training did
    not lower the held-out loss by 1%), ``agreement_fell`` (nothing written: the held-out top-1 agreement with
    the teacher on probability/score outputs fell, whatever the loss). ``details``: ``loss_before``,
    ``loss_after`` (held-out), ``epochs``, ``steps``, ``seconds``, ``stopped`` (epochs|early_stop|time_budget),
    ``lr`` (used), ``lr_probe`` (per candidate: ``lr``, ``held_out``, ``steps``, ``diverged``, ``skipped``;
    ``None`` when ``lr`` was given), ``lr_backoffs``, ``clipped_steps``, ``agreement_before``,
    ``agreement_after``, ``output_kinds``, ``features_matched``, ``train_samples``, ``holdout_samples``,
    ``stacked_batches``, ``augment``, ``sparse_tensors_kept``.

    Numerics: APPROXIMATE (it moves the current model toward the original; verified like every lossy pass).

    Args:
        epochs: Passes over the training samples at most.
        lr: Relative Adam learning rate (per tensor, times its RMS); ``None``: chosen by the probe above.
        batch_size: Samples per optimizer step (at most 4 when samples cannot be stacked into one batch).
        temperature: Softmax temperature of the KL terms.
        time_budget: Seconds of training at most (teacher runs included); the best weights so far are kept.
        holdout: Fraction of the calibration samples held out for early stopping.
        patience: Epochs without a better held-out loss before stopping.
        feature_weight: Weight of feature matching at shared tensor names (0: off).
        augment: ``none`` (default); ``mixup`` blends pairs of float samples (the teacher labels them too).
        train_quantized: Also fine-tune int8 weights of a QDQ model (requantized with their scales).
        train_scales: Also train the Q/DQ scales of a QDQ model (tied int32 biases requantized).
        max_samples: Calibration samples used at most.
        seed: Seed of torch and of the sample order.
        teacher: Path of the teacher model; default: the model the pipeline started from.
        calibration_data: An ``.npz`` path, a folder of ``.npz`` files or an iterable of feed dicts.
        weights_from: Do not train: copy the float weights of this model, which this pass distilled before from
            the same start (same graph and initializers, else an input error). Needs neither torch nor data; the
            ``auto`` search writes its distilled choice this way, so the written model is the one it measured.
            Change ``initializers_loaded``.
    """

    name = "distill"
    numerics = Numerics.APPROXIMATE
    uses_calibration = True
    uses_original: ClassVar[bool] = True
    reports_progress: ClassVar[bool] = True

    def __init__(
        self,
        *,
        epochs: int = 150,
        lr: float | None = None,
        batch_size: int = 32,
        temperature: float = 1.0,
        time_budget: float = 60.0,
        holdout: float = 0.2,
        patience: int = 40,
        feature_weight: float = 0.0,
        augment: Literal["mixup", "none"] = "none",
        train_quantized: bool = True,
        train_scales: bool = False,
        max_samples: int = 2048,
        seed: int = 0,
        teacher: str | None = None,
        calibration_data: Any = None,
        weights_from: str | None = None,
    ) -> None:
        checks = [
            (epochs >= 1, f"epochs must be >= 1, got {epochs}"),
            (lr is None or lr > 0, f"lr must be > 0, got {lr}"),
            (batch_size >= 1, f"batch_size must be >= 1, got {batch_size}"),
            (temperature > 0, f"temperature must be > 0, got {temperature}"),
            (time_budget > 0, f"time_budget must be > 0 seconds, got {time_budget}"),
            (0 < holdout < 1, f"holdout must be in (0, 1), got {holdout}"),
            (patience >= 1, f"patience must be >= 1, got {patience}"),
            (feature_weight >= 0, f"feature_weight must be >= 0, got {feature_weight}"),
            (augment in ("mixup", "none"), f"augment must be mixup|none, got '{augment}'"),
            (max_samples >= 2, f"max_samples must be >= 2, got {max_samples}"),
        ]
        for ok, message in checks:
            if not ok:
                raise PassConfigError(f"distill: {message}")
        if teacher is not None and not os.path.isfile(teacher):
            raise PassConfigError(f"distill: teacher model not found: {teacher}")
        if weights_from is not None and not os.path.isfile(weights_from):
            raise PassConfigError(f"distill: weights_from model not found: {weights_from}")
        self.weights_from = weights_from
        self.epochs = int(epochs)
        self.lr = None if lr is None else float(lr)
        self.batch_size = int(batch_size)
        self.temperature = float(temperature)
        self.time_budget = float(time_budget)
        self.holdout = float(holdout)
        self.patience = int(patience)
        self.feature_weight = float(feature_weight)
        self.augment = augment
        self.train_quantized = bool(train_quantized)
        self.train_scales = bool(train_scales)
        self.max_samples = int(max_samples)
        self.seed = int(seed)
        self.teacher = teacher
        self.calibration_data = calibration_data
        #: The model the pipeline started from (bytes or a path), handed over by the Pipeline for the call.
        self.original: bytes | str | None = None
        #: Called as ``progress(seconds, time_budget, text)`` after each lr probe and epoch (set by the caller, or
        #: by the Pipeline for the call when it was given ``pass_progress``).
        self.progress: Callable[[float, float, str], None] | None = None

    def requires(self, model: ir.Model) -> None:
        """Decline when torch is missing, without data or teacher, or when the graph holds ops torch cannot run."""
        if self.weights_from is not None:
            return  # no training: the weights are read from a model distilled before
        if not torch_available():
            raise ir.passes.PreconditionError(f"distillation skipped: {TORCH_HINT}")
        if self.calibration_data is None:
            raise ir.passes.PreconditionError("distill: needs calibration data (--calibration-data)")
        if self.teacher is None and self.original is None:
            raise ir.passes.PreconditionError(
                "distill: no teacher (run it in a pipeline, which hands over the original, or give teacher=PATH)"
            )
        missing = unsupported_ops(model)
        if missing:
            listed = ", ".join(f"{op} ({count})" for op, count in sorted(missing.items()))
            raise ir.passes.PreconditionError(f"distill: the torch rendering cannot run {listed}")

    def rewrite(self, model: ir.Model, report: PassReport) -> None:
        """Train against the teacher, then write the kept weights back (see the class docstring)."""
        if self.weights_from is not None:
            report.changes["initializers_loaded"] += _load_weights(model, self.weights_from)
            return
        from sftonnx.passes.distillation import training
        from sftonnx.verify import calibration_feeds, input_specs

        specs = input_specs(model)
        # max_samples counts units (feeds of one sample), not rows: calibration_feeds counts the rows of axis 0,
        # which for an input without a batch axis ([T, F] frames) are time steps
        feeds = calibration_feeds(self.calibration_data, specs, batch_size=1)
        units = list(itertools.islice(feeds, self.max_samples))
        if len(units) < 2:
            raise ir.passes.PreconditionError(f"distill: needs at least 2 calibration samples, got {len(units)}")
        fixed_batch = any(spec.shape and isinstance(spec.shape[0], int) for spec in specs)
        options = training.Options(
            epochs=self.epochs,
            lr=self.lr,
            batch_size=self.batch_size,
            temperature=self.temperature,
            time_budget=self.time_budget,
            holdout=self.holdout,
            patience=self.patience,
            feature_weight=self.feature_weight,
            augment=self.augment,
            seed=self.seed,
            progress=self.progress,
        )
        teacher = self.teacher if self.teacher is not None else self.original
        assert teacher is not None  # requires() checked
        logger.info("distill: opset %d, %d calibration samples", opset_version(model), len(units))
        result, graph = training.distill(
            model,
            teacher,
            units,
            options,
            fixed_batch=fixed_batch,
            train_quantized_weights=self.train_quantized,
            train_scales=self.train_scales,
        )
        report.details.update(training.describe(result))
        before, after = result.agreement_before, result.agreement_after
        if before is not None and after is not None and after < before:
            report.skipped["agreement_fell"] += 1
            logger.info("distill: held-out top-1 agreement fell (%.4f -> %.4f); weights left alone", before, after)
            return
        if not result.improved:
            report.skipped["no_improvement"] += 1
            logger.info("distill: held-out loss did not improve (%.5f); weights left as they were", result.loss_before)
            return
        report.changes["initializers_trained"] += graph.write_back(model)


def _load_weights(model: ir.Model, path: str) -> int:
    """Copy the float initializer values of the model at ``path`` into ``model``; the number that differed.

    ``path`` must hold the same graph with other weights (a model this pass trained from the same start): the
    same op types in the same order and the same initializers (names, shapes, dtypes; int64 shape constants
    aside). Anything else is refused, nothing copied.
    """
    from sftonnx import io

    source = io.load(path)
    ops = [node.op_type for node in model.graph]
    if [node.op_type for node in source.graph] != ops:
        raise InputError(f"distill: weights_from {path} holds another graph than the current model")
    targets = model.graph.initializers
    sources = source.graph.initializers

    def signature(values: Any) -> dict[str, tuple]:
        # shape constants (int64) may be named otherwise after a save and are never trained: not compared
        return {name: (v.const_value.dtype, tuple(v.const_value.shape)) for name, v in values.items()
                if v.const_value is not None and v.const_value.dtype != ir.DataType.INT64}

    mine, theirs = signature(targets), signature(sources)
    if mine != theirs:
        differ = sorted(name for name in mine.keys() | theirs.keys() if mine.get(name) != theirs.get(name))
        raise InputError(
            f"distill: the initializers of weights_from {path} differ from the current model's: "
            + ", ".join(differ[:3]) + (f" and {len(differ) - 3} more" if len(differ) > 3 else "")
        )
    changed = 0
    for name, value in targets.items():
        if name not in mine:
            continue
        new = sources[name].const_value.numpy()
        if not np.array_equal(new, value.const_value.numpy()):
            value.const_value = ir.tensor(new.copy(), name=name)
            changed += 1
    return changed
