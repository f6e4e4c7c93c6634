"""Kernel variants per host: the selection rule, and every variant checked on any host.

An AVX-512 host runs the AVX2 and portable kernels too, but compiled for its own CPU.
To check the code an AVX2-only or a baseline x86-64 host would run, a subprocess
compiles the kernels for that target (``NUMBA_CPU_NAME``) and tests them there
(``tests/kernels/target_check.py``): the variant it selects, the results against dense
numpy, and no instruction the target lacks in the compiled code.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from sparsify.kernels import KernelArgumentError, SparseLinear, isa
from sparsify.kernels.csr import CSR

REPO = Path(__file__).resolve().parents[2]


def test_variant_follows_the_target_features(monkeypatch):
    assert isa._variant_of({"avx512f": True, "avx2": True, "fma": True}, None) == "avx512"
    assert isa._variant_of({"avx512f": False, "avx2": True, "fma": True}, None) == "avx2"
    assert isa._variant_of({"avx2": True}, None) == "portable"  # no FMA
    assert isa._variant_of({"sse4.2": True}, None) == "portable"
    assert isa._variant_of({}, "znver2") == "avx2" and isa._variant_of({}, "haswell") == "avx2"
    assert isa._variant_of({}, "skylake-avx512") == "avx512" and isa._variant_of({}, "x86-64") == "portable"
    monkeypatch.setattr(isa.numba.config, "CPU_NAME", "generic")
    monkeypatch.setattr(isa.numba.config, "CPU_FEATURES", "")
    assert isa.target_variant() == "portable"
    monkeypatch.setattr(isa.numba.config, "CPU_NAME", "znver2")
    assert isa.target_variant() == "avx2"  # empty features: the named CPU's own
    monkeypatch.setattr(isa.numba.config, "CPU_FEATURES", None)  # unset: Numba adds the host's
    assert isa.target_variant() == isa._variant_of(isa.llvm_host_features(), None)
    monkeypatch.setattr(isa.numba.config, "CPU_NAME", None)
    monkeypatch.setattr(isa.numba.config, "CPU_FEATURES", "+avx2,+fma,-avx512f")
    assert isa.target_variant() == "avx2"
    monkeypatch.setattr(isa.numba.config, "CPU_FEATURES", "+avx2,+fma,+avx512f")
    assert isa.target_variant() == "avx512"


def test_select_takes_lower_variants_and_refuses_higher(monkeypatch):
    monkeypatch.setattr(isa, "target_variant", lambda: "avx2")
    assert isa.select() == "avx2" and isa.select("portable") == "portable"
    monkeypatch.setenv(isa.ENV, "portable")
    assert isa.select() == "portable"
    with pytest.raises(ValueError, match="'avx512' is not available here"):
        isa.select("avx512")
    with pytest.raises(ValueError, match="should be one of"):
        isa.select("sse9")
    with pytest.raises(KernelArgumentError, match="not available here"):
        SparseLinear(CSR.from_dense(np.ones((2, 2), np.float32)), variant="avx512")


def test_host_isa_names_the_variant_and_the_host():
    info = isa.host_isa()
    assert info["kernel_variant"] == isa.VARIANT in isa.VARIANTS
    assert info["target_variant"] in isa.VARIANTS and info["host_cpu"]


def _run_target(cpu: str, variant: str, cache: Path) -> subprocess.CompletedProcess:
    # An empty NUMBA_CPU_FEATURES means the named CPU's own features (unset, Numba would add
    # the host's, AVX-512 included); a fresh cache, because Numba does not disassemble
    # kernels loaded from its cache, and the assembly check needs them compiled.
    env = dict(os.environ, NUMBA_CPU_NAME=cpu, NUMBA_CPU_FEATURES="", NUMBA_CACHE_DIR=str(cache))
    env.pop(isa.ENV, None)
    return subprocess.run([sys.executable, "-m", "tests.kernels.target_check", variant], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=1200)


@pytest.mark.slow
@pytest.mark.parametrize("cpu, variant", [("znver2", "avx2"), ("x86-64", "portable")])
def test_kernels_compiled_for_another_target_match_dense(cpu, variant, tmp_path):
    if variant != "portable" and isa._ORDER[isa.target_variant()] > isa._ORDER[variant]:
        pytest.skip(f"this host cannot run {variant} code")
    proc = _run_target(cpu, variant, tmp_path)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    assert proc.stdout.strip().splitlines()[-1].startswith(f"ok {variant} ")
