"""Recipes: a YAML file that chains compression stages under an accuracy budget.

``load_recipe(path)`` parses the YAML, validates it with pydantic and returns a frozen
``Recipe``. Every error comes out as one ``ConfigError`` line naming the file, the line,
the field and (where there is a closed set) the allowed values::

    recipe.yaml:9: stages[1].method: Input should be 'ptq' or 'qat' (got 'int4')

``model`` and ``teacher`` are a zoo name, a ``package.module:function`` entry point or a
checkpoint path; ``data`` is a dataset name or an entry point returning loaders.
"""

from __future__ import annotations

import difflib
import importlib
import os
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, Literal, Union

import yaml
from pydantic import (BaseModel, ConfigDict, Discriminator, Field, Tag, ValidationError,
                      field_validator, model_validator)

from torchslim._registry import Registry
from torchslim.errors import ConfigError, TorchslimError

__all__ = ["Recipe", "Budget", "Target", "StageOptions", "DistillOptions", "PruneOptions",
           "QuantizeOptions", "FinetuneOptions", "ExportOptions", "STAGE_SCHEMAS",
           "load_recipe", "parse_recipe", "resolve_entry_point", "builtin_recipe",
           "builtin_recipes"]

Loc = tuple[str | int, ...]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def resolve_entry_point(text: str) -> Callable[..., Any]:
    """``package.module:function`` -> the function, or a ConfigError saying what is missing."""
    module_name, _, attr = text.partition(":")
    if not module_name or not attr:
        raise ConfigError(f"entry point {text!r} must look like package.module:function")
    try:
        module = importlib.import_module(module_name)
    except ImportError as e:
        raise ConfigError(f"entry point {text!r}: cannot import {module_name!r} ({e}); "
                          "install the package or fix the name") from None
    fn = getattr(module, attr, None)
    if not callable(fn):
        raise ConfigError(f"entry point {text!r}: module {module_name!r} has no function "
                          f"{attr!r}")
    return fn


def _looks_like_path(text: str) -> bool:
    return text.endswith((".safetensors", ".json")) or os.sep in text or text.startswith(".")


def _check_model_ref(text: str) -> str:
    from torchslim.zoo import list_models

    if ":" in text and not _looks_like_path(text) and text not in list_models():
        _entry_or_value_error(text)
    elif _looks_like_path(text):
        if not Path(text).expanduser().exists():
            raise ValueError(f"checkpoint {text!r} does not exist; train one with "
                             "`torchslim train` or give a zoo name")
    elif text not in list_models():
        raise ValueError(f"{text!r} is not a zoo model, a package.module:function entry "
                         f"point or a checkpoint path; zoo models: {', '.join(list_models())}")
    return text


def _entry_or_value_error(text: str) -> None:
    try:
        resolve_entry_point(text)
    except ConfigError as e:
        raise ValueError(str(e)) from None


class Budget(_Strict):
    """What the final artifact must achieve. Drops are fractions of top-1 (0.01 = 1 point)."""

    max_drop: float | None = Field(0.01, ge=0, le=1)   # absolute, against the baseline
    max_relative_drop: float | None = Field(None, ge=0, le=1)
    min_speedup: float | None = Field(None, gt=0)      # final vs baseline fp32 on PyTorch
    max_latency_ms: float | None = Field(None, gt=0)   # final p50 at ``batch``
    max_bytes: int | None = Field(None, gt=0)          # final artifact size
    batch: int = Field(32, ge=1)                        # batch size the speed targets use

    def allowed_drop(self, baseline_top1: float) -> float:
        """The largest top-1 drop (fraction) the guard accepts."""
        limits = [x for x in (self.max_drop, None if self.max_relative_drop is None
                              else self.max_relative_drop * baseline_top1) if x is not None]
        return min(limits) if limits else 1.0


def _known(registry: Any, what: str, value: str) -> str:
    """``value`` if ``registry`` has it; else the error that lists the allowed names."""
    if value not in registry:
        raise ValueError(f"unknown {what} {value!r}; allowed: {', '.join(registry.names())}")
    return value


class Target(_Strict):
    """Where the artifact will be served, and how it is timed."""

    runtime: str = "onnxruntime"
    threads: int = Field(2, ge=1)
    batch_sizes: tuple[int, ...] = (1, 32)
    repeats: int = Field(20, ge=1)        # timed calls per batch size in the final report
    stage_repeats: int = Field(5, ge=1)   # timed calls per batch size after each stage
    timing_rounds: int = Field(10, ge=0)  # interleaved baseline/final rounds for the speed-up
    measure_memory: bool = True           # peak memory of the final candidates (a subprocess)

    @field_validator("runtime")
    @classmethod
    def _known_runtime(cls, value: str) -> str:
        from torchslim.runtime import runtimes_reading

        allowed = runtimes_reading(".onnx")
        if value not in allowed:
            raise ValueError(f"unknown runtime {value!r}; allowed: {', '.join(allowed)}")
        return value

    @field_validator("batch_sizes")
    @classmethod
    def _sizes(cls, value: tuple[int, ...]) -> tuple[int, ...]:
        if not value or min(value) < 1:
            raise ValueError(f"batch_sizes={list(value)} needs at least one size >= 1")
        return value


class Pretrain(_Strict):
    """Train a zoo ``model`` first (once; cached like the default teacher)."""

    epochs: int = Field(6, ge=1)
    lr: float = Field(0.1, gt=0)
    seed: int = 0


class StageOptions(_Strict):
    """Fields every stage has. ``fallbacks`` are option overrides tried in order when the
    stage breaks the budget; ``on_fail`` says what happens when all of them do."""

    kind: str
    name: str | None = None
    on_fail: Literal["skip", "stop"] = "skip"
    max_drop: float | None = Field(None, ge=0, le=1)   # this stage's share: the total drop
                                                        # allowed after it (<= the budget's)
    fallbacks: tuple[dict[str, Any], ...] = ()

    @classmethod
    def field_names(cls) -> list[str]:
        return sorted(cls.model_fields)

    def attempts(self) -> list[StageOptions]:
        """The options of each attempt: this stage, then each fallback merged onto it."""
        base = self.model_dump(exclude={"fallbacks"})
        return [self, *(type(self).model_validate({**base, **fb}) for fb in self.fallbacks)]


class DistillOptions(StageOptions):
    """Knowledge distillation into a smaller student (the teacher's architecture scaled)."""

    kind: Literal["distill"] = "distill"
    student: str | None = None        # a zoo name; None: the teacher's family, scaled
    width_mult: float = Field(0.5, gt=0)
    depth_mult: float = Field(1.0, gt=0)
    epochs: int = Field(3, ge=1)
    lr: float = Field(0.1, gt=0)
    temperature: float = Field(4.0, gt=0)
    alpha: float = Field(0.9, ge=0, le=1)
    max_steps_per_epoch: int | None = Field(None, ge=1)


class PruneOptions(StageOptions):
    """Structured channel pruning (or masks) with recovery fine-tuning; see PruneJob."""

    kind: Literal["prune"] = "prune"
    structured: bool = True
    target_macs: float | None = Field(0.5, gt=0, le=1)   # fraction of the MACs to keep
    target_params: float | None = Field(None, gt=0, le=1)
    importance: str = "l2"
    scope: str = "global"
    round_to: int | None = Field(8, ge=1)
    protected: tuple[str, ...] = ()
    blocks: int | tuple[str, ...] = 0    # residual blocks to remove first: a count or names
    sensitivity: bool = False
    steps: int = Field(1, ge=1)
    sparsity: float = Field(0.5, ge=0, lt=1)
    pattern: str = "unstructured"
    finetune_epochs: int = Field(2, ge=0)
    lr: float = Field(0.02, gt=0)

    @model_validator(mode="after")
    def _valid_job(self) -> PruneOptions:
        from torchslim.pipeline.prune import PruneJob

        try:
            PruneJob(checkpoint=Path("-"), **self.job_kwargs())
        except TorchslimError as e:
            raise ValueError(str(e)) from None
        return self

    def job_kwargs(self) -> dict[str, Any]:
        return self.model_dump(exclude={"kind", "name", "on_fail", "fallbacks", "max_drop"})


class QuantizeOptions(StageOptions):
    """INT8 (w``bits``a8) static quantization, post-training or quantization-aware."""

    kind: Literal["quantize"] = "quantize"
    method: Literal["ptq", "qat"] = "ptq"
    observer: str = "minmax"
    bits: int = Field(8, ge=2, le=8)
    calib_batches: int = Field(16, ge=1)
    qat_epochs: int = Field(1, ge=1)
    float_layers: tuple[str, ...] = ()   # layer names or regexes kept in float
    keep_sensitive: int = Field(0, ge=0)  # also keep the N most sensitive layers in float

    @field_validator("observer")
    @classmethod
    def _known_observer(cls, value: str) -> str:
        from torchslim.quant.observers import OBSERVERS

        return _known(OBSERVERS, "observer", value)


class FinetuneOptions(StageOptions):
    """Plain fine-tuning with hard labels (e.g. to recover after pruning)."""

    kind: Literal["finetune"] = "finetune"
    epochs: int = Field(1, ge=1)
    lr: float = Field(0.01, gt=0)
    schedule: Literal["cosine", "onecycle", "constant"] = "cosine"
    max_steps_per_epoch: int | None = Field(None, ge=1)


class ExportOptions(StageOptions):
    """Write the shipped artifact (the last accepted stage's) into the output directory."""

    kind: Literal["export"] = "export"
    artifact: str = "model.onnx"


STAGE_SCHEMAS: Registry[type[StageOptions]] = Registry("stage")
for _cls in (DistillOptions, PruneOptions, QuantizeOptions, FinetuneOptions, ExportOptions):
    STAGE_SCHEMAS.add(_cls.model_fields["kind"].default, _cls)


def _kind_of(raw: Any) -> str | None:
    return raw.kind if isinstance(raw, StageOptions) else (
        raw.get("kind") if isinstance(raw, dict) else None)


# A tagged union over the registered schemas: pydantic picks the schema by ``kind`` and
# reports errors at stages[i].<field>.
AnyStage = Annotated[Union[tuple(Annotated[cls, Tag(name)] for name, cls in  # type: ignore[misc]
                                 ((n, STAGE_SCHEMAS.get(n)) for n in STAGE_SCHEMAS))],
                     Discriminator(_kind_of)]


class Recipe(_Strict):
    """A whole compression job. Relative paths are relative to the working directory."""

    name: str = "recipe"
    seed: int = 0
    model: str
    model_args: dict[str, Any] = {}
    pretrain: Pretrain | None = None
    teacher: str | None = None          # distill's teacher; None: the model itself
    baseline_name: str = "baseline"     # report candidate "<baseline_name>-fp32-torch"
    data: str = "fashion-mnist"
    data_args: dict[str, Any] = {}
    stages: tuple[AnyStage, ...] = Field(min_length=1)
    budget: Budget = Budget()
    target: Target = Target()
    output: str | None = None           # default runs/<name>

    @field_validator("model", "teacher")
    @classmethod
    def _model_ref(cls, value: str | None) -> str | None:
        return None if value is None else _check_model_ref(value)

    @field_validator("data")
    @classmethod
    def _data_ref(cls, value: str) -> str:
        from torchslim.data import dataset_names

        if ":" in value:
            _entry_or_value_error(value)
        elif value not in dataset_names():
            raise ValueError(f"unknown dataset {value!r}; allowed: {', '.join(dataset_names())} "
                             "or a package.module:function entry point returning loaders")
        return value

    @field_validator("stages", mode="before")
    @classmethod
    def _stages(cls, value: Any) -> Any:
        if not isinstance(value, (list, tuple)):
            raise ValueError("stages must be a list of {kind: ..., options} mappings")
        for i, raw in enumerate(value):
            kind = raw.get("kind") if isinstance(raw, dict) else None
            if kind not in STAGE_SCHEMAS:
                raise _StageKindError(i, kind)
        return value

    @property
    def output_dir(self) -> Path:
        return Path(self.output) if self.output else Path("runs") / self.name


class _StageKindError(ValueError):
    def __init__(self, index: int, kind: Any) -> None:
        allowed = ", ".join(STAGE_SCHEMAS.names())
        got = "no kind" if kind is None else f"unknown stage {kind!r}"
        hint = difflib.get_close_matches(str(kind), STAGE_SCHEMAS.names(), n=1)
        self.index = index
        super().__init__(f"{got}; allowed: {allowed}"
                         + (f" (did you mean {hint[0]!r}?)" if hint else ""))


# ---------------------------------------------------------------- loading and errors


def _line_map(text: str) -> dict[Loc, int]:
    """Every mapping key / sequence item of the YAML document -> its 1-based line."""
    lines: dict[Loc, int] = {}

    def walk(node: yaml.Node, loc: Loc) -> None:
        lines[loc] = node.start_mark.line + 1
        if isinstance(node, yaml.MappingNode):
            for key, child in node.value:
                lines[(*loc, key.value)] = key.start_mark.line + 1
                walk_child(child, (*loc, key.value))
        elif isinstance(node, yaml.SequenceNode):
            for i, child in enumerate(node.value):
                walk(child, (*loc, i))

    def walk_child(child: yaml.Node, loc: Loc) -> None:
        line = lines[loc]
        walk(child, loc)
        lines[loc] = line  # the key's line, not the value's

    root = yaml.compose(text)
    if root is not None:
        walk(root, ())
    return lines


def _field(loc: Loc) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "(top level)"


def _clean(loc: Loc) -> Loc:
    """Drop the union tag pydantic puts after ``stages[i]`` (the stage kind)."""
    return tuple(p for i, p in enumerate(loc)
                 if not (i >= 2 and loc[i - 2] == "stages" and isinstance(loc[i - 1], int)
                         and p in STAGE_SCHEMAS))


def _line(lines: dict[Loc, int], loc: Loc) -> int:
    for n in range(len(loc), -1, -1):
        if loc[:n] in lines:
            return lines[loc[:n]]
    return 1


def _message(err: dict[str, Any]) -> str:
    msg = err["msg"].removeprefix("Value error, ")
    value = err.get("input")
    if err["type"] == "extra_forbidden":
        return "unknown option"
    if isinstance(value, (str, int, float, bool)) and repr(value) not in msg:
        msg += f" (got {value!r})"
    return msg


def _first_error(e: ValidationError, source: str, lines: dict[Loc, int], raw: dict[str, Any],
                 prefix: Loc = ()) -> ConfigError:
    errors = e.errors()
    err = errors[0]
    loc = (*prefix, *_clean(tuple(err["loc"])))
    cause = err.get("ctx", {}).get("error")
    if isinstance(cause, _StageKindError):
        loc = ("stages", cause.index, "kind")
    msg = _message(err)
    if err["type"] == "extra_forbidden":
        allowed = _allowed_keys(loc, raw)
        msg += f"; allowed: {', '.join(allowed)}" if allowed else ""
    more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
    return ConfigError(f"{source}:{_line(lines, loc)}: {_field(loc)}: {msg}{more}")


def _allowed_keys(loc: Loc, raw: dict[str, Any]) -> list[str]:
    """The option names the schema holding ``loc[-1]`` accepts (for 'unknown option')."""
    if len(loc) >= 3 and loc[0] == "stages" and isinstance(loc[1], int):
        stages = raw.get("stages") or []
        kind = _kind_of(stages[loc[1]]) if loc[1] < len(stages) else None
        return STAGE_SCHEMAS.get(kind).field_names() if kind in STAGE_SCHEMAS else []
    model: Any = Recipe
    for part in loc[:-1]:
        field = model.model_fields.get(part) if isinstance(part, str) else None
        model = getattr(field, "annotation", None)
        if not (isinstance(model, type) and issubclass(model, BaseModel)):
            return []
    return sorted(model.model_fields)


def _check_stages(recipe: Recipe, source: str, lines: dict[Loc, int]) -> None:
    """Order rules and each fallback validated as a full set of options."""
    kinds = [s.kind for s in recipe.stages]
    first_quant = kinds.index("quantize") if "quantize" in kinds else len(kinds)
    for i, stage in enumerate(recipe.stages):
        loc: Loc = ("stages", i, "kind")
        where = f"{source}:{_line(lines, loc)}: {_field(loc)}"
        if stage.kind == "export" and i != len(kinds) - 1:
            raise ConfigError(f"{where}: export must be the last stage")
        if i > first_quant and stage.kind != "export":
            raise ConfigError(f"{where}: only export may follow quantize (the model is INT8 "
                              f"from there on), got {stage.kind!r}")
        for j, _ in enumerate(stage.fallbacks):
            try:
                type(stage).model_validate({**stage.model_dump(exclude={"fallbacks"}),
                                            **stage.fallbacks[j]})
            except ValidationError as e:
                raise _first_error(e, source, lines, {"stages": [stage.model_dump()] * (i + 1)},
                                   ("stages", i, "fallbacks", j)) from None
    names = [stage_name(i, s) for i, s in enumerate(recipe.stages)]
    if len(set(names)) != len(names):
        raise ConfigError(f"{source}:{_line(lines, ('stages',))}: stages: two stages share a "
                          f"name ({', '.join(names)}); give each a distinct name")


def stage_name(index: int, stage: StageOptions) -> str:
    """``02-prune`` unless the stage names itself."""
    return stage.name or f"{index + 1:02d}-{stage.kind}"


def parse_recipe(text: str, *, source: str = "<recipe>",
                 overrides: dict[str, Any] | None = None) -> Recipe:
    """Validate YAML ``text``; ``overrides`` are top-level keys replacing the file's."""
    try:
        raw = yaml.safe_load(text)
        lines = _line_map(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        line = mark.line + 1 if mark is not None else 1
        problem = getattr(e, "problem", None) or str(e)
        context, where = getattr(e, "context", None), getattr(e, "context_mark", None)
        if context and where is not None and where.line + 1 != line:
            problem = f"{problem} ({context} from line {where.line + 1})"
        raise ConfigError(f"{source}:{line}: invalid YAML: {' '.join(str(problem).split())}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}:1: (top level): a recipe is a mapping with at least "
                          "'model' and 'stages', got " + type(raw).__name__)
    raw.update(overrides or {})
    try:
        recipe = Recipe.model_validate(raw)
    except ValidationError as e:
        raise _first_error(e, source, lines, raw) from None
    _check_stages(recipe, source, lines)
    return recipe


def load_recipe(path: str | os.PathLike[str], **overrides: Any) -> Recipe:
    """Read and validate a recipe file (or a built-in recipe's name, e.g. "fashion_mnist")."""
    p = Path(path)
    if not p.is_file() and str(path) in builtin_recipes():
        p = builtin_recipe(str(path))
    if not p.is_file():
        raise ConfigError(f"recipe {str(path)!r} not found; pass a YAML file or a built-in "
                          f"recipe: {', '.join(builtin_recipes())}")
    return parse_recipe(p.read_text(), source=str(path), overrides=overrides)


def builtin_recipe(name: str) -> Path:
    """The path of a recipe shipped in ``torchslim/recipes``."""
    root = Path(__file__).resolve().parent.parent / "recipes"
    path = root / f"{name}.yaml"
    if not path.is_file():
        raise ConfigError(f"no built-in recipe {name!r}; allowed: {', '.join(builtin_recipes())}")
    return path


def builtin_recipes() -> list[str]:
    root = Path(__file__).resolve().parent.parent / "recipes"
    return sorted(p.stem for p in root.glob("*.yaml"))
