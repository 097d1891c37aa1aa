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

from collections.abc import Sequence
from dataclasses import dataclass
from fractions import Fraction

import numpy as np
from numpy.typing import ArrayLike

from .rational import QArray, sqrt_q

__all__ = ["Variant", "ChannelStats", "channel_stats", "ws_terms", "ws_vjp_terms", "ws_jvp_terms", "combine_terms",
           "WS_SAFETY", "WSBounds"]

# One term of an affine form: exact coefficients (Fractions, one per output channel) and the
# float64 grid array they multiply along the output axis (see :func:`combine_terms`).
Term = tuple[list[Fraction], np.ndarray]


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


def _to_channels_last(a: ArrayLike, out_axis: int) -> np.ndarray:
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


def _channel_sums(a: ArrayLike, b: ArrayLike | None, out_axis: int) -> list:
    """Exact ``sum_i a_i`` (or ``sum_i a_i b_i``) per channel, as Fractions."""
    qa = QArray.from_float(_to_channels_last(a, out_axis).reshape(-1, np.shape(a)[out_axis]))
    if b is not None:
        qa = qa * QArray.from_float(_to_channels_last(b, out_axis).reshape(qa.shape))
    return qa.sum(axis=0).fractions()


def ws_terms(w: ArrayLike, st: ChannelStats, gain: ArrayLike | None = None,
             out_axis: int = -1) -> tuple[list[Term], list[Fraction]]:
    """Terms of ``w_hat``: ``[(A, w), (-A m, ones)]``; also returns ``A`` per channel."""
    amp = [st.fixed * g / s for g, s in zip(_gains(gain, len(st.sigma)), st.sigma)]
    ones = np.ones_like(np.asarray(w, dtype=np.float64))
    return [(amp, np.asarray(w, dtype=np.float64)), ([-a * m for a, m in zip(amp, st.mean)], ones)], amp


def ws_vjp_terms(w: ArrayLike, g: ArrayLike, st: ChannelStats, gain: ArrayLike | None = None,
                 out_axis: int = -1) -> tuple[list[Term], list[Fraction]]:
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


def ws_jvp_terms(w: ArrayLike, t: ArrayLike, st: ChannelStats, gain: ArrayLike | None = None,
                 tgain: ArrayLike | None = None, out_axis: int = -1) -> list[Term]:
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


def combine_terms(terms: Sequence[Term], out_axis: int = -1) -> QArray:
    """``sum_k coef_k[c] * G_k`` with ``c`` the index along ``out_axis`` (no linear map applied)."""
    total: QArray | None = None
    for coefs, grid in terms:
        q = QArray.from_float(grid).scale(coefs, axis=out_axis % np.ndim(grid))
        total = q if total is None else total + q
    assert total is not None, "combine_terms needs at least one term"
    return total


# --- bound data: the magnitude Jacobian and the first-order error model -----------------------

#: Safety factor of the first-order WS bound (``<array>__wsbound``); see :class:`WSBounds`.
WS_SAFETY = 2.0


def _float_up(v: Fraction) -> float:
    """A float64 strictly above ``|v|`` unless ``v == 0`` (``v`` approximates a real to ``2**-256``)."""
    v = abs(v)
    f = float(v)
    return float(np.nextafter(f, np.inf)) if v and Fraction(f) <= v else f


class WSBounds:
    r"""Bound data of weight standardization for one weight: per channel ``c`` with ``n`` elements.

    Notation (exact, per channel): ``d_i = w_i - mean``, ``s = sum d_i**2``, ``q = sum w_i**2``,
    ``M = max |w_i|``, ``m = n - ddof``, ``sigma`` and ``sigma' = d sigma / d var`` as in
    :func:`channel_stats`, ``S = |F gain| / sigma`` (the scale), ``c = sigma' * 2 / (sigma m)``
    (``<= 1/s`` for every variant). Then ``w_hat_i = S d_i`` (up to sign) and

    .. math::  \partial \hat w_j / \partial w_i = S (\delta_{ij} - 1/n - c\, d_i d_j),

    so the **magnitude Jacobian** :meth:`magnitude_vjp` ``A(v)_i = S (v_i + sum(v)/n) + S c |d_i|
    sum_j |d_j| v_j`` bounds ``|J^T| v`` and ``|J| v`` for ``v >= 0``; it is evaluated in exact
    rationals and rounded up.

    The **first-order error model** (:meth:`forward`, :meth:`vjp`, :meth:`jvp`) bounds, in units of
    the unit roundoff, the change of ``w_hat`` (its VJP, its JVP) when the standardization is
    computed in floating point with any summation order (sequential, pairwise, Welford; two-pass
    variance, or one-pass ``E[w^2] - E[w]^2`` where it does not cancel), ``(w - mean) * scale`` or
    ``w * scale - mean * scale``, and from inputs rounded to a format: per-channel error budgets

    - mean: ``E_mu = (n + 4) M``; a mean of a cotangent/tangent ``a``: ``(n + 4) max|a|``;
    - sum of squares: ``E_s = (n + 4) q + 2 n |mean| E_mu`` (covers the one-pass form);
    - variance fed to the denominator: ``E_var = E_s / m + 3 var (+ 2 eps inside the sqrt)``;
    - denominator, relative: ``rho_sigma = |sigma'| E_var / sigma + 3``; scale:
      ``rho_S = rho_sigma + 6`` (gain, fixed scale, division or rsqrt);
    - a sum ``T = sum a_j d_j`` (VJP and JVP): ``E_T = (n + 4)(sum |a||d| + 2 |mean| sum |a|)
      + E_mu sum |a|`` (also covers autodiff's ``sum a w - mean sum a``);
    - ``c`` relative: ``rho_c = rho_S + rho_sigma + 1 + rho_sigma' + 4``, with ``rho_sigma'`` the
      relative error of ``sigma'`` (``rho_sigma + 1``; ``E_var / (2 var) + 2`` for ``std_plus_eps``;
      0 where ``sigma' = 0``),

    propagated to first order through ``w_hat = S d``, ``dw = S (g - mean g) - c S T_g d`` and
    ``t_hat = S (t - mean t) + (F tg / sigma - c S T_t) d``, each term with its own magnitude, and
    multiplied by :data:`WS_SAFETY`. Raw-input rounding (``w``, ``gain``, cotangent, tangents, each
    by ``u_in`` relative) perturbs every intermediate by no more than these budgets, so
    ``(u + u_in) * bound`` covers both. It is a first-order bound: second-order terms are not
    included, the safety factor is there for them and for a few ulps of ``rsqrt``/``sqrt``.
    """

    def __init__(self, w: ArrayLike, st: ChannelStats, v: Variant, gain: ArrayLike | None = None,
                 out_axis: int = -1) -> None:
        w = np.asarray(w, dtype=np.float64)
        self.out_axis = out_axis % w.ndim
        wl = _to_channels_last(w, self.out_axis)
        self._lshape = wl.shape
        flat = wl.reshape(-1, wl.shape[-1])
        n, m = st.n, st.n - st.ddof
        self.n = n
        wq = QArray.from_float(flat)
        total = wq.sum(axis=0)
        self._d = QArray(wq.num * n - total.num[None, :], wq.den * n)       # d_i = w_i - mean, exact
        self._absd = self._d.abs()
        self.absd = np.abs(self._d.to_float())
        scale_q = [abs(st.fixed * g) / s for g, s in zip(_gains(gain, len(st.sigma)), st.sigma)]
        c_q = [ds * 2 / (s * m) for s, ds in zip(st.sigma, st.dsigma)]
        fos_q = [abs(st.fixed) / s for s in st.sigma]
        self._scale_q, self._c_q, self._fos_q = scale_q, c_q, fos_q
        self.scale = np.array([float(a) for a in scale_q])
        self.c = np.array([float(a) for a in c_q])
        self.fos = np.array([float(a) for a in fos_q])
        self.mu = np.array([abs(float(a)) for a in st.mean])
        var = np.array([float(a) for a in st.var])
        sigma = np.array([float(a) for a in st.sigma])
        dsigma = np.array([float(a) for a in st.dsigma])
        q = np.array([float(a) for a in (wq * wq).sum(axis=0).fractions()])
        big_m = np.max(np.abs(flat), axis=0, initial=0.0)
        self.e_mu = (n + 4) * big_m
        e_s = (n + 4) * q + 2 * n * self.mu * self.e_mu
        e_var = e_s / m + 3 * var + (2 * v.eps if v.denominator == "sqrt_var_plus_eps" else 0.0)
        self.rho_sigma = dsigma * e_var / sigma + 3
        self.rho_scale = self.rho_sigma + 6
        if v.denominator == "std_plus_eps":
            safe = np.where(var > 0, var, 1.0)
            rho_dsigma = np.where(dsigma > 0, e_var / (2 * safe) + 2, 0.0)
        else:
            rho_dsigma = np.where(dsigma > 0, self.rho_sigma + 1, 0.0)
        self.rho_c = self.rho_scale + self.rho_sigma + 1 + rho_dsigma + 4

    # -- layout -----------------------------------------------------------------------------
    def _flat(self, a) -> np.ndarray:
        return _to_channels_last(a, self.out_axis).reshape(-1, self._lshape[-1])

    def _back(self, flat: np.ndarray) -> np.ndarray:
        return np.moveaxis(flat.reshape(self._lshape), -1, self.out_axis)

    def _channel_data(self, a):
        """For a grid array ``a``: ``|a|`` (flat), ``max|a|``, ``|mean a|``, ``sum|a|``, ``sum|a||d|``,
        ``|sum a d|`` per channel (sums exact, then rounded)."""
        flat = self._flat(a)
        aq = QArray.from_float(flat)
        as_float = lambda q: np.array([float(f) for f in q.sum(axis=0).fractions()])   # noqa: E731
        mean = np.abs(as_float(aq)) / self.n
        return (np.abs(flat), np.max(np.abs(flat), axis=0, initial=0.0), mean, as_float(aq.abs()),
                as_float(aq.abs() * self._absd), np.abs(as_float(aq * self._d)))

    def _e_t(self, sum_abs, sum_abs_d):
        return (self.n + 4) * (sum_abs_d + 2 * self.mu * sum_abs) + self.e_mu * sum_abs

    def _centring(self, abs_a, top, mean):
        """Error terms of ``S (a_i - mean a)``: the scale's error (with the product and the final
        additions), the mean's error ``(n + 4) max|a|`` and the subtraction's rounding."""
        return self.scale * (abs_a + mean) * (self.rho_scale + 4) + self.scale * ((self.n + 4) * top + abs_a + mean)

    # -- the first-order model ----------------------------------------------------------------
    def forward(self) -> np.ndarray:
        """``bound`` with ``|fl(w_hat) - w_hat| <= (u + u_in) * bound`` to first order (shape of w)."""
        what = self.scale * self.absd
        shift = self.e_mu + 2 * self.absd + 2 * self.mu               # errors of d (both forms)
        return self._back(WS_SAFETY * (self.scale * shift + what * (self.rho_scale + 2)))

    def vjp(self, g: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
        """First-order bounds of ``dw`` (shape of w) and ``dgain`` (per channel) for the cotangent ``g``."""
        abs_g, top, mean, sum_abs, sum_abs_d, t = self._channel_data(g)
        e_t = self._e_t(sum_abs, sum_abs_d)
        k = self.c * self.scale * t                                    # |c S T|
        dw = self._centring(abs_g, top, mean) + self.c * self.scale * e_t * self.absd \
            + k * (self.e_mu + 2 * self.absd + 2 * self.mu) + k * self.absd * (self.rho_c + 4)
        dgain = self.fos * e_t + self.fos * t * (self.rho_sigma + 4)
        return self._back(WS_SAFETY * dw), WS_SAFETY * dgain

    def jvp(self, t: ArrayLike, tgain: ArrayLike | None = None) -> np.ndarray:
        """First-order bound of ``t_hat`` (shape of w) for tangents ``t`` of w and ``tgain`` of the gain."""
        abs_t, top, mean, sum_abs, sum_abs_d, tt = self._channel_data(t)
        e_t = self._e_t(sum_abs, sum_abs_d)
        tg = np.zeros_like(self.fos) if tgain is None else np.abs(np.asarray(tgain, dtype=np.float64).ravel())
        da_g = self.fos * tg                                           # |F tg / sigma|
        da_t = self.c * self.scale * tt                                # |c S T_t|
        bound = self._centring(abs_t, top, mean) + self.c * self.scale * e_t * self.absd \
            + (da_g + da_t) * (self.e_mu + 2 * self.absd + 2 * self.mu) \
            + da_g * self.absd * (self.rho_sigma + 6) + da_t * self.absd * (self.rho_c + 4)
        return self._back(WS_SAFETY * bound)

    # -- the magnitude Jacobian (rigorous, rounded up) ------------------------------------------
    def magnitude_vjp(self, v: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
        """``(A(v), a_gain(v))`` for a grid ``v >= 0`` shaped like w: upper bounds of ``|J^T| v`` and
        of ``|d w_hat / d gain|^T v = |F| / sigma * sum_i |d_i| v_i`` (per channel), exact then rounded up."""
        vq = QArray.from_float(self._flat(v))
        if np.any(vq.num < 0):
            raise ValueError("magnitude_vjp: v must be >= 0")
        sum_v = vq.sum(axis=0).fractions()
        sum_dv = (vq * self._absd).sum(axis=0).fractions()
        ones = QArray.from_float(np.ones(vq.shape))
        n = self.n
        a = vq.scale(self._scale_q, axis=1) \
            + ones.scale([sc * sv / n for sc, sv in zip(self._scale_q, sum_v)], axis=1) \
            + self._absd.scale([sc * c * sd for sc, c, sd in zip(self._scale_q, self._c_q, sum_dv)], axis=1)
        dgain = np.array([_float_up(f * sd) for f, sd in zip(self._fos_q, sum_dv)])
        return self._back(a.to_float_up(strict=True)), dgain
