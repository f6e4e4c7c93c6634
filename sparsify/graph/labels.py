"""Channel labels of one tensor: which channel variable sits at which position.

A tensor that carries prunable channels gets a `Lab`. Every real dimension is a list of
*factors* (sizes whose product is the dimension's size; a reshape that splits a channel
dimension into heads × head_dim gives one real dimension two factors, a reshape that merges
batch and heads keeps both as factors of one dimension). `arr` has one axis per factor:
size 1 where the labels do not vary along that factor, otherwise the factor's size, and
holds channel-variable ids (-1: not a prunable channel). `nz` says whether a pruned channel
may be non-zero here even when all its producers are masked (after sigmoid, a shift...).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import sympy

class LabelError(Exception):
    """Channel labels cannot be carried through an op (the caller blocks the channels)."""


def as_size(s) -> int | sympy.Expr:
    """A tensor size from a FakeTensor shape entry: int when static, sympy expr otherwise."""
    if isinstance(s, int):
        return s
    expr = s if isinstance(s, sympy.Basic) else s.node.expr
    if expr.is_number:
        return int(expr)
    return expr


def is_static(s) -> bool:
    return isinstance(s, int)


def _prod(xs):
    p = 1
    for x in xs:
        p = p * x
    return p


@dataclass
class Lab:
    factors: list[list]
    arr: np.ndarray
    nz: bool | str = False  # False: zero; "const": a per-channel constant; True: unknown

    @property
    def ndim(self) -> int:
        return len(self.factors)

    def axes(self, d: int) -> list[int]:
        off = sum(len(f) for f in self.factors[:d])
        return list(range(off, off + len(self.factors[d])))

    def varies(self, d: int) -> bool:
        return any(self.arr.shape[a] > 1 for a in self.axes(d))

    def dim_labels(self, d: int) -> np.ndarray:
        """1-D labels along real dim d (which must be the only varying dim, or others broadcast)."""
        other = [a for a in range(self.arr.ndim) if a not in self.axes(d)]
        if any(self.arr.shape[a] > 1 for a in other):
            raise LabelError(f"labels of dim {d} also vary along other dims")
        sub = self.arr.reshape([self.arr.shape[a] for a in self.axes(d)])
        sizes = self.factors[d]
        if not all(is_static(s) for s in sizes):
            if sub.size == 1 and sub.reshape(-1)[0] < 0:
                return None
            raise LabelError(f"channel dim {d} has a dynamic size {sizes}")
        return np.broadcast_to(sub, [int(s) for s in sizes]).reshape(-1)

    def copy(self, nz: bool | None = None) -> Lab:
        return Lab([list(f) for f in self.factors], self.arr, self.nz if nz is None else nz)


def simple_lab(shape, dim: int, labels: np.ndarray, nz: bool = False) -> Lab:
    """A Lab for a tensor of `shape` labelled along `dim` only."""
    factors = [[as_size(s)] for s in shape]
    arr_shape = [1] * len(shape)
    arr_shape[dim] = len(labels)
    return Lab(factors, np.asarray(labels, dtype=np.int64).reshape(arr_shape), nz)


def permute(lab: Lab, perm: list[int]) -> Lab:
    """Labels after permuting real dims."""
    axes = [a for d in perm for a in lab.axes(d)]
    return Lab([list(lab.factors[d]) for d in perm], lab.arr.transpose(axes), lab.nz)


def _eq(a, b) -> bool:
    return sympy.simplify(sympy.sympify(a) - sympy.sympify(b)) == 0


def _ratio(a, b):
    return sympy.simplify(sympy.sympify(a) / sympy.sympify(b))


def reshape(lab: Lab, out_shape: list) -> Lab:
    """Labels after a reshape of the tensor to `out_shape` (sizes int or sympy)."""
    facs: list = []
    arr = lab.arr
    for f in lab.factors:
        facs.extend(f)
    arr_sizes = list(arr.shape)
    out_factors: list[list] = []
    out_arr_shape: list[int] = []
    i = 0
    for target in out_shape:
        acc = 1
        dim_f: list = []
        while not _eq(acc, target):
            if i >= len(facs):
                raise LabelError(f"reshape to {out_shape}: cannot match sizes")
            f = facs[i]
            need = _ratio(target, acc)
            q = _ratio(f, need)
            if not q.is_number and arr_sizes[i] == 1 and not _eq(q, 1) and sympy.fraction(q)[1] == 1 \
                    and sympy.fraction(need)[1] == 1:
                # an unlabelled product of dynamic sizes (batch x sequence) split back apart
                facs[i:i + 1] = [need, q]
                arr_sizes[i:i + 1] = [1, 1]
                continue
            if q.is_number and q.is_integer and q > 1:
                # split factor f into (need, q)
                if need.is_number and not need.is_integer:
                    raise LabelError(f"reshape to {out_shape}: dims do not nest (factor {f}, {need} needed)")
                need = int(need) if need.is_number else need
                q = int(q)
                if arr_sizes[i] > 1 and not is_static(need):
                    raise LabelError(f"reshape to {out_shape}: channel factor {f} split dynamically")
                facs[i:i + 1] = [need, q]
                arr_sizes[i:i + 1] = [need, q] if arr_sizes[i] > 1 else [1, 1]
                continue
            dim_f.append(f)
            out_arr_shape.append(arr_sizes[i])
            acc = acc * f
            i += 1
        out_factors.append(dim_f)
    while i < len(facs):  # trailing size-1 factors
        if not _eq(facs[i], 1):
            raise LabelError(f"reshape to {out_shape}: sizes left over")
        if out_factors:
            out_factors[-1].append(1)
            out_arr_shape.append(1)
        i += 1
    return Lab(out_factors, arr.reshape(out_arr_shape), lab.nz)


def align(lab: Lab | None, out_factors: list[list], in_shape: list) -> np.ndarray:
    """`lab`'s arr broadcast to the factorisation of an elementwise op's output.

    `in_shape` is the operand's shape (right-aligned against the output)."""
    nd = len(out_factors)
    if lab is None:
        return np.full([1] * sum(len(f) for f in out_factors), -1, dtype=np.int64)
    off = nd - lab.ndim
    pieces = []
    for d in range(nd):
        k = d - off
        nfac = len(out_factors[d])
        if k < 0 or _eq(in_shape[k], 1):
            if k >= 0 and lab.varies(k):
                raise LabelError("broadcast of a labelled size-1 dim")
            pieces.append([1] * nfac)
            continue
        if len(lab.factors[k]) == nfac and all(_eq(a, b) for a, b in zip(lab.factors[k], out_factors[d])):
            pieces.append([lab.arr.shape[a] for a in lab.axes(k)])
        elif not lab.varies(k):
            pieces.append([1] * nfac)
        else:
            raise LabelError("operands factor a channel dim differently")
    shape = [s for p in pieces for s in p]
    return lab.arr.reshape(shape)

