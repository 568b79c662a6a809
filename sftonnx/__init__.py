"""sftonnx: an ONNX graph-rewrite optimizer, verified against the original model.

Public API (imported lazily, so ``import sftonnx`` stays cheap and never imports torch)::

    import sftonnx
    result = sftonnx.optimize("model.onnx", "model.opt.onnx", preset="lossless")
    print(result.report.final.nodes, result.verification.worst())   # PipelineReport, verify.Comparison
    print(result.report.to_json()["rows"])                          # one row per pass: changes, skipped, ...

``sftonnx optimize`` prints the same report as a table (:mod:`sftonnx.cli`).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

__all__ = [
    "InputError",
    "OptimizeResult",
    "PassConfigError",
    "PassError",
    "SftonnxError",
    "VerificationError",
    "__version__",
    "inspect",
    "load",
    "optimize",
    "save",
]

_LAZY = {
    "optimize": "sftonnx.api",
    "inspect": "sftonnx.api",
    "OptimizeResult": "sftonnx.api",
    "compare": "sftonnx.api",
    "load": "sftonnx.io",
    "save": "sftonnx.io",
    "SftonnxError": "sftonnx.errors",
    "InputError": "sftonnx.errors",
    "PassConfigError": "sftonnx.errors",
    "PassError": "sftonnx.errors",
    "VerificationError": "sftonnx.errors",
}

if TYPE_CHECKING:
    from sftonnx.api import OptimizeResult, inspect, optimize
    from sftonnx.errors import InputError, PassConfigError, PassError, SftonnxError, VerificationError
    from sftonnx.io import load, save


_SUBMODULES = frozenset(
    {
        "analysis",
        "api",
        "benchmark",
        "evaluate",
        "io",
        "ir_utils",
        "pass_infra",
        "passes",
        "pipeline",
        "search",
        "spec",
        "timing",
        "verify",
    }
)


def __getattr__(name: str) -> Any:
    if name in _SUBMODULES:
        return importlib.import_module(f"sftonnx.{name}")
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'sftonnx' has no attribute '{name}'")
    return getattr(importlib.import_module(module), name)
