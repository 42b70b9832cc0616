"""Artifacts that carry their own story: one manifest per artifact, and a versioned
registry that records how each compressed model was made from the one before.

>>> from torchslim.artifacts import write_manifest, ModelRegistry, Measurement
>>> write_manifest("out/model.safetensors", relation="trained", inputs=session.inputs,
...                outputs=session.outputs, metrics=[result])            # doctest: +SKIP
>>> write_manifest("out/model-int8.onnx", parent="out/model.safetensors",
...                relation="quantized", config=quant_config, recipe=recipe,
...                data=DataRef(digest=d, samples=n), seed=0)           # doctest: +SKIP
>>> ModelRegistry().push("out/model-int8.onnx", "fashion-int8", aliases=["champion"])
>>> ModelRegistry().lineage("fashion-int8@champion").lines()           # doctest: +SKIP

- ``schema``: the manifest (fields and validation rules in its docstring);
- ``manifest``: ``write_manifest`` / ``build_manifest`` / ``read_manifest`` — files,
  digests, format, precision and signature are computed from the artifact itself;
- ``legacy``: old checkpoint and LLM sidecars read as manifest views;
- ``registry``: ``ModelRegistry`` (push, list, show, lineage, alias, pull, resolve,
  verify, rm, gc, export / import) over ``store`` (blobs) and ``index`` (SQLite);
- ``mlflow_publish``: ``publish_mlflow`` (the ``torchslim[mlflow]`` extra).
"""

from torchslim.artifacts.digest import artifact_digest, data_digest
from torchslim.artifacts.lineage import Edge, Lineage
from torchslim.artifacts.manifest import (build_manifest, check_files, digest_of, read_manifest,
                                          recipe_hash, write_manifest)
from torchslim.artifacts.mlflow_publish import MlflowVersion, publish_mlflow
from torchslim.artifacts.registry import (GcReport, ModelRegistry, VerifyReport, VersionInfo,
                                          default_root, resolve)
from torchslim.artifacts.schema import (RELATIONS, SCHEMA_VERSION, DataRef, DatasetRef,
                                        FileEntry, Manifest, Measurement, Preprocessing,
                                        Provenance, Signature, TensorSig)

__all__ = [
    # the manifest
    "SCHEMA_VERSION", "RELATIONS", "Manifest", "FileEntry", "Signature", "TensorSig",
    "Preprocessing", "Measurement", "DatasetRef", "DataRef", "Provenance",
    "write_manifest", "build_manifest", "read_manifest", "check_files", "digest_of",
    "recipe_hash", "artifact_digest", "data_digest",
    # the registry
    "ModelRegistry", "VersionInfo", "VerifyReport", "GcReport", "Lineage", "Edge",
    "default_root", "resolve",
    # MLflow
    "publish_mlflow", "MlflowVersion",
]
