"""Models from other libraries: ``hf:DIR`` (a local Hugging Face directory) and ``torchvision:NAME``.

``hf:DIR`` reads a directory written by ``save_pretrained`` (``config.json`` and safetensors
weights) with ``transformers``: no network (``local_files_only``), no code from the directory
(``trust_remote_code=False``), no pickle (``use_safetensors``). The model is wrapped so that it
takes its inputs positionally under their Hugging Face names (``input_ids``, ``attention_mask``,
``token_type_ids``, ``pixel_values``) and returns plain tensors without a KV cache. The run
records the config, so it rebuilds the model from the config and its own weights, without the
directory.

``torchvision:NAME`` builds ``torchvision.models.get_model(NAME, weights=None)``; its weights
come from ``--weights FILE`` only (never downloaded).

Both libraries are optional extras (``pip install -e .[hf]`` / ``.[vision]``).
"""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Any, Mapping

import torch
from torch import nn

from sparsify.errors import ModelError

HF_PREFIX = "hf:"
TORCHVISION_PREFIX = "torchvision:"

#: --hf-task → the transformers Auto class holding that head.
HF_TASKS = {
    "base": "AutoModel",
    "sequence-classification": "AutoModelForSequenceClassification",
    "token-classification": "AutoModelForTokenClassification",
    "causal-lm": "AutoModelForCausalLM",
    "masked-lm": "AutoModelForMaskedLM",
    "question-answering": "AutoModelForQuestionAnswering",
    "image-classification": "AutoModelForImageClassification",
}
#: Keyword arguments a ``--model-arg`` may pass to the Hugging Face constructor.
HF_MODEL_ARGS = ("task", "attn_implementation")
ATTN_IMPLEMENTATIONS = ("eager", "sdpa")
#: Text inputs in the order they are passed, when the model's forward takes them.
TEXT_INPUTS = ("input_ids", "attention_mask", "token_type_ids")
DEFAULT_SEQ = 128
DEFAULT_IMAGE = 224


def is_hub_ref(spec: str) -> bool:
    """True for ``hf:...`` and ``torchvision:...`` references."""
    return spec.startswith((HF_PREFIX, TORCHVISION_PREFIX))


def _installed_kernels_first() -> None:
    """Import the installed ``kernels`` package transformers uses, when a sparsify checkout on
    sys.path (the repo root, as under pytest) would shadow it with sparsify's own kernels/ folder."""
    import importlib
    import importlib.util
    import sys

    if "kernels" in sys.modules:
        return
    found, ours = importlib.util.find_spec("kernels"), importlib.util.find_spec("sparsify.kernels")
    if found is None or ours is None or not found.origin or not ours.origin:
        return
    if Path(found.origin).resolve() != Path(ours.origin).resolve():
        return
    root = Path(ours.origin).resolve().parent.parent
    saved = list(sys.path)
    sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != root]
    try:
        importlib.import_module("kernels")
    except ImportError:  # not installed: transformers then finds no usable version and skips it
        sys.modules.pop("kernels", None)
    finally:
        sys.path[:] = saved


def _require(module: str, extra: str) -> Any:
    import importlib

    try:
        if module == "transformers":
            _installed_kernels_first()
        mod = importlib.import_module(module)
        if module == "transformers":  # no progress bars or advice on the user's terminal
            mod.utils.logging.set_verbosity_error()
            mod.utils.logging.disable_progress_bar()
        return mod
    except ImportError as exc:
        raise ModelError(f"this model needs the optional package {module!r} ({type(exc).__name__}: {exc}); "
                         f"install it with: pip install 'sparsify-compiler[{extra}]'") from exc


def import_transformers() -> Any:
    """The ``transformers`` module (ModelError with the install hint when it is missing)."""
    return _require("transformers", "hf")


# -- Hugging Face ------------------------------------------------------------------------------

class HFModule(nn.Module):
    """A transformers model called with positional inputs in ``input_names`` order, returning
    its tensor outputs (one tensor, or a tuple) without a KV cache."""

    def __init__(self, model: nn.Module, input_names: tuple[str, ...]) -> None:
        super().__init__()
        self.model = model
        self.input_names = tuple(input_names)

    def call(self, inputs: tuple[torch.Tensor, ...]) -> torch.Tensor | tuple[torch.Tensor, ...]:
        kwargs: dict[str, Any] = dict(zip(self.input_names, inputs))
        params = inspect.signature(self.model.forward).parameters
        if "use_cache" in params:
            kwargs["use_cache"] = False
        if "return_dict" in params:
            kwargs["return_dict"] = True
        out = self.model(**kwargs)
        values = out.values() if hasattr(out, "values") else (out if isinstance(out, tuple) else (out,))
        tensors = tuple(v for v in values if isinstance(v, torch.Tensor))
        return tensors[0] if len(tensors) == 1 else tensors


def hf_module(model: nn.Module, input_names: tuple[str, ...]) -> HFModule:
    """Wrap ``model`` in an HFModule whose ``forward`` names its inputs (torch.export and the
    ONNX exporter read the names from the signature)."""
    bad = [n for n in input_names if not n.isidentifier()]
    if bad:
        raise ModelError(f"input names {bad} are not identifiers")
    ns: dict[str, Any] = {}
    args = ", ".join(input_names)
    exec(f"def forward(self, {args}):\n    return self.call(({args},))\n", ns)  # noqa: S102 - names checked above
    cls = type(f"HF{type(model).__name__}", (HFModule,), {"forward": ns["forward"], "__module__": __name__})
    return cls(model, input_names)


def _hf_dir(path: str) -> Path:
    d = Path(path).expanduser()
    if not d.is_dir():
        raise ModelError(f"hf:{path}: no such directory; expected a directory written by save_pretrained "
                         "(config.json and model.safetensors)")
    if not (d / "config.json").is_file():
        raise ModelError(f"hf:{path}: the directory has no config.json; expected one written by save_pretrained")
    if not any(d.glob("*.safetensors")):
        found = sorted(p.name for p in d.iterdir())[:8]
        raise ModelError(f"hf:{path}: the directory holds no .safetensors weights (found {found}); save the "
                         "model with save_pretrained(..., safe_serialization=True) — pickled .bin weights "
                         "are not read")
    return d.resolve()


def _auto_class(task: str):
    transformers = _require("transformers", "hf")
    if task not in HF_TASKS:
        raise ModelError(f"--hf-task {task!r} is not known; expected one of {', '.join(HF_TASKS)}")
    return getattr(transformers, HF_TASKS[task])


def _check_hf_args(args: Mapping[str, Any]) -> None:
    unknown = sorted(set(args) - set(HF_MODEL_ARGS) - {"config"})
    if unknown:
        raise ModelError(f"hf models take --model-arg {', '.join(HF_MODEL_ARGS)} only; got {unknown}")
    attn = args.get("attn_implementation")
    if attn is not None and attn not in ATTN_IMPLEMENTATIONS:
        raise ModelError(f"attn_implementation={attn!r} should be one of {', '.join(ATTN_IMPLEMENTATIONS)}")


def load_hf(path: str, task: str = "base", attn_implementation: str | None = None) -> nn.Module:
    """The model in a local ``save_pretrained`` directory (float32, eval mode), never downloading."""
    d = _hf_dir(path)
    cls = _auto_class(task)
    kwargs: dict[str, Any] = {"local_files_only": True, "trust_remote_code": False, "use_safetensors": True,
                              "dtype": torch.float32}
    if attn_implementation:
        kwargs["attn_implementation"] = attn_implementation
    try:
        model = cls.from_pretrained(str(d), **kwargs)
    except Exception as exc:  # transformers raises many types for a bad directory or config
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ModelError(f"hf:{path}: transformers could not load it as {HF_TASKS[task]} (--hf-task {task}): "
                         f"{type(exc).__name__}: {first}") from exc
    return model.eval()


def hf_from_config(config: Mapping[str, Any], task: str, attn_implementation: str | None = None) -> nn.Module:
    """A model of the recorded config with freshly initialised weights (a run loads its own)."""
    transformers = _require("transformers", "hf")
    cls = _auto_class(task)
    cfg_dict = dict(config)
    model_type = cfg_dict.pop("model_type", None)
    try:
        cfg = transformers.AutoConfig.for_model(model_type, **cfg_dict)
        kwargs = {"attn_implementation": attn_implementation} if attn_implementation else {}
    except Exception as exc:
        raise ModelError(f"the recorded Hugging Face config (model_type {model_type!r}) is not valid: "
                         f"{type(exc).__name__}: {exc}") from exc
    from sparsify.models.size import check_model_size

    check_model_size(lambda: cls.from_config(cfg, **kwargs), f"hf {model_type}")  # counted on the meta device first
    try:
        model = cls.from_config(cfg, **kwargs)
    except Exception as exc:
        raise ModelError(f"the recorded Hugging Face config (model_type {model_type!r}) could not be built as "
                         f"{HF_TASKS[task]}: {type(exc).__name__}: {exc}") from exc
    return model.to(torch.float32).eval()


def hf_input_names(model: nn.Module) -> tuple[str, ...]:
    """The inputs passed to a Hugging Face model: pixel_values for vision models; input_ids,
    attention_mask and (when the config has several token types) token_type_ids for text."""
    params = inspect.signature(model.forward).parameters
    main = getattr(model, "main_input_name", "input_ids")
    if main != "input_ids":
        return (main,)
    names = [n for n in TEXT_INPUTS if n in params]
    if "token_type_ids" in names and int(getattr(model.config, "type_vocab_size", 0) or 0) < 2:
        names.remove("token_type_ids")
    return tuple(names)


def hf_max_positions(model: nn.Module) -> int | None:
    cfg = model.config
    for key in ("max_position_embeddings", "n_positions"):
        v = getattr(cfg, key, None)
        if isinstance(v, int) and v > 0:
            offset = 2 if getattr(cfg, "model_type", "") in ("roberta", "xlm-roberta", "camembert") else 0
            return v - offset
    return None


def hf_input_specs(model: nn.Module, names: tuple[str, ...], shapes: list[tuple[int, ...]]):
    """Input specs of a Hugging Face model: shapes from --input-shape (one for all text inputs,
    or one per input) or defaults; text inputs have dynamic batch and sequence axes."""
    from sparsify.inputspec import InputSpec

    cfg = model.config
    if names == ("pixel_values",):
        size = getattr(cfg, "image_size", DEFAULT_IMAGE)
        size = size if isinstance(size, int) else DEFAULT_IMAGE
        shape = shapes[0] if shapes else (1, int(getattr(cfg, "num_channels", 3)), size, size)
        if len(shapes) > 1:
            raise ModelError(f"this vision model takes one input (pixel_values); got {len(shapes)} --input-shape")
        return [InputSpec("pixel_values", tuple(shape), "float32")]
    if len(shapes) not in (0, 1, len(names)):
        raise ModelError(f"this text model takes {len(names)} inputs ({', '.join(names)}); give one --input-shape "
                         f"for all of them (e.g. 1,128) or one per input; got {len(shapes)}")
    limit = hf_max_positions(model)
    default = (1, min(DEFAULT_SEQ, limit) if limit else DEFAULT_SEQ)
    specs = []
    for i, name in enumerate(names):
        shape = tuple(shapes[i] if len(shapes) == len(names) else shapes[0]) if shapes else default
        if len(shape) != 2:
            raise ModelError(f"input {name!r} of a text model should have shape batch,sequence (e.g. 1,128); "
                             f"got {','.join(map(str, shape))}")
        if limit and shape[1] > limit:
            raise ModelError(f"input {name!r}: sequence length {shape[1]} exceeds the model's {limit} positions")
        if shape[1] < 2:
            raise ModelError(f"input {name!r}: give a sequence length of at least 2 (it is exported as a dynamic axis)")
        specs.append(InputSpec(name, shape, "int64", (0, 1)))
    return specs


def _serializable_config(model: nn.Module) -> dict[str, Any]:
    cfg = model.config.to_dict()
    for key in ("_name_or_path", "transformers_version", "torch_dtype", "dtype", "_attn_implementation_autoset"):
        cfg.pop(key, None)
    return cfg


# -- torchvision -------------------------------------------------------------------------------

def load_torchvision(name: str) -> nn.Module:
    """``torchvision.models.get_model(name, weights=None)`` in eval mode (weights come from --weights)."""
    tv = _require("torchvision", "vision")
    try:
        known = set(tv.models.list_models())
    except Exception:  # older torchvision
        known = set()
    if known and name not in known:
        close = sorted(k for k in known if name.lower()[:4] in k)[:6]
        raise ModelError(f"torchvision:{name} is not a torchvision model" + (f"; similar: {', '.join(close)}" if close else ""))
    try:
        return tv.models.get_model(name, weights=None).eval()
    except Exception as exc:
        raise ModelError(f"torchvision:{name} could not be built: {type(exc).__name__}: {exc}") from exc


# -- references ----------------------------------------------------------------------------------

def hub_ref(spec: str, args: Mapping[str, Any] | None = None, task: str | None = None) -> dict[str, Any]:
    """The manifest reference of an ``hf:``/``torchvision:`` model (an hf reference records its
    config, so a run rebuilds the model without the directory)."""
    args = dict(args or {})
    if spec.startswith(HF_PREFIX):
        path = spec[len(HF_PREFIX):]
        if not path:
            raise ModelError("hf: needs a directory, e.g. hf:./my-bert")
        if task is not None:
            args["task"] = task
        _check_hf_args(args)
        return {"kind": "hf", "name": str(_hf_dir(path)), "args": {"task": "base", **args}}
    name = spec[len(TORCHVISION_PREFIX):]
    if not name:
        raise ModelError("torchvision: needs a model name, e.g. torchvision:resnet50")
    if args:
        raise ModelError(f"torchvision models take no --model-arg (got {sorted(args)})")
    return {"kind": "torchvision", "name": name, "args": {}}


def build_hub_model(ref: Mapping[str, Any]) -> nn.Module:
    """Build the module of an ``hf``/``torchvision`` reference (an hf one from its recorded config
    when there is one, else from its directory; weights included)."""
    kind, name, args = ref.get("kind"), str(ref.get("name")), dict(ref.get("args") or {})
    if kind == "torchvision":
        return load_torchvision(name)
    _check_hf_args(args)
    task = str(args.get("task", "base"))
    attn = args.get("attn_implementation")
    config = args.get("config")
    model = hf_from_config(config, task, attn) if config else load_hf(name, task, attn)
    return hf_module(model, hf_input_names(model))


def open_hub_model(spec: str, args: Mapping[str, Any] | None, task: str | None,
                   shapes: list[tuple[int, ...]]) -> tuple[nn.Module, dict[str, Any], list | None]:
    """(module with the directory's weights, manifest reference, input specs or None) for a
    ``--model`` value; torchvision models take their inputs from --input-shape (default 1,3,224,224)."""
    from sparsify.inputspec import InputSpec

    ref = hub_ref(spec, args, task)
    if ref["kind"] == "torchvision":
        model = load_torchvision(ref["name"])
        if len(shapes) > 1:
            raise ModelError(f"torchvision:{ref['name']} takes one input; got {len(shapes)} --input-shape")
        shape = shapes[0] if shapes else (1, 3, DEFAULT_IMAGE, DEFAULT_IMAGE)
        return model, ref, [InputSpec("input", tuple(shape), "float32")]
    hf = load_hf(ref["name"], ref["args"]["task"], ref["args"].get("attn_implementation"))
    names = hf_input_names(hf)
    ref["args"]["config"] = _serializable_config(hf)
    return hf_module(hf, names), ref, hf_input_specs(hf, names, shapes)
