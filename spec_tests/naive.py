"""Definition-level convolution for the spec tests. Uses NO refws code (only numpy).

Everything here is written from the definition of the contract (issue 2, ../shared/NOTES.md), as
plain loops, so it can serve as the independent oracle for ``refws.conv`` and for later tests
(gradients, transposed convolution, layers). It is slow on purpose: keep the problems tiny.

Conventions
-----------
* Canonical layout: batched channels-last input ``x`` of shape ``(N, *spatial, C_in)``, kernel
  ``w`` of shape ``(*kernel, C_in // groups, C_out)`` (brainstate's HWIO), output
  ``(N, *out_spatial, C_out)``. ``to_channels_last`` / ``from_channels_last`` convert the other
  layouts of the contract (channel-first, unbatched).
* ``stride``, ``lhs_dilation``, ``rhs_dilation``: an int or one int per spatial dimension.
* ``pads``: explicit, one ``(lo, hi)`` pair per spatial dimension, applied to the lhs-dilated
  input. A negative side crops. ``naive_explicit_pads`` turns every padding form of the contract
  (strings, ints, pairs) into this explicit form.

Definition (cross-correlation, no kernel flip)
----------------------------------------------
With ``d = lhs_dilation``, the lhs-dilated input has ``(n - 1) * d + 1`` elements per spatial
dimension (0 if ``n == 0``), ``x`` at the multiples of ``d`` and zeros in between. The padded
input ``xpad`` has ``dilated + lo + hi`` elements and ``xpad[i] = dilated[i - lo]`` where that
index exists, else 0 (so a negative ``lo`` / ``hi`` crops). Then, with ``M = C_out // groups``,
``Cg = C_in // groups`` and ``g = co // M``::

    out[n, o..., co] = sum over taps t... and ci < Cg of
                       xpad[n, o * stride + t * rhs_dilation ..., g * Cg + ci] * w[t..., ci, co]

for every output position with ``o * stride + (k - 1) * rhs_dilation <= len(xpad) - 1``; the
output size per dimension is ``max(0, floor((len(xpad) - ((k - 1) * rhs_dilation + 1)) / stride) + 1)``.
"""

from __future__ import annotations

import numpy as np

__all__ = [
    "as_tuple",
    "naive_dilated_size",
    "naive_out_size",
    "naive_same_pads",
    "ceil_div",
    "naive_explicit_pads",
    "naive_dilate_pad",
    "naive_padded_value",
    "naive_conv",
    "naive_conv_at",
    "naive_im2col",
    "naive_conv_vjp",
    "naive_torch_pads",
    "naive_torch_pad",
    "naive_conv_transpose_weight_grad",
    "zero_stuff",
    "to_channels_last",
    "from_channels_last",
]


# --------------------------------------------------------------------------------------------
# Shapes
# --------------------------------------------------------------------------------------------
def as_tuple(value, ndim: int) -> tuple[int, ...]:
    """An int, or a sequence of ``ndim`` ints, as a tuple of ``ndim`` Python ints."""
    if isinstance(value, (int, np.integer)):
        return (int(value),) * ndim
    out = tuple(int(v) for v in value)
    if len(out) != ndim:
        raise ValueError(f"expected {ndim} values, got {value!r}")
    return out


def naive_dilated_size(n: int, lhs_dilation: int = 1) -> int:
    """Size of an axis of ``n`` elements with ``lhs_dilation - 1`` zeros inserted between elements."""
    return 0 if n == 0 else (n - 1) * lhs_dilation + 1


def naive_out_size(n: int, k: int, stride: int = 1, pad=(0, 0), lhs_dilation: int = 1, rhs_dilation: int = 1) -> int:
    """Output size of one spatial dimension: the number of window starts ``o * stride`` with the
    whole rhs-dilated window ``(k - 1) * rhs_dilation + 1`` inside the padded, lhs-dilated input.
    Zero (never negative) when no window fits."""
    lo, hi = pad
    padded = naive_dilated_size(n, lhs_dilation) + lo + hi
    window = (k - 1) * rhs_dilation + 1
    return max(0, (padded - window) // stride + 1)  # // floors, so a negative gap gives <= 0


def naive_same_pads(n: int, k: int, s: int = 1, d: int = 1, lower: bool = False) -> tuple[int, int]:
    """lax's SAME rule (``padtype_to_pads``), as written in ../shared/NOTES.md.

    ``out = ceil(n / s)``, ``total = max((out - 1) * s + (k - 1) * d + 1 - n, 0)``,
    ``lo = total // 2``, ``hi = total - lo``: the odd element goes at the end. ``lower=True``
    (SAME_LOWER) puts it at the start. ``n`` is the (undilated) input size, ``d`` the rhs dilation.
    """
    out = -(-n // s)
    total = max((out - 1) * s + (k - 1) * d + 1 - n, 0)
    small, big = total // 2, total - total // 2
    return (big, small) if lower else (small, big)


def _is_int(v) -> bool:
    return isinstance(v, (int, np.integer)) and not isinstance(v, bool)


def naive_explicit_pads(
    padding, in_spatial, kernel_spatial, stride=1, lhs_dilation=1, rhs_dilation=1
) -> tuple[tuple[int, int], ...]:
    """Every padding form of the contract as explicit ``(lo, hi)`` pairs (test-side reading).

    * ``"SAME"`` / ``"SAME_LOWER"`` / ``"VALID"``, any case (only with ``lhs_dilation`` all 1);
    * an int ``p``: ``(p, p)`` in every dimension;
    * a sequence of N ints: ``(p_i, p_i)`` per dimension;
    * a sequence of N ``(lo, hi)`` pairs: as given; a sequence of one pair: repeated;
    * for N = 1, a 2-int sequence is ``(lo, hi)``.
    """
    nd = len(in_spatial)
    stride = as_tuple(stride, nd)
    lhs_dilation = as_tuple(lhs_dilation, nd)
    rhs_dilation = as_tuple(rhs_dilation, nd)
    if isinstance(padding, str):
        mode = padding.upper()
        if any(d != 1 for d in lhs_dilation):
            raise ValueError("string padding with lhs dilation is not defined")
        if mode == "VALID":
            return ((0, 0),) * nd
        if mode in ("SAME", "SAME_LOWER"):
            return tuple(
                naive_same_pads(n, k, s, d, lower=mode == "SAME_LOWER")
                for n, k, s, d in zip(in_spatial, kernel_spatial, stride, rhs_dilation)
            )
        raise ValueError(f"unknown padding {padding!r}")
    if _is_int(padding):
        return ((int(padding), int(padding)),) * nd
    items = list(padding)
    if nd == 1 and len(items) == 2 and all(_is_int(v) for v in items):
        return ((int(items[0]), int(items[1])),)
    if len(items) == nd and all(_is_int(v) for v in items):
        return tuple((int(p), int(p)) for p in items)
    pairs = tuple((int(lo), int(hi)) for lo, hi in items)
    if len(pairs) == nd:
        return pairs
    if len(pairs) == 1:
        return pairs * nd
    raise ValueError(f"padding {padding!r} does not fit {nd} spatial dimensions")


# --------------------------------------------------------------------------------------------
# Layouts
# --------------------------------------------------------------------------------------------
def to_channels_last(a: np.ndarray, channel_first: bool, batched: bool) -> np.ndarray:
    """Any input/output-like array of the contract to batched channels-last ``(N, *spatial, C)``."""
    a = np.asarray(a)
    if not batched:
        a = a[None]
    if channel_first:
        a = np.moveaxis(a, 1, -1)
    return a


def from_channels_last(a: np.ndarray, channel_first: bool, batched: bool) -> np.ndarray:
    """Inverse of ``to_channels_last``."""
    if channel_first:
        a = np.moveaxis(a, -1, 1)
    if not batched:
        a = a[0]
    return a


def zero_stuff(a: np.ndarray, factors, axes) -> np.ndarray:
    """Insert ``f - 1`` zeros between consecutive elements along each axis in ``axes``.

    An axis of length ``n`` becomes ``naive_dilated_size(n, f)``. This is lhs dilation when
    applied to the spatial axes of an input, rhs dilation when applied to a kernel's taps.
    """
    a = np.asarray(a, dtype=np.float64)
    factors = as_tuple(factors, len(axes))
    shape = list(a.shape)
    for ax, f in zip(axes, factors):
        shape[ax] = naive_dilated_size(a.shape[ax], f)
    out = np.zeros(shape)
    index = [slice(None)] * a.ndim
    for ax, f in zip(axes, factors):
        index[ax] = slice(None, None, f)
    out[tuple(index)] = a
    return out


# --------------------------------------------------------------------------------------------
# The definition
# --------------------------------------------------------------------------------------------
def _source_index(i: int, n: int, lo: int, d: int):
    """Index into the original axis of length ``n`` read at padded position ``i``, or None for a
    zero (padding, or a hole inserted by lhs dilation ``d``)."""
    j = i - lo  # position in the lhs-dilated axis
    if j < 0 or j % d != 0 or j // d >= n:
        return None
    return j // d


def naive_padded_value(x: np.ndarray, n: int, position, c: int, pads, lhs_dilation) -> float:
    """``xpad[n, position..., c]`` straight from the index map (no padded array is built)."""
    src = []
    for i, size, (lo, _), d in zip(position, x.shape[1:-1], pads, lhs_dilation):
        j = _source_index(i, size, lo, d)
        if j is None:
            return 0.0
        src.append(j)
    return float(x[(n, *src, c)])


def naive_dilate_pad(x: np.ndarray, pads, lhs_dilation=1) -> np.ndarray:
    """``xpad``: the lhs-dilated, padded (or cropped) input, built element by element.

    x: ``(N, *spatial, C)``; result ``(N, *(dilated + lo + hi), C)``, float64.
    """
    x = np.asarray(x, dtype=np.float64)
    spatial = x.shape[1:-1]
    nd = len(spatial)
    lhs_dilation = as_tuple(lhs_dilation, nd)
    padded_shape = tuple(naive_dilated_size(n, d) + lo + hi for n, d, (lo, hi) in zip(spatial, lhs_dilation, pads))
    if any(s < 0 for s in padded_shape):
        raise ValueError(f"pads {pads} crop more than the input {spatial} holds")
    xpad = np.zeros((x.shape[0], *padded_shape, x.shape[-1]))
    for pos in np.ndindex(*padded_shape):
        src = [_source_index(i, n, lo, d) for i, n, (lo, _), d in zip(pos, spatial, pads, lhs_dilation)]
        if None not in src:
            xpad[(slice(None), *pos, slice(None))] = x[(slice(None), *src, slice(None))]
    return xpad


def _normalize(x, w, stride, pads, lhs_dilation, rhs_dilation, groups):
    x = np.asarray(x, dtype=np.float64)
    w = np.asarray(w, dtype=np.float64)
    nd = w.ndim - 2
    if x.ndim != nd + 2:
        raise ValueError(f"naive: x must be (N, *spatial, C_in) with {nd} spatial dims, got {x.shape}")
    pads = ((0, 0),) * nd if pads is None else tuple((int(lo), int(hi)) for lo, hi in pads)
    if len(pads) != nd:
        raise ValueError(f"naive: expected {nd} (lo, hi) pairs, got {pads}")
    c_in, cg, c_out = x.shape[-1], w.shape[-2], w.shape[-1]
    if c_in != cg * groups or c_out % groups:
        raise ValueError(f"naive: channels {c_in} -> {c_out} do not fit groups={groups}, w {w.shape}")
    return (x, w, nd, as_tuple(stride, nd), pads, as_tuple(lhs_dilation, nd), as_tuple(rhs_dilation, nd))


def naive_conv(x, w, stride=1, pads=None, lhs_dilation=1, rhs_dilation=1, groups=1) -> np.ndarray:
    """The convolution of the module docstring, by loops over batch, output positions, kernel taps
    and groups; within a group the ``Cg`` input channels are contracted with the ``M`` output
    channels of that group (output channel ``co`` belongs to group ``co // M``).

    x: ``(N, *spatial, C_in)``; w: ``(*kernel, C_in // groups, C_out)``;
    pads: ``((lo, hi),) * N`` explicit (None = no padding). Returns ``(N, *out, C_out)`` float64.
    """
    x, w, nd, stride, pads, lhs, rhs = _normalize(x, w, stride, pads, lhs_dilation, rhs_dilation, groups)
    kernel = w.shape[:nd]
    cg, c_out = w.shape[-2], w.shape[-1]
    m = c_out // groups
    xpad = naive_dilate_pad(x, pads, lhs)
    out_spatial = tuple(
        naive_out_size(n, k, s, p, ld, rd) for n, k, s, p, ld, rd in zip(x.shape[1:-1], kernel, stride, pads, lhs, rhs)
    )
    out = np.zeros((x.shape[0], *out_spatial, c_out))
    for b in range(x.shape[0]):
        for o in np.ndindex(*out_spatial):
            for t in np.ndindex(*kernel):
                src = tuple(oi * si + ti * di for oi, si, ti, di in zip(o, stride, t, rhs))
                for g in range(groups):
                    x_vec = xpad[(b, *src, slice(g * cg, (g + 1) * cg))]  # (Cg,)
                    w_mat = w[(*t, slice(None), slice(g * m, (g + 1) * m))]  # (Cg, M)
                    out[(b, *o, slice(g * m, (g + 1) * m))] += x_vec @ w_mat
    return out


def naive_conv_at(x, w, index, stride=1, pads=None, lhs_dilation=1, rhs_dilation=1, groups=1) -> float:
    """One output element ``out[index]`` (``index = (n, *o, co)``) as a scalar double sum over
    taps and input channels, reading the input through the index map (``naive_padded_value``).
    Fully scalar: an independent check of ``naive_conv`` and a cheap spot check on big problems.
    """
    x, w, nd, stride, pads, lhs, rhs = _normalize(x, w, stride, pads, lhs_dilation, rhs_dilation, groups)
    b, *o, co = index
    cg, m = w.shape[-2], w.shape[-1] // groups
    g = co // m
    acc = 0.0
    for t in np.ndindex(*w.shape[:nd]):
        pos = [oi * si + ti * di for oi, si, ti, di in zip(o, stride, t, rhs)]
        for ci in range(cg):
            acc += naive_padded_value(x, b, pos, g * cg + ci, pads, lhs) * float(w[(*t, ci, co)])
    return acc


def naive_im2col(x, kernel_spatial, stride=1, pads=None, lhs_dilation=1, rhs_dilation=1) -> np.ndarray:
    """Columns ``cols[n, o..., t..., c] = xpad[n, o * stride + t * rhs_dilation ..., c]``.

    x: ``(N, *spatial, C)``; result ``(N, *out_spatial, *kernel_spatial, C)`` float64, so that
    ``cols.reshape(-1, K * C) @ w.reshape(K * C, C_out)`` is the ungrouped convolution.
    """
    x = np.asarray(x, dtype=np.float64)
    nd = x.ndim - 2
    kernel_spatial = as_tuple(kernel_spatial, nd)
    stride, lhs, rhs = (as_tuple(v, nd) for v in (stride, lhs_dilation, rhs_dilation))
    pads = ((0, 0),) * nd if pads is None else tuple(pads)
    xpad = naive_dilate_pad(x, pads, lhs)
    out_spatial = tuple(
        naive_out_size(n, k, s, p, ld, rd)
        for n, k, s, p, ld, rd in zip(x.shape[1:-1], kernel_spatial, stride, pads, lhs, rhs)
    )
    cols = np.zeros((x.shape[0], *out_spatial, *kernel_spatial, x.shape[-1]))
    for o in np.ndindex(*out_spatial):
        for t in np.ndindex(*kernel_spatial):
            src = tuple(oi * si + ti * di for oi, si, ti, di in zip(o, stride, t, rhs))
            cols[(slice(None), *o, *t, slice(None))] = xpad[(slice(None), *src, slice(None))]
    return cols


def ceil_div(a: int, b: int) -> int:
    """``ceil(a / b)`` for ints, exactly."""
    return -(-a // b)


# --------------------------------------------------------------------------------------------
# Derivatives, PyTorch's padding, the transposed convolution (for the gradient and golden tests)
# --------------------------------------------------------------------------------------------
def naive_conv_vjp(x, w, dy, stride, pads, lhs_dilation, rhs_dilation, groups):
    """``dx``, ``dw`` of the convolution from its definition (canonical layouts, explicit pads).

    Output position ``o`` and tap ``t`` read padded position ``q = o*s + t*d``; that is input
    element ``i = (q - lo) / L`` when the division is exact and ``0 <= i < n``, else a zero. Each
    such (o, t, i) contributes ``dy[o] w[t]^T`` to ``dx[i]`` and ``x[i]^T dy[o]`` to ``dw[t]``.
    The output positions are those of ``dy``: pass a ``dy`` of the convolution's output shape.
    """
    x, w, dy = (np.asarray(a, dtype=np.float64) for a in (x, w, dy))
    nd = w.ndim - 2
    kernel, cg, m = w.shape[:nd], w.shape[-2], w.shape[-1] // groups
    stride, lhs, rhs = (as_tuple(v, nd) for v in (stride, lhs_dilation, rhs_dilation))
    dx, dw = np.zeros(x.shape), np.zeros(w.shape)
    for o in np.ndindex(*dy.shape[1:-1]):
        for t in np.ndindex(*kernel):
            src = []
            for oi, ti, s, d, L, (lo, _), n in zip(o, t, stride, rhs, lhs, pads, x.shape[1:-1]):
                q = oi * s + ti * d - lo
                if q < 0 or q % L or q // L >= n:
                    break
                src.append(q // L)
            else:
                for g in range(groups):
                    ci, co = slice(g * cg, (g + 1) * cg), slice(g * m, (g + 1) * m)
                    dy_v = dy[(slice(None), *o, co)]  # (N, M)
                    dx[(slice(None), *src, ci)] += dy_v @ w[(*t, slice(None), co)].T
                    dw[(*t, slice(None), co)] += x[(slice(None), *src, ci)].T @ dy_v
    return dx, dw


def naive_torch_pads(padding, kernel_spatial, dilation=1) -> tuple[tuple[int, int], ...]:
    """PyTorch ``ConvNd``'s ``padding`` as explicit ``(lo, hi)`` pairs (torch.nn.Conv2d docs).

    An int or N ints: symmetric; ``'valid'``: none; ``'same'``: total ``d * (k - 1)`` per
    dimension, ``lo = total // 2`` and the odd element at the end (``hi = total - lo``).
    """
    nd = len(kernel_spatial)
    dilation = as_tuple(dilation, nd)
    if padding == "valid":
        return ((0, 0),) * nd
    if padding == "same":
        totals = [d * (k - 1) for k, d in zip(kernel_spatial, dilation)]
        return tuple((t // 2, t - t // 2) for t in totals)
    return tuple((p, p) for p in as_tuple(padding, nd))


#: PyTorch's ``padding_mode`` names -> ``numpy.pad`` modes with the same meaning.
TORCH_TO_NUMPY_PAD_MODE = {"zeros": "constant", "reflect": "reflect", "replicate": "edge", "circular": "wrap"}


def naive_torch_pad(x: np.ndarray, pads, padding_mode: str = "zeros") -> np.ndarray:
    """Pad the trailing ``len(pads)`` (spatial) axes of ``x`` as PyTorch's ``padding_mode`` does,
    with ``numpy.pad`` (torch's reflect / replicate / circular are numpy's reflect / edge / wrap)."""
    lead = [(0, 0)] * (np.ndim(x) - len(pads))
    return np.pad(x, lead + [tuple(p) for p in pads], mode=TORCH_TO_NUMPY_PAD_MODE[padding_mode])


def naive_conv_transpose_weight_grad(x, dy, kernel_spatial, stride, padding, dilation, groups) -> np.ndarray:
    """``dw`` of PyTorch's ConvTranspose from its scatter definition, PyTorch layouts.

    x: ``(N, C_in, *n)``; dy: ``(N, C_out, *m)`` (the output's shape); result ``(C_in, C_out/g, *k)``.
    The definition ``y[b, g*Cog + j, i*s - p + t*d] += x[b, g*Cg + c, i] * w[g*Cg + c, j, t]``
    (positions outside ``[0, m)`` dropped) gives
    ``dw[g*Cg + c, j, t] = sum over b, i of x[b, g*Cg + c, i] * dy[b, g*Cog + j, i*s - p + t*d]``.
    """
    x, dy = np.asarray(x, dtype=np.float64), np.asarray(dy, dtype=np.float64)
    nd = x.ndim - 2
    stride, padding, dilation = (as_tuple(v, nd) for v in (stride, padding, dilation))
    kernel_spatial = as_tuple(kernel_spatial, nd)
    c_in, cog = x.shape[1], dy.shape[1] // groups
    cg = c_in // groups
    dw = np.zeros((c_in, cog, *kernel_spatial))
    for i in np.ndindex(*x.shape[2:]):
        for t in np.ndindex(*kernel_spatial):
            o = tuple(ii * s - p + tt * d for ii, s, p, tt, d in zip(i, stride, padding, t, dilation))
            if not all(0 <= oo < mm for oo, mm in zip(o, dy.shape[2:])):
                continue
            for ci in range(c_in):
                g = ci // cg
                dy_o = dy[(slice(None), slice(g * cog, (g + 1) * cog), *o)]  # (N, Cog)
                dw[(ci, slice(None), *t)] += x[(slice(None), ci, *i)] @ dy_o
    return dw
