"""An explicit-SIMD building block for the SpMM kernel (Numba intrinsic).

Numba leaves LLVM's SLP vectorizer off, and the loop vectorizer prefers to vectorize the
sum over nonzeros with gathers; both defeat an ``acc[t] += v * x[c, t]`` tile loop.
``axpy`` emits the tile update as one LLVM vector operation instead.
"""

from __future__ import annotations

from llvmlite import ir
from numba import types
from numba.extending import intrinsic


@intrinsic(prefer_literal=True)
def axpy(typingctx, acc, acc_off, x, x_off, v, width):
    """``acc[acc_off:acc_off+width] += v * x[x_off:x_off+width]`` as one vector op.

    ``acc`` and ``x`` are 1-D C-contiguous arrays of one float dtype, ``v`` a scalar of
    it, ``width`` a compile-time integer constant. No bounds checks: callers guarantee
    both ranges are inside the arrays.
    """
    if not isinstance(width, types.IntegerLiteral):
        return None
    if not (isinstance(acc, types.Array) and isinstance(x, types.Array) and acc.dtype == x.dtype):
        return None
    n = width.literal_value

    def codegen(context, builder, sig, args):
        acc_arr = context.make_array(sig.args[0])(context, builder, args[0])
        x_arr = context.make_array(sig.args[2])(context, builder, args[2])
        fty = context.get_value_type(sig.args[0].dtype)
        vty = ir.VectorType(fty, n)
        acc_ptr = builder.bitcast(builder.gep(acc_arr.data, [args[1]]), vty.as_pointer())
        x_ptr = builder.bitcast(builder.gep(x_arr.data, [args[3]]), vty.as_pointer())
        align = context.get_abi_sizeof(fty)
        a = builder.load(acc_ptr, align=align)
        xv = builder.load(x_ptr, align=align)
        scalar = context.cast(builder, args[4], sig.args[4], sig.args[0].dtype)
        splat = builder.insert_element(ir.Constant(vty, ir.Undefined), scalar,
                                       ir.Constant(ir.IntType(32), 0))
        splat = builder.shuffle_vector(splat, ir.Constant(vty, ir.Undefined),
                                       ir.Constant(ir.VectorType(ir.IntType(32), n), [0] * n))
        # Keep vectors this wide legal in the enclosing function (LLVM otherwise splits
        # 512-bit vectors on CPUs that prefer 256-bit ones); the inliner carries the
        # attribute into the callers.
        bits = n * context.get_abi_sizeof(fty) * 8
        attr = f'"min-legal-vector-width"="{bits}"'
        attrs = getattr(builder.function, "attributes", None)
        if bits > 256 and isinstance(attrs, set) and attr not in attrs:
            # llvmlite's AttributeSet.add only takes known keyword attributes; a string
            # attribute goes in through set.add. Without it the code is still correct,
            # just split into 256-bit halves.
            set.add(attrs, attr)
        prod = builder.fmul(xv, splat, flags=("contract",))
        builder.store(builder.fadd(a, prod, flags=("contract",)), acc_ptr, align=align)
        return context.get_dummy_value()

    return types.void(acc, acc_off, x, x_off, v, width), codegen
