r"""Weight standardization (WS) in every variant in use, with hand-derived VJP and JVP.

Every variant is one parameterised map, applied per output channel (``out_axis``) over all other
axes. For one channel with ``n`` reduced elements :math:`w_i`:

.. math::

    c_i = w_i - \bar w, \qquad
    \mathrm{var} = \frac{1}{n - \mathrm{ddof}} \sum_i c_i^2, \qquad
    \hat w_i = \frac{c_i}{D(\mathrm{var})}\, F\, g

with the denominator :math:`D` one of

- ``"max_var_n"``: :math:`\sqrt{\max(\mathrm{var}\cdot N, \epsilon)}` (NFNets, brainstate, elektronn3),
- ``"std_plus_eps"``: :math:`\sqrt{\mathrm{var}} + \epsilon` (Qiao et al., mmcv ``ConvWS2d``),
- ``"sqrt_var_plus_eps"``: :math:`\sqrt{\mathrm{var} + \epsilon}` (timm, BiT, composer),

``N`` the spec's ``fan`` (``"fan_in"`` = ``n``, ``"numel"`` = ``w.size``), ``F`` the optional fixed
scale :math:`\gamma N^{-1/2}` (timm ``ScaledStdConv2d``) and ``g`` the optional per-channel gain.
The derivation of the backward pass is in docs/weight-standardization.md.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass, replace
from typing import NamedTuple

import numpy as np
from numpy.typing import ArrayLike

from .arrays import as_float64

__all__ = [
    "WSSpec",
    "WS_PRESETS",
    "weight_standardize",
    "weight_standardize_vjp",
    "weight_standardize_jvp",
    "resolve_spec",
]

DENOMINATORS = ("max_var_n", "std_plus_eps", "sqrt_var_plus_eps")
FANS = ("fan_in", "numel", None)

# Gradient share of ``max(v, eps)`` with respect to ``v`` at a tie ``v == eps``: jax's
# ``lax.max`` JVP and torch's ``maximum`` backward both split the gradient evenly.
TIE_SHARE = 0.5


def _check_nonneg_finite(value, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name}={value!r}: expected a real number")
    if not (math.isfinite(value) and float(value) >= 0):
        raise ValueError(f"{name}={value!r}: expected a finite number >= 0")
    return float(value)


@dataclass(frozen=True)
class WSSpec:
    """One weight-standardization variant.

    Parameters
    ----------
    ddof : {0, 1}
        Delta degrees of freedom of the per-channel variance: ``var = sum(c**2) / (n - ddof)``.
    denominator : {"max_var_n", "std_plus_eps", "sqrt_var_plus_eps"}
        ``sqrt(max(var * N, eps))``, ``sqrt(var) + eps`` or ``sqrt(var + eps)``.
    fan : {"fan_in", "numel", None}
        What ``N`` is: ``"fan_in"`` = product of the reduced axes (elements per output channel),
        ``"numel"`` = every element of the weight (output channels included, as elektronn3 does).
        Required by ``"max_var_n"`` and by ``fixed_scale``; must be None otherwise.
    fixed_scale : float or None
        ``gamma`` of timm's ``ScaledStdConv2d``: when given the result is multiplied by
        ``gamma * N ** -0.5`` (a constant, no gradient flows into it).
    eps : float
        Default epsilon (>= 0), used when ``weight_standardize`` gets ``eps=None``.
    name, source : str
        Free text: the preset name and where the formula was read.
    """

    ddof: int
    denominator: str
    fan: str | None = None
    fixed_scale: float | None = None
    eps: float = 1e-4
    name: str = ""
    source: str = ""

    def __post_init__(self):
        if isinstance(self.ddof, bool) or self.ddof not in (0, 1):
            raise ValueError(f"ddof={self.ddof!r}: expected 0 or 1")
        if self.denominator not in DENOMINATORS:
            raise ValueError(f"denominator={self.denominator!r}: expected one of {DENOMINATORS}")
        if self.fan not in FANS:
            raise ValueError(f"fan={self.fan!r}: expected one of {FANS}")
        if self.fixed_scale is not None:
            if (
                isinstance(self.fixed_scale, bool)
                or not isinstance(self.fixed_scale, numbers.Real)
                or not math.isfinite(self.fixed_scale)
            ):
                raise ValueError(f"fixed_scale={self.fixed_scale!r}: expected a finite real number or None")
        needs_fan = self.denominator == "max_var_n" or self.fixed_scale is not None
        if needs_fan and self.fan is None:
            raise ValueError(
                f"fan=None with denominator={self.denominator!r} and fixed_scale="
                f"{self.fixed_scale!r}: expected 'fan_in' or 'numel' (N is needed)"
            )
        if not needs_fan and self.fan is not None:
            raise ValueError(
                f"fan={self.fan!r} is unused by denominator={self.denominator!r} without fixed_scale: expected fan=None"
            )
        _check_nonneg_finite(self.eps, "eps")


_NFNETS = WSSpec(
    ddof=0,
    denominator="max_var_n",
    fan="fan_in",
    eps=1e-4,
    name="nfnets",
    source="DeepMind nfnets/base.py WSConv2D: scale = rsqrt(maximum(var * fan_in, 1e-4)) * gain; "
    "w * scale - mean * scale (var ddof 0, fan_in = prod of reduced axes)",
)

WS_PRESETS: dict[str, WSSpec] = {
    "nfnets": _NFNETS,
    "brainstate": replace(
        _NFNETS,
        name="brainstate",
        source="brainstate 0.6.0 nn/_normalizations.py weight_standardization: the NFNets formula "
        "(u.math.maximum = jnp.maximum); not the docstring's g (W - mu) / (sigma + eps)",
    ),
    "elektronn3": WSSpec(
        ddof=1,
        denominator="max_var_n",
        fan="numel",
        eps=1e-4,
        name="elektronn3",
        source="elektronn3 0.1.1 modules/wsconv.py: var, mean = torch.var_mean(w, dim=all but 0) "
        "(unbiased); fan_in = prod(w.shape); rsqrt(torch.max(var * fan_in, eps)) * gain; "
        "use out_axis=0 (OIHW)",
    ),
    "qiao": WSSpec(
        ddof=1,
        denominator="std_plus_eps",
        eps=1e-5,
        name="qiao",
        source="Qiao et al. 2019 paper code (joe-siyuan-qiao/WeightStandardization) and mmcv "
        "ConvWS2d: (w - mean) / (w.std(unbiased) + 1e-5)",
    ),
    "timm_std": WSSpec(
        ddof=0,
        denominator="sqrt_var_plus_eps",
        eps=1e-6,
        name="timm_std",
        source="timm StdConv2d: F.batch_norm(w.reshape(1, O, -1), training=True, eps=1e-6), i.e. "
        "(w - mean) / sqrt(var_biased + eps)",
    ),
    "timm_scaled": WSSpec(
        ddof=0,
        denominator="sqrt_var_plus_eps",
        fan="fan_in",
        fixed_scale=1.0,
        eps=1e-6,
        name="timm_scaled",
        source="timm ScaledStdConv2d: batch_norm as StdConv2d with weight gain * gamma * "
        "fan_in ** -0.5 (fan_in = w[0].numel(), gamma=1.0, gain (O,1,1,1))",
    ),
    "bit": WSSpec(
        ddof=0,
        denominator="sqrt_var_plus_eps",
        eps=1e-10,
        name="bit",
        source="BiT (google-research/big_transfer, PyTorch/JAX/TF2) StdConv2d and composer "
        "WeightStandardization: (w - mean) / sqrt(var_biased + 1e-10)",
    ),
}


def resolve_spec(spec: str | WSSpec) -> WSSpec:
    """Return ``spec`` if it is a :class:`WSSpec`, else the preset of that name."""
    if isinstance(spec, WSSpec):
        return spec
    if isinstance(spec, str):
        if spec not in WS_PRESETS:
            raise ValueError(f"spec={spec!r}: unknown preset, expected one of {sorted(WS_PRESETS)} or a WSSpec")
        return WS_PRESETS[spec]
    raise TypeError(f"spec={spec!r}: expected a preset name (str) or a WSSpec")


class _Setup(NamedTuple):
    """Validated operands of one call."""

    w: np.ndarray  # float64 weight
    spec: WSSpec
    eps: float
    axes: tuple  # reduced axes
    n: int  # elements per output channel
    stat_shape: tuple  # w.shape with 1 on every reduced axis
    gain: np.ndarray | None  # gain viewed in stat_shape


class _Stats(NamedTuple):
    """Forward quantities per channel (arrays in stat_shape, except ``c``)."""

    c: np.ndarray  # centred weight, w.shape
    r: np.ndarray  # 1 / D
    dD: np.ndarray  # dD / dvar (the clamp's subgradient already applied)
    a: np.ndarray  # fixed scale times gain: w_hat = c * r * a
    fixed: float  # the fixed scale F alone (1.0 when absent)


def _check_out_axis(out_axis, ndim: int) -> int:
    if isinstance(out_axis, bool) or not isinstance(out_axis, numbers.Integral):
        raise TypeError(f"out_axis={out_axis!r}: expected an int")
    if not -ndim <= int(out_axis) < ndim:
        raise ValueError(f"out_axis={out_axis}: expected an axis of w (ndim {ndim}), i.e. in [{-ndim}, {ndim - 1}]")
    return int(out_axis) % ndim


def _gain_view(gain, stat_shape: tuple, axis: int) -> np.ndarray | None:
    """View ``gain`` in ``stat_shape``: a flat ``(C_out,)`` maps to ``out_axis``; any other shape
    must be ``stat_shape`` with leading size-1 axes dropped (brainstate ``(1, ..., 1, C_out)``,
    timm ``(C_out, 1, 1, 1)``)."""
    if gain is None:
        return None
    g = as_float64(gain, "gain")
    c_out = stat_shape[axis]
    flat = g.ndim == 1 and g.shape[0] == c_out
    fits = 1 <= g.ndim <= len(stat_shape) and (1,) * (len(stat_shape) - g.ndim) + g.shape == stat_shape
    if not (flat or fits):
        raise ValueError(
            f"gain has shape {g.shape}: expected ({c_out},) or {stat_shape} "
            f"(one value per output channel along out_axis={axis}, leading 1s optional)"
        )
    return g.reshape(stat_shape)


def _setup(w, gain, eps, out_axis, spec) -> _Setup:
    spec = resolve_spec(spec)
    w = as_float64(w, "w")
    if w.ndim == 0:
        raise ValueError("w is 0-d: expected an array with at least one axis (the output axis)")
    axis = _check_out_axis(out_axis, w.ndim)
    axes = tuple(i for i in range(w.ndim) if i != axis)
    n = math.prod(w.shape[i] for i in axes)
    if n <= spec.ddof:
        raise ValueError(
            f"w has shape {w.shape}: reducing over every axis but out_axis={out_axis} "
            f"leaves n={n} element(s) per output channel, but ddof={spec.ddof} "
            f"(spec {spec.name or spec}) needs n >= {spec.ddof + 1}"
        )
    eps = spec.eps if eps is None else _check_nonneg_finite(eps, "eps")
    stat_shape = tuple(1 if i in axes else s for i, s in enumerate(w.shape))
    return _Setup(w, spec, eps, axes, n, stat_shape, _gain_view(gain, stat_shape, axis))


def _fan(setup: _Setup) -> int:
    return setup.n if setup.spec.fan == "fan_in" else setup.w.size


def _denominator(var: np.ndarray, setup: _Setup) -> tuple[np.ndarray, np.ndarray]:
    """Return ``D(var)`` and ``dD/dvar`` (per channel)."""
    eps, form = setup.eps, setup.spec.denominator
    if form == "max_var_n":
        N = _fan(setup)
        v = var * N
        D = np.sqrt(np.maximum(v, eps))
        # Off the clamp D = sqrt(var N); on it D is constant; at the tie, half of each.
        share = np.where(v > eps, 1.0, np.where(v == eps, TIE_SHARE, 0.0))
        dD = share * N / (2 * np.where(D > 0, D, 1.0))
    elif form == "std_plus_eps":
        sd = np.sqrt(var)
        D = sd + eps
        # At var == 0 every c_i is 0, so the dD term carries no gradient; 0 avoids 0 * inf.
        dD = np.divide(0.5, sd, out=np.zeros_like(sd), where=sd > 0)
    else:
        D = np.sqrt(var + eps)
        dD = np.divide(0.5, D, out=np.zeros_like(D), where=D > 0)
    if not np.all(D > 0):
        bad = np.argwhere(D.reshape(-1) == 0).ravel().tolist()
        raise ValueError(
            f"eps={eps}: output channel(s) {bad} of w are constant, so the denominator "
            f"of {form!r} is 0; expected eps > 0 or non-constant channels"
        )
    return D, dD


def _forward(setup: _Setup) -> _Stats:
    w, axes, spec = setup.w, setup.axes, setup.spec
    c = w - w.mean(axis=axes, keepdims=True)
    var = (c * c).sum(axis=axes, keepdims=True) / (setup.n - spec.ddof)
    D, dD = _denominator(var, setup)
    fixed = 1.0 if spec.fixed_scale is None else spec.fixed_scale * _fan(setup) ** -0.5
    a = np.full(setup.stat_shape, fixed) if setup.gain is None else fixed * setup.gain
    return _Stats(c, 1.0 / D, dD, a, fixed)


def _check_like(t, w: np.ndarray, name: str) -> np.ndarray:
    t = as_float64(t, name)
    if t.shape != w.shape:
        raise ValueError(f"{name} has shape {t.shape}: expected the shape of w, {w.shape}")
    return t


def weight_standardize(
    w: ArrayLike,
    gain: ArrayLike | None = None,
    eps: float | None = None,
    *,
    out_axis: int = -1,
    spec: str | WSSpec = "brainstate",
) -> np.ndarray:
    r"""Standardize ``w`` per output channel: :math:`\hat w = (w - \bar w)\, D^{-1} F g`.

    Parameters
    ----------
    w : array_like, shape ``(..., C_out, ...)``
        The weight; ``C_out`` is ``w.shape[out_axis]``. Every other axis is reduced.
    gain : array_like or None
        Per-output-channel gain ``g``: shape ``(C_out,)`` (mapped to ``out_axis``) or ``w.shape``
        with 1 on every reduced axis, leading 1s optional (``(1, ..., 1, C_out)`` for brainstate
        HWIO, ``(C_out, 1, 1, 1)`` for timm OIHW).
    eps : float or None
        ``None`` takes ``spec.eps``.
    out_axis : int
        The output-channel axis (-1 for brainstate HWIO, 0 for PyTorch OIHW / elektronn3).
    spec : str or WSSpec
        A key of :data:`WS_PRESETS` or a :class:`WSSpec`.

    Returns
    -------
    w_hat : ndarray, float64, shape ``w.shape``

    Raises
    ------
    ValueError
        unknown preset, bad ``out_axis`` or ``gain`` shape, ``ddof=1`` with one reduced element,
        a zero denominator (``eps=0`` on a constant channel).
    """
    setup = _setup(w, gain, eps, out_axis, spec)
    st = _forward(setup)
    return st.c * (st.r * st.a)


def weight_standardize_vjp(
    w: ArrayLike,
    dw_hat: ArrayLike,
    gain: ArrayLike | None = None,
    eps: float | None = None,
    *,
    out_axis: int = -1,
    spec: str | WSSpec = "brainstate",
) -> tuple[np.ndarray, np.ndarray | None]:
    r"""Reverse mode of :func:`weight_standardize`: pull ``dw_hat`` back to ``w`` and ``gain``.

    With ``u = dw_hat``, ``a = F g``, ``r = 1 / D`` and ``m = n - ddof`` (per channel):

    .. math::

        \partial c = a r u - a r^2 D'(\mathrm{var}) \frac{2}{m} \Big(\sum_i u_i c_i\Big) c, \qquad
        \partial w = \partial c - \overline{\partial c}, \qquad
        \partial g = F r \sum_i u_i c_i.

    ``D'`` for ``"max_var_n"`` is ``N / (2 D)`` off the clamp (``var N > eps``), 0 on it
    (``var N < eps``) and half of that at the tie (jax/torch ``maximum`` convention).

    Returns
    -------
    dw : ndarray, float64, shape ``w.shape``
    dgain : ndarray of ``gain``'s shape, or None when ``gain`` is None
    """
    setup = _setup(w, gain, eps, out_axis, spec)
    u = _check_like(dw_hat, setup.w, "dw_hat")
    st, axes = _forward(setup), setup.axes
    uc = (u * st.c).sum(axis=axes, keepdims=True)
    dvar_coef = -st.a * st.r**2 * st.dD * (2.0 / (setup.n - setup.spec.ddof)) * uc
    dc = st.a * st.r * u + dvar_coef * st.c
    dw = dc - dc.mean(axis=axes, keepdims=True)
    dgain = None if gain is None else (st.fixed * st.r * uc).reshape(np.shape(gain))
    return dw, dgain


def weight_standardize_jvp(
    w: ArrayLike,
    tw: ArrayLike,
    gain: ArrayLike | None = None,
    tgain: ArrayLike | None = None,
    eps: float | None = None,
    *,
    out_axis: int = -1,
    spec: str | WSSpec = "brainstate",
) -> tuple[np.ndarray, np.ndarray]:
    r"""Forward mode of :func:`weight_standardize`: push the tangents ``(tw, tgain)`` forward.

    With ``tc = tw - mean(tw)`` per channel:

    .. math::

        \dot{\mathrm{var}} = \frac{2}{m} \sum_i c_i\, tc_i, \qquad
        \dot r = -r^2 D'(\mathrm{var})\, \dot{\mathrm{var}}, \qquad
        \dot{\hat w} = F\,\big(g\,(r\, tc + \dot r\, c) + \dot g\, r\, c\big).

    ``tgain`` (gain's shape) needs ``gain``; ``tgain=None`` is a zero tangent.

    Returns
    -------
    w_hat, tw_hat : ndarray, float64, shape ``w.shape``
    """
    setup = _setup(w, gain, eps, out_axis, spec)
    tw = _check_like(tw, setup.w, "tw")
    st, axes = _forward(setup), setup.axes
    tc = tw - tw.mean(axis=axes, keepdims=True)
    dvar = (st.c * tc).sum(axis=axes, keepdims=True) * (2.0 / (setup.n - setup.spec.ddof))
    dr = -(st.r**2) * st.dD * dvar
    tw_hat = st.a * (st.r * tc + dr * st.c)
    if tgain is not None:
        if gain is None:
            raise ValueError("tgain was given but gain is None: expected a gain to carry the tangent")
        tg = as_float64(tgain, "tgain")
        if tg.shape != np.shape(gain):
            raise ValueError(f"tgain has shape {tg.shape}: expected the shape of gain, {np.shape(gain)}")
        tw_hat = tw_hat + st.fixed * tg.reshape(setup.stat_shape) * st.r * st.c
    return st.c * (st.r * st.a), tw_hat
