"""Spec tests for ``refws.conv_geometry`` (issue 2): normalized fields, explicit pads, output
shape, immutability, and the SAME / padding-form regressions of ../shared/NOTES.md.

Expected values come from the test-side rules in ``spec_tests/naive.py`` (lax's SAME rule,
the output-size formula) and from hand derivations written next to the cases.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import refws
from .naive import ceil_div, naive_out_size, naive_same_pads
from .strategies import geometry_args

WIDE = dict(n=20, k=6, stride=4, lhs=3, rhs=3, pad=(-4, 4))  # no arrays here: sizes can grow
FIELDS = ("stride", "lhs_dilation", "rhs_dilation", "padding", "out_spatial")


def _geometry(args):
    return refws.conv_geometry(args.in_spatial, args.kernel_spatial, **args.kwargs)


@given(geometry_args(limits=WIDE))
def test_fields_match_the_definition(args):
    """stride / dilations normalized to tuples of N ints, padding to N explicit (lo, hi) pairs
    (every padding form), out_spatial from the output-size formula."""
    g = _geometry(args)
    assert g.stride == args.stride
    assert g.lhs_dilation == args.lhs_dilation
    assert g.rhs_dilation == args.rhs_dilation
    assert g.padding == args.pads
    assert g.out_spatial == args.out_spatial
    for name in FIELDS:
        value = getattr(g, name)
        assert isinstance(value, tuple), (name, value)
    assert all(isinstance(pair, tuple) and len(pair) == 2 for pair in g.padding)
    assert all(isinstance(v, (int, np.integer)) for v in g.out_spatial + g.stride)


@given(geometry_args(limits=WIDE))
def test_conv_output_shape_is_the_geometry(args):
    """refws.conv derives its output shape from the same geometry (one channel, batch 1)."""
    x = np.zeros((1, *args.in_spatial, 1))
    w = np.zeros((*args.kernel_spatial, 1, 2))
    assert refws.conv(x, w, **args.kwargs).shape == (1, *args.out_spatial, 2)


def test_geometry_is_immutable():
    g = refws.conv_geometry((5, 6), (3, 3), stride=2, padding="SAME", rhs_dilation=(1, 2))
    before = {name: getattr(g, name) for name in FIELDS}
    for name in FIELDS:
        with pytest.raises((AttributeError, TypeError, dataclasses.FrozenInstanceError)):
            setattr(g, name, before[name][:1])
    assert {name: getattr(g, name) for name in FIELDS} == before


@given(
    st.integers(0, 40),
    st.integers(1, 7),
    st.integers(1, 5),
    st.integers(1, 4),
    st.sampled_from(["SAME", "same", "SAME_LOWER", "Same_Lower"]),
)
def test_same_rule(n, k, s, d, mode):
    """SAME: out = ceil(n / s) and lax's pads with the rhs-dilated kernel (odd element at the end;
    at the start for SAME_LOWER)."""
    lower = mode.upper() == "SAME_LOWER"
    g = refws.conv_geometry((n,), (k,), stride=s, padding=mode, rhs_dilation=d)
    assert g.out_spatial == (ceil_div(n, s),)
    assert g.padding == (naive_same_pads(n, k, s, d, lower=lower),)
    # the test-side rule is consistent with the output-size formula
    assert naive_out_size(n, k, s, naive_same_pads(n, k, s, d, lower), 1, d) == ceil_div(n, s)


@given(st.integers(1, 40), st.integers(1, 7), st.integers(1, 5), st.sampled_from(["VALID", "valid"]))
def test_valid_rule(n, k, s, mode):
    """VALID: no padding; brainstate's Notes: out = ceil((n - k + 1) / s) when it is positive."""
    g = refws.conv_geometry((n, n + 1), (k, 1), stride=s, padding=mode)
    assert g.padding == ((0, 0), (0, 0))
    assert g.out_spatial == (max(0, ceil_div(n - k + 1, s)), ceil_div(n + 1, s))


# ------------------------------------------------------------------------------------------
# Padding forms, spelled out
# ------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "in_spatial, padding, pads",
    [
        ((5,), 2, ((2, 2),)),
        ((5,), (1, 2), ((1, 2),)),  # N = 1: a 2-int tuple is (lo, hi)
        ((5,), [1, 2], ((1, 2),)),
        ((5,), (3,), ((3, 3),)),  # N = 1: one int per dimension
        ((5,), [(1, 2)], ((1, 2),)),
        ((5, 6), (1, 2), ((1, 1), (2, 2))),  # N = 2: per-dimension symmetric
        ((5, 6), [1, 2], ((1, 1), (2, 2))),
        ((5, 6), ((1, 2), (3, 0)), ((1, 2), (3, 0))),
        ((5, 6), [[1, 2], [3, 0]], ((1, 2), (3, 0))),
        ((5, 6), [(1, 2)], ((1, 2), (1, 2))),  # a single pair: every dimension
        ((5, 6), ((1, 2),), ((1, 2), (1, 2))),
        ((5, 6, 7), 1, ((1, 1),) * 3),
        ((5, 6, 7), (0, 1, 2), ((0, 0), (1, 1), (2, 2))),
        ((5, 6, 7), [(2, -1)], ((2, -1),) * 3),
        ((5, 6, 7), ((2, -1), (-1, 2), (0, -3)), ((2, -1), (-1, 2), (0, -3))),
        ((5, 6), -1, ((-1, -1), (-1, -1))),  # negative pads crop
    ],
)
def test_padding_forms(in_spatial, padding, pads):
    k = (1,) * len(in_spatial)
    g = refws.conv_geometry(in_spatial, k, padding=padding)
    assert g.padding == pads
    assert g.out_spatial == tuple(n + lo + hi for n, (lo, hi) in zip(in_spatial, pads))


# ------------------------------------------------------------------------------------------
# Regressions for the peers' bugs (../shared/NOTES.md)
# ------------------------------------------------------------------------------------------
def test_mixed_sign_pair_output_shape():
    """lax_reference: wrong output shape for (2, -1). Padded 5 + 2 - 1 = 6, window 3 -> 4."""
    assert refws.conv_geometry((5,), (3,), padding=(2, -1)).out_spatial == (4,)
    assert refws.conv_geometry((5, 5), (3, 3), padding=[(2, -1)]).out_spatial == (4, 4)
    # padded (5 + 2 - 1, 7 - 1 + 2) = (6, 8); (6 - 3) // 2 + 1 = 2, (8 - 3) // 2 + 1 = 3
    assert refws.conv_geometry((5, 7), (3, 3), stride=2, padding=((2, -1), (-1, 2))).out_spatial == (2, 3)


def test_same_uses_the_rhs_dilated_kernel():
    """lax_reference ignores rhs_dilation in SAME (7x7); lax: window 5, pads (2, 2), 9x9."""
    g = refws.conv_geometry((9, 9), (3, 3), padding="SAME", rhs_dilation=2)
    assert g.padding == ((2, 2), (2, 2))
    assert g.out_spatial == (9, 9)


@pytest.mark.parametrize(
    "n, k, pads",
    [
        (8, 2, (0, 0)),
        (8, 4, (1, 1)),
        (7, 2, (0, 1)),
        (7, 4, (1, 2)),  # as in NOTES, by the rule
        (6, 2, (0, 0)),
        (9, 2, (0, 1)),
        (6, 6, (2, 2)),
        (5, 6, (2, 3)),
    ],
)
def test_same_stride_2_even_kernels(n, k, pads):
    """Hand-derived from lax's rule: out = ceil(n / 2), total = (out - 1) * 2 + k - n."""
    g = refws.conv_geometry((n, n), (k, k), stride=2, padding="SAME")
    assert g.padding == (pads, pads)
    assert g.out_spatial == (ceil_div(n, 2),) * 2
    lower = refws.conv_geometry((n,), (k,), stride=2, padding="SAME_LOWER")
    assert lower.padding == (pads[::-1],)
