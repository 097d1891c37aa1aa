"""Exact rational arrays and the two ways golden numbers are made exact.

1. Bilinear maps (convolution, its VJP and JVP, linear layers) of dyadic grid operands are
   computed by refws's float64 code and are *exact*: every product is a multiple of the product
   of the operands' grid units, and when ``op(|a|, |b|) <= 2**52`` units every partial sum is an
   integer number of units below 2**53, so no rounding happens in any order of summation.
   :func:`exact_bilinear` checks that bound for every call and refuses to go on otherwise.
2. Weight standardization is not bilinear: it is evaluated in exact rational arithmetic
   (:class:`fractions.Fraction`), with square roots to ``SQRT_BITS`` bits by ``math.isqrt``,
   and combined with the exact bilinear pieces as a :class:`QArray` (integer numerators over
   one common denominator). The final division ``num / den`` of two Python ints is correctly
   rounded by CPython, so a stored value differs from the exact real value by at most half
   an ulp plus the ``2**-SQRT_BITS`` relative error of the square root.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from fractions import Fraction
from typing import Any

import numpy as np
from numpy.typing import ArrayLike

__all__ = ["SQRT_BITS", "sqrt_q", "QArray", "exact_bilinear", "grid_exponent", "grid_scaled", "bilinear_upper",
           "sum_up"]

SQRT_BITS = 256

# A bilinear map of two float64 arrays (a convolution, its VJP or JVP halves, a linear layer).
BilinearOp = Callable[[np.ndarray, np.ndarray], np.ndarray]


def sqrt_q(v: Fraction) -> Fraction:
    """sqrt(v) for a rational ``v >= 0``, to a relative error below ``2**-SQRT_BITS``."""
    if v < 0:
        raise ValueError(f"sqrt of a negative number {v}")
    if v == 0:
        return Fraction(0)
    p, q = v.numerator, v.denominator
    # sqrt(p/q) = sqrt(p*q)/q; scale so the integer root has SQRT_BITS + 2 bits at least.
    shift = max(0, SQRT_BITS + 2 - (p * q).bit_length() // 2)
    return Fraction(math.isqrt(p * q << (2 * shift)), q << shift)


def _exponent_by_elements(a: np.ndarray) -> int:
    """The largest, over the elements, of the smallest ``e`` making the element an integer."""
    nz = a[a != 0]
    if nz.size == 0:
        return 0
    _, exps = np.frexp(nz)
    # a = m * 2**exp with 0.5 <= |m| < 1 and 53-bit m: find the lowest set bit of each mantissa.
    mant = np.ldexp(np.abs(np.frexp(nz)[0]), 53).astype(np.int64)
    low = (mant & -mant).astype(np.float64)
    return max(0, int(np.max(53 - exps - np.log2(low).astype(np.int64))))


def grid_exponent(a: np.ndarray) -> int:
    """Smallest ``e >= 0`` with ``a * 2**e`` integral (the array's dyadic grid unit is ``2**-e``).

    Computed on a sample of at most 4096 elements, then checked on the whole array: integral at
    that ``e`` means it is the smallest (no element needs more, the sample needs as much);
    otherwise computed element by element.
    """
    return grid_scaled(a)[1]


def grid_scaled(a: np.ndarray) -> tuple:
    """``(a * 2**e, e)`` with ``e`` = :func:`grid_exponent` of ``a``: the grid integers (float64,
    exact) along with their exponent, from the same passes over ``a``."""
    a = np.asarray(a, dtype=np.float64)
    flat = a.ravel()
    if flat.size > 4096:
        guess = _exponent_by_elements(flat[::flat.size // 4096 + 1])
        scaled = np.ldexp(a, guess)
        frac = np.floor(scaled)
        np.subtract(scaled, frac, out=frac)          # nan for inf or nan: not all zero
        if not frac.any():                           # every element finite and integral at the guess
            return scaled, guess
        del frac
    if not np.all(np.isfinite(a)):
        raise ValueError("golden operands must be finite")
    if flat.size <= 4096:
        e = _exponent_by_elements(flat)
        return np.ldexp(a, e), e
    if np.array_equal(scaled, np.floor(scaled)):
        return scaled, guess
    e = _exponent_by_elements(flat)
    return np.ldexp(a, e), e


class QArray:
    """An exact rational array: Python-int numerators (object ndarray) over one positive denominator."""

    __slots__ = ("num", "den")

    def __init__(self, num: np.ndarray, den: int = 1) -> None:
        self.num = np.asarray(num, dtype=object)
        self.den = int(den)

    @classmethod
    def from_float(cls, a: np.ndarray) -> QArray:
        """Exact conversion of a dyadic float64 array (every finite float64 is dyadic)."""
        a = np.asarray(a, dtype=np.float64)
        e = grid_exponent(a)
        ints = np.ldexp(a, e)
        if np.max(np.abs(ints), initial=0) < 2**53:
            num = ints.astype(np.int64).astype(object)
        else:
            num = np.frompyfunc(lambda v: int(v), 1, 1)(ints)
        return cls(num, 1 << e)

    @property
    def shape(self) -> tuple[int, ...]:
        return self.num.shape

    def _common(self, other: QArray):
        d = math.lcm(self.den, other.den)
        return self.num * (d // self.den), other.num * (d // other.den), d

    def __add__(self, other: QArray) -> QArray:
        a, b, d = self._common(other)
        return QArray(a + b, d)

    def __mul__(self, other: QArray) -> QArray:
        return QArray(self.num * other.num, self.den * other.den)

    def scale(self, coefs: Any, axis: int | None = None) -> QArray:
        """Multiply by one Fraction, or by one Fraction per index along ``axis``.

        ``coefs``: one number :class:`~fractions.Fraction` accepts (``axis=None``), else a sequence
        of them, one per index along ``axis``."""
        if axis is None:
            c = Fraction(coefs)
            return QArray(self.num * c.numerator, self.den * c.denominator)
        coefs = [Fraction(c) for c in coefs]
        d = math.lcm(*(c.denominator for c in coefs))
        shape = [1] * self.num.ndim
        shape[axis] = len(coefs)
        factors = np.empty(len(coefs), dtype=object)
        factors[:] = [c.numerator * (d // c.denominator) for c in coefs]
        return QArray(self.num * factors.reshape(shape), self.den * d)

    def sum(self, axis: int | tuple[int, ...] | None = None, keepdims: bool = False) -> QArray:
        return QArray(np.asarray(np.sum(self.num, axis=axis, keepdims=keepdims), dtype=object), self.den)

    def abs(self) -> QArray:
        """``|self|`` elementwise (exact)."""
        return QArray(np.abs(self.num), self.den)

    def fractions(self) -> list:
        """Exact values as a flat list of Fractions (for per-channel scalars)."""
        return [Fraction(int(n), self.den) for n in self.num.ravel()]

    def to_float(self) -> np.ndarray:
        """Correctly rounded float64 values (CPython's int / int is correctly rounded)."""
        den = self.den
        out = np.frompyfunc(lambda n: int(n) / den, 1, 1)(self.num) if self.num.size else self.num
        return np.asarray(out, dtype=np.float64).reshape(self.num.shape)

    def to_float_up(self, strict: bool = False) -> np.ndarray:
        """The smallest float64 ``>=`` each exact value (rounding toward +inf).

        With ``strict``, a nonzero value that is exactly a float64 is raised by one ulp too: used
        for quantities whose Fractions approximate an irrational value (square roots to
        ``2**-SQRT_BITS``), so that the float64 result stays an upper bound of the real value.
        """
        near = self.to_float()
        if not near.size:
            return near
        den = self.den

        def below(num, f):                   # f < num / den, compared exactly in integers
            p, q = float(f).as_integer_ratio()
            n = int(num)
            return p * den < n * q or (strict and n != 0 and p * den == n * q)
        raise_ = np.frompyfunc(below, 2, 1)(self.num, near).astype(bool)
        return np.where(raise_, np.nextafter(near, np.inf), near)


def exact_bilinear(op: BilinearOp, a: np.ndarray, b: np.ndarray) -> QArray:
    """``op(a, b)`` for a bilinear ``op`` and dyadic-grid operands, exactly.

    The check: with grid units ``ua, ub``, every partial sum of ``op`` is an integer multiple of
    ``ua * ub`` bounded by ``op(|a|, |b|)``; if that bound is below ``2**52`` units, no partial sum
    is ever rounded, whatever the summation order, BLAS or thread count. Operands too wide for
    that (24-bit grids) are split into 12-bit pieces whose partial results are each exact and
    are summed in integers (:mod:`refws.golden.ozaki`); ArithmeticError if even those are too wide.
    """
    from .ozaki import ExactSum, bilinear_sums
    value, _ = bilinear_sums(op, a, b, ExactSum(), None)
    return value.to_qarray()


def sum_up(*arrays: ArrayLike) -> np.ndarray:
    """``sum(arrays)`` (float64 arrays that broadcast together), exact, then rounded toward +inf."""
    total: QArray | None = None
    for a in arrays:
        q = QArray.from_float(np.asarray(a, dtype=np.float64))
        total = q if total is None else total + q
    assert total is not None, "sum_up needs at least one array"
    return total.to_float_up()


def bilinear_upper(op: BilinearOp, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """A float64 upper bound of ``op(|a|, b)`` for a bilinear ``op``, a grid ``a`` and any ``b >= 0``.

    ``b`` is rounded up onto the grid ``2**-e`` with the finest ``e`` for which ``op`` stays exact
    (:func:`exact_bilinear`'s argument: ``op(|a|, ones) * max(b) * 2**e < 2**50`` units), so the
    result is ``op(|a|, ceil(b * 2**e) * 2**-e) >= op(|a|, b)``, computed without any rounding:
    the same bytes with any BLAS, thread count or summation order. A ``b`` already on a grid no
    finer than ``2**-e`` is used as it is (then the result is the exact ``op(|a|, b)``).
    """
    a = np.abs(np.asarray(a, dtype=np.float64))
    b = np.asarray(b, dtype=np.float64)
    if np.any(b < 0) or not np.all(np.isfinite(b)):
        raise ValueError("bilinear_upper: b must be finite and >= 0")
    ea = grid_exponent(a)
    count = float(np.max(op(a, np.ones_like(b)), initial=0.0)) * 2.0**ea   # op(|a|, 1) in a's units
    top = float(np.max(b, initial=0.0))
    if count == 0 or top == 0:
        return op(a, np.zeros_like(b))
    e = 50 - math.frexp(count * top)[1]          # count * top < 2**(50 - e)
    grid_b = np.ldexp(np.ceil(np.ldexp(b, e)), -e)
    from .ozaki import ExactSum, bilinear_sums
    return bilinear_sums(op, a, grid_b, ExactSum(), None)[0].nearest()
