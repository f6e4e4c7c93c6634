"""YAML recipes: a whole job (model, data, stages of train / prune / finetune / export) in one file.

A recipe is read with ``yaml.safe_load`` (plain data only; the line of every field comes
from ``yaml.compose`` with the safe loader, which builds nodes and never objects) and
validated completely before any stage runs: unknown or duplicated keys, wrong types and
bad values are one `RecipeError` naming the file, the line and the field. Each stage's
fields are the flags of the command it stands for (`PruneOptions`, `TrainConfig`,
`ScheduleOptions`), checked by the same code.

    name: digits-vit-90              # optional; the default output directory
    model: digits-vit                # built-in, package.module:attr, or a run directory
    data: digits
    stages:
      - name: dense                  # every stage writes DIR/<name> (export: DIR/<name>.onnx)
        train: {epochs: 20, lr: 0.003}
      - name: sparse
        from: dense                  # default: the previous stage that wrote a run
        finetune:
          epochs: 30
          distill: true
          schedule: {final_sparsity: 0.9, start: 0.0, end: 0.6, every: 1, scope: global}
      - name: model
        export: {mode: sparse}
"""

from __future__ import annotations

import dataclasses
import hashlib
import re
from importlib import resources
from pathlib import Path
from typing import Any, Callable

from sparsify.errors import SparsifyError
from sparsify.trust import CodeTrust
from sparsify.finetune import TrainConfig
from sparsify.options import Bounds, OptionError, build, check_fields, check_type, option
from sparsify.pruner import PruneOptions
from sparsify.schedule import ScheduleOptions

ACTIONS = ("train", "prune", "finetune", "export")
TOP_KEYS = ("name", "description", "model", "model_args", "weights", "data", "input_shapes", "input_dtypes",
            "stages")
STAGE_KEYS = ("name", "from", *ACTIONS)
NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


class RecipeError(SparsifyError):
    """A recipe cannot be read or is not valid; the message names the file, line and field."""


@dataclasses.dataclass
class ExportOptions:
    """A recipe's export stage: the arguments of `sparsify export`."""

    format: str = option("onnx", "file format", choices=("onnx", "torch"))
    mode: str = option("dense", "dense, slim (channels removed) or sparse (CSR kernels)",
                       choices=("dense", "slim", "sparse"))
    verify: bool = option(True, "check the export against the masked model")
    atol: float = option(1e-5, "verification absolute tolerance", bounds=Bounds(0.0, lo_open=True))
    rtol: float = option(1e-4, "verification relative tolerance", bounds=Bounds(0.0))
    opset: int | None = option(None, "ONNX opset", bounds=Bounds(7))
    density_threshold: float | None = option(None, "sparse: convert layers below this density",
                                             bounds=Bounds(0.0, 1.0, lo_open=True))
    target_batch: int | None = option(None, "sparse: batch size the conversion is chosen for", bounds=Bounds(1))

    def validate(self) -> "ExportOptions":
        check_fields(self)
        return self


@dataclasses.dataclass
class FinetuneStage:
    """A finetune stage: training fields, an optional schedule and teacher."""

    train: TrainConfig
    schedule: ScheduleOptions | None = None
    teacher: str | None = None  # a stage name or a run directory


@dataclasses.dataclass
class Stage:
    """One step of a recipe."""

    name: str
    action: str
    options: Any  # TrainConfig | PruneOptions | FinetuneStage | ExportOptions
    source: str | None  # the stage whose run this one starts from (None: the recipe's model)
    line: int


@dataclasses.dataclass
class Recipe:
    """A validated recipe and where it came from."""

    name: str
    model: str
    stages: list[Stage]
    path: str
    text: str
    model_args: dict[str, Any] = dataclasses.field(default_factory=dict)
    weights: str | None = None
    data: str | None = None
    input_shapes: list[str] = dataclasses.field(default_factory=list)
    input_dtypes: list[str] = dataclasses.field(default_factory=list)
    description: str | None = None
    lines: dict[str, int] = dataclasses.field(default_factory=dict)  # top-level field -> line

    def code_refs(self) -> dict[str, str]:
        """Field -> ``package.module:attr`` reference the recipe would import (model, data)."""
        from sparsify.artifact import is_run_dir
        from sparsify.data import is_code_ref

        refs = {}
        if ":" in self.model and not is_run_dir(self.model):
            refs["model"] = self.model
        if self.data and is_code_ref(self.data):
            refs["data"] = self.data
        return refs

    def check_trust(self, trust: CodeTrust) -> None:
        """Refuse, before any work, a recipe naming code that ``trust`` does not allow."""
        for field, ref in self.code_refs().items():
            if not trust.allows(ref):
                raise RecipeError(f"{self.path}, line {self.lines.get(field, 1)}, {field}: the recipe names the code "
                                  f"reference {ref!r}; importing it runs code from that module, which sparsify does "
                                  f"only with your consent: if you trust this recipe, give --trust-code {ref} (or a "
                                  "bare --trust-code)")

    def record(self, stage: str) -> dict[str, Any]:
        """What a run's manifest keeps of the recipe (plain JSON)."""
        return {"name": self.name, "source": self.path, "stage": stage,
                "sha256": hashlib.sha256(self.text.encode()).hexdigest(), "text": self.text}


# --- reading: values from yaml.safe_load, lines from the composed node tree -----------------------

class _Lines:
    """Line numbers (1-based) of every key and item, by path, from the safe loader's node tree."""

    def __init__(self, text: str, path: str) -> None:
        import yaml

        self.path = path
        self.lines: dict[tuple, int] = {}
        try:
            root = yaml.compose(text, Loader=yaml.SafeLoader)
        except yaml.YAMLError as exc:
            raise _yaml_error(exc, path) from None
        if root is not None:
            self._walk(root, ())

    def _walk(self, node: Any, at: tuple) -> None:
        import yaml

        self.lines.setdefault(at, node.start_mark.line + 1)
        if isinstance(node, yaml.MappingNode):
            seen: set[str] = set()
            for key, value in node.value:
                k = key.value
                if k in seen:
                    raise RecipeError(f"{self.path}, line {key.start_mark.line + 1}, {_dotted(at + (k,))}: "
                                      "the key appears twice in the same mapping")
                seen.add(k)
                self.lines[at + (k,)] = key.start_mark.line + 1
                self._walk(value, at + (k,))
        elif isinstance(node, yaml.SequenceNode):
            for i, item in enumerate(node.value):
                self._walk(item, at + (i,))

    def line(self, at: tuple) -> int:
        while at not in self.lines and at:
            at = at[:-1]
        return self.lines.get(at, 1)

    def error(self, at: tuple, message: str) -> RecipeError:
        return RecipeError(f"{self.path}, line {self.line(at)}, {_dotted(at)}: {message}")


def _yaml_error(exc: Exception, path: str) -> RecipeError:
    mark = getattr(exc, "problem_mark", None)
    where = f", line {mark.line + 1}" if mark is not None else ""
    problem = " ".join(str(getattr(exc, "problem", None) or exc).split())
    return RecipeError(f"{path}{where}: not valid for a recipe ({problem}); recipes are plain YAML data "
                       "(mappings, lists, strings, numbers, booleans)")


def _dotted(at: tuple) -> str:
    out = ""
    for part in at:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "recipe"


def _hint(value: Any) -> str:
    if isinstance(value, str) and re.fullmatch(r"[-+]?\d+(\.\d*)?[eE][-+]?\d+", value.strip()):
        return f" (YAML reads {value} as text: write it with a decimal point, e.g. 1.0e-3, or as 0.001)"
    return ""


def _options(cls: type, values: Any, at: tuple, lines: _Lines) -> Any:
    """``cls`` built from a mapping and validated, every error mapped to its line."""
    if values is None:
        values = {}
    if not isinstance(values, dict):
        raise lines.error(at, f"should be a mapping of fields, got {type(values).__name__}")
    for f in dataclasses.fields(cls):
        if f.name in values and not f.metadata.get("flag", True):
            raise lines.error(at + (f.name,), f"{f.name} is a command-line setting, not a recipe field")
    try:
        obj = build(cls, values)
        obj.validate()
    except OptionError as exc:
        raise lines.error(at + (exc.field,), exc.reason + _hint(values.get(exc.field))) from None
    return obj


def _finetune(values: Any, at: tuple, lines: _Lines) -> FinetuneStage:
    if not isinstance(values, dict):
        raise lines.error(at, f"should be a mapping of fields, got {type(values).__name__}")
    values = dict(values)
    schedule_values = values.pop("schedule", None)
    teacher = values.pop("teacher", None)
    train = _options(TrainConfig, values, at, lines)
    schedule = None
    if schedule_values is not None:
        if not isinstance(schedule_values, dict):
            raise lines.error(at + ("schedule",), "should be a mapping of schedule fields")
        schedule = _options(ScheduleOptions, {"kind": "gradual", **schedule_values}, at + ("schedule",), lines)
    if teacher is not None and not isinstance(teacher, str):
        raise lines.error(at + ("teacher",), "should be a stage name or a run directory")
    return FinetuneStage(train, schedule, teacher)


_PARSERS: dict[str, Callable[[Any, tuple, _Lines], Any]] = {
    "train": lambda v, at, lines: _options(TrainConfig, v, at, lines),
    "prune": lambda v, at, lines: _options(PruneOptions, v, at, lines),
    "finetune": _finetune,
    "export": lambda v, at, lines: _options(ExportOptions, v, at, lines),
}


def parse_recipe(text: str, path: str = "<recipe>") -> Recipe:
    """A validated `Recipe` from YAML text; any problem is a `RecipeError` naming file, line and field."""
    import yaml

    lines = _Lines(text, path)
    try:
        doc = yaml.safe_load(text)
    except yaml.YAMLError as exc:  # e.g. a !!python/object tag, which the safe loader refuses
        raise _yaml_error(exc, path) from None
    if not isinstance(doc, dict):
        raise RecipeError(f"{path}, line 1: a recipe should be a mapping with at least 'model' and 'stages'")
    for key in doc:
        if key not in TOP_KEYS:
            raise lines.error((key,), f"unknown field {key!r}; expected one of {', '.join(TOP_KEYS)}")
    for key in ("model", "stages"):
        if key not in doc:
            raise lines.error((), f"the recipe has no {key!r} field")
    top: dict[str, Any] = {}
    for key, tp in (("name", str | None), ("description", str | None), ("model", str), ("model_args", dict | None),
                    ("weights", str | None), ("data", str | None), ("input_shapes", list | None),
                    ("input_dtypes", list | None)):
        try:
            top[key] = check_type(key, doc.get(key), tp)
        except OptionError as exc:
            raise lines.error((key,), exc.reason) from None
    for key in ("input_shapes", "input_dtypes"):
        for i, item in enumerate(top[key] or []):
            if not isinstance(item, str):
                raise lines.error((key, i), f"should be a string such as \"1,3,32,32\"; got {item!r}")
    stages = _stages(doc["stages"], lines)
    _check_sources(top["model"], top["data"], stages, lines)
    name = top["name"] or Path(path).stem
    if not NAME.match(name):
        raise lines.error(("name",), f"name {name!r} should be letters, digits, '.', '_' or '-'")
    return Recipe(name=name, model=top["model"], stages=stages, path=path, text=text,
                  model_args=top["model_args"] or {}, weights=top["weights"], data=top["data"],
                  input_shapes=top["input_shapes"] or [], input_dtypes=top["input_dtypes"] or [],
                  description=top["description"], lines={k: lines.line((k,)) for k in doc})


def _stages(items: Any, lines: _Lines) -> list[Stage]:
    if not isinstance(items, list) or not items:
        raise lines.error(("stages",), "should be a non-empty list of stages")
    stages: list[Stage] = []
    last_run: str | None = None
    for i, item in enumerate(items):
        at = ("stages", i)
        if not isinstance(item, dict):
            raise lines.error(at, "each stage should be a mapping with one of " + ", ".join(ACTIONS))
        for key in item:
            if key not in STAGE_KEYS:
                raise lines.error(at + (key,), f"unknown field {key!r}; a stage has name, from, and one of "
                                               + ", ".join(ACTIONS))
        actions = [a for a in ACTIONS if a in item]
        if len(actions) != 1:
            raise lines.error(at, "each stage should have exactly one of " + ", ".join(ACTIONS)
                              + (f"; it has {', '.join(actions)}" if actions else ""))
        action = actions[0]
        name = item.get("name", f"{i + 1}-{action}")
        if not isinstance(name, str) or not NAME.match(name):
            raise lines.error(at + ("name",), f"name {name!r} should be letters, digits, '.', '_' or '-'")
        if any(s.name == name for s in stages):
            raise lines.error(at + ("name",), f"two stages are named {name!r}; each stage writes DIR/<name>")
        source = item.get("from", last_run)
        if "from" in item:
            runs = [s.name for s in stages if s.action != "export"]
            if source not in runs:
                raise lines.error(at + ("from",), f"from: {source!r} should name an earlier stage that writes a run"
                                                  + (f" ({', '.join(runs)})" if runs else " (there is none yet)"))
        options = _PARSERS[action](item[action], at + (action,), lines)
        if action == "export" and source is None:
            raise lines.error(at, "an export stage needs a run: put it after a train, prune or finetune stage")
        if isinstance(options, FinetuneStage) and options.teacher is not None:
            if not any(s.name == options.teacher for s in stages) and not Path(options.teacher).is_dir():
                raise lines.error(at + (action, "teacher"), f"teacher {options.teacher!r} is neither an earlier "
                                                            "stage nor a run directory")
        stages.append(Stage(name, action, options, source, lines.line(at)))
        if action != "export":
            last_run = name
    return stages


def _needs_data(stage: Stage) -> bool:
    o = stage.options
    if stage.action in ("train", "finetune"):
        return True
    return stage.action == "prune" and (o.method in ("wanda", "sparsegpt") or o.criterion == "taylor"
                                        or o.bn_recalibrate > 0)


def _check_sources(model: str, data: str | None, stages: list[Stage], lines: _Lines) -> None:
    """The model reference has a valid form, and every stage has what it starts from."""
    from sparsify.artifact import is_run_dir
    from sparsify.models import BUILTIN_MODELS

    model_is_run = is_run_dir(model)
    if not model_is_run and model not in BUILTIN_MODELS and ":" not in model:
        raise lines.error(("model",), f"model {model!r} should be a built-in ({', '.join(sorted(BUILTIN_MODELS))}), "
                                      "'package.module:attr', or a run directory")
    for i, stage in enumerate(stages):
        if stage.source is None and stage.action == "finetune" and not model_is_run:
            raise lines.error(("stages", i), f"stage {stage.name!r} fine-tunes a run, but nothing before it wrote "
                                             "one: put a train or prune stage first, or set model to a run directory")
        if data is None and not model_is_run and _needs_data(stage):
            raise lines.error(("stages", i), f"stage {stage.name!r} ({stage.action}) needs data: add a 'data:' "
                                             "field to the recipe (e.g. data: digits)")


def recipe_notes(record: dict[str, Any] | None) -> list[str]:
    """Lines `sparsify inspect` shows for a run made by `sparsify apply`: which recipe and stage, and its text."""
    if not record:
        return []
    head = (f"made by recipe {record.get('name')!r}, stage {record.get('stage')!r} (from {record.get('source')}, "
            f"sha256 {str(record.get('sha256'))[:12]}…):")
    return [head + "\n" + "\n".join("    " + line for line in str(record.get("text", "")).rstrip().splitlines())]


# --- shipped recipes ---------------------------------------------------------------------------

def shipped() -> dict[str, str]:
    """Recipe name → YAML text of the recipes inside the package (sparsify/recipes/*.yaml)."""
    folder = resources.files("sparsify.recipes")
    return {p.name[:-5]: p.read_text(encoding="utf-8") for p in folder.iterdir() if p.name.endswith(".yaml")}


def load_recipe(ref: str) -> Recipe:
    """A recipe from a YAML file path, or a shipped recipe by name (e.g. ``digits-vit-90``)."""
    path = Path(ref)
    if path.is_file():
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise RecipeError(f"cannot read recipe {path}: {exc}") from None
        return parse_recipe(text, str(path))
    recipes = shipped()
    if ref in recipes:
        return parse_recipe(recipes[ref], f"sparsify/recipes/{ref}.yaml")
    raise RecipeError(f"recipe {ref!r} is neither a file nor a shipped recipe; shipped recipes: "
                      + ", ".join(sorted(recipes)))
