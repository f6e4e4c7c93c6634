"""Dependency graph over a captured ATen graph: which channels must be pruned together.

Every op that creates channels (Linear/conv output rows, embedding columns, ...) creates one
*channel variable* per channel. Ops that combine tensors position-wise (residual add, mul,
concat...) unify variables (union-find): the resulting equivalence classes are the channels
that must be removed together. *Blocks* bind classes further (a conv group, an attention
head). A *group* is a connected set of classes; it is what a plan prunes, in whole *units*.

The per-op rules are registered in `sparsify.graph.rules` (by rules_layers.py and rules_shape.py)
and applied by `sparsify.graph.analysis`; this module holds the bookkeeping.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import fx

from sparsify.graph.labels import Lab

#: Roles of a labelled parameter dim. `producer`/`affine` slices must be masked for the channel
#: to be exactly zero; `consumer` is an input slice; `scale` multiplies; `stat` is a BN buffer.
ROLES = ("producer", "affine", "consumer", "scale", "stat")


class UnionFind:
    def __init__(self) -> None:
        self.parent: list[int] = []

    def add(self, n: int) -> int:
        start = len(self.parent)
        self.parent.extend(range(start, start + n))
        return start

    def find(self, a: int) -> int:
        p = self.parent
        root = a
        while p[root] != root:
            root = p[root]
        while p[a] != root:
            p[a], a = root, p[a]
        return root

    def union(self, a: int, b: int) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            if ra < rb:
                ra, rb = rb, ra
            self.parent[ra] = rb

    def roots(self, arr: np.ndarray) -> np.ndarray:
        flat = arr.reshape(-1)
        out = np.array([self.find(int(v)) if v >= 0 else -1 for v in flat], dtype=np.int64)
        return out.reshape(arr.shape)

    def copy(self) -> UnionFind:
        u = UnionFind()
        u.parent = list(self.parent)
        return u


def nz_max(a, b):
    """Join of two `nz` states: False (zero) < "const" (per-channel constant) < True (unknown)."""
    order = {False: 0, "const": 1, True: 2}
    return a if order[a] >= order[b] else b


@dataclass
class Fold:
    """How a constant input channel of a consumer folds into its bias (None: it cannot)."""

    node: str  # the consumer op
    input: str  # its input activation
    kind: str  # "linear" (W: out x in), "matmul" (W: in x out), "conv"
    bias: str | None
    why_not: str | None = None


@dataclass
class ParamUse:
    """Labels of one dim of a parameter/buffer."""

    fqn: str
    dim: int
    labels: np.ndarray
    role: str
    nz: bool | str = False  # consumer only: pruned input channels may be non-zero ("const": constant)
    fold: Fold | None = None


@dataclass
class DepGraph:
    """The analysis result: variables, classes, blocks and the labels of every node/param."""

    gm: fx.GraphModule
    uf: UnionFind = field(default_factory=UnionFind)
    var_owner: list[str] = field(default_factory=list)  # fqn of the producer, or "<virtual:node>"
    uses: dict[tuple[str, int], ParamUse] = field(default_factory=dict)
    labs: dict[str, object] = field(default_factory=dict)  # node name -> Lab | list | None
    blocks: list[tuple[str, list[np.ndarray]]] = field(default_factory=list)  # (kind, var arrays)
    blocked: dict[int, str] = field(default_factory=dict)  # var -> reason
    rects: list[np.ndarray] = field(default_factory=list)
    ln_nodes: list[str] = field(default_factory=list)
    param_views: dict[str, str] = field(default_factory=dict)  # node -> fqn it aliases/slices

    # -- building ---------------------------------------------------------------------
    def new_vars(self, n: int, owner: str) -> np.ndarray:
        start = self.uf.add(n)
        self.var_owner.extend([owner] * n)
        return np.arange(start, start + n, dtype=np.int64)

    def unify(self, a: np.ndarray, b: np.ndarray) -> None:
        a, b = np.broadcast_arrays(a, b)
        both = (a >= 0) & (b >= 0)
        for x, y in set(zip(a[both].tolist(), b[both].tolist())):
            self.uf.union(x, y)

    def block(self, arr, reason: str) -> None:
        for v in np.unique(np.asarray(arr)).tolist():
            if v >= 0 and v not in self.blocked:
                self.blocked[v] = reason

    def block_lab(self, lab, reason: str) -> None:
        labs = lab if isinstance(lab, list) else [lab]
        for lb in labs:
            if isinstance(lb, Lab):
                self.block(lb.arr, reason)

    def add_block(self, kind: str, parts: list[np.ndarray], reason: str) -> None:
        """Bind the vars in `parts` into one unit; a part with unprunable (-1) entries blocks it."""
        flat = np.concatenate([np.asarray(p).reshape(-1) for p in parts])
        if (flat < 0).any():
            self.block(flat, reason)
        self.blocks.append((kind, [flat[flat >= 0]]))

    def assign(self, fqn: str, dim: int, labels: np.ndarray, role: str, nz: bool | str = False,
               fold: Fold | None = None) -> None:
        labels = np.asarray(labels, dtype=np.int64).reshape(-1)
        key = (fqn, dim)
        if key in self.uses:
            old = self.uses[key]
            self.unify(old.labels, labels)
            old.nz = nz_max(old.nz, nz)
            old.fold = None  # a weight used twice: no bias fold
            if ROLES.index(role) < ROLES.index(old.role):
                old.role = role
            return
        self.uses[key] = ParamUse(fqn, dim, labels, role, nz, fold)

    def add_rect(self, arr: np.ndarray) -> None:
        sq = arr.reshape([s for s in arr.shape if s > 1])
        if sq.ndim >= 2:
            self.rects.append(sq)

    # -- queries ----------------------------------------------------------------------
    def param_uses(self) -> dict[str, list[ParamUse]]:
        out: dict[str, list[ParamUse]] = defaultdict(list)
        for u in self.uses.values():
            out[u.fqn].append(u)
        return out

    def tensor(self, fqn: str) -> torch.Tensor:
        mod_path, _, name = fqn.rpartition(".")
        mod = self.gm.get_submodule(mod_path) if mod_path else self.gm
        return getattr(mod, name)

    def num_vars(self) -> int:
        return len(self.uf.parent)


def where(node: fx.Node) -> str:
    """`module path (Type)` and the last user-code line that created `node`."""
    stack = node.meta.get("nn_module_stack") or {}
    mod = ""
    if stack:
        path, typ = list(stack.values())[-1]
        tname = typ.rsplit(".", 1)[-1] if isinstance(typ, str) else getattr(typ, "__name__", str(typ))
        mod = f"module '{path}' ({tname})" if path else f"({tname})"
    trace = node.meta.get("stack_trace") or ""
    lines = [ln.strip() for ln in trace.strip().splitlines() if ln.strip().startswith("File")]
    loc = lines[-1] if lines else ""
    return ", ".join(p for p in (mod, loc) if p) or "unknown location"
