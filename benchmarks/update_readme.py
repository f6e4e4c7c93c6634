"""Regenerate the results sections of README.md and benchmarks/README.md from benchmarks/results/*.json.

README.md gets a short headline table (per host and kernel variant: whole models at batch 1 -
the sparse MLP and the deploy-shaped models at 90 % - the slim models, and the recipes'
accuracy) and a link to benchmarks/README.md, which gets the full tables: every kernel target
per variant, every deploy-model and models.json variant, compile cost, the roofline and
accuracy by method. Each figure keeps the
host CPU, the kernel variant and the load average its JSON file records.

In each file only the text between the marker lines ``<!-- results:begin ... -->`` and
``<!-- results:end -->`` is replaced; the markers and everything outside them stay
byte-for-byte. The sections depend only on the JSON contents (never on the clock), so
running the script twice changes nothing. The writes are atomic.

Documents read when present (a missing or unrecognized one is named as "not measured"):
``kernels.json`` and ``kernels_avx2.json`` (bench_kernels.py), ``sparse_e2e.json`` and
``sparse_e2e_avx2.json`` (bench_sparse_e2e.py), ``slim.json`` (``sparsify.slim/1``, bench_slim.py),
``models.json``, ``models_deploy.json`` and ``models_deploy_avx2.json`` (``sparsify.models/1``), ``compile.json`` (``sparsify.compile/1``),
``roofline.json`` (``sparsify.roofline/1``), ``quality.json`` (``sparsify.quality/1``,
bench_quality.py; shown only when present).

Run from the repository root::

    python benchmarks/update_readme.py [--readme README.md] [--bench-readme benchmarks/README.md]
                                       [--results benchmarks/results] [--check]

``--check`` writes nothing and exits 1 when either file is out of date.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
BEGIN = re.compile(r"^<!-- results:begin\b.*-->[ \t]*$", re.M)
END = re.compile(r"^<!-- results:end -->[ \t]*$", re.M)
COMMANDS = [
    ("kernels.json", "python benchmarks/bench_kernels.py --plot benchmarks/results/kernels.png"),
    ("kernels_avx2.json", "python benchmarks/bench_kernels.py --isa avx2 --plot benchmarks/results/kernels_avx2.png"),
    ("sparse_e2e.json", "python benchmarks/bench_sparse_e2e.py"),
    ("sparse_e2e_avx2.json", "python benchmarks/bench_sparse_e2e.py --isa avx2"),
    ("slim.json", "python benchmarks/bench_slim.py"),
    ("models.json", "python benchmarks/bench_models.py"),
    ("models_deploy.json", "python benchmarks/bench_models.py --models bert-base,vit-base,resnet-50 "
                           "--out benchmarks/results/models_deploy.json"),
    ("models_deploy_avx2.json", "python benchmarks/bench_models.py --models bert-base,vit-base,resnet-50 "
                                "--out benchmarks/results/models_deploy_avx2.json --isa avx2 --batches 1 --threads 2 "
                                "--sparsities 0.9,0.95"),
    ("compile.json", "python benchmarks/bench_compile.py"),
    ("roofline.json", "python benchmarks/roofline.py"),
    ("quality.json", "python benchmarks/bench_quality.py"),
]


class ReadmeError(Exception):
    """The README cannot be updated (markers missing, duplicated or out of order)."""


def load(results: Path, name: str, schema_prefix: str | None) -> dict[str, Any] | None:
    """The JSON document ``name`` when it exists, parses, and (if given) has a schema starting with the prefix."""
    path = results / name
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(doc, dict):
        return None
    if schema_prefix is not None and not str(doc.get("schema", "")).startswith(schema_prefix):
        return None
    return doc


def x(v: float | None) -> str:
    """A speedup or ratio as ``×1.23`` (``-`` when missing)."""
    if v is None:
        return "-"
    return f"×{v:.2f}" if v >= 0.1 else f"×{v:.2g}"


def ms(v: float | None) -> str:
    """Milliseconds with 3 significant digits (``-`` when missing)."""
    if v is None:
        return "-"
    return f"{v:.3g} ms" if v < 1000 else f"{v / 1000:.3g} s"


def table(head: list[str], rows: list[list[str]]) -> list[str]:
    """A GitHub Markdown table (first column left-aligned, the others right-aligned)."""
    out = ["| " + " | ".join(head) + " |",
           "| " + " | ".join([":---"] + ["---:"] * (len(head) - 1)) + " |"]
    out += ["| " + " | ".join(c.replace("|", "\\|") for c in r) + " |" for r in rows]
    return out


# -- headline ---------------------------------------------------------------------------------------

def headline_kernels(doc: dict | None) -> list[list[str]]:
    if doc is None or not doc.get("headline"):
        return []
    rows = []
    hs = [h for h in doc["headline"] if list(h["shape"]) == [4096, 4096]]
    if hs:
        hs.sort(key=lambda h: h["batch"])
        parts = ", ".join(f"batch {h['batch']} {x(h['speedup_vs_ort_dense'])}" for h in hs)
        rows.append([f"Sparse kernel vs ORT dense, 4096×4096 layer at {hs[0]['sparsity']:.0%} sparsity",
                     parts, "kernels.json"])
    for h in doc["headline"]:
        if list(h["shape"]) != [4096, 4096]:
            rows.append([f"Sparse kernel vs ORT dense, {h['shape'][0]}×{h['shape'][1]} at {h['sparsity']:.0%}, "
                         f"batch {h['batch']}", x(h["speedup_vs_ort_dense"]), "kernels.json"])
    return rows


# Per-ISA documents: (kernels, end to end) per row label of the per-ISA table.
ISA_DOCS = (("kernels.json", "sparse_e2e.json"), ("kernels_avx2.json", "sparse_e2e_avx2.json"))
# Issue 14's end-to-end targets for the 4x4096 MLP at batch 1: vs ORT dense, vs the fastest dense.
E2E_TARGETS = (5.0, 3.0)


def _isa_label(doc: dict) -> str:
    """``avx512 kernels on AMD EPYC (host znver4)`` from a document's machine/isa fields."""
    info = doc.get("isa") or (doc.get("machine") or {}).get("isa") or {}
    m = doc.get("machine") or {}
    cpu = m.get("cpu") or m.get("cpu_model") or "unknown CPU"
    target = info.get("target", "?")
    compiled = "" if str(target).startswith("host") else f", compiled for {target.split('=')[-1].split(' ')[0]}"
    return f"{info.get('kernel_variant', '?')}{compiled} on {cpu} ({info.get('host_cpu', '?')})"


def _met(ok: bool | None) -> str:
    return "-" if ok is None else ("yes" if ok else "**no**")


def isa_table(docs: dict[str, dict | None]) -> list[str]:
    """Issue 14's headline points per kernel variant: ours p50 / p90, each dense runtime,
    ratios against ORT and the fastest, the targets and whether they are met."""
    rows = []
    for kname, ename in ISA_DOCS:
        kdoc, edoc = docs.get(kname), docs.get(ename)
        for h in (kdoc or {}).get("headline", []):
            if "speedup_vs_fastest_dense" not in h:
                continue
            target = "-" if "target_speedup_vs_fastest" not in h else f"×{h['target_speedup_vs_fastest']:g} fastest" + (
                f", ×{h['target_speedup_vs_ort']:g} ORT" if h.get("target_speedup_vs_ort") else "") + ", p90 ≤ 2×p50"
            rows.append([_isa_label(kdoc), f"{h['shape'][0]}×{h['shape'][1]} at {h['sparsity']:.0%}, batch {h['batch']}",
                         _load(kdoc), f"{ms(h['ours_median_ms'])} / {ms(h['ours_p90_ms'])}",
                         " / ".join(ms(h.get(f"{k}_median_ms")) for k in ("ort_dense", "torch_dense", "numpy_dense")),
                         x(h["speedup_vs_ort_dense"]), f"{x(h['speedup_vs_fastest_dense'])} ({h['fastest_dense']})",
                         target, _met(h.get("met")), kname])
        mlp = (edoc or {}).get("mlp")
        for r in (mlp or {}).get("rows", []) if isinstance(mlp, dict) else []:
            if r.get("batch") != 1 or "speedup_p50_vs_fastest_dense" not in r:
                continue
            ratio = (r["sparsify"]["p90_ms"] / r["sparsify"]["p50_ms"]) if r["sparsify"].get("p50_ms") else None
            ok = (r["speedup_p50"] >= E2E_TARGETS[0] and r["speedup_p50_vs_fastest_dense"] >= E2E_TARGETS[1]
                  and ratio is not None and ratio <= 2.0)
            rows.append([_isa_label(edoc), f"4×Linear({mlp.get('width')}) MLP at 90%, end to end, batch 1",
                         _load(edoc), f"{ms(r['sparsify']['p50_ms'])} / {ms(r['sparsify']['p90_ms'])}",
                         " / ".join(ms((r.get(k) or {}).get("p50_ms")) for k in ("ort_dense", "torch_dense")) + " / -",
                         x(r["speedup_p50"]), f"{x(r['speedup_p50_vs_fastest_dense'])} ({r['fastest_dense']})",
                         f"×{E2E_TARGETS[1]:g} fastest, ×{E2E_TARGETS[0]:g} ORT, p90 ≤ 2×p50", _met(ok), ename])
    if not rows:
        return []
    return ["Issue 14's targets per kernel variant (2 threads; ours and every dense runtime interleaved in one "
            "process; AVX2 rows are AVX2 code compiled for Zen 2 and run on the host named, see "
            "`machine.dense_isa` in their JSON for what the dense runtimes ran):", "",
            *table(["kernels (variant, host)", "point", "load", "ours p50 / p90", "ORT / torch / numpy dense p50", "vs ORT",
                    "vs fastest dense", "target", "met", "source"], rows), ""]


def _variant(models: dict | None, model: str, name: str) -> dict | None:
    for m in (models or {}).get("models", []):
        if m.get("model") == model:
            return next((v for v in m.get("variants", []) if v.get("variant") == name), None)
    return None


def _point(lat: dict) -> str:
    t = lat.get("threads")
    return f"batch {lat['batch']}" + (f", {t} thread{'s' if t != 1 else ''}" if t else "")


def _lat(v: dict | None) -> str:
    if not v or not v.get("latency"):
        return "-"
    return "; ".join(f"{_point(lat)} {x(lat['speedup'])}" for lat in v["latency"])


def headline_e2e(e2e: dict | None, models: dict | None) -> list[list[str]]:
    rows = []
    mlp = (e2e or {}).get("mlp")
    if isinstance(mlp, dict) and mlp.get("rows"):
        parts = ", ".join(f"batch {r['batch']} {x(r.get('speedup_p50'))}" for r in mlp["rows"])
        rows.append([f"4×Linear({mlp.get('width')}) MLP at {mlp.get('sparsity', 0.9):.0%}: sparse runtime vs dense "
                     f"ONNX in ORT, end to end, {(e2e.get('config') or {}).get('threads', '?')} threads", parts,
                     "sparse_e2e.json"])
    v = _variant(models, "mlp-4096", "sparse-90")
    if v and v.get("latency"):
        rows.append(["4×Linear(4096) MLP at 90% through the API (prune, export --mode sparse) vs dense ONNX",
                     _lat(v), "models.json"])
    return rows


def headline_slim(slim: dict | None, models: dict | None) -> list[list[str]]:
    rows = []
    for r in (slim or {}).get("results", []):
        rows.append([f"Slim {r['model']} (ratio 0.5): latency dense / slim in ORT, batch {r.get('batch', 1)}",
                     f"{x(1 / r['latency_ratio_p50']) if r.get('latency_ratio_p50') else '-'} "
                     f"(MACs {x(r.get('macs_ratio'))} of dense)", "slim.json"])
    if rows:
        return rows
    for model in ("resnet-style", "bert-style"):
        v = _variant(models, model, "slim-50")
        if v and v.get("latency"):
            rows.append([f"Slim {model} (ratio 0.5) vs dense ONNX", _lat(v), "models.json"])
    return rows


HEADLINE_VARIANTS = ("slim-50", "sparse-90")


def _short(lat: dict) -> str:
    return f"b{lat['batch']}/{lat.get('threads', '?')}t"


def headline_demo(models: dict | None) -> list[list[str]]:
    """Per digits model: dense accuracy, and accuracy + batch-1 speedups of the 50% slim and 90% sparse variants."""
    rows = []
    for m in (models or {}).get("models", []):
        dense = m.get("dense", {})
        if m.get("data") is None or dense.get("test_accuracy") is None:
            continue
        parts = [f"dense {dense['test_accuracy']:.1f}%"]
        for v in m.get("variants", []):
            acc = v.get("finetuned_accuracy")
            if v.get("variant") not in HEADLINE_VARIANTS or acc is None:
                continue
            speed = ", ".join(f"{x(lat['speedup'])} {_short(lat)}" for lat in v.get("latency", []) if lat["batch"] == 1)
            parts.append(f"{v['variant']} {acc:.1f}%" + (f" ({speed})" if speed else ""))
        rows.append([f"{m['model']}: test accuracy after brief fine-tuning (speedup vs dense ONNX, "
                     "batch/threads)", "; ".join(parts), "models.json"])
    return rows


# -- details --------------------------------------------------------------------------------------

def models_details(models: dict | None) -> list[str]:
    if not models or not models.get("models"):
        return []
    rows = []
    for m in models["models"]:
        if "failed" in m:
            rows.append([m["model"], "all", "-", "-", "-", "-", "-", f"FAILED: {m['failed']}"])
            continue
        dense = m.get("dense", {})
        for v in [{"variant": "dense", **dense}, *m.get("variants", [])]:
            onnx = v.get("onnx") or {}
            acc = v.get("test_accuracy", v.get("finetuned_accuracy"))
            failed = v.get("failed")
            lat = "; ".join(f"{_short(lat)} {ms(lat['p50_ms'])} ({x(lat['speedup'])})" for lat in v.get("latency", []))
            csr = (v.get("export_summary") or {}).get("nonzeros") if v.get("kind") in ("sparse", "block") else None
            macs = (v.get("run") or {}).get("nonzero_macs") or onnx.get("macs")
            rows.append([m["model"], v["variant"], "-" if acc is None else f"{acc:.1f}%",
                         f"{onnx['nonzeros']:,}" if "nonzeros" in onnx else "-",
                         "-" if csr is None else f"{csr:,}" if csr else "0 (kept dense)",
                         f"{macs:,}" if macs else "-",
                         f"{onnx['file_bytes'] / 2**20:.2f}" if "file_bytes" in onnx else "-",
                         lat or (f"FAILED: {failed}" if failed else "-")])
    return ["<details><summary>All model variants (models.json)</summary>", "",
            *table(["model", "variant", "accuracy", "nonzero weights", "weights in CSR", "MACs (nonzero)", "file MiB",
                    "p50 latency (speedup vs dense) per batch/threads"], rows),
            "", "</details>", ""]


def compile_details(doc: dict | None) -> list[str]:
    if not doc or not doc.get("models"):
        return []
    steps = doc.get("config", {}).get("steps") or [s["step"] for s in doc["models"][0]["steps"]]
    rows = []
    for m in doc["models"]:
        by = {s["step"]: s for s in m["steps"]}
        cells = []
        for s in steps:
            st = by.get(s, {})
            cells.append(f"{st['wall_s_p50']:.1f} s / {st['peak_mib_p50']:.0f} MiB" if "wall_s_p50" in st else "-")
        rows.append([m["model"], *cells])
    return ["<details><summary>Compile cost: wall time / peak extra memory per step, p50 (compile.json)</summary>",
            "", *table(["model", *steps], rows), "", "</details>", ""]


def roofline_details(doc: dict | None) -> list[str]:
    if not doc or not doc.get("ceilings"):
        return []
    rows = [[f"{t} thread{'s' if t != '1' else ''}", f"{c['dram_gbps']:.1f} GB/s ({c['dram_size_mib']} MiB array)",
             f"{c['cache_gbps']:.1f} GB/s ({c['cache_size_mib']} MiB array)",
             f"{c['peak_gflops']:.0f} GFLOP/s ({c['peak_lib']}"
             + (f", {c['peak_n']}³" if c.get("peak_n") else "") + ")"] for t, c in doc["ceilings"].items()]
    krows = [[f"{k['impl']} {k['rows']}×{k['cols']}", str(k["batch"]), str(k["threads"]), ms(k["p50_ms"]),
              f"{k['gbps_p50']:.1f}", f"{k['gflops_p50']:.1f}", f"{k['pct_of_roof_dram']:.0f}%",
              f"{k['pct_of_roof_cache']:.0f}%"]
             for k in doc.get("kernels", [])]
    return ["<details><summary>Roofline: machine ceilings and kernels against them (roofline.json)</summary>", "",
            *table(["ceilings (best sample)", "read bandwidth, large array", "read bandwidth, small array",
                    "fp32 GEMM peak"], rows), "",
            *table(["kernel (90% sparse / dense)", "batch", "threads", "p50", "GB/s", "GFLOP/s", "of DRAM roof",
                   "of cache roof"], krows),
            "", "</details>", ""]


def headline_quality(doc: dict | None) -> list[list[str]]:
    """Per digits model: dense accuracy and accuracy after its two default recipes."""
    rows = []
    for m in (doc or {}).get("models", []):
        r = m.get("recipes", {})
        parts = [f"dense {m['dense_accuracy']:.1f}%"]
        for key, label in (("unstructured_90", "90% unstructured"), ("channels_50", "50% channels")):
            if key in r:
                parts.append(f"{label} {r[key]['accuracy']:.1f}% ({r[key]['delta']:+.1f})")
        rows.append([f"{m['model']}: test accuracy after its default recipes (gradual pruning + distillation)",
                     "; ".join(parts), "quality.json"])
    return rows


def quality_details(doc: dict | None) -> list[str]:
    """Model × method × sparsity: one-shot test accuracy without fine-tuning, then the recipes and the targets."""
    if not doc or not doc.get("models"):
        return []
    rows = []
    for m in doc["models"]:
        for method, accs in m.get("oneshot", {}).items():
            rows.append([m["model"], f"one-shot {method}", *(f"{accs[k]:.1f}%" if k in accs else "-"
                                                          for k in ("0.5", "0.7", "0.9", "2:4"))])
        ch = m.get("channels_oneshot", {})
        rows.append([m["model"], "one-shot channels (l1), 25 / 50 / 75%",
                     *(f"{ch[k]:.1f}%" if k in ch else "-" for k in ("0.25", "0.5", "0.75")), "-"])
        r = m.get("recipes", {})
        rows.append([m["model"], "default recipes (dense / 90% / 50% channels)", f"{m['dense_accuracy']:.1f}%",
                     *(f"{r[k]['accuracy']:.1f}%" if k in r else "-" for k in ("unstructured_90", "channels_50")),
                     "-"])
    targets = [[t["target"], "met" if t["met"] else "**not met**", t["detail"]] for t in doc.get("targets", [])]
    return ["<details><summary>Accuracy by method and sparsity (quality.json)</summary>", "",
            *table(["model", "method", "50%", "70%", "90%", "2:4"], rows), "",
            *table(["target (issue 17)", "", "measured"], targets), "", "</details>", ""]


def _load(doc: dict) -> str:
    """The 1-minute load average a document records: ``11.4 at start``, ``10.1 at the end`` or ``not recorded``."""
    m = doc.get("machine") or {}
    load = doc.get("load") or {}
    before = load.get("before") or m.get("loadavg_start")
    when = "at start" if before else "at the end"
    before = before or m.get("loadavg") or doc.get("loadavg")
    return f"{before[0]:.1f} {when}" if isinstance(before, list) and before else "not recorded"


def machine_line(docs: dict[str, dict | None]) -> list[str]:
    lines = []
    for name, doc in docs.items():
        if not doc:
            continue
        m = dict(doc.get("machine", {}))
        m.setdefault("cpu", m.get("cpu_model", "unknown CPU"))  # bench_kernels.py names it cpu_model
        m.setdefault("usable_cores", m.get("logical_cpus", "?"))
        pk = m.get("packages") or {}
        versions = ", ".join(f"{k} {v}" for k, v in pk.items() if v)
        load = _load(doc)
        load_s = f"; load average {load}" if load != "not recorded" else ""
        created = doc.get("created", "")
        cores = m.get("usable_cores", m.get("logical_cores", "?"))
        extra = (f"; {versions}" if versions else "") + (f"; {created}" if created else "")
        lines.append(f"- `{name}`: {m.get('cpu', 'unknown CPU')}, {cores} usable cores{load_s}{extra}")
    return lines


def load_all(results: Path) -> dict[str, dict | None]:
    """Every document the sections read, by file name (None when missing or unrecognized)."""
    kernels = load(results, "kernels.json", None)
    if kernels is not None and "headline" not in kernels:
        kernels = None
    return {"kernels.json": kernels, "kernels_avx2.json": load(results, "kernels_avx2.json", None),
            "sparse_e2e.json": load(results, "sparse_e2e.json", "sparsify.sparse_e2e/"),
            "sparse_e2e_avx2.json": load(results, "sparse_e2e_avx2.json", "sparsify.sparse_e2e/"),
            "slim.json": load(results, "slim.json", "sparsify.slim/"),
            "models.json": load(results, "models.json", "sparsify.models/"),
            **{name: load(results, name, "sparsify.models/") for name in DEPLOY_DOCS},
            "compile.json": load(results, "compile.json", "sparsify.compile/"),
            "roofline.json": load(results, "roofline.json", "sparsify.roofline/"),
            "quality.json": load(results, "quality.json", "sparsify.quality/")}


# -- the models people deploy (bench_models.py --models bert-base,vit-base,resnet-50) --------------

DEPLOY_DOCS = ("models_deploy.json", "models_deploy_avx2.json")
# Issue 15's targets at 2 threads against the fastest dense runtime: (model, variant) -> speedup.
DEPLOY_TARGETS = {("bert-base", "sparse-90"): 2.0, ("vit-base", "sparse-90"): 1.5, ("resnet-50", "sparse-90"): 1.3,
                  ("resnet-50", "sparse-95"): 1.6}
DEPLOY_NAMES = {"bert-base": "BERT-base-shaped encoder (128 tokens)", "vit-base": "ViT-Base/16-shaped (224²)",
                "resnet-50": "ResNet-50-shaped CNN (224²)"}
# Unconverted sparse export against plain ONNX Runtime: at most this much slower (issue 15).
UNCONVERTED_LIMIT = 1.05


def _latency_at(v: dict, batch: int, threads: int) -> dict | None:
    return next((lat for lat in v.get("latency", []) if (lat["batch"], lat["threads"]) == (batch, threads)), None)


def _fastest_dense(m: dict, batch: int, threads: int) -> tuple[float, str] | None:
    dense = m.get("dense") or {}
    pts = [(lat["p50_ms"], name) for name, key in (("ORT", "latency"), ("torch", "torch_latency"))
           for lat in dense.get(key, []) if (lat["batch"], lat["threads"]) == (batch, threads) and lat.get("p50_ms")]
    return min(pts) if pts else None


def headline_deploy(doc: dict | None, source: str) -> list[list[str]]:
    """Per deploy model: the 90 % unstructured file at batch 1 and the most threads, end to end."""
    rows = []
    for m in (doc or {}).get("models", []):
        v = next((v for v in m.get("variants", []) if v.get("variant") == "sparse-90"), None)
        t = max(m.get("threads") or [1])
        lat, best = (_latency_at(v, 1, t), _fastest_dense(m, 1, t)) if v else (None, None)
        if not lat or not best:
            continue
        rows.append([f"{DEPLOY_NAMES.get(m['model'], m['model'])} at 90%, end to end, batch 1, {t} threads",
                     _host(doc), _load(doc), f"{ms(lat['p50_ms'])} / {ms(lat['p90_ms'])}",
                     f"{ms(best[0])} {best[1]} (fastest of ORT, torch)", x(lat.get("speedup_vs_fastest")), source])
    return rows


def _top_ops(profile: dict, n: int = 4) -> str:
    total = profile.get("total_ms") or 0.0
    ops = list((profile.get("ops_ms") or {}).items())[:n]
    return ", ".join(f"{name} {100 * v / total:.0f}%" for name, v in ops) if total else "-"


def deploy_details(docs: dict[str, dict | None]) -> list[str]:
    """Per ISA document: every variant of every deploy model at every batch and thread count
    against the fastest dense runtime, the targets, the op breakdown and the unconverted export."""
    out = []
    for name in DEPLOY_DOCS:
        doc = docs.get(name)
        if not doc or not doc.get("models"):
            continue
        rows, targets = [], []
        for m in doc["models"]:
            if "failed" in m:
                rows.append([m["model"], "all", "-", f"FAILED: {m['failed']}", "-"])
                continue
            points = [(b, t) for b in m.get("batches", []) for t in m.get("threads", [])]
            dense_cells = []
            for b, t in points:
                best = _fastest_dense(m, b, t)
                dense_cells.append(f"b{b}/{t}t {ms(best[0])} {best[1]}" if best else f"b{b}/{t}t -")
            rows.append([m["model"], "dense (fastest of ORT, torch)", "1.00", "; ".join(dense_cells), "-"])
            for v in m.get("variants", []):
                if "failed" in v:
                    rows.append([m["model"], v["variant"], "-", f"FAILED: {v['failed']}", "-"])
                    continue
                cells = []
                for b, t in points:
                    lat = _latency_at(v, b, t)
                    cells.append(f"b{b}/{t}t {ms(lat['p50_ms'])} {x(lat.get('speedup_vs_fastest'))}" if lat
                                 else f"b{b}/{t}t -")
                rows.append([m["model"], v["variant"], f"{v.get('file_ratio', 0):.2f}" if v.get("file_ratio") else "-",
                             "; ".join(cells), _top_ops(v["profile"]) if v.get("profile") else "-"])
                goal = DEPLOY_TARGETS.get((m["model"], v["variant"]))
                t = max(m.get("threads") or [1])
                lat = _latency_at(v, 1, t)
                got = (lat or {}).get("speedup_vs_fastest")
                if goal and got:
                    targets.append([f"{m['model']} {v['variant']}, batch 1, {t} threads", f"×{goal:g}", x(got),
                                    _met(got >= goal)])
            un = m.get("unconverted")
            for lat in (un or {}).get("latency", []):
                ok = lat["session_over_ort"] <= UNCONVERTED_LIMIT
                targets.append([f"{m['model']}: sparse export with nothing converted, Session / ORT, batch "
                                f"{lat['batch']}, {lat['threads']} threads",
                                f"≤ {UNCONVERTED_LIMIT:.2f}", f"{lat['session_over_ort']:.3f} "
                                f"({ms(lat['session_p50_ms'])} vs {ms(lat['ort_p50_ms'])})", _met(ok)])
        out += [f"Models people deploy, {_host(doc)}, load {_load(doc)} (`{name}`): p50 per batch/threads and the "
                "speedup against the fastest dense runtime at that point (ONNX Runtime on the dense file or torch on "
                "the dense run); the sparse runtime's largest ops at batch 1 (profiled run, shares of its time).", "",
                *table(["model", "variant", "file / dense", "p50, ×fastest dense (batch/threads)",
                        "largest ops (batch 1)"], rows), ""]
        if targets:
            out += table(["issue 15 target", "target", "measured", "met"], targets) + [""]
    return out


# -- README.md: the headline ------------------------------------------------------------------------

DENSE_NAMES = {"ort_dense": "ORT", "torch_dense": "torch", "numpy_dense": "numpy"}


def _host(doc: dict, without_isa: str = "kernel variant not recorded") -> str:
    """The CPU and, when recorded, the kernel variant a document measured (else ``without_isa``)."""
    if doc.get("isa") or (doc.get("machine") or {}).get("isa"):
        return _isa_label(doc)
    m = doc.get("machine") or {}
    return f"{m.get('cpu') or m.get('cpu_model') or 'unknown CPU'} ({without_isa})"


def _threads(doc: dict) -> str:
    t = (doc.get("machine") or {}).get("threads") or (doc.get("config") or {}).get("threads")
    return f", {t} thread{'s' if t != 1 else ''}" if t else ""


def headline_rows(docs: dict[str, dict | None]) -> list[list[str]]:
    """The deploy-shaped models at 90 % per kernel variant and the slim models, at batch 1: ours
    p50 / p90 against the fastest dense runtime the document timed, with host and load (the
    sparse MLP and single layers are in :func:`isa_table`)."""
    rows = []
    for dname in DEPLOY_DOCS:
        rows += headline_deploy(docs.get(dname), dname)
    slim = docs.get("slim.json")
    for r in (slim or {}).get("results", []):
        dense, lean = r.get("latency_dense") or {}, r.get("latency_slim") or {}
        if not dense.get("p50_ms") or not lean.get("p50_ms"):
            continue
        t = r.get("ort_threads")
        rows.append([f"{r['model']}, half its channels removed (slim), batch {r.get('batch', 1)}"
                     + (f", {t} thread{'s' if t != 1 else ''}" if t else ""), _host(slim, "ORT only"), _load(slim),
                     f"{ms(lean['p50_ms'])} / {ms(lean.get('p90_ms'))} (ORT)",
                     f"{ms(dense['p50_ms'])} ORT (the only runtime timed)", x(dense["p50_ms"] / lean["p50_ms"]),
                     "slim.json"])
    return rows


def quiet_line(roof: dict | None) -> list[str]:
    """The 4096×4096 batch-1 layer at 2 threads from roofline.json, which was measured at a low load."""
    ks = {k.get("impl"): k for k in (roof or {}).get("kernels", [])
          if (k.get("rows"), k.get("cols"), k.get("batch"), k.get("threads")) == (4096, 4096, 1, 2)}
    sparse, dense = ks.get("sparse"), ks.get("dense")
    if not sparse or not dense:
        return []
    return [f"Compare the ratios with the load: `roofline.json` ({_host(roof)}, load {_load(roof)}) timed a "
            f"4096×4096 layer at "
            f"{sparse['sparsity']:.0%}, batch 1, 2 threads at {ms(sparse['p50_ms'])} / {ms(sparse['p90_ms'])} sparse "
            f"against {ms(dense['p50_ms'])} / {ms(dense['p90_ms'])} dense ({dense.get('backend', 'dense')} on the "
            f"same matrix stored densely, the only dense runtime it timed), {x(dense['p50_ms'] / sparse['p50_ms'])}.",
            ""]


def accuracy_line(quality: dict | None) -> list[str]:
    """One sentence per digits model: dense accuracy and after its two default recipes."""
    parts = []
    for m in (quality or {}).get("models", []):
        r = m.get("recipes", {})
        kept = [f"{r[k]['accuracy']:.1f}% {label}" for k, label in
                (("unstructured_90", "at 90% unstructured"), ("channels_50", "with 50% of its channels")) if k in r]
        parts.append(f"{m['model']} {m['dense_accuracy']:.1f}% dense, " + ", ".join(kept))
    if not parts:
        return []
    return ["Test accuracy after the shipped recipes (gradual pruning with distillation, digits test split, "
            "`quality.json`): " + "; ".join(parts) + ".", ""]


def render_headline(results: Path, readme_dir: Path, full: Path) -> str:
    """README.md's section: the headline table, the accuracy line and a link to the full tables in ``full``."""
    docs = load_all(results)
    rel = Path(os.path.relpath(results, readme_dir)).as_posix()
    link = Path(os.path.relpath(full, readme_dir)).as_posix()
    out = ["Generated by `python benchmarks/update_readme.py` from the JSON files in "
           f"`{rel}/`. p50 / p90 wall-clock latency; ours and the dense runtimes were timed interleaved "
           "in one process. The machine was shared with other work: the load column is the 1-minute load "
           "average the run recorded (above the core count, other work competed for the cores). AVX2 rows "
           "are AVX2 code compiled for Zen 2 and run on the host named. A dense model larger than the L3 "
           "streams its weights from memory that other tenants share, so its time, and every ratio against "
           "it, moves more from run to run than ours (see \"What limits batch 1\" in the full tables).", ""]
    out += isa_table({name: docs.get(name) for pair in ISA_DOCS for name in pair})
    rows = headline_rows(docs)
    if rows:
        out += ["Models people deploy, and models with channels removed:", ""]
        out += table(["result", "host (kernels)", "load", "ours p50 / p90", "dense p50", "speedup", "source"],
                     rows) + [""]
    else:
        out += ["No benchmark results yet.", ""]
    out += quiet_line(docs.get("roofline.json")) + accuracy_line(docs.get("quality.json"))
    out += [f"Single sparse layers, every point, batch and kernel variant, all model variants, compile cost, the "
            f"roofline and what limits batch 1: [{link}]({link}).", ""]
    return "\n".join(out) + "\n"


# -- benchmarks/README.md: the full tables ---------------------------------------------------------

def render(results: Path, readme_dir: Path) -> str:
    """benchmarks/README.md's section: every table, the plots, the machines and how to regenerate them."""
    all_docs = load_all(results)
    kernels, e2e, models = all_docs["kernels.json"], all_docs["sparse_e2e.json"], all_docs["models.json"]
    slim, comp, roof = all_docs["slim.json"], all_docs["compile.json"], all_docs["roofline.json"]
    quality = all_docs["quality.json"]
    per_isa = {k: all_docs[k] for k in ("kernels.json", "kernels_avx2.json", "sparse_e2e.json", "sparse_e2e_avx2.json")}
    docs = {"kernels.json": kernels, "sparse_e2e.json": e2e, "slim.json": slim, "models.json": models,
            "compile.json": comp, "roofline.json": roof}
    rel = Path(os.path.relpath(results, readme_dir)).as_posix()
    out = ["Generated by `python benchmarks/update_readme.py` from the JSON files in "
           f"`{rel}/`; numbers are p50 wall-clock latencies unless noted. The machine is shared with "
           "other work, so expect noise (the load average at the start of each run is listed below).", ""]
    if quality is not None:  # reported only once measured (older result sets do not have it)
        docs["quality.json"] = quality
    rows = (headline_kernels(kernels) + headline_e2e(e2e, models) + headline_slim(slim, models) + headline_demo(models)
            + headline_quality(quality))
    out += isa_table(per_isa)
    if rows:
        out += table(["result", "measured", "source"], rows) + [""]
    else:
        out += ["No benchmark results yet.", ""]
    out += deploy_details(all_docs)
    out += models_details(models) + compile_details(comp) + roofline_details(roof) + quality_details(quality)
    pngs = sorted(p.name for p in results.glob("*.png")) if results.is_dir() else []
    if pngs:
        out += ["Plots: " + " · ".join(f"[{p}]({rel}/{p})" for p in pngs), ""]
    missing = [n for n, d in docs.items() if d is None]
    if missing:
        out += ["Not measured yet: " + ", ".join(f"`{n}`" for n in missing) + ".", ""]
    deploy = {k: all_docs[k] for k in DEPLOY_DOCS if all_docs[k]}
    machine = machine_line({**docs, **{k: v for k, v in {**per_isa, **deploy}.items() if k not in docs and v}})
    if machine:
        out += ["Measured on:", *machine, ""]
    out += ["Regenerate from the repository root (one at a time, on an otherwise idle machine for stable numbers; "
            "the `--isa avx2` runs need a host that runs AVX2 code):", "", "```bash",
            *(cmd for _, cmd in COMMANDS), "python benchmarks/update_readme.py", "```"]
    return "\n".join(out) + "\n"


def splice(text: str, section: str) -> str:
    """``text`` with the lines between the markers replaced by ``section``."""
    begins, ends = list(BEGIN.finditer(text)), list(END.finditer(text))
    if len(begins) != 1 or len(ends) != 1:
        raise ReadmeError(f"expected exactly one '<!-- results:begin ... -->' line and one '<!-- results:end -->' "
                          f"line, found {len(begins)} and {len(ends)}")
    b, e = begins[0], ends[0]
    if e.start() < b.end():
        raise ReadmeError("the '<!-- results:end -->' marker comes before '<!-- results:begin ... -->'")
    return text[: b.end()] + "\n" + section + text[e.start():]


def update(path: Path, section: str, check: bool = False) -> bool:
    """Put ``section`` between the markers of ``path``; True when the file changed (or, with ``check``, would)."""
    from benchmarks.common import write_text_atomic

    old = path.read_bytes().decode("utf-8")  # bytes: line endings outside the markers stay as they are
    new = splice(old, section)
    if new == old:
        return False
    if not check:
        write_text_atomic(path, new.encode("utf-8"))  # keeps the file's permissions
    return True


def update_all(readme: Path, bench_readme: Path, results: Path, check: bool = False) -> list[Path]:
    """Regenerate both sections; returns the files that changed (or would). Both files' markers are
    checked before either is written."""
    sections = {readme: render_headline(results, readme.resolve().parent, bench_readme.resolve()),
                bench_readme: render(results, bench_readme.resolve().parent)}
    for path, section in sections.items():
        try:
            splice(path.read_bytes().decode("utf-8"), section)
        except ReadmeError as exc:
            raise ReadmeError(f"{path}: {exc}") from None
    return [path for path, section in sections.items() if update(path, section, check)]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--readme", type=Path, default=REPO / "README.md", help="gets the headline table")
    p.add_argument("--bench-readme", type=Path, default=REPO / "benchmarks" / "README.md", help="gets the full tables")
    p.add_argument("--results", type=Path, default=REPO / "benchmarks" / "results")
    p.add_argument("--check", action="store_true", help="exit 1 if either file is out of date; write nothing")
    args = p.parse_args(argv)
    try:
        changed = update_all(args.readme, args.bench_readme, args.results, check=args.check)
    except (ReadmeError, OSError) as exc:
        print(f"update_readme: {exc}", file=sys.stderr)
        return 2
    for path in (args.readme, args.bench_readme):
        if args.check:
            print(f"{path} is {'out of date' if path in changed else 'up to date'}")
        else:
            print(f"{path} {'updated' if path in changed else 'already up to date'}")
    return 1 if args.check and changed else 0


if __name__ == "__main__":
    if __package__ in (None, ""):
        sys.path.insert(0, str(REPO))
    sys.exit(main())
