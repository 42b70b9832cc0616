"""One table per command: the flat options a user types (``--target-macs`` on the CLI,
``target_macs:`` in a recipe stage) and the config field each one sets.

A config dataclass (``ChannelPruneConfig``, ``QuantConfig``, ``TrainConfig``, ...) is the one
definition of an option: its type, its default and its validation. A table row only says
which field a flat name sets, the default the command uses where it differs from the
config's, and the help line. From a table come:

* the command's CLI options (``torchslim._commands._options.with_options``);
* the recipe stage's schema (``OptionTable.recipe_fields``: pydantic fields typed from the
  config fields; ranges are checked once, by the configs, and an error names the option);
* ``OptionTable.plan(**values)``: the configs built from the values, which the job holds.

So adding an option to a command is a field on its config and a row in its table.
"""

from __future__ import annotations

import dataclasses
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from torchslim.errors import ConfigError

__all__ = ["FROM_CONFIG", "Option", "OptionError", "OptionTable", "option"]


class _FromConfig:
    def __repr__(self) -> str:
        return "FROM_CONFIG"


FROM_CONFIG: Any = _FromConfig()   # "the config field's default"


class OptionError(ConfigError):
    """A value the configs refused; ``key`` is the option at fault (None when only a
    combination of options is wrong)."""

    def __init__(self, message: str, key: str | None) -> None:
        super().__init__(message)
        self.key = key


@dataclass(frozen=True)
class Option:
    """One flat option: ``name`` in a recipe stage, ``--name`` (dashes) on the CLI.

    It sets ``targets[T]`` (a field path, dotted for a nested config such as
    ``"weight.bits"``) of each config type ``T`` the command builds. Its type and default are
    that field's unless given.
    """

    name: str
    targets: Mapping[type, str]
    help: str = ""
    default: Any = FROM_CONFIG        # the command's default, where it differs from the field's
    cli_default: Any = FROM_CONFIG    # the CLI's, where it differs from the recipe's
    type: Any = None                  # the value's type (a selector, or a value ``parse`` maps)
    parse: Callable[[Any], Any] | None = None   # option value -> field value
    flag: str | None = ""             # CLI declaration ("--protect", "--structured/--unstructured");
                                      # "": --name; None: not on the CLI
    cli_type: Any = None              # what the CLI parses, where typer cannot take ``type``
    recipe: bool = True               # a key of the recipe stage too

    @property
    def annotation(self) -> Any:
        if self.type is not None:
            return self.type
        target, path = next(iter(self.targets.items()))
        return _field(target, path)[0]

    def default_for(self, surface: str = "recipe") -> Any:
        if surface == "cli" and self.cli_default is not FROM_CONFIG:
            return self.cli_default
        if self.default is not FROM_CONFIG:
            return self.default
        if not self.targets:
            raise TypeError(f"option {self.name!r} sets no config field: give it a default")
        target, path = next(iter(self.targets.items()))
        return _field(target, path)[1]


def option(name: str, *targets: type, field: str | None = None, **kwargs: Any) -> Option:
    """``Option`` setting the field ``field`` (default: ``name``) of each of ``targets``."""
    return Option(name, {t: field or name for t in targets}, **kwargs)


@dataclass(frozen=True)
class OptionTable:
    """A command's options and how their values become what the command runs (its plan)."""

    command: str
    options: tuple[Option, ...]
    build: Callable[[OptionTable, dict[str, Any]], Any]  # (table, every value) -> plan
    by_name: dict[str, Option] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "by_name", {o.name: o for o in self.options})

    def __getitem__(self, name: str) -> Option:
        return self.by_name[name]

    def defaults(self, surface: str = "recipe") -> dict[str, Any]:
        return {o.name: o.default_for(surface) for o in self.options}

    def kwargs(self, target: type, values: Mapping[str, Any]) -> dict[str, Any]:
        """Keyword arguments of ``target`` from the options that set its fields; nested
        fields (``weight.bits``) replace fields of the field's default."""
        flat: dict[str, Any] = {}
        nested: dict[str, dict[str, Any]] = {}
        for o in self.options:
            path = o.targets.get(target)
            if path is None:
                continue
            value = o.parse(values[o.name]) if o.parse else values[o.name]
            head, _, rest = path.partition(".")
            if rest:
                nested.setdefault(head, {})[rest] = value
            else:
                flat[head] = value
        for head, changes in nested.items():
            flat[head] = dataclasses.replace(_field(target, head)[1], **changes)
        return flat

    def plan(self, surface: str = "recipe", **values: Any) -> Any:
        """What the command runs for these option values (the others at their defaults).
        An error names the option at fault (``OptionError.key``)."""
        unknown = sorted(set(values) - set(self.by_name))
        if unknown:
            raise ConfigError(f"{self.command}: unknown option(s) {unknown}; allowed: "
                              f"{', '.join(self.by_name)}")
        base = self.defaults(surface)
        full = {**base, **values}
        try:
            return self.build(self, full)
        except ConfigError as e:
            raise OptionError(str(e), self._culprit(base, full)) from None

    def recipe_fields(self) -> dict[str, tuple[Any, Any]]:
        """``{name: (annotation, default)}`` of the recipe keys, for ``pydantic.create_model``."""
        return {o.name: (o.annotation, o.default_for("recipe")) for o in self.options if o.recipe}

    def _culprit(self, base: dict[str, Any], full: dict[str, Any]) -> str | None:
        """The one option that fails on its own (all others at their defaults), if any."""
        for name, value in full.items():
            if value == base[name]:
                continue
            try:
                self.build(self, {**base, name: value})
            except ConfigError:
                return name
        return None


def _field(target: type, path: str) -> tuple[Any, Any]:
    """``(type, default)`` of the dataclass field ``path`` (dotted: nested) of ``target``."""
    head, _, rest = path.partition(".")
    fields = {f.name: f for f in dataclasses.fields(target)}
    if head not in fields:
        raise TypeError(f"{target.__name__} has no field {head!r}")
    f = fields[head]
    default = (f.default if f.default is not dataclasses.MISSING
               else f.default_factory() if f.default_factory is not dataclasses.MISSING
               else FROM_CONFIG)
    hint = typing.get_type_hints(target)[head]
    if rest:
        return _field(type(default) if dataclasses.is_dataclass(default) else hint, rest)
    return hint, default
