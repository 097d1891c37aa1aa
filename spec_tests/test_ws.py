"""Weight standardization: every preset against a literal transcription of its formula, the
properties the formulas promise, VJP/JVP against central finite differences, the JVP/VJP adjoint
identity, the clamp's tie convention against jax and torch autograd, and the input errors."""

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from refws import WS_PRESETS, WSSpec, weight_standardize, weight_standardize_jvp, weight_standardize_vjp

PRESETS = sorted(WS_PRESETS)
MAX_PRESETS = ("brainstate", "nfnets", "elektronn3")


# ---------------------------------------------------------------- literal transcriptions
def _rows(w, out_axis):
    """(C_out, n) view: one row per output channel."""
    wm = np.moveaxis(w, out_axis, 0)
    return wm.reshape(wm.shape[0], -1), wm.shape


def _unrows(rows, shape, out_axis):
    return np.moveaxis(rows.reshape(shape), 0, out_axis)


def literal(name, w, gain_flat, eps, out_axis):
    """Each library's formula as its code writes it, on (C_out, n) rows; gain_flat is (C_out,)."""
    W, shape = _rows(w, out_axis)
    g = np.ones(W.shape[0]) if gain_flat is None else gain_flat
    g = g[:, None]
    mean = W.mean(axis=1, keepdims=True)
    if name in ("brainstate", "nfnets"):  # rsqrt(max(var * fan_in, eps)) * gain; w*scale - mean*scale
        scale = g / np.sqrt(np.maximum(np.var(W, axis=1, keepdims=True) * W.shape[1], eps))
        out = W * scale - mean * scale
    elif name == "elektronn3":  # torch.var_mean (unbiased), fan_in = prod(w.shape)
        scale = g / np.sqrt(np.maximum(np.var(W, axis=1, ddof=1, keepdims=True) * w.size, eps))
        out = W * scale - mean * scale
    elif name == "qiao":  # (w - mean) / (w.std(unbiased) + eps)
        out = g * (W - mean) / (np.std(W, axis=1, ddof=1, keepdims=True) + eps)
    elif name in ("timm_std", "bit"):  # batch_norm(training=True): biased var
        out = g * (W - mean) / np.sqrt(np.var(W, axis=1, keepdims=True) + eps)
    elif name == "timm_scaled":  # batch_norm weight = gain * gamma * fan_in ** -0.5, gamma = 1
        out = (g * W.shape[1] ** -0.5) * (W - mean) / np.sqrt(np.var(W, axis=1, keepdims=True) + eps)
    else:
        raise AssertionError(name)
    return _unrows(out, shape, out_axis)


# ---------------------------------------------------------------- strategies
@st.composite
def ws_case(draw, presets=PRESETS, min_n=2):
    """A small weight, its out_axis, a preset, and a gain in one of the accepted layouts."""
    ndim = draw(st.integers(1, 4))
    shape = tuple(draw(st.lists(st.integers(1, 3), min_size=ndim, max_size=ndim)))
    out_axis = draw(st.integers(-ndim, ndim - 1))
    n = int(np.prod(shape)) // shape[out_axis]
    if n < min_n:  # widen one reduced axis (or add one) so that ddof 1 is defined
        if ndim == 1:
            shape, out_axis = shape + (min_n,), 0
        else:
            k = (out_axis + 1) % ndim
            shape = shape[:k] + (min_n,) + shape[k + 1 :]
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    name = draw(st.sampled_from(presets))
    w = rng.normal(size=shape) * draw(st.sampled_from([0.1, 1.0, 10.0])) + rng.normal()
    layout = draw(st.sampled_from(["none", "flat", "stat", "stat_trimmed"]))
    return name, w, out_axis, _gain_in_layout(rng, w.shape, out_axis, layout), rng


def _gain_in_layout(rng, shape, out_axis, layout):
    c_out = shape[out_axis]
    flat = rng.uniform(0.5, 2.0, size=c_out)
    if layout == "none":
        return None
    if layout == "flat":
        return flat
    stat = [1] * len(shape)
    stat[out_axis] = c_out
    g = flat.reshape(stat)
    if layout == "stat_trimmed":  # drop the leading size-1 axes (numpy broadcasting)
        first = out_axis % len(shape)
        g = g.reshape(stat[first:])
    return g


def _flat(gain):
    return None if gain is None else np.asarray(gain).reshape(-1)


# ---------------------------------------------------------------- forward
@given(ws_case())
def test_presets_match_literal_formula(case):
    name, w, out_axis, gain, _ = case
    eps = WS_PRESETS[name].eps
    got = weight_standardize(w, gain, out_axis=out_axis, spec=name)
    want = literal(name, w, _flat(gain), eps, out_axis)
    assert got.dtype == np.float64 and got.shape == w.shape
    np.testing.assert_allclose(got, want, rtol=1e-11, atol=1e-11 * (1 + np.abs(want).max()))


@given(ws_case())
def test_per_channel_mean_zero_and_scale(case):
    name, w, out_axis, _, _ = case
    spec = WS_PRESETS[name]
    W, _ = _rows(w, out_axis)
    Y, _ = _rows(weight_standardize(w, out_axis=out_axis, spec=name), out_axis)
    assert np.all(np.abs(Y.mean(axis=1)) <= 1e-13 * (1 + np.abs(Y).max()))
    n = W.shape[1]
    var = np.var(W, axis=1, ddof=spec.ddof)
    if spec.denominator == "max_var_n":
        N = n if spec.fan == "fan_in" else w.size
        off = var * N > spec.eps
        # off the clamp: sum(c^2) / (var N) = (n - ddof) / N, i.e. 1 for ddof 0 with fan_in
        want = (n - spec.ddof) / N
        np.testing.assert_allclose((Y**2).sum(axis=1)[off], want, rtol=1e-12)
        if spec.fan == "fan_in" and spec.ddof == 0:
            np.testing.assert_allclose((Y**2).sum(axis=1)[off], 1.0, rtol=1e-12)
    else:
        fixed = 1.0 if spec.fixed_scale is None else spec.fixed_scale * n**-0.5
        var_hat = np.var(Y / fixed, axis=1, ddof=spec.ddof)
        sd = np.sqrt(var)
        # 1 - var/(var+eps) <= eps/var;  1 - sd^2/(sd+eps)^2 <= 2 eps/sd + (eps/sd)^2
        if spec.denominator == "sqrt_var_plus_eps":
            bound = spec.eps / var
        else:
            bound = 2 * spec.eps / sd + (spec.eps / sd) ** 2
        assert np.all(var_hat <= 1 + 1e-12)
        assert np.all(1 - var_hat <= bound + 1e-12)


@given(ws_case(), st.floats(0.5, 2.0), st.floats(-3.0, 3.0))
def test_invariant_to_affine_change_per_channel(case, a_scale, b_shift):
    name, w, out_axis, gain, rng = case
    spec = WS_PRESETS[name]
    stat = [1] * w.ndim
    stat[out_axis] = w.shape[out_axis]
    a = a_scale * rng.uniform(0.8, 1.25, size=stat)
    b = b_shift * rng.uniform(-1, 1, size=stat)
    if spec.denominator == "max_var_n":
        eps = spec.eps  # keep both weights off the clamp: var N well above eps
        W, _ = _rows(w, out_axis)
        N = W.shape[1] if spec.fan == "fan_in" else w.size
        if np.any(np.var(W, axis=1, ddof=spec.ddof) * N * min(1.0, a.min()) ** 2 < 2 * eps):
            return
    else:
        eps = 0.0  # exact invariance needs eps = 0 for the additive forms
    y0 = weight_standardize(w, gain, eps, out_axis=out_axis, spec=name)
    y1 = weight_standardize(a * w + b, gain, eps, out_axis=out_axis, spec=name)
    np.testing.assert_allclose(y1, y0, rtol=1e-9, atol=1e-9)


@given(ws_case(), st.floats(-4.0, 4.0))
def test_gain_scales_linearly(case, k):
    name, w, out_axis, gain, rng = case
    if gain is None:
        gain = _gain_in_layout(rng, w.shape, out_axis, "flat")
    stat = [1] * w.ndim
    stat[out_axis] = w.shape[out_axis]
    plain = weight_standardize(w, out_axis=out_axis, spec=name)
    with_gain = weight_standardize(w, gain, out_axis=out_axis, spec=name)
    np.testing.assert_allclose(with_gain, plain * np.reshape(gain, stat), rtol=1e-14, atol=1e-300)
    scaled = weight_standardize(w, k * np.asarray(gain), out_axis=out_axis, spec=name)
    np.testing.assert_allclose(scaled, k * with_gain, rtol=1e-14, atol=1e-300)


@pytest.mark.parametrize("name", PRESETS)
def test_constant_weights_give_finite_output(name):
    w = np.full((3, 3, 2, 4), 0.75)  # dyadic: the mean is exact, so the centred weight is 0
    y = weight_standardize(w, spec=name)
    dw, _ = weight_standardize_vjp(w, np.ones_like(w), spec=name)
    _, ty = weight_standardize_jvp(w, np.arange(w.size, dtype=float).reshape(w.shape), spec=name)
    assert np.all(np.isfinite(y)) and np.all(np.isfinite(dw)) and np.all(np.isfinite(ty))
    np.testing.assert_array_equal(y, 0.0)


# ---------------------------------------------------------------- derivatives
def _place_near_clamp(w, out_axis, spec, rng):
    """Rescale each channel so that var * N (or var, for the additive forms) is 1/4 or 4 times eps:
    a mix of channels on and off the max clamp, and, for the additive forms, eps-dominated ones."""
    W, shape = _rows(w, out_axis)
    n = W.shape[1]
    var = np.var(W, axis=1, ddof=spec.ddof, keepdims=True)
    N = (n if spec.fan == "fan_in" else w.size) if spec.denominator == "max_var_n" else 1
    target = spec.eps * rng.choice([0.25, 4.0], size=var.shape) / N
    centred = (W - W.mean(axis=1, keepdims=True)) * np.sqrt(target / np.where(var > 0, var, 1))
    return _unrows(centred + W.mean(axis=1, keepdims=True) * 1e-3, shape, out_axis)


def _fd_directional(w, tw, gain, tgain, out_axis, name, h):
    """Central difference of weight_standardize along (tw, tgain)."""

    def f(s):
        g = None if gain is None else gain + s * tgain
        return weight_standardize(w + s * tw, g, out_axis=out_axis, spec=name)

    return (f(h) - f(-h)) / (2 * h)


# FD step h = 1e-5 * sigma (the smallest per-channel std of w). Error model of the central
# difference: truncation ~ (h / sigma)^2 ~ 1e-10 relative to the derivative, hence FD_RTOL = 1e-6
# (any wrong term is an O(1) relative error); plus rounding: f carries ~ u * |f| * (1 + |w| / sigma)
# (the centring cancels the channel mean), divided by h. That floor matters where the derivative
# itself vanishes (n = 2 channels, where w_hat is +-constant up to eps). The rescaling keeps
# var N at 1/4 or 4 times eps, so no step crosses the clamp.
FD_RTOL = 1e-6
U = np.finfo(np.float64).eps


def _jacobian_rounding(w, gain, out_axis, name):
    """Rounding scale of one Jacobian entry: the Jacobian is ~ max|w_hat| / sigma, and the centring
    loses a factor 1 + max|w| / sigma of relative accuracy."""
    sigma = np.std(_rows(w, out_axis)[0], axis=1).min()
    fmax = np.abs(weight_standardize(w, gain, out_axis=out_axis, spec=name)).max()
    return U * fmax / sigma * (1 + np.abs(w).max() / sigma), sigma, fmax


@given(ws_case(), st.booleans())
def test_jvp_and_vjp_match_finite_differences(case, near_eps):
    name, w, out_axis, gain, rng = case
    spec = WS_PRESETS[name]
    if near_eps:
        w = _place_near_clamp(w, out_axis, spec, rng)
    tw = rng.normal(size=w.shape)
    tgain = None if gain is None else rng.normal(size=np.shape(gain))
    jac_rounding, sigma, fmax = _jacobian_rounding(w, gain, out_axis, name)
    h = 1e-5 * sigma
    fd = _fd_directional(w, tw, gain, tgain if gain is not None else 0.0, out_axis, name, h)
    rounding = (
        100
        * U
        * fmax
        * (1 + np.abs(w).max() / sigma)
        / h
        * np.sqrt(w.size)
        * (np.abs(tw).max() + (0.0 if gain is None else np.abs(tgain).max()))
    )
    _, jvp = weight_standardize_jvp(w, tw, gain, tgain, out_axis=out_axis, spec=name)
    assert np.linalg.norm(jvp - fd) <= FD_RTOL * np.linalg.norm(fd) + rounding
    # reverse mode through the same directional derivative: <vjp(u), t> = <u, fd(t)>
    u = rng.normal(size=w.shape)
    dw, dgain = weight_standardize_vjp(w, u, gain, out_axis=out_axis, spec=name)
    lhs = np.vdot(dw, tw) + (0.0 if gain is None else np.vdot(dgain, tgain))
    vjp_rounding = 100 * jac_rounding * np.linalg.norm(u) * np.linalg.norm(tw) * w.size
    assert abs(lhs - np.vdot(u, fd)) <= np.linalg.norm(u) * (FD_RTOL * np.linalg.norm(fd) + rounding) + vjp_rounding
    assert (dgain is None) == (gain is None) and (gain is None or dgain.shape == np.shape(gain))


@given(ws_case(), st.booleans())
def test_vjp_is_adjoint_of_jvp(case, near_eps):
    name, w, out_axis, gain, rng = case
    if near_eps:
        w = _place_near_clamp(w, out_axis, WS_PRESETS[name], rng)
    tw, u = rng.normal(size=w.shape), rng.normal(size=w.shape)
    tgain = None if gain is None else rng.normal(size=np.shape(gain))
    _, jvp = weight_standardize_jvp(w, tw, gain, tgain, out_axis=out_axis, spec=name)
    dw, dgain = weight_standardize_vjp(w, u, gain, out_axis=out_axis, spec=name)
    lhs = np.vdot(dw, tw) + (0.0 if gain is None else np.vdot(dgain, tgain))
    rhs = np.vdot(u, jvp)
    # both sides are the same bilinear form; they differ by rounding only
    t_norm = np.linalg.norm(tw) + (0.0 if gain is None else np.linalg.norm(tgain))
    bound = 100 * _jacobian_rounding(w, gain, out_axis, name)[0] * np.linalg.norm(u) * t_norm * w.size
    assert abs(lhs - rhs) <= bound


# ---------------------------------------------------------------- the clamp's tie
def _tie_weight():
    """HWIO (2, 2, 1, 3), channel 0 exactly at the brainstate tie var*N == eps (dyadic values):
    values +-1/4 around 1/2, var = 1/16, fan_in = 4, var*N = 1/4; channels 1 and 2 off/on."""
    w = np.empty((2, 2, 1, 3))
    w[..., 0] = 0.5 + 0.25 * np.array([1, -1, -1, 1.0]).reshape(2, 2, 1)
    w[..., 1] = np.arange(4.0).reshape(2, 2, 1)
    w[..., 2] = 1e-3 * np.array([1, 2, 3, 5.0]).reshape(2, 2, 1)
    return w


def test_tie_takes_half_of_each_side():
    w, eps = _tie_weight(), 0.25
    assert np.var(w[..., 0]) * 4 == eps  # exact tie, transcribed independently
    rng = np.random.default_rng(1)
    u, tw = rng.normal(size=w.shape), rng.normal(size=w.shape)
    below, above = np.nextafter(eps, 0), np.nextafter(eps, 1)  # off / on the clamp for channel 0
    dw = weight_standardize_vjp(w, u, eps=eps, spec="brainstate")[0]
    dw_off = weight_standardize_vjp(w, u, eps=below, spec="brainstate")[0]
    dw_on = weight_standardize_vjp(w, u, eps=above, spec="brainstate")[0]
    np.testing.assert_allclose(dw, 0.5 * (dw_off + dw_on), rtol=1e-12, atol=1e-12)
    assert np.abs(dw_off - dw_on)[..., 0].max() > 1e-3  # the kink is real
    t = weight_standardize_jvp(w, tw, eps=eps, spec="brainstate")[1]
    t_off = weight_standardize_jvp(w, tw, eps=below, spec="brainstate")[1]
    t_on = weight_standardize_jvp(w, tw, eps=above, spec="brainstate")[1]
    np.testing.assert_allclose(t, 0.5 * (t_off + t_on), rtol=1e-12, atol=1e-12)


def test_brainstate_formula_under_jax_autograd():
    jax = pytest.importorskip("jax")
    jax.config.update("jax_enable_x64", True)
    jnp = jax.numpy

    def brainstate_ws(w, gain, eps):  # brainstate nn/_normalizations.py, transcribed
        axes = tuple(range(w.ndim - 1))
        fan_in = int(np.prod(w.shape[:-1]))
        mean = jnp.mean(w, axis=axes, keepdims=True)
        var = jnp.var(w, axis=axes, keepdims=True)
        scale = jax.lax.rsqrt(jnp.maximum(var * fan_in, eps)) * gain
        return w * scale - mean * scale

    rng = np.random.default_rng(2)
    for w, eps in ((_tie_weight(), 0.25), (rng.normal(size=(3, 2, 2, 3)), 1e-4)):
        gain = rng.uniform(0.5, 2, size=(1, 1, 1, w.shape[-1]))
        u = rng.normal(size=w.shape)
        y, pull = jax.vjp(lambda a, g, eps=eps: brainstate_ws(a, g, eps), jnp.asarray(w), jnp.asarray(gain))
        jdw, jdg = pull(jnp.asarray(u))
        np.testing.assert_allclose(weight_standardize(w, gain, eps), np.asarray(y), rtol=1e-13, atol=1e-13)
        dw, dg = weight_standardize_vjp(w, u, gain, eps)
        np.testing.assert_allclose(dw, np.asarray(jdw), rtol=1e-11, atol=1e-11)
        np.testing.assert_allclose(dg, np.asarray(jdg), rtol=1e-11, atol=1e-11)


def test_elektronn3_formula_under_torch_autograd():
    torch = pytest.importorskip("torch")

    def elektronn3_ws(w, gain, eps):  # elektronn3 0.1.1 WSConv2d.standardize_weight, transcribed
        var, mean = torch.var_mean(w, dim=tuple(range(1, w.ndim)), keepdim=True)
        fan_in = torch.prod(torch.tensor(w.shape))
        scale = torch.rsqrt(torch.max(var * fan_in, torch.tensor(eps, dtype=w.dtype))) * gain.view_as(var)
        return w * scale - mean * scale

    rng = np.random.default_rng(3)
    # OIHW (2, 1, 2, 2), channel 0 exactly at the tie: values 1/4 +- 3/4, unbiased var
    # 4 * (9/16) / 3 = 3/4, numel 8, var * N = 6 (all exact in binary floating point).
    tie = np.empty((2, 1, 2, 2))
    tie[0] = 0.25 + 0.75 * np.array([1, -1, -1, 1.0]).reshape(1, 2, 2)
    tie[1] = 1e-3 * np.array([1, 2, 3, 5.0]).reshape(1, 2, 2)
    assert np.var(tie[0], ddof=1) * tie.size == 6.0
    for w, eps in ((tie, 6.0), (rng.normal(size=(3, 2, 2, 2)), 1e-4)):
        gain = rng.uniform(0.5, 2, size=w.shape[0])
        u = rng.normal(size=w.shape)
        tw_, tg_ = torch.tensor(w, requires_grad=True), torch.tensor(gain, requires_grad=True)
        y = elektronn3_ws(tw_, tg_, eps)
        y.backward(torch.tensor(u))
        np.testing.assert_allclose(
            weight_standardize(w, gain, eps, out_axis=0, spec="elektronn3"), y.detach().numpy(), rtol=1e-13, atol=1e-13
        )
        dw, dg = weight_standardize_vjp(w, u, gain, eps, out_axis=0, spec="elektronn3")
        np.testing.assert_allclose(dw, tw_.grad.numpy(), rtol=1e-11, atol=1e-11)
        np.testing.assert_allclose(dg, tg_.grad.numpy(), rtol=1e-11, atol=1e-11)


# ---------------------------------------------------------------- spec and bad input
def test_preset_table():
    rows = {k: (s.ddof, s.denominator, s.fan, s.fixed_scale, s.eps) for k, s in WS_PRESETS.items()}
    assert rows == {
        "brainstate": (0, "max_var_n", "fan_in", None, 1e-4),
        "nfnets": (0, "max_var_n", "fan_in", None, 1e-4),
        "elektronn3": (1, "max_var_n", "numel", None, 1e-4),
        "qiao": (1, "std_plus_eps", None, None, 1e-5),
        "timm_std": (0, "sqrt_var_plus_eps", None, None, 1e-6),
        "timm_scaled": (0, "sqrt_var_plus_eps", "fan_in", 1.0, 1e-6),
        "bit": (0, "sqrt_var_plus_eps", None, None, 1e-10),
    }


def test_custom_spec_is_accepted():
    spec = WSSpec(ddof=1, denominator="sqrt_var_plus_eps", eps=1e-5, name="mmcv_aws_like")
    w = np.random.default_rng(4).normal(size=(4, 3))
    W = w.T
    want = ((W - W.mean(1, keepdims=True)) / np.sqrt(np.var(W, 1, ddof=1, keepdims=True) + 1e-5)).T
    np.testing.assert_allclose(weight_standardize(w, spec=spec), want, rtol=1e-13)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(ddof=2, denominator="max_var_n", fan="fan_in"), "ddof=2"),
        (dict(ddof=0, denominator="std", fan=None), "denominator='std'"),
        (dict(ddof=0, denominator="max_var_n", fan="fanin"), "fan='fanin'"),
        (dict(ddof=0, denominator="max_var_n", fan=None), "fan=None"),
        (dict(ddof=0, denominator="std_plus_eps", fan="numel"), "fan='numel' is unused"),
        (dict(ddof=0, denominator="std_plus_eps", fan="fan_in", fixed_scale=float("nan")), "fixed_scale"),
        (dict(ddof=0, denominator="std_plus_eps", eps=-1.0), "eps=-1.0"),
    ],
)
def test_bad_spec_fields(kwargs, match):
    with pytest.raises(ValueError, match=match):
        WSSpec(**kwargs)


def test_bad_inputs():
    w = np.ones((3, 3, 2, 4)) + np.arange(72).reshape(3, 3, 2, 4) % 5
    with pytest.raises(ValueError, match="spec='nfnet'.*unknown preset"):
        weight_standardize(w, spec="nfnet")
    with pytest.raises(TypeError, match="spec=3"):
        weight_standardize(w, spec=3)
    for bad in (np.ones(3), np.ones((4, 1, 1, 1)), np.ones((1, 1, 4, 1)), np.ones((2, 2))):
        with pytest.raises(ValueError, match=r"gain has shape"):
            weight_standardize(w, bad)
    with pytest.raises(ValueError, match="ddof=1"):
        weight_standardize(np.arange(5.0).reshape(1, 5), spec="qiao")
    with pytest.raises(ValueError, match="ddof=1"):
        weight_standardize_vjp(np.ones((3, 1, 1, 1)), np.ones((3, 1, 1, 1)), out_axis=0, spec="elektronn3")
    for axis in (4, -5):
        with pytest.raises(ValueError, match=f"out_axis={axis}"):
            weight_standardize(w, out_axis=axis)
    with pytest.raises(TypeError, match="out_axis=1.0"):
        weight_standardize(w, out_axis=1.0)
    with pytest.raises(ValueError, match="eps=-0.1"):
        weight_standardize(w, eps=-0.1)
    with pytest.raises(ValueError, match="eps=0.0.*constant"):
        weight_standardize(np.ones((2, 3)), eps=0.0, spec="bit")
    with pytest.raises(ValueError, match="dw_hat has shape"):
        weight_standardize_vjp(w, np.ones(3))
    with pytest.raises(ValueError, match="tgain was given but gain is None"):
        weight_standardize_jvp(w, w, tgain=np.ones(4))
    with pytest.raises(TypeError, match="w has dtype complex"):
        weight_standardize(w + 1j)
