"""The lossy techniques searched per layer, the layers each can target, and the specs of per-layer choices."""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Iterable, Mapping

from sftonnx import io
from sftonnx.errors import InputError

__all__ = ["TECHNIQUES", "Technique", "available_techniques", "target_layers", "technique_extra"]

#: Layer names that cannot be written into a spec option (separators of the spec and tuple syntax).
_UNSAFE_NAME = re.compile(r"[,{}|;=\s]")


@dataclasses.dataclass(frozen=True)
class Technique:
    """A lossy pass searched per layer.

    Attributes:
        name: The registry name of the pass.
        ops: Op types of the layers it targets.
        levels: Option text per level above 0 (level 0 = layer left alone), least aggressive first.
        kind: ``quant`` (on/off per layer, added last) or ``struct`` (pruning, factorization).
    """

    name: str
    ops: tuple[str, ...]
    levels: tuple[str, ...]
    kind: str

    def probe_spec(self, layer: str, level: int, extra: str) -> str:
        """The spec applying this technique to ``layer`` alone at ``level`` (1-based)."""
        if self.kind == "quant":
            # Negative look-ahead: every node whose name is not exactly `layer` is excluded (stays float).
            return _spec(self.name, extra, f"exclude_pattern=^(?!{re.escape(layer)}$)")
        return _spec(self.name, extra, self.levels[level - 1], f"layers={layer}")

    def config_spec(self, config: Mapping[str, int], extra: str) -> str | None:
        """The spec of a per-layer configuration ``{layer: level}`` (``None`` when nothing is applied)."""
        if not any(config.values()):
            return None
        if self.kind == "quant":
            excluded = [layer for layer, level in config.items() if level == 0]
            return _spec(self.name, extra, f"exclude_nodes={';'.join(excluded)}" if excluded else "")
        parts = []
        for level in range(len(self.levels), 0, -1):
            layers = [layer for layer, chosen in config.items() if chosen == level]
            if layers:
                parts.append(_spec(self.name, extra, self.levels[level - 1], f"layers={';'.join(layers)}"))
        return ",".join(parts)


def _spec(name: str, *options: str) -> str:
    body = ",".join(option for option in options if option)
    return f"{name}{{{body}}}" if body else name


#: The lossy techniques the search knows, in the order they are applied in a combined spec.
TECHNIQUES = (
    Technique("prune-channels", ("Conv", "Gemm", "MatMul"), ("ratio=0.25", "ratio=0.5", "ratio=0.75"), "struct"),
    Technique("factorize-conv", ("Conv",), ("ratio=0.5", "ratio=0.25"), "struct"),
    Technique("factorize-gemm", ("Gemm", "MatMul"), ("ratio=0.5", "ratio=0.25"), "struct"),
    Technique("quantize", ("Conv", "ConvTranspose", "Gemm", "MatMul"), ("",), "quant"),
    Technique("quantize-dynamic", ("Gemm", "MatMul"), ("",), "quant"),
)


def available_techniques(names: Iterable[str] | None = None) -> list[Technique]:
    """The techniques whose pass is registered now (optionally only ``names``).

    Raises:
        InputError: ``names`` holds a technique that is unknown or not registered.
    """
    from sftonnx.passes import REGISTRY

    known = {t.name: t for t in TECHNIQUES}
    if names is None:
        return [t for t in TECHNIQUES if t.name in REGISTRY]
    chosen = []
    for name in names:
        if name not in known:
            raise InputError(f"auto: unknown technique '{name}' (known: {', '.join(known)})")
        if name not in REGISTRY:
            raise InputError(f"auto: technique '{name}' is not available (its pass is not registered)")
        chosen.append(known[name])
    return [t for t in TECHNIQUES if t in chosen]


def technique_extra(technique: Technique, calibrated: bool) -> str:
    """Options every spec of a technique carries (calibration behaviour)."""
    if technique.name == "quantize" and not calibrated:
        return "allow_random=true"
    # prune-channels refits on calibration data by itself whenever it is given (reconstruct=None).
    return ""


def target_layers(model_path: str, technique: Technique) -> list[str]:
    """Named nodes of the main graph the technique can target (constant weight), in graph order."""
    model = io.load(model_path)
    layers = []
    for node in model.graph:
        if node.domain not in ("", "ai.onnx") or node.op_type not in technique.ops or len(node.inputs) < 2:
            continue
        weight = node.inputs[1]
        if weight is None or not node.name or _UNSAFE_NAME.search(node.name):
            continue
        producer = weight.producer()
        if weight.const_value is None and not (producer is not None and producer.op_type == "Constant"):
            continue
        layers.append(node.name)
    return layers
