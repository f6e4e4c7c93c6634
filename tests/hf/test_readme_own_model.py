"""The README's "Your own model" commands and Python example run as written, on tiny models
placed where the commands expect them (./my-bert, mypkg.models:make_net, net.safetensors)."""

from __future__ import annotations

import re
import shlex
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from sparsify.cli import main

README = Path(__file__).resolve().parents[2] / "README.md"
MYPKG = '''
import torch
from torch import nn


class ConvNet(nn.Module):
    def __init__(self, width=32, classes=10):
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(3, width, 3, padding=1), nn.BatchNorm2d(width)
        self.conv2, self.bn2 = nn.Conv2d(width, width, 3, padding=1, stride=2), nn.BatchNorm2d(width)
        self.fc = nn.Linear(width, classes)

    def forward(self, x):
        x = torch.relu(self.bn1(self.conv1(x)))
        x = torch.relu(self.bn2(self.conv2(x)))
        return self.fc(x.mean((2, 3)))


def make_net(width=32, classes=10):
    torch.manual_seed(0)
    return ConvNet(width, classes)
'''


def section() -> str:
    text = README.read_text()
    start = text.index("## Your own model")
    return text[start:text.index("\n## ", start + 3)]


def blocks(kind: str) -> list[str]:
    return re.findall(rf"```{kind}\n(.*?)```", section(), re.S)


def commands(block: str) -> list[list[str]]:
    joined = block.replace("\\\n", " ")
    return [shlex.split(line)[1:] for line in joined.splitlines() if line.strip().startswith("sparsify ")]


@pytest.fixture
def workdir(tmp_path, monkeypatch, hf_dirs):
    from sparsify.models.hub import import_transformers

    tf = import_transformers()
    torch.manual_seed(0)
    cfg = tf.BertConfig(vocab_size=96, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                        intermediate_size=64, max_position_embeddings=128, type_vocab_size=2, num_labels=2)
    tf.BertForSequenceClassification(cfg).eval().save_pretrained(str(tmp_path / "my-bert"))
    (tmp_path / "mypkg").mkdir()
    (tmp_path / "mypkg" / "__init__.py").write_text("")
    (tmp_path / "mypkg" / "models.py").write_text(textwrap.dedent(MYPKG))
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.chdir(tmp_path)
    sys.modules.pop("mypkg", None)
    sys.modules.pop("mypkg.models", None)
    return tmp_path


def test_the_section_has_three_command_sequences_and_a_python_example():
    bash = blocks("bash")
    assert [b.split()[2].split(":")[0] for b in bash] == ["hf", "torchvision", "mypkg.models"]
    for b in bash:
        verbs = [c[0] for c in commands(b)]
        assert verbs[0] == "prune" and "export" in verbs and verbs[-1] == "bench", verbs
    (code,) = blocks("python")
    assert len(code.strip().splitlines()) <= 10


@pytest.mark.slow
def test_hf_and_module_attr_commands_run_as_written(workdir, capsys):
    from safetensors.torch import save_file

    sys.path.insert(0, str(workdir))
    from mypkg.models import make_net

    save_file(make_net(width=32).state_dict(), str(workdir / "net.safetensors"))
    bash = blocks("bash")
    for block in (bash[0], bash[2]):
        for argv in commands(block):
            code = main(argv)
            out = capsys.readouterr()
            assert code == 0, (argv, out.err)
    assert (workdir / "bert-slim.onnx").is_file() and (workdir / "net-slim.onnx").is_file()


@pytest.mark.slow
def test_python_example_runs_as_written(workdir, capsys):
    (code,) = blocks("python")
    exec(compile(code, "README.md", "exec"), {})
    out = capsys.readouterr().out
    assert "heads kept" in out and "slim: params" in out and "bert-slim.onnx" in out


def test_torchvision_commands_run_as_written(workdir, capsys):
    try:
        import torchvision  # noqa: F401
        from torchvision.models import get_model
    except Exception as exc:  # PyPI's torchvision for torch 2.13 fails to import beside the CPU build
        pytest.skip(f"torchvision does not import here ({type(exc).__name__}: {exc}); "
                    "install a matching torch/torchvision pair to run this test")
    from safetensors.torch import save_file

    save_file(get_model("resnet18", weights=None).state_dict(), str(workdir / "resnet18.safetensors"))
    for argv in commands(blocks("bash")[1]):
        code = main(argv)
        out = capsys.readouterr()
        assert code == 0, (argv, out.err)
