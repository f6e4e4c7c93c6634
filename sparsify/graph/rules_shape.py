"""Channel rules of ops that move channels without creating them: elementwise ops, pooling,
reductions, reshape/permute/expand, concat/split/select/slice.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import fx

from sparsify.graph import labels as L
from sparsify.graph.depgraph import DepGraph, where
from sparsify.graph.labels import Lab, LabelError
from sparsify.graph.rules import (
    SHAPE_OPS, lab, op_name, param_source, reshape_unlabelled, rule, same, same_as, shape,
)
from sparsify.graph.pointwise import CONST, ZERO, _tensor_args, tagged_pointwise, unary_behaviour, zero_preserving


# --- elementwise -------------------------------------------------------------------------

def pointwise_applies(n: fx.Node) -> bool:
    """A pointwise op without a rule of its own (see sparsify.graph.pointwise)."""
    if unary_behaviour(n) is not None:
        return True
    op = n.target
    return isinstance(op, torch._ops.OpOverload) and tagged_pointwise(op) and len(_tensor_args(n)) >= 2


def pointwise(g: DepGraph, n: fx.Node) -> Lab | None:
    """Unary: same channels, zero or now a constant (from f(0)); several tensors: elementwise."""
    behaviour = unary_behaviour(n)
    if behaviour == ZERO:
        return same(g, n)
    if behaviour == CONST:
        x = lab(g, n.args[0])
        return same(g, n, nz=True if x is not None and x.nz is True else "const")
    operands = _tensor_args(n)
    labelled = [o for o in operands if lab(g, o) is not None]
    if not labelled:
        return None
    zero = all(not lab(g, o).nz for o in labelled) and zero_preserving(n, labelled)
    return elementwise(g, n, operands, "generic", zero=zero)


@rule("softmax", "_softmax", "log_softmax", "_log_softmax")
def _softmax(g, n):
    x = lab(g, n.args[0])
    if x is None:
        return None
    dim = n.args[1] % x.ndim
    if x.varies(dim):
        raise LabelError("softmax over the channel dim")
    return same(g, n, nz=True)


@rule("add", "sub", "mul", "div", "add_", "mul_", "sub_", "div_", "rsub", "pow", "true_divide")
def _binary(g, n):
    name = op_name(n)
    kind = {"add": "add", "sub": "add", "rsub": "add", "mul": "mul", "div": "div", "true_divide": "div",
            "pow": "pow"}[name.rstrip("_")]
    a, b = n.args[0], n.args[1]
    a_t, b_t = isinstance(a, fx.Node), isinstance(b, fx.Node)
    if not (a_t and b_t):  # tensor-scalar
        x = lab(g, a if a_t else b)
        if x is None:
            return None
        s = b if a_t else a
        if kind == "add":
            return same_as(g, n, x, nz=x.nz if s == 0 else (x.nz or "const"))
        if kind == "mul" or (kind == "div" and a_t):
            return same_as(g, n, x)
        if kind == "pow" and a_t and isinstance(s, (int, float)) and s > 0:
            return same_as(g, n, x)
        raise LabelError(f"{name} with a scalar does not keep pruned channels at zero")
    return elementwise(g, n, [a, b], kind)


@rule("where")
def _where(g, n):
    cond, a, b = n.args[:3]
    if lab(g, cond) is not None:
        raise LabelError("where with a condition on pruned channels")
    if not (isinstance(a, fx.Node) and isinstance(b, fx.Node)):
        x = lab(g, a if isinstance(a, fx.Node) else b)
        return None if x is None else same_as(g, n, x, nz=True)
    return elementwise(g, n, [a, b], "add")  # the output takes values of a or b position-wise


def elementwise(g: DepGraph, n: fx.Node, operands: list, kind: str, zero: bool = False) -> Lab | None:
    """Broadcasting op: unify channels at equal positions; parameters get labelled (add, mul).
    kind "generic" (any other pointwise op): ``zero`` says whether pruned channels stay zero."""
    labs = [lab(g, o) for o in operands]
    if all(x is None for x in labs):
        return None
    out_shape = shape(n)
    nd = len(out_shape)
    ref = next((x for x in labs if x is not None and x.ndim == nd), None)
    if ref is None:
        raise LabelError("labelled operand is broadcast to a higher rank")
    out_factors = []
    for d in range(nd):
        if L._eq(L._prod(ref.factors[d]), out_shape[d]):
            out_factors.append(list(ref.factors[d]))
        else:
            out_factors.append([out_shape[d]])
    arrs = [L.align(x, out_factors, shape(o)) for x, o in zip(labs, operands)]
    full = np.broadcast_shapes(*[a.shape for a in arrs])
    arrs = [np.broadcast_to(a, full) for a in arrs]
    labelled = [a >= 0 for a in arrs]
    out = np.full(full, -1, dtype=np.int64)
    for a in arrs:
        out = np.where(out >= 0, out, a)
    # operands without labels at labelled positions
    for i, (o, x) in enumerate(zip(operands, labs)):
        miss = (out >= 0) & ~labelled[i]
        if not miss.any():
            continue
        fqn = param_source(g, o)
        o_shape = shape(o)
        off = nd - len(o_shape)
        size_gt1 = [d for d in range(nd) if d >= off and not L._eq(o_shape[d - off], 1)]
        out_lab = Lab(out_factors, out, False)
        varying = [d for d in range(nd) if out_lab.varies(d)]
        clash = [d for d in varying if d in size_gt1]
        if not clash:
            continue  # broadcast along the channel dims: it adds a per-position value
        p_shape = list(g.tensor(fqn).shape) if fqn is not None else []
        p_off = len(o_shape) - len(p_shape)
        if fqn is not None and x is None and kind in ("add", "mul") and all(
                d - off - p_off >= 0 and L._eq(p_shape[d - off - p_off], o_shape[d - off]) for d in clash):
            for d in clash:
                g.assign(fqn, d - off - p_off, out_lab.dim_labels(d), "affine" if kind == "add" else "scale")
            arrs[i] = out
            labelled[i] = out >= 0
            continue
        g.block(out[miss], f"'{n.name}' ({op_name(n)}) combines pruned channels with the unprunable "
                           f"channels of '{o.name}' at {where(n)}")
    if kind == "div" and labs[1] is not None:
        raise LabelError("division by a pruned channel")
    if kind == "pow" and labs[1] is not None:
        raise LabelError("pow with a pruned exponent")
    for other in arrs[1:]:
        g.unify(arrs[0], other)
    # is a pruned channel zero at the output?
    if kind == "add":
        # an operand without labels at a channel position (not a parameter labelled above) adds
        # a value there: the pruned channel is no longer zero
        nz = any(x.nz for x in labs if x is not None) or any((~lb & (out >= 0)).any() for lb in labelled)
    elif kind == "mul":
        nz = all((x.nz if x is not None else True) for x in labs)
    elif kind == "generic":
        nz = not zero
    else:
        nz = labs[0].nz if labs[0] is not None else True
    return Lab(out_factors, out, nz)


# --- pooling, reductions --------------------------------------------------------------------

@rule("adaptive_avg_pool1d", "adaptive_avg_pool2d", "adaptive_avg_pool3d", "avg_pool1d", "avg_pool2d",
      "avg_pool3d", "max_pool1d", "max_pool2d", "max_pool3d", "adaptive_max_pool2d",
      "max_pool2d_with_indices", "_adaptive_avg_pool2d")
def _pool(g, n):
    x = lab(g, n.args[0])
    if x is None:
        return None
    if any(x.varies(d) for d in range(2, x.ndim)):
        raise LabelError("pooling over channel dims")
    val = n.meta["val"]
    if isinstance(val, (tuple, list)):
        return [reshape_unlabelled(x, [L.as_size(s) for s in v.shape]) for v in val]
    # zero padding of an average pool makes a constant channel vary at the border
    nz = True if op_name(n).startswith("avg_pool") and x.nz == "const" else None
    return same(g, n, nz=nz)


@rule("upsample_nearest1d", "upsample_nearest2d", "upsample_nearest3d", "upsample_bilinear2d",
      "upsample_bicubic2d", "upsample_linear1d", "_upsample_nearest_exact2d", "_upsample_bilinear2d_aa")
def _upsample(g, n):
    """Spatial resampling: each output is a weighted sum of one channel's inputs."""
    return _pool(g, n)


@rule("pad", "constant_pad_nd")
def _pad(g, n):
    x = lab(g, n.args[0])
    if x is None:
        return None
    pad = list(n.args[1])
    padded = [x.ndim - 1 - i // 2 for i in range(len(pad)) if pad[i] != 0]
    if any(x.varies(d) for d in padded):
        raise LabelError("padding along the channel dim")
    mode = n.args[2] if len(n.args) > 2 else n.kwargs.get("mode", "constant")
    value = n.args[3] if len(n.args) > 3 else n.kwargs.get("value", None)
    if op_name(n) == "constant_pad_nd":
        mode, value = "constant", (n.args[2] if len(n.args) > 2 else 0)
    # reflect/replicate keep a zero or constant channel as it is; a constant pad value keeps a
    # zero channel zero only if the value is 0, and never keeps a non-zero constant constant
    keeps = mode != "constant" or (not value and x.nz != "const")
    return same(g, n, nz=None if keeps else True)


@rule("mean", "sum", "amax", "max", "amin")
def _reduce(g, n):
    x = lab(g, n.args[0])
    if x is None:
        return None
    if len(n.args) < 2:
        raise LabelError("reduction over all dims")
    dims = n.args[1]
    dims = [dims] if isinstance(dims, int) else list(dims)
    dims = [d % x.ndim for d in dims]
    keep = (n.args[2] if len(n.args) > 2 else n.kwargs.get("keepdim", False))
    if any(x.varies(d) for d in dims):
        if op_name(n) == "sum" and not x.nz:
            return None  # pruned channels add zero
        raise LabelError(f"{op_name(n)} over the channel dim")
    tuple_out = isinstance(n.meta.get("val"), (tuple, list))  # max.dim / min.dim: (values, indices)
    if keep:
        if not tuple_out:
            return same_as(g, n, x)
        return [reshape_unlabelled(x, [L.as_size(s) for s in n.meta["val"][0].shape]), None]
    factors, pieces = [], []
    for d in range(x.ndim):
        if d in dims:
            continue
        factors.append(list(x.factors[d]))
        pieces.extend(x.arr.shape[a] for a in x.axes(d))
    out = Lab(factors, x.arr.reshape(pieces), x.nz)
    return [out, None] if tuple_out else out


# --- shape ops ------------------------------------------------------------------------------

@rule(*SHAPE_OPS)
def _reshape(g, n):
    x = lab(g, n.args[0])
    if x is None:
        return None
    out = L.reshape(x, shape(n))
    g.add_rect(out.arr)
    return out


@rule("permute", "transpose", "t", "numpy_T", "swapaxes")
def _permute(g, n):
    x = lab(g, n.args[0])
    if x is None:
        return None
    nd = x.ndim
    name = op_name(n)
    if name == "permute":
        perm = [d % nd for d in n.args[1]]
    elif name in ("t", "numpy_T"):
        perm = list(range(nd))[::-1]
    else:
        a, b = n.args[1] % nd, n.args[2] % nd
        perm = list(range(nd))
        perm[a], perm[b] = perm[b], perm[a]
    return L.permute(x, perm)


@rule("expand")
def _expand(g, n):
    x = lab(g, n.args[0])
    if x is None:
        return None
    out_shape = shape(n)
    off = len(out_shape) - x.ndim
    factors, pieces = [], []
    for d in range(len(out_shape)):
        k = d - off
        if k >= 0 and x.varies(k):
            factors.append(list(x.factors[k]))
            pieces.extend(x.arr.shape[a] for a in x.axes(k))
        else:
            factors.append([out_shape[d]])
            pieces.append(1)
    return Lab(factors, x.arr.reshape(pieces), x.nz)


@rule("cat", "concat")
def _cat(g, n):
    tensors = list(n.args[0])
    labs_ = [lab(g, t) for t in tensors]
    if all(x is None for x in labs_):
        return None
    out_shape = shape(n)
    nd = len(out_shape)
    dim = (n.args[1] if len(n.args) > 1 else n.kwargs.get("dim", 0)) % nd
    arrs = []
    for t, x in zip(tensors, labs_):
        sz = shape(t)[dim]
        if not L.is_static(sz):
            raise LabelError("concat along a dynamic dim")
        if x is None:
            a = np.full([1] * nd, -1, dtype=np.int64)
        else:
            if any(len(x.factors[d]) != 1 for d in range(nd) if x.varies(d)):
                raise LabelError("concat of factored channel dims")
            a = x.arr.reshape([x.arr.shape[x.axes(d)[0]] if x.varies(d) else 1 for d in range(nd)])
        shp = list(a.shape)
        shp[dim] = sz
        arrs.append(np.broadcast_to(a, shp))
    other = [d for d in range(nd) if d != dim]
    common = [max(a.shape[d] for a in arrs) for d in range(nd)]
    full = []
    for t, a in zip(tensors, arrs):
        shp = list(common)
        shp[dim] = a.shape[dim]
        full.append(np.broadcast_to(a, shp))
    labelled_dims = [d for d in other if common[d] > 1]
    for d in labelled_dims:
        ref = next(a for a in full if (a >= 0).any())
        for i, (t, a) in enumerate(zip(tensors, full)):
            if (a < 0).all():
                param = _label_param_operand(g, t, ref, d, dim) if labelled_dims == [d] else None
                if param is None:
                    g.block(ref, f"concat '{n.name}' at {where(n)} joins pruned channels with "
                                 f"unprunable ones of '{t.name}'")
                else:
                    full[i] = param
            else:
                g.unify(np.take(ref, [0], axis=dim), np.take(a, [0], axis=dim))
    if labelled_dims and not any(x is not None and x.varies(dim) for x in labs_):
        # joined along a non-channel dim (tokens): every part carries the same (unified) channels
        ref = next(a for a in full if (a >= 0).any())
        return Lab([[out_shape[d]] for d in range(nd)], np.ascontiguousarray(np.take(ref, [0], axis=dim)),
                   any(x.nz for x in labs_ if x is not None))
    out = np.concatenate(full, axis=dim)
    factors = [[out_shape[d]] for d in range(nd)]
    return Lab(factors, out, any(x.nz for x in labs_ if x is not None))


def _label_param_operand(g: DepGraph, t, ref: np.ndarray, d: int, dim: int) -> np.ndarray | None:
    """A parameter (or a view of one, e.g. a class token expanded to the batch) concatenated
    with channels along ``dim``: its dim matching channel dim ``d`` joins those channels (it
    must be masked with them), so the channels stay prunable. Returns its labels, or None."""
    fqn = param_source(g, t)
    if fqn is None:
        return None
    t_shape, p_shape = shape(t), list(g.tensor(fqn).shape)
    pd = d - (len(t_shape) - len(p_shape))
    if pd < 0 or not L._eq(p_shape[pd], t_shape[d]) or not L._eq(t_shape[d], ref.shape[d]):
        return None
    lbl = np.take(ref, 0, axis=dim) if ref.shape[dim] > 0 else None
    if lbl is None:
        return None
    lbl = lbl.reshape(-1) if lbl.size == ref.shape[d] else None
    if lbl is None:
        return None
    g.assign(fqn, pd, lbl, "affine")
    shp = [1] * len(t_shape)
    shp[d] = len(lbl)
    arr = lbl.reshape(shp)
    g.labs[t.name] = Lab([[s] for s in t_shape], arr, False)
    full = list(ref.shape)
    full[dim] = int(t_shape[dim])
    return np.broadcast_to(arr, full)


@rule("split", "split_with_sizes", "chunk", "unbind", "unsafe_split", "tensor_split")
def _split(g, n):
    x = lab(g, n.args[0])
    outs = n.meta["val"]
    if x is None:
        return [None] * len(outs)
    name = op_name(n)
    nd = x.ndim
    dim = (n.args[2] if len(n.args) > 2 else n.kwargs.get("dim", 0)) if name != "unbind" else \
        (n.args[1] if len(n.args) > 1 else 0)
    dim %= nd
    if not x.varies(dim):
        return [reshape_unlabelled(x, [L.as_size(s) for s in o.shape]) if name != "unbind" else
                _drop_dim(x, dim) for o in outs]
    if len(x.factors[dim]) != 1:
        raise LabelError(f"{name} of a factored channel dim")
    if name == "unbind":
        # e.g. timm's fused qkv unbound into q, k, v: each output keeps its slice's channels
        # (the unbound dim itself never shrinks: slim keeps at least one head of each)
        ax = x.axes(dim)[0]
        outs_ = []
        for i in range(len(outs)):
            part = np.take(x.arr, [i], axis=ax)
            y = Lab([list(f) for f in x.factors], part, x.nz)
            y.factors[dim] = [1]
            outs_.append(_drop_dim(y, dim))
        return outs_
    if name == "tensor_split":
        raise LabelError(f"{name} along the channel dim (its outputs cannot be resized)")
    ax = x.axes(dim)[0]
    res, start = [], 0
    for o in outs:
        sz = int(o.shape[dim])
        part = np.take(x.arr, np.arange(start, start + sz), axis=ax)
        start += sz
        factors = [list(f) for f in x.factors]
        factors[dim] = [sz]
        res.append(Lab(factors, part, x.nz))
    return res


def _drop_dim(x: Lab, dim: int) -> Lab:
    factors = [list(f) for d, f in enumerate(x.factors) if d != dim]
    pieces = [x.arr.shape[a] for d in range(x.ndim) if d != dim for a in x.axes(d)]
    return Lab(factors, x.arr.reshape(pieces), x.nz)


@rule("select")
def _select(g, n):
    x = lab(g, n.args[0])
    if x is None:
        return None
    dim, idx = n.args[1] % x.ndim, n.args[2]
    if x.varies(dim):
        if len(x.factors[dim]) != 1:
            raise LabelError("select on a factored channel dim")
        part = np.take(x.arr, [idx], axis=x.axes(dim)[0])
        x = Lab([list(f) for f in x.factors], part, x.nz)
        x.factors[dim] = [1]
    return _drop_dim(x, dim)


@rule("slice")
def _slice(g, n):
    x = lab(g, n.args[0])
    if x is None:
        return None
    dim = (n.args[1] if len(n.args) > 1 else 0) % x.ndim
    out_shape = shape(n)
    if not x.varies(dim):
        return reshape_unlabelled(x, out_shape)
    start = n.args[2] if len(n.args) > 2 else 0
    step = n.args[4] if len(n.args) > 4 else 1
    if len(x.factors[dim]) != 1 or not isinstance(start, int) or step != 1:
        raise LabelError("slice of a channel dim with a step or dynamic bounds")
    size = x.factors[dim][0]
    start = max(0, start + size if start < 0 else start)
    stop = start + int(out_shape[dim])
    part = np.take(x.arr, np.arange(start, stop), axis=x.axes(dim)[0])
    factors = [list(f) for f in x.factors]
    factors[dim] = [out_shape[dim]]
    return Lab(factors, part, x.nz)


@rule("getitem")
def _getitem(g, n):
    src, i = n.args
    v = g.labs.get(src.name)
    if isinstance(v, list):
        return v[i]
    if isinstance(v, Lab):
        raise LabelError("item of an op whose tuple output has no channel rule")
    return None


@rule("sym_size")
def _sym_size(g, n):
    x = lab(g, n.args[0])
    if x is not None and x.varies(n.args[1] % x.ndim):
        raise LabelError("the size of a channel dim is read")
    return None
