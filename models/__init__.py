"""Model zoo for tests and benchmarks: torch nets exported to ONNX without the exporter's own optimizations.

``MODELS`` describes each net without importing torch; ``ensure(name)`` returns the path of its ONNX file
under ``models/onnx/``, exporting it first (which needs torch) when the file is missing. ``digits_cnn`` is
the trained digits classifier committed in ``models/onnx/`` (see ``models.digits``).

Usage from the repo root::

    python -m models.export all --out-dir models/onnx --opset 18
    python -m models.digits --out-dir models/onnx
"""

from __future__ import annotations

import dataclasses
import pathlib
from typing import Any

__all__ = ["DEFAULT_OPSET", "DEFAULT_OUT_DIR", "DIGITS", "MODELS", "ModelSpec", "ensure"]

DEFAULT_OUT_DIR = pathlib.Path(__file__).resolve().parent / "onnx"
DEFAULT_OPSET = 18
DIGITS = "digits_cnn"


@dataclasses.dataclass(frozen=True)
class ModelSpec:
    """How to build and feed one net of ``models.nets``.

    Attributes:
        factory: Class name in ``models.nets``.
        kwargs: Constructor keywords.
        shape: Input shape without the (dynamic) batch dimension.
        dtype: Input element type, ``"float32"`` or ``"int64"``.
        input_name: Name of the ONNX graph input.
        output_names: Names of the ONNX graph outputs.
        high: Exclusive upper bound of random integer inputs (token ids).
        description: One line for listings.
    """

    factory: str
    kwargs: dict[str, Any]
    shape: tuple[int, ...]
    dtype: str = "float32"
    input_name: str = "input"
    output_names: tuple[str, ...] = ("logits",)
    high: int = 0
    description: str = ""


MODELS: dict[str, ModelSpec] = {
    "small_cnn": ModelSpec(
        "SmallCNN",
        {"in_channels": 1, "image_size": 28, "num_classes": 10, "channels": 64},
        (1, 28, 28),
        description="conv3x3(1->64), ReLU, conv3x3(64->64), ReLU, flatten, FC -> 10; 1x28x28",
    ),
    "resnet18": ModelSpec(
        "ResNet18Style",
        {"width": 32, "num_classes": 10},
        (3, 32, 32),
        description="ResNet-18 layout, BasicBlocks [2,2,2,2], BN, width 32; 3x32x32",
    ),
    "mobilenetv2": ModelSpec(
        "MobileNetV2Style",
        {"width_mult": 1.0, "num_classes": 10},
        (3, 32, 32),
        description="MobileNetV2 inverted residuals, BN, ReLU6, width 1.0; 3x32x32",
    ),
    "tiny_bert": ModelSpec(
        "TinyBert",
        {"vocab_size": 1000, "hidden": 128, "layers": 2, "heads": 2, "intermediate": 512, "max_seq": 32},
        (32,),
        dtype="int64",
        input_name="input_ids",
        output_names=("last_hidden_state", "pooler_output"),
        high=1000,
        description="BERT-mini-like encoder, hidden 128, 2 layers, 2 heads, seq 32, vocab 1000",
    ),
}


def ensure(
    name: str, out_dir: str | pathlib.Path = DEFAULT_OUT_DIR, opset: int = DEFAULT_OPSET
) -> pathlib.Path:
    """Return ``out_dir/<name>.onnx``, exporting (or for ``digits_cnn`` training) it first if missing.

    An existing file is returned as is, whatever opset it was exported with.

    Args:
        name: A key of ``MODELS`` or ``"digits_cnn"``.
        out_dir: Directory of the ONNX files.
        opset: Opset used when the file has to be exported.

    Returns:
        Path of the ONNX file.

    Raises:
        KeyError: If ``name`` is unknown.
    """
    if name not in MODELS and name != DIGITS:
        raise KeyError(f"unknown model {name!r}; known: {', '.join([*MODELS, DIGITS])}")
    path = pathlib.Path(out_dir) / f"{name}.onnx"
    if path.exists():
        return path
    if name == DIGITS:
        from models import digits  # imports torch and scikit-learn

        return digits.train_and_export(path.parent, opset=opset).model_path
    from models import export  # imports torch

    return export.export(name, path.parent, opset=opset)
