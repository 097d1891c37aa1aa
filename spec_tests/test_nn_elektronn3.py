"""elektronn3 layer mirrors (refws.nn.elektronn3) against independent evidence.

- forward: a literal transcription of elektronn3's formula (NOTES.md: ddof 1, N = numel of the
  whole weight) followed by ``numpy.pad`` (torch's reflect/replicate/circular are numpy's
  reflect/edge/wrap) and the loop ``naive_conv``, or a scatter-add loop for the transposed
  convolution written here; when PyTorch is installed, also ``torch.nn.functional`` in float64;
- vjp: central finite differences of ``layer(x)`` for the input and every parameter;
- FWS: the in-place update against the literal formula; PyTorch's argument errors;
- the committed golden layer fixtures replayed into the mirror (when golden/ is built): a
  consistency check of two refws code paths (see ``assert_mirror_reproduces_golden``); the golden
  values themselves are checked against definitions without refws in test_golden.py.
"""

from __future__ import annotations

import numpy as np
import pytest

from refws import nn
from spec_tests.naive import naive_conv, naive_torch_pad, naive_torch_pads
from spec_tests.test_nn_brainstate import (
    assert_mirror_reproduces_golden,
    assert_vjp_matches_fd,
    golden_layer_names,
    numeric_vjp,
    randomize,
)


def e3_ws(w, gain, eps=1e-4):
    """elektronn3 ``standardize_weight``: ``var, mean = torch.var_mean(w, dim=all but 0)`` (unbiased),
    ``fan_in = prod(w.shape)``, ``scale = rsqrt(max(var * fan_in, eps)) * gain``."""
    axes = tuple(range(1, w.ndim))
    mean = w.mean(axis=axes, keepdims=True)
    var = w.var(axis=axes, ddof=1, keepdims=True)
    scale = 1.0 / np.sqrt(np.maximum(var * w.size, eps)) * gain.reshape((-1,) + (1,) * (w.ndim - 1))
    return w * scale - mean * scale


def literal_wsconv(x, params, nd, stride=1, padding=0, dilation=1, groups=1, padding_mode="zeros", eps=1e-4):
    """WSConv*d from its definition: WS, pad the NC* input with numpy (PyTorch's padding rule and
    modes, naive.py), convolve with naive_conv."""
    unbatched = x.ndim == nd + 1
    xb = x[None] if unbatched else x
    w = e3_ws(params["weight"], params["gain"], eps)
    k = w.shape[2:]
    d = (dilation,) * nd if isinstance(dilation, int) else tuple(dilation)
    x_cl = np.moveaxis(naive_torch_pad(xb, naive_torch_pads(padding, k, d), padding_mode), 1, -1)
    w_hwio = np.moveaxis(w, (0, 1), (-1, -2))  # (O, I/g, *k) -> (*k, I/g, O)
    y = np.moveaxis(naive_conv(x_cl, w_hwio, stride, None, 1, d, groups), -1, 1)
    if "bias" in params:
        y = y + params["bias"].reshape((-1,) + (1,) * nd)
    return y[0] if unbatched else y


def naive_conv_transpose(x, w, stride, padding, output_padding, dilation, groups, out_spatial=None):
    """PyTorch ConvTranspose by scatter-add, torch layouts: x (N, C_in, *n), w (C_in, C_out/g, *k).

    ``y[b, g*Cog + j, i*s - p + t*d] += x[b, g*Cg + c, i] * w[g*Cg + c, j, t]``.
    """
    c_in, cog, k = w.shape[0], w.shape[1], w.shape[2:]
    cg = c_in // groups
    if out_spatial is None:
        out_spatial = [
            (n - 1) * s - 2 * p + d * (kk - 1) + op + 1
            for n, kk, s, p, op, d in zip(x.shape[2:], k, stride, padding, output_padding, dilation)
        ]
    y = np.zeros((x.shape[0], cog * groups, *out_spatial))
    for b in range(x.shape[0]):
        for ci in range(c_in):
            g = ci // cg
            for i in np.ndindex(*x.shape[2:]):
                for t in np.ndindex(*k):
                    o = tuple(ii * s - p + tt * d for ii, s, p, tt, d in zip(i, stride, padding, t, dilation))
                    if all(0 <= oo < m for oo, m in zip(o, out_spatial)):
                        y[(b, slice(g * cog, (g + 1) * cog), *o)] += x[(b, ci, *i)] * w[(ci, slice(None), *t)]
    return y


def _x(shape, seed=3):
    return np.random.default_rng(seed).normal(size=shape)


def _layer(cls, *args, seed=1, **kwargs):
    layer = cls(*args, rng=0, **kwargs)
    randomize(layer, seed)
    return layer


# --- WSConv1d/2d/3d ----------------------------------------------------------------------------

CONV_CASES = [
    # (nd, kwargs, x_shape)
    (1, dict(in_channels=2, out_channels=3, kernel_size=3), (2, 2, 7)),
    (1, dict(in_channels=4, out_channels=2, kernel_size=2, stride=2, groups=2, bias=False), (2, 4, 7)),
    (2, dict(in_channels=2, out_channels=4, kernel_size=(3, 2), padding="same", dilation=(1, 2)), (2, 2, 5, 5)),
    (1, dict(in_channels=2, out_channels=2, kernel_size=4, padding="same"), (2, 2, 6)),  # odd total: (1, 2)
    (2, dict(in_channels=2, out_channels=2, kernel_size=3, padding=(1, 2), padding_mode="reflect"), (2, 6, 5)),
    (
        2,
        dict(in_channels=4, out_channels=2, kernel_size=2, padding=1, groups=2, padding_mode="replicate"),
        (1, 4, 4, 3),
    ),
    (2, dict(in_channels=2, out_channels=3, kernel_size=3, padding=(2, 1), padding_mode="circular"), (2, 2, 4, 3)),
    (3, dict(in_channels=2, out_channels=2, kernel_size=2, padding="valid", stride=(1, 2, 1)), (1, 2, 3, 4, 3)),
    (3, dict(in_channels=2, out_channels=2, kernel_size=2, padding=1, padding_mode="circular"), (2, 3, 3, 2)),
]


def _literal_kwargs(kw):
    return {k: v for k, v in kw.items() if k in ("stride", "padding", "dilation", "groups", "padding_mode")}


@pytest.mark.parametrize("nd, kwargs, x_shape", CONV_CASES)
def test_wsconv_forward_matches_literal_composition(nd, kwargs, x_shape):
    layer = _layer(getattr(nn, f"WSConv{nd}d"), **kwargs)
    x = _x(x_shape)
    for eps in (1e-4, 0.7):  # eps is a forward argument
        want = literal_wsconv(x, dict(layer.params), nd, eps=eps, **_literal_kwargs(kwargs))
        np.testing.assert_allclose(layer(x, eps=eps), want, rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(layer.forward(x, eps), want, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("nd, kwargs, x_shape", CONV_CASES)
def test_wsconv_vjp_matches_finite_differences(nd, kwargs, x_shape):
    layer = _layer(getattr(nn, f"WSConv{nd}d"), **kwargs)
    assert_vjp_matches_fd(layer, _x(x_shape))


def test_wsconv_vjp_with_eps_on_the_clamp():
    layer = _layer(nn.WSConv1d, 2, 2, 3, padding=1, padding_mode="reflect")
    x = _x((2, 2, 5))
    assert_vjp_matches_fd(layer, x, call=lambda x: layer(x, eps=1e3), vjp=lambda x, dy: layer.vjp(x, dy, eps=1e3))


# --- WSConvTranspose2d/3d ----------------------------------------------------------------------

TRANSPOSE_CASES = [
    # (nd, kwargs, x_shape, output_size)
    (2, dict(in_channels=2, out_channels=3, kernel_size=3), (2, 2, 3, 2), None),
    (
        2,
        dict(in_channels=2, out_channels=2, kernel_size=(3, 2), stride=2, padding=1, output_padding=1),
        (2, 3, 2),
        None,
    ),
    (2, dict(in_channels=4, out_channels=2, kernel_size=2, groups=2, dilation=2, bias=False), (1, 4, 2, 3), None),
    (2, dict(in_channels=2, out_channels=2, kernel_size=3, stride=2, padding=1), (2, 2, 3, 3), [2, 2, 6, 5]),
    (3, dict(in_channels=2, out_channels=2, kernel_size=2, stride=(2, 1, 2)), (1, 2, 2, 2, 2), None),
    (3, dict(in_channels=2, out_channels=4, kernel_size=2, stride=2, groups=2), (2, 2, 2, 1), [5, 5, 3]),
    (2, dict(in_channels=2, out_channels=3, kernel_size=3, stride=2, padding=1), (2, 3, 3), [3, 6, 6]),
]


def _transpose_expected(layer, x, output_size):
    nd = layer.num_spatial_dims
    unbatched = x.ndim == nd + 1
    xb = x[None] if unbatched else x
    out = None if output_size is None else list(output_size)[-nd:]
    y = naive_conv_transpose(
        xb,
        e3_ws(layer.params["weight"], layer.params["gain"]),
        layer.stride,
        layer.padding,
        layer.output_padding,
        layer.dilation,
        layer.groups,
        out,
    )
    if "bias" in layer.params:
        y = y + layer.params["bias"].reshape((-1,) + (1,) * nd)
    return y[0] if unbatched else y


@pytest.mark.parametrize("nd, kwargs, x_shape, output_size", TRANSPOSE_CASES)
def test_wsconv_transpose_forward_matches_scatter_loop(nd, kwargs, x_shape, output_size):
    layer = _layer(getattr(nn, f"WSConvTranspose{nd}d"), **kwargs)
    x = _x(x_shape)
    want = _transpose_expected(layer, x, output_size)
    got = layer(x, output_size=output_size)
    assert got.shape == want.shape
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("nd, kwargs, x_shape, output_size", TRANSPOSE_CASES)
def test_wsconv_transpose_vjp_matches_finite_differences(nd, kwargs, x_shape, output_size):
    layer = _layer(getattr(nn, f"WSConvTranspose{nd}d"), **kwargs)
    assert_vjp_matches_fd(
        layer, _x(x_shape), call=lambda x: layer(x, output_size), vjp=lambda x, dy: layer.vjp(x, dy, output_size)
    )


def test_parameter_shapes_are_pytorchs():
    conv = nn.WSConv3d(4, 6, (3, 2, 1), groups=2, rng=0)
    assert conv.params.shapes == {"weight": (6, 2, 3, 2, 1), "bias": (6,), "gain": (6,)}
    up = nn.WSConvTranspose2d(4, 6, 3, groups=2, bias=False, rng=0)
    assert up.params.shapes == {"weight": (4, 3, 3, 3), "gain": (4,)}  # gain follows weight.shape[0]
    assert np.all(conv.params["gain"] == 1.0)
    # PyTorch's default bias: U(-1/sqrt(fan_in), 1/sqrt(fan_in)), fan_in = (C_in/groups) * prod(k) = 12
    assert np.all(np.abs(conv.params["bias"]) <= 1 / np.sqrt(12))


def test_seed_example_upsample_restores_size():
    """elektronn3's docstring example: WSConv2d(16, 16, 3, stride=2, padding=1) then
    WSConvTranspose2d(..., output_size=input.size()) gives back 12 x 12."""
    x = np.random.default_rng(0).normal(size=(1, 16, 12, 12))
    h = nn.WSConv2d(16, 16, 3, stride=2, padding=1, rng=0)(x)
    assert h.shape == (1, 16, 6, 6)
    up = nn.WSConvTranspose2d(16, 16, 3, stride=2, padding=1, rng=0)
    assert up(h, output_size=x.shape).shape == (1, 16, 12, 12)
    assert up(h).shape == (1, 16, 11, 11)


# --- PyTorch, when installed -------------------------------------------------------------------


def _torch_f():
    torch = pytest.importorskip("torch")
    return torch, torch.nn.functional


@pytest.mark.filterwarnings("ignore:Using padding='same' with even kernel lengths")  # torch's copy notice
@pytest.mark.parametrize("nd, kwargs, x_shape", CONV_CASES[2:7])
def test_wsconv_matches_torch_functional(nd, kwargs, x_shape):
    torch, F = _torch_f()
    layer = _layer(getattr(nn, f"WSConv{nd}d"), **kwargs)
    x = _x(x_shape)
    t = {k: torch.tensor(v) for k, v in layer.params.items()}
    w = torch.tensor(e3_ws(layer.params["weight"], layer.params["gain"]))
    mode = kwargs.get("padding_mode", "zeros")
    padding = kwargs.get("padding", 0)
    xt = torch.tensor(x)
    if mode != "zeros":
        pads = [p for q in reversed((padding,) * nd if isinstance(padding, int) else padding) for p in (q, q)]
        xt, padding = F.pad(xt, pads, mode=mode), 0
    conv = getattr(F, f"conv{nd}d")
    want = conv(
        xt, w, t.get("bias"), kwargs.get("stride", 1), padding, kwargs.get("dilation", 1), kwargs.get("groups", 1)
    ).numpy()
    np.testing.assert_allclose(layer(x), want, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("nd, kwargs, x_shape, output_size", TRANSPOSE_CASES)
def test_wsconv_transpose_matches_torch_module(nd, kwargs, x_shape, output_size):
    torch, _ = _torch_f()
    layer = _layer(getattr(nn, f"WSConvTranspose{nd}d"), **kwargs)
    ref = getattr(torch.nn, f"ConvTranspose{nd}d")(**kwargs).double()
    with torch.no_grad():
        ref.weight.copy_(torch.tensor(e3_ws(layer.params["weight"], layer.params["gain"])))
        if ref.bias is not None:
            ref.bias.copy_(torch.tensor(layer.params["bias"]))
    x = _x(x_shape)
    want = ref(torch.tensor(x), output_size=output_size).detach().numpy()
    np.testing.assert_allclose(layer(x, output_size=output_size), want, rtol=1e-10, atol=1e-12)


# --- FWS ---------------------------------------------------------------------------------------


def test_fws_standardizes_the_wrapped_weight_in_place_before_each_call():
    inner = _layer(nn.WSConv1d, 2, 3, 3, padding=1)
    fws = nn.FWS(inner, eps=1e-3)
    fws.params["gain"] = np.array([0.5, 1.0, 2.0])
    x = _x((2, 2, 6))
    w0 = inner.params["weight"].copy()
    y = fws(x)
    w1 = e3_ws(w0, np.array([0.5, 1.0, 2.0]), 1e-3)
    np.testing.assert_allclose(inner.params["weight"], w1, rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(y, literal_wsconv(x, dict(inner.params), 1, padding=1), rtol=1e-12, atol=1e-12)
    fws(x)  # a second call standardizes again
    np.testing.assert_allclose(inner.params["weight"], e3_ws(w1, np.array([0.5, 1.0, 2.0]), 1e-3), atol=1e-14)


def test_fws_eval_mode_and_const_eval():
    x = _x((1, 2, 5))
    frozen = nn.FWS(_layer(nn.WSConv1d, 2, 2, 3), const_eval=True)
    w0 = frozen.layer.params["weight"].copy()
    assert frozen.eval() is frozen and not frozen.training and not frozen.layer.training
    frozen(x)
    np.testing.assert_array_equal(frozen.layer.params["weight"], w0)  # skipped in eval
    frozen.train()
    frozen(x)
    assert not np.array_equal(frozen.layer.params["weight"], w0)
    live = nn.FWS(_layer(nn.WSConv1d, 2, 2, 3)).eval()  # const_eval=False: still applied
    w0 = live.layer.params["weight"].copy()
    live(x)
    np.testing.assert_allclose(live.layer.params["weight"], e3_ws(w0, np.ones(2)), atol=1e-14)


def test_fws_params_and_vjp():
    inner = _layer(nn.WSConvTranspose2d, 2, 2, 2, stride=2)
    fws = nn.FWS(inner, learnable_gain=True)
    assert fws.params.shapes == {"gain": (2,), "layer.weight": (2, 2, 2, 2), "layer.bias": (2,), "layer.gain": (2,)}
    assert "gain" not in nn.FWS(inner, learnable_gain=False).params
    fws.params["layer.bias"] = np.array([1.0, -1.0])  # routed to the wrapped layer
    np.testing.assert_array_equal(inner.params["bias"], [1.0, -1.0])
    x = _x((1, 2, 2, 3))
    dy = np.random.default_rng(4).normal(size=(1, 2, 4, 6))
    w0 = inner.params["weight"].copy()
    dx, grads = fws.vjp(x, dy)
    # the step happened, and the gradients are the wrapped layer's at the standardized weight
    np.testing.assert_allclose(inner.params["weight"], e3_ws(w0, np.ones(2)), atol=1e-14)
    ndx, ngrads = numeric_vjp(inner, inner, x, dy)
    np.testing.assert_allclose(dx, ndx, atol=1e-7 * max(1, np.abs(ndx).max()))
    for name, g in ngrads.items():
        np.testing.assert_allclose(grads[f"layer.{name}"], g, atol=1e-7 * max(1, np.abs(g).max()), err_msg=name)
    np.testing.assert_array_equal(grads["gain"], np.zeros(2))  # updated under no_grad in elektronn3


# --- bad input ---------------------------------------------------------------------------------


def test_pytorch_argument_errors():
    with pytest.raises(ValueError, match=r"padding='same' is not supported for strided convolutions"):
        nn.WSConv2d(2, 2, 3, stride=2, padding="same")
    with pytest.raises(ValueError, match=r"Invalid padding string 'SAME', should be one of"):
        nn.WSConv2d(2, 2, 3, padding="SAME")
    with pytest.raises(ValueError, match=r"padding_mode must be one of .* but got padding_mode='wrap'"):
        nn.WSConv1d(2, 2, 3, padding_mode="wrap")
    with pytest.raises(ValueError, match=r'Only "zeros" padding mode is supported for WSConvTranspose2d'):
        nn.WSConvTranspose2d(2, 2, 3, padding_mode="reflect")
    with pytest.raises(ValueError, match=r"in_channels must be divisible by groups: in_channels=3, groups=2"):
        nn.WSConv1d(3, 4, 3, groups=2)
    with pytest.raises(ValueError, match=r"output_padding=\(2, 2\): each entry must be smaller than"):
        nn.WSConvTranspose2d(2, 2, 3, stride=2, output_padding=2)(np.ones((1, 2, 3, 3)))


def test_input_and_cotangent_errors():
    conv = nn.WSConv2d(3, 4, 3, rng=0)
    with pytest.raises(
        ValueError,
        match=r"Expected 3D \(unbatched\) or 4D \(batched\) input to WSConv2d, "
        r"but got input of size: \[3, 5\]",
    ):
        conv(np.ones((3, 5)))
    with pytest.raises(
        ValueError,
        match=r"Given groups=1, weight of size \[4, 3, 3, 3\], expected "
        r"input\[1, 2, 5, 5\] to have 3 channels, but got 2 channels instead",
    ):
        conv(np.ones((1, 2, 5, 5)))
    with pytest.raises(ValueError, match=r"dy.shape=\(1, 4, 5, 5\): expected \(1, 4, 3, 3\)"):
        conv.vjp(np.ones((1, 3, 5, 5)), np.ones((1, 4, 5, 5)))
    up = nn.WSConvTranspose2d(2, 2, 3, stride=2, rng=0)
    with pytest.raises(ValueError, match=r"output_size=.*unreachable"):
        up(np.ones((1, 2, 3, 3)), output_size=[9, 9])
    with pytest.raises(ValueError, match=r"params\['weight'\] has shape \(2, 2, 3, 3\): expected \(4, 3, 3, 3\)"):
        conv.params["weight"] = np.ones((2, 2, 3, 3))
    with pytest.raises(TypeError, match=r"expected one of the elektronn3 conv mirrors"):
        nn.FWS(nn.Conv1d((5, 2), 2, 3, rng=0))


@pytest.mark.parametrize("name", golden_layer_names("elektronn3"))
def test_mirror_reproduces_golden_case(name):
    assert_mirror_reproduces_golden(name)
