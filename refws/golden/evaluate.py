"""Evaluate a golden case: generate its inputs and compute its outputs exactly.

Array names in a case file:

- inputs: the operands (``x``, ``w``, ``b``, ``gain``, layer parameters), the cotangent ``dy``
  (``dw_hat`` for the ``ws`` suite) and the tangents, each prefixed ``t`` (``tx``, ``tw``, ...);
- outputs: the forward output ``y`` (``w_hat``), the VJP ``d<input>`` for every differentiable
  input, and the JVP ``ty`` (``tw_hat``);
- tolerance data: for each output computed by a bilinear map, ``<output>__absbound``, the same map
  applied to the absolute values of its operands (``conv(|x|, |w|)``); the number of terms per
  output element is in the case parameters under ``terms``.

Every output is exact or correctly rounded; see :mod:`refws.golden.rational` and docs/golden-format.md.
"""

from __future__ import annotations

import numpy as np

from .. import conv as conv_fn
from .. import conv_transpose, conv_transpose_vjp, conv_vjp
from ..ws import WS_PRESETS
from .exact_ws import Variant, channel_stats, combine_terms, ws_jvp_terms, ws_terms, ws_vjp_terms
from .layer_cases import channel_axis, evaluate_layer, per_channel
from .rational import QArray, exact_bilinear
from .rng import BITS as _BITS
from .rng import data_array

__all__ = ["evaluate", "variant_of"]

# --- conv -----------------------------------------------------------------------------------

def _conv_kwargs(p):
    return {k: p[k] for k in ("stride", "padding", "lhs_dilation", "rhs_dilation", "groups", "channel_first")}


def _bilinear_output(out: dict, name: str, op, a, b):
    q = exact_bilinear(op, a, b)
    out[name] = q.to_float()
    out[name + "__absbound"] = op(np.abs(a), np.abs(b))
    return q


def _eval_conv(case):
    p, n = case.params, case.name
    kw = _conv_kwargs(p)
    x, w = data_array(n, "x", p["x_shape"]), data_array(n, "w", p["w_shape"])
    y_shape = conv_fn(np.zeros(p["x_shape"]), np.zeros(p["w_shape"]), **kw).shape
    dy, tx, tw = data_array(n, "dy", y_shape), data_array(n, "tx", x.shape), data_array(n, "tw", w.shape)
    out = dict(x=x, w=w, dy=dy, tx=tx, tw=tw)
    _bilinear_output(out, "y", lambda a, b: conv_fn(a, b, **kw), x, w)
    _bilinear_output(out, "dx", lambda c, b: conv_vjp(x, b, c, **kw)[0], dy, w)
    _bilinear_output(out, "dw", lambda a, c: conv_vjp(a, w, c, **kw)[1], x, dy)
    ty = exact_bilinear(lambda a, b: conv_fn(a, b, **kw), tx, w) + exact_bilinear(lambda a, b: conv_fn(a, b, **kw), x, tw)
    out["ty"] = ty.to_float()
    out["ty__absbound"] = conv_fn(np.abs(tx), np.abs(w), **kw) + conv_fn(np.abs(x), np.abs(tw), **kw)
    k_in = int(np.prod(p["w_shape"][:-1]))
    k_out = int(np.prod(p["w_shape"][:-2])) * (p["w_shape"][-1] // p["groups"])
    positions = int(np.prod(y_shape[:-1] if not p["channel_first"] else (y_shape[:1] + y_shape[2:])))
    if len(p["x_shape"]) == len(p["w_shape"]) - 1:     # unbatched: every leading axis is spatial
        positions = int(np.prod(y_shape)) // p["w_shape"][-1]
    terms = dict(y=k_in, dx=k_out, dw=positions, ty=2 * k_in)
    return out, terms


# --- conv_transpose -------------------------------------------------------------------------

def _transpose_kwargs(p):
    keys = ("stride", "padding", "output_padding", "dilation", "groups", "output_size", "channel_first")
    return {k: p[k] for k in keys}


def _eval_transpose(case):
    p, n = case.params, case.name
    kw = _transpose_kwargs(p)
    x, w = data_array(n, "x", p["x_shape"]), data_array(n, "w", p["w_shape"])
    op = lambda a, c: conv_transpose(a, c, **kw)      # noqa: E731  (bilinear in (x, w))
    y_shape = op(np.zeros(p["x_shape"]), np.zeros(p["w_shape"])).shape
    dy, tx, tw = data_array(n, "dy", y_shape), data_array(n, "tx", x.shape), data_array(n, "tw", w.shape)
    out = dict(x=x, w=w, dy=dy, tx=tx, tw=tw)
    c_out = p["w_shape"][-2] * p["groups"]
    yq = exact_bilinear(op, x, w)
    tyq = exact_bilinear(op, tx, w) + exact_bilinear(op, x, tw)
    out["y__absbound"] = op(np.abs(x), np.abs(w))
    out["ty__absbound"] = op(np.abs(tx), np.abs(w)) + op(np.abs(x), np.abs(tw))
    if p["bias"]:
        axis = channel_axis(p["channel_first"], len(y_shape) == len(p["w_shape"]))
        b, tb = (per_channel(data_array(n, k, (c_out,)), len(y_shape), axis) for k in ("b", "tb"))
        out.update(b=b.ravel(), tb=tb.ravel())
        yq = yq + QArray.from_float(np.broadcast_to(b, y_shape))
        tyq = tyq + QArray.from_float(np.broadcast_to(tb, y_shape))
        out["y__absbound"] = out["y__absbound"] + np.abs(b)
        out["ty__absbound"] = out["ty__absbound"] + np.abs(tb)
        reduce_axes = tuple(i for i in range(len(y_shape)) if i != axis % len(y_shape))
        out["db"] = QArray.from_float(dy).sum(axis=reduce_axes).to_float()
    out["y"], out["ty"] = yq.to_float(), tyq.to_float()
    _bilinear_output(out, "dx", lambda c, b: conv_transpose_vjp(x, b, c, **kw)[0], dy, w)
    _bilinear_output(out, "dw", lambda a, c: conv_transpose_vjp(a, w, c, **kw)[1], x, dy)
    k_in = int(np.prod(p["w_shape"][:-2])) * p["w_shape"][-2]
    terms = dict(y=k_in + 1, dx=int(np.prod(p["w_shape"][:-1])), dw=int(np.prod(y_shape)), ty=2 * k_in + 1)
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
    return out, {}


_EVALUATORS = {"conv": _eval_conv, "conv_transpose": _eval_transpose, "ws": _eval_ws}


def evaluate(case) -> tuple[dict, dict]:
    """``(arrays, terms)`` for a case: every stored array, and terms per output element."""
    return _EVALUATORS.get(case.suite, evaluate_layer)(case)
