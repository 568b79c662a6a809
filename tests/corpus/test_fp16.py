"""The fp16 preset on the corpus models it used to stop on with exit 1 (and lac_encoder, which crashed onnxruntime).

Per model: ``--preset fp16`` exits 0, the fp16 pass ran (not skipped) and kept in float32 what cannot take float16
on onnxruntime's CPU EP, for the reason named (skip keys of ``ConvertFloat16Pass``), and the written model, re-run
here on the recipe's verification samples, holds the budget verification uses (``verify.Budget()``: cosine and
argmax agreement >= 0.99 per output; harness.COSINE_BUDGET / ARGMAX_BUDGET, the same numbers).
"""

from __future__ import annotations

import pathlib

import pytest

from sftonnx.verify import DEFAULT_MIN_AGREEMENT, DEFAULT_MIN_COSINE
from tests.corpus import harness
from tests.corpus.conftest import N_VERIFY, SEED_VERIFY, fetch_or_skip, recipe_samples
from tests.corpus.manifest import BY_ID

pytestmark = pytest.mark.corpus

#: model id -> (skip key, op type) the fp16 pass must report among the nodes it kept float32 (``None``: nothing to
#: keep after the lossless passes), and why it failed before (2026-11-29, onnxruntime 1.31/1.32).
FP16_CASES: dict[str, tuple[tuple[str, str] | None, str]] = {
    "ddddocr_common_old": (("no_float16_type", "DynamicQuantizeLinear"), "DynamicQuantizeLinear fed float16"),
    "minimol_v1": (("no_float16_kernel", "ScatterElements"), "ConstantOfShape default value; Scatter add"),
    "surfaces_gbr": (("no_float16_type", "Scaler"), "ai.onnx.ml Scaler fed float16"),
    "surfaces_knn_validity": (("no_float16_type", "TreeEnsembleClassifier"), "ai.onnx.ml tree fed float16"),
    # the lossless passes remove the Transpose -> MatMul pair; the bare pass is tested below
    "lac_encoder": (None, "onnxruntime segfault: fp16 Transpose[1,0,2] -> MatMul"),
}


@pytest.mark.parametrize("model_id", list(FP16_CASES))
def test_fp16_preset_writes_a_model_within_budget(model_id: str, tmp_path: pathlib.Path) -> None:
    entry = BY_ID[model_id]
    path = fetch_or_skip(entry)
    feeds = recipe_samples(entry, N_VERIFY, SEED_VERIFY)
    data = harness.data_source(entry, feeds, tmp_path, "verify", model=path)
    outcome = harness.run_preset(entry, path, "fp16", tmp_path / "out.onnx", data=data)
    assert outcome.exit_code == 0, outcome.describe()
    details = outcome.details["fp16"]
    kept, _ = FP16_CASES[model_id]
    if kept is not None:
        reason, op_type = kept
        assert details["kept_float32_reasons"][reason][op_type] >= 1, details
    reference = harness.run_models(path, feeds)
    candidate = harness.run_models(tmp_path / "out.onnx", feeds)
    assert [o.dtype for o in candidate[0]] == [o.dtype for o in reference[0]]  # float32 interface kept
    kinds = harness.metric_kinds(entry, reference[0])
    metrics = harness.task_metrics(reference, candidate, kinds)
    budgets = [DEFAULT_MIN_AGREEMENT if kind == "argmax" else DEFAULT_MIN_COSINE for kind in kinds if kind != "-"]
    assert metrics and all(m >= b for m, b in zip(metrics, budgets, strict=True)), (metrics, budgets)


def test_fp16_pass_alone_keeps_lac_encoder_batch_transpose(tmp_path: pathlib.Path) -> None:
    """The bare pass on the exported graph: its Transpose(perm=[1, 0, 2]) -> MatMul stays float32, and onnxruntime
    loads and runs the result (in float16 the session creation crashed the process)."""
    from sftonnx import api

    entry = BY_ID["lac_encoder"]
    path = fetch_or_skip(entry)
    feeds = recipe_samples(entry, N_VERIFY, SEED_VERIFY)
    data = harness.data_source(entry, feeds, tmp_path, "verify", model=path)
    result = api.optimize(path, tmp_path / "out.onnx", passes="fp16", data=data)
    (row,) = result.report.rows
    assert row.skipped == {"ort_fusion_crash": 1} and row.details["kept_float32"] == {"Transpose": 1}
    assert row.changes["initializers_converted"] > 0
    reference, candidate = harness.run_models(path, feeds), harness.run_models(tmp_path / "out.onnx", feeds)
    assert harness.task_metrics(reference, candidate, ("argmax",)) >= [DEFAULT_MIN_AGREEMENT]
