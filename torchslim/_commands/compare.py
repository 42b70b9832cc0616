"""`torchslim compare A B [C ...]`: time artifacts in ONE interleaved loop and compare them.

Every artifact is opened with ``torchslim.runtime.open`` and timed by
``torchslim.evaluation.timing.time_interleaved`` (A B C, B C A, ... with a pause and untimed
calls at each switch), so the machine's drift hits all of them alike. Each speed-up is the
median of the per-round ratios ``time(first) / time(other)`` with its range over rounds.
With ``--dataset`` the artifacts are also scored (top-1) and compared with the first on the
test split (argmax agreement, mean output cosine); without it, agreement and cosine are
taken on the seeded random inputs used for timing, and the JSON says so.
"""

from __future__ import annotations

import platform
from pathlib import Path
from typing import Annotated, Any, Optional

import numpy as np
import typer

from torchslim._commands._app import BatchSizes, Threads, command, out_console, parse_sizes
from torchslim.errors import ArtifactError, ConfigError

__all__ = ["compare", "compare_artifacts"]


@command()
def compare(artifacts: Annotated[list[Path], typer.Argument(
                help="Artifacts (.onnx, OpenVINO .xml, .safetensors); the first is the baseline.")],
            dataset: Annotated[Optional[str], typer.Option(
                help="Score top-1 and agreement on this dataset's test split.")] = None,
            data: Annotated[Optional[Path], typer.Option(help="Dataset directory.")] = None,
            limit: Annotated[Optional[int], typer.Option(
                min=1, help="Score only this many test images.")] = None,
            rounds: Annotated[int, typer.Option(min=1, help="Interleaved timing rounds.")] = 20,
            calls: Annotated[int, typer.Option(min=1, help="Timed calls per visit.")] = 3,
            threads: Threads = 2, batch_sizes: BatchSizes = "1,32",
            out: Annotated[Optional[Path], typer.Option(
                help="Write the comparison as JSON to this file (atomically).")] = None) -> None:
    """Time artifacts in one interleaved loop; print each speed-up over the first with its
    range over rounds (and top-1 / agreement with --dataset)."""
    from torchslim import _io

    result = compare_artifacts(artifacts, dataset=dataset, data_root=data, limit=limit,
                               rounds=rounds, calls=calls, threads=threads,
                               batch_sizes=parse_sizes(batch_sizes))
    _print(result)
    if out is not None:
        if out.is_dir():
            raise ConfigError(f"--out {out} is a directory; pass a file name such as "
                              f"{out / 'compare.json'}")
        out_console.print(f"json: {_io.write_json(out, result)}")


def compare_artifacts(paths: list[Path], *, dataset: str | None = None,
                      data_root: Path | None = None, limit: int | None = None,
                      rounds: int = 20, calls: int = 3, threads: int = 2,
                      batch_sizes: tuple[int, ...] = (1, 32)) -> dict[str, Any]:
    """The comparison as a JSON-ready dict (see the module docstring)."""
    from torchslim import __version__
    from torchslim.evaluation import timing
    from torchslim.runtime import open as open_session

    if len(paths) < 2:
        raise ConfigError(f"compare needs at least two artifacts, got {len(paths)}; "
                          "pass the baseline first, then the candidates")
    for p in paths:
        if not Path(p).exists():
            raise ArtifactError(f"artifact not found: {p}; check the path")
    sessions = [open_session(p, threads=threads) for p in paths]
    try:
        _check_same_inputs(paths, sessions)
        bundle = _load(dataset, data_root, limit)
        sample = _timing_sample(sessions[0], bundle, paths[0])
        timings = timing.time_interleaved(sessions, sample, batch_sizes=batch_sizes,
                                          rounds=rounds, calls=calls)
        quality = _quality(sessions, bundle, sample, max(batch_sizes))
    finally:
        for s in sessions:
            s.close()
    rows = []
    for i, (p, s) in enumerate(zip(paths, sessions)):
        row: dict[str, Any] = {"artifact": str(p), "name": s.name, "runtime": s.runtime,
                               "precision": s.precision, "bytes": _size(Path(p)),
                               "error": str(timings.errors[i]) if i in timings.errors else None,
                               "p50_ms": {}, "speedup": {}}
        for b in timings.batch_sizes:
            p50 = timings.p50_ms(i, b)
            row["p50_ms"][str(b)] = None if p50 is None else round(p50, 4)
            ratio = timings.ratio(0, i, b)   # time(first) / time(this): > 1 means faster
            row["speedup"][str(b)] = None if ratio is None else ratio.to_dict()
        row.update(quality[i])
        rows.append(row)
    return {"command": "compare", "torchslim_version": __version__,
            "machine": {"cpu": platform.processor() or platform.machine(), "threads": threads},
            "timing": {"method": "interleaved", "rounds": rounds, "calls": calls,
                       "batch_sizes": list(timings.batch_sizes)},
            "baseline": rows[0]["artifact"],
            "quality_on": ({"dataset": dataset, "split": "test", "n": quality[0]["n"]}
                           if bundle is not None else
                           {"dataset": None, "inputs": "seeded random", "n": quality[0]["n"]}),
            "artifacts": rows}


def _check_same_inputs(paths: list[Path], sessions: list[Any]) -> None:
    """Dtypes and fixed dims of every input must match the first artifact's (names may
    differ between exporters; a dynamic dim matches anything)."""
    def sig(s: Any) -> list[tuple[str, tuple[Any, ...] | None]]:
        return [(t.dtype, None if t.shape is None else
                 tuple(d if isinstance(d, int) else None for d in t.shape)) for t in s.inputs]

    def compatible(a: Any, b: Any) -> bool:
        if len(a) != len(b):
            return False
        for (da, sa), (db, sb) in zip(a, b):
            if da != db:
                return False
            if sa is not None and sb is not None and (len(sa) != len(sb) or any(
                    x is not None and y is not None and x != y for x, y in zip(sa, sb))):
                return False
        return True

    first = sig(sessions[0])
    for p, s in zip(paths[1:], sessions[1:]):
        if not compatible(first, sig(s)):
            raise ArtifactError(
                f"{p} takes other inputs than {paths[0]} ({_describe(s)} vs "
                f"{_describe(sessions[0])}); compare artifacts of the same model")


def _describe(session: Any) -> str:
    from torchslim.runtime.base import describe_shape

    return ", ".join(f"{t.name}: {t.dtype}{describe_shape(t.shape)}" for t in session.inputs)


def _load(dataset: str | None, root: Path | None, limit: int | None) -> Any:
    if dataset is None:
        if limit is not None:
            raise ConfigError("--limit only applies with --dataset; pass --dataset NAME")
        return None
    from torchslim.data import load_data

    return load_data(dataset, root=root, test_limit=limit, augment=False)


def _timing_sample(session: Any, bundle: Any, path: Path) -> Any:
    """One sample: the first test image, or seeded random values of the input's shape."""
    if bundle is not None:
        x, _ = next(iter(bundle.test))
        return x[:1].numpy()
    rng = np.random.default_rng(0)
    arrays = []
    for t in session.inputs:
        dims = [] if t.shape is None else list(t.shape)
        if t.shape is None or any(not isinstance(d, int) for d in dims[1:]):
            raise ConfigError(f"{path} has input {t.name} of shape {dims or 'unknown'}; "
                              "pass --dataset NAME so compare can feed it real inputs")
        shape = [1, *dims[1:]]
        if t.dtype.startswith("float"):
            arrays.append(rng.standard_normal(shape).astype(t.dtype))
        else:
            arrays.append(rng.integers(0, 2, size=shape).astype(t.dtype))
    return arrays[0] if len(arrays) == 1 else tuple(arrays)


def _quality(sessions: list[Any], bundle: Any, sample: Any, batch: int) -> list[dict[str, Any]]:
    """top1 (with a dataset), agreement and mean cosine of each output vs the first."""
    from torchslim.evaluation.latency import tile_batch
    from torchslim.evaluation.metrics import agreement, mean_cosine, topk_accuracy

    if bundle is None:
        tiled = tile_batch(sample, batch)
        if isinstance(tiled, np.ndarray) and tiled.dtype.kind == "f":   # distinct rows
            noise = np.random.default_rng(1).standard_normal(tiled.shape)
            tiled = tiled + (0.5 * noise).astype(tiled.dtype)
        inputs, labels = [tiled], None
    else:
        pairs = [(x.numpy(), y.numpy()) for x, y in bundle.test]
        inputs, labels = [x for x, _ in pairs], np.concatenate([y for _, y in pairs])
    outputs = [np.concatenate([np.asarray(s.run(x)) for x in inputs]) for s in sessions]
    flat = [o.reshape(o.shape[0], -1) for o in outputs]
    rows = []
    for o in flat:
        row: dict[str, Any] = {"n": int(o.shape[0]),
                               "agreement": round(agreement(flat[0], o), 6),
                               "cosine": round(mean_cosine(flat[0], o), 6)}
        row["top1"] = None if labels is None else round(topk_accuracy(o, labels, 1), 6)
        rows.append(row)
    return rows


def _size(p: Path) -> int:
    if p.suffix == ".xml":   # OpenVINO: the graph and its weights
        return p.stat().st_size + (p.with_suffix(".bin").stat().st_size
                                   if p.with_suffix(".bin").exists() else 0)
    return p.stat().st_size


def _print(result: dict[str, Any]) -> None:
    from rich.table import Table

    sizes = result["timing"]["batch_sizes"]
    table = Table(title=f"one interleaved loop, {result['timing']['rounds']} rounds: speed-up "
                        "= median per-round ratio vs the first, range over rounds")
    for col in ("artifact", "batch", "p50 ms", "speed-up", "range", "top-1", "agree", "cos"):
        table.add_column(col, justify="left" if col == "artifact" else "right",
                         no_wrap=col != "artifact", overflow="fold")
    for row in result["artifacts"]:
        top1 = "-" if row["top1"] is None else f"{row['top1']:.4f}"
        quality = (top1, f"{row['agreement']:.4f}", f"{row['cosine']:.4f}")
        for k, b in enumerate(sizes):
            p50, ratio = row["p50_ms"][str(b)], row["speedup"][str(b)]
            speed = ("failed", "") if ratio is None else (
                f"{ratio['median']:.2f}x", f"{ratio['low']:.2f}-{ratio['high']:.2f}")
            table.add_row(f"{Path(row['artifact']).name}" if k == 0 else "",
                          str(b), "-" if p50 is None else f"{p50:.3f}", *speed,
                          *(quality if k == 0 else ("", "", "")))
    out_console.print(table)
    q = result["quality_on"]
    where = (f"{q['dataset']} test, n={q['n']}" if q["dataset"] else
             f"{q['n']} seeded random inputs")
    out_console.print(f"agreement and cosine vs {Path(result['baseline']).name} on {where}")
    for row in result["artifacts"]:
        if row["error"]:
            out_console.print(f"{row['artifact']} failed while timed: {row['error']}")
