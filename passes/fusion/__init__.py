"""Peephole fusions (onnxscript rewrite rules) and the passes that apply them.

* :class:`FoldBatchNormPass` (``fold-bn``): Conv/ConvTranspose/Gemm + BatchNormalization -> one node.
* :class:`FoldAffinePass` (``fold-affine``): Conv/ConvTranspose/Gemm + per-channel constant Mul/Add.
* :class:`FuseMatMulAddPass` (``matmul-add-to-gemm``): 2-D MatMul + bias Add -> Gemm.

The shared rule base and the apply-and-count driver are in :mod:`sftonnx.passes.fusion._rules`.
"""

from sftonnx.passes.fusion.affine import FoldAffinePass
from sftonnx.passes.fusion.batch_norm import FoldBatchNormPass
from sftonnx.passes.fusion.matmul_add import FuseMatMulAddPass

__all__ = ["FoldAffinePass", "FoldBatchNormPass", "FuseMatMulAddPass"]
