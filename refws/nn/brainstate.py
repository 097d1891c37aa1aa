r"""NumPy mirrors of brainstate 0.6.0's ``Conv1d/2d/3d``, ``ScaledWSConv1d/2d/3d``,
``ConvTranspose1d/2d/3d``, ``Linear`` and ``ScaledWSLinear`` (what their code computes, see
../shared/NOTES.md and docs/layers.md).

Convolutions (``N`` spatial dimensions; channels-last shown, ``channel_first`` moves ``C`` to axis 1
of the input and output only)::

    x       (B, *in_spatial, C_in)  or unbatched (*in_spatial, C_in)   -- must match ``in_size``
    weight  (*kernel_size, C_in // groups, C_out)                      -- HWIO in both layouts
    bias    (1,)*N + (C_out,)   or, channel_first, (1, C_out) + (1,)*N  -- only when b_init is given
    gain    (1,)*(N+1) + (C_out,)                                       -- ScaledWS with ws_gain=True

    w_eff = WS(weight, gain) * w_mask        (ScaledWS; plain Conv: weight * w_mask)
    y     = conv(x, w_eff, stride, padding, lhs_dilation, rhs_dilation, groups) + bias

``WS`` is the NFNets formula brainstate's ``weight_standardization`` implements (ddof 0,
``scale = rsqrt(max(var * fan_in, eps)) * gain``, ``w_hat = w * scale - mean * scale``), recomputed
at every call; the mask multiplies the *standardized* kernel. Transposed convolutions (no WS)::

    weight  (*kernel_size, C_out, C_in // groups)
    y       = conv_transpose_lax(x, flip(weight * w_mask).swapaxes(-1, -2), stride, padding, rhs_dilation,
                                 groups=groups) + bias      (lax's rule for 'SAME'/'VALID')

Linear layers::

    Linear          weight (in, out), bias (out,)              y = x @ (weight * w_mask) + bias
    ScaledWSLinear  weight (in, out), bias (out,), gain (1, out)   y = x @ (WS(weight, gain) * w_mask) + bias

Parameters live in ``layer.params`` under brainstate's names (``'weight'``, ``'bias'``, ``'gain'``:
the keys of brainstate's ``layer.weight.value`` dict). Initial values come from :mod:`refws.init`
with brainstate's defaults, drawn from the keyword-only ``rng`` (a ``numpy.random.Generator`` or an
int seed; None: each initializer's own generator). ``layer.vjp(x, dy)`` returns ``(dx, grads)`` with
``grads`` keyed like ``params``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from .. import init as _init
from ..arrays import as_float64
from ..conv import check_groups, conv
from ..geometry import as_int_tuple, conv_geometry
from ..grads import bias_vjp, conv_transpose_lax, conv_transpose_lax_vjp, conv_vjp, lax_transpose_geometry
from .base import (
    Layer,
    ParamDict,
    WeightPipeline,
    check_positive_int,
    fixed_rank,
    initial_value,
    make_rng,
    resolve_mask,
    spatial_dims,
)

__all__ = [
    "Conv",
    "Conv1d",
    "Conv2d",
    "Conv3d",
    "ScaledWSConv",
    "ScaledWSConv1d",
    "ScaledWSConv2d",
    "ScaledWSConv3d",
    "ConvTranspose",
    "ConvTranspose1d",
    "ConvTranspose2d",
    "ConvTranspose3d",
    "Linear",
    "ScaledWSLinear",
    "flip_swap_io",
]

_WS = dict(spec="brainstate", out_axis=-1)


class _Brainstate(Layer):
    """Forward and VJP shared by the convolutions and the linear layers.

    A subclass supplies ``_batched(x) -> (x_batched, unbatched)`` (the input check),
    ``_op(x, w)`` and ``_op_vjp(x, w, dy) -> (dx, dw)`` (the bilinear map), ``_out_shape(x)``
    and ``_bias_grad(dy)``; the kernel pipeline (WS, mask) is ``self._weights``.
    """

    _weights: WeightPipeline
    _batched: Callable[[Any], tuple[np.ndarray, bool]]  # supplied by each subclass
    _op: Callable[[np.ndarray, np.ndarray], np.ndarray]

    def forward(self, x) -> np.ndarray:
        """``y`` for the input ``x`` (unbatched input gives unbatched output)."""
        xb, unbatched = self._batched(x)
        y = self._op(xb, self._weights.effective(self._params))
        if "bias" in self._params:
            y = y + self._params["bias"]
        return y[0] if unbatched else y

    def vjp(self, x, dy):
        """Cotangents of ``forward``: ``(dx, grads)``, ``dx`` shaped like ``x``, ``grads`` like ``params``.

        ``dy`` has the shape of ``forward(x)``.
        """
        xb, unbatched = self._batched(x)
        dy = as_float64(dy, "dy")
        expected = self._out_shape(xb)[1:] if unbatched else self._out_shape(xb)
        if dy.shape != expected:
            raise ValueError(
                f"dy.shape={dy.shape}: expected {expected}, the shape of the layer's output for x.shape={np.shape(x)}"
            )
        dyb = dy[None] if unbatched else dy
        dx, dw_eff = self._op_vjp(xb, self._weights.effective(self._params), dyb)
        grads = self._weights.grads(self._params, dw_eff)
        if "bias" in self._params:
            grads["bias"] = self._bias_grad(dyb).reshape(self._params["bias"].shape)
        return (dx[0] if unbatched else dx), {name: grads[name] for name in self._params}


# --- convolutions -----------------------------------------------------------------------------


def _check_padding(padding):
    """brainstate asserts ``padding in ['SAME', 'VALID']`` for strings (lax's other spellings fail)."""
    if isinstance(padding, str) and padding not in ("SAME", "VALID"):
        raise ValueError(
            f"padding={padding!r}: brainstate accepts only the strings 'SAME' and 'VALID' "
            "(upper case), an int, ints per dimension or (lo, hi) pairs"
        )
    return padding


class Conv(_Brainstate):
    """brainstate ``Conv{N}d``: an N-d convolution layer with HWIO kernel (mirror, float64).

    Parameters
    ----------
    in_size : sequence of N + 1 ints
        The unbatched input shape, ``(*spatial, C_in)`` or (``channel_first``) ``(C_in, *spatial)``.
    out_channels : int
    kernel_size, stride, lhs_dilation, rhs_dilation : int or sequence of 1 or N ints
    padding : ``'SAME'``, ``'VALID'``, int, N ints (symmetric per dimension), or ``(lo, hi)``
        pairs (one for all dimensions, or N); see :func:`refws.conv_geometry`. Negative pads crop.
    groups : int dividing ``C_in`` and ``out_channels``
    w_init : initializer, array of the kernel shape, or scalar (default ``XavierNormal()``)
    b_init : initializer, array or scalar, or None for no bias (default None)
    w_mask : array broadcasting to the kernel shape, a callable ``f(kernel_shape)``, or None
    channel_first : bool
        ``(B, C, *spatial)`` input and output instead of ``(B, *spatial, C)``; the kernel stays HWIO.
    name : str or None
    rng : numpy Generator, int seed or None (keyword only; not a brainstate argument)
        Passed to the initializers (and a callable mask). None lets each initializer use its own
        generator, as brainstate's default initializers carry their own seeded key (the module-level
        defaults advance with every layer built).

    Attributes
    ----------
    in_size, out_size : unbatched input and output shapes (``out_size`` as brainstate computes it).
    in_channels, out_channels, kernel_size, stride, padding, lhs_dilation, rhs_dilation, groups,
    kernel_shape, w_mask, channel_first, channels_last, name, num_spatial_dims.
    """

    num_spatial_dims: int | None = None

    def __init__(
        self,
        in_size,
        out_channels,
        kernel_size,
        stride=1,
        padding="SAME",
        lhs_dilation=1,
        rhs_dilation=1,
        groups=1,
        w_init=_init.XavierNormal(),
        b_init=None,
        w_mask=None,
        channel_first=False,
        name=None,
        *,
        rng=None,
        num_spatial_dims=None,
    ):
        self._setup_geometry(
            in_size,
            out_channels,
            kernel_size,
            stride,
            padding,
            lhs_dilation,
            rhs_dilation,
            groups,
            channel_first,
            num_spatial_dims,
        )
        self.name = name
        rng = make_rng(rng, keep_none=True)
        self.w_mask = resolve_mask(w_mask, self.kernel_shape, self.kernel_shape, rng)
        params = {"weight": initial_value(w_init, self.kernel_shape, "w_init", rng)}
        if b_init is not None:
            params["bias"] = initial_value(b_init, self.bias_shape, "b_init", rng)
        params.update(self._extra_params())
        self._params = ParamDict(params)
        self._weights = WeightPipeline(self.w_mask, self._ws_options())

    def _extra_params(self) -> dict:
        return {}

    def _ws_options(self):
        return None

    def _setup_geometry(
        self,
        in_size,
        out_channels,
        kernel_size,
        stride,
        padding,
        lhs_dilation,
        rhs_dilation,
        groups,
        channel_first,
        num_spatial_dims,
    ):
        self.num_spatial_dims = n = spatial_dims(self, num_spatial_dims)
        in_size = tuple(in_size) if isinstance(in_size, (tuple, list)) else in_size
        if not (isinstance(in_size, tuple) and len(in_size) == n + 1):
            layout = "(C_in, *spatial)" if channel_first else "(*spatial, C_in)"
            raise ValueError(f"in_size={in_size!r}: expected {n + 1} sizes {layout} for a {n}-d convolution")
        self.in_size = tuple(int(v) for v in in_size)
        self.channel_first, self.channels_last = bool(channel_first), not channel_first
        self.in_channels = self.in_size[0] if channel_first else self.in_size[-1]
        spatial = self.in_size[1:] if channel_first else self.in_size[:-1]
        self.out_channels = check_positive_int(out_channels, "out_channels")
        self.groups = check_groups(groups)
        for what, size in (("out_channels", self.out_channels), ("in_channels", self.in_channels)):
            if size % self.groups:
                raise ValueError(f'"{what}" should be divisible by groups: {what}={size}, groups={self.groups}')
        self.kernel_size = as_int_tuple(kernel_size, n, "kernel_size")
        self.padding = _check_padding(padding)
        self._set_geometry(spatial, stride, padding, lhs_dilation, rhs_dilation)
        self.kernel_shape = self.kernel_size + self._kernel_channels()
        self.bias_shape = (1, self.out_channels) + (1,) * n if channel_first else (1,) * n + (self.out_channels,)
        out_spatial = self.geometry.out_spatial
        self.out_size = (self.out_channels, *out_spatial) if channel_first else (*out_spatial, self.out_channels)

    def _set_geometry(self, spatial, stride, padding, lhs_dilation, rhs_dilation):
        self.geometry = conv_geometry(spatial, self.kernel_size, stride, padding, lhs_dilation, rhs_dilation)
        self.stride, self.lhs_dilation = self.geometry.stride, self.geometry.lhs_dilation
        self.rhs_dilation = self.geometry.rhs_dilation

    def _kernel_channels(self) -> tuple:
        return (self.in_channels // self.groups, self.out_channels)

    # the input check and messages are brainstate's _check_input_dim
    def _batched(self, x):
        x = as_float64(x, "x")
        n = self.num_spatial_dims
        if x.ndim not in (n + 1, n + 2):
            raise ValueError(
                f"expected {n + 2}D (with batch) or {n + 1}D (without batch) input (got {x.ndim}D input, {x.shape})"
            )
        unbatched = x.ndim == n + 1
        x_shape = x.shape if unbatched else x.shape[1:]
        if x_shape != self.in_size:
            raise ValueError(f"The expected input shape is {self.in_size}, while we got {x_shape}.")
        return (x[None] if unbatched else x), unbatched

    def _conv_kwargs(self) -> dict:
        g = self.geometry
        return dict(
            stride=g.stride,
            padding=g.padding,
            lhs_dilation=g.lhs_dilation,
            rhs_dilation=g.rhs_dilation,
            groups=self.groups,
            channel_first=self.channel_first,
        )

    def _op(self, x, w):
        return conv(x, w, **self._conv_kwargs())

    def _op_vjp(self, x, w, dy):
        return conv_vjp(x, w, dy, **self._conv_kwargs())

    def _out_shape(self, x) -> tuple:
        return (x.shape[0], *self.out_size)

    def _bias_grad(self, dy):
        return bias_vjp(dy, channel_first=self.channel_first)

    def __repr__(self):
        return (
            f"{type(self).__name__}(in_channels={self.in_channels}, out_channels={self.out_channels}, "
            f"kernel_size={self.kernel_size}, stride={self.stride}, padding={self.padding}, "
            f"groups={self.groups})"
        )


class ScaledWSConv(Conv):
    """brainstate ``ScaledWSConv{N}d``: :class:`Conv` with the kernel weight-standardized at every call.

    Extra parameters: ``ws_gain`` (bool, default True: a ``'gain'`` parameter of shape
    ``(1,)*(N+1) + (C_out,)``, ones) and ``eps`` (default 1e-4) of the NFNets formula
    ``scale = rsqrt(max(var * fan_in, eps)) * gain``. The mask multiplies the standardized kernel.
    brainstate's default ``w_init`` here is ``XavierNormal()`` as for :class:`Conv`.
    """

    def __init__(
        self,
        in_size,
        out_channels,
        kernel_size,
        stride=1,
        padding="SAME",
        lhs_dilation=1,
        rhs_dilation=1,
        groups=1,
        ws_gain=True,
        eps=1e-4,
        w_init=_init.XavierNormal(),
        b_init=None,
        w_mask=None,
        channel_first=False,
        name=None,
        *,
        rng=None,
        num_spatial_dims=None,
    ):
        self.ws_gain, self.eps = bool(ws_gain), eps
        super().__init__(
            in_size,
            out_channels,
            kernel_size,
            stride,
            padding,
            lhs_dilation,
            rhs_dilation,
            groups,
            w_init,
            b_init,
            w_mask,
            channel_first,
            name,
            rng=rng,
            num_spatial_dims=num_spatial_dims,
        )

    def _extra_params(self) -> dict:
        n = self.num_spatial_dims
        assert n is not None  # set by __init__ (None only as the general class's class attribute)
        return {"gain": np.ones((1,) * (n + 1) + (self.out_channels,))} if self.ws_gain else {}

    def _ws_options(self):
        return dict(_WS, eps=self.eps)


Conv1d = fixed_rank(Conv, 1, __name__, "input ``(B, L, C)``, kernel ``(k, C_in // groups, C_out)``.")
Conv2d = fixed_rank(Conv, 2, __name__, "input ``(B, H, W, C)``, kernel ``(kh, kw, C_in // groups, C_out)``.")
Conv3d = fixed_rank(Conv, 3, __name__, "input ``(B, H, W, D, C)``, kernel ``(kh, kw, kd, C_in // groups, C_out)``.")
ScaledWSConv1d = fixed_rank(ScaledWSConv, 1, __name__, "weight-standardized 1-d convolution.")
ScaledWSConv2d = fixed_rank(ScaledWSConv, 2, __name__, "weight-standardized 2-d convolution.")
ScaledWSConv3d = fixed_rank(ScaledWSConv, 3, __name__, "weight-standardized 3-d convolution.")


# --- transposed convolutions ------------------------------------------------------------------


def flip_swap_io(w: np.ndarray) -> np.ndarray:
    """brainstate's ``(*k, C_out, C_in // G)`` kernel as the ``(*k, C_in // G, C_out)`` kernel its
    ``conv_general_dilated`` call applies: spatially flipped, the last two axes exchanged (the
    transposed dimension numbers read axis -2 as the output features). Its own inverse and adjoint."""
    return np.flip(w, axis=tuple(range(w.ndim - 2))).swapaxes(-1, -2)


class ConvTranspose(Conv):
    """brainstate ``ConvTranspose{N}d``: the lax-convention transposed convolution (mirror, float64).

    ``ConvTranspose(in_size, out_channels, kernel_size, stride=1, padding='SAME', rhs_dilation=1,
    groups=1, w_init=XavierNormal(), b_init=None, w_mask=None, channel_first=False, name=None)``;
    no ``lhs_dilation`` and no weight standardization (brainstate 0.6.0 has no ScaledWS variant).

    What brainstate 0.6.0's code computes (``_ConvTranspose._conv_op``)::

        weight  (*kernel_size, C_out, C_in // groups)          -- note: C_out before C_in
        y = conv(x, flip(weight * w_mask).swapaxes(-1, -2), stride=1, padding=pads,
                 lhs_dilation=stride, rhs_dilation=rhs_dilation, groups=groups) + bias
          = conv_transpose_lax(x, flip(weight * w_mask).swapaxes(-1, -2), stride, pads, rhs_dilation, groups=groups)

    ``pads``: for ``'SAME'`` / ``'VALID'`` jax.lax.conv_transpose's rule with the rhs-dilated kernel
    (:func:`refws.grads.lax_transpose_geometry`; output ``n*s`` / ``n*s + max(k_d - s, 0)``); every
    explicit form (int, N ints, pairs; as :class:`Conv`) pads the stride-dilated input as given, so
    larger pads give *larger* outputs. With ``groups=1`` this is
    ``refws.conv_transpose_lax(x, weight, stride, padding, rhs_dilation, transpose_kernel=True)``.
    Bias shapes, ``w_mask``, ``channel_first``, unbatched input and ``rng`` are as for :class:`Conv`;
    ``stride`` here is brainstate's ``stride`` attribute (the lhs dilation of the underlying
    convolution, whose geometry is ``self.geometry``).
    """

    def __init__(
        self,
        in_size,
        out_channels,
        kernel_size,
        stride=1,
        padding="SAME",
        rhs_dilation=1,
        groups=1,
        w_init=_init.XavierNormal(),
        b_init=None,
        w_mask=None,
        channel_first=False,
        name=None,
        *,
        rng=None,
        num_spatial_dims=None,
    ):
        super().__init__(
            in_size,
            out_channels,
            kernel_size,
            stride,
            padding,
            1,
            rhs_dilation,
            groups,
            w_init,
            b_init,
            w_mask,
            channel_first,
            name,
            rng=rng,
            num_spatial_dims=num_spatial_dims,
        )

    def _set_geometry(self, spatial, stride, padding, lhs_dilation, rhs_dilation):
        stride = as_int_tuple(stride, self.num_spatial_dims, "stride")
        self.geometry = lax_transpose_geometry(spatial, self.kernel_size, stride, padding, rhs_dilation)
        self.stride, self.rhs_dilation = self.geometry.lhs_dilation, self.geometry.rhs_dilation

    def _kernel_channels(self) -> tuple:
        return (self.out_channels, self.in_channels // self.groups)

    def _transpose_kwargs(self) -> dict:
        g = self.geometry
        return dict(
            strides=g.lhs_dilation,
            padding=g.padding,
            rhs_dilation=g.rhs_dilation,
            groups=self.groups,
            channel_first=self.channel_first,
        )

    def _op(self, x, w):
        return conv_transpose_lax(x, flip_swap_io(w), **self._transpose_kwargs())

    def _op_vjp(self, x, w, dy):
        dx, dw = conv_transpose_lax_vjp(x, flip_swap_io(w), dy, **self._transpose_kwargs())
        return dx, flip_swap_io(dw)


ConvTranspose1d = fixed_rank(ConvTranspose, 1, __name__, "input ``(B, L, C)``, kernel ``(k, C_out, C_in // groups)``.")
ConvTranspose2d = fixed_rank(
    ConvTranspose, 2, __name__, "input ``(B, H, W, C)``, kernel ``(kh, kw, C_out, C_in // groups)``."
)
ConvTranspose3d = fixed_rank(
    ConvTranspose, 3, __name__, "input ``(B, H, W, D, C)``, kernel ``(kh, kw, kd, C_out, C_in // groups)``."
)


# --- linear layers ----------------------------------------------------------------------------


def _as_size(value, name: str) -> tuple:
    """brainstate's ``to_size``: an int or a sequence of ints, as a tuple."""
    if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
        value = (value,)
    if not (
        isinstance(value, (tuple, list))
        and value
        and all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) and v >= 1 for v in value)
    ):
        raise ValueError(f"{name}={value!r}: expected a positive int or a non-empty sequence of positive ints")
    return tuple(int(v) for v in value)


class Linear(_Brainstate):
    """brainstate ``Linear(in_size, out_size, w_init=KaimingNormal(), b_init=ZeroInit(), w_mask=None, name=None)``.

    ``y = x @ (weight * w_mask) + bias`` over the last axis of ``x`` (any leading axes).
    ``weight`` is ``(in_size[-1], out_size[-1])``, ``bias`` ``(out_size[-1],)``; a callable ``w_mask``
    is called with ``in_size + out_size``, as brainstate does. ``rng`` as for :class:`Conv`.
    """

    def __init__(
        self,
        in_size,
        out_size,
        w_init=_init.KaimingNormal(),
        b_init=_init.ZeroInit(),
        w_mask=None,
        name=None,
        *,
        rng=None,
    ):
        self._setup_sizes(in_size, out_size)
        self.name = name
        rng = make_rng(rng, keep_none=True)
        w_shape = (self.in_size[-1], self.out_size[-1])
        self.w_mask = resolve_mask(w_mask, self._mask_call_shape(), w_shape, rng)
        params = {"weight": initial_value(w_init, w_shape, "w_init", rng)}
        if b_init is not None:
            params["bias"] = initial_value(b_init, (self.out_size[-1],), "b_init", rng)
        params.update(self._extra_params())
        self._params = ParamDict(params)
        self._weights = WeightPipeline(self.w_mask, self._ws_options())

    def _setup_sizes(self, in_size, out_size):
        self.in_size, self.out_size = _as_size(in_size, "in_size"), _as_size(out_size, "out_size")
        if self.in_size[:-1] != self.out_size[:-1]:
            raise ValueError(
                f'The first n-1 dimensions of "in_size" and "out_size" must be the same: '
                f"in_size={self.in_size}, out_size={self.out_size}"
            )

    def _mask_call_shape(self) -> tuple:
        return self.in_size + self.out_size

    def _extra_params(self) -> dict:
        return {}

    def _ws_options(self):
        return None

    def _batched(self, x):
        x = as_float64(x, "x")
        if x.ndim < 1 or x.shape[-1] != self.in_size[-1]:
            raise ValueError(
                f"x.shape={x.shape}: expected the last axis to have in_size[-1]={self.in_size[-1]} features"
            )
        return (x[None] if x.ndim == 1 else x), x.ndim == 1

    def _op(self, x, w):
        return x @ w

    def _op_vjp(self, x, w, dy):
        features = w.shape[0]
        return dy @ w.T, x.reshape(-1, features).T @ dy.reshape(-1, w.shape[1])

    def _out_shape(self, x) -> tuple:
        return x.shape[:-1] + (self.out_size[-1],)

    def _bias_grad(self, dy):
        return dy.reshape(-1, dy.shape[-1]).sum(axis=0)


class ScaledWSLinear(Linear):
    """brainstate ``ScaledWSLinear(in_size, out_size, w_init=KaimingNormal(), b_init=ZeroInit(),
    w_mask=None, ws_gain=True, eps=1e-4, name=None)``.

    ``y = x @ (WS(weight, gain) * w_mask) + bias`` with ``weight`` ``(in, out)``, ``bias`` ``(out,)``,
    ``gain`` ``(1, out)`` (ones; only with ``ws_gain``), WS over axis 0 per output column.
    A callable ``w_mask`` is called with ``(in, 1)`` as brainstate does. brainstate builds the
    weight as ``in_size + out_size``, a matrix only for 1-element sizes; longer sizes are refused.
    """

    def __init__(
        self,
        in_size,
        out_size,
        w_init=_init.KaimingNormal(),
        b_init=_init.ZeroInit(),
        w_mask=None,
        ws_gain=True,
        eps=1e-4,
        name=None,
        *,
        rng=None,
    ):
        self.ws_gain, self.eps = bool(ws_gain), eps
        super().__init__(in_size, out_size, w_init, b_init, w_mask, name, rng=rng)

    def _setup_sizes(self, in_size, out_size):
        super()._setup_sizes(in_size, out_size)
        if len(self.in_size) != 1:
            raise ValueError(
                f"in_size={self.in_size}, out_size={self.out_size}: ScaledWSLinear supports "
                "one feature axis (brainstate's weight in_size + out_size is not a matrix otherwise)"
            )

    def _mask_call_shape(self) -> tuple:
        return (self.in_size[0], 1)

    def _extra_params(self) -> dict:
        return {"gain": np.ones((1, self.out_size[-1]))} if self.ws_gain else {}

    def _ws_options(self):
        return dict(_WS, eps=self.eps)
