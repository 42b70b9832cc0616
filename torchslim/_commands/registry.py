"""`torchslim registry ...`: the local model registry (push, list, lineage, pull, ...)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from torchslim._commands._app import app, command, out_console
from torchslim.errors import ConfigError, IntegrityError

registry_app = typer.Typer(no_args_is_help=True, help="Versioned artifacts with their "
                           "compression lineage: push, list, show, lineage, alias, pull, "
                           "verify, rm, gc, export/import, publish to MLflow.")
app.add_typer(registry_app, name="registry")

Root = Annotated[Optional[Path], typer.Option("--registry", help="Registry directory (default: $TORCHSLIM_REGISTRY or the torchslim cache).")]
RefArg = Annotated[str, typer.Argument(help="NAME, NAME@VERSION or NAME@ALIAS.")]
AsJson = Annotated[bool, typer.Option("--json", help="Print JSON instead of text.")]


def _say(text: str) -> None:
    """One unwrapped, unhighlighted output line (scripts parse these)."""
    out_console.print(text, highlight=False, soft_wrap=True)


def _open(root: Path | None) -> Any:
    from torchslim.artifacts.registry import ModelRegistry

    return ModelRegistry(root)


def _tags(items: list[str] | None) -> dict[str, str]:
    tags = {}
    for item in items or ():
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"--tag {item!r} must be KEY=VALUE")
        tags[key] = value
    return tags


@command("push", on=registry_app)
def push(path: Annotated[Path, typer.Argument(help="Artifact with a manifest (or an old sidecar): .onnx, .xml, .safetensors or an LLM directory.")],
         name: Annotated[str, typer.Argument(help="Model name in the registry.")],
         version: Annotated[Optional[str], typer.Option(help="Explicit SemVer version, e.g. 1.2.0.")] = None,
         bump: Annotated[Optional[str], typer.Option(help="major, minor or patch: bump the latest version (default patch; the first is 1.0.0).")] = None,
         parent: Annotated[Optional[str], typer.Option(help="Parent version (NAME@VERSION), when the manifest names none.")] = None,
         relation: Annotated[Optional[str], typer.Option(help="How it was made from the parent: trained, distilled, pruned, quantized, exported, finetuned.")] = None,
         alias: Annotated[Optional[list[str]], typer.Option(help="Alias to point at it (repeatable), e.g. champion.")] = None,
         tag: Annotated[Optional[list[str]], typer.Option(help="KEY=VALUE tag (repeatable).")] = None,
         description: Annotated[str, typer.Option(help="Free text.")] = "",
         registry: Root = None) -> None:
    """Register an artifact as a new immutable version."""
    info = _open(registry).push(path, name, version=version, bump=bump, parent=parent,
                                relation=relation, aliases=alias or (), tags=_tags(tag),
                                description=description)
    _say(f"{info.ref}  {info.digest}" + (f"  (parent {info.parent})" if info.parent else ""))


@command("list", on=registry_app)
def list_(name: Annotated[Optional[str], typer.Argument(help="Only this model's versions.")] = None,
          as_json: AsJson = False, registry: Root = None) -> None:
    """Every version, with its aliases, relation and size."""
    from rich.table import Table

    infos = _open(registry).list_versions(name)
    if as_json:
        out_console.print_json(json.dumps([_summary(i) for i in infos]))
        return
    table = Table()
    for column in ("version", "format", "precision", "bytes", "relation", "parent", "aliases"):
        table.add_column(column, no_wrap=column in ("version", "parent"))
    for i in infos:
        table.add_row(i.ref, i.manifest.format, i.manifest.precision or "", f"{i.size:,}",
                      i.relation or "", i.parent or "", ", ".join(i.aliases))
    out_console.print(table)


@command("show", on=registry_app)
def show(ref: RefArg, as_json: AsJson = False, registry: Root = None) -> None:
    """One version: digest, files, signature, figures, provenance."""
    info = _open(registry).get(ref)
    if as_json:
        out_console.print_json(json.dumps({**_summary(info),
                                           "manifest": info.manifest.model_dump(mode="json")}))
        return
    m = info.manifest
    lines = [f"{info.ref}  {m.kind} {m.format} {m.precision or ''}", f"digest   {info.digest}",
             f"aliases  {', '.join(info.aliases) or '-'}   tags {info.tags or '-'}",
             f"parent   {info.parent or m.provenance.parent_digest or '-'} "
             f"({m.provenance.relation or '-'})"]
    lines += [f"file     {f.path}  {f.size:,} bytes  {f.sha256[:16]}…" for f in m.files]
    if m.signature:
        lines += [f"input    {s.name} {s.dtype} {s.shape}" for s in m.signature.inputs]
        lines += [f"output   {s.name} {s.dtype} {s.shape}" for s in m.signature.outputs]
    lines += [f"measured {x.runtime} top-1 {x.top1} p50 "
              f"{ {b: s.get('p50') for b, s in x.latency_ms.items()} }" for x in m.metrics]
    _say("\n".join(lines))


def _summary(info: Any) -> dict[str, Any]:
    return {"ref": info.ref, "digest": info.digest, "source_digest": info.source_digest,
            "kind": info.manifest.kind, "format": info.manifest.format,
            "precision": info.manifest.precision, "bytes": info.size,
            "relation": info.relation, "parent": info.parent, "aliases": list(info.aliases),
            "tags": info.tags, "description": info.description, "created_at": info.created_at}


@command("lineage", on=registry_app)
def lineage(ref: RefArg, as_json: AsJson = False, registry: Root = None) -> None:
    """The chain back to the original, with accuracy, latency and size deltas per edge."""
    found = _open(registry).lineage(ref)
    if as_json:
        out_console.print_json(json.dumps(found.to_dict()))
    else:
        _say("\n".join(found.lines()))


@command("alias", on=registry_app)
def alias(ref: Annotated[str, typer.Argument(help="NAME@VERSION to point at (NAME with --delete).")],
          name: Annotated[str, typer.Argument(help="Alias, e.g. champion or prod.")],
          delete: Annotated[bool, typer.Option("--delete", help="Remove the alias instead.")] = False,
          registry: Root = None) -> None:
    """Point an alias at a version (it moves if it pointed elsewhere)."""
    reg = _open(registry)
    if delete:
        reg.unalias(ref.split("@")[0], name)
        _say(f"removed {ref.split('@')[0]}@{name}")
        return
    info = reg.alias(ref, name)
    _say(f"{info.name}@{name} -> {info.version}")


@command("pull", on=registry_app, group="registry", writes="dest")
def pull(ref: RefArg, dest: Annotated[Path, typer.Argument(help="Directory to write the files and manifest into.")],
         registry: Root = None) -> None:
    """Write a version's files (verified against their digests) into a directory."""
    _say(str(_open(registry).pull(ref, dest)))


@command("verify", on=registry_app)
def verify(registry: Root = None) -> None:
    """Recompute every digest; report tampered or missing blobs and a damaged index."""
    report = _open(registry).verify()
    for problem in report.problems:
        _say(problem)
    if not report.ok:
        raise IntegrityError(f"registry {report.root}: {len(report.problems)} problem(s), "
                             f"first: {report.problems[0]}")
    _say(f"ok: {report.versions} versions, {report.blobs} blobs verified")


@command("rm", on=registry_app)
def rm(ref: RefArg, force: Annotated[bool, typer.Option("--force", help="Remove it even if other versions name it as their parent.")] = False,
       registry: Root = None) -> None:
    """Remove one version (its blobs go at the next gc)."""
    info = _open(registry).rm(ref, force=force)
    _say(f"removed {info.ref}")


@command("gc", on=registry_app)
def gc(registry: Root = None) -> None:
    """Remove unreferenced blobs, half-written temp files and stale checkouts."""
    r = _open(registry).gc()
    _say(f"removed {r.blobs_removed} blobs ({r.bytes_freed:,} bytes), {r.temp_removed} temp "
         f"files, {r.checkouts_removed} checkouts")


@command("export", on=registry_app)
def export(ref: RefArg, archive: Annotated[Path, typer.Argument(help="Archive to write (.tar, or .tar.gz).")],
           registry: Root = None) -> None:
    """One archive with the version and its whole lineage."""
    _say(str(_open(registry).export(ref, archive)))


@command("import", on=registry_app)
def import_(archive: Annotated[Path, typer.Argument(help="Archive written by `torchslim registry export`.")],
            registry: Root = None) -> None:
    """Add the versions of an exported archive, lineage links included."""
    for info in _open(registry).import_archive(archive):
        _say(f"{info.ref}  {info.digest}")


@command("publish-mlflow", on=registry_app)
def publish_mlflow(ref: RefArg,
                   tracking_uri: Annotated[str, typer.Option(help="MLflow tracking URI, e.g. sqlite:///mlflow.db or http://host:5000.")],
                   registry_uri: Annotated[Optional[str], typer.Option(help="MLflow registry URI (default: the tracking URI).")] = None,
                   experiment: Annotated[str, typer.Option(help="MLflow experiment for the run.")] = "torchslim",
                   artifact_location: Annotated[Optional[str], typer.Option(help="Artifact root when the experiment is created.")] = None,
                   model_name: Annotated[Optional[str], typer.Option(help="Registered model name (default: the registry name).")] = None,
                   registry: Root = None) -> None:
    """Register a version in MLflow's Model Registry (files, signature, metrics, lineage)."""
    from torchslim.artifacts.mlflow_publish import publish_mlflow as publish

    v = publish(ref, tracking_uri=tracking_uri, registry_uri=registry_uri,
                experiment=experiment, artifact_location=artifact_location,
                model_name=model_name, registry=_open(registry))
    state = "registered" if v.created else "already registered"
    _say(f"{state}: models:/{v.name}/{v.version} (run {v.run_id})")
