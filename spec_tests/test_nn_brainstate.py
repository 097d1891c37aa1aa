"""brainstate layer mirrors (refws.nn.brainstate) against independent evidence.

- forward: a literal transcription of brainstate's code from ../shared/NOTES.md (NFNets WS, mask
  after WS, bias shapes) followed by the definition-level loop ``naive_conv`` (no refws code);
- vjp: central finite differences of ``layer(x)`` for the input and every parameter (float64);
- parameter and output shapes: the formulas of NOTES.md and of brainstate's documentation;
- the seed doc examples; bad input with the messages brainstate gives;
- the committed golden layer fixtures replayed into the mirror (when golden/ is built). The golden
  values are computed by refws.golden with refws's own convolution code, so this replay is a
  consistency check of two refws code paths, not independent evidence; the golden values
  themselves are checked against definitions without refws in test_golden.py.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from refws import golden, init, nn
from spec_tests.naive import from_channels_last, naive_conv, naive_explicit_pads, to_channels_last

# Central differences on smooth maps of O(1) values: truncation ~ h^2 |f'''| ~ 1e-12 and rounding
# ~ eps |f| / h ~ 1e-10, so 1e-7 (relative to the largest gradient entry) has ample margin.
FD_STEP, FD_TOL = 1e-5, 1e-7


# --- helpers shared with test_nn_elektronn3.py -----------------------------------------------


def _central_difference(f, a: np.ndarray) -> np.ndarray:
    """d f / d a by central differences, perturbing ``a`` in place (restored afterwards)."""
    g = np.zeros_like(a)
    for i in np.ndindex(a.shape):
        v = a[i]
        a[i] = v + FD_STEP
        up = f()
        a[i] = v - FD_STEP
        down = f()
        a[i] = v
        g[i] = (up - down) / (2 * FD_STEP)
    return g


def numeric_vjp(call, layer, x, dy):
    """``(dx, grads)`` of ``<dy, call(x)>`` by central differences; ``call`` evaluates the layer."""
    x = np.array(x, dtype=np.float64)
    loss = lambda: float(np.sum(dy * call(x)))  # noqa: E731
    dx = _central_difference(loss, x)
    grads = {}
    for name in list(layer.params):
        p = np.array(layer.params[name])

        def loss_p(p=p, name=name):
            layer.params[name] = p
            return loss()

        grads[name] = _central_difference(loss_p, p)
        layer.params[name] = p
    return dx, grads


def assert_vjp_matches_fd(layer, x, call=None, vjp=None, seed=0):
    """``layer.vjp`` (or ``vjp``) against central differences of ``layer(x)`` (or ``call``)."""
    call = call or layer
    vjp = vjp or layer.vjp
    dy = np.random.default_rng(seed).normal(size=np.shape(call(x)))
    dx, grads = vjp(x, dy)
    ndx, ngrads = numeric_vjp(call, layer, x, dy)
    assert set(grads) == set(layer.params)
    for name, got, want in [("x", dx, ndx)] + [(k, grads[k], ngrads[k]) for k in ngrads]:
        assert got.shape == want.shape, name
        scale = max(np.abs(want).max(), 1.0)
        np.testing.assert_allclose(got, want, rtol=0, atol=FD_TOL * scale, err_msg=name)


def golden_layer_names(library: str) -> list:
    """Names of the committed golden cases of ``library``'s suite (none while golden/ is not built)."""
    manifest = golden.default_root() / "manifest.json"
    if not manifest.exists():
        return []
    return sorted(n for n, e in json.loads(manifest.read_text())["cases"].items() if e["suite"] == library)


def assert_mirror_reproduces_golden(name: str):
    """Build the mirror of a golden layer case, replay its arrays, compare y and every cotangent.

    A consistency check between the mirror and the golden builder (both refws; the builder uses
    refws.conv / conv_vjp / conv_transpose_vjp and the mirrors' torch_pads and layouts), not an
    independent reference: test_golden.py checks the stored values against the layers' definitions.
    The stored values are correctly rounded exact results; ``y__absbound`` (``|core|(|x|, |W|)``)
    bounds the rounding of a float64 evaluation by ``K u`` times it, K <= a few hundred terms.
    """
    case = golden.load(name)
    p, kw, extra = case.params, dict(case.params["kwargs"]), {}
    if p["library"] == "brainstate":
        if "b_init" in kw:  # the catalog records whether a bias exists
            kw["b_init"] = init.ZeroInit() if kw["b_init"] else None
        if p["mask"]:
            kw["w_mask"] = case["w_mask"]
    elif p.get("output_size") is not None:
        extra["output_size"] = p["output_size"]
    layer = getattr(nn, p["cls"])(**kw, rng=0)
    layer.params = {k: case[k] for k in layer.params}
    y = layer(case["x"], **extra)
    assert np.all(np.abs(y - case["y"]) <= 1e-12 * (case["y__absbound"] + np.abs(case["y"])))
    dx, grads = layer.vjp(case["x"], case["dy"], **extra)
    for got, key in [(dx, "dx")] + [(grads[k], "d" + k) for k in grads]:
        want = case[key]
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-11 * max(np.abs(want).max(), 1.0), err_msg=key)


def randomize(layer, seed=1):
    """Random values in every parameter (the gain away from 1, so that its use is visible)."""
    rng = np.random.default_rng(seed)
    for name, shape in layer.params.shapes.items():
        layer.params[name] = rng.uniform(0.5, 1.5, shape) if name.endswith("gain") else rng.normal(size=shape)


# --- literal transcription of brainstate (NOTES.md) ------------------------------------------


def nfnets_ws(w, gain, eps):
    """brainstate ``weight_standardization``: per output channel (last axis), ddof 0,
    ``scale = rsqrt(max(var * fan_in, eps)) * gain``, ``w * scale - mean * scale``."""
    axes = tuple(range(w.ndim - 1))
    fan_in = np.prod([w.shape[a] for a in axes])
    mean = np.mean(w, axis=axes, keepdims=True)
    var = np.var(w, axis=axes, keepdims=True)
    scale = 1.0 / np.sqrt(np.maximum(var * fan_in, eps))
    if gain is not None:
        scale = scale * gain
    return w * scale - mean * scale


def brainstate_conv(layer_kwargs, params, mask, x, ws):
    """The layer's output written from NOTES.md with naive_conv, independent of refws."""
    kw = (
        dict(stride=1, padding="SAME", lhs_dilation=1, rhs_dilation=1, groups=1, channel_first=False, eps=1e-4)
        | layer_kwargs
    )
    nd = len(kw["in_size"]) - 1
    cf = kw["channel_first"]
    batched = x.ndim == nd + 2
    w = params["weight"]
    if ws:
        w = nfnets_ws(w, params.get("gain"), kw["eps"])
    if mask is not None:
        w = w * mask
    x_cl = to_channels_last(x, cf, batched)
    pads = naive_explicit_pads(
        kw["padding"], x_cl.shape[1:-1], w.shape[:-2], kw["stride"], kw["lhs_dilation"], kw["rhs_dilation"]
    )
    y = naive_conv(x_cl, w, kw["stride"], pads, kw["lhs_dilation"], kw["rhs_dilation"], kw["groups"])
    y = from_channels_last(y, cf, True)  # bias is added before the batch squeeze
    if "bias" in params:
        y = y + params["bias"]
    return y if batched else y[0]


CONV_CASES = [
    # (N, in_size, kwargs, batched, mask)
    (1, (7, 2), dict(out_channels=3, kernel_size=3), True, False),
    (1, (7, 4), dict(out_channels=4, kernel_size=2, stride=2, padding=(1, 2), groups=2), True, True),
    (2, (5, 4, 2), dict(out_channels=4, kernel_size=(3, 2), padding="VALID", rhs_dilation=(1, 2)), True, False),
    (2, (2, 5, 4), dict(out_channels=2, kernel_size=3, channel_first=True, groups=2), True, True),
    (2, (4, 4, 2), dict(out_channels=3, kernel_size=2, padding=[(1, 0), (-1, 2)], lhs_dilation=2), False, False),
    (2, (2, 4, 3), dict(out_channels=2, kernel_size=3, padding=1, channel_first=True), False, True),
    (2, (5, 5, 2), dict(out_channels=2, kernel_size=3, stride=2, padding=(2, 1)), True, False),
    (3, (3, 4, 3, 2), dict(out_channels=2, kernel_size=2, padding="SAME", stride=(1, 2, 1)), True, True),
]


def _build(cls_name, nd, in_size, kwargs, mask, with_bias, ws_kwargs):
    cls = getattr(nn, f"{cls_name}{nd}d")
    kshape = _kernel_shape(nd, in_size, kwargs)
    w_mask = (np.random.default_rng(7).uniform(size=kshape) > 0.3).astype(float) if mask else None
    b_init = init.ZeroInit() if with_bias else None
    layer = cls(in_size, **kwargs, **ws_kwargs, b_init=b_init, w_mask=w_mask, rng=0)
    randomize(layer)
    return layer, w_mask


def _kernel_shape(nd, in_size, kwargs):
    k = kwargs["kernel_size"]
    k = (k,) * nd if isinstance(k, int) else tuple(k)
    c_in = in_size[0] if kwargs.get("channel_first") else in_size[-1]
    return k + (c_in // kwargs.get("groups", 1), kwargs["out_channels"])


def _input(layer, in_size, batched, seed=3):
    shape = ((2,) if batched else ()) + tuple(in_size)
    return np.random.default_rng(seed).normal(size=shape)


WS_VARIANTS = [
    ("Conv", {}, False),
    ("ScaledWSConv", {}, True),
    ("ScaledWSConv", dict(ws_gain=False), True),
    ("ScaledWSConv", dict(eps=0.5), True),
]


@pytest.mark.parametrize("nd, in_size, kwargs, batched, mask", CONV_CASES)
@pytest.mark.parametrize("cls_name, ws_kwargs, ws", WS_VARIANTS)
@pytest.mark.parametrize("with_bias", [True, False])
def test_conv_forward_matches_literal_composition(
    nd, in_size, kwargs, batched, mask, cls_name, ws_kwargs, ws, with_bias
):
    layer, w_mask = _build(cls_name, nd, in_size, kwargs, mask, with_bias, ws_kwargs)
    x = _input(layer, in_size, batched)
    want = brainstate_conv(dict(kwargs, in_size=in_size, **ws_kwargs), dict(layer.params), w_mask, x, ws)
    got = layer(x)
    assert got.shape == want.shape == (((2,) if batched else ()) + layer.out_size)
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("nd, in_size, kwargs, batched, mask", CONV_CASES)
@pytest.mark.parametrize("cls_name, ws_kwargs, ws", WS_VARIANTS[:3])
def test_conv_vjp_matches_finite_differences(nd, in_size, kwargs, batched, mask, cls_name, ws_kwargs, ws):
    layer, _ = _build(cls_name, nd, in_size, kwargs, mask, True, ws_kwargs)
    assert_vjp_matches_fd(layer, _input(layer, in_size, batched))


def test_ws_conv_vjp_on_the_clamp_matches_finite_differences():
    """eps larger than var * fan_in for every channel: the scale is constant (only centring acts)."""
    layer, _ = _build("ScaledWSConv", 1, (5, 2), dict(out_channels=2, kernel_size=2), True, True, dict(eps=1e3))
    assert_vjp_matches_fd(layer, _input(layer, (5, 2), True))


def test_mask_multiplies_the_standardized_kernel():
    """y for a mask M equals the conv with WS(w) * M, not with WS(w * M) (NOTES.md)."""
    in_size = (6, 3)
    mask = np.zeros((3, 3, 2))
    mask[:, :, 0] = 1.0
    mask[1, :, 1] = 1.0
    layer = nn.ScaledWSConv1d(in_size, 2, 3, w_mask=mask, rng=0)
    x = _input(layer, in_size, True)
    w = layer.params["weight"]
    gain = layer.params["gain"]
    y_after = naive_conv(x, nfnets_ws(w, gain, 1e-4) * mask, pads=naive_explicit_pads("SAME", (6,), (3,)))
    y_before = naive_conv(x, nfnets_ws(w * mask, gain, 1e-4), pads=naive_explicit_pads("SAME", (6,), (3,)))
    np.testing.assert_allclose(layer(x), y_after, rtol=1e-12, atol=1e-12)
    assert not np.allclose(layer(x), y_before)


# --- parameter shapes, out_size, replay --------------------------------------------------------


@pytest.mark.parametrize("nd", [1, 2, 3])
@pytest.mark.parametrize("channel_first", [False, True])
def test_parameter_shapes_follow_notes(nd, channel_first):
    spatial, c_in, c_out, k = (6, 5, 4)[:nd], 4, 6, 3
    in_size = (c_in, *spatial) if channel_first else (*spatial, c_in)
    kw = dict(channel_first=channel_first, groups=2, rng=0)
    plain = getattr(nn, f"Conv{nd}d")(in_size, c_out, k, **kw)
    biased = getattr(nn, f"ScaledWSConv{nd}d")(in_size, c_out, k, b_init=init.ZeroInit(), **kw)
    no_gain = getattr(nn, f"ScaledWSConv{nd}d")(in_size, c_out, k, ws_gain=False, **kw)
    kernel = (k,) * nd + (c_in // 2, c_out)
    bias = (1, c_out) + (1,) * nd if channel_first else (1,) * nd + (c_out,)
    assert plain.params.shapes == {"weight": kernel}  # no bias without b_init
    assert biased.params.shapes == {"weight": kernel, "bias": bias, "gain": (1,) * (nd + 1) + (c_out,)}
    assert no_gain.params.shapes == {"weight": kernel}
    assert np.all(biased.params["gain"] == 1.0) and np.all(biased.params["bias"] == 0.0)
    assert plain.out_size == ((c_out, *spatial) if channel_first else (*spatial, c_out))  # SAME, stride 1


def test_linear_parameter_shapes():
    assert nn.Linear(5, 3, rng=0).params.shapes == {"weight": (5, 3), "bias": (3,)}
    assert nn.Linear((2, 5), (2, 3), b_init=None, rng=0).params.shapes == {"weight": (5, 3)}
    assert nn.ScaledWSLinear((5,), (3,), rng=0).params.shapes == {"weight": (5, 3), "bias": (3,), "gain": (1, 3)}
    assert nn.ScaledWSLinear(5, 3, ws_gain=False, b_init=None, rng=0).params.shapes == {"weight": (5, 3)}


def test_initial_values_come_from_rng_and_arrays_replay_exactly():
    a = nn.ScaledWSConv2d((4, 4, 2), 3, 2, rng=np.random.default_rng(5))
    b = nn.ScaledWSConv2d((4, 4, 2), 3, 2, rng=5)
    c = nn.ScaledWSConv2d((4, 4, 2), 3, 2, rng=6)
    np.testing.assert_array_equal(a.params["weight"], b.params["weight"])
    assert not np.array_equal(a.params["weight"], c.params["weight"])
    w = np.arange(24.0).reshape(2, 2, 2, 3)
    d = nn.Conv2d((4, 4, 2), 3, 2, w_init=w, b_init=0.25)
    np.testing.assert_array_equal(d.params["weight"], w)
    np.testing.assert_array_equal(d.params["bias"], np.full((1, 1, 3), 0.25))
    d.params = {"weight": -w}
    np.testing.assert_array_equal(d.params["weight"], -w)
    d.params["weight"][...] = 0  # the stored array is the layer's own
    x = np.ones((4, 4, 2))
    np.testing.assert_array_equal(d(x), np.full((4, 4, 3), 0.25))


# --- linear layers -----------------------------------------------------------------------------

LINEAR_CASES = [("Linear", {}, False), ("ScaledWSLinear", {}, True), ("ScaledWSLinear", dict(ws_gain=False), True)]


@pytest.mark.parametrize("cls_name, kwargs, ws", LINEAR_CASES)
@pytest.mark.parametrize("x_shape", [(3, 5), (2, 3, 5), (5,)])
@pytest.mark.parametrize("mask", [False, True])
def test_linear_forward_and_vjp(cls_name, kwargs, ws, x_shape, mask):
    w_mask = (np.random.default_rng(2).uniform(size=(5, 4)) > 0.4).astype(float) if mask else None
    layer = getattr(nn, cls_name)(5, 4, w_mask=w_mask, rng=0, **kwargs)
    randomize(layer)
    x = np.random.default_rng(3).normal(size=x_shape)
    p = dict(layer.params)
    w = nfnets_ws(p["weight"], p.get("gain"), 1e-4) if ws else p["weight"]
    w = w * w_mask if mask else w
    want = np.einsum("...i,io->...o", x, w) + p["bias"]
    np.testing.assert_allclose(layer(x), want, rtol=1e-12, atol=1e-12)
    assert_vjp_matches_fd(layer, x)


def test_linear_without_bias_vjp():
    layer = nn.Linear((2, 4), (2, 3), b_init=None, rng=0)
    assert_vjp_matches_fd(layer, np.random.default_rng(0).normal(size=(3, 2, 4)))


# --- the seed documentation examples -----------------------------------------------------------


def _same(n, s):
    return -(-n // s)  # brainstate docs: SAME -> ceil(n / s)


def _valid(n, k, s):
    return -(-(n - k + 1) // s)  # brainstate docs: VALID -> ceil((n - k + 1) / s)


def test_seed_examples_conv2d():
    conv = nn.Conv2d(in_size=(32, 32, 3), out_channels=64, kernel_size=3)
    assert conv(np.ones((8, 32, 32, 3))).shape == (8, 32, 32, 64)
    assert conv(np.ones((32, 32, 3))).shape == (32, 32, 64)
    conv = nn.Conv2d(in_size=(224, 224, 3), out_channels=128, kernel_size=(5, 5), stride=2, padding="VALID")
    assert conv.out_size == (_valid(224, 5, 2), _valid(224, 5, 2), 128)
    conv = nn.Conv2d(in_size=(64, 64, 32), out_channels=32, kernel_size=3, groups=32)
    assert conv.params["weight"].shape == (3, 3, 1, 32) and conv.out_size == (64, 64, 32)


def test_seed_examples_scaled_ws_conv2d():
    conv = nn.ScaledWSConv2d(in_size=(64, 64, 3), out_channels=32, kernel_size=3)
    assert conv(np.ones((8, 64, 64, 3))).shape == (8, 64, 64, 32)
    conv = nn.ScaledWSConv2d(
        in_size=(224, 224, 3),
        out_channels=64,
        kernel_size=7,
        stride=2,
        padding="SAME",
        ws_gain=True,
        b_init=init.ZeroInit(),
    )
    assert conv.out_size == (_same(224, 2), _same(224, 2), 64)
    conv = nn.ScaledWSConv2d(in_size=(32, 32, 128), out_channels=128, kernel_size=3, groups=128, ws_gain=False)
    assert conv.out_size == (32, 32, 128) and "gain" not in conv.params


def test_seed_examples_scaled_ws_conv3d():
    conv = nn.ScaledWSConv3d(in_size=(16, 64, 64, 3), out_channels=32, kernel_size=3)
    # the seed applies it to a batch of 4; one sample has the same per-sample shape and is 4x faster
    assert conv(np.ones((1, 16, 64, 64, 3))).shape == (1, 16, 64, 64, 32)
    conv = nn.ScaledWSConv3d(
        in_size=(32, 32, 32, 1),
        out_channels=64,
        kernel_size=(3, 3, 3),
        stride=2,
        ws_gain=True,
        eps=1e-5,
        b_init=init.Constant(0.01),
    )
    assert conv.out_size == (16, 16, 16, 64) and np.all(conv.params["bias"] == 0.01)
    conv = nn.ScaledWSConv3d(in_size=(8, 16, 16, 64), out_channels=64, kernel_size=3, groups=8, ws_gain=False)
    assert conv.out_size == (8, 16, 16, 64) and conv.params["weight"].shape == (3, 3, 3, 8, 64)


def test_seed_examples_scaled_ws_linear():
    x = np.ones((32, 10))
    assert nn.ScaledWSLinear((10,), (5,))(x).shape == (32, 5)
    assert nn.ScaledWSLinear((10,), (5,), ws_gain=False)(x).shape == (32, 5)


# --- bad input ---------------------------------------------------------------------------------


def test_wrong_input_shape_messages_are_brainstates():
    conv = nn.Conv2d((5, 5, 3), 4, 3, rng=0)
    with pytest.raises(ValueError, match=r"expected 4D \(with batch\) or 3D \(without batch\) input \(got 2D"):
        conv(np.ones((5, 3)))
    with pytest.raises(ValueError, match=r"The expected input shape is \(5, 5, 3\), while we got \(5, 5, 2\)"):
        conv(np.ones((2, 5, 5, 2)))
    with pytest.raises(ValueError, match=r"expected input with|in_size\[-1\]=5"):
        nn.Linear(5, 2, rng=0)(np.ones((3, 4)))
    with pytest.raises(ValueError, match=r"dy.shape=\(2, 5, 5, 3\): expected \(2, 5, 5, 4\)"):
        conv.vjp(np.ones((2, 5, 5, 3)), np.ones((2, 5, 5, 3)))


def test_bad_constructor_arguments():
    with pytest.raises(ValueError, match=r"in_size=\(5, 3\): expected 3 sizes"):
        nn.Conv2d((5, 3), 4, 3)
    with pytest.raises(ValueError, match=r"padding='same': brainstate accepts only"):
        nn.Conv2d((5, 5, 3), 4, 3, padding="same")
    with pytest.raises(ValueError, match=r'"in_channels" should be divisible by groups: in_channels=3, groups=2'):
        nn.Conv2d((5, 5, 3), 4, 3, groups=2)
    with pytest.raises(ValueError, match=r'"out_channels" should be divisible by groups: out_channels=3'):
        nn.Conv2d((5, 5, 4), 3, 3, groups=2)
    with pytest.raises(
        ValueError,
        match=r"w_mask has shape \(3, 3, 2, 4\): expected a shape that broadcasts "
        r"to the weight shape \(3, 3, 3, 4\)",
    ):
        nn.ScaledWSConv2d((5, 5, 3), 4, 3, w_mask=np.ones((3, 3, 2, 4)))
    with pytest.raises(ValueError, match=r"w_init gives shape \(3, 3\): expected \(3, 3, 3, 4\)"):
        nn.Conv2d((5, 5, 3), 4, 3, w_init=np.ones((3, 3)))
    with pytest.raises(ValueError, match=r"The first n-1 dimensions"):
        nn.Linear((2, 5), (3, 4))
    with pytest.raises(ValueError, match=r"ScaledWSLinear supports one feature axis"):
        nn.ScaledWSLinear((2, 5), (2, 4))


def test_params_of_wrong_shape_or_name_are_refused():
    conv = nn.ScaledWSConv1d((6, 2), 3, 3, rng=0)
    before = conv.params["weight"].copy()
    with pytest.raises(ValueError, match=r"params\['gain'\] has shape \(3,\): expected \(1, 1, 3\)"):
        conv.params["gain"] = np.ones(3)
    with pytest.raises(ValueError, match=r"params\['weight'\] has shape \(3, 3, 2\): expected \(3, 2, 3\)"):
        conv.params = {"gain": np.ones((1, 1, 3)), "weight": np.ones((3, 3, 2))}
    np.testing.assert_array_equal(conv.params["weight"], before)  # nothing set on failure
    with pytest.raises(KeyError, match=r"no parameter 'bias'"):
        conv.params["bias"] = np.zeros((1, 3))
    with pytest.raises(TypeError, match=r"params\['weight'\] has dtype complex128"):
        conv.params["weight"] = before + 0j


def test_general_class_and_fixed_rank_classes_agree():
    a = nn.ScaledWSConv((5, 5, 2), 3, 3, num_spatial_dims=2, rng=0)
    b = nn.ScaledWSConv2d((5, 5, 2), 3, 3, rng=0)
    x = np.random.default_rng(0).normal(size=(5, 5, 2))
    np.testing.assert_array_equal(a(x), b(x))
    with pytest.raises(ValueError, match=r"num_spatial_dims=3: Conv2d is 2-d"):
        nn.Conv2d((5, 5, 2), 3, 3, num_spatial_dims=3)
    with pytest.raises(ValueError, match=r"num_spatial_dims=None: the general Conv needs num_spatial_dims"):
        nn.Conv((5, 5, 2), 3, 3)


@pytest.mark.parametrize("name", golden_layer_names("brainstate"))
def test_mirror_reproduces_golden_case(name):
    assert_mirror_reproduces_golden(name)
