"""sparsify: prune, fine-tune with fixed masks, and compile PyTorch models to exact slim or sparse ONNX.

Importing sparsify sets ``OMP_WAIT_POLICY=PASSIVE`` and ``GOMP_SPINCOUNT=10000`` unless the
environment sets them: an idle OpenMP pool thread spins about 0.1 ms, then sleeps, so it
neither holds a core the next parallel region needs nor costs a wake-up per region
(benchmarks/README.md, "Measuring honestly on a shared machine"). libgomp reads them once, when
it is first loaded, so they apply only when sparsify is imported before torch (the CLI always
is); otherwise set them in the environment.
"""

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("GOMP_SPINCOUNT", "10000")

__version__ = "0.1.0"
