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
are then summed per element without any rounding (:class:`ExactSum`: float64 while that is exact,
else int64 limbs), and the exact sum is rounded once: to nearest (the stored value) or toward
``+inf`` (``__absbound``, from the partials of ``op(|a_i|, |b_j|)``, which are exactly
``op(|a|, |b|)`` in total).

An operand whose integers already fit (every grid with ``bits <= 12``) is one piece: the float64
array itself, not a copy of its integers. Scaling by a power of two rounds nothing in the normal
range, so ``op(a, b)`` on the floats performs the same exact arithmetic as on the integers, and
its result is already the exact value: no integer copies, no scaling passes. A :class:`Piece`
records which scale its array is at (``values * 2**scale``, multiples of ``2**unit``).

The final rounding: the exact sum ``S`` (in units ``2**-E``) is brought to ``S = H * 2**k + L``
with ``|H| < 2**53`` and ``0 <= L < 2**53``, both exact float64 values after scaling by a power
of two; IEEE addition of two doubles rounds their exact sum once, so ``fl(H 2**k + L)`` is the
correctly rounded ``S`` (to nearest, ties to even), and Knuth's TwoSum gives the sign of the
remainder for the rounding upward. ``spec_tests/test_golden_catalogs.py`` checks sampled
elements of every grid against :class:`fractions.Fraction` sums written in the test.
"""

from __future__ import annotations

import math

import numpy as np

__all__ = ["PIECE_BITS", "Piece", "split", "on_grid", "ExactSum", "bilinear_sums", "exact_parts", "round_up_sum"]

PIECE_BITS = 12
_UNIT_LIMIT = 2.0**52  # a partial's magnitude bound, in units, must stay below this
_INT_LIMIT = 2**62  # int64 headroom for sums of limbs at one shift
# Units 2**t of a float64 array that holds values (not integers) stay within these exponents, so
# that every multiple of the unit below 2**53 units is a normal float64 (no underflow, no overflow).
_LOWEST_UNIT, _HIGHEST_UNIT = -960, 960


class Piece:
    """One piece of a split operand: its value is ``values * 2**scale``; the elements of
    ``values`` are integer multiples of ``2**unit``, at most ``2**PIECE_BITS`` of them.

    Value form (``scale = 0``, ``unit = -e``): the operand's own float64 array. Integer form
    (``unit = 0``): its integers (or digits of them). ``magnitude()`` is ``|values|``, computed once.
    """

    __slots__ = ("values", "scale", "unit", "_magnitude")

    def __init__(self, values: np.ndarray, scale: int, unit: int) -> None:
        self.values, self.scale, self.unit = values, int(scale), int(unit)
        self._magnitude: np.ndarray | None = None

    def magnitude(self) -> np.ndarray:
        """``|values|`` (kept: the same operand's magnitude serves several outputs of a case)."""
        magnitude = self._magnitude
        if magnitude is None:
            magnitude = self._magnitude = np.abs(self.values)
        return magnitude

    def integer_form(self) -> Piece:
        """The same piece with its integers as values (``unit = 0``): safe at any exponent."""
        if self.unit == 0:
            return self
        return Piece(np.ldexp(self.values, -self.unit), self.scale + self.unit, 0)


def _split_integers(ints: np.ndarray, e: int, piece_bits: int) -> list:
    """Integer-form pieces of ``ints * 2**-e``: sign-magnitude digits in base ``2**piece_bits``."""
    mag = np.abs(ints)
    sign = np.sign(ints)
    pieces, shift, base = [], 0, 2.0**piece_bits
    while np.any(mag):
        digit = np.mod(mag, base)  # exact: integers below 2**53
        pieces.append(Piece(sign * digit, shift - e, 0))
        mag = (mag - digit) / base  # exact division by a power of two
        shift += piece_bits
    return pieces


def _value_form_fits(e: int, top: float) -> bool:
    """Whether an operand of integers up to ``top`` times ``2**-e`` can be used as it is: units
    and magnitudes in the normal range (every golden grid)."""
    return _LOWEST_UNIT <= -e and top * 2.0**-e < 2.0**_HIGHEST_UNIT


class _Split:
    """An operand's exact decompositions: :meth:`whole`, one piece of all its integers, and
    :meth:`digits`, its 12-bit digits (the same single piece when its integers fit in 12 bits).
    ``e``: its grid exponent; ``top``: a bound of its integers' magnitudes. Each is made once."""

    __slots__ = ("a", "e", "top", "_ints", "_whole", "_digits")

    def __init__(self, a: np.ndarray, e: int, top: float, ints: np.ndarray | None = None) -> None:
        self.a, self.e, self.top, self._ints = a, int(e), float(top), ints
        self._whole: Piece | None = None
        self._digits: list[Piece] | None = None

    def ints(self) -> np.ndarray:
        if self._ints is None:
            self._ints = np.ldexp(self.a, self.e)
        return self._ints

    def whole(self) -> Piece:
        """The operand as one piece: its own array (value form) where units and magnitudes stay
        in the normal range (every golden grid), else its integers."""
        if self._whole is None:
            fits = _value_form_fits(self.e, self.top)
            self._whole = Piece(self.a, 0, -self.e) if fits else Piece(self.ints(), -self.e, 0)
        return self._whole

    def digits(self) -> list[Piece]:
        """Sign-magnitude digits in base ``2**PIECE_BITS`` (``|a| = sum |digits|`` too)."""
        if self._digits is None:
            if self.top <= 2.0**PIECE_BITS:  # 2**12 itself: one piece (the bits = 12 grid reaches 2**11)
                self._digits = [self.whole()]
            else:
                self._digits = _split_integers(self.ints(), self.e, PIECE_BITS)
        return self._digits

    def widest(self) -> float:
        """A bound of the integers of a :meth:`digits` piece."""
        return min(self.top, 2.0**PIECE_BITS)


def _split_of(a: np.ndarray) -> _Split:
    """The :class:`_Split` of any dyadic array (its grid exponent found by passes over it)."""
    from .rational import grid_scaled

    ints, e = grid_scaled(a)
    top = max(float(np.max(ints, initial=0.0)), -float(np.min(ints, initial=0.0)))
    return _Split(np.asarray(a, dtype=np.float64), e, top, ints)


def split(a: np.ndarray) -> tuple:
    """``a`` as ``(pieces, e)``: ``a = sum_i pieces_i.values * 2**pieces_i.scale`` exactly.

    ``2**-e`` is ``a``'s grid unit (:func:`refws.golden.rational.grid_exponent`); each piece's
    integers are below ``2**PIECE_BITS`` in magnitude and have the sign of ``a`` (sign-magnitude
    digits, so ``|a| = sum_i |pieces_i|`` as well). An operand whose integers already fit (every
    grid with ``bits <= 12``) is one piece: ``a`` itself.
    """
    parts = _split_of(a)
    return parts.digits(), parts.e


def on_grid(cache: dict, a: np.ndarray, exponent: int, top: int) -> np.ndarray:
    """Record in a :func:`bilinear_sums` ``splits`` cache that ``a`` holds integers in
    ``[-top, top]`` times ``2**-exponent`` (it was generated so): its split then needs no pass
    over it. Returns ``a``.

    ``2**-exponent`` need not be the finest unit of ``a``: a coarser true unit only makes the
    no-rounding check stricter, and the exact sums, hence the stored values, are the same.
    """
    a = np.asarray(a, dtype=np.float64)
    cache[id(a)] = (a, _Split(a, exponent, top))
    return a


class ExactSum:
    """An exact sum of arrays of multiples of powers of two, kept per unit ``2**t`` (a limb).

    ``add(values, scale, t, top)`` adds ``values * 2**scale`` whose elements are integer
    multiples of ``2**t`` (so ``values`` are multiples of ``2**(t - scale)``). A limb is a float64
    array while its bound stays below ``2**53`` units (every sum of such multiples is then exact),
    else int64 integers of units. The value is exact whatever is added; :meth:`nearest` and
    :meth:`upper` round it once. :meth:`to_qarray` gives it as an exact :class:`QArray`.
    """

    def __init__(self, shape=None):
        self.shape = shape
        self.limbs = {}  # t -> (array, scale): the limb is array * 2**scale, multiples of 2**t
        self.bounds = {}  # t -> a bound of the limb's largest magnitude, in units 2**t
        self.owned = set()  # t of limbs whose array this object may change in place

    def add(self, values, scale: int, t: int, top=None, owned: bool = False) -> ExactSum:
        """``top``: a known bound of ``max |values * 2**(scale - t)|`` (saves a pass over them), e.g.
        the largest element of the magnitude ``op(|a|, |b|)`` for ``values = op(a, b)``.
        ``owned``: ``values`` is a fresh array nobody else reads (it may be changed in place)."""
        values = np.asarray(values)
        if self.shape is None:
            self.shape = values.shape
        if values.shape != self.shape:
            values = np.broadcast_to(values, self.shape)
        if top is None:
            top = math.ldexp(float(np.max(np.abs(values), initial=0)), scale - t)
        top = int(top)
        if top >= 2**53:
            raise ArithmeticError(f"ExactSum.add: integers up to {top} exceed 2**53")
        bound = self.bounds.get(t, 0) + top
        if bound >= _INT_LIMIT:
            raise ArithmeticError("ExactSum: too many terms at one shift for int64 limbs")
        self.bounds[t] = bound
        if t not in self.limbs:
            self._start(t, values, scale, owned)
        elif bound < 2**53:
            self._add_float(t, values, scale)
        else:  # beyond 2**53 units: int64 integers
            self._add_int(t, values, scale)
        return self

    def _start(self, t: int, values: np.ndarray, scale: int, owned: bool) -> None:
        """A new limb: ``values`` themselves when they are float64 and contiguous (no copy)."""
        if self.bounds[t] >= 2**53 or values.dtype != np.float64:
            kind = np.float64 if self.bounds[t] < 2**53 else np.int64
            limb, scale, owned = _units(values, scale, t).astype(kind), t, True
        else:
            limb = np.ascontiguousarray(values)
            owned = (owned or limb is not values) and limb.flags.writeable
        self.limbs[t] = (limb, scale)
        if owned:
            self.owned.add(t)

    def _add_float(self, t: int, values, scale: int) -> None:
        limb, limb_scale = self.limbs[t]
        if scale != limb_scale:
            values = np.ldexp(values, scale - limb_scale)  # exact: both are normal multiples
        if t in self.owned:
            limb += values
        else:
            self.limbs[t] = (limb + values, limb_scale)
            self.owned.add(t)

    def _add_int(self, t: int, values, scale: int) -> None:
        limb, limb_scale = self.limbs[t]
        self.limbs[t] = (_units(limb, limb_scale, t).astype(np.int64) + _units(values, scale, t).astype(np.int64), t)
        self.owned.add(t)

    def add_float(self, a) -> ExactSum:
        """Add a float64 array exactly (every finite float64 is dyadic): its integers at its unit."""
        from .rational import grid_scaled

        ints, e = grid_scaled(a)
        return self.add(ints, -e, -e, owned=True)

    def _int_limbs(self) -> dict:
        """Every limb as int64 integers of its unit."""
        return {t: _units(a, s, t).astype(np.int64) for t, (a, s) in self.limbs.items()}

    def _two_limbs(self):
        """``(H, L, t_lo, low_bits)`` with the sum ``= (H * 2**low_bits + L) * 2**t_lo``, ``0 <= L < 2**low_bits``."""
        if not self.limbs:
            z = np.zeros(self.shape if self.shape is not None else (), dtype=np.int64)
            return z, z, 0, 0
        ts = sorted(self.limbs)
        limbs = self._int_limbs()
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
        """The exact sum as one float64 array when it is one limb below ``2**53`` (else None).

        An owned limb in value form is handed out itself (no copy) and no longer owned."""
        if len(self.limbs) != 1:
            return None
        ((t, (limb, scale)),) = self.limbs.items()
        if self.bounds[t] >= 2**53:
            return None
        if scale == 0 and t in self.owned:
            self.owned.discard(t)
            out = limb
        else:
            out = np.ldexp(limb, scale) if scale else np.array(limb, dtype=np.float64)
        return np.add(out, 0.0, out=out)  # + 0.0: no -0.0

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


def _units(values, scale: int, t: int) -> np.ndarray:
    """``values * 2**scale`` in units ``2**t`` (integers; exact)."""
    return values if scale == t else np.ldexp(values, scale - t)


def _split_cached(a, cache: dict | None) -> _Split:
    """:func:`_split_of`, remembered in ``cache`` by the array's identity (the caller keeps ``a`` alive)."""
    if cache is None:
        return _split_of(a)
    key = id(a)
    if key not in cache:
        cache[key] = (a, _split_of(a))  # holding ``a`` keeps its id from being reused
    return cache[key][1]


def _coarsest(sa: _Split, sb: _Split, terms: int | None) -> tuple:
    """The pieces of both operands with the fewest partials that a global bound proves exact:
    ``max|a| * max|b| * terms < 2**52`` units (``terms``: at most that many products per element).

    Both whole (one partial; every grid up to 12 bits, and 24-bit operands for sums of up to 15
    products), the larger one whole and the other in digits (two partials), or both in digits
    (the Ozaki split, four partials; also when ``terms`` is unknown). Every split sums to the
    same exact value, so the stored bytes do not depend on the choice."""
    if terms is not None:
        if sa.top * sb.top * terms < _UNIT_LIMIT:
            return [sa.whole()], [sb.whole()]
        if sa.top * sb.widest() * terms < _UNIT_LIMIT and sa.a.size >= sb.a.size:
            return [sa.whole()], sb.digits()
        if sa.widest() * sb.top * terms < _UNIT_LIMIT:
            return sa.digits(), [sb.whole()]
        if sa.top * sb.widest() * terms < _UNIT_LIMIT:
            return [sa.whole()], sb.digits()
    return sa.digits(), sb.digits()


def _pair_forms(pa: Piece, pb: Piece) -> tuple:
    """Both pieces, in integer form if the units of their products would leave the normal range."""
    if _LOWEST_UNIT <= pa.unit + pb.unit and pa.unit + pb.unit + 53 <= _HIGHEST_UNIT:
        return pa, pb
    return pa.integer_form(), pb.integer_form()


def _checked_top(mag: np.ndarray, unit: int) -> float:
    """``max(mag)`` in units ``2**unit``, checked below ``2**52`` (the no-rounding bound)."""
    top = math.ldexp(float(np.max(mag, initial=0.0)), -unit)  # mag >= 0, and |op(a, b)| <= mag
    if top >= _UNIT_LIMIT:
        raise ArithmeticError(
            f"golden operands too wide for an exact float64 evaluation: "
            f"|op| bound {top:.3g} units >= 2**52 for one pair of "
            f"{PIECE_BITS}-bit pieces"
        )
    return top


def _fresh(result: np.ndarray, *operands: np.ndarray) -> bool:
    """Whether ``op``'s result is memory of its own (it may then be changed in place)."""
    return not any(np.may_share_memory(result, o) for o in operands)


def bilinear_sums(
    op,
    a,
    b,
    value: ExactSum | None = None,
    magnitude: ExactSum | None = None,
    splits: dict | None = None,
    terms: int | None = None,
):
    """Add ``op(a, b)`` to ``value`` and ``op(|a|, |b|)`` to ``magnitude``, exactly.

    Both operands are split as little as ``terms`` (a bound of the number of products summed into
    one element, if known) proves safe (:func:`_coarsest`; ``splits``, a dict, remembers the
    splits of operands used again, and :func:`on_grid` seeds it); every partial ``op(a_i, b_j)``
    is computed in float64 after checking that its bound ``op(|a_i|, |b_j|)`` (the partial of the
    magnitude) is below ``2**52`` units, so neither is ever rounded. ArithmeticError otherwise
    (operands too wide even for 12-bit pieces: more than ``2**28`` products per element).
    """
    pa_all, pb_all = _coarsest(_split_cached(a, splits), _split_cached(b, splits), terms)
    for pa0 in pa_all:
        for pb0 in pb_all:
            pa, pb = _pair_forms(pa0, pb0)
            unit, scale = pa.unit + pb.unit, pa.scale + pb.scale
            mag = op(pa.magnitude(), pb.magnitude())
            top = _checked_top(mag, unit)
            if magnitude is not None:
                magnitude.add(mag, scale, scale + unit, top, _fresh(mag, pa.magnitude(), pb.magnitude()))
            del mag  # one output-sized temporary at a time
            if value is not None:
                result = op(pa.values, pb.values)
                value.add(result, scale, scale + unit, top, _fresh(result, pa.values, pb.values))
    return value, magnitude


def exact_parts(op, a, b) -> list:
    """``op(a, b)`` as a list of float64 arrays that are each exact and sum to it exactly.

    For maps linear in ``op(a, b)`` (a weight-standardization VJP) that need the exact value
    rather than a rounded one: apply the map to each part and add the exact results.
    """
    pa_all, _ = split(a)
    pb_all, _ = split(b)
    parts = []
    for pa0 in pa_all:
        for pb0 in pb_all:
            pa, pb = _pair_forms(pa0, pb0)
            _checked_top(op(pa.magnitude(), pb.magnitude()), pa.unit + pb.unit)
            part = op(pa.values, pb.values)
            scale = pa.scale + pb.scale
            parts.append(np.ldexp(part, scale) if scale else part)
    return parts


def round_up_sum(op, a, b) -> np.ndarray:
    """``op(|a|, |b|)`` exactly, rounded toward ``+inf`` (exact whenever it is a float64)."""
    _, mag = bilinear_sums(op, a, b, None, ExactSum())
    return mag.upper()
