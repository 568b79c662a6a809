"""Layout canonicalization: move Transposes through the graph until they cancel (exact).

* :class:`SinkTransposesPass` (``sink-transposes``): push Transposes down through ops that commute with a
  permutation (and up through a few toward the graph inputs) so that pairs cancel or merge, and the
  per-channel affine chains they hid land next to their Conv for ``fold-affine``/``fold-bn``.
"""

from sftonnx.passes.layout.sinking import SinkTransposesPass

__all__ = ["SinkTransposesPass"]
