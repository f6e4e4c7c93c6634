"""Per-layer tables for runs and ONNX files: shape, params, nonzeros, sparsity, pattern, MACs."""

from __future__ import annotations

import dataclasses
import math
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from sparsify.errors import ModelFileError
from sparsify.limits import check_int64
from sparsify.masks import fold_masks
from sparsify.onnxfile import check_external_data, load_onnx, tensor_array
from sparsify.trust import CodeTrust


@dataclasses.dataclass
class LayerRow:
    """One tensor of the model."""

    tensor: str
    shape: tuple[int, ...]
    params: int
    nonzeros: int
    pattern: str
    macs: int | None = None  # dense multiply-accumulates per sample of the op using the tensor

    @property
    def sparsity(self) -> float:
        return 1.0 - self.nonzeros / max(1, self.params)


@dataclasses.dataclass
class Inspection:
    """The table for a whole model plus totals."""

    source: str
    rows: list[LayerRow]
    file_bytes: int
    notes: list[str] = dataclasses.field(default_factory=list)
    conversion: dict[str, Any] | None = None  # a sparse export's record of where its layers were decided

    def totals(self) -> dict[str, Any]:
        params = sum(r.params for r in self.rows)
        nnz = sum(r.nonzeros for r in self.rows)
        macs = sum(r.macs or 0 for r in self.rows)
        eff = sum(int(round((r.macs or 0) * r.nonzeros / max(1, r.params))) for r in self.rows)
        return {"params": params, "nonzeros": nnz, "sparsity": 1 - nnz / max(1, params),
                "macs": macs, "nonzero_macs": eff, "file_bytes": self.file_bytes}

    def table(self) -> str:
        width = max([len(r.tensor) for r in self.rows] + [6])
        head = f"{'tensor':<{width}}  {'shape':<18} {'params':>10} {'nonzeros':>10} {'sparsity':>8}  {'pattern':<12} {'MACs':>12}"
        lines = [f"{self.source}", head, "-" * len(head)]
        for r in self.rows:
            macs = f"{r.macs:,}" if r.macs is not None else "-"
            lines.append(f"{r.tensor:<{width}}  {str(list(r.shape)):<18} {r.params:>10,} {r.nonzeros:>10,} "
                         f"{r.sparsity:>8.2%}  {r.pattern:<12} {macs:>12}")
        t = self.totals()
        lines.append("-" * len(head))
        lines.append(f"{'total':<{width}}  {'':<18} {t['params']:>10,} {t['nonzeros']:>10,} {t['sparsity']:>8.2%}  "
                     f"{'':<12} {t['macs']:>12,}")
        lines.append(f"MACs per sample: {t['macs']:,} dense, {t['nonzero_macs']:,} on nonzero weights; "
                     f"file size {t['file_bytes']:,} bytes")
        lines += [f"note: {n}" for n in self.notes]
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        return {"source": self.source, "totals": self.totals(), "notes": self.notes, "conversion": self.conversion,
                "rows": [{**dataclasses.asdict(r), "sparsity": r.sparsity} for r in self.rows]}


def classify_pattern(w: np.ndarray) -> str:
    """dense, unstructured, channel (whole output rows zero), in-channel, ``block RxC`` (zeros in
    whole blocks of a shape the block kernels run, the largest first), ``N:M``, or empty."""
    nnz = int(np.count_nonzero(w))
    if nnz == w.size:
        return "dense"
    if nnz == 0:
        return "empty"
    if w.ndim >= 2:
        rows = w.reshape(w.shape[0], -1)
        row_nnz = np.count_nonzero(rows, axis=1)
        if np.all((row_nnz == 0) | (row_nnz == rows.shape[1])):
            return "channel"
        cols = np.count_nonzero(rows, axis=0)
        if np.all((cols == 0) | (cols == rows.shape[0])):
            return "in-channel"
        block = _whole_blocks(rows != 0)
        if block:
            return f"block {block[0]}x{block[1]}"
        for m in (4, 8, 16):
            if rows.shape[1] % m == 0:
                per_group = np.count_nonzero(rows.reshape(-1, m), axis=1)
                n = int(per_group.max())
                if n < m and n <= m // 2:
                    return f"{n}:{m}"
    return "unstructured"


def _whole_blocks(nz: np.ndarray) -> tuple[int, int] | None:
    """The largest block shape of ``sparsify.passes.blocks.BLOCK_SHAPES`` dividing ``nz``'s shape
    whose every block is all nonzero or all zero, or None."""
    from sparsify.passes.blocks import BLOCK_SHAPES

    rows, cols = nz.shape
    for r, c in BLOCK_SHAPES:
        if rows % r == 0 and cols % c == 0:
            count = nz.reshape(rows // r, r, cols // c, c).sum(axis=(1, 3))
            if np.all((count == 0) | (count == r * c)):
                return (r, c)
    return None


def _module_macs(model: nn.Module, example: tuple[torch.Tensor, ...]) -> dict[str, int]:
    """Dense MACs per sample of each weight tensor used by Linear / Conv / MultiheadAttention."""
    macs: dict[str, int] = {}
    hooks = []

    def hook(name: str, module: nn.Module):
        def fn(_m, inputs, output):
            batch = inputs[0].shape[0] if inputs[0].dim() > 1 else 1
            out = output[0] if isinstance(output, tuple) else output
            if isinstance(module, nn.Linear):
                macs[f"{name}.weight"] = out.numel() // batch * module.in_features
            elif isinstance(module, nn.modules.conv._ConvNd):
                k = int(np.prod(module.kernel_size)) * module.in_channels // module.groups
                macs[f"{name}.weight"] = out.numel() // batch * k
            elif isinstance(module, nn.MultiheadAttention):
                tokens = out.numel() // batch // module.embed_dim
                macs[f"{name}.in_proj_weight"] = tokens * module.embed_dim * 3 * module.embed_dim
                macs[f"{name}.out_proj.weight"] = tokens * module.embed_dim * module.embed_dim
        return fn

    for name, module in model.named_modules():
        if isinstance(module, (nn.Linear, nn.modules.conv._ConvNd, nn.MultiheadAttention)):
            hooks.append(module.register_forward_hook(hook(name, module)))
    try:
        with torch.no_grad():
            model.eval()(*example)
    finally:
        for h in hooks:
            h.remove()
    return macs


def inspect_run(path: str | Path, trust: CodeTrust | None = None) -> Inspection:
    """Table of a run's tensors (masks folded), MACs from one forward pass at batch 1.

    The table comes from the run's files alone. MACs need the module: a built-in is rebuilt,
    a ``package.module:attr`` model only when ``trust`` allows importing it (never by default).
    """
    from sparsify.artifact import MASKS, WEIGHTS, load_run, read_manifest, read_tensors
    from sparsify.data import random_inputs

    trust = trust or CodeTrust()
    manifest = read_manifest(path)
    masked = set(read_tensors(Path(path) / MASKS, masks=True))
    ref = manifest["model"]
    notes = []
    if ref["kind"] == "import" and not trust.allows(ref["name"]):
        tensors = read_tensors(Path(path) / WEIGHTS)
        macs: dict[str, int] = {}
        notes.append(f"MACs not counted: the model is the code reference {ref['name']!r}, which inspect imports "
                     f"only with --trust-code {ref['name']}")
    else:
        run = load_run(path, trust)
        model = fold_masks(run.model).eval()  # the run is read for this table only
        macs = _module_macs(model, random_inputs(run.inputs, batch=1))
        tensors = model.state_dict()
    rows = []
    for name, t in tensors.items():
        if not t.is_floating_point() or t.dim() == 0:
            continue
        w = t.numpy()
        rows.append(LayerRow(name, tuple(w.shape), w.size, int(np.count_nonzero(w)),
                             classify_pattern(w) if name in masked or w.ndim >= 2 else "dense", macs.get(name)))
    size = sum(f.stat().st_size for f in Path(path).iterdir() if f.is_file())
    from sparsify.recipe import recipe_notes
    from sparsify.schedule import schedule_notes

    steps = manifest.get("recipe") or []
    return Inspection(str(path), rows, size,
                      [f"{len(masked)} masked tensors", *notes, *_group_notes(steps), *schedule_notes(steps),
                       *recipe_notes(manifest.get("recipe_file"))])


def _group_notes(recipe: list[dict[str, Any]]) -> list[str]:
    """Per structured group recorded by prune: kept/total units, or why it was skipped."""
    notes = []
    for step in recipe:
        if step.get("step") != "prune" or "groups" not in step:
            continue
        for g in step["groups"]:
            unit = "heads" if g["kind"] == "head" else "channels"
            if g.get("skipped"):
                notes.append(f"group {g['name']}: not pruned ({g['skipped']})")
            else:
                notes.append(f"group {g['name']}: {g['kept_units']}/{g['total_units']} {unit} kept")
        notes += [f"group {name}: not pruned ({why})" for name, why in step.get("skipped", {}).items()]
    return notes


def _onnx_macs(model, where: str) -> dict[str, int]:
    """Dense MACs per sample of each weight initializer used by Conv / Gemm / MatMul (batch fixed to 1);
    ModelFileError naming the node when a count overflows int64 (shapes no real model has)."""
    import onnx
    from onnx import shape_inference

    m = onnx.ModelProto()
    m.CopyFrom(model)
    for vi in list(m.graph.input) + list(m.graph.output):
        dims = vi.type.tensor_type.shape.dim
        if dims and not dims[0].HasField("dim_value"):
            dims[0].dim_value = 1
    try:
        m = shape_inference.infer_shapes(m, data_prop=True)
    except Exception:
        return {}
    shapes = {}
    for vi in list(m.graph.value_info) + list(m.graph.output) + list(m.graph.input):
        dims = vi.type.tensor_type.shape.dim
        if dims and all(d.HasField("dim_value") and d.dim_value >= 0 for d in dims):
            shapes[vi.name] = [d.dim_value for d in dims]
    inits = {i.name: list(i.dims) for i in m.graph.initializer}
    macs: dict[str, int] = {}
    for node in m.graph.node:
        if node.op_type in ("Conv", "Gemm", "MatMul") and len(node.input) > 1 and node.input[1] in inits:
            out = shapes.get(node.output[0])
            w = inits[node.input[1]]
            if out is None or len(w) < 2:
                continue
            if node.op_type == "Conv":
                count = math.prod(out) * math.prod(w[1:])
            elif node.op_type == "Gemm":
                trans_b = any(a.name == "transB" and a.i == 1 for a in node.attribute)
                count = math.prod(out) * (w[1] if trans_b else w[0])
            else:
                count = math.prod(out) * w[-2]
            what = f"{where}: the MAC count of {node.op_type} node {node.name or node.output[0]!r} (output {out})"
            macs[node.input[1]] = check_int64(count, what, ModelFileError)
    return macs


def inspect_onnx(path: str | Path) -> Inspection:
    """Table of an ONNX file's weight initializers with MACs from shape inference at batch 1.

    A file whose ``ai.sparsify`` nodes, initializers or shapes do not hold together (CSR
    arrays that disagree with their attributes, truncated tensors, external data outside the
    model's folder, MAC counts beyond int64) is refused with a ModelFileError naming the node
    or tensor, never printed.
    """
    from sparsify.sparse_ops import DOMAIN, sparse_op_infos

    model = load_onnx(path)  # external data is read one tensor at a time below
    where, base = str(path), Path(path).parent
    check_external_data(model, path)
    macs = _onnx_macs(model, where)
    rows = []
    # ai.sparsify ops: one row per original weight (nonzeros from the CSR), not per CSR array.
    sparse = sparse_op_infos(model, where, base)
    csr_arrays = {v for n in model.graph.node if n.domain == DOMAIN for v in n.input[1:4]}
    for info in sparse:
        rows.append(LayerRow(info.weight_name, tuple(info.weight_shape), info.params, info.nnz,
                             f"{info.layout} {info.op_type}", info.macs))
    for init in model.graph.initializer:
        if init.name in csr_arrays or len(init.dims) == 0 or not _is_float_type(init.data_type):
            continue
        w = tensor_array(init, where, base)
        if w.size <= 1:
            continue
        rows.append(LayerRow(init.name, tuple(w.shape), int(w.size), int(np.count_nonzero(w)),
                             classify_pattern(w), macs.get(init.name)))
    domains = sorted({n.domain for n in model.graph.node if n.domain})
    notes = [f"custom op domains: {', '.join(domains)}"] if domains else []
    notes += [info.note() for info in sparse]
    if sparse:
        from sparsify.runtime.calibrate import kernel_note
        notes.append(kernel_note())
    from sparsify.kernels import get_threads
    from sparsify.runtime.conversion_record import describe_record, read_record
    record = read_record(model)
    conversion = describe_record(record, get_threads())
    notes += [conversion] if conversion else []
    size = os.path.getsize(path) + sum(os.path.getsize(base / f) for f in _data_files(model, path))
    result = Inspection(str(path), rows, size, notes, record)
    check_int64(result.totals()["macs"], f"{where}: the total MAC count", ModelFileError)
    return result


def _is_float_type(data_type: int) -> bool:
    from onnx import helper

    try:
        return bool(np.issubdtype(helper.tensor_dtype_to_np_dtype(data_type), np.floating))
    except (KeyError, ValueError, TypeError):
        return False  # an unknown element type: tensor_array names it where it matters


def _data_files(model, path: str | Path) -> set[str]:
    """The external data files of ``model`` that exist beside ``path``."""
    names = {e.value for t in model.graph.initializer for e in t.external_data if e.key == "location"}
    return {n for n in names if (Path(path).parent / n).is_file()}


def inspect_path(path: str | Path, trust: CodeTrust | None = None) -> Inspection:
    """Inspect a run directory or an ONNX file; ``trust`` as for :func:`inspect_run`."""
    from sparsify.artifact import is_run_dir

    if is_run_dir(path):
        return inspect_run(path, trust)
    if Path(path).is_dir():
        raise ModelFileError(f"{path} is a directory without manifest.json; expected a run directory or an ONNX file")
    return inspect_onnx(path)
