"""Peephole fusions (onnxscript rewrite rules) and the passes that apply them.

Lossless, standard ONNX:

* :class:`FoldBatchNormPass` (``fold-bn``): Conv/ConvTranspose/Gemm + BatchNormalization -> one node.
* :class:`FoldAffinePass` (``fold-affine``): Conv/ConvTranspose/Gemm + per-channel constant Mul/Add.
* :class:`FuseMatMulAddPass` (``matmul-add-to-gemm``): 2-D MatMul + bias Add -> Gemm.
* :class:`FoldPadPass` (``fold-pad``): a zero constant Pad into the Conv that reads it; an edge/-inf Pad into
  a MaxPool where exact.
* :class:`FoldInputNormPass` (``fold-input-norm``): a per-input-channel affine map ``x * s + t`` into the Conv
  that reads it.
* :class:`CollapseLayoutPass` (``collapse-layout``): Transpose/Reshape/Squeeze/Unsqueeze chains that cancel.
* :class:`FuseLayerNormPass` (``fuse-layernorm``): decomposed LayerNormalization (opset >= 17).
* :class:`FuseGeluPass` (``fuse-gelu``): erf/tanh Gelu formulas -> Gelu (opset >= 20).
* :class:`FuseSoftmaxPass` (``fuse-softmax``): Exp/ReduceSum/Div (optionally max-shifted) -> Softmax.

onnxruntime target (contrib ops, domain ``com.microsoft``):

* :class:`FuseOrtPass` (``fuse-ort``): onnxscript's ``ort_fusions`` (Attention, SkipLayerNormalization, ...).

The shared rule base and the apply-and-count driver are in :mod:`sftonnx.passes.fusion._rules`.
"""

from sftonnx.passes.fusion.affine import FoldAffinePass
from sftonnx.passes.fusion.batch_norm import FoldBatchNormPass
from sftonnx.passes.fusion.matmul_add import FuseMatMulAddPass
from sftonnx.passes.fusion.ort import FuseOrtPass
from sftonnx.passes.fusion.standard import CollapseLayoutPass, FoldInputNormPass, FoldPadPass
from sftonnx.passes.fusion.transformer import FuseGeluPass, FuseLayerNormPass, FuseSoftmaxPass

__all__ = [
    "CollapseLayoutPass",
    "FoldAffinePass",
    "FoldBatchNormPass",
    "FoldInputNormPass",
    "FoldPadPass",
    "FuseGeluPass",
    "FuseLayerNormPass",
    "FuseMatMulAddPass",
    "FuseOrtPass",
    "FuseSoftmaxPass",
]
