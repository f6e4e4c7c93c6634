"""The explicit-SIMD inner loops of the kernels (Numba intrinsics emitting LLVM IR).

Numba leaves LLVM's SLP vectorizer off, and the loop vectorizer prefers to vectorize a
sum over nonzeros with gathers; both defeat an ``acc[t] += v * x[c, t]`` tile loop, and
an accumulator array in memory makes every update wait on a store-to-load forward. Each
intrinsic emits a whole row loop with its accumulators as LLVM vector values:

- ``tile_row``: one CSR row against a packed batch tile (SpMM);
- ``gather_dot``: one CSR row against a vector, 512-bit masked gathers (SpMV);
- ``shifted_rows``: one output channel, SHIFTED_ROWS output rows (direct conv);
- ``store_columns``: the linear SpMM's transposing store of its accumulated rows;
- ``row_taps`` (``strided_taps`` at any stride and dilation): a row step of output pixels
  of 16 channels of the channel-blocked depthwise conv, ``planes_to_pixels`` and
  ``pixels_to_planes`` its transposes between NCHW planes and pixel vectors.

Numba's on-disk cache keys a kernel on its own source file (``_jit.py``) only: after
editing this file, delete ``kernels/__pycache__/*.nbi``/``*.nbc`` (or touch ``_jit.py``),
or the kernels keep running the old code.
"""

from __future__ import annotations

from llvmlite import ir
from numba import types
from numba.extending import intrinsic


# Widest batch tile for which ``tile_row`` loads its column indices a 64-bit word at a
# time: it made batch 8 ~12% faster (4096^2 at 90%, 2 threads); at tile 32 the extra
# shifts cost ~5%.
PACKED_INDEX_WIDTH = 16


@intrinsic(prefer_literal=True)
def tile_row(typingctx, data, indices, lo, hi, xf, init, acc, width):
    """``acc[:width] = init + sum_{j in [lo, hi)} data[j] * xf[indices[j]*width : +width]``.

    The SpMM inner loop for one CSR row and one packed batch tile (``xf`` is one packed
    (in, width) block, flattened). Its four accumulator vectors stay in registers:
    nonzeros ``lo + 4i + k`` go to accumulator ``k``, the remainder to accumulator 0,
    and the result is ``init + ((a0 + a1) + (a2 + a3))``. ``width`` is a compile-time
    integer constant; ``lo``/``hi`` are unsigned positions. No bounds checks: callers
    guarantee every ``indices[j]*width + width <= len(xf)`` and ``width <= len(acc)``.
    """
    if not _row_loop_types_ok(data, indices, xf, acc, width):
        return None
    n = width.literal_value
    chains = 4

    def codegen(context, builder, sig, args):
        data_a, idx_a, xf_a, acc_a, vty, f_align, i_align, widen, lo, hi = \
            _row_loop_args(context, builder, sig, args, n, acc_at=6)
        i64 = ir.IntType(64)
        zero = ir.Constant(vty, None)
        flags = ("contract",)

        def update(accum, j, col=None):
            if col is None:
                col = widen(builder.load(builder.gep(idx_a.data, [j]), align=i_align), i64)
            x_ptr = builder.gep(xf_a.data, [builder.mul(col, ir.Constant(i64, n))])
            xv = builder.load(builder.bitcast(x_ptr, vty.as_pointer()), align=f_align)
            d = builder.load(builder.gep(data_a.data, [j]), align=f_align)
            return builder.fadd(accum, builder.fmul(xv, _splat(builder, d, vty), flags=flags), flags=flags)

        entry, main_head, main_body, tail_head, tail_body, done, main_end = \
            _loop_blocks(builder, "tile_row", lo, hi, chains)

        builder.position_at_end(main_head)
        j = builder.phi(i64)
        accs = [builder.phi(vty) for _ in range(chains)]
        j.add_incoming(lo, entry)
        for a in accs:
            a.add_incoming(zero, entry)
        builder.cbranch(builder.icmp_unsigned("<", j, main_end), main_body, tail_head)

        builder.position_at_end(main_body)
        cols = [None] * chains
        if n <= PACKED_INDEX_WIDTH and i_align < 8:
            # The chains' column indices come from whole words (one 64-bit load for four
            # 16-bit indices), split by shifts: a load less per nonzero. A word never
            # reaches past the chains' last index.
            ity = ir.IntType(8 * i_align)
            wty = ir.IntType(min(64, 8 * i_align * chains))
            per_word = wty.width // ity.width
            for k in range(chains):
                if k % per_word == 0:
                    at = builder.gep(idx_a.data, [builder.add(j, ir.Constant(i64, k))])
                    word = builder.load(builder.bitcast(at, wty.as_pointer()), align=i_align)
                part = builder.lshr(word, ir.Constant(wty, ity.width * (k % per_word)))
                cols[k] = widen(builder.trunc(part, ity), i64)
        updated = [update(a, builder.add(j, ir.Constant(i64, k)), cols[k]) for k, a in enumerate(accs)]
        j.add_incoming(builder.add(j, ir.Constant(i64, chains)), builder.block)
        for a, u in zip(accs, updated):
            a.add_incoming(u, builder.block)
        builder.branch(main_head)

        builder.position_at_end(tail_head)
        jt = builder.phi(i64)
        a0 = builder.phi(vty)
        jt.add_incoming(j, main_head)
        a0.add_incoming(accs[0], main_head)
        builder.cbranch(builder.icmp_unsigned("<", jt, hi), tail_body, done)

        builder.position_at_end(tail_body)
        a0.add_incoming(update(a0, jt), builder.block)
        jt.add_incoming(builder.add(jt, ir.Constant(i64, 1)), builder.block)
        builder.branch(tail_head)

        builder.position_at_end(done)
        total = builder.fadd(builder.fadd(a0, accs[1]), builder.fadd(accs[2], accs[3]))
        init = context.cast(builder, args[5], sig.args[5], sig.args[0].dtype)
        out_ptr = builder.bitcast(acc_a.data, vty.as_pointer())
        builder.store(builder.fadd(_splat(builder, init, vty), total), out_ptr, align=f_align)
        return context.get_dummy_value()

    return types.void(data, indices, lo, hi, xf, init, acc, width), codegen


def _row_loop_types_ok(data, indices, xf, acc, width, *offsets) -> bool:
    """The typing shared by ``tile_row`` and ``shifted_rows``: float arrays of one dtype,
    integer indices, integer scalar offset terms and a literal ``width``."""
    return (isinstance(width, types.IntegerLiteral)
            and all(isinstance(a, types.Array) and a.dtype == data.dtype for a in (data, xf, acc))
            and isinstance(indices, types.Array) and isinstance(indices.dtype, types.Integer)
            and all(isinstance(o, types.Integer) for o in offsets))


def _row_loop_args(context, builder, sig, args, n: int, acc_at: int):
    """The operands shared by ``tile_row`` and ``shifted_rows`` (data, indices, lo, hi and
    the input array first; the accumulator array at position ``acc_at``).

    Returns the data, index, input and accumulator array structs, the ``n``-lane vector
    type, the value and index alignments, the index widening op, and ``lo``/``hi`` as
    uint64.
    """
    arrays = [context.make_array(sig.args[i])(context, builder, args[i]) for i in (0, 1, 4, acc_at)]
    fty = context.get_value_type(sig.args[0].dtype)
    f_align = context.get_abi_sizeof(fty)
    i_align = context.get_abi_sizeof(context.get_value_type(sig.args[1].dtype))
    widen = builder.sext if sig.args[1].dtype.signed else builder.zext
    _keep_vector_width(builder, n * f_align * 8)
    bounds = [context.cast(builder, args[i], sig.args[i], types.uint64) for i in (2, 3)]
    return (*arrays, ir.VectorType(fty, n), f_align, i_align, widen, *bounds)


def _loop_blocks(builder, name: str, lo, hi, step: int):
    """Blocks of a loop over [lo, hi) unrolled by ``step`` (a power of two), then a tail.

    Returns the current (entry) block; the main loop's head and body, the tail's head
    and body, and the exit block (all new, named after ``name``); and the end of the
    unrolled part, ``lo + ((hi - lo) & ~(step - 1))``. Leaves the builder branching from
    the entry block to the main head.
    """
    entry = builder.block
    blocks = [builder.append_basic_block(f"{name}.{part}")
              for part in ("main", "main_body", "tail", "tail_body", "done")]
    i64 = ir.IntType(64)
    main_end = builder.add(lo, builder.and_(builder.sub(hi, lo), ir.Constant(i64, ~(step - 1))))
    builder.branch(blocks[0])
    return (entry, *blocks, main_end)


def _keep_vector_width(builder, bits: int) -> None:
    """Keep ``bits``-wide vectors legal in the enclosing function.

    LLVM otherwise splits 512-bit vectors on CPUs that prefer 256-bit ones; the inliner
    carries the attribute into the callers. llvmlite's AttributeSet.add only takes known
    keyword attributes, so the string attribute goes in through set.add; without it the
    code is still correct, just split into 256-bit halves.
    """
    attr = f'"min-legal-vector-width"="{bits}"'
    attrs = getattr(builder.function, "attributes", None)
    if bits > 256 and isinstance(attrs, set) and attr not in attrs:
        set.add(attrs, attr)


class _VectorGEP(ir.Instruction):
    """``getelementptr inbounds elem, ptr base, <n x iK> idx``: a vector of element
    pointers (llvmlite's ``gep`` only takes scalar indices). LLVM turns a masked gather
    through it into a base + scaled-index hardware gather."""

    def __init__(self, parent, base, elem, idx, typ):
        super().__init__(parent, typ, "getelementptr", [base, idx])
        self.elem = elem

    def descr(self, buf):
        base, idx = self.operands
        buf.append(f"getelementptr inbounds {self.elem}, {base.type} {base.get_reference()}, "
                   f"{idx.type} {idx.get_reference()}"
                   f"{self._stringify_metadata(leading_comma=True)}\n")


def _intrinsic_fn(module, name: str, fnty):
    """The declaration of LLVM intrinsic ``name`` in ``module`` (declared once)."""
    return module.globals.get(name) or ir.Function(module, fnty, name)


def _splat(builder, value, vty):
    i32 = ir.IntType(32)
    v = builder.insert_element(ir.Constant(vty, ir.Undefined), value, ir.Constant(i32, 0))
    return builder.shuffle_vector(v, ir.Constant(vty, ir.Undefined),
                                  ir.Constant(ir.VectorType(i32, vty.count), [0] * vty.count))


def _clip_vector(builder, v, floor, ceiling):
    """``v`` below ``floor`` becomes ``floor``, then above ``ceiling`` becomes ``ceiling``:
    compare-and-select, not maxps/minps alone, so that a NaN stays NaN."""
    v = builder.select(builder.fcmp_ordered("<", v, floor), floor, v)
    return builder.select(builder.fcmp_ordered(">", v, ceiling), ceiling, v)


def _plus_residual(context, builder, res_type, res_arg, totals, positions, vty, f_align):
    """``totals[k] + res[positions[k]]`` (vectors of ``vty``) when the array ``res`` is not
    empty, else ``totals``: one branch on its size, so a kernel without a residual loads nothing."""
    res = context.make_array(res_type)(context, builder, res_arg)
    has = builder.icmp_unsigned("!=", res.nitems, ir.Constant(res.nitems.type, 0))
    before = builder.block
    with builder.if_then(has):
        added = [builder.fadd(t, builder.load(builder.bitcast(builder.gep(res.data, [at]), vty.as_pointer()),
                                              align=f_align)) for t, at in zip(totals, positions)]
        then = builder.block
    return _merge(builder, vty, totals, before, added, then)


def _merge(builder, vty, old, old_block, new, new_block):
    """Per pair, a phi of ``old`` (reaching from ``old_block``) and ``new`` (from ``new_block``):
    the values after a branch that may or may not have run."""
    merged = []
    for a, b in zip(old, new):
        phi = builder.phi(vty)
        phi.add_incoming(a, old_block)
        phi.add_incoming(b, new_block)
        merged.append(phi)
    return merged


def _masked_gather(builder, base, fty, idx, mask):
    """``base[idx[k]]`` for the lanes of ``mask`` (zero elsewhere): one hardware gather.

    ``base`` points at ``fty`` elements, ``idx`` is a vector of integer element indices
    with as many lanes as ``mask``.
    """
    n = mask.type.count
    i32 = ir.IntType(32)
    vty, pvty = ir.VectorType(fty, n), ir.VectorType(base.type, n)
    gather = _intrinsic_fn(builder.module, f"llvm.masked.gather.v{n}{fty.intrinsic_name}.v{n}p0",
                           ir.FunctionType(vty, [pvty, i32, mask.type, vty]))
    ptrs = _VectorGEP(builder.block, base, fty, idx, pvty)
    builder._insert(ptrs)
    align = ir.Constant(i32, int(fty.intrinsic_name[1:]) // 8)
    return builder.call(gather, [ptrs, align, mask, ir.Constant(vty, None)])


@intrinsic
def gather_dot(typingctx, data, indices, lo, hi, x):
    """``sum_{j in [lo, hi)} data[j] * x[indices[j]]`` in 512-bit masked-gather chunks.

    The SpMV inner loop for one CSR row: each chunk of 16 float32 (8 float64) nonzeros
    is one load of data and indices and one gather from ``x``. Whole pairs of chunks go
    unmasked into two accumulators (two gathers in flight); the rest are masked, the
    last one's mask covering only ``[j, hi)``, so nothing outside the row is read.
    Partial sums accumulate per lane and are added up at the end (reassociated). ``lo``/``hi``
    are unsigned positions. No bounds checks: callers guarantee ``hi <= len(data)`` and
    every index is inside ``x``.
    """
    if not (isinstance(data, types.Array) and isinstance(x, types.Array)
            and data.dtype == x.dtype and isinstance(data.dtype, types.Float)):
        return None
    if not (isinstance(indices, types.Array) and isinstance(indices.dtype, types.Integer)):
        return None

    def codegen(context, builder, sig, args):
        data_a, idx_a, x_a = (context.make_array(sig.args[i])(context, builder, args[i])
                              for i in (0, 1, 4))
        fty = context.get_value_type(sig.args[0].dtype)
        ity = context.get_value_type(sig.args[1].dtype)
        fsz, isz = context.get_abi_sizeof(fty), context.get_abi_sizeof(ity)
        n = 64 // fsz  # lanes in a 512-bit vector
        i1, i32, i64 = ir.IntType(1), ir.IntType(32), ir.IntType(64)
        vty, vity, mty = ir.VectorType(fty, n), ir.VectorType(ity, n), ir.VectorType(i1, n)
        _keep_vector_width(builder, 512)
        mod = builder.module
        fname, iname = f"v{n}f{fsz * 8}", f"v{n}i{isz * 8}"
        load_f = _intrinsic_fn(mod, f"llvm.masked.load.{fname}.p0",
                               ir.FunctionType(vty, [data_a.data.type, i32, mty, vty]))
        load_i = _intrinsic_fn(mod, f"llvm.masked.load.{iname}.p0",
                               ir.FunctionType(vity, [idx_a.data.type, i32, mty, vity]))
        reduce = _intrinsic_fn(mod, f"llvm.vector.reduce.fadd.{fname}",
                               ir.FunctionType(fty, [fty, vty]))
        lo = context.cast(builder, args[2], sig.args[2], types.uint64)
        hi = context.cast(builder, args[3], sig.args[3], types.uint64)
        lanes = ir.Constant(ir.VectorType(i64, n), list(range(n)))
        zero = ir.Constant(vty, None)
        flags = ("contract",)

        def chunk(acc, j, mask):
            cols = builder.call(load_i, [builder.gep(idx_a.data, [j]), ir.Constant(i32, isz), mask,
                                         ir.Constant(vity, None)])
            if isz < 4:  # 32-bit lane offsets give the hardware gather its base + index form
                v32 = ir.VectorType(i32, n)
                cols = builder.sext(cols, v32) if sig.args[1].dtype.signed else builder.zext(cols, v32)
            xv = _masked_gather(builder, x_a.data, fty, cols, mask)
            dv = builder.call(load_f, [builder.gep(data_a.data, [j]), ir.Constant(i32, fsz), mask,
                                       zero])
            return builder.fadd(acc, builder.fmul(dv, xv, flags=flags), flags=flags)

        # Whole pairs of chunks with an all-true mask into two accumulators, then the
        # remaining (at most two, the last partial) chunks masked into the first.
        entry, main_head, main_body, tail_head, tail_body, done, main_end = \
            _loop_blocks(builder, "gather_dot", lo, hi, 2 * n)
        builder.position_at_end(main_head)
        j = builder.phi(i64)
        first, second = builder.phi(vty), builder.phi(vty)
        for phi, start in ((j, lo), (first, zero), (second, zero)):
            phi.add_incoming(start, entry)
        builder.cbranch(builder.icmp_unsigned("<", j, main_end), main_body, tail_head)

        builder.position_at_end(main_body)
        everything = ir.Constant(mty, [1] * n)
        first.add_incoming(chunk(first, j, everything), builder.block)
        second.add_incoming(chunk(second, builder.add(j, ir.Constant(i64, n)), everything),
                            builder.block)
        j.add_incoming(builder.add(j, ir.Constant(i64, 2 * n)), builder.block)
        builder.branch(main_head)

        builder.position_at_end(tail_head)
        jt, tail_acc = builder.phi(i64), builder.phi(vty)
        jt.add_incoming(j, main_head)
        tail_acc.add_incoming(first, main_head)
        builder.cbranch(builder.icmp_unsigned("<", jt, hi), tail_body, done)

        builder.position_at_end(tail_body)
        mask = builder.icmp_unsigned("<", lanes, _splat(builder, builder.sub(hi, jt),
                                                        ir.VectorType(i64, n)))
        tail_acc.add_incoming(chunk(tail_acc, jt, mask), builder.block)
        jt.add_incoming(builder.add(jt, ir.Constant(i64, n)), builder.block)
        builder.branch(tail_head)

        builder.position_at_end(done)
        return builder.call(reduce, [ir.Constant(fty, -0.0), builder.fadd(tail_acc, second)],
                            fastmath=("reassoc",))

    return data.dtype(data, indices, lo, hi, x), codegen


@intrinsic
def store_columns(typingctx, acc, tile, rows, cols, out, pos, stride):
    """``out[pos + t*stride + i] = acc[i*tile + t]`` for ``t < cols``, ``i < rows``.

    The linear SpMM's transposing store: ``acc`` holds ``rows`` accumulated output rows
    of ``tile`` batch columns each; every batch column becomes one run of ``rows``
    adjacent outputs, read with a 512-bit gather from ``acc`` (in L1) and written with
    one masked vector store, instead of ``rows`` scalar copies. ``rows`` is at most
    STORE_ROWS. No bounds checks: callers guarantee both index ranges are inside.
    """
    if not (isinstance(acc, types.Array) and isinstance(out, types.Array)
            and acc.dtype == out.dtype and isinstance(acc.dtype, types.Float)):
        return None
    if not all(isinstance(a, types.Integer) for a in (tile, rows, cols, pos, stride)):
        return None

    def codegen(context, builder, sig, args):
        acc_a = context.make_array(sig.args[0])(context, builder, args[0])
        out_a = context.make_array(sig.args[4])(context, builder, args[4])
        tile_v, rows_v, cols_v, pos_v, stride_v = (
            context.cast(builder, args[i], sig.args[i], types.int64) for i in (1, 2, 3, 5, 6))
        fty = context.get_value_type(sig.args[0].dtype)
        fsz = context.get_abi_sizeof(fty)
        n = 64 // fsz
        i1, i32, i64 = ir.IntType(1), ir.IntType(32), ir.IntType(64)
        vty, mty, v64 = ir.VectorType(fty, n), ir.VectorType(i1, n), ir.VectorType(i64, n)
        _keep_vector_width(builder, 512)
        store = _intrinsic_fn(builder.module, f"llvm.masked.store.v{n}f{fsz * 8}.p0",
                              ir.FunctionType(ir.VoidType(), [vty, out_a.data.type, i32, mty]))
        entry = builder.block
        head = builder.append_basic_block("store_columns.head")
        body = builder.append_basic_block("store_columns.body")
        done = builder.append_basic_block("store_columns.done")
        # Per group of n rows: the row offsets i*tile and the mask i < rows (loop-invariant).
        groups = []
        for g in range(-(-STORE_ROWS // n)):
            lane_rows = ir.Constant(v64, [g * n + k for k in range(n)])
            groups.append((g, builder.mul(lane_rows, _splat(builder, tile_v, v64)),
                           builder.icmp_signed("<", lane_rows, _splat(builder, rows_v, v64))))
        builder.branch(head)
        builder.position_at_end(head)
        t = builder.phi(i64)
        t.add_incoming(ir.Constant(i64, 0), entry)
        builder.cbranch(builder.icmp_signed("<", t, cols_v), body, done)
        builder.position_at_end(body)
        base = builder.add(pos_v, builder.mul(t, stride_v))
        for g, offsets, mask in groups:
            v = _masked_gather(builder, acc_a.data, fty, builder.add(offsets, _splat(builder, t, v64)),
                               mask)
            dst = builder.gep(out_a.data, [builder.add(base, ir.Constant(i64, g * n))])
            builder.call(store, [v, dst, ir.Constant(i32, fsz), mask])
        t.add_incoming(builder.add(t, ir.Constant(i64, 1)), builder.block)
        builder.branch(head)
        builder.position_at_end(done)
        return context.get_dummy_value()

    return types.void(acc, tile, rows, cols, out, pos, stride), codegen


# Most rows ``store_columns`` takes (the SpMM's OUT_ROWS).
STORE_ROWS = 16


# Output rows computed together by ``shifted_rows``.
SHIFTED_ROWS = 4


@intrinsic(prefer_literal=True)
def shifted_rows(typingctx, data, offsets, lo, hi, xf, base, row_stride, init, acc, acc_at, acc_stride, res,
                 floor, ceiling, width):
    """For q < SHIFTED_ROWS: ``acc[i_q : i_q + width] = clip(init + sum_{j in [lo, hi)} data[j] *
    xf[p_jq : p_jq + width] (+ res[i_q : i_q + width]))`` with ``i_q = acc_at + q*acc_stride``,
    ``p_jq = base + q*row_stride + offsets[j]``, clipped to [floor, ceiling] (a NaN stays NaN;
    -inf and inf leave that side open). The residual ``res`` (same dtype) is added, in
    registers, only when it is not empty: a residual Add (+ Relu) costs no pass of its own.

    The direct conv's inner loop: SHIFTED_ROWS output rows of one channel share each
    nonzero's weight and offset loads. Two sets of SHIFTED_ROWS accumulator vectors
    (nonzeros alternate between them, the remainder goes to the first) stay in
    registers and are added at the end, clipped there (ReLU and ReLU6 cost no pass of their
    own over the output). ``width`` is a compile-time integer constant; ``lo``/``hi`` are
    unsigned positions; ``acc_at`` and ``acc_stride`` let the rows land straight in an
    output array (an output row apart) instead of a buffer. No bounds checks: callers
    guarantee every ``p_jq + width <= len(xf)`` and ``acc_at + (SHIFTED_ROWS-1)*acc_stride +
    width <= len(acc)``.
    """
    if not (_row_loop_types_ok(data, offsets, xf, acc, width, base, row_stride, acc_at, acc_stride)
            and isinstance(res, types.Array) and res.dtype == data.dtype and res.ndim == 1
            and all(isinstance(b, types.Float) for b in (floor, ceiling))):
        return None
    n, rows = width.literal_value, SHIFTED_ROWS

    def codegen(context, builder, sig, args):
        data_a, off_a, xf_a, acc_a, vty, f_align, o_align, widen, lo, hi = \
            _row_loop_args(context, builder, sig, args, n, acc_at=8)
        base, stride = (context.cast(builder, args[i], sig.args[i], types.int64) for i in (5, 6))
        i64 = ir.IntType(64)
        row_base = [builder.add(base, builder.mul(stride, ir.Constant(i64, q))) for q in range(rows)]
        zero = ir.Constant(vty, None)
        flags = ("contract",)

        def update(accums, j):
            off = widen(builder.load(builder.gep(off_a.data, [j]), align=o_align), i64)
            d = _splat(builder, builder.load(builder.gep(data_a.data, [j]), align=f_align), vty)
            out = []
            for q, a in enumerate(accums):
                x_ptr = builder.gep(xf_a.data, [builder.add(row_base[q], off)])
                xv = builder.load(builder.bitcast(x_ptr, vty.as_pointer()), align=f_align)
                out.append(builder.fadd(a, builder.fmul(xv, d, flags=flags), flags=flags))
            return out

        entry, main_head, main_body, tail, tail_body, done, main_end = \
            _loop_blocks(builder, "shifted_rows", lo, hi, 2)

        builder.position_at_end(main_head)
        j = builder.phi(i64)
        first = [builder.phi(vty) for _ in range(rows)]
        second = [builder.phi(vty) for _ in range(rows)]
        j.add_incoming(lo, entry)
        for a in first + second:
            a.add_incoming(zero, entry)
        builder.cbranch(builder.icmp_unsigned("<", j, main_end), main_body, tail)

        builder.position_at_end(main_body)
        new_first = update(first, j)
        new_second = update(second, builder.add(j, ir.Constant(i64, 1)))
        for a, u in zip(first + second, new_first + new_second):
            a.add_incoming(u, builder.block)
        j.add_incoming(builder.add(j, ir.Constant(i64, 2)), builder.block)
        builder.branch(main_head)

        builder.position_at_end(tail)  # at most one nonzero left
        builder.cbranch(builder.icmp_unsigned("<", j, hi), tail_body, done)
        builder.position_at_end(tail_body)
        last = update(first, j)
        builder.branch(done)

        builder.position_at_end(done)
        merged = []
        for q in range(rows):  # phis first in the block
            a = builder.phi(vty)
            a.add_incoming(first[q], tail)
            a.add_incoming(last[q], tail_body)
            merged.append(a)
        init, floor_v, ceiling_v = (_splat(builder, context.cast(builder, args[i], sig.args[i], sig.args[0].dtype), vty)
                                    for i in (7, 12, 13))
        acc_at, acc_stride = (context.cast(builder, args[i], sig.args[i], types.int64) for i in (9, 10))
        at = [builder.add(acc_at, builder.mul(acc_stride, ir.Constant(i64, q))) for q in range(rows)]
        totals = [builder.fadd(init, builder.fadd(a, second[q])) for q, a in enumerate(merged)]
        totals = _plus_residual(context, builder, sig.args[11], args[11], totals, at, vty, f_align)
        for q, total in enumerate(totals):
            ptr = builder.gep(acc_a.data, [at[q]])
            builder.store(_clip_vector(builder, total, floor_v, ceiling_v), builder.bitcast(ptr, vty.as_pointer()),
                          align=f_align)
        return context.get_dummy_value()

    return (types.void(data, offsets, lo, hi, xf, base, row_stride, init, acc, acc_at, acc_stride, res, floor,
                       ceiling, width), codegen)


def _counted_loop_head(builder, start, end, carried, pred, body, exit_block):
    """Fill the current (loop head) block: phis for an i64 counter entered as ``start``
    and for each ``carried`` value, all entered from block ``pred``, then a branch to
    ``body`` while the counter is below ``end`` (signed), else to ``exit_block``.

    Returns the counter phi and the list of carried phis; the caller adds the incoming
    values of the back edges.
    """
    counter = builder.phi(start.type)
    phis = [builder.phi(v.type) for v in carried]
    for node, value in zip([counter] + phis, [start] + list(carried)):
        node.add_incoming(value, pred)
    builder.cbranch(builder.icmp_signed("<", counter, end), body, exit_block)
    return counter, phis


# Window steps of ``permute_dot`` (the sliced-ELL layout's geometries, ``ell.GEOMETRIES``),
# by (lanes, window width): pair p's window is the width's columns from ``segments[p] *
# step``; offsets at or above the width mark padding lanes.
# 16 lanes, 32 columns (AVX-512): a window in two zmm registers, one vpermi2ps per slot.
# 16 lanes, 64 columns (AVX-512): four registers, two vpermi2ps and a blend per slot; the
# wider window pads less (uniform 90% sparsity fills 75% of the lanes with windows every
# 32 columns, against 50% and 64% for 32-column ones), which pays where the slots come
# from L3 (benchmarks/README.md, "Wider windows").
# 8 lanes, 16 columns (AVX2): two ymm registers, two vpermps and a blend; windows every 4
# columns, because the flat kernel pays nothing per window and finer starts pad less
# (benchmarks/README.md, "AVX2 hosts"). ell.GEOMETRIES takes these.
PERMUTE_GEOMETRY = {(16, 32): 16, (16, 64): 32, (8, 16): 4}
PERMUTE_LANES, PERMUTE_SEGMENT = 16, 32
PERMUTE_STEP = PERMUTE_GEOMETRY[PERMUTE_LANES, PERMUTE_SEGMENT]
# A lane's offset byte, by lanes, and the byte of a padding lane. 16: the column in the
# window; padding 255 (at or above the window width, which the kernel masks). 8: the
# column's bits 0-2 (the vpermps index) with its bit 3 moved to bit 7, the sign the blend
# between the two table registers reads, which saves a shift per slot (4096^2 at 90%:
# 11-17% with finite inputs, benchmarks/README.md, "AVX2 hosts"); padding 8, bit 3
# alone, which one shift turns into a sign where padding lanes must be masked.
PERMUTE_PADDING = {16: 255, 8: 8}
# Most input vectors one ``permute_dot`` call takes (two table registers each).
MAX_PERMUTE_VECTORS = 4


def _expand_table(builder, lanes: int):
    """An internal constant table: row m (an 8-bit lane mask) holds, per lane, the lane's
    position among the set bits of m (0 where unset), i.e. the ``vpermps`` indices that
    expand packed values to the lanes of m (AVX2 has no ``vexpandps``)."""
    mod = builder.module
    name = f"sparsify.expand{lanes}"
    table = mod.globals.get(name)
    if table is None:
        rows = []
        for m in range(1 << lanes):
            rows += [bin(m & ((1 << lane) - 1)).count("1") if m >> lane & 1 else 0 for lane in range(lanes)]
        ty = ir.ArrayType(ir.IntType(32), len(rows))
        table = ir.GlobalVariable(mod, ty, name)
        table.global_constant = True
        table.linkage = "internal"
        table.initializer = ir.Constant(ty, rows)
    return table


@intrinsic(prefer_literal=True)
def permute_dot(typingctx, values, offsets, segments, slot_ptr, value_start, plo, phi, x, xstride, acc,
                compact, nvec, prefetch, lanes, segment, flat, finite):
    """For v < nvec: ``acc[v*L + l] = sum_{p in [plo, phi)} sum_{k in slots of p} w(k, l) *
    x[v*xstride + segments[p]*S + offsets[k*L + l]]`` over the lanes that are not
    padding, for ``lanes`` L and ``segment`` W (window step S): 16 and 32 (S 16) or 64 (S
    32) on AVX-512, 8 and 16 (S 4) on AVX2, see PERMUTE_GEOMETRY; offsets are coded as
    PERMUTE_PADDING says.

    The sliced-ELL SpMV's inner loop for one L-row group (``ell.py``) and ``nvec`` input
    vectors: per stored (group, window) pair, each vector's W inputs are loaded into
    W/16 or two registers once; per slot the weights and offsets are read once and each
    vector takes one permute (``vpermi2ps``; with 64 columns two and a blend on the
    offset's bit 5; with 8 lanes two ``vpermps`` and a blend on the offset's sign), padding
    lanes zeroed unless ``finite``, and one FMA. With one vector two
    accumulators alternate slot by slot; with several, each vector's own chain hides
    the FMA latency. ``compact``, ``nvec``, ``lanes`` and ``segment`` are compile-time constants.
    ``compact`` 0: padded weights, ``w(k, l) = values[k*L + l]`` (``value_start``
    unused); 1: compact weights, slot k's valid lanes taking the next values in order,
    pair ``plo``'s first at ``value_start[plo]`` (one unaligned load and an expand per
    slot: ``vexpandps``, or with 8 lanes a ``vpermps`` by a table row picked by the lane
    mask). ``prefetch`` (compile-time) is 0, or a distance in slots: each slot then also
    prefetches the offsets and the values that many slots ahead (compact values taken as
    half full), for weights streamed from DRAM, where the hardware prefetchers alone
    fall short. ``flat`` (compile-time) 1 reads each slot's window from ``segments[k]``
    (one entry per slot) and loads its inputs per slot, so a pair is just a slot range
    (the flat layouts pass one per row group, ``ell.Geometry.flat``); 0 loads them once
    per pair from ``segments[p]``. ``finite`` (compile-time) 1: the caller checked that
    every input is finite, so padding lanes, whose weights are zero, are not masked
    (their products are +-0, which leave a sum as it is); 0: they are, so an infinity or
    NaN in a column a lane does not use never reaches it. float32 only; 16 lanes need AVX-512F, 8 lanes AVX2
    (the caller picks by ``isa.VARIANT``). No bounds checks: callers guarantee
    ``(nvec-1)*xstride + segments[i]*S + W <= len(x)`` for every pair (slot when flat)
    i, every slot inside ``offsets``, L readable values from every compact start (the
    array is padded) and ``len(acc) >= L*nvec``.
    """
    if not (all(isinstance(a, types.Array) and a.dtype == types.float32 for a in (values, x, acc))
            and isinstance(offsets, types.Array) and offsets.dtype == types.uint8
            and all(isinstance(a, types.Array) and isinstance(a.dtype, types.Integer)
                    for a in (segments, slot_ptr, value_start))
            and all(isinstance(a, types.Integer) for a in (plo, phi, xstride))
            and isinstance(compact, types.IntegerLiteral) and isinstance(nvec, types.IntegerLiteral)
            and isinstance(prefetch, types.IntegerLiteral) and prefetch.literal_value >= 0
            and isinstance(lanes, types.IntegerLiteral) and isinstance(segment, types.IntegerLiteral)
            and (lanes.literal_value, segment.literal_value) in PERMUTE_GEOMETRY
            and isinstance(flat, types.IntegerLiteral) and flat.literal_value in (0, 1)
            and isinstance(finite, types.IntegerLiteral) and finite.literal_value in (0, 1)
            and 1 <= nvec.literal_value <= MAX_PERMUTE_VECTORS):
        return None
    n_lanes, seg_width, packed = lanes.literal_value, segment.literal_value, bool(compact.literal_value)
    step = PERMUTE_GEOMETRY[n_lanes, seg_width]
    wide = n_lanes == 16
    quad = seg_width == 4 * n_lanes  # two two-table permutes per vector and slot
    n_vec = nvec.literal_value
    n_acc = 2 if n_vec == 1 else n_vec
    per_slot = bool(flat.literal_value)
    unmasked = bool(finite.literal_value)

    def codegen(context, builder, sig, args):
        val_a, off_a, seg_a, ptr_a, start_a, x_a, acc_a = (
            context.make_array(sig.args[i])(context, builder, args[i]) for i in (0, 1, 2, 3, 4, 7, 9))
        f32, i1, i8, i32, i64 = (ir.FloatType(), ir.IntType(1), ir.IntType(8), ir.IntType(32), ir.IntType(64))
        im = ir.IntType(n_lanes)  # the lane mask as an integer
        vf, vi, vb = ir.VectorType(f32, n_lanes), ir.VectorType(i32, n_lanes), ir.VectorType(i8, n_lanes)
        mod = builder.module
        if wide:
            _keep_vector_width(builder, 512)
            permute2 = _intrinsic_fn(mod, "llvm.x86.avx512.vpermi2var.ps.512", ir.FunctionType(vf, [vf, vi, vf]))
            expand = _intrinsic_fn(mod, "llvm.x86.avx512.mask.expand.v16f32",
                                   ir.FunctionType(vf, [vf, vf, ir.VectorType(i1, n_lanes)]))
        else:
            permps = _intrinsic_fn(mod, "llvm.x86.avx2.permps", ir.FunctionType(vf, [vf, vi]))
            blendv = _intrinsic_fn(mod, "llvm.x86.avx.blendv.ps.256", ir.FunctionType(vf, [vf, vf, vf]))
            movmsk = _intrinsic_fn(mod, "llvm.x86.avx.movmsk.ps.256", ir.FunctionType(i32, [vf]))
            popcount32 = _intrinsic_fn(mod, "llvm.ctpop.i32", ir.FunctionType(i32, [i32]))
        fma = _intrinsic_fn(mod, f"llvm.fma.v{n_lanes}f32", ir.FunctionType(vf, [vf, vf, vf]))
        popcount = _intrinsic_fn(mod, f"llvm.ctpop.i{n_lanes}", ir.FunctionType(im, [im]))
        prefetch_fn = _intrinsic_fn(mod, "llvm.prefetch.p0",
                                    ir.FunctionType(ir.VoidType(), [ir.PointerType(i8), i32, i32, i32]))
        ahead = prefetch.literal_value
        plo_v, phi_v, stride = (context.cast(builder, args[i], sig.args[i], types.int64) for i in (5, 6, 8))
        zero = ir.Constant(vf, None)
        limit = ir.Constant(vb, [seg_width] * n_lanes)
        upper_bit = ir.Constant(vb, [2 * n_lanes] * n_lanes)  # the offset bit that picks the upper half
        table = None if wide else _expand_table(builder, n_lanes)

        def load_int(arr, arg, at):
            v = builder.load(builder.gep(arr.data, [at]))
            return context.cast(builder, v, sig.args[arg].dtype, types.int64)

        def vector_at(base, at, vty, align):
            return builder.load(builder.bitcast(builder.gep(base, [at]), vty.as_pointer()), align=align)

        def permute(table, index):
            """The inputs of each lane from a vector's ``table`` registers, zero on padding
            lanes unless ``finite``."""
            if wide:
                picked = builder.call(permute2, [table[0], index, table[1]])
                if quad:  # vpermi2ps reads the index's low 5 bits
                    upper = builder.call(permute2, [table[2], index, table[3]])
                    picked = builder.select(in_upper, upper, picked)
                return picked if unmasked else builder.select(valid, picked, zero)
            x_lo, x_hi = table
            # blendv on the sign bits (the widened offset's bit 7 picks the table register;
            # padding() holds the padding lanes' signs), so that LLVM keeps the masks in the
            # dword lanes instead of redoing byte compares.
            lo, hi = builder.call(permps, [x_lo, index]), builder.call(permps, [x_hi, index])
            picked = builder.call(blendv, [lo, hi, builder.bitcast(index, vf)])
            return picked if unmasked else builder.call(blendv, [picked, zero, padding()])

        def expanded(q):
            """(weights of slot lanes from the compact values at q, zero on padding lanes;
            how many values the slot takes)."""
            packed_values = vector_at(val_a.data, q, vf, 4)
            if wide:
                count = builder.call(popcount, [builder.bitcast(valid, im)])
                return builder.call(expand, [packed_values, zero, valid]), builder.zext(count, i64)
            lanes_set = builder.xor(builder.call(movmsk, [padding()]), ir.Constant(i32, (1 << n_lanes) - 1))
            at = builder.gep(table, [ir.Constant(i64, 0),
                                     builder.mul(builder.zext(lanes_set, i64), ir.Constant(i64, n_lanes))])
            spread = builder.call(permps, [packed_values, builder.load(builder.bitcast(at, vi.as_pointer()), align=4)])
            count = builder.call(popcount32, [lanes_set])
            return builder.call(blendv, [spread, zero, padding()]), builder.zext(count, i64)

        entry = builder.block
        # The next compact value (unused when padded): carried from pair to pair.
        first_value = load_int(start_a, 4, plo_v) if packed else ir.Constant(i64, 0)
        pair_head, pair_body, slot_head, slot_body, pair_end, done = (
            builder.append_basic_block(f"permute_dot.{b}")
            for b in ("pair", "pair_body", "slot", "slot_body", "pair_end", "done"))
        builder.branch(pair_head)

        builder.position_at_end(pair_head)
        p, outer = _counted_loop_head(builder, plo_v, phi_v, [zero] * n_acc + [first_value], entry,
                                      pair_body, done)

        def window_tables(segment_at):
            """Each vector's window inputs, in the table registers of its permutes."""
            base = builder.mul(load_int(seg_a, 2, segment_at), ir.Constant(i64, step))
            tables = []
            for v in range(n_vec):
                at_v = builder.add(base, builder.mul(stride, ir.Constant(i64, v)))
                tables.append([vector_at(x_a.data, builder.add(at_v, ir.Constant(i64, t * n_lanes)), vf, 4)
                               for t in range(seg_width // n_lanes if wide else 2)])
            return tables

        builder.position_at_end(pair_body)
        if not per_slot:
            tables = window_tables(p)
        k_lo = load_int(ptr_a, 3, p)
        k_hi = load_int(ptr_a, 3, builder.add(p, ir.Constant(i64, 1)))
        builder.branch(slot_head)

        builder.position_at_end(slot_head)
        k, inner = _counted_loop_head(builder, k_lo, k_hi, outer, pair_body, slot_body, pair_end)
        accs, q = inner[:-1], inner[-1]

        builder.position_at_end(slot_body)
        if per_slot:
            tables = window_tables(k)
        at = builder.mul(k, ir.Constant(i64, n_lanes))
        offs = vector_at(off_a.data, at, vb, 1)
        if ahead:
            def prefetch_at(base, at_now, per_slot):  # read (0), every cache level (3), data (1)
                later = builder.add(at_now, ir.Constant(i64, ahead * per_slot))
                ptr = builder.bitcast(builder.gep(base, [later]), ir.PointerType(i8))
                builder.call(prefetch_fn, [ptr, ir.Constant(i32, 0), ir.Constant(i32, 3), ir.Constant(i32, 1)])

            prefetch_at(off_a.data, at, n_lanes)
            prefetch_at(val_a.data, q if packed else at, n_lanes // 2 if packed else n_lanes)
        if wide:
            valid = builder.icmp_unsigned("<", offs, limit)
            if quad:
                in_upper = builder.icmp_unsigned("!=", builder.and_(offs, upper_bit), ir.Constant(vb, None))
            index = builder.zext(offs, vi)
        else:  # one vpmovsxbd: bit 7 of the offset becomes the dword's sign
            index = builder.sext(offs, vi)
            padding_signs = []

            def padding():
                """The padding lanes as signs (blendv reads each lane's sign): bit 3 of
                the offset shifted up, computed once per slot where it is needed."""
                if not padding_signs:
                    padding_signs.append(builder.bitcast(builder.shl(index, ir.Constant(vi, [28] * n_lanes)), vf))
                return padding_signs[0]
        if packed:
            weights, count = expanded(q)
            q_next = builder.add(q, count)
        else:
            weights, q_next = vector_at(val_a.data, at, vf, 4), q
        updated = []
        for v, table in enumerate(tables):
            updated.append(builder.call(fma, [weights, permute(table, index), accs[v]]))
        if n_vec == 1:  # two accumulators alternate slot by slot
            updated = [accs[1], updated[0]]
        k.add_incoming(builder.add(k, ir.Constant(i64, 1)), slot_body)
        for phi_node, value in zip(inner, updated + [q_next]):
            phi_node.add_incoming(value, slot_body)
        builder.branch(slot_head)

        builder.position_at_end(pair_end)
        p.add_incoming(builder.add(p, ir.Constant(i64, 1)), pair_end)
        for o, i_ in zip(outer, inner):
            o.add_incoming(i_, pair_end)
        builder.branch(pair_head)

        builder.position_at_end(done)
        sums = [builder.fadd(outer[0], outer[1])] if n_vec == 1 else outer[:n_vec]
        for v, total in enumerate(sums):
            ptr = builder.gep(acc_a.data, [ir.Constant(i64, v * n_lanes)])
            builder.store(total, builder.bitcast(ptr, vf.as_pointer()), align=4)
        return context.get_dummy_value()

    return types.void(values, offsets, segments, slot_ptr, value_start, plo, phi, x, xstride, acc, compact,
                      nvec, prefetch, lanes, segment, flat, finite), codegen


@intrinsic(prefer_literal=True)
def transpose_square(typingctx, src, src_off, src_stride, dst, dst_off, dst_stride, n):
    """``dst[dst_off + j*dst_stride + i] = src[src_off + i*src_stride + j]`` for i, j < n.

    An n x n block transposed in registers: n vector loads, log2(n) rounds of n/2
    interleaving shuffle pairs (the perfect shuffle: after round r, vector 2i holds the
    interleaved low halves of vectors i and i + n/2, vector 2i+1 their high halves), n
    vector stores. ``n`` is a literal power of two (16: 512-bit float32 vectors, 8: 256-bit,
    4: 128-bit). No bounds checks: callers guarantee both blocks are inside the arrays.
    """
    if not (isinstance(n, types.IntegerLiteral) and isinstance(src, types.Array) and isinstance(dst, types.Array)
            and src.dtype == dst.dtype and isinstance(src.dtype, types.Float)
            and all(isinstance(a, types.Integer) for a in (src_off, src_stride, dst_off, dst_stride))):
        return None
    size = n.literal_value
    if size < 2 or size & (size - 1):
        return None

    def codegen(context, builder, sig, args):
        src_a = context.make_array(sig.args[0])(context, builder, args[0])
        dst_a = context.make_array(sig.args[3])(context, builder, args[3])
        s_off, s_stride, d_off, d_stride = (context.cast(builder, args[i], sig.args[i], types.int64)
                                            for i in (1, 2, 4, 5))
        fty = context.get_value_type(sig.args[0].dtype)
        align = context.get_abi_sizeof(fty)
        vty = ir.VectorType(fty, size)
        _keep_vector_width(builder, size * align * 8)
        i32, i64 = ir.IntType(32), ir.IntType(64)
        rows = []
        for i in range(size):
            at = builder.add(s_off, builder.mul(s_stride, ir.Constant(i64, i)))
            ptr = builder.bitcast(builder.gep(src_a.data, [at]), vty.as_pointer())
            rows.append(builder.load(ptr, align=align))
        half = size // 2
        lo = ir.Constant(ir.VectorType(i32, size), [k // 2 + (size if k % 2 else 0) for k in range(size)])
        hi = ir.Constant(ir.VectorType(i32, size), [half + k // 2 + (size if k % 2 else 0) for k in range(size)])
        for _ in range(size.bit_length() - 1):
            new = []
            for i in range(half):
                a, b = rows[i], rows[i + half]
                new += [builder.shuffle_vector(a, b, lo), builder.shuffle_vector(a, b, hi)]
            rows = new
        for j, v in enumerate(rows):
            at = builder.add(d_off, builder.mul(d_stride, ir.Constant(i64, j)))
            builder.store(v, builder.bitcast(builder.gep(dst_a.data, [at]), vty.as_pointer()), align=align)
        return context.get_dummy_value()

    return types.void(src, src_off, src_stride, dst, dst_off, dst_stride, n), codegen


# Channels per pixel vector of the channel-blocked depthwise conv (``depthwise.py``): one
# 512-bit vector of float32 (LLVM splits it in two on AVX2, in four on baseline x86-64).
PIXEL_LANES = 16


def _half_transposes(builder, rows):
    """Eight 16-lane vectors whose 8-lane halves are the rows of two 8 x 8 blocks (the low
    halves one block, the high halves the other), both transposed: vector j of the result
    holds column j of each. 24 shuffles that stay within 256-bit halves (pairs of values,
    pairs of pairs, then 128-bit quarters), where ``transpose_square``'s 16 x 16 takes 64
    two-register permutes."""
    i32 = ir.IntType(32)

    def mask(picks):
        return ir.Constant(ir.VectorType(i32, 16), picks)

    # Indices into the 32 lanes of (a, b): within each 128-bit quarter q (unpcklps/unpckhps,
    # unpcklpd/unpckhpd), then the quarters within each 256-bit half h.
    lo_ps = mask([q * 4 + k // 2 + (16 if k % 2 else 0) for q in range(4) for k in range(4)])
    hi_ps = mask([q * 4 + 2 + k // 2 + (16 if k % 2 else 0) for q in range(4) for k in range(4)])
    lo_pd = mask([q * 4 + k % 2 + (16 if k >= 2 else 0) for q in range(4) for k in range(4)])
    hi_pd = mask([q * 4 + 2 + k % 2 + (16 if k >= 2 else 0) for q in range(4) for k in range(4)])
    lo_q = mask([h * 8 + j + (16 if s else 0) for h in range(2) for s in range(2) for j in range(4)])
    hi_q = mask([h * 8 + 4 + j + (16 if s else 0) for h in range(2) for s in range(2) for j in range(4)])
    pairs = []
    for i in range(4):
        a, b = rows[2 * i], rows[2 * i + 1]
        pairs += [builder.shuffle_vector(a, b, lo_ps), builder.shuffle_vector(a, b, hi_ps)]
    quads = []
    for j in range(2):
        a0, a1, a2, a3 = pairs[4 * j:4 * j + 4]
        quads += [builder.shuffle_vector(a0, a2, lo_pd), builder.shuffle_vector(a0, a2, hi_pd),
                  builder.shuffle_vector(a1, a3, lo_pd), builder.shuffle_vector(a1, a3, hi_pd)]
    return ([builder.shuffle_vector(quads[k], quads[k + 4], lo_q) for k in range(4)]
            + [builder.shuffle_vector(quads[k], quads[k + 4], hi_q) for k in range(4)])


def _pixel_vector_type(context, sig_dtype):
    """(the PIXEL_LANES-lane vector type of ``sig_dtype``, its element alignment)."""
    fty = context.get_value_type(sig_dtype)
    return ir.VectorType(fty, PIXEL_LANES), context.get_abi_sizeof(fty)


@intrinsic(prefer_literal=True)
def planes_to_pixels(typingctx, src, src_at, plane_stride, dst, dst_at, pixels, pixel_at, lo, hi, clip):
    """``dst[dst_at + pixels[pixel_at + j]*16 + i] = src[src_at + i*plane_stride + j]`` for i, j <
    16 (PIXEL_LANES), clipped to [lo, hi] as ``shifted_rows`` clips when ``clip`` (a
    compile-time 0 or 1) is 1.

    The channel-blocked depthwise conv's input transpose: positions j .. j + 15 of 16 planes
    become 16 pixel vectors of one value per plane, each stored where ``pixels`` puts its
    position. Each register is loaded as two halves (positions 0-7, or 8-15, of planes i and
    i + 8), so that only in-half shuffles remain (``_half_transposes``). No bounds checks:
    callers guarantee the positions lie inside ``src`` and every pixel vector inside ``dst``.
    """
    if not (isinstance(clip, types.IntegerLiteral) and clip.literal_value in (0, 1)
            and isinstance(src, types.Array) and isinstance(dst, types.Array) and src.dtype == dst.dtype
            and isinstance(src.dtype, types.Float)
            and isinstance(pixels, types.Array) and isinstance(pixels.dtype, types.Integer)
            and all(isinstance(a, types.Integer) for a in (src_at, plane_stride, dst_at, pixel_at))
            and all(isinstance(b, types.Float) for b in (lo, hi))):
        return None
    n, half, clipped = PIXEL_LANES, PIXEL_LANES // 2, bool(clip.literal_value)

    def codegen(context, builder, sig, args):
        src_a, dst_a, pix_a = (context.make_array(sig.args[i])(context, builder, args[i]) for i in (0, 3, 5))
        s_at, stride, d_at, p_at = (context.cast(builder, args[i], sig.args[i], types.int64) for i in (1, 2, 4, 6))
        vty, align = _pixel_vector_type(context, sig.args[0].dtype)
        hty = ir.VectorType(vty.element, half)
        _keep_vector_width(builder, min(512, n * align * 8))
        i32, i64 = ir.IntType(32), ir.IntType(64)
        joined = ir.Constant(ir.VectorType(i32, n), list(range(n)))

        def halves(i, j0):  # positions j0 .. j0 + 7 of planes i and i + 8
            low, high = (builder.load(builder.bitcast(builder.gep(src_a.data, [builder.add(
                s_at, builder.add(builder.mul(stride, ir.Constant(i64, plane)), ir.Constant(i64, j0)))]),
                hty.as_pointer()), align=align) for plane in (i, i + half))
            return builder.shuffle_vector(low, high, joined)

        columns = [v for j0 in (0, half) for v in _half_transposes(builder, [halves(i, j0) for i in range(half)])]
        if clipped:
            floor, ceiling = (_splat(builder, context.cast(builder, args[i], sig.args[i], sig.args[0].dtype), vty)
                              for i in (7, 8))
        for j, v in enumerate(columns):
            p = builder.load(builder.gep(pix_a.data, [builder.add(p_at, ir.Constant(i64, j))]))
            at = builder.add(d_at, builder.mul(context.cast(builder, p, sig.args[5].dtype, types.int64),
                                               ir.Constant(i64, n)))
            if clipped:
                v = _clip_vector(builder, v, floor, ceiling)
            builder.store(v, builder.bitcast(builder.gep(dst_a.data, [at]), vty.as_pointer()), align=align)
        return context.get_dummy_value()

    return types.void(src, src_at, plane_stride, dst, dst_at, pixels, pixel_at, lo, hi, clip), codegen


@intrinsic
def pixels_to_planes(typingctx, src, src_at, dst, dst_at, plane_stride):
    """``dst[dst_at + i*plane_stride + j] = src[src_at + j*16 + i]`` for i, j < 16 (PIXEL_LANES).

    The channel-blocked depthwise conv's output transpose: 16 adjacent pixel vectors become
    16 values of each of 16 planes, every store half a register (the low halves of the
    in-half transposes go to planes 0-7, the high halves to planes 8-15). No bounds checks:
    callers guarantee both ranges lie inside the arrays.
    """
    if not (isinstance(src, types.Array) and isinstance(dst, types.Array) and src.dtype == dst.dtype
            and isinstance(src.dtype, types.Float)
            and all(isinstance(a, types.Integer) for a in (src_at, dst_at, plane_stride))):
        return None
    n, half = PIXEL_LANES, PIXEL_LANES // 2

    def codegen(context, builder, sig, args):
        src_a, dst_a = (context.make_array(sig.args[i])(context, builder, args[i]) for i in (0, 2))
        s_at, d_at, stride = (context.cast(builder, args[i], sig.args[i], types.int64) for i in (1, 3, 4))
        vty, align = _pixel_vector_type(context, sig.args[0].dtype)
        hty = ir.VectorType(vty.element, half)
        _keep_vector_width(builder, min(512, n * align * 8))
        i32, i64 = ir.IntType(32), ir.IntType(64)
        pixels = [builder.load(builder.bitcast(builder.gep(src_a.data, [builder.add(s_at, ir.Constant(i64, j * n))]),
                                               vty.as_pointer()), align=align) for j in range(n)]
        low = ir.Constant(ir.VectorType(i32, half), list(range(half)))
        high = ir.Constant(ir.VectorType(i32, half), list(range(half, n)))
        for j0 in (0, half):
            for i, v in enumerate(_half_transposes(builder, pixels[j0:j0 + half])):
                for plane, part in ((i, low), (i + half, high)):
                    at = builder.add(builder.add(d_at, builder.mul(stride, ir.Constant(i64, plane))),
                                     ir.Constant(i64, j0))
                    builder.store(builder.shuffle_vector(v, v, part),
                                  builder.bitcast(builder.gep(dst_a.data, [at]), hty.as_pointer()), align=align)
        return context.get_dummy_value()

    return types.void(src, src_at, dst, dst_at, plane_stride), codegen


def _taps_types_ok(buf, weights, out, floor, ceiling, pixels, *ints) -> bool:
    """The typing shared by ``row_taps`` and ``strided_taps``."""
    return (isinstance(pixels, types.IntegerLiteral) and pixels.literal_value >= 1
            and all(isinstance(a, types.Array) and a.dtype == buf.dtype for a in (buf, weights, out))
            and isinstance(buf.dtype, types.Float)
            and all(isinstance(a, types.Integer) for a in ints)
            and all(isinstance(b, types.Float) for b in (floor, ceiling)))


def _store_clipped(context, builder, sig, args, out, out_at, accs, floor_at):
    """``out[out_at + r*16 : +16] = accs[r]`` clipped to [floor, ceiling], the float arguments
    ``floor_at`` and ``floor_at + 1`` (a NaN stays NaN)."""
    vty, align = _pixel_vector_type(context, sig.args[0].dtype)
    floor, ceiling = (_splat(builder, context.cast(builder, args[i], sig.args[i], sig.args[0].dtype), vty)
                      for i in (floor_at, floor_at + 1))
    i64 = ir.IntType(64)
    for r, acc in enumerate(accs):
        at = builder.add(out_at, ir.Constant(i64, r * PIXEL_LANES))
        builder.store(_clip_vector(builder, acc, floor, ceiling),
                      builder.bitcast(builder.gep(out.data, [at]), vty.as_pointer()), align=align)


@intrinsic(prefer_literal=True)
def row_taps(typingctx, buf, base, row_step, kh, kw, weights, b_at, w_at, out, out_at, floor, ceiling, pixels,
             stride):
    """For r < ``pixels``: ``out[out_at + r*16 : +16] = clip(weights[b_at : +16] + sum_{ky < kh}
    sum_{kx < kw} weights[w_at + (ky*kw + kx)*16 : +16] * buf[base + ky*row_step + (r*stride +
    kx)*16 : +16], floor, ceiling)``, clipped as ``shifted_rows`` clips: 16 (PIXEL_LANES)
    channels of ``pixels`` output pixels of a row of the channel-blocked depthwise conv.

    ``buf`` holds the input as pixel vectors, pixel k of kernel row ky's input at ``base +
    ky*row_step + k*16``; output pixel r reads pixels r*stride + kx. The ``pixels``
    accumulators (starting at the bias) stay in registers, and each input pixel of a kernel
    row is loaded once: per phase b < ``stride`` a window of ``pixels`` vectors (pixel
    r*stride + kx for the taps kx = a*stride + b) moves one pixel on per ``stride`` taps,
    loading one new vector. Each kernel row is summed from zero apart and then added to the
    accumulators (rounding errors grow with kh + kw terms, not kh*kw). ``pixels`` and
    ``stride`` are compile-time constants; the windows take ``stride * (pixels - 1)``
    registers. No bounds checks: callers guarantee every pixel read lies inside ``buf``,
    the weights inside ``weights`` and the ``pixels`` vectors inside ``out``.
    """
    if not (_taps_types_ok(buf, weights, out, floor, ceiling, pixels, base, row_step, kh, kw, b_at, w_at, out_at)
            and isinstance(stride, types.IntegerLiteral) and stride.literal_value >= 1):
        return None
    count, step = pixels.literal_value, stride.literal_value

    def codegen(context, builder, sig, args):
        buf_a, w_a, out_a = (context.make_array(sig.args[i])(context, builder, args[i]) for i in (0, 5, 8))
        base_v, rstep, kh_v, kw_v, b_at_v, w_at_v, o_at = (context.cast(builder, args[i], sig.args[i], types.int64)
                                                           for i in (1, 2, 3, 4, 6, 7, 9))
        vty, align = _pixel_vector_type(context, sig.args[0].dtype)
        _keep_vector_width(builder, min(512, PIXEL_LANES * align * 8))
        i64 = ir.IntType(64)
        zero, one, lanes = ir.Constant(i64, 0), ir.Constant(i64, 1), ir.Constant(i64, PIXEL_LANES)
        none = ir.Constant(vty, None)
        flags = ("contract",)

        def load(ptr, at):
            return builder.load(builder.bitcast(builder.gep(ptr, [at]), vty.as_pointer()), align=align)

        def pixel(row, k):  # input pixel k (an int or an i64) of a kernel row
            return load(row, builder.mul(ir.Constant(i64, k) if isinstance(k, int) else k, lanes))

        def newest(row, a, b):  # the pixel window b takes in at step a: (a + pixels - 1)*stride + b
            return pixel(row, builder.add(builder.mul(builder.add(a, ir.Constant(i64, count - 1)),
                                                      ir.Constant(i64, step)), ir.Constant(i64, b)))

        def taps(sums, weight, window):
            return [builder.fadd(s, builder.fmul(weight, x, flags=flags), flags=flags) for s, x in zip(sums, window)]

        init = load(w_a.data, b_at_v)
        whole = builder.udiv(kw_v, ir.Constant(i64, step))  # steps with every phase's tap
        rest = builder.sub(kw_v, builder.mul(whole, ir.Constant(i64, step)))
        kw_lanes = builder.mul(kw_v, lanes)
        entry = builder.block
        ky_head, ky_body, a_head, a_body, tail, ky_end, done = (
            builder.append_basic_block(f"row_taps.{b}") for b in ("ky", "ky_body", "a", "a_body", "tail", "ky_end",
                                                                   "done"))
        builder.branch(ky_head)

        builder.position_at_end(ky_head)
        ky, outer = _counted_loop_head(builder, zero, kh_v, [zero, w_at_v] + [init] * count, entry, ky_body, done)
        row_off, w_row, totals = outer[0], outer[1], outer[2:]
        builder.position_at_end(ky_body)
        row = builder.gep(buf_a.data, [builder.add(base_v, row_off)])
        windows = [pixel(row, r * step + b) for b in range(step) for r in range(count - 1)]
        builder.branch(a_head)

        builder.position_at_end(a_head)
        a, inner = _counted_loop_head(builder, zero, whole, [w_row] + windows + [none] * count, ky_body, a_body, tail)
        w_pos, held, sums = inner[0], inner[1:1 + step * (count - 1)], inner[1 + step * (count - 1):]
        builder.position_at_end(a_body)
        moved, new_sums = [], sums
        for b in range(step):
            window = held[b * (count - 1):(b + 1) * (count - 1)] + [newest(row, a, b)]
            new_sums = taps(new_sums, load(w_a.data, builder.add(w_pos, ir.Constant(i64, b * PIXEL_LANES))), window)
            moved += window[1:]
        a.add_incoming(builder.add(a, one), a_body)
        for phi, value in zip(inner, [builder.add(w_pos, ir.Constant(i64, step * PIXEL_LANES))] + moved + new_sums):
            phi.add_incoming(value, a_body)
        builder.branch(a_head)

        # The row's last ``rest`` (< stride) taps: phases 0 .. rest - 1 of one more step.
        builder.position_at_end(tail)
        for b in range(step - 1):
            before = builder.block
            go, join = (builder.append_basic_block(f"row_taps.{x}{b}") for x in ("rest", "join"))
            builder.cbranch(builder.icmp_unsigned(">", rest, ir.Constant(i64, b)), go, join)
            builder.position_at_end(go)
            window = held[b * (count - 1):(b + 1) * (count - 1)] + [newest(row, a, b)]
            added = taps(sums, load(w_a.data, builder.add(w_pos, ir.Constant(i64, b * PIXEL_LANES))), window)
            builder.branch(join)
            builder.position_at_end(join)
            sums = _merge(builder, vty, sums, before, added, go)
        builder.branch(ky_end)

        builder.position_at_end(ky_end)
        ky.add_incoming(builder.add(ky, one), ky_end)
        moved = [builder.add(row_off, rstep), builder.add(w_row, kw_lanes)]
        for phi, value in zip(outer, moved + [builder.fadd(t, s) for t, s in zip(totals, sums)]):
            phi.add_incoming(value, ky_end)
        builder.branch(ky_head)

        builder.position_at_end(done)
        _store_clipped(context, builder, sig, args, out_a, o_at, totals, 10)
        return context.get_dummy_value()

    return (types.void(buf, base, row_step, kh, kw, weights, b_at, w_at, out, out_at, floor, ceiling, pixels, stride),
            codegen)


@intrinsic(prefer_literal=True)
def strided_taps(typingctx, buf, base, pixel_step, taps, t_lo, t_hi, kw, weights, b_at, w_at, out, out_at, floor,
                 ceiling, pixels):
    """For r < ``pixels``: ``out[out_at + r*16 : +16] = clip(weights[b_at : +16] + sum_{t_lo <= t <
    t_hi} weights[w_at + t*16 : +16] * buf[base + r*pixel_step + taps[t] : +16], floor,
    ceiling)``: ``row_taps`` for any stride and dilation, each tap's offset read from ``taps``
    and its input loaded for each pixel (runs of ``kw`` taps, a kernel row, summed apart as
    there; t_hi - t_lo a multiple of kw). ``pixels`` is a compile-time constant. No bounds
    checks, as ``row_taps``.
    """
    if not (_taps_types_ok(buf, weights, out, floor, ceiling, pixels, base, pixel_step, t_lo, t_hi, kw, b_at, w_at,
                           out_at)
            and isinstance(taps, types.Array) and isinstance(taps.dtype, types.Integer)):
        return None
    count = pixels.literal_value

    def codegen(context, builder, sig, args):
        buf_a, tap_a, w_a, out_a = (context.make_array(sig.args[i])(context, builder, args[i]) for i in (0, 3, 7, 10))
        base_v, p_step, lo_v, hi_v, kw_v, b_at_v, w_at_v, o_at = (
            context.cast(builder, args[i], sig.args[i], types.int64) for i in (1, 2, 4, 5, 6, 8, 9, 11))
        vty, align = _pixel_vector_type(context, sig.args[0].dtype)
        _keep_vector_width(builder, min(512, PIXEL_LANES * align * 8))
        i64 = ir.IntType(64)
        one, lanes = ir.Constant(i64, 1), ir.Constant(i64, PIXEL_LANES)
        flags = ("contract",)

        def load(ptr):
            return builder.load(builder.bitcast(ptr, vty.as_pointer()), align=align)

        starts = [builder.gep(buf_a.data, [builder.add(base_v, builder.mul(p_step, ir.Constant(i64, r)))])
                  for r in range(count)]
        init = load(builder.gep(w_a.data, [b_at_v]))
        w0 = builder.gep(w_a.data, [w_at_v])
        entry = builder.block
        row_head, row_body, tap_head, tap_body, row_end, done = (
            builder.append_basic_block(f"strided_taps.{b}") for b in ("row", "row_body", "tap", "tap_body", "row_end",
                                                                       "done"))
        builder.branch(row_head)
        builder.position_at_end(row_head)
        t0, totals = _counted_loop_head(builder, lo_v, hi_v, [init] * count, entry, row_body, done)
        builder.position_at_end(row_body)
        t_end = builder.add(t0, kw_v)
        builder.branch(tap_head)
        builder.position_at_end(tap_head)
        t, sums = _counted_loop_head(builder, t0, t_end, [ir.Constant(vty, None)] * count, row_body, tap_body, row_end)
        builder.position_at_end(tap_body)
        off = context.cast(builder, builder.load(builder.gep(tap_a.data, [t])), sig.args[3].dtype, types.int64)
        weight = load(builder.gep(w0, [builder.mul(t, lanes)]))
        t.add_incoming(builder.add(t, one), tap_body)
        for phi, start in zip(sums, starts):
            phi.add_incoming(builder.fadd(phi, builder.fmul(weight, load(builder.gep(start, [off])), flags=flags),
                                          flags=flags), tap_body)
        builder.branch(tap_head)
        builder.position_at_end(row_end)
        t0.add_incoming(t_end, row_end)
        for total, s in zip(totals, sums):
            total.add_incoming(builder.fadd(total, s), row_end)
        builder.branch(row_head)

        builder.position_at_end(done)
        _store_clipped(context, builder, sig, args, out_a, o_at, totals, 12)
        return context.get_dummy_value()

    return (types.void(buf, base, pixel_step, taps, t_lo, t_hi, kw, weights, b_at, w_at, out, out_at, floor, ceiling,
                       pixels), codegen)
