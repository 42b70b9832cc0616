"""`torchslim serve ARTIFACT_OR_REPO` and `torchslim serve --config repo.yaml`: the Open
Inference Protocol (KServe v2) over HTTP and gRPC, with dynamic batching."""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from torchslim._commands._app import command, out_console, parse_sizes
from torchslim.errors import ConfigError

Opt = typer.Option


@command("serve")
def serve_cmd(
        source: Annotated[Optional[str], typer.Argument(
            metavar="ARTIFACT_OR_REPO", help="An artifact file, a MODEL/VERSION directory, a "
            "directory of models, or name@alias from the artifact registry.")] = None,
        config: Annotated[Optional[Path], Opt(help="YAML model-repository file instead of "
                                                   "ARTIFACT_OR_REPO.")] = None,
        host: Annotated[Optional[str], Opt(help="Address to bind (default 127.0.0.1).")] = None,
        http_port: Annotated[Optional[int], Opt(help="HTTP port, 0 for any free one (default 8000).")] = None,
        grpc_port: Annotated[Optional[int], Opt(help="gRPC port, 0 for any free one (default 8001).")] = None,
        max_batch_size: Annotated[Optional[int], Opt(help="Rows per execution; 1 turns batching off (default 32).")] = None,
        max_queue_delay_ms: Annotated[Optional[float], Opt(help="Longest wait for a batch to fill (default 2).")] = None,
        preferred_batch_sizes: Annotated[Optional[str], Opt(help="Sizes to dispatch at, e.g. 8,16.")] = None,
        max_queue_size: Annotated[Optional[int], Opt(help="Requests waiting before 429 (default 256).")] = None,
        timeout_ms: Annotated[Optional[float], Opt(help="Default per-request timeout (504) (default 30000).")] = None,
        instances: Annotated[Optional[int], Opt(help="Session instances per model (default 1).")] = None,
        threads: Annotated[Optional[int], Opt(help="Threads per instance (default cores / instances).")] = None,
        version_policy: Annotated[Optional[str], Opt(help="latest, latest:N, all, or versions like 1,3.")] = None,
        runtime: Annotated[Optional[str], Opt(help="onnxruntime or openvino for .onnx files.")] = None,
        access_log: Annotated[bool, Opt("--access-log/--no-access-log", help="One JSON line per request on stderr.")] = True,
) -> None:
    """Serve compressed artifacts over the Open Inference Protocol (HTTP and gRPC) with
    dynamic batching. SIGTERM drains and exits 0; SIGHUP reloads the models."""
    from torchslim.serve import InferenceServer, config_for_source, load_config

    overrides: dict[str, Any] = {
        "host": host, "http_port": http_port, "grpc_port": grpc_port,
        "max_batch_size": max_batch_size, "max_queue_delay_ms": max_queue_delay_ms,
        "max_queue_size": max_queue_size, "default_timeout_ms": timeout_ms,
        "instances": instances, "threads": threads, "version_policy": version_policy,
        "runtime": runtime, "access_log": access_log,
        "preferred_batch_sizes": parse_sizes(preferred_batch_sizes) if preferred_batch_sizes else None}
    overrides = {k: v for k, v in overrides.items() if v is not None}
    if (source is None) == (config is None):
        raise ConfigError("pass either ARTIFACT_OR_REPO or --config repo.yaml (one of them)")
    if config is not None:
        server_config, template = load_config(config, overrides=overrides)
    else:
        server_config, template = config_for_source(str(source), overrides=overrides)
    if not server_config.models and server_config.repository is None:
        raise ConfigError("the config serves no models; add some under 'models:' or set "
                          "'repository:'")
    _access_logs(server_config.access_log)
    InferenceServer(server_config, template=template).run(on_ready=_print_ready)


def _access_logs(enabled: bool) -> None:
    """Access records as bare JSON lines on stderr, whatever --quiet says about the rest."""
    access = logging.getLogger("torchslim.serve.access")
    access.handlers.clear()
    access.propagate = False
    if enabled:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(message)s"))
        access.addHandler(handler)
        access.setLevel(logging.INFO)
    else:
        access.setLevel(logging.CRITICAL)


def _print_ready(server: Any) -> None:
    for name in server.repository.names():
        entry = server.repository.entry(name)
        for mv in entry.versions.values():
            out_console.print(f"model {name} version {mv.version}: {mv.files.artifact} on "
                              f"{mv.runtime} ({mv.precision}), max batch {mv.max_batch_size}, "
                              f"{len(mv.sessions)} instance(s)", highlight=False, soft_wrap=True)
    host = server.config.host
    grpc = f"  gRPC {host}:{server.grpc_port}" if server.grpc_port else ""
    out_console.print(f"ready: HTTP http://{host}:{server.http_port}/v2{grpc}", highlight=False,
                      soft_wrap=True)
