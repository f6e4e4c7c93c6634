"""ONNX export, the ai.sparsify op domain, and verification."""
