"""Check every kernel path against dense numpy in a process compiled for another CPU target.

Run by ``tests/kernels/test_isa_targets.py`` as ``python -m tests.kernels.target_check
VARIANT`` with ``NUMBA_CPU_NAME`` set (e.g. ``haswell`` for AVX2, ``x86-64`` for the
portable variant): Numba then compiles for that target, ``isa.VARIANT`` must come out as
VARIANT, and the linear layer is property-tested (hypothesis) at batches 1 to 20 on every
batch-1 layout the variant has, then the compiled code is checked for instructions the
target lacks. Prints ``ok <variant> <examples>`` and exits 0, or fails with the reason.
"""

from __future__ import annotations

import sys

import numpy as np
from hypothesis import given, settings, strategies as st

from sparsify.kernels import CSR, SparseLinear, isa, spmm

DENSITIES = [0.0, 1e-3, 0.5, 1.0, 0.1]
# Registers a target without them must never use: AVX2 code no zmm (nor AVX-512 mask
# registers), baseline x86-64 no ymm either.
FORBIDDEN = {"avx2": ("zmm",), "portable": ("zmm", "ymm")}


def reference(x: np.ndarray, w: np.ndarray, b: np.ndarray | None, relu: bool) -> np.ndarray:
    y = x.astype(np.float64) @ w.astype(np.float64).T
    if b is not None:
        y = y + b
    return np.maximum(y, 0) if relu else y


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
    wide = rng.standard_normal((batch, 2 * cols)).astype(np.float32)
    x = wide[:, ::2] if strided else np.ascontiguousarray(wide[:, :cols])
    saved = spmm.SERIAL_WORK
    spmm.SERIAL_WORK = float("inf") if serial else 0
    try:
        y = layer(x[0] if batch == 1 and strided else x)
    finally:
        spmm.SERIAL_WORK = saved
    expect = reference(x, w, b, relu)
    got = y.reshape(expect.shape).astype(np.float64)
    scale = np.abs(x).max(initial=0.0) * (np.abs(w).sum(axis=1).max(initial=0.0) + 1.0)
    err = np.abs(got - expect).max(initial=0.0)
    if not err <= 1e-5 * max(scale, 1.0):
        raise AssertionError(f"{isa.VARIANT}: {rows}x{cols} density {density} batch {batch} layout {layout} "
                             f"{'serial' if serial else 'parallel'}: max abs err {err} (scale {scale})")


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
    # The edge shapes on every layout, both kernel twins.
    for layout in layouts:
        for rows, cols in ((1, 300), (300, 1), (17, 33)):
            for density in DENSITIES:
                for serial in (False, True):
                    check_case(rows, cols, density, 1, 7, False, True, True, layout, serial)
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
        kernels += [_jit.ell_spmv_kernel(compact, nvec, 0, lanes)
                    for compact in (0, 1) for nvec in (1, _jit.MAX_PERMUTE_VECTORS)]
    kernels += [_jit.serial(k) for k in kernels]
    return [k for k in kernels if k.signatures]


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1]))
