"""Weight pruning: magnitude (unstructured zeros) and channel (structured removal) passes.

* :class:`PruneMagnitudePass` (``prune``) zeroes the smallest weights: smaller compressed files, same speed
  on dense kernels.
* :class:`PruneChannelsPass` (``prune-channels``) removes whole channels through a channel-dependency
  analysis (:mod:`.dependency`), optionally repairing consumers by least squares (:mod:`.reconstruction`):
  fewer parameters and MACs, faster on any backend.
"""

from sftonnx.passes.pruning.channels import PruneChannelsPass
from sftonnx.passes.pruning.magnitude import PruneMagnitudePass

__all__ = ["PruneChannelsPass", "PruneMagnitudePass"]
