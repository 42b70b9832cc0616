"""Recipes: a YAML file that chains compression stages under an accuracy budget.

``load_recipe(path)`` parses the YAML, validates it with pydantic and returns a frozen
``Recipe``. Every error comes out as one ``ConfigError`` line naming the file, the line,
the field and (where there is a closed set) the allowed values::

    recipe.yaml:9: stages[1].method: Input should be 'ptq' or 'qat' (got 'int4')

``model`` and ``teacher`` are a zoo name, a ``package.module:function`` entry point or a
checkpoint path; ``data`` is a dataset name or an entry point returning loaders.

A recipe is code: an entry point is imported and called, with the user's permissions,
when the run starts (``torchslim.pipeline.setup``). Validation never imports anything: it
checks the schema and the entry points' spelling only, so ``load_recipe`` is safe on a
file of unknown origin. Every name a recipe gives (its own, a stage's, the exported
artifact's) is a plain name: nothing it says can place a file outside its output.

A stage's options are not defined here: each stage schema is made from its command's
option table (``PRUNE``, ``QUANTIZE``, ``DISTILL``, ``FINETUNE``), whose rows point at the
config fields (``ChannelPruneConfig.target_macs``, ...) that define and validate them.
"""

from __future__ import annotations

import difflib
import inspect
import os
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal, Union

import yaml
from pydantic import (BaseModel, ConfigDict, Discriminator, Field, PrivateAttr, Tag,
                      ValidationError, ValidationInfo, create_model, field_validator,
                      model_validator)

from torchslim._registry import Registry
from torchslim.errors import ConfigError
from torchslim.evaluation.robustness.config import RobustnessConfig, RobustnessLimits
from torchslim.pipeline import recipe_errors as errs
from torchslim.pipeline.entry_points import entry_point_syntax, plain_name, resolve_entry_point
from torchslim.pipeline.distill import DISTILL, DISTILL_EMBEDDINGS
from torchslim.pipeline.options import OptionTable
from torchslim.pipeline.prune import PRUNE
from torchslim.pipeline.quantize import QUANTIZE
from torchslim.pipeline.training import FINETUNE, PRETRAIN

__all__ = ["Recipe", "Budget", "RobustnessBudget", "Target", "StageOptions", "DistillOptions",
           "PruneOptions", "QuantizeOptions", "FinetuneOptions", "ExportOptions", "STAGE_SCHEMAS",
           "load_recipe", "parse_recipe", "resolve_entry_point", "entry_point_syntax",
           "plain_name", "builtin_recipe", "builtin_recipes"]

Loc = errs.Loc


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _looks_like_path(text: str) -> bool:
    return text.endswith((".safetensors", ".json")) or os.sep in text or text.startswith(".")


def _check_model_ref(text: str) -> str:
    from torchslim.zoo import list_models

    if ":" in text and not _looks_like_path(text) and text not in list_models():
        entry_point_syntax(text)   # imported when the run starts, not here
    elif _looks_like_path(text):
        if not Path(text).expanduser().exists():
            raise ValueError(f"checkpoint {text!r} does not exist; train one with "
                             "`torchslim train` or give a zoo name")
    elif text not in list_models():
        raise ValueError(f"{text!r} is not a zoo model, a package.module:function entry "
                         f"point or a checkpoint path; zoo models: {', '.join(list_models())}")
    return text


_ROBUSTNESS_LIMITS = ("max_corruption_drop", "max_ece_increase", "max_class_drop_points",
                      "max_adversarial_drop")


class RobustnessBudget(_Strict):
    """Limits on each attempt's robustness block against the baseline's
    (``torchslim.evaluation.robustness``), measured on the validation split the guard uses.

    The limits are ``RobustnessLimits``' (drops are fractions, ``max_class_drop_points`` is
    in points); an attempt that breaks one is rolled back like one that breaks the top-1
    budget. The other keys choose the sample (``RobustnessConfig``): ``n`` stratified
    images (the standard error of a change against the baseline is about sqrt(flip
    fraction / n)), its seed, the corruptions and severities, and whether a float
    candidate is also attacked white-box through its own model.
    """

    max_corruption_drop: float | None = Field(None, ge=0, le=1)
    max_ece_increase: float | None = Field(None, ge=0, le=1)
    max_class_drop_points: float | None = Field(None, ge=0, le=100)
    max_adversarial_drop: float | None = Field(None, ge=0, le=1)
    n: int | None = Field(500, ge=1)              # None: the whole validation split
    seed: int = 0
    corruptions: tuple[str, ...] | None = None    # None: RobustnessConfig's six
    severities: tuple[int, ...] | None = None     # None: (1, 3, 5)
    white_box: bool = True

    @field_validator("corruptions", "severities")
    @classmethod
    def _sample(cls, value: tuple[Any, ...] | None, info: ValidationInfo) -> Any:
        if value is not None:   # reported at its own key rather than at the block
            RobustnessConfig(**{info.field_name: value})
        return value

    @model_validator(mode="after")
    def _builds(self) -> RobustnessBudget:
        if all(getattr(self, name) is None for name in _ROBUSTNESS_LIMITS):
            raise ValueError(f"give at least one limit ({', '.join(_ROBUSTNESS_LIMITS)}), "
                             "or drop the robustness block")
        self.limits()
        self.config()   # a ConfigError is a ValueError: pydantic reports it here
        return self

    def limits(self) -> RobustnessLimits:
        """The ``RobustnessLimits`` these keys set."""
        return RobustnessLimits(**{name: getattr(self, name) for name in _ROBUSTNESS_LIMITS})

    def config(self) -> RobustnessConfig:
        """The ``RobustnessConfig`` these keys set (its defaults for the rest)."""
        given = {"corruptions": self.corruptions, "severities": self.severities}
        return RobustnessConfig(n=self.n, seed=self.seed, white_box=self.white_box,
                                **{k: v for k, v in given.items() if v is not None})


class Budget(_Strict):
    """What the final artifact must achieve. Drops are fractions of top-1 (0.01 = 1 point).
    ``robustness``: optional limits on corruptions, calibration, classes and attacks."""

    max_drop: float | None = Field(0.01, ge=0, le=1)   # absolute, against the baseline
    max_relative_drop: float | None = Field(None, ge=0, le=1)
    min_speedup: float | None = Field(None, gt=0)      # final vs baseline fp32 on PyTorch
    max_latency_ms: float | None = Field(None, gt=0)   # final p50 at ``batch``
    max_bytes: int | None = Field(None, gt=0)          # final artifact size
    batch: int = Field(32, ge=1)                        # batch size the speed targets use
    robustness: RobustnessBudget | None = None

    def allowed_drop(self, baseline_top1: float) -> float:
        """The largest top-1 drop (fraction) the guard accepts."""
        limits = [x for x in (self.max_drop, None if self.max_relative_drop is None
                              else self.max_relative_drop * baseline_top1) if x is not None]
        return min(limits) if limits else 1.0


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


def _table_model(name: str, table: OptionTable, base: type[BaseModel], doc: str,
                 **fields: Any) -> Any:
    """A pydantic schema whose fields are ``table``'s recipe keys (typed from the config
    fields they set) plus ``fields``; ``plan()`` builds the table's configs from them."""
    model = create_model(name, __base__=base, __doc__=doc, __module__=__name__,
                         **{**table.recipe_fields(), **fields})
    model.table = table
    return model


class _Planned(_Strict):
    """A schema made from an option table: validated by building the table's configs, so a
    value they refuse is reported at its key (``OptionError.key``)."""

    table: ClassVar[OptionTable | None] = None

    def plan(self) -> Any:
        """What the configs say this block does (``PrunePlan``, ``TrainConfig``, ...)."""
        if self.table is None:
            raise TypeError(f"{type(self).__name__} is not made from an option table")
        return self.table.plan(**{name: getattr(self, name)
                                  for name in self.table.recipe_fields()})

    @model_validator(mode="after")
    def _builds(self) -> _Planned:
        if self.table is not None:
            self.plan()  # an OptionError is a ValueError: pydantic reports it here
        return self


Pretrain = _table_model("Pretrain", PRETRAIN, _Planned,
                        "Train a zoo ``model`` first (once; cached like the default teacher).")


class StageOptions(_Planned):
    """Fields every stage has. ``fallbacks`` are option overrides tried in order when the
    stage breaks the budget; ``on_fail`` says what happens when all of them do."""

    kind: str
    name: str | None = None
    on_fail: Literal["skip", "stop"] = "skip"
    max_drop: float | None = Field(None, ge=0, le=1)   # this stage's share: the total drop
                                                        # allowed after it (<= the budget's)
    fallbacks: tuple[dict[str, Any], ...] = ()

    @field_validator("name")
    @classmethod
    def _plain(cls, value: str | None) -> str | None:
        return None if value is None else plain_name(value, "stage name")

    @classmethod
    def field_names(cls) -> list[str]:
        return sorted(cls.model_fields)

    def attempts(self) -> list[StageOptions]:
        """The options of each attempt: this stage, then each fallback merged onto it."""
        base = self.model_dump(exclude={"fallbacks"})
        return [self, *(type(self).model_validate({**base, **fb}) for fb in self.fallbacks)]


def _stage(kind: str, table: OptionTable, doc: str, **fields: Any) -> type[StageOptions]:
    return _table_model(f"{kind.capitalize()}Options", table, StageOptions, doc,
                        kind=(Literal[kind], kind), **fields)


DistillOptions = _stage("distill", DISTILL, "Knowledge distillation into a smaller student "
                        "(the teacher's architecture scaled, or a zoo model).")
PruneOptions = _stage("prune", PRUNE, "Structured channel pruning (or masks) with recovery "
                      "fine-tuning; see ``pipeline.prune.PRUNE``.")
QuantizeOptions = _stage(
    "quantize", QUANTIZE, "INT8 (w``bits``a8) static quantization, post-training or "
    "quantization-aware; see ``pipeline.quantize.QUANTIZE``.",
    method=(Literal["ptq", "qat"], "ptq"),          # a recipe ships static INT8 artifacts
    keep_sensitive=(int, Field(0, ge=0)))           # also keep the N most sensitive in float
FinetuneOptions = _stage("finetune", FINETUNE,
                         "Plain fine-tuning with hard labels (e.g. to recover after pruning).")
DistillEmbeddingsOptions = _stage("distill_embeddings", DISTILL_EMBEDDINGS,
                                  "A transformer distilled on the teacher's pooled embeddings "
                                  "of the data's text batches; see ``DISTILL_EMBEDDINGS``.")


class ExportOptions(StageOptions):
    """Write the shipped artifact (the last accepted stage's) into the output directory."""

    kind: Literal["export"] = "export"
    artifact: str = "model.onnx"    # a path relative to the output, made of plain names

    @field_validator("artifact")
    @classmethod
    def _relative(cls, value: str) -> str:
        parts = value.split("/")
        for part in parts:
            plain_name(part, f"artifact {value!r}: part")
        if not value.endswith(".onnx"):
            raise ValueError(f"artifact {value!r} must end in .onnx (the target runtimes read "
                             "ONNX)")
        return value


STAGE_SCHEMAS: Registry[type[StageOptions]] = Registry("stage")
for _cls in (DistillOptions, PruneOptions, QuantizeOptions, FinetuneOptions,
             DistillEmbeddingsOptions, ExportOptions):
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
    # where it was read from: (file name, {location: line}), for errors at run time
    _origin: tuple[str, dict[Any, int]] = PrivateAttr(default=("<recipe>", {}))

    @field_validator("name")
    @classmethod
    def _plain(cls, value: str) -> str:
        return plain_name(value, "recipe name")

    @field_validator("model", "teacher")
    @classmethod
    def _model_ref(cls, value: str | None) -> str | None:
        return None if value is None else _check_model_ref(value)

    @field_validator("data")
    @classmethod
    def _data_ref(cls, value: str) -> str:
        from torchslim.data import dataset_names

        if ":" in value:
            entry_point_syntax(value)   # imported when the run starts, not here
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
                raise _stage_kind_error(i, kind)
        return value

    @field_validator("data_args")
    @classmethod
    def _data_args(cls, value: dict[str, Any], info: ValidationInfo) -> dict[str, Any]:
        """A dataset's ``data_args`` are ``load_data``'s options (an entry point's are its own)."""
        data = info.data.get("data")
        if isinstance(data, str) and ":" not in data:
            from torchslim.data import load_data

            allowed = set(inspect.signature(load_data).parameters) - {"name"}
            unknown = sorted(set(value) - allowed)
            if unknown:
                raise ValueError(f"unknown option(s) {unknown} for {data!r}; allowed: "
                                 f"{', '.join(sorted(allowed))}")
        return value

    @property
    def output_dir(self) -> Path:
        return Path(self.output) if self.output else Path("runs") / self.name

    def where(self, *loc: str | int) -> str:
        """``file:line: field`` of a key of the recipe, for errors found when it runs."""
        source, lines = self._origin
        return f"{source}:{errs.line_of(lines, loc)}: {errs.field_name(loc)}"


def _stage_kind_error(index: int, kind: Any) -> errs.StageKindError:
    allowed = ", ".join(STAGE_SCHEMAS.names())
    got = "no kind" if kind is None else f"unknown stage {kind!r}"
    hint = difflib.get_close_matches(str(kind), STAGE_SCHEMAS.names(), n=1)
    return errs.StageKindError(index, f"{got}; allowed: {allowed}"
                               + (f" (did you mean {hint[0]!r}?)" if hint else ""))


def _allowed_keys(loc: Loc, raw: dict[str, Any]) -> list[str]:
    """The option names the schema holding ``loc[-1]`` accepts (for 'unknown option')."""
    if len(loc) >= 3 and loc[0] == "stages" and isinstance(loc[1], int):
        stages = raw.get("stages") or []
        kind = _kind_of(stages[loc[1]]) if loc[1] < len(stages) else None
        return STAGE_SCHEMAS.get(kind).field_names() if kind in STAGE_SCHEMAS else []
    if loc[:2] == ("budget", "robustness") and len(loc) == 3:
        return sorted(RobustnessBudget.model_fields)
    return errs.model_keys(Recipe, loc)


def _first_error(e: ValidationError, source: str, lines: dict[Loc, int], raw: dict[str, Any],
                 prefix: Loc = ()) -> ConfigError:
    return errs.first_error(e, source, lines, kinds=set(STAGE_SCHEMAS.names()),
                            allowed_keys=lambda loc: _allowed_keys(loc, raw), prefix=prefix)


def _check_stages(recipe: Recipe, source: str, lines: dict[Loc, int]) -> None:
    """Order rules and each fallback validated as a full set of options."""
    kinds = [s.kind for s in recipe.stages]
    first_quant = kinds.index("quantize") if "quantize" in kinds else len(kinds)
    for i, stage in enumerate(recipe.stages):
        loc: Loc = ("stages", i, "kind")
        where = f"{source}:{errs.line_of(lines, loc)}: {errs.field_name(loc)}"
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
        raise ConfigError(f"{source}:{errs.line_of(lines, ('stages',))}: stages: two stages share a "
                          f"name ({', '.join(names)}); give each a distinct name")


def stage_name(index: int, stage: StageOptions) -> str:
    """``02-prune`` unless the stage names itself."""
    return stage.name or f"{index + 1:02d}-{stage.kind}"


def parse_recipe(text: str, *, source: str = "<recipe>",
                 overrides: dict[str, Any] | None = None) -> Recipe:
    """Validate YAML ``text``; ``overrides`` are top-level keys replacing the file's."""
    try:
        raw = yaml.safe_load(text)
        lines = errs.line_map(text, source)   # a repeated key is a ConfigError here
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
    recipe._origin = (source, lines)
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
