"""Spec tests for ``refws.conv`` (issue 2): the definition, identities, dtypes, IEEE specials,
regressions for the peers' bugs (../shared/NOTES.md) and brainstate's documented shapes.

Every expected value comes from something independent of refws: the definition-level loops in
``spec_tests/naive.py``, an identity between two differently-shaped calls, or scipy.
"""

from __future__ import annotations

import numpy as np
import pytest
import scipy.signal
from hypothesis import given, settings
from hypothesis import strategies as st

import refws
from .naive import (
    ceil_div,
    naive_conv,
    naive_conv_at,
    naive_same_pads,
    zero_stuff,
)
from .strategies import conv_problems

EXPLICIT = ("int", "ints", "pairs", "single_pair", "lohi")  # every non-string padding form


def _call(p, **overrides):
    """``refws.conv`` on a problem, with some keyword arguments replaced."""
    return refws.conv(p.x, p.w, **dict(p.kwargs, **overrides))


# ------------------------------------------------------------------------------------------
# The definition
# ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("nd", [1, 2, 3])
@given(data=st.data())
def test_conv_matches_naive_definition(nd, data):
    """refws.conv equals the definition-level loop for every padding form, stride, lhs/rhs
    dilation, groups (incl. depthwise with channel multiplier), batched or not, both layouts,
    zero-size inputs and outputs; inputs are not modified."""
    p = data.draw(conv_problems(dims=(nd,)), label="problem")
    x_before, w_before = p.x.copy(), p.w.copy()
    got = _call(p)
    assert isinstance(got, np.ndarray) and got.dtype == np.float64
    p.assert_close(got)
    np.testing.assert_array_equal(p.x, x_before)
    np.testing.assert_array_equal(p.w, w_before)


@given(conv_problems(channel_first=False, batched=True, exact=True))
def test_layouts_agree(p):
    """channel_first=True is channels-last with the channel axis moved to position 1 (input and
    output); unbatched is batched with N = 1 and the batch axis dropped."""
    base = _call(p)
    x_cf = np.moveaxis(p.x, -1, 1)
    np.testing.assert_array_equal(refws.conv(x_cf, p.w, **dict(p.kwargs, channel_first=True)), np.moveaxis(base, -1, 1))
    for b in range(p.x.shape[0]):
        np.testing.assert_array_equal(refws.conv(p.x[b], p.w, **p.kwargs), base[b])
        np.testing.assert_array_equal(
            refws.conv(np.moveaxis(p.x[b], -1, 0), p.w, **dict(p.kwargs, channel_first=True)),
            np.moveaxis(base[b], -1, 0),
        )


@settings(max_examples=min(50, settings.default.max_examples))
@given(conv_problems(), st.data())
def test_naive_is_self_consistent(p, data):
    """Guard on the oracle itself: the looped naive_conv equals the fully scalar naive_conv_at
    (which reads the input through the index map instead of a built padded array)."""
    full = p.expected_cl()
    if full.size == 0:
        return
    for _ in range(3):
        index = tuple(data.draw(st.integers(0, s - 1)) for s in full.shape)
        expected = naive_conv_at(p.x_cl, p.w, index, **p.naive_kwargs)
        assert full[index] == pytest.approx(expected, rel=1e-12, abs=p.atol())


# ------------------------------------------------------------------------------------------
# Identities
# ------------------------------------------------------------------------------------------
@given(conv_problems(groups="grouped", exact=True, channel_first=False, batched=True))
def test_groups_is_concatenation_of_per_group_convs(p):
    """Grouped conv == per-group ungrouped convs on the group's input-channel slice with the
    group's output-channel slice of w, concatenated along the channel axis."""
    cg, m = p.w.shape[-2], p.w.shape[-1] // p.groups
    parts = [
        refws.conv(p.x[..., g * cg : (g + 1) * cg], p.w[..., g * m : (g + 1) * m], **dict(p.kwargs, groups=1))
        for g in range(p.groups)
    ]
    np.testing.assert_array_equal(_call(p), np.concatenate(parts, axis=-1))


@given(conv_problems(padding_kinds=EXPLICIT, exact=True, channel_first=False, batched=True))
def test_lhs_dilation_is_conv_of_zero_stuffed_input(p):
    """lhs_dilation d == lhs_dilation 1 on the input with d - 1 zeros inserted between elements
    (padding applies to the dilated input in both)."""
    nd = p.ndim
    stuffed = zero_stuff(p.x, p.geometry.lhs_dilation, axes=tuple(range(1, nd + 1)))
    np.testing.assert_array_equal(
        _call(p, padding=p.geometry.pads),
        refws.conv(stuffed, p.w, **dict(p.kwargs, padding=p.geometry.pads, lhs_dilation=1)),
    )


@given(conv_problems(exact=True))
def test_rhs_dilation_is_conv_with_zero_stuffed_kernel(p):
    """rhs_dilation d == rhs_dilation 1 with the kernel's taps spread by d - 1 zeros. The padding
    argument is passed unchanged: SAME must use the dilated kernel size (k - 1) * d + 1."""
    nd = p.ndim
    stuffed = zero_stuff(p.w, p.geometry.rhs_dilation, axes=tuple(range(nd)))
    np.testing.assert_array_equal(_call(p), refws.conv(p.x, stuffed, **dict(p.kwargs, rhs_dilation=1)))


@given(conv_problems(exact=True, channel_first=False, batched=True))
def test_stride_is_subsampled_stride_one(p):
    """With explicit pads, stride s == the stride-1 result keeping every s-th output position."""
    pads = p.geometry.pads
    strided = _call(p, padding=pads)
    dense = _call(p, padding=pads, stride=1)
    keep = (slice(None), *(slice(None, None, s) for s in p.geometry.stride), slice(None))
    np.testing.assert_array_equal(strided, dense[keep])


@given(st.integers(1, 2), st.data())
def test_same_output_size_is_ceil_n_over_s(nd, data):
    """SAME and SAME_LOWER give out = ceil(n / s) per dimension, whatever k and rhs dilation."""
    n = tuple(data.draw(st.integers(0, 12)) for _ in range(nd))
    k = tuple(data.draw(st.integers(1, 5)) for _ in range(nd))
    s = tuple(data.draw(st.integers(1, 4)) for _ in range(nd))
    d = tuple(data.draw(st.integers(1, 3)) for _ in range(nd))
    mode = data.draw(st.sampled_from(["SAME", "SAME_LOWER", "same"]))
    x = np.ones((1, *n, 1))
    w = np.ones((*k, 1, 2))
    y = refws.conv(x, w, stride=s, padding=mode, rhs_dilation=d)
    assert y.shape == (1, *(ceil_div(ni, si) for ni, si in zip(n, s)), 2)


@st.composite
def _plain_problems(draw):
    """Stride 1, no dilation, groups 1, kernel no larger than the input, pads >= 0."""
    nd = draw(st.integers(1, 3))
    n = tuple(draw(st.integers(1, 6 if nd < 3 else 4)) for _ in range(nd))
    k = tuple(draw(st.integers(1, ni)) for ni in n)
    c_in, c_out, batch = draw(st.integers(1, 3)), draw(st.integers(1, 3)), draw(st.integers(1, 2))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    x = rng.standard_normal((batch, *n, c_in))
    w = rng.standard_normal((*k, c_in, c_out))
    return x, w


def _scipy_conv(x, w, mode):
    """out[b, ..., co] = sum_ci scipy.signal.correlate(x[b, ..., ci], w[..., ci, co], mode)."""
    outs = []
    for b in range(x.shape[0]):
        per_co = [
            sum(
                scipy.signal.correlate(x[b, ..., ci], w[..., ci, co], mode=mode, method="direct")
                for ci in range(x.shape[-1])
            )
            for co in range(w.shape[-1])
        ]
        outs.append(np.stack(per_co, axis=-1))
    return np.stack(outs)


@given(_plain_problems())
def test_plain_case_matches_scipy_correlate(xw):
    """valid == VALID; full == pads (k - 1, k - 1); scipy's 'same' (centred, the odd element
    of the k - 1 total at the start) == SAME_LOWER at stride 1; explicit pads == np.pad + valid."""
    x, w = xw
    nd = x.ndim - 2
    k = w.shape[:nd]
    tol = dict(rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(refws.conv(x, w, padding="VALID"), _scipy_conv(x, w, "valid"), **tol)
    np.testing.assert_allclose(
        refws.conv(x, w, padding=[(ki - 1, ki - 1) for ki in k]), _scipy_conv(x, w, "full"), **tol
    )
    np.testing.assert_allclose(refws.conv(x, w, padding="SAME_LOWER"), _scipy_conv(x, w, "same"), **tol)
    pads = [((ki - 1) // 2 + 1, ki // 3) for ki in k]
    xpad = np.pad(x, [(0, 0), *pads, (0, 0)])
    np.testing.assert_allclose(refws.conv(x, w, padding=pads), _scipy_conv(xpad, w, "valid"), **tol)


# ------------------------------------------------------------------------------------------
# dtypes and IEEE specials
# ------------------------------------------------------------------------------------------
ACCEPTED = ["bool", "int8", "uint8", "int16", "int32", "int64", "uint32", "float16", "float32", "float64"]


def _small_data(dtype, shape, rng):
    if dtype == "bool":
        return rng.integers(0, 2, size=shape).astype(bool)
    if np.issubdtype(np.dtype(dtype), np.unsignedinteger):
        return rng.integers(0, 5, size=shape).astype(dtype)
    return rng.integers(-4, 5, size=shape).astype(dtype)


@pytest.mark.parametrize("dtype", ACCEPTED)
def test_accepted_dtypes_compute_in_float64(dtype):
    rng = np.random.default_rng(0)
    x = _small_data(dtype, (2, 5, 4, 3), rng)
    w = _small_data(dtype, (3, 2, 3, 2), rng)
    for xi, wi in [(x, w), (x, w.astype(np.float64)), (x.astype(np.float64), w)]:
        got = refws.conv(xi, wi, stride=(1, 2), padding="SAME")
        assert got.dtype == np.float64
        pads = tuple(naive_same_pads(n, k, s) for n, k, s in zip((5, 4), (3, 2), (1, 2)))
        np.testing.assert_array_equal(
            got, naive_conv(x.astype(np.float64), w.astype(np.float64), stride=(1, 2), pads=pads)
        )


def test_float32_values_are_not_rounded_to_float32():
    """The computation is float64 even for float32 inputs: 1 + 2**-20 * 2**-20 terms survive."""
    x = np.array([[[1.0], [2.0**-20]]], dtype=np.float32)  # (1, 2, 1)
    w = np.array([[[1.0]], [[2.0**-20]]], dtype=np.float32)  # (2, 1, 1)
    got = refws.conv(x, w, padding="VALID")
    assert got.dtype == np.float64
    assert got[0, 0, 0] == 1.0 + 2.0**-40


@pytest.mark.parametrize("bad", ["complex64", "complex128", "object"])
@pytest.mark.parametrize("which", ["x", "w"])
def test_complex_and_object_dtypes_raise_type_error(bad, which):
    x = np.ones((1, 4, 4, 2))
    w = np.ones((3, 3, 2, 2))
    if which == "x":
        x = x.astype(bad)
    else:
        w = w.astype(bad)
    with pytest.raises(TypeError, match=rf"\b{which}\b"):
        refws.conv(x, w)


@given(conv_problems(exact=True, channel_first=False, batched=True), st.data())
def test_nan_and_inf_in_x_propagate_like_ieee(p, data):
    """NaN/Inf in x are not errors: the result equals the definition evaluated in IEEE
    arithmetic (NaN where any term is NaN or inf * 0 or inf - inf, +-inf where terms overflow
    one way, untouched outputs stay finite)."""
    x = p.x.copy()
    if x.size == 0:
        return
    for _ in range(data.draw(st.integers(1, 3))):
        index = tuple(data.draw(st.integers(0, s - 1)) for s in x.shape)
        x[index] = data.draw(st.sampled_from([np.nan, np.inf, -np.inf]))
    with np.errstate(invalid="ignore", over="ignore"):
        expected = naive_conv(x, p.w, **p.naive_kwargs)
        got = refws.conv(x, p.w, **p.kwargs)
    np.testing.assert_array_equal(got, expected)


def test_nan_in_w_poisons_exactly_its_output_channel():
    rng = np.random.default_rng(1)
    x = rng.standard_normal((2, 6, 5, 4))
    w = rng.standard_normal((3, 2, 2, 6))
    w[1, 0, 1, 4] = np.nan
    with np.errstate(invalid="ignore"):
        y = refws.conv(x, w, padding="VALID", groups=2)
    assert np.isnan(y[..., 4]).all()
    assert np.isfinite(np.delete(y, 4, axis=-1)).all()


# ------------------------------------------------------------------------------------------
# Regressions for the peers' bugs (../shared/NOTES.md)
# ------------------------------------------------------------------------------------------
def _exact_data(x_shape, w_shape, seed=0):
    rng = np.random.default_rng(seed)
    return (rng.integers(-4, 5, size=x_shape).astype(np.float64), rng.integers(-4, 5, size=w_shape).astype(np.float64))


@pytest.mark.parametrize(
    "padding, pads",
    [
        ((2, -1), ((2, -1),)),  # 1-D: a 2-int tuple is (lo, hi)
        ([(2, -1)], ((2, -1),)),
        ((-1, 2), ((-1, 2),)),
    ],
)
@pytest.mark.parametrize("stride", [1, 2])
def test_mixed_sign_pads_1d(padding, pads, stride):
    """lax_reference gets the output shape wrong for one positive and one negative side."""
    x, w = _exact_data((2, 5, 3), (3, 3, 2))
    y = refws.conv(x, w, stride=stride, padding=padding)
    # padded length 5 + 2 - 1 = 6, window 3: (6 - 3) // stride + 1 outputs
    assert y.shape == (2, (6 - 3) // stride + 1, 2)
    np.testing.assert_array_equal(y, naive_conv(x, w, stride=stride, pads=pads))


@pytest.mark.parametrize(
    "padding, pads",
    [
        (((2, -1), (2, -1)), ((2, -1), (2, -1))),
        ([(2, -1)], ((2, -1), (2, -1))),  # a single pair, every dimension
        (((2, -1), (0, 0)), ((2, -1), (0, 0))),
        (((-1, 2), (2, -1)), ((-1, 2), (2, -1))),
    ],
)
def test_mixed_sign_pads_2d(padding, pads):
    x, w = _exact_data((1, 5, 6, 2), (3, 2, 2, 3))
    y = refws.conv(x, w, padding=padding)
    assert y.shape == (1, *(n + lo + hi - k + 1 for n, k, (lo, hi) in zip((5, 6), (3, 2), pads)), 3)
    np.testing.assert_array_equal(y, naive_conv(x, w, pads=pads))


def test_same_with_rhs_dilation_2_on_9x9_keeps_9x9():
    """lax_reference ignores rhs_dilation for string padding (7x7); lax gives 9x9, pads (2, 2)."""
    x, w = _exact_data((1, 9, 9, 2), (3, 3, 2, 3))
    y = refws.conv(x, w, padding="SAME", rhs_dilation=2)
    assert y.shape == (1, 9, 9, 3)
    np.testing.assert_array_equal(y, naive_conv(x, w, pads=((2, 2), (2, 2)), rhs_dilation=2))


# (n, k) -> lax SAME pads at stride 2, derived from the rule (out = ceil(n/2),
# total = (out - 1) * 2 + k - n, lo = total // 2): even kernels on even and odd sizes.
SAME_STRIDE2 = [
    (8, 2, (0, 0)),  # out 4, total 0
    (8, 4, (1, 1)),  # out 4, total 2
    (7, 2, (0, 1)),  # out 4, total 1: the extra element at the end
    (7, 4, (1, 2)),  # out 4, total 3
    (6, 6, (2, 2)),
    (9, 4, (1, 2)),
]


@pytest.mark.parametrize("n, k, pads", SAME_STRIDE2)
@pytest.mark.parametrize("lower", [False, True])
def test_same_stride_2_even_kernels(n, k, pads, lower):
    assert naive_same_pads(n, k, 2, 1, lower=lower) == (pads[::-1] if lower else pads)  # the table
    expected_pads = pads[::-1] if lower else pads
    x, w = _exact_data((2, n, 3), (k, 3, 2), seed=n * 10 + k)
    y = refws.conv(x, w, stride=2, padding="SAME_LOWER" if lower else "SAME")
    assert y.shape == (2, ceil_div(n, 2), 2)
    np.testing.assert_array_equal(y, naive_conv(x, w, stride=2, pads=(expected_pads,)))
    # 2-D with one even and one odd size, channel-first, unbatched
    x2, w2 = _exact_data((n, n - 1, 3), (k, 2, 3, 2), seed=n)
    y2 = refws.conv(np.moveaxis(x2, -1, 0), w2, stride=2, padding="SAME_LOWER" if lower else "SAME", channel_first=True)
    pads2 = (expected_pads, naive_same_pads(n - 1, 2, 2, 1, lower=lower))
    np.testing.assert_array_equal(np.moveaxis(y2, 0, -1), naive_conv(x2[None], w2, stride=2, pads=pads2)[0])


# ------------------------------------------------------------------------------------------
# brainstate's documented examples (../shared/seeds/brainstate-Conv2d.txt), small batch
# ------------------------------------------------------------------------------------------
def _spot_check(x, w, y, indices, **kw):
    for index in indices:
        assert y[index] == pytest.approx(naive_conv_at(x, w, index, **kw), rel=1e-12, abs=1e-12)


def test_brainstate_conv2d_default_example():
    """Conv2d(in_size=(32, 32, 3), out_channels=64, kernel_size=3): (8, 32, 32, 3) -> (8, 32, 32, 64)
    with SAME (batch 2 here); unbatched (32, 32, 3) -> (32, 32, 64); both layouts."""
    rng = np.random.default_rng(2)
    w = rng.standard_normal((3, 3, 3, 64))
    x = np.ones((2, 32, 32, 3))
    y = refws.conv(x, w)
    assert y.shape == (2, 32, 32, 64)
    np.testing.assert_allclose(y, naive_conv(x, w, pads=((1, 1), (1, 1))), rtol=1e-12, atol=1e-12)
    # with x = ones, an interior output is the sum of the kernel over taps and input channels
    np.testing.assert_allclose(y[0, 5, 7], w.sum(axis=(0, 1, 2)), rtol=1e-12)
    assert refws.conv(x[0], w).shape == (32, 32, 64)
    y_cf = refws.conv(np.moveaxis(x, -1, 1), w, channel_first=True)
    assert y_cf.shape == (2, 64, 32, 32)
    np.testing.assert_allclose(np.moveaxis(y_cf, 1, -1), y, rtol=1e-12, atol=1e-12)


def test_brainstate_conv2d_strided_valid_example():
    """Conv2d(in_size=(224, 224, 3), out_channels=128, kernel_size=(5, 5), stride=2, padding='VALID'):
    out = ceil((224 - 5 + 1) / 2) = 110 per the Notes."""
    rng = np.random.default_rng(3)
    x = rng.standard_normal((1, 224, 224, 3))
    w = rng.standard_normal((5, 5, 3, 128))
    y = refws.conv(x, w, stride=2, padding="VALID")
    assert y.shape == (1, ceil_div(224 - 5 + 1, 2), ceil_div(224 - 5 + 1, 2), 128) == (1, 110, 110, 128)
    _spot_check(x, w, y, [(0, 0, 0, 0), (0, 109, 109, 127), (0, 55, 3, 64), (0, 0, 109, 1)], stride=2)


def test_brainstate_conv2d_depthwise_example():
    """Conv2d(in_size=(64, 64, 32), out_channels=32, kernel_size=3, groups=32): depthwise, kernel
    (3, 3, 1, 32), SAME keeps 64x64."""
    rng = np.random.default_rng(4)
    x = rng.standard_normal((2, 64, 64, 32))
    w = rng.standard_normal((3, 3, 1, 32))
    y = refws.conv(x, w, groups=32)
    assert y.shape == (2, 64, 64, 32)
    kw = dict(pads=((1, 1), (1, 1)), groups=32)
    _spot_check(x, w, y, [(0, 0, 0, 0), (1, 63, 63, 31), (1, 31, 0, 17), (0, 12, 40, 5)], **kw)
    # a corner crop of the input sees the same values away from the crop's far edges
    np.testing.assert_allclose(y[:, :7, :7], naive_conv(x[:, :8, :8], w, **kw)[:, :7, :7], rtol=1e-12, atol=1e-12)


# ------------------------------------------------------------------------------------------
# Zero-size outputs are legal
# ------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "x_shape, w_shape, kw, out_spatial",
    [
        ((2, 3, 3), (5, 3, 2), dict(padding="VALID"), (0,)),  # kernel > input
        ((2, 4, 3), (3, 3, 2), dict(padding=(-1, -1)), (0,)),  # crop to 2 < 3
        ((2, 4, 3), (2, 3, 2), dict(padding="VALID", rhs_dilation=4), (0,)),  # dilated kernel 5 > 4
        ((2, 0, 3), (3, 3, 2), dict(padding="SAME"), (0,)),  # empty input axis
        ((1, 6, 2, 3), (3, 3, 3, 4), dict(padding="VALID"), (4, 0)),
        ((1, 0, 5, 2), (1, 2, 2, 4), dict(padding="VALID"), (0, 4)),
        ((1, 2, 2, 2, 1), (3, 1, 1, 1, 2), dict(padding="VALID", stride=2), (0, 1, 1)),
    ],
)
def test_zero_size_outputs_are_legal(x_shape, w_shape, kw, out_spatial):
    x = np.ones(x_shape)
    w = np.ones(w_shape)
    y = refws.conv(x, w, **kw)
    assert y.shape == (x_shape[0], *out_spatial, w_shape[-1])
    y_cf = refws.conv(np.moveaxis(x, -1, 1), w, channel_first=True, **kw)
    assert y_cf.shape == (x_shape[0], w_shape[-1], *out_spatial)
    assert refws.conv(x[0], w, **kw).shape == (*out_spatial, w_shape[-1])


def test_padding_of_an_empty_axis_gives_zeros():
    """An empty input axis padded by (1, 1) is two zeros: a 1-tap kernel gives a zero output."""
    x = np.ones((1, 0, 2))
    w = np.ones((1, 2, 3))
    y = refws.conv(x, w, padding=(1, 1))
    assert y.shape == (1, 2, 3)
    np.testing.assert_array_equal(y, 0.0)
