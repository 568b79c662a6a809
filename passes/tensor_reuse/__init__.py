"""Tensor reuse: fewer bytes of weights and of live activations, with bit-identical results.

* :class:`~sftonnx.passes.tensor_reuse.weights.ShareWeightsPass` (``share-weights``): an initializer that is a
  transposed or reshaped copy of another is computed from it instead of stored twice.
* :class:`~sftonnx.passes.tensor_reuse.scheduling.ScheduleMemoryPass` (``schedule-memory``): reorder the main
  graph's nodes to lower the peak of live activations.
"""
