"""Loads sparse models and runs them; the only importer of sparsify.kernels.

``Session(path, threads=1)`` mirrors ``onnxruntime.InferenceSession``: ``run(output_names,
feeds)``, ``get_inputs()``, ``get_outputs()``. ``ai.sparsify`` ops run on the Numba
kernels; every other op runs in ONNX Runtime segments or, for small glue ops, in numpy.

Import this package before torch so that the OpenMP defaults of ``sparsify/__init__.py`` take
effect (it does not import torch itself). Other libraries' idle threads hold cores the same
way: in a process that mixes numpy BLAS calls with sparse inference, limit OpenBLAS to one
thread (``OPENBLAS_NUM_THREADS=1`` or threadpoolctl); benchmarks/README.md has the figures.
"""

from sparsify.runtime.session import NodeArg, Session

__all__ = ["Session", "NodeArg"]
