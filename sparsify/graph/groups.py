"""Channel groups and pruning units from a DepGraph.

A group is a connected set of channel classes (same producer, bound by a block or by one
tensor's label grid). Units are the smallest sets of classes that can be removed alone:
classes joined by blocks (conv groups, attention heads) and by the rectangular-shape rule
(a tensor whose channels span two axes, heads × head_dim, must keep a full grid).
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field

import numpy as np

from sparsify.graph.depgraph import DepGraph, UnionFind


@dataclass
class ChannelGroup:
    """One group: its classes, units (arrays of class ids) and the tensor dims it couples."""

    index: int
    classes: np.ndarray
    units: list[np.ndarray]
    tensors: list[tuple[str, int, str, int]]  # (fqn, dim, role, #positions in this group)
    producers: list[str]
    kind: str  # "channel" | "head"
    blocked: list[str] = field(default_factory=list)

    @property
    def name(self) -> str:
        if not self.producers:
            return f"group{self.index}"
        head = self.producers[0].rsplit(".", 1)[0] if "." in self.producers[0] else self.producers[0]
        more = len(self.producers) - 1
        return head + (f" (+{more} coupled)" if more else "")

    def describe(self) -> str:
        dims = ", ".join(f"{f}[dim {d}, {r}]" for f, d, r, _ in self.tensors)
        return f"{self.name}: {len(self.units)} {'heads' if self.kind == 'head' else 'units'}, " \
               f"{len(self.classes)} channels; couples {dims}"


def class_slices(dg: DepGraph) -> dict[tuple[str, int], np.ndarray]:
    """For every labelled param dim: the class (root) of each position (-1: none)."""
    return {key: dg.uf.roots(u.labels) for key, u in dg.uses.items()}


def _group_uf(dg: DepGraph) -> UnionFind:
    uf = dg.uf.copy()
    for u in dg.uses.values():  # the channels of one producer dim form one group
        if u.role == "producer":
            lbl = u.labels[u.labels >= 0].tolist()
            for v in lbl[1:]:
                uf.union(lbl[0], v)
    first: dict[str, int] = {}
    for v, owner in enumerate(dg.var_owner):  # virtual head variables of one attention op
        if not owner.startswith("<"):
            continue
        if owner in first:
            uf.union(first[owner], v)
        else:
            first[owner] = v
    for _, parts in dg.blocks:
        for p in parts:
            for v in p.tolist()[1:]:
                uf.union(int(p[0]), v)
    for arr in dg.rects:
        flat = arr[arr >= 0]
        for v in flat.tolist()[1:]:
            uf.union(int(flat[0]), v)
    return uf


def unit_uf(dg: DepGraph) -> UnionFind:
    """Classes joined by blocks, then by the rectangular rule (choosing the finer split)."""
    uf = dg.uf.copy()
    for _, parts in dg.blocks:
        for p in parts:
            for v in p.tolist()[1:]:
                uf.union(int(p[0]), v)
    for arr in dg.rects:
        _resolve_rect(uf, arr)
    return uf


def _resolve_rect(uf: UnionFind, arr: np.ndarray) -> None:
    roots = uf.roots(arr)
    axes = [a for a in range(roots.ndim)
            if roots.shape[a] > 1 and not (roots == np.take(roots, [0], axis=a)).all()]
    if len(axes) < 2:
        return
    best, best_count = None, -1
    for a in axes:
        local = {}

        def find(x):
            while local.get(x, x) != x:
                x = local[x]
            return x
        for i in range(roots.shape[a]):
            sl = np.unique(np.take(roots, i, axis=a))
            sl = sl[sl >= 0]
            for v in sl[1:].tolist():
                ra, rb = find(int(sl[0])), find(v)
                if ra != rb:
                    local[ra] = rb
        count = len({find(int(v)) for v in np.unique(roots) if v >= 0})
        if count > best_count:
            best, best_count = a, count
    for i in range(roots.shape[best]):
        sl = np.unique(np.take(roots, i, axis=best))
        sl = sl[sl >= 0]
        for v in sl[1:].tolist():
            uf.union(int(sl[0]), v)


def compute_groups(dg: DepGraph) -> list[ChannelGroup]:
    """All channel groups of the graph, with units and the reasons any are blocked."""
    guf = _group_uf(dg)
    uuf = unit_uf(dg)
    nv = dg.num_vars()
    cls = np.array([dg.uf.find(v) for v in range(nv)], dtype=np.int64)
    gid = np.array([guf.find(v) for v in range(nv)], dtype=np.int64)
    uid = np.array([uuf.find(v) for v in range(nv)], dtype=np.int64)
    head_vars = set()
    for kind, parts in dg.blocks:
        if kind == "head":
            for p in parts:
                head_vars.update(p.tolist())
    by_group: dict[int, list[int]] = defaultdict(list)
    for v in range(nv):
        by_group[int(gid[v])].append(v)
    tensors_of: dict[int, list] = defaultdict(list)
    slices = class_slices(dg)
    for (fqn, dim), roots in slices.items():
        valid = roots[roots >= 0]
        if not len(valid):
            continue
        for g_, cnt in zip(*np.unique(gid[valid], return_counts=True)):
            tensors_of[int(g_)].append((fqn, dim, dg.uses[(fqn, dim)].role, int(cnt)))
    groups = []
    for i, (g_, vs) in enumerate(sorted(by_group.items(), key=lambda kv: kv[1][0])):
        vs = np.array(vs)
        classes = np.unique(cls[vs])
        units_map: dict[int, list[int]] = defaultdict(list)
        for c in classes.tolist():
            units_map[int(uid[c])].append(c)
        units = [np.array(sorted(u)) for u in sorted(units_map.values(), key=lambda u: min(u))]
        producers = sorted({dg.var_owner[v] for v in vs.tolist() if not dg.var_owner[v].startswith("<")},
                           key=lambda f: min(v for v in vs.tolist() if dg.var_owner[v] == f))
        reasons = sorted({dg.blocked[v] for v in vs.tolist() if v in dg.blocked})
        kind = "head" if head_vars.intersection(vs.tolist()) else "channel"
        groups.append(ChannelGroup(i, classes, units, sorted(tensors_of[int(g_)]), producers, kind, reasons))
    return groups
