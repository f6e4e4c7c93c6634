"""Loads sparse models and runs them; the only importer of sparsify.kernels."""
