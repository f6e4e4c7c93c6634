import pytest
import torch

from sparsify.api import ModelSource, open_model
from sparsify.errors import DataError, ModelError
from sparsify.modelref import build_model, load_weights, parse_model_args, read_state_dict
from sparsify.trust import TRUST_ALL


def test_unknown_builtin_lists_the_known_ones():
    with pytest.raises(ModelError, match="unknown built-in model 'resnet9'.*digits-cnn, digits-mlp, digits-vit"):
        open_model(ModelSource("resnet9"))


@pytest.mark.parametrize("ref, message", [
    ("no_such_pkg.mod:make", "module 'no_such_pkg.mod' could not be imported"),
    ("tests.models:missing", "has no attribute 'missing'"),
    ("tests.models:NOT_A_MODEL", "is a int; expected an nn.Module or a factory"),
    ("tests.models:not_a_module_factory", "returned a str; expected a torch.nn.Module"),
])
def test_bad_import_references(ref, message):
    with pytest.raises(ModelError, match=message):
        build_model({"kind": "import", "name": ref, "args": {}}, TRUST_ALL)


def test_factory_with_model_args_and_instance():
    model = build_model({"kind": "import", "name": "tests.models:make_tiny", "args": parse_model_args(["width=5"])}, TRUST_ALL)
    assert model.fc1.out_features == 5
    inst = build_model({"kind": "import", "name": "tests.models:INSTANCE", "args": {}}, TRUST_ALL)
    assert isinstance(inst, torch.nn.Module)
    with pytest.raises(ModelError, match="takes no --model-arg"):
        build_model({"kind": "import", "name": "tests.models:INSTANCE", "args": {"width": 3}}, TRUST_ALL)


def test_model_arg_parsing():
    assert parse_model_args(["a=3", "b=0.5", "c=hello", "d=[1, 2]"]) == {"a": 3, "b": 0.5, "c": "hello", "d": [1, 2]}
    with pytest.raises(ModelError, match="key=value"):
        parse_model_args(["oops"])


def test_weights_mismatch_lists_keys_and_shapes(tmp_path):
    from safetensors.torch import save_file

    from tests.models import make_tiny

    state = make_tiny().state_dict()
    state.pop("fc2.bias")
    state["extra.weight"] = torch.zeros(2)
    state["fc1.weight"] = torch.zeros(3, 8)
    save_file(state, str(tmp_path / "w.safetensors"))
    with pytest.raises(ModelError) as info:
        load_weights(make_tiny(), read_state_dict(tmp_path / "w.safetensors"), "w.safetensors")
    msg = str(info.value)
    assert "missing keys [fc2.bias]" in msg and "unexpected keys [extra.weight]" in msg
    assert "fc1.weight: file (3, 8), model (16, 8)" in msg


def test_torch_load_weights_only_and_pickle_refused(tmp_path):
    from tests.models import make_tiny

    torch.save(make_tiny(width=16).state_dict(), tmp_path / "ok.pt")
    model = make_tiny()
    load_weights(model, read_state_dict(tmp_path / "ok.pt"), "ok.pt")
    torch.save({"state_dict": make_tiny().state_dict()}, tmp_path / "nested.pt")
    assert "fc1.weight" in read_state_dict(tmp_path / "nested.pt")
    torch.save(make_tiny(), tmp_path / "pickled_module.pt")  # a whole pickled module: refused
    with pytest.raises(ModelError, match="holds pickled objects"):
        read_state_dict(tmp_path / "pickled_module.pt")


def test_inputs_from_shape_or_data_else_error(tmp_path):
    run = open_model(ModelSource("tests.models:make_tiny", input_shapes=["1,8"]))
    assert run.inputs[0].shape == (1, 8)
    run = open_model(ModelSource("tests.models:make_tiny", data="tests.models:tiny_dataset"))
    assert run.inputs[0].shape == (1, 8)
    with pytest.raises(DataError, match="give --data or --input-shape"):
        open_model(ModelSource("tests.models:make_tiny"))
    with pytest.raises(DataError, match="positive integers"):
        open_model(ModelSource("tests.models:make_tiny", input_shapes=["1,x"]))
