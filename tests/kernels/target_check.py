"""Check every kernel path against dense numpy in a process compiled for another CPU target.

Run by ``tests/kernels/test_isa_targets.py`` as ``python -m tests.kernels.target_check
VARIANT`` with ``NUMBA_CPU_NAME`` set (e.g. ``haswell`` for AVX2, ``x86-64`` for the
portable variant): Numba then compiles for that target, ``isa.VARIANT`` must come out as
VARIANT, and the linear layer is property-tested (hypothesis) at batches 1 to 20 on every
batch-1 layout the variant has, the block-sparse linear layer on every block shape and the
conv (pointwise, direct, strided; CSR and R x 1 blocks) against numpy, the depthwise conv on each
of its kernels (3x3, channel-blocked at every row step, plane by plane), the max pool, then the compiled code is checked for
instructions the target lacks. Prints ``ok <variant> <examples>`` and exits 0, or fails with the reason.
"""

from __future__ import annotations

import sys

import numpy as np
from hypothesis import given, settings, strategies as st

from sparsify.kernels import CSR, SparseConv2d, SparseLinear, ell, isa, spmm
from sparsify.kernels.bsr import BSR, SparseBlockLinear

DENSITIES = [0.0, 1e-3, 0.5, 1.0, 0.1]
# Block shapes checked per target: each SpMV path (R x 1 vectors of R lanes, 1 x C lane sums,
# R x C) and the widest accumulator sets; every shape runs on the host in tests/kernels/test_bsr.py.
# Each shape is a kernel compile per target, most of this check's time.
TARGET_BLOCKS = [(4, 1), (16, 1), (1, 4), (1, 16), (4, 4), (2, 8)]
# R of the R x 1 block convs checked per target (RR < R and RR = R passes).
CONV_BLOCKS = [2, 16]
# Depthwise convs checked per target, (C, H, W, kernel, stride, padding (top, left, bottom,
# right), dilation, multiplier): the 3x3 kernel at stride 1 and 2; the blocked one at strides 1
# and 2 (its row steps) and 3 with a dilation (its strided steps), on rows of 7*2^k and others,
# each with channels past the last block (the plane kernel); a few shapes, each both twins.
DEPTHWISE_CASES = [(17, 12, 20, 3, (1, 1), (1, 1, 1, 1), (1, 1), 1), (5, 9, 40, 3, (2, 2), (1, 1, 1, 1), (1, 1), 2),
                   (33, 7, 7, 5, (1, 1), (2, 2, 2, 2), (1, 1), 1), (32, 16, 13, 7, (2, 2), (3, 3, 3, 3), (1, 1), 1),
                   (17, 14, 14, 3, (3, 1), (0, 2, 1, 1), (1, 2), 2), (16, 28, 28, 3, (2, 2), (1, 1, 1, 1), (1, 1), 1)]
# Max pools checked per target: (N, C, H, W), kernel, strides, pads, dilations; the stride-2
# path (even and odd columns apart) and the general one.
POOL_CASES = [((1, 3, 17, 20), (3, 3), (2, 2), (1, 1, 1, 1), (1, 1)),
              ((1, 2, 9, 11), (2, 3), (1, 3), (1, 2, 0, 0), (2, 1))]
# Registers a target without them must never use: AVX2 code no zmm (nor AVX-512 mask
# registers), baseline x86-64 no ymm either.
FORBIDDEN = {"avx2": ("zmm",), "portable": ("zmm", "ymm")}


def reference(x: np.ndarray, w: np.ndarray, b: np.ndarray | None, relu: bool) -> np.ndarray:
    y = x.astype(np.float64) @ w.astype(np.float64).T
    if b is not None:
        y = y + b
    return np.maximum(y, 0) if relu else y


def run_layer(layer, rng: np.random.Generator, batch: int, cols: int, strided: bool, serial: bool,
              dtype=np.float32) -> tuple[np.ndarray, np.ndarray]:
    """(x, layer(x)) for a random (batch, cols) input, a strided view when ``strided`` (one
    row as a 1-D view at batch 1), the serial or parallel kernel twins as ``serial`` says."""
    wide = rng.standard_normal((batch, 2 * cols)).astype(dtype)
    x = wide[:, ::2] if strided else np.ascontiguousarray(wide[:, :cols])
    saved = spmm.SERIAL_WORK
    spmm.SERIAL_WORK = float("inf") if serial else 0
    try:
        return x, layer(x[0] if batch == 1 and strided else x)
    finally:
        spmm.SERIAL_WORK = saved


def check_case(rows: int, cols: int, density: float, batch: int, seed: int, relu: bool, bias: bool,
               strided: bool, layout: str, serial: bool) -> None:
    rng = np.random.default_rng(seed)
    w = rng.standard_normal((rows, cols))
    w[rng.random((rows, cols)) >= density] = 0.0
    if rows > 2:
        w[1::3] = 0.0  # empty rows
    w = w.astype(np.float32)
    b = rng.standard_normal(rows).astype(np.float32) if bias else None
    layer = SparseLinear(CSR.from_dense(w), b, "relu" if relu else None, batch1=layout)
    x, y = run_layer(layer, rng, batch, cols, strided, serial)
    expect = reference(x, w, b, relu)
    got = y.reshape(expect.shape).astype(np.float64)
    scale = np.abs(x).max(initial=0.0) * (np.abs(w).sum(axis=1).max(initial=0.0) + 1.0)
    err = np.abs(got - expect).max(initial=0.0)
    if not err <= 1e-5 * max(scale, 1.0):
        raise AssertionError(f"{isa.VARIANT}: {rows}x{cols} density {density} batch {batch} layout {layout} "
                             f"{'serial' if serial else 'parallel'}: max abs err {err} (scale {scale})")


def check_non_finite(layout: str, batch: int) -> None:
    """Infinities and NaNs in the input reach only the rows whose nonzeros read them (the
    sparse product's meaning): rows reading one column each share groups with rows reading
    every column, so their lanes pad, and every other column of the first input is not
    finite; a padding lane that multiplied its zero weight by its input would show."""
    rng = np.random.default_rng(batch)
    w = rng.uniform(0.5, 1.5, (40, 70)).astype(np.float32)
    w[::2] = 0.0
    w[::2, 5] = 1.0  # even rows read column 5 alone
    layer = SparseLinear(CSR.from_dense(w), batch1=layout)
    x = rng.standard_normal((batch, 70)).astype(np.float32)
    x[0] = np.inf
    x[0, 5], x[0, 30] = 0.5, np.nan
    got = layer(x[0] if batch == 1 else x).reshape(batch, 40)
    with np.errstate(invalid="ignore"):
        expect = np.where(w[None] != 0, w[None].astype(np.float64) * x[:, None, :], 0.0).sum(axis=2)
    if not np.allclose(got, expect, rtol=1e-5, atol=1e-5, equal_nan=True) or not np.array_equal(
            np.isnan(got), np.isnan(expect)):
        raise AssertionError(f"{isa.VARIANT}: layout {layout} batch {batch}: non-finite inputs reached rows "
                             "that do not read them, or were lost")


def block_weight(rng: np.random.Generator, rows: int, cols: int, block: tuple[int, int], density: float,
                 dtype=np.float32) -> np.ndarray:
    """A (rows, cols) weight whose nonzeros fill about ``density`` of its R x C blocks (block rows
    every third one emptied), each kept block dense except for a few zeros."""
    r, c = block
    keep = rng.random((rows // r, cols // c)) < density
    keep[1::3] = False
    w = rng.standard_normal((rows, cols)) * np.repeat(np.repeat(keep, r, 0), c, 1)
    w[rng.random((rows, cols)) < 0.05] = 0.0
    return w.astype(dtype)


def check_block_case(block: tuple[int, int], blocks_out: int, blocks_in: int, density: float, batch: int,
                     seed: int, activation: str | None, bias: bool, strided: bool, serial: bool,
                     dtype=np.float32) -> None:
    """SparseBlockLinear against float64 numpy on one random case (AssertionError naming it)."""
    rng = np.random.default_rng(seed)
    r, c = block
    rows, cols = blocks_out * r, blocks_in * c
    w = block_weight(rng, rows, cols, block, density, dtype)
    b = rng.standard_normal(rows).astype(dtype) if bias else None
    weight = BSR.from_dense(w, block)
    assert np.array_equal(weight.to_dense(), w)
    layer = SparseBlockLinear(weight, b, activation)
    x, y = run_layer(layer, rng, batch, cols, strided, serial, dtype)
    expect = x.astype(np.float64) @ w.astype(np.float64).T + (0 if b is None else b)
    if activation == "relu":
        expect = np.maximum(expect, 0)
    got = y.reshape(expect.shape).astype(np.float64)
    scale = np.abs(x).max(initial=0.0) * (np.abs(w).sum(axis=1).max(initial=0.0) + 1.0)
    err = np.abs(got - expect).max(initial=0.0)
    if not err <= (1e-5 if dtype == np.float32 else 1e-12) * max(scale, 1.0):
        raise AssertionError(f"{isa.VARIANT}: block {r}x{c}, {rows}x{cols} density {density} batch {batch} "
                             f"{'serial' if serial else 'parallel'}: max abs err {err} (scale {scale})")


def check_conv_case(n: int, c: int, h: int, w: int, out: int, k: int, stride: int, padding: int, density: float,
                    seed: int, block: int = 1) -> None:
    """SparseConv2d against float64 numpy (an explicit loop over the taps) on one random case, and
    its residual + ReLU pass against its output + residual, then ReLU (bit for bit); ``block``
    > 1: ``out`` blocks of ``block`` x 1 through the block conv kernels."""
    rng = np.random.default_rng(seed)
    if block > 1:
        out *= block
        w4 = block_weight(rng, out, c * k * k, (block, 1), density).astype(np.float64).reshape(out, c, k, k)
    else:
        w4 = rng.standard_normal((out, c, k, k))
        w4[rng.random(w4.shape) >= density] = 0.0
    w4 = w4.astype(np.float32)
    x = rng.standard_normal((n, c, h, w)).astype(np.float32)
    w2d = w4.reshape(out, -1)
    conv = SparseConv2d(BSR.from_dense(w2d, (block, 1)) if block > 1 else CSR.from_dense(w2d), None, k, stride,
                        padding)
    if block > 1 and not conv.describe_layout().startswith("BSR"):
        raise AssertionError(f"{isa.VARIANT}: a {block}x1 block conv runs {conv.describe_layout()}")
    y = conv(x)
    xp = np.pad(x.astype(np.float64), ((0, 0), (0, 0), (padding, padding), (padding, padding)))
    ho, wo = (h + 2 * padding - k) // stride + 1, (w + 2 * padding - k) // stride + 1
    expect = np.zeros((n, out, ho, wo))
    for i in range(k):
        for j in range(k):
            patch = xp[:, :, i:i + stride * (ho - 1) + 1:stride, j:j + stride * (wo - 1) + 1:stride]
            expect += np.einsum("nchw,oc->nohw", patch, w4[:, :, i, j].astype(np.float64))
    err = np.abs(y - expect).max(initial=0.0)
    if not err <= 1e-5 * max(1.0, np.abs(x).max() * np.abs(w4).reshape(out, -1).sum(1).max(initial=0.0)):
        raise AssertionError(f"{isa.VARIANT}: conv {out}x{c}x{k}x{k} stride {stride} pad {padding} block "
                             f"{block}x1 on {(n, c, h, w)}: max abs err {err}")
    residual = rng.standard_normal(y.shape).astype(np.float32)
    if not np.array_equal(conv.with_residual(x, residual, "relu"), np.maximum(y + residual, np.float32(0))):
        raise AssertionError(f"{isa.VARIANT}: conv {out}x{c}x{k}x{k} stride {stride} pad {padding} block "
                             f"{block}x1 on {(n, c, h, w)}: with a residual + ReLU differs from the conv's "
                             "output + residual, then ReLU")


def check_depthwise_case(c: int, h: int, w: int, k: int, stride: tuple[int, int], padding: tuple[int, ...],
                         dilation: tuple[int, int], mult: int, serial: bool, seed: int) -> None:
    """DepthwiseConv2d (clips before and after) against the float64 reference of its tests, with an
    inf and a NaN in the input (NaN where the reference has NaN)."""
    from sparsify.kernels import depthwise
    from tests.kernels.test_depthwise import reference as depthwise_reference

    rng = np.random.default_rng(seed)
    x = rng.standard_normal((2, c, h, w)).astype(np.float32)
    x[0, c - 1, h - 1, w - 1], x[1, 0, h // 2, 0] = np.nan, np.inf
    weight = rng.standard_normal((c * mult, 1, k, k - 1 if k > 3 else k)).astype(np.float32)
    bias = rng.standard_normal(c * mult).astype(np.float32)
    saved = depthwise.SERIAL_WORK
    depthwise.SERIAL_WORK = float("inf") if serial else 0
    try:
        got = depthwise.depthwise_conv2d(x, weight, bias, stride, padding, dilation, (-4.0, 4.0), (-3.0, 3.0))
    finally:
        depthwise.SERIAL_WORK = saved
    want = depthwise_reference(x, weight, bias, stride, padding, dilation, (-4.0, 4.0), (-3.0, 3.0))
    err = np.abs(np.nan_to_num(got, nan=9.0) - np.nan_to_num(want, nan=9.0)).max(initial=0.0)
    if got.shape != want.shape or not np.array_equal(np.isnan(got), np.isnan(want)) or not err <= 1e-5:
        raise AssertionError(f"{isa.VARIANT}: depthwise {c}x{h}x{w} kernel {weight.shape[2:]} stride {stride} padding "
                             f"{padding} dilation {dilation} multiplier {mult} {'serial' if serial else 'parallel'}: "
                             f"shape {got.shape} against {want.shape}, max abs err {err}")


def check_pool_case(shape, kernel, strides, pads, dilations) -> None:
    """The max pool's parallel kernel and its serial twin against the float64 definition."""
    from sparsify.kernels import pool
    from tests.kernels.test_pool import numpy_max_pool

    x = np.random.default_rng(5).standard_normal(shape).astype(np.float32)
    x.reshape(-1)[::7] = np.nan
    want = numpy_max_pool(x, kernel, strides, pads, dilations)
    for kernel_fn in (pool._max_pool2d, pool._serial_max_pool2d):
        got = np.empty_like(want)
        kernel_fn(x, *kernel, *strides, pads[0], pads[1], *dilations, got)
        if not np.array_equal(got, want, equal_nan=True):
            raise AssertionError(f"{isa.VARIANT}: max pool {shape} kernel {kernel} strides {strides} pads {pads} "
                                 f"({kernel_fn.py_func.__name__}) differs from the definition")


def main(variant: str) -> int:
    if isa.VARIANT != variant:
        print(f"expected the {variant} variant for this target, got {isa.VARIANT} ({isa.describe_target()})")
        return 1
    layouts = ["csr", "auto"] + (["ell", "ell_compact"] if variant != "portable" else [])
    count = 0

    @settings(max_examples=60, deadline=None, derandomize=True, database=None)
    @given(rows=st.sampled_from([1, 7, 16, 33, 70]), cols=st.sampled_from([1, 9, 40, 130]),
           density=st.sampled_from(DENSITIES), batch=st.sampled_from([1, 2, 4, 5, 9, 20]),
           seed=st.integers(0, 2**31 - 1), relu=st.booleans(), bias=st.booleans(), strided=st.booleans(),
           layout=st.sampled_from(layouts), serial=st.booleans())
    def prop(**case):
        nonlocal count
        count += 1
        check_case(**case)

    prop()

    @settings(max_examples=40, deadline=None, derandomize=True, database=None)
    @given(block=st.sampled_from(TARGET_BLOCKS),
           blocks_out=st.sampled_from([1, 3, 9]), blocks_in=st.sampled_from([1, 4, 11]),
           density=st.sampled_from([0.0, 0.3, 1.0]), batch=st.sampled_from([1, 2, 9, 40]),
           seed=st.integers(0, 2**31 - 1), relu=st.booleans(), bias=st.booleans(), strided=st.booleans(),
           serial=st.booleans())
    def block_prop(relu, **case):
        nonlocal count
        count += 1
        check_block_case(activation="relu" if relu else None, **case)

    block_prop()

    @settings(max_examples=40, deadline=None, derandomize=True, database=None)
    @given(n=st.integers(1, 2), c=st.integers(1, 5), h=st.integers(3, 11), w=st.integers(3, 40),
           out=st.integers(1, 5), k=st.sampled_from([1, 3]), stride=st.integers(1, 2), padding=st.integers(0, 1),
           density=st.sampled_from([0.0, 0.3, 1.0]), seed=st.integers(0, 2**31 - 1),
           block=st.sampled_from([1, *CONV_BLOCKS]))
    def conv_prop(**case):
        nonlocal count
        count += 1
        check_conv_case(**case)

    conv_prop()
    for k, case in enumerate(DEPTHWISE_CASES):
        for serial in (False, True):
            check_depthwise_case(*case, serial=serial, seed=k)
            count += 1
    for case in POOL_CASES:
        check_pool_case(*case)
        count += 2
    # The edge shapes on every layout, both kernel twins.
    for layout in layouts:
        for rows, cols in ((1, 300), (300, 1), (17, 33)):
            for density in DENSITIES:
                for serial in (False, True):
                    check_case(rows, cols, density, 1, 7, False, True, True, layout, serial)
                    count += 1
    for layout in layouts:
        for batch in (1, 4):
            check_non_finite(layout, batch)
            count += 1
    for kernel in _compiled_kernels():
        for sig in kernel.signatures:
            asm = kernel.inspect_asm(sig)
            if "ret" not in asm:  # Numba disassembles only what this process compiled
                print(f"{kernel.py_func.__qualname__}: no assembly to check (loaded from a cache?)")
                return 1
            bad = [reg for reg in FORBIDDEN.get(variant, ()) if reg in asm]
            bad += [f"{{%k}} mask ({asm.count('{%k')})"] if variant != "avx512" and "{%k" in asm else []
            if bad:
                print(f"{kernel.py_func.__qualname__} compiled for {isa.describe_target()} uses {bad}")
                return 1
    print(f"ok {variant} {count}")
    return 0


def _compiled_kernels():
    """The kernels this process compiled (their signatures), parallel and serial twins."""
    from sparsify.kernels import _jit
    kernels = [_jit.spmv, _jit.pack_rows_kernel(spmm.pack_lanes())]
    kernels += [_jit.spmm_kernel(tile) for tile in _jit.TILES]
    lanes = {"avx512": 16, "avx2": 8}.get(isa.VARIANT)
    if lanes is not None:
        flat = int(ell.host_geometry().flat)
        kernels += [_jit.ell_spmv_kernel(compact, nvec, 0, lanes, flat)
                    for compact in (0, 1) for nvec in (1, _jit.MAX_PERMUTE_VECTORS)]
    from sparsify.kernels import _bsr_jit
    from sparsify.kernels.bsr import spmm_geometry
    blocks = TARGET_BLOCKS
    kernels += [_bsr_jit.bsr_spmv_kernel(r, c) for r, c in blocks]
    kernels += [_bsr_jit.bsr_spmm_kernel(r, c, *spmm_geometry(r, isa.VARIANT, w)) for r, c in blocks for w in (8, 16, 32)]
    kernels += [_jit.direct_conv_kernel(t) for t in _jit.TILES] + [_jit.pointwise_conv_kernel(t) for t in _jit.TILES]
    from sparsify.kernels.conv import block_geometry
    kernels += [f(*block_geometry(r, isa.VARIANT)) for r in CONV_BLOCKS
                for f in (_bsr_jit.block_direct_conv_kernel, _bsr_jit.block_pointwise_conv_kernel)]
    kernels += [_jit.pad_phases, _jit.subsample]
    from sparsify.kernels import _depthwise3x3_jit, _depthwise_jit
    kernels += [_depthwise_jit.depthwise_kernel, _depthwise3x3_jit.depthwise3x3_kernel]
    kernels += [_jit.serial(k) for k in kernels]
    from sparsify.kernels import pool
    kernels += [pool._max_pool2d, pool._serial_max_pool2d]
    return [k for k in kernels if k.signatures]


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1]))
