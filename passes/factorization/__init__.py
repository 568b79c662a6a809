"""Factorization passes: low-rank Gemm/MatMul (``factorize-gemm``) and factorized Conv (``factorize-conv``)."""

from sftonnx.passes.factorization.conv import FactorizeConvPass
from sftonnx.passes.factorization.gemm import FactorizeGemmPass

__all__ = ["FactorizeConvPass", "FactorizeGemmPass"]
