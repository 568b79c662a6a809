"""Knowledge distillation and quantization-aware fine-tuning in torch (the only place sftonnx imports torch).

torch is imported lazily: :mod:`~sftonnx.passes.distillation.distill` and
:mod:`~sftonnx.passes.distillation.support` never import it; ``torch_graph`` and ``training`` do, and are
imported only when a distillation pass runs.
"""
