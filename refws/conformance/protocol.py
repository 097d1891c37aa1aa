"""The adapter protocol: what a backend under test implements, and how it says "I can't".

An *adapter* is any object that implements some of the methods below, with refws's own
signatures and layouts (channels-last unless ``channel_first``; kernels
``(*kernel, C_in // groups, C_out)`` for ``conv``, ``(*kernel, C_out // groups, C_in)`` for
``conv_transpose``), takes NumPy float64 arrays and returns NumPy arrays (any real float dtype).
It translates to its framework inside. It also has:

- ``name`` (str): shown in reports;
- ``precision``: a name from :data:`refws.tolerance.PRECISIONS` (``"float64"``, ``"float32"``,
  ``"tf32"``, ...) or a ``(u_in, u_acc, u_out)`` triple: the arithmetic it computes in, which
  selects the error bound it is judged by;
- optionally ``version`` (str): the framework's version, shown in reports.

Methods (each optional; a missing one means its arrays are reported ``skipped``):

========================================================================  =====================
method                                                                    returns
========================================================================  =====================
``conv(x, w, stride, padding, lhs_dilation, rhs_dilation, groups, *,       ``y``
channel_first)``
``conv_vjp(x, w, dy, <conv args>, *, channel_first)``                      ``(dx, dw)``
``conv_jvp(x, w, tx, tw, <conv args>, *, channel_first)``                  ``(y, ty)``
``conv_transpose(x, w, stride, padding, output_padding, dilation, groups,  ``y``
*, output_size, bias, channel_first)``
``conv_transpose_vjp(x, w, dy, <transpose args>, *, output_size, bias,     ``(dx, dw)``, or
channel_first)``                                                           ``(dx, dw, db)`` when
                                                                           ``bias`` is not None
``conv_transpose_jvp(x, w, tx, tw, <transpose args>, *, output_size,       ``(y, ty)``
bias, tbias, channel_first)``
``weight_standardize(w, gain, eps, *, out_axis, spec)``                    ``w_hat``
``weight_standardize_vjp(w, dw_hat, gain, eps, *, out_axis, spec)``        ``(dw, dgain)``
``weight_standardize_jvp(w, tw, gain, tgain, eps, *, out_axis, spec)``     ``(w_hat, tw_hat)``
``layer(params, arrays)``                                                  dict of outputs
========================================================================  =====================

``spec`` is a preset name of :data:`refws.WS_PRESETS` (``refws.ws.resolve_spec(spec)`` gives its
``ddof``, ``denominator``, ``fan``, ``fixed_scale`` and ``eps``); ``eps=None`` means the preset's.

``layer(params, arrays)`` serves the layer suites (``brainstate``, ``elektronn3``): ``params`` is
the golden case's parameters (``library``, ``cls``, ``kwargs`` — the layer's constructor
arguments —, ``x_shape``, ``mask``, and ``output_size`` for elektronn3's transposed layers);
``arrays`` holds the stored inputs by their golden names: ``x``, the parameters (``weight``,
``bias``, ``gain``, ``w_mask`` where present), the cotangent ``dy`` and the tangents ``t<name>``.
It returns a dict with any of ``y``, ``dx``, ``d<param>`` (VJP for ``dy``) and ``ty`` (JVP).

A case the framework's API has no way to express raises :class:`NotExpressible` (reason in the
message); a case its own specification allows but the framework refuses raises
:class:`Unimplemented`. Anything else an adapter raises is reported as ``error`` with its message,
and the run goes on.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, TypeAlias

__all__ = ["NotExpressible", "Unimplemented", "METHODS"]

# The types of the protocol's arguments, for adapters' annotations (refws.conv's and
# refws.conv_transpose's own forms):
Adapter: TypeAlias = Any  # any object with some of METHODS (each one optional)
IntOrInts: TypeAlias = int | Sequence[int]  # stride, dilations, transposed padding: one or one per axis
Padding: TypeAlias = str | int | Sequence[int] | Sequence[Sequence[int]]  # "SAME", p, (p_i), ((lo, hi), ...)


class NotExpressible(Exception):
    """The backend's API has no way to say this case (reported as ``not_expressible``)."""


class Unimplemented(Exception):
    """The framework refuses a case its own specification allows (reported as ``unimplemented``)."""


# Every method an adapter may implement (the runner reads this; docs/conformance.md lists it).
METHODS = (
    "conv",
    "conv_vjp",
    "conv_jvp",
    "conv_transpose",
    "conv_transpose_vjp",
    "conv_transpose_jvp",
    "weight_standardize",
    "weight_standardize_vjp",
    "weight_standardize_jvp",
    "layer",
)
