"""Hypothesis strategies for small convolution problems (test side; no refws code).

``conv_problems()`` draws a ``ConvProblem``: arrays ``x`` and ``w`` in one of the contract's
layouts, the keyword arguments for ``refws.conv`` in one of the contract's argument forms, and the
explicit geometry (pads as ``(lo, hi)`` pairs, tuples for stride and dilations) worked out on the
test side from the definition (``spec_tests/naive.py``), never by refws. ``geometry_args()`` draws
the same arguments without arrays, for ``refws.conv_geometry``.

Sizes are kept tiny so that ``naive_conv`` stays fast: spatial sizes 0..7 (1-D), 0..6 (2-D),
0..4 (3-D); kernels up to 4 / 3 / 3 taps; channels: C_in 1..4, C_out 1..8 (groups 1..4);
batch 1..2. Zero-size inputs and outputs are drawn (VALID with a kernel larger than the input,
crops, size-0 axes).

Data is integer-valued in [-4, 4] for ``exact`` problems (float64 sums of such products are exact
in any order, so results can be compared exactly) and real-valued (normal, random scale)
otherwise; ``ConvProblem.assert_close`` picks the comparison accordingly.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cache

import numpy as np
from hypothesis import strategies as st

from .naive import (
    from_channels_last,
    naive_conv,
    naive_dilated_size,
    naive_explicit_pads,
    naive_out_size,
    to_channels_last,
)

__all__ = [
    "LIMITS",
    "PADDING_KINDS",
    "ConvGeometryArgs",
    "ConvProblem",
    "conv_problems",
    "geometry_args",
    "int_or_seq",
    "padding_arg",
]

# Per number of spatial dims: max spatial size, max kernel, max stride, max lhs/rhs dilation,
# and the range of explicit pads.
LIMITS = {
    1: dict(n=7, k=4, stride=3, lhs=3, rhs=3, pad=(-3, 3)),
    2: dict(n=6, k=3, stride=3, lhs=2, rhs=2, pad=(-2, 2)),
    3: dict(n=4, k=3, stride=2, lhs=2, rhs=2, pad=(-1, 2)),
}

#: "string": SAME / SAME_LOWER / VALID in some letter case; "int": one int; "ints": N ints
#: (per-dimension symmetric); "pairs": N (lo, hi) pairs; "single_pair": one pair for every
#: dimension; "lohi": for N = 1, a bare 2-int (lo, hi).
PADDING_KINDS = ("string", "int", "ints", "pairs", "single_pair", "lohi")

_STRINGS = ("SAME", "same", "Same", "SAME_LOWER", "same_lower", "VALID", "valid", "Valid")


@cache
def _ints(low: int, high: int):
    """Cached ``st.integers``: building strategies inside every draw is what makes drawing slow."""
    return st.integers(low, high)


@cache
def _choice(options: tuple):
    return st.sampled_from(options)


def _draw_int_or_seq(draw, values: tuple[int, ...]):
    """One of the contract's forms of a per-dimension int argument (stride, dilations): an int
    when all values agree (or a tuple / list anyway), else a tuple or a list of N ints."""
    forms = ("tuple", "list", "int") if len(set(values)) == 1 else ("tuple", "list")
    form = draw(_choice(forms))
    return values[0] if form == "int" else tuple(values) if form == "tuple" else list(values)


def int_or_seq(values: tuple[int, ...]):
    """Strategy over the forms of ``_draw_int_or_seq``."""
    return st.composite(lambda draw: _draw_int_or_seq(draw, tuple(values)))()


def _clamp_pair(lo: int, hi: int, dilated: int) -> tuple[int, int]:
    """Limit crops so that they never remove more than the axis holds (padded size >= 0, and
    no side crops beyond the data): contract-defined territory only."""
    lo = max(lo, -dilated)
    hi = max(hi, -(dilated - max(0, -lo)))
    return lo, hi


def _draw_padding(
    draw, in_spatial, kernel_spatial, stride, lhs_dilation, rhs_dilation, kinds=PADDING_KINDS, pad_range=(-2, 2)
):
    nd = len(in_spatial)
    kinds = [
        k for k in kinds if not (k == "lohi" and nd != 1) and not (k == "string" and any(d != 1 for d in lhs_dilation))
    ]
    if "string" in kinds:
        kinds = kinds + ["string"]  # strings are the common case: draw them twice as often
    if "pairs" in kinds:
        kinds = kinds + ["pairs"]  # the most general form, with negative and mixed-sign sides
    kind = draw(_choice(tuple(kinds)))
    dilated = [naive_dilated_size(n, d) for n, d in zip(in_spatial, lhs_dilation)]
    p_int = _ints(*pad_range)
    if kind == "string":
        arg = draw(_choice(_STRINGS))
    elif kind == "int":
        arg = max(draw(p_int), -(min(dilated) // 2))
    elif kind == "ints":
        vals = [max(draw(p_int), -(dn // 2)) for dn in dilated]
        arg = tuple(vals) if draw(st.booleans()) else vals
    elif kind == "pairs":
        pairs = [_clamp_pair(draw(p_int), draw(p_int), dn) for dn in dilated]
        form = draw(_choice(("tuples", "lists", "list of tuples")))
        arg = tuple(pairs) if form == "tuples" else [list(q) for q in pairs] if form == "lists" else list(pairs)
    elif kind == "single_pair":
        pair = _clamp_pair(draw(p_int), draw(p_int), min(dilated))
        arg = (pair,) if draw(st.booleans()) else [list(pair)]
    else:  # "lohi", N = 1
        pair = _clamp_pair(draw(p_int), draw(p_int), dilated[0])
        arg = pair if draw(st.booleans()) else list(pair)
    pads = naive_explicit_pads(arg, in_spatial, kernel_spatial, stride, lhs_dilation, rhs_dilation)
    return arg, pads


@st.composite
def padding_arg(
    draw, in_spatial, kernel_spatial, stride, lhs_dilation, rhs_dilation, kinds=PADDING_KINDS, pad_range=(-2, 2)
):
    """(padding argument, explicit pads) for the given geometry, in one of ``kinds``.

    Crops are limited so that no side removes more than the (lhs-dilated) axis holds."""
    return _draw_padding(draw, in_spatial, kernel_spatial, stride, lhs_dilation, rhs_dilation, kinds, pad_range)


@dataclass(frozen=True)
class ConvGeometryArgs:
    """Arguments for ``refws.conv_geometry`` and their test-side explicit meaning."""

    in_spatial: tuple[int, ...]
    kernel_spatial: tuple[int, ...]
    kwargs: dict  # stride, padding, lhs_dilation, rhs_dilation in a contract form
    stride: tuple[int, ...]
    pads: tuple[tuple[int, int], ...]
    lhs_dilation: tuple[int, ...]
    rhs_dilation: tuple[int, ...]

    @property
    def ndim(self) -> int:
        return len(self.in_spatial)

    @property
    def out_spatial(self) -> tuple[int, ...]:
        return tuple(
            naive_out_size(n, k, s, p, ld, rd)
            for n, k, s, p, ld, rd in zip(
                self.in_spatial, self.kernel_spatial, self.stride, self.pads, self.lhs_dilation, self.rhs_dilation
            )
        )

    @property
    def naive_kwargs(self) -> dict:
        return dict(stride=self.stride, pads=self.pads, lhs_dilation=self.lhs_dilation, rhs_dilation=self.rhs_dilation)


_RARELY = st.sampled_from([False, False, False, True])
_SOMETIMES = st.booleans()
_ONE_IN_EIGHT = st.sampled_from([False] * 7 + [True])


def _draw_geometry(
    draw, dims=(1, 2, 3), padding_kinds=PADDING_KINDS, lhs_dilation=True, rhs_dilation=True, stride=True, limits=None
) -> ConvGeometryArgs:
    nd = draw(_choice(tuple(dims)))
    lim = dict(LIMITS[nd], **(limits or {}))

    def per_dim(low, high, enabled=True, flag=None):
        # all `low` unless enabled and the flag drawn; then each dimension drawn on its own
        if not enabled or (flag is not None and not draw(flag)):
            return (low,) * nd
        return tuple(draw(_ints(low, high)) for _ in range(nd))

    in_spatial = per_dim(1, lim["n"])
    if draw(_ONE_IN_EIGHT):  # a size-0 axis somewhere (legal: the output is empty along it)
        axis = draw(_ints(0, nd - 1))
        in_spatial = in_spatial[:axis] + (0,) + in_spatial[axis + 1 :]
    s = per_dim(1, lim["stride"], stride, _SOMETIMES)
    ld = per_dim(1, lim["lhs"], lhs_dilation, _RARELY)
    rd = per_dim(1, lim["rhs"], rhs_dilation, _SOMETIMES)
    kernel_spatial = per_dim(1, lim["k"])
    if not draw(_RARELY):
        # usually let the dilated kernel fit the dilated input, so most outputs are non-empty
        kernel_spatial = tuple(
            max(1, min(k, (naive_dilated_size(n, l) - 1) // r + 1))
            for k, n, l, r in zip(kernel_spatial, in_spatial, ld, rd)
        )
    padding, pads = _draw_padding(draw, in_spatial, kernel_spatial, s, ld, rd, padding_kinds, lim["pad"])
    kwargs = dict(
        stride=_draw_int_or_seq(draw, s),
        padding=padding,
        lhs_dilation=_draw_int_or_seq(draw, ld),
        rhs_dilation=_draw_int_or_seq(draw, rd),
    )
    return ConvGeometryArgs(in_spatial, kernel_spatial, kwargs, s, pads, ld, rd)


@st.composite
def geometry_args(
    draw, dims=(1, 2, 3), *, padding_kinds=PADDING_KINDS, lhs_dilation=True, rhs_dilation=True, stride=True, limits=None
):
    """``ConvGeometryArgs`` with tiny sizes (see ``LIMITS``); any padding form of ``padding_kinds``.

    ``lhs_dilation`` / ``rhs_dilation`` / ``stride`` False pins that argument to 1 (still passed
    in a random form). ``limits`` overrides ``LIMITS[nd]`` entries (e.g. ``{"n": 30}``).
    """
    return _draw_geometry(draw, dims, padding_kinds, lhs_dilation, rhs_dilation, stride, limits)


@dataclass(frozen=True, eq=False)
class ConvProblem:
    """A small convolution problem.

    ``x``, ``w``: as passed to ``refws.conv`` (``x`` in the layout given by ``channel_first`` and
    ``batched``; ``w`` always ``(*kernel, C_in // groups, C_out)``). ``kwargs``: the keyword
    arguments for ``refws.conv`` (``stride``, ``padding``, ``lhs_dilation``, ``rhs_dilation``,
    ``groups``, ``channel_first``). ``geometry``: the test-side explicit geometry.
    """

    x: np.ndarray
    w: np.ndarray
    kwargs: dict
    geometry: ConvGeometryArgs
    groups: int
    channel_first: bool
    batched: bool
    exact: bool  # integer-valued data: float64 results are exact in any summation order
    seed: int = field(default=0, repr=True)

    @property
    def ndim(self) -> int:
        return self.geometry.ndim

    @property
    def x_cl(self) -> np.ndarray:
        """``x`` as batched channels-last ``(N, *spatial, C_in)`` float64."""
        return np.asarray(to_channels_last(self.x, self.channel_first, self.batched), dtype=np.float64)

    @property
    def naive_kwargs(self) -> dict:
        """Keyword arguments for ``naive_conv`` (explicit pads)."""
        return dict(self.geometry.naive_kwargs, groups=self.groups)

    def expected_cl(self) -> np.ndarray:
        """``naive_conv`` in batched channels-last layout."""
        return naive_conv(self.x_cl, self.w, **self.naive_kwargs)

    def expected(self) -> np.ndarray:
        """``naive_conv`` in the problem's own layout (what ``refws.conv`` must return)."""
        return from_channels_last(self.expected_cl(), self.channel_first, self.batched)

    def atol(self) -> float:
        """Absolute tolerance for real-valued data: a few ulps of the largest possible term sum."""
        if self.x.size == 0 or self.w.size == 0:
            return 0.0
        terms = int(np.prod(self.w.shape[:-1]))  # taps * Cg products per output
        scale = float(np.max(np.abs(self.x))) * float(np.max(np.abs(self.w))) * terms
        return 8 * terms * np.finfo(np.float64).eps * scale

    def assert_close(self, got, expected=None, err_msg: str = "") -> None:
        """Shape and values: exact for integer-valued data, ``atol()`` for real-valued."""
        expected = self.expected() if expected is None else expected
        got = np.asarray(got)
        assert got.shape == expected.shape, f"shape {got.shape} != expected {expected.shape}. {err_msg}"
        if self.exact:
            np.testing.assert_array_equal(got, expected, err_msg=err_msg)
        else:
            np.testing.assert_allclose(got, expected, rtol=1e-12, atol=self.atol(), err_msg=err_msg)


@st.composite
def conv_problems(
    draw,
    max_dims=3,
    *,
    dims=None,
    channel_first=None,
    batched=None,
    exact=None,
    groups=None,
    padding_kinds=PADDING_KINDS,
    lhs_dilation=True,
    rhs_dilation=True,
    stride=True,
    limits=None,
):
    """Draw a ``ConvProblem``.

    dims: the numbers of spatial dims to draw from (default ``1..max_dims``).
    channel_first, batched, exact: pin the layout / batching / data kind (None draws both).
    groups: None (any), 1 (ungrouped only) or "grouped" (groups > 1 only).
    padding_kinds, lhs_dilation, rhs_dilation, stride, limits: as in ``geometry_args``.

    Channels: ``groups`` in 1..4 with ``C_in // groups`` in 1..(4 // groups) and a channel
    multiplier ``C_out // groups`` up to 3, so depthwise (``C_in // groups == 1``) with a channel
    multiplier is drawn too.
    """
    dims = tuple(range(1, max_dims + 1)) if dims is None else tuple(dims)
    geo = _draw_geometry(draw, dims, padding_kinds, lhs_dilation, rhs_dilation, stride, limits)
    if groups is None:
        g = draw(_ints(1, 4))
    elif groups == "grouped":
        g = draw(_ints(2, 4))
    else:
        g = int(groups)
    cg = draw(_ints(1, max(1, 4 // g)))
    m = draw(_ints(1, 4 if g == 1 else 3 if g == 2 else 2))
    c_in, c_out = cg * g, m * g
    n_batch = draw(_ints(1, 2))
    cf = draw(st.booleans()) if channel_first is None else bool(channel_first)
    is_batched = draw(_choice((True, False))) if batched is None else bool(batched)
    if not is_batched:
        n_batch = 1
    is_exact = draw(st.booleans()) if exact is None else bool(exact)
    seed = draw(_ints(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    x_shape = (n_batch, *geo.in_spatial, c_in)
    w_shape = (*geo.kernel_spatial, cg, c_out)
    if is_exact:
        x_cl = rng.integers(-4, 5, size=x_shape).astype(np.float64)
        w = rng.integers(-4, 5, size=w_shape).astype(np.float64)
    else:
        x_cl = rng.standard_normal(x_shape) * 10.0 ** int(rng.integers(-3, 4))
        w = rng.standard_normal(w_shape) * 10.0 ** int(rng.integers(-3, 4))
    x = from_channels_last(x_cl, cf, is_batched)
    kwargs = dict(geo.kwargs, groups=g, channel_first=cf)
    return ConvProblem(x, w, kwargs, geo, g, cf, is_batched, is_exact, seed)
