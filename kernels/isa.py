"""Which kernel variant the running host gets: from the CPU features the kernels compile for.

Numba compiles for the host CPU unless ``NUMBA_CPU_NAME`` / ``NUMBA_CPU_FEATURES`` name
another target; the variant follows the target the kernels are compiled for, which is the
host's real features (CPUID, read by LLVM) unless those variables say otherwise:

- ``"avx512"``: AVX-512F. Batch 1 runs the 16-lane sliced ELL read by ``vpermi2ps``.
- ``"avx2"``: AVX2 and FMA, no AVX-512F. Batch 1 runs the 8-lane sliced ELL read by two
  ``vpermps`` and a blend over 16-column windows; batched tiles fit 256-bit registers.
- ``"portable"``: anything else. The CSR kernels only (LLVM lowers their vector code to
  what the target has).

``SPARSIFY_KERNEL_ISA`` (one of VARIANTS) asks for a lower variant than the target
allows, e.g. to run the AVX2 kernels on an AVX-512 host; a higher one is refused.
"""

from __future__ import annotations

import os

import numba

VARIANTS = ("avx512", "avx2", "portable")
# Bytes per vector register of each variant (SSE2 for the portable one).
VECTOR_BYTES = {"avx512": 64, "avx2": 32, "portable": 16}
# The variant each variant can fall back to, in order of preference (each runs on the next).
_ORDER = {v: i for i, v in enumerate(VARIANTS)}
ENV = "SPARSIFY_KERNEL_ISA"

# CPU names LLVM knows, by the widest variant their default features reach (used when
# NUMBA_CPU_NAME names a target without NUMBA_CPU_FEATURES; a name not listed counts as
# portable, which every x86-64 runs).
_AVX512_NAMES = ("knl", "knm", "skylake-avx512", "skx", "cascadelake", "cooperlake", "cannonlake",
                 "icelake-client", "icelake-server", "tigerlake", "sapphirerapids", "graniterapids",
                 "graniterapids-d", "emeraldrapids", "rocketlake", "znver4", "znver5", "x86-64-v4")
_AVX2_NAMES = ("haswell", "broadwell", "skylake", "alderlake", "raptorlake", "meteorlake", "arrowlake",
               "arrowlake-s", "lunarlake", "gracemont", "sierraforest", "grandridge", "pantherlake",
               "znver1", "znver2", "znver3", "bdver4", "x86-64-v3")


def target_features() -> dict[str, bool]:
    """The CPU features Numba compiles for: NUMBA_CPU_FEATURES when set (an empty value
    means the named CPU's own, then {}: see :func:`target_variant`), else the host's (from
    LLVM; Numba adds them to a NUMBA_CPU_NAME given alone)."""
    cfg = numba.config
    if cfg.CPU_FEATURES is not None:
        return {f[1:]: f[0] == "+" for f in cfg.CPU_FEATURES.split(",") if f[:1] in "+-" and len(f) > 1}
    return llvm_host_features()


def llvm_host_features() -> dict[str, bool]:
    """The host CPU's features as LLVM reads them (CPUID); {} if it cannot."""
    try:
        import llvmlite.binding as llvm
        return dict(llvm.get_host_cpu_features())
    except Exception:  # an llvmlite that cannot read the host's features: assume nothing
        return {}


def _variant_of(features: dict[str, bool], cpu_name: str | None) -> str:
    if features:
        if features.get("avx512f"):
            return "avx512"
        if features.get("avx2") and features.get("fma"):
            return "avx2"
        return "portable"
    name = (cpu_name or "").lower()
    return "avx512" if name in _AVX512_NAMES else "avx2" if name in _AVX2_NAMES else "portable"


def target_variant() -> str:
    """The widest variant the compile target supports (see the module docstring)."""
    cfg = numba.config
    name = cfg.CPU_NAME if cfg.CPU_NAME not in (None, "", "host") else None
    feats = target_features()
    if cfg.CPU_FEATURES is not None and not feats and name is None:
        feats = llvm_host_features()  # empty features for the host CPU: the host's own
    return _variant_of(feats, name)


def select(requested: str | None = None) -> str:
    """The variant to run: ``requested`` (default: ``$SPARSIFY_KERNEL_ISA``, else the
    target's widest), checked against what the target supports."""
    best = target_variant()
    want = requested if requested is not None else (os.environ.get(ENV) or best)
    if want not in _ORDER:
        raise ValueError(f"kernel ISA {want!r} should be one of {VARIANTS}")
    if _ORDER[want] < _ORDER[best]:
        raise ValueError(f"kernel ISA {want!r} is not available here: the kernels compile for "
                         f"{describe_target()}, which allows {best!r} at most")
    return want


def describe_target() -> str:
    """The compile target in a few words, e.g. ``"host znver4 (avx512f, avx2, fma)"``."""
    cfg = numba.config
    if cfg.CPU_NAME not in (None, "", "host"):
        name = f"NUMBA_CPU_NAME={cfg.CPU_NAME}"
    else:
        try:
            import llvmlite.binding as llvm
            name = f"host {llvm.get_host_cpu_name()}"
        except Exception:
            name = "host"
    feats = target_features()
    have = [f for f in ("avx512f", "avx2", "fma") if feats.get(f)]
    return f"{name} ({', '.join(have) if have else 'features from the CPU name'})"


def describe_variant() -> str:
    """One line for people: the variant in use and the target it is compiled for."""
    return f"{VARIANT} kernels, compiled for {describe_target()}"


def host_isa() -> dict[str, object]:
    """What benchmark JSON and ``describe`` report: the variant in use, the target's widest,
    the compile target and the real host CPU's vector features."""
    try:
        import llvmlite.binding as llvm
        host = llvm.get_host_cpu_features()
        host_name = llvm.get_host_cpu_name()
        host_feats = [f for f in ("avx512f", "avx512vl", "avx2", "fma") if host.get(f)]
    except Exception:
        host_name, host_feats = "unknown", []
    return {"kernel_variant": VARIANT, "target_variant": target_variant(), "target": describe_target(),
            "host_cpu": host_name, "host_features": host_feats}


def _initial_variant() -> str:
    try:
        return select()
    except ValueError as exc:  # a bad SPARSIFY_KERNEL_ISA: say so, run what the target allows
        import warnings
        warnings.warn(f"{ENV} ignored: {exc}", RuntimeWarning, stacklevel=2)
        return target_variant()


# The variant this process runs, chosen once at import (Numba compiles for one target per process).
VARIANT = _initial_variant()

__all__ = ["VARIANTS", "VECTOR_BYTES", "VARIANT", "ENV", "select", "target_variant", "target_features", "describe_target",
           "describe_variant", "host_isa"]
