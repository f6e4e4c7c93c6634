"""The arrays an ``ai.sparsify`` op stores for a dense weight, built by the kernels' own CSR and
BSR constructors (``sparsify.kernels``), so the file holds exactly what the kernels would build,
in their index dtypes (``sparsify.kernels.csr.INDEX_DTYPES``)."""

from __future__ import annotations

import numpy as np

from sparsify.kernels import CSR
from sparsify.kernels.bsr import BSR


def stored_arrays(w2d: np.ndarray, blocksize: tuple[int, int] | None = None
                  ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(data, indices, indptr) of the nonzeros of the 2-D float weight ``w2d``: a CSR, or with
    ``blocksize`` (R, C) a BSR of the R x C blocks holding a nonzero (data [blocks, R, C])."""
    w2d = np.ascontiguousarray(w2d)
    if blocksize:
        bsr = BSR.from_dense(w2d, blocksize)
        return bsr.values, bsr.pattern.indices, bsr.pattern.indptr
    csr = CSR.from_dense(w2d)
    return csr.data, csr.indices, csr.indptr
