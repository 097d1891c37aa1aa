"""Spec tests for ``refws.conv_transpose_lax`` and ``refws.conv_transpose_lax_vjp`` (issue 13).

Independent evidence:

- a definition loop written here (no refws code): every input element ``x[i]`` and tap ``t``
  meet at output ``i*s + lo - t*d`` (the kernel as given), or ``i*s + lo - (k-1-t)*d`` with the
  in/out channels exchanged (``transpose_kernel``); one generator of (x, w, y) index triples gives
  the forward and, read backwards, both cotangents;
- the padding rule for 'SAME'/'VALID' transcribed from jax.lax.conv_transpose's source, and the
  output sizes ``n*s`` and ``n*s + max(k_d - s, 0)`` that brainstate's and Keras' documentation state;
- the relation to PyTorch's convention (``refws.conv_transpose``, tested on its own in
  test_conv_transpose.py) and the worked example of docs/backward.md, section 8, by hand;
- adjoint identities, and, when jax is importable, ``jax.lax.conv_transpose`` / ``jax.vjp`` in float64.

Integer data in [-4, 4] makes every float64 sum exact, so most comparisons are ``==``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import refws
from .naive import from_channels_last, to_channels_last
from .test_conv_transpose import random_like


# --- the definition (test side) -----------------------------------------------------------------


def lax_transpose_pads_by_jax_rule(k_d, s, mode):
    """jax/_src/lax/convolution.py ``_conv_transpose_padding``, transcribed."""
    if mode == "SAME":
        pad_len = k_d + s - 2
        pad_a = k_d - 1 if s > k_d - 1 else int(np.ceil(pad_len / 2))
    else:
        pad_len = k_d + s - 2 + max(k_d - s, 0)
        pad_a = k_d - 1
    return pad_a, pad_len - pad_a


def _triples(x_shape, w_shape, strides, pads, dilation, transpose_kernel, groups):
    """Yield ``(x_index, w_index, y_index)`` for every product of the definition, and the y shape first."""
    nd = len(w_shape) - 2
    n_batch, spatial = x_shape[0], x_shape[1:-1]
    kernel = w_shape[:nd]
    c_in = x_shape[-1]
    cg = c_in // groups
    c_out = w_shape[-2] * groups if transpose_kernel else w_shape[-1]
    cog = c_out // groups
    k_d = [(k - 1) * d + 1 for k, d in zip(kernel, dilation)]
    m = [max(0, (n - 1) * s + 1 + lo + hi - kd + 1) for n, s, (lo, hi), kd in zip(spatial, strides, pads, k_d)]
    yield (n_batch, *m, c_out)
    for b in range(n_batch):
        for i in np.ndindex(*spatial):
            for t in np.ndindex(*kernel):
                taps = [(k - 1 - tt) if transpose_kernel else tt for k, tt in zip(kernel, t)]
                o = tuple(ii * s + lo - tt * d for ii, s, (lo, _), tt, d in zip(i, strides, pads, taps, dilation))
                if not all(0 <= oo < mm for oo, mm in zip(o, m)):
                    continue
                for g in range(groups):
                    for c in range(cg):
                        for j in range(cog):
                            w_index = (*t, j, g * cg + c) if transpose_kernel else (*t, c, g * cog + j)
                            yield (b, *i, g * cg + c), w_index, (b, *o, g * cog + j)


def definition(x, w, strides, pads, dilation, transpose_kernel, groups, dy=None):
    """Forward ``y`` (and, given ``dy``, ``dx`` and ``dw``) of the definition; canonical layouts."""
    it = _triples(x.shape, w.shape, strides, pads, dilation, transpose_kernel, groups)
    y = np.zeros(next(it))
    dx, dw = np.zeros(x.shape), np.zeros(w.shape)
    for xi, wi, yi in it:
        y[yi] += x[xi] * w[wi]
        if dy is not None:
            dx[xi] += dy[yi] * w[wi]
            dw[wi] += x[xi] * dy[yi]
    return y if dy is None else (y, dx, dw)


# --- problems -------------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class LaxProblem:
    x: np.ndarray  # in the problem's layout
    w: np.ndarray
    strides: object  # as passed: an int or a sequence
    s: tuple  # the strides as a tuple
    padding: object  # as passed: 'SAME', 'VALID' or pairs
    pads: tuple  # explicit, worked out on the test side
    dilation: tuple
    transpose_kernel: bool
    groups: int
    channel_first: bool
    batched: bool
    seed: int

    @property
    def x_cl(self):
        return to_channels_last(self.x, self.channel_first, self.batched)

    @property
    def kwargs(self):
        return dict(transpose_kernel=self.transpose_kernel, groups=self.groups, channel_first=self.channel_first)

    def call(self, fn):
        return fn(self.x, self.w, self.strides, self.padding, self.dilation, **self.kwargs)

    def to_layout(self, a_cl):
        return from_channels_last(a_cl, self.channel_first, self.batched)

    def definition(self, dy_cl=None):
        return definition(
            self.x_cl, self.w, self.s, self.pads, self.dilation, self.transpose_kernel, self.groups, dy_cl
        )


@st.composite
def lax_problems(draw, dims=(1, 2, 3), exact=True, max_groups=3):
    nd = draw(st.sampled_from(dims))
    n_max, k_max, s_max, d_max = {1: (5, 4, 3, 3), 2: (3, 3, 3, 2), 3: (2, 2, 2, 2)}[nd]
    n = tuple(draw(st.integers(1, n_max)) for _ in range(nd))
    k = tuple(draw(st.integers(1, k_max)) for _ in range(nd))
    s = tuple(draw(st.integers(1, s_max)) for _ in range(nd))
    d = tuple(draw(st.integers(1, d_max)) for _ in range(nd))
    k_d = [(kk - 1) * dd + 1 for kk, dd in zip(k, d)]
    kind = draw(st.sampled_from(["SAME", "VALID", "pairs"]))
    if kind == "pairs":
        pads = tuple((draw(st.integers(-1, kd)), draw(st.integers(-1, kd))) for kd in k_d)
        padding = [list(p) for p in pads]
    else:
        padding = kind
        pads = tuple(lax_transpose_pads_by_jax_rule(kd, ss, kind) for kd, ss in zip(k_d, s))
    groups = draw(st.integers(1, max_groups))
    cg, cog = draw(st.integers(1, 2)), draw(st.integers(1, 2))
    transpose_kernel = draw(st.booleans())
    batched, channel_first = draw(st.booleans()), draw(st.booleans())
    n_batch = draw(st.integers(1, 2)) if batched else 1
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    make = (
        (lambda shape: rng.integers(-4, 5, size=shape).astype(np.float64))
        if exact
        else (lambda shape: rng.standard_normal(shape))
    )
    x_cl = make((n_batch, *n, cg * groups))
    w = make((*k, cog, cg * groups) if transpose_kernel else (*k, cg, cog * groups))
    strides = draw(st.sampled_from([s, list(s)] + ([s[0]] if len(set(s)) == 1 else [])))
    return LaxProblem(
        from_channels_last(x_cl, channel_first, batched),
        w,
        strides,
        s,
        padding,
        pads,
        d,
        transpose_kernel,
        groups,
        channel_first,
        batched,
        seed,
    )


# --- forward ----------------------------------------------------------------------------------


@given(p=lax_problems())
def test_matches_the_definition(p):
    np.testing.assert_array_equal(p.call(refws.conv_transpose_lax), p.to_layout(p.definition()))


@given(n=st.integers(1, 6), k=st.integers(1, 5), s=st.integers(1, 4), d=st.integers(1, 3))
def test_same_and_valid_output_sizes(n, k, s, d):
    """brainstate / Keras: 'SAME' gives n*s, 'VALID' gives n*s + max(k_d - s, 0), k_d the dilated extent."""
    x, w = np.ones((1, n, 1)), np.ones((k, 1, 1))
    k_d = (k - 1) * d + 1
    assert refws.conv_transpose_lax(x, w, s, "SAME", d).shape == (1, n * s, 1)
    assert refws.conv_transpose_lax(x, w, s, "VALID", d).shape == (1, n * s + max(k_d - s, 0), 1)


@given(p=lax_problems())
def test_string_padding_is_the_jax_rule_made_explicit(p):
    if isinstance(p.padding, str):
        np.testing.assert_array_equal(
            p.call(refws.conv_transpose_lax),
            refws.conv_transpose_lax(p.x, p.w, p.strides, [list(q) for q in p.pads], p.dilation, **p.kwargs),
        )


@given(p=lax_problems())
def test_transpose_kernel_is_pytorchs_convention_with_derived_pads(p):
    """transpose_kernel=True with pads (k_d-1-p, k_d-1-p+op) is refws.conv_transpose(p, op): the
    scatter y[i*s - p + t*d] += x[i] w[t] of PyTorch, for every (p, op) PyTorch accepts."""
    strides = p.s
    k_d = [(k - 1) * d + 1 for k, d in zip(p.w.shape[:-2], p.dilation)]
    pt = [kd - 1 - lo for kd, (lo, _) in zip(k_d, p.pads)]
    op = [hi - lo for lo, hi in p.pads]
    sizes = [(n - 1) * s + 1 + lo + hi - kd + 1 for n, s, (lo, hi), kd in zip(p.x_cl.shape[1:-1], strides, p.pads, k_d)]
    if (
        not p.transpose_kernel
        or min(pt) < 0
        or min(sizes) < 0
        or any(not 0 <= o < max(s, d) for o, s, d in zip(op, strides, p.dilation))
    ):
        return  # not expressible with PyTorch's symmetric padding
    want = refws.conv_transpose(p.x, p.w, p.strides, pt, op, p.dilation, p.groups, channel_first=p.channel_first)
    np.testing.assert_array_equal(p.call(refws.conv_transpose_lax), want)


def test_worked_example_of_the_docs():
    """docs/backward.md, section 8: x = (1, 2), w = (1, 10, 100), stride 2."""
    x, w = np.array([1.0, 2.0]).reshape(1, 2, 1), np.array([1.0, 10.0, 100.0]).reshape(3, 1, 1)

    def lax(padding, tk):
        return refws.conv_transpose_lax(x, w, 2, padding, transpose_kernel=tk).ravel().tolist()

    assert lax("VALID", False) == [100, 10, 201, 20, 2]  # the kernel as given, no flip
    assert lax("VALID", True) == [1, 10, 102, 20, 200]  # = PyTorch padding 0
    assert refws.conv_transpose(x, w, 2, 0).ravel().tolist() == [1, 10, 102, 20, 200]
    assert lax("SAME", True) == [1, 10, 102, 20]  # pads (2, 1): the tail is cut
    assert refws.conv_transpose(x, w, 2, 1, 1).ravel().tolist() == [10, 102, 20, 200]  # PyTorch: the head
    assert lax([(1, 2)], True) == [10, 102, 20, 200]  # explicit pads reach PyTorch's split


# --- VJP --------------------------------------------------------------------------------------


@given(p=lax_problems())
def test_vjp_matches_the_definition(p):
    y = p.call(refws.conv_transpose_lax)
    dy = random_like(y.shape, p.seed + 1)
    _, dx_want, dw_want = p.definition(to_channels_last(dy, p.channel_first, p.batched))
    for method in ("col2im", "conv"):
        dx, dw = refws.conv_transpose_lax_vjp(p.x, p.w, dy, p.strides, p.padding, p.dilation, **p.kwargs, method=method)
        np.testing.assert_array_equal(dx, p.to_layout(dx_want))
        np.testing.assert_array_equal(dw, dw_want)


@given(p=lax_problems())
def test_vjp_adjoint_identities(p):
    y = p.call(refws.conv_transpose_lax)
    dy = random_like(y.shape, p.seed + 2)
    dx, dw = refws.conv_transpose_lax_vjp(p.x, p.w, dy, p.strides, p.padding, p.dilation, **p.kwargs)
    assert dx.shape == p.x.shape and dw.shape == p.w.shape
    assert np.vdot(y, dy) == np.vdot(p.x, dx) == np.vdot(p.w, dw)


@given(p=lax_problems(exact=False))
def test_vjp_central_differences(p):
    """Bilinear: the central difference with h = 1/2 equals the derivative up to rounding."""
    h, eps = 0.5, np.finfo(np.float64).eps / 2
    y = p.call(refws.conv_transpose_lax)
    dy = random_like(y.shape, p.seed + 3, exact=False)
    dx, dw = refws.conv_transpose_lax_vjp(p.x, p.w, dy, p.strides, p.padding, p.dilation, **p.kwargs)
    rng = np.random.default_rng(p.seed + 4)
    vx, vw = rng.standard_normal(p.x.shape), rng.standard_normal(p.w.shape)
    k = p.x.size + p.w.size + y.size
    gamma = k * eps / (1 - k * eps)

    def loss(x, w):
        return np.vdot(refws.conv_transpose_lax(x, w, p.strides, p.padding, p.dilation, **p.kwargs), dy)

    for tx, tw, derivative in ((vx, 0 * vw, np.vdot(dx, vx)), (0 * vx, vw, np.vdot(dw, vw))):
        cd = (loss(p.x + h * tx, p.w + h * tw) - loss(p.x - h * tx, p.w - h * tw)) / (2 * h)
        bound = np.vdot(
            refws.conv_transpose_lax(
                np.abs(p.x) + h * np.abs(tx), np.abs(p.w) + h * np.abs(tw), p.strides, p.padding, p.dilation, **p.kwargs
            ),
            np.abs(dy),
        )
        assert abs(cd - derivative) <= 4 * gamma * bound / h + 1e-300


# --- errors -----------------------------------------------------------------------------------


def test_errors():
    x, w = np.ones((1, 4, 4, 2)), np.ones((3, 3, 2, 5))
    with pytest.raises(ValueError, match=r"padding='same': expected 'SAME' or 'VALID' \(exactly"):
        refws.conv_transpose_lax(x, w, 2, "same")
    with pytest.raises(ValueError, match=r"padding='SAME_LOWER': expected 'SAME' or 'VALID'"):
        refws.conv_transpose_lax(x, w, 1, "SAME_LOWER")
    with pytest.raises(ValueError, match=r"strides=\(1, 2, 3\): expected an int or a sequence of length 1 or 2"):
        refws.conv_transpose_lax(x, w, (1, 2, 3), "SAME")
    with pytest.raises(ValueError, match=r"x has C_in=2 channels but w.shape=\(3, 3, 3, 5\) with groups=1"):
        refws.conv_transpose_lax(x, np.ones((3, 3, 3, 5)), 1, "SAME")
    with pytest.raises(
        ValueError,
        match=r"x has C_in=2 channels but w.shape=\(3, 3, 2, 5\) expects "
        r"C_in = w.shape\[-1\] = 5",
    ):
        refws.conv_transpose_lax(x, w, 1, "SAME", transpose_kernel=True)
    with pytest.raises(
        ValueError,
        match=r"dy.shape=\(1, 4, 4, 5\): expected \(1, 8, 8, 5\), the shape of "
        r"the conv_transpose_lax output",
    ):
        refws.conv_transpose_lax_vjp(x, w, np.ones((1, 4, 4, 5)), 2, "SAME")
    with pytest.raises(ValueError, match=r"method='scatter'"):
        refws.conv_transpose_lax_vjp(x, w, np.ones((1, 8, 8, 5)), 2, "SAME", method="scatter")


# --- optional: jax ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def jax_x64():
    jax = pytest.importorskip("jax")
    with jax.enable_x64(True):
        yield jax


@settings(max_examples=40)  # each new shape costs a jit compilation
@given(p=lax_problems(exact=False))
def test_against_jax(jax_x64, p):
    """jax.lax.conv_transpose (groups 1) or the conv_general_dilated it stands for (groups > 1,
    feature_group_count, no transpose_kernel), and jax.vjp for both cotangents."""
    jax = jax_x64
    if p.groups > 1 and p.transpose_kernel:
        return  # lax has no grouped transpose; covered by the definition
    nd = p.w.ndim - 2
    if any((n - 1) * s + 1 + lo + hi < 0 for n, s, (lo, hi) in zip(p.x_cl.shape[1:-1], p.s, p.pads)):
        return  # lax refuses a negative padded size
    padding = p.padding if isinstance(p.padding, str) else [tuple(q) for q in p.padding]

    def f(x, w):
        if p.groups == 1:
            return jax.lax.conv_transpose(x, w, p.s, padding, p.dilation, transpose_kernel=p.transpose_kernel)
        spec = {1: ("NHC", "HIO", "NHC"), 2: ("NHWC", "HWIO", "NHWC"), 3: ("NHWDC", "HWDIO", "NHWDC")}[nd]
        return jax.lax.conv_general_dilated(
            x, w, (1,) * nd, list(p.pads), p.s, p.dilation, spec, feature_group_count=p.groups
        )

    y_jax, pullback = jax.vjp(f, p.x_cl, p.w)
    y = to_channels_last(p.call(refws.conv_transpose_lax), p.channel_first, p.batched)
    scale = max(1.0, float(np.abs(y_jax).max(initial=0)))
    np.testing.assert_allclose(y, np.asarray(y_jax), rtol=0, atol=1e-12 * scale)
    dy = random_like(y.shape, p.seed + 5, exact=False)
    jdx, jdw = pullback(dy)
    dx, dw = refws.conv_transpose_lax_vjp(p.x, p.w, p.to_layout(dy), p.strides, p.padding, p.dilation, **p.kwargs)
    np.testing.assert_allclose(
        to_channels_last(dx, p.channel_first, p.batched),
        np.asarray(jdx),
        rtol=0,
        atol=1e-12 * max(1.0, float(np.abs(jdx).max(initial=0))),
    )
    np.testing.assert_allclose(dw, np.asarray(jdw), rtol=0, atol=1e-12 * max(1.0, float(np.abs(jdw).max(initial=0))))
