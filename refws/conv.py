"""N-d convolution (cross-correlation) as an explicit im2col followed by a matrix product per group.

Definition (channels-last, batched; ``o`` and ``t`` are multi-indices over the S spatial axes)::

    P = dilate_pad(x, lhs_dilation, pads)          # insert L-1 zeros between inputs, then pad or crop
    y[n, o, g*Cog + j] = sum_{t, c} P[n, o*stride + t*rhs_dilation, g*Cg + c] * w[t, c, g*Cog + j]

with ``G = groups``, ``Cg = C_in / G`` input and ``Cog = C_out / G`` output channels per group.
No kernel flip: this is the cross-correlation every framework calls convolution
(``jax.lax.conv_general_dilated``, ``torch.nn.functional.conv2d``).
"""

from __future__ import annotations

import numbers

import numpy as np

from .arrays import as_float64, from_canonical, to_canonical
from .geometry import ConvGeometry, conv_geometry
from .im2col import chunk_plan, dilate_pad, dilate_pad_shape, gather_windows, gather_windows_shape

__all__ = ["conv", "conv_canonical", "check_conv_operands", "canonical_operands", "as_float64", "to_canonical", "from_canonical"]


def check_groups(groups) -> int:
    """``groups`` must be a positive int."""
    if isinstance(groups, bool) or not isinstance(groups, numbers.Integral):
        raise TypeError(f"groups={groups!r}: expected a positive int")
    if groups < 1:
        raise ValueError(f"groups={groups!r}: expected a positive int")
    return int(groups)


def canonical_operands(x, w, channel_first: bool, w_layout: str):
    """The checks every convolution-like map shares: real dtypes, a kernel with at least one spatial
    axis, ``x`` of the kernel's rank (batched) or one less (unbatched).

    Returns ``(x_cl, w, unbatched)`` with ``x_cl`` batched channels-last float64 (a view where
    possible); ``w_layout`` describes the expected kernel in the error message.
    """
    x = as_float64(x, "x")
    w = as_float64(w, "w")
    if w.ndim < 3:
        raise ValueError(f"w.shape={w.shape}: expected {w_layout} with at least one spatial dimension")
    if x.ndim not in (w.ndim, w.ndim - 1):
        layout = "(N, C, *spatial)" if channel_first else "(N, *spatial, C)"
        raise ValueError(f"x.shape={x.shape}: expected rank {w.ndim} (batched) or {w.ndim - 1} (unbatched) "
                         f"input of layout {layout} for a kernel w of shape {w.shape}")
    unbatched = x.ndim == w.ndim - 1
    return to_canonical(x, channel_first, unbatched), w, unbatched


def check_conv_operands(x, w, groups, channel_first: bool):
    """Validate the operands of a convolution and bring ``x`` to the canonical layout.

    Parameters
    ----------
    x : array_like, ``(N, *spatial, C_in)`` or ``(*spatial, C_in)``; channel-first
        ``(N, C_in, *spatial)`` or ``(C_in, *spatial)`` when ``channel_first``.
    w : array_like, ``(*kernel, C_in // groups, C_out)`` in both layouts.
    groups : int dividing ``C_in`` and ``C_out``.

    Returns
    -------
    x_cl : float64 ndarray ``(N, *spatial, C_in)`` (a view where possible)
    w : float64 ndarray
    unbatched : bool, whether ``x`` had no batch axis.
    """
    groups = check_groups(groups)
    x_cl, w, unbatched = canonical_operands(x, w, channel_first, "(*kernel_spatial, C_in // groups, C_out)")
    if any(k < 1 for k in w.shape[:-2]):
        raise ValueError(f"w.shape={w.shape}: kernel spatial sizes must be >= 1")
    c_in, c_out = x_cl.shape[-1], w.shape[-1]
    if c_in != w.shape[-2] * groups:
        raise ValueError(f"x has C_in={c_in} channels but w.shape={w.shape} with groups={groups} expects "
                         f"C_in = w.shape[-2] * groups = {w.shape[-2] * groups}")
    if c_out % groups:
        raise ValueError(f"w.shape={w.shape}: C_out={c_out} is not divisible by groups={groups}")
    return x_cl, w, unbatched


def _row_window_pads(g: ConvGeometry, r0: int, rows: int):
    """Pads that make ``dilate_pad`` return only the padded rows read by output rows ``r0 : r0+rows``.

    Output row ``o`` reads padded rows ``o*s ... o*s + (k-1)*d``; a window starting at padded row
    ``a = r0*s`` is the same dilate-pad with the low pad shifted by ``-a`` and the length cut to
    ``(rows - 1)*s + (k-1)*d + 1``.
    """
    (lo, _), n, L = g.padding[0], g.in_spatial[0], g.lhs_dilation[0]
    start = r0 * g.stride[0]
    size = (rows - 1) * g.stride[0] + g.dilated_kernel[0]
    n_dilated = (n - 1) * L + 1 if n > 0 else 0
    lo_w = lo - start
    return ((lo_w, size - n_dilated - lo_w),) + tuple(g.padding[1:])


def conv_canonical(x: np.ndarray, w: np.ndarray, g: ConvGeometry, groups: int) -> np.ndarray:
    """Convolution of validated canonical operands, chunked to the workspace budget.

    Parameters
    ----------
    x : float64 ``(N, *in_spatial, C_in)``;  w : float64 ``(*kernel_spatial, C_in // G, C_out)``
    g : the geometry from :func:`refws.conv_geometry`;  groups : G

    Returns
    -------
    float64 ``(N, *g.out_spatial, C_out)``
    """
    n_batch, c_in, c_out = x.shape[0], x.shape[-1], w.shape[-1]
    if 0 in g.out_spatial or n_batch == 0 or c_out == 0:
        return np.zeros((n_batch, *g.out_spatial, c_out), dtype=np.float64)
    y = np.empty((n_batch, *g.out_spatial, c_out), dtype=np.float64)     # every element is written below
    k_cg, cog = int(np.prod(g.kernel_spatial)) * (c_in // groups), c_out // groups
    w_groups = w.reshape(k_cg, groups, cog).transpose(1, 0, 2)           # (G, K*Cg, Cog)
    batch_step, row_step = chunk_plan(g, n_batch, c_in, c_out, groups)
    rows_all, inner = g.out_spatial[0], int(np.prod(g.out_spatial[1:]))
    # One workspace for the largest chunk, reused by every chunk: allocating fresh buffers per
    # chunk costs page faults and cold caches (about 15% of the run time on the benchmark).
    window_buf = np.empty(_size(dilate_pad_shape((batch_step, *x.shape[1:]), g.lhs_dilation,
                                                 _row_window_pads(g, 0, row_step))))
    m_max = batch_step * row_step * inner
    cols_buf = np.empty(groups * m_max * k_cg)
    product_buf = np.empty(groups * m_max * cog) if groups > 1 else None
    for b0 in range(0, n_batch, batch_step):
        xb = x[b0:b0 + batch_step]
        for r0 in range(0, rows_all, row_step):
            rows = min(row_step, rows_all - r0)
            pads = _row_window_pads(g, r0, rows)
            window = dilate_pad(xb, g.lhs_dilation, pads,
                                out=_carve(window_buf, dilate_pad_shape(xb.shape, g.lhs_dilation, pads)))
            chunk_out = (rows, *g.out_spatial[1:])
            cols = gather_windows(window, g.kernel_spatial, chunk_out, g.stride, g.rhs_dilation, groups,
                                  out=_carve(cols_buf, gather_windows_shape(window.shape, g.kernel_spatial,
                                                                            chunk_out, groups)))
            m = xb.shape[0] * rows * inner
            target = y[b0:b0 + batch_step, r0:r0 + rows].reshape(m, c_out)   # contiguous: a view
            if groups == 1:
                np.matmul(cols.reshape(m, k_cg), w_groups[0], out=target)
            else:
                per_group = np.matmul(cols.reshape(groups, m, k_cg), w_groups,
                                      out=_carve(product_buf, (groups, m, cog)))
                target.reshape(m, groups, cog)[...] = per_group.transpose(1, 0, 2)
    return y


def _size(shape) -> int:
    return int(np.prod(shape))


def _carve(buffer: np.ndarray, shape) -> np.ndarray:
    """The first ``prod(shape)`` elements of the flat workspace ``buffer``, viewed with ``shape``."""
    return buffer[:_size(shape)].reshape(shape)


def conv(x, w, stride=1, padding="SAME", lhs_dilation=1, rhs_dilation=1, groups=1, *, channel_first=False) -> np.ndarray:
    """N-d convolution (cross-correlation) with padding, strides, lhs/rhs dilation and groups.

    Parameters
    ----------
    x : array_like
        ``(N, *spatial, C_in)``, or unbatched ``(*spatial, C_in)`` (when ``x.ndim == w.ndim - 1``);
        with ``channel_first=True``, ``(N, C_in, *spatial)`` / ``(C_in, *spatial)``.
        Bool, integer and floating dtypes are accepted; complex and object arrays raise TypeError.
    w : array_like
        ``(*kernel_spatial, C_in // groups, C_out)`` in both layouts (brainstate's HWIO).
    stride, lhs_dilation, rhs_dilation : int or sequence of S positive ints
    padding : ``"SAME"``, ``"SAME_LOWER"``, ``"VALID"`` (any case), int, S ints, S ``(lo, hi)`` pairs,
        or one pair for every dimension; negative pads crop. See :func:`refws.conv_geometry`.
    groups : int
        ``C_in`` and ``C_out`` split into ``groups`` independent convolutions
        (``groups == C_in``: depthwise, with channel multiplier ``C_out / C_in``).
    channel_first : bool
        Input and output layout; the kernel layout never changes.

    Returns
    -------
    ndarray, float64
        ``(N, *out_spatial, C_out)`` (or ``(N, C_out, *out_spatial)``), unbatched if ``x`` was.
        ``out_spatial`` comes from :func:`refws.conv_geometry` and may contain zeros.

    Notes
    -----
    NaN and Inf propagate as IEEE arithmetic does; padding zeros multiplied by an infinite weight
    give NaN, as in a framework's convolution over an explicitly padded input.
    Extra memory stays within :func:`refws.get_workspace_bytes` (see :func:`refws.set_workspace_bytes`).

    Examples
    --------
    >>> import numpy as np, refws
    >>> x = np.ones((2, 5, 5, 3)); w = np.ones((3, 3, 3, 4))
    >>> refws.conv(x, w, stride=2).shape
    (2, 3, 3, 4)
    """
    x_cl, w, unbatched = check_conv_operands(x, w, groups, channel_first)
    g = conv_geometry(x_cl.shape[1:-1], w.shape[:-2], stride, padding, lhs_dilation, rhs_dilation)
    return from_canonical(conv_canonical(x_cl, w, g, int(groups)), channel_first, unbatched)
