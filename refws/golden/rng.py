"""A counter-based integer stream that no library upgrade can change, and grid-valued arrays.

Golden inputs must be the same numbers forever, on every machine. NumPy's ``Generator`` makes
no such promise across versions, so the stream here is SplitMix64 (Steele, Lea & Flood,
"Fast splittable pseudorandom number generators", OOPSLA 2014) evaluated at counters
``1, 2, ...`` from a seed derived by SHA-256 from the case and array names:

    z = seed + i * 0x9E3779B97F4A7C15           (mod 2**64)
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9
    z = (z ^ (z >> 27)) * 0x94D049BB133111EB
    value_i = z ^ (z >> 31)

An integer in ``[lo, hi]`` is ``lo + value_i mod (hi - lo + 1)``; a grid value is that integer
times ``2**-exponent``. Integers of at most 24 bits times a power of two are exactly
representable in float32, so float32 backends see exactly the stored numbers.

:data:`GRIDS` holds the input grids a case can ask for (``bits``, docs/golden-format.md): 12 is the
historical default; 4, 8 and 11 are exact in narrower formats; 24 uses every bit of a float32
significand (its outputs are made correctly rounded by :mod:`refws.golden.ozaki`).
"""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

__all__ = [
    "seed_of",
    "splitmix64",
    "grid_ints",
    "grid_array",
    "data_array",
    "BITS",
    "Grid",
    "GRIDS",
    "DEFAULT_BITS",
    "grid_of",
    "generator_vectors",
]

# Operands: 12-bit integers over 2**11, i.e. values in [-1, 1] with 2**-11 steps (float32-exact).
BITS = 11

_GAMMA = np.uint64(0x9E3779B97F4A7C15)
_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)


def seed_of(*names: str) -> int:
    """64-bit seed: the first 8 bytes (big-endian) of SHA-256 of the names joined by '/'."""
    return int.from_bytes(hashlib.sha256("/".join(names).encode()).digest()[:8], "big")


_GAMMA_INT = 0x9E3779B97F4A7C15
# Elements per block: the uint64 buffers of a block (256 KiB each) stay in a core's L2 cache, so
# the stream's ten elementwise passes read and write cache, not memory.
_BLOCK = 1 << 15


@functools.cache
def _steps() -> np.ndarray:
    """``k * GAMMA mod 2**64`` for ``k = 1 .. _BLOCK``: a block's counters, before its offset."""
    with np.errstate(over="ignore"):
        return np.arange(1, _BLOCK + 1, dtype=np.uint64) * _GAMMA


def _mix(z: np.ndarray, tmp: np.ndarray) -> None:
    """SplitMix64's output function applied to ``z`` in place (``tmp``: scratch of its size)."""
    with np.errstate(over="ignore"):
        for shift, factor in ((30, _M1), (27, _M2)):
            np.right_shift(z, np.uint64(shift), out=tmp)
            np.bitwise_xor(z, tmp, out=z)
            np.multiply(z, factor, out=z)
        np.right_shift(z, np.uint64(31), out=tmp)
        np.bitwise_xor(z, tmp, out=z)


def _blocks(seed: int, count: int):
    """``(start, z, tmp)`` per block of the stream: ``z`` the outputs for counters ``start + 1 ..``
    (a buffer reused by the next block), ``tmp`` a scratch buffer of its size."""
    z_all, tmp_all = np.empty(min(count, _BLOCK), np.uint64), np.empty(min(count, _BLOCK), np.uint64)
    for start in range(0, count, _BLOCK):
        m = min(_BLOCK, count - start)
        z, tmp = z_all[:m], tmp_all[:m]
        np.add(_steps()[:m], np.uint64((seed + start * _GAMMA_INT) % 2**64), out=z)  # seed + i * GAMMA
        _mix(z, tmp)
        yield start, z, tmp


def splitmix64(seed: int, count: int) -> np.ndarray:
    """The first ``count`` SplitMix64 outputs for ``seed`` (uint64)."""
    out = np.empty(count, dtype=np.uint64)
    for start, z, _ in _blocks(seed, count):
        out[start : start + z.size] = z
    return out


def _reduce(z: np.ndarray, span: np.uint64, tmp: np.ndarray) -> np.ndarray:
    """``z mod span`` in place: through NumPy's vectorized division by a scalar (its remainder
    divides element by element)."""
    np.floor_divide(z, span, out=tmp)
    np.multiply(tmp, span, out=tmp)
    return np.subtract(z, tmp, out=z)


def grid_ints(seed: int, shape: Sequence[int], lo: int, hi: int) -> np.ndarray:
    """Integers in ``[lo, hi]`` (int64) of the given shape from the stream of ``seed``."""
    count = int(np.prod(shape, dtype=np.int64))
    out = np.empty(count, dtype=np.int64)
    for start, z, tmp in _blocks(seed, count):
        np.add(_reduce(z, np.uint64(hi - lo + 1), tmp).view(np.int64), lo, out=out[start : start + z.size])
    return out.reshape(shape)


def grid_array(seed: int, shape: Sequence[int], lo: int, hi: int, exponent: int) -> np.ndarray:
    """float64 array of ``grid_ints(...) * 2**-exponent`` (exactly float32-representable).

    Made block by block from the stream: each integer (below ``2**25``) converted, offset and
    scaled by a power of two, every step exact."""
    if max(abs(lo), abs(hi)) >= 2**24:
        raise ValueError(f"grid range [{lo}, {hi}] is not float32-representable")
    count = int(np.prod(shape, dtype=np.int64))
    out = np.empty(count, dtype=np.float64)
    scale = 2.0**-exponent
    for start, z, tmp in _blocks(seed, count):
        part = out[start : start + z.size]
        np.copyto(part, _reduce(z, np.uint64(hi - lo + 1), tmp).view(np.int64), casting="unsafe")
        part += lo
        part *= scale
    return out.reshape(tuple(shape))


def data_array(
    case_name: str, array: str, shape: Sequence[int], lo: int = -(2**BITS), hi: int = 2**BITS, exponent: int = BITS
) -> np.ndarray:
    """The stored input ``array`` of ``case_name``: grid integers from the case's own stream."""
    return grid_array(seed_of(case_name, array), tuple(shape), lo, hi, exponent)


@dataclass(frozen=True)
class Grid:
    """An input grid: operands are integers in ``[-top, top]`` times ``2**-exponent``; gains are
    integers in ``[1, top]`` times ``2**-(exponent - 1)`` (values in ``(0, 2]``).

    ``significant_bits`` is the most significant bits any value needs: a format with at least
    that many (and the exponent range for ``2**-exponent``) holds every value exactly.
    """

    bits: int
    top: int
    exponent: int

    @property
    def significant_bits(self) -> int:
        power_of_two = self.top & (self.top - 1) == 0
        return self.top.bit_length() - 1 if power_of_two and self.top > 1 else self.top.bit_length()

    def values(self, case_name: str, array: str, shape: Sequence[int]) -> np.ndarray:
        """Operand ``array`` of ``case_name``: integers in ``[-top, top]`` times ``2**-exponent``."""
        return data_array(case_name, array, shape, -self.top, self.top, self.exponent)

    def gains(self, case_name: str, array: str, shape: Sequence[int]) -> np.ndarray:
        """Gains: integers in ``[1, top]`` times ``2**-(exponent - 1)``, in ``(0, 2]``."""
        return data_array(case_name, array, shape, 1, self.top, self.exponent - 1)


#: The grids a case can ask for, by ``bits``. 12 is the historical default: every store built
#: before grids existed is ``bits = 12``.
GRIDS = {
    4: Grid(4, 2**3, 3),
    8: Grid(8, 2**7, 7),
    11: Grid(11, 2**10, 10),
    12: Grid(12, 2**11, 11),
    24: Grid(24, 2**24 - 1, 24),
}
DEFAULT_BITS = 12


def grid_of(bits: int) -> Grid:
    """The :class:`Grid` of ``bits`` (ValueError naming the accepted values otherwise)."""
    if isinstance(bits, bool) or bits not in GRIDS:
        raise ValueError(f"bits={bits!r}: expected one of {sorted(GRIDS)}")
    return GRIDS[bits]


def generator_vectors(name: str = "conv/example", arrays: Sequence[str] = ("x", "gain"), count: int = 6) -> dict:
    """``{bits: {array: (first integers, exponent)}}``: what another language's generator must
    reproduce (``gain`` with :meth:`Grid.gains`, every other array with :meth:`Grid.values`);
    the values are the integers times ``2**-exponent``."""
    out: dict[int, dict[str, tuple[list[int], int]]] = {}
    for bits, grid in GRIDS.items():
        out[bits] = {}
        for a in arrays:
            lo, exponent = (1, grid.exponent - 1) if a == "gain" else (-grid.top, grid.exponent)
            ints = grid_ints(seed_of(name, a), (count,), lo, grid.top)
            out[bits][a] = ([int(v) for v in ints], exponent)
    return out
