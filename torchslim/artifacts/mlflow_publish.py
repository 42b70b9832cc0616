"""Publish a registry version to MLflow's Model Registry (the optional ``mlflow`` extra).

``publish_mlflow("fashion-int8@1.2.0", tracking_uri="sqlite:///mlflow.db")`` makes one run
in the experiment (default ``torchslim``) that holds:

- the version's files and manifest under the artifact path ``model``, with an ``MLmodel``
  file carrying the signature (dynamic dims as -1; their names in a tag);
- its measured figures as metrics (``<runtime or name>.top1``, ``.p50_ms.b<batch>``,
  ``.items_per_s.b<batch>``), its size, and the first lineage edge's deltas
  (``lineage.top1_delta``, ``lineage.speedup.b<batch>``, ``lineage.size_ratio``);
- kind, format, precision, relation and recipe hash as params;
- the lineage as tags: ``torchslim.lineage`` ("a@1 <- b@1 <- ..."), the parent's
  registry id and digest, and ``torchslim.parent_model_version`` (``models:/NAME/N``)
  when the parent was published to the same MLflow before.

It then registers a model version (registered model = the registry name, unless given)
from that run, with the same tags, and points the version's registry aliases at it.
Publishing a version whose digest the registered model already has is a no-op.
"""

from __future__ import annotations

import json
import logging
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torchslim.artifacts.index import VersionInfo
from torchslim.artifacts.schema import Manifest
from torchslim.errors import MissingDependencyError, RegistryError

__all__ = ["publish_mlflow", "MlflowVersion"]

logger = logging.getLogger(__name__)

_TAG_LIMIT = 5000  # MLflow's smallest tag value limit across its backends


@dataclass(frozen=True)
class MlflowVersion:
    name: str
    version: str
    run_id: str
    source: str
    parent_uri: str | None
    created: bool  # False when the registered model already held this digest


def _mlflow() -> Any:
    try:
        import mlflow
    except ImportError as e:
        raise MissingDependencyError("publishing to MLflow needs: pip install "
                                     "'torchslim[mlflow]'") from e
    return mlflow


def publish_mlflow(ref: str, *, tracking_uri: str, registry_uri: str | None = None,
                   experiment: str = "torchslim", artifact_location: str | None = None,
                   model_name: str | None = None, registry: Any = None) -> MlflowVersion:
    """Register ``ref`` of ``registry`` (a ModelRegistry, default the default one) in the
    MLflow at ``tracking_uri``; see the module docstring for what is logged."""
    from torchslim.artifacts.registry import ModelRegistry

    mlflow = _mlflow()
    from mlflow.exceptions import MlflowException

    registry = registry if registry is not None else ModelRegistry()
    info = registry.get(ref)
    lineage = registry.lineage(ref)
    name = model_name or info.name
    client = mlflow.MlflowClient(tracking_uri=tracking_uri,
                                 registry_uri=registry_uri or tracking_uri)
    try:
        existing = _published(client, name, info.digest)
        if existing is not None:
            logger.info("%s is already MLflow model %s version %s", info.ref, name,
                        existing.version)
            return MlflowVersion(name, str(existing.version), existing.run_id, existing.source,
                                 existing.tags.get("torchslim.parent_model_version"), False)
        tags = _tags(info, lineage, client)
        run_id, source = _log_run(mlflow, client, registry, info, lineage, tags,
                                  experiment=experiment, artifact_location=artifact_location)
        version = _register(client, name, info, run_id, source, tags)
    except MlflowException as e:
        raise RegistryError(f"MLflow at {tracking_uri} refused {info.ref}: "
                            f"{str(e).splitlines()[0]}") from e
    logger.info("published %s as MLflow model %s version %s", info.ref, name, version)
    return MlflowVersion(name, str(version), run_id, source,
                         tags.get("torchslim.parent_model_version"), True)


def _published(client: Any, name: str | None, digest: str) -> Any:
    """The MLflow model version (of ``name``, or of any model) tagged with ``digest``."""
    from mlflow.exceptions import MlflowException

    where = f"tags.`torchslim.digest` = '{digest}'"
    try:
        found = client.search_model_versions(f"name = '{name}' and {where}" if name else where)
    except MlflowException:  # no such registered model yet
        return None
    return found[0] if found else None


def _tags(info: VersionInfo, lineage: Any, client: Any) -> dict[str, str]:
    m, prov = info.manifest, info.manifest.provenance
    tags = {"torchslim.registry_id": info.ref, "torchslim.digest": info.digest,
            "torchslim.source_digest": info.source_digest, "torchslim.kind": m.kind,
            "torchslim.format": m.format, "torchslim.precision": m.precision,
            "torchslim.relation": prov.relation, "torchslim.parent": info.parent,
            "torchslim.parent_digest": prov.parent_digest,
            "torchslim.recipe_hash": prov.recipe_hash, "torchslim.git_revision": prov.git_revision,
            "torchslim.lineage": " <- ".join(i.ref for i in lineage.chain),
            "torchslim.lineage_edges": json.dumps([e.describe() for e in lineage.edges])}
    if m.signature is not None:
        tags["torchslim.signature"] = json.dumps(m.signature.model_dump(mode="json"))
    if len(lineage.chain) > 1:
        parent_version = _published(client, None, lineage.chain[1].digest)
        if parent_version is not None:
            tags["torchslim.parent_model_version"] = (f"models:/{parent_version.name}/"
                                                      f"{parent_version.version}")
    return {k: _fit(v) for k, v in tags.items() if v is not None}


def _fit(value: str) -> str:
    return value if len(value) <= _TAG_LIMIT else value[: _TAG_LIMIT - 1] + "…"


def _log_run(mlflow: Any, client: Any, registry: Any, info: VersionInfo, lineage: Any,
             tags: dict[str, str], *, experiment: str, artifact_location: str | None
             ) -> tuple[str, str]:
    found = client.get_experiment_by_name(experiment)
    experiment_id = found.experiment_id if found is not None else client.create_experiment(
        experiment, artifact_location=artifact_location)
    run = client.create_run(experiment_id, run_name=info.ref, tags=tags)
    run_id = run.info.run_id
    m = info.manifest
    params = {"kind": m.kind, "format": m.format, "precision": m.precision,
              "relation": m.provenance.relation, "recipe_hash": m.provenance.recipe_hash,
              "seed": m.provenance.seed}
    for key, value in params.items():
        if value is not None:
            client.log_param(run_id, key, str(value))
    for key, value in _metrics(m, lineage).items():
        client.log_metric(run_id, key, value)
    with tempfile.TemporaryDirectory(prefix="torchslim-mlflow-") as tmp:
        registry.pull(info.ref, tmp)  # every file verified against its digest
        _mlmodel(mlflow, m, info, run_id).save(str(Path(tmp) / "MLmodel"))
        client.log_artifacts(run_id, tmp, artifact_path="model")
    client.set_terminated(run_id)
    return run_id, f"{run.info.artifact_uri}/model"


def _metrics(m: Manifest, lineage: Any) -> dict[str, float]:
    out: dict[str, float] = {"size_bytes": float(m.size)}
    for x in m.metrics:
        prefix = _metric_name(x.name or x.runtime)
        for key in ("top1", "top5", "agreement"):
            if getattr(x, key) is not None:
                out[f"{prefix}.{key}"] = float(getattr(x, key))
        for batch, stats in x.latency_ms.items():
            if "p50" in stats:
                out[f"{prefix}.p50_ms.b{batch}"] = float(stats["p50"])
        for batch, rate in x.items_per_s.items():
            out[f"{prefix}.items_per_s.b{batch}"] = float(rate)
        for key, value in x.extra.items():
            out[f"{prefix}.{_metric_name(key)}"] = float(value)
    if lineage.edges:
        e = lineage.edges[0]
        if e.top1_delta is not None:
            out["lineage.top1_delta"] = e.top1_delta
        for batch, s in e.speedup.items():
            out[f"lineage.speedup.b{batch}"] = s
        if e.size_ratio:
            out["lineage.size_ratio"] = e.size_ratio
    return out


def _metric_name(text: str) -> str:
    return re.sub(r"[^0-9A-Za-z_\-. /]", "_", text)


def _mlmodel(mlflow: Any, m: Manifest, info: VersionInfo, run_id: str) -> Any:
    from mlflow.models import Model

    return Model(artifact_path="model", run_id=run_id, signature=_signature(m),
                 metadata={"torchslim_registry_id": info.ref, "torchslim_digest": info.digest,
                           "torchslim_entry": m.entry, "torchslim_kind": m.kind})


def _signature(m: Manifest) -> Any:
    """MLflow's tensor signature (a dynamic dim is -1), or None when the manifest has none
    or a dtype numpy does not know."""
    import numpy as np
    from mlflow.models import ModelSignature
    from mlflow.types import Schema, TensorSpec

    if m.signature is None:
        return None

    def schema(specs: list) -> Any:
        return Schema([TensorSpec(np.dtype(s.dtype), tuple(d if isinstance(d, int) else -1
                                                           for d in (s.shape or [-1])), s.name)
                       for s in specs])

    try:
        return ModelSignature(inputs=schema(m.signature.inputs),
                              outputs=schema(m.signature.outputs))
    except TypeError as e:
        logger.warning("no MLflow signature for %s: %s", m.entry, e)
        return None


def _register(client: Any, name: str, info: VersionInfo, run_id: str, source: str,
              tags: dict[str, str]) -> str:
    from mlflow.exceptions import MlflowException

    try:
        client.get_registered_model(name)
    except MlflowException:
        client.create_registered_model(name, description=f"torchslim registry model {info.name}")
    mv = client.create_model_version(name, source=source, run_id=run_id, tags=tags,
                                     description=info.description or None)
    for alias in info.aliases:
        client.set_registered_model_alias(name, alias, mv.version)
    return str(mv.version)
