"""The explicit-SIMD inner loops of the block-sparse (BSR) kernels (Numba intrinsics emitting LLVM IR).

A block is R output rows x C input columns, its values stored column by column
(``values[(j*C + c)*R + r]``), so each of its columns is R adjacent values:

- ``block_tile_rows``: RR rows of one block row against a packed batch tile (SpMM): each
  column of a block loads its input vector once for RR products;
- ``block_vec_rows``: one block row against a vector (SpMV): with R >= 2 an R-lane vector of
  the block's column times the input value; with R == 1 a C-lane product of the block's
  values and C adjacent inputs, summed across lanes at the end.
- ``block_shifted_rows``: RR channels of an R x 1 block row times Q shifted input rows (the
  block conv): each block's input vectors are loaded once for RR products.

As in ``_simd.py``, edit this file only with ``kernels/__pycache__`` cleared (the on-disk
cache keys a kernel on ``_bsr_jit.py`` alone).
"""

from __future__ import annotations

from llvmlite import ir
from numba import types
from numba.extending import intrinsic

from ._simd import _clip_vector, _intrinsic_fn, _keep_vector_width, _plus_residual, _splat

# Accumulators of the SpMV, taking consecutive blocks in turn: each block's update waits on
# the previous one's otherwise (an FMA's latency per block).
VEC_CHAINS = 4


def _block_types_ok(values, indices, xf, bias, out, *ints) -> bool:
    """Float arrays of one dtype, integer indices, literal block sizes."""
    return (all(isinstance(a, types.Array) and a.dtype == values.dtype for a in (xf, bias, out))
            and isinstance(values, types.Array) and isinstance(values.dtype, types.Float)
            and isinstance(indices, types.Array) and isinstance(indices.dtype, types.Integer)
            and all(isinstance(i, types.IntegerLiteral) for i in ints))


def _unpack(context, builder, sig, args, out_pos: int):
    """The arrays (values, indices, input, bias, output at ``out_pos``), the float type, its
    and the index type's alignments, and the index widening of a block kernel's codegen."""
    arrays = tuple(context.make_array(sig.args[i])(context, builder, args[i]) for i in (0, 1, 4, 5, out_pos))
    fty = context.get_value_type(sig.args[0].dtype)
    i_align = context.get_abi_sizeof(context.get_value_type(sig.args[1].dtype))
    widen = builder.sext if sig.args[1].dtype.signed else builder.zext
    return arrays, fty, context.get_abi_sizeof(fty), i_align, widen


def _chained_loop(builder, name: str, lo, hi, zero_set, chains: int, body):
    """``for j in [lo, hi)``, blocks unrolled by ``chains`` into as many accumulator sets (each a
    list of values starting as ``zero_set``), the remainder one at a time into the first;
    ``body(j, set) -> set``. Returns the sets added together, element by element."""
    i64 = ir.IntType(64)
    entry = builder.block
    head, main, tail_head, tail, done = (builder.append_basic_block(f"{name}.{p}")
                                         for p in ("head", "main", "tail_head", "tail", "done"))
    main_end = builder.add(lo, builder.and_(builder.sub(hi, lo), ir.Constant(i64, ~(chains - 1))))
    builder.branch(head)
    builder.position_at_end(head)
    j = builder.phi(i64)
    sets = [[builder.phi(v.type) for v in zero_set] for _ in range(chains)]
    j.add_incoming(lo, entry)
    for group in sets:
        for p, v in zip(group, zero_set):
            p.add_incoming(v, entry)
    builder.cbranch(builder.icmp_unsigned("<", j, main_end), main, tail_head)
    builder.position_at_end(main)
    new = [body(builder.add(j, ir.Constant(i64, k)), group) for k, group in enumerate(sets)]
    j.add_incoming(builder.add(j, ir.Constant(i64, chains)), builder.block)
    for group, updated in zip(sets, new):
        for p, v in zip(group, updated):
            p.add_incoming(v, builder.block)
    builder.branch(head)
    builder.position_at_end(tail_head)
    jt = builder.phi(i64)
    first = [builder.phi(v.type) for v in zero_set]
    jt.add_incoming(j, head)
    for p, v in zip(first, sets[0]):
        p.add_incoming(v, head)
    builder.cbranch(builder.icmp_unsigned("<", jt, hi), tail, done)
    builder.position_at_end(tail)
    updated = body(jt, first)
    jt.add_incoming(builder.add(jt, ir.Constant(i64, 1)), builder.block)
    for p, v in zip(first, updated):
        p.add_incoming(v, builder.block)
    builder.branch(tail_head)
    builder.position_at_end(done)
    totals = list(first)
    for group in sets[1:]:
        totals = [builder.fadd(a, b) for a, b in zip(totals, group)]
    return totals


@intrinsic(prefer_literal=True)
def block_tile_rows(typingctx, values, indices, lo, hi, xf, bias, r0, rr0, acc, R, C, RR, width, chains):
    """For rr < RR: ``acc[rr*width : (rr+1)*width] = bias[r0 + rr] + sum_{j in [lo, hi)} sum_{c < C}
    values[(j*C + c)*R + rr0 + rr] * xf[(indices[j]*C + c)*width : +width]``.

    The BSR SpMM's inner loop: RR rows (of the R of a block, from row ``rr0`` of the block)
    against a packed batch tile; every block column's input vector is loaded once and
    used by RR products; ``chains`` sets of accumulators take consecutive blocks in turn
    (latency). ``R``, ``C``, ``RR``, ``width`` and ``chains`` (a power of two) are
    compile-time integers; ``lo``/``hi`` are unsigned block positions. No bounds checks.
    """
    if not _block_types_ok(values, indices, xf, bias, acc, R, C, RR, width, chains):
        return None
    if not all(isinstance(a, types.Integer) for a in (lo, hi, r0, rr0)):
        return None
    n_r, n_c, n_rr, n = R.literal_value, C.literal_value, RR.literal_value, width.literal_value
    n_chains = chains.literal_value
    if n_chains < 1 or n_chains & (n_chains - 1):
        return None

    def codegen(context, builder, sig, args):
        (val_a, idx_a, xf_a, bias_a, acc_a), fty, f_align, i_align, widen = _unpack(context, builder, sig, args, 8)
        vty = ir.VectorType(fty, n)
        _keep_vector_width(builder, n * f_align * 8)
        i64 = ir.IntType(64)
        lo_v, hi_v = (context.cast(builder, args[i], sig.args[i], types.uint64) for i in (2, 3))
        r0_v, rr0_v = (context.cast(builder, args[i], sig.args[i], types.int64) for i in (6, 7))
        flags = ("contract",)

        def body(j, accs):
            col = widen(builder.load(builder.gep(idx_a.data, [j]), align=i_align), i64)
            out = list(accs)
            for c in range(n_c):
                row = builder.add(builder.mul(col, ir.Constant(i64, n_c)), ir.Constant(i64, c))
                x_ptr = builder.gep(xf_a.data, [builder.mul(row, ir.Constant(i64, n))])
                xv = builder.load(builder.bitcast(x_ptr, vty.as_pointer()), align=f_align)
                base = builder.add(builder.mul(builder.add(builder.mul(j, ir.Constant(i64, n_c)),
                                                           ir.Constant(i64, c)), ir.Constant(i64, n_r)), rr0_v)
                for rr in range(n_rr):
                    d = builder.load(builder.gep(val_a.data, [builder.add(base, ir.Constant(i64, rr))]),
                                     align=f_align)
                    out[rr] = builder.fadd(out[rr], builder.fmul(xv, _splat(builder, d, vty), flags=flags),
                                           flags=flags)
            return out

        zero = ir.Constant(vty, None)
        accs = _chained_loop(builder, "block_tile_rows", lo_v, hi_v, [zero] * n_rr, n_chains, body)
        for rr, a in enumerate(accs):
            b = builder.load(builder.gep(bias_a.data, [builder.add(r0_v, ir.Constant(i64, rr))]), align=f_align)
            ptr = builder.bitcast(builder.gep(acc_a.data, [ir.Constant(i64, rr * n)]), vty.as_pointer())
            builder.store(builder.fadd(a, _splat(builder, b, vty)), ptr, align=f_align)
        return context.get_dummy_value()

    sig = types.void(values, indices, lo, hi, xf, bias, r0, rr0, acc, R, C, RR, width, chains)
    return sig, codegen


@intrinsic(prefer_literal=True)
def block_vec_rows(typingctx, values, indices, lo, hi, x, bias, r0, out, R, C):
    """``out[r0 + r] = bias[r0 + r] + sum_{j in [lo, hi)} sum_{c < C} values[(j*C + c)*R + r] *
    x[indices[j]*C + c]`` for r < R: one block row of a BSR against a vector (SpMV).

    With R >= 2 the accumulator is an R-lane vector (one load of a block column, one
    broadcast input); with R == 1 a C-lane vector of products of C adjacent inputs, summed
    across lanes at the end (reassociated). VEC_CHAINS accumulators take consecutive
    blocks in turn. No bounds checks.
    """
    if not _block_types_ok(values, indices, x, bias, out, R, C):
        return None
    if not all(isinstance(a, types.Integer) for a in (lo, hi, r0)):
        return None
    n_r, n_c = R.literal_value, C.literal_value

    def codegen(context, builder, sig, args):
        (val_a, idx_a, x_a, bias_a, out_a), fty, f_align, i_align, widen = _unpack(context, builder, sig, args, 7)
        i64 = ir.IntType(64)
        lanes = n_r if n_r > 1 else n_c
        vty = ir.VectorType(fty, lanes)
        _keep_vector_width(builder, lanes * f_align * 8)
        lo_v, hi_v = (context.cast(builder, args[i], sig.args[i], types.uint64) for i in (2, 3))
        r0_v = context.cast(builder, args[6], sig.args[6], types.int64)
        flags = ("contract",)

        def load_vec(arr, at):
            return builder.load(builder.bitcast(builder.gep(arr.data, [at]), vty.as_pointer()), align=f_align)

        def body(j, accs):
            (acc,) = accs
            col = builder.mul(widen(builder.load(builder.gep(idx_a.data, [j]), align=i_align), i64),
                              ir.Constant(i64, n_c))
            block = builder.mul(j, ir.Constant(i64, n_r * n_c))
            if n_r == 1:
                prod = builder.fmul(load_vec(val_a, block), load_vec(x_a, col), flags=flags)
                return [builder.fadd(acc, prod, flags=flags)]
            for c in range(n_c):
                xv = builder.load(builder.gep(x_a.data, [builder.add(col, ir.Constant(i64, c))]), align=f_align)
                dv = load_vec(val_a, builder.add(block, ir.Constant(i64, c * n_r)))
                acc = builder.fadd(acc, builder.fmul(dv, _splat(builder, xv, vty), flags=flags), flags=flags)
            return [acc]

        (acc,) = _chained_loop(builder, "block_vec_rows", lo_v, hi_v, [ir.Constant(vty, None)], VEC_CHAINS, body)
        if n_r == 1:
            reduce = _intrinsic_fn(builder.module, f"llvm.vector.reduce.fadd.v{lanes}{fty.intrinsic_name}",
                                   ir.FunctionType(fty, [fty, vty]))
            b = builder.load(builder.gep(bias_a.data, [r0_v]), align=f_align)
            total = builder.call(reduce, [b, acc], fastmath=("reassoc",))
            builder.store(total, builder.gep(out_a.data, [r0_v]), align=f_align)
        else:
            total = builder.fadd(acc, load_vec(bias_a, r0_v))
            builder.store(total, builder.bitcast(builder.gep(out_a.data, [r0_v]), vty.as_pointer()), align=f_align)
        return context.get_dummy_value()

    return types.void(values, indices, lo, hi, x, bias, r0, out, R, C), codegen


@intrinsic(prefer_literal=True)
def block_shifted_rows(typingctx, values, offsets, lo, hi, xf, bias, base, row_stride, r0, rr0, acc, acc_at,
                       q_stride, r_stride, res, floor, ceiling, R, RR, Q, width):
    """For rr < RR, q < Q: ``acc[i : i + width] = clip(bias[r0 + rr] + sum_{j in [lo, hi)}
    values[j*R + rr0 + rr] * xf[base + q*row_stride + offsets[j] : +width] (+ res[i : i + width]))``
    with ``i = acc_at + rr*r_stride + q*q_stride``, clipped to [floor, ceiling] in registers and
    the residual ``res`` added only when it is not empty, as ``_simd.shifted_rows`` does.

    The block conv's inner loop (R x 1 blocks: R output channels share each (channel, tap)):
    RR of a block row's R channels times Q shifted input rows. Each block's Q input vectors
    are loaded once for RR products, so the RR*Q accumulators cost Q + RR loads per block
    against 2*Q per nonzero for the CSR conv (``shifted_rows``). ``R``, ``RR``, ``Q`` and
    ``width`` are compile-time integers; ``lo``/``hi`` are unsigned block positions. No bounds
    checks: callers guarantee every input vector and accumulator row lies inside its array.
    """
    ints = (base, row_stride, r0, rr0, acc_at, q_stride, r_stride)
    if not (_block_types_ok(values, offsets, xf, bias, acc, R, RR, Q, width)
            and isinstance(res, types.Array) and res.dtype == values.dtype and res.ndim == 1
            and all(isinstance(a, types.Integer) for a in (lo, hi, *ints))
            and all(isinstance(b, types.Float) for b in (floor, ceiling))):
        return None
    n_r, n_rr, n_q, n = R.literal_value, RR.literal_value, Q.literal_value, width.literal_value

    def codegen(context, builder, sig, args):
        (val_a, off_a, xf_a, bias_a, acc_a), fty, f_align, o_align, widen = _unpack(context, builder, sig, args, 10)
        vty = ir.VectorType(fty, n)
        _keep_vector_width(builder, n * f_align * 8)
        i64 = ir.IntType(64)
        lo_v, hi_v = (context.cast(builder, args[i], sig.args[i], types.uint64) for i in (2, 3))
        base_v, stride_v, r0_v, rr0_v, at_v, qs_v, rs_v = (context.cast(builder, args[i], sig.args[i], types.int64)
                                                           for i in (6, 7, 8, 9, 11, 12, 13))
        floor_v, ceiling_v = (_splat(builder, context.cast(builder, args[i], sig.args[i], sig.args[0].dtype), vty)
                              for i in (15, 16))
        row_base = [builder.add(base_v, builder.mul(stride_v, ir.Constant(i64, q))) for q in range(n_q)]
        flags = ("contract",)

        def body(j, accs):
            off = widen(builder.load(builder.gep(off_a.data, [j]), align=o_align), i64)
            xs = [builder.load(builder.bitcast(builder.gep(xf_a.data, [builder.add(row_base[q], off)]),
                                               vty.as_pointer()), align=f_align) for q in range(n_q)]
            first = builder.add(builder.mul(j, ir.Constant(i64, n_r)), rr0_v)
            out = list(accs)
            for rr in range(n_rr):
                d = _splat(builder, builder.load(builder.gep(val_a.data, [builder.add(first, ir.Constant(i64, rr))]),
                                                 align=f_align), vty)
                for q in range(n_q):
                    k = rr * n_q + q
                    out[k] = builder.fadd(out[k], builder.fmul(xs[q], d, flags=flags), flags=flags)
            return out

        zero = ir.Constant(vty, None)
        accs = _chained_loop(builder, "block_shifted_rows", lo_v, hi_v, [zero] * (n_rr * n_q), 1, body)
        totals, at = [], []
        for rr in range(n_rr):
            b = _splat(builder, builder.load(builder.gep(bias_a.data, [builder.add(r0_v, ir.Constant(i64, rr))]),
                                             align=f_align), vty)
            for q in range(n_q):
                at.append(builder.add(at_v, builder.add(builder.mul(rs_v, ir.Constant(i64, rr)),
                                                        builder.mul(qs_v, ir.Constant(i64, q)))))
                totals.append(builder.fadd(b, accs[rr * n_q + q]))
        totals = _plus_residual(context, builder, sig.args[14], args[14], totals, at, vty, f_align)
        for total, i in zip(totals, at):
            ptr = builder.bitcast(builder.gep(acc_a.data, [i]), vty.as_pointer())
            builder.store(_clip_vector(builder, total, floor_v, ceiling_v), ptr, align=f_align)
        return context.get_dummy_value()

    sig = types.void(values, offsets, lo, hi, xf, bias, base, row_stride, r0, rr0, acc, acc_at, q_stride, r_stride,
                     res, floor, ceiling, R, RR, Q, width)
    return sig, codegen
