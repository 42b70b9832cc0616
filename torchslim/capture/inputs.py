"""A model's inputs as they really are: one tensor, a tuple of positional arguments, or a
dict of keyword arguments, of any dtypes (float images, int64 token ids, bool masks).

``ExampleInputs`` is the one normalised form that capture, quantization and the exporters
share. ``input_shape`` (one float tensor, batch axis excluded) stays as a shorthand.
Each tensor input has a NAME (the dict key; a positional argument's parameter name in
``forward``; "input" for a lone tensor, the name artifacts always had) and DYNAMIC DIMS:
``{0: "batch"}`` unless the caller says more, e.g.
``dynamic_dims={"input_ids": {0: "batch", 1: "sequence"}}``.
"""

from __future__ import annotations

import inspect
from itertools import islice
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from torchslim.errors import ConfigError

__all__ = ["ExampleInputs", "as_example_inputs", "batch_inputs", "first_inputs", "call",
           "to_device",
           "DynamicDims", "check_dynamic_dims", "positional_names", "per_parameter"]

# input name -> {dim index: dim name}
DynamicDims = Mapping[str, Mapping[int, str]]
LONE_INPUT = "input"


@dataclass(frozen=True)
class ExampleInputs:
    """Positional and keyword arguments of one forward call, with a name per argument."""

    args: tuple[Any, ...] = ()
    kwargs: Mapping[str, Any] = field(default_factory=dict)
    arg_names: tuple[str, ...] = ()   # one per positional argument

    def items(self) -> list[tuple[str, Any]]:
        """``(name, value)`` of every argument, positional first."""
        return [*zip(self.arg_names, self.args), *self.kwargs.items()]

    def tensors(self) -> list[tuple[str, Tensor]]:
        """``(name, tensor)`` of the tensor arguments (None, flags and such are constants)."""
        return [(n, v) for n, v in self.items() if isinstance(v, Tensor)]

    def call(self, model: nn.Module) -> Any:
        return model(*self.args, **self.kwargs)

    def map(self, fn: Any) -> ExampleInputs:
        """The same arguments with ``fn`` applied to every tensor."""
        def f(v: Any) -> Any:
            return fn(v) if isinstance(v, Tensor) else v
        return ExampleInputs(tuple(f(a) for a in self.args),
                             {k: f(v) for k, v in self.kwargs.items()}, self.arg_names)

    def dynamic_dims(self, extra: DynamicDims | None = None) -> dict[str, dict[int, str]]:
        """``{input name: {dim: name}}``: dim 0 "batch" for every tensor with a dim, then
        ``extra`` (the caller's) replacing an input's entry."""
        dims: dict[str, dict[int, str]] = {n: ({0: "batch"} if t.dim() else {})
                                           for n, t in self.tensors()}
        for name, spec in (extra or {}).items():
            dims[name] = {int(d) % max(self.value(name).dim(), 1): str(v) for d, v in spec.items()}
        return dims

    def value(self, name: str) -> Any:
        return dict(self.items())[name]


def positional_names(model: nn.Module | None, count: int) -> tuple[str, ...]:
    """Names of the first ``count`` positional parameters of ``model.forward`` ("input"
    for a lone one)."""
    if count == 1:
        return (LONE_INPUT,)
    names: list[str] = []
    if model is not None:
        try:
            params = inspect.signature(model.forward).parameters.values()
        except (TypeError, ValueError):
            params = []  # type: ignore[assignment]
        for p in params:
            if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD):
                names.append(p.name)
            elif p.kind is p.VAR_POSITIONAL:   # forward(self, *inputs): inputs_0, inputs_1...
                names += [f"{p.name}_{i}" for i in range(max(count - len(names), 0))]
                break   # torch.export names the captured graph's inputs the same way
    names = names[:count]
    return tuple(names + [f"input_{i}" for i in range(len(names), count)])


def per_parameter(model: nn.Module, inputs: ExampleInputs,
                  leaf: Callable[[str, Any], Any]) -> Any:
    """``leaf(name, value)`` of every argument, in the structure torch.export wants for
    ``dynamic_shapes``: ``model.forward``'s parameters by name, a ``*args`` parameter as
    a tuple of its arguments and a ``**kwargs`` one as a dict of them (a wrapper's
    ``forward(self, *inputs)`` takes one spec per input, nested in one tuple)."""
    try:
        signature = inspect.signature(model.forward)
        bound = signature.bind(*(("arg", i) for i in range(len(inputs.args))),
                               **{k: ("kwarg", k) for k in inputs.kwargs})
    except (TypeError, ValueError):   # export will say what is wrong with the call
        return tuple(leaf(n, a) for n, a in zip(inputs.arg_names, inputs.args))

    def one(slot: tuple[str, Any]) -> Any:
        kind, key = slot
        return (leaf(inputs.arg_names[key], inputs.args[key]) if kind == "arg"
                else leaf(key, inputs.kwargs[key]))

    params = signature.parameters
    shapes: dict[str, Any] = {}
    for name, value in bound.arguments.items():
        kind = params[name].kind
        if kind is inspect.Parameter.VAR_POSITIONAL:
            shapes[name] = tuple(one(v) for v in value)
        elif kind is inspect.Parameter.VAR_KEYWORD:
            shapes[name] = {k: one(v) for k, v in value.items()}
        else:
            shapes[name] = one(value)
    return shapes


def as_example_inputs(example_inputs: Any = None, *, model: nn.Module | None = None,
                      input_shape: Sequence[int] | None = None) -> ExampleInputs:
    """Normalise a tensor, a tuple / list (positional), a dict (keywords) or an
    ``ExampleInputs``; ``input_shape`` alone means one float tensor of batch 2."""
    if isinstance(example_inputs, ExampleInputs):
        return example_inputs
    if example_inputs is None:
        if input_shape is None:
            raise ConfigError("pass example_inputs=<a tensor, tuple or dict of the model's "
                              "inputs> (or input_shape=(C, H, W) for one float input)")
        if isinstance(input_shape, int) or not all(isinstance(d, int) for d in input_shape):
            raise ConfigError(f"input_shape={input_shape!r} must be a tuple of ints without "
                              "the batch axis, e.g. (1, 28, 28)")
        example_inputs = torch.zeros(2, *input_shape)
    elif input_shape is not None:
        raise ConfigError("pass example_inputs or input_shape, not both")
    if isinstance(example_inputs, Tensor):
        return ExampleInputs((example_inputs,), {}, (LONE_INPUT,))
    if isinstance(example_inputs, Mapping):
        return ExampleInputs((), dict(example_inputs), ())
    if isinstance(example_inputs, (tuple, list)):
        args = tuple(example_inputs)
        return ExampleInputs(args, {}, positional_names(model, len(args)))
    raise ConfigError(f"example_inputs must be a tensor, a tuple or a dict, not "
                      f"{type(example_inputs).__name__}")


def check_dynamic_dims(inputs: ExampleInputs, dynamic_dims: DynamicDims | None) -> None:
    """ConfigError for a dynamic dim naming no tensor input or a dim it does not have."""
    tensors = dict(inputs.tensors())
    for name, spec in (dynamic_dims or {}).items():
        if name not in tensors:
            raise ConfigError(f"dynamic_dims names input {name!r}, but the inputs are "
                              f"{', '.join(tensors) or '(none)'}")
        if not isinstance(spec, Mapping):
            raise ConfigError(f"dynamic_dims[{name!r}]={spec!r} must map a dim index to a "
                              "name, e.g. {0: 'batch', 1: 'sequence'}")
        rank = tensors[name].dim()
        for dim, label in spec.items():
            if not isinstance(dim, int) or not -rank <= dim < rank or not isinstance(label, str):
                raise ConfigError(f"dynamic_dims[{name!r}] has {dim!r}: {label!r}; {name} has "
                                  f"{rank} dims, so use an index in [0, {rank}) and a name")


def batch_inputs(batch: Any) -> Any:
    """The model inputs of one data batch: ``(inputs, target)`` gives ``inputs``; a dict or
    a tensor is the inputs itself."""
    if isinstance(batch, (tuple, list)):
        return batch[0]
    return batch


def first_inputs(data: Iterable[Any], num_batches: int) -> Iterator[Any]:
    """The model inputs (``batch_inputs``) of the first ``num_batches`` batches of ``data``."""
    if num_batches < 1:
        raise ConfigError(f"num_batches={num_batches} must be >= 1")
    for batch in islice(data, num_batches):
        yield batch_inputs(batch)


def call(model: nn.Module, inputs: Any) -> Any:
    """``model(inputs)`` for a tensor, ``model(*inputs)`` for a tuple / list,
    ``model(**inputs)`` for a dict."""
    if isinstance(inputs, ExampleInputs):
        return inputs.call(model)
    if isinstance(inputs, Mapping):
        return model(**inputs)
    if isinstance(inputs, (tuple, list)):
        return model(*inputs)
    return model(inputs)


def to_device(inputs: Any, device: torch.device | str) -> Any:
    """``inputs`` (a tensor, or a tuple / list / dict of them) moved to ``device``."""
    if isinstance(inputs, Tensor):
        return inputs.to(device)
    if isinstance(inputs, ExampleInputs):
        return inputs.map(lambda t: t.to(device))
    if isinstance(inputs, Mapping):
        return {k: to_device(v, device) for k, v in inputs.items()}
    if isinstance(inputs, (tuple, list)):
        return type(inputs)(to_device(v, device) for v in inputs)
    return inputs
