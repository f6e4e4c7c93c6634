"""Loads sparse models and runs them; the only importer of sparsify.kernels.

``Session(path, threads=1)`` mirrors ``onnxruntime.InferenceSession``: ``run(output_names,
feeds)``, ``get_inputs()``, ``get_outputs()``. ``ai.sparsify`` ops run on the Numba
kernels; every other op runs in ONNX Runtime segments or, for small glue ops, in numpy.
"""

from sparsify.runtime.session import NodeArg, Session

__all__ = ["Session", "NodeArg"]
