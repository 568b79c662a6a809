"""Collecting intermediate activations in onnxruntime, batch by batch (for calibration and reconstruction)."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping, Sequence

import numpy as np
import onnx_ir as ir

__all__ = ["ActivationRunner"]

logger = logging.getLogger(__name__)


class ActivationRunner:
    """Runs a copy of a model that also outputs chosen intermediate tensors of the main graph.

    The caller's model is never modified: the copy is made through serialization. Values must be produced
    by nodes of the main graph (or be graph inputs/initializers, which are returned as they are).

    Args:
        model: The model to observe.
        names: Tensor names to expose.
        providers: onnxruntime execution providers.

    Example::

        runner = ActivationRunner(model, ["conv1_out"])
        for batch in runner.run(feeds_iterable):
            stats.update(batch["conv1_out"])
    """

    def __init__(
        self, model: ir.Model, names: Sequence[str], *, providers: Sequence[str] = ("CPUExecutionProvider",)
    ):
        from sftonnx import io
        from sftonnx.verify import make_session, session_source

        large = io.needs_file(model)
        if large:
            # A structural copy that shares the weights (memory-mapped tensors stay so): nothing is duplicated.
            copy = io.copy_model(model)
        else:
            copy = io.load(io.to_bytes(model), validate=False)
        values = {v.name: v for node in copy.graph for v in node.outputs}
        values.update({v.name: v for v in copy.graph.inputs})
        existing = {o.name for o in copy.graph.outputs}
        self.names = list(dict.fromkeys(names))
        self.constants: dict[str, np.ndarray] = {}
        for name in self.names:
            if name in copy.graph.initializers and copy.graph.initializers[name].const_value is not None:
                self.constants[name] = copy.graph.initializers[name].const_value.numpy()
                continue
            value = values.get(name)
            if value is None:
                raise KeyError(f"no tensor named '{name}' in the main graph")
            if name not in existing and value not in copy.graph.inputs:
                copy.graph.outputs.append(value)
        if large:
            # Run from a temporary file; onnxruntime keeps its mapping of the data after the file is removed.
            with session_source(copy) as source:
                self.session = make_session(source, providers=providers, optimization="disable", prepack=False)
        else:
            self.session = make_session(io.to_bytes(copy), providers=providers, optimization="disable")
        self.output_names = [o.name for o in self.session.get_outputs()]
        self.input_names = [i.name for i in self.session.get_inputs()]

    def run(self, feeds: Iterable[Mapping[str, np.ndarray]]) -> Iterable[dict[str, np.ndarray]]:
        """For each feed dict, the requested tensors (plus the feeds themselves, for input names)."""
        for feed in feeds:
            inputs = {k: v for k, v in feed.items() if k in self.input_names}
            outputs = dict(zip(self.output_names, self.session.run(None, inputs), strict=False))
            result = {}
            for name in self.names:
                if name in outputs:
                    result[name] = outputs[name]
                elif name in inputs:
                    result[name] = inputs[name]
                else:
                    result[name] = self.constants[name]
            yield result

    def reduce(
        self, feeds: Iterable[Mapping[str, np.ndarray]], update: Callable[[dict[str, np.ndarray]], None]
    ) -> int:
        """Stream every batch through ``update``; returns the number of batches seen."""
        count = 0
        for batch in self.run(feeds):
            update(batch)
            count += 1
        return count
