r"""NumPy mirrors of elektronn3 0.1.1's ``WSConv1d/2d/3d``, ``WSConvTranspose2d/3d`` and ``FWS``
(``elektronn3/modules/wsconv.py``). By default they implement the library's documented intent;
``behaviour="0.1.1"`` (keyword only, every class) reproduces what 0.1.1's code computes instead
(docs/layers.md lists the differences per class): ``padding_mode`` ignored by ``WSConv*d``, the raw
weight in ``WSConvTranspose2d``, ``WSConvTranspose3d`` failing, ``eps`` as a float32 scalar, NaN
for one weight element per channel.

PyTorch layouts at the door, channels-last inside (this module is the one place where NCHW and
OIHW are converted)::

    x       (N, C_in, *spatial)  or unbatched (C_in, *spatial)
    weight  (C_out, C_in // groups, *k)          WSConv*d           (torch OIHW)
            (C_in, C_out // groups, *k)          WSConvTranspose*d
    bias    (C_out,)                             only with bias=True
    gain    (weight.shape[0],)                   ones; C_out for WSConv, C_in for WSConvTranspose

    w_hat = WS(weight, gain, eps)   over every axis but 0, elektronn3's formula:
            var, mean = var_mean(weight, ddof=1); N = weight.size (the whole weight)
            scale = rsqrt(max(var * N, eps)) * gain;  w_hat = weight * scale - mean * scale
    y     = conv(pad(x, padding_mode), w_hat, stride, dilation, groups) + bias       (WSConv*d)
    y     = conv_transpose(x, w_hat, stride, padding, output_padding, dilation, groups) + bias

``forward(x, eps=1e-4)`` (``forward(x, output_size=None, eps=1e-4)`` for the transposed ones) and
``__call__`` as in PyTorch; ``vjp(x, dy, ...)`` takes the same extra arguments and returns
``(dx, grads)`` keyed like ``params`` (``'weight'``, ``'bias'``, ``'gain'``: torch's parameter names).
Weights start from PyTorch's ``kaiming_normal_`` (what elektronn3 calls), the bias from PyTorch's
default ``U(-1/sqrt(fan_in), 1/sqrt(fan_in))``, both drawn from the keyword-only ``rng``.
"""

from __future__ import annotations

import math

import numpy as np

from .. import init as _init
from ..arrays import as_float64, from_canonical, to_canonical
from ..conv import check_groups, conv
from ..geometry import as_int_tuple, conv_geometry
from ..grads import bias_vjp, conv_transpose, conv_transpose_vjp, conv_vjp, transpose_geometry
from ..pad import pad, pad_vjp
from .base import Layer, ParamDict, WeightPipeline, check_positive_int, fixed_rank, make_rng, spatial_dims

__all__ = [
    "WSConv",
    "WSConv1d",
    "WSConv2d",
    "WSConv3d",
    "WSConvTranspose",
    "WSConvTranspose2d",
    "WSConvTranspose3d",
    "FWS",
    "BEHAVIOURS",
]

PADDING_MODES = ("zeros", "reflect", "replicate", "circular")
_WS = dict(spec="elektronn3", out_axis=0)
#: ``"intent"``: what elektronn3 documents (the default); ``"0.1.1"``: what its 0.1.1 code computes.
BEHAVIOURS = ("intent", "0.1.1")


def _check_behaviour(behaviour) -> str:
    if behaviour not in BEHAVIOURS:
        raise ValueError(f"behaviour={behaviour!r}: expected one of {BEHAVIOURS}")
    return behaviour


class _ReleasedWS(WeightPipeline):
    """elektronn3 0.1.1's WS as its code runs it: ``eps`` enters as ``torch.tensor(eps)``, a float32
    scalar (so the clamp uses ``float32(eps)``), and with one element per output channel the unbiased
    variance is 0/0: every standardized value, and every gradient through them, is NaN."""

    @staticmethod
    def _degenerate(params) -> bool:
        w = params["weight"]
        return w.size == w.shape[0]  # n = 1 element per channel (ddof 1)

    @staticmethod
    def _eps32(eps):
        return float(np.float32(1e-4 if eps is None else eps))

    def effective(self, params, eps=None) -> np.ndarray:
        if self._degenerate(params):
            return np.full(params["weight"].shape, np.nan)
        return super().effective(params, self._eps32(eps))

    def grads(self, params, dw_eff, eps=None) -> dict:
        if self._degenerate(params):
            return {"weight": np.full(dw_eff.shape, np.nan), "gain": np.full(params["gain"].shape, np.nan)}
        return super().grads(params, dw_eff, self._eps32(eps))


class _RawWeight(WeightPipeline):
    """0.1.1's ``WSConvTranspose2d.forward``: the convolution gets the raw ``self.weight``; the gain is
    unused (PyTorch leaves its ``.grad`` None; zeros here)."""

    def __init__(self):
        super().__init__(None, None)

    def grads(self, params, dw_eff, eps=None) -> dict:
        return {"weight": dw_eff, "gain": np.zeros_like(params["gain"])}


def _ws_pipeline(behaviour: str) -> WeightPipeline:
    return (_ReleasedWS if behaviour == "0.1.1" else WeightPipeline)(None, dict(_WS, eps=1e-4))


def to_hwio(w: np.ndarray) -> np.ndarray:
    """PyTorch ``(A, B, *k)`` -> refws ``(*k, B, A)``: OIHW -> HWIO for a convolution, and
    ``(C_in, C_out/g, *k)`` -> ``(*k, C_out/g, C_in)`` for a transposed one (no flip in either)."""
    return np.transpose(w, tuple(range(2, w.ndim)) + (1, 0))


def from_hwio(w: np.ndarray) -> np.ndarray:
    """Inverse of :func:`to_hwio`."""
    n = w.ndim - 2
    return np.transpose(w, (n + 1, n) + tuple(range(n)))


class _TorchModule(Layer):
    """``training`` flag with PyTorch's ``train(mode)`` / ``eval()`` (both return the module)."""

    training = True

    def train(self, mode: bool = True):
        self.training = bool(mode)
        for child in getattr(self, "_submodules", ()):
            child.train(mode)
        return self

    def eval(self):
        return self.train(False)


class _WSConvBase(_TorchModule):
    """What WSConv and WSConvTranspose share: PyTorch argument checks, initial values, WS, layouts.

    A subclass supplies ``_core(x_cl, w_cl, **kw)``, ``_core_vjp(x_cl, w_cl, dy_cl, **kw)`` and
    ``_out_spatial(in_spatial, **kw)``, all channels-last and batched.
    """

    num_spatial_dims: int | None = None
    transposed = False

    def _setup(
        self,
        in_channels,
        out_channels,
        kernel_size,
        stride,
        dilation,
        groups,
        bias,
        padding_mode,
        rng,
        num_spatial_dims,
        behaviour,
    ):
        self.num_spatial_dims = n = spatial_dims(self, num_spatial_dims)
        self.behaviour = _check_behaviour(behaviour)
        released_dims = (2, 3) if self.transposed else (1, 2, 3)
        if self.released and n not in released_dims:
            raise ValueError(
                f"behaviour='0.1.1' with num_spatial_dims={n}: elektronn3 0.1.1 has no "
                f"{type(self).__name__.rstrip('d')}{n}d (only {released_dims})"
            )
        self.in_channels = check_positive_int(in_channels, "in_channels")
        self.out_channels = check_positive_int(out_channels, "out_channels")
        self.groups = check_groups(groups)
        for what, size in (("in_channels", self.in_channels), ("out_channels", self.out_channels)):
            if size % self.groups:
                raise ValueError(f"{what} must be divisible by groups: {what}={size}, groups={self.groups}")
        if padding_mode not in PADDING_MODES:
            raise ValueError(
                f"padding_mode must be one of {list(PADDING_MODES)}, but got padding_mode={padding_mode!r}"
            )
        self.padding_mode = padding_mode
        self.kernel_size = as_int_tuple(kernel_size, n, "kernel_size")
        self.stride = as_int_tuple(stride, n, "stride")
        self.dilation = as_int_tuple(dilation, n, "dilation")
        a, b = (self.in_channels, self.out_channels) if self.transposed else (self.out_channels, self.in_channels)
        self.weight_shape = (a, b // self.groups) + self.kernel_size
        rng = make_rng(rng)
        params = {"weight": _init.kaiming_normal_(self.weight_shape, rng=rng)}
        if bias:
            bound = 1 / math.sqrt(math.prod(self.weight_shape[1:]))  # torch's fan_in of the weight
            params["bias"] = rng.uniform(-bound, bound, size=self.out_channels)
        params["gain"] = np.ones(self.weight_shape[0])
        self._params = ParamDict(params)
        self._ws = _ws_pipeline(behaviour)
        self._weights = self._ws  # the kernel the convolution uses (see WSConvTranspose)

    @property
    def released(self) -> bool:
        """Whether the layer computes what elektronn3 0.1.1's code does (``behaviour='0.1.1'``)."""
        return self.behaviour == "0.1.1"

    def standardize_weight(self, eps=1e-4) -> np.ndarray:
        """The standardized weight ``w_hat`` in PyTorch layout (elektronn3's method of that name;
        with ``behaviour='0.1.1'`` as 0.1.1 computes it: float32 ``eps``, NaN for one element per channel)."""
        return self._ws.effective(self._params, eps)

    def _canonical_input(self, x):
        """Check an NC* input as PyTorch does; return it batched channels-last and the unbatched flag."""
        x = as_float64(x, "input")
        n, c_in = self.num_spatial_dims, self.in_channels
        if x.ndim not in (n + 1, n + 2):
            raise ValueError(
                f"Expected {n + 1}D (unbatched) or {n + 2}D (batched) input to "
                f"{type(self).__name__}, but got input of size: {list(x.shape)}"
            )
        unbatched = x.ndim == n + 1
        if x.shape[0 if unbatched else 1] != c_in:
            what = "transposed=1, " if self.transposed else f"groups={self.groups}, "
            raise ValueError(
                f"Given {what}weight of size {list(self.weight_shape)}, expected input"
                f"{list(x.shape)} to have {c_in} channels, but got "
                f"{x.shape[0 if unbatched else 1]} channels instead"
            )
        return to_canonical(x, True, unbatched), unbatched

    def _forward(self, x, eps, **kw):
        x_cl, unbatched = self._canonical_input(x)
        y = self._core(x_cl, to_hwio(self._weights.effective(self._params, eps)), **kw)
        if "bias" in self._params:
            y = y + self._params["bias"]
        return from_canonical(y, True, unbatched)

    def _vjp(self, x, dy, eps, **kw):
        x_cl, unbatched = self._canonical_input(x)
        dy = as_float64(dy, "dy")
        out_spatial = self._out_spatial(x_cl.shape[1:-1], **kw)
        expected = (self.out_channels, *out_spatial)
        expected = expected if unbatched else (x_cl.shape[0], *expected)
        if dy.shape != expected:
            raise ValueError(
                f"dy.shape={dy.shape}: expected {expected}, the shape of the output for "
                f"input of size {list(np.shape(x))}"
            )
        dy_cl = to_canonical(dy, True, unbatched)
        dx, dw = self._core_vjp(x_cl, to_hwio(self._weights.effective(self._params, eps)), dy_cl, **kw)
        grads = self._weights.grads(self._params, from_hwio(dw), eps)
        if "bias" in self._params:
            grads["bias"] = bias_vjp(dy_cl)
        return from_canonical(dx, True, unbatched), {name: grads[name] for name in self._params}


# --- convolutions -----------------------------------------------------------------------------


def torch_pads(padding, kernel_size, stride, dilation) -> tuple:
    """PyTorch's ``padding`` argument as explicit ``(lo, hi)`` pairs.

    int or per-dimension ints: symmetric; ``'valid'``: none; ``'same'``: total ``d (k - 1)`` with
    ``lo = total // 2`` and the odd element at the end (refused for stride > 1, as PyTorch does).
    """
    n = len(kernel_size)
    if isinstance(padding, str):
        if padding not in ("same", "valid"):
            raise ValueError(f"Invalid padding string {padding!r}, should be one of ['valid', 'same']")
        if padding == "valid":
            return ((0, 0),) * n
        if any(s != 1 for s in stride):
            raise ValueError(f"padding='same' is not supported for strided convolutions (stride={stride})")
        totals = [d * (k - 1) for k, d in zip(kernel_size, dilation)]
        return tuple((t // 2, t - t // 2) for t in totals)
    return tuple((p, p) for p in as_int_tuple(padding, n, "padding", minimum=0))


class WSConv(_WSConvBase):
    """elektronn3 ``WSConv{N}d(in_channels, out_channels, kernel_size, stride=1, padding=0,
    dilation=1, groups=1, bias=True, padding_mode='zeros')``: a weight-standardized convolution.

    Parameters
    ----------
    in_channels, out_channels : int (both divisible by ``groups``)
    kernel_size, stride, dilation : int or N ints
    padding : int, N ints, ``'same'`` (stride 1 only) or ``'valid'``
    groups : int
    bias : bool
    padding_mode : ``'zeros'``, ``'reflect'``, ``'replicate'`` or ``'circular'`` (PyTorch's meanings,
        via :func:`refws.pad`; the VJP goes through its adjoint :func:`refws.pad.pad_vjp`)
    rng : numpy Generator, int seed or None (keyword only): source of the initial values
    num_spatial_dims : int, keyword only, for the general class (the subclasses fix it)
    behaviour : ``"intent"`` (default) or ``"0.1.1"`` (keyword only). ``"0.1.1"``: as 0.1.1's
        ``forward``, which calls ``F.conv{N}d(input, weight, bias, stride, padding, ...)`` directly:
        ``padding_mode`` is checked but ignored (zero padding always); ``eps`` as a float32 scalar;
        NaN (outputs, ``dx``, ``weight`` and ``gain`` gradients) for one weight element per channel,
        where the default raises ValueError.
    """

    def __init__(
        self,
        in_channels,
        out_channels,
        kernel_size,
        stride=1,
        padding=0,
        dilation=1,
        groups=1,
        bias=True,
        padding_mode="zeros",
        *,
        rng=None,
        num_spatial_dims=None,
        behaviour="intent",
    ):
        self._setup(
            in_channels,
            out_channels,
            kernel_size,
            stride,
            dilation,
            groups,
            bias,
            padding_mode,
            rng,
            num_spatial_dims,
            behaviour,
        )
        self.padding = padding
        self.pads = torch_pads(padding, self.kernel_size, self.stride, self.dilation)

    def forward(self, input, eps=1e-4):
        """``y`` ``(N, C_out, *out)`` (unbatched if ``input`` is) with the weight standardized with ``eps``."""
        return self._forward(input, eps)

    def vjp(self, input, dy, eps=1e-4):
        """``(dx, grads)`` for the output cotangent ``dy`` (the shape of ``forward(input, eps)``)."""
        return self._vjp(input, dy, eps)

    @property
    def _zero_padded(self) -> bool:
        return self.padding_mode == "zeros" or self.released  # 0.1.1 ignores padding_mode

    def _padded(self, x_cl):
        """The input as the convolution sees it and the pads left for the convolution itself."""
        if self._zero_padded:
            return x_cl, self.pads
        return pad(x_cl, self.pads, self.padding_mode, axes=self._spatial_axes), ((0, 0),) * self.num_spatial_dims

    @property
    def _spatial_axes(self) -> tuple:
        n = self.num_spatial_dims
        assert n is not None  # set by __init__ (None only as the general class's class attribute)
        return tuple(range(1, n + 1))  # of the channels-last (N, *spatial, C)

    def _conv_kwargs(self, pads) -> dict:
        return dict(stride=self.stride, padding=pads, rhs_dilation=self.dilation, groups=self.groups)

    def _core(self, x_cl, w):
        xp, pads = self._padded(x_cl)
        return conv(xp, w, **self._conv_kwargs(pads))

    def _core_vjp(self, x_cl, w, dy_cl):
        xp, pads = self._padded(x_cl)
        dxp, dw = conv_vjp(xp, w, dy_cl, **self._conv_kwargs(pads))
        dx = dxp if self._zero_padded else pad_vjp(dxp, self.pads, self.padding_mode, axes=self._spatial_axes)
        return dx, dw

    def _out_spatial(self, in_spatial):
        return conv_geometry(in_spatial, self.kernel_size, self.stride, self.pads, 1, self.dilation).out_spatial


class WSConvTranspose(_WSConvBase):
    """elektronn3 ``WSConvTranspose{N}d(in_channels, out_channels, kernel_size, stride=1, padding=0,
    output_padding=0, groups=1, bias=True, dilation=1, padding_mode='zeros')``.

    The weight ``(C_in, C_out // groups, *k)`` is standardized per input channel (axis 0) with a
    ``(C_in,)`` gain, then used by a real N-d transposed convolution (:func:`refws.conv_transpose`,
    PyTorch semantics); ``forward(x, output_size=None, eps=1e-4)`` honours ``output_size`` (the
    spatial sizes, optionally preceded by batch and channel sizes) as PyTorch's ConvTranspose does.
    ``padding`` is an int or N ints; ``padding_mode`` must be ``'zeros'`` (PyTorch refuses others).

    ``behaviour="0.1.1"`` (keyword only) reproduces 0.1.1's ``forward``: ``WSConvTranspose2d`` computes
    the standardized weight and then convolves with the **raw** ``weight`` (the gain has no effect; its
    gradient is zeros here, ``None`` in PyTorch) and ignores ``output_size`` (the output keeps the
    ``output_padding`` size); ``WSConvTranspose3d`` calls ``F.conv_transpose2d`` on its 5-d operands,
    so every call raises RuntimeError with PyTorch's message. ``standardize_weight(eps)`` uses the
    float32 ``eps`` and gives NaN for one weight element per channel, as 0.1.1's method does.
    """

    transposed = True

    def __init__(
        self,
        in_channels,
        out_channels,
        kernel_size,
        stride=1,
        padding=0,
        output_padding=0,
        groups=1,
        bias=True,
        dilation=1,
        padding_mode="zeros",
        *,
        rng=None,
        num_spatial_dims=None,
        behaviour="intent",
    ):
        self._setup(
            in_channels,
            out_channels,
            kernel_size,
            stride,
            dilation,
            groups,
            bias,
            padding_mode,
            rng,
            num_spatial_dims,
            behaviour,
        )
        if self.released:
            self._weights = _RawWeight()
        if padding_mode != "zeros":
            raise ValueError(
                f'Only "zeros" padding mode is supported for {type(self).__name__} (got padding_mode={padding_mode!r})'
            )
        if isinstance(padding, str):
            raise ValueError(
                f"padding={padding!r}: {type(self).__name__} takes an int or "
                f"{self.num_spatial_dims} ints (PyTorch's ConvTranspose has no string padding)"
            )
        n = self.num_spatial_dims
        self.padding = as_int_tuple(padding, n, "padding", minimum=0)
        self.output_padding = as_int_tuple(output_padding, n, "output_padding", minimum=0)

    def forward(self, input, output_size=None, eps=1e-4):
        """``y`` ``(N, C_out, *out)``, ``out = (n - 1) s - 2 p + d (k - 1) + output_padding + 1``
        (``output_padding`` derived from ``output_size`` when given)."""
        self._fail_as_released(input)
        return self._forward(input, eps, output_size=self._spatial_size(input, output_size))

    def vjp(self, input, dy, output_size=None, eps=1e-4):
        """``(dx, grads)`` for the output cotangent ``dy`` (the shape of ``forward(input, output_size, eps)``)."""
        self._fail_as_released(input)
        return self._vjp(input, dy, eps, output_size=self._spatial_size(input, output_size))

    def _fail_as_released(self, x):
        """0.1.1's WSConvTranspose3d.forward: ``F.conv_transpose2d`` on a 5-d weight; PyTorch's errors."""
        if not (self.released and self.num_spatial_dims == 3):
            return
        shape = list(np.shape(x))
        if len(shape) in (3, 4):  # conv_transpose2d batches a 3-d input first
            got = [1] + shape if len(shape) == 3 else shape
            detail = (
                f"Expected 5-dimensional input for 5-dimensional weight {list(self.weight_shape)}, but got "
                f"4-dimensional input of size {got} instead"
            )
        else:
            detail = (
                f"Expected 3D (unbatched) or 4D (batched) input to conv_transpose2d, but got input of size: {shape}"
            )
        raise RuntimeError(
            f"{detail} (elektronn3 0.1.1's WSConvTranspose3d.forward calls F.conv_transpose2d; "
            "behaviour='intent' computes the 3-d transposed convolution)"
        )

    def _spatial_size(self, x, output_size):
        """Drop the leading non-spatial sizes (2 batched, 1 unbatched: PyTorch's rule) here, where
        the input is still in its PyTorch layout. 0.1.1 ignores ``output_size``."""
        if output_size is None or self.released:
            return None
        sizes = list(output_size)
        n_non_spatial = 1 if np.ndim(x) == self.num_spatial_dims + 1 else 2
        return sizes[n_non_spatial:] if len(sizes) == self.num_spatial_dims + n_non_spatial else sizes

    def _transpose_kwargs(self, output_size) -> dict:
        return dict(
            stride=self.stride,
            padding=self.padding,
            output_padding=self.output_padding,
            dilation=self.dilation,
            groups=self.groups,
            output_size=output_size,
        )

    def _core(self, x_cl, w, output_size):
        return conv_transpose(x_cl, w, **self._transpose_kwargs(output_size))

    def _core_vjp(self, x_cl, w, dy_cl, output_size):
        return conv_transpose_vjp(x_cl, w, dy_cl, **self._transpose_kwargs(output_size))

    def _out_spatial(self, in_spatial, output_size):
        return transpose_geometry(
            in_spatial, self.kernel_size, self.stride, self.padding, self.output_padding, self.dilation, output_size
        ).in_spatial


_DOC = "elektronn3's {}-d layer, PyTorch layouts."
WSConv1d, WSConv2d, WSConv3d = (fixed_rank(WSConv, n, __name__, _DOC.format(n)) for n in (1, 2, 3))
WSConvTranspose2d, WSConvTranspose3d = (fixed_rank(WSConvTranspose, n, __name__, _DOC.format(n)) for n in (2, 3))

# --- FWS --------------------------------------------------------------------------------------


class FWS(_TorchModule):
    """elektronn3 ``FWS(layer, learnable_gain=True, const_eval=False, eps=1e-4)``: standardize the
    wrapped layer's weight *in place* before each forward.

    Each call (in training mode, or always unless ``const_eval``) first replaces
    ``layer.params['weight']`` by ``WS(weight, gain, eps)`` (elektronn3's formula, ``gain`` of shape
    ``(weight.shape[0],)``), then returns ``layer(*args, **kwargs)``.

    ``params`` holds ``'gain'`` (only when ``learnable_gain``; otherwise it is the buffer
    ``self.gain``) and the wrapped layer's parameters as ``'layer.<name>'`` (PyTorch's names).
    ``vjp(x, dy, *args, **kwargs)`` performs the same in-place step as a call and returns
    ``(dx, grads)`` as PyTorch autograd would after that forward: elektronn3 updates the weight
    under ``torch.no_grad()``, so ``'layer.weight'`` gets the gradient at the standardized weight
    and ``'gain'`` gets none (zeros here). Use it *instead of* a call, not after one.

    ``behaviour`` (keyword only): ``"intent"``, ``"0.1.1"`` or None (default: the wrapped layer's).
    ``"0.1.1"``: ``eps`` is the float32 buffer 0.1.1 registers, and a weight with one element per
    output channel becomes NaN in place (0.1.1's unbiased variance is 0/0) where ``"intent"`` raises
    ValueError. The wrapped layer keeps its own ``behaviour``.
    """

    def __init__(self, layer, learnable_gain=True, const_eval=False, eps=1e-4, *, behaviour=None):
        if not isinstance(layer, _WSConvBase):
            raise TypeError(
                f"layer={layer!r}: expected one of the elektronn3 conv mirrors (WSConv*d, "
                "WSConvTranspose*d), whose weight has the output axis first as FWS assumes"
            )
        self.behaviour = _check_behaviour(layer.behaviour if behaviour is None else behaviour)
        self._ws = _ws_pipeline(self.behaviour)
        self.layer, self.const_eval, self.eps = layer, bool(const_eval), eps
        self.learnable_gain = bool(learnable_gain)
        self._submodules = (layer,)
        gain = np.ones(layer.params["weight"].shape[0])
        self._params = ParamDict({"gain": gain} if learnable_gain else {}, children={"layer": layer.params})
        self._buffer_gain = None if learnable_gain else gain

    @property
    def gain(self) -> np.ndarray:
        """The gain (a parameter when ``learnable_gain``, else a buffer of ones)."""
        return self._params["gain"] if self.learnable_gain else self._buffer_gain

    def standardize_weight(self) -> None:
        """``layer.params['weight'] = WS(weight, gain, eps)``, in place (elektronn3's method)."""
        params = {"weight": self.layer.params["weight"], "gain": self.gain}
        self.layer.params["weight"] = self._ws.effective(params, self.eps)

    def _step(self):
        if self.training or not self.const_eval:
            self.standardize_weight()

    def forward(self, *args, **kwargs):
        self._step()
        return self.layer(*args, **kwargs)

    def vjp(self, x, dy, *args, **kwargs):
        self._step()
        dx, layer_grads = self.layer.vjp(x, dy, *args, **kwargs)
        grads = {"gain": np.zeros_like(self.gain)} if self.learnable_gain else {}
        grads.update({f"layer.{name}": g for name, g in layer_grads.items()})
        return dx, grads
