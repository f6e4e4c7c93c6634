"""sparsify: prune, fine-tune with fixed masks, and compile PyTorch models to exact slim or sparse ONNX."""

__version__ = "0.1.0"
