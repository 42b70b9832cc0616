"""Lineage: the chain from a version back to the original, with the evidence on each edge.

Each edge compares a version with its parent from their manifests' measured figures:
top-1 on the same dataset split (preferring the same runtime), p50 latency speed-up per
batch size both were timed at (parent ms / child ms, preferring the same runtime; the edge
names both runtimes), and size (the artifacts' total file bytes). A figure neither side
measured is None, never guessed.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from torchslim.artifacts.index import VersionInfo
from torchslim.artifacts.schema import Measurement

__all__ = ["Edge", "Lineage", "lineage", "edge"]


@dataclass(frozen=True)
class Edge:
    """``child`` was made from ``parent`` by ``relation``."""

    child: str
    parent: str
    relation: str | None
    top1_delta: float | None = None        # child - parent, a fraction (-0.01 = -1 point)
    accuracy_on: str | None = None         # "fashion-mnist/test"
    speedup: dict[str, float] = field(default_factory=dict)  # batch -> parent/child p50
    runtimes: tuple[str, str] | None = None   # (parent, child) runtimes of the timings
    size_ratio: float | None = None        # parent bytes / child bytes
    bytes_delta: int = 0                   # child - parent

    def describe(self) -> str:
        parts = []
        if self.top1_delta is not None:
            parts.append(f"top-1 {100 * self.top1_delta:+.2f} pts ({self.accuracy_on})")
        if self.speedup:
            where = f" ({self.runtimes[0]} -> {self.runtimes[1]})" if self.runtimes else ""
            parts.append("p50 " + ", ".join(f"b{b} {s:.2f}x" for b, s in self.speedup.items())
                         + where)
        if self.size_ratio and self.bytes_delta == 0:
            parts.append("same size")
        elif self.size_ratio:
            scale = (f"{self.size_ratio:.2f}x smaller" if self.size_ratio >= 1
                     else f"{1 / self.size_ratio:.2f}x larger")
            parts.append(f"size {scale} ({self.bytes_delta:+,} bytes)")
        return f"{self.relation or 'derived'} from {self.parent}: " + ("; ".join(parts)
                                                                      or "no figures to compare")


@dataclass(frozen=True)
class Lineage:
    chain: tuple[VersionInfo, ...]   # the version first, then its parent, ... the original
    edges: tuple[Edge, ...]          # edges[i] links chain[i] to chain[i + 1]
    unresolved_parent: str | None    # the original's recorded parent digest, not held here

    def lines(self) -> list[str]:
        """The chain as text, one version per line and its edge below it."""
        out = []
        for i, info in enumerate(self.chain):
            m = info.manifest
            top1 = next((x.top1 for x in m.metrics if x.top1 is not None), None)
            figure = f"  top-1 {top1:.4f}" if top1 is not None else ""
            out.append(f"{info.ref}  {m.format} {m.precision or ''}  {info.size:,} bytes{figure}")
            if i < len(self.edges):
                out.append(f"  <- {self.edges[i].describe()}")
        if self.unresolved_parent:
            out.append(f"  <- made from {self.unresolved_parent}, which is not in this registry")
        return out

    def to_dict(self) -> dict[str, Any]:
        return {"chain": [i.ref for i in self.chain], "edges": [asdict(e) for e in self.edges],
                "unresolved_parent": self.unresolved_parent}


def lineage(registry: Any, ref: str) -> Lineage:
    """Walk ``ref``'s parent links in ``registry`` (a ModelRegistry) to the original."""
    chain = [registry.get(ref)]
    seen = {chain[0].id}
    while chain[-1].parent is not None:
        parent = registry.get(chain[-1].parent)
        if parent.id in seen:  # a cycle cannot be pushed, but never loop on a bad index
            break
        seen.add(parent.id)
        chain.append(parent)
    root = chain[-1]
    recorded = root.manifest.provenance.parent_digest
    unresolved = recorded if root.parent is None and recorded else None
    edges = tuple(edge(c, p) for c, p in zip(chain, chain[1:]))
    return Lineage(tuple(chain), edges, unresolved)


def edge(child: VersionInfo, parent: VersionInfo) -> Edge:
    cm, pm = child.manifest.metrics, parent.manifest.metrics
    acc = _pair(cm, pm, lambda m: m.top1 is not None and m.dataset is not None,
                same=lambda c, p: (c.dataset.name, c.dataset.split)
                == (p.dataset.name, p.dataset.split))
    lat = _pair(cm, pm, lambda m: any("p50" in s for s in m.latency_ms.values()),
                same=lambda c, p: bool(_speedup(c, p)))
    size_ratio = parent.size / child.size if child.size else None
    return Edge(
        child=child.ref, parent=parent.ref, relation=child.manifest.provenance.relation,
        top1_delta=round(acc[0].top1 - acc[1].top1, 6) if acc else None,
        accuracy_on=f"{acc[0].dataset.name}/{acc[0].dataset.split}" if acc else None,
        speedup=_speedup(*lat) if lat else {},
        runtimes=(lat[1].runtime, lat[0].runtime) if lat else None,
        size_ratio=round(size_ratio, 4) if size_ratio else None,
        bytes_delta=child.size - parent.size)


def _pair(child: Sequence[Measurement], parent: Sequence[Measurement],
          usable: Callable[[Measurement], bool],
          same: Callable[[Measurement, Measurement], bool]
          ) -> tuple[Measurement, Measurement] | None:
    """The (child, parent) measurements to compare: comparable (``same``), on the same
    runtime when there is such a pair, else the first comparable pair."""
    pairs = [(c, p) for c in child if usable(c) for p in parent if usable(p) and same(c, p)]
    if not pairs:
        return None
    return next(((c, p) for c, p in pairs if c.runtime == p.runtime), pairs[0])


def _speedup(child: Measurement, parent: Measurement) -> dict[str, float]:
    common = [b for b in child.latency_ms if b in parent.latency_ms
              and child.latency_ms[b].get("p50") and parent.latency_ms[b].get("p50")]
    return {b: round(parent.latency_ms[b]["p50"] / child.latency_ms[b]["p50"], 4)
            for b in sorted(common, key=int)}
