"""Save and reload a Hugging Face model whose layers torchslim resized (attention heads and
MLP channels pruned), from local directories only.

``save_pretrained`` writes what ``transformers`` writes (``config.json``,
``model.safetensors``, the tokenizer) with one extra config entry, ``torchslim_structure``:
the weight shape of every resized layer and the attributes torchslim changed on its modules
(e.g. an attention's head count). ``load_pretrained`` builds the architecture from the
config, gives those layers their saved shapes and attributes, and loads the weights
strictly. Where the config itself can say what changed (uniform head and MLP counts with
an explicit ``head_dim``, as in Llama), ``transformers.AutoModel*.from_pretrained`` reads
the directory as well.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from torchslim.errors import CheckpointError, MissingDependencyError
from torchslim.transformers.model import unwrap

__all__ = ["STRUCTURE_KEY", "save_pretrained", "load_pretrained", "note_attributes_",
           "note_build_config_", "resizable_layers"]

STRUCTURE_KEY = "torchslim_structure"


def _transformers() -> Any:
    try:
        import transformers
    except ImportError as e:
        raise MissingDependencyError("Hugging Face models need: pip install "
                                     "'torchslim[transformers]'") from e
    return transformers


def resizable_layers(model: nn.Module) -> dict[str, nn.Module]:
    """Layers whose weight shape pruning may change: ``nn.Linear`` and transformers'
    ``Conv1D`` (GPT-2's projections, weight stored ``(in, out)``)."""
    return {n: m for n, m in model.named_modules()
            if isinstance(m, nn.Linear) or type(m).__name__ == "Conv1D"}


def note_attributes_(model: nn.Module, module_name: str, **attributes: Any) -> None:
    """Record on the model's config that ``module_name`` now has ``attributes`` (set them
    on the module too), so ``load_pretrained`` restores them."""
    hf = unwrap(model)
    module = hf.get_submodule(module_name)
    for key, value in attributes.items():
        setattr(module, key, value)
    structure = dict(getattr(hf.config, STRUCTURE_KEY, None) or {})
    attrs = {k: dict(v) for k, v in structure.get("attributes", {}).items()}
    attrs.setdefault(module_name, {}).update(attributes)
    structure["attributes"] = attrs
    setattr(hf.config, STRUCTURE_KEY, structure)


def note_build_config_(model: nn.Module, **values: Any) -> None:
    """Record the config values the architecture was built with before torchslim changed
    them (the first value given for a key stays), so ``load_pretrained`` builds it as it
    was and then resizes: a head count that no longer divides the hidden size would not
    build, and sizes computed at build time (a head size, its scaling) stay as they were."""
    hf = unwrap(model)
    structure = dict(getattr(hf.config, STRUCTURE_KEY, None) or {})
    build = dict(structure.get("build", {}))
    for key, value in values.items():
        build.setdefault(key, value)
    structure["build"] = build
    setattr(hf.config, STRUCTURE_KEY, structure)


def save_pretrained(model: nn.Module, directory: str | os.PathLike[str], *,
                    tokenizer: Any = None) -> Path:
    """Write ``model`` (a Hugging Face model or a ``TextModel``) to ``directory``."""
    hf = unwrap(model)
    structure = dict(getattr(hf.config, STRUCTURE_KEY, None) or {})
    if structure:
        structure["shapes"] = {n: list(m.weight.shape) for n, m in resizable_layers(hf).items()}
        setattr(hf.config, STRUCTURE_KEY, structure)
    out = Path(directory)
    hf.save_pretrained(out)
    if tokenizer is not None:
        tokenizer.save_pretrained(out)
    return out


def _architecture(tf: Any, config: Any, directory: Path) -> type:
    names = getattr(config, "architectures", None) or []
    cls = getattr(tf, names[0], None) if names else None
    if cls is None:
        raise CheckpointError(f"{directory / 'config.json'} names architecture "
                              f"{names[:1] or None}, which this transformers does not have; "
                              "save the model with a transformers model class")
    return cls


def _resize_(model: nn.Module, shapes: dict[str, list[int]]) -> None:
    """Give each recorded layer a fresh weight (and bias) of its saved shape."""
    layers = resizable_layers(model)
    for name, shape in shapes.items():
        layer = layers.get(name)
        if layer is None:
            raise CheckpointError(f"the saved structure names layer {name!r}, which the "
                                  "architecture does not have")
        if list(layer.weight.shape) == list(shape):
            continue
        layer.weight = nn.Parameter(torch.empty(shape, dtype=layer.weight.dtype))
        out_dim = 0 if isinstance(layer, nn.Linear) else 1  # Conv1D: weight (in, out)
        if isinstance(layer, nn.Linear):
            layer.out_features, layer.in_features = shape
        else:
            layer.nx, layer.nf = shape
        if getattr(layer, "bias", None) is not None:
            layer.bias = nn.Parameter(torch.empty(shape[out_dim], dtype=layer.bias.dtype))


def load_pretrained(directory: str | os.PathLike[str]) -> nn.Module:
    """The model saved by ``save_pretrained`` (or any local transformers directory), in
    eval mode, float32, with its resized layers."""
    from safetensors.torch import load_file

    tf = _transformers()
    path = Path(directory)
    if not (path / "config.json").is_file():
        raise CheckpointError(f"{path} has no config.json; pass a directory written by "
                              "save_pretrained")
    try:
        config = tf.AutoConfig.from_pretrained(path, local_files_only=True)
        state = load_file(str(path / "model.safetensors"))
    except (OSError, ValueError) as e:
        raise CheckpointError(f"cannot read the model in {path}: {str(e).splitlines()[0]}") from e
    structure = getattr(config, STRUCTURE_KEY, None) or {}
    model = _build(_architecture(tf, config, path), config, structure.get("build", {}))
    _resize_(model, structure.get("shapes", {}))
    for name, attrs in structure.get("attributes", {}).items():
        module = model.get_submodule(name)
        for key, value in attrs.items():
            setattr(module, key, value)
    _load_state_(model, state, path)
    return model.float().eval()


def _build(cls: type, config: Any, build: dict[str, Any]) -> nn.Module:
    """``cls(config)`` built with the recorded pre-pruning values, then given the saved
    ones back (on the config its modules share)."""
    saved = {key: getattr(config, key) for key in build}
    for key, value in build.items():
        setattr(config, key, value)
    try:
        model = cls(config)
    finally:
        for key, value in saved.items():
            setattr(config, key, value)
    for key, value in saved.items():
        setattr(model.config, key, value)
    return model


def _load_state_(model: nn.Module, state: dict[str, torch.Tensor], path: Path) -> None:
    result = model.load_state_dict(state, strict=False)
    missing = [k for k in result.missing_keys if not _tied(model, k)]
    if missing or result.unexpected_keys:
        raise CheckpointError(f"{path}: the weights do not fit the saved structure (missing "
                              f"{missing[:3]}, unexpected {result.unexpected_keys[:3]}); save "
                              "the model again with torchslim.transformers.save_pretrained")
    model.tie_weights()


def _tied(model: nn.Module, key: str) -> bool:
    """A head weight that transformers leaves out because it is the input embedding's."""
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    return (head is not None and getattr(model.config, "tie_word_embeddings", False)
            and key.startswith(next(n for n, m in model.named_modules() if m is head)))
