"""Exact sums of bilinear maps of dyadic operands of any width, correctly rounded, vectorized.

The bilinear outputs of golden cases (a convolution, its VJP and JVP, a transposed convolution)
are made exact by the argument of :mod:`refws.golden.rational`: with operands on grids ``2**-ea``
and ``2**-eb``, every partial sum of ``op(a, b)`` is an integer number of units ``2**-(ea + eb)``
bounded by ``op(|a|, |b|)``, so float64 arithmetic rounds nothing while that bound stays below
``2**52`` units. Operands with 12-bit integers (``bits <= 12``) meet it for any realistic size
(up to ``2**28`` products per element); 24-bit operands (``bits = 24``) do not.

The Ozaki scheme (Ozaki, Ogita, Oishi & Rump, "Error-free transformations of matrix
multiplication by using fast routines of matrix multiplication and its applications",
Numer. Algorithms 59, 2012) restores exactness by an error-free splitting: every operand is
written as a sum of pieces whose integers have at most :data:`PIECE_BITS` bits (sign-magnitude
digits in base ``2**12``, so ``|a| = sum |a_i|`` too)::

    a = sum_i a_i 2**(12 i),   b = sum_j b_j 2**(12 j)   =>   op(a, b) = sum_ij op(a_i, b_j) 2**(12 (i + j))

Each partial ``op(a_i, b_j)`` has 12-bit operands and is computed by refws's float64 code
**exactly** (its bound ``op(|a_i|, |b_j|)`` is checked for every call, as before). The partials
are then summed per element without any rounding, in int64 limbs (:class:`ExactSum`), and the
exact sum is rounded once: to nearest (the stored value) or toward ``+inf`` (``__absbound``,
from the partials of ``op(|a_i|, |b_j|)``, which are exactly ``op(|a|, |b|)`` in total).

The final rounding: the exact sum ``S`` (in units ``2**-E``) is brought to ``S = H * 2**k + L``
with ``|H| < 2**53`` and ``0 <= L < 2**53``, both exact float64 values after scaling by a power
of two; IEEE addition of two doubles rounds their exact sum once, so ``fl(H 2**k + L)`` is the
correctly rounded ``S`` (to nearest, ties to even), and Knuth's TwoSum gives the sign of the
remainder for the rounding upward. ``spec_tests/test_golden_catalogs.py`` checks sampled
elements of every grid against :class:`fractions.Fraction` sums written in the test.
"""

from __future__ import annotations

import numpy as np

__all__ = ["PIECE_BITS", "split", "ExactSum", "bilinear_sums", "exact_parts", "round_up_sum"]

PIECE_BITS = 12
_UNIT_LIMIT = 2.0**52  # a partial's magnitude bound, in units, must stay below this
_INT_LIMIT = 2**62  # int64 headroom for sums of limbs at one shift


def _grid_exponent(a: np.ndarray) -> int:
    from .rational import grid_exponent

    return grid_exponent(a)


def split(a: np.ndarray, piece_bits: int = PIECE_BITS):
    """``a`` as ``(pieces, e)``: ``a = sum_i ints_i * 2**(shift_i - e)`` exactly.

    ``ints_i`` are float64 arrays of integers with ``|ints_i| < 2**piece_bits`` and the sign of
    ``a`` (sign-magnitude digits, so ``|a| = sum_i |ints_i| 2**(shift_i - e)`` as well);
    ``shift_i = piece_bits * i``. An operand whose integers already fit (every grid with
    ``bits <= 12``) is one piece, unchanged.
    """
    from .rational import grid_scaled

    ints, e = grid_scaled(a)
    top = max(float(np.max(ints, initial=0.0)), -float(np.min(ints, initial=0.0)))
    if top <= 2.0**piece_bits:  # 2**12 itself: one piece (the bits = 12 grid reaches 2**11)
        return [(ints, 0)], e
    mag = np.abs(ints)
    sign = np.sign(ints)
    pieces, shift, base = [], 0, 2.0**piece_bits
    while np.any(mag):
        digit = np.mod(mag, base)  # exact: integers below 2**53
        pieces.append((sign * digit, shift))
        mag = (mag - digit) / base  # exact division by a power of two
        shift += piece_bits
    return pieces, e


class ExactSum:
    """An exact sum of integer arrays times powers of two, kept as int64 limbs per shift.

    ``add(ints, shift, e)`` adds ``ints * 2**(shift - e)`` (``ints``: integer-valued float64 or
    int64, ``|ints| < 2**53``). The value is exact whatever is added; :meth:`nearest` and
    :meth:`upper` round it once. :meth:`to_qarray` gives it as an exact :class:`QArray`.
    """

    def __init__(self, shape=None):
        self.shape = shape
        self.limbs = {}  # exponent t -> integer array (float64 while exact, else int64): sum of ints * 2**t
        self.bounds = {}  # exponent t -> a bound of the limb's largest magnitude

    def add(self, ints, shift: int, e: int, top=None) -> ExactSum:
        """``top``: a known bound of ``max |ints|`` (saves a pass over them), e.g. the largest
        element of the magnitude ``op(|a|, |b|)`` for ``ints = op(a, b)``."""
        ints = np.asarray(ints)
        if self.shape is None:
            self.shape = ints.shape
        ints = np.broadcast_to(ints, self.shape)
        top = int(np.max(np.abs(ints), initial=0) if top is None else top)
        if top >= 2**53:
            raise ArithmeticError(f"ExactSum.add: integers up to {top} exceed 2**53")
        t = shift - e
        bound = self.bounds.get(t, 0) + top
        if bound >= _INT_LIMIT:
            raise ArithmeticError("ExactSum: too many terms at one shift for int64 limbs")
        # a limb stays float64 while its bound is below 2**53 (integer float sums are then exact)
        kind = np.float64 if bound < 2**53 else np.int64
        if t in self.limbs:
            self.limbs[t] = self.limbs[t].astype(kind, copy=False) + ints.astype(kind, copy=False)
        else:
            self.limbs[t] = np.ascontiguousarray(ints, dtype=kind)  # never modified in place
        self.bounds[t] = bound
        return self

    def add_float(self, a) -> ExactSum:
        """Add a float64 array exactly (every finite float64 is dyadic)."""
        a = np.asarray(a, dtype=np.float64)
        e = _grid_exponent(a)
        return self.add(np.ldexp(a, e), 0, e)

    def _two_limbs(self):
        """``(H, L, t_lo, low_bits)`` with the sum ``= (H * 2**low_bits + L) * 2**t_lo``, ``0 <= L < 2**low_bits``."""
        if not self.limbs:
            z = np.zeros(self.shape if self.shape is not None else (), dtype=np.int64)
            return z, z, 0, 0
        ts = sorted(self.limbs)
        limbs = {t: a.astype(np.int64) for t, a in self.limbs.items()}
        acc, low, low_bits = limbs[ts[0]], np.zeros(self.shape, dtype=np.int64), 0
        for prev, t in zip(ts, ts[1:]):
            d = t - prev
            if low_bits + d > 52:
                raise ArithmeticError("ExactSum: shifts span more than 52 bits")
            low = low + ((acc & np.int64(2**d - 1)) << np.int64(low_bits))  # floor semantics: 0 <= part < 2**d
            acc = (acc >> np.int64(d)) + limbs[t]
            low_bits += d
        return acc, low, ts[0], low_bits

    def _single(self):
        """The exact sum as one float64 array when it is one limb below ``2**53`` (else None)."""
        if len(self.limbs) == 1:
            ((t, limb),) = self.limbs.items()
            if self.bounds[t] < 2**53:
                out = np.ldexp(limb.astype(np.float64, copy=False), t, out=np.empty(np.shape(limb)))
                return np.add(out, 0.0, out=out)  # + 0.0: no -0.0
        return None

    def _pair(self):
        """Two exact float64 arrays ``hi``, ``lo`` with ``hi + lo`` the exact sum."""
        acc, low, t, low_bits = self._two_limbs()
        k = 53 - low_bits  # L' = R * 2**low_bits + L < 2**53
        rem, high = acc & np.int64(2**k - 1), acc >> np.int64(k)
        lo = (rem << np.int64(low_bits)) + low
        if np.max(np.abs(high), initial=0) >= 2**53:
            raise ArithmeticError("ExactSum: sum too large for the two-double rounding")
        return np.ldexp(high.astype(np.float64), t + 53), np.ldexp(lo.astype(np.float64), t)

    def nearest(self) -> np.ndarray:
        """The exact sum rounded to nearest (ties to even): one IEEE addition of two exact doubles."""
        single = self._single()
        if single is not None:  # exact already: nothing to round
            return np.asarray(single, dtype=np.float64)
        hi, lo = self._pair()
        return np.asarray(hi + lo, dtype=np.float64)

    def upper(self) -> np.ndarray:
        """The exact sum rounded toward ``+inf`` (the smallest float64 ``>=`` it)."""
        single = self._single()
        if single is not None:
            return np.asarray(single, dtype=np.float64)
        hi, lo = self._pair()
        s = hi + lo
        bb = s - hi  # TwoSum (Knuth): err = (hi + lo) - s exactly
        err = (hi - (s - bb)) + (lo - bb)
        return np.asarray(np.where(err > 0, np.nextafter(s, np.inf), s), dtype=np.float64)

    def to_qarray(self):
        """The exact sum as a :class:`refws.golden.rational.QArray` (Python ints)."""
        from .rational import QArray

        acc, low, t, low_bits = self._two_limbs()
        num = acc.astype(object)
        if low_bits:
            num = num * (1 << low_bits) + low.astype(object)
        if t >= 0:
            return QArray(num * (1 << t), 1)
        return QArray(num, 1 << -t)


def _split_cached(a, cache: dict | None):
    """:func:`split`, remembered in ``cache`` by the array's identity (the caller keeps ``a`` alive)."""
    if cache is None:
        return split(a)
    key = id(a)
    if key not in cache:
        cache[key] = (a, split(a))  # holding ``a`` keeps its id from being reused
    return cache[key][1]


def bilinear_sums(
    op, a, b, value: ExactSum | None = None, magnitude: ExactSum | None = None, splits: dict | None = None
):
    """Add ``op(a, b)`` to ``value`` and ``op(|a|, |b|)`` to ``magnitude``, exactly.

    Both operands are split (:func:`split`; ``splits``, a dict, remembers the splits of operands
    used again); every partial ``op(a_i, b_j)`` is computed in float64 after checking that its
    bound ``op(|a_i|, |b_j|)`` (the partial of the magnitude) is below ``2**52`` units, so neither
    is ever rounded. ArithmeticError otherwise (operands too wide even for 12-bit pieces: more than
    ``2**28`` products per element).
    """
    pa, ea = _split_cached(a, splits)
    pb, eb = _split_cached(b, splits)
    for ia, sa in pa:
        for ib, sb in pb:
            mag = op(np.abs(ia), np.abs(ib))
            top = float(np.max(mag, initial=0.0))  # mag >= 0, and |op(ia, ib)| <= mag
            if top >= _UNIT_LIMIT:
                raise ArithmeticError(
                    f"golden operands too wide for an exact float64 evaluation: "
                    f"|op| bound {top:.3g} units >= 2**52 for one pair of "
                    f"{PIECE_BITS}-bit pieces"
                )
            if magnitude is not None:
                magnitude.add(mag, sa + sb, ea + eb, top)
            del mag  # one output-sized temporary at a time
            if value is not None:
                value.add(op(ia, ib), sa + sb, ea + eb, top)
    return value, magnitude


def exact_parts(op, a, b) -> list:
    """``op(a, b)`` as a list of float64 arrays that are each exact and sum to it exactly.

    For maps linear in ``op(a, b)`` (a weight-standardization VJP) that need the exact value
    rather than a rounded one: apply the map to each part and add the exact results.
    """
    pa, ea = split(a)
    pb, eb = split(b)
    parts = []
    for ia, sa in pa:
        for ib, sb in pb:
            if float(np.max(op(np.abs(ia), np.abs(ib)), initial=0.0)) >= _UNIT_LIMIT:
                raise ArithmeticError("golden operands too wide for an exact float64 evaluation")
            parts.append(np.ldexp(op(ia, ib), sa + sb - ea - eb))
    return parts


def round_up_sum(op, a, b) -> np.ndarray:
    """``op(|a|, |b|)`` exactly, rounded toward ``+inf`` (exact whenever it is a float64)."""
    _, mag = bilinear_sums(op, a, b, None, ExactSum())
    return mag.upper()
