"""Spec tests for the hand-derived derivatives of ``refws.conv`` (issue 3): ``conv_vjp`` (both
derivations), ``conv_jvp``, ``bias_vjp``, ``col2im``.

Independent evidence used here:

* ``naive.naive_conv_vjp``: ``dx`` and ``dw`` straight from the index map of the definition
  (every pair of output position and kernel tap that reads an input element), no refws code;
* ``naive_conv`` (the forward's definition) for the primal output ``conv_jvp`` returns;
* the adjoint identities ``<conv(x, w), dy> = <x, dx> = <w, dw>`` and ``<im2col(x), z> =
  <x, col2im(z)>``, with ``refws.conv`` / ``refws.im2col`` (checked against the definition in the
  core tests) on the other side;
* central finite differences of the forward (the derivatives never enter the reference side);
* the worked 1-D example of docs/backward.md, recomputed by explicit hand-written sums;
* optionally ``jax.vjp`` of ``lax.conv_general_dilated`` (when jax is installed).

Tolerances. Integer-valued problems (``problem.exact``: entries in [-4, 4], a few hundred terms
per sum) are exact in float64 in any summation order, so they are compared with ``==``.
Real-valued problems use the standard rounding-error bound of a sum of ``K`` products,
``|fl(s) - s| <= gamma_K * sum |terms|`` with ``gamma_K = K u / (1 - K u)``: the
``sum |terms|`` side is the same computation on absolute values.
"""

from __future__ import annotations

import importlib

import numpy as np
import pytest
from hypothesis import given, settings

import refws
import refws.grads
from .naive import from_channels_last, naive_conv_vjp, naive_im2col, to_channels_last
from .strategies import conv_problems

EPS = np.finfo(np.float64).eps


def gamma(k: int) -> float:
    """``gamma_K = K u / (1 - K u)`` with ``u = eps / 2``, the relative error bound of a K-term sum."""
    u = EPS / 2
    return k * u / (1 - k * u)


def out_shape(p) -> tuple:
    """Shape of ``conv(p.x, p.w, **p.kwargs)`` in the problem's own layout (test side)."""
    n_batch = p.x_cl.shape[0]
    return from_channels_last(
        np.empty((n_batch, *p.geometry.out_spatial, p.w.shape[-1])), p.channel_first, p.batched
    ).shape


def random_like(shape, exact: bool, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    if exact:
        return rng.integers(-4, 5, size=shape).astype(np.float64)
    return rng.standard_normal(shape)


def n_terms(p) -> int:
    """An upper bound on the number of products in any one sum of a VJP or an inner product."""
    return int(np.prod(p.w.shape)) + p.x.size + int(np.prod(out_shape(p))) + 1


def assert_bound(got, expected, absolute, k, factor=2.0, err_msg=""):
    """``|got - expected| <= factor * gamma_K * absolute`` elementwise (plus a denormal floor)."""
    got, expected = np.asarray(got), np.asarray(expected)
    assert got.shape == expected.shape, f"{got.shape} != {expected.shape}. {err_msg}"
    tol = factor * gamma(k) * np.asarray(absolute) + 1e-300
    bad = np.abs(got - expected) > tol
    assert not bad.any(), f"{err_msg}: max excess {np.max(np.abs(got - expected) - tol)}"


def vjp_problem(p, seed_offset=1):
    dy = random_like(out_shape(p), p.exact, p.seed + seed_offset)
    g = p.geometry
    return dy, dict(
        stride=g.stride, pads=g.pads, lhs_dilation=g.lhs_dilation, rhs_dilation=g.rhs_dilation, groups=p.groups
    )


# --- both derivations against the definition and against each other ---------------------------


@pytest.mark.parametrize("method", ["col2im", "conv"])
@given(p=conv_problems())
def test_vjp_matches_definition(p, method):
    dy, nkw = vjp_problem(p)
    dy_cl = to_channels_last(dy, p.channel_first, p.batched)
    dx_cl, dw = naive_conv_vjp(p.x_cl, p.w, dy_cl, **nkw)
    dx = from_channels_last(dx_cl, p.channel_first, p.batched)
    got_dx, got_dw = refws.conv_vjp(p.x, p.w, dy, **p.kwargs, method=method)
    assert got_dx.shape == p.x.shape and got_dw.shape == p.w.shape
    if p.exact:
        np.testing.assert_array_equal(got_dx, dx)
        np.testing.assert_array_equal(got_dw, dw)
    else:
        abs_dx_cl, abs_dw = naive_conv_vjp(np.abs(p.x_cl), np.abs(p.w), np.abs(dy_cl), **nkw)
        abs_dx = from_channels_last(abs_dx_cl, p.channel_first, p.batched)
        assert_bound(got_dx, dx, abs_dx, n_terms(p), err_msg="dx")
        assert_bound(got_dw, dw, abs_dw, n_terms(p), err_msg="dw")


@given(p=conv_problems())
def test_col2im_and_conv_methods_agree(p):
    """The full strategy of the core issue: every padding form, dilations, groups, layouts, empties."""
    dy, _ = vjp_problem(p)
    a = refws.conv_vjp(p.x, p.w, dy, **p.kwargs, method="col2im")
    b = refws.conv_vjp(p.x, p.w, dy, **p.kwargs, method="conv")
    if p.exact:
        np.testing.assert_array_equal(a[0], b[0])
        np.testing.assert_array_equal(a[1], b[1])
    else:
        absolute = refws.conv_vjp(np.abs(p.x), np.abs(p.w), np.abs(dy), **p.kwargs)
        for got, ref, bound, name in zip(a, b, absolute, ("dx", "dw")):
            assert_bound(got, ref, bound, n_terms(p), err_msg=name)


# --- adjoint identities ---------------------------------------------------------------------


@given(p=conv_problems())
def test_adjoint_identities(p):
    """<conv(x, w), dy> == <x, dx> == <w, dw> (exactly for integer data)."""
    dy, _ = vjp_problem(p)
    for method in ("col2im", "conv"):
        dx, dw = refws.conv_vjp(p.x, p.w, dy, **p.kwargs, method=method)
        lhs = np.vdot(refws.conv(p.x, p.w, **p.kwargs), dy)
        if p.exact:
            assert lhs == np.vdot(p.x, dx) == np.vdot(p.w, dw)
        else:
            bound = np.vdot(refws.conv(np.abs(p.x), np.abs(p.w), **p.kwargs), np.abs(dy))
            tol = 3 * gamma(n_terms(p)) * bound + 1e-300
            assert abs(lhs - np.vdot(p.x, dx)) <= tol
            assert abs(lhs - np.vdot(p.w, dw)) <= tol


@given(p=conv_problems(exact=True))
def test_col2im_is_the_adjoint_of_im2col(p):
    if 0 in p.geometry.out_spatial:
        return  # zero-size columns: see test_im2col_col2im_zero_size_output below
    kw = {k: p.kwargs[k] for k in ("stride", "padding", "lhs_dilation", "rhs_dilation")}
    kernel = p.w.shape[:-2]
    cols = refws.im2col(p.x_cl, kernel, **kw)
    z = random_like(cols.shape, True, p.seed + 2)
    back = refws.col2im(z, p.x_cl.shape, kernel, **kw)
    assert back.shape == p.x_cl.shape
    assert np.vdot(cols, z) == np.vdot(p.x_cl, back)
    # and the columns themselves are the definition's (so the identity is about the right map)
    g = p.geometry
    np.testing.assert_array_equal(cols, naive_im2col(p.x_cl, kernel, g.stride, g.pads, g.lhs_dilation, g.rhs_dilation))


def test_im2col_col2im_zero_size_output():
    """Regression: zero-size outputs once made gather/scatter_windows reshape an empty array with -1."""
    x = np.arange(3.0).reshape(1, 3, 1)
    cols = refws.im2col(x, (4,), padding="VALID")
    assert cols.shape == (1, 0, 4, 1)
    np.testing.assert_array_equal(refws.col2im(cols, x.shape, (4,), padding="VALID"), np.zeros(x.shape))


# --- finite differences ---------------------------------------------------------------------
# conv is bilinear: f(x + h vx, w + h vw) = f(x, w) + h (f(vx, w) + f(x, vw)) + h^2 f(vx, vw), so
# the central difference (f(+h) - f(-h)) / 2h equals the directional derivative EXACTLY in real
# arithmetic, for any h (the h^2 term cancels, there is no higher one). Only rounding remains:
# each evaluation errs by at most gamma_K * B, B the same computation on absolute values
# (|x| + h|vx|, |w| + h|vw|), so the difference errs by at most gamma_K * B / h, and the
# derivative side by another gamma_K * B. We take h = 1/2 (a power of two: no rounding in h or in
# the division) and assert |cd - derivative| <= 4 gamma_K B / h: a tolerance of order 1e-13
# relative to B, where the usual small-h check needs ~1e-5 to absorb truncation error.

H = 0.5


@given(p=conv_problems(exact=False))
def test_vjp_central_differences(p):
    dy, _ = vjp_problem(p)
    rng = np.random.default_rng(p.seed + 3)
    vx, vw = rng.standard_normal(p.x.shape), rng.standard_normal(p.w.shape)
    dx, dw = refws.conv_vjp(p.x, p.w, dy, **p.kwargs)

    def loss(x, w):
        return np.vdot(refws.conv(x, w, **p.kwargs), dy)

    k = n_terms(p)
    for (tx, tw), derivative in (((vx, 0 * vw), np.vdot(dx, vx)), ((0 * vx, vw), np.vdot(dw, vw))):
        cd = (loss(p.x + H * tx, p.w + H * tw) - loss(p.x - H * tx, p.w - H * tw)) / (2 * H)
        bound = np.vdot(refws.conv(np.abs(p.x) + H * np.abs(tx), np.abs(p.w) + H * np.abs(tw), **p.kwargs), np.abs(dy))
        assert abs(cd - derivative) <= 4 * gamma(k) * bound / H + 1e-300


@given(p=conv_problems(exact=False))
def test_jvp_central_differences(p):
    rng = np.random.default_rng(p.seed + 4)
    tx, tw = rng.standard_normal(p.x.shape), rng.standard_normal(p.w.shape)
    y, ty = refws.conv_jvp(p.x, p.w, tx, tw, **p.kwargs)
    p.assert_close(y, err_msg="y")  # the primal output, against the definition loop
    cd = (refws.conv(p.x + H * tx, p.w + H * tw, **p.kwargs) - refws.conv(p.x - H * tx, p.w - H * tw, **p.kwargs)) / (
        2 * H
    )
    bound = refws.conv(np.abs(p.x) + H * np.abs(tx), np.abs(p.w) + H * np.abs(tw), **p.kwargs)
    assert_bound(ty, cd, bound / H, n_terms(p), factor=4.0, err_msg="ty")


@given(p=conv_problems(exact=True))
def test_jvp_and_vjp_are_transposes(p):
    """<ty, dy> == <tx, dx> + <tw, dw>: forward and reverse mode describe the same linear map."""
    dy, _ = vjp_problem(p)
    tx, tw = random_like(p.x.shape, True, p.seed + 5), random_like(p.w.shape, True, p.seed + 6)
    _, ty = refws.conv_jvp(p.x, p.w, tx, tw, **p.kwargs)
    dx, dw = refws.conv_vjp(p.x, p.w, dy, **p.kwargs)
    assert np.vdot(ty, dy) == np.vdot(tx, dx) + np.vdot(tw, dw)


# --- the specific geometry cases named by the issue --------------------------------------------


@pytest.mark.parametrize("method", ["col2im", "conv"])
@pytest.mark.parametrize(
    "x_shape, w_shape, kw",
    [
        ((1, 3, 2), (5, 2, 3), dict(padding="VALID")),  # kernel longer than input
        ((2, 4, 4, 2), (2, 2, 2, 2), dict(padding=[(-2, -2), (0, 0)])),  # everything cropped away
        ((3, 2), (2, 2, 4), dict(padding=(0, -2), stride=2)),  # unbatched, empty output
        ((2, 3, 4), (5, 3, 4), dict(padding="VALID", channel_first=True)),  # channel-first, empty output
        ((1, 0, 3), (1, 3, 2), dict(padding=1)),  # empty input, output reads only pads
        ((0, 4, 3), (2, 3, 2), dict(padding="SAME")),  # empty batch
    ],
)
def test_zero_size_problems_give_zero_gradients(x_shape, w_shape, kw, method):
    rng = np.random.default_rng(0)
    x, w = rng.standard_normal(x_shape), rng.standard_normal(w_shape)
    y = refws.conv(x, w, **kw)
    assert 0 in y.shape or 0 in x.shape
    dx, dw = refws.conv_vjp(x, w, rng.standard_normal(y.shape), **kw, method=method)
    assert dx.shape == x.shape and dw.shape == w.shape
    assert not dx.any() and not dw.any()


def test_unread_input_rows_get_zero_gradient():
    """Stride 3 over 7 rows with k = 2 reads rows 0, 1, 3, 4: rows 2, 5, 6 must get exactly 0."""
    x = np.arange(1.0, 8.0).reshape(1, 7, 1)
    w = np.array([1.0, 2.0]).reshape(2, 1, 1)
    for method in ("col2im", "conv"):
        dx, _ = refws.conv_vjp(x, w, np.ones((1, 2, 1)), stride=3, padding="VALID", method=method)
        np.testing.assert_array_equal(dx.ravel(), [1, 2, 0, 1, 2, 0, 0])


def test_derived_padding_of_the_conv_method():
    """The derived pads of docs/backward.md, hand-computed for two geometries."""
    # n = 6, k = 2, s = 3, pads (1, 0): n_p = 7, out = 2, remainder r = 7 - 2 - 3 = 2
    g = refws.conv_geometry((6,), (2,), stride=3, padding=[(1, 0)])
    assert refws.grads.input_grad_pads(g) == ((0, 3),)  # lo' = k_d-1-lo, hi' = k_d-1-hi+r
    assert refws.grads.weight_grad_pads(g) == ((1, -2),)  # (lo, hi - r)
    # n = 5, k = 3, d = 2 (k_d = 5), L = 2 (n_L = 9), pads (-1, 2), s = 2: n_p = 10, out = 3, r = 1
    g = refws.conv_geometry((5,), (3,), stride=2, padding=[(-1, 2)], lhs_dilation=2, rhs_dilation=2)
    assert g.out_spatial == (3,)
    assert refws.grads.input_grad_pads(g) == ((5, 3),)  # 4 - (-1) = 5; 4 - 2 + 1 = 3
    assert refws.grads.weight_grad_pads(g) == ((-1, 1),)


def test_conv_method_is_one_conv_call_each(monkeypatch):
    """method="conv" computes dx and dw with exactly one convolution each, with the derived
    arguments (lhs_dilation and stride exchanged for dx, stride and rhs_dilation for dw): the
    geometries that reach refws.conv's evaluation (dx skips refws.conv's argument checks, its
    operands being checked already)."""
    conv_module = importlib.import_module("refws.conv")
    calls = []
    real = conv_module.conv_canonical

    def spy(x, w, g, groups, *args):
        calls.append((g, groups))
        return real(x, w, g, groups, *args)

    monkeypatch.setattr(conv_module, "conv_canonical", spy)
    monkeypatch.setattr(refws.grads, "conv_canonical", spy)
    rng = np.random.default_rng(1)
    x, w = rng.standard_normal((2, 9, 4)), rng.standard_normal((3, 2, 6))
    kw = dict(stride=2, padding=[(1, -1)], lhs_dilation=3, rhs_dilation=1, groups=2)
    dy = rng.standard_normal(refws.conv(x, w, **kw).shape)
    calls.clear()
    refws.conv_vjp(x, w, dy, **kw, method="conv")
    assert len(calls) == 2
    (dx_g, dx_groups), (dw_g, dw_groups) = calls
    assert (dx_g.lhs_dilation, dx_g.stride, dx_g.rhs_dilation) == ((2,), (3,), (1,))
    assert (dw_g.lhs_dilation, dw_g.stride, dw_g.rhs_dilation) == ((3,), (1,), (2,))
    assert dx_groups == dw_groups == 2


# --- the worked example of docs/backward.md ---------------------------------------------------


def test_worked_example_of_the_docs():
    """n = 6, k = 2, stride 3, padding (1, 0): x = 1..6, w = (2, -1), dy = (1, 10).

    Padded input P = (0, x0, x1, x2, x3, x4, x5); output 0 reads P[0], P[1]; output 1 reads P[3],
    P[4]. x1, x4, x5 are never read.
    """
    x0, x1, x2, x3, x4, x5 = 1.0, 2.0, 3.0, 4.0, 5.0, 6.0
    w0, w1 = 2.0, -1.0
    dy0, dy1 = 1.0, 10.0
    y = [0 * w0 + x0 * w1, x2 * w0 + x3 * w1]  # (-1, 2)
    dx = [dy0 * w1, 0.0, dy1 * w0, dy1 * w1, 0.0, 0.0]  # (-1, 0, 20, -10, 0, 0)
    dw = [0 * dy0 + x2 * dy1, x0 * dy0 + x3 * dy1]  # (30, 41)
    assert y == [-1.0, 2.0] and dx == [-1.0, 0.0, 20.0, -10.0, 0.0, 0.0] and dw == [30.0, 41.0]
    assert sum(a * b for a, b in zip(y, (dy0, dy1))) == 19.0  # <y, dy> = <x, dx> = <w, dw> = 19
    assert sum(a * b for a, b in zip((x0, x1, x2, x3, x4, x5), dx)) == 19.0
    assert w0 * dw[0] + w1 * dw[1] == 19.0

    # method "conv", dx: D = dy stuffed by s = 3 = (1, 0, 0, 10); pads (0, 3); flipped kernel (w1, w0)
    q = [dy0, 0, 0, dy1, 0, 0, 0]
    assert [q[i] * w1 + q[i + 1] * w0 for i in range(6)] == dx
    # method "conv", dw: x padded by (1, -2) = (0, x0, x1, x2, x3); kernel dy dilated by 3
    p = [0, x0, x1, x2, x3]
    assert [p[t] * dy0 + p[t + 3] * dy1 for t in range(2)] == dw
    # conv_transpose(dy, w, stride=3, padding=1, output_padding=1) is dx without its last two rows
    ct = [0.0] * ((2 - 1) * 3 - 2 * 1 + 1 * (2 - 1) + 1 + 1)  # size 4
    for i, d in enumerate((dy0, dy1)):
        for t, wt in enumerate((w0, w1)):
            if 0 <= i * 3 - 1 + t < len(ct):
                ct[i * 3 - 1 + t] += d * wt
    assert ct == dx[:4]

    xa, wa, dya = (
        np.array([x0, x1, x2, x3, x4, x5]).reshape(1, 6, 1),
        np.array([w0, w1]).reshape(2, 1, 1),
        np.array([dy0, dy1]).reshape(1, 2, 1),
    )
    np.testing.assert_array_equal(refws.conv(xa, wa, stride=3, padding=[(1, 0)]).ravel(), y)
    for method in ("col2im", "conv"):
        got_dx, got_dw = refws.conv_vjp(xa, wa, dya, stride=3, padding=[(1, 0)], method=method)
        np.testing.assert_array_equal(got_dx.ravel(), dx)
        np.testing.assert_array_equal(got_dw.ravel(), dw)
    np.testing.assert_array_equal(refws.conv_transpose(dya, wa, stride=3, padding=1, output_padding=1).ravel(), ct)


# --- bias ---------------------------------------------------------------------------------------


def test_bias_vjp_sums_all_but_the_channel_axis():
    dy = np.arange(2 * 3 * 4 * 5, dtype=float).reshape(2, 3, 4, 5)
    expect_last = [sum(dy[n, i, j, c] for n in range(2) for i in range(3) for j in range(4)) for c in range(5)]
    expect_first = [sum(dy[n, c, i, j] for n in range(2) for i in range(4) for j in range(5)) for c in range(3)]
    expect_unbatched = [sum(dy[0, c, i, j] for i in range(4) for j in range(5)) for c in range(3)]
    np.testing.assert_array_equal(refws.bias_vjp(dy), expect_last)
    np.testing.assert_array_equal(refws.bias_vjp(dy, channel_first=True), expect_first)
    np.testing.assert_array_equal(refws.bias_vjp(dy[0], channel_first=True, unbatched=True), expect_unbatched)
    np.testing.assert_array_equal(refws.bias_vjp(np.zeros((2, 0, 3))), np.zeros(3))


@given(p=conv_problems(exact=True, max_dims=2))
def test_bias_vjp_is_the_adjoint_of_adding_a_bias(p):
    dy, _ = vjp_problem(p)
    b = random_like((p.w.shape[-1],), True, p.seed + 7)
    shape = [1] * dy.ndim
    shape[1 if p.channel_first and p.batched else 0 if p.channel_first else -1] = -1
    db = refws.bias_vjp(dy, channel_first=p.channel_first, unbatched=not p.batched)
    assert np.vdot(np.broadcast_to(b.reshape(shape), dy.shape), dy) == np.vdot(b, db)


# --- errors -----------------------------------------------------------------------------------


def test_errors():
    x, w = np.zeros((1, 5, 5, 2)), np.zeros((3, 3, 2, 4))
    with pytest.raises(ValueError, match=r"dy.shape=\(1, 5, 5, 3\): expected \(1, 5, 5, 4\)"):
        refws.conv_vjp(x, w, np.zeros((1, 5, 5, 3)))
    with pytest.raises(ValueError, match=r"dy.shape=\(1, 5, 5, 4\): expected \(1, 4, 5, 5\)"):
        refws.conv_vjp(np.zeros((1, 2, 5, 5)), w, np.zeros((1, 5, 5, 4)), channel_first=True)
    with pytest.raises(ValueError, match=r"dy.shape=\(1, 3, 3, 4\): expected \(1, 2, 2, 4\)"):
        refws.conv_vjp(x, w, np.zeros((1, 3, 3, 4)), stride=2, padding="VALID")
    with pytest.raises(ValueError, match=r"method='im2col': expected one of \('col2im', 'conv'\)"):
        refws.conv_vjp(x, w, np.zeros((1, 5, 5, 4)), method="im2col")
    with pytest.raises(TypeError, match="dy has dtype complex128"):
        refws.conv_vjp(x, w, np.zeros((1, 5, 5, 4), dtype=complex))
    with pytest.raises(ValueError, match=r"C_in = w.shape\[-2\] \* groups"):  # the conv's own checks
        refws.conv_vjp(x, w, np.zeros((1, 5, 5, 4)), groups=2)
    with pytest.raises(ValueError, match=r"tx.shape=\(1, 5, 5\): expected \(1, 5, 5, 2\)"):
        refws.conv_jvp(x, w, np.zeros((1, 5, 5)), w)
    with pytest.raises(ValueError, match=r"tw.shape=\(3, 3, 2\): expected \(3, 3, 2, 4\)"):
        refws.conv_jvp(x, w, x, np.zeros((3, 3, 2)))
    with pytest.raises(ValueError, match=r"dy.shape=\(3,\): expected an output-like array"):
        refws.bias_vjp(np.zeros(3))


# --- optional: jax's autodiff of lax.conv_general_dilated ---------------------------------------

_DIMS = {1: ("NWC", "WIO", "NWC"), 2: ("NHWC", "HWIO", "NHWC"), 3: ("NDHWC", "DHWIO", "NDHWC")}


@settings(max_examples=12)  # each new shape costs a jit compilation
@given(p=conv_problems(exact=False, channel_first=False, batched=True))
def test_vjp_against_jax(p):
    jax = pytest.importorskip("jax")
    from jax import lax

    g = p.geometry
    if 0 in g.out_spatial or 0 in p.x.shape:
        return
    dy, _ = vjp_problem(p)
    with jax.enable_x64(True):

        def f(x, w):
            return lax.conv_general_dilated(
                x,
                w,
                g.stride,
                list(g.pads),
                g.lhs_dilation,
                g.rhs_dilation,
                dimension_numbers=_DIMS[p.ndim],
                feature_group_count=p.groups,
            )

        _, pullback = jax.vjp(f, p.x, p.w)
        jdx, jdw = (np.asarray(a) for a in pullback(dy))
    dx, dw = refws.conv_vjp(p.x, p.w, dy, **p.kwargs)
    absolute = refws.conv_vjp(np.abs(p.x), np.abs(p.w), np.abs(dy), **p.kwargs)
    assert_bound(dx, jdx, absolute[0], n_terms(p), err_msg="dx vs jax")
    assert_bound(dw, jdw, absolute[1], n_terms(p), err_msg="dw vs jax")
