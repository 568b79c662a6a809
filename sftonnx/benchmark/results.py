"""Benchmark rows and results: the figures of one model on one EP, ratios to the baseline, CSV columns."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

from sftonnx.timing import LatencyStats

__all__ = ["CSV_COLUMNS", "RATIO_KEYS", "BenchmarkResult", "BenchmarkRow", "apply_ratios", "compute_ratios"]

#: Ratios to the baseline row (candidate / baseline) carried by every row.
RATIO_KEYS = ("latency_p50", "throughput", "size", "memory")


@dataclasses.dataclass
class BenchmarkRow:
    """One model on one execution provider.

    Attributes:
        model: The model file (``<bytes>`` / ``<model>`` for in-memory models).
        label: Short unique name shown in tables and plots.
        provider: Short EP name (``cpu``, ``cuda``, ``tensorrt``).
        status: ``ok``; ``unavailable`` (the EP cannot be used: nothing was timed); ``failed`` (the model
            crashed the runtime: the message holds the error).
        message: Why the row is not ``ok`` (or a note, e.g. a failed memory probe).
        session_providers: What ``session.get_providers()`` reported.
        file_size_bytes: Model file plus external data.
        session_seconds: Session creation time.
        first_run_ms: Latency of the first run after session creation.
        latency: Statistics of the timed runs.
        peak_rss_bytes: Peak resident memory of the per-model process (session, first run, a few runs).
        rss_growth_bytes: That peak minus the process's resident memory before the session was created.
        gpu_memory_bytes: GPU memory held by the per-model process (CUDA/TensorRT, when measurable).
        accuracy: Top-1 accuracy or the user metric, when asked for.
        ratios: Candidate / baseline for :data:`RATIO_KEYS` (``None`` where either side is unknown).
    """

    model: str
    label: str
    provider: str
    status: str = "ok"
    message: str | None = None
    session_providers: list[str] = dataclasses.field(default_factory=list)
    file_size_bytes: int | None = None
    session_seconds: float | None = None
    first_run_ms: float | None = None
    latency: LatencyStats | None = None
    peak_rss_bytes: int | None = None
    rss_growth_bytes: int | None = None
    gpu_memory_bytes: int | None = None
    accuracy: float | None = None
    ratios: dict[str, float | None] = dataclasses.field(default_factory=dict)

    @property
    def ok(self) -> bool:
        """Whether the row was measured."""
        return self.status == "ok"

    def metrics(self) -> dict[str, float | None]:
        """The figures ratios are taken of, keyed as :data:`RATIO_KEYS`."""
        return {
            "latency_p50": self.latency.p50_ms if self.latency else None,
            "throughput": self.latency.throughput if self.latency else None,
            "size": float(self.file_size_bytes) if self.file_size_bytes is not None else None,
            "memory": float(self.rss_growth_bytes) if self.rss_growth_bytes is not None else None,
        }

    def fail(self, status: str, message: str) -> None:
        """Mark the row as not measured: drop any figures taken so far."""
        self.status, self.message = status, message
        self.session_seconds = self.first_run_ms = None
        self.latency = None

    def to_json(self) -> dict[str, Any]:
        """JSON-able dict (``latency`` nested, ``None`` when not measured)."""
        data = dataclasses.asdict(self)
        data["latency"] = self.latency.to_json() if self.latency else None
        return data

    def flat(self) -> dict[str, Any]:
        """One CSV line: latency and ratio fields spread into ``latency_*`` / ``ratio_*`` columns."""
        data = self.to_json()
        latency = data.pop("latency") or {}
        ratios = data.pop("ratios") or {}
        data["session_providers"] = ";".join(data["session_providers"])
        for key in ("mean_ms", "p50_ms", "p90_ms", "p99_ms", "min_ms", "max_ms", "std_ms", "runs", "batch"):
            data[f"latency_{key}"] = latency.get(key)
        data["throughput"] = latency.get("throughput")
        for key in RATIO_KEYS:
            data[f"ratio_{key}"] = ratios.get(key)
        return data


#: Columns of :func:`write_csv`, in order.
CSV_COLUMNS = (
    "label",
    "model",
    "provider",
    "status",
    "message",
    "file_size_bytes",
    "session_seconds",
    "first_run_ms",
    "latency_runs",
    "latency_batch",
    "latency_mean_ms",
    "latency_p50_ms",
    "latency_p90_ms",
    "latency_p99_ms",
    "latency_min_ms",
    "latency_max_ms",
    "latency_std_ms",
    "throughput",
    "peak_rss_bytes",
    "rss_growth_bytes",
    "gpu_memory_bytes",
    "accuracy",
    *(f"ratio_{key}" for key in RATIO_KEYS),
    "session_providers",
)


@dataclasses.dataclass
class BenchmarkResult:
    """Every row, the settings used and notes on how things were measured.

    Attributes:
        rows: Per EP, one row per model in the order given (the first model is the baseline).
        settings: Runs, warm-up, threads, batch, input shapes, input source, EPs, onnxruntime version.
        notes: How inputs were made, interleaving, spinning, memory method, skipped options.
    """

    rows: list[BenchmarkRow]
    settings: dict[str, Any]
    notes: list[str]

    @property
    def baseline(self) -> str | None:
        """Label of the baseline model."""
        return self.rows[0].label if self.rows else None

    def to_json(self) -> dict[str, Any]:
        """JSON-able dict: ``settings``, ``notes``, ``baseline``, ``rows``."""
        return {
            "settings": self.settings,
            "notes": self.notes,
            "baseline": self.baseline,
            "rows": [row.to_json() for row in self.rows],
        }


def compute_ratios(
    baseline: Mapping[str, float | None], candidate: Mapping[str, float | None]
) -> dict[str, float | None]:
    """Candidate / baseline for every key of :data:`RATIO_KEYS`.

    A ratio is ``None`` when either figure is unknown or the baseline's is not positive. Below 1 means
    smaller: for ``latency_p50``, ``size`` and ``memory`` that is better; for ``throughput`` it is worse.
    """
    ratios: dict[str, float | None] = {}
    for key in RATIO_KEYS:
        base, value = baseline.get(key), candidate.get(key)
        ratios[key] = value / base if base is not None and value is not None and base > 0 else None
    return ratios


def apply_ratios(rows: Sequence[BenchmarkRow]) -> None:
    """Set ``ratios`` on every measured row against the first model's row on the same EP."""
    baselines: dict[str, BenchmarkRow] = {}
    for row in rows:
        baselines.setdefault(row.provider, row)
    for row in rows:
        base = baselines[row.provider]
        row.ratios = compute_ratios(base.metrics() if base.ok else {}, row.metrics()) if row.ok else {}
