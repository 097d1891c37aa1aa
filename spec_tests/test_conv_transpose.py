"""Spec tests for ``refws.conv_transpose`` and ``refws.conv_transpose_vjp`` (issue 3).

Independent evidence: a scatter-add loop written here from PyTorch's definition of ConvTranspose
(every input element scatters ``x[i] * w[t]`` to output position ``i*s - p + t*d``); the adjoint
of ``refws.conv``; ``conv_vjp(method="col2im")``'s input gradient; PyTorch's output-size formula and
``output_size`` rule, hard-coded from its documentation / ``_ConvTransposeNd._output_padding``;
a ConvTranspose with ``group > 1`` and a bias written in ONNX's layout; central finite
differences; and, when torch is installed, ``torch.nn.functional.conv_transpose{1,2,3}d``.

Integer-valued data in [-4, 4] makes every float64 sum exact, so most comparisons are ``==``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import refws
from .naive import from_channels_last, to_channels_last

EPS = np.finfo(np.float64).eps


def torch_output_size(n, k, stride, padding, output_padding, dilation):
    """PyTorch's documented ConvTranspose output size (torch.nn.ConvTranspose2d docs):
    H_out = (H_in - 1) * stride - 2 * padding + dilation * (kernel_size - 1) + output_padding + 1."""
    return (n - 1) * stride - 2 * padding + dilation * (k - 1) + output_padding + 1


def scatter_add(x, w, stride, padding, output_padding, dilation, groups, bias=None):
    """ConvTranspose by definition, canonical layouts: x ``(N, *n, C_in)``, w ``(*k, C_out/G, C_in)``.

    ``y[b, i*s - p + t*d, g*Cog + j] += x[b, i, g*Cg + c] * w[t, j, g*Cg + c]`` for every input
    position ``i``, tap ``t``, group ``g``, ``c < Cg``, ``j < Cog``; positions outside the output
    are dropped; then ``y += bias``.
    """
    nd = x.ndim - 2
    kernel, cog, c_in = w.shape[:nd], w.shape[-2], w.shape[-1]
    cg = c_in // groups
    m = [torch_output_size(*a) for a in zip(x.shape[1:-1], kernel, stride, padding, output_padding, dilation)]
    y = np.zeros((x.shape[0], *m, cog * groups))
    for b in range(x.shape[0]):
        for i in np.ndindex(*x.shape[1:-1]):
            for t in np.ndindex(*kernel):
                o = tuple(ii * s - p + tt * d for ii, s, p, tt, d in zip(i, stride, padding, t, dilation))
                if not all(0 <= oo < mm for oo, mm in zip(o, m)):
                    continue
                for g in range(groups):
                    for c in range(cg):
                        for j in range(cog):
                            y[(b, *o, g * cog + j)] += x[(b, *i, g * cg + c)] * w[(*t, j, g * cg + c)]
    if bias is not None:
        y += bias
    return y


@dataclass(frozen=True, eq=False)
class TransposeProblem:
    x: np.ndarray  # in the problem's layout
    w: np.ndarray  # (*k, C_out // G, C_in)
    bias: np.ndarray | None
    kwargs: dict  # stride, padding, output_padding, dilation, groups, channel_first (contract forms)
    stride: tuple
    padding: tuple
    output_padding: tuple
    dilation: tuple
    groups: int
    channel_first: bool
    batched: bool
    seed: int

    @property
    def x_cl(self):
        return to_channels_last(self.x, self.channel_first, self.batched)

    def to_layout(self, a_cl):
        return from_channels_last(a_cl, self.channel_first, self.batched)

    def expected(self, x=None, w=None, bias=None):
        x = self.x_cl if x is None else to_channels_last(x, self.channel_first, self.batched)
        return self.to_layout(
            scatter_add(
                x,
                self.w if w is None else w,
                self.stride,
                self.padding,
                self.output_padding,
                self.dilation,
                self.groups,
                bias,
            )
        )

    def forward_conv_kwargs(self):
        """The forward convolution whose input gradient this transposed convolution is."""
        return dict(
            stride=self.stride,
            padding=[(p, p - op) for p, op in zip(self.padding, self.output_padding)],
            rhs_dilation=self.dilation,
            groups=self.groups,
            channel_first=self.channel_first,
        )


def _form(values):
    return st.sampled_from([values, list(values)] + ([values[0]] if len(set(values)) == 1 else []))


@st.composite
def transpose_problems(draw, dims=(1, 2, 3), exact=True):
    nd = draw(st.sampled_from(dims))
    n_max, k_max, s_max, d_max, p_max = {1: (5, 4, 3, 3, 3), 2: (4, 3, 3, 2, 2), 3: (3, 2, 2, 2, 1)}[nd]
    n = tuple(draw(st.integers(1, n_max)) for _ in range(nd))
    k = tuple(draw(st.integers(1, k_max)) for _ in range(nd))
    s = tuple(draw(st.integers(1, s_max)) for _ in range(nd))
    d = tuple(draw(st.integers(1, d_max)) for _ in range(nd))
    op = tuple(draw(st.integers(0, max(si, di) - 1)) for si, di in zip(s, d))
    # padding up to the largest that keeps the output size >= 0
    p = tuple(
        min(draw(st.integers(0, p_max)), torch_output_size(ni, ki, si, 0, oi, di) // 2)
        for ni, ki, si, oi, di in zip(n, k, s, op, d)
    )
    groups = draw(st.integers(1, 3))
    cg, cog = draw(st.integers(1, 2)), draw(st.integers(1, 2))
    batched, channel_first = draw(st.booleans()), draw(st.booleans())
    n_batch = draw(st.integers(1, 2)) if batched else 1
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    draw_array = (
        (lambda shape: rng.integers(-4, 5, size=shape).astype(np.float64))
        if exact
        else (lambda shape: rng.standard_normal(shape))
    )
    x_cl, w = draw_array((n_batch, *n, cg * groups)), draw_array((*k, cog, cg * groups))
    bias = draw_array((cog * groups,)) if draw(st.booleans()) else None
    kwargs = dict(
        stride=draw(_form(s)),
        padding=draw(_form(p)),
        output_padding=draw(_form(op)),
        dilation=draw(_form(d)),
        groups=groups,
        channel_first=channel_first,
    )
    return TransposeProblem(
        from_channels_last(x_cl, channel_first, batched),
        w,
        bias,
        kwargs,
        s,
        p,
        op,
        d,
        groups,
        channel_first,
        batched,
        seed,
    )


def random_like(shape, seed, exact=True):
    rng = np.random.default_rng(seed)
    return rng.integers(-4, 5, size=shape).astype(np.float64) if exact else rng.standard_normal(shape)


# --- the definition, the adjoint of conv, conv_vjp's dx -----------------------------------------


@given(p=transpose_problems())
def test_matches_scatter_add(p):
    got = refws.conv_transpose(p.x, p.w, **p.kwargs, bias=p.bias)
    np.testing.assert_array_equal(got, p.expected(bias=p.bias))


@given(p=transpose_problems())
def test_output_shape_is_pytorchs_formula(p):
    y = to_channels_last(refws.conv_transpose(p.x, p.w, **p.kwargs), p.channel_first, p.batched)
    expected = [
        torch_output_size(*a)
        for a in zip(p.x_cl.shape[1:-1], p.w.shape[:-2], p.stride, p.padding, p.output_padding, p.dilation)
    ]
    assert y.shape == (p.x_cl.shape[0], *expected, p.w.shape[-2] * p.groups)


@given(p=transpose_problems())
def test_is_the_adjoint_of_conv(p):
    """<conv_transpose(x, w), u> == <x, conv(u, w)> for the forward conv with pads (p, p - op)."""
    y = refws.conv_transpose(p.x, p.w, **p.kwargs)
    u = random_like(y.shape, p.seed + 1)
    assert np.vdot(y, u) == np.vdot(p.x, refws.conv(u, p.w, **p.forward_conv_kwargs()))


@given(p=transpose_problems())
def test_is_the_input_gradient_of_conv(p):
    """conv_transpose(c) == dx of conv_vjp(method="col2im") for the cotangent c (the forward conv's
    input has the transposed conv's output shape).

    Only the ``col2im`` derivation is compared: conv_transpose *is* the code path of
    ``conv_vjp(method="conv")``'s dx, so comparing with it could not fail (that dx is checked
    against the definition in test_grads.py, and conv_transpose against scatter_add above)."""
    y = refws.conv_transpose(p.x, p.w, **p.kwargs)
    dx, _ = refws.conv_vjp(np.zeros(y.shape), p.w, p.x, **p.forward_conv_kwargs(), method="col2im")
    np.testing.assert_array_equal(y, dx)


# --- conv_transpose_vjp ---------------------------------------------------------------------


@given(p=transpose_problems())
def test_vjp_adjoint_identities_and_methods(p):
    """<y, dy> == <x, dx> == <w, dw> for both derivations of dw (``method`` only picks how dw is
    derived; dx is the same code either way, so it is compared with the definition below)."""
    y = refws.conv_transpose(p.x, p.w, **p.kwargs)
    dy = random_like(y.shape, p.seed + 2)
    dx, dw = refws.conv_transpose_vjp(p.x, p.w, dy, **p.kwargs)
    _, dw2 = refws.conv_transpose_vjp(p.x, p.w, dy, **p.kwargs, method="conv")
    assert dx.shape == p.x.shape and dw.shape == p.w.shape
    assert np.vdot(y, dy) == np.vdot(p.x, dx) == np.vdot(p.w, dw)
    np.testing.assert_array_equal(dw, dw2)


@given(p=transpose_problems())
def test_vjp_matches_the_definition(p):
    """Each entry of dx and dw is the derivative of <scatter_add(x, w), dy>: since the loss is
    bilinear, d/dx[e] = <scatter_add(e, w), dy> for the unit array e (exact for integer data)."""
    y_cl = scatter_add(p.x_cl, p.w, p.stride, p.padding, p.output_padding, p.dilation, p.groups)
    dy_cl = random_like(y_cl.shape, p.seed + 3)
    dx, dw = refws.conv_transpose_vjp(p.x, p.w, p.to_layout(dy_cl), **p.kwargs)
    args = (p.stride, p.padding, p.output_padding, p.dilation, p.groups)
    for target, grad, other in ((p.x_cl, to_channels_last(dx, p.channel_first, p.batched), "x"), (p.w, dw, "w")):
        for idx in np.ndindex(*target.shape):
            e = np.zeros(target.shape)
            e[idx] = 1.0
            val = scatter_add(e, p.w, *args) if other == "x" else scatter_add(p.x_cl, e, *args)
            assert grad[idx] == np.vdot(val, dy_cl), (other, idx)


@given(p=transpose_problems(exact=False))
def test_vjp_central_differences(p):
    """conv_transpose is bilinear: the central difference with h = 1/2 is exact up to rounding
    (see test_grads.py); tolerance 4 gamma_K B / h with B the loss on absolute values."""
    h = 0.5
    y = refws.conv_transpose(p.x, p.w, **p.kwargs)
    dy = random_like(y.shape, p.seed + 4, exact=False)
    dx, dw = refws.conv_transpose_vjp(p.x, p.w, dy, **p.kwargs)
    rng = np.random.default_rng(p.seed + 5)
    vx, vw = rng.standard_normal(p.x.shape), rng.standard_normal(p.w.shape)
    k = p.x.size + p.w.size + y.size
    gamma_k = k * EPS / 2 / (1 - k * EPS / 2)

    def loss(x, w):
        return np.vdot(refws.conv_transpose(x, w, **p.kwargs), dy)

    for tx, tw, derivative in ((vx, 0 * vw, np.vdot(dx, vx)), (0 * vx, vw, np.vdot(dw, vw))):
        cd = (loss(p.x + h * tx, p.w + h * tw) - loss(p.x - h * tx, p.w - h * tw)) / (2 * h)
        bound = np.vdot(
            refws.conv_transpose(np.abs(p.x) + h * np.abs(tx), np.abs(p.w) + h * np.abs(tw), **p.kwargs), np.abs(dy)
        )
        assert abs(cd - derivative) <= 4 * gamma_k * bound / h + 1e-300


# --- output_padding and output_size, as PyTorch ---------------------------------------------


@pytest.mark.parametrize("n, k, s, p, d", [(3, 3, 2, 1, 1), (4, 2, 3, 0, 1), (2, 3, 1, 0, 3), (5, 1, 4, 2, 2)])
def test_output_size_resolution(n, k, s, p, d):
    """torch's _output_padding: valid sizes are min_size .. min_size + stride - 1, with
    min_size = (n - 1) s - 2 p + d (k - 1) + 1; output_size may carry the non-spatial sizes."""
    x, w = np.ones((2, n, n, 3)), np.ones((k, k, 4, 3))
    min_size = (n - 1) * s - 2 * p + d * (k - 1) + 1
    kw = dict(stride=s, padding=p, dilation=d)
    for size in range(min_size, min_size + s):
        for out in ([size, size], (2, 4, size, size)):
            assert refws.conv_transpose(x, w, **kw, output_size=out).shape == (2, size, size, 4)
        op = size - min_size  # the output_padding it resolves to, as torch's formula says
        np.testing.assert_array_equal(
            refws.conv_transpose(x, w, **kw, output_size=[size, min_size]),
            refws.conv_transpose(x, w, **kw, output_padding=[op, 0]),
        )
    unbatched = refws.conv_transpose(
        np.ones((3, n, n)), w, **kw, output_size=(4, min_size, min_size), channel_first=True
    )
    assert unbatched.shape == (4, min_size, min_size)  # unbatched: only the channel size precedes
    for bad in (min_size - 1, min_size + s):
        with pytest.raises(
            ValueError,
            match=rf"output_size=\[{bad}, {min_size}\] is unreachable: valid sizes "
            rf"range from \[{min_size}, {min_size}\] to "
            rf"\[{min_size + s - 1}, {min_size + s - 1}\]",
        ):
            refws.conv_transpose(x, w, **kw, output_size=[bad, min_size])


def test_output_size_wins_over_output_padding_as_in_torch():
    """torch resolves output_size to its own output_padding and ignores the one given."""
    x, w = np.ones((1, 3, 2)), np.ones((3, 2, 2))  # min size (3 - 1) * 3 + (3 - 1) + 1 = 9
    assert refws.conv_transpose(x, w, stride=3, output_padding=2, output_size=[10]).shape == (1, 10, 2)


def test_output_padding_may_exceed_stride_when_dilation_is_larger():
    """output_padding < max(stride, dilation): with stride 1 and dilation 3, output_padding 2 is
    legal and only lengthens the output (the extra rows receive no input element)."""
    x, w = np.arange(1.0, 4.0).reshape(1, 3, 1), np.array([1.0, 1.0]).reshape(2, 1, 1)
    y = refws.conv_transpose(x, w, dilation=3, output_padding=2)
    assert y.shape == (1, torch_output_size(3, 2, 1, 0, 2, 3), 1) == (1, 8, 1)
    # y[i + 3t] += x[i]: positions 0,1,2 get x; 3,4,5 get x again; 6, 7 are the output padding
    np.testing.assert_array_equal(y.ravel(), [1, 2, 3, 1, 2, 3, 0, 0])


def test_zero_size_output():
    """An output size of 0 is legal (as for refws.conv; PyTorch raises instead): an empty array,
    and zero gradients from the VJP."""
    x, w = np.ones((2, 1, 3)), np.ones((2, 4, 3))
    y = refws.conv_transpose(x, w, padding=1)  # (1 - 1) * 1 - 2 + 1 + 0 + 1 = 0
    assert y.shape == (2, 0, 4)
    dx, dw = refws.conv_transpose_vjp(x, w, y, padding=1)
    assert dx.shape == x.shape and dw.shape == w.shape and not dx.any() and not dw.any()


# --- groups and bias: the ONNX ConvTranspose case ---------------------------------------------


def onnx_conv_transpose(X, W, B, strides, pads, group):
    """ONNX ConvTranspose (NCHW, W of shape (C_in, C_out / group, kH, kW), pads [b0, b1, e0, e1]),
    dilations 1, written in ONNX's own layout: input channel g*Cg + c of group g feeds output
    channels g*Cog + j through W[g*Cg + c, j], and every output channel gets its bias."""
    n, c_in, h, w_ = X.shape
    cog, kh, kw = W.shape[1:]
    cg = c_in // group
    out_h = strides[0] * (h - 1) + kh - pads[0] - pads[2]
    out_w = strides[1] * (w_ - 1) + kw - pads[1] - pads[3]
    Y = np.zeros((n, cog * group, out_h, out_w))
    for b, g, c, j, i0, i1, t0, t1 in np.ndindex(n, group, cg, cog, h, w_, kh, kw):
        o0, o1 = i0 * strides[0] - pads[0] + t0, i1 * strides[1] - pads[1] + t1
        if 0 <= o0 < out_h and 0 <= o1 < out_w:
            Y[b, g * cog + j, o0, o1] += X[b, g * cg + c, i0, i1] * W[g * cg + c, j, t0, t1]
    return Y + B.reshape(1, -1, 1, 1)


def test_onnx_group_and_bias_by_hand():
    """1x1 kernel, 4 input channels, group 2, one output channel per group:
    y0 = x0 w0 + x1 w1 + b0 = 10 + 40 + 100, y1 = x2 w2 + x3 w3 + b1 = 90 + 160 + 200."""
    X = np.array([1.0, 2.0, 3.0, 4.0]).reshape(1, 4, 1, 1)
    W = np.array([10.0, 20.0, 30.0, 40.0]).reshape(4, 1, 1, 1)  # ONNX/PyTorch (C_in, C_out/G, kH, kW)
    y = refws.conv_transpose(X, np.moveaxis(W, (0, 1), (-1, -2)), groups=2, bias=[100.0, 200.0], channel_first=True)
    np.testing.assert_array_equal(y.ravel(), [150.0, 450.0])


def test_onnx_group_and_bias_case():
    """The case ONNX's reference evaluator gets wrong (group > 1 with bias, NOTES.md), against the
    ONNX-layout loop above; also the golden catalog's 2d_groups2_bias geometry."""
    rng = np.random.default_rng(7)
    X = rng.integers(-4, 5, size=(2, 4, 4, 4)).astype(float)  # N, C_in, H, W
    W = rng.integers(-4, 5, size=(4, 3, 3, 3)).astype(float)  # C_in, C_out/G, kH, kW
    B = rng.integers(-4, 5, size=6).astype(float)
    expected = onnx_conv_transpose(X, W, B, strides=(2, 2), pads=(1, 1, 1, 1), group=2)
    w = np.moveaxis(W, (0, 1), (-1, -2))  # (kH, kW, C_out/G, C_in)
    assert w.shape == (3, 3, 3, 4)
    got = refws.conv_transpose(X, w, stride=2, padding=1, groups=2, bias=B, channel_first=True)
    np.testing.assert_array_equal(got, expected)


# --- errors -----------------------------------------------------------------------------------


def test_errors():
    x, w = np.ones((1, 4, 4, 2)), np.ones((3, 3, 3, 2))
    with pytest.raises(
        ValueError,
        match=r"output_padding=2: each entry must be smaller than "
        r"max\(stride, dilation\) = \(2, 2\)",
    ):
        refws.conv_transpose(x, w, stride=2, output_padding=2)
    with pytest.raises(
        ValueError,
        match=r"output_padding=\(0, 1\): each entry must be smaller than "
        r"max\(stride, dilation\) = \(1, 1\)",
    ):
        refws.conv_transpose(x, w, output_padding=(0, 1))
    with pytest.raises(
        ValueError,
        match=r"output_size=\[9, 9\] is unreachable: valid sizes range from "
        r"\[7, 7\] to \[8, 8\]",
    ):
        refws.conv_transpose(x, w, stride=2, padding=1, output_size=[9, 9])
    with pytest.raises(ValueError, match=r"output_size=\[1, 2, 3\]: expected 2 or 4 ints"):
        refws.conv_transpose(x, w, output_size=[1, 2, 3])
    with pytest.raises(ValueError, match=r"padding=-1: every entry must be an integer >= 0"):
        refws.conv_transpose(x, w, padding=-1)
    with pytest.raises(ValueError, match=r"padding=\(5, 5\): too large"):
        refws.conv_transpose(x, w, padding=5)
    with pytest.raises(
        ValueError,
        match=r"x has C_in=2 channels but w.shape=\(3, 3, 3, 4\) expects "
        r"C_in = w.shape\[-1\] = 4",
    ):
        refws.conv_transpose(x, np.ones((3, 3, 3, 4)))
    with pytest.raises(ValueError, match=r"C_in = w.shape\[-1\] = 3, divisible by groups=2"):
        refws.conv_transpose(np.ones((1, 4, 4, 3)), np.ones((3, 3, 3, 3)), groups=2)
    with pytest.raises(ValueError, match=r"x.shape=\(4, 2\): expected rank 4 \(batched\) or 3"):
        refws.conv_transpose(np.ones((4, 2)), w)
    with pytest.raises(ValueError, match=r"bias.shape=\(2,\): expected \(3,\)"):
        refws.conv_transpose(x, w, bias=np.ones(2))
    with pytest.raises(
        ValueError,
        match=r"dy.shape=\(1, 4, 4, 3\): expected \(1, 6, 6, 3\), the shape of "
        r"the conv_transpose output",
    ):
        refws.conv_transpose_vjp(x, w, np.ones((1, 4, 4, 3)))
    with pytest.raises(ValueError, match=r"method='scatter': expected one of"):
        refws.conv_transpose_vjp(x, w, np.ones((1, 6, 6, 3)), method="scatter")


# --- optional: PyTorch ------------------------------------------------------------------------


def _torch():
    try:
        import torch
    except (ImportError, OSError) as exc:  # a broken install raises OSError on import
        pytest.skip(f"torch not usable: {exc}")
    return torch


@given(p=transpose_problems(exact=False))
def test_against_torch(p):
    torch = _torch()
    nd = p.w.ndim - 2
    sizes = [
        torch_output_size(*a)
        for a in zip(p.x_cl.shape[1:-1], p.w.shape[:-2], p.stride, p.padding, p.output_padding, p.dilation)
    ]
    if 0 in sizes:
        return  # torch refuses empty outputs; refws returns them (see test_zero_size_output)
    fn = getattr(torch.nn.functional, f"conv_transpose{nd}d")
    x_cf = from_channels_last(p.x_cl, True, True)  # (N, C_in, *n)
    weight = np.moveaxis(p.w, (-1, -2), (0, 1))  # back to (C_in, C_out/G, *k)
    bias = None if p.bias is None else torch.from_numpy(p.bias)
    ref = fn(
        torch.from_numpy(x_cf),
        torch.from_numpy(np.ascontiguousarray(weight)),
        bias,
        stride=p.stride,
        padding=p.padding,
        output_padding=p.output_padding,
        groups=p.groups,
        dilation=p.dilation,
    ).numpy()
    got = to_channels_last(refws.conv_transpose(p.x, p.w, **p.kwargs, bias=p.bias), p.channel_first, p.batched)
    np.testing.assert_allclose(got, np.moveaxis(ref, 1, -1), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("size", [[6, 7], [7, 8], [5, 7], [8, 7], [2, 4, 7, 8]])
def test_output_size_against_torch(size):
    torch = _torch()
    m = torch.nn.ConvTranspose2d(4, 2, 3, stride=2, padding=1, dtype=torch.float64)
    x = torch.arange(2 * 4 * 4 * 4, dtype=torch.float64).reshape(2, 4, 4, 4)
    w = np.moveaxis(m.weight.detach().numpy(), (0, 1), (-1, -2))
    try:
        ref = m(x, output_size=size).detach().numpy()
    except ValueError:
        with pytest.raises(ValueError, match="output_size"):
            refws.conv_transpose(x.numpy(), w, stride=2, padding=1, output_size=size, channel_first=True)
        return
    got = refws.conv_transpose(
        x.numpy(), w, stride=2, padding=1, output_size=size, channel_first=True, bias=m.bias.detach().numpy()
    )
    np.testing.assert_allclose(got, ref, rtol=1e-12, atol=1e-12)
