"""What the torch rendering of a graph can run, decided without importing torch.

:data:`SUPPORTED_OPS` lists the default-domain op types :mod:`sftonnx.passes.distillation.torch_graph`
implements; :func:`unsupported_ops` names what a model holds beyond them (other domains, subgraph ops), so a
pass can decline in ``requires()`` before torch is imported. :func:`torch_available` checks the install.
"""

from __future__ import annotations

import collections
import importlib.util

import onnx_ir as ir

__all__ = ["SUPPORTED_OPS", "TORCH_HINT", "torch_available", "unsupported_ops"]

#: The one line said when torch is missing.
TORCH_HINT = 'install with pip install "sftonnx[torch]"'

SUPPORTED_OPS: frozenset[str] = frozenset(
    {
        # weight-bearing
        "Conv", "ConvTranspose", "Gemm", "MatMul", "BatchNormalization", "InstanceNormalization",
        "LayerNormalization", "LSTM", "GRU", "RNN", "PRelu", "Einsum",
        # elementwise arithmetic and activations
        "Add", "Sub", "Mul", "Div", "Pow", "Mod", "Max", "Min", "Sum", "Mean", "Abs", "Neg", "Exp", "Log",
        "Sqrt", "Reciprocal", "Floor", "Ceil", "Round", "Sign", "Sin", "Cos", "Tanh", "Sigmoid", "Relu",
        "LeakyRelu", "Elu", "Selu", "HardSigmoid", "HardSwish", "Softplus", "Softsign", "Erf", "Gelu", "Mish",
        "Clip", "Softmax", "LogSoftmax", "IsNaN", "IsInf",
        # logic
        "Equal", "Less", "LessOrEqual", "Greater", "GreaterOrEqual", "And", "Or", "Xor", "Not", "Where",
        # shape and data movement
        "Reshape", "Flatten", "Transpose", "Concat", "Split", "Slice", "Squeeze", "Unsqueeze", "Gather",
        "GatherElements", "GatherND", "ScatterElements", "Expand", "Tile", "Range", "Pad", "Resize",
        "Shape", "Size", "Cast", "CastLike", "Constant", "ConstantOfShape", "Identity", "Dropout",
        "ReverseSequence", "TopK", "ArgMax", "ArgMin",
        # pooling and reductions
        "MaxPool", "AveragePool", "GlobalAveragePool", "GlobalMaxPool", "ReduceMean", "ReduceSum",
        "ReduceMax", "ReduceMin", "ReduceProd", "ReduceSumSquare", "ReduceL2",
        # quantization (fake-quantize with a straight-through estimator)
        "QuantizeLinear", "DequantizeLinear",
    }
)


def torch_available() -> bool:
    """Whether torch can be imported (checked without importing it)."""
    return importlib.util.find_spec("torch") is not None


def unsupported_ops(model: ir.Model) -> collections.Counter[str]:
    """Op types of ``model`` (main graph and any subgraph) that the torch rendering cannot run, counted.

    Ops of other domains are named ``domain::op``; ops carrying subgraphs (If/Loop/Scan) are unsupported.
    """
    found: collections.Counter[str] = collections.Counter()
    for node in ir.traversal.RecursiveGraphIterator(model.graph):
        domain = "" if node.domain == "ai.onnx" else node.domain
        if domain or node.op_type not in SUPPORTED_OPS:
            found[f"{domain}::{node.op_type}" if domain else node.op_type] += 1
    return found
