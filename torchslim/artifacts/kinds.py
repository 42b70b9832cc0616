"""Artifact kinds: which files make up an artifact, its format, precision and signature.

``locate(path)`` finds the kind from the path (a ``.safetensors`` checkpoint or its
``.json`` sidecar, an ``.onnx`` file, an OpenVINO ``.xml``, an LLM directory, or any of
their manifests); each kind is a ``KindSpec`` in the ``KINDS`` registry, so adding one
is one registration.

Where the manifest lives: ``<entry>.manifest.json`` beside a file artifact
(``model.onnx.manifest.json``), ``torchslim.manifest.json`` inside a directory artifact.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from torchslim._registry import Registry
from torchslim.artifacts import onnx_meta
from torchslim.artifacts.schema import Signature, TensorSig
from torchslim.errors import ManifestError

__all__ = ["KindSpec", "Described", "Located", "KINDS", "locate", "MANIFEST_SUFFIX",
           "DIR_MANIFEST", "LLM_QUANT_SIDECAR"]

MANIFEST_SUFFIX = ".manifest.json"
DIR_MANIFEST = "torchslim.manifest.json"
LLM_QUANT_SIDECAR = "torchslim_quant.json"  # torchslim.llm.model.QUANT_MANIFEST


@dataclass(frozen=True)
class Located:
    """An artifact on disk: its kind, root directory and entry ("." for a directory)."""

    kind: str
    root: Path
    entry: str

    @property
    def path(self) -> Path:
        return self.root if self.entry == "." else self.root / self.entry

    @property
    def manifest_path(self) -> Path:
        return self.root / (DIR_MANIFEST if self.entry == "." else self.entry + MANIFEST_SUFFIX)


@dataclass(frozen=True)
class Described:
    format: str
    precision: str | None
    signature: Signature | None


@dataclass(frozen=True)
class KindSpec:
    """``files(loc)`` lists the member files (relative paths, the entry first);
    ``describe(loc)`` reads format, precision and, where the runtime knows it, the
    signature."""

    name: str
    files: Callable[[Located], list[str]]
    describe: Callable[[Located], Described]


KINDS: Registry[KindSpec] = Registry("artifact kind")


def locate(path: str | os.PathLike[str], kind: str | None = None) -> Located:
    """The artifact at ``path`` (ManifestError when it is none torchslim knows)."""
    p = Path(path)
    if p.name.endswith(MANIFEST_SUFFIX) and p.name != DIR_MANIFEST:
        p = p.with_name(p.name[: -len(MANIFEST_SUFFIX)])
    elif p.name == DIR_MANIFEST:
        p = p.parent
    if p.suffix == ".json" and p.with_suffix(".safetensors").is_file():
        p = p.with_suffix(".safetensors")  # a checkpoint's sidecar names the checkpoint
    if not p.exists():
        raise ManifestError(f"artifact not found: {p}; check the path")
    found = kind or _kind_of(p)
    KINDS.get(found)  # UnknownNameError listing the kinds
    if p.is_dir():
        return Located(found, p, ".")
    return Located(found, p.parent, p.name)


def _kind_of(p: Path) -> str:
    if p.is_dir():
        manifest = p / DIR_MANIFEST
        if manifest.is_file():
            try:
                return str(json.loads(manifest.read_text())["kind"])
            except (ValueError, KeyError, TypeError):
                pass  # read_manifest reports the broken file
        if (p / LLM_QUANT_SIDECAR).is_file() or (p / "config.json").is_file():
            return "llm-quantized"
    else:
        by_suffix = {".safetensors": "checkpoint", ".onnx": "onnx", ".xml": "openvino-ir"}
        if p.suffix in by_suffix:
            return by_suffix[p.suffix]
    raise ManifestError(f"{p} is not a torchslim artifact (expected a .safetensors "
                        "checkpoint, an .onnx file, an OpenVINO .xml or an LLM directory "
                        "with config.json)")


def _session_signature(path: Path) -> tuple[Signature, str]:
    """(signature, precision) as the default runtime for ``path`` reports them."""
    from torchslim.runtime import open as open_session

    session = open_session(path, threads=1)
    try:
        return Signature(inputs=[TensorSig.of(s) for s in session.inputs],
                         outputs=[TensorSig.of(s) for s in session.outputs]), session.precision
    finally:
        session.close()


# --- checkpoint: NAME.safetensors (+ its NAME.json sidecar) --------------------------

def _checkpoint_files(loc: Located) -> list[str]:
    sidecar = Path(loc.entry).with_suffix(".json").name
    return [loc.entry] + ([sidecar] if (loc.root / sidecar).is_file() else [])


def _checkpoint_describe(loc: Located) -> Described:
    # The safetensors header (8-byte length + JSON) names each tensor's dtype and shape.
    names = {"F32": "fp32", "F16": "fp16", "BF16": "bf16", "F64": "fp64"}
    counts: dict[str, int] = {}
    try:
        with open(loc.path, "rb") as f:
            n = int.from_bytes(f.read(8), "little")
            if not 0 < n <= loc.path.stat().st_size - 8:
                raise ValueError(f"header length {n} does not fit the file")
            header = json.loads(f.read(n))
    except (OSError, ValueError) as e:
        raise ManifestError(f"{loc.path} is not a safetensors file ({e})") from e
    for key, info in header.items():
        if key != "__metadata__" and info.get("dtype") in names:
            n = 1
            for d in info.get("shape", []):
                n *= int(d)
            counts[names[info["dtype"]]] = counts.get(names[info["dtype"]], 0) + n
    precision = max(counts, key=counts.__getitem__) if counts else None
    return Described("safetensors", precision, None)  # a checkpoint has no fixed signature


KINDS.add("checkpoint", KindSpec("checkpoint", _checkpoint_files, _checkpoint_describe))


# --- ONNX (+ external data files) ------------------------------------------------------

def _onnx_files(loc: Located) -> list[str]:
    return [loc.entry] + [f for f in onnx_meta.external_files(loc.path) if f != loc.entry]


def _onnx_describe(loc: Located) -> Described:
    fmt, precision = onnx_meta.onnx_format(onnx_meta.load_proto(loc.path))
    signature, _ = _session_signature(loc.path)
    return Described(fmt, precision, signature)


KINDS.add("onnx", KindSpec("onnx", _onnx_files, _onnx_describe))


# --- OpenVINO IR: NAME.xml + NAME.bin -----------------------------------------------------

def _ir_files(loc: Located) -> list[str]:
    weights = Path(loc.entry).with_suffix(".bin").name
    return [loc.entry] + ([weights] if (loc.root / weights).is_file() else [])


def _ir_describe(loc: Located) -> Described:
    signature, precision = _session_signature(loc.path)
    return Described("openvino-ir", precision, signature)


KINDS.add("openvino-ir", KindSpec("openvino-ir", _ir_files, _ir_describe))


# --- an LLM directory (torchslim.llm.save_quantized, or a float Hugging Face layout) ------

def _dir_files(loc: Located) -> list[str]:
    """Every regular file below the directory except the manifest and hidden files (the
    temp files of an interrupted atomic write start with a dot)."""
    out = []
    for p in sorted(loc.root.rglob("*")):
        rel = p.relative_to(loc.root)
        if p.is_file() and not any(part.startswith(".") for part in rel.parts) \
                and rel.as_posix() != DIR_MANIFEST:
            out.append(rel.as_posix())
    return out


def _llm_describe(loc: Located) -> Described:
    quant = _read_json(loc.root / LLM_QUANT_SIDECAR)
    kinds = {m.get("kind") for m in (quant.get("modules") or {}).values()}
    cfg = quant.get("config") or {}
    if "weight_only" in kinds:
        fmt, precision = "llm-weight-only", f"int{cfg.get('bits', 4)}-weight-only"
    elif "w8a8" in kinds:
        fmt, precision = "llm-w8a8", "int8"
    else:
        fmt, precision = "llm-float", "fp32"
    vocab = _read_json(loc.root / "config.json").get("vocab_size")
    signature = Signature(
        inputs=[TensorSig(name="input_ids", dtype="int64", shape=["batch", "sequence"])],
        outputs=[TensorSig(name="logits", dtype="float32",
                           shape=["batch", "sequence", int(vocab) if vocab else None])])
    return Described(fmt, precision, signature)


def _read_json(path: Path) -> dict:
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text())
    except ValueError as e:
        raise ManifestError(f"{path} is not valid JSON ({e})") from e
    return data if isinstance(data, dict) else {}


KINDS.add("llm-quantized", KindSpec("llm-quantized", _dir_files, _llm_describe))
