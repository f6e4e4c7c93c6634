"""Loads sparse models and runs them; the only importer of sparsify.kernels.

``Session(path, threads=1)`` mirrors ``onnxruntime.InferenceSession``: ``run(output_names,
feeds)``, ``get_inputs()``, ``get_outputs()``. ``ai.sparsify`` ops run on the Numba
kernels; every other op runs in ONNX Runtime segments or, for small glue ops, in numpy.

Importing sparsify (``sparsify/__init__.py``) sets ``OMP_WAIT_POLICY=PASSIVE`` and a bounded
``GOMP_SPINCOUNT`` unless the environment already sets them (measurements there). libgomp
reads them once, when it is first loaded: by ``import torch`` or by the first
parallel Numba kernel, whichever comes first; so it works when this package is imported
before both (``sparsify run`` and the bench harness's sparse backend do; this package does
not import torch), and has no effect otherwise (then set it in the environment). Measured
on the shared 2-core machine with other jobs running, 4 x Linear(4096) at 90% sparsity,
batch 1, 2 threads, Numba's omp layer: default policy p50 29-31 ms (p90 32 ms; min 2.3 ms),
PASSIVE 2.2-2.5 ms (p90 2.3-3.4 ms); 4 x Linear(1024): default 0.085 ms or 24.6 ms depending
on the moment, PASSIVE 0.17 ms every time. The default policy spins the pool threads, which
then hold a core that the next parallel region's other thread is waiting for. (These
figures predate the bounded spin count.)

Other libraries' idle threads can hold a core the same way: after a numpy matmul, OpenBLAS's
worker busy-waits for about 0.1 s, and a 2-thread 1024² layer timed right after took
0.29 ms per call instead of 0.02 ms. If your process mixes numpy BLAS calls with sparse
inference, limit OpenBLAS to one thread (``OPENBLAS_NUM_THREADS=1`` or threadpoolctl).
"""

from sparsify.runtime.session import NodeArg, Session

__all__ = ["Session", "NodeArg"]
