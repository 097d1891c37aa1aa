r"""Padding modes (PyTorch's ``padding_mode`` and ``numpy.pad``'s names) and their adjoint.

Each padded axis is handled by an index map ``src[j]``: output position ``j`` (``0 <= j < lo + n + hi``)
reads input position ``src[j]``, or is a zero when ``src[j] == -1``. With ``i = j - lo``:

========================  =====================  =================================================
torch name                numpy name             ``src`` for ``i`` outside ``[0, n)``
========================  =====================  =================================================
``"zeros"``               ``"constant"``         ``-1`` (zero)
``"reflect"``             ``"reflect"``          mirror about the edge, edge not repeated
``"replicate"``           ``"edge"``             ``clip(i, 0, n - 1)``
``"circular"``            ``"wrap"``             ``i mod n``
========================  =====================  =================================================

Padding is then a gather along each axis in turn, and its adjoint (:func:`pad_vjp`) scatter-adds
back along the axes in reverse order. The torch names also enforce torch's limits (``reflect``
needs ``pad < n``, ``circular`` needs ``pad <= n``), so a pad torch refuses raises here too;
``"wrap"`` follows ``numpy.pad`` (repeated wrapping). ``"reflect"`` is both libraries' name and keeps
torch's limit.
"""

from __future__ import annotations

import numbers
from collections.abc import Sequence
from typing import Any

import numpy as np
from numpy.typing import ArrayLike

from .arrays import as_float64

__all__ = ["pad", "pad_vjp", "PAD_MODES"]

# accepted name -> (numpy.pad mode, torch's limit on a pad relative to the axis size, or None)
PAD_MODES = {
    "zeros": ("constant", None),
    "reflect": ("reflect", "torch_reflect"),
    "replicate": ("edge", None),
    "circular": ("wrap", "torch_circular"),
    "constant": ("constant", None),
    "edge": ("edge", None),
    "wrap": ("wrap", None),
}
# "reflect" is both libraries' name; they agree wherever torch accepts the pad, so it keeps torch's
# limit (numpy's repeated reflection for pad >= n is not offered).


def _resolve_mode(mode) -> tuple[str, str | None]:
    if not isinstance(mode, str) or mode not in PAD_MODES:
        raise ValueError(
            f"mode={mode!r}: expected one of {sorted(PAD_MODES)} "
            "(torch names zeros/reflect/replicate/circular or numpy constant/edge/wrap)"
        )
    return PAD_MODES[mode]


def _resolve_pads_axes(pads, axes, ndim: int) -> tuple[tuple, tuple]:
    """Validate ``pads`` (one ``(lo, hi)`` pair of ints >= 0 per axis) and ``axes``."""
    try:
        pairs = tuple(tuple(p) for p in pads)
    except TypeError:
        raise TypeError(f"pads={pads!r}: expected a sequence of (lo, hi) pairs") from None
    for p in pairs:
        if len(p) != 2 or not all(
            isinstance(v, numbers.Integral) and not isinstance(v, bool) and int(v) >= 0 for v in p
        ):
            raise ValueError(f"pads={pads!r}: expected (lo, hi) pairs of ints >= 0, got {p!r}")
    if axes is None:
        if len(pairs) > ndim:
            raise ValueError(f"pads={pads!r} has {len(pairs)} pairs: expected at most ndim={ndim}")
        axes = tuple(range(ndim - len(pairs), ndim))
    else:
        axes = tuple(axes)
        if len(axes) != len(pairs) or not all(isinstance(a, numbers.Integral) and -ndim <= int(a) < ndim for a in axes):
            raise ValueError(
                f"axes={axes!r}: expected {len(pairs)} distinct axes in [{-ndim}, {ndim - 1}] (one per pair in pads)"
            )
        axes = tuple(int(a) % ndim for a in axes)
        if len(set(axes)) != len(axes):
            raise ValueError(f"axes={axes!r}: expected distinct axes")
    return tuple((int(lo), int(hi)) for lo, hi in pairs), axes


def _check_limit(limit, mode, n: int, lo: int, hi: int, axis: int):
    if lo == hi == 0:
        return
    if n == 0 and mode != "zeros" and mode != "constant":
        raise ValueError(f"mode={mode!r} cannot pad axis {axis} of size 0 (pads ({lo}, {hi}))")
    if limit == "torch_reflect" and max(lo, hi) >= n:
        raise ValueError(
            f"mode='reflect': pads ({lo}, {hi}) on axis {axis} of size {n}: expected each "
            f"pad < {n} (torch's limit; numpy-style repeated reflection is not torch's)"
        )
    if limit == "torch_circular" and max(lo, hi) > n:
        raise ValueError(
            f"mode='circular': pads ({lo}, {hi}) on axis {axis} of size {n}: expected each "
            f"pad <= {n} (torch's limit; use mode='wrap' for numpy's repeated wrapping)"
        )


def _source_index(np_mode: str, n: int, lo: int, hi: int) -> np.ndarray:
    """Input index read by each output position along one axis (-1: a zero)."""
    i = np.arange(-lo, n + hi)
    if np_mode == "constant":
        return np.where((i >= 0) & (i < n), i, -1)
    if np_mode == "edge":
        return np.clip(i, 0, n - 1)
    if np_mode == "wrap":
        return i % n
    period = 2 * (n - 1)  # reflect: the signal mirrored about both edges repeats with this period
    if period == 0:
        return np.zeros_like(i)
    m = i % period
    return np.where(m < n, m, period - m)


def _maps(shape, pads, mode, axes):
    np_mode, limit = _resolve_mode(mode)
    pairs, axes = _resolve_pads_axes(pads, axes, len(shape))
    maps = []
    for (lo, hi), axis in zip(pairs, axes):
        _check_limit(limit, mode, shape[axis], lo, hi, axis)
        maps.append((axis, _source_index(np_mode, shape[axis], lo, hi)))
    return maps


def _gather(x: np.ndarray, axis: int, src: np.ndarray) -> np.ndarray:
    keep = src >= 0
    out_shape = list(x.shape)
    out_shape[axis] = src.size
    out = np.zeros(out_shape)
    lead = (slice(None),) * axis
    out[lead + (keep,)] = np.take(x, src[keep], axis=axis)
    return out


def _scatter_add(dy: np.ndarray, axis: int, src: np.ndarray, n: int) -> np.ndarray:
    keep = src >= 0
    out_shape = list(dy.shape)
    out_shape[axis] = n
    out = np.zeros(out_shape)
    lead = (slice(None),) * axis
    index: Any = lead + (src[keep],)  # slices and an index array: valid for ufunc.at
    np.add.at(out, index, dy[lead + (keep,)])
    return out


def pad(
    x: ArrayLike, pads: Sequence[tuple[int, int]], mode: str = "zeros", *, axes: Sequence[int] | None = None
) -> np.ndarray:
    """Pad ``x`` along ``axes`` as ``torch.nn.functional.pad`` / ``numpy.pad`` would.

    Parameters
    ----------
    x : array_like, any shape
    pads : sequence of (lo, hi) pairs of ints >= 0
        One pair per padded axis, in the order of ``axes`` (not torch's reversed flat list).
    mode : str
        ``"zeros"``, ``"reflect"``, ``"replicate"``, ``"circular"`` (torch ``padding_mode``) or
        ``"constant"``, ``"edge"``, ``"wrap"`` (``numpy.pad``); ``"reflect"`` excludes the edge
        value in both libraries. Constant padding pads zeros.
    axes : sequence of int or None
        The padded axes; default the trailing ``len(pads)`` axes (spatial axes of NCHW input).

    Returns
    -------
    ndarray, float64, shape ``x.shape`` with ``lo + hi`` added on each padded axis

    Raises
    ------
    ValueError
        unknown mode, malformed pads or axes, a pad torch refuses (reflect ``pad >= n``,
        circular ``pad > n``), or a non-constant pad of an empty axis.
    """
    x = as_float64(x, "x")
    for axis, src in _maps(x.shape, pads, mode, axes):
        x = _gather(x, axis, src)
    return x


def pad_vjp(
    dy: ArrayLike, pads: Sequence[tuple[int, int]], mode: str = "zeros", *, axes: Sequence[int] | None = None
) -> np.ndarray:
    """Adjoint of :func:`pad`: scatter-add ``dy`` (the padded shape) back onto the unpadded shape.

    ``<pad(x), c> == <x, pad_vjp(c)>`` for all ``x`` and ``c``. The unpadded size of each padded
    axis is ``dy.shape[axis] - lo - hi``.
    """
    dy = as_float64(dy, "dy")
    pairs, axes_n = _resolve_pads_axes(pads, axes, dy.ndim)
    shape = list(dy.shape)
    for (lo, hi), axis in zip(pairs, axes_n):
        shape[axis] -= lo + hi
        if shape[axis] < 0:
            raise ValueError(f"dy has shape {dy.shape}: axis {axis} is shorter than its pads ({lo}, {hi})")
    for axis, src in reversed(_maps(tuple(shape), pairs, mode, axes_n)):
        dy = _scatter_add(dy, axis, src, shape[axis])
    return dy
