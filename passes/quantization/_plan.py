"""Planning ``quantize``: which tensors get Q/DQ, grouped into shared scales, with their parameters."""

from __future__ import annotations

import collections
import dataclasses
from collections.abc import Iterable, Mapping
from typing import Literal

import numpy as np
import onnx_ir as ir

from sftonnx.ir_utils import constant_array
from sftonnx.passes._union_find import UnionFind
from sftonnx.passes.quantization import calibration as calib
from sftonnx.passes.quantization._sites import Site
from sftonnx.passes.quantization.calibration import Range

__all__ = ["NameGraph", "Plan", "make_plan"]


@dataclasses.dataclass
class Plan:
    """Which tensors get Q/DQ and with which parameters, for a chosen set of nodes.

    Attributes:
        chosen: Nodes quantized.
        params: ``{tensor: (scale, zero point)}`` for activations (shared within a group).
        group_of: ``{tensor: group root}``.
        const_params: ``{constant tensor: (scale, zero point)}``.
        declined: ``{node: reason}`` for nodes dropped while planning.
    """

    chosen: set[str]
    params: dict[str, tuple[np.float32, np.integer]]
    group_of: dict[str, str]
    const_params: dict[str, tuple[np.float32, np.integer]]
    declined: dict[str, str]


class NameGraph:
    """Name-level view of the float model's main graph (stable across copies loaded from the same bytes)."""

    def __init__(self, model: ir.Model) -> None:
        self.producer: dict[str, str] = {}
        self.consumers: dict[str, list[str]] = collections.defaultdict(list)
        self.op: dict[str, str] = {}
        self.outputs = {v.name for v in model.graph.outputs}
        self.consts: dict[str, np.ndarray] = {}
        for node in model.graph:
            self.op[node.name] = node.op_type
            for value in node.outputs:
                if value.name:
                    self.producer[value.name] = node.name
            for value in node.inputs:
                if value is not None and value.name:
                    self.consumers[value.name].append(node.name)
                    if value.name not in self.consts:
                        array = constant_array(value)
                        if array is not None:
                            self.consts[value.name] = array

    def sole_consumer(self, tensor: str) -> str | None:
        users = self.consumers.get(tensor, [])
        if tensor in self.outputs or len(users) != 1:
            return None
        return users[0]


def make_plan(
    graph: NameGraph,
    sites: Mapping[str, Site],
    chosen: Iterable[str],
    ranges: Mapping[str, Range],
    *,
    activation: Literal["uint8", "int8"],
    symmetric: bool,
) -> Plan:
    """Plan Q/DQ for ``chosen``: tensor groups, their shared ranges, and nodes declined for degenerate ranges."""
    chosen_set = set(chosen)
    declined: dict[str, str] = {}
    while True:
        groups: UnionFind[str] = UnionFind()
        needed: set[str] = set()
        sources: set[str] = set()
        users: dict[str, set[str]] = collections.defaultdict(set)  # tensor -> chosen nodes needing it
        dropped: dict[str, str] = {}

        def need(tensor: str, node: str, source: bool = True) -> None:
            # closes over this iteration's collections only (called before the loop moves on)
            needed.add(tensor)  # noqa: B023
            groups.find(tensor)  # noqa: B023
            users[tensor].add(node)  # noqa: B023
            if source:
                sources.add(tensor)  # noqa: B023

        fused_producers: dict[str, str] = {}  # producer node -> activation node folded into it
        for name in chosen_set:
            site = sites[name]
            if site.kind != "act":
                continue
            producer = graph.producer.get(site.acts[0])
            if (
                producer is None
                or producer not in chosen_set
                or sites[producer].kind != "compute"
                or graph.sole_consumer(site.acts[0]) != name
            ):
                dropped[name] = "activation_not_fusable"
            else:
                fused_producers[producer] = name
        if dropped:
            declined.update(dropped)
            chosen_set -= set(dropped)
            continue
        for name in chosen_set:
            site = sites[name]
            if site.kind != "act":
                for tensor in site.acts:
                    need(tensor, name)
            if site.kind == "compute":
                if name in fused_producers:
                    continue  # the activation's output carries the range
                need(site.output, name)
                if site.op_type == "Concat":
                    for tensor in site.acts:
                        groups.union(site.output, tensor)
            elif site.kind == "pass":
                need(site.output, name)
                groups.union(site.acts[0], site.output)
            else:  # act folded into its producer
                need(site.output, name)
                if symmetric:  # the producer's output is quantized too, with this output's scale
                    need(site.acts[0], name, source=False)
                    users[site.acts[0]].add(graph.producer[site.acts[0]])
                    groups.union(site.output, site.acts[0])
                else:
                    users[site.output].add(graph.producer[site.acts[0]])
        group_range: dict[str, Range] = {}
        for tensor in needed:
            root = groups.find(tensor)
            if tensor not in sources:
                group_range.setdefault(root, Range(0.0, 0.0))
                continue
            rng = ranges.get(tensor, Range(0.0, 0.0))
            group_range[root] = group_range[root].union(rng) if root in group_range else rng
        bad_roots = {root for root, rng in group_range.items() if rng.degenerate}
        for tensor in needed:
            if groups.find(tensor) in bad_roots:
                for node in users[tensor]:
                    dropped[node] = "degenerate_range"
        if dropped:
            declined.update(dropped)
            chosen_set -= set(dropped)
            continue
        params = {}
        group_params = {
            root: calib.quant_params(rng, activation, symmetric=symmetric) for root, rng in group_range.items()
        }
        for tensor in needed:
            params[tensor] = group_params[groups.find(tensor)]
        const_params: dict[str, tuple[np.float32, np.integer]] = {}
        for name in chosen_set:
            for tensor in sites[name].consts:
                array = graph.consts[tensor].astype(np.float64)
                rng = Range(min(float(array.min(initial=0.0)), 0.0), max(float(array.max(initial=0.0)), 0.0))
                if rng.degenerate:  # an all-zero constant quantizes exactly with any scale
                    rng = Range(0.0, 1.0)
                const_params[tensor] = calib.quant_params(rng, activation, symmetric=symmetric)
        return Plan(chosen_set, params, {t: groups.find(t) for t in needed}, const_params, declined)
