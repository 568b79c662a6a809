"""Numerical verification: model inputs and user data, onnxruntime runs, and output metrics.

The optimized model is run against the original on the same inputs: user data (``--data``: an ``.npz`` or a
folder of them), held-out calibration samples (``--calibration-data`` without ``--data``), or inputs built
from the model's graph (dynamic dimensions from ``--input-shape``, the weights, or stated defaults; never
for lossy passes unless explicitly allowed).

Modules: :mod:`~sftonnx.verify.inputs` (input specs, shapes, synthesized inputs), :mod:`~sftonnx.verify.data`
(``.npz`` files and folders, calibration streams, feed preparation), :mod:`~sftonnx.verify.runtime`
(onnxruntime sessions, divergence search), :mod:`~sftonnx.verify.metrics` (metrics, tolerance, budgets),
:mod:`~sftonnx.verify.synthesis` (inputs that fit the model when no data is given: dimensions from weights,
integer ranges from the ops that consume them).
Everything public is re-exported here: ``from sftonnx import verify; verify.compare_outputs(...)``.
"""

from __future__ import annotations

from sftonnx.verify.data import (
    HELD_OUT_FRACTION,
    MAX_VERIFY_SAMPLES,
    MIN_HELD_OUT,
    RANDOM_SAMPLES,
    DataPart,
    HeldOut,
    batches,
    calibration_feeds,
    hold_out,
    load_npz,
    model_shapes,
    prepare_feeds,
    read_feeds,
    stack_feeds,
    stackable,
)
from sftonnx.verify.inputs import (
    DEFAULT_BATCH,
    DEFAULT_DYNAMIC_DIM,
    InputSpec,
    check_shape,
    input_specs,
    parse_input_shapes,
    random_feeds,
    resolve_shapes,
    unfit_hint,
)
from sftonnx.verify.metrics import (
    DEFAULT_ATOL,
    DEFAULT_MIN_AGREEMENT,
    DEFAULT_MIN_COSINE,
    DEFAULT_RTOL,
    DEFAULT_SCALE_RTOL,
    MIN_DECISIONS,
    Budget,
    Comparison,
    OutputMetrics,
    Tolerance,
    classifier_like,
    compare_outputs,
    output_kind,
)
from sftonnx.verify.runtime import find_first_divergence, make_session, ort_failure, run_model, session_source
from sftonnx.verify.synthesis import synthesize_inputs

__all__ = [
    "DEFAULT_ATOL",
    "DEFAULT_BATCH",
    "DEFAULT_DYNAMIC_DIM",
    "DEFAULT_MIN_AGREEMENT",
    "DEFAULT_MIN_COSINE",
    "DEFAULT_RTOL",
    "DEFAULT_SCALE_RTOL",
    "HELD_OUT_FRACTION",
    "MAX_VERIFY_SAMPLES",
    "MIN_DECISIONS",
    "MIN_HELD_OUT",
    "RANDOM_SAMPLES",
    "Budget",
    "Comparison",
    "DataPart",
    "HeldOut",
    "InputSpec",
    "OutputMetrics",
    "Tolerance",
    "batches",
    "calibration_feeds",
    "classifier_like",
    "check_shape",
    "compare_outputs",
    "find_first_divergence",
    "hold_out",
    "input_specs",
    "load_npz",
    "make_session",
    "model_shapes",
    "ort_failure",
    "output_kind",
    "parse_input_shapes",
    "prepare_feeds",
    "random_feeds",
    "read_feeds",
    "stack_feeds",
    "stackable",
    "resolve_shapes",
    "run_model",
    "session_source",
    "synthesize_inputs",
    "unfit_hint",
]
