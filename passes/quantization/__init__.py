"""sftonnx.passes.quantization (work in progress; see the issues)."""
