"""The registry of per-op channel rules (how channel labels enter, pass through and leave each
ATen op) and the helpers the rules share.

A rule takes the graph and a node and returns the node's output labels (`Lab`, a list for
tuple outputs, or None when the output carries no prunable channel); `@rule("op", ...)`
registers it in `RULES`. The rule modules (rules_layers.py, rules_shape.py) import this one;
it imports none of them: `sparsify.graph.analysis` imports them all and walks a graph.

The rule table in one place (details in rules_layers.py / rules_shape.py):

| op | channels in | channels out |
|---|---|---|
| linear, addmm, x @ W (Conv1D) | consumer: W's input dim | producer: W's output dim (+ bias) |
| conv (groups=1) | consumer: W dim 1 | producer: W dim 0 (+ bias) |
| conv (grouped, depthwise) | whole groups: in-group and out-group channels form one unit | |
| embedding | | producer: W dim 1 |
| group_norm | whole norm groups are the unit (their statistics stay exact) | same |
| batch_norm, layer_norm (channel dim) | same channels; weight/bias must be masked; LN is rewritten to keep its statistics | same |
| any pointwise op (ATen's pointwise tag, or acts like one: hardswish_, dropout, copies) | same channels: still zero when f(0) = 0 (relu, gelu, hardswish_), else a constant folded into a consumer bias when exact (sigmoid, exp, + scalar) | same |
| add/sub/mul (broadcasting) | unify channels at equal positions; a parameter operand gets labelled | |
| pooling, upsampling, pad (spatial), mean/sum over other dims | same channels (zero padding breaks constants) | same |
| view/reshape/flatten/unflatten | labels follow the factorisation (conv -> flatten: a block of H*W features) | |
| permute/transpose, expand, select/slice, cat, split/chunk | labels move, concatenate, split with offsets | |
| scaled_dot_product_attention, activation matmul | q.k contraction unifies; each head is one unit | v's channels |
| softmax / mean / LN over a channel dim, model output, unknown op | channels blocked, reason recorded | |
"""

from __future__ import annotations

import operator
from typing import Callable

from torch import fx

from sparsify.graph import labels as L
from sparsify.graph.depgraph import DepGraph
from sparsify.graph.labels import Lab, LabelError

Rule = Callable[[DepGraph, fx.Node], object]
RULES: dict[str, Rule] = {}

SHAPE_OPS = {"view", "reshape", "_unsafe_view", "flatten", "unflatten", "squeeze", "unsqueeze",
             "squeeze_", "unsqueeze_"}


def rule(*names: str):
    """Register the decorated function as the rule of the ops ``names``."""
    def deco(fn: Rule) -> Rule:
        for n in names:
            RULES[n] = fn
        return fn
    return deco


def op_name(node: fx.Node) -> str:
    t = node.target
    if t is operator.getitem:
        return "getitem"
    packet = getattr(t, "_overloadpacket", None)
    if packet is not None:
        return packet.__name__
    return getattr(t, "__name__", str(t))


def shape(node) -> list:
    val = node.meta.get("val")
    return [L.as_size(s) for s in val.shape]


def lab(g: DepGraph, a) -> Lab | None:
    if isinstance(a, fx.Node):
        v = g.labs.get(a.name)
        return v if isinstance(v, Lab) else None
    return None


def param_fqn(a) -> str | None:
    return a.target if isinstance(a, fx.Node) and a.op == "get_attr" else None


# ops that give a view of a parameter with its trailing dims in place (pos[:, :T], expand...)
PARAM_VIEW_OPS = {"alias", "slice", "clone", "contiguous", "detach", "_to_copy", "to", "expand", "unsqueeze"}


def param_source(g: DepGraph, a) -> str | None:
    """The parameter `a` is, or is a right-aligned view of (see PARAM_VIEW_OPS)."""
    return param_fqn(a) or (g.param_views.get(a.name) if isinstance(a, fx.Node) else None)


def same(g: DepGraph, n: fx.Node, nz: bool | None = None) -> Lab | None:
    """Output labels equal the input's (shape may change along unlabelled dims)."""
    x = lab(g, n.args[0])
    if x is None:
        return None
    return reshape_unlabelled(x, shape(n), nz)


def reshape_unlabelled(x: Lab, out_shape: list, nz: bool | None = None) -> Lab:
    """Same labels; unlabelled dims take the output's sizes (pooling, reductions with keepdim)."""
    if len(out_shape) != x.ndim:
        raise LabelError(f"rank changes from {x.ndim} to {len(out_shape)}")
    factors, pieces = [], []
    for d in range(x.ndim):
        if x.varies(d):
            if not L._eq(L._prod(x.factors[d]), out_shape[d]):
                raise LabelError(f"channel dim {d} changes size")
            factors.append(list(x.factors[d]))
            pieces.extend(x.arr.shape[a] for a in x.axes(d))
        else:
            factors.append([out_shape[d]])
            pieces.append(1)
    return Lab(factors, x.arr.reshape(pieces), x.nz if nz is None else nz)


def same_as(g, n, x: Lab, nz: bool | None = None) -> Lab:
    return reshape_unlabelled(x, shape(n), nz)


def flat_nodes(args) -> list[fx.Node]:
    """The fx nodes in ``args`` (nested lists, tuples and dicts), in order."""
    out: list[fx.Node] = []

    def visit(a):
        if isinstance(a, fx.Node):
            out.append(a)
        elif isinstance(a, (list, tuple)):
            for b in a:
                visit(b)
        elif isinstance(a, dict):
            for b in a.values():
                visit(b)
    visit(args)
    return out
