"""Convolution geometry: the one place where shapes and explicit pads are computed.

Every argument that describes *where* a kernel is applied (stride, padding, lhs and rhs
dilation) is normalised here, and every other module asks :func:`conv_geometry` for the
explicit ``(lo, hi)`` pads and the output shape instead of recomputing them.

Definitions (per spatial dimension, following ``jax.lax.conv_general_dilated``)
-----------------------------------------------------------------------------
n   input size, k kernel size, s stride, L lhs (input) dilation, d rhs (kernel) dilation.

- lhs-dilated input size:  ``n_L = (n - 1) * L + 1`` (0 when ``n == 0``)
- rhs-dilated kernel size: ``k_d = (k - 1) * d + 1``
- padded size:             ``n_p = n_L + lo + hi`` (negative pads crop)
- output size:             ``out = floor((n_p - k_d) / s) + 1``, or 0 when ``n_p < k_d``

``"SAME"`` is lax's rule (``lax.padtype_to_pads``): ``out = ceil(n / s)``,
``total = max((out - 1) * s + k_d - n, 0)``, ``lo = total // 2``, ``hi = total - lo``
(the odd element goes at the end). ``"SAME_LOWER"`` puts it at the start.
``"VALID"`` is ``(0, 0)``. String padding with ``L > 1`` is refused, as lax refuses it.
"""

from __future__ import annotations

import functools
import math
import numbers
from dataclasses import dataclass
from collections.abc import Sequence

__all__ = ["ConvGeometry", "conv_geometry", "as_int_tuple", "normalize_padding", "same_pads", "out_size"]

_PAD_STRINGS = ("SAME", "SAME_LOWER", "VALID")


def _is_int(v) -> bool:
    # ``type(v) is int`` first: the abstract-class check costs a microsecond per call, and every
    # call of conv normalises about twenty values.
    return type(v) is int or (isinstance(v, numbers.Integral) and not isinstance(v, bool))


def _is_sequence(v) -> bool:
    """A sequence that is not a string (tuples and lists are tested first, for the same reason)."""
    return type(v) in (tuple, list) or (isinstance(v, Sequence) and not isinstance(v, str))


def as_int_tuple(value, n: int, name: str, minimum: int = 1) -> tuple[int, ...]:
    """Normalise an int or a length-1 / length-``n`` sequence of ints to an ``n``-tuple.

    Raises
    ------
    TypeError
        if ``value`` (or an element) is not an integer.
    ValueError
        if the sequence has the wrong length or an element is below ``minimum``.
    """
    if type(value) is int and value >= minimum:  # the common case, first
        return (value,) * n
    if _is_int(value):
        items = (int(value),) * n
    elif _is_sequence(value):
        if not all(_is_int(v) for v in value):
            raise TypeError(f"{name}={value!r}: expected an int or a sequence of ints")
        if len(value) == 1:
            items = (int(value[0]),) * n
        elif len(value) == n:
            items = tuple(int(v) for v in value)
        else:
            raise ValueError(
                f"{name}={value!r}: expected an int or a sequence of length 1 or {n} "
                f"(one per spatial dimension), got length {len(value)}"
            )
    else:
        raise TypeError(f"{name}={value!r}: expected an int or a sequence of ints")
    if any(v < minimum for v in items):
        raise ValueError(f"{name}={value!r}: every entry must be an integer >= {minimum}")
    return items


def out_size(n: int, k: int, stride: int, lo: int, hi: int, lhs_dilation: int = 1, rhs_dilation: int = 1) -> int:
    """Output size along one dimension (0 when the kernel does not fit: lax semantics)."""
    n_dilated = (n - 1) * lhs_dilation + 1 if n > 0 else 0
    k_dilated = (k - 1) * rhs_dilation + 1
    span = n_dilated + lo + hi - k_dilated
    return span // stride + 1 if span >= 0 else 0


def same_pads(n: int, k: int, stride: int, rhs_dilation: int = 1, lower: bool = False) -> tuple[int, int]:
    """lax's SAME rule for one dimension: ``out = ceil(n / s)`` and the smallest total pad."""
    out = -(-n // stride)
    total = max((out - 1) * stride + (k - 1) * rhs_dilation + 1 - n, 0)
    small, large = total // 2, total - total // 2
    return (large, small) if lower else (small, large)


def _as_pair(p, padding) -> tuple[int, int]:
    if not (_is_sequence(p) and len(p) == 2 and all(_is_int(v) for v in p)):
        raise ValueError(f"padding={padding!r}: expected (lo, hi) pairs of ints, got {p!r}")
    return int(p[0]), int(p[1])


def normalize_padding(padding, in_spatial, kernel_spatial, stride, lhs_dilation, rhs_dilation):
    """Turn any accepted ``padding`` form into a tuple of explicit ``(lo, hi)`` pairs.

    Accepted forms (N = number of spatial dimensions):

    - ``"SAME"``, ``"SAME_LOWER"``, ``"VALID"`` (case-insensitive);
    - an int ``p``: ``(p, p)`` in every dimension;
    - ``N`` ints: ``(p_i, p_i)`` per dimension (for N = 1 a 2-int tuple is ``(lo, hi)``);
    - ``N`` pairs ``(lo, hi)``: used as given;
    - a single pair (``[(lo, hi)]``, or a bare ``(lo, hi)`` when N >= 3): every dimension.

    Negative entries crop.
    """
    n = len(in_spatial)
    if isinstance(padding, str):
        mode = padding.upper()
        if mode not in _PAD_STRINGS:
            raise ValueError(
                f"padding={padding!r}: expected one of 'SAME', 'SAME_LOWER', 'VALID' "
                "(any case), an int, or (lo, hi) pairs"
            )
        if any(L != 1 for L in lhs_dilation):
            raise ValueError(
                f"padding={padding!r} with lhs_dilation={lhs_dilation}: string padding is "
                "undefined for an lhs-dilated input (as in lax); give explicit (lo, hi) pairs"
            )
        if mode == "VALID":
            return ((0, 0),) * n
        return tuple(
            same_pads(ni, ki, si, di, lower=mode == "SAME_LOWER")
            for ni, ki, si, di in zip(in_spatial, kernel_spatial, stride, rhs_dilation)
        )
    if _is_int(padding):
        return ((int(padding), int(padding)),) * n
    if not _is_sequence(padding):
        raise TypeError(f"padding={padding!r}: expected a string, an int or a sequence")
    items = list(padding)
    if items and all(_is_int(v) for v in items):
        if n == 1 and len(items) == 2:
            return (_as_pair(items, padding),)
        if len(items) == n or len(items) == 1:
            return tuple((int(p), int(p)) for p in (items * n if len(items) == 1 else items))
        if len(items) == 2 and n >= 3:
            return (_as_pair(items, padding),) * n
        raise ValueError(f"padding={padding!r}: expected {n} ints (one per spatial dimension)")
    pairs = tuple(_as_pair(p, padding) for p in items)
    if len(pairs) == 1:
        return pairs * n
    if len(pairs) != n:
        raise ValueError(
            f"padding={padding!r}: expected {n} (lo, hi) pairs (one per spatial dimension), got {len(pairs)}"
        )
    return pairs


@dataclass(frozen=True)
class ConvGeometry:
    """Normalised convolution geometry for one problem (all fields are tuples of ints).

    Attributes
    ----------
    in_spatial, kernel_spatial : input and kernel spatial sizes (undilated).
    stride, lhs_dilation, rhs_dilation : per-dimension factors, each >= 1.
    padding : explicit ``(lo, hi)`` per dimension; negative values crop.
    out_spatial : output spatial sizes (entries may be 0).
    """

    in_spatial: tuple
    kernel_spatial: tuple
    stride: tuple
    padding: tuple
    lhs_dilation: tuple
    rhs_dilation: tuple
    out_spatial: tuple

    @property
    def ndim(self) -> int:
        """Number of spatial dimensions N."""
        return len(self.in_spatial)

    @functools.cached_property
    def dilated_kernel(self) -> tuple:
        """rhs-dilated kernel extent ``(k - 1) * d + 1`` per dimension."""
        return tuple((k - 1) * d + 1 for k, d in zip(self.kernel_spatial, self.rhs_dilation))

    @functools.cached_property
    def taps(self) -> int:
        """Number of kernel taps ``K = prod(kernel_spatial)``."""
        return math.prod(self.kernel_spatial)

    @functools.cached_property
    def unpadded(self) -> bool:
        """No padding, no cropping and no lhs dilation: the windows are read from the input itself."""
        return all(p == (0, 0) for p in self.padding) and all(L == 1 for L in self.lhs_dilation)


def _as_shape(value, name: str, minimum: int) -> tuple[int, ...]:
    if type(value) is tuple and value and all(type(v) is int and v >= minimum for v in value):
        return value  # an array's shape: the common case
    if not (_is_sequence(value) and len(value) >= 1 and all(_is_int(v) and v >= minimum for v in value)):
        raise ValueError(f"{name}={value!r}: expected a non-empty sequence of ints >= {minimum}")
    return tuple(int(v) for v in value)


# Geometries already computed, by their arguments: a call of refws.conv on a small problem spent
# about a quarter of its time normalising the same arguments again. Only arguments built of exact
# ints and strings are keys (_plain_key), so a key determines the checks' outcome exactly: True,
# 1.0 or np.int64(1) equal 1 as keys but are checked (and refused or converted) every time.
_GEOMETRIES: dict = {}
_GEOMETRIES_MAX = 4096


def _plain_key(value):
    """``value`` as a hashable key when it is built of exact ints and strings (lists read as tuples,
    which every argument treats alike), else None."""
    kind = type(value)
    if kind is int or kind is str:
        return value
    if kind is tuple or kind is list:
        key = tuple([v if type(v) is int else _plain_key(v) for v in value])
        return None if None in key else key
    return None


def conv_geometry(in_spatial, kernel_spatial, stride=1, padding="SAME", lhs_dilation=1, rhs_dilation=1) -> ConvGeometry:
    """Normalise the arguments of a convolution and compute its output shape.

    Parameters
    ----------
    in_spatial : sequence of int
        Input spatial sizes ``(n_1, ..., n_N)`` (0 allowed).
    kernel_spatial : sequence of int
        Kernel spatial sizes ``(k_1, ..., k_N)``, each >= 1, same length.
    stride, lhs_dilation, rhs_dilation : int or sequence of int
        Positive; an int (or length-1 sequence) applies to every dimension.
    padding : str, int or sequence
        See :func:`normalize_padding`.

    Returns
    -------
    ConvGeometry
        Immutable; ``out_spatial`` may contain zeros (an empty output is legal, as in lax).
        Equal arguments of exact ints and strings return the same instance (computed once).
    """
    key = _plain_key((in_spatial, kernel_spatial, stride, padding, lhs_dilation, rhs_dilation))
    g = _GEOMETRIES.get(key) if key is not None else None
    if g is None:
        g = _compute_geometry(in_spatial, kernel_spatial, stride, padding, lhs_dilation, rhs_dilation)
        if key is not None:
            remember(_GEOMETRIES, key, g, _GEOMETRIES_MAX)
    return g


def remember(memo: dict, key, value, limit: int):
    """``memo[key] = value``, the memo emptied first when it already holds ``limit`` entries (the
    bound of refws's memos: a full one starts over rather than tracking use); returns ``value``."""
    if len(memo) >= limit:
        memo.clear()
    memo[key] = value
    return value


def _compute_geometry(in_spatial, kernel_spatial, stride, padding, lhs_dilation, rhs_dilation) -> ConvGeometry:
    """:func:`conv_geometry` without the memo: every check and the arithmetic."""
    in_spatial = _as_shape(in_spatial, "in_spatial", 0)
    kernel_spatial = _as_shape(kernel_spatial, "kernel_spatial", 1)
    if len(kernel_spatial) != len(in_spatial):
        raise ValueError(
            f"kernel_spatial={kernel_spatial}: expected {len(in_spatial)} sizes, one per "
            f"spatial dimension of in_spatial={in_spatial}"
        )
    n = len(in_spatial)
    stride = as_int_tuple(stride, n, "stride")
    lhs_dilation = as_int_tuple(lhs_dilation, n, "lhs_dilation")
    rhs_dilation = as_int_tuple(rhs_dilation, n, "rhs_dilation")
    pads = normalize_padding(padding, in_spatial, kernel_spatial, stride, lhs_dilation, rhs_dilation)
    out = tuple(
        out_size(n_i, k, s, lo, hi, L, d)
        for n_i, k, s, (lo, hi), L, d in zip(in_spatial, kernel_spatial, stride, pads, lhs_dilation, rhs_dilation)
    )
    return ConvGeometry(in_spatial, kernel_spatial, stride, pads, lhs_dilation, rhs_dilation, out)
