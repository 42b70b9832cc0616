"""Publish a finished recipe run to the model registry as a chain of versions.

``publish_run("runs/x", "fashion")`` reads the run's ``pipeline.json`` and pushes, in
order: the baseline's ONNX artifact (relation ``trained``), the artifact of every stage
that was kept and changed the model (``distilled``, ``pruned``, ``finetuned``,
``quantized``) and, last, the shipped file (``exported``, role ``recipe-final``). Each
gets a manifest (``write_manifest``) whose parent is the link before it, so
``ModelRegistry.lineage("fashion@latest")`` walks from the shipped model back to the
starting one. A stage that was rolled back or skipped is not in the chain, and the log
says so.

Each manifest carries the stage's validation figures on the target runtime, as the stage
log measured them (so every lineage edge compares the same split), the test figures from
``report.json`` where the run measured that artifact on the test split, and the recipe
with its hash. Publishing the same run again adds no versions: the registry recognises
the same bytes.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torchslim import _io
from torchslim.artifacts import Measurement, ModelRegistry, VersionInfo, write_manifest
from torchslim.errors import ConfigError
from torchslim.pipeline.stages import ARTIFACT, STAGES

__all__ = ["publish_run", "ChainLink", "chain_of", "RELATION"]

logger = logging.getLogger(__name__)

# How each stage kind makes its artifact from the one before (the manifest's relation).
# An export stage changes nothing: its artifact is the previous one, shipped as the final.
RELATION = {"baseline": "trained", "distill": "distilled", "distill_embeddings": "distilled",
            "prune": "pruned", "finetune": "finetuned", "quantize": "quantized",
            "export": "exported"}

_missing = sorted(set(STAGES.names()) - set(RELATION))
if _missing:  # a new stage kind needs its relation here, caught at import
    raise RuntimeError(f"stage kinds without a registry relation: {_missing}")


@dataclass(frozen=True)
class ChainLink:
    """One version to push: the artifact, how it was made from the link before, and the
    stage log's validation figures of it."""

    stage: str                       # "00-baseline", "02-prune", ..., "final"
    path: Path
    relation: str
    role: str                        # "recipe-stage" or "recipe-final"
    metrics: dict[str, Any] | None   # pipeline.json's metrics block (val split)


def chain_of(out: str | os.PathLike[str]) -> list[ChainLink]:
    """The chain of the finished run in ``out``: baseline, kept stages, shipped artifact.
    ConfigError when there is no run there or it did not finish."""
    out = Path(out)
    log = _read(out / "pipeline.json", f"{out} holds no finished recipe run (no "
                                       "pipeline.json); run it with `torchslim run RECIPE`")
    if "verdict" not in log:
        raise ConfigError(f"the run in {out} did not finish (pipeline.json has no verdict); "
                          "finish it with `torchslim run RECIPE --resume` before publishing")
    baseline = next((s for s in log["stages"] if s.get("kind") == "baseline"), {})
    links = [ChainLink("00-baseline", _io.inside(out, "stages", "00-baseline", ARTIFACT),
                       RELATION["baseline"], "recipe-stage", baseline.get("metrics"))]
    for stage in log["stages"]:
        if stage.get("kind") == "baseline":
            continue
        if stage.get("status") != "done":
            logger.info("publish: stage %s was %s (every attempt rolled back), so it is not "
                        "in the chain", stage["stage"], stage.get("status"))
            continue
        attempt = stage["attempts"][stage["accepted"]]
        path = _io.inside(out, attempt["artifact"])
        if path == links[-1].path:
            continue   # export: the artifact before it, unchanged
        links.append(ChainLink(stage["stage"], path, RELATION[stage["kind"]], "recipe-stage",
                               attempt.get("metrics")))
    shipped = _shipped(out)
    # the shipped file is a copy of the last kept artifact: the same validation figures
    links.append(ChainLink("final", shipped, RELATION["export"], "recipe-final",
                           links[-1].metrics))
    return links


def publish_run(output_dir: str | os.PathLike[str], name: str, *,
                registry: ModelRegistry | str | os.PathLike[str] | None = None,
                aliases: Iterable[str] = ()) -> list[VersionInfo]:
    """Push the chain of the finished run in ``output_dir`` to ``registry`` (a
    ModelRegistry, its root directory, or None for the default) under ``name``; returns
    the versions pushed, baseline first. The shipped artifact, pushed last, is
    ``name@latest`` ("latest" is reserved, never an alias) and gets ``aliases``."""
    out = Path(output_dir)
    reg = registry if isinstance(registry, ModelRegistry) else ModelRegistry(registry)
    links = chain_of(out)
    recipe = _read(out / "recipe.json", f"{out}/recipe.json is missing; run the recipe "
                                        "again with --overwrite").get("recipe") or {}
    dataset, rows = _test_rows(out)
    pushed: list[VersionInfo] = []
    for i, link in enumerate(links):
        test = [Measurement.from_result(r, dataset=dataset) for r in rows
                if link.stage != "00-baseline" and r["name"].startswith(f"{link.stage}-")]
        write_manifest(link.path, parent=links[i - 1].path if i else None,
                       relation=link.relation, role=link.role, recipe=recipe,
                       metrics=[*_val_measurement(link, dataset), *test],
                       seed=recipe.get("seed"))
        info = reg.push(link.path, name, parent=pushed[-1].ref if pushed else None,
                        aliases=list(aliases) if link.role == "recipe-final" else (),
                        description=f"recipe {recipe.get('name', '?')}: {link.stage}")
        logger.info("published %s as %s (%s)", link.stage, info.ref, link.relation)
        pushed.append(info)
    return pushed


def _shipped(out: Path) -> Path:
    """Where the run shipped its artifact: the export stage's ``artifact``, else
    model.onnx (as ``summary.finish`` writes it), relative to the output."""
    recipe = _read(out / "recipe.json", f"{out}/recipe.json is missing; run the recipe "
                                        "again with --overwrite").get("recipe") or {}
    export = next((s for s in recipe.get("stages", []) if s.get("kind") == "export"), {})
    shipped = _io.inside(out, export.get("artifact") or "model.onnx")
    if not shipped.is_file():
        raise ConfigError(f"the run's shipped artifact {shipped} is missing; run the recipe "
                          "again with --overwrite")
    return shipped


def _val_measurement(link: ChainLink, dataset: dict[str, Any]) -> list[Measurement]:
    """The stage log's validation figures of the artifact (p50 only: what it timed)."""
    m = link.metrics
    if not m:
        return []
    p50 = m.get("p50_ms") or {}
    return [Measurement(name=f"{link.stage}-val", runtime=str(m.get("runtime", "unknown")),
                        precision=m.get("precision"),
                        dataset={"name": dataset.get("name") or "unknown", "split": "val"},
                        top1=m.get("val_top1"), bytes=m.get("bytes"),
                        batch_sizes=sorted(int(b) for b in p50),
                        latency_ms={str(b): {"p50": float(v)} for b, v in p50.items()})]


def _test_rows(out: Path) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """report.json's dataset and its candidate rows, named "<stage>-<precision>-<runtime>"
    and "final-..." by the run (empty without a readable report: figures are optional)."""
    try:
        report = json.loads((out / "report.json").read_text())
        ds = report["dataset"]
        dataset = {"name": ds.get("name"), "split": ds.get("split", "test"), "n": ds.get("n")}
        return dataset, list(report["candidates"])
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        logger.warning("publish: %s/report.json is unreadable; the manifests get the "
                       "validation figures only", out)
        return {}, []


def _read(path: Path, missing: str) -> dict[str, Any]:
    """A JSON file the runner wrote; ConfigError ``missing`` when it is not there."""
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise ConfigError(missing) from None
    except ValueError as e:
        raise ConfigError(f"{path} is not valid JSON ({e}); run the recipe again") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path} is not a torchslim run file; run the recipe again")
    return data
