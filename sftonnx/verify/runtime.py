"""onnxruntime sessions and runs, and locating the first tensor where two models diverge."""

from __future__ import annotations

import contextlib
import logging
import os
import re
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import numpy as np
import onnx
import onnx_ir as ir

from sftonnx.errors import first_line
from sftonnx.io import PROTOBUF_LIMIT, needs_file, to_bytes
from sftonnx.verify.metrics import Tolerance

__all__ = ["find_first_divergence", "make_session", "ort_failure", "run_model", "session_source"]

logger = logging.getLogger(__name__)

_ORT_FAILURE = re.compile(r"running (\w+) node\. Name:'([^']*)' Status Message: (.*)")


# ---------------------------------------------------------------------------------------- onnxruntime
@contextlib.contextmanager
def session_source(model: ir.Model | bytes | str | os.PathLike) -> Iterator[bytes | str]:
    """What ``onnxruntime.InferenceSession`` should take for ``model``, valid inside the ``with`` block.

    Bytes for self-contained models; for models over 2 GiB or with external data (:func:`sftonnx.io.needs_file`),
    the path of a copy written to a temporary folder with its weights streamed file to file (nothing is loaded
    into memory; onnxruntime memory-maps the data), removed when the block ends. Paths and bytes pass through.
    """
    if isinstance(model, (bytes, str, os.PathLike)):
        yield model if isinstance(model, bytes) else str(model)
        return
    if not needs_file(model):
        yield to_bytes(model)
        return
    with tempfile.TemporaryDirectory(prefix="sftonnx-verify-") as folder:
        path = os.path.join(folder, "model.onnx")
        ir.save(model, path, external_data="model.onnx.data")
        yield path


def make_session(
    source: bytes | str,
    *,
    providers: Sequence[Any] = ("CPUExecutionProvider",),
    optimization: str = "all",
    threads: int = 0,
    optimized_model_path: str | None = None,
    log_severity: int = 3,
    disabled_optimizers: Sequence[str] = (),
    prepack: bool = True,
    config: Mapping[str, str] | None = None,
):
    """An onnxruntime session (warnings silenced; ``log_severity=4`` also errors). Raises what onnxruntime raises.

    ``disabled_optimizers`` names onnxruntime graph transformers to leave out (``ort-offline`` uses it).
    ``prepack=False`` keeps onnxruntime from repacking constant weights into a second, private copy (the
    weights stay in the memory-mapped data file): for verification runs of large models, where speed matters
    less than holding the weights once. ``config`` adds onnxruntime session config entries.
    """
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = log_severity
    options.intra_op_num_threads = threads
    options.graph_optimization_level = {
        "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
        "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
        "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
        "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
    }[optimization]
    if optimized_model_path:
        options.optimized_model_filepath = optimized_model_path
    if not prepack:
        options.add_session_config_entry("session.disable_prepacking", "1")
    for key, value in (config or {}).items():
        options.add_session_config_entry(key, value)
    if disabled_optimizers:
        return ort.InferenceSession(
            source, options, providers=list(providers), disabled_optimizers=list(disabled_optimizers)
        )
    return ort.InferenceSession(source, options, providers=list(providers))


def run_model(session, feeds_list: Sequence[Mapping[str, np.ndarray]]) -> list[list[np.ndarray]]:
    """Run every feed dict; returns one list of outputs per feed."""
    wanted = {i.name for i in session.get_inputs()}
    return [session.run(None, {k: v for k, v in feeds.items() if k in wanted}) for feeds in feeds_list]


def ort_failure(error: BaseException, limit: int = 200) -> str:
    """The first line of an onnxruntime error, shortened to ``Op 'node': message`` when it names a failing node."""
    line = first_line(error, limit=100_000)
    if match := _ORT_FAILURE.search(line):  # "... running Conv node. Name:'c' Status Message: ..."
        line = f"{match.group(1)} '{match.group(2)}': {match.group(3)}"
    line = re.sub(r"/onnxruntime_src/\S+ (\w+ )?\S+::\S+?\([^)]*\) ", "", line)  # where ORT checked
    return line[:limit]


# ------------------------------------------------------------------------------ locating divergence
def _with_intermediate_outputs(source: bytes) -> tuple[bytes, list[str]]:
    """The model with every typed intermediate tensor of the main graph added as a graph output."""
    proto = onnx.ModelProto()
    proto.ParseFromString(source)
    try:
        proto = onnx.shape_inference.infer_shapes(proto, data_prop=True)
    except Exception as error:  # best effort: values without inferred types are simply not compared
        logger.debug("shape inference for divergence search failed: %s", error)
    typed = {vi.name: vi for vi in proto.graph.value_info if vi.type.HasField("tensor_type")}
    existing = {o.name for o in proto.graph.output}
    order: list[str] = []
    for node in proto.graph.node:
        for name in node.output:
            if name and name in typed and name not in existing:
                proto.graph.output.append(typed[name])
                existing.add(name)
                order.append(name)
            elif name in existing:
                order.append(name)
    return proto.SerializeToString(), order


def find_first_divergence(
    reference: bytes,
    candidate: bytes,
    feeds: Mapping[str, np.ndarray],
    tolerance: Tolerance,
) -> str | None:
    """Name of the first tensor, in the candidate's node order, that differs from the same-named reference tensor.

    Both models are run with optimizations disabled and every intermediate tensor exposed. Tensors that
    exist in only one model (renamed or fused away) are not compared. Returns ``None`` when nothing
    diverges, or when the models are too large to expose intermediates.
    """
    if len(reference) > PROTOBUF_LIMIT // 2 or len(candidate) > PROTOBUF_LIMIT // 2:
        return None
    try:
        ref_source, _ = _with_intermediate_outputs(reference)
        cand_source, order = _with_intermediate_outputs(candidate)
        ref_session = make_session(ref_source, optimization="disable")
        cand_session = make_session(cand_source, optimization="disable")
        ref_values = dict(
            zip([o.name for o in ref_session.get_outputs()], run_model(ref_session, [feeds])[0], strict=False)
        )
        cand_values = dict(
            zip([o.name for o in cand_session.get_outputs()], run_model(cand_session, [feeds])[0], strict=False)
        )
    except Exception as error:  # the search is a diagnostic: never let it hide the real failure
        logger.debug("divergence search failed: %s", error)
        return None
    for name in order:
        if name not in ref_values or name not in cand_values:
            continue
        ref, cand = ref_values[name], cand_values[name]
        if ref.shape != cand.shape:
            return name
        if np.dtype(ref.dtype).kind == "f":
            if not np.allclose(cand, ref, atol=tolerance.atol, rtol=tolerance.rtol, equal_nan=True):
                return name
        elif not np.array_equal(cand, ref):
            return name
    return None
