"""Weight standardization in exact rational arithmetic, written as a per-channel affine form.

For one output channel ``c`` with weights ``w_i`` (``n`` of them, all on a dyadic grid)::

    m   = (1/n) sum_i w_i                       u_i = w_i - m
    var = (1/(n - ddof)) sum_i u_i**2
    sigma = sqrt(max(var * N, eps))  |  sqrt(var) + eps  |  sqrt(var + eps)   (the spec's denominator)
    A   = F * gain_c / sigma                    (F: the spec's fixed scale, 1 when it has none)
    w_hat_i = A * u_i = A * w_i - A * m

Every output is a sum over terms ``coef_c * G`` where ``coef_c`` is an exact Fraction per channel
(square roots to 2**-256 relative) and ``G`` a grid array (``w``, ones, a cotangent or a tangent).
Keeping that form lets a linear map (a convolution) be applied to each ``G`` exactly before the
irrational coefficients multiply in (see :mod:`refws.golden.rational`).

Derivatives, with ``sigma' = d sigma / d var`` and ``dvar/dw_i = 2 u_i / (n - ddof)``:

- VJP for a cotangent ``g`` on ``w_hat``:
  ``dw_i = A (g_i - mean(g)) - (A / sigma) sigma' (2 / (n - ddof)) (sum_j g_j u_j) u_i``,
  ``dgain_c = (F / sigma) sum_i g_i u_i``.
- JVP for tangents ``t`` (of ``w``) and ``tg`` (of ``gain``):
  ``t_hat_i = A (t_i - mean(t)) + dA u_i`` with
  ``dA = F tg_c / sigma - (A / sigma) sigma' (2 / (n - ddof)) sum_j u_j t_j``.

``sigma'``: ``N / (2 sigma)`` above the clamp and 0 below it for ``max_var_n``; ``1 / (2 sqrt(var))``
for ``std_plus_eps`` (its term vanishes when ``var = 0``, since then every ``u_i = 0``);
``1 / (2 sigma)`` for ``sqrt_var_plus_eps``. A case exactly at the clamp (``var * N == eps``)
is refused, so no golden file depends on a subgradient convention.
"""

from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction

import numpy as np

from .rational import QArray, sqrt_q

__all__ = ["Variant", "ChannelStats", "channel_stats", "ws_terms", "ws_vjp_terms", "ws_jvp_terms", "combine_terms"]


@dataclass(frozen=True)
class Variant:
    """What a WS spec computes: see :class:`refws.WSSpec` (``fixed``: multiply by ``gamma * N**-0.5``)."""

    ddof: int
    denominator: str          # "max_var_n" | "std_plus_eps" | "sqrt_var_plus_eps"
    fan: str | None           # "fan_in" | "numel" | None: what N is
    eps: float
    gamma: float | None = None  # timm ScaledStdConv2d: fixed scale gamma * fan_in ** -0.5


@dataclass(frozen=True)
class ChannelStats:
    """Exact per-channel quantities of the affine form (lists indexed by channel)."""

    n: int
    ddof: int
    mean: list
    var: list
    sigma: list
    dsigma: list   # d sigma / d var
    fixed: Fraction


def _to_channels_last(a: np.ndarray, out_axis: int) -> np.ndarray:
    return np.moveaxis(np.asarray(a, dtype=np.float64), out_axis, -1)


def channel_stats(w: np.ndarray, v: Variant, out_axis: int = -1) -> ChannelStats:
    """Exact mean, variance, denominator and its derivative for every output channel of ``w``."""
    wl = _to_channels_last(w, out_axis)
    c_out = wl.shape[-1]
    flat = QArray.from_float(wl.reshape(-1, c_out))
    n = flat.shape[0]
    if n - v.ddof <= 0:
        raise ValueError(f"weight standardization with ddof={v.ddof} needs more than {v.ddof} element(s) "
                         f"per output channel, got {n}")
    fan = {"fan_in": n, "numel": wl.size, None: 1}[v.fan]
    sums = flat.sum(axis=0).fractions()
    means = [s / n for s in sums]
    sq = (flat * flat).sum(axis=0).fractions()
    # sum (w - m)^2 = sum w^2 - n m^2, exact in rationals
    variances = [(s2 - n * m * m) / (n - v.ddof) for s2, m in zip(sq, means)]
    eps = Fraction(v.eps)
    sig, dsig = [], []
    for var in variances:
        if v.denominator == "max_var_n":
            if var * fan == eps:
                raise ValueError("golden case lies exactly on the max(var * N, eps) clamp; choose other weights")
            s = sqrt_q(max(var * fan, eps))
            ds = Fraction(fan) / (2 * s) if var * fan > eps else Fraction(0)
        elif v.denominator == "std_plus_eps":
            root = sqrt_q(var)
            s = root + eps
            ds = 1 / (2 * root) if var > 0 else Fraction(0)
        elif v.denominator == "sqrt_var_plus_eps":
            s = sqrt_q(var + eps)
            ds = 1 / (2 * s)
        else:
            raise ValueError(f"unknown denominator {v.denominator!r}")
        sig.append(s)
        dsig.append(ds)
    fixed = Fraction(1) if v.gamma is None else Fraction(v.gamma) / sqrt_q(Fraction(n))
    return ChannelStats(n, v.ddof, means, variances, sig, dsig, fixed)


def _gains(gain, c_out: int) -> list:
    if gain is None:
        return [Fraction(1)] * c_out
    return [Fraction(float(g)) for g in np.asarray(gain, dtype=np.float64).reshape(-1)]


def _channel_sums(a: np.ndarray, b: np.ndarray | None, out_axis: int) -> list:
    """Exact ``sum_i a_i`` (or ``sum_i a_i b_i``) per channel, as Fractions."""
    qa = QArray.from_float(_to_channels_last(a, out_axis).reshape(-1, np.shape(a)[out_axis]))
    if b is not None:
        qa = qa * QArray.from_float(_to_channels_last(b, out_axis).reshape(qa.shape))
    return qa.sum(axis=0).fractions()


def ws_terms(w, st: ChannelStats, gain=None, out_axis: int = -1):
    """Terms of ``w_hat``: ``[(A, w), (-A m, ones)]``; also returns ``A`` per channel."""
    amp = [st.fixed * g / s for g, s in zip(_gains(gain, len(st.sigma)), st.sigma)]
    ones = np.ones_like(np.asarray(w, dtype=np.float64))
    return [(amp, np.asarray(w, dtype=np.float64)), ([-a * m for a, m in zip(amp, st.mean)], ones)], amp


def ws_vjp_terms(w, g, st: ChannelStats, gain=None, out_axis: int = -1):
    """Terms of ``dw`` for the cotangent ``g`` (a grid array), and ``dgain`` per channel (Fractions)."""
    _, amp = ws_terms(w, st, gain, out_axis)
    n = st.n
    g_sum = _channel_sums(g, None, out_axis)
    gw_sum = _channel_sums(g, w, out_axis)
    ones = np.ones_like(np.asarray(w, dtype=np.float64))
    coef_g, coef_one_g, coef_w, coef_one_w, dgain = [], [], [], [], []
    for c, (a, s, ds, m) in enumerate(zip(amp, st.sigma, st.dsigma, st.mean)):
        gu = gw_sum[c] - m * g_sum[c]                       # sum_i g_i u_i
        k = -(a / s) * ds * 2 * gu / (n - st.ddof)
        coef_g.append(a)
        coef_one_g.append(-a * g_sum[c] / n)
        coef_w.append(k)
        coef_one_w.append(-k * m)
        dgain.append(st.fixed / s * gu)
    terms = [(coef_g, np.asarray(g, dtype=np.float64)), (coef_one_g, ones),
             (coef_w, np.asarray(w, dtype=np.float64)), (coef_one_w, ones)]
    return terms, dgain


def ws_jvp_terms(w, t, st: ChannelStats, gain=None, tgain=None, out_axis: int = -1):
    """Terms of the tangent ``t_hat`` for tangents ``t`` (of ``w``) and ``tgain`` (of ``gain``)."""
    tgains = _gains(tgain, len(st.sigma)) if tgain is not None else [Fraction(0)] * len(st.sigma)
    _, amp = ws_terms(w, st, gain, out_axis)
    n = st.n
    t_sum = _channel_sums(t, None, out_axis)
    tw_sum = _channel_sums(t, w, out_axis)
    ones = np.ones_like(np.asarray(w, dtype=np.float64))
    coef_t, coef_one_t, coef_w, coef_one_w = [], [], [], []
    for c, (a, s, ds, m) in enumerate(zip(amp, st.sigma, st.dsigma, st.mean)):
        ut = tw_sum[c] - m * t_sum[c]                       # sum_j u_j t_j
        da = st.fixed * tgains[c] / s - (a / s) * ds * 2 * ut / (n - st.ddof)
        coef_t.append(a)
        coef_one_t.append(-a * t_sum[c] / n)
        coef_w.append(da)
        coef_one_w.append(-da * m)
    return [(coef_t, np.asarray(t, dtype=np.float64)), (coef_one_t, ones),
            (coef_w, np.asarray(w, dtype=np.float64)), (coef_one_w, ones)]


def combine_terms(terms, out_axis: int = -1) -> QArray:
    """``sum_k coef_k[c] * G_k`` with ``c`` the index along ``out_axis`` (no linear map applied)."""
    total = None
    for coefs, grid in terms:
        q = QArray.from_float(grid).scale(coefs, axis=out_axis % np.ndim(grid))
        total = q if total is None else total + q
    return total
