import onnx
import pytest

from sparsify.passes.csr import CsrPass
from tests import models


def sparse_pair(root, kind, threshold=1.0, **kwargs):
    """(module, dense path, sparse path, plan) for a test model converted at ``threshold``."""
    module, dense = models.export(kind, root / f"{kind}.onnx", **kwargs)
    result = CsrPass(density_threshold=threshold).call(onnx.load(str(dense)))
    sparse = root / f"{kind}_sparse.onnx"
    onnx.save(result.model, str(sparse))
    return module, dense, sparse, result.plan


@pytest.fixture(scope="session")
def pairs(tmp_path_factory):
    root = tmp_path_factory.mktemp("rt")
    return {kind: sparse_pair(root, kind) for kind in ("mlp", "gelu", "cnn", "block")}
