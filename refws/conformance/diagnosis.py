"""Diagnosis: when a backend's array fails, which near-miss convention does it implement?

Most convolution bugs are convention slips: a flipped kernel, SAME's odd pad on the wrong side,
interleaved groups, ``output_padding`` read as zero-fill. Each slip is a refws computation with
changed arguments, so refws can compute exactly what a backend with that slip returns and check
the backend against it. :data:`VARIANTS` is the one table of those near-miss variants (documented
in docs/conformance.md, section *Diagnosis*); :data:`PAIRS` lists the double slips tried when no
single variant explains a failure. :func:`diagnose` is the runner's hook
(:func:`refws.conformance.run` calls it for failing arrays only).

How a variant is computed
-------------------------
A convolution-like case is a *problem* (:class:`ConvProblem`)::

    y = Y(conv(X(x), W(w), stride, padding, lhs_dilation, rhs_dilation, groups)) + bias_scale * b

with ``X``, ``W``, ``Y`` chains of index maps (flips, axis swaps, channel permutations,
reshapes, zero padding: each output element is one input element or a zero). The transposed
convolution is the same form: the input dilated by the stride, the kernel flipped with its
in/out channels swapped per group, pads ``d(k - 1) - p`` and ``d(k - 1) - p + output_padding``.
A variant maps a problem to a changed problem; the derivatives follow from the changed forward
(``dx = X^T(dx_inner)``, ``dw = W^T(dw_inner)`` of :func:`refws.conv_vjp` at ``Y^T(dy)``,
``ty`` by bilinearity), because a backend with a slip in its forward differentiates that forward.
Weight standardization variants change the :class:`refws.WSSpec` (or the gain, or the centring).

When a variant matches
----------------------
The variant value ``v`` is computed in float64 by refws. A variant matches when the backend's
array has ``v``'s shape and lies within the rigorous bound of the backend's precision around
``v``, with the bound's magnitudes and term count *of the variant* (``conv(|x|, |w|)`` evaluated
through the same variant, so a variant that reads data where the correct convolution reads
padding gets the magnitudes it needs), the stored operands (their exactness per format), and
refws's own float64 rounding of ``v`` added. For weight standardization the stored
``<array>__wsbound`` is scaled by ``max |v| / max |exact|`` where that exceeds 1 (a first-order
bound, like the stored one); without stored bound data ``(n + 4) max |v|`` stands in. A variant
whose value equals refws's correct value on the case (to float64 rounding) is not tried: it
cannot explain a failure there.

What it costs
-------------
Only what the verdicts need is computed, and what does not depend on the backend's array is
computed once per case (problems, shapes, mapped operands, bound data, values). A variant is
first screened by its output shape, from the shapes' arithmetic alone (a variant that keeps every
shape, ``Variant.keeps_shape``, is not even made for an array of another shape than refws's).
A small problem (most test cases) is then evaluated in full in one gather: its im2col columns
and one matrix product each for ``y``, ``dx`` and ``dw``, no refws.conv call; a large one is
first screened at a few elements, summed from the taps each element reads (``_screen``), and
evaluated by refws.conv only when the screen cannot tell it apart. A full value is looked at on
a few elements (the probe's points) before the whole array is compared, and its magnitudes are
computed only when neither the loose scalar bound, bit-equality nor the bound from ``|v|`` (no
larger than the one from the magnitudes: ``_magnitudes_floor``) settles the match. Every
shortcut gives the full evaluation's verdict (``spec_tests/test_diagnosis.py``); the cost on
the store's failing cases is measured by ``benchmarks/bench_diagnosis.py`` (docs/conformance.md).
"""

from __future__ import annotations

import functools
import math
import operator
from dataclasses import dataclass, field, fields, replace
from collections.abc import Callable

import numpy as np

from ..arrays import from_canonical, to_canonical
from ..conv import conv_canonical
from ..explain import explain_case
from ..geometry import ConvGeometry, as_int_tuple, conv_geometry, normalize_padding, same_pads
from ..grads import conv_vjp, dx_conv_geometry, flip_swap_kernel, input_grad_pads, transpose_geometry
from ..im2col import dilate_pad, window_view
from ..testing import golden_bound
from ..tolerance import _SLACK, Bound, element_bound, resolve_precision
from ..ws import WSSpec, resolve_spec, weight_standardize, weight_standardize_jvp, weight_standardize_vjp

__all__ = [
    "Variant",
    "VARIANTS",
    "PAIRS",
    "ConvProblem",
    "WSProblem",
    "diagnose",
    "diagnosis_text",
    "variant_value",
    "base_problem",
    "variant_geometry",
    "explain_records",
    "clear_caches",
]

_U64 = 2.0**-53


# --- index maps: data, so that problems are hashable and their adjoints are computed, not written ---


def _apply_map(m: tuple, a: np.ndarray) -> np.ndarray:
    """Apply one index map ``(kind, *args)``; every kind only moves, copies or zero-fills elements."""
    kind = m[0]
    if kind == "flip":  # ("flip", axes)
        return a[tuple(slice(None, None, -1) if i in m[1] else slice(None) for i in range(a.ndim))]
    if kind == "swapaxes":  # ("swapaxes", i, j)
        return np.swapaxes(a, m[1], m[2])
    if kind == "chan_perm":  # ("chan_perm", axis, groups): interleaved groups
        axis, groups = m[1], m[2]
        per = a.shape[axis] // groups
        return np.take(a, [c * groups + g for g in range(groups) for c in range(per)], axis=axis)
    if kind == "relayout":  # ("relayout", channel_first, batched): reshape
        cf, batched = m[1], m[2]
        lead = 1 if batched else 0
        s = a.shape
        new = s[:lead] + (s[lead + 1 :] + s[lead : lead + 1] if cf else s[-1:] + s[lead:-1])
        return a.reshape(new)
    if kind == "pad_high":  # ("pad_high", axes, amounts)
        widths = [(0, 0)] * a.ndim
        for axis, amount in zip(m[1], m[2]):
            widths[axis] = (0, amount)
        return np.pad(a, widths)
    if kind == "swap_io":  # ("swap_io", groups): in/out per group, no flip
        nd = a.ndim - 2
        return flip_swap_kernel(a, m[1])[(slice(None, None, -1),) * nd]
    if kind == "reshape_io":  # ("reshape_io", groups): PyTorch weight reshaped
        nd, groups = a.ndim - 2, m[1]
        pt = np.moveaxis(a, (-1, -2), (0, 1))  # (C_in, C_out/G, *k)
        fwd = pt.reshape(groups * a.shape[-2], a.shape[-1] // groups, *a.shape[:nd])
        return np.moveaxis(fwd, (0, 1), (-1, -2))  # (*k, C_in/G, C_out)
    raise ValueError(f"unknown index map {m!r}")


def _apply(maps: tuple, a: np.ndarray) -> np.ndarray:
    for m in maps:
        a = _apply_map(m, a)
    return a


_INDEX_CACHE: dict = {}


def _index(maps: tuple, shape: tuple) -> np.ndarray:
    """Where each element of ``_apply(maps, a)`` comes from in ``a.ravel()`` (+1; 0 = a zero)."""
    key = (maps, shape)
    if key not in _INDEX_CACHE:
        if len(_INDEX_CACHE) > 256:
            _INDEX_CACHE.clear()
        _INDEX_CACHE[key] = _apply(maps, np.arange(1, math.prod(shape) + 1, dtype=np.int64).reshape(shape))
    return _INDEX_CACHE[key]


def _adjoint(maps: tuple, shape: tuple, g: np.ndarray) -> np.ndarray | None:
    """``maps^T g`` for an input of ``shape`` (None when ``g`` does not have the mapped shape)."""
    if not maps:
        return g if g.shape == tuple(shape) else None
    idx = _index(maps, shape)
    if idx.shape != g.shape:
        return None
    keep = idx.ravel() > 0
    out = np.bincount(idx.ravel()[keep] - 1, weights=g.ravel()[keep], minlength=math.prod(shape))
    return out.reshape(shape)


def _mapped_shape(maps: tuple, shape: tuple) -> tuple:
    """The shape of ``_apply(maps, a)`` for ``a`` of ``shape``, from the shapes alone."""
    shape = tuple(shape)
    for m in maps:
        shape = _map_shape(m, shape)
    return shape


def _map_shape(m: tuple, s: tuple) -> tuple:
    """The shape after one index map (see :func:`_apply_map`)."""
    kind = m[0]
    if kind in ("flip", "chan_perm"):
        return s
    if kind == "swapaxes":
        out = list(s)
        out[m[1]], out[m[2]] = s[m[2]], s[m[1]]
        return tuple(out)
    if kind == "relayout":
        lead = 1 if m[2] else 0
        return s[:lead] + (s[lead + 1 :] + s[lead : lead + 1] if m[1] else s[-1:] + s[lead:-1])
    if kind == "pad_high":
        out = list(s)
        for axis, amount in zip(m[1], m[2]):
            out[axis] += amount
        return tuple(out)
    if kind in ("swap_io", "reshape_io"):  # (*k, A, G*B) -> (*k, B, G*A)
        return s[:-2] + (s[-1] // m[1], m[1] * s[-2])
    raise ValueError(f"unknown index map {m!r}")


# --- layouts -------------------------------------------------------------------------------------


def _spatial_axes(ndim: int, nd: int, channel_first: bool, batched: bool) -> tuple:
    start = (1 if batched else 0) + (1 if channel_first else 0)
    return tuple(range(start, start + nd))


def _channel_axis(ndim: int, channel_first: bool, batched: bool) -> int:
    return (1 if batched else 0) if channel_first else ndim - 1


def _spatial(shape: tuple, nd: int, channel_first: bool, batched: bool) -> tuple:
    start = (1 if batched else 0) + (1 if channel_first else 0)
    return tuple(shape[start : start + nd])


# --- problems ------------------------------------------------------------------------------------


def _hashable(padding):
    if isinstance(padding, str):
        return padding.upper()
    if isinstance(padding, (list, tuple)):
        return tuple(_hashable(p) for p in padding)
    return padding


@dataclass(frozen=True)
class ConvProblem:
    """``y = Y(conv(X(x), W(w), ...)) + bias_scale * b`` and its derivatives (see the module doc).

    ``channel_first`` is the layout the inner convolution reads (``batched`` is the case's);
    ``output_padding`` is kept for the transposed convolution's variants; the last three flags
    change only how ``dx`` / ``dw`` are derived.
    """

    nd: int
    stride: tuple
    padding: object  # "SAME" / "SAME_LOWER" / "VALID" or ((lo, hi), ...)
    lhs_dilation: tuple
    rhs_dilation: tuple
    groups: int
    channel_first: bool
    batched: bool
    x_maps: tuple = ()
    w_maps: tuple = ()
    y_maps: tuple = ()  # applied to the inner output, first to last
    bias_scale: int = 0
    output_padding: tuple = ()
    dx_unstuffed: bool = False
    dw_first_sample: bool = False
    dw_flip: bool = False

    def geometry(self, x_shape: tuple, w_shape: tuple):
        """``(geometry, x_inner_shape, w_inner_shape)`` of the inner convolution for the case's
        ``x`` and ``w`` shapes (after the maps)."""
        return _geometry(self, tuple(x_shape), tuple(w_shape))

    def pads(self, case) -> tuple:
        """The explicit ``(lo, hi)`` pads of the problem on a case."""
        return _shapes(self, case)[4]

    def __hash__(self) -> int:
        # a problem keys every cache of the diagnosis: its hash is computed once
        h = self.__dict__.get("_hash")
        if h is None:
            h = hash(_problem_fields(self))
            object.__setattr__(self, "_hash", h)
        return h


_PROBLEM_FIELDS = tuple(f.name for f in fields(ConvProblem))
_PROBLEM_FIELD_SET = frozenset(_PROBLEM_FIELDS)
_problem_fields = operator.attrgetter(*_PROBLEM_FIELDS)  # the fields' tuple, in one C call
_MEMOS = ("_hash", "_info", "_shapes")  # what a problem keeps on itself (see __hash__, _info, _shapes)


def _evolve(P: ConvProblem, **changes) -> ConvProblem:
    """``dataclasses.replace(P, **changes)`` without re-running ``__init__`` (a quarter of the cost;
    a slip makes one problem, and a diagnosis makes up to forty)."""
    if not _PROBLEM_FIELD_SET.issuperset(changes):
        raise TypeError(f"ConvProblem has no field {sorted(set(changes) - _PROBLEM_FIELD_SET)[0]!r}")
    Q = object.__new__(ConvProblem)
    Q.__dict__.update(P.__dict__, **changes)
    for memo in _MEMOS if not _same_shapes(P, changes) else ("_hash",):
        Q.__dict__.pop(memo, None)
    return Q


_SHAPE_NEUTRAL_FIELDS = frozenset({"bias_scale", "output_padding", "dx_unstuffed", "dw_first_sample", "dw_flip"})


def _same_shapes(P: ConvProblem, changes: dict) -> bool:
    """Whether the changed problem has ``P``'s shapes and geometry (so it keeps ``P``'s
    :func:`_shapes` and :func:`_info`): only fields no shape depends on change, or the operands'
    maps gain flips or channel permutations (a kernel flipped, groups interleaved)."""
    for name, value in changes.items():
        if name in _SHAPE_NEUTRAL_FIELDS:
            continue
        if name not in ("x_maps", "w_maps"):
            return False
        old = getattr(P, name)
        if value[: len(old)] != old or any(m[0] not in ("flip", "chan_perm") for m in value[len(old) :]):
            return False
    return True


def _inner_geometry(P: ConvProblem, xi: tuple, wi: tuple):
    """The geometry of the inner convolution for its operands' shapes ``xi``, ``wi``."""
    return _geometry_of(
        _spatial(xi, P.nd, P.channel_first, P.batched),
        tuple(wi[:-2]),
        P.stride,
        P.padding,
        P.lhs_dilation,
        P.rhs_dilation,
    )


@functools.lru_cache(maxsize=4096)
def _geometry_of(spatial: tuple, kernel: tuple, stride: tuple, pad, lhs: tuple, rhs: tuple):
    """:func:`refws.geometry.conv_geometry` of a problem's arguments (cached by the arguments alone,
    so that variants which only move data share it).

    A problem's factors are normalised int tuples and its padding a pad string or explicit pairs,
    so the pads and sizes come straight from :func:`refws.geometry.same_pads` and
    :func:`refws.geometry.out_size` (what ``conv_geometry`` computes them with; its argument
    checks cost several times more and cannot fail on a problem). Any other padding goes
    through ``conv_geometry``."""
    pads = _explicit_pads(spatial, kernel, stride, pad, lhs, rhs)
    if pads is None:
        return conv_geometry(spatial, kernel, stride, pad, lhs, rhs)
    return ConvGeometry(spatial, kernel, stride, pads, lhs, rhs, _out_spatial(spatial, kernel, stride, pads, lhs, rhs))


def _explicit_pads(spatial: tuple, kernel: tuple, stride: tuple, pad, lhs: tuple, rhs: tuple) -> tuple | None:
    """A problem's pads as ``(lo, hi)`` pairs: its explicit pairs, VALID's zeros or SAME's from
    :func:`refws.geometry.same_pads` (None: SAME with lhs dilation, left to ``conv_geometry``)."""
    if not isinstance(pad, str):  # explicit (lo, hi) pairs of ints, by construction
        return pad
    if pad == "VALID":
        return ((0, 0),) * len(spatial)
    if pad in ("SAME", "SAME_LOWER") and all(L == 1 for L in lhs):
        lower = pad == "SAME_LOWER"
        return tuple([same_pads(n, k, s, d, lower=lower) for n, k, s, d in zip(spatial, kernel, stride, rhs)])
    return None


def _out_spatial(spatial: tuple, kernel: tuple, stride: tuple, pads: tuple, lhs: tuple, rhs: tuple) -> tuple:
    """The output's spatial sizes: :func:`refws.geometry.out_size` (what ``conv_geometry`` uses),
    its arithmetic inline (a call per axis and variant was a third of a shape's cost)."""
    out = []
    for n, k, s, (lo, hi), L, d in zip(spatial, kernel, stride, pads, lhs, rhs):
        span = ((n - 1) * L + 1 if n > 0 else 0) + lo + hi - (k - 1) * d - 1
        out.append(span // s + 1 if span >= 0 else 0)
    return tuple(out)


def _geometry(P: ConvProblem, x_shape: tuple, w_shape: tuple):
    xi, wi = _mapped_shape(P.x_maps, x_shape), _mapped_shape(P.w_maps, w_shape)
    return _inner_geometry(P, xi, wi), xi, wi


@dataclass(frozen=True)
class WSProblem:
    """``w_hat = scale * weight_standardize(w, gain if use_gain, eps, spec)`` (centred unless not)."""

    spec: WSSpec
    eps: float
    out_axis: int
    use_gain: bool
    scale: float = 1.0
    centred: bool = True


def _conv_problem(case) -> ConvProblem:
    p = case.params
    nd = len(p["w_shape"]) - 2
    batched = len(p["x_shape"]) == len(p["w_shape"])
    pad = p["padding"]
    spatial = _spatial(tuple(p["x_shape"]), nd, p["channel_first"], batched)
    stride = as_int_tuple(p["stride"], nd, "stride")
    lhs, rhs = as_int_tuple(p["lhs_dilation"], nd, "lhs_dilation"), as_int_tuple(p["rhs_dilation"], nd, "rhs_dilation")
    if not isinstance(pad, str):
        pad = normalize_padding(pad, spatial, tuple(p["w_shape"][:-2]), stride, lhs, rhs)
    return ConvProblem(nd, stride, _hashable(pad), lhs, rhs, int(p["groups"]), p["channel_first"], batched)


def _transpose_problem(case) -> ConvProblem:
    p = case.params
    nd = len(p["w_shape"]) - 2
    batched = len(p["x_shape"]) == len(p["w_shape"])
    spatial = _spatial(tuple(p["x_shape"]), nd, p["channel_first"], batched)
    fwd = transpose_geometry(
        spatial,
        tuple(p["w_shape"][:-2]),
        p["stride"],
        p["padding"],
        p["output_padding"],
        p["dilation"],
        p["output_size"],
        2 if batched else 1,
    )
    groups = int(p["groups"])
    return ConvProblem(
        nd,
        (1,) * nd,
        input_grad_pads(fwd),
        fwd.stride,
        fwd.rhs_dilation,
        groups,
        p["channel_first"],
        batched,
        w_maps=(("swap_io", groups), ("flip", tuple(range(nd)))),
        bias_scale=1 if p.get("bias") else 0,
        output_padding=tuple(lo - hi for lo, hi in fwd.padding),
    )


def _ws_problem(case) -> WSProblem:
    p = case.params
    spec = resolve_spec(p["spec"])
    eps = spec.eps if p.get("eps") is None else float(p["eps"])
    return WSProblem(spec, eps, int(p["out_axis"]), bool(p.get("gain")))


_FAMILIES = {"conv": _conv_problem, "conv_transpose": _transpose_problem, "ws": _ws_problem}


def base_problem(case):
    """The correct computation of a golden case as a problem (None for suites without variants)."""
    make = _FAMILIES.get(case.suite)
    return None if make is None else make(case)


# --- evaluating a problem ------------------------------------------------------------------------


def _bias_view(b: np.ndarray, ndim: int, channel_axis: int) -> np.ndarray:
    shape = [1] * ndim
    shape[channel_axis] = b.shape[0]
    return b.reshape(shape)


def _operand(case, name: str, absolute: bool) -> np.ndarray:
    a = np.asarray(case.arrays[name])
    return np.abs(a) if absolute else a


def _inner_conv(P: ConvProblem, x, w):
    """``refws.conv`` with the problem's arguments, through its canonical entry point and the
    cached geometry (the operands are the case's, already checked by the store)."""
    g = _inner_geometry(P, x.shape, w.shape)
    x_cl = to_canonical(x, P.channel_first, not P.batched)
    return from_canonical(conv_canonical(x_cl, w, g, P.groups), P.channel_first, not P.batched)


def _forward(P: ConvProblem, case, names: tuple, bias_name: str, absolute: bool) -> np.ndarray:
    """``Y(sum of conv(X a, W b) over the operand pairs)`` plus the scaled bias (``y`` and ``ty``)."""
    if _gathers(P, case):
        inner = _forward_gathered(P, case, names, absolute)
    else:
        inner = _forward_by_conv(P, case, names, absolute)
    out = _apply(P.y_maps, inner)
    if P.bias_scale and bias_name in case.arrays:
        layout_cf = case.params["channel_first"]
        b = abs(P.bias_scale) * np.abs(case[bias_name]) if absolute else P.bias_scale * case[bias_name]
        out = out + _bias_view(b, out.ndim, _channel_axis(out.ndim, layout_cf, P.batched))
    return out


def _forward_by_conv(P: ConvProblem, case, names: tuple, absolute: bool) -> np.ndarray:
    """The inner convolutions of :func:`_forward` by ``refws.conv`` (the problems too large for one
    gather: refws chunks them to its workspace budget)."""
    g, canonical = _info(P, case)[0], (P.channel_first, P.batched)
    terms = [
        from_canonical(
            conv_canonical(
                _mapped_operand(case, a_name, P.x_maps, canonical, absolute),
                _mapped_operand(case, b_name, P.w_maps, None, absolute),
                g,
                P.groups,
            ),
            P.channel_first,
            not P.batched,
        )
        for a_name, b_name in names
    ]
    return sum(terms[1:], terms[0])


def _dx_unstuffed(P: ConvProblem, g, dyi: np.ndarray, wi: np.ndarray) -> np.ndarray:
    """``dx`` with ``dy`` not zero-stuffed by the stride (see :func:`_dx_geometry`), by refws.conv."""
    unbatched = not P.batched
    dy_cl = to_canonical(dyi, P.channel_first, unbatched)
    dx = conv_canonical(dy_cl, flip_swap_kernel(wi, P.groups), _dx_geometry(P, g), P.groups)
    return from_canonical(dx, P.channel_first, unbatched)


def _dx_geometry(P: ConvProblem, g):
    """The geometry of the convolution that computes the problem's ``dx`` from ``dy`` (with the
    flipped, in/out-swapped kernel): refws's own (:func:`refws.grads.dx_conv_geometry`), or for
    ``dx_unstuffed`` the same without ``dy`` lhs-dilated by the stride: the low pad of the correct
    ``dx`` convolution, the high pad fitted so that the result has ``x``'s size."""
    if not P.dx_unstuffed:
        return dx_conv_geometry(g)
    pads = tuple(
        (lo, (n - 1) * L + kd - out - lo)
        for (lo, _), n, L, kd, out in zip(
            input_grad_pads(g), g.in_spatial, g.lhs_dilation, g.dilated_kernel, g.out_spatial
        )
    )
    return conv_geometry(g.out_spatial, g.kernel_spatial, g.lhs_dilation, pads, 1, g.rhs_dilation)


def _backward(P: ConvProblem, case, absolute: bool):
    """``(dx, dw)`` of the problem at the stored ``dy`` (None when ``dy`` does not fit its output);
    ``dw_flip`` is applied by :func:`variant_value`."""
    return (_backward_gathered if _gathers(P, case) else _backward_by_conv)(P, case, absolute)


def _backward_by_conv(P: ConvProblem, case, absolute: bool):
    """:func:`_backward` by ``refws.conv_vjp`` (the problems too large for one gather)."""
    x, w = _operand(case, "x", absolute), _operand(case, "w", absolute)
    g, xi_shape, wi_shape = P.geometry(x.shape, w.shape)
    xi, wi = _apply(P.x_maps, x), _apply(P.w_maps, w)
    dyi = _adjoint(P.y_maps, _inner_out_shape(P, g, xi_shape, wi_shape), _operand(case, "dy", absolute))
    if dyi is None:
        return None
    if P.dw_first_sample:
        dw_i = conv_vjp(
            xi[:1],
            wi,
            dyi[:1],
            P.stride,
            P.padding,
            P.lhs_dilation,
            P.rhs_dilation,
            P.groups,
            channel_first=P.channel_first,
        )[1]
        dx_i = None
    else:
        dx_i, dw_i = conv_vjp(
            xi, wi, dyi, P.stride, P.padding, P.lhs_dilation, P.rhs_dilation, P.groups, channel_first=P.channel_first
        )
    if P.dx_unstuffed:
        dx_i = _dx_unstuffed(P, g, dyi, wi)
    dx = None if dx_i is None else _adjoint(P.x_maps, x.shape, dx_i)
    return dx, _adjoint(P.w_maps, w.shape, dw_i)


def _inner_out_shape(P: ConvProblem, g, xi_shape: tuple, wi_shape: tuple) -> tuple:
    n_lead = 1 if P.batched else 0
    c_out = wi_shape[-1]
    inner = (c_out, *g.out_spatial) if P.channel_first else (*g.out_spatial, c_out)
    return tuple(xi_shape[:n_lead]) + inner


def _bias_grad(P: ConvProblem, case, absolute: bool) -> np.ndarray:
    dy = _operand(case, "dy", absolute)
    axis = _channel_axis(dy.ndim, case.params["channel_first"], P.batched)
    return abs(P.bias_scale) * dy.sum(axis=tuple(i for i in range(dy.ndim) if i != axis))


def _ws_value(P: WSProblem, case, array: str):
    w = case.arrays["w"]
    gain = case.arrays["gain"] if P.use_gain and "gain" in case.arrays else None
    if array == "w_hat":
        v = weight_standardize(w, gain, P.eps, out_axis=P.out_axis, spec=P.spec)
        if not P.centred:
            # w * (scale per channel): the scale read off the element of largest |w - mean|
            axes = tuple(i for i in range(w.ndim) if i != P.out_axis % w.ndim)
            c = w - w.mean(axis=axes, keepdims=True)
            flat_c = np.moveaxis(c, P.out_axis, 0).reshape(c.shape[P.out_axis], -1)
            flat_v = np.moveaxis(v, P.out_axis, 0).reshape(flat_c.shape)
            pick = np.argmax(np.abs(flat_c), axis=1)
            rows = np.arange(flat_c.shape[0])
            if np.any(flat_c[rows, pick] == 0):
                return None
            ratio = flat_v[rows, pick] / flat_c[rows, pick]
            shape = [1] * w.ndim
            shape[P.out_axis] = -1
            v = w * ratio.reshape(shape)
        return P.scale * v
    if not P.centred:
        return None
    if array in ("dw", "dgain"):
        dw, dgain = weight_standardize_vjp(w, case.arrays["dw_hat"], gain, P.eps, out_axis=P.out_axis, spec=P.spec)
        if array == "dw":
            return P.scale * dw
        return np.zeros_like(case.arrays["gain"]) if dgain is None else P.scale * dgain
    if array == "tw_hat":
        tgain = case.arrays["tgain"] if gain is not None and "tgain" in case.arrays else None
        return (
            P.scale
            * weight_standardize_jvp(w, case.arrays["tw"], gain, tgain, P.eps, out_axis=P.out_axis, spec=P.spec)[1]
        )
    return None


_CACHE: dict = {"case": None, "values": {}}
_MISSING = object()  # a cache entry not made yet (None is a value: a slip that does not apply)


def variant_value(P, case, array: str, absolute: bool = False):
    """The value of ``array`` under problem ``P`` (a variant, or :func:`base_problem`), or None when
    the problem does not define it (e.g. ``dy`` does not fit a variant's output shape).

    ``absolute=True`` evaluates the bilinear problem on the inputs' absolute values: the
    magnitudes ``m`` of the rounding bound. Values are cached for the case last asked about.
    """
    key = (P, array, absolute)
    values = _values(case)
    if key in values:
        return values[key]
    if isinstance(P, WSProblem):
        v = _ws_value(P, case, array)
    elif array == "y":
        v = _forward(P, case, (("x", "w"),), "b", absolute)
    elif array == "ty":
        v = _forward(P, case, (("tx", "w"), ("x", "tw")), "tb", absolute)
    elif array in ("dx", "dw"):
        unflipped = _evolve(P, dw_flip=False)  # the flip is applied to dw afterwards: shared
        bkey = (unflipped, "backward", absolute)
        if bkey not in values:
            values[bkey] = _backward(unflipped, case, absolute)
        pair = values[bkey]
        v = None if pair is None else pair[0 if array == "dx" else 1]
        if v is not None and array == "dw" and P.dw_flip:
            v = _apply_map(("flip", tuple(range(P.nd))), v)
    elif array == "db":
        v = _bias_grad(P, case, absolute) if P.bias_scale else None
    else:
        v = None
    values[key] = v
    return v


# --- screening: a variant at a few elements, from its definition --------------------------------------
#
# A full evaluation of a large problem (above SCREEN_MIN columns) costs one or two refws
# convolutions per variant; most variants are wrong by far, which a handful of elements shows.
# Which input position every (output position, kernel tap) reads is refws's own gather applied to
# the positions themselves (lhs dilation, padding, window view: :class:`_Reads`), so the inner
# convolution, its input gradient and its weight gradient at one element are one short dot
# product each; the maps are followed through their index arrays. Screening only rejects: a
# variant that passes it is evaluated in full.


class _Reads:
    """Which input position every (output position, kernel tap) of a geometry reads: ``table``,
    ``(O, T)`` ints (row-major over ``g.out_spatial`` and ``g.kernel_spatial``), the flat input
    position plus one, 0 where the tap reads padding or a hole of the lhs dilation. The rows,
    columns and readers the screens ask for are kept."""

    def __init__(self, g) -> None:
        positions = np.arange(1, math.prod(g.in_spatial) + 1, dtype=np.float64).reshape((1, *g.in_spatial, 1))
        windows = window_view(
            dilate_pad(positions, g.lhs_dilation, g.padding), g.kernel_spatial, g.out_spatial, g.stride, g.rhs_dilation
        )
        self.table = np.array(windows, dtype=np.intp).reshape(math.prod(g.out_spatial), math.prod(g.kernel_spatial))
        self._rows: dict = {}
        self._cols: dict = {}
        self._readers: dict = {}

    def row(self, o: int) -> tuple:
        """``(taps, inputs)`` of output position ``o``: its taps that read an input, and which."""
        if o not in self._rows:
            read = self.table[o]
            taps = np.flatnonzero(read)
            self._rows[o] = taps, read[taps] - 1
        return self._rows[o]

    def col(self, t: int) -> tuple:
        """``(outputs, inputs)`` of tap ``t``: the output positions where it reads an input, and which."""
        if t not in self._cols:
            read = self.table[:, t]
            outs = np.flatnonzero(read)
            self._cols[t] = outs, read[outs] - 1
        return self._cols[t]

    def readers(self, i: int) -> tuple:
        """``(outputs, taps)`` that read input position ``i``."""
        if i not in self._readers:
            self._readers[i] = np.nonzero(self.table == i + 1)
        return self._readers[i]


@functools.lru_cache(maxsize=1024)
def _reads(g) -> _Reads:
    return _Reads(g)


def _to_canonical_index(index: tuple, channel_first: bool, batched: bool) -> tuple:
    index = tuple(index) if batched else (0,) + tuple(index)
    return (index[0],) + index[2:] + (index[1],) if channel_first else index


def _from_canonical_index(index: tuple, channel_first: bool, batched: bool) -> tuple:
    if channel_first:
        index = (index[0], index[-1]) + tuple(index[1:-1])
    return tuple(index) if batched else tuple(index[1:])


def _flat(index: tuple, shape: tuple) -> int:
    """``np.ravel_multi_index`` of one index, in Python ints (a tenth of its cost)."""
    f = 0
    for i, n in zip(index, shape):
        f = f * n + i
    return f


def _unflat(f: int, shape: tuple) -> tuple:
    """``np.unravel_index`` of one flat position, as a tuple of Python ints."""
    out = []
    for n in reversed(shape):
        f, r = divmod(f, n)
        out.append(r)
    return tuple(reversed(out))


def _inverse_index(maps: tuple, shape: tuple) -> np.ndarray:
    """For index maps that permute: where each input element lands (flat positions)."""
    key = ("inverse", maps, tuple(shape))
    if key not in _INDEX_CACHE:
        _INDEX_CACHE[key] = _invert(_index(maps, shape).ravel(), math.prod(shape))
    return _INDEX_CACHE[key]


def _invert(idx: np.ndarray, size: int) -> np.ndarray:
    inv = np.full(size, -1, dtype=np.intp)
    keep = idx > 0
    inv[idx[keep] - 1] = np.nonzero(keep)[0]
    return inv


def _dot(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.vdot(a, b))


def _y_at(xf: np.ndarray, wf: np.ndarray, reads: _Reads, groups: int, n: int, o: int, j: int) -> float:
    """``conv`` at batch ``n``, flat output position ``o``, output channel ``j`` (operands
    ``(N, S, C)`` and ``(T, C/G, C_out)``): the taps of ``o`` that read an input."""
    cg, cog = wf.shape[1], wf.shape[2] // groups
    taps, inputs = reads.row(o)
    lo = (j // cog) * cg
    return _dot(xf[n, inputs, lo : lo + cg], wf[taps, :, j])


def _dx_at(dyf: np.ndarray, wf: np.ndarray, reads: _Reads, groups: int, n: int, i: int, c: int) -> float:
    """The input gradient at batch ``n``, flat input position ``i``, channel ``c``: every
    (output, tap) that reads ``i``."""
    cg, cog = wf.shape[1], wf.shape[2] // groups
    outs, taps = reads.readers(i)
    block = slice((c // cg) * cog, (c // cg + 1) * cog)
    return _dot(dyf[n, outs, block], wf[taps, c % cg, block])


def _dw_at(xf: np.ndarray, dyf: np.ndarray, reads: _Reads, groups: int, t: int, c: int, j: int, batch: int) -> float:
    """The weight gradient at flat tap ``t``, channels ``(c, j)``: every (sample, output) whose
    tap ``t`` reads an input."""
    cg, cog = xf.shape[2] // groups, dyf.shape[2] // groups
    outs, inputs = reads.col(t)
    return _dot(xf[:batch, inputs, (j // cog) * cg + c], dyf[:batch, outs, j])


def _values(case) -> dict:
    """The cache of ``case``: values, problems, shapes... (it holds the case last asked about)."""
    if _CACHE["case"] is not case:
        _CACHE["case"], _CACHE["values"] = case, {}
    return _CACHE["values"]


def _cached(case, key, compute):
    """``compute()`` once per case and key."""
    values = _values(case)
    if key not in values:
        values[key] = compute()
    return values[key]


def _mapped_operand(case, name: str, maps: tuple, canonical=None, absolute: bool = False) -> np.ndarray:
    """A stored input (or its absolute value) through index maps, and to canonical layout when
    ``canonical`` is ``(channel_first, batched)``; cached: many variants share their maps."""
    return _cached(
        case,
        ("operand", name, maps, canonical, absolute),
        lambda: (
            _apply(maps, _operand(case, name, absolute))
            if canonical is None
            else to_canonical(_mapped_operand(case, name, maps, None, absolute), canonical[0], not canonical[1])
        ),
    )


def _flat_operand(case, name: str, maps: tuple, canonical=None, absolute: bool = False) -> np.ndarray:
    """:func:`_mapped_operand` with its spatial axes flattened: an input ``(N, S, C)``, a kernel
    ``(T, C/G, C_out)``."""

    def compute():
        a = _mapped_operand(case, name, maps, canonical, absolute)
        if canonical is not None:
            return a.reshape(a.shape[0], math.prod(a.shape[1:-1]), a.shape[-1])
        return a.reshape(math.prod(a.shape[:-2]), *a.shape[-2:])

    return _cached(case, ("flat", name, maps, canonical, absolute), compute)


def _info(P: ConvProblem, case) -> tuple:
    """``(geometry, x_inner_shape, w_inner_shape, inner_y_shape, y_shape, columns)`` of a problem on
    a case, from the shapes alone (``columns``: the elements of its im2col columns, ``N O T C``).

    Kept on the problem itself, for the case last asked about: every step of a diagnosis asks for
    it, and a problem lives only as long as its case's cache."""
    memo = P.__dict__.get("_info")
    if memo is not None and memo[0] is case:
        return memo[1]
    xi, wi, spatial, kernel, pads, out, inner, y = _shapes(P, case)
    g = ConvGeometry(spatial, kernel, P.stride, pads, P.lhs_dilation, P.rhs_dilation, out)
    lead = 1 if P.batched else 0
    n, c_in = xi[0] if lead else 1, xi[lead] if P.channel_first else xi[-1]
    info = (g, xi, wi, inner, y, n * math.prod(out) * math.prod(kernel) * c_in)
    P.__dict__["_info"] = (case, info)
    return info


def _shapes(P: ConvProblem, case) -> tuple:
    """``(x_inner, w_inner, spatial, kernel, pads, out_spatial, inner_y, y)`` shapes and sizes of a
    problem on a case, from their arithmetic alone (:func:`_mapped_shape`, :func:`_explicit_pads`,
    :func:`_out_spatial`: what ``conv_geometry`` computes them with): no geometry is made for a
    variant that the shape rules out. Kept on the problem, like :func:`_info`."""
    memo = P.__dict__.get("_shapes")
    if memo is not None and memo[0] is case:
        return memo[1]
    xi, wi = case.arrays["x"].shape, case.arrays["w"].shape
    if P.x_maps:
        xi = _mapped_shape(P.x_maps, xi)
    if P.w_maps:
        wi = _mapped_shape(P.w_maps, wi)
    spatial, kernel, pads = _spatial(xi, P.nd, P.channel_first, P.batched), wi[:-2], P.padding
    if not isinstance(pads, tuple):  # a pad string
        pads = _explicit_pads(spatial, kernel, P.stride, pads, P.lhs_dilation, P.rhs_dilation)
    if pads is None:  # SAME with lhs dilation
        g = conv_geometry(spatial, kernel, P.stride, P.padding, P.lhs_dilation, P.rhs_dilation)
        pads, out = g.padding, g.out_spatial
    else:
        out = _out_spatial(spatial, kernel, P.stride, pads, P.lhs_dilation, P.rhs_dilation)
    inner = xi[: 1 if P.batched else 0] + ((wi[-1], *out) if P.channel_first else (*out, wi[-1]))
    shapes = (xi, wi, spatial, kernel, pads, out, inner, _mapped_shape(P.y_maps, inner) if P.y_maps else inner)
    P.__dict__["_shapes"] = (case, shapes)
    return shapes


def _flat_dy(P: ConvProblem, case, absolute: bool = False):
    """The stored ``dy`` (or ``|dy|``) through the adjoint of the problem's output maps, canonical
    and flattened to ``(N, O, C_out)`` (None when it does not fit the problem's output)."""
    inner = _info(P, case)[3]

    def compute():
        dyi = _adjoint(P.y_maps, inner, _operand(case, "dy", absolute))
        if dyi is None:
            return None
        c = to_canonical(dyi, P.channel_first, not P.batched)
        return c.reshape(c.shape[0], math.prod(c.shape[1:-1]), c.shape[-1])

    return _cached(case, ("dy", P.y_maps, inner, P.channel_first, absolute), compute)


# --- evaluating a small problem in one gather ------------------------------------------------------
#
# A test case is small: refws.conv's fixed cost (its plan, workspaces, formulations) is most of
# its time there. refws's own dilate_pad and window_view give the im2col columns in one copy, and
# then the convolution and its weight gradient are one matrix product each; the input gradient is
# the same for the columns of dy in refws's own dx convolution (dx_conv_geometry). Every element
# is still a float64 sum of the same products (in another order: within the gamma_K bound every
# verdict allows for).

#: The most column elements (``N * O * T * C``) evaluated in one gather: 16 MiB of float64; larger
#: problems go through refws.conv and refws.conv_vjp, chunked to refws's workspace budget.
GATHER_MAX = 2**21

#: Above this many column elements a variant is screened before its full evaluation. Below it, one
#: gather costs less than the screen's few elements summed one by one (measured on the flipped-kernel
#: backend: every store case, at most 20160 columns, and synthetic 2-D cases of 37k-4.7M columns;
#: the two break even near 60k).
SCREEN_MIN = 2**16


def _gathers(P: ConvProblem, case) -> bool:
    """Whether the problem is small enough for one gather (the columns within :data:`GATHER_MAX`)."""
    return _info(P, case)[5] <= GATHER_MAX


#: Columns up to this many elements (1 MiB) are kept for the case: a variant's y, ty and dw read the
#: same columns of x, and variants that only change the kernel share them.
COLUMNS_KEPT = 2**17


def _columns(P: ConvProblem, case, name: str, absolute: bool) -> np.ndarray:
    """The im2col columns ``(N, O, T, C)`` of an input (through the problem's maps) for the
    problem's geometry (kept for the case when small)."""
    g = _info(P, case)[0]
    key = ("columns", name, P.x_maps, P.channel_first, P.batched, g, absolute)
    values = _values(case)
    cols = values.get(key)
    if cols is None:
        cols = _window_columns(_mapped_operand(case, name, P.x_maps, (P.channel_first, P.batched), absolute), g)
        if cols.size <= COLUMNS_KEPT:
            values[key] = cols
    return cols


def _window_columns(a: np.ndarray, g) -> np.ndarray:
    """The im2col columns ``(N, O, T, C)`` of a canonical ``(N, *spatial, C)`` array for geometry
    ``g``: refws's own ``dilate_pad`` and ``window_view``, copied once by the reshape."""
    window = window_view(
        dilate_pad(a, g.lhs_dilation, g.padding), g.kernel_spatial, g.out_spatial, g.stride, g.rhs_dilation
    )
    return window.reshape(a.shape[0], math.prod(g.out_spatial), math.prod(g.kernel_spatial), a.shape[-1])


def _flip_swapped(case, maps: tuple, groups: int, absolute: bool) -> np.ndarray:
    """The mapped kernel flipped with its in/out channels swapped per group (the kernel of the
    ``dx`` convolution), flattened to ``(T, C_out/G, C_in)``; once per case."""

    def compute():
        k = flip_swap_kernel(_mapped_operand(case, "w", maps, None, absolute), groups)
        return k.reshape(math.prod(k.shape[:-2]), *k.shape[-2:])

    return _cached(case, ("flip_swapped", maps, groups, absolute), compute)


def _conv_columns(cols: np.ndarray, wf: np.ndarray, groups: int) -> np.ndarray:
    """The convolution from its columns: ``cols`` ``(N, O, T, C)``, ``wf`` ``(T, C/G, C_out)`` ->
    ``(N, O, C_out)``."""
    n, o, t, c = cols.shape
    c_out = wf.shape[-1]
    if groups == 1:
        return (cols.reshape(n * o, t * c) @ wf.reshape(t * c, c_out)).reshape(n, o, c_out)
    cg, cog = c // groups, c_out // groups
    a = cols.reshape(n * o, t, groups, cg).transpose(2, 0, 1, 3).reshape(groups, n * o, t * cg)
    b = wf.reshape(t, cg, groups, cog).transpose(2, 0, 1, 3).reshape(groups, t * cg, cog)
    return (a @ b).transpose(1, 0, 2).reshape(n, o, c_out)


def _dw_columns(cols: np.ndarray, dyf: np.ndarray, groups: int) -> np.ndarray:
    """The weight gradient from the input's columns: ``(N, O, T, C)`` and ``dy`` ``(N, O, C_out)``
    -> ``(T, C/G, C_out)``."""
    n, o, t, c = cols.shape
    c_out = dyf.shape[-1]
    if groups == 1:
        return (cols.reshape(n * o, t * c).T @ dyf.reshape(n * o, c_out)).reshape(t, c, c_out)
    cg, cog = c // groups, c_out // groups
    a = cols.reshape(n * o, t, groups, cg).transpose(2, 1, 3, 0).reshape(groups, t * cg, n * o)
    b = dyf.reshape(n * o, groups, cog).transpose(1, 0, 2)
    return (a @ b).reshape(groups, t, cg, cog).transpose(1, 2, 0, 3).reshape(t, cg, c_out)


def _forward_gathered(P: ConvProblem, case, names: tuple, absolute: bool) -> np.ndarray:
    """The inner convolutions of :func:`_forward` in one gather each."""
    g = _info(P, case)[0]
    terms = [
        _conv_columns(
            _columns(P, case, a_name, absolute), _flat_operand(case, b_name, P.w_maps, None, absolute), P.groups
        )
        for a_name, b_name in names
    ]
    total = sum(terms[1:], terms[0])
    y = total.reshape(total.shape[0], *g.out_spatial, total.shape[-1])
    return from_canonical(y, P.channel_first, not P.batched)


def _backward_gathered(P: ConvProblem, case, absolute: bool):
    """:func:`_backward` in one gather each: ``dw`` from the input's columns, ``dx`` from the
    columns of ``dy`` for its own convolution (:func:`_dx_geometry`)."""
    dyf = _flat_dy(P, case, absolute)
    if dyf is None:
        return None
    g, xi, wi = _info(P, case)[:3]
    batch = 1 if P.dw_first_sample else None
    dw_i = _dw_columns(_columns(P, case, "x", absolute)[:batch], dyf[:batch], P.groups).reshape(wi)
    dx_i = None
    if P.dx_unstuffed or not P.dw_first_sample:
        dyc = dyf.reshape(dyf.shape[0], *g.out_spatial, dyf.shape[-1])
        cols = _window_columns(dyc, _dx_geometry(P, g))
        dx = _conv_columns(cols, _flip_swapped(case, P.w_maps, P.groups, absolute), P.groups)
        dx_i = from_canonical(dx.reshape(dx.shape[0], *g.in_spatial, dx.shape[-1]), P.channel_first, not P.batched)
    x_shape, w_shape = case.arrays["x"].shape, case.arrays["w"].shape
    return None if dx_i is None else _adjoint(P.x_maps, x_shape, dx_i), _adjoint(P.w_maps, w_shape, dw_i)


def _point_evaluator(P: ConvProblem, case, array: str):
    """A function from an index of the problem's ``array`` to its value there (None when the
    problem does not define ``array`` for this case)."""
    x, w = case.arrays["x"], case.arrays["w"]
    g, xi_shape, wi_shape, inner_y, outer = _info(P, case)[:5]
    cf, b = P.channel_first, P.batched
    wf = _flat_operand(case, "w", P.w_maps)
    if array in ("y", "ty"):
        yidx = _index(P.y_maps, inner_y).ravel() if P.y_maps else None
        pairs = (("x", "w"),) if array == "y" else (("tx", "w"), ("x", "tw"))
        ops = [(_flat_operand(case, a, P.x_maps, (cf, b)), _flat_operand(case, k, P.w_maps)) for a, k in pairs]
        bias = case.arrays.get("b" if array == "y" else "tb") if P.bias_scale else None
        channel = _channel_axis(len(outer), case.params["channel_first"], b)
        reads = _reads(g)

        def y_at(e):
            f = _flat(e, outer)
            src = f if yidx is None else int(yidx[f]) - 1
            value = 0.0
            if src >= 0:
                ic = _to_canonical_index(_unflat(src, inner_y), cf, b)
                o = _flat(ic[1:-1], g.out_spatial)
                for xf, kf in ops:
                    value += _y_at(xf, kf, reads, P.groups, ic[0], o, ic[-1])
            return value + (P.bias_scale * float(bias[e[channel]]) if bias is not None else 0.0)

        return y_at
    dyf = _flat_dy(P, case)
    if dyf is None:
        return None
    if array == "dx":
        reads = _reads(replace(g, stride=(1,) * P.nd) if P.dx_unstuffed else g)
        inv = _inverse_index(P.x_maps, x.shape) if P.x_maps else None

        def dx_at(e):
            f = _flat(e, x.shape)
            pos = f if inv is None else int(inv[f])
            ic = _to_canonical_index(_unflat(pos, xi_shape), cf, b)
            return _dx_at(dyf, wf, reads, P.groups, ic[0], _flat(ic[1:-1], g.in_spatial), ic[-1])

        return dx_at
    if array == "dw":
        xf = _flat_operand(case, "x", P.x_maps, (cf, b))
        inv = _inverse_index(P.w_maps, w.shape) if P.w_maps else None
        batch = 1 if P.dw_first_sample else xf.shape[0]
        reads = _reads(g)

        def dw_at(e):
            if P.dw_flip:
                e = tuple(w.shape[a] - 1 - v if a < P.nd else v for a, v in enumerate(e))
            f = _flat(e, w.shape)
            pos = f if inv is None else int(inv[f])
            t = _unflat(pos, wi_shape)
            return _dw_at(xf, dyf, reads, P.groups, _flat(t[:-2], g.kernel_spatial), t[-2], t[-1], batch)

        return dw_at
    return None


def _points_value(P: ConvProblem, case, array: str, points: list):
    """The problem's ``array`` at ``points`` (indices into the array's shape), or None."""
    at = _point_evaluator(P, case, array)
    return None if at is None else np.array([at(e) for e in points])


def _sample_points(actual: np.ndarray, exact: np.ndarray) -> list:
    """Three indices of ``actual``: its two worst elements against refws and its largest (when
    the shapes agree; else its largest and its middle element)."""
    if actual.size == 0:
        return []
    a = actual.astype(np.float64, copy=False).ravel()
    finite = bool(np.isfinite(a).all())  # then no NaN to count as the largest (refws's are finite)
    flat = []
    if exact.shape == actual.shape:
        err = np.abs(a - exact.ravel())
        if not finite:
            err[~np.isfinite(err)] = np.inf
        flat.append(int(err.argmax()))  # the first of the largest errors, then the next
        if a.size > 1:
            err[flat[0]] = -1.0
            flat.append(int(err.argmax()))
    magnitude = np.abs(a)
    if not finite:
        magnitude[~np.isfinite(magnitude)] = np.inf
    flat.append(int(magnitude.argmax()))
    if exact.shape != actual.shape:
        flat.append(actual.size // 2)
    return [_unflat(f, actual.shape) for f in dict.fromkeys(flat)]


# --- the variants ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Variant:
    """A named near-miss convention: what it means, where it applies, and the changed problem
    (``slip(problem, case)`` returns it, or None when the slip cannot apply to the case); whether
    it keeps every array's shape."""

    name: str
    description: str
    suites: tuple
    arrays: tuple
    slip: Callable
    #: The slip never changes an array's shape (a changed array has refws's shape, or none): a
    #: backend's array of another shape is not tried under it, and the slip is not even made.
    keeps_shape: bool = False


_CONV = ("conv",)
_TRANSPOSE = ("conv_transpose",)
_BOTH = ("conv", "conv_transpose")
_FWD = ("y", "dx", "dw", "ty")
_WS = ("ws",)
_WS_ARRAYS = ("w_hat", "dw", "dgain", "tw_hat")


def _kernel_flipped(P, case):
    if math.prod(case.arrays["w"].shape[:-2]) == 1:
        return None
    return _evolve(P, w_maps=P.w_maps + (("flip", tuple(range(P.nd))),))


def _same_to(target: str):
    source = "SAME_LOWER" if target == "SAME" else "SAME"

    def slip(P, case):
        if P.padding != source or all(lo == hi for lo, hi in P.pads(case)):
            return None
        return _evolve(P, padding=target)

    return slip


def _same_ignores_rhs_dilation(P, case):
    if P.padding not in ("SAME", "SAME_LOWER") or P.rhs_dilation == (1,) * P.nd:
        return None
    spatial, kernel = _shapes(P, case)[2:4]
    lower = P.padding == "SAME_LOWER"
    pads = tuple([same_pads(n, k, s, 1, lower=lower) for n, k, s in zip(spatial, kernel, P.stride)])
    return _evolve(P, padding=pads)


def _pads_swapped(P, case):
    pads = P.pads(case)
    if all(lo == hi for lo, hi in pads):
        return None
    return _evolve(P, padding=tuple((hi, lo) for lo, hi in pads))


def _high_crop_ignores_low_pad(P, case):
    pads = P.pads(case)
    if not any(lo > 0 > hi for lo, hi in pads):
        return None
    return _evolve(P, padding=tuple((lo, hi - lo) if lo > 0 > hi else (lo, hi) for lo, hi in pads))


def _padding_ignored(P, case):
    zeros = ((0, 0),) * P.nd
    return None if P.pads(case) == zeros else _evolve(P, padding=zeros)


def _set_factor(field: str, new):
    """A changed stride or dilation; the padding stays as resolved with the case's arguments (a
    front end resolves SAME, the convolution itself slips)."""

    def slip(P, case):
        old = getattr(P, field)
        value = new(old)
        if value is None or value == old:
            return None
        return _evolve(P, padding=P.pads(case), **{field: value})

    return slip


def _swap01(t: tuple) -> tuple:
    return (t[1], t[0], *t[2:])


def _spatial_args_swapped(P, case):
    if P.nd < 2:
        return None
    args = (P.stride, P.pads(case), P.lhs_dilation, P.rhs_dilation)
    swapped = tuple(map(_swap01, args))
    if swapped == args:  # the first two axes' arguments agree: nothing changes
        return None
    stride, padding, lhs, rhs = swapped
    return _evolve(P, stride=stride, padding=padding, lhs_dilation=lhs, rhs_dilation=rhs)


def _kernel_axes_swapped(P, case):
    return None if P.nd < 2 else _evolve(P, w_maps=P.w_maps + (("swapaxes", 0, 1),))


def _spatial_axes_swapped(P, case):
    if P.nd < 2:
        return None
    xa = _spatial_axes(case.arrays["x"].ndim, P.nd, P.channel_first, P.batched)
    swap = ("swapaxes", xa[0], xa[1])
    return _evolve(P, x_maps=P.x_maps + (swap,), y_maps=(swap,) + P.y_maps)


def _groups_interleaved(P, case):
    c_in = case.arrays["x"].shape[_channel_axis(case.arrays["x"].ndim, case.params["channel_first"], P.batched)]
    if P.groups < 2 or c_in // P.groups < 2:
        return None
    axis = _channel_axis(case.arrays["x"].ndim, P.channel_first, P.batched)
    return _evolve(P, x_maps=P.x_maps + (("chan_perm", axis, P.groups),))


def _channels_first_misread(P, case):
    return _evolve(
        P,
        channel_first=not P.channel_first,
        x_maps=P.x_maps + (("relayout", P.channel_first, P.batched),),
        y_maps=(("relayout", not P.channel_first, P.batched),) + P.y_maps,
    )


def _output_padding(low: bool):
    def slip(P, case):
        op = P.output_padding
        if not op or not any(op):
            return None
        pads = P.pads(case)
        if low:
            return _evolve(P, padding=tuple((lo + o, hi - o) for (lo, hi), o in zip(pads, op)))
        axes = _spatial_axes(case.arrays["x"].ndim, P.nd, P.channel_first, P.batched)
        return _evolve(
            P, padding=tuple((lo, hi - o) for (lo, hi), o in zip(pads, op)), y_maps=(("pad_high", axes, op),) + P.y_maps
        )

    return slip


def _transpose_kernel_not_flipped(P, case):
    return _kernel_flipped(P, case)


def _transpose_weight_io_swapped(P, case):
    maps = tuple(("reshape_io",) + m[1:] if m[0] == "swap_io" else m for m in P.w_maps)
    return None if maps == P.w_maps else _evolve(P, w_maps=maps)


def _bias(scale: int):
    def slip(P, case):
        return None if P.bias_scale != 1 else _evolve(P, bias_scale=scale)

    return slip


def _dx_stride_ignored(P, case):
    return None if all(s == 1 for s in P.stride) else _evolve(P, dx_unstuffed=True)


def _dw_not_summed(P, case):
    if not P.batched or case.arrays["x"].shape[0] < 2:
        return None
    return _evolve(P, dw_first_sample=True)


def _dw_kernel_flipped(P, case):
    return None if math.prod(case.arrays["w"].shape[:-2]) == 1 else _evolve(P, dw_flip=True)


# weight standardization


def _n_per_channel(P: WSProblem, case) -> int:
    w = case.arrays["w"]
    return w.size // w.shape[P.out_axis]


def _ws_spec(P: WSProblem, case, **changes):
    """``P`` with spec fields changed (None when nothing changes or the spec is invalid)."""
    spec = P.spec
    try:
        new = replace(spec, **changes)
    except ValueError:
        return None
    if new == spec or (new.ddof == 1 and _n_per_channel(P, case) < 2):
        return None
    return replace(P, spec=new)


def _ws_ddof(ddof: int):
    return lambda P, case: _ws_spec(P, case, ddof=ddof)


def _ws_denominator(form: str):
    def slip(P, case):
        spec = P.spec
        if spec.denominator == form:
            return None
        fan = spec.fan or "fan_in" if form == "max_var_n" or spec.fixed_scale is not None else None
        return _ws_spec(P, case, denominator=form, fan=fan)

    return slip


def _ws_fan(fan: str):
    def slip(P, case):
        if P.spec.fan is None or case.arrays["w"].size == _n_per_channel(P, case):
            return None
        return _ws_spec(P, case, fan=fan)

    return slip


def _ws_no_fan(P, case):
    spec, n = P.spec, _n_per_channel(P, case)
    if spec.fan is None:
        return None
    if spec.denominator == "max_var_n":
        # sqrt(max(var, eps)) = sqrt(max(var * n, eps * n)) / sqrt(n): refws with N = n, eps * n
        q = _ws_spec(P, case, fan="fan_in")
        q = replace(q if q is not None else P, eps=P.eps * n, scale=P.scale * math.sqrt(n))
        if spec.fixed_scale is not None:
            q = replace(q, scale=q.scale * math.sqrt(_fan_size(spec, case, n)))
        return q
    q = _ws_spec(P, case, fixed_scale=None, fan=None)
    return None if q is None else replace(q, scale=P.scale * spec.fixed_scale)


def _fan_size(spec, case, n: int) -> int:
    return n if spec.fan == "fan_in" else case.arrays["w"].size


def _ws_gain_ignored(P, case):
    return replace(P, use_gain=False) if P.use_gain and "gain" in case.arrays else None


def _ws_mean_not_subtracted(P, case):
    return replace(P, centred=False) if P.centred else None


VARIANTS: dict = {
    v.name: v
    for v in (
        # convolution
        Variant(
            "kernel_flipped",
            "true convolution: the kernel flipped along every spatial axis (instead of cross-correlation)",
            _CONV,
            _FWD,
            _kernel_flipped,
            keeps_shape=True,
        ),
        Variant(
            "same_lower",
            "SAME's extra pad on the low side (SAME_LOWER instead of SAME)",
            _CONV,
            _FWD,
            _same_to("SAME_LOWER"),
            keeps_shape=True,
        ),
        Variant(
            "same_upper",
            "SAME_LOWER's extra pad on the high side (SAME instead of SAME_LOWER)",
            _CONV,
            _FWD,
            _same_to("SAME"),
            keeps_shape=True,
        ),
        Variant(
            "same_ignores_rhs_dilation",
            "SAME pads computed for the undilated kernel (the padding rule "
            "ignores rhs_dilation; the convolution does not)",
            _CONV,
            _FWD,
            _same_ignores_rhs_dilation,
        ),
        Variant("pads_swapped", "each (lo, hi) pad read as (hi, lo)", _CONV, _FWD, _pads_swapped, keeps_shape=True),
        Variant("padding_ignored", "no padding at all (pads (0, 0))", _CONV, _FWD, _padding_ignored),
        Variant(
            "high_crop_ignores_low_pad",
            "a negative high pad cropped at the unpadded input's end, so it also "
            "removes the low pad's length: (lo, hi) read as (lo, hi - lo) where lo > 0 > hi",
            _CONV,
            _FWD,
            _high_crop_ignores_low_pad,
        ),
        Variant(
            "rhs_dilation_ignored",
            "rhs (kernel) dilation ignored",
            _CONV,
            _FWD,
            _set_factor("rhs_dilation", lambda d: (1,) * len(d)),
        ),
        Variant(
            "rhs_dilation_plus_one",
            "rhs dilation d taken as the number of zeros between taps (taps d + 1 apart)",
            _CONV,
            _FWD,
            _set_factor("rhs_dilation", lambda d: tuple([v + 1 for v in d])),
        ),
        Variant(
            "lhs_dilation_ignored",
            "lhs (input) dilation ignored",
            _CONV,
            _FWD,
            _set_factor("lhs_dilation", lambda d: (1,) * len(d)),
        ),
        Variant(
            "stride_ignored",
            "stride ignored (stride 1)",
            _CONV,
            _FWD,
            _set_factor("stride", lambda s: (1,) * len(s)),
        ),
        Variant(
            "spatial_args_swapped",
            "per-axis stride, padding and dilations applied to the first two spatial axes exchanged",
            _CONV,
            _FWD,
            _spatial_args_swapped,
        ),
        Variant(
            "kernel_axes_swapped", "the kernel's first two spatial axes exchanged", _CONV, _FWD, _kernel_axes_swapped
        ),
        Variant(
            "spatial_axes_swapped",
            "the data's first two spatial axes exchanged (kernel and per-axis arguments as given)",
            _CONV,
            _FWD,
            _spatial_axes_swapped,
        ),
        Variant(
            "groups_interleaved",
            "group g takes input channels g, g + G, g + 2G, ... instead of a contiguous block",
            _BOTH,
            _FWD,
            _groups_interleaved,
            keeps_shape=True,
        ),
        Variant(
            "channels_first_misread",
            "channels-first data reinterpreted as channels-last or the reverse "
            "(a reshape where a transpose was needed)",
            _BOTH,
            _FWD,
            _channels_first_misread,
        ),
        # transposed convolution
        Variant(
            "output_padding_ignored",
            "output_padding only enlarges the output: the rows it adds at the "
            "high end hold zeros (plus the bias) instead of computed values",
            _TRANSPOSE,
            _FWD,
            _output_padding(low=False),
            keeps_shape=True,
        ),
        Variant(
            "output_padding_low",
            "output_padding added at the start instead of the end",
            _TRANSPOSE,
            _FWD,
            _output_padding(low=True),
            keeps_shape=True,
        ),
        Variant(
            "transpose_kernel_not_flipped",
            "transposed convolution with the kernel not flipped (in/out channels swapped only)",
            _TRANSPOSE,
            _FWD,
            _transpose_kernel_not_flipped,
            keeps_shape=True,
        ),
        Variant(
            "transpose_weight_io_swapped",
            "the weight (C_in, C_out/g, *k) read as (C_out, C_in/g, *k) "
            "(reshaped where the in/out axes needed swapping)",
            _TRANSPOSE,
            _FWD,
            _transpose_weight_io_swapped,
            keeps_shape=True,
        ),
        Variant("bias_missing", "the bias not added", _TRANSPOSE, ("y", "ty", "db"), _bias(0), keeps_shape=True),
        Variant("bias_twice", "the bias added twice", _TRANSPOSE, ("y", "ty", "db"), _bias(2), keeps_shape=True),
        # derivatives
        Variant(
            "dx_stride_ignored",
            "dx computed without zero-stuffing dy by the stride (as for stride 1), fitted to x's size",
            _CONV,
            ("dx",),
            _dx_stride_ignored,
            keeps_shape=True,
        ),
        Variant(
            "dw_not_summed_over_batch",
            "dw from the first batch item only (not summed over the batch)",
            _BOTH,
            ("dw",),
            _dw_not_summed,
            keeps_shape=True,
        ),
        Variant(
            "dw_kernel_flipped",
            "dw flipped along every spatial axis",
            _BOTH,
            ("dw",),
            _dw_kernel_flipped,
            keeps_shape=True,
        ),
        # weight standardization
        Variant("ws_ddof0", "variance with ddof 0 (biased) instead of 1", _WS, _WS_ARRAYS, _ws_ddof(0)),
        Variant("ws_ddof1", "variance with ddof 1 (unbiased) instead of 0", _WS, _WS_ARRAYS, _ws_ddof(1)),
        Variant(
            "ws_eps_inside_sqrt", "denominator sqrt(var + eps)", _WS, _WS_ARRAYS, _ws_denominator("sqrt_var_plus_eps")
        ),
        Variant("ws_eps_outside_sqrt", "denominator std + eps", _WS, _WS_ARRAYS, _ws_denominator("std_plus_eps")),
        Variant("ws_eps_clamp", "denominator sqrt(max(var * N, eps))", _WS, _WS_ARRAYS, _ws_denominator("max_var_n")),
        Variant(
            "ws_fan_numel", "N = every element of the weight (numel), not the fan-in", _WS, _WS_ARRAYS, _ws_fan("numel")
        ),
        Variant(
            "ws_fan_in", "N = the fan-in (elements per output channel), not numel", _WS, _WS_ARRAYS, _ws_fan("fan_in")
        ),
        Variant("ws_no_fan", "no N: sqrt(max(var, eps)) (or no N**-0.5 scale)", _WS, _WS_ARRAYS, _ws_no_fan),
        Variant("ws_gain_ignored", "the gain not applied", _WS, _WS_ARRAYS, _ws_gain_ignored),
        Variant(
            "ws_mean_not_subtracted",
            "the mean not subtracted from the weight (the variance still centred)",
            _WS,
            ("w_hat",),
            _ws_mean_not_subtracted,
        ),
    )
}

# The double slips tried when no single variant matches (the first is applied first).
PAIRS: tuple = (
    ("kernel_flipped", "pads_swapped"),
    ("kernel_flipped", "same_lower"),
    ("kernel_flipped", "same_upper"),
    ("kernel_flipped", "groups_interleaved"),
    ("kernel_flipped", "spatial_axes_swapped"),
    ("kernel_flipped", "channels_first_misread"),
    ("pads_swapped", "spatial_args_swapped"),
    ("same_lower", "same_ignores_rhs_dilation"),
    ("same_upper", "same_ignores_rhs_dilation"),
    ("transpose_kernel_not_flipped", "output_padding_low"),
    ("transpose_kernel_not_flipped", "output_padding_ignored"),
    ("transpose_kernel_not_flipped", "transpose_weight_io_swapped"),
    ("transpose_kernel_not_flipped", "bias_missing"),
    ("output_padding_ignored", "bias_missing"),
    ("dw_kernel_flipped", "dw_not_summed_over_batch"),
    ("ws_ddof0", "ws_fan_in"),
    ("ws_ddof1", "ws_fan_numel"),
    ("ws_ddof0", "ws_eps_inside_sqrt"),
    ("ws_ddof0", "ws_eps_outside_sqrt"),
    ("ws_ddof1", "ws_eps_inside_sqrt"),
    ("ws_ddof1", "ws_eps_outside_sqrt"),
    ("ws_gain_ignored", "ws_ddof0"),
    ("ws_gain_ignored", "ws_ddof1"),
)


def _check_tables():
    for pair in PAIRS:
        for name in pair:
            if name not in VARIANTS:
                raise RuntimeError(f"PAIRS names an unknown variant {name!r}")


_check_tables()


# --- matching ------------------------------------------------------------------------------------


def _applies(variant: Variant, suite: str, array: str) -> bool:
    return suite in variant.suites and array in variant.arrays


@functools.lru_cache(maxsize=64)
def _candidates(suite: str, array: str) -> tuple:
    """The single variants, then the pairs, that apply to a suite's array (in table order), each
    as ``(names, cache key of its problem, whether it keeps every array's shape)``."""
    singles = tuple((name,) for name, v in VARIANTS.items() if _applies(v, suite, array))
    pairs = tuple(pair for pair in PAIRS if all(_applies(VARIANTS[n], suite, array) for n in pair))
    return tuple(tuple((names, ("slip", names), _keeps_shape(names)) for names in group) for group in (singles, pairs))


def _keeps_shape(names: tuple) -> bool:
    """Whether a variant or pair keeps every array's shape (each of its slips does)."""
    return all(VARIANTS[n].keeps_shape for n in names)


def _terms(P, case, array: str) -> int:
    """An upper bound on the products summed into one element of the variant's ``array``."""
    w = case.arrays["w"]
    taps = math.prod(w.shape[:-2])
    if array in ("y", "ty"):
        c_in = _info(P, case)[2][-2]
        return (2 if array == "ty" else 1) * taps * c_in + (1 if P.bias_scale else 0)
    if array == "dx":
        return taps * max(w.shape[-1], w.shape[-2])
    dy = case.arrays["dy"]
    return max(1, dy.size // max(1, dy.shape[_channel_axis(dy.ndim, case.params["channel_first"], P.batched)]))


def _out_shape(P, case, array: str):
    """The shape of the variant's ``array`` without computing it (None: the variant does not define it)."""
    if isinstance(P, WSProblem):
        return case[array].shape
    y_shape = _shapes(P, case)[7]
    if array in ("y", "ty"):
        return y_shape
    if y_shape != case.arrays["dy"].shape:
        return None
    if array == "db":
        return case.arrays["b"].shape if P.bias_scale and "b" in case.arrays else None
    return case[{"dx": "x", "dw": "w"}[array]].shape


def _y_shape(P: ConvProblem, case) -> tuple:
    """The shape of the problem's ``y`` (see :func:`_shapes`)."""
    return _shapes(P, case)[7]


def _max_abs(case, name: str) -> float:
    """``max |a|`` of a stored array (0 for an absent one), once per case."""
    return _cached(
        case,
        ("max_abs", name),
        lambda: float(np.abs(case.arrays[name]).max(initial=0.0)) if name in case.arrays else 0.0,
    )


def _upper_magnitude(P, case, array: str, K: int) -> float:
    """A scalar upper bound on the variant's magnitudes ``m`` (rejects most variants cheaply)."""

    def mx(name):
        return _max_abs(case, name)

    bias = abs(P.bias_scale)
    if array == "y":
        return K * mx("x") * mx("w") + (bias * mx("b") if bias else 0.0)
    if array == "ty":
        return K * max(mx("tx") * mx("w"), mx("x") * mx("tw")) + (bias * mx("tb") if bias else 0.0)
    if array == "dx":
        return K * mx("dy") * mx("w")
    if array == "dw":
        return K * mx("x") * mx("dy")
    return K * mx("dy") * bias


@dataclass(frozen=True)
class _MemoBound(Bound):
    """A :class:`~refws.tolerance.Bound` that computes its input-rounding terms once per precision
    (they depend only on the stored operands, which no variant changes)."""

    memo: dict = field(default_factory=dict, compare=False, repr=False)

    def c_in(self, precision) -> float:
        key = ("c_in", resolve_precision(precision).name)
        if key not in self.memo:
            self.memo[key] = super().c_in(precision)
        return self.memo[key]

    def u_ws(self, precision) -> float:
        key = ("u_ws", resolve_precision(precision).name)
        if key not in self.memo:
            self.memo[key] = super().u_ws(precision)
        return self.memo[key]


_BOUND_FIELDS = tuple(f.name for f in fields(Bound))


def _stored_bound(case, array: str) -> _MemoBound:
    """The stored bound data of ``array`` (once per case: every variant and precision reuses it)."""

    def compute():
        stored = golden_bound(case, array)
        memo = object.__new__(_MemoBound)  # the fields copied without a frozen __init__'s setattr calls
        memo.__dict__.update({name: getattr(stored, name) for name in _BOUND_FIELDS}, memo={})
        return memo

    return _cached(case, ("bound", array), compute)


def _errors(actual: np.ndarray, v: np.ndarray) -> np.ndarray:
    """``|actual - v|`` in float64 (``v`` is float64: the difference is promoted): ``inf`` or NaN
    where ``actual`` is not finite, which every comparison with a bound below reads as outside it
    (``err <= bound`` is False for both)."""
    return np.abs(actual - v)


def _conv_bounds(P, case, array: str, bound: Bound) -> tuple:
    """``(K, gamma_K(2**-53), M)``: the variant's term count, refws's own float64 rounding factor
    and a scalar upper bound ``K max|a| max|b|`` on its magnitudes."""

    def compute():
        K = max(bound.K, _terms(P, case, array))
        return K, _gamma64(K), _upper_magnitude(P, case, array, K)

    # both depend on the problem only through its inner input channels (y, ty) and bias scale
    c_in = _info(P, case)[2][-2] if array in ("y", "ty") else 0
    return _cached(case, ("bounds", array, bound.K, c_in, P.bias_scale), compute)


@functools.lru_cache(maxsize=256)
def _gamma64(K: int) -> float:
    return _gamma(K, _U64)


def _gamma(K: int, u: float) -> float:
    """:func:`refws.tolerance.gamma` of one ``K``, in Python floats (the same IEEE operations,
    without NumPy's per-call cost)."""
    ku = K * u
    return ku / (1 - ku) if ku < 1 else math.inf


def _bound_lines(bound: Bound, K: int, g64: float, M: float, prec) -> tuple:
    """``(at 0, slope, floor slope)``: a loose bound ``at0 + slope |value|``, no smaller than the
    variant's rigorous one (scalar magnitudes ``M``), and the line of :func:`_floor_bounds`.

    The bound is affine in ``|value|`` (its ``u_out |y|`` term), so its values at 0 and 1 give the
    loose bound for every value; the bound from the magnitudes floor is linear in ``|v|`` (its
    magnitudes and extra term are multiples of ``|v|``), so its value at 1 gives it. Computed once
    per bound, term count, magnitude and precision."""
    p = resolve_precision(prec)
    key = (K, M, p.name)
    memo = getattr(bound, "memo", {})
    if key not in memo:
        a = _bound_factor(bound, K, p)
        m, extra, floor = M * (1 + 2 * g64), 2 * g64 * M, _floor_factor(g64)  # the floor at |v| = 1
        at0, at1 = _bound_at(a, m, extra, 0.0, p), _bound_at(a, m, extra, 1.0, p)
        memo[key] = (at0, at1 - at0, _bound_at(a, floor, g64 * floor, 1.0, p))
    return memo[key]


def _bound_factor(bound: Bound, K: int, p) -> float | None:
    """``c_in + gamma_K(u_acc) (1 + c_in)``, the factor of the magnitudes in
    :func:`refws.tolerance.element_bound` (None: no magnitudes term, ``K = 0``)."""
    if K <= 0:
        return None
    c_in = bound.c_in(p)
    return c_in + _gamma(K, p.u_acc) * (1.0 + c_in)


def _bound_at(a: float | None, m: float, extra: float, value: float, p) -> float:
    """:func:`refws.tolerance.element_bound` (rigorous, no ``W``) of one element with magnitude
    ``m``, ``extra`` term and value ``value`` (``a`` from :func:`_bound_factor`), in Python floats:
    the same IEEE operations in the same order, so the same number (``spec_tests/test_diagnosis.py``),
    without NumPy's per-call cost on a one-element array."""
    total = 0.0 if a is None else a * m
    total = total + extra
    total = total * (1.0 + p.u_out) + p.u_out * abs(value)
    return total * _SLACK


def _floor_bounds(size: np.ndarray, floor1: float) -> np.ndarray:
    """Per-element bounds no larger than ``element_bound`` of the magnitudes floor at values of
    absolute value ``size``.

    That bound is ``floor1 |v|`` in exact arithmetic; each computation of it is within a few ulps
    (relative, above underflow) and a few smallest subnormals (absolute): ``(1 - 2**-45)`` and
    ``2**-1060`` put this one below it, and no bound is below 0."""
    return np.maximum(size * (floor1 * (1 - 2.0**-45)) - 2.0**-1060, 0.0)


class _Probe:
    """The elements a screen looks at: ``points`` (see :func:`_sample_points`), the backend's values
    there (``actual``) and refws's (``exact``, None where the backend's shape is not refws's);
    ``spread``, more elements evenly spread over the array with refws's values. Each is computed
    when first asked for (a diagnosis that evaluates no variant never asks)."""

    SPREAD = 8
    #: Arrays of more elements are looked at on the probe's points from the first full evaluation
    #: on; a smaller one is compared whole until a variant differs there (a whole comparison of a
    #: small array costs about what sampling the probe does, and one failing small array of a
    #: sub-millisecond case often has a single evaluation besides its match).
    ARMED_SIZE = 128

    def __init__(self, actual: np.ndarray, exact: np.ndarray):
        self._actual_array, self._exact_array = actual, exact
        self.armed = actual.size > self.ARMED_SIZE  # full evaluations look at the points first (_conv_match)
        self._sampled = False
        self._points: list = []
        self._actual: list = []
        self._exact: list | None = None
        self._spread: list | None = None

    def _sample(self) -> None:
        actual, exact = self._actual_array, self._exact_array
        self._points = _sample_points(actual, exact)
        self._actual = [float(actual[e]) for e in self._points]
        self._exact = [float(exact[e]) for e in self._points] if exact.shape == actual.shape else None
        self._sampled = True

    @property
    def points(self) -> list:
        if not self._sampled:
            self._sample()
        return self._points

    @property
    def actual(self) -> list:
        if not self._sampled:
            self._sample()
        return self._actual

    @property
    def exact(self) -> list | None:
        if not self._sampled:
            self._sample()
        return self._exact

    @property
    def spread(self) -> list:
        """``(index, refws's value)`` at up to :attr:`SPREAD` elements not among ``points``."""
        if self._spread is None:
            exact, taken = self._exact_array, set(self.points)
            flat = dict.fromkeys(i * exact.size // self.SPREAD for i in range(min(self.SPREAD, exact.size)))
            index = [_unflat(f, exact.shape) for f in flat]
            self._spread = [(e, float(exact[e])) for e in index if e not in taken]
        return self._spread


def _screen(P, case, array: str, probe: _Probe, bound: Bound, prec) -> str | None:
    """``"differs"`` when the variant is told apart from both refws and the backend at a few
    elements (no full evaluation needed), else None.

    The probe's points are visited in order until the variant is seen to differ from the backend
    (beyond the loose bound) and from refws (beyond refws's own rounding) there; a variant seen
    to differ from the backend but equal to refws at those points is also looked at on the probe's
    spread elements, for a difference from refws only (the full evaluation would otherwise decide
    between ``"differs"`` and ``"same"``)."""
    if not probe.points or array not in ("y", "ty", "dx", "dw"):
        return None
    at = _point_evaluator(P, case, array)
    if at is None:
        return None
    K, g64, M = _conv_bounds(P, case, array, bound)
    at0, slope, _ = _bound_lines(bound, K, g64, M, prec)
    exact, same = probe.exact, 2 * g64 * M
    distinct = mismatch = False
    for i, e in enumerate(probe.points):
        value = at(e)
        distinct = distinct or exact is None or abs(value - exact[i]) > same
        got = probe.actual[i]
        err = abs(got - value) if math.isfinite(got) else math.inf
        mismatch = mismatch or err > at0 + slope * abs(value)
        if distinct and mismatch:
            return "differs"
    if mismatch:
        for e, ref in probe.spread:
            if abs(at(e) - ref) > same:
                return "differs"
    return None


def _conv_match(P, case, array: str, actual: np.ndarray, v: np.ndarray, bound: Bound, prec, probe=None) -> str:
    """``"match"``, ``"differs"`` or ``"same"`` (indistinguishable from refws's correct value).

    With a ``probe`` armed (by a first variant that differs on the whole array), the value is first
    looked at on the probe's points (:func:`_differs_at_points`): most variants differ from both
    refws and the backend there, which settles them before any whole-array comparison.

    The variant's own float64 rounding (``gamma_K(2**-53) m``) is added to the bound and ``m``
    inflated by ``1 + 2 gamma_K(2**-53)``, as for any refws value that is not exact. A scalar bound
    from ``K max|a| max|b|`` rejects most variants, and a bound from ``|v|`` (no larger than the
    one from the magnitudes, see :func:`_magnitudes_floor`) accepts most matches, before their
    magnitudes are computed.
    """
    K, g64, M = _conv_bounds(P, case, array, bound)
    at0, slope, floor1 = _bound_lines(bound, K, g64, M, prec)
    if probe is not None and probe.armed and _differs_at_points(v, probe, 2 * g64 * M, at0, slope):
        return "differs"
    exact = case.arrays[array]
    if v.shape == exact.shape and (v.size == 0 or np.abs(v - exact).max() <= 2 * g64 * M):
        return "same"
    err, size = _errors(actual, v), np.abs(v)
    if not (err <= at0 + slope * size).all():  # NaN included (array methods: no Python wrapper)
        if probe is not None:
            probe.armed = True  # one variant differs: the next ones likely do too, seen at a few points
        return "differs"
    if math.isfinite(floor1) and (err <= _floor_bounds(size, floor1)).all():  # inf: K u >= 1, no floor
        return "match"
    if not err.any():
        return "match"
    m = variant_value(P, case, array, absolute=True) * (1 + 2 * g64)
    tight = replace(bound, m=m, K=K, W=None, extra=g64 * m)
    return "match" if np.all(err <= element_bound(tight, v, prec)) else "differs"


def _differs_at_points(v: np.ndarray, probe: _Probe, same: float, at0: float, slope: float) -> bool:
    """Whether ``v`` differs from refws (beyond ``same``) at one of the probe's points and from the
    backend (beyond the loose bound ``at0 + slope |v|``) at one: then the whole-array comparison
    says ``"differs"`` too (not the same as refws somewhere, beyond the bound somewhere)."""
    exact = probe.exact
    distinct = mismatch = False
    for i, e in enumerate(probe.points):
        value = float(v[e])
        distinct = distinct or exact is None or abs(value - exact[i]) > same
        got = probe.actual[i]
        err = abs(got - value) if math.isfinite(got) else math.inf
        mismatch = mismatch or err > at0 + slope * abs(value)
        if distinct and mismatch:
            return True
    return False


def _magnitudes_floor(v: np.ndarray, g64: float) -> np.ndarray:
    """A lower bound on the inflated magnitudes ``m (1 + 2 gamma)`` of a bilinear value ``v``.

    With ``gamma = gamma_K(2**-53)``, refws's ``v`` is within ``gamma m*`` of the exact value and
    its ``m`` within ``gamma m*`` of the exact magnitudes ``m* >= |exact value|``, so
    ``|v| <= m (1 + gamma) / (1 - gamma)`` and ``|v| (1 - 2 gamma - 2**-40) <= m (1 + 2 gamma)``
    even after the rounding of both products (the ``2**-40`` covers it many times over). The
    bound is monotone in ``m`` and ``extra``, so an array within the bound from this floor is
    within the bound from the magnitudes."""
    return np.abs(v) * _floor_factor(g64)


def _floor_factor(g64: float) -> float:
    """The magnitudes floor of :func:`_magnitudes_floor` at ``|v| = 1``."""
    return 1.0 - 2.0 * g64 - 2.0**-40


def _ws_match(P, case, array: str, actual: np.ndarray, v: np.ndarray, bound: Bound, prec) -> str:
    exact = case.arrays[array]
    top = float(np.max(np.abs(exact), initial=0.0))
    vtop = float(np.max(np.abs(v), initial=0.0))
    if bound.W is not None:
        W = bound.W * max(1.0, vtop / top if top > 0 else 1.0)
    else:
        W = np.full(v.shape, (_n_per_channel(P, case) + 4) * vtop)
    own = replace(bound, m=None, W=W, extra=None)
    own = replace(own, extra=element_bound(own, v, "float64") + 4 * _U64 * np.abs(v))
    if np.all(_errors(exact, v) <= element_bound(own, v, "float64")):
        return "same"
    return "match" if np.all(_errors(actual, v) <= element_bound(own, v, prec)) else "differs"


def _try(P, case, array: str, actual: np.ndarray, bound: Bound, prec, probe: _Probe) -> str | None:
    """The outcome for one problem: ``"match"``, ``"differs"``, or None (not tried)."""
    if _out_shape(P, case, array) != actual.shape:
        return None
    if isinstance(P, ConvProblem) and _info(P, case)[5] > SCREEN_MIN:
        if _screen(P, case, array, probe, bound, prec) == "differs":
            return "differs"
    v = variant_value(P, case, array)
    if v is None or v.shape != actual.shape:
        return None
    if isinstance(P, WSProblem):
        outcome = _ws_match(P, case, array, actual, v, bound, prec)
    else:
        outcome = _conv_match(P, case, array, actual, v, bound, prec, probe)
    return None if outcome == "same" else outcome


def _slip(names: tuple, P, case):
    for name in names:
        P = VARIANTS[name].slip(P, case)
        if P is None:
            return None
    return P


def diagnose(backend, case, array: str, actual, precision) -> dict:
    """Which near-miss variants explain a failing array: ``{"matches": [...], "tried": n}``.

    ``matches`` names every single variant of :data:`VARIANTS` under which ``actual`` passes the
    rigorous bound of ``precision`` (see the module doc); when none does, every pair of
    :data:`PAIRS` is tried and matching pairs are named ``"a+b"``. ``tried`` counts the variants
    and pairs that apply to the case and array, give an output of ``actual``'s shape and differ
    from refws's correct value there. ``backend`` is not used (the hook's signature).

    What does not depend on ``actual`` (the problems, their shapes and bound data, mapped
    operands, values) is computed once per case, for the case last asked about.
    """
    prec = resolve_precision(precision)
    base = _cached(case, "base", lambda: base_problem(case))
    try:
        actual = np.asarray(actual)
    except Exception:  # noqa: BLE001 - nothing array-like to compare
        return {"matches": [], "tried": 0}
    if base is None or array not in case.arrays or actual.dtype.kind not in "fiu":
        return {"matches": [], "tried": 0}
    bound = _stored_bound(case, array)
    probe = _Probe(actual, case.arrays[array])
    matches, tried = [], 0
    reshaped = actual.shape != case.arrays[array].shape  # only a shape-changing slip can explain it
    problems = _values(case)
    for group in _candidates(case.suite, array):
        for names, key, keeps_shape in group:
            if reshaped and keeps_shape:
                continue
            P = problems.get(key, _MISSING)
            if P is _MISSING:
                P = problems[key] = _slip(names, base, case)
            outcome = None if P is None else _try(P, case, array, actual, bound, prec, probe)
            if outcome is not None:
                tried += 1
                if outcome == "match":
                    matches.append("+".join(names))
        if matches:
            break
    return {"matches": matches, "tried": tried}


def clear_caches() -> None:
    """Forget everything cached (per case and per geometry): the next diagnosis pays in full."""
    _CACHE["case"], _CACHE["values"] = None, {}
    _INDEX_CACHE.clear()
    for cached in (_geometry_of, _reads, _gamma64):
        cached.cache_clear()


def describe(name: str) -> str:
    """The description of a variant or pair name (``"a+b"``)."""
    return "; ".join(VARIANTS[n].description for n in name.split("+"))


def diagnosis_text(diagnosis: dict | None) -> str:
    """One line per match (``matches refws under variant same_lower: SAME's extra pad ...``), or
    the number tried; empty for no diagnosis."""
    if not diagnosis:
        return ""
    matches, tried = diagnosis.get("matches", []), diagnosis.get("tried", 0)
    if not matches:
        return (
            "no near-miss variant applies to this case"
            if not tried
            else f"matches refws under none of the {tried} near-miss variants tried"
        )
    lines = []
    for name in matches:
        parts = name.split("+")
        label = f"variant {name}" if len(parts) == 1 else f"variants {' + '.join(parts)}"
        lines.append(f"matches refws under {label}: {describe(name)}")
    return "\n".join(lines)


def variant_geometry(case, name: str) -> str:
    """The geometry of a convolution-like case under a variant or pair (``""`` for other suites)."""
    base = base_problem(case)
    P = None if not isinstance(base, ConvProblem) else _slip(tuple(name.split("+")), base, case)
    if P is None:
        return ""
    g = P.geometry(case.arrays["x"].shape, case.arrays["w"].shape)[0]
    return (
        f"under {name}: explicit pads {g.padding}, stride {g.stride}, lhs_dilation {g.lhs_dilation}, "
        f"rhs_dilation {g.rhs_dilation} -> output {g.out_spatial}"
    )


def explain_records(case, records) -> str:
    """``refws check --explain``: the case's geometry with the failing elements of ``records``
    marked, then each failing array's location summary, its diagnosis and the geometry under
    each matching variant."""
    failing = {r.array: r.where for r in records if r.case == case.name and r.status == "fail"}
    lines = [explain_case(case.suite, case.params, failing, title=f"{case.name}: geometry")]
    shown = set()
    for r in records:
        if r.case != case.name or r.status != "fail":
            continue
        details = [s.strip() for s in r.message.splitlines()[1:]]
        where = [s[len("where: ") :] for s in details if s.startswith("where: ")]
        lines.append(f"\nFAIL {r.array}: " + (where[0] if where else (details or [r.message])[0]))
        text = diagnosis_text(r.diagnosis)
        if text:
            lines.append("  " + text.replace("\n", "\n  "))
        for name in (r.diagnosis or {}).get("matches", []):
            geometry = variant_geometry(case, name)
            if geometry and name not in shown:
                shown.add(name)
                lines.append("  " + geometry)
    if not failing:
        lines.append("\nno failing array in this case")
    return "\n".join(lines)
