"""`torchslim serve` under closed-loop load, against itself unbatched and a plain peer.

    python bench/serve_load.py                                  # builds a small model
    python bench/serve_load.py --int8 runs/demo/x-int8.onnx --fp32 runs/demo/teacher.onnx
    python bench/serve_load.py --requests 50 --rounds 1         # a smoke run

For each artifact (the INT8 one and its FP32 teacher) three servers answer the same KServe
v2 requests (one image each, the binary tensor extension that tritonclient uses) over
loopback HTTP:

* ``torchslim-batching``: ``torchslim serve`` with dynamic batching (max batch 32, 2 ms);
* ``torchslim-max-batch-1``: the same server with ``--max-batch-size 1``;
* the peer: Seldon MLServer when it is installed, else a plain FastAPI endpoint calling
  ONNX Runtime once per request on FastAPI's thread pool (the JSON names which).

Every server is its own process on the same ``--threads`` ONNX Runtime threads. At 1, 8,
32 and 64 closed-loop clients (each sends its next request when the last one returns,
``--requests`` per measurement) the candidates are measured in turn, A B C A B C, for
``--rounds`` rounds, with untimed requests and a pause at each switch; figures are the
medians over rounds. Mean batch size is the server's own inference/execution count ratio.
Without ``--int8/--fp32`` a resnet14 (width 16, untrained: speed does not depend on the
weights) is exported FP32 and as static-PTQ INT8 QDQ.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from _common import one_line, setup_logging, write_results

from torchslim.runtime import open as open_session
from torchslim.serve.sources import model_name_for

BENCH = "serve_load"
HERE = Path(__file__).resolve()
CLIENTS = (1, 8, 32, 64)
MAX_BATCH, QUEUE_DELAY_MS = 32, 2.0
ROW_KEYS = ("model", "method", "runtime", "top1", "agreement", "p50_ms_b1", "p50_ms_b32",
            "speedup_b32", "bytes", "seconds", "error")


# ---------------------------------------------------------------------- the peer server


def run_peer(artifact: str, threads: int) -> None:
    """A plain FastAPI endpoint: parse the v2 binary request, run ONNX Runtime for this one
    request on FastAPI's thread pool, answer in the same binary form. No batching."""
    import onnxruntime as ort
    import uvicorn
    from fastapi import FastAPI, Request, Response
    from starlette.concurrency import run_in_threadpool

    options = ort.SessionOptions()
    options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
    session = ort.InferenceSession(artifact, options, providers=["CPUExecutionProvider"])
    name, out_name = session.get_inputs()[0].name, session.get_outputs()[0].name
    app = FastAPI()

    async def infer(model, request):  # noqa: ANN001, ANN202 (typed below)
        body = await request.body()
        size = int(request.headers["inference-header-content-length"])
        spec = json.loads(body[:size])["inputs"][0]
        x = np.frombuffer(body[size:], dtype=np.float32).reshape(spec["shape"])
        y = (await run_in_threadpool(session.run, [out_name], {name: x}))[0]
        raw = y.tobytes()
        header = json.dumps({"model_name": model, "outputs": [{
            "name": out_name, "datatype": "FP32", "shape": list(y.shape),
            "parameters": {"binary_data_size": len(raw)}}]}).encode()
        return Response(header + raw, media_type="application/octet-stream",
                        headers={"Inference-Header-Content-Length": str(len(header))})

    # real types, not the strings `from __future__ import annotations` makes: FastAPI
    # cannot resolve names imported inside this function
    infer.__annotations__ = {"model": str, "request": Request, "return": Response}
    app.post("/v2/models/{model}/infer")(infer)

    config = uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning",
                            access_log=False, http="h11", loop="asyncio")
    server = uvicorn.Server(config)

    async def serve() -> None:
        task = asyncio.create_task(server.serve())
        while not server.started:
            await asyncio.sleep(0.05)
        port = server.servers[0].sockets[0].getsockname()[1]
        print(f"ready: HTTP http://127.0.0.1:{port}/v2", flush=True)
        await task

    asyncio.run(serve())


# ---------------------------------------------------------------------- candidates


@dataclass
class Candidate:
    model: str
    method: str
    artifact: Path
    command: list[str]
    torchslim: bool = False   # exposes torchslim's /metrics (mean batch size)
    input_name: str = "input"
    served_name: str = "model"
    proc: subprocess.Popen | None = None
    port: int = 0
    error: str | None = None
    agreement: float | None = None
    seconds: float = 0.0
    rounds: dict[int, list[dict[str, float]]] = field(default_factory=dict)

    def start(self) -> None:
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        self.proc = subprocess.Popen(self.command, stdout=subprocess.PIPE,
                                     stderr=subprocess.DEVNULL, text=True, env=env)
        for line in self.proc.stdout:  # type: ignore[union-attr]
            found = re.search(r"ready: HTTP http://127\.0\.0\.1:(\d+)/v2", line)
            if found:
                self.port = int(found[1])
                return
        raise RuntimeError(f"{self.method} did not start (exit {self.proc.wait()})")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(60)


def candidates(model: str, artifact: Path, args: argparse.Namespace, peer: str) -> list[Candidate]:
    serve = [sys.executable, "-m", "torchslim", "--quiet", "serve", str(artifact),
             "--http-port", "0", "--grpc-port", "0", "--threads", str(args.threads),
             "--instances", "1", "--max-queue-size", "1024", "--no-access-log"]
    batched = [*serve, "--max-batch-size", str(MAX_BATCH), "--max-queue-delay-ms",
               str(QUEUE_DELAY_MS)]
    peer_cmd = [sys.executable, str(HERE), "--peer", str(artifact), "--threads", str(args.threads)]
    names = {"input_name": open_session(artifact).inputs[0].name,
             "served_name": model_name_for(str(artifact))}
    return [Candidate(model, "torchslim-batching", artifact, batched, torchslim=True, **names),
            Candidate(model, "torchslim-max-batch-1", artifact, [*serve, "--max-batch-size", "1"],
                      torchslim=True, **names),
            Candidate(model, peer, artifact, peer_cmd, **names)]


# ---------------------------------------------------------------------- the load client


def request_bytes(c: Candidate, image: np.ndarray) -> bytes:
    """One v2 infer request (binary tensor extension), as raw HTTP/1.1 bytes."""
    header = json.dumps({"inputs": [{"name": c.input_name, "datatype": "FP32",
                                     "shape": list(image.shape),
                                     "parameters": {"binary_data_size": image.nbytes}}],
                         "parameters": {"binary_data_output": True}}).encode()
    body = header + image.tobytes()
    return (f"POST /v2/models/{c.served_name}/infer HTTP/1.1\r\nHost: 127.0.0.1:{c.port}\r\n"
            f"Content-Type: application/octet-stream\r\nContent-Length: {len(body)}\r\n"
            f"Inference-Header-Content-Length: {len(header)}\r\n\r\n").encode() + body


async def read_response(reader: asyncio.StreamReader) -> tuple[int, dict[str, str], bytes]:
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {k.strip().lower(): v.strip() for k, v in
               (ln.split(":", 1) for ln in lines[1:] if ":" in ln)}
    body = await reader.readexactly(int(headers.get("content-length", "0")))
    return status, headers, body


async def closed_loop(port: int, payload: bytes, clients: int, total: int) -> dict[str, Any]:
    """``clients`` connections, each sending its next request when its last one returns,
    until ``total`` requests are answered. Latencies in ms, counts by status."""
    left, latencies, codes = [total], [], {}

    async def client() -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            while left[0] > 0:
                left[0] -= 1
                t0 = time.perf_counter()
                writer.write(payload)
                status, _, _ = await read_response(reader)
                latencies.append((time.perf_counter() - t0) * 1000)
                codes[status] = codes.get(status, 0) + 1
        finally:
            writer.close()

    start = time.perf_counter()
    await asyncio.gather(*(client() for _ in range(clients)))
    return {"seconds": time.perf_counter() - start, "latencies": latencies, "codes": codes}


async def probe(port: int, payload: bytes) -> np.ndarray:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(payload)
    status, headers, body = await read_response(reader)
    writer.close()
    if status != 200:
        raise RuntimeError(f"HTTP {status}: {body[:200]!r}")
    size = int(headers["inference-header-content-length"])
    out = json.loads(body[:size])["outputs"][0]
    return np.frombuffer(body[size:], dtype=np.float32).reshape(out["shape"])


def batch_counts(port: int) -> tuple[float, float]:
    """(rows inferred, executions) from a torchslim server's /metrics."""
    import httpx

    from prometheus_client.parser import text_string_to_metric_families

    text = httpx.get(f"http://127.0.0.1:{port}/metrics").text
    families = list(text_string_to_metric_families(text))

    def total(name: str) -> float:
        return sum(s.value for f in families for s in f.samples if s.name == name)

    return total("torchslim_inference_count_total"), total("torchslim_inference_exec_count_total")


# ---------------------------------------------------------------------- measuring


def measure(c: Candidate, payload: bytes, clients: int,
            args: argparse.Namespace) -> dict[str, float]:
    asyncio.run(closed_loop(c.port, payload, clients, max(2 * clients, 8)))   # untimed
    time.sleep(args.pause)
    before = batch_counts(c.port) if c.torchslim else (0.0, 0.0)
    run = asyncio.run(closed_loop(c.port, payload, clients, args.requests))
    rows, execs = np.subtract(batch_counts(c.port), before) if c.torchslim else (0.0, 0.0)
    lat = np.asarray(run["latencies"])
    ok = run["codes"].get(200, 0)
    return {"throughput_rps": ok / run["seconds"],
            "p50_ms": float(np.percentile(lat, 50)),
            "p90_ms": float(np.percentile(lat, 90)), "p99_ms": float(np.percentile(lat, 99)),
            "mean_batch": float(rows / execs) if execs else 1.0,
            "rejected": float(run["codes"].get(429, 0)),
            "errors": float(sum(n for s, n in run["codes"].items() if s not in (200, 429))),
            "seconds": run["seconds"]}


def measure_model(group: Sequence[Candidate], image: np.ndarray,
                  args: argparse.Namespace) -> None:
    reference = open_session(group[0].artifact, threads=args.threads).run(image)
    try:
        for c in group:
            try:
                c.start()
                got = asyncio.run(probe(c.port, request_bytes(c, image)))
                # 1.0: the server's answer is runtime.open(...).run's (same class, 1e-4)
                c.agreement = float(np.array_equal(got.argmax(1), reference.argmax(1)) and
                                    np.allclose(got, reference, rtol=1e-4, atol=1e-4))
            except Exception as e:  # noqa: BLE001 (the row carries it)
                c.error = one_line(e)
        live = [c for c in group if c.error is None]
        for clients in args.clients:
            for _ in range(args.rounds):
                for c in live:          # A B C A B C: a drift of the machine hits all alike
                    t0 = time.perf_counter()
                    try:
                        result = measure(c, request_bytes(c, image), clients, args)
                        c.rounds.setdefault(clients, []).append(result)
                    except Exception as e:  # noqa: BLE001
                        c.error = c.error or one_line(e)
                    c.seconds += time.perf_counter() - t0
    finally:
        for c in group:
            c.stop()


# ---------------------------------------------------------------------- rows and checks


def summary(c: Candidate, clients: int) -> dict[str, float] | None:
    rounds = c.rounds.get(clients)
    if not rounds:
        return None
    return {k: statistics.median(r[k] for r in rounds) for k in rounds[0]}


def to_row(c: Candidate, baseline: Candidate) -> dict[str, Any]:
    by = {str(n): summary(c, n) for n in c.rounds}
    at = lambda n, k: (by.get(str(n)) or {}).get(k)  # noqa: E731
    base = summary(baseline, 32)
    speedup = (at(32, "throughput_rps") / base["throughput_rps"]
               if base and at(32, "throughput_rps") else None)
    row = {"model": c.model, "method": c.method, "runtime": "onnxruntime", "top1": None,
           "agreement": c.agreement, "p50_ms_b1": at(1, "p50_ms"), "p50_ms_b32": at(32, "p50_ms"),
           "speedup_b32": speedup, "bytes": c.artifact.stat().st_size,
           "seconds": round(c.seconds, 2), "error": c.error}
    return {**{k: row[k] for k in ROW_KEYS}, "by_clients": by}


def checks(rows: list[dict[str, Any]], model: str, peer: str) -> list[dict[str, Any]]:
    """The issue's acceptance figures for ``model`` (the INT8 artifact); ``ok`` is None
    where a figure is missing."""
    def get(method: str, clients: int, key: str) -> float | None:
        row = next((r for r in rows if r["model"] == model and r["method"] == method), None)
        return ((row or {}).get("by_clients", {}).get(str(clients)) or {}).get(key)

    def ratio(a: float | None, b: float | None) -> float | None:
        return a / b if a is not None and b else None

    def diff(a: float | None, b: float | None) -> float | None:
        return a - b if a is not None and b is not None else None

    b, m1 = "torchslim-batching", "torchslim-max-batch-1"
    tput, p99 = (lambda m: get(m, 32, "throughput_rps")), (lambda m: get(m, 32, "p99_ms"))
    figures = [
        ("32 clients: throughput, batching / max_batch_size=1", ratio(tput(b), tput(m1)), ">=",
         2.0),
        ("32 clients: p99 ms, batching vs max_batch_size=1", p99(b), "<=", p99(m1)),
        (f"32 clients: throughput, batching / {peer}", ratio(tput(b), tput(peer)), ">=", 1.0),
        (f"32 clients: p99 ms, batching vs {peer}", p99(b), "<=", p99(peer)),
        ("1 client: p50 ms, batching minus max_batch_size=1 (at most the queue delay)",
         diff(get(b, 1, "p50_ms"), get(m1, 1, "p50_ms")), "<=", QUEUE_DELAY_MS),
    ]
    out = []
    for name, value, op, limit in figures:
        ok = None if value is None or limit is None else (
            value >= limit if op == ">=" else value <= limit)
        out.append({"check": name, "value": value, "op": op, "limit": limit, "ok": ok})
    return out


def print_rows(rows: list[dict[str, Any]], found: list[dict[str, Any]]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title="serve_load: closed-loop clients over loopback HTTP (medians over rounds)")
    for col in ("model", "method", "clients", "req/s", "p50 ms", "p90 ms", "p99 ms",
                "mean batch", "429", "errors"):
        table.add_column(col, justify="left" if col in ("model", "method") else "right")
    for r in rows:
        for clients, s in r["by_clients"].items():
            if s is None:
                continue
            table.add_row(r["model"], r["method"], clients, f"{s['throughput_rps']:.0f}",
                          f"{s['p50_ms']:.2f}", f"{s['p90_ms']:.2f}", f"{s['p99_ms']:.2f}",
                          f"{s['mean_batch']:.1f}", f"{s['rejected']:.0f}", f"{s['errors']:.0f}")
        if r["error"]:
            table.add_row(r["model"], r["method"], "-", "-", "-", "-", "-", "-", "-", r["error"])
    console = Console()
    console.print(table)
    for c in found:
        mark = {True: "ok  ", False: "FAIL", None: "n/a "}[c["ok"]]
        console.print(f"{mark} {c['check']}: {c['value']} {c['op']} {c['limit']}")


# ---------------------------------------------------------------------- artifacts, main


def build_artifacts(workdir: Path, threads: int) -> dict[str, Path]:
    import torch

    from torchslim.exporters import export_onnx, export_qdq
    from torchslim.quant.api import quantize
    from torchslim.quant.config import QuantConfig
    from torchslim.zoo import build_model

    torch.manual_seed(0)
    torch.set_num_threads(threads)
    model = build_model("resnet14", width=16).eval()
    calibration = list(torch.rand(256, 1, 28, 28).split(32))
    prepared = quantize(model, QuantConfig(), calibration=calibration)
    shape = (1, 28, 28)
    return {"resnet14-int8": export_qdq(prepared, workdir / "resnet14-int8.onnx",
                                        input_shape=shape),
            "resnet14-fp32": export_onnx(model, workdir / "resnet14-fp32.onnx", input_shape=shape)}


def peer_name() -> tuple[str, str]:
    """The peer's row name and why it is that one."""
    try:
        import mlserver  # noqa: F401
        why = "MLServer is installed, but its ONNX runtime is not wired into this benchmark"
    except ImportError:
        why = "Seldon MLServer is not installed here"
    return "fastapi-ort-per-request", (f"{why}; the peer is a plain FastAPI endpoint calling "
                                       "ONNX Runtime once per request on its thread pool")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, default=Path("bench/results/serve_load.json"))
    p.add_argument("--int8", type=Path, default=None, help="INT8 artifact (e.g. the demo's)")
    p.add_argument("--fp32", type=Path, default=None, help="its FP32 teacher")
    p.add_argument("--threads", type=int, default=2, help="ONNX Runtime threads per server")
    p.add_argument("--requests", type=int, default=1000, help="requests per measurement")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--clients", default=",".join(map(str, CLIENTS)))
    p.add_argument("--pause", type=float, default=0.3, help="seconds between measurements")
    p.add_argument("--peer", default=None, help=argparse.SUPPRESS)   # run the peer server
    args = p.parse_args(argv)
    args.clients = tuple(int(c) for c in str(args.clients).split(","))
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.peer:
        return run_peer(args.peer, args.threads)
    setup_logging()
    if (args.int8 is None) != (args.fp32 is None):
        raise SystemExit("pass both --int8 and --fp32, or neither (to build a small model)")
    peer, peer_note = peer_name()
    with tempfile.TemporaryDirectory() as tmp:
        artifacts = ({"demo-int8": args.int8, "demo-fp32": args.fp32} if args.int8 else
                     build_artifacts(Path(tmp), args.threads))
        image = np.random.default_rng(0).random((1, *_image_shape(next(iter(artifacts.values())))),
                                                dtype=np.float32)
        rows = []
        for model, path in artifacts.items():
            group = candidates(model, Path(path), args, peer)
            measure_model(group, image, args)
            rows += [to_row(c, group[1]) for c in group]
        int8 = next(iter(artifacts))
        found = checks(rows, int8, peer)
    path = write_results(args.out, BENCH, args.threads, rows, peer=peer, peer_note=peer_note,
                         checks=found, protocol="http (loopback, KServe v2 binary tensors)",
                         settings={"max_batch_size": MAX_BATCH,
                                   "max_queue_delay_ms": QUEUE_DELAY_MS,
                                   "requests": args.requests, "rounds": args.rounds,
                                   "clients": list(args.clients), "image": list(image.shape)},
                         notes="p50_ms_b1 / p50_ms_b32: median latency at 1 / 32 clients; "
                               "speedup_b32: throughput at 32 clients over torchslim-max-batch-1; "
                               "bytes: the artifact")
    print_rows(rows, found)
    print(f"json: {path}")


def _image_shape(artifact: Path) -> tuple[int, ...]:
    spec = open_session(artifact).inputs[0]
    return tuple(d if isinstance(d, int) else 1 for d in spec.shape[1:])


if __name__ == "__main__":
    main()
