"""Array conventions at the door: accepted dtypes and the canonical (batched, channels-last) layout."""

from __future__ import annotations

import numpy as np

__all__ = ["as_float64", "to_canonical", "from_canonical"]


def as_float64(a, name: str) -> np.ndarray:
    """Return ``a`` as a float64 ndarray; bool, integer and real floating inputs are accepted.

    Raises
    ------
    TypeError
        for complex, object, string or other non-real dtypes (naming the argument).
    """
    if type(a) is np.ndarray and a.dtype == np.float64:  # the common case, without any copy
        return a
    arr = np.asarray(a)
    if arr.dtype.kind not in "biuf":
        raise TypeError(
            f"{name} has dtype {arr.dtype}: expected a real array (bool, integer or floating); "
            "complex and object arrays are not supported"
        )
    return arr.astype(np.float64, copy=False)


def to_canonical(a: np.ndarray, channel_first: bool, unbatched: bool) -> np.ndarray:
    """View ``a`` as batched channels-last ``(N, *spatial, C)``.

    ``a`` is ``(N, *spatial, C)``, ``(N, C, *spatial)`` (``channel_first``), or either without the
    leading batch axis (``unbatched``).
    """
    if unbatched:
        a = a[None]
    # transpose with explicit axes: the same view as np.moveaxis(a, 1, -1), without its argument checks
    return a.transpose(0, *range(2, a.ndim), 1) if channel_first else a


def from_canonical(a: np.ndarray, channel_first: bool, unbatched: bool) -> np.ndarray:
    """Inverse of :func:`to_canonical`; returns a C-contiguous array."""
    if channel_first:
        a = a.transpose(0, a.ndim - 1, *range(1, a.ndim - 1))  # np.moveaxis(a, -1, 1)
    if unbatched:
        a = a[0]
    return np.ascontiguousarray(a)
