"""Which host chose a sparse file's conversions, and whether the host running it is that one.

A sparse export converts the layers whose kernels beat ONNX Runtime's dense ops in timings on
the exporting host. Another CPU (another vector ISA, cache size or thread count) can decide
differently, so the file records where the timings ran (``metadata_props`` entry
:data:`CONVERSION_METADATA`) and the runtime compares that with the host loading it.
"""

from __future__ import annotations

import json
from typing import Any

import onnx

CONVERSION_METADATA = "sparsify.conversion"


def conversion_record(threads: int, target_batch: int, density_threshold: float | None, timed: bool) -> str:
    """The JSON text recorded in a sparse export: the host (CPU model, kernel variant), threads
    and batch its layers were decided for, and how (``timed`` on this host, else by a density
    threshold, the given one or the fixed rules')."""
    from sparsify.kernels import isa
    from sparsify.machine import cpu_model

    how = "timed" if timed else ("density threshold" if density_threshold is not None else "fixed rules")
    record: dict[str, Any] = {"cpu": cpu_model(), "kernel_variant": isa.VARIANT, "threads": int(threads),
                              "target_batch": int(target_batch), "decided_by": how}
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


def _differences(record: dict[str, Any], threads: int) -> list[str]:
    """What of a timed record this host and thread count do not match, for people."""
    from sparsify.kernels import isa
    from sparsify.machine import cpu_model

    here = {"cpu": (cpu_model(), "CPU {}"), "kernel_variant": (isa.VARIANT, "{} kernels"),
            "threads": (int(threads), "{} thread(s)")}
    return [text.format(value) for key, (value, text) in here.items() if record.get(key) != value]


def host_differs(record: dict[str, Any] | None, threads: int) -> bool:
    """Whether ``record``'s conversions were timed on another CPU, kernel variant or thread count."""
    return record is not None and record.get("decided_by") == "timed" and bool(_differences(record, threads))


def describe_record(record: dict[str, Any] | None, threads: int) -> str | None:
    """One line for people: where the conversions were decided and, when that was timed on
    another CPU, kernel variant or thread count than this process uses, what to do about it."""
    if record is None:
        return None
    how = record.get("decided_by")
    if how != "timed":
        rule = (f"density threshold {record.get('density_threshold')}" if how == "density threshold"
                else "the fixed density rules")
        return f"conversions: by {rule}, not timed on a host"
    line = (f"conversions: timed on {record.get('cpu')} ({record.get('kernel_variant')} kernels, "
            f"{record.get('threads')} thread(s)) at batch {record.get('target_batch')}")
    differs = _differences(record, threads)
    if not differs:
        return line + ", as here"
    return (f"{line}; here: {', '.join(differs)}, where other layers may win: "
            "'sparsify export FILE.onnx --mode sparse -o OUT.onnx' decides them again on this host")


__all__ = ["CONVERSION_METADATA", "conversion_record", "read_record", "describe_record", "host_differs"]
