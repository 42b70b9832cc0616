"""Runtime-aware placement: rewrite a QDQ artifact where the target runtime runs it faster.

A QDQ file says *what* is integer; how fast the runtime runs each node depends on its
kernels. Some forms are slow on a given runtime, and which ones is measured, not assumed:

* ``space-to-depth``: a strided convolution that reads few channels (the stem of most
  CNNs: 3 channels, 7x7 or 3x3, stride 2) is an im2col of 3-byte rows in ONNX Runtime's
  INT8 kernels and costs as much as layers with 20x its channels. Rearranging its
  quantized input with ``SpaceToDepth(stride)`` (on the uint8 values, between Q and DQ)
  makes it a stride-1 convolution over ``stride**2 * C`` channels with a zero-padded
  kernel: the same sums (bit for bit), fewer and longer rows.
* ``float``: the node runs in FP32 between its input's DequantizeLinear and the next
  QuantizeLinear (its weights dequantized once), for the nodes where the integer kernel
  plus its Q/DQ costs more than float.

:func:`place_for_runtime` builds each variant of each candidate node, times every variant
against the unchanged artifact in one interleaved loop on the runtime it is meant for, keeps
a variant only where it is faster by ``min_gain`` in the median *and* in most rounds, then
times the combination against the original and keeps it only if it is faster. Every node's
measured figures and the decision are in the result (and, through the CLI, in the artifact's
placement JSON).
"""

from __future__ import annotations

import logging
import os
import statistics
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import helper, numpy_helper

from torchslim import _io
from torchslim.errors import ArtifactError, ConfigError
from torchslim.exporters._onnx_graph import GraphIndex, attribute, remove_dead
from torchslim.exporters.onnx import write_checked

logger = logging.getLogger(__name__)

__all__ = ["NodeTrial", "Placement", "PLACEMENT_RUNTIMES", "VARIANTS", "place_for_runtime",
           "space_to_depth_", "float_node_"]

PLACEMENT_RUNTIMES = ("onnxruntime", "openvino")
# a stem is "few channels": stride**2 * C_in must stay a small GEMM depth
_S2D_MAX_CHANNELS = 4


@dataclass(frozen=True)
class NodeTrial:
    """One variant of one node, timed against the unchanged artifact in the same loop."""

    node: str
    op: str
    variant: str
    speedup: float          # median over rounds of time(original) / time(variant)
    low: float
    high: float
    wins: int               # rounds in which the variant was faster
    rounds: int
    kept: bool
    reason: str

    def to_dict(self) -> dict[str, Any]:
        return {"node": self.node, "op": self.op, "variant": self.variant,
                "speedup": round(self.speedup, 3), "low": round(self.low, 3),
                "high": round(self.high, 3), "wins": self.wins, "rounds": self.rounds,
                "kept": self.kept, "reason": self.reason}


@dataclass
class Placement:
    """What :func:`place_for_runtime` tried, kept and measured."""

    source: Path
    path: Path
    runtime: str
    batch: int
    threads: int
    trials: list[NodeTrial] = field(default_factory=list)
    kept: list[tuple[str, str]] = field(default_factory=list)   # (node, variant) applied
    speedup: float | None = None          # final artifact vs source, median per round
    speedup_range: tuple[float, float] | None = None
    note: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {"source": str(self.source), "path": str(self.path), "runtime": self.runtime,
                "batch": self.batch, "threads": self.threads,
                "kept": [{"node": n, "variant": v} for n, v in self.kept],
                "speedup": None if self.speedup is None else round(self.speedup, 3),
                "speedup_range": None if self.speedup_range is None
                else [round(x, 3) for x in self.speedup_range],
                "trials": [t.to_dict() for t in self.trials], "note": self.note}


# --- the rewrites -----------------------------------------------------------------------


def _ints(node: onnx.NodeProto, name: str, default: list[int]) -> list[int]:
    for a in node.attribute:
        if a.name == name:
            return [int(v) for v in a.ints]
    return list(default)


def _static_hw(model: onnx.ModelProto, tensor: str) -> tuple[int, int] | None:
    for vi in (*model.graph.input, *model.graph.value_info):
        if vi.name == tensor:
            dims = vi.type.tensor_type.shape.dim
            if len(dims) == 4 and all(d.HasField("dim_value") for d in dims[2:]):
                return int(dims[2].dim_value), int(dims[3].dim_value)
    return None


def _qdq_conv_parts(index: GraphIndex, node: onnx.NodeProto
                    ) -> tuple[onnx.NodeProto, onnx.NodeProto, onnx.NodeProto] | None:
    """(Q, DQ of the input, DQ of the weight) of a QDQ Conv, or None."""
    x_dq = index.producer.get(node.input[0])
    w_dq = index.producer.get(node.input[1]) if len(node.input) > 1 else None
    if any(dq is None or dq.op_type != "DequantizeLinear" for dq in (x_dq, w_dq)):
        return None
    q = index.producer.get(x_dq.input[0])
    if q is None or q.op_type != "QuantizeLinear" or w_dq.input[0] not in index.initializers:
        return None
    return q, x_dq, w_dq


def space_to_depth_candidate(model: onnx.ModelProto, index: GraphIndex,
                             node: onnx.NodeProto) -> str | None:
    """Why ``node`` cannot take the space-to-depth form, or None when it can."""
    if node.op_type != "Conv":
        return "not a Conv"
    parts = _qdq_conv_parts(index, node)
    if parts is None:
        return "not a QDQ convolution with an int8 weight"
    q, x_dq, w_dq = parts
    weight = numpy_helper.to_array(index.initializers[w_dq.input[0]])
    strides = _ints(node, "strides", [1, 1])
    if weight.ndim != 4 or attribute(node, "group", 1) != 1:
        return "not a 2-D convolution with group 1"
    if weight.shape[1] > _S2D_MAX_CHANNELS:
        return f"reads {weight.shape[1]} channels (more than {_S2D_MAX_CHANNELS})"
    if strides[0] != strides[1] or strides[0] < 2 or _ints(node, "dilations", [1, 1]) != [1, 1]:
        return "not an undilated convolution with one stride >= 2"
    if len(index.consumers[q.output[0]]) != 1 or len(index.consumers[x_dq.output[0]]) != 1:
        return "its quantized input feeds other nodes too"
    scale = index.constant(q.input[1])
    if scale is None or scale.size != 1:
        return "its input quantizer is not per-tensor"
    hw = _static_hw(model, q.input[0])
    if hw is None or hw[0] % strides[0] or hw[1] % strides[0]:
        return "its input has no static height and width divisible by the stride"
    if _auto_pad(node) not in ("", "NOTSET"):
        return "auto_pad is set"
    return None


def _auto_pad(node: onnx.NodeProto) -> str:
    for a in node.attribute:
        if a.name == "auto_pad":
            return a.s.decode()
    return ""


def space_to_depth_(model: onnx.ModelProto, name: str) -> None:
    """Rewrite Conv ``name`` (stride s, C channels) as ``SpaceToDepth(s)`` on its float input
    then a stride-1 Conv over ``s*s*C`` channels: identical sums, zero taps added."""
    index = GraphIndex(model.graph)
    node = _node(model, name)
    shaped = onnx.shape_inference.infer_shapes(model)
    why = space_to_depth_candidate(shaped, index, node)
    if why is not None:
        raise ConfigError(f"node {name!r} cannot take the space-to-depth form: {why}")
    q, x_dq, w_dq = _qdq_conv_parts(index, node)  # type: ignore[misc]
    weight = numpy_helper.to_array(index.initializers[w_dq.input[0]])
    out_c, in_c, kh, kw = weight.shape
    s = _ints(node, "strides", [1, 1])[0]
    pads = _ints(node, "pads", [0, 0, 0, 0])
    height, width = _static_hw(shaped, q.input[0])  # type: ignore[misc]
    out_h = (height + pads[0] + pads[2] - kh) // s + 1
    out_w = (width + pads[1] + pads[3] - kw) // s + 1
    # original tap i reads s*o - pad + i; in the s2d grid tap j of sub-position r reads
    # s*(o - p') + s*j + r, so i = s*j + r - (s*p' - pad): lead with s*p' - pad zero taps
    top, left = -(-pads[0] // s), -(-pads[1] // s)
    lead_h, lead_w = s * top - pads[0], s * left - pads[1]
    new_kh, new_kw = -(-(kh + lead_h) // s), -(-(kw + lead_w) // s)
    bottom = out_h - height // s - top + new_kh - 1
    right = out_w - width // s - left + new_kw - 1
    if bottom < 0 or right < 0:
        raise ConfigError(f"node {name!r}: its padding has no space-to-depth form")
    big = np.zeros((out_c, in_c, new_kh * s, new_kw * s), weight.dtype)
    big[:, :, lead_h:lead_h + kh, lead_w:lead_w + kw] = weight
    # SpaceToDepth puts sub-position (rh, rw) of channel c at channel (rh*s + rw)*C + c
    packed = big.reshape(out_c, in_c, new_kh, s, new_kw, s).transpose(0, 3, 5, 1, 2, 4)
    packed = np.ascontiguousarray(packed.reshape(out_c, s * s * in_c, new_kh, new_kw))
    index.initializers[w_dq.input[0]].CopyFrom(numpy_helper.from_array(packed, w_dq.input[0]))
    # on the integers, between Q and DQ: a quarter of the bytes of the float input to move
    moved = index.fresh(f"{q.output[0]}_space_to_depth")
    nodes = list(model.graph.node)
    nodes.insert(nodes.index(q) + 1, helper.make_node(
        "SpaceToDepth", [q.output[0]], [moved], name=index.fresh(f"{name}_space_to_depth"),
        blocksize=s))
    x_dq.input[0] = moved
    keep = [a for a in node.attribute if a.name not in ("strides", "pads", "kernel_shape")]
    del node.attribute[:]
    node.attribute.extend(keep)
    node.attribute.extend([helper.make_attribute("strides", [1, 1]),
                           helper.make_attribute("pads", [top, left, bottom, right]),
                           helper.make_attribute("kernel_shape", [new_kh, new_kw])])
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    _drop_shapes(model)


def float_candidate(index: GraphIndex, node: onnx.NodeProto) -> str | None:
    """Why ``node`` cannot run in float, or None when it can."""
    if node.op_type not in ("Conv", "Gemm", "MatMul"):
        return "not a Conv, Gemm or MatMul"
    x_dq = index.producer.get(node.input[0])
    q = index.producer.get(x_dq.input[0]) if x_dq is not None else None
    if x_dq is None or x_dq.op_type != "DequantizeLinear" or q is None \
            or q.op_type != "QuantizeLinear":
        return "its input is not a QuantizeLinear -> DequantizeLinear pair"
    dqs = [index.producer.get(i) for i in node.input[1:] if i]
    if not dqs or any(d is None or d.op_type != "DequantizeLinear"
                      or d.input[0] not in index.initializers for d in dqs):
        return "its weight is not an int8 initializer behind a DequantizeLinear"
    return None


def float_node_(model: onnx.ModelProto, name: str) -> None:
    """Run node ``name`` in float: it reads the tensor its input quantizer reads, and its
    weights (and bias) are dequantized once. Reading a DequantizeLinear would not do: ONNX
    Runtime quantizes float weights between a DQ and a Q itself (and fuses the node again).
    The quantizer stays for any other node that reads it."""
    index = GraphIndex(model.graph)
    node = _node(model, name)
    why = float_candidate(index, node)
    if why is not None:
        raise ConfigError(f"node {name!r} cannot run in float: {why}")
    node.input[0] = index.producer[index.producer[node.input[0]].input[0]].input[0]
    for pos in range(1, len(node.input)):
        dq = index.producer[node.input[pos]]
        q = numpy_helper.to_array(index.initializers[dq.input[0]]).astype(np.float64)
        scale = numpy_helper.to_array(index.initializers[dq.input[1]]).astype(np.float64)
        zero = (numpy_helper.to_array(index.initializers[dq.input[2]]).astype(np.float64)
                if len(dq.input) > 2 and dq.input[2] else np.zeros_like(scale))
        axis = attribute(dq, "axis", 1)
        if scale.ndim == 1 and q.ndim > 1:
            shape = [1] * q.ndim
            shape[axis] = -1
            scale, zero = scale.reshape(shape), zero.reshape(shape)
        node.input[pos] = index.add_initializer(f"{node.input[pos]}_float",
                                                ((q - zero) * scale).astype(np.float32))
    remove_dead(model.graph)
    _drop_shapes(model)


def _node(model: onnx.ModelProto, name: str) -> onnx.NodeProto:
    for node in model.graph.node:
        if node.name == name:
            return node
    raise ConfigError(f"no node named {name!r} in the graph")


def _drop_shapes(model: onnx.ModelProto) -> None:
    """Intermediate shapes changed: let the runtime infer them again."""
    del model.graph.value_info[:]


VARIANTS: dict[str, tuple[Callable[..., str | None], Callable[[onnx.ModelProto, str], None]]] = {
    "space-to-depth": (lambda model, index, node: space_to_depth_candidate(model, index, node),
                       space_to_depth_),
    "float": (lambda model, index, node: float_candidate(index, node), float_node_),
}


def _candidates(model: onnx.ModelProto) -> list[tuple[onnx.NodeProto, str]]:
    """(node, variant) pairs worth timing: few-channel strided stems in both forms, and the
    layer that writes a graph output (often a small classifier) in float."""
    inferred = onnx.shape_inference.infer_shapes(model)
    index = GraphIndex(inferred.graph)
    outputs = {v.name for v in inferred.graph.output}
    found: list[tuple[onnx.NodeProto, str]] = []
    for node in inferred.graph.node:
        if not node.name:
            continue
        if space_to_depth_candidate(inferred, index, node) is None:
            found += [(node, "space-to-depth"), (node, "float")]
            continue
        if float_candidate(index, node) is None and _feeds_output(index, node, outputs):
            found.append((node, "float"))
    return found


def _feeds_output(index: GraphIndex, node: onnx.NodeProto, outputs: set[str]) -> bool:
    """``node``'s output reaches a graph output through at most a Q/DQ pair or a reshape."""
    frontier, steps = list(node.output), 0
    while frontier and steps < 4:
        if outputs & set(frontier):
            return True
        frontier = [o for n in (c for t in frontier for c in index.consumers.get(t, []))
                    if n.op_type in ("QuantizeLinear", "DequantizeLinear", "Reshape",
                                     "Flatten", "Identity") for o in n.output]
        steps += 1
    return False


# --- measuring --------------------------------------------------------------------------


def _open(path: Path, runtime: str, threads: int) -> Any:
    from torchslim.runtime import open as open_session

    if runtime == "openvino":
        from torchslim.exporters.openvino import export_openvino

        path = export_openvino(path, path.with_suffix(".xml"))
    return open_session(path, runtime, threads=threads)


def _sample(session: Any, batch: int, seed: int = 0) -> dict[str, np.ndarray]:
    """Random inputs of the artifact's signature at ``batch``: uniform [0, 1) floats, zeros
    for integer inputs (ids, masks). Timing does not depend on the values."""
    rng = np.random.default_rng(seed)
    feeds = {}
    for spec in session.inputs:
        shape = tuple(batch if i == 0 else (d if isinstance(d, int) and d > 0 else 1)
                      for i, d in enumerate(spec.shape))
        dtype = np.dtype(spec.dtype)
        feeds[spec.name] = (rng.random(shape, dtype=np.float32).astype(dtype)
                            if dtype.kind == "f" else np.zeros(shape, dtype))
    return feeds


def _time(paths: Sequence[Path], runtime: str, *, batch: int, threads: int, rounds: int
          ) -> list[list[float]]:
    """Per-round ms of each artifact at ``batch``, all in one interleaved loop."""
    from torchslim.evaluation.timing import time_interleaved

    sessions = [_open(p, runtime, threads) for p in paths]
    feeds = _sample(sessions[0], 1)
    timings = time_interleaved(sessions, feeds, batch_sizes=(batch,), rounds=rounds,
                               calls=1, warmup=1)
    for i, error in timings.errors.items():
        raise ArtifactError(f"{paths[i].name} failed on {runtime} while being timed: {error}")
    return [timings.rounds_ms[(i, batch)] for i in range(len(paths))]


def place_for_runtime(path: str | os.PathLike[str], out: str | os.PathLike[str] | None = None,
                      *, runtime: str = "onnxruntime", batch: int = 32, threads: int = 2,
                      rounds: int = 7, min_gain: float = 1.02,
                      variants: Sequence[str] = tuple(VARIANTS)) -> Placement:
    """Time each candidate rewrite of the QDQ artifact ``path`` on ``runtime`` (batch
    ``batch``, ``threads`` threads, ``rounds`` interleaved rounds) and write the fastest
    combination to ``out`` (default: ``path`` itself, atomically). A variant is kept when its
    median speed-up is at least ``min_gain`` and it won in more than half the rounds; the
    combination is kept only if it beats the original in the same way. The source is
    written unchanged to ``out`` when nothing pays, and the result says why."""
    src = Path(path)
    dst = Path(out) if out is not None else src
    if runtime not in PLACEMENT_RUNTIMES:
        raise ConfigError(f"runtime={runtime!r} must be one of {', '.join(PLACEMENT_RUNTIMES)}")
    for name, value, least in (("batch", batch, 1), ("threads", threads, 1), ("rounds", rounds, 3)):
        if value < least:
            raise ConfigError(f"{name}={value} must be >= {least}")
    if min_gain < 1.0:
        raise ConfigError(f"min_gain={min_gain} must be >= 1.0 (1.02: keep a variant 2 % faster)")
    unknown = sorted(set(variants) - set(VARIANTS))
    if unknown:
        raise ConfigError(f"unknown variants {unknown}; choose from {', '.join(VARIANTS)}")
    if not src.is_file():
        raise ArtifactError(f"ONNX file not found: {src}; export it first (torchslim.export)")
    base = onnx.load(str(src))
    result = Placement(source=src, path=dst, runtime=runtime, batch=batch, threads=threads)
    pairs = [(n, v) for n, v in _candidates(base) if v in variants]
    if not pairs:
        result.note = "no node has a variant to try (no few-channel strided stem, no float head)"
        logger.info("placement for %s: %s", runtime, result.note)
        _copy(src, dst)
        return result
    with tempfile.TemporaryDirectory(prefix="torchslim-place-") as tmp:
        files = [Path(tmp) / "original.onnx"]
        _io.write_bytes(files[0], base.SerializeToString())
        for i, (node, variant) in enumerate(pairs):
            trial = onnx.ModelProto()
            trial.CopyFrom(base)
            VARIANTS[variant][1](trial, node.name)
            files.append(write_checked(trial, Path(tmp) / f"trial{i}.onnx"))
        logger.info("placement for %s: timing %d variants of %d nodes against the original, "
                    "batch %d, %d rounds", runtime, len(pairs), len({n.name for n, _ in pairs}),
                    batch, rounds)
        per_round = _time(files, runtime, batch=batch, threads=threads, rounds=rounds)
        best: dict[str, tuple[float, str]] = {}
        for (node, variant), times in zip(pairs, per_round[1:]):
            trial = _judge(node, variant, per_round[0], times, min_gain)
            result.trials.append(trial)
            if trial.kept and trial.speedup > best.get(node.name, (0.0, ""))[0]:
                best[node.name] = (trial.speedup, variant)
        for trial in result.trials:  # only the best variant of a node stays "kept"
            if trial.kept and best[trial.node][1] != trial.variant:
                result.trials[result.trials.index(trial)] = _replace(
                    trial, kept=False, reason=f"{best[trial.node][1]} was faster")
        if not best:
            result.note = "no variant was faster on this runtime; the artifact is unchanged"
            _copy(src, dst)
            _log(result)
            return result
        final = onnx.ModelProto()
        final.CopyFrom(base)
        for name, (_, variant) in best.items():
            VARIANTS[variant][1](final, name)
        combined = write_checked(final, Path(tmp) / "combined.onnx")
        check = _time([files[0], combined], runtime, batch=batch, threads=threads, rounds=rounds)
        ratios = [a / b for a, b in zip(*check)]
        speedup = statistics.median(ratios)
        result.speedup, result.speedup_range = speedup, (min(ratios), max(ratios))
        if speedup >= min_gain and sum(r > 1.0 for r in ratios) * 2 > len(ratios):
            result.kept = [(name, variant) for name, (_, variant) in best.items()]
            _copy(combined, dst)
        else:
            result.note = (f"the variants together were not faster ({speedup:.3f}x); "
                           "the artifact is unchanged")
            _copy(src, dst)
    _log(result)
    return result


def _judge(node: onnx.NodeProto, variant: str, original: list[float], times: list[float],
           min_gain: float) -> NodeTrial:
    ratios = [a / b for a, b in zip(original, times)]
    median = statistics.median(ratios)
    wins = sum(r > 1.0 for r in ratios)
    kept = median >= min_gain and wins * 2 > len(ratios)
    reason = (f"{median:.3f}x faster" if kept else
              f"{median:.3f}x, below {min_gain}x" if median < min_gain else
              f"faster in only {wins} of {len(ratios)} rounds")
    return NodeTrial(node=node.name, op=node.op_type, variant=variant, speedup=median,
                     low=min(ratios), high=max(ratios), wins=wins, rounds=len(ratios),
                     kept=kept, reason=reason)


def _replace(trial: NodeTrial, **changes: Any) -> NodeTrial:
    from dataclasses import replace

    return replace(trial, **changes)


def _copy(src: Path, dst: Path) -> None:
    if src.resolve() != dst.resolve():
        _io.write_bytes(dst, src.read_bytes())


def _log(result: Placement) -> None:
    for t in result.trials:
        logger.info("placement %s: %s %s as %s: %.3fx (%.3f-%.3f, faster in %d/%d rounds) -> %s",
                    result.runtime, t.op, t.node, t.variant, t.speedup, t.low, t.high, t.wins,
                    t.rounds, "kept" if t.kept else t.reason)
    if result.kept:
        logger.info("placement %s: wrote %s, %.3fx the original at batch %d", result.runtime,
                    result.path, result.speedup or 0.0, result.batch)
    elif result.note:
        logger.info("placement %s: %s", result.runtime, result.note)
