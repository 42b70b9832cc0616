"""``reduce_range``: 7-bit weights for x86 CPUs whose INT8 kernels saturate.

Without VNNI, ONNX Runtime's u8 x s8 kernels on x86 (AVX2, AVX-512 without VNNI) multiply
with ``vpmaddubsw``, which adds PAIRS of u8 * s8 products into an int16 and saturates it:
two products of 255 * 127 (= 64,770) do not fit in 32,767. With full-range 8-bit weights
the artifact then computes something else than the fake-quant model (on this project's
AMD EPYC, a ResNet-8 W8A8 differed by up to 0.062 and agreed on 93 % of the argmaxes).
With 7-bit weights (|q| <= 63) a pair sums to at most 2 * 255 * 63 = 32,130: exact.
VNNI (``vpdpbusd``), AMX and ARM's dot-product instructions accumulate in int32 and do not
saturate, so they keep the full 8-bit range.

``reduce_range`` follows ONNX Runtime's own ``quantize_static(reduce_range=...)``: it
narrows the WEIGHTS only (activations keep their 8-bit grid). ONNX Runtime uses
[-64, 64] for such weights, torchslim the symmetric 7-bit grid [-63, 63]. The option is

* ``"auto"`` (the default): 7-bit weights when the quantizing machine is an x86 CPU
  without ``avx512_vnni``, ``avx_vnni`` or ``amx_int8`` in ``/proc/cpuinfo`` (an x86 CPU
  whose flags cannot be read counts as one without: 7-bit weights are correct everywhere);
* ``True``: always 7-bit weights (an artifact that is exact on every CPU);
* ``False``: full 8-bit weights (for VNNI / AMX / ARM servers, or TensorRT).

Only 8-bit signed weights change; narrower weights already fit.
"""

from __future__ import annotations

import dataclasses
import functools
import platform
from pathlib import Path

from torchslim.errors import ConfigError
from torchslim.quant.affine import QuantSpec

__all__ = ["REDUCE_RANGE_CHOICES", "INT8_DOT_FLAGS", "check_reduce_range", "resolve_reduce_range",
           "reduced_weight", "cpu_int8_dot_flags"]

REDUCE_RANGE_CHOICES = ("auto", True, False)
# /proc/cpuinfo flags of x86 instructions that accumulate u8 x s8 products in int32
INT8_DOT_FLAGS = ("avx512_vnni", "avx_vnni", "amx_int8")
REDUCED_BITS = 7
_X86 = ("x86_64", "amd64", "i386", "i686", "x86")


def check_reduce_range(value: object, where: str = "reduce_range") -> None:
    """ConfigError unless ``value`` is "auto", True or False."""
    if not (value == "auto" or isinstance(value, bool)):
        raise ConfigError(f"{where}={value!r} must be 'auto', True or False (7-bit weights "
                          "for x86 CPUs without VNNI, whose INT8 kernels saturate)")


@functools.lru_cache(maxsize=1)
def _this_cpu() -> tuple[str, ...] | None:
    return cpu_int8_dot_flags()


def cpu_int8_dot_flags(cpuinfo: str = "/proc/cpuinfo") -> tuple[str, ...] | None:
    """The INT8 dot-product flags a CPU reports (``cpuinfo``: its /proc/cpuinfo), or None
    when they cannot be read."""
    try:
        text = Path(cpuinfo).read_text(errors="replace")
    except OSError:
        return None
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "flags":
            flags = set(value.split())
            return tuple(f for f in INT8_DOT_FLAGS if f in flags)
    return None


def resolve_reduce_range(value: object, *, machine: str | None = None,
                         flags: tuple[str, ...] | None | str = "read") -> tuple[bool, str]:
    """``(reduce, why)`` for a ``reduce_range`` setting on this machine (or on the one
    described by ``machine`` / ``flags``, for tests)."""
    check_reduce_range(value)
    if isinstance(value, bool):
        return value, f"reduce_range={value}"
    arch = (machine if machine is not None else platform.machine()).lower()
    if arch not in _X86:
        return False, f"reduce_range='auto': {arch} CPU (its INT8 dot products do not saturate)"
    found = _this_cpu() if flags == "read" else flags
    if found is None:
        return True, "reduce_range='auto': x86 CPU whose flags cannot be read (7-bit weights)"
    if found:
        return False, f"reduce_range='auto': this x86 CPU has {', '.join(found)} (8-bit weights)"
    return True, ("reduce_range='auto': this x86 CPU has no VNNI / AMX, so ONNX Runtime's u8s8 "
                  "kernels saturate int16 pair sums (7-bit weights)")


def reduced_weight(spec: QuantSpec) -> QuantSpec:
    """``spec`` with 7 bits when it is an 8-bit signed weight spec, else unchanged."""
    if spec.bits == 8 and spec.signed:
        return dataclasses.replace(spec, bits=REDUCED_BITS)
    return spec
