"""Golden cases of the layer mirrors (suites ``brainstate`` and ``elektronn3``).

A layer is evaluated here from its definition, not by calling the mirrors' forward or vjp in
:mod:`refws.nn` (only PyTorch's padding rule and weight layout, ``torch_pads`` and ``to_hwio``, are shared):
its *core* is a map bilinear in ``(x, W)`` (a convolution with the library's layouts and padding,
a transposed convolution, a matrix product), and its effective weight is
``W = mask * WS(weight, gain)`` (or ``mask * weight`` without standardization). Since WS is an
affine form per channel (:mod:`refws.golden.exact_ws`), every output is a sum of exact bilinear
pieces times exact rational coefficients, rounded once. The spec tests check that the mirrors
in :mod:`refws.nn` reproduce these values.
"""

from __future__ import annotations

from dataclasses import dataclass
from collections.abc import Callable

import numpy as np

from .. import conv as conv_fn
from .. import conv_transpose, conv_transpose_lax, conv_transpose_lax_vjp, conv_transpose_vjp, conv_vjp
from ..arrays import from_canonical, to_canonical
from ..geometry import as_int_tuple
from ..nn.brainstate import flip_swap_io
from ..nn.elektronn3 import from_hwio, to_hwio, torch_pads
from ..pad import pad as pad_fn
from ..pad import pad_vjp
from .case import Case
from .exact_ws import Variant, WSBounds, channel_stats, combine_terms, ws_jvp_terms, ws_terms, ws_vjp_terms
from .ozaki import exact_parts, round_up_sum
from .rational import QArray, bilinear_upper, exact_bilinear, sum_up
from .rng import grid_ints, seed_of

__all__ = ["layer_entries", "evaluate_layer", "LayerMath", "layer_math", "channel_axis", "per_channel"]


# --- the catalog ----------------------------------------------------------------------------

def _bs(name, cls, x_shape, mask=False, **kwargs):
    """A catalog entry (the data model of a catalog file, :mod:`refws.golden.catalog_file`)."""
    return dict(suite="brainstate", name=name, cls=cls, x_shape=list(x_shape), mask=mask, **kwargs)


def _e3(name, cls, x_shape, output_size=None, **kwargs):
    entry = dict(suite="elektronn3", name=name, cls=cls, x_shape=list(x_shape), **kwargs)
    if output_size is not None:
        entry["output_size"] = output_size
    return entry


def _brainstate_transpose_cases() -> list:
    """brainstate ConvTranspose1d/2d/3d: strides 1-3, SAME / VALID / explicit pads (negative too),
    rhs dilation, groups, mask, bias, channel_first, unbatched."""
    def ct(name, nd, x_shape, mask=False, **kw):
        return _bs(f"ConvTranspose{nd}d_{name}", f"ConvTranspose{nd}d", x_shape, mask=mask, **kw)
    c1, c2, c3 = (dict(in_size=list(sp) + [4], out_channels=6, kernel_size=3) for sp in ((5,), (4, 3), (3, 2, 3)))
    return [
        ct("default", 1, (2, 5, 4), **c1),
        ct("s2_valid_bias", 1, (2, 5, 4), b_init=True, **dict(c1, stride=2, padding="VALID")),
        ct("s3_lohi_rhs2_mask", 1, (2, 5, 4), mask=True, **dict(c1, stride=3, padding=[1, 2], rhs_dilation=2)),
        ct("default", 2, (2, 4, 3, 4), **c2),
        ct("s2_same_groups2_bias", 2, (2, 4, 3, 4), b_init=True, **dict(c2, stride=2, groups=2)),
        ct("s3_valid_rhs2", 2, (1, 4, 3, 4), **dict(c2, stride=3, padding="VALID", rhs_dilation=2)),
        ct("pairs_neg_mask", 2, (2, 4, 3, 4), mask=True, **dict(c2, stride=[2, 1], padding=[[2, -1], [2, 0]])),
        ct("channel_first", 2, (2, 4, 4, 3), b_init=True, mask=True,
           **dict(c2, in_size=[4, 4, 3], channel_first=True, stride=2, kernel_size=[3, 2])),
        ct("unbatched_int_pad", 2, (4, 3, 4), b_init=True, **dict(c2, stride=2, padding=1)),
        ct("s2_same_bias_mask", 3, (1, 3, 2, 3, 4), b_init=True, mask=True, **dict(c3, stride=2)),
        ct("s3_valid_groups2_channel_first", 3, (1, 4, 3, 2, 3), b_init=True,
           **dict(c3, in_size=[4, 3, 2, 3], channel_first=True, stride=3, padding="VALID", groups=2, kernel_size=2)),
        ct("aniso_pairs_rhs", 3, (1, 3, 2, 3, 4),
           **dict(c3, stride=[1, 2, 3], padding=[[0, 1], [1, 1], [2, 0]], rhs_dilation=[1, 1, 2], kernel_size=2)),
    ]


def layer_entries() -> list:
    """The built-in catalog's entries of the layer suites."""
    out = []
    spatial = {1: (9,), 2: (6, 5), 3: (4, 3, 4)}
    for nd, sp in spatial.items():
        in_size = [*sp, 4]
        for ws in (False, True):
            cls = f"{'ScaledWS' if ws else ''}Conv{nd}d"
            base = dict(in_size=in_size, out_channels=6, kernel_size=3)
            out.append(_bs(f"{cls}_default", cls, (2, *sp, 4), **base))
            out.append(_bs(f"{cls}_bias_mask", cls, (2, *sp, 4), mask=True, b_init=True, **base))
            out.append(_bs(f"{cls}_groups_stride", cls, (2, *sp, 4), b_init=True,
                           **dict(base, groups=2, stride=2, padding="VALID")))
            out.append(_bs(f"{cls}_channel_first", cls, (2, 4, *sp), b_init=True,
                           **dict(base, in_size=[4, *sp], channel_first=True, rhs_dilation=2)))
            out.append(_bs(f"{cls}_unbatched", cls, (*sp, 4), b_init=True, **dict(base, padding=1)))
            if ws:
                out.append(_bs(f"{cls}_no_gain", cls, (2, *sp, 4), **dict(base, ws_gain=False)))
                out.append(_bs(f"{cls}_eps_1e-2_mask", cls, (2, *sp, 4), mask=True, **dict(base, eps=1e-2)))
    out.append(_bs("Conv2d_lhs_dilation_pairs", "Conv2d", (1, 5, 4, 4), b_init=True,
                   in_size=[5, 4, 4], out_channels=3, kernel_size=[3, 2], lhs_dilation=2,
                   padding=[[1, 2], [0, -1]]))
    out.append(_bs("ScaledWSConv2d_channel_first_unbatched", "ScaledWSConv2d", (4, 6, 5), b_init=True, mask=True,
                   in_size=[4, 6, 5], out_channels=6, kernel_size=3, channel_first=True))
    for cls in ("Linear", "ScaledWSLinear"):
        out.append(_bs(f"{cls}_default", cls, (3, 5), in_size=5, out_size=4))
        out.append(_bs(f"{cls}_mask", cls, (3, 5), mask=True, in_size=5, out_size=4))
        out.append(_bs(f"{cls}_batch_dims", cls, (2, 3, 5), in_size=5, out_size=4))
    out.append(_bs("ScaledWSLinear_no_gain", "ScaledWSLinear", (3, 5), in_size=5, out_size=4, ws_gain=False))
    out.append(_bs("Linear_no_bias", "Linear", (3, 5), in_size=5, out_size=4, b_init=False))
    out.extend(_brainstate_transpose_cases())

    for nd, sp in spatial.items():
        cls = f"WSConv{nd}d"
        base = dict(in_channels=4, out_channels=6, kernel_size=3)
        out.append(_e3(f"{cls}_default", cls, (2, 4, *sp), **base))
        out.append(_e3(f"{cls}_same_dilation", cls, (2, 4, *sp), **dict(base, padding="same", dilation=2)))
        out.append(_e3(f"{cls}_valid_stride_groups", cls, (2, 4, *sp),
                       **dict(base, padding="valid", stride=2, groups=2, bias=False)))
        for mode in ("reflect", "replicate", "circular"):
            out.append(_e3(f"{cls}_{mode}", cls, (2, 4, *sp), **dict(base, padding=1, padding_mode=mode)))
    for nd, sp in ((2, (4, 3)), (3, (3, 2, 3))):
        cls = f"WSConvTranspose{nd}d"
        base = dict(in_channels=4, out_channels=6, kernel_size=3)
        out.append(_e3(f"{cls}_default", cls, (2, 4, *sp), **base))
        out.append(_e3(f"{cls}_stride_output_padding", cls, (2, 4, *sp),
                       **dict(base, stride=2, padding=1, output_padding=1)))
        out.append(_e3(f"{cls}_groups_dilation_no_bias", cls, (1, 4, *sp),
                       **dict(base, groups=2, dilation=2, bias=False)))
        sizes = [(n - 1) * 2 - 2 + 3 for n in sp]
        out.append(_e3(f"{cls}_output_size", cls, (2, 4, *sp), output_size=[s + 1 for s in sizes],
                       **dict(base, stride=2, padding=1)))
    return out


# --- what each layer computes ---------------------------------------------------------------

@dataclass
class LayerMath:
    """A layer as ``y = core(x, W) + bias`` with ``W = mask * WS(weight, gain)``."""

    core: Callable            # (x, W) -> y, bilinear
    core_vjp: Callable        # (x, W, dy) -> (dx, dW)
    weight_shape: tuple
    ws_axis: int              # the axis WS keeps (its "output channel" axis)
    variant: Variant | None   # None: no standardization
    gain_shape: tuple | None
    bias_shape: tuple | None
    channel_axis: int         # channel axis of y (where the bias goes)
    terms: int                # products summed per output element of core by its definition (all taps, no bias);
                              # informational: the manifest's ``terms`` are counted (core applied to ones)


def _brainstate(p) -> LayerMath:
    cls, kw = p["cls"], p["kwargs"]
    eps = kw.get("eps", 1e-4)
    variant = Variant(0, "max_var_n", "fan_in", eps) if cls.startswith("ScaledWS") else None
    ws_gain = variant is not None and kw.get("ws_gain", True)
    if cls.endswith("Linear"):
        n_in, n_out = kw["in_size"], kw["out_size"]
        has_bias = kw.get("b_init", True)      # brainstate's Linear layers default to ZeroInit bias

        def core(x, w):
            return x @ w

        def core_vjp(x, w, dy):
            return dy @ w.T, x.reshape(-1, n_in).T @ dy.reshape(-1, n_out)
        return LayerMath(core, core_vjp, (n_in, n_out), -1, variant, (1, n_out) if ws_gain else None,
                         (n_out,) if has_bias else None, -1, n_in)
    nd = int(cls[-2])
    if cls.startswith("ConvTranspose"):
        return _brainstate_transpose(p, nd)
    cf = kw.get("channel_first", False)
    c_in = kw["in_size"][0] if cf else kw["in_size"][-1]
    groups, c_out = kw.get("groups", 1), kw["out_channels"]
    k = as_int_tuple(kw["kernel_size"], nd, "kernel_size")
    args = dict(stride=kw.get("stride", 1), padding=kw.get("padding", "SAME"),
                lhs_dilation=kw.get("lhs_dilation", 1), rhs_dilation=kw.get("rhs_dilation", 1),
                groups=groups, channel_first=cf)
    batched = len(p["x_shape"]) == nd + 2
    bias_shape = ((1, c_out) + (1,) * nd if cf else (1,) * nd + (c_out,)) if kw.get("b_init") else None
    return LayerMath(lambda x, w: conv_fn(x, w, **args), lambda x, w, dy: conv_vjp(x, w, dy, **args),
                     (*k, c_in // groups, c_out), -1, variant, (1,) * (nd + 1) + (c_out,) if ws_gain else None,
                     bias_shape, (1 if batched else 0) if cf else -1, int(np.prod(k)) * (c_in // groups))


def _brainstate_transpose(p, nd) -> LayerMath:
    """brainstate ConvTranspose: ``conv_transpose_lax(x, flip_swap_io(W), stride, padding, rhs_dilation,
    groups)``, weight ``(*k, C_out, C_in // groups)``, no WS; bias and channel axis as for Conv."""
    kw = p["kwargs"]
    cf = kw.get("channel_first", False)
    c_in = kw["in_size"][0] if cf else kw["in_size"][-1]
    groups, c_out = kw.get("groups", 1), kw["out_channels"]
    k = as_int_tuple(kw["kernel_size"], nd, "kernel_size")
    args = dict(strides=kw.get("stride", 1), padding=kw.get("padding", "SAME"), rhs_dilation=kw.get("rhs_dilation", 1),
                groups=groups, channel_first=cf)

    def core_vjp(x, w, dy):
        dx, dw = conv_transpose_lax_vjp(x, flip_swap_io(w), dy, **args)
        return dx, flip_swap_io(dw)
    batched = len(p["x_shape"]) == nd + 2
    bias_shape = ((1, c_out) + (1,) * nd if cf else (1,) * nd + (c_out,)) if kw.get("b_init") else None
    return LayerMath(lambda x, w: conv_transpose_lax(x, flip_swap_io(w), **args), core_vjp,
                     (*k, c_out, c_in // groups), -2, None, None, bias_shape,
                     (1 if batched else 0) if cf else -1, int(np.prod(k)) * (c_in // groups))


def _elektronn3(p) -> LayerMath:
    cls, kw = p["cls"], p["kwargs"]
    nd = int(cls[-2])
    c_in, c_out, groups = kw["in_channels"], kw["out_channels"], kw.get("groups", 1)
    k = as_int_tuple(kw["kernel_size"], nd, "kernel_size")
    stride = as_int_tuple(kw.get("stride", 1), nd, "stride")
    dilation = as_int_tuple(kw.get("dilation", 1), nd, "dilation")
    variant = Variant(1, "max_var_n", "numel", 1e-4)
    bias_shape = (c_out,) if kw.get("bias", True) else None

    def to_cl(a):                            # NCHW <-> channels-last, batched
        return to_canonical(a, True, False)

    def from_cl(a):
        return from_canonical(a, True, False)
    if cls.startswith("WSConvTranspose"):
        args = dict(stride=stride, padding=as_int_tuple(kw.get("padding", 0), nd, "padding", minimum=0),
                    output_padding=as_int_tuple(kw.get("output_padding", 0), nd, "output_padding", minimum=0),
                    dilation=dilation, groups=groups,
                    output_size=p.get("output_size"))

        def transposed_core(x, w):           # w: (C_in, C_out/groups, *k) -> (*k, C_out/groups, C_in)
            return from_cl(conv_transpose(to_cl(x), to_hwio(w), **args))

        def transposed_core_vjp(x, w, dy):
            dx, dw = conv_transpose_vjp(to_cl(x), to_hwio(w), to_cl(dy), **args)
            return from_cl(dx), from_hwio(dw)
        return LayerMath(transposed_core, transposed_core_vjp, (c_in, c_out // groups, *k), 0, variant, (c_in,),
                         bias_shape, 1, int(np.prod(k)) * (c_in // groups))    # y sums taps * C_in/groups products
    pads = torch_pads(kw.get("padding", 0), k, stride, dilation)
    mode = kw.get("padding_mode", "zeros")
    conv_args = dict(stride=stride, rhs_dilation=dilation, groups=groups)

    def padded(x):                           # torch pads NCHW's trailing (spatial) axes
        return (to_cl(x), pads) if mode == "zeros" else (to_cl(pad_fn(x, pads, mode)), [(0, 0)] * nd)

    def core(x, w):
        xp, conv_pads = padded(x)
        return from_cl(conv_fn(xp, to_hwio(w), padding=conv_pads, **conv_args))

    def core_vjp(x, w, dy):
        xp, conv_pads = padded(x)
        dxp, dw = conv_vjp(xp, to_hwio(w), to_cl(dy), padding=conv_pads, **conv_args)
        dx = from_cl(dxp) if mode == "zeros" else pad_vjp(from_cl(dxp), pads, mode)
        return dx, from_hwio(dw)
    return LayerMath(core, core_vjp, (c_out, c_in // groups, *k), 0, variant, (c_out,), bias_shape, 1,
                     int(np.prod(k)) * (c_in // groups))


def layer_math(params: dict) -> LayerMath:
    return {"brainstate": _brainstate, "elektronn3": _elektronn3}[params["library"]](params)


# --- exact evaluation -----------------------------------------------------------------------

def channel_axis(channel_first: bool, batched: bool) -> int:
    """Index of the channel axis of an input-like or output-like array."""
    return (1 if batched else 0) if channel_first else -1


def per_channel(b: np.ndarray, ndim: int, axis: int) -> np.ndarray:
    """View a per-channel vector so that it broadcasts along ``axis`` of an ``ndim``-array."""
    shape = [1] * ndim
    shape[axis] = -1
    return b.reshape(shape)


def _channel_pieces(grid: np.ndarray, axis: int):
    """``grid`` split into one array per index along ``axis`` (zeros elsewhere)."""
    for c in range(grid.shape[axis]):
        piece = np.zeros_like(grid)
        sel: list[slice | int] = [slice(None)] * grid.ndim
        sel[axis] = c
        piece[tuple(sel)] = grid[tuple(sel)]
        yield c, piece


def _apply_terms(op, operand, terms, axis, mask) -> QArray:
    """``op(operand, sum_k coef_k[c] * mask * G_k)`` exactly: one exact bilinear call per (k, c)."""
    total = None
    for coefs, grid in terms:
        masked = grid * mask if mask is not None else grid
        for c, piece in _channel_pieces(masked, axis):
            if coefs[c] == 0 or not piece.any():
                continue
            q = exact_bilinear(op, operand, piece).scale(coefs[c])
            total = q if total is None else total + q
    if total is None:
        shape = np.shape(op(np.zeros_like(operand), np.zeros_like(terms[0][1])))
        total = QArray(np.zeros(shape, dtype=np.int64).astype(object), 1)
    return total


def _plain_terms(w, axis):
    return [([1] * w.shape[axis], w)]


def _most(count) -> int:
    """K: the largest number of products in one element (``count`` = the op applied to ones)."""
    return int(np.max(count, initial=0))


def _masked(a, mask):
    return a if mask is None else a * mask


def _effective_q(terms, axis, mask) -> QArray:
    """``mask * sum_k coef_k[c] G_k`` exactly: the effective kernel (or its tangent)."""
    q = combine_terms(terms, axis)
    return q if mask is None else q * QArray.from_float(mask)


def evaluate_layer(case: Case) -> tuple[dict[str, np.ndarray], dict[str, int]]:
    """Every stored array of a layer case and its ``terms`` (see docs/golden-format.md).

    Bound data (``W = mask * WS(weight, gain)``, ``|W|`` its exact magnitude rounded up, ``g =
    mask * core_vjp_W(x, dy)`` the bilinear weight gradient, ``J`` the Jacobian of WS):

    - ``y__absbound = core(|x|, |W|) + |bias|``, ``dx__absbound = core_vjp_x(|dy|, |W|)``,
      ``ty__absbound = core(|tx|, |W|) + core(|x|, |tW|) + |tbias|``, ``dbias__absbound = sum |dy|``;
    - ``dweight__absbound = A(mask * core_vjp_W(|x|, |dy|))`` (:meth:`WSBounds.magnitude_vjp`; without
      WS the bilinear magnitude itself), ``dgain__absbound = |F| / sigma * sum |d| (that magnitude)``;
    - WS layers: ``y__wsbound = core(|x|, mask * B)``, ``dx__wsbound = core_vjp_x(|dy|, mask * B)``,
      ``ty__wsbound = core(|tx|, mask * B) + core(|x|, mask * B_t)`` with ``B``, ``B_t`` the first-order
      bounds of :class:`WSBounds` for ``w_hat`` and its JVP; ``dweight__wsbound`` and ``dgain__wsbound``
      from :meth:`WSBounds.vjp` at the exact ``g``.

    The cores of magnitudes are evaluated exactly (:func:`bilinear_upper`), so every bound array
    is reproducible byte for byte. ``terms``: the largest count of core products in one element
    (the core applied to ones), ``+ 1`` for a bias; ``2x`` for ``ty``; for ``dbias`` the number of
    ``dy`` elements per channel; ``dgain`` counts the products of ``g``.
    """
    p, n, grid = case.params, case.name, case.grid
    m = layer_math(p)
    x = grid.values(n, "x", p["x_shape"])
    w = grid.values(n, "weight", m.weight_shape)
    mask = grid_ints(seed_of(n, "w_mask"), m.weight_shape, 0, 1).astype(np.float64) if p["mask"] else None
    gain = grid.gains(n, "gain", m.gain_shape) if m.gain_shape else None
    y_shape = m.core(np.zeros(x.shape), np.zeros(w.shape)).shape
    arrays = dict(x=x, weight=w)
    if mask is not None:
        arrays["w_mask"] = mask
    if gain is not None:
        arrays["gain"] = gain
    if m.bias_shape:
        arrays["bias"] = grid.values(n, "bias", m.bias_shape)
    differentiable = [k for k in ("x", "weight", "bias", "gain") if k in arrays]
    has_bias = 1 if m.bias_shape else 0

    def bias_col(b):
        return np.broadcast_to(per_channel(b.ravel(), len(y_shape), m.channel_axis), y_shape)

    def bias_q(b):
        return QArray.from_float(bias_col(b))

    def core_x(c, W):                        # dx as a bilinear map of (dy, W)
        return m.core_vjp(x, W, c)[0]

    def core_w(a, c):                        # the kernel gradient as a bilinear map of (x, dy)
        return m.core_vjp(a, w, c)[1]

    st = channel_stats(w, m.variant, m.ws_axis) if m.variant else None
    bounds = WSBounds(w, st, m.variant, gain, m.ws_axis) if st and m.variant else None
    terms = ws_terms(w, st, gain, m.ws_axis)[0] if st else _plain_terms(w, m.ws_axis)
    w_mag = _effective_q(terms, m.ws_axis, mask).abs().to_float_up(strict=st is not None)
    ws_w = _masked(bounds.forward(), mask) if bounds else None
    count_y = m.core(np.ones(x.shape), np.ones(w.shape))
    k = dict(y=_most(count_y) + has_bias)

    # forward
    yq = _apply_terms(m.core, x, terms, m.ws_axis, mask)
    out = dict(arrays)
    y_mag = [bilinear_upper(m.core, x, w_mag)]
    if m.bias_shape:
        yq = yq + bias_q(arrays["bias"])
        y_mag.append(np.abs(bias_col(arrays["bias"])))
    out["y"], out["y__absbound"] = yq.to_float(), sum_up(*y_mag)
    if bounds:
        assert ws_w is not None                  # both set with WS
        out["y__wsbound"] = bilinear_upper(m.core, x, ws_w)

    # VJP
    if case.stores("vjp"):
        dy = out["dy"] = grid.values(n, "dy", y_shape)
        count_dx, count_dw = m.core_vjp(np.ones(x.shape), np.ones(w.shape), np.ones(y_shape))
        k.update(dx=_most(count_dx), dweight=_most(count_dw))
        out["dx"] = _apply_terms(core_x, dy, terms, m.ws_axis, mask).to_float()
        out["dx__absbound"] = bilinear_upper(core_x, dy, w_mag)
        if bounds:
            assert ws_w is not None
            out["dx__wsbound"] = bilinear_upper(core_x, dy, ws_w)
        # g = mask * core_vjp_W(x, dy) as exact parts (one part unless 24-bit operands were split), so
        # that J^T g below is of the exact g; g_mag = mask * core_vjp_W(|x|, |dy|), exact or rounded up
        g_parts = [_masked(part, mask) for part in exact_parts(core_w, x, dy)]
        g = _masked(exact_bilinear(core_w, x, dy).to_float(), mask)
        g_mag = _masked(round_up_sum(core_w, x, dy), mask)
        if st:
            assert bounds is not None                # set with st
            vterms, dgain = [], None
            for part in g_parts:
                part_terms, part_gain = ws_vjp_terms(w, part, st, gain, m.ws_axis)
                vterms += part_terms
                dgain = part_gain if dgain is None else [a + b for a, b in zip(dgain, part_gain)]
            out["dweight"] = combine_terms(vterms, m.ws_axis).to_float()
            out["dweight__absbound"], gain_mag = bounds.magnitude_vjp(g_mag)
            out["dweight__wsbound"], gain_ws = bounds.vjp(g)
            if gain is not None:
                assert dgain is not None             # at least one part
                out["dgain"] = np.array([float(v) for v in dgain]).reshape(gain.shape)
                out["dgain__absbound"] = gain_mag.reshape(gain.shape)
                out["dgain__wsbound"] = gain_ws.reshape(gain.shape)
                k["dgain"] = k["dweight"]
        else:
            out["dweight"], out["dweight__absbound"] = g, g_mag
        if m.bias_shape:
            axes = tuple(i for i in range(len(y_shape)) if i != m.channel_axis % len(y_shape))
            out["dbias"] = QArray.from_float(dy).sum(axis=axes).to_float().reshape(m.bias_shape)
            out["dbias__absbound"] = QArray.from_float(np.abs(dy)).sum(axis=axes).to_float_up().reshape(m.bias_shape)
            k["dbias"] = int(np.prod(y_shape)) // y_shape[m.channel_axis]

    # JVP
    if case.stores("jvp"):
        tangents = {k_: grid.values(n, "t" + k_, arrays[k_].shape) for k_ in differentiable}
        out.update({"t" + k_: v for k_, v in tangents.items()})
        k["ty"] = 2 * _most(count_y) + has_bias
        tyq = _apply_terms(m.core, tangents["x"], terms, m.ws_axis, mask)
        tw = tangents["weight"]
        tterms = (ws_jvp_terms(w, tw, st, gain, tangents.get("gain"), m.ws_axis) if st
                  else _plain_terms(tw, m.ws_axis))
        tyq = tyq + _apply_terms(m.core, x, tterms, m.ws_axis, mask)
        t_mag = _effective_q(tterms, m.ws_axis, mask).abs().to_float_up(strict=st is not None)
        ty_mag = [bilinear_upper(m.core, tangents["x"], w_mag), bilinear_upper(m.core, x, t_mag)]
        if m.bias_shape:
            tyq = tyq + bias_q(tangents["bias"])
            ty_mag.append(np.abs(bias_col(tangents["bias"])))
        out["ty"], out["ty__absbound"] = tyq.to_float(), sum_up(*ty_mag)
        if bounds:
            assert ws_w is not None
            ws_t = _masked(bounds.jvp(tw, tangents.get("gain")), mask)
            out["ty__wsbound"] = sum_up(bilinear_upper(m.core, tangents["x"], ws_w), bilinear_upper(m.core, x, ws_t))
    return out, k
