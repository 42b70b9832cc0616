"""The file entries of an artifact and JSON-able copies of configs: shared by fresh
manifests (``manifest.py``) and the views of old sidecars (``legacy.py``)."""

from __future__ import annotations

import dataclasses
import json
from typing import Any

from torchslim.artifacts.digest import sha256_file
from torchslim.artifacts.kinds import KINDS, Located
from torchslim.artifacts.schema import FileEntry

__all__ = ["file_entries", "jsonable"]


def file_entries(loc: Located) -> list[FileEntry]:
    entries = []
    for rel in KINDS.get(loc.kind).files(loc):
        digest, size = sha256_file(loc.root / rel)
        entries.append(FileEntry(path=rel, size=size, sha256=digest))
    return sorted(entries, key=lambda f: f.path)


def jsonable(obj: Any) -> Any:
    """A JSON value for ``obj``: pydantic models and dataclasses become dicts, tuples
    lists, paths and other leaves their ``str``."""
    if hasattr(obj, "model_dump"):
        obj = obj.model_dump(mode="json")
    elif dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        obj = dataclasses.asdict(obj)
    return json.loads(json.dumps(obj, default=str))
