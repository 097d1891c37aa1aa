"""Hand-derived derivatives of :func:`refws.conv`: VJPs, JVP, and the transposed convolution.

The forward map (channels-last, per spatial dimension, see :mod:`refws.conv`)::

    P[n, i*L + lo, c] = x[n, i, c]                                    (zeros elsewhere)
    y[n, o, g*Cog + j] = sum_{t, c} P[n, o*s + t*d, g*Cg + c] * w[t, c, g*Cog + j]

is bilinear in ``(x, w)``, so its derivatives are two linear maps of the cotangent ``dy``::

    dx[n, i, g*Cg + c]  = sum_{o, t, j : i*L + lo = o*s + t*d} dy[n, o, g*Cog + j] * w[t, c, g*Cog + j]
    dw[t, c, g*Cog + j] = sum_{n, o} P[n, o*s + t*d, g*Cg + c] * dy[n, o, g*Cog + j]

Two independent derivations compute them (``method``):

- ``"col2im"``: the forward is ``cols @ w``; so ``dw = cols^T @ dy`` and ``dx = col2im(dy @ w^T)``.
- ``"conv"``: each of ``dx`` and ``dw`` is one call of :func:`refws.conv` with derived arguments
  (:func:`input_grad_pads`, :func:`weight_grad_pads`). docs/backward.md derives them index by index.

``"auto"`` (the default) picks one of them per half by shape (:func:`input_grad_method`,
:func:`weight_grad_method`); each is evaluated by the forward's formulations (im2col and BLAS, or
tap by tap with few channels per group).

The transposed convolution (PyTorch/ONNX ``ConvTranspose``) *is* ``dx`` of a forward convolution,
seen as a function of ``dy``; :func:`conv_transpose` says which forward convolution.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence

import numpy as np

from .arrays import as_float64, from_canonical, to_canonical
from .conv import (
    canonical_operands,
    check_conv_operands,
    check_groups,
    chunks,
    conv,
    conv_canonical,
    evaluator,
    parallel_workers,
    plan,
    row_windows,
    run_parts,
    taps_channels,
    workspace,
)
from .geometry import ConvGeometry, as_int_tuple, conv_geometry
from .im2col import dilate_pad_adjoint, padded_spatial_shape

__all__ = [
    "conv_vjp",
    "conv_jvp",
    "bias_vjp",
    "conv_transpose",
    "conv_transpose_vjp",
    "input_grad_pads",
    "weight_grad_pads",
    "flip_swap_kernel",
]

_METHODS = ("col2im", "conv")  # the two derivations; "auto" picks one per half by shape


def _check_method(method) -> str:
    if method != "auto" and method not in _METHODS:
        raise ValueError(
            f"method={method!r}: expected one of {_METHODS} or 'auto' (the default: "
            "chosen by shape, see refws.grads.input_grad_method)"
        )
    return method


def _layout_shape(n_batch, spatial, channels, channel_first: bool, unbatched: bool) -> tuple:
    """The user-facing shape of a canonical ``(N, *spatial, C)`` array."""
    inner = (channels, *spatial) if channel_first else (*spatial, channels)
    return inner if unbatched else (n_batch, *inner)


def _check_cotangent(dy, expected: tuple, what: str) -> np.ndarray:
    dy = as_float64(dy, "dy")
    if dy.shape != expected:
        raise ValueError(
            f"dy.shape={dy.shape}: expected {expected}, the shape of the {what} output "
            "for these arguments (same layout, same batching)"
        )
    return dy


# --- the derived arguments of method "conv" --------------------------------------------------


def flip_swap_kernel(w: np.ndarray, groups: int) -> np.ndarray:
    """Kernel of the adjoint map: spatially flipped, in/out channels exchanged within each group.

    ``w`` of shape ``(*k, A, G*B)`` becomes ``w'`` of shape ``(*k, B, G*A)`` with
    ``w'[t', b, g*A + a] = w[k - 1 - t', a, g*B + b]``.
    """
    k, (a, gb) = w.shape[:-2], w.shape[-2:]
    flipped = w[(slice(None, None, -1),) * len(k)]
    swapped = flipped.reshape(*k, a, groups, gb // groups).swapaxes(-3, -1)  # (*k, B, G, A)
    return swapped.reshape(*k, gb // groups, groups * a)


def input_grad_pads(g: ConvGeometry) -> tuple:
    """``(lo', hi')`` per dimension of the convolution that computes ``dx`` from ``dy``.

    ``dy`` is lhs-dilated by the stride ``s`` (``D[o*s] = dy[o]``), padded by
    ``lo' = k_d - 1 - lo`` (so that tap ``t`` of the flipped kernel meets ``dy[o]`` exactly when
    ``i*L + lo = o*s + t*d``) and by ``hi'`` chosen so that the output, read with stride ``L``,
    has exactly ``n`` entries: ``hi' = (n - 1)*L + k_d - len(D) - lo'``. Rows of ``x`` that no
    window read (stride remainder, cropping) fall on zeros of the padding and get gradient 0.
    """
    pads = []
    for n, (lo, _), L, s, kd, out in zip(
        g.in_spatial, g.padding, g.lhs_dilation, g.stride, g.dilated_kernel, g.out_spatial
    ):
        stuffed = (out - 1) * s + 1 if out > 0 else 0
        lo_t = kd - 1 - lo
        pads.append((lo_t, (n - 1) * L + kd - stuffed - lo_t))
    return tuple(pads)


def weight_grad_pads(g: ConvGeometry) -> tuple:
    """``(lo, hi - r)`` per dimension of the convolution that computes ``dw`` from ``x`` and ``dy``.

    ``r = n_p - k_d - (out - 1)*s`` is the number of padded rows past the last window (the stride
    remainder; they are never read). Cutting them off makes the output size exactly ``k``.
    """
    pads = []
    for n, (lo, hi), L, s, kd, out in zip(
        g.in_spatial, g.padding, g.lhs_dilation, g.stride, g.dilated_kernel, g.out_spatial
    ):
        n_padded = ((n - 1) * L + 1 if n > 0 else 0) + lo + hi
        pads.append((lo, hi - (n_padded - kd - (out - 1) * s)))
    return tuple(pads)


def _dx_conv(dy_cl: np.ndarray, w: np.ndarray, g: ConvGeometry, groups: int) -> np.ndarray:
    """``dx`` as one convolution: stride-dilated ``dy`` with the flipped, in/out-swapped kernel.

    The roles of stride and lhs dilation exchange: ``lhs_dilation = s``, ``stride = L``;
    ``rhs_dilation`` stays ``d``; pads from :func:`input_grad_pads`; same ``groups``.
    """
    return conv_canonical(dy_cl, flip_swap_kernel(w, groups), dx_conv_geometry(g), groups)


@functools.lru_cache(maxsize=1024)
def dx_conv_geometry(g: ConvGeometry) -> ConvGeometry:
    """The geometry of :func:`_dx_conv`'s convolution (cached: a function of ``g`` alone)."""
    return conv_geometry(
        g.out_spatial,
        g.kernel_spatial,
        stride=g.lhs_dilation,
        padding=input_grad_pads(g),
        lhs_dilation=g.stride,
        rhs_dilation=g.rhs_dilation,
    )


def _dw_conv(x_cl: np.ndarray, dy_cl: np.ndarray, g: ConvGeometry, groups: int) -> np.ndarray:
    """``dw`` as one convolution of ``x`` with ``dy`` as the kernel, batch and channels exchanged.

    Input ``x'[c, p, g*N + n] = x[n, p, g*Cg + c]`` (batch = channel within a group, channels =
    group-major samples), kernel ``dy'[o, n, g*Cog + j] = dy[n, o, g*Cog + j]`` (spatial = the
    output positions), ``groups = G`` keeps the groups apart. Stride and rhs dilation exchange
    (``stride = d``, ``rhs_dilation = s``), ``lhs_dilation = L``, pads from :func:`weight_grad_pads`.
    The result ``z[c, t, g*Cog + j]`` is ``dw[t, c, g*Cog + j]``.
    """
    n_batch, spatial, c_in = x_cl.shape[0], x_cl.shape[1:-1], x_cl.shape[-1]
    x_t = x_cl.reshape(n_batch, *spatial, groups, c_in // groups)
    x_t = np.moveaxis(x_t, (0, -1), (-1, 0)).reshape(c_in // groups, *spatial, groups * n_batch)
    z = conv(
        x_t,
        np.moveaxis(dy_cl, 0, -2),
        stride=g.rhs_dilation,
        padding=weight_grad_pads(g),
        lhs_dilation=g.lhs_dilation,
        rhs_dilation=g.stride,
        groups=groups,
    )
    return np.moveaxis(z, 0, -2)


# --- method "col2im": the transposed products, chunk by chunk --------------------------------------
#
# The forward is y = cols @ w (per group), so dw = cols^T @ dy and dx = col2im(dy @ w^T). Both are
# evaluated in the forward's chunks of samples and output rows (refws.conv.row_windows) by the
# forward's two formulations: "gemm" forms each chunk's columns (or dcols) and multiplies them,
# "taps" forms the same products tap by tap without them (refws.conv.TapsChunk).


def _dw_col2im(
    x_cl: np.ndarray, dy_cl: np.ndarray, g: ConvGeometry, groups: int, w_shape, formulation: str | None = None
) -> np.ndarray:
    """``dw[t, c, g*Cog + j] = sum_{n, o} P[n, o*s + t*d, g*Cg + c] * dy[n, o, g*Cog + j]``, chunk by chunk.

    Each chunk's sum is formed on its own and the chunks' sums are added in chunk order, so the
    result does not depend on how the chunks are shared among threads.
    """
    c_in, c_out = x_cl.shape[-1], dy_cl.shape[-1]
    taps = math.prod(g.kernel_spatial)
    formulation = formulation or weight_grad_formulation(taps, c_in // groups, c_out // groups, groups)
    batch_step, row_step = plan(g, x_cl.shape[0], c_in, c_out, groups, formulation)
    items = chunks(x_cl.shape[0], g.out_spatial[0], batch_step, row_step)

    shared = evaluator(formulation, g, groups, c_in, c_out, row_step)
    workers = parallel_workers(formulation, len(items), dy_cl.size, taps * (c_in // groups))
    if workers == 1:  # every chunk added into dw in chunk order: the additions of the loop below
        dw = np.empty(w_shape)
        for i, (b0, nb, r0, rows, window) in enumerate(row_windows(x_cl, g, batch_step, row_step)):
            shared.weight_grad(window, dy_cl[b0 : b0 + nb, r0 : r0 + rows], dw, first=i == 0)
        return dw

    def work(part):
        sums = []
        for b0, nb, r0, rows, window in row_windows(x_cl, g, batch_step, row_step, part):
            sums.append(np.empty(w_shape))
            shared.weight_grad(window, dy_cl[b0 : b0 + nb, r0 : r0 + rows], sums[-1], first=True)
        return sums

    dw = np.zeros(w_shape)
    for sums in run_parts(work, items, workers):
        for part_sum in sums:
            dw += part_sum
    return dw


def _dx_col2im(
    dy_cl: np.ndarray, w: np.ndarray, g: ConvGeometry, groups: int, x_shape, formulation: str | None = None
) -> np.ndarray:
    """``dP[n, o*s + t*d, g*Cg + c] += sum_j dy[n, o, g*Cog + j] * w[t, c, g*Cog + j]``, then ``dx`` = dP read back.

    ``dP`` is the gradient of the padded input, one block of samples at a time; each chunk of
    output rows adds its windows' contributions (they overlap where windows do), and the block's
    ``dx`` is :func:`refws.im2col.dilate_pad_adjoint` of it. ``dP`` holds whole samples, so with a
    budget below one sample's padded input the workspace exceeds the budget by that much. Blocks
    of samples are independent: threads (taps) share them out.
    """
    n_batch, c_in, c_out = x_shape[0], x_shape[-1], w.shape[-1]
    taps = math.prod(g.kernel_spatial)
    formulation = formulation or input_grad_formulation(taps, c_in // groups, c_out // groups)
    batch_step, row_step = plan(g, n_batch, c_in, c_out, groups, formulation)
    s0, k0, rows_all = g.stride[0], g.dilated_kernel[0], g.out_spatial[0]
    dx = np.empty(x_shape)

    shared = evaluator(formulation, g, groups, c_in, c_out, row_step, w, adjoint=True)
    blocks = list(range(0, n_batch, batch_step))
    workers = parallel_workers(formulation, len(blocks), dx.size, taps * (c_out // groups))

    def work(blocks):
        padded = workspace("padded gradient", (min(batch_step, n_batch), *padded_spatial_shape(g), c_in))
        for b0 in blocks:
            nb = min(batch_step, n_batch - b0)
            padded[:nb] = 0.0
            for _, _, r0, rows in chunks(nb, rows_all, nb, row_step):
                shared.scatter(dy_cl[b0 : b0 + nb, r0 : r0 + rows], padded[:nb, r0 * s0 : (r0 + rows - 1) * s0 + k0])
            dx[b0 : b0 + nb] = dilate_pad_adjoint(padded[:nb], g.in_spatial, g.lhs_dilation, g.padding)

    run_parts(work, blocks, workers)
    return dx


# --- choosing the derivation and the formulation -----------------------------------------------


def input_grad_formulation(kernel_taps: int, cg: int, cog: int) -> str:
    """``"taps"`` or ``"gemm"`` for ``dx`` by col2im: taps when :func:`refws.conv.taps_channels`
    (at most 4 channels per group on each side, 8 channel pairs), with the roles exchanged (``dy``
    is read, ``Cog`` channels per group; ``dx`` is written, ``Cg`` per group), which the rule's
    symmetry makes the same choice. Unlike the forward's rule it asks for no number of groups: the
    taps' scatter is 1.1x to 5.9x faster than gemm's from 8 groups down (measured, two threads:
    2-D and 3-D, 2x8x8 to 2x32x32 maps, 1 -> 1, 1 -> 2, 2 -> 2, 2 -> 1 and 4 -> 1; gemm was 2.3x
    faster at 1 -> 4 with 32 groups, which this rule has always given to taps)."""
    return "taps" if taps_channels(cog, cg) else "gemm"


def weight_grad_formulation(kernel_taps: int, cg: int, cog: int, groups: int) -> str:
    """``"taps"`` or ``"gemm"`` for ``dw`` by col2im: taps when :func:`refws.conv.taps_channels`
    and either depthwise without multiplier (``Cg = Cog = 1``) or at least 8 groups.

    Measured on one thread (3x3 kernels, 64x64 maps, batch 8, 32 input channels): the taps'
    ``dw`` is 1.4x to 3.7x faster than gemm's for depthwise with multiplier 1, 2 or 4 and for
    2 -> 2 channels per group, 1.1x to 1.3x slower at 4 -> 1, 4 -> 2 and 2 -> 4, and 2.8x to 3.1x
    slower at 8 -> 1 and 4 -> 8. On small maps (2x7x7 to 2x48x48 and 3-D 8^3 to 10^3, two
    threads): with 8 or 16 groups taps is faster or within 1.2x (1 -> 1 1.2x to 3.2x faster,
    1 -> 2 1.5x, 2 -> 2 equal, 4 -> 1 1.2x slower); with 2 or 4 groups gemm is 1.25x to 4x faster
    for 2 -> 2 and 4 -> 1 (a tiny 2-group call: 29 us against 57 us), about equal for 1 -> 2, and
    1 -> 1 stays taps' (equal to 1.6x faster)."""
    depthwise = cg == cog == 1
    return "taps" if taps_channels(cg, cog) and (depthwise or groups >= WEIGHT_GRAD_TAPS_MIN_GROUPS) else "gemm"


#: weight_grad_formulation's threshold: groups (depthwise without multiplier excepted).
WEIGHT_GRAD_TAPS_MIN_GROUPS = 8


def input_grad_method(g: ConvGeometry, groups: int, cg: int, cog: int, n_batch: int) -> str:
    """The derivation ``method="auto"`` uses for ``dx``: ``"conv"`` when every stride is 1, unless
    the kernel has more than one tap and more output channels per group than the output has
    positions (``Cog > N * prod(out_spatial)``); else ``"col2im"``.

    With stride 1 the ``dx`` convolution reads ``dy`` without stuffed zeros and runs with the
    forward's own choice of formulation: measured (one core) 1.2x to 2.5x faster than col2im on
    grouped and depthwise convolutions, 1.0x to 1.3x on dense ones (3x3 dense: equal within 5%).
    With stride ``s`` it would multiply the ``s^d - 1`` zeros stuffed between every ``dy`` element
    too: col2im is 2x (depthwise) to 3x (dense) faster at stride 2. The conv derivation also
    copies the kernel flipped (``K * Cg * C_out`` numbers), which col2im never does (its product
    ``dy @ w^T`` reads ``w`` as it is); it outweighs col2im's columns (``N * O * K * C_in``) exactly
    when ``Cog > N * O``: the deep layers of a network on small maps. Measured (two threads,
    3x3 kernels): 512 -> 512 channels on 2x7x7, col2im 1.7x faster; on 2x4x4, 3.3x; 256 -> 256 on
    2x7x7, 1.6x; near the threshold within 1.2x either way (128 channels on 2x7x7, 256 on
    2x14x14). A 1x1 kernel has nothing to flip: its conv derivation is the product itself, equal
    to 2x faster.
    """
    if any(s != 1 for s in g.stride):
        return "col2im"
    return "col2im" if g.taps > 1 and cog > n_batch * math.prod(g.out_spatial) else "conv"


def weight_grad_method(g: ConvGeometry, groups: int, cg: int, cog: int) -> str:
    """The derivation ``method="auto"`` uses for ``dw``: always ``"col2im"``.

    The ``dw`` convolution of method ``"conv"`` has the whole output as its kernel and the batch
    as its channels: measured 1.5x to 17x slower than col2im on every benchmark shape.
    """
    return "col2im"


def _input_grad(dy_cl, w, g, groups, x_shape, method, formulation=None) -> np.ndarray:
    if dy_cl.size == 0 or math.prod(x_shape) == 0:
        return np.zeros(x_shape)
    if method == "auto":
        method = input_grad_method(g, groups, w.shape[-2], w.shape[-1] // groups, dy_cl.shape[0])
    if method == "conv":
        return _dx_conv(dy_cl, w, g, groups)
    return _dx_col2im(dy_cl, w, g, groups, x_shape, formulation)


def _weight_grad(x_cl, dy_cl, g, groups, w_shape, method, formulation=None) -> np.ndarray:
    if dy_cl.size == 0 or x_cl.size == 0:
        return np.zeros(w_shape)
    if method == "auto":
        method = weight_grad_method(g, groups, w_shape[-2], w_shape[-1] // groups)
    if method == "conv":
        return _dw_conv(x_cl, dy_cl, g, groups)
    return _dw_col2im(x_cl, dy_cl, g, groups, w_shape, formulation)


# --- conv: VJP, JVP, bias ---------------------------------------------------------------------


def conv_vjp(
    x, w, dy, stride=1, padding="SAME", lhs_dilation=1, rhs_dilation=1, groups=1, *, channel_first=False, method="auto"
):
    """Cotangents ``(dx, dw)`` of :func:`refws.conv` for the output cotangent ``dy``.

    Parameters
    ----------
    x, w, stride, padding, lhs_dilation, rhs_dilation, groups, channel_first : as for :func:`refws.conv`.
    dy : array_like, exactly the shape of ``conv(x, w, ...)`` (same layout, same batching).
    method : ``"auto"`` (default), ``"col2im"`` (``dw = cols^T dy``, ``dx = col2im(dy w^T)``) or
        ``"conv"`` (each of ``dx`` and ``dw`` one call of :func:`refws.conv`); all are exact, they
        agree to round-off. ``"auto"`` picks per half by shape: ``dx`` by ``"conv"`` when every
        stride is 1 (its convolution then reads no stuffed zeros), else by ``"col2im"``; ``dw``
        by ``"col2im"`` (the ``"conv"`` derivation's ``dw`` has the whole output as its kernel:
        1.5x to 17x slower on the benchmark shapes). See :func:`input_grad_method`.
        Each derivation is evaluated like the forward: im2col and BLAS, or tap by tap with few
        channels per group (:func:`refws.conv.forward_formulation` for the convolutions of
        ``"conv"``, :func:`weight_grad_formulation` and :func:`input_grad_formulation` for
        ``"col2im"``).

    Returns
    -------
    dx : float64, the shape of ``x``;  dw : float64, the shape of ``w``.
        ``<conv(x, w), dy> = <x, dx> = <w, dw>``. Input elements no window reads get 0; a zero-size
        output gives zero gradients.
    """
    method = _check_method(method)
    x_cl, w, unbatched = check_conv_operands(x, w, groups, channel_first)
    g = conv_geometry(x_cl.shape[1:-1], w.shape[:-2], stride, padding, lhs_dilation, rhs_dilation)
    expected = _layout_shape(x_cl.shape[0], g.out_spatial, w.shape[-1], channel_first, unbatched)
    dy_cl = to_canonical(_check_cotangent(dy, expected, "conv"), channel_first, unbatched)
    dx = _input_grad(dy_cl, w, g, int(groups), x_cl.shape, method)
    dw = _weight_grad(x_cl, dy_cl, g, int(groups), w.shape, method)
    return from_canonical(dx, channel_first, unbatched), dw


def conv_jvp(x, w, tx, tw, stride=1, padding="SAME", lhs_dilation=1, rhs_dilation=1, groups=1, *, channel_first=False):
    """Forward-mode derivative of :func:`refws.conv`: ``(y, ty)`` for tangents ``tx``, ``tw``.

    conv is bilinear, so ``ty = conv(tx, w) + conv(x, tw)`` exactly (no second-order term).
    ``tx`` must have the shape of ``x`` and ``tw`` that of ``w``.
    """
    for name, t, like in (("tx", tx, x), ("tw", tw, w)):
        if np.shape(t) != np.shape(like):
            raise ValueError(f"{name}.shape={np.shape(t)}: expected {np.shape(like)}, the shape of {name[1:]}")
    kw = dict(
        stride=stride,
        padding=padding,
        lhs_dilation=lhs_dilation,
        rhs_dilation=rhs_dilation,
        groups=groups,
        channel_first=channel_first,
    )
    return conv(x, w, **kw), conv(tx, w, **kw) + conv(x, tw, **kw)


def bias_vjp(dy, *, channel_first=False, unbatched=False) -> np.ndarray:
    """Cotangent of a per-channel bias added to an output: ``dy`` summed over all but the channel axis.

    The channel axis is the last one (channels-last), axis 1 (``channel_first``), or axis 0
    (``channel_first`` and ``unbatched``: ``dy`` is ``(C, *spatial)``; the flag is needed only
    there, since the rank alone cannot tell ``(C, H, W)`` from ``(N, C, H)``).
    """
    dy = as_float64(dy, "dy")
    axis = -1 if not channel_first else (0 if unbatched else 1)
    if dy.ndim < (1 if axis == 0 else 2):
        raise ValueError(
            f"dy.shape={dy.shape}: expected an output-like array with a channel axis "
            f"(channel_first={channel_first}, unbatched={unbatched})"
        )
    return dy.sum(axis=tuple(i for i in range(dy.ndim) if i != axis % dy.ndim))


# --- the transposed convolution -------------------------------------------------------------


def _check_transpose_operands(x, w, groups, channel_first):
    """Canonical ``x`` ``(N, *n, C_in)``, float64 ``w`` ``(*k, C_out // G, C_in)``, unbatched flag."""
    groups = check_groups(groups)
    x_cl, w, unbatched = canonical_operands(x, w, channel_first, "(*kernel_spatial, C_out // groups, C_in)")
    if x_cl.shape[-1] != w.shape[-1] or w.shape[-1] % groups:
        raise ValueError(
            f"x has C_in={x_cl.shape[-1]} channels but w.shape={w.shape} expects "
            f"C_in = w.shape[-1] = {w.shape[-1]}, divisible by groups={groups}"
        )
    return x_cl, w, unbatched, groups


def _resolve_output_size(output_size, in_spatial, min_sizes, stride, n_non_spatial) -> tuple:
    """PyTorch's ``_output_padding``: the output padding that yields ``output_size``.

    ``output_size`` has one entry per spatial dimension, optionally preceded by the batch and
    channel sizes (or the channel size alone for unbatched input), which are ignored. Each entry
    must lie in ``[min_size, min_size + stride - 1]``.
    """
    sizes = list(output_size) if isinstance(output_size, Sequence) else None
    s_dims = len(in_spatial)
    if sizes is not None and len(sizes) == s_dims + n_non_spatial:
        sizes = sizes[n_non_spatial:]
    if sizes is None or len(sizes) != s_dims or not all(isinstance(v, (int, np.integer)) for v in sizes):
        raise ValueError(
            f"output_size={output_size!r}: expected {s_dims} or {s_dims + n_non_spatial} ints "
            "(the spatial sizes, optionally preceded by the non-spatial ones)"
        )
    max_sizes = [m + s - 1 for m, s in zip(min_sizes, stride)]
    if any(not lo <= v <= hi for v, lo, hi in zip(sizes, min_sizes, max_sizes)):
        raise ValueError(
            f"output_size={output_size!r} is unreachable: valid sizes range from {min_sizes} "
            f"to {max_sizes} (for an input of spatial size {tuple(in_spatial)})"
        )
    return tuple(int(v) - m for v, m in zip(sizes, min_sizes))


def transpose_geometry(
    in_spatial, kernel_spatial, stride=1, padding=0, output_padding=0, dilation=1, output_size=None, n_non_spatial=2
) -> ConvGeometry:
    """The forward convolution whose input gradient is this transposed convolution.

    Per dimension the transposed output has ``m = (n - 1)*s - 2p + d*(k - 1) + op + 1`` entries;
    the forward convolution maps a size-``m`` input with stride ``s``, rhs dilation ``d`` and pads
    ``(p, p - op)`` back to exactly ``n`` outputs (``(m + p + p - op - d(k-1) - 1) / s = n - 1``).
    """
    s_dims = len(in_spatial)
    stride = as_int_tuple(stride, s_dims, "stride")
    dilation = as_int_tuple(dilation, s_dims, "dilation")
    padding = as_int_tuple(padding, s_dims, "padding", minimum=0)
    min_sizes = [
        (n - 1) * s - 2 * p + d * (k - 1) + 1
        for n, k, s, p, d in zip(in_spatial, kernel_spatial, stride, padding, dilation)
    ]
    if output_size is not None:  # as PyTorch: output_size takes precedence over output_padding
        op = _resolve_output_size(output_size, in_spatial, min_sizes, stride, n_non_spatial)
    else:
        op = as_int_tuple(output_padding, s_dims, "output_padding", minimum=0)
        limit = tuple(max(s, d) for s, d in zip(stride, dilation))
        if any(o >= m for o, m in zip(op, limit)):
            raise ValueError(
                f"output_padding={output_padding!r}: each entry must be smaller than max(stride, dilation) = {limit}"
            )
    out = tuple(m + o for m, o in zip(min_sizes, op))
    if any(v < 0 for v in out):
        raise ValueError(f"padding={padding}: too large, the output size {out} would be negative")
    return conv_geometry(out, kernel_spatial, stride, tuple((p, p - o) for p, o in zip(padding, op)), 1, dilation)


def _transpose_setup(x, w, stride, padding, output_padding, dilation, groups, output_size, channel_first):
    x_cl, w, unbatched, groups = _check_transpose_operands(x, w, groups, channel_first)
    g = transpose_geometry(
        x_cl.shape[1:-1], w.shape[:-2], stride, padding, output_padding, dilation, output_size, 1 if unbatched else 2
    )
    y_shape = (x_cl.shape[0], *g.in_spatial, w.shape[-2] * groups)
    return x_cl, w, unbatched, groups, g, y_shape


def conv_transpose(
    x,
    w,
    stride=1,
    padding=0,
    output_padding=0,
    dilation=1,
    groups=1,
    *,
    output_size=None,
    bias=None,
    channel_first=False,
) -> np.ndarray:
    """Transposed convolution with PyTorch/ONNX ``ConvTranspose`` semantics.

    Definition (per dimension, ``o = i*s - p + t*d``; entries outside ``[0, m)`` are dropped)::

        y[n, i*s - p + t*d, g*Cog + j] += x[n, i, g*Cg + c] * w[t, j, g*Cg + c]

    Parameters
    ----------
    x : array_like ``(N, *n, C_in)`` or unbatched ``(*n, C_in)``; ``(N, C_in, *n)`` / ``(C_in, *n)``
        with ``channel_first``. The output has the same layout.
    w : array_like ``(*k, C_out // groups, C_in)``: the kernel of the forward conv whose input
        gradient this is. From PyTorch's ``(C_in, C_out // groups, *k)`` weight ``W``:
        ``w = np.moveaxis(W, (0, 1), (-1, -2))``, i.e. ``W.transpose(2, ..., S + 1, 1, 0)``.
    stride, dilation : int or S positive ints.  padding : int or S ints >= 0 (symmetric, as PyTorch).
    output_padding : int or S ints, each ``< max(stride, dilation)``: extra size at the high end
        (it keeps up to ``op`` of the positions the padding ``p`` would crop there; zeros beyond).
    groups : int dividing ``C_in``.
    output_size : optional sizes (S, or with the leading non-spatial ones); resolved to an
        output_padding exactly as PyTorch's ``ConvTranspose*d(..., output_size=...)`` (which then
        ignores ``output_padding``); unreachable sizes raise ValueError with the valid range.
    bias : optional ``(C_out,)`` added to every output channel (groups > 1 included).

    Returns
    -------
    float64 ``(N, *m, C_out)`` in the layout of ``x``, ``m = (n - 1)*s - 2p + d*(k - 1) + op + 1``.

    Notes
    -----
    This is ``dx`` of ``conv(y, w, stride=s, padding=[(p, p - op)], rhs_dilation=d, groups=G)`` for
    the cotangent ``x``; it is computed as that one convolution of the stride-dilated ``x`` with the
    flipped, in/out-swapped kernel (docs/backward.md).
    """
    x_cl, w, unbatched, groups, g, y_shape = _transpose_setup(
        x, w, stride, padding, output_padding, dilation, groups, output_size, channel_first
    )
    y = _input_grad(x_cl, w, g, groups, y_shape, "conv")
    if bias is not None:
        b = as_float64(bias, "bias")
        if b.shape != (y_shape[-1],):
            raise ValueError(f"bias.shape={b.shape}: expected ({y_shape[-1]},), one entry per output channel")
        y = y + b
    return from_canonical(y, channel_first, unbatched)


def conv_transpose_vjp(
    x,
    w,
    dy,
    stride=1,
    padding=0,
    output_padding=0,
    dilation=1,
    groups=1,
    *,
    output_size=None,
    channel_first=False,
    method="auto",
):
    """Cotangents ``(dx, dw)`` of :func:`conv_transpose` (without bias: ``db = bias_vjp(dy)``).

    ``conv_transpose(x, w) = T(x, w)`` is defined by ``<T(x, w), u> = <x, conv(u, w)>`` with the
    forward convolution ``conv(., w, stride=s, padding=[(p, p - op)], rhs_dilation=d, groups=G)``.
    Hence ``<dy, T(x, w)> = <x, conv(dy, w)>``:

    - ``dx = conv(dy, w, ...)``: a plain convolution of the cotangent (no flip, no dilation trick);
    - ``dw`` = the weight gradient of that forward convolution with input ``dy`` and output
      cotangent ``x`` (``method`` picks its derivation, as in :func:`conv_vjp`; ``"auto"``: col2im).
    """
    method = _check_method(method)
    x_cl, w, unbatched, groups, g, y_shape = _transpose_setup(
        x, w, stride, padding, output_padding, dilation, groups, output_size, channel_first
    )
    expected = _layout_shape(y_shape[0], y_shape[1:-1], y_shape[-1], channel_first, unbatched)
    dy_cl = to_canonical(_check_cotangent(dy, expected, "conv_transpose"), channel_first, unbatched)
    dx = conv(dy_cl, w, stride=g.stride, padding=g.padding, rhs_dilation=g.rhs_dilation, groups=groups)
    dw = _weight_grad(dy_cl, x_cl, g, groups, w.shape, method)
    return from_canonical(dx, channel_first, unbatched), dw


# --- the transposed convolution, lax convention -----------------------------------------------
#
# jax.lax.conv_transpose(x, w, strides, padding, rhs_dilation, transpose_kernel) is, by its
# definition, conv_general_dilated(x, w', window_strides=1, padding=pads, lhs_dilation=strides,
# rhs_dilation): the input is zero-stuffed by the stride and convolved with stride 1. Nothing but
# the padding rule for 'SAME'/'VALID' and the optional kernel flip is new, so it is written as one
# call of refws.conv (docs/backward.md, section 8, relates it to the PyTorch convention above).

_LAX_TRANSPOSE_STRINGS = ("SAME", "VALID")


def _lax_transpose_padding(k_d: int, s: int, mode: str) -> tuple:
    """``(lo, hi)`` of jax.lax.conv_transpose (the Keras ``Conv*DTranspose`` rule) for one dimension.

    ``k_d`` is the rhs-dilated kernel extent, ``s`` the stride. 'SAME' gives ``n*s`` outputs
    (total ``k_d + s - 2``, ``lo = k_d - 1`` when ``s > k_d - 1`` else ``ceil(total / 2)``: the odd
    element goes at the *start*); 'VALID' gives ``n*s + max(k_d - s, 0)`` (``lo = k_d - 1``).
    """
    if mode == "SAME":
        total = k_d + s - 2
        lo = k_d - 1 if s > k_d - 1 else -(-total // 2)
    else:
        total = k_d + s - 2 + max(k_d - s, 0)
        lo = k_d - 1
    return lo, total - lo


def lax_transpose_geometry(in_spatial, kernel_spatial, strides, padding, rhs_dilation=None) -> ConvGeometry:
    """The geometry of the convolution that computes :func:`conv_transpose_lax`.

    Window stride 1, ``lhs_dilation = strides``, the given ``rhs_dilation`` and explicit pads:
    for ``'SAME'`` / ``'VALID'`` (exactly these strings, as jax.lax.conv_transpose tests them) the
    pads of :func:`_lax_transpose_padding` computed with the rhs-dilated kernel; any other padding
    is passed through as explicit ``(lo, hi)`` pads of the stride-dilated input (every form
    :func:`refws.conv_geometry` accepts; negative entries crop).
    """
    n = len(kernel_spatial)
    strides = as_int_tuple(strides, n, "strides")
    rhs_dilation = as_int_tuple(1 if rhs_dilation is None else rhs_dilation, n, "rhs_dilation")
    if isinstance(padding, str):
        if padding not in _LAX_TRANSPOSE_STRINGS:
            raise ValueError(
                f"padding={padding!r}: expected 'SAME' or 'VALID' (exactly; jax.lax.conv_transpose "
                "applies its transposed rule only to these two strings) or explicit (lo, hi) pairs"
            )
        padding = tuple(
            _lax_transpose_padding((k - 1) * d + 1, s, padding)
            for k, s, d in zip(kernel_spatial, strides, rhs_dilation)
        )
    return conv_geometry(in_spatial, kernel_spatial, 1, padding, strides, rhs_dilation)


def _lax_transpose_setup(x, w, strides, padding, rhs_dilation, transpose_kernel, groups, channel_first):
    """Canonical ``x``, the kernel the convolution uses, the unbatched flag, groups and geometry."""
    if transpose_kernel:
        x_cl, w, unbatched, groups = _check_transpose_operands(x, w, groups, channel_first)
        w_conv = flip_swap_kernel(w, groups)  # (*k, C_in // G, C_out)
    else:
        x_cl, w_conv, unbatched = check_conv_operands(x, w, groups, channel_first)
        groups = int(groups)
    g = lax_transpose_geometry(x_cl.shape[1:-1], w_conv.shape[:-2], strides, padding, rhs_dilation)
    return x_cl, w_conv, unbatched, groups, g


def _lax_conv_kwargs(g: ConvGeometry, groups: int) -> dict:
    return dict(stride=1, padding=g.padding, lhs_dilation=g.lhs_dilation, rhs_dilation=g.rhs_dilation, groups=groups)


def conv_transpose_lax(
    x, w, strides, padding, rhs_dilation=None, *, transpose_kernel=False, groups=1, channel_first=False
) -> np.ndarray:
    """Transposed convolution with ``jax.lax.conv_transpose`` semantics (flax ``ConvTranspose``).

    Definition: the input zero-stuffed by the stride, padded, and correlated with stride 1::

        conv_transpose_lax(x, w, s, padding, d) = conv(x, w', stride=1, padding=pads,
                                                       lhs_dilation=s, rhs_dilation=d, groups=groups)

    with ``w' = w`` (default) or ``w' = flip_swap_kernel(w, groups)`` (``transpose_kernel=True``).
    Per dimension, input element ``i`` and tap ``t`` of ``w'`` meet at output ``i*s + lo - t*d``.

    Parameters
    ----------
    x : array_like ``(N, *n, C_in)`` or unbatched ``(*n, C_in)``; ``(N, C_in, *n)`` / ``(C_in, *n)``
        with ``channel_first``. The output has the same layout.
    w : array_like. ``transpose_kernel=False``: ``(*k, C_in // groups, C_out)``, refws's (and lax's
        default HWIO) kernel, used as it is (no flip: *not* PyTorch's ``ConvTranspose``).
        ``transpose_kernel=True``: ``(*k, C_out // groups, C_in)``, the kernel of the forward
        convolution ``C_out -> C_in`` whose input gradient this is (the layout of
        :func:`conv_transpose`); it is flipped spatially and its in/out channels are exchanged
        within each group (lax: flip and swap the I/O axes).
    strides : int or S positive ints: the lhs dilation of the input.
    padding : ``'SAME'`` (``n*s`` outputs), ``'VALID'`` (``n*s + max(k_d - s, 0)``), exactly these
        strings, computed with the rhs-dilated extent ``k_d = (k - 1)*d + 1`` as lax does (Keras'
        rule: for odd totals the extra pad goes at the start); or explicit ``(lo, hi)`` pairs (any
        form :func:`refws.conv_geometry` accepts) padding the stride-dilated input, negative crops.
        Other strings raise (lax passes them to ``conv_general_dilated``, which refuses them for
        stride > 1 and applies the *forward* SAME rule for stride 1).
    rhs_dilation : int, S ints or None (= 1).
    transpose_kernel : bool, as in lax.
    groups : int (keyword only; an extension, lax.conv_transpose has none; 1 is lax). Without
        ``transpose_kernel`` it is ``conv_general_dilated``'s ``feature_group_count`` (brainstate's
        ``ConvTranspose`` uses it so); with it, the result is the input gradient of the grouped
        forward convolution with kernel ``w``.
    channel_first : bool

    Returns
    -------
    float64 ``(N, *m, C_out)`` in the layout of ``x``, ``m = (n - 1)*s + 1 + lo + hi - k_d + 1``
    (0 when negative, as in lax).

    Notes
    -----
    With ``transpose_kernel=True``, explicit pads ``(k_d - 1 - p, k_d - 1 - p + op)`` give exactly
    ``conv_transpose(x, w, s, p, op, d, groups)`` (PyTorch's convention); docs/backward.md, section 8.
    """
    x_cl, w_conv, unbatched, groups, g = _lax_transpose_setup(
        x, w, strides, padding, rhs_dilation, transpose_kernel, groups, channel_first
    )
    return from_canonical(conv(x_cl, w_conv, **_lax_conv_kwargs(g, groups)), channel_first, unbatched)


def conv_transpose_lax_vjp(
    x,
    w,
    dy,
    strides,
    padding,
    rhs_dilation=None,
    *,
    transpose_kernel=False,
    groups=1,
    channel_first=False,
    method="col2im",
):
    """Cotangents ``(dx, dw)`` of :func:`conv_transpose_lax` for the output cotangent ``dy``.

    The map is ``conv(x, P(w))`` with ``P`` the identity or (``transpose_kernel``) the permutation
    :func:`flip_swap_kernel`, so ``(dx, dw') = conv_vjp`` of that convolution (stride 1, lhs
    dilation = strides) and ``dw = P^T dw'``. ``P`` is an involution (flipping twice and exchanging
    the channel axes twice restores ``w``), so ``P^T = P^{-1} = P``: ``dw = flip_swap_kernel(dw')``.
    ``method`` as for :func:`conv_vjp`. ``dy`` has exactly the output's shape and layout.
    """
    method = _check_method(method)
    x_cl, w_conv, unbatched, groups, g = _lax_transpose_setup(
        x, w, strides, padding, rhs_dilation, transpose_kernel, groups, channel_first
    )
    expected = _layout_shape(x_cl.shape[0], g.out_spatial, w_conv.shape[-1], channel_first, unbatched)
    dy_cl = to_canonical(_check_cotangent(dy, expected, "conv_transpose_lax"), channel_first, unbatched)
    dx, dw = conv_vjp(x_cl, w_conv, dy_cl, **_lax_conv_kwargs(g, groups), method=method)
    if transpose_kernel:
        dw = flip_swap_kernel(dw, groups)
    return from_canonical(dx, channel_first, unbatched), dw


__all__ += ["conv_transpose_lax", "conv_transpose_lax_vjp", "lax_transpose_geometry"]
