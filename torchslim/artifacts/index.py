"""The registry index: models, versions, files, tags and aliases in SQLite.

The stdlib ``sqlite3`` in WAL mode (readers never block the writer), a busy timeout for
concurrent writers, every change in one ``BEGIN IMMEDIATE`` transaction, foreign keys
on. A killed writer leaves an uncommitted transaction that SQLite rolls back on the next
open. SQLite errors become torchslim errors: a corrupt file IntegrityError, a writer
kept waiting past the timeout VersionConflictError.
"""

from __future__ import annotations

import contextlib
import sqlite3
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torchslim.artifacts.schema import Manifest
from torchslim.errors import IntegrityError, RegistryError, VersionConflictError

__all__ = ["Index", "VersionInfo", "INDEX_SCHEMA"]

INDEX_SCHEMA = 1
BUSY_TIMEOUT_S = 60.0

_DDL = """
CREATE TABLE IF NOT EXISTS models (
    id INTEGER PRIMARY KEY, name TEXT NOT NULL UNIQUE, created_at TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS versions (
    id INTEGER PRIMARY KEY,
    model_id INTEGER NOT NULL REFERENCES models(id),
    version TEXT NOT NULL,
    digest TEXT NOT NULL,          -- of the stored files
    source_digest TEXT NOT NULL,   -- of the files pushed (before the registry id stamp)
    parent_id INTEGER REFERENCES versions(id) ON DELETE SET NULL,
    relation TEXT,
    description TEXT NOT NULL DEFAULT '',
    manifest TEXT NOT NULL,
    created_at TEXT NOT NULL,
    UNIQUE (model_id, version));
CREATE INDEX IF NOT EXISTS versions_digest ON versions(digest);
CREATE INDEX IF NOT EXISTS versions_source ON versions(source_digest);
CREATE TABLE IF NOT EXISTS files (
    version_id INTEGER NOT NULL REFERENCES versions(id) ON DELETE CASCADE,
    path TEXT NOT NULL, sha256 TEXT NOT NULL, size INTEGER NOT NULL,
    PRIMARY KEY (version_id, path));
CREATE INDEX IF NOT EXISTS files_sha256 ON files(sha256);
CREATE TABLE IF NOT EXISTS tags (
    version_id INTEGER NOT NULL REFERENCES versions(id) ON DELETE CASCADE,
    key TEXT NOT NULL, value TEXT NOT NULL, PRIMARY KEY (version_id, key));
CREATE TABLE IF NOT EXISTS aliases (
    model_id INTEGER NOT NULL REFERENCES models(id),
    alias TEXT NOT NULL,
    version_id INTEGER NOT NULL REFERENCES versions(id) ON DELETE CASCADE,
    PRIMARY KEY (model_id, alias));
"""


@dataclass(frozen=True)
class VersionInfo:
    """One registered version, as ``show`` / ``list`` return it."""

    id: int
    name: str
    version: str
    digest: str
    source_digest: str
    relation: str | None
    parent: str | None          # "name@version" of the parent in this registry
    description: str
    created_at: str
    manifest: Manifest
    aliases: tuple[str, ...] = ()
    tags: dict[str, str] = field(default_factory=dict)

    @property
    def ref(self) -> str:
        return f"{self.name}@{self.version}"

    @property
    def size(self) -> int:
        return self.manifest.size


class Index:
    def __init__(self, path: Path) -> None:
        self.path = path

    @property
    def exists(self) -> bool:
        return self.path.is_file()

    @contextlib.contextmanager
    def connect(self, *, create: bool = True) -> Iterator[sqlite3.Connection]:
        """A connection with the schema in place; SQLite errors become torchslim errors.
        With ``create=False`` a registry that has no index yet reads as an empty one (an
        in-memory index), so reading never creates files."""
        missing = not create and not self.exists
        if not missing:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.translate():
            db = sqlite3.connect(":memory:" if missing else str(self.path),
                                 timeout=BUSY_TIMEOUT_S, isolation_level=None)
            try:
                db.row_factory = sqlite3.Row
                db.execute(f"PRAGMA busy_timeout = {int(BUSY_TIMEOUT_S * 1000)}")
                self._setup(db)
                yield db
            finally:
                db.close()

    @contextlib.contextmanager
    def write(self, db: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
        """One write transaction, taken at its start (BEGIN IMMEDIATE): two writers queue
        on the busy timeout instead of failing at commit."""
        with self.translate():
            db.execute("BEGIN IMMEDIATE")
            try:
                yield db
            except BaseException:
                if db.in_transaction:
                    db.execute("ROLLBACK")
                raise
            db.execute("COMMIT")

    @contextlib.contextmanager
    def translate(self) -> Iterator[None]:
        try:
            yield
        except sqlite3.OperationalError as e:
            text = str(e)
            if "locked" in text or "busy" in text:
                raise VersionConflictError(
                    f"registry index {self.path} stayed locked by another process for "
                    f"{BUSY_TIMEOUT_S:.0f} s ({text}); retry") from e
            if "unable to open" in text:
                raise RegistryError(f"cannot open the registry index {self.path} ({text}); "
                                    "check the path and its permissions") from e
            raise self._corrupt(text) from e
        except sqlite3.DatabaseError as e:
            raise self._corrupt(str(e)) from e

    def _corrupt(self, why: str) -> IntegrityError:
        return IntegrityError(f"registry index {self.path} is corrupt ({why}); restore it "
                              "from a backup or move it away and import your exported "
                              "archives into a fresh registry")

    def _setup(self, db: sqlite3.Connection) -> None:
        # Switching to WAL needs a moment of exclusive access; retry while another
        # process opening the same new registry holds it.
        for attempt in range(100):
            try:
                mode = db.execute("PRAGMA journal_mode = WAL").fetchone()[0]
                break
            except sqlite3.OperationalError as e:
                if "locked" not in str(e) or attempt == 99:
                    raise
                time.sleep(0.05)
        if str(mode).lower() not in ("wal", "memory"):
            raise RegistryError(f"registry index {self.path} cannot use WAL mode (got "
                                f"{mode}); put the registry on a local file system")
        db.execute("PRAGMA foreign_keys = ON")
        db.execute("PRAGMA synchronous = FULL")
        version = db.execute("PRAGMA user_version").fetchone()[0]
        if version == INDEX_SCHEMA:
            return
        if version > INDEX_SCHEMA:
            raise RegistryError(f"registry index {self.path} has schema {version}; this "
                                f"torchslim reads {INDEX_SCHEMA}: upgrade torchslim")
        with self.write(db):
            if db.execute("PRAGMA user_version").fetchone()[0] == 0:
                for statement in _DDL.split(";"):
                    if statement.strip():
                        db.execute(statement)
                db.execute(f"PRAGMA user_version = {INDEX_SCHEMA}")


def row_to_info(db: sqlite3.Connection, row: sqlite3.Row, *, source: str) -> VersionInfo:
    """A ``versions`` row (joined with its model name) as a VersionInfo."""
    from torchslim.artifacts.schema import parse_manifest
    from torchslim.errors import ManifestError

    try:
        manifest = parse_manifest(row["manifest"], source=f"the index entry of {source}")
    except ManifestError as e:
        raise IntegrityError(f"{e}; the index {source} entry is damaged") from None
    parent = None
    if row["parent_id"] is not None:
        p = db.execute("SELECT m.name, v.version FROM versions v JOIN models m "
                       "ON m.id = v.model_id WHERE v.id = ?", (row["parent_id"],)).fetchone()
        parent = f"{p[0]}@{p[1]}" if p else None
    aliases = tuple(r[0] for r in db.execute(
        "SELECT alias FROM aliases WHERE version_id = ? ORDER BY alias", (row["id"],)))
    tags = {r[0]: r[1] for r in db.execute(
        "SELECT key, value FROM tags WHERE version_id = ? ORDER BY key", (row["id"],))}
    return VersionInfo(id=row["id"], name=row["name"], version=row["version"],
                       digest=row["digest"], source_digest=row["source_digest"],
                       relation=row["relation"], parent=parent,
                       description=row["description"], created_at=row["created_at"],
                       manifest=manifest, aliases=aliases, tags=tags)


VERSION_COLUMNS = ("SELECT v.*, m.name AS name FROM versions v "
                   "JOIN models m ON m.id = v.model_id")


def insert_version(db: sqlite3.Connection, *, name: str, version: str, manifest: Manifest,
                   source_digest: str, parent_id: int | None, description: str,
                   created_at: str, tags: dict[str, str]) -> int:
    db.execute("INSERT OR IGNORE INTO models (name, created_at) VALUES (?, ?)",
               (name, created_at))
    model_id = db.execute("SELECT id FROM models WHERE name = ?", (name,)).fetchone()[0]
    cur = db.execute(
        "INSERT INTO versions (model_id, version, digest, source_digest, parent_id, relation, "
        "description, manifest, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
        (model_id, version, manifest.digest, source_digest, parent_id,
         manifest.provenance.relation, description, manifest.to_json(), created_at))
    version_id = int(cur.lastrowid)
    db.executemany("INSERT INTO files (version_id, path, sha256, size) VALUES (?, ?, ?, ?)",
                   [(version_id, f.path, f.sha256, f.size) for f in manifest.files])
    db.executemany("INSERT INTO tags (version_id, key, value) VALUES (?, ?, ?)",
                   [(version_id, k, v) for k, v in tags.items()])
    return version_id


def set_alias(db: sqlite3.Connection, version_id: int, alias: str) -> None:
    model_id = db.execute("SELECT model_id FROM versions WHERE id = ?",
                          (version_id,)).fetchone()[0]
    db.execute("INSERT INTO aliases (model_id, alias, version_id) VALUES (?, ?, ?) "
               "ON CONFLICT (model_id, alias) DO UPDATE SET version_id = excluded.version_id",
               (model_id, alias, version_id))


def rows(db: sqlite3.Connection, where: str = "", params: tuple[Any, ...] = ()
         ) -> list[sqlite3.Row]:
    return db.execute(f"{VERSION_COLUMNS} {where}", params).fetchall()
