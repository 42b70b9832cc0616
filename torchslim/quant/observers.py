"""Observers: watch calibration batches, then choose ``(scale, zero_point)``.

Every observer reduces a batch to rows with :func:`torchslim.quant.affine.to_rows` (one
row per scale: 1 for per_tensor, C for per_channel along ``spec.axis``, one per group for
per_group) and keeps a fixed amount of state per row, so memory does not grow with the
number of batches:

* ``minmax`` / ``moving_average``: running (or EMA) min and max; any granularity.
* ``percentile`` / ``mse``: min / max plus a uniform random sample of at most
  ``max_samples`` values in all (bottom-k sampling: every value gets a random key and the
  smallest keys are kept, which is an exact uniform sample of everything seen). The
  percentile is then exact on that sample, which is sharper in the tails than a
  fixed-bin histogram whose bins are stretched by a single outlier.
* ``entropy``: min / max plus a 2048-bin histogram of ``|x|`` over ``[0, running max]``,
  re-binned when the max grows (each old bin's count moves to the new bin holding its
  centre), as TensorRT's calibrator.

Observers that clip (percentile, entropy, mse) work per_tensor and per_channel.

Under ``torchrun`` each batch's statistics are combined over ranks before they join the
state (``Observer.combiner``, set by ``torchslim.quant.distributed.global_observers``).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from torchslim._registry import Registry
from torchslim.errors import ConfigError
from torchslim.quant.affine import QuantSpec, compute_qparams, fake_quantize, to_rows

__all__ = ["Observer", "OBSERVERS", "make_observer", "adopt_buffer_shapes", "MinMaxObserver",
           "MovingAverageObserver", "PercentileObserver", "EntropyObserver", "MSEObserver"]

OBSERVERS: Registry[type[Observer]] = Registry("observer")


def adopt_buffer_shapes(module: nn.Module, state_dict: dict[str, Tensor], prefix: str) -> None:
    """Resize ``module``'s own buffers to the shapes in ``state_dict`` before loading.

    Observer and fake-quant buffers are empty until the first batch (their shape depends
    on the data), so a fresh module must take the saved shapes to load a calibrated state.
    """
    for name, buf in module._buffers.items():
        saved = state_dict.get(prefix + name)
        if buf is not None and isinstance(saved, Tensor) and saved.shape != buf.shape:
            module._buffers[name] = torch.empty(saved.shape, dtype=buf.dtype, device=buf.device)


def make_observer(name: str, spec: QuantSpec, **kwargs: object) -> Observer:
    """Build the observer registered as ``name`` (see ``OBSERVERS.names()``)."""
    return OBSERVERS.get(name)(spec, **kwargs)


class Observer(nn.Module):
    """Records statistics of what flows through it and returns its input unchanged."""

    # Combines one batch's statistics over every process (``RankCombiner``) while a
    # data-parallel run is active; None in a single process.
    combiner: Any = None

    def __init__(self, spec: QuantSpec) -> None:
        super().__init__()
        self.spec = spec
        self.register_buffer("num_batches", torch.zeros((), dtype=torch.long))
        # The qparams' shape (e.g. (C,) or (out, D / g)), from the first batch; a buffer so
        # that a saved, calibrated observer loads back whole.
        self.register_buffer("qparams_shape", torch.zeros(0, dtype=torch.long))

    def forward(self, x: Tensor) -> Tensor:
        if x.numel() > 0:
            with torch.no_grad():
                rows, shape = to_rows(x.detach().float(), self.spec)  # (R, N)
                self._observe(rows)
                self.qparams_shape = torch.tensor(shape, dtype=torch.long)
                self.num_batches += 1
        return x

    def calculate_qparams(self) -> tuple[Tensor, Tensor]:
        """``(scale, zero_point)`` shaped as :mod:`torchslim.quant.affine` describes."""
        if int(self.num_batches) == 0:
            raise ConfigError(f"{type(self).__name__}: observer saw no data; "
                              "run calibration batches first")
        lo, hi = self._range()  # (R,), (R,)
        shape = tuple(self.qparams_shape.tolist())
        return compute_qparams(lo.reshape(shape), hi.reshape(shape), self.spec)

    def _load_from_state_dict(self, state_dict: dict[str, Tensor], prefix: str,
                              *args: object) -> None:
        adopt_buffer_shapes(self, state_dict, prefix)
        super()._load_from_state_dict(state_dict, prefix, *args)  # type: ignore[arg-type]

    def _observe(self, rows: Tensor) -> None:
        raise NotImplementedError

    def _batch_minmax(self, rows: Tensor) -> tuple[Tensor, Tensor]:
        """Per-row min and max of this batch (of every rank's batch under torchrun)."""
        lo, hi = torch.aminmax(rows, dim=1)  # (R,), (R,)
        return (lo, hi) if self.combiner is None else self.combiner.minmax(lo, hi)

    def _range(self) -> tuple[Tensor, Tensor]:
        raise NotImplementedError

    def extra_repr(self) -> str:
        return f"spec={self.spec}"


@OBSERVERS.register("minmax")
class MinMaxObserver(Observer):
    """Running min and max of everything seen."""

    def __init__(self, spec: QuantSpec) -> None:
        super().__init__(spec)
        self.register_buffer("min_val", torch.empty(0))  # (R,) once data arrives
        self.register_buffer("max_val", torch.empty(0))

    def _observe(self, rows: Tensor) -> None:
        lo, hi = self._batch_minmax(rows)  # (R,), (R,)
        if int(self.num_batches) == 0:
            self.min_val, self.max_val = lo, hi
        else:
            self.min_val = torch.minimum(self.min_val, lo)
            self.max_val = torch.maximum(self.max_val, hi)

    def _range(self) -> tuple[Tensor, Tensor]:
        return self.min_val, self.max_val


@OBSERVERS.register("moving_average")
class MovingAverageObserver(MinMaxObserver):
    """EMA of each batch's min and max: ``m <- m + momentum * (batch_m - m)``."""

    def __init__(self, spec: QuantSpec, *, momentum: float = 0.01) -> None:
        super().__init__(spec)
        if not 0.0 < momentum <= 1.0:
            raise ConfigError(f"momentum={momentum} must be in (0, 1]")
        self.momentum = momentum

    def _observe(self, rows: Tensor) -> None:
        lo, hi = self._batch_minmax(rows)  # (R,), (R,)
        if int(self.num_batches) == 0:  # the first batch initialises the averages
            self.min_val, self.max_val = lo, hi
        else:
            self.min_val = self.min_val + self.momentum * (lo - self.min_val)
            self.max_val = self.max_val + self.momentum * (hi - self.max_val)


class _ClippingObserver(MinMaxObserver):
    """Min-max plus a clipping rule; per_group is refused (state per group would be huge)."""

    def __init__(self, spec: QuantSpec) -> None:
        super().__init__(spec)
        if spec.granularity == "per_group":
            raise ConfigError(f"{type(self).__name__} supports per_tensor and per_channel, "
                              "not per_group; use the 'minmax' observer for grouped weights")


class _SampleObserver(_ClippingObserver):
    """Keeps a uniform random sample of at most ``max_samples`` values (split over rows)."""

    def __init__(self, spec: QuantSpec, *, max_samples: int = 2 ** 17, seed: int = 0) -> None:
        super().__init__(spec)
        if max_samples < 1:
            raise ConfigError(f"max_samples={max_samples} must be >= 1")
        self.max_samples = max_samples
        self._gen = torch.Generator().manual_seed(seed)
        self.register_buffer("sample", torch.empty(0))  # (R, k)
        self.register_buffer("sample_keys", torch.empty(0))  # (k,): shared by all rows

    def _observe(self, rows: Tensor) -> None:
        first = int(self.num_batches) == 0
        super()._observe(rows)
        keys = torch.rand(rows.shape[1], generator=self._gen).to(rows.device)  # (N,)
        cap = max(1, self.max_samples // rows.shape[0])
        if self.combiner is not None:  # every rank's smallest keys, with their values
            keys, rows = self.combiner.union_smallest(keys, rows, cap)
        if not first:
            keys = torch.cat([self.sample_keys, keys])  # (k + N,)
            rows = torch.cat([self.sample, rows], dim=1)  # (R, k + N)
        if keys.numel() > cap:  # keep the values with the smallest keys
            keep = torch.topk(keys, cap, largest=False).indices
            keys, rows = keys[keep], rows[:, keep]
        self.sample_keys, self.sample = keys, rows


@OBSERVERS.register("percentile")
class PercentileObserver(_SampleObserver):
    """Clips at the ``percentile`` of |x| (symmetric) or of each tail (asymmetric)."""

    def __init__(self, spec: QuantSpec, *, percentile: float = 99.99,
                 max_samples: int = 2 ** 17, seed: int = 0) -> None:
        super().__init__(spec, max_samples=max_samples, seed=seed)
        if not 0.0 < percentile <= 100.0:
            raise ConfigError(f"percentile={percentile} must be in (0, 100]")
        self.percentile = percentile

    def _range(self) -> tuple[Tensor, Tensor]:
        p = self.percentile / 100.0
        if self.spec.symmetric:
            amax = torch.quantile(self.sample.abs(), p, dim=1)  # (R,)
            return -amax, amax
        return (torch.quantile(self.sample, 1.0 - p, dim=1),
                torch.quantile(self.sample, p, dim=1))


@OBSERVERS.register("mse")
class MSEObserver(_SampleObserver):
    """Grid search over clipping ratios of the observed range, minimising
    ``|x - fake_quant(x)|^2`` on the kept sample, separately for each row."""

    def __init__(self, spec: QuantSpec, *, num_candidates: int = 100, min_ratio: float = 0.3,
                 max_samples: int = 2 ** 16, seed: int = 0) -> None:
        super().__init__(spec, max_samples=max_samples, seed=seed)
        if num_candidates < 1 or not 0.0 < min_ratio <= 1.0:
            raise ConfigError(f"num_candidates={num_candidates} must be >= 1 and "
                              f"min_ratio={min_ratio} in (0, 1]")
        self.ratios = torch.linspace(min_ratio, 1.0, num_candidates).tolist()

    def _range(self) -> tuple[Tensor, Tensor]:
        row_spec = QuantSpec(bits=self.spec.bits, signed=self.spec.signed,
                             symmetric=self.spec.symmetric, granularity="per_channel", axis=0)
        best_err = torch.full_like(self.min_val, float("inf"))  # (R,)
        best_lo, best_hi = self.min_val.clone(), self.max_val.clone()
        for ratio in self.ratios:
            lo, hi = self.min_val * ratio, self.max_val * ratio  # (R,)
            scale, zp = compute_qparams(lo, hi, row_spec)
            err = ((fake_quantize(self.sample, scale, zp, row_spec) - self.sample) ** 2).sum(1)
            better = err < best_err
            best_err = torch.where(better, err, best_err)
            best_lo = torch.where(better, lo, best_lo)
            best_hi = torch.where(better, hi, best_hi)
        return best_lo, best_hi


@OBSERVERS.register("entropy")
class EntropyObserver(_ClippingObserver):
    """TensorRT's KL calibration: the clipping threshold whose 128-level quantized
    histogram of |x| stays closest (in KL divergence) to the clipped histogram.

    Meant for symmetric specs; with an asymmetric one the threshold clips each side of
    the observed range (``[max(min, -t), min(max, t)]``), e.g. unsigned post-ReLU data.
    """

    def __init__(self, spec: QuantSpec, *, bins: int = 2048, levels: int | None = None,
                 stride: int = 1, skip_zeros: bool = True) -> None:
        super().__init__(spec)
        self.skip_zeros = skip_zeros
        if levels is not None and not 1 <= levels <= bins or stride < 1:
            raise ConfigError(f"need 1 <= levels={levels} <= bins={bins} and stride={stride} >= 1")
        self.bins, self.levels, self.stride = bins, levels, stride
        self.register_buffer("hist", torch.empty(0))  # (R, bins) counts of |x|
        self.register_buffer("hist_max", torch.empty(0))  # (R,) upper edge of the last bin

    def _observe(self, rows: Tensor) -> None:
        first = int(self.num_batches) == 0
        super()._observe(rows)
        amax = rows.abs().amax(dim=1).clamp(min=1e-12)  # (R,)
        if self.combiner is not None:  # the bin edges follow the max over every rank
            amax = self.combiner.reduce(amax, "max")
        if first:
            self.hist = torch.zeros(rows.shape[0], self.bins, device=rows.device)
            self.hist_max = amax
        elif bool((amax > self.hist_max).any()):
            self._rebin(torch.maximum(amax, self.hist_max))
        # Exact zeros (half of a post-ReLU tensor) are exact on every grid, so they cost no
        # error; counted in bin 0 they dominate the KL and force a far too small threshold.
        counts = (rows != 0).to(rows.dtype) if self.skip_zeros else torch.ones_like(rows)
        if self.combiner is None:
            self.hist.scatter_add_(1, self._bin_of(rows.abs()), counts)
        else:  # this batch's counts on the shared edges, summed over ranks
            batch = torch.zeros_like(self.hist).scatter_add_(1, self._bin_of(rows.abs()), counts)
            self.hist += self.combiner.reduce(batch, "sum")

    def _bin_of(self, values: Tensor) -> Tensor:
        """Bin index of each ``(R, N)`` value under the current ``hist_max``."""
        width = (self.hist_max / self.bins).unsqueeze(1)  # (R, 1)
        return torch.floor(values / width).long().clamp(0, self.bins - 1)

    def _rebin(self, new_max: Tensor) -> None:
        old_width = (self.hist_max / self.bins).unsqueeze(1)  # (R, 1)
        centres = (torch.arange(self.bins, device=self.hist.device) + 0.5) * old_width  # (R, B)
        self.hist_max = new_max
        self.hist = torch.zeros_like(self.hist).scatter_add_(1, self._bin_of(centres), self.hist)

    def _levels_for_abs(self) -> int:
        """Quantization levels that fall on ``|x|`` in [0, t]: 128 for symmetric int8
        (TensorRT's figure); for an asymmetric grid all of them (256 for uint8) when the
        data has one sign, half when it has both, since the grid then spans [-t, t]."""
        if self.spec.symmetric:
            return self.spec.qmax + 1
        total = self.spec.qmax - self.spec.qmin + 1
        two_sided = bool(((self.min_val < 0) & (self.max_val > 0)).any())
        return min(total // 2 if two_sided else total, self.bins)

    def _range(self) -> tuple[Tensor, Tensor]:
        threshold = (self._best_stop() + 0.5) * self.hist_max / self.bins  # (R,), as TensorRT
        return torch.maximum(self.min_val, -threshold), torch.minimum(self.max_val, threshold)

    def _best_stop(self) -> Tensor:
        """Per row, the number ``i`` of kept bins whose KL(P || Q) is smallest.

        P is ``hist[:i]`` with the outliers ``hist[i:]`` folded into bin ``i - 1``. Q is
        quantized from the clipped histogram ``hist[:i]`` WITHOUT the outliers (as TensorRT
        and pytorch-quantization do; folding them into Q too makes Q == P at i = levels, so
        the smallest threshold would always win): ``levels`` groups of ``i // levels`` bins
        (the last takes the remainder), each group's mass ``m`` spread evenly over its ``c``
        bins that are non-empty in P. P and Q are normalised separately (totals ``T`` and
        ``S``); with ``M`` a group's mass in P (``m``, plus the outliers for the last group)
        ``KL = (sum_b P_b log P_b - sum_g M log(m / c)) / T - log T + log S``, which prefix
        sums give in O(levels) per candidate. A group with ``m = 0 < M`` makes KL infinite,
        i.e. that candidate is rejected.
        """
        h = self.hist.double()  # (R, B)
        b, levels = h.shape[1], self.levels or self._levels_for_abs()
        cands = torch.arange(levels, b + 1, self.stride, device=h.device)  # (K,)
        if int(cands[-1]) != b:  # always try "no clipping"
            cands = torch.cat([cands, cands.new_tensor([b])])
        zero = h.new_zeros(h.shape[0], 1)
        cum = torch.cat([zero, h.cumsum(1)], 1)  # (R, B + 1): cum[:, k] = sum h[:, :k]
        nnz = torch.cat([zero, (h > 0).double().cumsum(1)], 1)  # non-empty bins before k
        plogp = torch.cat([zero, torch.xlogy(h, h).cumsum(1)], 1)
        tail = cum[:, -1:] - cum[:, cands]  # (R, K) outliers beyond each candidate
        folded = h[:, cands - 1] + tail  # (R, K) bin i - 1 of P
        p_term = plogp[:, cands - 1] + torch.xlogy(folded, folded)  # (R, K)
        edges = torch.arange(levels + 1, device=h.device) * (cands[:, None] // levels)
        edges[:, -1] = cands  # (K, levels + 1): group j is bins [edges[j], edges[j + 1])
        mass = cum[:, edges[:, 1:]] - cum[:, edges[:, :-1]]  # (R, K, levels)
        count = nnz[:, edges[:, 1:]] - nnz[:, edges[:, :-1]]
        count[..., -1] += ((h[:, cands - 1] == 0) & (tail > 0)).double()  # P's last bin
        p_mass = mass.clone()
        p_mass[..., -1] += tail  # (R, K, levels): each group's mass in P
        q_term = torch.xlogy(p_mass, mass / count.clamp(min=1.0)).sum(-1)  # (R, K)
        total = cum[:, -1:].clamp(min=1.0)  # (R, 1): T
        kept = cum[:, cands].clamp(min=1.0)  # (R, K): S
        kl = (p_term - q_term) / total - total.log() + kept.log()  # (R, K)
        return cands[kl.argmin(1)].to(self.hist_max.dtype)  # (R,)
