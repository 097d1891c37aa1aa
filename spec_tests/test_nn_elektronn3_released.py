"""elektronn3 mirrors with ``behaviour="0.1.1"``: what elektronn3 0.1.1's code computes (issue 13).

Always (no torch needed), against definitions written from 0.1.1's source (``wsconv.py``):

- ``WSConv*d``: the literal WS formula with ``eps`` rounded to float32 (``torch.tensor(eps)``) and a
  zero-padded convolution whatever ``padding_mode`` says (``F.conv{N}d(input, weight, bias, stride,
  padding, ...)``), by ``naive_conv``; ``vjp`` by central finite differences;
- ``WSConvTranspose2d``: the scatter-add definition with the *raw* weight, ``output_size`` ignored;
- ``WSConvTranspose3d``: every call raises RuntimeError (``F.conv_transpose2d`` on 5-d operands);
- one weight element per output channel: NaN (0.1.1's 0/0 variance) where the default raises;
- ``FWS``: float32 ``eps`` in the in-place update, and the behaviour taken from the wrapped layer.

With torch and elektronn3 0.1.1 installed (the ``elektronn3`` extra; skipped cleanly otherwise):
the released mirrors equal elektronn3's outputs and autograd gradients on random layers covering
every ``padding_mode``, and the default mirrors equal the documented intent built from
elektronn3's own ``standardize_weight`` and PyTorch's modules.
"""

from __future__ import annotations

import numpy as np
import pytest

from refws import nn
from spec_tests.test_nn_brainstate import assert_vjp_matches_fd, randomize
from spec_tests.test_nn_elektronn3 import CONV_CASES, TRANSPOSE_CASES, _x, e3_ws, literal_wsconv, naive_conv_transpose

EPS32 = float(np.float32(1e-4))  # torch.tensor(1e-4).item(): 9.99999974738e-05


def _released(cls, *args, seed=1, **kwargs):
    layer = cls(*args, rng=0, behaviour="0.1.1", **kwargs)
    randomize(layer, seed)
    return layer


def _conv_kwargs(kw):
    return {k: v for k, v in kw.items() if k in ("stride", "padding", "dilation", "groups")}


# --- WSConv*d: padding_mode ignored, float32 eps -----------------------------------------------


@pytest.mark.parametrize("nd, kwargs, x_shape", CONV_CASES)
def test_wsconv_released_zero_pads_whatever_the_padding_mode(nd, kwargs, x_shape):
    layer = _released(getattr(nn, f"WSConv{nd}d"), **kwargs)
    x = _x(x_shape)
    want = literal_wsconv(x, dict(layer.params), nd, eps=EPS32, **_conv_kwargs(kwargs))  # zeros, always
    np.testing.assert_allclose(layer(x), want, rtol=1e-12, atol=1e-12)
    assert layer.padding_mode == kwargs.get("padding_mode", "zeros")  # kept, unused


@pytest.mark.parametrize("nd, kwargs, x_shape", CONV_CASES)
def test_wsconv_released_vjp_matches_finite_differences(nd, kwargs, x_shape):
    layer = _released(getattr(nn, f"WSConv{nd}d"), **kwargs)
    assert_vjp_matches_fd(layer, _x(x_shape))


def test_eps_is_rounded_to_float32_on_the_clamp():
    """Tiny weights put var * numel below eps: the scale is rsqrt(eps), and 0.1.1 uses float32(eps)."""
    released = _released(nn.WSConv1d, 2, 2, 3, padding=1)
    default = nn.WSConv1d(2, 2, 3, padding=1, rng=0)
    w = np.random.default_rng(0).normal(size=(2, 2, 3)) * 1e-5
    for layer in (released, default):
        layer.params = {"weight": w, "bias": np.zeros(2), "gain": np.ones(2)}
    x = _x((1, 2, 5))
    for eps in (1e-4, 0.3):
        np.testing.assert_allclose(
            released(x, eps=eps),
            literal_wsconv(x, dict(released.params), 1, padding=1, eps=float(np.float32(eps))),
            rtol=1e-13,
            atol=0,
        )
        np.testing.assert_allclose(
            released.standardize_weight(eps), e3_ws(w, np.ones(2), float(np.float32(eps))), rtol=1e-13, atol=0
        )
    ratio = released(x) / default(x)  # sqrt(1e-4 / float32(1e-4)) - 1 = 1.26e-9
    np.testing.assert_allclose(ratio, np.sqrt(1e-4 / EPS32), rtol=1e-12)
    assert abs(np.sqrt(1e-4 / EPS32) - 1) > 1e-9
    assert_vjp_matches_fd(released, x)  # only the centring carries gradient here


# --- WSConvTranspose2d: the raw weight; WSConvTranspose3d: fails ---------------------------------


@pytest.mark.parametrize("nd, kwargs, x_shape, output_size", [c for c in TRANSPOSE_CASES if c[0] == 2])
def test_wsconv_transpose2d_released_uses_the_raw_weight_and_ignores_output_size(nd, kwargs, x_shape, output_size):
    layer = _released(nn.WSConvTranspose2d, **kwargs)
    x = _x(x_shape)
    unbatched = len(x_shape) == 3
    xb = x[None] if unbatched else x
    s, p, op, d = (layer.stride, layer.padding, layer.output_padding, layer.dilation)
    want = naive_conv_transpose(xb, layer.params["weight"], s, p, op, d, layer.groups)  # no WS, no output_size
    if "bias" in layer.params:
        want = want + layer.params["bias"].reshape(-1, 1, 1)
    want = want[0] if unbatched else want
    got = layer(x, output_size=output_size)
    assert got.shape == want.shape
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)
    _, grads = layer.vjp(x, np.ones(got.shape), output_size=output_size)
    np.testing.assert_array_equal(grads["gain"], np.zeros_like(layer.params["gain"]))
    assert_vjp_matches_fd(
        layer, x, call=lambda v: layer(v, output_size), vjp=lambda v, dy: layer.vjp(v, dy, output_size)
    )


def test_wsconv_transpose3d_released_raises_what_torch_raises():
    layer = nn.WSConvTranspose3d(2, 2, 2, rng=0, behaviour="0.1.1")
    with pytest.raises(
        RuntimeError,
        match=r"Expected 3D \(unbatched\) or 4D \(batched\) input to conv_transpose2d, "
        r"but got input of size: \[1, 2, 3, 3, 3\]",
    ):
        layer(np.ones((1, 2, 3, 3, 3)))
    with pytest.raises(
        RuntimeError,
        match=r"Expected 5-dimensional input for 5-dimensional weight \[2, 2, 2, 2, 2\], "
        r"but got 4-dimensional input of size \[2, 3, 3, 3\] instead",
    ):
        layer(np.ones((2, 3, 3, 3)))
    with pytest.raises(RuntimeError, match=r"calls F.conv_transpose2d"):
        layer.vjp(np.ones((1, 2, 3, 3, 3)), np.ones((1, 2, 4, 4, 4)))
    np.testing.assert_allclose(layer.standardize_weight(), e3_ws(layer.params["weight"], layer.params["gain"], EPS32))


# --- one weight element per output channel ------------------------------------------------------


@pytest.mark.parametrize(
    "cls, args, x_shape", [("WSConv2d", (1, 3, 1), (2, 1, 3, 3)), ("WSConv1d", (2, 4, 1, 1, 0, 1, 2), (2, 2, 3))]
)
def test_single_element_weight_nan_as_released_valueerror_by_default(cls, args, x_shape):
    x = _x(x_shape)
    with pytest.raises(ValueError, match=r"leaves n=1 element\(s\) per output channel, but ddof=1"):
        getattr(nn, cls)(*args, rng=0)(x)
    layer = getattr(nn, cls)(*args, rng=0, behaviour="0.1.1")
    y = layer(x)
    assert np.isnan(y).all()
    dy = _x(y.shape, seed=4)
    dx, grads = layer.vjp(x, dy)
    assert np.isnan(dx).all() and np.isnan(grads["weight"]).all() and np.isnan(grads["gain"]).all()
    np.testing.assert_allclose(grads["bias"], dy.sum(axis=tuple(i for i in range(dy.ndim) if i != 1)))
    assert np.isnan(layer.standardize_weight()).all()


def test_single_element_transpose2d_as_released_is_finite():
    """0.1.1's WSConvTranspose2d never uses its (NaN) standardized weight."""
    layer = _released(nn.WSConvTranspose2d, 2, 1, 1)  # weight (2, 1, 1, 1): one element per channel
    x = _x((1, 2, 2, 3))
    np.testing.assert_allclose(
        layer(x),
        naive_conv_transpose(x, layer.params["weight"], (1, 1), (0, 0), (0, 0), (1, 1), 1)
        + layer.params["bias"].reshape(-1, 1, 1),
    )
    assert np.isnan(layer.standardize_weight()).all()


# --- FWS -----------------------------------------------------------------------------------------


def test_fws_released():
    inner = _released(nn.WSConv1d, 2, 3, 3, padding=1)
    fws = nn.FWS(inner)
    assert fws.behaviour == "0.1.1" and nn.FWS(inner, behaviour="intent").behaviour == "intent"
    w = np.random.default_rng(2).normal(size=(3, 2, 3)) * 1e-5  # on the clamp: eps matters
    inner.params["weight"] = w
    fws(_x((1, 2, 4)))
    np.testing.assert_allclose(inner.params["weight"], e3_ws(w, np.ones(3), EPS32), rtol=1e-13, atol=0)
    single = nn.FWS(nn.WSConv1d(1, 2, 1, rng=0, behaviour="0.1.1"))
    single(_x((1, 1, 4)))
    assert np.isnan(single.layer.params["weight"]).all()
    with pytest.raises(ValueError, match=r"needs n >= 2"):
        nn.FWS(nn.WSConv1d(1, 2, 1, rng=0))(_x((1, 1, 4)))


def test_behaviour_argument_errors():
    with pytest.raises(ValueError, match=r"behaviour='0.1.2': expected one of \('intent', '0.1.1'\)"):
        nn.WSConv2d(2, 2, 3, behaviour="0.1.2")
    with pytest.raises(ValueError, match=r"behaviour='released': expected one of"):
        nn.FWS(nn.WSConv2d(2, 2, 3, rng=0), behaviour="released")
    with pytest.raises(ValueError, match=r"num_spatial_dims=1: elektronn3 0.1.1 has no WSConvTranspose1d"):
        nn.WSConvTranspose(2, 2, 3, num_spatial_dims=1, behaviour="0.1.1")
    with pytest.raises(ValueError, match=r"num_spatial_dims=4: elektronn3 0.1.1 has no WSConv4d"):
        nn.WSConv(2, 2, 3, num_spatial_dims=4, behaviour="0.1.1")


# --- elektronn3 0.1.1 itself (the elektronn3 extra) ------------------------------------------------


@pytest.fixture(scope="module")
def e3():
    try:
        import torch
        from elektronn3.modules import wsconv
    except Exception as exc:  # absent, or a broken install (torch raises OSError)
        pytest.skip(f"torch and elektronn3 0.1.1 not importable: {exc}")
    from importlib.metadata import version

    if version("elektronn3") != "0.1.1":
        pytest.skip(f"elektronn3 {version('elektronn3')} installed; these tests pin 0.1.1")
    return torch, wsconv


def _torch_twin(torch, module, layer):
    """The elektronn3 module in float64 carrying the mirror's parameters."""
    module = module.double()
    with torch.no_grad():
        for name, value in layer.params.items():
            getattr(module, name).copy_(torch.from_numpy(value))
    return module


def _autograd(torch, module, x, dy, **call):
    """``(y, dx, grads)`` of PyTorch autograd for ``<dy, module(x)>``; a gradient that is None is zeros."""
    xt = torch.tensor(x, requires_grad=True)
    y = module(xt, **call)
    (y * torch.from_numpy(dy)).sum().backward()
    grads = {
        name: (p.grad.numpy() if p.grad is not None else np.zeros(tuple(p.shape)))
        for name, p in module.named_parameters()
    }
    return y.detach().numpy(), xt.grad.numpy(), grads


def _assert_same(got, want, what):
    np.testing.assert_allclose(
        got,
        want,
        rtol=0,
        atol=1e-12 * max(1.0, float(np.nanmax(np.abs(want), initial=0))),
        err_msg=what,
        equal_nan=True,
    )


def _compare(torch, module, layer, x, seed=5, **call):
    y = layer(x, **call)
    dy = np.random.default_rng(seed).normal(size=y.shape)
    y_t, dx_t, grads_t = _autograd(torch, module, x, dy, **call)
    _assert_same(y, y_t, "y")
    dx, grads = layer.vjp(x, dy, **call)
    _assert_same(dx, dx_t, "dx")
    assert set(grads) == set(grads_t)
    for name in grads:
        _assert_same(grads[name], grads_t[name], name)


E3_CONV_CASES = CONV_CASES + [
    (2, dict(in_channels=2, out_channels=2, kernel_size=3, padding=1, padding_mode="reflect", stride=2), (1, 2, 5, 4)),
    (1, dict(in_channels=3, out_channels=3, kernel_size=2, padding="same", padding_mode="replicate", groups=3), (3, 5)),
    (
        3,
        dict(
            in_channels=2, out_channels=4, kernel_size=2, padding=(1, 0, 1), padding_mode="zeros", dilation=2, groups=2
        ),
        (1, 2, 4, 3, 4),
    ),
    (2, dict(in_channels=2, out_channels=2, kernel_size=2, padding=1, padding_mode="circular", bias=False), (2, 3, 3)),
]


@pytest.mark.parametrize("nd, kwargs, x_shape", E3_CONV_CASES)
@pytest.mark.parametrize("eps", [1e-4, 2.0])
def test_wsconv_released_equals_elektronn3(e3, nd, kwargs, x_shape, eps):
    torch, wsconv = e3
    layer = _released(getattr(nn, f"WSConv{nd}d"), **kwargs)
    module = _torch_twin(torch, getattr(wsconv, f"WSConv{nd}d")(**kwargs), layer)
    _compare(torch, module, layer, _x(x_shape), eps=eps)


@pytest.mark.parametrize("nd, kwargs, x_shape, output_size", [c for c in TRANSPOSE_CASES if c[0] == 2])
def test_wsconv_transpose2d_released_equals_elektronn3(e3, nd, kwargs, x_shape, output_size):
    torch, wsconv = e3
    layer = _released(nn.WSConvTranspose2d, **kwargs)
    module = _torch_twin(torch, wsconv.WSConvTranspose2d(**kwargs), layer)
    _compare(torch, module, layer, _x(x_shape), output_size=output_size)


def test_wsconv_transpose3d_released_fails_as_elektronn3(e3):
    torch, wsconv = e3
    module = wsconv.WSConvTranspose3d(2, 2, 2).double()
    layer = nn.WSConvTranspose3d(2, 2, 2, rng=0, behaviour="0.1.1")
    for shape in [(1, 2, 3, 3, 3), (2, 3, 3, 3), (2, 3, 3)]:
        with pytest.raises(RuntimeError) as want:
            module(torch.zeros(shape, dtype=torch.float64))
        with pytest.raises(RuntimeError) as got:
            layer(np.zeros(shape))
        assert str(got.value).startswith(str(want.value))


@pytest.mark.parametrize(
    "cls, args, x_shape",
    [
        ("WSConv2d", (1, 3, 1), (2, 1, 3, 3)),
        ("WSConv1d", (2, 2, 1, 2, 0, 1, 2), (1, 2, 5)),
        ("WSConv3d", (1, 2, 1), (1, 1, 2, 2, 2)),
    ],
)
def test_single_element_weight_nan_equals_elektronn3(e3, cls, args, x_shape):
    torch, wsconv = e3
    layer = _released(getattr(nn, cls), *args)
    with pytest.warns(UserWarning):  # torch: "degrees of freedom is <= 0"
        module = _torch_twin(torch, getattr(wsconv, cls)(*args), layer)
        _compare(torch, module, layer, _x(x_shape))


def test_eps_on_the_clamp_equals_elektronn3(e3):
    torch, wsconv = e3
    layer = _released(nn.WSConv2d, 2, 3, 2, padding=1)
    layer.params["weight"] = layer.params["weight"] * 1e-5
    module = _torch_twin(torch, wsconv.WSConv2d(2, 3, 2, padding=1), layer)
    _compare(torch, module, layer, _x((2, 2, 3, 3)))
    y_default = nn.WSConv2d(2, 3, 2, padding=1, rng=0)
    y_default.params = dict(layer.params)
    assert not np.allclose(y_default(_x((2, 2, 3, 3))), layer(_x((2, 2, 3, 3))), rtol=1e-12, atol=0)


@pytest.mark.parametrize("inner", ["WSConv2d", "WSConvTranspose2d"])
def test_fws_released_equals_elektronn3(e3, inner):
    torch, wsconv = e3
    layer = _released(getattr(nn, inner), 2, 2, 3, padding=1)
    fws = nn.FWS(layer, eps=1e-3)
    fws.params["gain"] = np.array([0.5, 2.0])
    module = wsconv.FWS(_torch_twin(torch, getattr(wsconv, inner)(2, 2, 3, padding=1), layer), eps=1e-3).double()
    with torch.no_grad():
        module.gain.copy_(torch.tensor([0.5, 2.0]))
    x = _x((1, 2, 4, 4))
    y = fws(x)  # one in-place step each
    np.testing.assert_allclose(y, module(torch.from_numpy(x)).detach().numpy(), rtol=0, atol=1e-12)
    np.testing.assert_allclose(layer.params["weight"], module.layer.weight.detach().numpy(), rtol=0, atol=1e-14)
    dy = _x(y.shape, seed=6)
    dx, grads = fws.vjp(x, dy)  # a second step, then the gradients
    _, dx_t, grads_t = _autograd(torch, module, x, dy)
    _assert_same(dx, dx_t, "dx")
    for name in grads:
        _assert_same(grads[name], grads_t[name], name)


# --- the default mirrors are the documented intent -------------------------------------------------


@pytest.mark.parametrize("nd, kwargs, x_shape", E3_CONV_CASES)
def test_wsconv_default_is_the_intent(e3, nd, kwargs, x_shape):
    """Intent: elektronn3's own standardize_weight (off the clamp, so its float32 eps is immaterial)
    convolved by PyTorch's Conv module forward, which honours padding_mode."""
    torch, wsconv = e3
    layer = getattr(nn, f"WSConv{nd}d")(**kwargs, rng=0)
    randomize(layer)
    module = _torch_twin(torch, getattr(wsconv, f"WSConv{nd}d")(**kwargs), layer)
    x = torch.from_numpy(_x(x_shape))
    want = module._conv_forward(x, module.standardize_weight(1e-4), module.bias).detach().numpy()
    _assert_same(layer(_x(x_shape)), want, "y")


@pytest.mark.parametrize("nd, kwargs, x_shape, output_size", TRANSPOSE_CASES)
def test_wsconv_transpose_default_is_the_intent(e3, nd, kwargs, x_shape, output_size):
    """Intent: the standardized weight, the module's rank, and PyTorch's output_size rule."""
    torch, wsconv = e3
    layer = getattr(nn, f"WSConvTranspose{nd}d")(**kwargs, rng=0)
    randomize(layer)
    module = _torch_twin(torch, getattr(wsconv, f"WSConvTranspose{nd}d")(**kwargs), layer)
    x = torch.from_numpy(_x(x_shape))
    reference = getattr(torch.nn, f"ConvTranspose{nd}d")(**kwargs).double()
    with torch.no_grad():
        reference.weight.copy_(module.standardize_weight(1e-4))
        if reference.bias is not None:
            reference.bias.copy_(module.bias)
    want = reference(x, output_size=output_size).detach().numpy()
    _assert_same(layer(_x(x_shape), output_size=output_size), want, "y")
