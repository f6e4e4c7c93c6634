"""README.md's ```bash and ```python blocks run as written, in README order, in one empty folder.

A block that needs files the user supplies or takes minutes is listed in SKIPPED with the reason;
a block that is neither run nor listed fails the test, and so does a listed block that is gone.
Bash lines run in this process through ``sparsify.cli.main`` (the ``sparsify`` entry point), which
saves an interpreter start and the torch import per line; a line that a shell would read differently
from a plain argument list (pipes, globs, ``[--optional]``) is refused instead.
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path
from typing import Callable

import numpy as np
import onnx
import pytest

from sparsify.cli import main

README = Path(__file__).resolve().parent.parent / "README.md"
FENCE = re.compile(r"^```(bash|python|yaml)\n(.*?)^```$", re.M | re.S)
SHELL_SYNTAX = re.compile(r"[|&;<>()$`*?\[\]{}~]")


def _sparse_ops(path: str) -> int:
    return sum(n.domain == "ai.sparsify" for n in onnx.load(path).graph.node)


def _check_api_example(ns: dict) -> None:
    assert ns["logits"].shape == (1, 10) and np.isfinite(ns["logits"]).all()
    assert ns["report"].ok and ns["report"].max_abs <= 1e-5
    assert _sparse_ops("mlp-p90.onnx") >= 1, "the example should show layers running as CSR"


def _check_walkthrough(_: dict) -> None:
    for f in ("runs/dense/manifest.json", "runs/p90-ft/manifest.json", "dense.onnx"):
        assert Path(f).is_file(), f
    assert _sparse_ops("p90.onnx") >= 1, "the walkthrough's sparse export should convert layers"


def _check_more_pruning(_: dict) -> None:
    for run in ("sgpt50", "wanda24", "c50"):
        assert Path(f"runs/{run}/manifest.json").is_file(), run
    assert onnx.load("c50-slim.onnx").graph.initializer


# First line of a block (whitespace collapsed) -> a check run after it, in README order.
RUN: dict[str, Callable[[dict], None]] = {
    "import numpy as np": _check_api_example,
    "sparsify train digits-mlp --model-arg hidden=1024 --data digits --epochs 5 -o runs/dense": _check_walkthrough,
    "sparsify prune runs/dense --sparsity 0.5 --method sparsegpt --calibration-batches 16 -o runs/sgpt50":
        _check_more_pruning,
}
# First line of a block -> why it is not run here.
SKIPPED: dict[str, str] = {
    "pip install -e . # sparsify and the `sparsify` command": "installs into the current environment",
    "make demo": "creates .venv and runs the full demo (minutes); tests/cli/test_demo.py runs `sparsify demo --quick`",
    "make test": "the whole suite; .ci/run runs it in CI",
    "sparsify prune hf:./my-bert --hf-task sequence-classification --input-shape 1,128 \\":
        "needs a Hugging Face directory the user supplies; tests/hf/test_readme_own_model.py runs it on a tiny one",
    "sparsify prune torchvision:resnet18 --weights resnet18.safetensors --sparsity 0.9 -o runs/r18":
        "needs torchvision and weights the user supplies; tests/hf/test_readme_own_model.py runs it where "
        "torchvision imports",
    "sparsify prune mypkg.models:make_net --model-arg width=32 --weights net.safetensors \\":
        "needs the user's package; tests/hf/test_readme_own_model.py runs it on a stand-in mypkg",
    "from sparsify.api import ModelSource, export_model, prune_model":
        "needs ./my-bert; tests/hf/test_readme_own_model.py runs it on a tiny one",
    "sparsify finetune runs/dense --schedule gradual --final-sparsity 0.9 --start 0 --end 0.6 --every 1 \\":
        "minutes: 30 epochs of gradual pruning, then two recipes' training (the recipe is checked below)",
    "# on each of 2 machines, 4 processes each; HOST:29500 reachable from both": "needs two machines and torchrun",
    "name: my-vit-90": "a YAML recipe, not a command: test_the_yaml_recipe_is_valid checks it",
}


def blocks(lang: str | None = None) -> list[tuple[str, str]]:
    """(language, text) of every fenced block in README order (only ``lang`` when given)."""
    found = [(m.group(1), m.group(2)) for m in FENCE.finditer(README.read_text(encoding="utf-8"))]
    return [b for b in found if lang is None or b[0] == lang]


def key(text: str) -> str:
    return " ".join(text.strip().splitlines()[0].split())


def commands(text: str) -> list[list[str]]:
    """Each command line of a bash block as an argument list (continuations joined, comments dropped)."""
    out = []
    for line in text.replace("\\\n", " ").splitlines():
        code = line.split(" #")[0] if not line.lstrip().startswith("#") else ""
        assert not SHELL_SYNTAX.search(code), f"README line is not a plain command: {line!r}"
        argv = shlex.split(code, comments=True)
        if argv:
            out.append(argv)
    return out


def test_every_block_is_run_or_listed_as_skipped():
    keys = [key(text) for _, text in blocks()]
    unknown = [k for k in keys if k not in RUN and k not in SKIPPED]
    assert not unknown, f"README blocks neither run nor listed in tests/test_readme.py SKIPPED: {unknown}"
    stale = [k for k in [*RUN, *SKIPPED] if k not in keys]
    assert not stale, f"listed in tests/test_readme.py but no longer in README.md: {stale}"
    assert len(keys) == len(set(keys)), "two README blocks start with the same line"


def test_the_quick_blocks_run_as_written(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("SPARSIFY_CALIBRATION", "off")
    monkeypatch.chdir(tmp_path)
    ran = []
    for lang, text in blocks():
        check = RUN.get(key(text))
        if check is None:
            continue
        ns: dict = {"__name__": "__readme__"}
        if lang == "python":
            exec(compile(text, f"README.md block {key(text)!r}", "exec"), ns)
        else:
            for argv in commands(text):
                assert argv[0] == "sparsify", f"the test runs only sparsify commands, not {argv[0]!r}"
                capsys.readouterr()  # the failure message below shows this command's output only
                rc = main(argv[1:])
                assert rc == 0, f"{shlex.join(argv)} exited {rc}: {capsys.readouterr().err.splitlines()[-1:]}"
        check(ns)
        ran.append(key(text))
    assert ran == list(RUN), "README order or content changed"


def test_help_lists_every_command_the_readme_uses(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["--help"])
    assert exc.value.code == 0
    listed = capsys.readouterr().out
    used = {cmd for _, text in blocks("bash") for cmd in re.findall(r"(?m)^\s*sparsify ([a-z]+)", text)}
    used |= set(re.findall(r"`sparsify ([a-z]+)", README.read_text(encoding="utf-8")))
    assert used >= {"train", "prune", "finetune", "export", "inspect", "bench", "apply"}
    assert all(re.search(rf"\b{cmd}\b", listed) for cmd in used), (used, listed)


def test_the_yaml_recipe_is_valid(tmp_path, monkeypatch):
    """The README's recipe passes `sparsify apply --check` (the Commands block applies it as my-recipe.yaml)."""
    (recipe,) = [text for _, text in blocks("yaml")]
    monkeypatch.chdir(tmp_path)
    Path("my-recipe.yaml").write_text(recipe, encoding="utf-8")
    assert main(["apply", "my-recipe.yaml", "--check", "-o", "jobs/mine"]) == 0
