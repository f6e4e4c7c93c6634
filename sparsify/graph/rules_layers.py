"""Channel rules of layers that create or consume channels: Linear (and Conv1D / x @ W),
convolution (grouped and depthwise), embedding, batch/layer norm, attention (matmul, SDPA).
"""

from __future__ import annotations

import numpy as np
from torch import fx

from sparsify.graph import labels as L
from sparsify.graph.depgraph import DepGraph, Fold, where
from sparsify.graph.labels import Lab, LabelError
from sparsify.graph.rules import lab, op_name, param_fqn, reshape_unlabelled, rule, same_as, shape


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
    if _transposed_param(b) is not None:  # x @ W.T (e.g. a tied embedding as output layer)
        return linear_like(g, n, a, _transposed_param(b), 0, None)
    if param_fqn(a) is not None:
        if lab(g, b) is not None:
            raise LabelError("matmul with a parameter on the left")
        return None
    return matmul_activations(g, n, a, b)


def _transposed_param(b) -> str | None:
    """fqn of a 2-D parameter W when `b` is W.t() / W.T / W.transpose(0, 1)."""
    if not (isinstance(b, fx.Node) and b.op == "call_function"):
        return None
    name = op_name(b)
    src = b.args[0] if b.args else None
    if param_fqn(src) is None or len(shape(src)) != 2:
        return None
    if name in ("t", "numpy_T") or (name == "transpose" and sorted(d % 2 for d in b.args[1:3]) == [0, 1]):
        return param_fqn(src)
    if name == "permute" and [d % 2 for d in b.args[1]] == [1, 0]:
        return param_fqn(src)
    return None


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
    factors = [list(f) for f in lv.factors]
    factors[nd - 2] = [shape(n)[nd - 2]]
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


@rule("group_norm")
def _group_norm(g, n):
    """GroupNorm: statistics per group of C/G channels, so whole groups are the unit."""
    x = lab(g, n.args[0])
    if x is None:
        return None
    if any(x.varies(d) for d in range(x.ndim) if d != 1):
        raise LabelError("group norm with channels on a non-channel dim")
    if not x.varies(1):
        return same_as(g, n, x)
    if x.nz:
        raise LabelError("pruned channels are not zero before GroupNorm (its statistics would change)")
    groups = int(n.args[1])
    w = n.args[2] if len(n.args) > 2 else None
    b = n.args[3] if len(n.args) > 3 else None
    lbl = x.dim_labels(1)
    per = len(lbl) // groups
    for j in range(groups):
        g.add_block("group", [lbl[j * per:(j + 1) * per]], f"group norm '{n.name}' at {where(n)}")
    for p in (w, b):
        if param_fqn(p) is not None:
            g.assign(param_fqn(p), 0, lbl, "affine")
    affine = param_fqn(w) is not None and param_fqn(b) is not None
    return same_as(g, n, x, nz=not affine)
