"""int8 chosen per model (``quantize-int8``): static QDQ, dynamic MatMul/Gemm or mixed, the fastest within budget.

No single int8 scheme wins on every model: static QDQ runs convolutions and dense layers in integer kernels but
collapses transformers whose activations carry outliers; dynamic int8 (activations quantized per call) keeps
them but leaves convs float; a recurrent model's state compounds any error. This pass builds the candidates on
the user's calibration data, measures each on held-out calibration samples with the task metric verification
uses, times those that hold the budget against the float model, and keeps the fastest:

1. **Data.** The calibration samples (per sample: rows of one ``.npz``, files of a folder, feed dicts) are
   counted; the last quarter (at least 2, at most ``eval_samples``) is held out for judging the candidates and
   the rest calibrates. With fewer than 4 samples the candidates are judged on the calibration samples
   themselves (``details["evaluation"]`` says so).
2. **Judge.** Candidate and float model run on the held-out samples (one by one and, when they stack along axis 0
   and the model takes a batch, once more as one batch: dynamic int8 ranges span the batch, and verification
   runs stacked data in batches; the worse verdict counts); :func:`sftonnx.verify.compare_outputs`
   with ``Budget(min_cosine, min_agreement)`` decides (argmax/threshold/label agreement for decision outputs,
   cosine for values: the same rules and defaults as the final verification). For ranking, each output's
   shortfall is expressed as a share of its budget: ``(1 - agreement) / (1 - min_agreement)`` and
   ``(1 - cosine) / (1 - min_cosine)`` for what the budget judges it by; the worst output's share is the
   candidate's ``budget_used`` (``<= 1``: within budget, up to the agreement's granularity). A candidate holds
   the budget when it passes and uses at most ``headroom`` (0.8) of it: the final verification runs on other
   samples, and a candidate that only just passes here may not pass there. When the pipeline verifies the result
   (``uses_verification``: it hands over the verification feeds, the original model's outputs on them and the
   final budget), a candidate that holds on the held-out samples must also pass the final check's own rule on
   those feeds (run as that check runs them, against the original, no headroom: they are the very samples it
   uses); one that does not is refused with the check's failure line (``why``: "on the verification data: ...")
   and the next candidate (percentile ranges, mixed back-off, dynamic) or float is taken. Ranking
   (``budget_used``) stays on the held-out samples; ``verification_budget_used`` is reported beside it. Each
   candidate and back-off rung costs one more run over the verification data; ``mixed``'s sensitivity probes
   (ranked, never kept) skip it.
3. **Candidates.**

   * ``static``: per-channel int8 weights, uint8 activations, one calibration (streamed, one sample at a time:
     memory is one sample's activations plus a histogram per tensor), ranges by each of ``methods``
     (``minmax``, then ``percentile`` if minmax misses the budget: cheap, from the same histograms); nodes
     onnxruntime would run in float between DQ and Q are dropped (``quantize``'s ``check_kernels``); the first
     method within budget (else the best-judged) is the static candidate.
   * ``static-smooth``: when static misses the budget and the model has MatMul/Gemm with constant weights,
     SmoothQuant (``smooth_alpha``) first moves activation outliers into the weights, then the same.
   * ``dynamic``: every MatMul/Gemm with a constant weight as ``quantize-dynamic`` (convs stay float); not built
     (``not_built``) when MatMul/Gemm hold under 5% of the Conv/MatMul/Gemm weights (a CNN with a classifier
     head: the convs would stay float, and dynamic int8 cannot be much faster).
   * ``mixed``: when the best static candidate misses the budget: each layer (a compute node with the
     Relu/Clip folded into it; consecutive layers grouped into blocks when there are more than ``max_probes``)
     is quantized alone and judged (its sensitivity); the most sensitive back off first, MatMul/Gemm with
     constant weights to dynamic int8 and the others to float, then the dynamic ones to float, most sensitive
     first; the first rung of that ladder within budget is found by galloping and bisection
     (:func:`sftonnx.search.ladder.search_ladder`).

   Attention Softmax and LayerNorm (and every op without an int8 kernel) stay float in all of them.
4. **Recurrent state.** Graph inputs that look like state (a name with ``state``/``hidden``/``cell``/``past``/
   ``cache``/``memory``, a fixed shape) paired with an output of the same shape and type are state carried
   between calls: the nodes on the path from such an input to its output stay float (``keep_state_float``), and
   when the calibration data is a folder (a sequence of steps) the candidates are judged over the sequence,
   each model fed its own state outputs of the previous step, so compounding error is seen. LSTM/GRU/RNN and
   If/Loop/Scan bodies are never quantized (no scheme here handles them: counted as ``in_subgraph``).
5. **Speed.** The candidates within budget are timed against the float model, interleaved in one process
   (:func:`sftonnx.timing.median_latencies`, one intra-op thread by default: steady when other processes share
   the cores) on a held-out sample; the fastest whose latency ratio is at most
   ``max_latency_ratio`` wins. None: the model is left exactly as it came in (no change reported) with the
   reason in ``details["reason"]``.

Statistics: changes as ``quantize``/``quantize-dynamic`` count them for the chosen candidate (``nodes_quantized``,
``weights_quantized``, ``matmuls_quantized``, ...) plus the preparation (``opset_upgraded``, ``nodes_renamed``,
...); skipped ``over_budget`` (no candidate held the budget), ``not_faster`` (none was faster), ``in_subgraph``,
``state_path_float`` (nodes kept float on a recurrent state path); details ``chosen``, ``reason``,
``candidates`` (per candidate: ``latency_ratio``, ``budget_used``, ``verification_budget_used``, ``cosine``,
``agreement``, ``passed``, ``outcome`` and ``why`` it lost, ``paths``), ``paths`` (the chosen model's
MatMul/Gemm/Conv by path: ``static``/``dynamic``/``float``, counts and ``nodes``), ``sensitivity``, ``evaluation``,
``calibration``, ``state_pairs``, ``latency_ms``, ``seconds``.

If the final verification still refuses the chosen model (``revert_on_failure``), the pipeline keeps the model
from before this pass and records why: the preset never exits 3 over its own choice.
"""

from __future__ import annotations

import collections
import dataclasses
import itertools
import logging
import math
import os
import pathlib
import re
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any

import numpy as np
import onnx_ir as ir

from sftonnx import io, verify
from sftonnx.errors import InputError, PassConfigError
from sftonnx.ir_utils import nested_node_count, restore_model
from sftonnx.pass_infra import Numerics, PassReport, SftPass, VerificationData
from sftonnx.passes.quantization import calibration as calib
from sftonnx.passes.quantization import recovery
from sftonnx.passes.quantization._kernels import INTEGER_OPS, cpu_has_vnni, ort_optimized_graph
from sftonnx.passes.quantization.dynamic import QuantizeDynamicPass
from sftonnx.passes.quantization.qdq import StaticCandidate, StaticQuantizer, drop_float_islands, prepare
from sftonnx.timing import median_latencies
from sftonnx.verify.metrics import NEGLIGIBLE_RMS

__all__ = ["QuantizeInt8Pass", "state_pairs", "state_path_nodes"]

logger = logging.getLogger(__name__)

#: Ops whose path (static / dynamic / float) the report lists.
WEIGHT_OPS = ("Conv", "ConvTranspose", "Gemm", "MatMul")
_STATE_NAME = re.compile(r"state|hidden|cell|past|cache|memory|h0|c0", re.IGNORECASE)
_TOKENS = re.compile(r"[a-z]+|[0-9]+")
#: Below this share of the weights in MatMul/Gemm, the dynamic candidate is not built (convs dominate).
_MIN_DENSE_SHARE = 0.05
_CANDIDATES = ("static", "dynamic", "mixed")


class QuantizeInt8Pass(SftPass):
    """Choose static, dynamic or mixed int8 per model: the fastest candidate within budget (see the module docstring).

    Args:
        calibration_data: ``.npz`` path, folder of ``.npz`` (a folder is a sequence for stateful models) or an
            iterable of feed dicts.
        allow_random: With no calibration data, calibrate and judge on random N(0,1) inputs (tests only).
        min_cosine: Least cosine to the float model's outputs (as ``--min-cosine``).
        min_agreement: Least agreement of decision outputs (as ``--min-agreement``).
        methods: Activation range methods tried for static candidates (from one calibration).
        percentile: Kept share of values for ``percentile``, in percent.
        smooth_alpha: SmoothQuant strength of the ``static-smooth`` candidate (none: not tried).
        candidates: Which of ``static``, ``dynamic``, ``mixed`` are built.
        max_probes: Most sensitivity probes of ``mixed`` (layers are grouped into blocks beyond it).
        eval_samples: Most held-out calibration samples the candidates are judged on.
        max_samples: Calibration samples read at most.
        max_latency_ratio: A candidate wins only at this latency relative to float or below (timing noise).
        headroom: A candidate holds the budget when it passes it and uses at most this share of it
            (``budget_used``), so that the final verification on other samples does not refuse it.
        threads: Intra-op threads of the timed sessions (1: steady on a shared machine; 0: all cores).
        timing_seconds: About how long the interleaved timing of the candidates takes.
        keep_state_float: Keep nodes on recurrent state paths (state input -> state output) float.
        reduce_range: 7-bit weights; default: on for x86 CPUs without VNNI.
    """

    name = "quantize-int8"
    numerics = Numerics.APPROXIMATE
    uses_calibration = True
    uses_verification = True
    revert_on_failure = True  # keeping float is one of its outcomes: refused by the final check, it is undone

    def __init__(
        self,
        *,
        calibration_data: Any = None,
        allow_random: bool = False,
        min_cosine: float = verify.DEFAULT_MIN_COSINE,
        min_agreement: float = verify.DEFAULT_MIN_AGREEMENT,
        methods: tuple[str, ...] = ("minmax", "percentile"),
        percentile: float = 99.99,
        smooth_alpha: float | None = 0.5,
        candidates: tuple[str, ...] = _CANDIDATES,
        max_probes: int = 8,
        eval_samples: int = 16,
        max_samples: int = 512,
        max_latency_ratio: float = 0.97,
        headroom: float = 0.8,
        threads: int = 1,
        timing_seconds: float = 4.0,
        keep_state_float: bool = True,
        reduce_range: bool | None = None,
    ) -> None:
        bad_methods = [m for m in methods if m not in calib.METHODS]
        if not methods or bad_methods:
            raise PassConfigError(f"quantize-int8: methods must be among {'|'.join(calib.METHODS)}, got {methods}")
        bad = [c for c in candidates if c not in _CANDIDATES]
        if not candidates or bad:
            raise PassConfigError(f"quantize-int8: candidates must be among {'|'.join(_CANDIDATES)}, got {candidates}")
        if not 0.0 < min_cosine <= 1.0 or not 0.0 < min_agreement <= 1.0:
            raise PassConfigError("quantize-int8: min_cosine and min_agreement must be in (0, 1]")
        if smooth_alpha is not None and not 0.0 <= smooth_alpha <= 1.0:
            raise PassConfigError(f"quantize-int8: smooth_alpha must be in [0, 1], got {smooth_alpha}")
        if not 50.0 < percentile <= 100.0:
            raise PassConfigError(f"quantize-int8: percentile must be in (50, 100], got {percentile}")
        if max_probes < 1 or eval_samples < 1 or max_samples < 1:
            raise PassConfigError("quantize-int8: max_probes, eval_samples and max_samples must be >= 1")
        if threads < 0 or timing_seconds <= 0:
            raise PassConfigError("quantize-int8: threads must be >= 0 and timing_seconds > 0")
        if not 0.0 < headroom <= 1.0:
            raise PassConfigError(f"quantize-int8: headroom must be in (0, 1], got {headroom}")
        if not 0.0 < max_latency_ratio <= 1.0:
            raise PassConfigError(f"quantize-int8: max_latency_ratio must be in (0, 1], got {max_latency_ratio}")
        if calibration_data is None and not allow_random:
            raise PassConfigError(
                "quantize-int8: no calibration data. Give representative inputs (--calibration-data FILE.npz or a "
                "folder of .npz; API: calibration_data=...), or pass allow_random=true to calibrate on random "
                "N(0,1) inputs (the choice will not reflect real data)."
            )
        self.calibration_data = calibration_data
        self.allow_random = allow_random
        self.min_cosine = min_cosine
        self.min_agreement = min_agreement
        self.methods = tuple(methods)
        self.percentile = percentile
        self.smooth_alpha = smooth_alpha
        self.candidates = tuple(candidates)
        self.max_probes = max_probes
        self.eval_samples = eval_samples
        self.max_samples = max_samples
        self.max_latency_ratio = max_latency_ratio
        self.headroom = headroom
        self.threads = threads
        self.timing_seconds = timing_seconds
        self.keep_state_float = keep_state_float
        self.reduce_range = reduce_range
        self.verification: VerificationData | None = None  # set by the Pipeline for a call (uses_verification)

    # ---------------------------------------------------------------------------------------- rewrite
    def rewrite(self, model: ir.Model, report: PassReport) -> None:
        """Build, judge and time the candidates; adopt the fastest within budget, else leave ``model`` alone."""
        started = time.perf_counter()
        details = report.details
        original = io.to_bytes(model)  # timed against, and judged against; ``model`` is only touched at the end
        work = io.load(original, validate=False)
        prep = PassReport(work, modified=False)
        prepare(work, prep)
        if nested := nested_node_count(work):
            report.skipped["in_subgraph"] += nested
        data = _Data(self.calibration_data, work, max_samples=self.max_samples, eval_samples=self.eval_samples,
                     allow_random=self.allow_random)
        details["calibration"] = data.description
        pairs = state_pairs(work)
        state_nodes = state_path_nodes(work, pairs) if self.keep_state_float else set()
        if pairs:
            details["state_pairs"] = [list(p) for p in pairs]
        if state_nodes:
            report.skipped["state_path_float"] += len(state_nodes)
        sequence = bool(pairs) and data.sequence
        details["evaluation"] = data.note + (
            "; judged as one sequence, state outputs fed back" if sequence else "")
        budget = verify.Budget(min_cosine=self.min_cosine, min_agreement=self.min_agreement)
        details["budget"] = {"min_cosine": self.min_cosine, "min_agreement": self.min_agreement}
        final = self.verification
        if final is not None:
            details["evaluation"] += (
                f"; candidates that hold there are also run on the final verification's {len(final.feeds)} feed(s) "
                "and must hold its budget against the original")
        judge = _Judge(original, data.evaluation, pairs if sequence else [], budget, headroom=self.headroom,
                       final=final)
        reduce_range = self.reduce_range if self.reduce_range is not None else cpu_has_vnni() is False
        details["reduce_range"] = reduce_range

        builder = _Builder(self, work, data, judge, state_nodes, reduce_range)
        found = builder.run()
        details["sensitivity"] = builder.sensitivity
        chosen, reason = self._fastest(original, found, data.evaluation[0], details)
        details["candidates"] = [c.to_json() for c in found]
        details["seconds"] = round(time.perf_counter() - started, 2)
        if chosen is None:
            details["reason"] = reason
            report.skipped["over_budget" if not any(c.passed for c in found) else "not_faster"] += 1
            logger.warning("quantize-int8: model kept float: %s", reason)
            return
        logger.info("quantize-int8: %s int8 chosen (%sx of float latency)", chosen.name, chosen.latency_ratio)
        assert chosen.model is not None
        details["chosen"] = chosen.name
        details["paths"] = chosen.paths
        details["int8_ops"] = _int8_ops(chosen.model)
        report.changes.update({k: v for k, v in prep.changes.items() if v})
        report.changes.update({k: v for k, v in chosen.counts.items() if v})
        restore_model(model, chosen.model)

    def _fastest(
        self, original: bytes, found: list[_Found], feeds: Mapping[str, np.ndarray], details: dict[str, Any]
    ) -> tuple[_Found | None, str]:
        """Time the candidates within budget against float; the fastest under ``max_latency_ratio``, or why none."""
        passing = [c for c in found if c.passed and c.model is not None]
        if not passing:
            tried = ", ".join(f"{c.name} ({c.why or c.outcome})" for c in found) or "none could be built"
            return None, f"no int8 candidate held the budget on the held-out samples: {tried}"
        try:
            sources = [original, *(io.to_bytes(c.model) for c in passing)]  # type: ignore[arg-type]
            times = median_latencies(sources, feeds, threads=self.threads, budget_seconds=self.timing_seconds)
        except Exception as error:  # a candidate onnxruntime cannot run is never handed on
            for candidate in passing:
                candidate.outcome, candidate.why = "error", f"timing failed: {error}"
            return None, f"timing failed: {error}"
        details["latency_ms"] = {"float": round(times[0] * 1e3, 4)}
        for candidate, seconds in zip(passing, times[1:], strict=True):
            candidate.latency_ratio = round(seconds / times[0], 4)
            details["latency_ms"][candidate.name] = round(seconds * 1e3, 4)
        best = min(passing, key=lambda c: c.latency_ratio or math.inf)
        for candidate in passing:
            if candidate is best:
                continue
            candidate.outcome = "slower"
            candidate.why = f"latency {candidate.latency_ratio:.2f}x of float, {best.name} {best.latency_ratio:.2f}x"
        ratio = best.latency_ratio or math.inf
        if ratio > self.max_latency_ratio:
            best.outcome = "not_faster"
            best.why = f"latency {ratio:.2f}x of float > max_latency_ratio {self.max_latency_ratio:g}"
            return None, f"no int8 candidate within budget was faster than float: fastest {best.name} {ratio:.2f}x"
        best.outcome = "chosen"
        return best, ""


# ----------------------------------------------------------------------------------------------- data
class _Slice:
    """Re-iterable ``[start, stop)`` of a re-iterable source (a path-backed source is re-read each time)."""

    def __init__(self, source: Iterable[dict[str, np.ndarray]], start: int, stop: int) -> None:
        self.source, self.start, self.stop = source, start, stop

    def __iter__(self) -> Iterator[dict[str, np.ndarray]]:
        return itertools.islice(iter(self.source), self.start, self.stop)


class _Data:
    """The calibration samples split into a calibration stream and held-out samples for judging candidates."""

    def __init__(self, data: Any, model: ir.Model, *, max_samples: int, eval_samples: int,
                 allow_random: bool) -> None:
        source = calib.CalibrationSource(data, model, batch_size=1, max_samples=max_samples,
                                         allow_random=allow_random, pass_name="quantize-int8")
        self.description = source.description
        total = sum(1 for _ in source)
        if total == 0:
            raise InputError("quantize-int8: the calibration data holds no samples")
        minimum = verify.MIN_HELD_OUT
        held = min(eval_samples, max(minimum, int(total * verify.HELD_OUT_FRACTION))) if total >= 2 * minimum else 0
        self.calibration: Iterable[dict[str, np.ndarray]] = _Slice(source, 0, total - held) if held else source
        if held:
            self.evaluation = list(itertools.islice(iter(source), total - held, total))
            self.note = f"{held} held-out calibration samples (last of {total}); {total - held} calibrate"
        else:
            self.evaluation = list(itertools.islice(iter(source), 0, min(total, eval_samples)))
            self.note = f"only {total} calibration samples: candidates judged on calibration samples (in-sample)"
        self.sequence = _is_folder(data)


def _is_folder(data: Any) -> bool:
    if isinstance(data, verify.DataPart):
        return data.files is not None
    return isinstance(data, (str, os.PathLike)) and pathlib.Path(data).is_dir()


# --------------------------------------------------------------------------------------------- state
def state_pairs(model: ir.Model) -> list[tuple[str, str]]:
    """``(state input, state output)`` pairs: a state-named input of fixed shape, an output of its shape and type.

    Among several such outputs the one whose name is most alike wins: a state-like name, then the most shared
    name tokens (``state_1_cell_in`` and ``lstm_cell_squeeze_1_19``).
    """
    graph = model.graph
    inputs = [v for v in graph.inputs if v.name not in graph.initializers]
    if len(inputs) < 2:
        return []
    taken: set[str] = set()
    pairs = []
    for value in inputs:
        shape = value.shape
        if not _STATE_NAME.search(value.name or "") or shape is None or value.dtype is None:
            continue
        dims = tuple(shape)
        if not all(isinstance(d, int) for d in dims):
            continue
        alike = [o for o in graph.outputs if o.name not in taken and o.dtype == value.dtype
                 and o.shape is not None and tuple(o.shape) == dims]
        if not alike:
            continue
        # the output most like the input by name: shared tokens ("1", "hidden"), a state-like name first
        tokens = set(_TOKENS.findall((value.name or "").lower()))
        best = max(alike, key=lambda o: (2 * bool(_STATE_NAME.search(o.name or ""))
                                         + len(tokens & set(_TOKENS.findall((o.name or "").lower())))))
        taken.add(best.name or "")
        pairs.append((value.name or "", best.name or ""))
    return pairs


def state_path_nodes(model: ir.Model, pairs: Sequence[tuple[str, str]]) -> set[str]:
    """Names of main-graph nodes on a path from a state input to its paired state output."""
    if not pairs:
        return set()
    graph = model.graph
    readers: dict[str, list[ir.Node]] = collections.defaultdict(list)
    for node in graph:
        for value in node.inputs:
            if value is not None and value.name:
                readers[value.name].append(node)
    forward: set[str] = set()
    frontier = [name for name, _ in pairs]
    seen_values = set(frontier)
    while frontier:
        for node in readers.get(frontier.pop(), []):
            if node.name in forward:
                continue
            forward.add(node.name)
            for out in node.outputs:
                if out.name and out.name not in seen_values:
                    seen_values.add(out.name)
                    frontier.append(out.name)
    outputs = {v.name: v for v in graph.outputs}
    backward: set[str] = set()
    stack = [outputs[name].producer() for _, name in pairs if name in outputs]
    while stack:
        node = stack.pop()
        if node is None or node.name in backward:
            continue
        backward.add(node.name)
        stack.extend(v.producer() for v in node.inputs if v is not None)
    return forward & backward


# --------------------------------------------------------------------------------------------- judge
@dataclasses.dataclass
class _Verdict:
    passed: bool
    budget_used: float
    cosine: float | None
    agreement: float | None
    failure: str = ""
    #: Budget used on the final verification's data (``None``: not run there, or no such data).
    verification_used: float | None = None


class _Judge:
    """Runs a candidate on the held-out samples and holds it to the budget against the float model's outputs.

    Samples are run one by one (a sequence, with state fed back, when ``pairs`` is given) and, when they stack
    along axis 0 and the model takes the batch, once more as one batch: dynamic int8 takes its activation range
    from the whole batch, and verification runs stacked data in batches. The worse verdict counts.
    """

    def __init__(self, original: bytes, feeds: Sequence[Mapping[str, np.ndarray]],
                 pairs: Sequence[tuple[str, str]], budget: verify.Budget, *, headroom: float = 1.0,
                 final: VerificationData | None = None) -> None:
        self.feeds = list(feeds)
        self.headroom = headroom
        self.final = final
        self.pairs = list(pairs)
        self.budget = budget
        session = verify.make_session(original)
        self.names = [o.name for o in session.get_outputs()]
        self.reference = self._run(session)
        self.stacked = None if self.pairs else _stack(self.feeds)
        self.stacked_reference = None
        if self.stacked is not None:
            try:
                self.stacked_reference = [self._one(session, self.stacked)]
            except Exception:  # the model does not take a batch: samples one by one only
                self.stacked = None
        self.calls = 0

    @staticmethod
    def _one(session: Any, feed: Mapping[str, np.ndarray]) -> list[np.ndarray]:
        wanted = {i.name for i in session.get_inputs()}
        return session.run(None, {k: v for k, v in feed.items() if k in wanted})

    def _run(self, session: Any) -> list[list[np.ndarray]]:
        names = [o.name for o in session.get_outputs()]
        outputs, state = [], {}
        for feed in self.feeds:
            result = self._one(session, {**feed, **state})
            outputs.append(result)
            if self.pairs:  # the next step starts from this model's own state
                state = {i: result[names.index(o)] for i, o in self.pairs if o in names}
        return outputs

    def __call__(self, model: ir.Model, *, gate: bool = True) -> _Verdict:
        """``model``'s verdict; ``gate=False`` skips the verification data (sensitivity probes: ranked, never kept)."""
        self.calls += 1
        try:
            session = verify.make_session(io.to_bytes(model))
            verdicts = [self._verdict(self.reference, self._run(session))]
            if self.stacked is not None and self.stacked_reference is not None:
                verdicts.append(self._verdict(self.stacked_reference, [self._one(session, self.stacked)]))
            failing = [v for v in verdicts if not v.passed]
            cosines = [v.cosine for v in verdicts if v.cosine is not None]
            agreements = [v.agreement for v in verdicts if v.agreement is not None]
            verdict = _Verdict(not failing, max(v.budget_used for v in verdicts), min(cosines) if cosines else None,
                               min(agreements) if agreements else None, failing[0].failure if failing else "")
            if gate and verdict.passed and self.final is not None:
                self._gate(session, verdict)
        except Exception as error:  # a candidate onnxruntime refuses is judged failed, never shipped
            return _Verdict(False, math.inf, None, None, f"onnxruntime: {verify.ort_failure(error)}")
        return verdict

    def _gate(self, session: Any, verdict: _Verdict) -> None:
        """Hold a candidate that passed the held-out samples to the final check's rule on the verification data.

        The feeds are run as the final verification runs them and compared with the original's outputs under
        its budget, without headroom: these are the very samples that check uses, so passing here is what it
        asks. ``verdict`` fails with the final check's own failure line when they do not hold.
        """
        assert self.final is not None
        actual = verify.run_model(session, self.final.feeds)
        comparison = verify.compare_outputs(self.final.names, self.final.expected, actual, budget=self.final.budget)
        verdict.verification_used = _budget_used(comparison, self.final.budget)
        if not comparison.passed:
            verdict.passed = False
            verdict.failure = f"on the verification data: {comparison.failures[0]}"

    def _verdict(self, reference: list[list[np.ndarray]], actual: list[list[np.ndarray]]) -> _Verdict:
        comparison = verify.compare_outputs(self.names, reference, actual, budget=self.budget)
        worst = comparison.worst()
        used = _budget_used(comparison, self.budget)
        failure = comparison.failures[0] if comparison.failures else ""
        if comparison.passed and used > self.headroom:
            failure = f"within budget but uses {used:.2f} of it (headroom {self.headroom:g})"
        return _Verdict(comparison.passed and used <= self.headroom, used, worst["cosine"], worst["agreement"],
                        failure)


def _stack(feeds: Sequence[Mapping[str, np.ndarray]]) -> dict[str, np.ndarray] | None:
    """The feeds as one batch along axis 0, when there are several and every input stacks; else None."""
    if len(feeds) < 2 or not verify.stackable(feeds):
        return None
    return verify.stack_feeds(feeds)


def _budget_used(comparison: verify.Comparison, budget: verify.Budget) -> float:
    """The worst output's shortfall as a share of its budget (see the module docstring); ``inf``: wrong shape."""
    worst = 0.0
    for metric in comparison.outputs:
        if not metric.shape_ok:
            return math.inf
        judged = metric.judged_by.split("+")
        agreement = metric.agreement()
        if "agreement" in judged and agreement is not None and budget.min_agreement is not None:
            worst = max(worst, (1.0 - agreement) / max(1.0 - budget.min_agreement, 1e-9))
        if "cosine" in judged and budget.min_cosine is not None:
            worst = max(worst, (1.0 - metric.cosine) / max(1.0 - budget.min_cosine, 1e-9))
        if "max_abs(negligible reference)" in judged:
            worst = max(worst, metric.max_abs / (NEGLIGIBLE_RMS * 10))
    return worst


# ----------------------------------------------------------------------------------------- candidates
@dataclasses.dataclass
class _Found:
    """One candidate: how it was judged and timed, and why it lost."""

    name: str
    model: ir.Model | None = None
    counts: collections.Counter[str] = dataclasses.field(default_factory=collections.Counter)
    verdict: _Verdict | None = None
    paths: dict[str, Any] = dataclasses.field(default_factory=dict)
    latency_ratio: float | None = None
    outcome: str = ""
    why: str = ""
    info: dict[str, Any] = dataclasses.field(default_factory=dict)

    @property
    def passed(self) -> bool:
        return self.verdict is not None and self.verdict.passed and self.model is not None

    def to_json(self) -> dict[str, Any]:
        verdict = self.verdict
        used = None if verdict is None or not math.isfinite(verdict.budget_used) else round(verdict.budget_used, 4)
        row: dict[str, Any] = {
            "name": self.name,
            "outcome": self.outcome,
            "why": self.why,
            "latency_ratio": self.latency_ratio,
            "passed": self.passed,
            "budget_used": used,
            "cosine": None if verdict is None or verdict.cosine is None else round(verdict.cosine, 6),
            "agreement": None if verdict is None or verdict.agreement is None else round(verdict.agreement, 6),
            "verification_budget_used": _rounded(None if verdict is None else verdict.verification_used),
            "paths": {k: v for k, v in self.paths.items() if k != "nodes"},
        }
        row.update(self.info)
        return row


class _Builder:
    """Builds and judges the candidates of one call (static, static-smooth, dynamic, mixed)."""

    def __init__(self, options: QuantizeInt8Pass, work: ir.Model, data: _Data, judge: _Judge,
                 state_nodes: set[str], reduce_range: bool) -> None:
        self.options = options
        self.work = work
        self.work_bytes = io.to_bytes(work)
        self.data = data
        self.judge = judge
        self.state_nodes = state_nodes
        self.reduce_range = reduce_range
        self.weight_ops = {n.name: n.op_type for n in work.graph
                           if n.op_type in WEIGHT_OPS and n.domain in ("", "ai.onnx")}
        self.sensitivity: dict[str, Any] = {}

    def run(self) -> list[_Found]:
        found: list[_Found] = []
        wanted = self.options.candidates
        static: _Found | None = None
        quantizer: StaticQuantizer | None = None
        ranges: Mapping[str, calib.Range] = {}
        if "static" in wanted or "mixed" in wanted:
            static, quantizer, ranges = self._static(self.work, "static")
            found.append(static)
            if (not static.passed and self.options.smooth_alpha is not None and self._has_dense_weights()):
                smooth_model = io.load(self.work_bytes, validate=False)
                smoothed = recovery.smooth_quant(smooth_model, self.data.calibration, alpha=self.options.smooth_alpha)
                if smoothed:
                    smooth, smooth_q, smooth_r = self._static(smooth_model, "static-smooth")
                    smooth.counts["channels_smoothed"] += smoothed
                    found.append(smooth)
                    if _rank(smooth) < _rank(static):
                        static, quantizer, ranges = smooth, smooth_q, smooth_r
            if "static" not in wanted:
                found = [f for f in found if f is not static]
        if "dynamic" in wanted:
            share = self._dense_share()
            if share < _MIN_DENSE_SHARE:
                found.append(_Found("dynamic", outcome="not_built", why=(
                    f"MatMul/Gemm hold {share:.1%} of the Conv/MatMul/Gemm weights: dynamic int8 leaves the rest "
                    "float and cannot be much faster")))
            else:
                found.append(self._dynamic())
        if "mixed" in wanted and static is not None and quantizer is not None and static.model is not None:
            if static.passed:
                self.sensitivity = {"note": f"{static.name} holds the budget: no layer backed off"}
            else:
                found.append(self._mixed(static, quantizer, ranges))
        for candidate in found:
            if candidate.outcome:
                continue
            if candidate.verdict is not None and not candidate.verdict.passed:
                candidate.outcome = "over_budget"
                candidate.why = candidate.verdict.failure
        return found

    def _dense_share(self) -> float:
        """Share of the constant Conv/MatMul/Gemm weight elements that MatMul/Gemm hold (1.0 with no weights)."""
        from sftonnx.ir_utils import constant_array

        dense = total = 0
        for node in self.work.graph:
            if node.op_type not in WEIGHT_OPS or len(node.inputs) < 2:
                continue
            weight = constant_array(node.inputs[1])
            if weight is None:
                continue
            total += weight.size
            if node.op_type in ("MatMul", "Gemm"):
                dense += weight.size
        return dense / total if total else 1.0

    def _has_dense_weights(self) -> bool:
        from sftonnx.ir_utils import constant_array

        return any(n.op_type in ("MatMul", "Gemm") and len(n.inputs) > 1 and constant_array(n.inputs[1]) is not None
                   for n in self.work.graph)

    # ------------------------------------------------------------------------------------ static
    def _static(self, model: ir.Model, name: str) -> tuple[_Found, StaticQuantizer | None, dict]:
        found = _Found(name)
        quantizer = StaticQuantizer(model, self.data.calibration, exclude_nodes=self.state_nodes,
                                    reduce_range=self.reduce_range)
        best: tuple[tuple[float, float], StaticCandidate, _Verdict, str, dict] | None = None
        tried: dict[str, Any] = {}
        for method in self.options.methods:
            ranges = quantizer.ranges(method, self.options.percentile)

            def build(chosen: Iterable[str], ranges: Mapping[str, calib.Range] = ranges) -> StaticCandidate:
                return quantizer.build(chosen, ranges)

            candidate = build(set(quantizer.sites))
            if not candidate.counts.get("nodes_quantized"):
                found.outcome, found.why = "nothing_quantized", "no node qualifies for static int8"
                return found, None, {}
            candidate = drop_float_islands(candidate, build, {}, {})
            verdict = self.judge(candidate.model)
            tried[method] = round(verdict.budget_used, 4) if math.isfinite(verdict.budget_used) else None
            key = (verdict.budget_used, -(verdict.cosine or 0.0))
            if best is None or key < best[0]:
                best = (key, candidate, verdict, method, ranges)
            if verdict.passed:
                break  # methods are in order of preference: the first within budget is taken
        assert best is not None
        _, candidate, verdict, method, ranges = best
        found.model, found.verdict, found.counts = candidate.model, verdict, collections.Counter(candidate.counts)
        found.info = {"method": method, "budget_used_by_method": tried}
        found.paths = self._paths(candidate.model, candidate.plan.chosen)
        found.info["static_nodes"] = sorted(candidate.plan.chosen)
        return found, quantizer, ranges

    # ----------------------------------------------------------------------------------- dynamic
    def _dynamic(self, base: ir.Model | None = None, dynamic_nodes: Iterable[str] | None = None,
                 name: str = "dynamic") -> _Found:
        found = _Found(name)
        model = io.load(io.to_bytes(base) if base is not None else self.work_bytes, validate=False)
        allowed = set(self.weight_ops) - self.state_nodes if dynamic_nodes is None else set(dynamic_nodes)
        exclude = tuple(n for n, op in self.weight_ops.items() if op in ("MatMul", "Gemm") and n not in allowed)
        report = QuantizeDynamicPass(exclude_nodes=exclude, reduce_range=self.reduce_range)(model)
        changed = report.changes["matmuls_quantized"] + report.changes["gemms_quantized"]
        if not changed and base is None:
            found.outcome, found.why = "nothing_quantized", "no MatMul/Gemm with a constant weight"
            return found
        found.model = model
        found.counts.update(report.changes)
        found.paths = self._paths(model, set())
        if base is None:
            found.verdict = self.judge(model)
        return found

    # ------------------------------------------------------------------------------------- mixed
    def _mixed(self, static: _Found, quantizer: StaticQuantizer, ranges: Mapping[str, calib.Range]) -> _Found:
        from sftonnx.search.ladder import search_ladder

        found = _Found("mixed")
        sites = quantizer.sites
        chosen = set(static.info.get("static_nodes", ()))
        followers: dict[str, list[str]] = collections.defaultdict(list)
        for name in chosen:
            site = sites[name]
            if site.kind == "act":
                producer = quantizer.graph.producer.get(site.acts[0])
                if producer in chosen:
                    followers[producer].append(name)
        order = {name: index for index, name in enumerate(quantizer.graph.op)}
        layers = sorted((n for n in chosen if sites[n].kind == "compute"), key=lambda n: order.get(n, 0))
        if not layers:
            found.outcome, found.why = "nothing_quantized", "no compute layer in the static candidate"
            return found
        size = math.ceil(len(layers) / self.options.max_probes)
        blocks = [layers[i:i + size] for i in range(0, len(layers), size)]

        def members(block: Sequence[str]) -> set[str]:
            return {*block, *(f for layer in block for f in followers.get(layer, []))}

        pass_through = {n for n in chosen if sites[n].kind == "pass"}
        probes: list[tuple[tuple[float, float], int]] = []
        for index, block in enumerate(blocks):
            probe = _without_stranded_pass_through(members(block) | pass_through, sites, quantizer.graph)
            verdict = self.judge(quantizer.build(probe, ranges).model, gate=False)
            probes.append(((verdict.budget_used, -(verdict.cosine or 0.0)), index))
        ranked = [blocks[i] for _, i in sorted(probes, reverse=True)]
        used = {i: key[0] for key, i in probes}
        self.sensitivity = {
            "probes": len(blocks),
            "layers_per_probe": size,
            "most_sensitive": {"+".join(blocks[i][:2]) + ("+..." if len(blocks[i]) > 2 else ""):
                               (round(used[i], 4) if math.isfinite(used[i]) else None)
                               for _, i in sorted(probes, reverse=True)[:10]},
        }

        def dense(name: str) -> bool:
            return sites[name].op_type in ("MatMul", "Gemm") and sites[name].weight is not None

        # rung r < len(ranked): the r+1 most sensitive blocks backed off (dense layers to dynamic, others float);
        # then, with every block backed off, the dense layers of the most sensitive blocks go float too
        dense_blocks = [b for b in ranked if any(dense(n) for n in b)]
        # the rung with every layer float is no int8 candidate: the ladder stops one short of it
        rungs: list[tuple[int, int]] = [(k, 0) for k in range(1, len(ranked) + (1 if dense_blocks else 0))]
        rungs += [(len(ranked), j) for j in range(1, len(dense_blocks))]
        if not rungs:
            found.outcome, found.why = "nothing_quantized", "a single layer: backing it off leaves nothing int8"
            return found

        def build_rung(rung: tuple[int, int], islands: bool = False) -> _Found:
            backed = ranked[:rung[0]]
            to_float = {n for b in dense_blocks[:rung[1]] for n in b if dense(n)}
            off = set().union(*(members(b) for b in backed))
            dynamic = {n for b in backed for n in b if dense(n)} - to_float
            static_set = _without_stranded_pass_through(chosen - off, sites, quantizer.graph)
            build = lambda c: quantizer.build(c, ranges)  # noqa: E731
            candidate = build(static_set)
            if islands and candidate.plan.chosen:  # speed only: done for the rung found, not every rung tried
                candidate = drop_float_islands(candidate, build, {}, {})
            result = self._dynamic(candidate.model, dynamic, name="mixed") if dynamic else _Found(
                "mixed", candidate.model, collections.Counter(candidate.counts))
            if dynamic:
                result.counts.update(candidate.counts)
            result.paths = self._paths(result.model, candidate.plan.chosen)  # type: ignore[arg-type]
            result.info = {"backed_off_blocks": rung[0], "dynamic_to_float_blocks": rung[1]}
            if not result.paths["static"] and not result.paths["dynamic"]:
                result.outcome, result.why = "nothing_quantized", "every MatMul/Gemm/Conv backed off to float"
                result.verdict = _Verdict(False, math.inf, None, None, result.why)
                return result
            result.verdict = self.judge(result.model)  # type: ignore[arg-type]
            return result

        evaluated: dict[int, _Found] = {}

        @dataclasses.dataclass
        class _Feasible:
            feasible: bool

        search = search_ladder([str(i) for i in range(len(rungs))], name="mixed")
        try:
            spec = next(search)
            while True:
                index = int(spec)
                evaluated[index] = build_rung(rungs[index])
                spec = search.send(_Feasible(evaluated[index].passed))  # type: ignore[arg-type]
        except StopIteration as stop:
            hit = stop.value
        self.sensitivity["rungs_tried"] = len(evaluated)
        if hit is None:
            last = evaluated[max(evaluated)]
            last.outcome = "over_budget"
            last.why = "no back-off rung held the budget: " + (last.verdict.failure if last.verdict else "")
            return last
        found = evaluated[int(hit)]
        final = build_rung(rungs[int(hit)], islands=True)
        return final if final.passed else found

    # ------------------------------------------------------------------------------------- paths
    def _paths(self, model: ir.Model, static_nodes: Iterable[str]) -> dict[str, Any]:
        """Which path each MatMul/Gemm/Conv of the float model took in ``model``."""
        static = set(static_nodes)
        names = {n.name for n in model.graph}
        nodes: dict[str, str] = {}
        for name in self.weight_ops:
            if name in static:
                nodes[name] = "static"
            elif name not in names and f"{name}_MatMulInteger" in names:
                nodes[name] = "dynamic"
            else:
                nodes[name] = "float"
        counts = collections.Counter(nodes.values())
        return {"static": counts["static"], "dynamic": counts["dynamic"], "float": counts["float"], "nodes": nodes}


def _without_stranded_pass_through(chosen: set[str], sites: Mapping[str, Any], graph: Any) -> set[str]:
    """``chosen`` less chains of data-movement nodes with no quantized compute neighbour (Q/DQ only adds error)."""
    passes = {n for n in chosen if sites[n].kind == "pass"}

    def neighbours(name: str) -> list[str]:
        site = sites[name]
        found = [graph.producer.get(site.acts[0])] if site.acts else []
        return [n for n in [*found, *graph.consumers.get(site.output, [])] if n is not None]

    kept: set[str] = set()
    seen: set[str] = set()
    for start in passes:
        if start in seen:
            continue
        component, stack, anchored = set(), [start], False
        while stack:
            name = stack.pop()
            if name in component:
                continue
            component.add(name)
            for other in neighbours(name):
                if other in passes:
                    stack.append(other)
                elif other in chosen:
                    anchored = True
        seen |= component
        if anchored:
            kept |= component
    return (chosen - passes) | kept


def _rounded(value: float | None) -> float | None:
    return None if value is None or not math.isfinite(value) else round(value, 4)


def _rank(found: _Found) -> tuple[float, float]:
    if found.verdict is None:
        return (math.inf, math.inf)
    return (found.verdict.budget_used, -(found.verdict.cosine or 0.0))


def _int8_ops(model: ir.Model) -> dict[str, int]:
    """The integer kernels onnxruntime runs in the chosen model, by op type."""
    try:
        graph = ort_optimized_graph(io.to_bytes(model))
    except Exception as error:  # never hand on a model onnxruntime refuses
        raise RuntimeError(f"onnxruntime cannot load the chosen int8 model: {error}") from error
    return dict(sorted(collections.Counter(n.op_type for n in graph.node if n.op_type in INTEGER_OPS).items()))
