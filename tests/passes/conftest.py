import pytest

from tests import models


@pytest.fixture(scope="session")
def dense_files(tmp_path_factory):
    """Dense ONNX exports of the test models (exported once per session): kind -> (module, path)."""
    root = tmp_path_factory.mktemp("dense")
    return {
        "mlp": models.export("mlp", root / "mlp.onnx"),
        "gelu": models.export("gelu", root / "gelu.onnx"),
        "cnn": models.export("cnn", root / "cnn.onnx"),
        "cnn_dense": models.export("cnn", root / "cnn_dense.onnx", density=1.0),
    }
