"""Export an ONNX file sparsify wrote again: dense (every ``ai.sparsify`` op lowered to standard
ops) or sparse (its layers decided again on the host that runs this).

A sparse export's conversions were timed on the exporting host. Deployed to another CPU, the
file can be re-exported there from itself, without the run directory: its sparse ops are
lowered to dense ones (``sparsify.passes.densify``), and that dense model goes through the
same CSR pass, whole-model check and verification as a run's. The written file is verified
against the input file run by the sparse runtime, on seeded random inputs (the input specs
the file records give valid token ids and masks).
"""

from __future__ import annotations

import math
import tempfile
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import onnx

from sparsify.errors import ExportError, in_step
from sparsify.export.onnx_export import check_onnx
from sparsify.export.onnx_write import Target, atomic_onnx, file_bytes, use_external_data, weight_bytes, write_onnx
from sparsify.export.options import SPARSE_ONLY, check_mode_options
from sparsify.export.verify import VerifyReport, expected_outputs, ort_runner, verify as verify_outputs
from sparsify.progress import LARGE_BYTES, bar
from sparsify.runtime.conversion_record import CONVERSION_METADATA, read_record
from sparsify.sparse_ops import DOMAIN, parse_attrs

#: Batches of the seeded random verification inputs (the batch axis permitting).
VERIFY_BATCHES = (1, 3)


def file_input_sets(session, path: Path, shapes: Sequence[str] = ()) -> dict[str, list[np.ndarray]]:
    """Seeded random inputs for the model ``session`` runs (a ``sparsify.runtime.Session`` on
    ``path``): "random b1", and "random b3" where the batch axis is not fixed at 1. Dynamic
    dims other than the batch take their sizes from ``shapes`` (``--input-shape``, one per
    input, in order), else from the input specs the file records (DataError when neither
    gives one)."""
    from sparsify.bench.backends import specs_from_node_args
    from sparsify.bench.inputs import dims_from_shapes, make_feeds, recorded_inputs

    specs = specs_from_node_args(session.get_inputs(), str(path))
    recorded = recorded_inputs(path)
    dims = dims_from_shapes(specs, shapes, str(path))
    sets = {}
    for batch in VERIFY_BATCHES:
        if batch > 1 and any(isinstance(s.shape[0], int) and s.shape[0] != batch for s in specs if s.shape):
            continue
        feeds = make_feeds(specs, batch, seed=batch, dims=dims, where=str(path), recorded=recorded)
        sets[f"random b{batch}"] = [feeds[s.name] for s in specs]
    return sets


def _densified(source: Path, where: str) -> tuple[onnx.ModelProto, int, dict[str, Any] | None]:
    """The model at ``source`` with its sparse ops lowered and its conversion record dropped,
    how many sparse ops it held, and that record (None when it has none)."""
    from sparsify.onnxfile import load_onnx
    from sparsify.passes.densify import densify, sparse_node_labels

    model = load_onnx(source)
    lowered = len(sparse_node_labels(model))
    record = read_record(model)
    weights = sum(4 * math.prod(parse_attrs(n, where).shape) for n in model.graph.node if n.domain == DOMAIN)
    with bar(weights, "lower sparse ops", large=weights >= LARGE_BYTES) as shown:
        dense = densify(model, base_dir=source.parent, where=where, progress=shown.update)
    props = {p.key: p.value for p in dense.metadata_props if p.key != CONVERSION_METADATA}
    onnx.helper.set_model_props(dense, props)
    return dense, lowered, record


def _write_dense(model: onnx.ModelProto, base_dir: Path, target: Target, external: bool) -> None:
    weights = weight_bytes(model)
    with bar(weights, f"write {target.path.name}", large=weights >= LARGE_BYTES) as shown:
        write_onnx(model, base_dir, target, external=external,
                   progress=lambda _name, done, _total: shown.update(done - shown.n))
    check_onnx(target.path, "the dense ONNX model")


def _reference(source: Path, outputs: bool = True, shapes: Sequence[str] = ()
               ) -> tuple[list[str], dict[str, list[np.ndarray]], dict[str, list[np.ndarray]]]:
    """The file's output names, verification inputs (``shapes``: see :func:`file_input_sets`)
    and (unless not ``outputs``) its outputs on them in the sparse runtime."""
    from sparsify.runtime import Session

    session = Session(source, threads=1, batch1="csr")
    names = [i.name for i in session.get_inputs()]
    input_sets = file_input_sets(session, source, shapes)

    def run(inputs: Sequence[np.ndarray]) -> list[np.ndarray]:
        return session.run(None, dict(zip(names, inputs)))

    expected = expected_outputs(run, input_sets, f"{source.name} in the sparse runtime") if outputs else {}
    return [o.name for o in session.get_outputs()], input_sets, expected


def export_file(source: Path, out: Path, *, fmt: str = "onnx", mode: str = "dense", verify: bool = True,
                atol: float, rtol: float, opset: int | None = None, external_data: str = "auto",
                input_shapes: Sequence[str] = (), **options: Any) -> tuple[Path, VerifyReport | None, dict]:
    """Write the ONNX file ``source`` to ``out`` again: ``mode`` dense lowers its sparse ops to
    standard ones, sparse re-decides which layers to convert on this host (``options``:
    ``density_threshold``, ``target_batch``, as for a run; the target batch defaults to the one
    the file records; ``input_shapes`` size dynamic dims the file records no size for). Returns
    (path, verification report, summary) like
    ``pipeline.export_run``; ``out`` appears only once verified against ``source`` (unless
    ``verify`` is off; a sparse export is always checked against its dense model in ONNX
    Runtime)."""
    from sparsify.kernels import kept_threads

    where = str(source)
    if fmt != "onnx":
        raise ExportError(f"--format {fmt} needs a run directory; an ONNX file is exported as ONNX only")
    if mode == "slim":
        raise ExportError(f"--mode slim removes pruned channels by a run's masks, which {source} does not hold; "
                          "export the run directory instead, or use --mode dense or sparse")
    if opset is not None:
        raise ExportError(f"--opset applies to run directories; {source} keeps its own opset")
    unknown = sorted(set(options) - set(SPARSE_ONLY))
    if unknown:
        raise ExportError(f"unknown export option(s) {unknown}; expected {list(SPARSE_ONLY)}")
    check_mode_options(options, mode)
    summary: dict[str, Any] = {"mode": mode, "format": fmt, "source": str(source)}
    subject = f"{source.name} (an ONNX file)"
    hint = "re-run with 'sparsify --debug' for the traceback, or export the run directory the file came from"
    # The kernels' thread count stays the caller's (the sparse export times at it): the
    # reference and verification sessions set their own.
    with kept_threads():
        output_names, input_sets, expected = _reference(source, outputs=verify, shapes=input_shapes)
    with kept_threads(), atomic_onnx(out, ExportError) as target, in_step(f"export --mode {mode}", subject, hint):
        model, summary["lowered"], record = _densified(source, where)
        recorded_batch = (record or {}).get("target_batch")
        if mode == "sparse" and "target_batch" not in options and isinstance(recorded_batch, int) and recorded_batch > 1:
            options["target_batch"] = recorded_batch  # the batch the file was exported for, unless told otherwise
        if mode == "dense":
            external = use_external_data(weight_bytes(model), external_data, "the dense model")
            _write_dense(model, source.parent, target, external)
            summary["external_data"] = external
            candidate = ort_runner(target.path)[0]
            summary["lines"] = [f"dense export of {source.name}: {summary['lowered']} sparse op(s) lowered to "
                                "standard ONNX ops with dense weights"]
        else:
            from sparsify.export.sparse_export import export_sparse

            with tempfile.TemporaryDirectory(dir=target.path.parent, prefix=".dense-") as work:
                dense = Target(Path(work) / "dense.onnx", "dense.onnx.data")
                _write_dense(model, source.parent, dense, external=True)
                del model
                candidate, extra = export_sparse(dense, target, output_names, atol=atol, rtol=rtol,
                                                 input_sets=input_sets, external_data=external_data, **options)
            summary.update(extra)
        report = None
        if verify:
            report = verify_outputs(expected, candidate, input_sets, f"{out.name} ({mode})", output_names,
                                    atol=atol, rtol=rtol, reference_name=f"{source.name} in the sparse runtime")
            report.raise_if_failed()
        summary["bytes"] = file_bytes(target)
        summary["data_file"] = target.data_name if target.data_path.exists() else None
    return out, report, summary


__all__: Sequence[str] = ["export_file", "file_input_sets", "VERIFY_BATCHES"]
