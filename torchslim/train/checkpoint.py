"""Checkpoints: weights in safetensors, a JSON sidecar that says how to rebuild the model.

``teacher.safetensors`` holds the state dict (no pickle) and, in its metadata, a copy of
the sidecar; ``teacher.json`` beside it records the architecture name and arguments, the
model's record (``torchslim._record``: reshaped layers with their shapes, removed blocks,
masked layers, distillation), dataset, metrics and torchslim version. Both are written
atomically. Sidecars written before the record (``structure`` at the top level) still load.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save
from torch import nn

from torchslim import _io, _record
from torchslim.config import VERSION
from torchslim.errors import ArchitectureMismatchError, CheckpointError, TorchslimError
from torchslim.train.structure import restructure_, structure_of

__all__ = ["save_checkpoint", "read_checkpoint", "load_checkpoint", "load", "load_weights_",
           "load_state_", "rebuild_", "record_json", "weights_path"]

META_KEY = "torchslim"


def weights_path(path: str | os.PathLike[str]) -> Path:
    """Accept ``x.safetensors``, its sidecar ``x.json``, or a directory holding one checkpoint."""
    p = Path(path)
    if p.is_dir():
        found = sorted(p.glob("*.safetensors"))
        if len(found) != 1:
            raise CheckpointError(f"{p} holds {len(found)} .safetensors files; pass one file")
        return found[0]
    return p.with_suffix(".safetensors") if p.suffix == ".json" else p


def save_checkpoint(path: str | os.PathLike[str], model: nn.Module, *,
                    spec: dict[str, Any] | None = None, **meta: Any) -> Path:
    """Write ``path`` (.safetensors) and its ``.json`` sidecar; returns the weights path."""
    target = Path(path).with_suffix(".safetensors")
    sidecar = {"torchslim_version": VERSION, "architecture": spec or _spec_of(model),
               "record": record_json(model), **meta}
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    data = st_save(state, metadata={META_KEY: json.dumps(sidecar)})
    _io.write_bytes(target, data)
    _io.write_json(target.with_suffix(".json"), sidecar)
    return target


def read_checkpoint(path: str | os.PathLike[str]) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Return (state_dict, sidecar) without building a model."""
    state, meta, _ = _read(path)
    return state, meta


def _read(path: str | os.PathLike[str]) -> tuple[dict[str, torch.Tensor], dict[str, Any], str]:
    """(state_dict, sidecar, where the sidecar came from: for error messages)."""
    p = weights_path(path)
    if not p.is_file():
        raise CheckpointError(f"checkpoint not found: {p}; train one with `torchslim train`")
    try:
        data = p.read_bytes()
        state = st_load(data)
        meta = _metadata(data)
    except (SafetensorError, ValueError, OSError) as e:
        raise CheckpointError(f"cannot read checkpoint {p}: {e}; it is not a torchslim "
                              "safetensors file or it is damaged") from e
    source = f"the metadata inside {p}"
    sidecar_path = p.with_suffix(".json")
    if sidecar_path.is_file():
        source = f"sidecar {sidecar_path}"
        try:
            meta = json.loads(sidecar_path.read_text(encoding="utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise CheckpointError(f"sidecar {sidecar_path} is not valid JSON ({e}); "
                                  "delete it to fall back to the copy inside the weights") from e
    if not isinstance(meta, dict):
        raise CheckpointError(f"{source} holds a JSON {type(meta).__name__}, not an object; "
                              "delete it to fall back to the copy inside the weights, or save "
                              "the checkpoint again")
    if not meta:
        raise CheckpointError(f"{p} has no torchslim metadata and no {sidecar_path.name} "
                              "sidecar; torchslim cannot tell which architecture it holds")
    return state, meta, source


def load_checkpoint(path: str | os.PathLike[str]) -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild the recorded architecture from the zoo and load its weights. An error in
    what the sidecar records says that the value came from the sidecar."""
    from torchslim.zoo import build_model

    state, meta, source = _read(path)
    spec = meta.get("architecture")
    name = spec.get("name") if isinstance(spec, dict) else None
    kwargs = spec.get("kwargs", {}) if isinstance(spec, dict) else None
    if not isinstance(name, str) or not isinstance(kwargs, dict):
        raise CheckpointError(f"{source} records architecture {spec!r}, not a zoo model "
                              "name and its kwargs; fix its 'architecture' entry, or load the "
                              "weights with an explicit architecture (evaluate --model NAME)")
    fix = ("fix its 'architecture' entry, or delete the sidecar to fall back to the copy "
           "inside the weights")
    try:
        model = build_model(name, **kwargs)
    except TorchslimError as e:
        raise CheckpointError(f"{source} records architecture {name!r} with {kwargs}: "
                              f"{e}; {fix}") from e
    try:
        rebuild_(model, meta, state)
    except (KeyError, TypeError, ValueError, AttributeError) as e:
        if isinstance(e, TorchslimError):
            raise
        raise CheckpointError(f"{source}: its 'record' does not fit {name!r} ({type(e).__name__}: "
                              f"{e}); {fix}") from e
    load_state_(model, state, source=str(weights_path(path)))
    return model.eval(), meta


def record_json(model: nn.Module) -> dict[str, Any]:
    """The sidecar's ``record``: ``_record.to_json`` plus, for a reshaped model, every
    module's shape (``structure``), which ``rebuild_`` needs to resize a fresh model."""
    out = _record.to_json(model)
    if out["reshaped"]:
        out["structure"] = structure_of(model)
    return out


def rebuild_(model: nn.Module, meta: dict[str, Any], state: dict[str, torch.Tensor]) -> nn.Module:
    """Give a freshly built ``model`` what the sidecar ``meta`` records: its pruned shapes
    and removed blocks (``state``'s tensor shapes), masked layers and distillation."""
    record = dict(meta.get("record") or {})
    structure = record.get("structure") or meta.get("structure")  # older sidecars: top level
    if structure:
        restructure_(model, structure, state)
        record["reshaped"] = True
    return _record.restore_(model, record)


def load(path: str | os.PathLike[str]) -> nn.Module:
    """The model saved at ``path``, rebuilt (pruned channel counts included), in eval mode."""
    return load_checkpoint(path)[0]


def load_weights_(model: nn.Module, path: str | os.PathLike[str]) -> dict[str, Any]:
    """Load a checkpoint's weights into ``model`` in place; returns the sidecar."""
    state, meta = read_checkpoint(path)
    load_state_(model, state, source=str(weights_path(path)))
    return meta


def load_state_(model: nn.Module, state: dict[str, torch.Tensor], *, source: str) -> None:
    """Strict load with a message that says how the two architectures differ."""
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    wrong = [k for k in own if k in state and own[k].shape != state[k].shape]
    if missing or unexpected or wrong:
        detail = "; ".join(part for part in (
            _few("missing", missing), _few("unexpected", unexpected),
            _few("shape differs", [f"{k} {tuple(state[k].shape)} vs {tuple(own[k].shape)}"
                                   for k in wrong])) if part)
        raise ArchitectureMismatchError(
            f"checkpoint {source} does not fit {type(model).__name__}: {detail}; "
            "load it with the architecture it was trained with (see its .json sidecar)")
    model.load_state_dict(state)


def _few(label: str, keys: list[str], limit: int = 3) -> str:
    if not keys:
        return ""
    more = f" (+{len(keys) - limit} more)" if len(keys) > limit else ""
    return f"{label}: {', '.join(keys[:limit])}{more}"


def _metadata(data: bytes) -> dict[str, Any]:
    # The safetensors header: 8-byte little-endian length, then JSON with "__metadata__".
    n = int.from_bytes(data[:8], "little")
    header = json.loads(data[8:8 + n])
    raw = header.get("__metadata__", {}).get(META_KEY)
    return json.loads(raw) if raw else {}


def _spec_of(model: nn.Module) -> dict[str, Any]:
    spec = _record.record_of(model).architecture
    return dict(spec) if spec else {"name": None, "class": type(model).__name__}
