"""What every fuzz case must end in: a clean error or a correct result.

``clean(fn)`` returns fn's result, or the SparsifyError it raised after checking the message
is one paragraph; any other exception propagates and fails the test with its traceback.
``check_session`` judges a model file through ``Session``: refused cleanly, or every run
either refused cleanly or equal to onnx's reference evaluator on the same file.
``check_cli`` runs a command in-process: exit 0, 2 or 3, and on failure one line on stderr
that is a recognised error (not the CLI's catch-all for unexpected exceptions).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import onnx

from sparsify.errors import SparsifyError
from sparsify.sparse_ops import reference_evaluator

# A message longer than this is not one paragraph a user reads.
MAX_MESSAGE = 1500


def assert_clean_message(exc: BaseException) -> None:
    """A SparsifyError whose message is one non-empty line of readable length, no traceback."""
    assert isinstance(exc, SparsifyError), f"{type(exc).__name__} is not a SparsifyError: {exc}"
    text = str(exc)
    assert text.strip(), f"{type(exc).__name__} with an empty message"
    assert "\n" not in text.strip(), f"message is not one paragraph: {text!r}"
    assert "Traceback" not in text, text
    assert len(text) <= MAX_MESSAGE, f"message of {len(text)} characters: {text[:300]}..."


def clean(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> tuple[Any, SparsifyError | None]:
    """(result, None) or (None, the clean SparsifyError); anything else propagates."""
    try:
        return fn(*args, **kwargs), None
    except SparsifyError as exc:
        assert_clean_message(exc)
        return None, exc


def reference_outputs(path: Path, feeds: dict[str, np.ndarray]) -> list[np.ndarray] | None:
    """The file's outputs under onnx's reference evaluator, or None when it rejects the file
    or the feeds (any exception: the reference is the judge, not the subject)."""
    try:
        model = onnx.load(str(path))
        return [np.asarray(o) for o in reference_evaluator(model).run(None, feeds)]
    except Exception:
        return None


def assert_same(got: Sequence[np.ndarray], want: Sequence[np.ndarray], where: str) -> None:
    """Same count, shapes, dtypes; values within the suite's float32 tolerances (atol 1e-5,
    rtol 1e-4, ``tests.helpers.TOLERANCES``) at unit scale, NaN where the reference has NaN.

    atol is relative to the largest finite reference value when that exceeds 1: a float32 sum
    loses digits relative to its largest terms, so a small output among 1e30-sized ones (the
    fuzz feeds scale inputs up to 1e30) carries an absolute error of that size times 1e-7.
    """
    assert len(got) == len(want), f"{where}: {len(got)} outputs, the reference has {len(want)}"
    for g, w in zip(got, want):
        assert g.shape == w.shape, f"{where}: output shape {g.shape}, the reference's {w.shape}"
        assert g.dtype == w.dtype, f"{where}: output dtype {g.dtype}, the reference's {w.dtype}"
        finite = np.abs(w[np.isfinite(w)].astype(np.float64))
        scale = max(1.0, float(finite.max())) if finite.size else 1.0
        np.testing.assert_allclose(g, w, atol=1e-5 * scale, rtol=1e-4, equal_nan=True,
                                   err_msg=f"{where}: silently wrong output")


def check_session(path: Path, feed_sets: Sequence[dict[str, np.ndarray]], **session_options: Any) -> str:
    """Judge ``path`` through ``Session``; returns what happened ("refused", "ran", "run refused")."""
    from sparsify.runtime import Session

    sess, err = clean(Session, path, **session_options)
    if err is not None:
        return "refused"
    outcome = "run refused"
    for feeds in feed_sets:
        got, err = clean(sess.run, None, feeds)
        if err is not None:
            continue
        want = reference_outputs(path, feeds)
        assert want is not None, (f"{path.name}: Session ran a file (or feeds) that onnx's reference evaluator "
                                  "rejects; it should have refused it")
        assert_same(got, want, path.name)
        outcome = "ran"
    return outcome


def check_cli(argv: Sequence[str], capfd) -> int:
    """Run the CLI in-process: exit 0, 2 or 3; a failure prints one error line and no traceback
    (``capfd``: what native libraries write to the stderr file descriptor counts too)."""
    from sparsify.cli import main

    code = main(list(argv))
    err = capfd.readouterr().err
    assert code in (0, 2, 3), f"exit {code}: {err}"
    assert "Traceback" not in err, err
    if code:
        lines = [line for line in err.splitlines() if line.strip()]
        assert len(lines) == 1 and lines[0].startswith(f"sparsify {argv[0]}: error: "), err
        # The CLI's catch-all keeps unrecognised failures tidy; the suite wants them recognised.
        assert "does not recognise" not in err and "ran out of memory" not in err, err
    return code
