"""The local model registry: versioned artifacts by name, with their compression lineage.

>>> reg = ModelRegistry()                                    # doctest: +SKIP
>>> reg.push("runs/x/model.onnx", "fashion-int8", bump="minor", aliases=["champion"])
>>> reg.resolve("fashion-int8@champion")                     # a path a server can open

Layout under the root (``$TORCHSLIM_REGISTRY``, default ``<cache>/registry``)::

    index.sqlite      models, SemVer versions, files, tags, aliases, manifests (index.py)
    blobs/sha256/     content-addressed, read-only file contents (store.py)
    tmp/              blobs and checkouts being written (gc removes leftovers)
    resolved/<hex>/   checkouts made by resolve(), one per stored digest

A push writes and fsyncs every blob before one transaction adds the version, so the index
never names a blob that is not complete; a push killed at any point leaves at most
unreferenced blobs and temp files, which ``gc`` removes. Versions are immutable: other
bytes under an existing version are refused, the same bytes are a no-op. An ONNX file is
stored with ``torchslim.registry_id`` (and its parent digest and recipe hash) in its
``metadata_props``; the version keeps the digest of what was pushed as ``source_digest``.
"""

from __future__ import annotations

import logging
import os
import shutil
import sqlite3
import tempfile
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from torchslim import _io
from torchslim.artifacts import onnx_meta
from torchslim.artifacts.digest import artifact_digest, sha256_bytes
from torchslim.artifacts.environment import utc_now
from torchslim.artifacts.index import (Index, VersionInfo, insert_version, row_to_info, rows,
                                       set_alias)
from torchslim.artifacts.kinds import Located, locate
from torchslim.artifacts.manifest import check_files, read_manifest
from torchslim.artifacts.schema import FileEntry, Manifest, parse_manifest
from torchslim.artifacts.semver import Ref, Version, check_alias, check_name, parse_ref
from torchslim.artifacts.store import BlobStore, crash_point
from torchslim.config import cache_dir
from torchslim.errors import (ConfigError, IntegrityError, RegistryError, UnknownVersionError,
                              VersionConflictError)

__all__ = ["ModelRegistry", "VersionInfo", "VerifyReport", "GcReport", "default_root",
           "resolve", "REGISTRY_ENV"]

logger = logging.getLogger(__name__)

REGISTRY_ENV = "TORCHSLIM_REGISTRY"
_PUSH_ATTEMPTS = 50  # a bumped ONNX push re-stamps when another push took its version


def default_root() -> Path:
    root = os.environ.get(REGISTRY_ENV)
    return Path(root).expanduser() if root else cache_dir() / "registry"


@dataclass(frozen=True)
class VerifyReport:
    root: Path
    versions: int
    blobs: int
    problems: tuple[str, ...]

    @property
    def ok(self) -> bool:
        return not self.problems


@dataclass(frozen=True)
class GcReport:
    blobs_removed: int
    bytes_freed: int
    temp_removed: int
    checkouts_removed: int


class ModelRegistry:
    """A registry at ``root`` (default: ``default_root()``); created on first write."""

    def __init__(self, root: str | os.PathLike[str] | None = None) -> None:
        self.root = Path(root).expanduser() if root is not None else default_root()
        self.store = BlobStore(self.root)
        self.index = Index(self.root / "index.sqlite")

    # --- reading ----------------------------------------------------------------------

    def get(self, ref: str | Ref) -> VersionInfo:
        """The version ``ref`` names (``name``, ``name@1.2.0`` or ``name@alias``)."""
        with self.index.connect(create=False) as db:
            return self._info(db, self._find(db, ref))

    show = get

    def list_versions(self, name: str | None = None) -> list[VersionInfo]:
        """Every version (of ``name``), by name, then in SemVer order."""
        with self.index.connect(create=False) as db:
            if name is not None:
                self._model_id(db, check_name(name))
            found = rows(db, "WHERE m.name = ?", (name,)) if name else rows(db)
            infos = [self._info(db, r) for r in found]
        return sorted(infos, key=lambda i: (i.name, Version.parse(i.version).key()))

    def lineage(self, ref: str | Ref):  # -> Lineage (lineage.py imports this module)
        from torchslim.artifacts.lineage import lineage

        return lineage(self, ref)

    # --- writing ----------------------------------------------------------------------

    def push(self, path: str | os.PathLike[str], name: str, *, version: str | None = None,
             bump: str | None = None, parent: str | None = None, relation: str | None = None,
             aliases: Iterable[str] = (), tags: Mapping[str, str] | None = None,
             description: str = "") -> VersionInfo:
        """Register the artifact at ``path`` (it must have a manifest, or an old sidecar)
        as ``name@version``; without ``version`` the latest is bumped (``bump``, default
        patch; the first version is 1.0.0). ``parent`` ("name@version") links the
        lineage explicitly; otherwise the manifest's parent digest is looked up."""
        check_name(name)
        aliases = [check_alias(a) for a in aliases]
        explicit = Version.parse(version) if version else None
        if explicit is not None and bump is not None:
            raise ConfigError(f"pass a version ({version}) or a bump ({bump}), not both")
        Version(0, 0, 0).bump(bump or "patch")  # ConfigError for an unknown part
        loc, manifest = locate(path), read_manifest(path)
        with self.store.lock(shared=True), self.index.connect() as db:
            parent_row = self._parent_row(db, manifest, parent)
            for _ in range(_PUSH_ATTEMPTS):
                done = self._unchanged(db, name, explicit, manifest)
                if done is not None:  # the same bytes: no new version; aliases still move
                    return self._with_aliases(db, done, aliases)
                target = explicit or self._next_version(db, name, bump)
                stored = self._store(loc, manifest, f"{name}@{target}", parent_row, relation)
                crash_point("blobs-stored")
                with self.index.write(db):
                    if self._unchanged(db, name, explicit, manifest) is not None:
                        continue  # the same bytes, pushed meanwhile: the next round says so
                    if self._taken(db, name, target, explicit):
                        continue  # a concurrent bump took it: stamp the next one
                    version_id = insert_version(
                        db, name=name, version=str(target), manifest=stored,
                        source_digest=manifest.digest,
                        parent_id=parent_row["id"] if parent_row else None,
                        description=description, created_at=utc_now(), tags=dict(tags or {}))
                    for alias in aliases:
                        set_alias(db, version_id, alias)
                    crash_point("index-written")
                crash_point("committed")
                logger.info("pushed %s@%s (%s)", name, target, stored.digest)
                return self._info(db, self._find(db, f"{name}@{target}"))
        raise VersionConflictError(f"{name}: {_PUSH_ATTEMPTS} concurrent pushes took every "
                                   "version this push tried; retry it")

    def _with_aliases(self, db: sqlite3.Connection, info: VersionInfo, aliases: list[str]
                      ) -> VersionInfo:
        if not aliases:
            return info
        with self.index.write(db):
            for alias in aliases:
                set_alias(db, info.id, alias)
        return self._info(db, self._find(db, info.ref))

    def alias(self, ref: str, alias: str) -> VersionInfo:
        """Point ``alias`` of the model at the version ``ref`` (moving it if it exists)."""
        check_alias(alias)
        with self.index.connect() as db:
            with self.index.write(db):
                row = self._find(db, ref)
                set_alias(db, row["id"], alias)
            return self._info(db, row)

    def unalias(self, name: str, alias: str) -> None:
        with self.index.connect() as db, self.index.write(db):
            cur = db.execute("DELETE FROM aliases WHERE alias = ? AND model_id = ?",
                             (check_alias(alias), self._model_id(db, check_name(name))))
            if cur.rowcount == 0:
                raise UnknownVersionError(f"{name} has no alias {alias!r}")

    def rm(self, ref: str, *, force: bool = False) -> VersionInfo:
        """Remove one version (its blobs stay until ``gc``). A version that is the parent
        of others is kept unless ``force``: their lineage then ends at its digest."""
        parsed = parse_ref(ref)
        if parsed.version is None and parsed.alias is None:
            raise ConfigError(f"rm needs one version, e.g. {ref}@1.0.0 or {ref}@ALIAS")
        with self.index.connect() as db, self.index.write(db):
            row = self._find(db, ref)
            info = self._info(db, row)
            children = [f"{c['name']}@{c['version']}" for c in
                        rows(db, "WHERE v.parent_id = ?", (row["id"],))]
            if children and not force:
                raise RegistryError(f"{info.ref} is the parent of {', '.join(children)}; "
                                    "remove those first, or pass force=True (--force): "
                                    "their lineage then ends at its digest")
            db.execute("DELETE FROM versions WHERE id = ?", (row["id"],))
            db.execute("DELETE FROM models WHERE id = ? AND NOT EXISTS (SELECT 1 FROM "
                       "versions WHERE model_id = ?)", (row["model_id"], row["model_id"]))
        return info

    # --- files ------------------------------------------------------------------------

    def pull(self, ref: str, dest: str | os.PathLike[str]) -> Path:
        """Write the version's files and manifest into the directory ``dest`` (each file
        verified against its digest); returns the artifact's path there."""
        with self.store.lock(shared=True):
            info = self.get(ref)
            return self._write_files(info.manifest, Path(dest))

    def resolve(self, ref: str, *, verify: bool = True) -> Path:
        """A path a runtime can open for ``ref``: a checkout under ``resolved/``, made once
        per digest (and re-made when ``verify`` finds its files changed)."""
        with self.store.lock(shared=True):
            info = self.get(ref)
            target = self.root / "resolved" / info.digest.split(":", 1)[1]
            if target.is_dir() and verify and check_files(info.manifest, target):
                logger.warning("checkout %s no longer matches %s; making it again",
                               target, info.ref)
                shutil.rmtree(target)
            if not target.is_dir():
                self.store.tmp.mkdir(parents=True, exist_ok=True)
                staging = Path(tempfile.mkdtemp(prefix="checkout-", dir=self.store.tmp))
                self._write_files(info.manifest, staging)
                target.parent.mkdir(parents=True, exist_ok=True)
                try:
                    os.rename(staging, target)
                except OSError:  # another process made the same checkout first
                    shutil.rmtree(staging, ignore_errors=True)
            return Located(info.manifest.kind, target, info.manifest.entry).path

    def verify(self) -> VerifyReport:
        """Recompute every stored digest: missing or tampered blobs, index rows that
        disagree with their manifest, and SQLite's own check of the index file."""
        with self.store.lock(shared=True), self.index.connect(create=False) as db:
            problems = [f"index: {r[0]}" for r in db.execute("PRAGMA quick_check")
                        if r[0] != "ok"]
            needed: dict[tuple[str, int], str] = {}
            found = rows(db)
            for row in found:
                ref = f"{row['name']}@{row['version']}"
                try:
                    info = self._info(db, row)
                except IntegrityError as e:
                    problems.append(f"{ref}: {e}")
                    continue
                problems += _row_problems(db, ref, row, info.manifest)
                for f in info.manifest.files:
                    needed.setdefault((f.sha256, f.size), f"{ref}: {f.path}")
            for (sha256, size), where in sorted(needed.items(), key=lambda kv: kv[1]):
                problem = self.store.check(sha256, size)
                if problem:
                    problems.append(f"{where}: {problem}")
        return VerifyReport(self.root, len(found), len(needed), tuple(problems))

    def gc(self) -> GcReport:
        """Remove blobs no version references, leftovers in ``tmp/`` (half-written blobs of
        killed pushes) and checkouts of removed versions."""
        if not self.root.is_dir():
            return GcReport(0, 0, 0, 0)
        if not self.index.exists and any(self.store.digests()):
            raise IntegrityError(f"{self.root} holds blobs but no index ({self.index.path}); "
                                 "gc would delete them all: restore the index first")
        with self.store.lock(shared=False), self.index.connect(create=False) as db:
            referenced = {r[0] for r in db.execute("SELECT DISTINCT sha256 FROM files")}
            digests = {r[0].split(":", 1)[1] for r in db.execute("SELECT digest FROM versions")}
            removed = freed = 0
            for sha256 in list(self.store.digests()):
                if sha256 not in referenced:
                    freed += self.store.remove(sha256)
                    removed += 1
            temp = _clear(self.store.tmp, keep=set())
            checkouts = _clear(self.root / "resolved", keep=digests)
        logger.info("gc %s: %d blobs (%d bytes), %d temp files, %d checkouts", self.root,
                    removed, freed, temp, checkouts)
        return GcReport(removed, freed, temp, checkouts)

    def export(self, ref: str, archive: str | os.PathLike[str]) -> Path:
        """One tar archive with the version, its whole lineage and their blobs."""
        from torchslim.artifacts.archive import export_archive

        return export_archive(self, ref, Path(archive))

    def import_archive(self, archive: str | os.PathLike[str]) -> list[VersionInfo]:
        """Add the versions of an exported archive (lineage links kept; versions already
        here with the same bytes are kept, with other bytes refused)."""
        from torchslim.artifacts.archive import import_archive

        return import_archive(self, Path(archive))

    # --- internals --------------------------------------------------------------------

    def _info(self, db: sqlite3.Connection, row: sqlite3.Row) -> VersionInfo:
        return row_to_info(db, row, source=f"{row['name']}@{row['version']}")

    def _model_id(self, db: sqlite3.Connection, name: str) -> int:
        row = db.execute("SELECT id FROM models WHERE name = ?", (name,)).fetchone()
        if row is None:
            known = [r[0] for r in db.execute("SELECT name FROM models ORDER BY name LIMIT 8")]
            raise UnknownVersionError(f"no model {name!r} in the registry {self.root}; "
                                      f"it holds: {', '.join(known) or 'nothing yet'}; check the name, "
                                      "or push it first (torchslim registry push)")
        return int(row[0])

    def _find(self, db: sqlite3.Connection, ref: str | Ref) -> sqlite3.Row:
        r = parse_ref(ref) if isinstance(ref, str) else ref
        model_id = self._model_id(db, r.name)
        if r.alias is not None:
            found = rows(db, "JOIN aliases a ON a.version_id = v.id WHERE a.model_id = ? "
                         "AND a.alias = ?", (model_id, r.alias))
            if not found:
                known = [x[0] for x in db.execute(
                    "SELECT alias FROM aliases WHERE model_id = ? ORDER BY alias", (model_id,))]
                raise UnknownVersionError(f"{r.name} has no alias {r.alias!r}; its aliases: "
                                          f"{', '.join(known) or 'none'}")
            return found[0]
        found = rows(db, "WHERE v.model_id = ?", (model_id,))
        if r.version is None:
            return max(found, key=lambda x: Version.parse(x["version"]).key())
        match = [x for x in found if x["version"] == str(r.version)]
        if not match:
            have = sorted((x["version"] for x in found), key=lambda v: Version.parse(v).key())
            raise UnknownVersionError(f"{r.name} has no version {r.version}; it has "
                                      f"{', '.join(have[-8:])}")
        return match[0]

    def _next_version(self, db: sqlite3.Connection, name: str, bump: str | None) -> Version:
        found = db.execute("SELECT v.version FROM versions v JOIN models m ON "
                           "m.id = v.model_id WHERE m.name = ?", (name,)).fetchall()
        if not found:
            return Version(1, 0, 0)
        latest = max((Version.parse(r[0]) for r in found), key=Version.key)
        return latest.bump(bump or "patch")

    def _unchanged(self, db: sqlite3.Connection, name: str, explicit: Version | None,
                   manifest: Manifest) -> VersionInfo | None:
        """The existing version a push of ``manifest`` is a no-op for, if any; raises
        VersionConflictError for other bytes under an explicit existing version."""
        if explicit is not None:
            found = rows(db, "WHERE m.name = ? AND v.version = ?", (name, str(explicit)))
            if found and manifest.digest not in (found[0]["digest"], found[0]["source_digest"]):
                raise VersionConflictError(
                    f"{name}@{explicit} exists with other bytes ({found[0]['source_digest']}, "
                    f"this artifact is {manifest.digest}); versions are immutable: push it "
                    "as a new version (--bump patch)")
        else:
            found = rows(db, "WHERE m.name = ? AND (v.digest = ? OR v.source_digest = ?) "
                         "ORDER BY v.id DESC", (name, manifest.digest, manifest.digest))
        return self._info(db, found[0]) if found else None

    def _taken(self, db: sqlite3.Connection, name: str, target: Version,
               explicit: Version | None) -> bool:
        found = rows(db, "WHERE m.name = ? AND v.version = ?", (name, str(target)))
        if found and explicit is not None:  # pushed by another process meanwhile
            raise VersionConflictError(f"{name}@{target} was pushed by another process "
                                       "while this push ran; push under a new version")
        return bool(found)

    def _parent_row(self, db: sqlite3.Connection, manifest: Manifest, parent: str | None
                    ) -> sqlite3.Row | None:
        recorded = manifest.provenance.parent_digest
        if parent is not None:
            row = self._find(db, parent)
            if recorded and recorded not in (row["digest"], row["source_digest"]):
                raise ConfigError(f"the manifest's parent is {recorded}, but {parent} is "
                                  f"{row['digest']}; pass the parent it was made from")
            return row
        if recorded is None:
            return None
        found = rows(db, "WHERE v.digest = ? OR v.source_digest = ? ORDER BY v.id DESC",
                     (recorded, recorded))
        return found[0] if found else None

    def _store(self, loc: Located, manifest: Manifest, registry_id: str,
               parent_row: sqlite3.Row | None, relation: str | None) -> Manifest:
        """Write the blobs; the manifest as stored (registry stamp, parent, relation)."""
        prov = manifest.provenance
        if relation is not None and prov.relation not in (None, relation):
            raise ConfigError(f"relation {relation!r} differs from the manifest's "
                              f"{prov.relation!r}")
        parent_digest = prov.parent_digest or (parent_row["digest"] if parent_row else None)
        files = []
        for f in manifest.files:
            if loc.kind == "onnx" and f.path == manifest.entry:
                f = self._store_stamped(loc, f, {
                    onnx_meta.PROP_REGISTRY_ID: registry_id,
                    onnx_meta.PROP_PARENT_DIGEST: parent_digest,
                    onnx_meta.PROP_RECIPE_HASH: prov.recipe_hash})
            else:
                self.store.put_file(loc.root / f.path, f.sha256)
            files.append(f)
        data = manifest.model_dump(mode="json")
        data.update(files=[f.model_dump() for f in files], digest=artifact_digest(files),
                    registry={"id": registry_id, "source_digest": manifest.digest,
                              "pushed_at": utc_now()})
        data["provenance"].update(parent_digest=parent_digest,
                                  relation=prov.relation or relation)
        return parse_manifest(data, source=f"the manifest of {registry_id}")

    def _store_stamped(self, loc: Located, f: FileEntry, props: dict) -> FileEntry:
        data = (loc.root / f.path).read_bytes()
        if sha256_bytes(data) != f.sha256:
            raise IntegrityError(f"{loc.root / f.path} changed while being pushed; retry")
        stamped = onnx_meta.stamped_bytes(loc.root / f.path, props, data) or data
        entry = FileEntry(path=f.path, size=len(stamped), sha256=sha256_bytes(stamped))
        self.store.put_bytes(stamped, entry.sha256)
        return entry

    def _write_files(self, manifest: Manifest, dest: Path) -> Path:
        for f in manifest.files:
            self.store.copy_out(f.sha256, f.size, dest / f.path)
        loc = Located(manifest.kind, dest, manifest.entry)
        _io.write_text(loc.manifest_path, manifest.to_json())
        return loc.path


def _row_problems(db: sqlite3.Connection, ref: str, row: sqlite3.Row,
                  manifest: Manifest) -> list[str]:
    problems = []
    if manifest.digest != row["digest"]:
        problems.append(f"{ref}: the index digest {row['digest']} is not its manifest's "
                        f"{manifest.digest}")
    listed = {(r[0], r[1], r[2]) for r in db.execute(
        "SELECT path, sha256, size FROM files WHERE version_id = ?", (row["id"],))}
    if listed != {(f.path, f.sha256, f.size) for f in manifest.files}:
        problems.append(f"{ref}: the index's file list differs from its manifest")
    return problems


def _clear(directory: Path, *, keep: set[str]) -> int:
    """Remove every entry of ``directory`` whose name is not in ``keep``; how many."""
    if not directory.is_dir():
        return 0
    n = 0
    for p in directory.iterdir():
        if p.name in keep:
            continue
        if p.is_dir():
            shutil.rmtree(p)
        else:
            p.unlink()
        n += 1
    return n


def resolve(ref: str, *, root: str | os.PathLike[str] | None = None) -> Path:
    """The path of ``ref`` ("name", "name@1.2.0", "name@alias") in the registry at
    ``root`` (default ``$TORCHSLIM_REGISTRY`` or ``<cache>/registry``)."""
    return ModelRegistry(root).resolve(ref)
