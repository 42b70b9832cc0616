"""Resumable training state (optimizer, scheduler, RNG, history, the weights) without pickle.

The resume set of one finished epoch is one unit: a directory ``epoch-000003/`` holding

    train_state.safetensors   the optimizer's and scheduler's tensors
    train_state.json          everything else (epoch, step, history, config)
    last.safetensors + .json  the model's weights, an ordinary checkpoint

It is written under a temporary name, fsynced, renamed into place and the parent fsynced;
older epochs are removed only after that. A run killed at any moment therefore resumes
from one whole epoch, never from the weights of one and the optimizer of another.
Directories written before this layout (the four files directly in the directory, with a
token tying the two ``train_state`` files) still load.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save as st_save
from torch import nn

from torchslim import _io
from torchslim.errors import CheckpointError

__all__ = ["save_state", "load_state", "load_resume", "saved_meta", "Resume", "TENSORS", "SIDECAR", "WEIGHTS"]

TENSORS = "train_state.safetensors"
SIDECAR = "train_state.json"
WEIGHTS = "last.safetensors"
_PREFIX = "epoch-"


@dataclass(frozen=True)
class Resume:
    """One saved epoch: the training state, and the weights and sidecar saved with it."""

    path: Path                                  # the directory the set was read from
    state: dict[str, Any]
    weights: dict[str, torch.Tensor] | None     # None: saved without a model
    meta: dict[str, Any]                        # the weights' checkpoint sidecar


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


def save_state(directory: str | os.PathLike[str], state: dict[str, Any], *,
               model: nn.Module | None = None,
               checkpoint_meta: dict[str, Any] | None = None) -> Path:
    """Write ``state`` (and ``model``'s weights, as a checkpoint with ``checkpoint_meta``)
    as one resume set under ``directory``; returns the set's directory."""
    from torchslim.train.checkpoint import save_checkpoint

    root = Path(directory)
    root.mkdir(parents=True, exist_ok=True)
    name = f"{_PREFIX}{int(state.get('epoch') or 0):06d}"
    tmp = Path(tempfile.mkdtemp(prefix=f".{name}.", dir=root))
    try:
        _write_files(tmp, state)
        if model is not None:
            save_checkpoint(tmp / WEIGHTS, model, **(checkpoint_meta or {}))
        os.chmod(tmp, 0o777 & ~_io.current_umask())   # mkdtemp makes 0700 whatever the umask
        final = root / name
        if final.exists():   # the same epoch written again: the older copy goes first
            shutil.rmtree(final)
        os.rename(tmp, final)
        _io.fsync_dir(root)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    for stale in _sets(root, include_partial=True):
        if stale != final:   # older epochs, and sets a killed writer left half-written
            shutil.rmtree(stale, ignore_errors=True)
    return final


def _write_files(directory: Path, state: dict[str, Any]) -> None:
    tensors: dict[str, torch.Tensor] = {}
    skeleton = _split(state, "s", tensors)
    token = uuid.uuid4().hex   # ties the two files (checked on load)
    _io.write_bytes(directory / TENSORS, st_save(tensors, metadata={"token": token}))
    _io.write_json(directory / SIDECAR, {"epoch": state.get("epoch"), "token": token,
                                         "state": skeleton})


def _sets(root: Path, *, include_partial: bool = False) -> list[Path]:
    """The resume sets in ``root``, oldest first (with ``include_partial``, also the
    temporary directories of writers that never finished)."""
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if p.is_dir() and (
        p.name.startswith(_PREFIX) or (include_partial and p.name.startswith("." + _PREFIX)))]
    return sorted(found, key=lambda p: p.name.lstrip("."))


def load_resume(directory: str | os.PathLike[str]) -> Resume | None:
    """The newest resume set in ``directory``, or None when there is none."""
    root = Path(directory)
    sets = _sets(root)
    where = sets[-1] if sets else root
    if not (where / SIDECAR).is_file():
        return None
    state = _read_files(where)
    weights, meta = None, {}
    if (where / WEIGHTS).is_file():
        from torchslim.train.checkpoint import read_checkpoint

        weights, meta = read_checkpoint(where / WEIGHTS)
    return Resume(path=where, state=state, weights=weights, meta=meta)


def saved_meta(directory: str | os.PathLike[str]) -> dict[str, Any] | None:
    """The checkpoint sidecar of the newest resume set (what the run recorded about
    itself), without reading any tensors; None when there is no resume set."""
    root = Path(directory)
    sets = _sets(root)
    where = sets[-1] if sets else root
    if not (where / SIDECAR).is_file():
        return None
    sidecar = (where / WEIGHTS).with_suffix(".json")
    try:
        meta = json.loads(sidecar.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {}
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise CheckpointError(f"cannot read {sidecar}: {e}; delete {root} to start training "
                              "from scratch") from e
    return meta if isinstance(meta, dict) else {}


def load_state(directory: str | os.PathLike[str]) -> dict[str, Any] | None:
    """The training state of the newest resume set (``load_resume(...).state``)."""
    saved = load_resume(directory)
    return None if saved is None else saved.state


def _read_files(directory: Path) -> dict[str, Any]:
    try:
        meta = json.loads((directory / SIDECAR).read_text(encoding="utf-8"))
        with safe_open(directory / TENSORS, framework="pt") as f:
            token = (f.metadata() or {}).get("token")
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except (OSError, ValueError, SafetensorError) as e:
        raise CheckpointError(f"cannot resume from {directory}: {e}; delete the directory "
                              "to start training from scratch") from e
    with contextlib.suppress(AttributeError):
        if token == meta.get("token") and isinstance(meta.get("state"), dict):
            return _join(meta["state"], tensors)
    raise CheckpointError(f"{directory}: {TENSORS} and {SIDECAR} come from different "
                          "epochs; delete the directory to start from scratch")
