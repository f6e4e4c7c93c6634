"""Compile cost: wall time and peak memory of each pipeline step for the bigger models.

Steps per model, in order (each later step reads the run or file an earlier one wrote):
``build`` (model -> dense run on disk), ``export_dense``, ``prune_unstructured`` (90%,
magnitude, layer-wise), ``export_sparse``, ``prune_structured`` (ratio 0.5, channels or
heads), ``export_slim``. Exports verify against the masked torch model (the API default),
so their time includes verification.

Every step runs in a fresh Python process: it imports torch, onnx, onnxruntime and the API,
then resets the kernel's peak-RSS mark and reads the baseline (the same method as
``sparsify.bench.memory``: ``/proc/self/clear_refs`` + ``VmHWM``, falling back to
``ru_maxrss``), runs the step, and reports ``peak - baseline`` (tracemalloc would not see
the C allocations of torch / ONNX / protobuf). ``wall_s`` is the step alone; ``process_s``
adds interpreter start-up and imports. Each step is repeated ``--repeat`` times (fresh
process each time); the median and p90 are reported with all samples.

A step that fails stops the script with one paragraph: the model, the step, the error's last
line, the file that keeps the step's whole error output, and the command that repeats it.

Run::

    python benchmarks/bench_compile.py [--quick] [--models mlp-4096,bert-style] [--repeat N] [--out PATH.json]

JSON schema ``sparsify.compile/1`` (see benchmarks/README.md).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.common import REPO, RESULTS, envelope, finite, parser, pyplot, save_figure, say, stop, write_outputs

SCHEMA = "sparsify.compile/1"
# (step, what it needs): the prerequisites must have succeeded in the same repetition.
STEPS = (
    ("build", None),
    ("export_dense", "build"),
    ("prune_unstructured", "build"),
    ("export_sparse", "prune_unstructured"),
    ("prune_structured", "build"),
    ("export_slim", "prune_structured"),
)
SPARSITY = 0.9
RATIO = 0.5


def all_cases(quick: bool) -> list[dict[str, Any]]:
    """Model name, reference, arguments, input spec and structure of each case."""
    if quick:
        return [{"name": "mlp-512", "model": "benchmarks.common:ffn_mlp", "model_args": {"width": 512, "depth": 2},
                 "input_shapes": ["1,512"], "input_dtypes": [], "structure": "channel"}]
    return [
        {"name": "mlp-4096", "model": "benchmarks.common:ffn_mlp", "model_args": {"width": 4096, "depth": 4},
         "input_shapes": ["1,4096"], "input_dtypes": [], "structure": "channel"},
        {"name": "resnet-style", "model": "sparsify.models.testbeds:resnet_style", "model_args": {},
         "input_shapes": ["1,3,224,224"], "input_dtypes": [], "structure": "channel"},
        {"name": "bert-style", "model": "sparsify.models.testbeds:bert_style", "model_args": {},
         "input_shapes": ["1,128"], "input_dtypes": ["int64"], "structure": "head"},
    ]


# Sizes of the --sweep (parameters): how time and peak memory grow with the model.
SWEEP_PARAMS = (100e6, 300e6, 700e6, 1.5e9)
SWEEP_STEPS = ("build", "prune_unstructured", "export_dense", "export_sparse", "prune_structured", "export_slim")


def sweep_cases(sizes: tuple[float, ...] = SWEEP_PARAMS) -> list[dict[str, Any]]:
    """Synthetic MLP stacks (Linear 4096x4096) and BERT-style encoders (hidden 1024, 16 heads,
    FFN 4096) of about each size; ``params`` is the exact parameter count."""
    cases = []
    for n in sizes:
        depth = max(1, round(n / (4096 * 4097)))
        cases.append({"name": f"mlp-{_short(n)}", "model": "benchmarks.common:ffn_mlp",
                      "model_args": {"width": 4096, "depth": depth}, "input_shapes": ["1,4096"], "input_dtypes": [],
                      "structure": "channel", "params": depth * 4096 * 4097})
        per_layer = 4 * (1024 * 1024 + 1024) + 2 * 1024 * 4096 + 4096 + 1024 + 4 * 1024
        fixed = 8000 * 1024 + 128 * 1024 + 2 * 1024 + 2 * 1024 + 2
        layers = max(1, round((n - fixed) / per_layer))
        cases.append({"name": f"encoder-{_short(n)}", "model": "sparsify.models.testbeds:bert_style",
                      "model_args": {"dim": 1024, "heads": 16, "ffn": 4096, "layers": layers},
                      "input_shapes": ["1,128"], "input_dtypes": ["int64"], "structure": "head",
                      "params": fixed + layers * per_layer})
    return cases


def _short(n: float) -> str:
    return f"{n / 1e9:g}B" if n >= 1e9 else f"{n / 1e6:g}M"


# -- the child process ------------------------------------------------------------------------

def _do_step(step: str, case: dict[str, Any], work: Path) -> None:
    """Run one pipeline step through the public API (in the child)."""
    from sparsify.api import ModelSource, export_model, open_model, prune_model
    from sparsify.trust import TRUST_ALL
    from sparsify.artifact import save_run

    if step == "build":
        src = ModelSource(case["model"], case["model_args"], input_shapes=case["input_shapes"],
                          input_dtypes=case["input_dtypes"])
        save_run(open_model(src), work / "dense")
    elif step == "export_dense":
        export_model(work / "dense", work / "dense.onnx", trust=TRUST_ALL)
    elif step == "prune_unstructured":
        prune_model(ModelSource(str(work / "dense"), trust=TRUST_ALL), work / "sparse-run", sparsity=SPARSITY, scope="layer")
    elif step == "export_sparse":
        export_model(work / "sparse-run", work / "sparse.onnx", mode="sparse", trust=TRUST_ALL)
    elif step == "prune_structured":
        prune_model(ModelSource(str(work / "dense"), trust=TRUST_ALL), work / "slim-run", structure=case["structure"], ratio=RATIO)
    elif step == "export_slim":
        export_model(work / "slim-run", work / "slim.onnx", mode="slim", trust=TRUST_ALL)
    else:
        raise ValueError(f"unknown step {step!r}; expected one of {[s for s, _ in STEPS]}")


def child(request: dict[str, Any]) -> dict[str, Any]:
    """In the fresh process: import, take the baseline, run the step, take the peak."""
    import numpy  # noqa: F401  (imports are part of the baseline, not of the step)
    import onnx  # noqa: F401
    import onnxruntime  # noqa: F401
    import torch  # noqa: F401

    import sparsify.api  # noqa: F401
    # Reuse the harness's peak-RSS method (reset VmHWM, else ru_maxrss) rather than a copy of it.
    from sparsify.bench.memory import _baseline, _peak

    baseline, method = _baseline()
    t0 = time.perf_counter()
    _do_step(request["step"], request["case"], Path(request["work"]))
    wall = time.perf_counter() - t0
    peak = _peak(method)
    return {"wall_s": wall, "peak_mib": peak - baseline, "baseline_mib": baseline, "method": method}


# -- the parent ---------------------------------------------------------------------------------

def run_step(step: str, case: dict[str, Any], work: Path, timeout: float) -> dict[str, Any]:
    """One step in a fresh process; a failure stops the script naming the step, the child's last
    stderr line and a log file with all of it."""
    request = {"step": step, "case": case, "work": str(work)}
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH")) if p)
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--child", json.dumps(request)],
                          capture_output=True, text=True, timeout=timeout, cwd=REPO, env=env, check=False)
    process_s = time.perf_counter() - t0
    lines = proc.stdout.strip().splitlines()
    if proc.returncode != 0 or not lines:
        last = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        fd, log = tempfile.mkstemp(prefix=f"sparsify-bench-compile-{case['name']}-{step}-", suffix=".log")
        with os.fdopen(fd, "w") as f:
            f.write(proc.stderr)
        stop(f"{case['name']}: step {step}", f"the step's process exited with {proc.returncode} ({last})",
             f"Its whole error output is in {log}; repeat it with: python benchmarks/bench_compile.py "
             f"--models {case['name']} --steps {step} --repeat 1")
    return {**json.loads(lines[-1]), "process_s": process_s}


def summarize(samples: list[dict[str, Any]]) -> dict[str, Any]:
    """Median / p90 / min of wall time and peak memory over the repetitions of a step."""
    import numpy as np

    out: dict[str, Any] = {"n": len(samples)}
    for key in ("wall_s", "process_s", "peak_mib"):
        v = np.array([s[key] for s in samples], dtype=float)
        out[f"{key}_p50"] = finite(float(np.percentile(v, 50)))
        out[f"{key}_p90"] = finite(float(np.percentile(v, 90)))
        out[f"{key}_min"] = finite(float(v.min()))
    out["method"] = samples[0]["method"]
    out["samples"] = [{k: finite(s[k]) for k in ("wall_s", "process_s", "peak_mib")} for s in samples]
    return out


def select_steps(wanted: list[str] | None, error) -> list[str]:
    """The steps to run in pipeline order: ``wanted`` plus their prerequisites (all when None)."""
    names = [s for s, _ in STEPS]
    if wanted is None:
        return names
    unknown = sorted(set(wanted) - set(names))
    if unknown:
        error(f"--steps: unknown {unknown}; choose from {names}")
    needs = dict(STEPS)
    chosen = set()
    for step in wanted:
        while step is not None and step not in chosen:
            chosen.add(step)
            step = needs[step]
    return [s for s in names if s in chosen]


def run_case(case: dict[str, Any], root: Path, repeat: int, timeout: float,
             steps: list[str] | None = None) -> dict[str, Any]:
    """The steps of one model, ``repeat`` times, each repetition in a fresh work directory."""
    selected = [(s, n) for s, n in STEPS if steps is None or s in steps]
    samples: dict[str, list[dict[str, Any]]] = {s: [] for s, _ in selected}
    sizes: dict[str, int] = {}
    for k in range(repeat):
        work = root / case["name"] / f"rep{k}"
        work.mkdir(parents=True)
        for step, _needs in selected:
            say(f"{case['name']}: {step} (repetition {k + 1}/{repeat})")
            out = run_step(step, case, work, timeout)
            samples[step].append(out)
            say(f"{case['name']}: {step}: {out['wall_s']:.2f} s, peak +{out['peak_mib']:.0f} MiB")
        for name in ("dense.onnx", "sparse.onnx", "slim.onnx"):
            if (work / name).is_file():
                sizes[name] = sum(f.stat().st_size for f in work.glob(name + "*") if f.is_file())
        shutil.rmtree(work)  # a 1.5B-parameter case writes ~25 GB; the next case needs the disk
    return {"model": case["name"], "reference": case["model"], "model_args": case["model_args"],
            "input_shapes": case["input_shapes"], "structure": case["structure"], "params": case.get("params"),
            "steps": [{"step": s, "needs": needs, **summarize(samples[s])} for s, needs in selected],
            "file_bytes": sizes}


def plot(doc: dict[str, Any], path: Path) -> Path:
    """Two panels: step wall time (p50) and peak extra memory (p50), grouped by model."""
    plt = pyplot()
    import numpy as np

    steps = doc["config"]["steps"]
    models = doc["models"]
    x = np.arange(len(steps))
    width = 0.8 / max(1, len(models))
    fig, (ax_t, ax_m) = plt.subplots(1, 2, figsize=(13, 4.8))
    for i, m in enumerate(models):
        by = {s["step"]: s for s in m["steps"]}
        off = x - 0.4 + width * (i + 0.5)
        ax_t.bar(off, [by.get(s, {}).get("wall_s_p50", np.nan) for s in steps], width, label=m["model"])
        ax_m.bar(off, [by.get(s, {}).get("peak_mib_p50", np.nan) for s in steps], width, label=m["model"])
    for ax, label in ((ax_t, "wall time of the step (s, p50)"), (ax_m, "peak extra RSS (MiB, p50)")):
        ax.set_xticks(x, [s.replace("_", "\n") for s in steps], fontsize=8)
        ax.set_ylabel(label)
        ax.grid(axis="y", alpha=0.3)
        ax.legend(fontsize="small")
    fig.suptitle(f"sparsify compile cost — {doc['machine'].get('cpu')}", fontsize="medium")
    fig.tight_layout()
    return save_figure(fig, path)


def plot_sweep(doc: dict[str, Any], path: Path) -> Path:
    """Seconds and peak GiB of each step against the model's float32 bytes, one line per step and family."""
    plt = pyplot()

    fig, (ax_t, ax_m) = plt.subplots(1, 2, figsize=(13, 4.8))
    families = sorted({m["model"].split("-")[0] for m in doc["models"]})
    markers = dict(zip(families, "os^v"))
    colors = {step: f"C{i}" for i, step in enumerate(doc["config"]["steps"])}
    for family in families:
        models = sorted((m for m in doc["models"] if m["model"].startswith(family + "-")), key=lambda m: m["params"])
        gib = [4 * m["params"] / 2**30 for m in models]
        for step in doc["config"]["steps"]:
            rows = [next((s for s in m["steps"] if s["step"] == step), {}) for m in models]
            label = f"{family} {step}"
            ax_t.plot(gib, [r.get("wall_s_p50", float("nan")) for r in rows], marker=markers[family],
                      color=colors[step], label=label, linestyle="-" if family == families[0] else "--")
            ax_m.plot(gib, [r.get("peak_mib_p50", float("nan")) / 1024 for r in rows], marker=markers[family],
                      color=colors[step], label=label, linestyle="-" if family == families[0] else "--")
    top = max((4 * m["params"] / 2**30 for m in doc["models"]), default=1)
    ax_m.plot([0, top], [0, 2.5 * top], color="grey", linestyle=":", label="2.5x the model")
    for ax, label in ((ax_t, "wall time of the step (s)"), (ax_m, "peak extra RSS (GiB)")):
        ax.set_xlabel("model size, float32 (GiB)")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    ax_m.legend(fontsize="x-small", ncol=2)
    fig.suptitle(f"sparsify compile cost against model size — {doc['machine'].get('cpu')}", fontsize="medium")
    fig.tight_layout()
    return save_figure(fig, path)


def merged_with_earlier(doc: dict[str, Any], path: Path, error) -> dict[str, Any]:
    """``doc`` plus the records of ``path`` for models it did not measure; each record keeps
    the machine, load and time of the run that measured it."""
    if not path.exists():
        return doc
    earlier = json.loads(path.read_text())
    same = ("schema", "sparsity", "ratio", "steps")
    if earlier.get("schema") != doc["schema"] or any(earlier.get("config", {}).get(k) != doc["config"].get(k)
                                                     for k in same[1:]):
        error(f"--update: {path} was measured with other settings ({', '.join(same)}); write to a new --out")
    fresh = {m["model"] for m in doc["models"]}
    kept = [m for m in earlier["models"] if m["model"] not in fresh]
    for source, models in ((earlier, kept), (doc, doc["models"])):
        for m in models:
            m.setdefault("measured", {k: source.get(k) for k in ("created", "machine", "load")})
    doc["models"] = sorted(kept + doc["models"], key=lambda m: (m["model"].split("-")[0], m.get("params") or 0))
    doc["config"]["models"] = [m["model"] for m in doc["models"]]
    doc["total_s"] = round(doc["total_s"] + earlier.get("total_s", 0.0), 1)
    return doc


def main(argv: list[str] | None = None) -> int:
    if argv is None and len(sys.argv) == 3 and sys.argv[1] == "--child":
        print(json.dumps(child(json.loads(sys.argv[2]))))
        return 0
    p = parser(__doc__.splitlines()[0], "compile.json")
    p.add_argument("--models", default=None, help="comma-separated subset of the model names")
    p.add_argument("--repeat", type=int, default=None, help="repetitions per step (default: 1 quick, 2 full)")
    p.add_argument("--steps", default=None,
                   help="comma-separated subset of the steps (their prerequisites are added)")
    p.add_argument("--timeout", type=float, default=900.0, help="seconds allowed per step")
    p.add_argument("--update", action="store_true",
                   help="keep the other models' records already in --out (same steps and settings) and replace "
                        "only the ones measured now: one size of the sweep can be re-run without the rest")
    p.add_argument("--sweep", action="store_true",
                   help="the size sweep instead: MLP and encoder stacks of ~100M, 300M, 700M and 1.5B parameters, "
                        f"steps {', '.join(SWEEP_STEPS)} (default --out benchmarks/results/compile_sweep.json)")
    args = p.parse_args(argv)
    if args.sweep and args.out == RESULTS / "compile.json":
        args.out = RESULTS / "compile_sweep.json"
    repeat = args.repeat if args.repeat is not None else (1 if args.quick or args.sweep else 2)
    if repeat < 1:
        p.error(f"--repeat {repeat} should be a positive integer")
    default_steps = list(SWEEP_STEPS) if args.sweep else None
    steps = select_steps(args.steps.split(",") if args.steps else default_steps, p.error)
    cases = sweep_cases((30e6,) if args.quick else SWEEP_PARAMS) if args.sweep else all_cases(args.quick)
    if args.models:
        wanted = args.models.split(",")
        unknown = sorted(set(wanted) - {c["name"] for c in cases})
        if unknown:
            p.error(f"--models: unknown {unknown}; choose from {[c['name'] for c in cases]}")
        cases = [c for c in cases if c["name"] in wanted]
    config = {"quick": args.quick, "sweep": args.sweep, "models": [c["name"] for c in cases], "repeat": repeat,
              "steps": steps, "sparsity": SPARSITY, "ratio": RATIO,
              "memory": "peak RSS minus RSS after imports, fresh process per step (VmHWM reset, else ru_maxrss)",
              "wall": "wall_s = the step alone; process_s = whole child process incl. interpreter start and imports",
              "verify": "exports verify against the masked torch model (API default)"}
    doc = envelope(SCHEMA, config)
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="sparsify-bench-compile-") as root:
        doc["models"] = [run_case(c, Path(root), repeat, args.timeout, steps) for c in cases]
    doc["total_s"] = round(time.perf_counter() - t0, 1)
    if args.update:
        doc = merged_with_earlier(doc, Path(args.out), p.error)
    write_outputs(args, doc, plot_sweep if args.sweep else plot)
    return 0


if __name__ == "__main__":
    sys.exit(main())
