"""sftonnx.passes.pruning (work in progress; see the issues)."""
