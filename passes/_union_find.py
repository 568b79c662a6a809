"""Disjoint sets (union-find) over hashable items, shared by the passes that group things.

Used for quantization scale groups (tensors that must share one scale) and for pruning's channel classes
(channels that must be removed together).
"""

from __future__ import annotations

from collections.abc import Hashable, Iterable
from typing import Generic, TypeVar

__all__ = ["UnionFind"]

T = TypeVar("T", bound=Hashable)


class UnionFind(Generic[T]):
    """Disjoint sets with path compression; an item is a set of its own until joined.

    Args:
        items: Items to start with (others are added when first looked up).
    """

    def __init__(self, items: Iterable[T] = ()) -> None:
        self.parent: dict[T, T] = {item: item for item in items}

    def __len__(self) -> int:
        return len(self.parent)

    def add(self, items: Iterable[T]) -> None:
        """Add ``items`` as sets of their own (items already present are left alone)."""
        for item in items:
            self.parent.setdefault(item, item)

    def find(self, item: T) -> T:
        """The root of ``item``'s set (``item`` is added when new)."""
        parent = self.parent
        root = parent.setdefault(item, item)
        while parent[root] != root:
            root = parent[root]
        while item != root:
            parent[item], item = root, parent[item]
        return root

    def union(self, a: T, b: T) -> T | None:
        """Join the sets of ``a`` and ``b``; ``a``'s root stays the root.

        Returns:
            The root that was absorbed (no longer a root), or ``None`` when both were already one set.
        """
        ra, rb = self.find(a), self.find(b)
        if ra == rb:
            return None
        self.parent[rb] = ra
        return rb
