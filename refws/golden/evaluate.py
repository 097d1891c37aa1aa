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
from ..arrays import from_canonical, to_canonical
from ..conv import check_conv_operands
from ..geometry import conv_geometry
from ..grads import _input_grad, _transpose_setup, _weight_grad
from ..ws import WS_PRESETS
from .exact_ws import Variant, WSBounds, channel_stats, combine_terms, ws_jvp_terms, ws_terms, ws_vjp_terms
from .layer_cases import channel_axis, evaluate_layer, per_channel
from .ozaki import ExactSum, bilinear_sums, on_grid
from .rational import QArray, grid_exponent
from .rng import data_array

__all__ = ["evaluate", "variant_of", "output_shape"]


# --- shapes and product counts from the geometry (no convolution of full-size operands) -------


def _layout(shape_cl, channel_first: bool, unbatched: bool) -> tuple:
    """A batched channels-last shape ``(N, *spatial, C)`` in the case's own layout."""
    n, *spatial, c = shape_cl
    shape = (n, c, *spatial) if channel_first else (n, *spatial, c)
    return shape[1:] if unbatched else shape


def _zeros(shape):
    return np.broadcast_to(0.0, tuple(shape))  # a view: validates shapes without allocating


def _conv_setup(p):
    x_cl, w, unbatched = check_conv_operands(
        _zeros(p["x_shape"]), _zeros(p["w_shape"]), p["groups"], p["channel_first"]
    )
    g = conv_geometry(x_cl.shape[1:-1], w.shape[:-2], p["stride"], p["padding"], p["lhs_dilation"], p["rhs_dilation"])
    return x_cl.shape, w.shape, unbatched, (x_cl.shape[0], *g.out_spatial, w.shape[-1])


def _transpose_setup_of(p):
    x_cl, w, unbatched, _, _, y_cl = _transpose_setup(
        _zeros(p["x_shape"]),
        _zeros(p["w_shape"]),
        p["stride"],
        p["padding"],
        p["output_padding"],
        p["dilation"],
        p["groups"],
        p["output_size"],
        p["channel_first"],
    )
    return x_cl.shape, w.shape, unbatched, y_cl


def output_shape(case) -> tuple:
    """Shape of the forward output of a ``conv`` or ``conv_transpose`` case, from its geometry.

    Raises the operation's own ValueError/TypeError for an impossible geometry.
    """
    p = case.params
    setup = _conv_setup if case.suite == "conv" else _transpose_setup_of
    _, _, unbatched, y_cl = setup(p)
    return _layout(y_cl, p["channel_first"], unbatched)


def _most(count, size: int, factor: int) -> int:
    """K = the largest count times ``factor`` (0 for an empty output array)."""
    return int(np.max(count, initial=0)) * factor if size else 0


def _counts(p, transposed: bool) -> dict:
    """K of ``y``, ``dx``, ``dw`` (without a bias), counted exactly: the map applied to ones.

    A count depends on the geometry only, not on the batch or channel sizes, so it is taken on
    one batch item and one channel (groups 1) and scaled: ``y`` by the channels of a group that
    one output sums over, ``dx`` by the output channels of a group, ``dw`` by the batch size.
    """
    setup = _transpose_setup_of if transposed else _conv_setup
    x_cl, w_shape, _, y_cl = setup(p)
    ones_x = np.ones((1, *x_cl[1:-1], 1))
    ones_w = np.ones((*w_shape[:-2], 1, 1))
    if transposed:
        kw = dict(
            stride=p["stride"],
            padding=p["padding"],
            output_padding=p["output_padding"],
            dilation=p["dilation"],
            groups=1,
            channel_first=False,
            output_size=None if p["output_size"] is None else list(p["output_size"])[-(len(x_cl) - 2) :],
        )
        y1 = conv_transpose(ones_x, ones_w, **kw)
        dx1, dw1 = conv_transpose_vjp(ones_x, ones_w, np.ones_like(y1), **kw)[:2]
        per_y, per_dx = w_shape[-1] // p["groups"], w_shape[-2]
    else:
        kw = dict(
            stride=p["stride"],
            padding=p["padding"],
            lhs_dilation=p["lhs_dilation"],
            rhs_dilation=p["rhs_dilation"],
            groups=1,
            channel_first=False,
        )
        y1 = conv_fn(ones_x, ones_w, **kw)
        dx1, dw1 = conv_vjp(ones_x, ones_w, np.ones_like(y1), **kw)
        per_y, per_dx = w_shape[-2], w_shape[-1] // p["groups"]
    y_size, x_size, w_size = (int(np.prod(s)) for s in (y_cl, x_cl, w_shape))
    return dict(
        y=_most(y1, y_size, per_y), dx=_most(dx1, x_size * y_size, per_dx), dw=_most(dw1, w_size * y_size, x_cl[0])
    )


# --- bilinear outputs -------------------------------------------------------------------------


def _bilinear_output(
    out: dict, terms: dict, name: str, pieces, count: int, bias=None, splits=None, per_op: int | None = None
) -> None:
    """Store ``out[name] = sum of op(a, b) over pieces (+ bias)``, exactly, with its bound data.

    Every ``op(a, b)`` is summed without rounding (:func:`refws.golden.ozaki.bilinear_sums`: the
    no-rounding bound is checked for every partial, and 24-bit operands are split into 12-bit
    pieces) and rounded once to nearest. ``terms[name] = count`` = K, the largest number of
    products summed into one element (``+ 1`` for a bias, counted by the caller).
    ``<name>__absbound = sum op(|a|, |b|) (+ |bias|)``, exact, rounded up if it is no float64;
    stored when K > 0 (K = 0: every element is an empty sum, exactly 0). ``splits``: a dict that
    remembers the operands' splits across the outputs of one case. ``per_op``: the most products
    one ``op(a, b)`` sums into an element (default ``count``): 24-bit operands are split only as
    much as it requires.
    """
    value, mag = ExactSum(), ExactSum()
    for op, a, b in pieces:
        bilinear_sums(op, a, b, value, mag, splits, count if per_op is None else per_op)
    if bias is not None:
        value.add_float(np.broadcast_to(bias, value.shape))
        mag.add_float(np.broadcast_to(np.abs(bias), value.shape))
    out[name] = value.nearest()
    terms[name] = int(count)
    if terms[name]:
        out[name + "__absbound"] = mag.upper()


def _exact_axis_sum(a: np.ndarray, axes) -> tuple:
    """``(sum a, sum |a|)`` over ``axes``, exact, the first rounded to nearest, the second up."""
    e = grid_exponent(a)
    ints = np.ldexp(a, e)
    total, mags = ints.sum(axis=axes), np.abs(ints).sum(axis=axes)
    if np.max(mags, initial=0.0) < 2.0**53:  # every partial sum an integer below 2**53: exact
        return np.ldexp(total, -e), np.ldexp(mags, -e)
    return (QArray.from_float(a).sum(axis=axes).to_float(), QArray.from_float(np.abs(a)).sum(axis=axes).to_float_up())


def _channel_sum(out: dict, terms: dict, name: str, dy: np.ndarray, axis: int) -> None:
    """``out[name] = sum of dy over every axis but axis`` (a bias gradient), its K and absbound."""
    axes = tuple(i for i in range(dy.ndim) if i != axis % dy.ndim)
    total, mags = _exact_axis_sum(dy, axes)
    out[name] = total
    terms[name] = int(np.prod(dy.shape)) // dy.shape[axis]
    if terms[name]:
        out[name + "__absbound"] = mags


def _vjp_outputs(out: dict, terms: dict, halves, x, w, dy, k: dict, splits: dict) -> None:
    """``dx`` and ``dw`` of a VJP given as its two halves ``(dx_of(dy, w), dw_of(x, dy))``: bilinear
    in ``(dy, w)`` and ``(x, dy)``; each call computes only the half it stores."""
    dx_of, dw_of = halves
    _bilinear_output(out, terms, "dx", [(dx_of, dy, w)], k["dx"], splits=splits)
    _bilinear_output(out, terms, "dw", [(dw_of, x, dy)], k["dw"], splits=splits)


def _conv_vjp_halves(p):
    """``(dx_of(dy, w), dw_of(x, dy))`` of :func:`refws.conv_vjp` for a case's geometry, each
    computing one half (``conv_vjp`` computes both; its ``dx`` and ``dw`` are these, method auto)."""
    x_cl, w_shape, unbatched, _ = _conv_setup(p)
    g = conv_geometry(x_cl[1:-1], w_shape[:-2], p["stride"], p["padding"], p["lhs_dilation"], p["rhs_dilation"])
    groups, cf = int(p["groups"]), p["channel_first"]

    def dx_of(dy, w):
        dx = _input_grad(to_canonical(dy, cf, unbatched), w, g, groups, x_cl, "auto")
        return from_canonical(dx, cf, unbatched)

    def dw_of(x, dy):
        return _weight_grad(to_canonical(x, cf, unbatched), to_canonical(dy, cf, unbatched), g, groups, w_shape, "auto")

    return dx_of, dw_of


def _transpose_vjp_halves(p):
    """The two halves of :func:`refws.conv_transpose_vjp`, as :func:`_conv_vjp_halves`."""
    kw = _transpose_kwargs(p)
    x_cl, w, unbatched, groups, g, _ = _transpose_setup(
        _zeros(p["x_shape"]),
        _zeros(p["w_shape"]),
        kw["stride"],
        kw["padding"],
        kw["output_padding"],
        kw["dilation"],
        kw["groups"],
        kw["output_size"],
        kw["channel_first"],
    )
    cf = p["channel_first"]

    def dx_of(dy, w):
        return from_canonical(
            conv_fn(
                to_canonical(dy, cf, unbatched),
                w,
                stride=g.stride,
                padding=g.padding,
                rhs_dilation=g.rhs_dilation,
                groups=groups,
            ),
            cf,
            unbatched,
        )

    def dw_of(x, dy):
        return _weight_grad(to_canonical(dy, cf, unbatched), to_canonical(x, cf, unbatched), g, groups, w.shape, "auto")

    return dx_of, dw_of


def _operand(case, splits: dict, array: str, shape) -> np.ndarray:
    """The case's grid operand ``array``, recorded in ``splits`` as on its grid: generated as
    integers times ``2**-exponent``, so its split needs no pass over it (:func:`on_grid`)."""
    grid = case.grid
    return on_grid(splits, grid.values(case.name, array, shape), grid.exponent, grid.top)


# --- conv -----------------------------------------------------------------------------------


def _conv_kwargs(p):
    return {k: p[k] for k in ("stride", "padding", "lhs_dilation", "rhs_dilation", "groups", "channel_first")}


def _eval_conv(case):
    p = case.params
    kw = _conv_kwargs(p)
    splits = {}
    x, w = _operand(case, splits, "x", p["x_shape"]), _operand(case, splits, "w", p["w_shape"])
    y_shape, k = output_shape(case), _counts(p, transposed=False)
    out, terms = dict(x=x, w=w), {}

    def op(a, b):
        return conv_fn(a, b, **kw)

    _bilinear_output(out, terms, "y", [(op, x, w)], k["y"], splits=splits)
    if case.stores("vjp"):
        dy = out["dy"] = _operand(case, splits, "dy", y_shape)
        _vjp_outputs(out, terms, _conv_vjp_halves(p), x, w, dy, k, splits)
    if case.stores("jvp"):
        tx, tw = out["tx"], out["tw"] = _operand(case, splits, "tx", x.shape), _operand(case, splits, "tw", w.shape)
        _bilinear_output(out, terms, "ty", [(op, tx, w), (op, x, tw)], 2 * k["y"], splits=splits, per_op=k["y"])
    return out, terms


# --- conv_transpose -------------------------------------------------------------------------


def _transpose_kwargs(p):
    keys = ("stride", "padding", "output_padding", "dilation", "groups", "output_size", "channel_first")
    return {k: p[k] for k in keys}


def _eval_transpose(case):
    """Kernel layout ``(*kernel, C_out/groups, C_in)``: an element of ``y`` sums ``taps * C_in/groups``
    products at most (plus the bias)."""
    p, n, grid = case.params, case.name, case.grid
    kw = _transpose_kwargs(p)
    splits = {}
    x, w = _operand(case, splits, "x", p["x_shape"]), _operand(case, splits, "w", p["w_shape"])

    def op(a, c):  # bilinear in (x, w)
        return conv_transpose(a, c, **kw)

    y_shape, k = output_shape(case), _counts(p, transposed=True)
    out, terms = dict(x=x, w=w), {}
    c_out = p["w_shape"][-2] * p["groups"]
    b = tb = None
    has_bias = 1 if p["bias"] else 0
    axis = channel_axis(p["channel_first"], len(y_shape) == len(p["w_shape"]))
    if p["bias"]:
        b = per_channel(grid.values(n, "b", (c_out,)), len(y_shape), axis)
        out["b"] = b.ravel()
    nonempty = 1 if int(np.prod(y_shape)) else 0  # a bias is one more product, where there are elements
    _bilinear_output(out, terms, "y", [(op, x, w)], (k["y"] + has_bias) * nonempty, b, splits)
    if case.stores("vjp"):
        dy = out["dy"] = _operand(case, splits, "dy", y_shape)
        if p["bias"]:
            _channel_sum(out, terms, "db", dy, axis)
        _vjp_outputs(out, terms, _transpose_vjp_halves(p), x, w, dy, k, splits)
    if case.stores("jvp"):
        tx, tw = out["tx"], out["tw"] = _operand(case, splits, "tx", x.shape), _operand(case, splits, "tw", w.shape)
        if p["bias"]:
            tb = per_channel(grid.values(n, "tb", (c_out,)), len(y_shape), axis)
            out["tb"] = tb.ravel()
        ty_count = (2 * k["y"] + has_bias) * nonempty
        _bilinear_output(out, terms, "ty", [(op, tx, w), (op, x, tw)], ty_count, tb, splits, per_op=k["y"])
    return out, terms


# --- weight standardization -----------------------------------------------------------------


def variant_of(spec, eps=None) -> Variant:
    """The exact-arithmetic description of a :class:`refws.WSSpec` (or preset name)."""
    spec = WS_PRESETS[spec] if isinstance(spec, str) else spec
    gamma = getattr(spec, "fixed_scale", None)
    return Variant(
        ddof=spec.ddof, denominator=spec.denominator, fan=spec.fan, eps=spec.eps if eps is None else eps, gamma=gamma
    )


def _ws_weights(name, shape, regime, grid):
    if regime == "constant":
        return np.full(tuple(shape), 0.375)
    if regime == "tiny":  # var * N far below every preset's eps: the clamp is active
        return data_array(name, "w", shape, -4, 4, 20)
    return grid.values(name, "w", shape)


def _eval_ws(case):
    p, n, grid = case.params, case.name, case.grid
    axis = p["out_axis"]
    w = _ws_weights(n, p["w_shape"], p["regime"], grid)
    c_out = w.shape[axis]
    gain_shape = [1] * w.ndim
    gain_shape[axis] = c_out
    gain = grid.gains(n, "gain", gain_shape) if p["gain"] else None
    v = variant_of(p["spec"], p["eps"])
    st = channel_stats(w, v, axis)
    out = dict(w=w)
    if gain is not None:
        out["gain"] = gain
    terms, _ = ws_terms(w, st, gain, axis)
    out["w_hat"] = combine_terms(terms, axis).to_float()
    bounds = WSBounds(w, st, v, gain, axis)
    out["w_hat__wsbound"] = bounds.forward()
    if case.stores("vjp"):
        dw_hat = out["dw_hat"] = grid.values(n, "dw_hat", w.shape)
        vterms, dgain = ws_vjp_terms(w, dw_hat, st, gain, axis)
        out["dw"] = combine_terms(vterms, axis).to_float()
        out["dw__wsbound"], dgain_ws = bounds.vjp(dw_hat)
        if gain is not None:
            out["dgain"] = np.array([float(d) for d in dgain]).reshape(gain.shape)
            out["dgain__wsbound"] = dgain_ws.reshape(gain.shape)
    if case.stores("jvp"):
        tw = out["tw"] = grid.values(n, "tw", w.shape)
        tgain = None
        if gain is not None:
            tgain = out["tgain"] = grid.values(n, "tgain", gain.shape)
        out["tw_hat"] = combine_terms(ws_jvp_terms(w, tw, st, gain, tgain, axis), axis).to_float()
        out["tw_hat__wsbound"] = bounds.jvp(tw, tgain)
    # no bilinear part: every error of these outputs is in their wsbound
    return out, {k: 0 for k in ("w_hat", "dw", "dgain", "tw_hat") if k in out}


_EVALUATORS = {"conv": _eval_conv, "conv_transpose": _eval_transpose, "ws": _eval_ws}


def evaluate(case) -> tuple[dict, dict]:
    """``(arrays, terms)`` for a case: every stored array, and terms per output element."""
    return _EVALUATORS.get(case.suite, evaluate_layer)(case)
