"""sparsify: prune, fine-tune with fixed masks, and compile PyTorch models to exact slim or sparse ONNX.

Importing sparsify sets ``OMP_WAIT_POLICY=PASSIVE`` unless the environment already sets it:
spinning OpenMP pool threads (Numba's kernels, torch) otherwise hold the cores that the next
parallel region waits for — on the demo's sparse MLP, 6.9 ms per call against 0.05 ms. libgomp
reads the variable once, when first loaded, so it only helps when sparsify is imported before
torch (the ``sparsify`` CLI always is); otherwise set it in the environment. See
``sparsify.runtime`` for the measurements.
"""

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

__version__ = "0.1.0"
