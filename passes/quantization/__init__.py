"""Quantization passes: static int8 QDQ (``quantize``), dynamic int8 (``quantize-dynamic``), float16 (``fp16``).

``calibration`` streams activation statistics and picks ranges; ``recovery`` holds cross-layer equalization,
bias correction, SmoothQuant and sensitivity-driven mixed precision used by ``quantize``'s options.
"""

from sftonnx.passes.quantization.dynamic import QuantizeDynamicPass
from sftonnx.passes.quantization.fp16 import ConvertFloat16Pass
from sftonnx.passes.quantization.qdq import QuantizeStaticPass

__all__ = ["ConvertFloat16Pass", "QuantizeDynamicPass", "QuantizeStaticPass"]
