"""Per-model memory, measured in a fresh ``spawn``-ed process per model and EP.

The process creates the session and makes the first run and a few more; its figures are the peak resident set
size (``VmHWM`` after resetting it through ``/proc/self/clear_refs``), its growth over the process before the
session was created, and on CUDA the GPU memory the process holds (``nvidia-smi``), when available.
"""

from __future__ import annotations

import concurrent.futures
import logging
import multiprocessing
import os
import shutil
import subprocess
import sys
from typing import Any

import numpy as np

from sftonnx.benchmark import sessions
from sftonnx.benchmark.results import BenchmarkRow
from sftonnx.errors import first_line

__all__ = ["MEMORY_RUNS", "measure_memory", "memory_probe"]

logger = logging.getLogger(__name__)

#: Runs after the first one in the memory probe (the peak is normally reached by the first run).
MEMORY_RUNS = 5


def _status_kib(field: str) -> int | None:
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def _reset_peak_rss() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as clear:
            clear.write("5")  # Linux >= 4.0: reset VmHWM to the current RSS
        return True
    except OSError:
        return False


def _gpu_memory_bytes(pid: int) -> int | None:
    tool = shutil.which("nvidia-smi")
    if tool is None:
        return None
    try:
        listing = subprocess.run(
            [tool, "--query-compute-apps=pid,used_memory", "--format=csv,noheader,nounits"],
            capture_output=True,
            text=True,
            timeout=20,
            check=True,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    for line in listing.splitlines():
        parts = [p.strip() for p in line.split(",")]
        if len(parts) == 2 and parts[0] == str(pid) and parts[1].isdigit():
            return int(parts[1]) * 2**20
    return None


def memory_probe(
    source: str | bytes,
    ep: str,
    feeds: dict[str, np.ndarray],
    threads: int,
    spinning: bool,
    io_binding: bool,
    runs: int,
) -> dict[str, Any]:
    """Runs in a fresh spawned process: peak RSS over session creation and a few runs."""
    import onnxruntime  # noqa: F401  (imported before the baseline, as in the parent)

    reset = _reset_peak_rss()
    before = _status_kib("VmRSS")
    session = sessions.create_session(source, ep, threads=threads, spinning=spinning)
    runner = sessions.Runner(session, feeds, device="cuda" if io_binding and ep in sessions.GPU_EPS else None)
    for _ in range(1 + runs):
        runner()
    peak = _status_kib("VmHWM")
    if peak is None:  # not Linux: ru_maxrss (kB on Linux, bytes on macOS) over the whole process
        import resource

        maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        peak = maxrss // 1024 if sys.platform == "darwin" else maxrss
    return {
        "peak_rss_bytes": peak * 1024 if peak is not None else None,
        "rss_growth_bytes": (peak - before) * 1024 if peak is not None and before is not None else None,
        "gpu_memory_bytes": _gpu_memory_bytes(os.getpid()) if ep in sessions.GPU_EPS else None,
        "reset": reset,
    }


def measure_memory(row: BenchmarkRow, source: str | bytes, feeds: dict[str, np.ndarray], **kwargs: Any) -> None:
    """Fill ``row``'s memory figures from :func:`memory_probe` in a spawned process; a failure is a note."""
    context = multiprocessing.get_context("spawn")
    try:
        with concurrent.futures.ProcessPoolExecutor(max_workers=1, mp_context=context) as pool:
            figures = pool.submit(memory_probe, source, row.provider, feeds, **kwargs).result()
    except Exception as error:  # the probe is best effort: keep the row's timings
        row.message = f"memory probe failed: {first_line(error)}"
        logger.warning("%s [%s]: memory probe failed: %s", row.label, row.provider, error)
        return
    row.peak_rss_bytes = figures["peak_rss_bytes"]
    row.rss_growth_bytes = figures["rss_growth_bytes"]
    row.gpu_memory_bytes = figures["gpu_memory_bytes"]
