r"""The ``lax-reference`` adapter: jax's NumPy reference convolution under test.

``jax._src.lax_reference.conv_general_dilated`` is the pure-NumPy convolution jax's own test
suite compares ``jax.lax`` against: lhs- and rhs-dilate by zero insertion, pad (negative pads
crop), take every window as one ``as_strided`` view and contract it with the kernel by
``opt_einsum``. ``LaxReferenceBackend(precision="float64")`` drives it through the adapter
protocol (:mod:`refws.conformance.protocol`); ``precision="float32"`` casts the inputs to float32
first (the einsum then runs in float32).

=============================  ==================================================================
protocol method                ``lax_reference``
=============================  ==================================================================
``conv``                       ``conv_general_dilated`` with dimension numbers ``NWC``/``NHWC``/
                               ``NDHWC`` (``NCW``/... with ``channel_first``) and an ``HWIO``
                               kernel; an unbatched input gets a batch axis added and removed
=============================  ==================================================================

Padding: lax's strings (``'SAME'``, ``'SAME_LOWER'``, ``'VALID'``, any case) are passed to
``lax_reference`` as they are, so its own SAME rule (``padtype_to_pads``) is what gets judged;
every other form is normalised to explicit ``(lo, hi)`` pairs by :func:`refws.conv_geometry`
(``lax_reference`` takes nothing but strings and pairs).

What it cannot do:

- ``groups > 1``: ``conv_general_dilated`` here has no ``feature_group_count`` argument
  -> :class:`~refws.conformance.protocol.NotExpressible`.
- Gradients: ``lax_reference`` is a forward reference (NumPy, no autodiff); ``conv_vjp``,
  ``conv_jvp`` and the transposed convolution are not offered, so those arrays are ``skipped``.
- A crop that leaves less than a kernel's extent: lax's semantics give a zero-size output, while
  ``lax_reference`` builds a window view of negative size and NumPy raises ("negative dimensions
  are not allowed") -> :class:`~refws.conformance.protocol.Unimplemented`.

Known bugs this adapter exposes (jax 0.4.x to 0.10.x; see docs/findings-draft.md): a padding pair
with a positive low and a negative high side (``(2, -1)``) crops from the wrong end
(``hi % dim`` is taken against the unpadded size: wrong output shape), and string padding is
computed from the undilated kernel size, so SAME with ``rhs_dilation > 1`` pads too little
(a 9x9 input gives 7x7).
"""

from __future__ import annotations

import numpy as np
from numpy.typing import ArrayLike

from ..conformance.protocol import IntOrInts, NotExpressible, Padding, Unimplemented
from ..geometry import conv_geometry

__all__ = ["LaxReferenceBackend"]

_PRECISIONS = ("float64", "float32")
_SPATIAL = "WHD"  # lax_reference sorts spatial axes by their order in the kernel spec


def _import_lax_reference():
    try:
        import jax
        from jax._src import lax_reference
    except ImportError as exc:
        raise ImportError(
            f"the lax-reference backend needs jax: pip install 'refws[jax]' (import failed: {exc})"
        ) from exc
    return jax, lax_reference


def dimension_numbers(nd: int, channel_first: bool) -> tuple[str, str, str]:
    """``('NHWC', 'HWIO', 'NHWC')`` for ``nd`` = 2 (``'NCHW'`` with ``channel_first``)."""
    spatial = _SPATIAL[:nd][::-1]
    lhs = "NC" + spatial if channel_first else "N" + spatial + "C"
    return lhs, spatial + "IO", lhs


class LaxReferenceBackend:
    """jax's ``lax_reference.conv_general_dilated`` (NumPy) under test.

    Parameters
    ----------
    precision : {"float64", "float32"}
        The dtype the inputs are given to ``lax_reference`` in (it computes in the input dtype).

    Attributes
    ----------
    name : ``"lax-reference"``
    precision : str
        As given: the bound it is judged by.
    version : str
        ``"jax " + jax.__version__`` (``lax_reference`` ships inside jax).

    Raises
    ------
    ImportError
        if jax is not installed (the message says ``pip install 'refws[jax]'``).
    ValueError
        for a precision other than "float64" / "float32".
    """

    name = "lax-reference"

    def __init__(self, precision: str = "float64") -> None:
        jax, self._ref = _import_lax_reference()
        if precision not in _PRECISIONS:
            raise ValueError(f"precision={precision!r}: expected one of {_PRECISIONS}")
        self.precision = precision
        self._dtype = np.dtype(precision)
        self.version = f"jax {jax.__version__}"

    def __repr__(self) -> str:
        return f"LaxReferenceBackend(precision={self.precision!r})"

    def conv(
        self,
        x: ArrayLike,
        w: ArrayLike,
        stride: IntOrInts = 1,
        padding: Padding = "SAME",
        lhs_dilation: IntOrInts = 1,
        rhs_dilation: IntOrInts = 1,
        groups: int = 1,
        *,
        channel_first: bool = False,
    ) -> np.ndarray:
        """``refws.conv`` by ``lax_reference.conv_general_dilated`` (string padding passed through)."""
        if int(groups) != 1:
            raise NotExpressible(
                f"groups={groups}: lax_reference.conv_general_dilated has no feature_group_count argument"
            )
        nd = np.ndim(w) - 2
        unbatched = np.ndim(x) == nd + 1
        x = np.asarray(x, dtype=self._dtype)
        if unbatched:
            x = x[None]
        spatial = x.shape[2:] if channel_first else x.shape[1:-1]
        # refws's geometry validates the arguments and gives the explicit pairs and the true output shape.
        g = conv_geometry(spatial, np.shape(w)[:-2], stride, padding, lhs_dilation, rhs_dilation)
        pads = padding if isinstance(padding, str) else [tuple(p) for p in g.padding]
        try:
            y = self._ref.conv_general_dilated(
                x,
                np.asarray(w, dtype=self._dtype),
                g.stride,
                pads,
                g.lhs_dilation,
                g.rhs_dilation,
                dimension_numbers(nd, bool(channel_first)),
            )
        except ValueError as exc:
            if 0 in g.out_spatial:
                raise Unimplemented(
                    f"lax_reference cannot give the zero-size output {g.out_spatial} "
                    f"that lax semantics define for pads {g.padding}: {exc}"
                ) from exc
            raise
        return y[0] if unbatched else y
