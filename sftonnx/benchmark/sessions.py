"""Execution providers and inference sessions for timing: which EPs exist, why one cannot be used, one run.

onnxruntime silently falls back to the CPU when a GPU provider cannot be created; :func:`fallback_reason`
detects that from ``session.get_providers()`` so such rows are reported as ``unavailable``, never timed
under the GPU label.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np

from sftonnx.errors import InputError

__all__ = [
    "EP_LABELS",
    "EXECUTION_PROVIDERS",
    "GPU_EPS",
    "Runner",
    "create_session",
    "fallback_reason",
    "parse_providers",
    "provider_unavailable_reason",
]

#: Short EP names accepted on the command line, and the onnxruntime provider each one requests.
EXECUTION_PROVIDERS = {
    "cpu": "CPUExecutionProvider",
    "cuda": "CUDAExecutionProvider",
    "tensorrt": "TensorrtExecutionProvider",
}

#: Display names of the EPs.
EP_LABELS = {"cpu": "CPU", "cuda": "CUDA", "tensorrt": "TensorRT"}
# Providers listed after the requested one: nodes the GPU EP does not implement run there (ORT's usual setup).
_EP_FALLBACKS = {
    "cpu": (),
    "cuda": ("CPUExecutionProvider",),
    "tensorrt": ("CUDAExecutionProvider", "CPUExecutionProvider"),
}
#: EPs that run on a GPU (IO binding, GPU memory, fallback hints).
GPU_EPS = frozenset({"cuda", "tensorrt"})


def parse_providers(spec: str | Iterable[str]) -> list[str]:
    """Short EP names from ``"cpu,cuda"`` (or a list); full ORT names such as ``CUDAExecutionProvider`` work too.

    Raises:
        InputError: An unknown name, or none at all.
    """
    items = spec.split(",") if isinstance(spec, str) else list(spec)
    by_full_name = {full.lower(): short for short, full in EXECUTION_PROVIDERS.items()}
    names: list[str] = []
    for item in items:
        name = item.strip().lower()
        if not name:
            continue
        name = by_full_name.get(name, name)
        if name not in EXECUTION_PROVIDERS:
            raise InputError(f"unknown execution provider '{item.strip()}' (known: {', '.join(EXECUTION_PROVIDERS)})")
        if name not in names:
            names.append(name)
    if not names:
        raise InputError(f"--ep: give at least one execution provider ({', '.join(EXECUTION_PROVIDERS)})")
    return names


def provider_unavailable_reason(ep: str, available: Sequence[str] | None = None) -> str | None:
    """Why ``ep`` cannot be used with the installed onnxruntime, or ``None`` when its build provides it.

    A provider the build lists can still fail when the session is created (no GPU, missing CUDA libraries);
    :func:`run_benchmark` checks ``session.get_providers()`` for that.

    Args:
        ep: A short EP name (``cpu``, ``cuda``, ``tensorrt``).
        available: ``onnxruntime.get_available_providers()`` (queried when not given).
    """
    import onnxruntime as ort

    if available is None:
        available = ort.get_available_providers()
    if EXECUTION_PROVIDERS[ep] in available:
        return None
    hint = " (install onnxruntime-gpu in place of onnxruntime on a machine with a CUDA GPU)" if ep in GPU_EPS else ""
    return (
        f"{EP_LABELS[ep]} EP not available: this onnxruntime build ({ort.__version__}) provides only "
        f"{', '.join(available)}{hint}"
    )


def fallback_reason(ep: str, used: Sequence[str]) -> str | None:
    """Why a session asked for ``ep`` runs elsewhere (``used``: ``session.get_providers()``), or ``None``."""
    if EXECUTION_PROVIDERS[ep] in used:
        return None
    return (
        f"{EP_LABELS[ep]} EP not available: onnxruntime fell back to {', '.join(used)} when creating the session "
        "(no usable GPU, or missing CUDA/cuDNN/TensorRT libraries)"
    )


def create_session(source: str | bytes, ep: str, *, threads: int, spinning: bool):
    """A session on ``ep`` (CPU listed after a GPU EP), all graph optimizations, spinning off unless asked."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    options.intra_op_num_threads = threads
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    if not spinning:
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    providers = [EXECUTION_PROVIDERS[ep], *_EP_FALLBACKS[ep]]
    with warnings.catch_warnings():
        # "Specified provider ... is not in available provider names": the fallback is detected and reported.
        warnings.filterwarnings("ignore", message="Specified provider", category=UserWarning)
        return ort.InferenceSession(source, options, providers=providers)


class Runner:
    """One inference call on fixed inputs; on a GPU EP with IO binding, inputs and outputs stay on the device."""

    def __init__(self, session: Any, feeds: Mapping[str, np.ndarray], *, device: str | None = None) -> None:
        names = {i.name for i in session.get_inputs()}
        self.session = session
        self.feeds = {k: np.ascontiguousarray(v) for k, v in feeds.items() if k in names}
        self.binding = None
        if device is not None:
            import onnxruntime as ort

            binding = session.io_binding()
            # Keep the device copies referenced for the binding's lifetime.
            self._device_values = {
                name: ort.OrtValue.ortvalue_from_numpy(array, device, 0) for name, array in self.feeds.items()
            }
            for name, value in self._device_values.items():
                binding.bind_ortvalue_input(name, value)
            for output in session.get_outputs():
                binding.bind_output(output.name, device)
            self.binding = binding

    def __call__(self) -> None:
        """One inference."""
        if self.binding is not None:
            self.session.run_with_iobinding(self.binding)
        else:
            self.session.run(None, self.feeds)
