"""Shared pieces of the benchmark scripts: argument parsing, the JSON envelope, failures.

Every script writes one JSON document::

    {"schema": "sparsify.<name>/<version>", "created": "<UTC ISO time>", "machine": machine_info(),
     "config": {...}, ... script-specific fields ...}

atomically (temporary file + ``os.replace``, via ``sparsify.bench.report.write_atomic``).
Every step a script calls exists: a step that fails stops the script with one paragraph
(:func:`stop`) or, under a script's ``--keep-going``, is recorded as ``{"failed": "<reason>"}``
(:func:`failure`); nothing is faked.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, NoReturn

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "benchmarks" / "results"


def parser(description: str, default_out: str, plot: bool = True) -> argparse.ArgumentParser:
    """``--quick``, ``--out PATH`` (JSON) and, when ``plot``, ``--plot PATH`` / ``--no-plot``."""
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--quick", action="store_true", help="a tiny subset for development (< 1 min)")
    p.add_argument("--out", type=Path, default=RESULTS / default_out, help="JSON output path")
    if plot:
        p.add_argument("--plot", type=Path, default=None,
                       help="PNG output path (default: the JSON path with .png)")
        p.add_argument("--no-plot", action="store_true", help="do not write the PNG")
    return p


def plot_path(args: argparse.Namespace) -> Path | None:
    """Where the PNG goes: ``--plot``, else beside the JSON; None with ``--no-plot``."""
    if getattr(args, "no_plot", False):
        return None
    return args.plot if args.plot is not None else args.out.with_suffix(".png")


# The environment of a benchmark re-run for the AVX2 kernel variant on a host that also has
# AVX-512 (``--isa avx2``): Numba compiles the kernels for Zen 2 (AVX2 and FMA, no
# AVX-512), torch and OpenBLAS are limited to AVX2 code; ONNX Runtime has no such switch.
AVX2_ENV = {"NUMBA_CPU_NAME": "znver2", "NUMBA_CPU_FEATURES": "", "ATEN_CPU_CAPABILITY": "avx2",
            "ONEDNN_MAX_CPU_ISA": "AVX2", "OPENBLAS_CORETYPE": "Haswell"}


def rerun_for_avx2(script: str, argv: list[str], out: Path) -> int | None:
    """Run ``script`` again with AVX2_ENV (``--out out`` unless given) and return its exit
    code; None when this process already is that re-run."""
    import subprocess

    if os.environ.get("NUMBA_CPU_NAME") == AVX2_ENV["NUMBA_CPU_NAME"]:
        return None
    rest = list(argv)
    if "--out" not in rest:
        rest += ["--out", str(out)]
    env = {**os.environ, **AVX2_ENV}
    env.pop("SPARSIFY_KERNEL_ISA", None)
    return subprocess.run([sys.executable, script, *rest], env=env, check=False).returncode


# Environment variables that change how the thread pools behave (recorded with every result).
THREAD_ENV_PREFIXES = ("OMP_", "GOMP_", "KMP_", "NUMBA_", "MKL_", "OPENBLAS_")


def thread_env() -> dict[str, str]:
    """The thread-pool environment variables that are set (OMP_*, GOMP_*, KMP_*, NUMBA_*, MKL_*, OPENBLAS_*)."""
    return {k: v for k, v in sorted(os.environ.items()) if k.startswith(THREAD_ENV_PREFIXES)}


def envelope(schema: str, config: dict[str, Any]) -> dict[str, Any]:
    """The common head of every document: schema, created, machine, config, thread env,
    ``isa`` (the kernel variant this process runs and the host CPU, ``kernels.isa.host_isa``)
    and ``load``: the load averages now, as ``before``; :func:`finish` adds ``after``."""
    from sparsify.machine import machine_info
    from sparsify.kernels.isa import host_isa

    return {"schema": schema, "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "machine": machine_info(), "config": config, "env": thread_env(), "isa": host_isa(),
            "load": {"before": list(os.getloadavg())}}


def file_mode(path: str | os.PathLike | None = None) -> int:
    """Permissions for a file written atomically: those of ``path`` if it exists, else 0o666 minus the umask.

    (The temporary file of an atomic write is created 0o600; without this the result would be too.)
    """
    if path is not None and os.path.exists(path):
        return os.stat(path).st_mode & 0o777
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


def write_text_atomic(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically (temporary file + os.replace), keeping or defaulting its permissions."""
    from sparsify.bench.report import write_atomic

    mode = file_mode(path)

    def write(tmp: Path) -> None:
        tmp.write_bytes(data)
        os.chmod(tmp, mode)

    return write_atomic(path, write)


def write_json(path: str | os.PathLike, doc: dict[str, Any]) -> Path:
    """Write ``doc`` atomically as indented JSON; refuses NaN/inf (not valid JSON)."""
    return write_text_atomic(path, (json.dumps(doc, indent=2, allow_nan=False) + "\n").encode("utf-8"))


def finish(path: str | os.PathLike, doc: dict[str, Any]) -> Path:
    """Record the load averages now as ``doc["load"]["after"]``, write ``doc`` to ``path``
    (:func:`write_json`) and say so."""
    doc.setdefault("load", {})["after"] = list(os.getloadavg())
    out = write_json(path, doc)
    say(f"wrote {out}" + (f" ({doc['total_s']} s)" if "total_s" in doc else ""))
    return out


def pyplot():
    """matplotlib.pyplot with the non-interactive Agg backend (a clear error when matplotlib is missing)."""
    from sparsify.bench.plot import require_matplotlib

    require_matplotlib()
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig, path: str | os.PathLike) -> Path:
    """Write ``fig`` as PNG atomically and close it."""
    import matplotlib.pyplot as plt

    from sparsify.bench.report import write_atomic

    mode = file_mode(path)

    def write(tmp: Path) -> None:
        fig.savefig(tmp, format="png", dpi=110)
        os.chmod(tmp, mode)

    try:
        return write_atomic(path, write)
    finally:
        plt.close(fig)


def write_outputs(args: argparse.Namespace, doc: dict[str, Any],
                  plot: Callable[[dict[str, Any], Path], Any] | None = None) -> None:
    """:func:`finish` ``doc`` to ``args.out`` and, unless ``--no-plot``, write the PNG made by ``plot(doc, path)``."""
    finish(args.out, doc)
    png = plot_path(args)
    if plot is not None and png is not None:
        plot(doc, png)
        say(f"wrote {png}")


def failure(exc: BaseException) -> str:
    """The one-line reason recorded for a failed step: ``"<type>: <first line of the message>"``."""
    first = str(exc).splitlines()[0] if str(exc) else ""
    return f"{type(exc).__name__}: {first}"[:500]


def stop(step: str, reason: str, hint: str) -> NoReturn:
    """End the script with one paragraph on stderr (exit 1): which step failed, why, and what to do."""
    raise SystemExit(f"[bench] {step} failed: {reason}. {hint}")


def finite(x: float | None, digits: int = 6) -> float | None:
    """``x`` rounded to ``digits`` significant digits; None for None, NaN or inf."""
    if x is None or not math.isfinite(x):
        return None
    return float(f"{x:.{digits}g}")


def say(msg: str) -> None:
    """Progress on stderr (stdout stays free for the summary)."""
    print(f"[bench] {msg}", file=sys.stderr, flush=True)


def l3_bytes() -> int | None:
    """The last-level cache size the kernel reports for cpu0 (None when unknown).

    Under a hypervisor this is what the guest is told, which need not be what a process
    effectively gets; the roofline measures bandwidth at several sizes instead of trusting it.
    """
    base = Path("/sys/devices/system/cpu/cpu0/cache")
    best = None
    for idx in sorted(base.glob("index*")):
        try:
            level = int((idx / "level").read_text())
            size = (idx / "size").read_text().strip()
        except (OSError, ValueError):
            continue
        mult = {"K": 1024, "M": 1024**2, "G": 1024**3}.get(size[-1:], 1)
        value = int(size.rstrip("KMG")) * mult
        if best is None or level >= best[0]:
            best = (level, value)
    return None if best is None else best[1]


def ffn_mlp(width: int = 4096, depth: int = 4, seed: int = 0):
    """The FFN-heavy MLP of the model benchmarks: ``depth`` x (Linear(width, width) + ReLU), seeded random weights.

    Referenced by runs as ``benchmarks.common:ffn_mlp``; its input is ``(N, width)``.
    """
    import torch
    from torch import nn

    torch.manual_seed(seed)
    layers: list[nn.Module] = []
    for _ in range(depth):
        layers += [nn.Linear(width, width), nn.ReLU()]
    return nn.Sequential(*layers)
