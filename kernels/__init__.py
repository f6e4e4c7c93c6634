"""Numba kernels over plain arrays (installed as ``sparsify.kernels``); imports numpy and numba only.

Public API:
- :class:`CSR` (``csr.py``): the sparse weight format; :func:`choose_index_dtypes`.
- :class:`SparseLinear`, :func:`csr_linear` (``spmm.py``): ``act(x @ W.T + b)``.
- :class:`ell.SlicedEll` (``ell.py``): the batch-1 layout SparseLinear builds from a CSR.
- :class:`bsr.BSR`, :class:`bsr.SparseBlockLinear` (``bsr.py``): weights pruned in whole
  R x C blocks and their linear layer.
- :class:`SparseConv2d`, :func:`csr_conv2d` (``conv.py``): NCHW conv with a CSR weight, or a
  BSR of R x 1 blocks (:func:`conv.conv_block`).
- :func:`norm.layer_norm` (``norm.py``): the runtime's LayerNormalization.
- :func:`pool.max_pool2d` (``pool.py``): the runtime's MaxPool.
- :func:`depthwise_conv2d`, :class:`DepthwiseConv2d` (``depthwise.py``): NCHW depthwise
  convolution (ONNX ``Conv`` with ``group`` = channels), clips of its input and output fused.
- :func:`check_threads`, :func:`set_threads`, :func:`get_threads`, :func:`kept_threads`, :func:`warmup` (``threads.py``).
- Errors (``errors.py``): :class:`KernelValueError` and its subclasses
  :class:`CSRFormatError`, :class:`KernelArgumentError`; the runtime wraps them.
"""

# Bumped whenever a kernel changes speed: host calibrations cached under another
# revision are measured again (sparsify.runtime.calibrate.host_identity).
REVISION = 10

from .csr import CSR, choose_index_dtypes
from .errors import CSRFormatError, KernelArgumentError, KernelValueError
from .conv import SparseConv2d, csr_conv2d
from .depthwise import DepthwiseConv2d, depthwise_conv2d
from .spmm import SparseLinear, csr_linear
from .threads import check_threads, get_threads, kept_threads, set_threads, warmup

__all__ = [
    "REVISION", "CSR", "choose_index_dtypes", "CSRFormatError", "KernelArgumentError", "KernelValueError",
    "SparseLinear", "csr_linear", "SparseConv2d", "csr_conv2d", "DepthwiseConv2d", "depthwise_conv2d",
    "check_threads", "set_threads", "get_threads", "kept_threads", "warmup",
]
