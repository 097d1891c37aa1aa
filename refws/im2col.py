"""Window extraction: lhs-dilate, pad or crop, gather windows (im2col) and its adjoint (col2im).

All arrays here are channels-last and batched: ``x`` has shape ``(N, *spatial, C)``.

The convolution of :mod:`refws.conv` is the composition

    P    = dilate_pad(x, L, pads)                          # lhs-dilate, then pad (or crop)
    cols[n, o, t, c] = P[n, o * s + t * d, c]              # gather windows, one kernel tap t at a time
    y    = cols.reshape(-1, K * C) @ w.reshape(K * C, C_out)

with ``o`` and ``t`` multi-indices over the N spatial dimensions, ``K = prod(kernel_spatial)``.
``im2col`` loops over the K kernel taps and copies one strided slice of ``P`` per tap (the
loop of deep-learning-from-scratch's ``common/util.py``, generalised to N dimensions).

The workspace budget (:func:`set_workspace_bytes`) bounds the extra memory used by
:func:`refws.conv`, which asks :func:`chunk_plan` how to split the work.
"""

from __future__ import annotations

import functools
import itertools
import math

import numpy as np

from .arrays import as_float64
from .geometry import ConvGeometry, conv_geometry

__all__ = [
    "lhs_dilate",
    "pad_or_crop",
    "dilate_pad",
    "dilate_pad_shape",
    "dilate_pad_adjoint",
    "im2col",
    "col2im",
    "window_view",
    "window_runs_view",
    "runs_fit",
    "gather_windows",
    "gather_windows_by_taps",
    "gather_windows_shape",
    "scatter_windows",
    "set_workspace_bytes",
    "get_workspace_bytes",
    "chunk_plan",
    "padded_spatial_shape",
]

_DEFAULT_WORKSPACE = 256 * 2**20
_workspace_bytes = _DEFAULT_WORKSPACE
# Chunks larger than this gain nothing: a chunk whose columns stay in cache is gathered and
# multiplied faster (measured on the benchmark cases: 4 MiB beats 1, 2 and 8 MiB by 10-30%).
PREFERRED_CHUNK_BYTES = 4 * 2**20
# The tap formulation (refws.conv) passes over its chunk twice per kernel tap and input channel:
# a chunk that stays in one core's L2 cache (1 MiB on the benchmark machine) is fastest.
PREFERRED_TAPS_CHUNK_BYTES = 2**20


def set_workspace_bytes(n: int) -> int:
    """Set the extra-memory budget of :func:`refws.conv` in bytes; returns the previous value.

    The default is 256 MiB. The budget bounds the workspace of a call (the padded input window,
    the column matrix and, for grouped convolutions, the per-group product; for the tap
    formulation, its repeated channel and product, shared among its threads); the output array
    itself is not counted. One output row of one sample is the smallest unit of work, so a
    budget below that is exceeded by that much. Between calls each thread keeps up to
    ``min(budget, refws.conv.RETAIN_BYTES)`` (32 MiB) of workspace for the next call, and the
    buffers of up to ``refws.conv.TINY_PLANS`` (128) small dense problems of at most
    ``refws.conv.TINY_BYTES`` (32 KiB) each (a problem uses them only within the budget).
    """
    global _workspace_bytes
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n <= 0:
        raise ValueError(f"workspace bytes n={n!r}: expected a positive int")
    previous, _workspace_bytes = _workspace_bytes, int(n)
    return previous


def get_workspace_bytes() -> int:
    """The current extra-memory budget of :func:`refws.conv` in bytes."""
    return _workspace_bytes


# --- lhs-dilate and pad or crop -------------------------------------------------------------


def _placement(n: int, dilation: int, lo: int, n_out: int):
    """Where input elements land after dilation by ``dilation`` and padding by ``lo``.

    Element ``i`` goes to position ``p = i * dilation + lo``; only ``0 <= p < n_out`` survive.
    Returns ``(src, dst)`` slices (the source indices and their strided destinations).
    """
    first = max(0, -(lo // dilation))  # smallest i with p >= 0: ceil(-lo / L)
    stop = min(n, (n_out - 1 - lo) // dilation + 1) if n_out > 0 else 0
    if stop <= first:
        return slice(0, 0), slice(0, 0)
    return slice(first, stop), slice(first * dilation + lo, (stop - 1) * dilation + lo + 1, dilation)


def _dilate_pad_plan(spatial, lhs_dilation, pads):
    """``(sizes, src, dst)``: the padded spatial sizes, and the index tuples (batch, spatial and
    channel axes) of the input elements that land inside and of where they land."""
    sizes, src, dst = [], [slice(None)], [slice(None)]
    for n, L, (lo, hi) in zip(spatial, lhs_dilation, pads):
        n_dilated = (n - 1) * L + 1 if n > 0 else 0
        size = max(n_dilated + lo + hi, 0)
        s, d = _placement(n, L, lo, size)
        sizes.append(size)
        src.append(s)
        dst.append(d)
    return tuple(sizes), (*src, slice(None)), (*dst, slice(None))


@functools.lru_cache(maxsize=1024)
def padded_plan(g: ConvGeometry) -> tuple:
    """:func:`_dilate_pad_plan` of a geometry's whole input (cached: every call asks again)."""
    return _dilate_pad_plan(g.in_spatial, g.lhs_dilation, g.padding)


def _output(out: np.ndarray | None, shape: tuple) -> np.ndarray:
    """``out`` (checked to have ``shape``) or a new uninitialised float64 array of that shape."""
    if out is None:
        return np.empty(shape, dtype=np.float64)
    if out.shape != shape:
        raise ValueError(f"out.shape={out.shape}: expected {shape}")
    return out


def dilate_pad_shape(x_shape, lhs_dilation, pads) -> tuple:
    """Shape of ``dilate_pad(x, lhs_dilation, pads)`` for ``x`` of shape ``x_shape``."""
    sizes, _, _ = _dilate_pad_plan(x_shape[1:-1], lhs_dilation, pads)
    return (x_shape[0], *sizes, x_shape[-1])


def dilate_pad(x: np.ndarray, lhs_dilation, pads, out: np.ndarray | None = None) -> np.ndarray:
    """lhs-dilate then pad (positive entries) or crop (negative entries), in one allocation.

    Parameters
    ----------
    x : ndarray, shape ``(N, n_1, ..., n_S, C)``
    lhs_dilation : tuple of S ints >= 1
        ``L - 1`` zeros are inserted between neighbouring input elements.
    pads : tuple of S ``(lo, hi)`` pairs
        Zeros added (or, when negative, elements removed) at each end of the dilated input.
    out : ndarray, optional
        float64 array of the result's shape (see :func:`dilate_pad_shape`) to write into, so a
        caller can reuse one workspace; its previous contents are overwritten (only what the copy
        of ``x`` leaves is zeroed). Without it a new zeroed array is allocated.

    Returns
    -------
    ndarray, shape ``(N, p_1, ..., p_S, C)`` with ``p_i = max((n_i - 1) L_i + 1 + lo_i + hi_i, 0)``
        ``out[:, i * L + lo] = x[:, i]`` for every ``i`` landing inside, zeros elsewhere.
    """
    return dilate_pad_by(x, _dilate_pad_plan(x.shape[1:-1], lhs_dilation, pads), lhs_dilation, out)


def dilate_pad_by(x: np.ndarray, plan: tuple, lhs_dilation, out: np.ndarray | None = None) -> np.ndarray:
    """:func:`dilate_pad` with its plan (:func:`_dilate_pad_plan` of ``x``'s spatial shape, the
    dilation and the pads, e.g. :func:`padded_plan`) computed by the caller."""
    sizes, src, dst = plan
    if out is None:
        out = np.zeros((x.shape[0], *sizes, x.shape[-1]))  # fresh zero pages: nothing to clear
    else:
        _zero_outside(_output(out, (x.shape[0], *sizes, x.shape[-1])), dst, lhs_dilation)
    out[dst] = x[src]
    return out


#: At most this many elements, a padded array is zeroed whole: one fill costs less than the
#: 2 per spatial axis of its borders (about a microsecond each).
ZERO_WHOLE_MAX = 8192


def _zero_outside(out: np.ndarray, dst, lhs_dilation) -> None:
    """Zero every element of ``out`` that the copy into ``out[dst]`` will not overwrite.

    Without lhs dilation these are the pad borders of each spatial axis (cheaper than zeroing
    all of ``out``, unless ``out`` is small); with it, the holes between input elements too, so
    all of ``out`` is zeroed.
    """
    if out.size <= ZERO_WHOLE_MAX or any(L != 1 for L in lhs_dilation):
        out[...] = 0.0
        return
    for axis, d in enumerate(dst[1:-1], start=1):
        lead = (slice(None),) * axis
        out[lead + (slice(0, d.start),)] = 0.0
        out[lead + (slice(d.stop, None),)] = 0.0


def dilate_pad_adjoint(dp: np.ndarray, spatial, lhs_dilation, pads) -> np.ndarray:
    """Adjoint of :func:`dilate_pad`: read back the positions the input elements landed on.

    ``dp`` has the padded shape; the result has shape ``(N, *spatial, C)``, with zeros for input
    elements that were cropped away.
    """
    _, src, dst = _dilate_pad_plan(spatial, lhs_dilation, pads)
    out = np.zeros((dp.shape[0], *spatial, dp.shape[-1]), dtype=np.float64)
    out[src] = dp[dst]
    return out


def lhs_dilate(x: np.ndarray, dilation) -> np.ndarray:
    """Insert ``L - 1`` zeros between neighbouring elements of each spatial axis of ``x``."""
    return dilate_pad(x, tuple(dilation), ((0, 0),) * len(dilation))


def pad_or_crop(x: np.ndarray, pads) -> np.ndarray:
    """Pad each spatial axis of ``x`` with zeros (``lo, hi > 0``) or crop it (``< 0``)."""
    return dilate_pad(x, (1,) * len(pads), tuple(pads))


# --- gather windows and scatter them back ---------------------------------------------------


def _tap_slices(kernel_spatial, out_spatial, stride, rhs_dilation) -> tuple:
    """For each kernel tap ``t`` (row-major order), the strided slices ``t * d + o * s``."""
    return _tap_slices_of(*(tuple(a) for a in (kernel_spatial, out_spatial, stride, rhs_dilation)))


@functools.lru_cache(maxsize=1024)
def _tap_slices_of(kernel_spatial: tuple, out_spatial: tuple, stride: tuple, rhs_dilation: tuple) -> tuple:
    # Cached: every chunk of a convolution asks again for the same K tuples of slices.
    return tuple(
        tuple(
            slice(t * d, t * d + (o - 1) * s + 1, s) if o > 0 else slice(0, 0)
            for t, o, s, d in zip(tap, out_spatial, stride, rhs_dilation)
        )
        for tap in itertools.product(*(range(k) for k in kernel_spatial))
    )


def window_view(padded: np.ndarray, kernel_spatial, out_spatial, stride, rhs_dilation) -> np.ndarray:
    """Every window of ``padded`` as one read-only strided view, without copying.

    ``view[n, o, t, c] = padded[n, o * stride + t * rhs_dilation, c]``: along spatial axis ``i``,
    a step in ``o_i`` moves ``stride_i`` padded rows and a step in ``t_i`` moves ``rhs_dilation_i``.
    Shape ``(N, *out_spatial, *kernel_spatial, C)``.
    """
    strides = _window_strides(padded.strides, tuple(stride), tuple(rhs_dilation))
    shape = (padded.shape[0], *out_spatial, *kernel_spatial, padded.shape[-1])
    if not padded.flags.c_contiguous:
        return np.lib.stride_tricks.as_strided(padded, shape, strides, writeable=False)
    # The same view built directly on the buffer: 1-2 us instead of as_strided's 7 (per-call overhead).
    view = np.ndarray(shape, padded.dtype, buffer=padded, strides=strides)
    view.flags.writeable = False
    return view


def window_runs_view(padded: np.ndarray, kernel_spatial, out_spatial, stride, rhs_dilation, run: int) -> np.ndarray:
    """:func:`window_view` with the last output axis cut into runs of ``run`` neighbouring outputs,
    each run's windows side by side along the channel axis (stride 1 along the last axis).

    ``view[n, o', q, t, r*C + c] = padded[n, o'*stride + t'*rhs_dilation, q*run + r + t_last*d_last, c]``
    (``o'``, ``t'``: the axes before the last). With stride 1, output ``q*run + r`` reads the
    window of output ``q*run`` shifted by ``r`` positions, i.e. by ``r*C`` elements when the
    last spatial axis and the channels of ``padded`` are contiguous: so ``(r, c)`` is one axis of
    ``run * C`` elements with the channels' stride. Shape ``(N, *out_spatial[:-1],
    out_spatial[-1] // run, *kernel_spatial, run * C)``; requires ``out_spatial[-1] % run == 0``,
    stride 1 along the last axis and ``padded.strides[-2] == C * padded.strides[-1]``.
    """
    c = padded.shape[-1]
    if stride[-1] != 1 or out_spatial[-1] % run or not runs_fit(padded):
        raise ValueError(
            f"window_runs_view: stride {tuple(stride)}, last output size {out_spatial[-1]}, run {run}, "
            f"strides {padded.strides}: expected stride 1 along the last axis, runs dividing it, and "
            "the last spatial axis and the channels contiguous"
        )
    sn, *sp, sc = padded.strides
    shape = (padded.shape[0], *out_spatial[:-1], out_spatial[-1] // run, *kernel_spatial, run * c)
    strides = (
        sn,
        *(st * s for st, s in zip(sp[:-1], stride[:-1])),
        run * sp[-1],
        *(st * d for st, d in zip(sp, rhs_dilation)),
        sc,
    )
    return np.lib.stride_tricks.as_strided(padded, shape, strides, writeable=False)


def runs_fit(a: np.ndarray) -> bool:
    """Whether the last spatial axis and the channels of ``a`` (its last two axes) lie as one
    evenly strided run, so that neighbouring positions' channels can be read as one axis
    (:func:`window_runs_view`, ``refws.conv.output_runs``)."""
    return a.ndim >= 2 and a.strides[-2] == a.shape[-1] * a.strides[-1]


@functools.lru_cache(maxsize=1024)
def _window_strides(strides: tuple, stride: tuple, rhs_dilation: tuple) -> tuple:
    # Cached: computing these few products in Python took as long as building the view.
    sn, *sp, sc = strides
    return (sn, *(st * s for st, s in zip(sp, stride)), *(st * d for st, d in zip(sp, rhs_dilation)), sc)


def gather_windows_shape(padded_shape, kernel_spatial, out_spatial, groups: int = 1) -> tuple:
    """Shape ``(G, N, *out_spatial, *kernel_spatial, C // G)`` of the columns of :func:`gather_windows`."""
    return (groups, padded_shape[0], *out_spatial, *kernel_spatial, padded_shape[-1] // groups)


def gather_windows_by_taps(
    padded: np.ndarray,
    kernel_spatial,
    out_spatial,
    stride,
    rhs_dilation,
    groups: int = 1,
    out: np.ndarray | None = None,
) -> np.ndarray:
    """Copy every kernel window of ``padded`` into a column array, one kernel tap at a time.

    The teaching version (:func:`gather_windows` is the fast one): for each tap ``t``,
    the strided slice ``padded[:, t*d : t*d + (out-1)*s + 1 : s]`` holds that tap's input for
    every output position at once.

    Parameters
    ----------
    padded : ndarray, shape ``(N, *padded_spatial, C)``, the dilated and padded input.
    groups : int
        Channel groups ``G``; the columns of group ``g`` hold channels ``g*C/G : (g+1)*C/G``.
    out : ndarray, optional
        float64 array of the result's shape (:func:`gather_windows_shape`) to fill, so a caller
        can reuse one workspace; every element is overwritten.

    Returns
    -------
    ndarray, shape ``(G, N, *out_spatial, *kernel_spatial, C // G)``
        ``cols[g, n, o, t, c] = padded[n, o * stride + t * rhs_dilation, g * C/G + c]``.
        With ``G = 1``, ``cols[0]`` is the public im2col layout.
    """
    n_batch, c = padded.shape[0], padded.shape[-1]
    cg = c // groups
    cols = _output(out, gather_windows_shape(padded.shape, kernel_spatial, out_spatial, groups))
    taps = int(np.prod(kernel_spatial))
    flat = cols.reshape(groups, n_batch, *out_spatial, taps, cg)  # taps flattened, a view
    for t, window in enumerate(_tap_slices(kernel_spatial, out_spatial, stride, rhs_dilation)):
        patch = padded[(slice(None), *window)].reshape(n_batch, *out_spatial, groups, cg)
        flat[..., t, :] = np.moveaxis(patch, -2, 0)
    return cols


def gather_windows(
    padded: np.ndarray,
    kernel_spatial,
    out_spatial,
    stride,
    rhs_dilation,
    groups: int = 1,
    out: np.ndarray | None = None,
    staging: np.ndarray | None = None,
) -> np.ndarray:
    """Same result as :func:`gather_windows_by_taps`, as one copy of :func:`window_view`.

    One pass over memory instead of one per tap: faster for every shape measured, by 1.0-1.8x
    on grouped and depthwise convolutions and up to 10x with many taps and few channels (the
    weight gradient by ``method="conv"``, whose kernel is the whole output). With groups, the
    input is first copied group-major, ``(G, N, *padded_spatial, C // G)`` (into ``staging`` when
    given, a float64 array of ``padded.size`` elements or more): a window's neighbouring taps then
    lie side by side and the gather copies runs of ``k * C // G`` elements instead of ``C // G``
    (measured 1.3x faster with 8 and 16 channels per group, the copy included).
    """
    c = padded.shape[-1]
    if padded.size == 0:
        return gather_windows_by_taps(padded, kernel_spatial, out_spatial, stride, rhs_dilation, groups, out)
    cols = _output(out, gather_windows_shape(padded.shape, kernel_spatial, out_spatial, groups))
    if groups == 1:
        np.copyto(cols[0], window_view(padded, kernel_spatial, out_spatial, stride, rhs_dilation))
        return cols
    cg, lead = c // groups, padded.shape[:-1]
    shape = (groups, *lead, cg)
    major = np.empty(shape) if staging is None else staging[: padded.size].reshape(shape)
    np.copyto(major, np.moveaxis(padded.reshape(*lead, groups, cg), -2, 0))
    view = window_view(
        major.reshape(groups * lead[0], *lead[1:], cg), kernel_spatial, out_spatial, stride, rhs_dilation
    )
    np.copyto(cols.reshape(view.shape), view)
    return cols


def scatter_windows(cols: np.ndarray, padded_spatial, stride, rhs_dilation) -> np.ndarray:
    """Adjoint of :func:`gather_windows` with ``G = 1``: add every window back where it came from.

    ``cols`` has shape ``(N, *out_spatial, *kernel_spatial, C)``; the result
    ``(N, *padded_spatial, C)`` holds ``sum_{o, t : o*s + t*d = p} cols[n, o, t, c]`` at ``p``.
    """
    s_dims = len(padded_spatial)
    n_batch, out_spatial = cols.shape[0], cols.shape[1 : 1 + s_dims]
    kernel_spatial, c = cols.shape[1 + s_dims : 1 + 2 * s_dims], cols.shape[-1]
    flat = cols.reshape(n_batch, *out_spatial, int(np.prod(kernel_spatial)), c)
    padded = np.zeros((n_batch, *padded_spatial, c), dtype=np.float64)
    for t, window in enumerate(_tap_slices(kernel_spatial, out_spatial, stride, rhs_dilation)):
        padded[(slice(None), *window)] += flat[..., t, :]  # one tap never hits a cell twice
    return padded


def _geometry_of(x_shape, kernel_spatial, stride, padding, lhs_dilation, rhs_dilation) -> ConvGeometry:
    if len(x_shape) < 3:
        raise ValueError(
            f"x.shape={tuple(x_shape)}: expected a batched channels-last array "
            "(N, *spatial, C) with at least one spatial dimension"
        )
    return conv_geometry(x_shape[1:-1], kernel_spatial, stride, padding, lhs_dilation, rhs_dilation)


def im2col(x, kernel_spatial, stride=1, padding="SAME", lhs_dilation=1, rhs_dilation=1) -> np.ndarray:
    """Columns of a convolution: every kernel window of the dilated, padded input.

    Parameters
    ----------
    x : array_like, shape ``(N, *spatial, C)`` (channels-last, batched)
    kernel_spatial : sequence of int
    stride, padding, lhs_dilation, rhs_dilation : as for :func:`refws.conv`

    Returns
    -------
    cols : ndarray, float64, shape ``(N, *out_spatial, *kernel_spatial, C)``
        ``cols[n, o, t, c] = P[n, o * stride + t * rhs_dilation, c]`` with ``P = dilate_pad(x)``.
        Column order: kernel taps row-major (last spatial axis fastest), then channels, so that
        ``cols.reshape(-1, K * C) @ w.reshape(K * C, C_out)`` is the ungrouped convolution for a
        kernel ``w`` of shape ``(*kernel_spatial, C, C_out)``.
    """
    x = as_float64(x, "x")
    g = _geometry_of(x.shape, kernel_spatial, stride, padding, lhs_dilation, rhs_dilation)
    padded = dilate_pad(x, g.lhs_dilation, g.padding)
    return gather_windows(padded, g.kernel_spatial, g.out_spatial, g.stride, g.rhs_dilation)[0]


def col2im(cols, x_shape, kernel_spatial, stride=1, padding="SAME", lhs_dilation=1, rhs_dilation=1) -> np.ndarray:
    """Adjoint of :func:`im2col`: ``<im2col(x), z> == <x, col2im(z)>`` for every ``x`` and ``z``.

    Parameters
    ----------
    cols : array_like, shape ``(N, *out_spatial, *kernel_spatial, C)``
    x_shape : tuple ``(N, *spatial, C)``, the shape of the input ``im2col`` was applied to.

    Returns
    -------
    ndarray, float64, shape ``x_shape``: each input element receives the sum of the column
    entries it was copied to (zero for elements cropped away or skipped by the stride).
    """
    cols = as_float64(cols, "cols")
    x_shape = tuple(int(v) for v in x_shape)
    g = _geometry_of(x_shape, kernel_spatial, stride, padding, lhs_dilation, rhs_dilation)
    expected = (x_shape[0], *g.out_spatial, *g.kernel_spatial, x_shape[-1])
    if cols.shape != expected:
        raise ValueError(f"cols.shape={cols.shape}: expected {expected} for x_shape={x_shape}")
    padded_spatial, _, _ = _dilate_pad_plan(g.in_spatial, g.lhs_dilation, g.padding)
    padded = scatter_windows(cols, padded_spatial, g.stride, g.rhs_dilation)
    return dilate_pad_adjoint(padded, g.in_spatial, g.lhs_dilation, g.padding)


# --- chunking to the workspace budget -------------------------------------------------------


def padded_spatial_shape(g: ConvGeometry) -> tuple:
    """Spatial shape of ``dilate_pad(x, g.lhs_dilation, g.padding)`` (what the windows are read from)."""
    return tuple(
        max((n - 1) * L + 1 + lo + hi if n > 0 else lo + hi, 0)
        for n, L, (lo, hi) in zip(g.in_spatial, g.lhs_dilation, g.padding)
    )


def chunk_plan(
    g: ConvGeometry,
    n_batch: int,
    c_in: int,
    c_out: int,
    groups: int,
    formulation: str = "gemm",
    budget: int | None = None,
):
    """Split a convolution into pieces whose workspace fits the budget.

    Returns ``(batch_step, row_step)``: samples per chunk, and output rows (first spatial
    dimension) per chunk. Whole samples are preferred (``row_step`` = all rows), so that each
    chunk of the output is contiguous; a single sample is split by rows only when it does not fit.

    ``formulation`` is the evaluation the chunks are for (:func:`refws.conv.conv_canonical`):
    ``"gemm"`` holds the padded rows, the columns and (groups > 1) a group-major copy of the
    padded rows, and aims at ``min(budget, PREFERRED_CHUNK_BYTES)``; ``"taps"`` holds the padded rows, one input
    channel of them repeated over the output channels (unless depthwise without multiplier) and a
    product the size of the output chunk, and aims at ``min(budget, PREFERRED_TAPS_CHUNK_BYTES)``.
    ``budget`` is the workspace of one chunk (default: :func:`get_workspace_bytes`).
    """
    inner_out = math.prod(g.out_spatial[1:])
    padded_spatial = padded_spatial_shape(g)
    inner_padded = math.prod(padded_spatial[1:])
    if formulation == "gemm":
        per_position = math.prod(g.kernel_spatial) * c_in
        per_padded, preferred = c_in * (2 if groups > 1 else 1), PREFERRED_CHUNK_BYTES
    else:
        per_position = c_out
        per_padded = c_in + (0 if c_in == c_out == groups else c_out)
        preferred = PREFERRED_TAPS_CHUNK_BYTES

    def cost(samples: int, rows: int) -> int:
        window_rows = min((rows - 1) * g.stride[0] + g.dilated_kernel[0], padded_spatial[0])
        return 8 * samples * (rows * inner_out * per_position + window_rows * inner_padded * per_padded)

    budget, rows_all = min(_workspace_bytes if budget is None else budget, preferred), g.out_spatial[0]
    per_sample = cost(1, rows_all)
    if per_sample <= budget:
        return max(1, min(n_batch, budget // max(per_sample, 1))), rows_all
    rows = 1
    while rows < rows_all and cost(1, rows + 1) <= budget:
        rows += 1
    return 1, rows
