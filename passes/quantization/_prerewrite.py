"""Exact rewrites ``quantize`` makes before planning, so that more nodes qualify (each counted by the pass).

Naming every node (sites are keyed by node name), folding Clip bounds computed from constants, and
turning two-input Sums into Adds.
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir
from onnx_ir.passes.common import RemoveUnusedNodesPass

from sftonnx.ir_utils import NameAllocator, constant_array, fresh_name, is_op
from sftonnx.passes.quantization._build import initializer
from sftonnx.passes.quantization._sites import folded_constant

__all__ = ["fold_clip_bounds", "name_nodes", "sum_to_add"]


def name_nodes(graph: ir.Graph) -> int:
    """Give every unnamed (or duplicate-named) node of the main graph a unique name; returns how many."""
    names = NameAllocator()
    renamed = 0
    for index, node in enumerate(graph):
        if not node.name or node.name in names.taken:
            node.name = names(f"{node.op_type}_{index}")
            renamed += 1
        else:
            names.taken.add(node.name)
    return renamed



def fold_clip_bounds(model: ir.Model) -> int:
    """Clip bounds computed by Cast/CastLike of constants become float initializers (an exact rewrite).

    Exporters emit ``Clip(x, CastLike(0.0, x), CastLike(6.0, x))``; the CastLike nodes read ``x`` too, so
    ``x`` would have three readers and the Clip could not be folded into the producer's Q, and onnxruntime
    only removes a Clip whose bounds are initializers.
    """
    folded = 0
    for node in model.graph:
        if not is_op(node, "Clip"):
            continue
        for index in (1, 2):
            value = node.inputs[index] if index < len(node.inputs) else None
            if value is None or constant_array(value) is not None:
                continue
            array = folded_constant(value)
            if array is None:
                continue
            name = fresh_name(model.graph, f"{value.name}_folded")
            node.replace_input_with(index, initializer(model.graph, name, np.asarray(array, np.float32),
                                                        model.ir_version))
            folded += 1
    if folded:
        RemoveUnusedNodesPass()(model)
    return folded


def sum_to_add(model: ir.Model) -> int:
    """Two-input ``Sum`` (old exporters' residual add) becomes ``Add`` (exact), which has an int8 kernel."""
    rewritten = 0
    for node in list(model.graph):
        if is_op(node, "Sum") and len(node.inputs) == 2 and all(v is not None for v in node.inputs):
            add = ir.Node("", "Add", list(node.inputs), name=node.name, num_outputs=1)
            model.graph.insert_before(node, add)
            output = node.outputs[0]
            if output.is_graph_output():
                name = output.name
                output.name = f"{name}_sum"
                output.replace_all_uses_with(add.outputs[0], replace_graph_outputs=True)
                add.outputs[0].name = name
            else:
                output.replace_all_uses_with(add.outputs[0])
                add.outputs[0].name = output.name
                output.name = f"{output.name}_sum"
            model.graph.remove(node, safe=True)
            rewritten += 1
    return rewritten
