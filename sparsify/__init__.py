"""sparsify: prune, fine-tune with fixed masks, and compile PyTorch models to exact slim or sparse ONNX.

Importing sparsify sets two OpenMP defaults, each only if the environment does not set it:
``OMP_WAIT_POLICY=PASSIVE`` and ``GOMP_SPINCOUNT=10000``. An idle pool thread then spins for
about 0.1 ms before sleeping (measured: 0.07 ms of CPU per idle period at 10000, 1.15 ms at
100000). libgomp's unbounded default spin holds the cores that the next parallel region
waits for (6.9 ms per call against 0.05 ms on the demo's sparse MLP on a busy machine); no
spin at all costs a thread wake-up per parallel region (4096² 90%-sparse layer, batch 1, 2
threads: 0.35 ms passive against 0.21 ms with the bounded spin); a long spin (100000) slowed
ONNX Runtime calls interleaved with ours in one process (0.34 -> 0.61 ms), 10000 did not.
libgomp reads these variables once, when it is first loaded, so they only help when sparsify
is imported before torch (the ``sparsify`` CLI always is); otherwise set them in the
environment.
"""

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("GOMP_SPINCOUNT", "10000")

__version__ = "0.1.0"
