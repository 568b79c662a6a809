"""sftonnx.passes.tensor_reuse (work in progress; see the issues)."""
