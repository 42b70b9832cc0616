"""Export a version with its whole lineage as one tar archive, and import one.

Members (``.tar``, or gzip'd when the name ends in ``.tar.gz`` / ``.tgz``)::

    torchslim-export.json    {"format": 1, "versions": [...]}, the original first
    blobs/sha256/<hex>       each distinct file content once

A version entry holds its name, version, stored manifest, source digest, parent
("name@version", an earlier entry, or null), description and tags. Aliases stay behind:
they are the source registry's deployment state. Members carry mtime 0, so exporting the
same lineage twice gives the same bytes.

Import never extracts by member name: each blob is streamed into the store and must hash
to its name; every manifest is validated; then all versions are added in one transaction
(all or nothing). A version already present with the same digest is reused, with another
digest refused (versions are immutable).
"""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path
from typing import Any

from torchslim import _io
from torchslim.artifacts.digest import is_hex_digest
from torchslim.artifacts.environment import utc_now
from torchslim.artifacts.index import VersionInfo, insert_version, rows
from torchslim.artifacts.schema import Manifest, parse_manifest
from torchslim.artifacts.semver import Version, check_name
from torchslim.errors import IntegrityError, RegistryError, VersionConflictError

__all__ = ["export_archive", "import_archive", "EXPORT_FORMAT", "INDEX_MEMBER"]

EXPORT_FORMAT = 1
INDEX_MEMBER = "torchslim-export.json"
_BLOBS = "blobs/sha256/"


def export_archive(registry: Any, ref: str, archive: Path) -> Path:
    """Write ``ref`` and every ancestor it links to into ``archive``."""
    chain = list(reversed(registry.lineage(ref).chain))  # the original first
    entries = [{"name": i.name, "version": i.version, "source_digest": i.source_digest,
                "parent": i.parent, "description": i.description, "tags": i.tags,
                "manifest": i.manifest.model_dump(mode="json")} for i in chain]
    blobs = {f.sha256: f.size for i in chain for f in i.manifest.files}
    index = json.dumps({"format": EXPORT_FORMAT, "versions": entries}, indent=2).encode()
    mode = "w:gz" if archive.name.endswith((".tar.gz", ".tgz")) else "w"
    with registry.store.lock(shared=True), _io.atomic_path(archive) as tmp:
        with tarfile.open(tmp, mode) as tar:
            _add(tar, INDEX_MEMBER, io.BytesIO(index), len(index))
            for sha256, size in sorted(blobs.items()):
                problem = registry.store.check(sha256, size)
                if problem:
                    raise IntegrityError(f"cannot export {ref}: {problem}; run `torchslim "
                                         "registry verify`")
                with open(registry.store.path(sha256), "rb") as f:
                    _add(tar, _BLOBS + sha256, f, size)
    return archive


def _add(tar: tarfile.TarFile, name: str, f: Any, size: int) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode = size, 0, 0o444
    tar.addfile(info, f)


def import_archive(registry: Any, archive: Path) -> list[VersionInfo]:
    """Add the versions in ``archive`` to ``registry``; returns them, the original first."""
    if not archive.is_file():
        raise RegistryError(f"archive not found: {archive}")
    try:
        tar = tarfile.open(archive, "r:*")
    except (tarfile.TarError, OSError) as e:
        raise RegistryError(f"{archive} is not a tar archive ({e}); pass a file written by "
                            "`torchslim registry export`") from e
    with tar, registry.store.lock(shared=True):
        entries = _read_entries(tar, archive)
        needed = {f.sha256: f.size for _, m in entries for f in m.files}
        for member in tar:
            _import_member(registry, tar, member, needed, archive)
        missing = [s for s, size in needed.items() if registry.store.check(s, size)]
        if missing:
            raise IntegrityError(f"{archive} lacks the blob {missing[0][:12]}… "
                                 f"({len(missing)} missing); export it again")
        refs = _insert(registry, entries, archive)
    return [registry.get(r) for r in refs]


def _read_entries(tar: tarfile.TarFile, archive: Path) -> list[tuple[dict, Manifest]]:
    try:
        member = tar.getmember(INDEX_MEMBER)
        data = json.loads(tar.extractfile(member).read())  # type: ignore[union-attr]
    except (KeyError, AttributeError, ValueError) as e:
        raise RegistryError(f"{archive} has no readable {INDEX_MEMBER} ({e}); it was not "
                            "written by `torchslim registry export`") from e
    found = data.get("format") if isinstance(data, dict) else type(data).__name__
    if found != EXPORT_FORMAT:
        raise RegistryError(f"{archive}: export format {found!r} is not {EXPORT_FORMAT}; "
                            "import it with the torchslim that wrote it")
    entries = []
    for i, e in enumerate(data.get("versions") or []):
        source = f"{archive}: versions[{i}] ({e.get('name')}@{e.get('version')})"
        entries.append((e, parse_manifest(e.get("manifest") or {}, source=source)))
    if not entries:
        raise RegistryError(f"{archive} holds no versions")
    return entries


def _import_member(registry: Any, tar: tarfile.TarFile, member: tarfile.TarInfo,
                   needed: dict[str, int], archive: Path) -> None:
    if member.name == INDEX_MEMBER:
        return
    sha256 = member.name[len(_BLOBS):] if member.name.startswith(_BLOBS) else ""
    if not (member.isfile() and is_hex_digest(sha256) and sha256 in needed):
        raise RegistryError(f"{archive} holds an unexpected member {member.name!r}; it was "
                            "not written by `torchslim registry export`")
    if not registry.store.has(sha256):
        registry.store.put_stream(tar.extractfile(member), sha256,
                                  source=f"{archive}:{member.name}")


def _insert(registry: Any, entries: list[tuple[dict, Manifest]], archive: Path) -> list[str]:
    refs: list[str] = []
    with registry.index.connect() as db, registry.index.write(db):
        ids: dict[str, int] = {}
        for e, manifest in entries:
            ref = f"{check_name(str(e['name']))}@{Version.parse(str(e['version']))}"
            found = rows(db, "WHERE m.name = ? AND v.version = ?", (e["name"], e["version"]))
            if found and found[0]["digest"] != manifest.digest:
                raise VersionConflictError(f"{ref} exists here with other bytes "
                                           f"({found[0]['digest']}); the archive's is "
                                           f"{manifest.digest}; versions are immutable")
            if e.get("parent") and e["parent"] not in ids:
                raise RegistryError(f"{archive}: {ref} names the parent {e['parent']}, which "
                                    "is not earlier in the archive")
            ids[ref] = found[0]["id"] if found else insert_version(
                db, name=e["name"], version=str(e["version"]), manifest=manifest,
                source_digest=str(e.get("source_digest") or manifest.digest),
                parent_id=ids.get(e.get("parent")), description=str(e.get("description", "")),
                created_at=manifest.registry.pushed_at if manifest.registry else utc_now(),
                tags={str(k): str(v) for k, v in (e.get("tags") or {}).items()})
            refs.append(ref)
    return refs
