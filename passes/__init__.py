"""The rewrite passes, installed as ``sftonnx.passes``.

``REGISTRY`` maps each registry/CLI name to its pass class; ``PRESETS`` maps each preset name to a pass
spec (the same syntax as ``--passes``). Both are written out by hand so that ``sftonnx passes`` and the
README list exactly what exists.
"""

from __future__ import annotations

from sftonnx.passes.cleanup import (
    DeduplicateInitializersPass,
    EliminateCommonSubexpressionsPass,
    EliminateDeadNodesPass,
    EliminateIdentityPass,
    SimplifyPass,
)

from sftonnx.pass_infra import SftPass

__all__ = ["PRESETS", "PRESET_DOCS", "REGISTRY"]

REGISTRY: dict[str, type[SftPass]] = {
    SimplifyPass.name: SimplifyPass,
    EliminateDeadNodesPass.name: EliminateDeadNodesPass,
    EliminateIdentityPass.name: EliminateIdentityPass,
    EliminateCommonSubexpressionsPass.name: EliminateCommonSubexpressionsPass,
    DeduplicateInitializersPass.name: DeduplicateInitializersPass,
}

PRESETS: dict[str, str] = {
    "lossless": "simplify,eliminate-identity,cse,dedup,eliminate-dead",
}

PRESET_DOCS: dict[str, str] = {
    "lossless": "Numerically equivalent clean-up and folding; the default.",
}
