"""The manifest schema (version 1): one JSON document that says what an artifact is.

Every field, top level first (``?`` = may be null / absent)::

    schema_version   1; a reader refuses a newer version (upgrade torchslim)
    kind             checkpoint | onnx | openvino-ir | llm-quantized
    format           safetensors (checkpoint); onnx-fp32 | onnx-qdq | onnx-dynamic |
                     onnx-weight-only (onnx); openvino-ir; llm-weight-only | llm-w8a8 |
                     llm-float (llm-quantized)
    role?            recipe-final (a recipe's shipped artifact) | recipe-stage
    entry            the file a runtime opens ("model.onnx"), or "." for a directory
    files            [{path, size, sha256}], paths relative to the artifact's root (the
                     entry file's directory, or the artifact directory), sorted
    digest           "sha256:<hex>" over the files (torchslim.artifacts.digest)
    signature?       {inputs, outputs}: [{name, dtype, shape}], a dim is an int, a name
                     ("batch", "sequence") or null (dynamic, unnamed)
    preprocessing?   {layout, input_size, mean, std}
    class_names?     ["T-shirt/top", ...]
    precision?       fp32 | int8 | int4-weight-only | ...
    config           the full config that made the artifact (JSON object)
    metrics          [{name, dataset {name, split, n}, runtime, precision, threads, cpu,
                       batch_sizes, top1, top5, agreement, latency_ms {"1": {"p50": ..}},
                       items_per_s, bytes, peak_mem_bytes, extra {name: number}}]
    provenance       {parent_digest, relation (trained | distilled | pruned | quantized |
                      exported | finetuned), recipe (the recipe as JSON), recipe_hash,
                      data {name, split, digest, samples} (calibration / training data,
                      digest from torchslim.artifacts.data_digest), seed, git_revision and
                      git_dirty (of the torchslim checkout that ran; null for a wheel),
                      created_at (UTC ISO 8601), versions {torchslim, torch, onnx,
                      onnxruntime, openvino, python} (those importable), legacy (the old
                      sidecar this view was read from)}
    registry?        {id "name@version", source_digest, pushed_at}: set by a registry
                     push (the stored bytes may carry the id, e.g. ONNX metadata_props)

The manifest lives beside a file artifact as ``<entry>.manifest.json`` and inside a
directory artifact as ``torchslim.manifest.json``. An ONNX file also carries
``torchslim.parent_digest``, ``torchslim.recipe_hash`` and, once pushed,
``torchslim.registry_id`` in its ``metadata_props``.

Validation on read: unknown fields are refused, digests are 64 lowercase hex digits, file
paths are relative and stay inside the artifact, ``digest`` equals the digest of
``files``, ``format`` belongs to ``kind``.
"""

from __future__ import annotations

import json
from pathlib import PurePosixPath
from typing import Annotated, Any, Literal, Union

from pydantic import (AfterValidator, BaseModel, ConfigDict, Field, ValidationError,
                      field_validator, model_validator)

from torchslim.artifacts.digest import DIGEST_PREFIX, artifact_digest, is_hex_digest
from torchslim.errors import ManifestError

__all__ = ["SCHEMA_VERSION", "FORMATS", "RELATIONS", "ROLES", "FileEntry", "TensorSig",
           "Signature", "Preprocessing", "DatasetRef", "Measurement", "DataRef",
           "Provenance", "RegistryStamp", "Manifest", "parse_manifest"]

SCHEMA_VERSION = 1
FORMATS: dict[str, tuple[str, ...]] = {
    "checkpoint": ("safetensors",),
    "onnx": ("onnx-fp32", "onnx-qdq", "onnx-dynamic", "onnx-weight-only"),
    "openvino-ir": ("openvino-ir",),
    "llm-quantized": ("llm-weight-only", "llm-w8a8", "llm-float"),
}
RELATIONS = ("trained", "distilled", "pruned", "quantized", "exported", "finetuned")
ROLES = ("recipe-final", "recipe-stage")
Relation = Literal["trained", "distilled", "pruned", "quantized", "exported", "finetuned"]
Dim = Union[int, str, None]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _check_digest(value: str) -> str:
    if not (value.startswith(DIGEST_PREFIX) and is_hex_digest(value[len(DIGEST_PREFIX):])):
        raise ValueError(f"{value!r} is not a digest; expected 'sha256:' + 64 hex digits")
    return value


Digest = Annotated[str, AfterValidator(_check_digest)]


class FileEntry(_Strict):
    path: str
    size: int = Field(ge=0)
    sha256: str

    @field_validator("sha256")
    @classmethod
    def _hex(cls, v: str) -> str:
        if not is_hex_digest(v):
            raise ValueError(f"{v!r} is not 64 lowercase hex digits")
        return v

    @field_validator("path")
    @classmethod
    def _relative(cls, v: str) -> str:
        p = PurePosixPath(v)
        if not v or p.is_absolute() or ".." in p.parts or "\\" in v or str(p) != v:
            raise ValueError(f"file path {v!r} must be relative, normalized and inside the "
                             "artifact")
        return v


class TensorSig(_Strict):
    name: str
    dtype: str
    shape: list[Dim] | None = None

    @classmethod
    def of(cls, spec: Any) -> TensorSig:
        """From a ``torchslim.runtime.TensorSpec`` (or a dict with the same keys)."""
        if isinstance(spec, dict):
            return cls.model_validate(spec)
        return cls(name=spec.name, dtype=spec.dtype,
                   shape=None if spec.shape is None else list(spec.shape))


class Signature(_Strict):
    inputs: list[TensorSig]
    outputs: list[TensorSig]


class Preprocessing(_Strict):
    layout: str | None = None           # "NCHW", "NHWC", "NC", "tokens"
    input_size: list[int] | None = None  # one sample's shape, without the batch axis
    mean: list[float] | None = None
    std: list[float] | None = None


class DatasetRef(_Strict):
    name: str
    split: str | None = None
    n: int | None = Field(default=None, ge=0)


class Measurement(_Strict):
    """Figures measured on one runtime, with the conditions they were measured under."""

    name: str | None = None
    dataset: DatasetRef | None = None
    runtime: str
    precision: str | None = None
    threads: int | None = Field(default=None, ge=1)
    cpu: str | None = None
    batch_sizes: list[int] = Field(default_factory=list)
    top1: float | None = None
    top5: float | None = None
    agreement: float | None = None
    latency_ms: dict[str, dict[str, float]] = Field(default_factory=dict)
    items_per_s: dict[str, float] = Field(default_factory=dict)
    bytes: int | None = None
    peak_mem_bytes: int | None = None
    extra: dict[str, float] = Field(default_factory=dict)

    @classmethod
    def from_result(cls, result: Any, *, dataset: DatasetRef | dict[str, Any] | None = None
                    ) -> Measurement:
        """From an ``EvalResult`` or a report.json candidate dict; ``dataset`` names what
        the figures were measured on (``n`` defaults to the result's sample count)."""
        d = result.to_dict() if hasattr(result, "to_dict") else dict(result)
        ds = DatasetRef.model_validate(dataset) if isinstance(dataset, dict) else dataset
        if ds is not None and ds.n is None and d.get("n") is not None:
            ds = ds.model_copy(update={"n": int(d["n"])})
        latency = {str(b): dict(s) for b, s in (d.get("latency_ms") or {}).items()}
        return cls(name=d.get("name"), dataset=ds, runtime=str(d.get("runtime", "unknown")),
                   precision=d.get("precision"), threads=d.get("threads"),
                   cpu=(d.get("machine") or {}).get("cpu"),
                   batch_sizes=sorted(int(b) for b in latency), top1=d.get("top1"),
                   top5=d.get("top5"), agreement=d.get("agreement"), latency_ms=latency,
                   items_per_s={str(b): float(v) for b, v in (d.get("items_per_s") or {}).items()},
                   bytes=d.get("bytes"), peak_mem_bytes=d.get("peak_mem_bytes"))


class DataRef(_Strict):
    """The calibration or training data an artifact was made with."""

    name: str | None = None
    split: str | None = None
    digest: Digest | None = None
    samples: int | None = Field(default=None, ge=0)


class Provenance(_Strict):
    parent_digest: Digest | None = None
    relation: Relation | None = None
    recipe: dict[str, Any] | None = None
    recipe_hash: str | None = None
    data: DataRef | None = None
    seed: int | None = None
    git_revision: str | None = None
    git_dirty: bool | None = None
    created_at: str | None = None
    versions: dict[str, str] = Field(default_factory=dict)
    legacy: str | None = None


class RegistryStamp(_Strict):
    id: str
    source_digest: Digest
    pushed_at: str


class Manifest(_Strict):
    schema_version: int
    kind: str
    format: str
    role: str | None = None
    entry: str
    files: list[FileEntry] = Field(min_length=1)
    digest: Digest
    signature: Signature | None = None
    preprocessing: Preprocessing | None = None
    class_names: list[str] | None = None
    precision: str | None = None
    config: dict[str, Any] = Field(default_factory=dict)
    metrics: list[Measurement] = Field(default_factory=list)
    provenance: Provenance = Field(default_factory=Provenance)
    registry: RegistryStamp | None = None

    @model_validator(mode="after")
    def _consistent(self) -> Manifest:
        if self.schema_version != SCHEMA_VERSION:
            raise ValueError(f"schema_version {self.schema_version} is not {SCHEMA_VERSION}; "
                             "this torchslim reads manifest schema 1 (upgrade torchslim for "
                             "a newer one)")
        if self.kind not in FORMATS:
            raise ValueError(f"kind {self.kind!r} is not one of {', '.join(FORMATS)}")
        if self.format not in FORMATS[self.kind]:
            raise ValueError(f"format {self.format!r} is not a {self.kind} format "
                             f"({', '.join(FORMATS[self.kind])})")
        if self.role is not None and self.role not in ROLES:
            raise ValueError(f"role {self.role!r} is not one of {', '.join(ROLES)}")
        paths = [f.path for f in self.files]
        if len(set(paths)) != len(paths):
            raise ValueError("files lists a path twice")
        if self.entry != "." and self.entry not in paths:
            raise ValueError(f"entry {self.entry!r} is not one of the files")
        if self.digest != artifact_digest(self.files):
            raise ValueError(f"digest {self.digest} is not the digest of the files listed "
                             f"({artifact_digest(self.files)})")
        return self

    @property
    def size(self) -> int:
        return sum(f.size for f in self.files)

    def to_json(self) -> str:
        return json.dumps(self.model_dump(mode="json"), indent=2) + "\n"


def parse_manifest(data: str | bytes | dict[str, Any], *, source: str) -> Manifest:
    """Validate a manifest; ``ManifestError`` names ``source`` and the first bad field."""
    try:
        if isinstance(data, dict):
            return Manifest.model_validate(data)
        return Manifest.model_validate_json(data)
    except ValidationError as e:
        err = e.errors()[0]
        where = ".".join(str(p) for p in err["loc"]) or "manifest"
        raise ManifestError(f"{source} is not a valid torchslim manifest: {where}: "
                            f"{err['msg']} ({e.error_count()} problem(s)); write it again "
                            "with torchslim.artifacts.write_manifest") from None
