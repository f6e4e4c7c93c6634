"""Per-op channel rules: how channel labels enter, pass through and leave each ATen op.

`analyze(gm)` walks a captured graph once and returns a `DepGraph`. Each rule takes the
graph and a node and returns the node's output labels (`Lab`, a list for tuple outputs, or
None when the output carries no prunable channel). An op without a rule that receives
pruned-channel labels blocks those channels, naming the op and where it came from.
"""

from __future__ import annotations

import operator
from typing import Callable

import numpy as np
from torch import fx

from sparsify.graph import labels as L
from sparsify.graph.depgraph import DepGraph, Fold, where
from sparsify.graph.labels import Lab, LabelError

Rule = Callable[[DepGraph, fx.Node], object]
RULES: dict[str, Rule] = {}

# elementwise ops with f(0) == 0: pruned channels stay exactly zero
ZERO_PRESERVING = {
    "relu", "relu_", "gelu", "silu", "silu_", "tanh", "hardtanh", "hardtanh_", "leaky_relu", "hardswish",
    "elu", "dropout", "clone", "contiguous", "alias", "detach", "neg", "abs", "erf", "_to_copy",
    "to", "type_as", "relu6", "mish", "lift_fresh_copy", "dropout_", "feature_dropout", "identity",
}
# elementwise ops with f(0) != 0: the pruned channel becomes a (non-zero) constant
NONZERO = {"sigmoid", "sigmoid_", "hardsigmoid", "exp", "softplus", "cos", "log_sigmoid"}
SHAPE_OPS = {"view", "reshape", "_unsafe_view", "flatten", "unflatten", "squeeze", "unsqueeze",
             "squeeze_", "unsqueeze_"}


def rule(*names: str):
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


# --- elementwise -------------------------------------------------------------------------

@rule(*ZERO_PRESERVING)
def _zero_preserving(g, n):
    return same(g, n)


@rule(*NONZERO)
def _nonzero(g, n):
    x = lab(g, n.args[0])
    return same(g, n, nz=True if x is not None and x.nz is True else "const")


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


def same_as(g, n, x: Lab, nz: bool | None = None) -> Lab:
    return reshape_unlabelled(x, shape(n), nz)


def elementwise(g: DepGraph, n: fx.Node, operands: list, kind: str) -> Lab | None:
    """Broadcasting binary op: unify channels at equal positions; parameters get labelled."""
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
    g.unify(arrs[0], arrs[1]) if len(arrs) == 2 else None
    # is a pruned channel zero at the output?
    if kind == "add":
        nz = any(x.nz for x in labs if x is not None) or any(
            (~lb & (out >= 0)).any() and param_source(g, o) is None for lb, o in zip(labelled, operands))
    elif kind == "mul":
        nz = all((x.nz if x is not None else True) for x in labs)
    else:
        nz = labs[0].nz if labs[0] is not None else True
    return Lab(out_factors, out, nz)


# --- producers and consumers --------------------------------------------------------------

@rule("linear")
def _linear(g, n):
    x, w = n.args[0], n.args[1]
    bias = n.args[2] if len(n.args) > 2 else None
    return linear_like(g, n, x, param_fqn(w), 0, param_fqn(bias))


def linear_like(g: DepGraph, n: fx.Node, x, w_fqn: str | None, out_dim: int, b_fqn: str | None,
                bias_fold: bool = True) -> Lab:
    """y = x W^T + b with W's output channels on `out_dim` (0: Linear, 1: Conv1D / x @ W)."""
    xl = lab(g, x)
    out_shape = shape(n)
    if w_fqn is None:
        if xl is not None:
            raise LabelError("matmul with a computed weight")
        return None
    in_dim = 1 - out_dim
    if xl is not None:
        nd = xl.ndim
        others = [d for d in range(nd - 1) if xl.varies(d)]
        if others:
            g.block(xl.arr, f"'{n.name}' applies a linear map along a non-channel dim of pruned "
                            f"channels at {where(n)}")
        elif xl.varies(nd - 1):
            fold = Fold(n.name, x.name, "linear" if out_dim == 0 else "matmul", b_fqn,
                        None if b_fqn is not None else f"'{n.name}' has no bias to fold a constant into")
            g.assign(w_fqn, in_dim, xl.dim_labels(nd - 1), "consumer", xl.nz, fold)
    n_out = g.tensor(w_fqn).shape[out_dim]
    v = g.new_vars(n_out, w_fqn)
    g.assign(w_fqn, out_dim, v, "producer")
    if b_fqn is not None:
        g.assign(b_fqn, 0, v, "affine")
    return L.simple_lab(out_shape, len(out_shape) - 1, v)


@rule("addmm")
def _addmm(g, n):
    b, x, w = n.args[0], n.args[1], n.args[2]
    if n.kwargs.get("beta", 1) != 1 or n.kwargs.get("alpha", 1) != 1:
        raise LabelError("addmm with alpha/beta")
    return linear_like(g, n, x, param_fqn(w), 1, param_fqn(b))


@rule("matmul", "bmm", "mm")
def _matmul(g, n):
    a, b = n.args[0], n.args[1]
    if param_fqn(b) is not None and len(shape(b)) == 2:
        return linear_like(g, n, a, param_fqn(b), 1, None)
    if param_fqn(a) is not None:
        if lab(g, b) is not None:
            raise LabelError("matmul with a parameter on the left")
        return None
    return matmul_activations(g, n, a, b)


def matmul_activations(g: DepGraph, n: fx.Node, a, b) -> Lab | None:
    """Activation @ activation (attention): contraction unifies, batch positions bind heads."""
    la, lb = lab(g, a), lab(g, b)
    if la is None and lb is None:
        return None
    sa, sb, so = shape(a), shape(b), shape(n)
    if len(sa) != len(so) or len(sb) != len(so) or len(so) < 3:
        raise LabelError("matmul of activations with broadcasting ranks")
    nd = len(so)
    batch = list(range(nd - 2))
    varies_b = [x for x in (la, lb) if x is not None and any(x.varies(d) for d in batch)]
    ref = varies_b[0] if varies_b else (la if la is not None else lb)
    for x in varies_b:
        for d in batch:
            if x.varies(d) and len(x.factors[d]) != len(ref.factors[d]):
                raise LabelError("matmul operands factor the batch dims differently")

    def batch_arr(x: Lab, keep: int | None) -> np.ndarray:
        """x's labels as (batch axes..., K) with K the labels along dim `keep` (or 1)."""
        for d in (nd - 2, nd - 1):
            if d != keep and x.varies(d):
                raise LabelError("matmul operand labelled on both matrix dims")
        pieces = []
        for d in batch:
            pieces.extend([x.arr.shape[ax] for ax in x.axes(d)] if x.varies(d) else [1] * len(ref.factors[d]))
        if keep is None or not x.varies(keep):
            return x.arr.reshape(pieces + [1])
        sizes = x.factors[keep]
        if not all(L.is_static(s) for s in sizes):
            raise LabelError("matmul over a dynamic channel dim")
        sub = x.arr.reshape(pieces + [x.arr.shape[ax] for ax in x.axes(keep)])
        sub = np.broadcast_to(sub, pieces + [int(s) for s in sizes])
        return sub.reshape(pieces + [-1])

    ka = batch_arr(la, nd - 1) if la is not None and la.varies(nd - 1) else None
    kb = batch_arr(lb, nd - 2) if lb is not None and lb.varies(nd - 2) else None
    if ka is not None and kb is not None:
        g.unify(ka, kb)
    elif ka is not None or kb is not None:
        if (la if ka is not None else lb).nz:
            raise LabelError("contraction of non-zero pruned channels with unprunable ones")
    a_row = la is not None and la.varies(nd - 2)
    b_col = lb is not None and lb.varies(nd - 1)
    if a_row and b_col:
        raise LabelError("matmul with both row and column channels")
    a_batch = la is not None and any(la.varies(d) for d in batch)
    b_batch = lb is not None and any(lb.varies(d) for d in batch)
    out_factors = [list(ref.factors[d]) for d in batch] + [[so[-2]], [so[-1]]]
    g.attention_nodes.append(n.name)
    if b_col or a_row:
        # output channels come from b's columns (attn @ v) or a's rows
        main, other = (lb, la) if b_col else (la, lb)
        arr = batch_arr(main, nd - 1 if b_col else nd - 2)
        arrs = [arr]
        if (a_batch if b_col else b_batch):
            arrs.append(batch_arr(other, None))
            _bind_heads(g, n, arrs)
        bshape = tuple(np.broadcast_shapes(*[x.shape[:-1] for x in arrs]))
        out = np.broadcast_to(arr, bshape + (arr.shape[-1],))
        tail = [1, arr.shape[-1]] if b_col else [arr.shape[-1], 1]
        return Lab(out_factors, np.ascontiguousarray(out.reshape(list(bshape) + tail)), main.nz)
    if a_batch or b_batch:
        arrs = [x for x in (ka if ka is not None else (batch_arr(la, None) if la is not None else None),
                            kb if kb is not None else (batch_arr(lb, None) if lb is not None else None))
                if x is not None]
        bshape = np.broadcast_shapes(*[x.shape[:-1] for x in arrs])
        hv = g.new_vars(int(np.prod(bshape)), f"<heads:{n.name}>").reshape(bshape)
        _bind_heads(g, n, arrs + [hv[..., None]])
        out = hv.reshape(list(bshape) + [1, 1])
        nz = all(x.nz if x is not None else True for x in (la, lb))
        return Lab(out_factors, out, nz)
    return None


def _bind_heads(g: DepGraph, n: fx.Node, arrs: list[np.ndarray]) -> None:
    """One unit per batch position (attention head): arrs are (batch axes..., k)."""
    bshape = np.broadcast_shapes(*[a.shape[:-1] for a in arrs])
    full = [np.broadcast_to(a, tuple(bshape) + (a.shape[-1],)).reshape(-1, a.shape[-1]) for a in arrs]
    for p in range(int(np.prod(bshape))):
        g.add_block("head", [f[p] for f in full],
                    f"attention head {p} of '{n.name}' at {where(n)} mixes prunable and unprunable parts")


@rule("scaled_dot_product_attention")
def _sdpa(g, n):
    q, k, v = n.args[:3]
    lq, lk, lv = lab(g, q), lab(g, k), lab(g, v)
    if lq is None and lk is None and lv is None:
        return None
    nd = len(shape(n))
    for x in (lq, lk, lv):
        if x is not None and x.varies(nd - 2):
            raise LabelError("attention labelled along the sequence dim")
    g.attention_nodes.append(n.name)
    if lq is not None or lk is not None:
        # q.k contraction over head_dim
        aq = lq.arr if lq is not None else None
        ak = lk.arr if lk is not None else None
        if aq is not None and ak is not None:
            g.unify(aq, ak)
        elif lq is not None and lk is None or lk is not None and lq is None:
            x = lq if lq is not None else lk
            g.block(x.arr, f"attention '{n.name}' at {where(n)}: q and k are not both prunable")
    parts = []
    for x in (lq, lk, lv):
        if x is None:
            continue
        bs = [x.arr.shape[a] for d in range(nd - 2) for a in x.axes(d)]
        parts.append(x.arr.reshape(bs + [-1]))
    if len(parts) < 3:
        for x in (lq, lk, lv):
            if x is not None:
                g.block(x.arr, f"attention '{n.name}' at {where(n)}: q, k and v are not all prunable")
    _bind_heads(g, n, parts)
    if lv is None:
        return None
    sv = shape(v)
    factors = [list(f) for f in lv.factors]
    factors[nd - 2] = [shape(n)[nd - 2]]
    del sv
    return Lab(factors, lv.arr, lv.nz)


def _conv_groups(n: fx.Node) -> int:
    name = op_name(n)
    if name in ("convolution", "_convolution"):
        if n.args[6]:
            raise LabelError("transposed convolution")
        return int(n.args[8])
    return int(n.args[6]) if len(n.args) > 6 else int(n.kwargs.get("groups", 1))


@rule("conv1d", "conv2d", "conv3d", "convolution", "_convolution")
def _conv(g, n):
    x, w = n.args[0], n.args[1]
    bias = n.args[2] if len(n.args) > 2 else None
    w_fqn, b_fqn = param_fqn(w), param_fqn(bias)
    xl = lab(g, x)
    if w_fqn is None:
        if xl is not None:
            raise LabelError("convolution with a computed weight")
        return None
    groups = _conv_groups(n)
    out_shape = shape(n)
    if xl is not None and any(xl.varies(d) for d in range(xl.ndim) if d != 1):
        g.block(xl.arr, f"conv '{n.name}' at {where(n)} gets channels on a non-channel dim")
        xl = None
    wt = g.tensor(w_fqn)
    n_out = wt.shape[0]
    v = g.new_vars(n_out, w_fqn)
    g.assign(w_fqn, 0, v, "producer")
    if b_fqn is not None:
        g.assign(b_fqn, 0, v, "affine")
    in_labels = xl.dim_labels(1) if xl is not None and xl.varies(1) else None
    if groups == 1:
        if in_labels is not None:
            why = None if b_fqn is not None else f"conv '{n.name}' has no bias to fold a constant into"
            padding = n.args[4] if len(n.args) > 4 else 0
            if isinstance(padding, str):
                padding = [0] if padding == "valid" else [1]
            padding = [padding] if isinstance(padding, int) else list(padding)
            if any(p != 0 for p in padding) and any(k > 1 for k in wt.shape[2:]):
                why = f"conv '{n.name}' zero-pads its input: a constant channel is not constant at the border"
            g.assign(w_fqn, 1, in_labels, "consumer", xl.nz, Fold(n.name, x.name, "conv", b_fqn, why))
    else:
        c_in = wt.shape[1] * groups
        if in_labels is None:
            in_labels = np.full(c_in, -1, dtype=np.int64)
        ig, og = c_in // groups, n_out // groups
        for j in range(groups):
            g.add_block("group", [in_labels[j * ig:(j + 1) * ig], v[j * og:(j + 1) * og]],
                        f"grouped conv '{n.name}' at {where(n)}: its input channels cannot be pruned")
    return L.simple_lab(out_shape, 1, v)


@rule("embedding")
def _embedding(g, n):
    w = param_fqn(n.args[0])
    if w is None:
        return None
    v = g.new_vars(g.tensor(w).shape[1], w)
    g.assign(w, 1, v, "producer")
    out_shape = shape(n)
    return L.simple_lab(out_shape, len(out_shape) - 1, v)


@rule("batch_norm", "_native_batch_norm_legit_no_training", "native_batch_norm",
      "_native_batch_norm_legit", "instance_norm")
def _batch_norm(g, n):
    x = lab(g, n.args[0])
    name = op_name(n)
    if name == "_native_batch_norm_legit_no_training" or name == "batch_norm" or name == "native_batch_norm":
        w, b, rm, rv = n.args[1:5]
    else:
        raise LabelError(f"{name}")
    if x is None:
        out = None
    else:
        if any(x.varies(d) for d in range(x.ndim) if d != 1):
            raise LabelError("batch norm with channels on a non-channel dim")
        lbl = x.dim_labels(1) if x.varies(1) else None
        if lbl is not None:
            for p, role in ((w, "affine"), (b, "affine"), (rm, "stat"), (rv, "stat")):
                if param_fqn(p) is not None:
                    g.assign(param_fqn(p), 0, lbl, role)
        affine = param_fqn(w) is not None and param_fqn(b) is not None
        out = same_as(g, n if name == "batch_norm" else None, x, nz=not affine) if name == "batch_norm" else \
            reshape_unlabelled(x, [L.as_size(s) for s in n.meta["val"][0].shape], nz=not affine)
    if name == "batch_norm":
        return out
    return [out, None, None]


@rule("layer_norm", "native_layer_norm")
def _layer_norm(g, n):
    x = lab(g, n.args[0])
    if x is None:
        return None if op_name(n) == "layer_norm" else [None, None, None]
    ns = list(n.args[1])
    w = n.args[2] if len(n.args) > 2 else None
    b = n.args[3] if len(n.args) > 3 else None
    nd = x.ndim
    normed = list(range(nd - len(ns), nd))
    if any(x.varies(d) for d in range(nd) if d not in normed):
        raise LabelError("layer norm over non-channel dims of pruned channels")
    if any(x.varies(d) for d in normed):
        if len(ns) != 1:
            raise LabelError("layer norm over several dims including channels")
        if x.nz:
            raise LabelError("pruned channels are not zero before LayerNorm (its statistics would change)")
        lbl = x.dim_labels(nd - 1)
        for p in (w, b):
            if param_fqn(p) is not None:
                g.assign(param_fqn(p), 0, lbl, "affine")
        g.ln_nodes.append(n.name)
    affine = param_fqn(w) is not None and param_fqn(b) is not None
    out = x.copy(nz=not affine)
    return out if op_name(n) == "layer_norm" else [out, None, None]


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
    if keep:
        return same(g, n)
    factors, pieces = [], []
    for d in range(x.ndim):
        if d in dims:
            continue
        factors.append(list(x.factors[d]))
        pieces.extend(x.arr.shape[a] for a in x.axes(d))
    return Lab(factors, x.arr.reshape(pieces), x.nz)


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
    for d in other:
        if common[d] > 1:
            ref = next(a for a in full if (a >= 0).any())
            for t, a in zip(tensors, full):
                if (a < 0).all():
                    g.block(ref, f"concat '{n.name}' at {where(n)} joins pruned channels with "
                                 f"unprunable ones of '{t.name}'")
                else:
                    g.unify(np.take(ref, [0], axis=dim), np.take(a, [0], axis=dim))
    out = np.concatenate(full, axis=dim)
    factors = [[out_shape[d]] for d in range(nd)]
    return Lab(factors, out, any(x.nz for x in labs_ if x is not None))


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
        raise LabelError("split of a factored channel dim")
    lbl = x.dim_labels(dim)
    ax = x.axes(dim)[0]
    res, start = [], 0
    for o in outs:
        sz = 1 if name == "unbind" else int(o.shape[dim])
        part = np.take(x.arr, np.arange(start, start + sz), axis=ax)
        start += sz
        factors = [list(f) for f in x.factors]
        factors[dim] = [sz]
        lb = Lab(factors, part, x.nz)
        res.append(_drop_dim(lb, dim) if name == "unbind" else lb)
    del lbl
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
    return None


@rule("sym_size")
def _sym_size(g, n):
    x = lab(g, n.args[0])
    if x is not None and x.varies(n.args[1] % x.ndim):
        raise LabelError("the size of a channel dim is read")
    return None


# --- the walk ---------------------------------------------------------------------------

def analyze(gm: fx.GraphModule) -> DepGraph:
    """Build the dependency graph of a captured (unlifted) GraphModule."""
    g = DepGraph(gm)
    for n in gm.graph.nodes:
        if n.op in ("placeholder", "get_attr", "call_module"):
            continue
        if n.op == "output":
            for a in _flat_nodes(n.args):
                g.block_lab(g.labs.get(a.name), f"channels reach the model output '{a.name}'")
            continue
        if n.op != "call_function":
            continue
        if not n.users and op_name(n) not in ("getitem",):
            continue  # dead code: removed by slim before rewriting
        name = op_name(n)
        fn = RULES.get(name)
        ins = [lab(g, a) for a in _flat_nodes(n.args) + _flat_nodes(n.kwargs)]
        labelled = [x for x in ins if x is not None]
        if name in PARAM_VIEW_OPS and not labelled and param_source(g, n.args[0]) is not None:
            g.param_views[n.name] = param_source(g, n.args[0])
        if fn is None:
            if labelled:
                for x in labelled:
                    g.block(x.arr, f"op {name} ('{n.name}') at {where(n)} has no channel rule")
            g.labs[n.name] = None
            continue
        try:
            g.labs[n.name] = fn(g, n)
        except LabelError as e:
            for x in labelled:
                g.block(x.arr, f"{name} ('{n.name}') at {where(n)}: {e}")
            g.labs[n.name] = None if not isinstance(n.meta.get("val"), (list, tuple)) else \
                [None] * len(n.meta["val"])
    return g


def _flat_nodes(args) -> list[fx.Node]:
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
