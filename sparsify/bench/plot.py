"""PNG chart of a BenchResult: p50 latency and speedup per model, grouped by (batch, threads).

matplotlib is optional (the ``plot`` extra) and imported only here, with the Agg backend.
"""

from __future__ import annotations

import os
from pathlib import Path

from sparsify.bench.report import BenchResult, write_atomic
from sparsify.errors import SparsifyError

INSTALL_HINT = "pip install 'sparsify-compiler[plot]'"


def require_matplotlib() -> None:
    """Raise a SparsifyError with the install hint when matplotlib cannot be imported."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise SparsifyError(f"plotting needs matplotlib, which is not installed; install it with: {INSTALL_HINT}") from None


def plot_result(result: BenchResult, path: str | os.PathLike) -> Path:
    """Two panels: p50 ms (log scale, error bars p25–p75) and speedup vs the first model."""
    require_matplotlib()
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt
    import numpy as np

    points = list(dict.fromkeys((r.batch, r.threads) for r in result.records))
    labels = list(dict.fromkeys(r.label for r in result.records))
    by_key = {(r.label, r.batch, r.threads): r for r in result.records}
    x = np.arange(len(points))
    width = 0.8 / max(len(labels), 1)

    fig, (ax_lat, ax_sp) = plt.subplots(1, 2, figsize=(max(8.0, 2.2 * len(points) + 4), 4.8))
    for i, label in enumerate(labels):
        recs = [by_key.get((label, b, t)) for b, t in points]
        offs = x - 0.4 + width * (i + 0.5)
        p50 = np.array([r.stats.p50_ms if r else np.nan for r in recs])
        lo = np.array([r.stats.p50_ms - r.stats.p25_ms if r else 0.0 for r in recs])
        hi = np.array([r.stats.p75_ms - r.stats.p50_ms if r else 0.0 for r in recs])
        backend = next((r.backend for r in recs if r), "")
        ax_lat.bar(offs, p50, width, yerr=[lo, hi], capsize=2, label=f"{label} ({backend})")
        ax_sp.bar(offs, [r.speedup if r else np.nan for r in recs], width, label=label)

    ticks = [f"batch {b}\n{t} thread{'s' if t != 1 else ''}" for b, t in points]
    for ax in (ax_lat, ax_sp):
        ax.set_xticks(x, ticks)
        ax.grid(axis="y", alpha=0.3)
    ax_lat.set_yscale("log")
    ax_lat.set_ylabel("p50 latency (ms, log scale; bars p25–p75)")
    ax_lat.set_title("Latency")
    ax_lat.legend(fontsize="small")
    ax_sp.axhline(1.0, color="black", linewidth=0.8)
    ax_sp.set_ylabel(f"speedup vs {labels[0] if labels else 'first model'} (×)")
    ax_sp.set_title("Speedup (higher is better)")
    cpu = result.machine.get("cpu", "unknown CPU")
    fig.suptitle(f"sparsify bench — {cpu}, {result.machine.get('logical_cores')} logical cores", fontsize="medium")
    fig.tight_layout()
    fmt = Path(path).suffix.lstrip(".").lower() or "png"
    try:
        return write_atomic(path, lambda tmp: fig.savefig(tmp, format=fmt, dpi=120))
    finally:
        plt.close(fig)
