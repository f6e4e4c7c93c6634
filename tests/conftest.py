import os

import pytest
import torch

torch.set_num_threads(1)
# The CSR pass decides by timing each layer on the host unless this is off: tests want
# decisions that do not depend on the machine's load (tests/runtime/test_calibration.py
# turns it on where it is under test).
os.environ.setdefault("SPARSIFY_CALIBRATION", "off")


def pytest_addoption(parser):
    parser.addoption("--fuzz-long", action="store_true", default=False,
                     help="run the hostile-input fuzz suite (tests/fuzz) with many more seeded cases")


@pytest.fixture(scope="session")
def digits_cnn_run(tmp_path_factory):
    """A briefly trained digits-cnn run, pruned 80% globally, shared by the export tests."""
    from sparsify.api import ModelSource, prune_model, train_model
    from sparsify.finetune import TrainConfig

    root = tmp_path_factory.mktemp("runs")
    train_model(ModelSource("digits-cnn", data="digits"), TrainConfig(epochs=1, progress=False), root / "dense")
    prune_model(ModelSource(str(root / "dense")), root / "pruned", sparsity=0.8, scope="global")
    return root


@pytest.fixture
def no_model_size_floor(monkeypatch):
    """Let the CSR pass's default density rule convert the tests' small models (which the
    whole-model size floor, MIN_LINEAR_MACS, would otherwise keep dense)."""
    from sparsify.passes import csr_policy

    monkeypatch.setattr(csr_policy, "MIN_LINEAR_MACS", 0)
