"""Which host chose a sparse file's conversions, and whether the host running it is that one.

A sparse export converts the layers whose kernels beat ONNX Runtime's dense ops in timings on
the exporting host. Another CPU (another vector ISA, cache size or thread count) can decide
differently, so the file records where the timings ran (``metadata_props`` entry
:data:`CONVERSION_METADATA`) and the runtime compares that with the host loading it.
"""

from __future__ import annotations

import functools
import json
from typing import Any

import onnx

from sparsify.limits import human_bytes

CONVERSION_METADATA = "sparsify.conversion"


def conversion_record(threads: int, target_batch: int, density_threshold: float | None, timed: bool) -> str:
    """The JSON text recorded in a sparse export: the host (CPU model, kernel variant), threads
    and batch its layers were decided for, and how (``timed`` on this host, else by a density
    threshold, the given one or the fixed rules')."""
    how = "timed" if timed else ("density threshold" if density_threshold is not None else "fixed rules")
    record: dict[str, Any] = {**_host(), "threads": int(threads), "target_batch": int(target_batch),
                              "decided_by": how}
    if density_threshold is not None:
        record["density_threshold"] = float(density_threshold)
    return json.dumps(record, sort_keys=True)


def read_record(model: onnx.ModelProto) -> dict[str, Any] | None:
    """The recorded conversion host of ``model`` (None when absent or unreadable: older files)."""
    text = next((p.value for p in model.metadata_props if p.key == CONVERSION_METADATA), None)
    try:
        record = json.loads(text) if text is not None else None
    except ValueError:
        return None
    return record if isinstance(record, dict) else None


@functools.lru_cache(maxsize=1)
def _host() -> dict[str, Any]:
    """What identifies the host's speed beyond the thread count: CPU model name, LLVM's name
    for the core (one model name can cover several generations), kernel variant, L3 size.
    Read once per process (LLVM and sysfs); callers must not change the dict."""
    from sparsify.kernels import ell, isa
    from sparsify.machine import cpu_model

    return {"cpu": cpu_model(), "host_cpu": str(isa.host_isa()["host_cpu"]), "kernel_variant": isa.VARIANT,
            "l3_bytes": ell.cache_bytes(3, 0)}


_DESCRIBE = {"cpu": "CPU {}", "host_cpu": "{} cores", "kernel_variant": "{} kernels", "l3_bytes": "{} L3",
             "threads": "{} thread(s)"}


def differences(record: dict[str, Any], threads: int) -> dict[str, str]:
    """What of a timed record this host and thread count do not match: key -> this side, for
    people (keys the record lacks are not compared)."""
    here = {**_host(), "threads": int(threads)}
    return {key: _DESCRIBE[key].format(human_bytes(value) if key == "l3_bytes" else value)
            for key, value in here.items() if key in record and record[key] != value}


def host_differs(record: dict[str, Any] | None, threads: int) -> bool:
    """Whether ``record``'s conversions were timed on another host (CPU, core generation, kernel
    variant or L3 size). Another thread count alone does not count: exports time at all the
    machine's threads by default and ``sparsify run`` runs on one, so that would flag every
    file; :func:`describe_record` still names it."""
    return (record is not None and record.get("decided_by") == "timed"
            and any(key != "threads" for key in differences(record, threads)))


def same_host(record: dict[str, Any], threads: int) -> bool:
    """Whether ``record`` matches this host and ``threads`` in everything it records."""
    return not differences(record, threads)


def describe_record(record: dict[str, Any] | None, threads: int) -> str | None:
    """One line for people: where the conversions were decided and, when that was timed on
    another host or thread count than this process uses, what to do about it."""
    if record is None:
        return None
    how = record.get("decided_by")
    if how != "timed":
        rule = (f"density threshold {record.get('density_threshold')}" if how == "density threshold"
                else "the fixed density rules")
        return f"conversions: by {rule}, not timed on a host"
    parts = [str(record["host_cpu"])] if "host_cpu" in record else []
    parts.append(f"{record.get('kernel_variant')} kernels")
    if isinstance(record.get("l3_bytes"), int) and record["l3_bytes"] > 0:
        parts.append(f"{human_bytes(record['l3_bytes'])} L3")
    parts.append(f"{record.get('threads')} thread(s)")
    line = f"conversions: timed on {record.get('cpu')} ({', '.join(parts)}) at batch {record.get('target_batch')}"
    differs = differences(record, threads)
    if not differs:
        return line + ", as here"
    return (f"{line}; here: {', '.join(differs.values())}, where other layers may win: 'sparsify run' or "
            "'sparsify bench' with --decide-here (in Python, sparsify.api.load_session(path, decide_here=True)), "
            "or 'sparsify export FILE.onnx --mode sparse -o OUT.onnx' (with --target-threads for another thread "
            "count), decides them again on this host")


__all__ = ["CONVERSION_METADATA", "conversion_record", "read_record", "describe_record", "differences", "host_differs",
           "same_host"]
