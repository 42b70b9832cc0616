"""Resumable training state (optimizer, scheduler, RNG, history) without pickle.

Tensors go to a safetensors file, everything else to JSON. Written after each finished
epoch, so a killed run resumes at the start of the next one.
"""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save as st_save

from torchslim import _io
from torchslim.errors import CheckpointError

TENSORS = "train_state.safetensors"
SIDECAR = "train_state.json"


def _split(obj: Any, prefix: str, tensors: dict[str, torch.Tensor]) -> Any:
    """Replace every tensor in a nested dict/list by a reference into ``tensors``."""
    if isinstance(obj, torch.Tensor):
        tensors[prefix] = obj.detach().cpu().contiguous()
        return {"__tensor__": prefix}
    if isinstance(obj, dict):
        return {"__dict__": [[_split(k, f"{prefix}.k{i}", tensors),
                              _split(v, f"{prefix}.{i}", tensors)]
                             for i, (k, v) in enumerate(obj.items())]}
    if isinstance(obj, (list, tuple)):
        return [_split(v, f"{prefix}.{i}", tensors) for i, v in enumerate(obj)]
    return obj


def _join(obj: Any, tensors: dict[str, torch.Tensor]) -> Any:
    if isinstance(obj, dict) and "__tensor__" in obj:
        return tensors[obj["__tensor__"]]
    if isinstance(obj, dict) and "__dict__" in obj:
        return {_join(k, tensors): _join(v, tensors) for k, v in obj["__dict__"]}
    if isinstance(obj, list):
        return [_join(v, tensors) for v in obj]
    return obj


def save_state(directory: Path, state: dict[str, Any]) -> None:
    tensors: dict[str, torch.Tensor] = {}
    skeleton = _split(state, "s", tensors)
    # One token in both files: a crash between the two writes is then detected as a
    # mismatch instead of silently mixing two epochs.
    token = uuid.uuid4().hex
    _io.write_bytes(directory / TENSORS, st_save(tensors, metadata={"token": token}))
    _io.write_json(directory / SIDECAR, {"epoch": state.get("epoch"), "token": token,
                                         "state": skeleton})


def load_state(directory: Path) -> dict[str, Any] | None:
    sidecar = directory / SIDECAR
    if not sidecar.is_file():
        return None
    try:
        meta = json.loads(sidecar.read_text())
        with safe_open(directory / TENSORS, framework="pt") as f:
            token = (f.metadata() or {}).get("token")
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except (OSError, ValueError, SafetensorError) as e:
        raise CheckpointError(f"cannot resume from {directory}: {e}; delete the directory "
                              "to start training from scratch") from e
    if token != meta.get("token"):
        raise CheckpointError(f"{directory}: {TENSORS} and {SIDECAR} come from different "
                              "epochs; delete the directory to start from scratch")
    return _join(meta["state"], tensors)
