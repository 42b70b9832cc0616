"""Manifest views of artifacts written before the manifest existed (best effort).

- A checkpoint with its ``NAME.json`` sidecar (``torchslim.train.save_checkpoint``): the
  sidecar becomes ``config``; ``dataset`` and every ``metrics["<split>_top1"]`` become a
  torch fp32 measurement on that split (sample count unknown); ``torchslim_version`` the
  recorded version.
- An LLM directory with ``torchslim_quant.json`` (``torchslim.llm.save_quantized``): the
  quantization config becomes ``config``, format and precision come from its modules.

The old sidecars recorded no digests, so a view's ``files`` are what is on disk now: it
proves nothing about tampering before this read (a registry push records them from then
on). ``provenance.legacy`` names the sidecar the view came from; relation, parent and
data are unknown (null).
"""

from __future__ import annotations

import json
from typing import Any

from torchslim.artifacts.digest import artifact_digest
from torchslim.artifacts.files import file_entries, jsonable
from torchslim.artifacts.kinds import KINDS, LLM_QUANT_SIDECAR, Located
from torchslim.artifacts.schema import (SCHEMA_VERSION, DatasetRef, Manifest, Measurement,
                                        Provenance, parse_manifest)
from torchslim.errors import ManifestError

__all__ = ["legacy_manifest"]


def legacy_manifest(loc: Located) -> Manifest:
    """The best-effort manifest view of ``loc`` from its old sidecar (ManifestError when
    it has none)."""
    if loc.kind == "checkpoint":
        sidecar = loc.root / (loc.entry.rsplit(".", 1)[0] + ".json")
        if sidecar.is_file():
            return _view(loc, sidecar.name, *_checkpoint_fields(_read(sidecar)))
    if loc.kind == "llm-quantized" and (loc.root / LLM_QUANT_SIDECAR).is_file():
        quant = _read(loc.root / LLM_QUANT_SIDECAR)
        return _view(loc, LLM_QUANT_SIDECAR, quant.get("config") or {}, [], None)
    raise ManifestError(f"{loc.path} has no torchslim manifest ({loc.manifest_path.name} is "
                        "missing) and no sidecar to read one from; it is not a torchslim "
                        "artifact: write one with torchslim.artifacts.write_manifest")


def _read(path: Any) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise ManifestError(f"sidecar {path} is not valid JSON ({e}); delete it or write "
                            "a manifest with torchslim.artifacts.write_manifest") from e
    if not isinstance(data, dict):
        raise ManifestError(f"sidecar {path} holds {type(data).__name__}, not an object")
    return data


def _checkpoint_fields(sidecar: dict[str, Any]
                       ) -> tuple[dict[str, Any], list[Measurement], str | None]:
    dataset = sidecar.get("dataset")
    measured = []
    for key, value in (sidecar.get("metrics") or {}).items():
        if key.endswith("_top1") and isinstance(value, (int, float)):
            split = key[: -len("_top1")]
            measured.append(Measurement(
                runtime="torch", precision="fp32", top1=float(value),
                dataset=DatasetRef(name=str(dataset), split=split) if dataset else None))
    return sidecar, measured, sidecar.get("torchslim_version")


def _view(loc: Located, source: str, config: dict[str, Any], metrics: list[Measurement],
          version: str | None) -> Manifest:

    described = KINDS.get(loc.kind).describe(loc)
    files = file_entries(loc)
    return parse_manifest({
        "schema_version": SCHEMA_VERSION, "kind": loc.kind, "format": described.format,
        "entry": loc.entry, "files": [f.model_dump() for f in files],
        "digest": artifact_digest(files),
        "signature": described.signature.model_dump() if described.signature else None,
        "precision": described.precision, "config": jsonable(config),
        "metrics": [m.model_dump() for m in metrics],
        "provenance": Provenance(versions={"torchslim": version} if version else {},
                                 legacy=source).model_dump()},
        source=f"{loc.root / source} (legacy sidecar)")
