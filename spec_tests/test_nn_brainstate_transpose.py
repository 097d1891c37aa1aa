"""brainstate 0.6.0 ``ConvTranspose1d/2d/3d`` mirrors (refws.nn.ConvTranspose*) against independent evidence.

- forward: a literal transcription of brainstate's ``_ConvTranspose._conv_op`` (mask, spatial flip,
  ``conv_general_dilated`` with window stride 1, ``lhs_dilation = stride``, the transposed dimension
  numbers, padding from ``_conv_transpose_padding``) composed with the definition loop
  ``naive_conv`` (no refws code), and, for groups 1, the scatter definition of lax's
  ``conv_transpose`` with ``transpose_kernel=True`` (test_conv_transpose_lax.py);
- vjp: central finite differences for the input and every parameter;
- shapes: the kernel layout and the output sizes brainstate documents ('SAME': n*s, 'VALID':
  n*s + max(k - s, 0) with the dilated k), the docstring examples, bad input;
- brainstate 0.6.0 itself (Python >= 3.12) when it is importable: forward and
  ``brainstate.transform.vjp`` in float64;
- the golden ``brainstate/ConvTranspose*`` cases, when golden/ is built.
"""

from __future__ import annotations

import numpy as np
import pytest

from refws import init, nn
from spec_tests.naive import from_channels_last, naive_conv, naive_explicit_pads, to_channels_last
from spec_tests.test_conv_transpose_lax import definition as lax_transpose_definition
from spec_tests.test_conv_transpose_lax import lax_transpose_pads_by_jax_rule
from spec_tests.test_nn_brainstate import (
    assert_mirror_reproduces_golden,
    assert_vjp_matches_fd,
    golden_layer_names,
    randomize,
)


# --- literal transcription of brainstate 0.6.0 (_conv.py, _ConvTranspose) --------------------


def _as_tuple(v, n):
    return tuple(v) * (n if len(v) == 1 else 1) if isinstance(v, (tuple, list)) else (v,) * n


def transcribed_pads(padding, in_spatial, kernel, stride, dilation):
    """``_resolve_padding``: strings by ``_conv_transpose_padding`` on the dilated kernel; explicit as given."""
    if isinstance(padding, str):
        return tuple(
            lax_transpose_pads_by_jax_rule((k - 1) * d + 1, s, padding) for k, s, d in zip(kernel, stride, dilation)
        )
    return naive_explicit_pads(padding, in_spatial, kernel)


def brainstate_conv_transpose(kw, params, mask, x):
    """The layer's output, written from brainstate's code with ``naive_conv``."""
    nd = len(kw["in_size"]) - 1
    cf, groups = kw.get("channel_first", False), kw.get("groups", 1)
    kernel = _as_tuple(kw["kernel_size"], nd)
    stride, dilation = _as_tuple(kw.get("stride", 1), nd), _as_tuple(kw.get("rhs_dilation", 1), nd)
    batched = x.ndim == nd + 2
    w = params["weight"] if mask is None else params["weight"] * mask
    w = np.flip(w, axis=tuple(range(nd)))  # jnp.flip over the spatial axes
    w_hwio = np.swapaxes(w, -1, -2)  # rhs_spec (out=-2, in=-1) read as HWIO
    x_cl = to_channels_last(x, cf, batched)
    pads = transcribed_pads(kw.get("padding", "SAME"), x_cl.shape[1:-1], kernel, stride, dilation)
    y = naive_conv(x_cl, w_hwio, 1, pads, lhs_dilation=stride, rhs_dilation=dilation, groups=groups)
    y = from_channels_last(y, cf, True)
    if "bias" in params:
        y = y + params["bias"]
    return y if batched else y[0]


CASES = [
    # (in_size, kwargs, batched, mask)
    ((5, 2), dict(out_channels=3, kernel_size=3), True, False),
    ((4, 2), dict(out_channels=2, kernel_size=4, stride=2, padding="VALID"), True, True),
    ((4, 3), dict(out_channels=6, kernel_size=2, stride=3, groups=3), False, False),
    ((4, 2), dict(out_channels=2, kernel_size=3, stride=2, padding=(2, 0), rhs_dilation=2), True, False),
    ((2, 4), dict(out_channels=4, kernel_size=3, stride=2, groups=2, channel_first=True), True, True),
    ((3, 3, 2), dict(out_channels=3, kernel_size=(3, 2), stride=(2, 1)), True, True),
    ((3, 2, 4), dict(out_channels=2, kernel_size=2, stride=3, padding="VALID", groups=2), True, False),
    ((3, 3, 2), dict(out_channels=2, kernel_size=3, stride=2, padding=[(1, 2), (-1, 1)]), False, False),
    (
        (2, 3, 3),
        dict(out_channels=2, kernel_size=3, stride=2, padding=1, rhs_dilation=(2, 1), channel_first=True),
        False,
        True,
    ),
    ((2, 3, 2), dict(out_channels=4, kernel_size=2, stride=(1, 2), padding=(1, 0), groups=2), True, False),
    ((2, 2, 2, 2), dict(out_channels=2, kernel_size=2, stride=2), True, True),
    (
        (2, 2, 3, 2),
        dict(out_channels=2, kernel_size=(2, 1, 2), stride=(1, 2, 3), padding="VALID", rhs_dilation=(1, 1, 2)),
        False,
        False,
    ),
    (
        (2, 2, 2, 2),
        dict(out_channels=2, kernel_size=2, stride=2, padding=[(0, 1)], channel_first=True, groups=2),
        True,
        True,
    ),
]


def _kernel_shape(in_size, kw):
    nd = len(in_size) - 1
    c_in = in_size[0] if kw.get("channel_first") else in_size[-1]
    return _as_tuple(kw["kernel_size"], nd) + (kw["out_channels"], c_in // kw.get("groups", 1))


def _build(in_size, kw, mask, with_bias):
    cls = getattr(nn, f"ConvTranspose{len(in_size) - 1}d")
    w_mask = (np.random.default_rng(7).uniform(size=_kernel_shape(in_size, kw)) > 0.3).astype(float) if mask else None
    layer = cls(in_size, **kw, b_init=init.ZeroInit() if with_bias else None, w_mask=w_mask, rng=0)
    randomize(layer)
    return layer, w_mask


def _input(in_size, batched, seed=3):
    return np.random.default_rng(seed).normal(size=((2,) if batched else ()) + tuple(in_size))


@pytest.mark.parametrize("in_size, kw, batched, mask", CASES)
@pytest.mark.parametrize("with_bias", [True, False])
def test_forward_matches_literal_transcription(in_size, kw, batched, mask, with_bias):
    layer, w_mask = _build(in_size, kw, mask, with_bias)
    x = _input(in_size, batched)
    want = brainstate_conv_transpose(dict(kw, in_size=in_size), dict(layer.params), w_mask, x)
    got = layer(x)
    assert got.shape == want.shape == ((2,) if batched else ()) + layer.out_size
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("in_size, kw, batched, mask", [c for c in CASES if c[1].get("groups", 1) == 1])
def test_groups_1_is_lax_conv_transpose_with_transpose_kernel(in_size, kw, batched, mask):
    """With one group the layer is lax.conv_transpose(x, weight, transpose_kernel=True): the
    scatter definition y[i*s + lo - (k-1-t)*d] += x[i] weight[t] (brainstate's (*k, C_out, C_in))."""
    layer, w_mask = _build(in_size, kw, mask, False)
    nd = len(in_size) - 1
    x = _input(in_size, batched)
    w = layer.params["weight"] * (1 if w_mask is None else w_mask)
    cf = kw.get("channel_first", False)
    x_cl = to_channels_last(x, cf, batched)
    kernel = _as_tuple(kw["kernel_size"], nd)
    stride, dilation = _as_tuple(kw.get("stride", 1), nd), _as_tuple(kw.get("rhs_dilation", 1), nd)
    pads = transcribed_pads(kw.get("padding", "SAME"), x_cl.shape[1:-1], kernel, stride, dilation)
    want = lax_transpose_definition(x_cl, w, stride, pads, dilation, True, 1)
    np.testing.assert_allclose(to_channels_last(layer(x), cf, batched), want, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("in_size, kw, batched, mask", CASES)
def test_vjp_matches_finite_differences(in_size, kw, batched, mask):
    layer, _ = _build(in_size, kw, mask, True)
    assert_vjp_matches_fd(layer, _input(in_size, batched))


# --- shapes, documentation, errors ------------------------------------------------------------


@pytest.mark.parametrize("nd", [1, 2, 3])
@pytest.mark.parametrize("channel_first", [False, True])
def test_parameter_shapes(nd, channel_first):
    spatial, c_in, c_out, k = (4, 3, 2)[:nd], 4, 6, 3
    in_size = (c_in, *spatial) if channel_first else (*spatial, c_in)
    layer = getattr(nn, f"ConvTranspose{nd}d")(
        in_size, c_out, k, groups=2, b_init=init.ZeroInit(), channel_first=channel_first, rng=0
    )
    bias = (1, c_out) + (1,) * nd if channel_first else (1,) * nd + (c_out,)
    assert layer.params.shapes == {"weight": (k,) * nd + (c_out, c_in // 2), "bias": bias}  # C_out before C_in
    assert not hasattr(layer, "lhs_dilation") and "gain" not in layer.params  # no WS variant in 0.6.0


@pytest.mark.parametrize("n, k, s, d", [(4, 3, 2, 1), (3, 4, 2, 1), (5, 2, 3, 1), (3, 3, 1, 2), (2, 2, 4, 3)])
def test_documented_output_sizes(n, k, s, d):
    """brainstate's Notes: 'SAME' gives n*s, 'VALID' n*s + max(k - s, 0), k the dilated kernel extent."""
    k_d = (k - 1) * d + 1
    same = nn.ConvTranspose1d((n, 2), 3, k, stride=s, rhs_dilation=d, rng=0)
    valid = nn.ConvTranspose1d((n, 2), 3, k, stride=s, padding="VALID", rhs_dilation=d, rng=0)
    assert same.out_size == (n * s, 3) and same(np.ones((n, 2))).shape == (n * s, 3)
    assert valid.out_size == (n * s + max(k_d - s, 0), 3)


def test_explicit_padding_grows_the_output():
    """The Notes' contrast with PyTorch: explicit pads are *added* to the stride-dilated input."""
    sizes = [nn.ConvTranspose1d((4, 1), 1, 3, stride=2, padding=p, rng=0).out_size[0] for p in (0, 1, 2)]
    assert sizes == [(4 - 1) * 2 + 1 + 2 * p - 3 + 1 for p in (0, 1, 2)] == [5, 7, 9]


def test_docstring_examples():
    up1 = nn.ConvTranspose1d(in_size=(28, 16), out_channels=8, kernel_size=4, stride=2, rng=0)
    assert up1(np.ones((2, 28, 16))).shape == (2, 56, 8) and up1(np.ones((28, 16))).shape == (56, 8)
    up1_cf = nn.ConvTranspose1d(in_size=(16, 28), out_channels=8, kernel_size=4, stride=2, channel_first=True, rng=0)
    assert up1_cf(np.ones((2, 16, 28))).shape == (2, 8, 56)
    up2 = nn.ConvTranspose2d(in_size=(32, 32, 64), out_channels=32, kernel_size=4, stride=2, rng=0)
    assert up2.out_size == (64, 64, 32)  # "approximately (8, 64, 64, 32)" for batch 8
    assert up2(np.ones((32, 32, 64))).shape == (64, 64, 32)
    up2_cf = nn.ConvTranspose2d(
        in_size=(64, 32, 32), out_channels=32, kernel_size=4, stride=2, channel_first=True, rng=0
    )
    assert up2_cf.out_size == (32, 64, 64)
    up3 = nn.ConvTranspose3d(in_size=(8, 16, 16, 64), out_channels=32, kernel_size=4, stride=2, rng=0)
    assert up3.out_size == (16, 32, 32, 32)  # "approximately (4, 16, 32, 32, 32)" for batch 4
    assert up3(np.zeros((0, 8, 16, 16, 64))).shape == (0, 16, 32, 32, 32)  # an empty batch: cheap


def test_errors():
    with pytest.raises(ValueError, match=r"padding='same': brainstate accepts only the strings 'SAME' and 'VALID'"):
        nn.ConvTranspose2d((4, 4, 2), 2, 3, padding="same")
    with pytest.raises(ValueError, match=r'"out_channels" should be divisible by groups'):
        nn.ConvTranspose1d((4, 2), 3, 3, groups=2)
    with pytest.raises(ValueError, match=r"stride=\(1, 2, 3\): expected an int or a sequence of length 1 or 2"):
        nn.ConvTranspose2d((4, 4, 2), 2, 3, stride=(1, 2, 3))
    layer = nn.ConvTranspose2d((4, 4, 2), 2, 3, rng=0)
    with pytest.raises(ValueError, match=r"The expected input shape is \(4, 4, 2\), while we got \(4, 4, 3\)."):
        layer(np.ones((1, 4, 4, 3)))
    with pytest.raises(ValueError, match=r"dy.shape=\(1, 3, 3, 2\): expected \(1, 4, 4, 2\)"):
        layer.vjp(np.ones((1, 4, 4, 2)), np.ones((1, 3, 3, 2)))
    with pytest.raises(ValueError, match=r"w_mask has shape \(3, 3, 2\): expected a shape that broadcasts"):
        nn.ConvTranspose2d((4, 4, 2), 2, 3, w_mask=np.ones((3, 3, 2)))


# --- brainstate 0.6.0 itself (Python >= 3.12) --------------------------------------------------


@pytest.fixture(scope="module")
def brainstate_x64():
    bs = pytest.importorskip("brainstate", reason="brainstate 0.6.0 needs Python >= 3.12")
    if bs.__version__ != "0.6.0":
        pytest.skip(f"brainstate {bs.__version__} installed; these tests pin 0.6.0")
    import jax

    with jax.enable_x64(True):
        yield bs, jax.numpy


def _bs_kwargs(kw):
    return {k: (list(v) if k == "padding" and isinstance(v, list) else v) for k, v in kw.items()}


@pytest.mark.parametrize("in_size, kw, batched, mask", CASES)
def test_against_brainstate(brainstate_x64, in_size, kw, batched, mask):
    bs, jnp = brainstate_x64
    layer, w_mask = _build(in_size, kw, mask, True)
    # float64 initial values (brainstate's initializers give float32, which lax refuses to mix)
    ref = getattr(bs.nn, f"ConvTranspose{len(in_size) - 1}d")(
        in_size,
        **_bs_kwargs(kw),
        w_init=jnp.asarray(layer.params["weight"]),
        b_init=jnp.asarray(layer.params["bias"]),
        w_mask=None if w_mask is None else jnp.asarray(w_mask),
    )
    assert tuple(ref.out_size) == layer.out_size
    x = _input(in_size, batched)
    y_ref, pullback = bs.transform.vjp(ref, jnp.asarray(x), grad_states=ref.weight)
    y = layer(x)
    assert y.shape == y_ref.shape
    np.testing.assert_allclose(y, np.asarray(y_ref), rtol=1e-12, atol=1e-12)
    dy = np.random.default_rng(5).normal(size=y.shape)
    state_cts, dx_ref = pullback(jnp.asarray(dy))
    dx, grads = layer.vjp(x, dy)
    np.testing.assert_allclose(dx, np.asarray(dx_ref), rtol=1e-12, atol=1e-12)
    assert set(state_cts) == set(grads)
    for name, g in grads.items():
        np.testing.assert_allclose(g, np.asarray(state_cts[name]), rtol=1e-12, atol=1e-12, err_msg=name)


# --- golden cases ------------------------------------------------------------------------------


@pytest.mark.parametrize("name", [n for n in golden_layer_names("brainstate") if "/ConvTranspose" in n])
def test_mirror_reproduces_golden_case(name):
    assert_mirror_reproduces_golden(name)
