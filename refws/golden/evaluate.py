"""Evaluate a golden case: generate its inputs and compute its outputs exactly.

Array names in a case file:

- inputs: the operands (``x``, ``w``, ``b``, ``gain``, layer parameters), the cotangent ``dy``
  (``dw_hat`` for the ``ws`` suite) and the tangents, each prefixed ``t`` (``tx``, ``tw``, ...);
- outputs: the forward output ``y`` (``w_hat``), the VJP ``d<input>`` for every differentiable
  input, and the JVP ``ty`` (``tw_hat``);
- bound data (docs/golden-format.md, "Tolerances for consumers"): the manifest's ``terms[o]`` for
  every output ``o`` (K, the most products summed into one element of its bilinear part, 0 if it
  has none), ``<o>__absbound`` (the sum of the absolute values of those products, an upper
  bound: ``conv(|x|, |w|)`` for ``y``) when K > 0, and ``<o>__wsbound`` (a first-order bound of
  the effect of rounding inside weight standardization) for outputs that depend on a
  standardized weight.

Every output is exact or correctly rounded; see :mod:`refws.golden.rational` and docs/golden-format.md.
"""

from __future__ import annotations

import numpy as np

from .. import conv as conv_fn
from .. import conv_transpose, conv_transpose_vjp, conv_vjp
from ..ws import WS_PRESETS
from .exact_ws import Variant, WSBounds, channel_stats, combine_terms, ws_jvp_terms, ws_terms, ws_vjp_terms
from .layer_cases import channel_axis, evaluate_layer, per_channel
from .rational import QArray, exact_bilinear, sum_up
from .rng import BITS as _BITS
from .rng import data_array

__all__ = ["evaluate", "variant_of"]

# --- bilinear outputs -------------------------------------------------------------------------

def _bilinear_output(out: dict, terms: dict, name: str, pieces, bias=None) -> None:
    """Store ``out[name] = sum of op(a, b) over pieces (+ bias)``, exactly, with its bound data.

    ``terms[name]`` = K, the largest number of products summed into one element: ``op(1, 1)``
    counts them exactly (padding, lhs-dilation holes and out-of-range taps add no product), ``+ 1``
    for a bias. ``<name>__absbound = sum op(|a|, |b|) (+ |bias|)``, exact on the grid (rounded up
    if it ever had to round), stored when K > 0 (K = 0: every element is an empty sum, exactly 0).
    """
    q, mags, count = None, [], 0
    for op, a, b in pieces:
        part = exact_bilinear(op, a, b)
        q = part if q is None else q + part
        mags.append(op(np.abs(a), np.abs(b)))
        count = count + op(np.ones_like(a), np.ones_like(b))
    if bias is not None:
        q = q + QArray.from_float(np.broadcast_to(bias, q.shape))
        mags.append(np.broadcast_to(np.abs(bias), q.shape))
        count = count + 1
    out[name] = q.to_float()
    terms[name] = int(np.max(count, initial=0))
    if terms[name]:
        out[name + "__absbound"] = sum_up(*mags)


def _channel_sum(out: dict, terms: dict, name: str, dy: np.ndarray, axis: int) -> None:
    """``out[name] = sum of dy over every axis but axis`` (a bias gradient), its K and absbound."""
    axes = tuple(i for i in range(dy.ndim) if i != axis % dy.ndim)
    out[name] = QArray.from_float(dy).sum(axis=axes).to_float()
    terms[name] = int(np.prod(dy.shape)) // dy.shape[axis]
    if terms[name]:
        out[name + "__absbound"] = QArray.from_float(np.abs(dy)).sum(axis=axes).to_float_up()


# --- conv -----------------------------------------------------------------------------------

def _conv_kwargs(p):
    return {k: p[k] for k in ("stride", "padding", "lhs_dilation", "rhs_dilation", "groups", "channel_first")}


def _eval_conv(case):
    p, n = case.params, case.name
    kw = _conv_kwargs(p)
    x, w = data_array(n, "x", p["x_shape"]), data_array(n, "w", p["w_shape"])
    y_shape = conv_fn(np.zeros(p["x_shape"]), np.zeros(p["w_shape"]), **kw).shape
    dy, tx, tw = data_array(n, "dy", y_shape), data_array(n, "tx", x.shape), data_array(n, "tw", w.shape)
    out, terms = dict(x=x, w=w, dy=dy, tx=tx, tw=tw), {}

    def op(a, b):
        return conv_fn(a, b, **kw)
    _bilinear_output(out, terms, "y", [(op, x, w)])
    _bilinear_output(out, terms, "dx", [(lambda c, b: conv_vjp(x, b, c, **kw)[0], dy, w)])
    _bilinear_output(out, terms, "dw", [(lambda a, c: conv_vjp(a, w, c, **kw)[1], x, dy)])
    _bilinear_output(out, terms, "ty", [(op, tx, w), (op, x, tw)])
    return out, terms


# --- conv_transpose -------------------------------------------------------------------------

def _transpose_kwargs(p):
    keys = ("stride", "padding", "output_padding", "dilation", "groups", "output_size", "channel_first")
    return {k: p[k] for k in keys}


def _eval_transpose(case):
    """Kernel layout ``(*kernel, C_out/groups, C_in)``: an element of ``y`` sums ``taps * C_in/groups``
    products at most (plus the bias), which ``_bilinear_output`` counts."""
    p, n = case.params, case.name
    kw = _transpose_kwargs(p)
    x, w = data_array(n, "x", p["x_shape"]), data_array(n, "w", p["w_shape"])

    def op(a, c):                                     # bilinear in (x, w)
        return conv_transpose(a, c, **kw)
    y_shape = op(np.zeros(p["x_shape"]), np.zeros(p["w_shape"])).shape
    dy, tx, tw = data_array(n, "dy", y_shape), data_array(n, "tx", x.shape), data_array(n, "tw", w.shape)
    out, terms = dict(x=x, w=w, dy=dy, tx=tx, tw=tw), {}
    c_out = p["w_shape"][-2] * p["groups"]
    b = tb = None
    if p["bias"]:
        axis = channel_axis(p["channel_first"], len(y_shape) == len(p["w_shape"]))
        b, tb = (per_channel(data_array(n, k, (c_out,)), len(y_shape), axis) for k in ("b", "tb"))
        out.update(b=b.ravel(), tb=tb.ravel())
        _channel_sum(out, terms, "db", dy, axis)
    _bilinear_output(out, terms, "y", [(op, x, w)], b)
    _bilinear_output(out, terms, "ty", [(op, tx, w), (op, x, tw)], tb)
    _bilinear_output(out, terms, "dx", [(lambda c, v: conv_transpose_vjp(x, v, c, **kw)[0], dy, w)])
    _bilinear_output(out, terms, "dw", [(lambda a, c: conv_transpose_vjp(a, w, c, **kw)[1], x, dy)])
    return out, terms


# --- weight standardization -----------------------------------------------------------------

def variant_of(spec, eps=None) -> Variant:
    """The exact-arithmetic description of a :class:`refws.WSSpec` (or preset name)."""
    spec = WS_PRESETS[spec] if isinstance(spec, str) else spec
    gamma = getattr(spec, "fixed_scale", None)
    return Variant(ddof=spec.ddof, denominator=spec.denominator, fan=spec.fan,
                   eps=spec.eps if eps is None else eps, gamma=gamma)


def _ws_weights(name, shape, regime):
    if regime == "constant":
        return np.full(tuple(shape), 0.375)
    if regime == "tiny":                     # var * N far below every preset's eps: the clamp is active
        return data_array(name, "w", shape, -4, 4, 20)
    return data_array(name, "w", shape)


def _eval_ws(case):
    p, n = case.params, case.name
    axis = p["out_axis"]
    w = _ws_weights(n, p["w_shape"], p["regime"])
    c_out = w.shape[axis]
    gain_shape = [1] * w.ndim
    gain_shape[axis] = c_out
    gain = data_array(n, "gain", gain_shape, 1, 2**_BITS, _BITS - 1) if p["gain"] else None
    v = variant_of(p["spec"], p["eps"])
    st = channel_stats(w, v, axis)
    dw_hat, tw = data_array(n, "dw_hat", w.shape), data_array(n, "tw", w.shape)
    out = dict(w=w, dw_hat=dw_hat, tw=tw)
    terms, _ = ws_terms(w, st, gain, axis)
    out["w_hat"] = combine_terms(terms, axis).to_float()
    vterms, dgain = ws_vjp_terms(w, dw_hat, st, gain, axis)
    out["dw"] = combine_terms(vterms, axis).to_float()
    tgain = None
    if gain is not None:
        tgain = data_array(n, "tgain", gain.shape)
        out.update(gain=gain, tgain=tgain)
        out["dgain"] = np.array([float(d) for d in dgain]).reshape(gain.shape)
    out["tw_hat"] = combine_terms(ws_jvp_terms(w, tw, st, gain, tgain, axis), axis).to_float()
    bounds = WSBounds(w, st, v, gain, axis)
    out["w_hat__wsbound"] = bounds.forward()
    out["dw__wsbound"], dgain_ws = bounds.vjp(dw_hat)
    out["tw_hat__wsbound"] = bounds.jvp(tw, tgain)
    if gain is not None:
        out["dgain__wsbound"] = dgain_ws.reshape(gain.shape)
    # no bilinear part: every error of these outputs is in their wsbound
    return out, {k: 0 for k in ("w_hat", "dw", "dgain", "tw_hat") if k in out}


_EVALUATORS = {"conv": _eval_conv, "conv_transpose": _eval_transpose, "ws": _eval_ws}


def evaluate(case) -> tuple[dict, dict]:
    """``(arrays, terms)`` for a case: every stored array, and terms per output element."""
    return _EVALUATORS.get(case.suite, evaluate_layer)(case)
