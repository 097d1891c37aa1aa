"""Spec tests for ``refws.im2col`` (issue 2): column order ``(N, *out_spatial, *kernel_spatial,
C_in)`` checked against a direct loop, and ``cols.reshape(-1, K * C_in) @ w.reshape(K * C_in, C_out)``
is the ungrouped convolution of the definition.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import refws
from .naive import naive_conv, naive_dilate_pad, naive_im2col
from .strategies import conv_problems


def _im2col(p):
    geo = p.geometry
    return refws.im2col(p.x_cl, geo.kernel_spatial, **geo.kwargs)


@given(conv_problems(exact=True))
def test_columns_match_direct_loop(p):
    """cols[n, o..., t..., c] = xpad[n, o * stride + t * rhs_dilation ..., c] for every padding form,
    stride and dilation; shape (N, *out_spatial, *kernel_spatial, C_in)."""
    geo = p.geometry
    x = p.x_cl
    cols = _im2col(p)
    assert cols.shape == (x.shape[0], *geo.out_spatial, *geo.kernel_spatial, x.shape[-1])
    assert cols.dtype == np.float64
    np.testing.assert_array_equal(
        cols, naive_im2col(x, geo.kernel_spatial, geo.stride, geo.pads, geo.lhs_dilation, geo.rhs_dilation)
    )


@given(conv_problems(groups=1, exact=True))
def test_columns_times_kernel_is_the_ungrouped_conv(p):
    geo = p.geometry
    x = p.x_cl
    cols = _im2col(p)
    k_cin = int(np.prod(geo.kernel_spatial)) * x.shape[-1]
    c_out = p.w.shape[-1]
    y = (cols.reshape(-1, k_cin) @ p.w.reshape(k_cin, c_out)).reshape(x.shape[0], *geo.out_spatial, c_out)
    np.testing.assert_array_equal(y, naive_conv(x, p.w, **p.naive_kwargs))


def test_column_order_by_hand():
    """1-D, VALID, x = [1, 2, 3, 4] with two channels (c, 10 c): windows of 2, then channels last."""
    x = np.array([[[1, 10], [2, 20], [3, 30], [4, 40]]], dtype=float)  # (1, 4, 2)
    cols = refws.im2col(x, (2,), padding="VALID")
    expected = np.array([[[[1, 10], [2, 20]], [[2, 20], [3, 30]], [[3, 30], [4, 40]]]], dtype=float)
    np.testing.assert_array_equal(cols, expected)  # (N=1, out=3, k=2, C=2)
    # stride 2, rhs dilation 2, pads (1, 0): xpad = [0, 1, 2, 3, 4], windows start at 0 and 2
    cols = refws.im2col(x[..., :1], (2,), stride=2, padding=[(1, 0)], rhs_dilation=2)
    np.testing.assert_array_equal(cols[0, :, :, 0], [[0, 2], [2, 4]])


def test_column_order_2d_by_hand():
    """2-D: out positions row-major, then kernel taps row-major, then channels."""
    x = np.arange(12, dtype=float).reshape(1, 3, 4, 1)
    cols = refws.im2col(x, (2, 2), padding="VALID")
    assert cols.shape == (1, 2, 3, 2, 2, 1)
    np.testing.assert_array_equal(cols[0, 1, 2, :, :, 0], [[6, 7], [10, 11]])
    np.testing.assert_array_equal(cols.reshape(6, 4)[0], [0, 1, 4, 5])


@pytest.mark.parametrize(
    "x_shape, kernel, kwargs, out_spatial",
    [
        ((1, 2, 1), (3,), dict(padding="VALID"), (0,)),  # kernel larger than input
        ((1, 2, 1), (1,), dict(padding=-1), (0,)),  # cropped to nothing
        ((2, 0, 3), (1,), dict(padding="VALID"), (0,)),  # empty input axis
        ((1, 0, 3, 2), (1, 1), dict(padding="VALID"), (0, 3)),
        ((1, 4, 4, 2), (2, 5), dict(padding="VALID", stride=2), (2, 0)),
    ],
)
def test_zero_size_output_columns(x_shape, kernel, kwargs, out_spatial):
    """Zero-size outputs are legal: an empty column array of the documented shape
    (regression: im2col once reshaped with -1 on the empty array and raised)."""
    x = np.ones(x_shape)
    cols = refws.im2col(x, kernel, **kwargs)
    assert cols.shape == (x_shape[0], *out_spatial, *kernel, x_shape[-1])


@given(data=st.data())
def test_fast_gather_equals_the_tap_loop(data):
    """The one-copy strided-view gather and the teaching tap loop give identical columns."""
    from refws.im2col import gather_windows, gather_windows_by_taps

    nd = data.draw(st.integers(1, 3))
    groups = data.draw(st.integers(1, 3))
    cg = data.draw(st.sampled_from([1, 3, 8, 9]))  # one to many channels per group
    k = tuple(data.draw(st.integers(1, 3)) for _ in range(nd))
    s = tuple(data.draw(st.integers(1, 3)) for _ in range(nd))
    d = tuple(data.draw(st.integers(1, 2)) for _ in range(nd))
    out = tuple(data.draw(st.integers(0, 4)) for _ in range(nd))
    padded_spatial = tuple(
        (o - 1) * si + (ki - 1) * di + 1 + data.draw(st.integers(0, 2)) if o else ki
        for o, si, ki, di in zip(out, s, k, d)
    )
    padded = np.arange(2 * int(np.prod(padded_spatial)) * groups * cg, dtype=np.float64).reshape(
        2, *padded_spatial, groups * cg
    )
    fast = gather_windows(padded, k, out, s, d, groups)
    slow = gather_windows_by_taps(padded, k, out, s, d, groups)
    assert fast.shape == slow.shape == (groups, 2, *out, *k, cg)
    np.testing.assert_array_equal(fast, slow)
    # Into a reused (dirty) workspace: every element is overwritten, by both gathers.
    for gather in (gather_windows, gather_windows_by_taps):
        dirty = np.full(fast.shape, np.nan)
        assert gather(padded, k, out, s, d, groups, out=dirty) is dirty
        np.testing.assert_array_equal(dirty, slow)


@given(conv_problems(exact=True))
def test_dilate_pad_into_a_dirty_buffer(p):
    """``dilate_pad(..., out=buf)`` overwrites a reused workspace completely: pad borders, the
    holes of lhs dilation and the copied input, for every padding form (incl. crops)."""
    from refws.im2col import dilate_pad, dilate_pad_shape

    geo, x = p.geometry, p.x_cl
    expected = naive_dilate_pad(x, geo.pads, geo.lhs_dilation)
    buf = np.full(dilate_pad_shape(x.shape, geo.lhs_dilation, geo.pads), np.nan)
    assert buf.shape == expected.shape
    assert dilate_pad(x, geo.lhs_dilation, geo.pads, out=buf) is buf
    np.testing.assert_array_equal(buf, expected)


def test_a_buffer_of_the_wrong_shape_is_refused():
    from refws.im2col import dilate_pad, gather_windows

    padded = np.zeros((1, 5, 2))
    with pytest.raises(ValueError, match=r"out.shape=\(1, 1, 3, 3, 2\): expected \(2, 1, 3, 3, 1\)"):
        gather_windows(padded, (3,), (3,), (1,), (1,), groups=2, out=np.empty((1, 1, 3, 3, 2)))
    # a larger buffer would otherwise keep stale values beyond the padded extent: refused too
    with pytest.raises(ValueError, match=r"out.shape=\(1, 8, 2\): expected \(1, 7, 2\)"):
        dilate_pad(padded, (1,), ((1, 1),), out=np.empty((1, 8, 2)))
