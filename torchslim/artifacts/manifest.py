"""Write, read and check the manifest beside an artifact (schema in ``schema.py``).

>>> write_manifest("stage/model.onnx", parent="stage/model.safetensors",    # doctest: +SKIP
...                relation="exported", config={"opset": 17}, metrics=[result])

computes the files, their digests, the format, the precision and the signature itself
(the signature as ``torchslim.runtime.open(path)`` reports it; a checkpoint has none
unless the caller gives one). An ONNX file first gets the parent digest and recipe hash
in its ``metadata_props``, so the digests cover the stamped bytes.

``read_manifest(path)`` validates the manifest and checks that the files still match
it. An artifact without a manifest but with an old sidecar (a checkpoint's ``NAME.json``,
an LLM directory's ``torchslim_quant.json``) loads as a best-effort view (see
``legacy.py``).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from torchslim import _io
from torchslim.artifacts import onnx_meta
from torchslim.artifacts.digest import DIGEST_PREFIX, artifact_digest, sha256_bytes, sha256_file
from torchslim.artifacts.environment import git_revision, utc_now, versions
from torchslim.artifacts.files import file_entries, jsonable
from torchslim.artifacts.kinds import KINDS, locate
from torchslim.artifacts.schema import (SCHEMA_VERSION, DataRef, Manifest,
                                        Measurement, Preprocessing, Provenance, Signature,
                                        TensorSig, parse_manifest)
from torchslim.errors import ManifestError

__all__ = ["write_manifest", "build_manifest", "read_manifest", "file_entries",
           "check_files", "digest_of", "recipe_hash", "jsonable"]


def write_manifest(path: str | os.PathLike[str], **fields: Any) -> Manifest:
    """Build the manifest of the artifact at ``path`` and write it beside it (atomically).

    Takes the keyword arguments of :func:`build_manifest`; an ONNX file is stamped first
    (``torchslim.parent_digest`` and ``torchslim.recipe_hash`` in ``metadata_props``).
    """
    manifest = build_manifest(path, stamp=True, **fields)
    _io.write_text(locate(path, manifest.kind).manifest_path, manifest.to_json())
    return manifest


def build_manifest(path: str | os.PathLike[str], *, kind: str | None = None,
                   parent: str | os.PathLike[str] | Manifest | None = None,
                   relation: str | None = None, config: Any = None,
                   metrics: Iterable[Any] = (), signature: Signature | None = None,
                   inputs: Sequence[Any] | None = None, outputs: Sequence[Any] | None = None,
                   preprocessing: Preprocessing | Mapping[str, Any] | None = None,
                   class_names: Sequence[str] | None = None, precision: str | None = None,
                   role: str | None = None, recipe: Any = None, recipe_hash: str | None = None,
                   data: DataRef | Mapping[str, Any] | None = None, seed: int | None = None,
                   stamp: bool = False) -> Manifest:
    """The manifest of the artifact at ``path``, computed from its files, without writing.

    ``parent`` is the artifact this one was made from (a path, its Manifest, or its
    digest) and ``relation`` how (trained, distilled, pruned, quantized, exported,
    finetuned). ``inputs``/``outputs`` (TensorSpec or dicts) or ``signature`` override
    what the runtime reports; ``metrics`` are Measurements or EvalResults. ``config`` and
    ``recipe`` are any JSON-able object, dataclass or pydantic model; ``recipe_hash``
    defaults to the sha256 of the recipe's canonical JSON. ``stamp`` first writes the
    parent digest and recipe hash into an ONNX file's ``metadata_props``.
    """
    loc = locate(path, kind)
    provenance = _provenance(parent=parent, relation=relation, recipe=recipe,
                             recipe_hash=recipe_hash, data=data, seed=seed)
    if stamp and loc.kind == "onnx":
        onnx_meta.stamp(loc.path, {onnx_meta.PROP_PARENT_DIGEST: provenance.parent_digest,
                                   onnx_meta.PROP_RECIPE_HASH: provenance.recipe_hash})
    described = KINDS.get(loc.kind).describe(loc)
    if signature is None and (inputs is not None or outputs is not None):
        signature = Signature(inputs=[TensorSig.of(s) for s in inputs or ()],
                              outputs=[TensorSig.of(s) for s in outputs or ()])
    files = file_entries(loc)
    return _validated({
        "schema_version": SCHEMA_VERSION, "kind": loc.kind, "format": described.format,
        "role": role, "entry": loc.entry, "files": files, "digest": artifact_digest(files),
        "signature": signature or described.signature,
        "preprocessing": (Preprocessing.model_validate(dict(preprocessing))
                          if isinstance(preprocessing, Mapping) else preprocessing),
        "class_names": list(class_names) if class_names is not None else None,
        "precision": precision or described.precision,
        "config": jsonable(config) if config is not None else {},
        "metrics": [_measurement(m) for m in metrics], "provenance": provenance},
        source=str(loc.path))


def _provenance(*, parent: Any, relation: str | None, recipe: Any, recipe_hash: str | None,
                data: Any, seed: int | None) -> Provenance:
    recipe_json = jsonable(recipe) if recipe is not None else None
    commit, dirty = git_revision()
    return _validated_as(Provenance, {
        "parent_digest": digest_of(parent) if parent is not None else None,
        "relation": relation, "recipe": recipe_json,
        "recipe_hash": recipe_hash or (_recipe_hash(recipe_json) if recipe_json else None),
        "data": dict(data) if isinstance(data, Mapping) else data, "seed": seed,
        "git_revision": commit, "git_dirty": dirty, "created_at": utc_now(),
        "versions": versions()}, source="provenance")


def _validated(fields: dict[str, Any], *, source: str) -> Manifest:
    return _validated_as(Manifest, fields, source=source)


def _validated_as(model: Any, fields: dict[str, Any], *, source: str) -> Any:
    from pydantic import ValidationError

    try:
        return model(**fields)
    except ValidationError as e:
        err = e.errors()[0]
        where = ".".join(str(p) for p in err["loc"])
        raise ManifestError(f"cannot describe {source}: {where}: {err['msg']} (value "
                            f"{repr(err.get('input'))[:80]})") from None


def read_manifest(path: str | os.PathLike[str], *, verify: bool = True) -> Manifest:
    """The manifest of the artifact at ``path`` (the artifact, its directory, or the
    manifest file). ``verify`` recomputes every file digest and raises ManifestError when
    a file is missing or differs from the manifest."""
    from torchslim.artifacts.legacy import legacy_manifest

    loc = locate(path)
    if loc.manifest_path.is_file():
        manifest = parse_manifest(loc.manifest_path.read_bytes(), source=str(loc.manifest_path))
        if manifest.kind != loc.kind or manifest.entry != loc.entry:
            raise ManifestError(f"{loc.manifest_path} describes a {manifest.kind} with entry "
                                f"{manifest.entry!r}, not {loc.path}; write it again")
    else:
        manifest = legacy_manifest(loc)
    if verify:
        problems = check_files(manifest, loc.root)
        if problems:
            more = f" (+{len(problems) - 1} more)" if len(problems) > 1 else ""
            raise ManifestError(f"{loc.path} does not match its manifest: {problems[0]}{more}; "
                                "the files changed after it was written: write the manifest "
                                "again (write_manifest) or restore the files")
    return manifest


def check_files(manifest: Manifest, root: str | os.PathLike[str]) -> list[str]:
    """One line per file that is missing or whose size or sha256 differs (empty: intact)."""
    problems = []
    for f in manifest.files:
        p = Path(root) / f.path
        if not p.is_file():
            problems.append(f"{f.path} is missing")
            continue
        digest, size = sha256_file(p)
        if size != f.size or digest != f.sha256:
            problems.append(f"{f.path} has sha256 {digest[:12]}… ({size} bytes), the manifest "
                            f"says {f.sha256[:12]}… ({f.size} bytes)")
    return problems


def digest_of(artifact: str | os.PathLike[str] | Manifest) -> str:
    """The digest of an artifact given as a digest string, a Manifest, or a path (its
    manifest's digest, or computed from its files when it has none)."""
    if isinstance(artifact, Manifest):
        return artifact.digest
    text = os.fspath(artifact)
    if text.startswith(DIGEST_PREFIX):
        return _checked_digest(text)
    return read_manifest(text, verify=False).digest


def _checked_digest(text: str) -> str:
    from torchslim.artifacts.digest import is_hex_digest

    if not is_hex_digest(text[len(DIGEST_PREFIX):]):
        raise ManifestError(f"{text!r} is not a digest; expected 'sha256:' + 64 hex digits")
    return text


def recipe_hash(recipe: Any) -> str:
    """``sha256:`` + the sha256 of the recipe's canonical JSON (sorted keys, no spaces)."""
    return _recipe_hash(jsonable(recipe))


def _recipe_hash(recipe_json: Any) -> str:
    blob = json.dumps(recipe_json, sort_keys=True, separators=(",", ":"))
    return DIGEST_PREFIX + sha256_bytes(blob.encode("utf-8"))


def _measurement(m: Any) -> Measurement:
    if isinstance(m, Measurement):
        return m
    if hasattr(m, "to_dict"):  # an EvalResult
        return Measurement.from_result(m)
    return Measurement.model_validate(m)
