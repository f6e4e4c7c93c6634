"""hf: and torchvision: references without their optional libraries, and their argument checks."""

from __future__ import annotations

import builtins

import pytest

from sparsify.cli import main


def _without(monkeypatch, name):
    real = builtins.__import__

    def fake(mod, *args, **kwargs):
        if mod == name or mod.startswith(name + "."):
            raise ImportError(f"No module named {name!r}")
        return real(mod, *args, **kwargs)
    import importlib
    import sys

    monkeypatch.setattr(builtins, "__import__", fake)
    real_import_module = importlib.import_module
    monkeypatch.setattr(importlib, "import_module",
                        lambda mod, *a: fake(mod) if mod == name else real_import_module(mod, *a))
    monkeypatch.delitem(sys.modules, name, raising=False)


@pytest.mark.parametrize("lib,extra,ref", [("transformers", "hf", "hf:{dir}"), ("torchvision", "vision", "torchvision:resnet18")])
def test_a_missing_extra_gives_a_one_line_install_hint(monkeypatch, capsys, tmp_path, lib, extra, ref):
    d = tmp_path / "m"
    d.mkdir()
    (d / "config.json").write_text("{}")
    (d / "model.safetensors").write_bytes(b"")
    _without(monkeypatch, lib)
    code = main(["prune", ref.format(dir=d), "--sparsity", "0.5", "-o", str(tmp_path / "p")])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1
    assert f"pip install 'sparsify-compiler[{extra}]'" in err and repr(lib) in err


def test_bad_hf_arguments_are_refused(tmp_path, capsys):
    d = tmp_path / "m"
    d.mkdir()
    (d / "config.json").write_text("{}")
    (d / "model.safetensors").write_bytes(b"")
    code = main(["prune", f"hf:{d}", "--model-arg", "attn_implementation=flash", "--sparsity", "0.5",
                 "-o", str(tmp_path / "p")])
    assert code == 2 and "attn_implementation='flash' should be one of eager, sdpa" in capsys.readouterr().err
    code = main(["prune", "digits-mlp", "--hf-task", "causal-lm", "--sparsity", "0.5", "-o", str(tmp_path / "p")])
    assert code == 2 and "--hf-task applies to hf:DIR models only" in capsys.readouterr().err
    code = main(["prune", "torchvision:", "--sparsity", "0.5", "-o", str(tmp_path / "p")])
    assert code == 2 and "torchvision: needs a model name" in capsys.readouterr().err
