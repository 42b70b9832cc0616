"""Where a model's versions live: a file, a ``MODEL/VERSION/`` directory, or ``name@alias``.

* ``model.onnx`` — one version, ``"1"``;
* ``fashion/1/model.onnx``, ``fashion/2/model.onnx`` — versions ``"1"`` and ``"2"`` of
  ``fashion`` (each version directory holds exactly one artifact);
* a directory of such model directories — a repository of models;
* ``fashion@prod`` — whatever the artifact registry resolves the alias to, through a small
  hook (``set_alias_resolver``); by default ``torchslim.artifacts.registry.resolve``,
  imported only when a reference is used, with the registry's version as the label, so
  moving the alias and reloading swaps versions.

Each version carries a fingerprint of its files (names, sizes, mtimes), so a reload sees
that an artifact changed in place and swaps it.
"""

from __future__ import annotations

import functools
import hashlib
import importlib
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torchslim.errors import ArtifactError, ConfigError
from torchslim.runtime import runtimes_reading
from torchslim.serve.config import version_key

__all__ = ["VersionFiles", "AliasResolver", "set_alias_resolver", "resolve_alias",
           "is_reference", "model_versions", "repository_models", "model_name_for"]

Fingerprint = tuple[tuple[str, int, int], ...]
# "name@alias" -> the artifact (file or MODEL/VERSION directory), optionally with its version
AliasResolver = Callable[[str], "Path | tuple[Path, str]"]

_REGISTRY_MODULES = ("torchslim.artifacts.registry", "torchslim.registry")
_REFERENCE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*@[A-Za-z0-9][A-Za-z0-9_.+-]*$")
_resolver: AliasResolver | None = None


@dataclass(frozen=True)
class VersionFiles:
    """One version of a model on disk: its artifact and the fingerprint of its files."""

    version: str
    artifact: Path
    fingerprint: Fingerprint


def set_alias_resolver(resolver: AliasResolver | None) -> None:
    """Resolve ``name@alias`` with ``resolver`` (None restores the registry's)."""
    global _resolver
    _resolver = resolver


def is_reference(source: str) -> bool:
    """``name@alias`` that is not also an existing path."""
    return bool(_REFERENCE.match(source)) and not Path(source).exists()


def resolve_alias(ref: str) -> tuple[Path, str | None]:
    """(artifact path, version or None) for a registry reference."""
    resolved = (_resolver or _registry_resolver(ref))(ref)
    if isinstance(resolved, tuple):
        path, version = resolved
        return Path(path), str(version)
    return Path(resolved), None


def _registry_resolver(ref: str) -> AliasResolver:
    for name in _REGISTRY_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as e:
            if e.name is not None and name.startswith(e.name):
                continue  # that registry is not installed; a broken one still raises
            raise
        return functools.partial(_from_registry, module)
    raise ConfigError(f"{ref!r} is a registry reference (name@alias), but this install has no "
                      "artifact registry (torchslim.artifacts); pass an artifact file or a "
                      "MODEL/VERSION directory instead")


def _from_registry(module: Any, ref: str) -> Path | tuple[Path, str]:
    """The registry's path for ``ref``, labelled with the version the alias points at
    (``fashion@prod`` -> ``1.2.0``) when the registry can say which."""
    path = Path(module.resolve(ref))
    registry = getattr(module, "ModelRegistry", None)
    try:
        version = getattr(registry().get(ref), "version", None) if registry else None
    except Exception:  # noqa: BLE001 (a label only: the path is what matters)
        version = None
    return (path, str(version)) if version else path


def model_versions(source: str) -> dict[str, VersionFiles]:
    """Every version ``source`` holds, by version label."""
    if is_reference(source):
        path, version = resolve_alias(source)
        if not path.exists():
            raise ArtifactError(f"{source!r} resolves to {path}, which does not exist; "
                                "check the registry")
        if version is None and not _version_dirs(path):
            version = _label_for(path)
        return _versions_at(path, fixed=version)
    path = Path(source).expanduser()
    if not path.exists():
        raise ArtifactError(f"model source {source!r} not found; pass an artifact file, a "
                            "MODEL/VERSION directory or name@alias")
    return _versions_at(path)


def _versions_at(path: Path, fixed: str | None = None) -> dict[str, VersionFiles]:
    if path.is_file():
        return {fixed or "1": VersionFiles(fixed or "1", path, _fingerprint([path]))}
    dirs = _version_dirs(path)
    if dirs and fixed is None:
        return {d.name: _version_in(d, d.name) for d in dirs}
    return {fixed or "1": _version_in(path, fixed or "1")}


def _version_dirs(path: Path) -> list[Path]:
    if not path.is_dir():
        return []
    dirs = [d for d in path.iterdir() if d.is_dir() and version_key(d.name)[0] == 0]
    return sorted(dirs, key=lambda d: version_key(d.name))


def _version_in(directory: Path, version: str) -> VersionFiles:
    found = sorted(f for f in directory.iterdir() if f.is_file() and runtimes_reading(f.suffix))
    if len(found) != 1:
        names = ", ".join(f.name for f in found) or "none"
        raise ArtifactError(f"version directory {directory} holds {len(found)} artifacts "
                            f"({names}); keep exactly one .onnx, .xml or .safetensors file")
    return VersionFiles(version, found[0], _fingerprint(sorted(directory.iterdir())))


def _fingerprint(paths: list[Path]) -> Fingerprint:
    files = [p for p in paths if p.is_file()]
    companions = [p.with_suffix(".bin") for p in files if p.suffix == ".xml"]
    stats = [(p, p.stat()) for p in (*files, *companions) if p.is_file()]
    return tuple((p.name, s.st_size, s.st_mtime_ns) for p, s in stats)


def _label_for(path: Path) -> str:
    """A version label for an alias target: its directory's name when that is a version,
    else a short digest of its path (a moved alias then reads as a new version)."""
    parent = path.parent.name if path.is_file() else path.name
    if version_key(parent)[0] == 0:
        return parent
    return hashlib.sha256(str(path.resolve()).encode()).hexdigest()[:8]


def model_name_for(source: str) -> str:
    """The name a single source is served under: the reference's name, a file's stem or
    a model directory's name."""
    if is_reference(source):
        return source.split("@", 1)[0]
    path = Path(source).expanduser().resolve()
    name = path.stem if path.is_file() or runtimes_reading(path.suffix) else path.name
    return re.sub(r"[^A-Za-z0-9_.-]", "-", name).lstrip("-._") or "model"


def repository_models(root: Path) -> dict[str, Path]:
    """The model directories of a repository ``root``: sub-directories that hold version
    directories or exactly one artifact. Empty when ``root`` is itself one model."""
    if not root.is_dir() or _version_dirs(root) or _artifacts(root):
        return {}
    return {d.name: d for d in sorted(root.iterdir())
            if d.is_dir() and not d.name.startswith(".") and (_version_dirs(d) or _artifacts(d))}


def _artifacts(directory: Path) -> list[Path]:
    return [f for f in directory.iterdir() if f.is_file() and runtimes_reading(f.suffix)]
