"""N-d convolution (cross-correlation): explicit im2col and one matrix product per group, or, with
few channels per group, sums over the kernel taps of elementwise products on strided window views
(:data:`FORMULATIONS`).

Definition (channels-last, batched; ``o`` and ``t`` are multi-indices over the S spatial axes)::

    P = dilate_pad(x, lhs_dilation, pads)          # insert L-1 zeros between inputs, then pad or crop
    y[n, o, g*Cog + j] = sum_{t, c} P[n, o*stride + t*rhs_dilation, g*Cg + c] * w[t, c, g*Cog + j]

with ``G = groups``, ``Cg = C_in / G`` input and ``Cog = C_out / G`` output channels per group.
No kernel flip: this is the cross-correlation every framework calls convolution
(``jax.lax.conv_general_dilated``, ``torch.nn.functional.conv2d``).
"""

from __future__ import annotations

import functools
import importlib
import math
import numbers
import os
import threading
from collections.abc import Sequence

import numpy as np

from .arrays import as_float64, from_canonical, to_canonical
from .geometry import ConvGeometry, _plain_key, conv_geometry, remember
from .im2col import (
    _tap_slices,
    chunk_plan,
    dilate_pad,
    dilate_pad_by,
    dilate_pad_shape,
    gather_windows,
    gather_windows_shape,
    get_workspace_bytes,
    padded_plan,
    runs_fit,
    window_runs_view,
    window_view,
)

_im2col = importlib.import_module(".im2col", __package__)  # the module (refws.im2col is also a function)

__all__ = [
    "conv",
    "conv_canonical",
    "check_conv_operands",
    "canonical_operands",
    "as_float64",
    "to_canonical",
    "from_canonical",
]


def check_groups(groups) -> int:
    """``groups`` must be a positive int."""
    if type(groups) is int and groups >= 1:  # the common case, without the abstract-class check
        return groups
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
        raise ValueError(
            f"x.shape={x.shape}: expected rank {w.ndim} (batched) or {w.ndim - 1} (unbatched) "
            f"input of layout {layout} for a kernel w of shape {w.shape}"
        )
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
    if min(w.shape[:-2]) < 1:  # a spatial axis exists (canonical_operands checked)
        raise ValueError(f"w.shape={w.shape}: kernel spatial sizes must be >= 1")
    c_in, c_out = x_cl.shape[-1], w.shape[-1]
    if c_in != w.shape[-2] * groups:
        raise ValueError(
            f"x has C_in={c_in} channels but w.shape={w.shape} with groups={groups} expects "
            f"C_in = w.shape[-2] * groups = {w.shape[-2] * groups}"
        )
    if c_out % groups:
        raise ValueError(f"w.shape={w.shape}: C_out={c_out} is not divisible by groups={groups}")
    return x_cl, w, unbatched


# --- formulations: two evaluations of the same sums -------------------------------------------

#: ``"gemm"``: gather the windows (im2col), one matrix product per group. ``"taps"``: no columns;
#: the products of the strided window view (every output position's input at each kernel tap
#: ``t``) with the weights, summed over the taps by ``np.einsum`` (:class:`TapsChunk`).
FORMULATIONS = ("gemm", "taps")


def forward_formulation(
    kernel_taps: int, cg: int, cog: int, groups: int, last_stride: int = 1, outputs: int = 0
) -> str:
    """The formulation :func:`conv_canonical` uses: ``"taps"`` when ``Cg * Cog <= 4`` and there
    are at least 16 groups, or when the last axis has stride 1 (``last_stride``), there are at
    least 4 groups, ``Cog <= 2``, ``Cg * Cog <= 8`` and at least 512 output positions
    (``outputs = N * prod(out_spatial)``); else ``"gemm"``.

    ``"taps"`` sums over the kernel taps with one einsum per channel of the narrower side of a
    group, its inner loop running over every group's channels at once (``G * max(Cg, Cog)``
    numbers, and over runs of neighbouring outputs where the last axis has stride 1); ``"gemm"``
    gathers the columns once and runs one product per group of inner size ``K * Cg`` and width
    ``Cog``, which BLAS runs well only when both are large. Measured (bench_formulations.py, the
    tables are in benchmarks/README.md; 3x3 kernels, 64x64 maps, batch 8, 32 input channels):
    with at least 16 groups taps is 1.3x to 6x faster for depthwise with multiplier 1 or 2 (also
    strided and 3-D) and 2 -> 2 on one core and two, 1 -> 4 is split (gemm 1.4x faster on one
    core, taps 1.3x on two); from 8 channel pairs on one side gemm is faster (one core: 1 -> 8
    1.4x, 4 -> 4 1.4x). With the runs (since 83be968) taps also wins with 4 and 8 groups when a
    group writes at most 2 channels: 4 -> 1 with 8 groups 1.9x (one core) and 2.4x (two), 4 -> 2
    1.2x to 1.3x, 8 -> 1 with 4 groups 1.4x to 1.5x, and 1.5x to 3x on 2x32x32 and 1x10^3 maps
    (1000 outputs); but on tiny maps (98 to 392 outputs, 4 groups) gemm is as fast or up to 2.5x
    faster (30-82 us against 42-132 us), and with 2 groups (a 2x7x7 map: 27 us against 72 us). Without the runs (a
    strided last axis) the einsum's inner loops are short and the 16-group rule holds (measured
    before 83be968: with 8 or fewer groups gemm 1.2x to 4x faster). The input gradient by the
    conv derivation, which reads ``Cog`` channels per group and writes ``Cg``, is a forward
    convolution and asks this rule with the roles exchanged. ``kernel_taps`` is part of the
    signature for rules that weigh it; this one does not need it.
    """
    if cg * cog <= FORWARD_TAPS_MAX_CHANNEL_PAIRS and groups >= FORWARD_TAPS_MIN_GROUPS:
        return "taps"
    runs = last_stride == 1 and outputs >= FORWARD_RUNS_MIN_OUTPUTS and groups >= FORWARD_RUNS_MIN_GROUPS
    return "taps" if runs and cog <= FORWARD_RUNS_MAX_WRITTEN and cg * cog <= FORWARD_RUNS_MAX_PAIRS else "gemm"


def formulation_of(g: ConvGeometry, n_batch: int, c_in: int, c_out: int, groups: int) -> str:
    """:func:`forward_formulation` of a convolution: its channels per group, groups, last stride
    and output positions ``n_batch * prod(g.out_spatial)``."""
    outputs = n_batch * math.prod(g.out_spatial)
    return forward_formulation(g.taps, c_in // groups, c_out // groups, groups, g.stride[-1], outputs)


def taps_channels(cg: int, cog: int) -> bool:
    """Whether a group's channels suit the tap formulation of the col2im gradient halves (part of
    the rules of :func:`refws.grads.weight_grad_formulation` and
    :func:`refws.grads.input_grad_formulation`): ``Cg <= 4``, ``Cog <= 4`` and ``Cg * Cog <= 8``."""
    return cg <= TAPS_MAX_PER_GROUP and cog <= TAPS_MAX_PER_GROUP and cg * cog <= TAPS_MAX_CHANNEL_PAIRS


#: The forward rule's thresholds (see forward_formulation): channel pairs ``Cg * Cog`` per group,
#: and groups; with runs (last axis of stride 1): groups, output positions, written channels per
#: group and channel pairs.
FORWARD_TAPS_MAX_CHANNEL_PAIRS, FORWARD_TAPS_MIN_GROUPS = 4, 16
FORWARD_RUNS_MIN_GROUPS, FORWARD_RUNS_MIN_OUTPUTS, FORWARD_RUNS_MAX_WRITTEN, FORWARD_RUNS_MAX_PAIRS = 4, 512, 2, 8
#: The col2im halves' thresholds (see taps_channels): channels per group on either side, and
#: channel pairs ``Cg * Cog`` per group.
TAPS_MAX_PER_GROUP, TAPS_MAX_CHANNEL_PAIRS = 4, 8


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


@functools.lru_cache(maxsize=1024)
def chunks(n_batch: int, rows_all: int, batch_step: int, row_step: int) -> tuple:
    """``(b0, nb, r0, rows)``: samples ``b0 : b0 + nb`` and output rows ``r0 : r0 + rows`` of each chunk."""
    return tuple(
        (b0, min(batch_step, n_batch - b0), r0, min(row_step, rows_all - r0))
        for b0 in range(0, n_batch, batch_step)
        for r0 in range(0, rows_all, row_step)
    )


def row_windows(x: np.ndarray, g: ConvGeometry, batch_step: int, row_step: int, part=None):
    """The chunks of a convolution with their input: ``(b0, nb, r0, rows, window)``.

    ``window`` holds the padded input rows (``dilate_pad``) that output rows ``r0 : r0 + rows``
    of samples ``b0 : b0 + nb`` read, its first row being padded row ``r0 * s`` (it may hold
    rows past the last window: the stride remainder). It lives in one workspace reused by every
    chunk (allocating per chunk costs page faults and cold caches, about 15% of the run time on
    the benchmark), so it is valid until the next chunk. Without padding and lhs dilation it is a
    view of ``x``: no copy at all. ``part``: only these chunks (of :func:`chunks`), default all.
    """
    if batch_step >= x.shape[0] and row_step >= g.out_spatial[0]:  # one chunk: no workspace to plan
        yield 0, x.shape[0], 0, g.out_spatial[0], whole_window(x, g)
        return
    plain = g.unpadded
    if not plain:
        shape = dilate_pad_shape((batch_step, *x.shape[1:]), g.lhs_dilation, _row_window_pads(g, 0, row_step))
        buffer = workspace("window", (math.prod(shape),))
    for b0, nb, r0, rows in part if part is not None else chunks(x.shape[0], g.out_spatial[0], batch_step, row_step):
        xb = x[b0 : b0 + nb]
        if plain:
            window = xb[:, r0 * g.stride[0] : (r0 + rows - 1) * g.stride[0] + g.dilated_kernel[0]]
        else:
            pads = _row_window_pads(g, r0, rows)
            window = dilate_pad(
                xb, g.lhs_dilation, pads, out=_carve(buffer, dilate_pad_shape(xb.shape, g.lhs_dilation, pads))
            )
        yield b0, nb, r0, rows, window


# --- workspaces kept between calls ----------------------------------------------------------------
#
# Fresh multi-megabyte arrays are page-faulted in on first touch, and on a virtual machine that
# costs about as much as the convolution itself when calls come one by one between other work
# (measured: a MobileNet stem conv, 2.1 ms with warm workspaces, 10-12 ms with fresh ones). So the
# workspaces (padded rows, columns, products) are kept per thread between calls, RETAIN_BYTES in
# all at most (and never more than the workspace budget); outputs are always fresh arrays, never
# views of a workspace.

#: The most workspace bytes a thread keeps between calls (also at most get_workspace_bytes()).
RETAIN_BYTES = 32 * 2**20
_retained = threading.local()


def workspace(key: str, shape) -> np.ndarray:
    """A float64 array of ``shape`` for scratch use, reused by every chunk and by later calls on
    this thread (:data:`RETAIN_BYTES`); its contents are arbitrary. Each ``key`` names one
    workspace: two arrays in use at the same time need two keys."""
    size = math.prod(shape)
    buffers = getattr(_retained, "buffers", None)
    if buffers is None:
        buffers = _retained.buffers = {}
    buf = buffers.get(key)
    if buf is None or buf.size < size:
        buffers.pop(key, None)
        buf = np.empty(size)
        kept = sum(b.nbytes for b in buffers.values())
        if kept + buf.nbytes <= min(RETAIN_BYTES, get_workspace_bytes()):
            buffers[key] = buf
    return _carve(buf, shape)


def whole_window(x: np.ndarray, g: ConvGeometry) -> np.ndarray:
    """The window of a convolution done in one chunk: ``dilate_pad(x)``, or ``x`` itself without
    padding and lhs dilation."""
    if g.unpadded:
        return x
    plan = padded_plan(g)
    return dilate_pad_by(x, plan, g.lhs_dilation, out=workspace("window", (x.shape[0], *plan[0], x.shape[-1])))


# --- threads for the tap formulation ------------------------------------------------------------
#
# numpy's elementwise loops run on one core (they release the GIL while they run); BLAS runs the
# gemm formulation's products on every core by itself. So the taps split their chunks into one
# contiguous part per thread. Every output element is still summed by one thread in one fixed
# order, and sums across chunks (dw) are added in chunk order: the result does not depend on the
# number of threads.

#: Threads for the tap formulation: None = the cores this process may use.
TAPS_THREADS: int | None = None
#: Below this many elementwise operations (about a millisecond) one thread does all the work.
TAPS_PARALLEL_MIN_OPS = 2**21


def taps_threads() -> int:
    """The most threads the tap formulation uses: :data:`TAPS_THREADS`, or the usable cores."""
    cores = TAPS_THREADS or (len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count())
    return max(1, cores or 1)


def taps_workers(n_parts: int, ops: int) -> int:
    """How many threads to run ``n_parts`` independent parts of ``ops`` elementwise operations on."""
    return 1 if ops < TAPS_PARALLEL_MIN_OPS or n_parts < 2 else min(n_parts, taps_threads())


def plan(g: ConvGeometry, n_batch: int, c_in: int, c_out: int, groups: int, formulation: str):
    """:func:`refws.im2col.chunk_plan` for a formulation: the taps' threads each hold a workspace,
    so each gets an equal share of the budget."""
    threads = taps_threads() if formulation == "taps" else 1
    preferred = (_im2col.PREFERRED_CHUNK_BYTES, _im2col.PREFERRED_TAPS_CHUNK_BYTES)
    return _plan_of(g, n_batch, c_in, c_out, groups, formulation, get_workspace_bytes(), threads, preferred)


@functools.lru_cache(maxsize=1024)
def _plan_of(g: ConvGeometry, n_batch, c_in, c_out, groups, formulation, budget, threads, preferred) -> tuple:
    # Cached: a function of its arguments only (the budget, threads and preferred chunk sizes
    # that chunk_plan reads are among them).
    if formulation == "gemm" and GemmChunk.reads_window_as_columns(g, groups) and g.unpadded:
        return n_batch, g.out_spatial[0]  # no workspace at all: one product over x itself
    return chunk_plan(g, n_batch, c_in, c_out, groups, formulation, budget // threads)


def run_parts(work, items: Sequence, workers: int) -> list:
    """``[work(part) for part in parts]``: ``items`` cut into ``workers`` contiguous parts, each on a
    new thread of its own; an exception in any part is raised here.

    Plain threads, started per call (tens of microseconds, for at least a millisecond of work).
    Measured on the 2-core benchmark machine: 1.3x faster than one thread; a persistent
    ``ThreadPoolExecutor``, or one part run on the calling thread, gave no speed-up at all.
    """
    if workers <= 1:
        return [work(items)]
    bounds = [len(items) * i // workers for i in range(workers + 1)]
    parts = [items[a:b] for a, b in zip(bounds, bounds[1:])]
    results, errors = [None] * len(parts), [None] * len(parts)

    def run(i):
        try:
            results[i] = work(parts[i])
        except BaseException as exc:  # re-raised on the calling thread below
            errors[i] = exc

    threads = [threading.Thread(target=run, args=(i,), name=f"refws-taps-{i}") for i in range(len(parts))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for exc in errors:
        if exc is not None:
            raise exc
    return results


def conv_canonical(
    x: np.ndarray, w: np.ndarray, g: ConvGeometry, groups: int, formulation: str | None = None
) -> np.ndarray:
    """Convolution of validated canonical operands, chunked to the workspace budget.

    Parameters
    ----------
    x : float64 ``(N, *in_spatial, C_in)``;  w : float64 ``(*kernel_spatial, C_in // G, C_out)``
    g : the geometry from :func:`refws.conv_geometry`;  groups : G
    formulation : ``"gemm"``, ``"taps"`` (see :data:`FORMULATIONS`) or None: chosen by
        :func:`forward_formulation`. Both compute the same sums of the same products.

    Returns
    -------
    float64 ``(N, *g.out_spatial, C_out)``
    """
    n_batch, c_in, c_out = x.shape[0], x.shape[-1], w.shape[-1]
    if 0 in g.out_spatial or n_batch == 0 or c_out == 0 or c_in == 0:  # no terms: every sum is empty
        return np.zeros((n_batch, *g.out_spatial, c_out), dtype=np.float64)
    if formulation is None:
        formulation = formulation_of(g, n_batch, c_in, c_out, groups)
        tiny = _tiny_gemm(g, x.shape, c_out) if formulation == "gemm" and groups == 1 else None
        if tiny is not None:
            return tiny.forward(x, w)
    elif formulation not in FORMULATIONS:
        raise ValueError(f"formulation={formulation!r}: expected one of {FORMULATIONS} or None (chosen by shape)")
    y = np.empty((n_batch, *g.out_spatial, c_out), dtype=np.float64)  # every element is written below
    batch_step, row_step = plan(g, n_batch, c_in, c_out, groups, formulation)
    items = chunks(n_batch, g.out_spatial[0], batch_step, row_step)
    shared = evaluator(formulation, g, groups, c_in, c_out, row_step, w)
    if len(items) == 1:  # the small problems: no more bookkeeping
        shared.forward(whole_window(x, g), y)
        return y
    workers = parallel_workers(formulation, len(items), y.size, math.prod(w.shape[:-1]))

    def work(part):
        for b0, nb, r0, rows, window in row_windows(x, g, batch_step, row_step, part):
            shared.forward(window, y[b0 : b0 + nb, r0 : r0 + rows])

    run_parts(work, items, workers)
    return y


# --- tiny problems: the gemm formulation with its buffers kept per problem -------------------
#
# A small dense problem (one chunk, gemm) spends most of a call finding its workspaces, building
# the window view and zeroing the pad borders. Kept per problem shape and thread, the padded
# buffer's borders (and lhs-dilation holes) stay zero (each call writes only where the input
# lands), and the window view into it and the columns are built once: the call is the copy in,
# the gather and one product, the same ones GemmChunk.forward runs on one chunk.

#: A problem takes the tiny path when its padded input and columns fit in this many bytes (and in
#: the workspace budget); each thread keeps at most TINY_PLANS of them (TINY_PLANS * TINY_BYTES).
TINY_BYTES, TINY_PLANS = 2**15, 128
_tiny = threading.local()


class _TinyGemm:
    """One tiny dense problem's buffers: ``forward(x, w)`` is :meth:`GemmChunk.forward` on the
    whole problem (the same columns, the same product)."""

    def __init__(self, g: ConvGeometry, x_shape: tuple):
        sizes, self.src, self.dst = padded_plan(g)
        self.padded = np.zeros((x_shape[0], *sizes, x_shape[-1]))
        self.view = window_view(self.padded, g.kernel_spatial, g.out_spatial, g.stride, g.rhs_dilation)
        self.cols = np.empty(self.view.shape)
        self.rows, self.inner = x_shape[0] * math.prod(g.out_spatial), math.prod(self.view.shape[-g.ndim - 1 :])
        self.out_shape = (x_shape[0], *g.out_spatial)
        self.nbytes = self.padded.nbytes + self.cols.nbytes

    def forward(self, x: np.ndarray, w: np.ndarray) -> np.ndarray:
        self.padded[self.dst] = x[self.src]
        np.copyto(self.cols, self.view)
        y = np.empty((*self.out_shape, w.shape[-1]))
        np.matmul(self.cols.reshape(self.rows, self.inner), w.reshape(self.inner, -1), out=y.reshape(self.rows, -1))
        return y


def _tiny_gemm(g: ConvGeometry, x_shape: tuple, c_out: int) -> _TinyGemm | None:
    """The kept buffers of a tiny dense problem on this thread (made at its first call), or None
    when the problem is larger than TINY_BYTES or than the workspace budget."""
    plans = getattr(_tiny, "plans", None)
    if plans is None:
        plans = _tiny.plans = {}
    key = (g, x_shape, c_out)
    plan = plans.get(key)
    if plan is None:
        n_batch, c_in = x_shape[0], x_shape[-1]
        nbytes = 8 * n_batch * c_in * (math.prod(padded_plan(g)[0]) + math.prod(g.out_spatial) * g.taps)
        if nbytes > TINY_BYTES:
            remember(plans, key, False, TINY_PLANS)
            return None
        if nbytes > get_workspace_bytes():
            return None  # not kept: the budget may grow
        plan = remember(plans, key, _TinyGemm(g, x_shape), TINY_PLANS)
    return plan if plan and plan.nbytes <= get_workspace_bytes() else None


def parallel_workers(formulation: str, n_parts: int, size: int, taps_reads: int) -> int:
    """Threads for a formulation's parts: one for gemm (BLAS has its own), :func:`taps_workers` for
    taps, whose work is two passes over ``size`` written elements per kernel tap and read channel
    (``taps_reads`` = K times the read channels per group)."""
    return 1 if formulation != "taps" else taps_workers(n_parts, 2 * size * taps_reads)


def evaluator(
    formulation: str,
    g: ConvGeometry,
    groups: int,
    c_in: int,
    c_out: int,
    row_step: int,
    w: np.ndarray | None = None,
    adjoint: bool = False,
):
    """The chunk evaluator of a formulation: a :class:`GemmChunk` or a :class:`TapsChunk`.

    Its ``forward`` and ``weight_grad`` read input windows (``C_in / G`` channels per group);
    with ``adjoint`` (the input gradient) its ``scatter`` reads ``dy`` instead. ``w`` is the
    kernel ``(*k, C_in // G, C_out)`` (not needed for ``weight_grad``); ``row_step`` is the
    chunks' number of output rows (the taps repeat their weights along the last output axis).
    """
    cg, cog, taps = c_in // groups, c_out // groups, g.taps
    if formulation == "gemm":
        return GemmChunk(g, groups, cg, c_out, w)
    last = row_step if g.ndim == 1 else g.out_spatial[-1]
    if w is None:
        return TapsChunk(g, groups, cg, c_out)
    if adjoint:  # read dy (Cog per group), write dx (Cg per group)
        w_t = w.reshape(taps, cg, groups, cog).transpose(0, 3, 2, 1).reshape(taps, cog, c_in)
        return TapsChunk(g, groups, cog, c_in, w_t, last)
    return TapsChunk(g, groups, cg, c_out, w.reshape(taps, cg, c_out), last)


class _Chunk:
    """What both evaluations share: reused workspaces and the per-tap strided views of a window."""

    def __init__(self, g: ConvGeometry, groups: int):
        self.g, self.groups = g, groups

    def _buffer(self, key: str, shape) -> np.ndarray:
        """The evaluator's workspace ``key`` (:func:`workspace`: per thread, so every thread that
        shares an evaluator has its own)."""
        return workspace(key, shape)

    def _views(self, padded: np.ndarray, chunk_out):
        """Per kernel tap ``t`` (row-major), the strided view ``padded[:, o*s + t*d]`` over the chunk's outputs."""
        return (
            padded[(slice(None), *sl)]
            for sl in _tap_slices(self.g.kernel_spatial, chunk_out, self.g.stride, self.g.rhs_dilation)
        )


class GemmChunk(_Chunk):
    """The im2col evaluation of a chunk: the columns ``cols[g, m, (t, c)]`` (every window, gathered
    by one copy), then one matrix product per group:

    - :meth:`forward`: ``y_g = cols_g @ w_g``;
    - :meth:`weight_grad`: ``dw_g += cols_g^T @ dy_g``;
    - :meth:`scatter`: ``dcols_g = dy_g @ w_g^T``, each tap's block added back where its window
      came from (col2im, chunk by chunk).

    A 1x1 kernel with stride 1 reads every padded position once: with one group the window itself
    is the column matrix, and nothing is gathered or scattered.
    """

    def __init__(self, g: ConvGeometry, groups: int, cg: int, c_out: int, w: np.ndarray | None = None):
        self.g, self.groups = g, groups  # _Chunk's, set here (per-call overhead)
        self.taps, self.cg, self.cog = g.taps, cg, c_out // groups
        self.k_cg = self.taps * cg
        self.direct = self.reads_window_as_columns(g, groups)
        if w is not None:
            self.w_groups = w.reshape(self.k_cg, groups, self.cog).transpose(1, 0, 2)  # (G, K*Cg, Cog)

    @staticmethod
    def reads_window_as_columns(g: ConvGeometry, groups: int) -> bool:
        """A 1x1 kernel, stride 1, one group: the padded window is the column matrix itself."""
        return groups == 1 and g.taps == 1 and max(g.stride) == 1

    def _columns(self, window: np.ndarray, chunk_out) -> np.ndarray:
        """``(G, m, K*Cg)``: the window itself (direct), or its gathered windows in the workspace."""
        if self.direct:
            return window.reshape(1, -1, self.k_cg)
        g = self.g
        if self.groups == 1:  # gather_windows' copy, without its checks (per-call overhead)
            view = window_view(window, g.kernel_spatial, chunk_out, g.stride, g.rhs_dilation)
            cols = self._buffer("cols", view.shape)
            np.copyto(cols, view)
            return cols.reshape(1, -1, self.k_cg)
        shape = gather_windows_shape(window.shape, g.kernel_spatial, chunk_out, self.groups)
        cols = self._buffer("cols", shape)
        staging = self._buffer("group-major window", (window.size,))
        gather_windows(window, g.kernel_spatial, chunk_out, g.stride, g.rhs_dilation, self.groups, cols, staging)
        return cols.reshape(self.groups, -1, self.k_cg)

    def _per_group(self, a: np.ndarray) -> np.ndarray:
        """``(G, m, Cog)`` view of an output-like chunk ``(nb, *chunk_out, C_out)``."""
        return a.reshape(-1, self.groups, self.cog).transpose(1, 0, 2)

    def forward(self, window: np.ndarray, out: np.ndarray) -> None:
        """``out[n, o, g*Cog + j] = sum_{t, c} window[n, o*s + t*d, g*Cg + c] * w[t, c, g*Cog + j]``."""
        cols = self._columns(window, out.shape[1:-1])
        m = cols.shape[1]
        if self.groups == 1:
            np.matmul(cols[0], self.w_groups[0], out=out.reshape(m, -1))  # contiguous: a view
        else:  # each group's product written in place (BLAS takes the row stride C_out)
            np.matmul(cols, self.w_groups, out=self._per_group(out))

    def weight_grad(self, window: np.ndarray, dy: np.ndarray, acc: np.ndarray, first: bool = False) -> None:
        """``acc[t, c, g*Cog + j] += sum_{n, o} window[n, o*s + t*d, g*Cg + c] * dy[n, o, g*Cog + j]``;
        with ``first``, ``acc`` holds nothing yet and the sum is written into it (``=``)."""
        cols = self._columns(window, dy.shape[1:-1])
        acc_groups = acc.reshape(self.k_cg, self.groups, self.cog).transpose(1, 0, 2)
        if first:  # straight into acc: no zeroed array, no temporary the size of dw
            np.matmul(cols.transpose(0, 2, 1), self._per_group(dy), out=acc_groups)
            return
        product = self._buffer("dw chunk", acc_groups.shape)
        np.matmul(cols.transpose(0, 2, 1), self._per_group(dy), out=product)
        acc_groups += product

    def scatter(self, dy: np.ndarray, window: np.ndarray) -> None:
        """``window[n, o*s + t*d, g*Cg + c] += sum_j dy[n, o, g*Cog + j] * w[t, c, g*Cog + j]``."""
        m = dy.size // (self.groups * self.cog)
        # dcols as (m, G, K*Cg), each group's product written in place (BLAS takes the row stride):
        # each tap's block is then read back close together rather than G blocks apart.
        dcols = self._buffer("dcols", (m, self.groups, self.k_cg))
        np.matmul(self._per_group(dy), self.w_groups.transpose(0, 2, 1), out=dcols.transpose(1, 0, 2))
        if self.direct:
            window += dcols.reshape(window.shape)
            return
        per_tap = dcols.reshape(*dy.shape[:-1], self.groups, self.taps, self.cg)
        for t, view in enumerate(self._views(window, dy.shape[1:-1])):  # (nb, *chunk_out, G*Cg)
            view = view.reshape(*view.shape[:-1], self.groups, self.cg)
            np.add(view, per_tap[..., t, :], out=view)


class TapsChunk(_Chunk):
    """The tap evaluation of chunks: sums over the kernel taps of elementwise products, no columns.

    Channels: the *read* side has ``A`` channels per group, the *written* side ``C = G * R``
    channels (``R`` per group). ``E_a`` is channel ``a`` of every group repeated ``R`` times
    (:func:`expand_channel`), so that one elementwise product with the weight vector
    ``w_taps[t, a, :]`` (shape ``C``) serves every written channel at once:

    - :meth:`forward`: ``out[n, o, :] = sum_{t, a} E_a[n, o*s + t*d, :] * w_taps[t, a, :]``, read = the
      padded input window (``A = Cg``), written = the output (``R = Cog``), ``w_taps = w`` as
      ``(K, Cg, C_out)``; the sum over the taps is one ``np.einsum`` on the strided window view,
      over the read channels (then added up per group) or over the written ones (``E_a``),
      whichever side is wider;
    - :meth:`scatter`: the adjoint, ``window[n, o*s + t*d, :] += E_a[n, o, :] * w_taps[t, a, :]``, read
      = ``dy`` (``A = Cog``), written = the padded input gradient (``R = Cg``): one multiply and
      one add per tap (the windows overlap, so no einsum can write them);
    - :meth:`weight_grad`: ``acc[t, a, :] += sum_{n, o} E_a[n, o*s + t*d, :] * dy[n, o, :]``, one
      ``np.einsum`` per read channel.

    Each product is formed once, as in the definition; the loops only order the sums (einsum may
    fuse a product into its sum, as BLAS does: exact products on the golden grid make that
    invisible, elsewhere it rounds once less).
    """

    def __init__(
        self,
        g: ConvGeometry,
        groups: int,
        per_group_read: int,
        written: int,
        w_taps: np.ndarray | None = None,
        last: int = 1,
    ):
        super().__init__(g, groups)
        self.per_group_read, self.repeat = per_group_read, written // groups
        tile_bytes = min(TILE_BYTES, get_workspace_bytes() // 4)
        if w_taps is not None and written < TILE_BELOW_CHANNELS and w_taps.size * last * 8 <= tile_bytes:
            # Each weight vector repeated along the last output axis: with every operand then
            # contiguous over (last axis, channels), numpy runs one loop over whole rows instead of
            # one short loop per position (1.5x faster with 64 channels).
            w_taps = np.ascontiguousarray(np.broadcast_to(w_taps[:, :, None, :], (*w_taps.shape[:2], last, written)))
        elif w_taps is not None:
            w_taps = w_taps[:, :, None, :]
        self.w = w_taps
        if w_taps is not None:  # forward's weights, by the side its einsum runs over
            taps, a, rep, k = w_taps.shape[0], per_group_read, self.repeat, g.kernel_spatial
            w_plain = w_taps[:, :, 0]  # (K, A, G*R)
            # w_reads[r, *t, g*A + a] and w_writes[a, *t, g*R + r] = w_taps[t, a, g*R + r]
            per_written = w_plain.reshape(taps, a, groups, rep).transpose(3, 0, 2, 1)
            self.w_reads = np.ascontiguousarray(per_written).reshape(rep, *k, groups * a)
            self.w_writes = np.ascontiguousarray(w_plain.transpose(1, 0, 2)).reshape(a, *k, written)
            self._repeated: dict = {}  # the weights of _sums_over_taps repeated along runs

    def _weights(self, chunk_out) -> np.ndarray:
        w = self.w
        assert w is not None, "a tap plan built without weights has no weights to slice"
        return w[:, :, : chunk_out[-1]] if w.shape[2] > 1 else w

    def _expanded(self, a: np.ndarray, channel: int) -> np.ndarray:
        shape = (*a.shape[:-1], self.groups * self.repeat)
        return expand_channel(a, self.groups, channel, self.repeat, self._buffer("expanded", shape))

    def forward(self, window: np.ndarray, out: np.ndarray) -> None:
        # numpy's einsum sums over every tap in one call (its loop over the taps in C, each output
        # row hot in cache): 1.3x to 3x faster than a multiply and an add per tap. Its channel
        # axis is the wider side of a group: the read channels (once per written channel r, then
        # the read channels of each group added up) when A >= R, else the written channels (once
        # per read channel a, reading E_a). The narrower choice was measured 1.5x to 3x slower.
        if self.per_group_read >= self.repeat:
            self._forward_per_written(window, out)
        else:
            self._forward_per_read(window, out)

    def _window_view(self, window: np.ndarray, chunk_out) -> np.ndarray:
        g = self.g
        return window_view(window, g.kernel_spatial, chunk_out, g.stride, g.rhs_dilation)

    def _forward_per_written(self, window: np.ndarray, out: np.ndarray) -> None:
        """``out[..., g*R + r] = sum_a S_r[..., g*A + a]``, ``S_r = sum_t window_t * w_reads[r]``."""
        lead, taps = out.shape[:-1], self._taps_view(window, out.shape[1:-1])
        if self.per_group_read == 1 and self.repeat == 1:  # depthwise: the einsum is all
            self._sums_over_taps(taps, ("reads", 0), out)
            return
        sums = self._buffer("product", (*lead, window.shape[-1]))
        per_read = sums.reshape(*lead, self.groups, self.per_group_read)
        per_written = out.reshape(*lead, self.groups, self.repeat)
        for r in range(self.repeat):
            self._sums_over_taps(taps, ("reads", r), sums)
            _sum_last_axis(per_read, per_written[..., r])

    def _forward_per_read(self, window: np.ndarray, out: np.ndarray) -> None:
        """``out = sum_a sum_t E_a,t * w_writes[a]`` (``E_a``: :meth:`_expanded`)."""
        sums = self._buffer("product", out.shape) if self.per_group_read > 1 else out
        for a in range(self.per_group_read):
            taps = self._taps_view(self._expanded(window, a), out.shape[1:-1])
            self._sums_over_taps(taps, ("writes", a), out if a == 0 else sums)
            if a > 0:
                np.add(out, sums, out=out)

    def _taps_view(self, window: np.ndarray, chunk_out) -> tuple:
        """``(view, run)``: the window's taps for :meth:`_sums_over_taps`, over runs of ``run``
        neighbouring outputs (:func:`refws.im2col.window_runs_view`) where the last axis has
        stride 1 and the window's last spatial axis and channels form one run; else ``run = 1``
        and the plain window view.

        numpy's einsum runs one inner loop per output position and tap, over the ``z`` channels:
        with few channels the loop's own cost dominates. With stride 1 along the last axis, ``run``
        neighbouring outputs read ``run`` neighbouring windows, whose channels lie side by side
        in the window: over the runs view (``run * z`` channels), with the weights repeated ``run``
        times, the einsum forms the same products and sums (depthwise 3x3 on 8x64x64x32: 2.7x
        faster on one core, bit-identical). Built once per window, for every written channel.
        """
        g = self.g
        run = taps_run(chunk_out[-1], window.shape[-1]) if g.stride[-1] == 1 else 1
        if run > 1 and runs_fit(window):
            return window_runs_view(window, g.kernel_spatial, chunk_out, g.stride, g.rhs_dilation, run), run
        return self._window_view(window, chunk_out), 1

    def _sums_over_taps(self, taps: tuple, weights: tuple, out: np.ndarray) -> None:
        """``out[n, o, z] = sum_t window[n, o*s + t*d, z] * v[t, z]`` by one einsum over ``taps``
        (:meth:`_taps_view` of the window), ``v`` being ``w_reads[r]`` or ``w_writes[a]``
        (``weights``: ``("reads", r)`` or ``("writes", a)``)."""
        view, run = taps
        kind, index = weights
        v = (self.w_reads if kind == "reads" else self.w_writes)[index]
        if run > 1:
            key = (kind, index, run)
            repeated = self._repeated.get(key)
            if repeated is None:  # v repeated run times along z: (*k, run * z)
                repeated = self._repeated[key] = np.tile(v, run)
            v, out = repeated, output_runs(out, run)
        np.einsum(_taps_subscripts(self.g.ndim), view, v, out=out)

    def scatter(self, dy: np.ndarray, window: np.ndarray) -> None:
        chunk_out, w = dy.shape[1:-1], self._weights(dy.shape[1:-1])
        tmp = self._buffer("product", (*dy.shape[:-1], self.groups * self.repeat))
        for a in range(self.per_group_read):
            source = self._expanded(dy, a)
            for t, view in enumerate(self._views(window, chunk_out)):
                np.multiply(source, w[t, a], out=tmp)
                np.add(view, tmp, out=view)

    def weight_grad(self, window: np.ndarray, dy: np.ndarray, acc: np.ndarray, first: bool = False) -> None:
        g, c = self.g, dy.shape[-1]
        acc = acc.reshape(-1, self.per_group_read, c)  # (K, A, C), a view
        subscripts = _taps_weight_subscripts(g.ndim)
        for a in range(self.per_group_read):
            view = window_view(self._expanded(window, a), g.kernel_spatial, dy.shape[1:-1], g.stride, g.rhs_dilation)
            # one einsum over every tap: no product array (2.4x faster than a product and a sum),
            # dy read once rather than once per tap (1.2x faster than one einsum per tap)
            sums = np.einsum(subscripts, view, dy).reshape(-1, c)
            if first:
                acc[:, a] = sums
            else:
                acc[:, a] += sums


@functools.cache
def _taps_subscripts(ndim: int) -> str:
    """einsum subscripts of TapsChunk.forward: a window view ``(n, *o, *t, z)`` times weights
    ``(*t, z)`` summed over the taps ``t``, into ``(n, *o, z)``."""
    o, t = _LETTERS[:ndim], _LETTERS[ndim : 2 * ndim]
    return f"n{o}{t}z,{t}z->n{o}z"


@functools.cache
def _taps_weight_subscripts(ndim: int) -> str:
    """einsum subscripts of TapsChunk.weight_grad: a window view ``(n, *o, *t, z)`` times ``dy``
    ``(n, *o, z)`` summed over the samples and positions, into ``(*t, z)``."""
    o, t = _LETTERS[:ndim], _LETTERS[ndim : 2 * ndim]
    return f"n{o}{t}z,n{o}z->{t}z"


_LETTERS = "abcdefghijklmopqrstuvwxy"  # neither n nor z


#: TapsChunk's forward einsum runs over runs of neighbouring outputs of about this many elements
#: (run * channels; see TapsChunk._sums_over_taps): 512 and 2048 measured the same, 32 2.7x slower.
TAPS_RUN_ELEMENTS = 1024


def taps_run(last: int, channels: int) -> int:
    """Outputs per run along the last axis: the largest divisor of ``last`` (the chunk's last
    output axis) with ``run * channels <= TAPS_RUN_ELEMENTS``, at least 1."""
    return _largest_divisor(last, max(1, TAPS_RUN_ELEMENTS // max(channels, 1)))


@functools.lru_cache(maxsize=1024)
def _largest_divisor(n: int, most: int) -> int:
    return max((d for d in range(1, min(n, most) + 1) if n % d == 0), default=1)


def output_runs(out: np.ndarray, run: int) -> np.ndarray:
    """``out (n, *o, z)`` viewed as ``(n, *o[:-1], o[-1] // run, run * z)``, the output side of
    :func:`refws.im2col.window_runs_view` (its last spatial axis and channels one run)."""
    if out.shape[-2] % run or not runs_fit(out):
        raise ValueError(
            f"output_runs: shape {out.shape}, strides {out.strides}, run {run}: expected runs dividing the "
            "last spatial axis, and that axis and the channels as one run"
        )
    shape = (*out.shape[:-2], out.shape[-2] // run, run * out.shape[-1])
    strides = (*out.strides[:-2], run * out.strides[-2], out.strides[-1])
    return np.lib.stride_tricks.as_strided(out, shape, strides)


def _sum_last_axis(a: np.ndarray, out: np.ndarray) -> None:
    """``out = a[..., 0] + a[..., 1] + ...`` in that order (a copy for one entry)."""
    if a.shape[-1] == 1:
        np.copyto(out, a[..., 0])
        return
    np.add(a[..., 0], a[..., 1], out=out)
    for i in range(2, a.shape[-1]):
        np.add(out, a[..., i], out=out)


#: TapsChunk repeats weight vectors along the last output axis below this many written channels,
#: when the repeated weights take at most TILE_BYTES and a quarter of the workspace budget.
TILE_BELOW_CHANNELS, TILE_BYTES = 256, 2**20


def expand_channel(a: np.ndarray, groups: int, channel: int, repeat: int, out: np.ndarray) -> np.ndarray:
    """Channel ``channel`` of every group of ``a``, each repeated ``repeat`` times.

    ``E[..., g*repeat + r] = a[..., g*n + channel]`` with ``n = a.shape[-1] // groups``, written
    into ``out`` (shape ``(*a.shape[:-1], groups * repeat)``). Depthwise without multiplier
    (``n == repeat == 1``) needs no copy: ``a`` itself is returned.
    """
    n, lead = a.shape[-1] // groups, a.shape[:-1]
    if n == 1 and repeat == 1:
        return a
    source = a.reshape(*lead, groups, n)[..., channel]
    per_group = out.reshape(*lead, groups, repeat)
    for r in range(repeat):  # one strided copy per r: 3x faster than one broadcast copy
        per_group[..., r] = source
    return out


def _carve(buffer: np.ndarray, shape) -> np.ndarray:
    """The first ``prod(shape)`` elements of the flat workspace ``buffer``, viewed with ``shape``."""
    return buffer[: math.prod(shape)].reshape(shape)


def conv(
    x, w, stride=1, padding="SAME", lhs_dilation=1, rhs_dilation=1, groups=1, *, channel_first=False
) -> np.ndarray:
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
    Extra memory stays within :func:`refws.get_workspace_bytes` (see :func:`refws.set_workspace_bytes`;
    up to 32 MiB of it is kept per thread for the next call, and the buffers of up to 128 small
    dense problems, 32 KiB each at most).
    The sums are evaluated by im2col and BLAS, or, with many groups of few channels (depthwise,
    small groups; :func:`forward_formulation` says which), tap by tap on as many threads as the
    process may use; both form every product once, and the result does not depend on the threads.

    Examples
    --------
    >>> import numpy as np, refws
    >>> x = np.ones((2, 5, 5, 3)); w = np.ones((3, 3, 3, 4))
    >>> refws.conv(x, w, stride=2).shape
    (2, 3, 3, 4)
    """
    key = _checked_key(x, w, (stride, padding, lhs_dilation, rhs_dilation), groups, channel_first)
    checked = _CHECKED.get(key) if key is not None else None
    if checked is None:
        x_cl, w, unbatched = check_conv_operands(x, w, groups, channel_first)
        g = conv_geometry(x_cl.shape[1:-1], w.shape[:-2], stride, padding, lhs_dilation, rhs_dilation)
        if key is not None:
            remember(_CHECKED, key, (g, unbatched), _CHECKED_MAX)
    else:
        g, unbatched = checked
        x_cl = to_canonical(x, channel_first, unbatched)
    return from_canonical(conv_canonical(x_cl, w, g, groups), channel_first, unbatched)


# Calls already checked, by everything the checks read: the shapes of float64 ndarrays, exact-int
# groups, a bool layout flag and geometry arguments of exact ints and strings (as conv_geometry's
# memo). On a small problem the checks and the geometry were a sixth of a call; a key determines
# their outcome, so a hit skips them; anything else (other dtypes, array-likes, True, 1.0,
# np.int64(1), ...) is checked every time.
_CHECKED: dict = {}
_CHECKED_MAX = 4096


def _checked_key(x, w, geometry_args: tuple, groups, channel_first) -> tuple | None:
    """The memo key of a call of :func:`conv`, or None when the call must be checked."""
    if type(x) is not np.ndarray or type(w) is not np.ndarray or type(groups) is not int:
        return None
    if x.dtype != np.float64 or w.dtype != np.float64 or type(channel_first) is not bool:
        return None
    args = _plain_key(geometry_args)
    return None if args is None else (x.shape, w.shape, args, groups, channel_first)
