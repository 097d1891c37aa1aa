r"""The built-in PyTorch adapter: drives ``torch`` through the adapter protocol.

``TorchBackend(precision="float64", device="cpu")`` implements every method of
:mod:`refws.conformance.protocol` with PyTorch's own operators, so that ``refws check torch``
judges PyTorch's arithmetic against the exact golden values:

=====================================  ===========================================================
protocol method                        PyTorch
=====================================  ===========================================================
``conv``                               ``F.conv1d/2d/3d``; lhs dilation as a zero-interleaved
                                       input (``torch.stack`` + reshape), asymmetric or negative
                                       pads by ``F.pad`` (negative pads crop), the symmetric
                                       non-negative part by the convolution's own ``padding``
``conv_transpose``                     ``F.conv_transpose1d/2d/3d``; ``output_size`` turned into
                                       ``output_padding`` by ``nn.ConvTranspose*d``'s own rule
``weight_standardize``                 ``torch.var_mean`` / ``torch.std_mean`` with the spec's
                                       ``ddof``, ``torch.maximum`` for the clamp, ``torch.rsqrt``
``*_vjp``                              ``torch.autograd.grad`` of the same forward
``*_jvp``                              ``torch.func.jvp`` of the same forward
``layer`` (elektronn3)                 ``nn.Conv*d`` / ``nn.ConvTranspose*d`` via
                                       ``torch.func.functional_call`` with the standardized weight
                                       (so ``padding_mode`` and ``output_size`` are PyTorch's own)
``layer`` (brainstate)                 the ``conv`` translation above (HWIO kernels, lax padding,
                                       lhs dilation, ``channel_first``, unbatched input expanded
                                       and squeezed as brainstate does), ``x @ W + b`` for Linear
=====================================  ===========================================================

Layouts are translated inside (channels-last <-> NCHW, HWIO <-> OIHW, refws's transposed kernel
``(*k, C_out // G, C_in)`` <-> PyTorch's ``(C_in, C_out // G, *k)``); gradients come back in the
caller's layouts because the translation is part of the differentiated function.

What refws decides, not PyTorch: string padding (``"SAME"``, ``"SAME_LOWER"``, ``"VALID"``, any
case) and every other padding form are normalised to explicit ``(lo, hi)`` pairs by
:func:`refws.conv_geometry` (lax's SAME rule); only the arithmetic is under test, not PyTorch's
own ``padding='same'``.

What cannot be expressed: PyTorch refuses convolutions whose output has a zero-size spatial
dimension (the kernel is larger than the padded input), which lax semantics allow; those cases
raise :class:`~refws.conformance.protocol.NotExpressible` with PyTorch's message. Every other
case of the golden store is expressed. A ``NotImplementedError`` from PyTorch (an operator,
derivative or device kernel it documents but has not implemented) raises
:class:`~refws.conformance.protocol.Unimplemented` with PyTorch's message; none occurs on CPU
with PyTorch 2.13. Any other refusal propagates as an error: nothing else is computed instead.

Weight standardization is written centred, ``(w - mean) * scale``, as refws defines it
(elektronn3 and brainstate write ``w * scale - mean * scale``; same value, rounded differently).
"""

from __future__ import annotations

import math
import re
import warnings
from collections.abc import Sequence
from contextlib import contextmanager
from typing import Any

import numpy as np
from numpy.typing import ArrayLike

from ..conformance.protocol import IntOrInts, NotExpressible, Padding, Unimplemented
from ..geometry import conv_geometry
from ..grads import lax_transpose_geometry
from ..ws import WSSpec, resolve_spec

__all__ = ["TorchBackend"]

_PRECISIONS = ("float64", "float32")


def _import_torch():
    try:
        import torch
        import torch.func  # noqa: F401  (torch.func.jvp, functional_call)
    except ImportError as exc:
        raise ImportError(
            f"the torch backend needs PyTorch: pip install 'refws[torch]' (import failed: {exc})"
        ) from exc
    return torch


def _cudnn_uses_tf32(torch) -> bool:
    """Whether cuDNN convolutions on float32 round their inputs to TF32 (PyTorch's default).

    Newer PyTorch reports the effective setting as ``torch.backends.cudnn.conv.fp32_precision``
    (``"tf32"``, ``"ieee"``, or ``"none"`` when neither applies; the legacy ``allow_tf32`` getter
    raises once the two APIs were mixed); older PyTorch has only ``allow_tf32``.
    """
    conv = getattr(torch.backends.cudnn, "conv", None)
    if conv is not None:
        return conv.fp32_precision == "tf32"
    return bool(torch.backends.cudnn.allow_tf32)


@contextmanager
def _refusals(out_spatial=()):
    """Translate PyTorch's refusals into the protocol's exceptions.

    - a ``RuntimeError`` on a problem whose output has a zero-size spatial dimension: PyTorch
      cannot express it (lax semantics allow it) -> :class:`NotExpressible`;
    - a ``NotImplementedError`` (a kernel or derivative PyTorch documents but has not implemented,
      e.g. a forward-mode formula or a device kernel) -> :class:`Unimplemented`.
    """
    try:
        yield
    except NotImplementedError as exc:
        raise Unimplemented(f"torch has not implemented this case: {exc}") from exc
    except RuntimeError as exc:
        if 0 in tuple(out_spatial):
            raise NotExpressible(
                f"torch refuses zero-size outputs (output spatial size "
                f"{tuple(out_spatial)}, which lax semantics allow): {exc}"
            ) from exc
        raise


def _pad_arg(flat_pairs) -> list:
    """``[(lo_1, hi_1), ..., (lo_N, hi_N)]`` -> F.pad's order (last dimension first)."""
    out = []
    for lo, hi in reversed(list(flat_pairs)):
        out += [int(lo), int(hi)]
    return out


def _tuple(v):
    return tuple(v) if isinstance(v, (list, tuple)) else v


class TorchBackend:
    """PyTorch under test, in float64 or float32, on any device.

    Parameters
    ----------
    precision : {"float64", "float32"}
        The dtype every tensor is computed in (inputs are converted to it; refws's golden inputs
        are exact in float32).
    device : str or torch.device
        Where to compute (``"cpu"``, ``"cuda"``, ``"cuda:1"``, ...), so that the same command
        judges CUDA kernels when a GPU is present.

    Attributes
    ----------
    name : ``"torch"``
    precision : str
        The precision the backend is *judged* by (a key of ``refws.tolerance.PRECISIONS``):
        ``"float64"``, ``"float32"``, or ``"tf32"`` when ``device`` is CUDA, the dtype is float32
        and cuDNN convolutions use TF32 (``torch.backends.cudnn.allow_tf32``, on by default, or
        ``torch.backends.cudnn.conv.fp32_precision == "tf32"`` in PyTorch's newer API). Read at
        each access, so turning TF32 off switches the bound back to ``"float32"``. Linear layers
        use cuBLAS, whose TF32 flag is off by default: they are then judged by the looser TF32
        bound too.
    dtype_name : str
        The dtype computed in (``precision`` as given).
    version : str
        ``torch.__version__``.

    Raises
    ------
    ImportError
        if PyTorch is not installed (the message says ``pip install 'refws[torch]'``).
    ValueError
        for a precision other than "float64" / "float32", or a device PyTorch cannot use.
    """

    name = "torch"

    def __init__(self, precision: str = "float64", device: Any = "cpu") -> None:
        torch = _import_torch()
        if precision not in _PRECISIONS:
            raise ValueError(f"precision={precision!r}: expected one of {_PRECISIONS}")
        self.dtype_name = precision
        self.dtype = getattr(torch, precision)
        try:
            self.device = torch.device(device)
            torch.zeros(1, device=self.device, dtype=self.dtype)
        except (RuntimeError, TypeError, ValueError, AssertionError) as exc:
            raise ValueError(f"device={device!r}: PyTorch cannot compute in {precision} there ({exc})") from exc
        self._torch = torch
        self._F = torch.nn.functional
        self.version = torch.__version__

    @property
    def precision(self) -> str:
        if self.dtype_name == "float32" and self.device.type == "cuda" and _cudnn_uses_tf32(self._torch):
            return "tf32"
        return self.dtype_name

    def __repr__(self) -> str:
        return f"TorchBackend(precision={self.dtype_name!r}, device={str(self.device)!r})"

    # --- tensors in and out, and the three ways of running a function ------------------------

    def _t(self, a):
        return self._torch.tensor(np.ascontiguousarray(a, dtype=np.float64), dtype=self.dtype, device=self.device)

    @staticmethod
    def _np(t) -> np.ndarray:
        return t.detach().cpu().numpy()

    def _forward(self, f, *arrays) -> np.ndarray:
        with _refusals(), self._torch.no_grad():
            return self._np(f(*(self._t(a) for a in arrays)))

    def _vjp(self, f, arrays, dy) -> tuple:
        """``torch.autograd.grad`` of ``f`` at ``arrays`` for the cotangent ``dy``."""
        leaves = [self._t(a).requires_grad_() for a in arrays]
        with _refusals():
            grads = self._torch.autograd.grad(f(*leaves), leaves, self._t(dy), allow_unused=True)
        # An input that does not reach the output (none in refws's maps) has gradient zero.
        return tuple(self._np(g) if g is not None else np.zeros(np.shape(a)) for g, a in zip(grads, arrays))

    def _jvp(self, f, arrays, tangents) -> tuple:
        """``torch.func.jvp`` of ``f`` at ``arrays`` along ``tangents``: ``(y, ty)``."""
        primals = tuple(self._t(a) for a in arrays)
        tans = tuple(self._t(t) for t in tangents)
        with _refusals(), warnings.catch_warnings():
            # PyTorch 2.13's forward AD scripts its own decompositions on first use and warns that
            # torch.jit.script is deprecated: PyTorch's internal matter, not the caller's.
            warnings.filterwarnings("ignore", "`torch.jit.script` is deprecated", DeprecationWarning)
            y, ty = self._torch.func.jvp(f, primals, tans)
        return self._np(y), self._np(ty)

    # --- convolution ---------------------------------------------------------------------------

    def _lhs_dilate(self, x, dilation):
        """Insert ``L - 1`` zeros between neighbours along each of the trailing spatial axes
        (torch ops only, so autograd and forward AD flow through)."""
        torch = self._torch
        nd = len(dilation)
        for i, L in enumerate(dilation):
            axis = x.ndim - nd + i
            n = x.shape[axis]
            if L == 1 or n == 0:
                continue
            stacked = torch.stack([x] + [torch.zeros_like(x)] * (L - 1), dim=axis + 1)
            x = stacked.flatten(axis, axis + 1).narrow(axis, 0, (n - 1) * L + 1)
        return x

    def _conv_fn(self, g, groups, channel_first):
        """``f(x, w)``: refws's conv for geometry ``g`` in the caller's layouts, by F.convNd."""
        F, nd = self._F, g.ndim
        conv = (F.conv1d, F.conv2d, F.conv3d)[nd - 1]
        # PyTorch pads symmetrically; the rest of each (lo, hi) pair (any sign) goes to F.pad.
        native = tuple(max(0, min(lo, hi)) for lo, hi in g.padding)
        extra = _pad_arg((lo - p, hi - p) for (lo, hi), p in zip(g.padding, native))
        w_perm = (nd + 1, nd, *range(nd))  # (*k, I, O) -> (O, I, *k)

        def f(x, w):
            if not channel_first:
                x = x.movedim(-1, -nd - 1)
            x = self._lhs_dilate(x, g.lhs_dilation)
            if any(extra):
                x = F.pad(x, extra)
            y = conv(x, w.permute(w_perm), None, g.stride, native, g.rhs_dilation, groups)
            return y if channel_first else y.movedim(-nd - 1, -1)

        return f

    def _conv_setup(
        self, x, w, stride=1, padding="SAME", lhs_dilation=1, rhs_dilation=1, groups=1, channel_first=False
    ):
        """The geometry (explicit pads from refws.conv_geometry) and ``f(x, w)``; ``x`` batched or not."""
        spatial = _spatial(np.shape(x), np.ndim(w) - 2, channel_first)
        g = conv_geometry(spatial, np.shape(w)[:-2], stride, padding, lhs_dilation, rhs_dilation)
        return g, self._conv_fn(g, int(groups), bool(channel_first))

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
        """``refws.conv`` by ``F.convNd`` (string padding normalised by refws)."""
        g, f = self._conv_setup(x, w, stride, padding, lhs_dilation, rhs_dilation, groups, channel_first)
        with _refusals(g.out_spatial):
            return self._forward(f, x, w)

    def conv_vjp(
        self,
        x: ArrayLike,
        w: ArrayLike,
        dy: ArrayLike,
        stride: IntOrInts = 1,
        padding: Padding = "SAME",
        lhs_dilation: IntOrInts = 1,
        rhs_dilation: IntOrInts = 1,
        groups: int = 1,
        *,
        channel_first: bool = False,
    ) -> tuple[np.ndarray, np.ndarray]:
        """``(dx, dw)`` by ``torch.autograd.grad``."""
        g, f = self._conv_setup(x, w, stride, padding, lhs_dilation, rhs_dilation, groups, channel_first)
        with _refusals(g.out_spatial):
            return self._vjp(f, (x, w), dy)

    def conv_jvp(
        self,
        x: ArrayLike,
        w: ArrayLike,
        tx: ArrayLike,
        tw: ArrayLike,
        stride: IntOrInts = 1,
        padding: Padding = "SAME",
        lhs_dilation: IntOrInts = 1,
        rhs_dilation: IntOrInts = 1,
        groups: int = 1,
        *,
        channel_first: bool = False,
    ) -> tuple[np.ndarray, np.ndarray]:
        """``(y, ty)`` by ``torch.func.jvp``."""
        g, f = self._conv_setup(x, w, stride, padding, lhs_dilation, rhs_dilation, groups, channel_first)
        with _refusals(g.out_spatial):
            return self._jvp(f, (x, w), (tx, tw))

    # --- transposed convolution ---------------------------------------------------------------

    def _output_padding(self, x_t, w_shape, stride, padding, output_padding, dilation, groups, output_size):
        """``output_padding``, or the one ``nn.ConvTranspose*d`` derives from ``output_size``."""
        if output_size is None:
            return _tuple(output_padding)
        nd = len(w_shape) - 2
        module = (self._torch.nn.ConvTranspose1d, self._torch.nn.ConvTranspose2d, self._torch.nn.ConvTranspose3d)[
            nd - 1
        ](
            w_shape[-1],
            w_shape[-2] * groups,
            tuple(w_shape[:-2]),
            _tuple(stride),
            _tuple(padding),
            _tuple(output_padding),
            groups,
            False,
            _tuple(dilation),
            device="meta",
        )
        return tuple(
            module._output_padding(
                x_t,
                list(output_size),
                list(module.stride),
                list(module.padding),
                list(module.kernel_size),
                nd,
                list(module.dilation),
            )
        )

    def _transpose_fn(self, x, w, stride, padding, output_padding, dilation, groups, output_size, channel_first):
        """``f(x, w[, b])``: refws's conv_transpose in the caller's layouts, by F.conv_transposeNd."""
        F, nd = self._F, np.ndim(w) - 2
        conv_t = (F.conv_transpose1d, F.conv_transpose2d, F.conv_transpose3d)[nd - 1]
        w_perm = (nd + 1, nd, *range(nd))  # (*k, O/G, I) -> (I, O/G, *k)
        groups = int(groups)

        def to_torch_layout(t):
            return t if channel_first else t.movedim(-1, -nd - 1)

        x_shape = self._torch.empty(np.shape(x), device="meta")
        op = self._output_padding(
            to_torch_layout(x_shape), np.shape(w), stride, padding, output_padding, dilation, groups, output_size
        )

        def f(x, w, b=None):
            y = conv_t(
                to_torch_layout(x), w.permute(w_perm), b, _tuple(stride), _tuple(padding), op, groups, _tuple(dilation)
            )
            return y if channel_first else y.movedim(-nd - 1, -1)

        return f

    def conv_transpose(
        self,
        x: ArrayLike,
        w: ArrayLike,
        stride: IntOrInts = 1,
        padding: IntOrInts = 0,
        output_padding: IntOrInts = 0,
        dilation: IntOrInts = 1,
        groups: int = 1,
        *,
        output_size: Sequence[int] | None = None,
        bias: ArrayLike | None = None,
        channel_first: bool = False,
    ) -> np.ndarray:
        """``refws.conv_transpose`` by ``F.conv_transposeNd``."""
        f = self._transpose_fn(x, w, stride, padding, output_padding, dilation, groups, output_size, channel_first)
        return self._forward(f, x, w) if bias is None else self._forward(f, x, w, bias)

    def conv_transpose_vjp(
        self,
        x: ArrayLike,
        w: ArrayLike,
        dy: ArrayLike,
        stride: IntOrInts = 1,
        padding: IntOrInts = 0,
        output_padding: IntOrInts = 0,
        dilation: IntOrInts = 1,
        groups: int = 1,
        *,
        output_size: Sequence[int] | None = None,
        bias: ArrayLike | None = None,
        channel_first: bool = False,
    ) -> tuple[np.ndarray, ...]:
        """``(dx, dw)``, or ``(dx, dw, db)`` with a bias, by ``torch.autograd.grad``."""
        f = self._transpose_fn(x, w, stride, padding, output_padding, dilation, groups, output_size, channel_first)
        return self._vjp(f, (x, w) if bias is None else (x, w, bias), dy)

    def conv_transpose_jvp(
        self,
        x: ArrayLike,
        w: ArrayLike,
        tx: ArrayLike,
        tw: ArrayLike,
        stride: IntOrInts = 1,
        padding: IntOrInts = 0,
        output_padding: IntOrInts = 0,
        dilation: IntOrInts = 1,
        groups: int = 1,
        *,
        output_size: Sequence[int] | None = None,
        bias: ArrayLike | None = None,
        tbias: ArrayLike | None = None,
        channel_first: bool = False,
    ) -> tuple[np.ndarray, np.ndarray]:
        """``(y, ty)`` by ``torch.func.jvp`` (``tbias=None`` is a zero tangent)."""
        f = self._transpose_fn(x, w, stride, padding, output_padding, dilation, groups, output_size, channel_first)
        if bias is None:
            return self._jvp(f, (x, w), (tx, tw))
        tb = np.zeros(np.shape(bias)) if tbias is None else tbias
        return self._jvp(f, (x, w, bias), (tx, tw, tb))

    # --- weight standardization ---------------------------------------------------------------

    def _ws_fn(self, w_shape, eps, out_axis, spec):
        """``f(w, gain=None)``: the WSSpec's map per output channel, in torch."""
        torch = self._torch
        spec = resolve_spec(spec)
        eps = spec.eps if eps is None else float(eps)
        ndim = len(w_shape)
        if not -ndim <= out_axis < ndim:
            raise ValueError(f"out_axis={out_axis}: expected an axis of w (ndim {ndim})")
        axis = out_axis % ndim
        axes = tuple(i for i in range(ndim) if i != axis)
        n = math.prod(w_shape[i] for i in axes)
        fan = n if spec.fan == "fan_in" else math.prod(w_shape)
        stat_shape = tuple(1 if i in axes else s for i, s in enumerate(w_shape))
        fixed = None if spec.fixed_scale is None else spec.fixed_scale * fan**-0.5

        def f(w, gain=None):
            if spec.denominator == "std_plus_eps":
                sd, mean = torch.std_mean(w, dim=axes, correction=spec.ddof, keepdim=True)
                scale = 1.0 / (sd + eps)
            else:
                var, mean = torch.var_mean(w, dim=axes, correction=spec.ddof, keepdim=True)
                if spec.denominator == "max_var_n":
                    scale = torch.rsqrt(torch.maximum(var * fan, torch.full_like(var, eps)))
                else:
                    scale = torch.rsqrt(var + eps)
            if fixed is not None:
                scale = scale * fixed
            if gain is not None:
                scale = scale * gain.reshape(stat_shape)
            return (w - mean) * scale

        return f

    def weight_standardize(
        self,
        w: ArrayLike,
        gain: ArrayLike | None = None,
        eps: float | None = None,
        *,
        out_axis: int = -1,
        spec: str | WSSpec = "brainstate",
    ) -> np.ndarray:
        """``w_hat`` (var/std by ``torch.var_mean`` / ``torch.std_mean`` with the spec's ddof)."""
        f = self._ws_fn(np.shape(w), eps, out_axis, spec)
        return self._forward(f, w) if gain is None else self._forward(f, w, gain)

    def weight_standardize_vjp(
        self,
        w: ArrayLike,
        dw_hat: ArrayLike,
        gain: ArrayLike | None = None,
        eps: float | None = None,
        *,
        out_axis: int = -1,
        spec: str | WSSpec = "brainstate",
    ) -> tuple[np.ndarray, np.ndarray | None]:
        """``(dw, dgain)`` (``dgain`` None without a gain) by ``torch.autograd.grad``."""
        f = self._ws_fn(np.shape(w), eps, out_axis, spec)
        if gain is None:
            return self._vjp(f, (w,), dw_hat)[0], None
        return self._vjp(f, (w, gain), dw_hat)

    def weight_standardize_jvp(
        self,
        w: ArrayLike,
        tw: ArrayLike,
        gain: ArrayLike | None = None,
        tgain: ArrayLike | None = None,
        eps: float | None = None,
        *,
        out_axis: int = -1,
        spec: str | WSSpec = "brainstate",
    ) -> tuple[np.ndarray, np.ndarray]:
        """``(w_hat, tw_hat)`` by ``torch.func.jvp`` (``tgain=None`` is a zero tangent)."""
        f = self._ws_fn(np.shape(w), eps, out_axis, spec)
        if gain is None:
            if tgain is not None:
                raise ValueError("tgain was given but gain is None: expected a gain to carry the tangent")
            return self._jvp(f, (w,), (tw,))
        return self._jvp(f, (w, gain), (tw, np.zeros(np.shape(gain)) if tgain is None else tgain))

    # --- layers ---------------------------------------------------------------------------------

    def layer(self, params: dict[str, Any], arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """A layer-suite case: ``y``, ``dx``, ``d<param>`` (VJP for ``dy``) and ``ty`` (JVP)."""
        library = params.get("library")
        if library == "elektronn3":
            f, names = self._elektronn3_fn(params, arrays)
        elif library == "brainstate":
            f, names = self._brainstate_fn(params, arrays)
        else:
            raise NotExpressible(
                f"library={library!r}: the torch adapter knows the layer suites 'elektronn3' and 'brainstate'"
            )
        inputs = [arrays[k] for k in names]
        out: dict[str, np.ndarray] = {}
        grads = self._vjp(f, inputs, arrays["dy"])
        out.update({"d" + k: gr for k, gr in zip(names, grads)})
        out["y"], out["ty"] = self._jvp(f, inputs, [arrays["t" + k] for k in names])
        return out

    def _elektronn3_fn(self, params, arrays):
        """elektronn3's WSConv*d / WSConvTranspose*d as their documented intent: PyTorch's own
        ``nn.Conv*d`` / ``nn.ConvTranspose*d`` forward (its padding, ``padding_mode``, ``output_size``)
        with the standardized weight (``spec='elektronn3'``, axis 0, eps 1e-4)."""
        torch, cls = self._torch, params["cls"]
        match = re.fullmatch(r"WSConv(Transpose)?([123])d", cls)
        if match is None:
            raise ValueError(
                f"cls={cls!r}: expected an elektronn3 layer of the golden suite (WSConv1d/2d/3d, WSConvTranspose2d/3d)"
            )
        module_cls = getattr(torch.nn, f"Conv{match.group(1) or ''}{match.group(2)}d")
        # A module on the meta device only holds the arguments: functional_call supplies the weights.
        module = module_cls(**{k: _tuple(v) for k, v in params["kwargs"].items()}, device="meta")
        has_bias = module.bias is not None
        ws = self._ws_fn(np.shape(arrays["weight"]), 1e-4, 0, "elektronn3")
        output_size = params.get("output_size")
        extra = {"output_size": list(output_size)} if match.group(1) and output_size is not None else {}

        def f(x, weight, gain, bias=None):
            values = {"weight": ws(weight, gain)} | ({"bias": bias} if has_bias else {})
            return torch.func.functional_call(module, values, (x,), extra)

        return f, ["x", "weight", "gain"] + ["bias"] * has_bias

    def _brainstate_fn(self, params, arrays):
        """brainstate's Conv*d / ScaledWSConv*d / ConvTranspose*d / Linear / ScaledWSLinear (as
        refws.nn.brainstate): ``y = core(x, W) + bias`` with ``W = WS(weight, gain) * w_mask``
        (NFNets WS, axis -1; only the ScaledWS layers standardize)."""
        cls, kw = params["cls"], params["kwargs"]
        match = re.fullmatch(r"(ScaledWS)?(Linear|Conv([123])d)|ConvTranspose([123])d", cls)
        if match is None:
            raise ValueError(
                f"cls={cls!r}: expected a brainstate layer of the golden suite (Conv1d/2d/3d, "
                "ScaledWSConv1d/2d/3d, ConvTranspose1d/2d/3d, Linear, ScaledWSLinear)"
            )
        scaled, linear = match.group(1) is not None, match.group(2) == "Linear"
        has_gain = scaled and kw.get("ws_gain", True)
        has_bias = bool(kw.get("b_init", True) if linear else kw.get("b_init"))  # brainstate's defaults
        ws = self._ws_fn(np.shape(arrays["weight"]), kw.get("eps", 1e-4), -1, "brainstate") if scaled else None
        mask = self._t(arrays["w_mask"]) if params.get("mask") else None
        if linear:
            core = _linear
        else:
            core = self._brainstate_conv(params, np.shape(arrays["weight"]), transposed=match.group(4) is not None)

        def f(x, weight, *rest):
            gain = rest[0] if has_gain else None
            bias = rest[-1] if has_bias else None
            w_eff = ws(weight, gain) if scaled else weight
            return core(x, w_eff if mask is None else w_eff * mask, bias)

        return f, ["x", "weight"] + ["gain"] * has_gain + ["bias"] * has_bias

    def _brainstate_conv(self, params, w_shape, transposed):
        """``core(x, W, b)`` of brainstate's Conv{N}d or ConvTranspose{N}d: bias per channel.

        Conv: lax padding, HWIO kernel. ConvTranspose: what brainstate computes, a convolution with
        window stride 1, ``lhs_dilation = stride``, the kernel ``(*k, C_out, C_in // G)`` flipped
        spatially with its last two axes exchanged, and jax.lax.conv_transpose's pads for
        'SAME' / 'VALID' (from refws.grads.lax_transpose_geometry; explicit pads as given).
        """
        kw = params["kwargs"]
        nd = len(w_shape) - 2
        cf = bool(kw.get("channel_first", False))
        unbatched = len(params["x_shape"]) == nd + 1
        spatial = _spatial(params["x_shape"], nd, cf)
        stride, padding, rhs = kw.get("stride", 1), kw.get("padding", "SAME"), kw.get("rhs_dilation", 1)
        if transposed:
            g = lax_transpose_geometry(spatial, w_shape[:-2], stride, padding, rhs)
        else:
            g = conv_geometry(spatial, w_shape[:-2], stride, padding, kw.get("lhs_dilation", 1), rhs)
        conv = self._conv_fn(g, int(kw.get("groups", 1)), cf)
        channel_axis = 1 if cf else -1

        def core(x, w, b):
            if transposed:
                w = w.flip(tuple(range(nd))).transpose(-1, -2)
            # brainstate expands an unbatched input, convolves, adds the bias and squeezes.
            xb = x.unsqueeze(0) if unbatched else x
            with _refusals(g.out_spatial):
                y = conv(xb, w)
            if b is not None:
                shape = [1] * y.ndim
                shape[channel_axis] = -1
                y = y + b.reshape(shape)
            return y.squeeze(0) if unbatched else y

        return core


def _spatial(x_shape, nd: int, channel_first: bool) -> tuple:
    """The spatial sizes of an input-like shape, batched or not."""
    return tuple(x_shape[-nd:] if channel_first else x_shape[-nd - 1 : -1])


def _linear(x, w, b):
    """brainstate's Linear core: ``x @ W + b`` over the last axis."""
    y = x @ w
    return y if b is None else y + b
