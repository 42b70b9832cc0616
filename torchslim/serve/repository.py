"""The models a server serves, and their versions' lifecycle: load, swap, unload.

A (re)load reads the model's source again, applies the version policy, loads and warms up
every version that is new or whose files changed — on a worker thread, while the current
versions keep serving — and only then swaps them in: new requests go to the new set at
once, the versions left out drain (every request already queued on them is answered) and
close. If any version fails to load, nothing changes and the error says so: the versions
served before keep serving. A model is ready once one version is loaded and warmed up.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from torchslim.serve.config import ModelConfig, version_key
from torchslim.serve.errors import ModelLoadError, ModelNotFoundError, ModelNotReadyError
from torchslim.serve.metrics import ServerMetrics
from torchslim.serve.model import ModelVersion
from torchslim.serve.sources import VersionFiles, model_versions, repository_models

__all__ = ["ModelRepository", "ModelEntry"]

logger = logging.getLogger(__name__)


@dataclass(eq=False)
class ModelEntry:
    config: ModelConfig
    versions: dict[str, ModelVersion] = field(default_factory=dict)  # oldest first
    state: str = "LOADING"   # LOADING, READY, UNAVAILABLE (unloaded or never loaded)
    reason: str = ""
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)

    def newest(self) -> ModelVersion:
        return self.versions[max(self.versions, key=version_key)]


class ModelRepository:
    """Models by name. ``root`` is a model-repository directory: loading a name that is not
    configured yet looks for ``root/NAME`` and serves it with ``template``'s options."""

    def __init__(self, configs: tuple[ModelConfig, ...], *, metrics: ServerMetrics,
                 root: Path | None = None, template: ModelConfig | None = None) -> None:
        self._entries = {c.name: ModelEntry(c) for c in configs}
        self._metrics = metrics
        self._root, self._template = root, template

    def names(self) -> list[str]:
        return list(self._entries)

    def ready(self) -> bool:
        """Every model that is meant to serve has a warmed-up version."""
        return all(e.state == "READY" for e in self._entries.values()
                   if e.state != "UNAVAILABLE" or e.reason)

    def get(self, name: str, version: str | None = None) -> ModelVersion:
        """The version to serve (the newest when ``version`` is None or empty)."""
        entry = self._entries.get(name)
        if entry is None:
            raise ModelNotFoundError(f"unknown model {name!r}; this server serves "
                                     f"{', '.join(self._entries) or 'no models'}")
        if not entry.versions:
            if entry.state == "LOADING":
                raise ModelNotReadyError(f"model {name!r} is still loading; retry shortly")
            raise ModelNotFoundError(f"model {name!r} is not loaded; load it with POST "
                                     f"/v2/repository/models/{name}/load")
        if not version:
            return entry.newest()
        if version not in entry.versions:
            raise ModelNotFoundError(f"model {name!r} has no version {version!r}; it serves "
                                     f"version(s) {', '.join(entry.versions)}")
        return entry.versions[version]

    def entry(self, name: str) -> ModelEntry:
        if name not in self._entries:
            raise ModelNotFoundError(f"unknown model {name!r}; this server serves "
                                     f"{', '.join(self._entries) or 'no models'}")
        return self._entries[name]

    def index(self) -> list[dict[str, Any]]:
        rows = []
        for name, entry in self._entries.items():
            if not entry.versions:
                rows.append({"name": name, "state": entry.state, "reason": entry.reason})
            rows += [{"name": name, "version": v, "state": "READY"} for v in entry.versions]
        return rows

    async def load_all(self) -> None:
        """Load every model (server start); the first failure is raised."""
        for name in list(self._entries):
            await self.load(name)

    async def reload_all(self) -> list[str]:
        """Reload every loaded model and add new ones found under ``root`` (SIGHUP).
        Failures are logged and leave the model as it was; returns the error messages."""
        names = [n for n, e in self._entries.items() if e.state != "UNAVAILABLE" or e.reason]
        if self._root is not None and self._template is not None:
            names += [n for n in repository_models(self._root) if n not in self._entries]
        errors = []
        for name in names:
            try:
                await self.load(name)
            except (ModelLoadError, ModelNotFoundError) as e:
                logger.error("reload of %s failed: %s", name, e)
                errors.append(str(e))
        return errors

    async def load(self, name: str) -> list[str]:
        """(Re)load ``name``; returns the versions it serves afterwards."""
        entry = self._entries.get(name) or self._discover(name)
        async with entry.lock:
            loop = asyncio.get_running_loop()
            try:
                files = await loop.run_in_executor(None, model_versions, entry.config.source)
            except Exception as e:
                raise self._failed(entry, _line(e)) from e
            wanted = entry.config.version_policy.select(files)
            if not wanted:
                raise self._failed(entry, f"no version of {entry.config.source!r} (found: "
                                   f"{', '.join(files) or 'none'}) matches version policy "
                                   f"{entry.config.version_policy.describe()!r}")
            keep = {v: mv for v, mv in entry.versions.items()
                    if v in wanted and mv.files.fingerprint == files[v].fingerprint}
            loaded = await self._load_versions(entry, [files[v] for v in wanted if v not in keep])
            for mv in loaded.values():
                mv.start(self._metrics.for_version(name, mv.version))
            old = entry.versions
            entry.versions = {v: keep.get(v) or loaded[v] for v in wanted}
            entry.state, entry.reason = "READY", ""
            retired = [mv for v, mv in old.items() if entry.versions.get(v) is not mv]
            await asyncio.gather(*(mv.retire() for mv in retired))
            logger.info("%s: serving version(s) %s%s", name, ", ".join(entry.versions),
                        f" (unloaded {', '.join(mv.version for mv in retired)})" if retired else "")
            return list(entry.versions)

    async def _load_versions(self, entry: ModelEntry,
                             todo: list[VersionFiles]) -> dict[str, ModelVersion]:
        loop = asyncio.get_running_loop()
        loaded: dict[str, ModelVersion] = {}
        for files in todo:
            try:
                loaded[files.version] = await loop.run_in_executor(
                    None, ModelVersion.load, entry.config, files)
            except Exception as e:
                for mv in loaded.values():
                    await mv.retire()
                raise self._failed(entry, f"version {files.version} ({files.artifact}) failed "
                                   f"to load: {_line(e)}") from e
        return loaded

    def _failed(self, entry: ModelEntry, why: str) -> ModelLoadError:
        served = ", ".join(entry.versions)
        entry.reason = why
        if not entry.versions:
            entry.state = "UNAVAILABLE"
        keeps = f"; version(s) {served} keep serving" if served else ""
        return ModelLoadError(f"model {entry.config.name!r}: {why}{keeps}")

    def _discover(self, name: str) -> ModelEntry:
        found = repository_models(self._root) if self._root is not None else {}
        if name not in found or self._template is None:
            raise ModelNotFoundError(f"unknown model {name!r}; this server serves "
                                     f"{', '.join(self._entries) or 'no models'}"
                                     + (f" and finds none of that name in {self._root}"
                                        if self._root is not None else ""))
        entry = ModelEntry(replace(self._template, name=name, source=str(found[name])))
        self._entries[name] = entry
        return entry

    async def unload(self, name: str) -> None:
        entry = self.entry(name)
        async with entry.lock:
            retired, entry.versions = list(entry.versions.values()), {}
            entry.state, entry.reason = "UNAVAILABLE", ""
            await asyncio.gather(*(mv.retire() for mv in retired))

    async def close(self) -> None:
        """Drain and close every version (server shutdown)."""
        await asyncio.gather(*(self.unload(name) for name in self._entries))


def _line(e: BaseException) -> str:
    return " ".join(str(e).split()) or type(e).__name__
