"""Channel behaviour of pointwise ops, derived from ATen rather than listed by hand.

An op is pointwise when ATen tags it ``torch.Tag.pointwise`` (its in-place and out variants
included), or when it acts like one on a probe: applied to a permuted tensor it gives the
permuted result (``hardswish``, ``dropout`` in eval mode and copies are untagged but pass).
A unary pointwise op keeps channels where they are; what happens to a pruned channel is read
off ``f(0)`` with the node's own non-tensor arguments: 0 keeps it zero, anything else turns
it into a constant (folded into a consumer's bias where that is exact).
"""

from __future__ import annotations

import functools
from typing import Any

import torch
from torch import fx

from sparsify.graph.rules import flat_nodes

#: Unary pointwise behaviours: a pruned (zero) channel stays "zero", or becomes a "const".
ZERO, CONST = "zero", "const"


def _overload(node: fx.Node) -> torch._ops.OpOverload | None:
    t = node.target
    return t if isinstance(t, torch._ops.OpOverload) else None


def tagged_pointwise(op: torch._ops.OpOverload) -> bool:
    """ATen tags the op, or the functional op of this in-place/out variant, as pointwise."""
    if torch.Tag.pointwise in op.tags:
        return True
    base = op._schema.name.split("::")[-1].rstrip("_")
    packet = getattr(torch.ops.aten, base, None)
    if packet is None:
        return False
    return any(torch.Tag.pointwise in getattr(packet, o).tags for o in packet.overloads())


def _tensor_args(node: fx.Node) -> list[fx.Node]:
    return [a for a in flat_nodes(node.args) + flat_nodes(node.kwargs)
            if isinstance(a.meta.get("val"), torch.Tensor)]


def _constant(a: Any) -> bool:
    if isinstance(a, (list, tuple)):
        return all(_constant(b) for b in a)
    return a is None or isinstance(a, (bool, int, float, str, torch.dtype, torch.device, torch.memory_format,
                                       torch.layout))


def unary_behaviour(node: fx.Node) -> str | None:
    """ZERO or CONST for a unary pointwise op (one tensor input, constant other arguments)
    whose output has its input's shape; None for anything else."""
    op = _overload(node)
    if op is None or not node.args or not isinstance(node.args[0], fx.Node):
        return None
    if _tensor_args(node) != [node.args[0]] or not _constant(node.args[1:]) or not _constant(tuple(node.kwargs.values())):
        return None
    x, y = node.args[0].meta.get("val"), node.meta.get("val")
    if not isinstance(x, torch.Tensor) or not isinstance(y, torch.Tensor) or tuple(x.shape) != tuple(y.shape):
        return None
    if not x.is_floating_point():
        return None
    try:
        return _probe(op, tuple(node.args[1:]), tuple(sorted(node.kwargs.items())), tagged_pointwise(op))
    except TypeError:  # unhashable arguments: probe uncached
        return _probe.__wrapped__(op, tuple(node.args[1:]), tuple(sorted(node.kwargs.items())), tagged_pointwise(op))


@functools.lru_cache(maxsize=None)
def _probe(op: torch._ops.OpOverload, args: tuple, kwargs: tuple, tagged: bool) -> str | None:
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(3, 7, generator=gen)
    perm = torch.randperm(x.numel(), generator=gen)
    kw = dict(kwargs)
    try:
        with torch.no_grad():
            fx_ = op(x.clone(), *args, **kw)
            fpx = op(x.reshape(-1)[perm].reshape(3, 7).clone(), *args, **kw)
            f0 = op(torch.zeros(3, 7), *args, **kw)
    except Exception:  # the op does not run on a small float tensor: not a pointwise op we know
        return None
    if not all(isinstance(t, torch.Tensor) and t.shape == x.shape for t in (fx_, fpx, f0)):
        return None
    if not tagged and not torch.equal(fx_.reshape(-1)[perm], fpx.reshape(-1)):
        return None
    return ZERO if bool((f0 == 0).all()) else CONST


def zero_preserving(node: fx.Node, zero_operands: list[fx.Node]) -> bool:
    """For a pointwise op of several tensors: is the output 0 wherever ``zero_operands`` are 0,
    whatever the other operands hold (probed with random values)?"""
    op = _overload(node)
    if op is None:
        return False
    gen = torch.Generator().manual_seed(0)
    zeros = {a.name for a in zero_operands}

    def value(a):
        if isinstance(a, fx.Node) and isinstance(a.meta.get("val"), torch.Tensor):
            v = a.meta["val"]
            shape = [s if isinstance(s, int) else 3 for s in v.shape]
            if a.name in zeros:
                return torch.zeros(shape, dtype=v.dtype)
            if v.dtype == torch.bool:
                return torch.rand(shape, generator=gen) > 0.5
            return torch.randn(shape, generator=gen).to(v.dtype)
        if isinstance(a, (list, tuple)):
            return type(a)(value(b) for b in a)
        return a
    try:
        with torch.no_grad():
            out = op(*[value(a) for a in node.args], **{k: value(v) for k, v in node.kwargs.items()})
    except Exception:  # shapes that do not broadcast at the probe's sizes: assume the worst
        return False
    return isinstance(out, torch.Tensor) and bool((out == 0).all())
