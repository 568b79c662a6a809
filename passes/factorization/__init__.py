"""sftonnx.passes.factorization (work in progress; see the issues)."""
