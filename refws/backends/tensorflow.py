r"""The ``tensorflow`` adapter: refws's golden cases driven through ``tf.nn``'s convolutions.

``TensorflowBackend(precision="float32")`` runs TensorFlow eagerly on the CPU, in float32 or
float64, and differentiates with TensorFlow's own autodiff:

=============================  ==================================================================
protocol method                TensorFlow
=============================  ==================================================================
``conv``                       ``tf.nn.conv1d`` / ``conv2d`` / ``conv3d`` (the raw ops: the
                               ``tf.nn.convolution`` wrapper refuses ``strides > 1`` together with
                               ``dilations > 1``, which the ops accept); ``data_format``
                               ``NWC``/``NHWC``/``NDHWC``, or ``NCW``/``NCHW``/``NCDHW`` with
                               ``channel_first``; ``groups > 1`` as a filter of ``C_in / groups``
                               input channels (what Keras's ``groups`` argument does)
``conv_transpose``             ``tf.nn.conv1d_transpose`` / ``conv2d_transpose`` /
                               ``conv3d_transpose`` (filters ``(*k, C_out, C_in)``: refws's layout),
                               bias by ``tf.nn.bias_add``
``*_vjp``                      ``tf.GradientTape`` of the same function
``*_jvp``                      ``tf.autodiff.ForwardAccumulator`` of the same function
=============================  ==================================================================

Padding of ``conv``: ``"SAME"`` (any case) and ``"VALID"`` are TensorFlow's own strings, so its
SAME rule is judged (the same as lax's: ``out = ceil(n / s)``, the odd element at the end).
TensorFlow has no SAME_LOWER and takes explicit pads only in ``conv2d``: there the non-negative
part of each ``(lo, hi)`` pair is the op's explicit ``padding``; in 1-D and 3-D it is a
``tf.pad`` before a ``'VALID'`` op. Negative pads crop the input by slicing, and lhs dilation
inserts zeros (``tf.stack`` + reshape), both before the op and in TensorFlow, so gradients flow
through them. ``conv_transpose`` is the input gradient of a forward convolution with pads
``(p, p - output_padding)``: in 2-D with ``p >= output_padding`` those are the op's explicit
pads and its ``output_shape``; otherwise the op computes the full (``'VALID'``) transposed
output and it is cropped by ``p`` at the start and cut (or zero-extended) to the output size.
PyTorch's ``output_size`` becomes the ``output_padding`` it implies
(:func:`refws.grads.transpose_geometry`).

What it cannot do, and how that is reported:

- ``groups > 1`` in ``conv_transpose``: TensorFlow's transposed convolutions (and Keras's
  ``Conv*DTranspose``) have no groups -> :class:`~refws.conformance.protocol.NotExpressible`.
- A convolution whose kernel overhangs the padded input by more than a stride: lax gives a
  zero-size output, TensorFlow's output-size formula a negative one ("Computed output size would
  be negative") -> ``NotExpressible``.
- What the CPU kernels refuse although the API documents it -> :class:`~refws.conformance.
  protocol.Unimplemented`, with TensorFlow's message. Measured on 2.21 (CPU): float64 has no
  NCHW/NCDHW kernels and no dilation > 1 in ``Conv3D`` or in the input gradient
  (``Conv2DBackpropInput``, so neither the transposed convolution nor ``conv_vjp`` with
  dilation), and no gradient of a grouped convolution; ``Conv3D`` has no grouped kernel in
  either precision. float32 runs on oneDNN and accepts the rest, except where explicit padding
  sends it to TensorFlow's own kernels: ``conv2d`` with explicit padding and dilation has no
  input gradient, ``conv2d_transpose`` with explicit padding no dilation and no NCHW.
- Weight standardization and the layer suites are not single TensorFlow ops: not offered
  (``skipped``).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

import numpy as np
from numpy.typing import ArrayLike

from ..conformance.protocol import IntOrInts, NotExpressible, Padding, Unimplemented
from ..geometry import conv_geometry
from ..grads import transpose_geometry

__all__ = ["TensorflowBackend"]

_PRECISIONS = ("float32", "float64")
_LAST = ("NWC", "NHWC", "NDHWC")
_FIRST = ("NCW", "NCHW", "NCDHW")
# TensorFlow's CPU kernels say "only supports", "not yet support", "does not support", ... when
# they refuse an argument the op documents.
_REFUSAL = re.compile(r"support", re.IGNORECASE)
_GROUP_REFUSAL = re.compile(r"must match|same depth", re.IGNORECASE)

tf: Any = None  # the tensorflow module, imported by the first TensorflowBackend()


def _import_tf():
    global tf
    if tf is None:
        try:
            import tensorflow
        except ImportError as exc:
            raise ImportError(
                f"the tensorflow backend needs TensorFlow: pip install 'refws[tensorflow]' (import failed: {exc})"
            ) from exc
        tf = tensorflow
    return tf


class _Refusals:
    """Translate TensorFlow's refusals into the protocol's exceptions (see the module docstring)."""

    def __init__(self, version: str, grouped: bool = False):
        self.version, self.grouped = version, grouped

    def __enter__(self):
        return self

    def __exit__(self, kind, exc, tb):
        if isinstance(exc, ValueError) and "Negative dimension size" in str(exc):
            # Graph-mode shape inference (forward-mode autodiff builds graph functions) rejects an
            # input smaller than the kernel, whose empty output the eager ops compute.
            raise Unimplemented(
                f"TensorFlow {self.version}'s shape inference refuses the empty output "
                f"that its eager op computes: {str(exc).splitlines()[0][:200]}"
            ) from exc
        if exc is None or not isinstance(exc, tf.errors.OpError):
            return False
        first = str(exc.message).strip().splitlines()[0]
        if "would be negative" in first:
            raise NotExpressible(
                f"TensorFlow's output size is negative here (lax gives an empty output): {first}"
            ) from exc
        if (
            isinstance(exc, tf.errors.UnimplementedError)
            or _REFUSAL.search(first)
            or (self.grouped and _GROUP_REFUSAL.search(first))
        ):
            raise Unimplemented(
                f"TensorFlow {self.version} refuses this case on the CPU ({type(exc).__name__}): {first}"
            ) from exc
        return False


class TensorflowBackend:
    """TensorFlow (eager, CPU) under test, in float32 or float64.

    Parameters
    ----------
    precision : {"float32", "float64"}
        The dtype every tensor is computed in (refws's golden inputs are exact in float32).

    Attributes
    ----------
    name : ``"tensorflow"``
    precision : str
    version : str
        ``tf.__version__``.

    Raises
    ------
    ImportError
        if TensorFlow is not installed (the message says ``pip install 'refws[tensorflow]'``).
    ValueError
        for a precision other than "float32" / "float64".
    """

    name = "tensorflow"

    def __init__(self, precision: str = "float32") -> None:
        _import_tf()
        if precision not in _PRECISIONS:
            raise ValueError(f"precision={precision!r}: expected one of {_PRECISIONS}")
        self.precision = precision
        self._dtype = getattr(tf, precision)
        self.version = tf.__version__

    def __repr__(self) -> str:
        return f"TensorflowBackend(precision={self.precision!r})"

    # --- tensors in and out, and the three ways of running a function ------------------------

    def _t(self, a):
        return tf.constant(np.asarray(a, dtype=np.float64), dtype=self._dtype)

    def _forward(self, f, arrays, grouped=False) -> np.ndarray:
        with _Refusals(self.version, grouped):
            return f(*(self._t(a) for a in arrays)).numpy()

    def _vjp(self, f, arrays, dy, grouped=False) -> tuple:
        """``tf.GradientTape`` gradients of ``f`` at ``arrays`` for the cotangent ``dy``."""
        xs = [self._t(a) for a in arrays]
        with _Refusals(self.version, grouped):
            with tf.GradientTape() as tape:
                tape.watch(xs)
                y = f(*xs)
            grads = tape.gradient(y, xs, output_gradients=self._t(dy))
        # TensorFlow returns None for an input the output does not depend on (an empty batch).
        return tuple(np.zeros(np.shape(a)) if g is None else g.numpy() for g, a in zip(grads, arrays))

    def _jvp(self, f, arrays, tangents, grouped=False) -> tuple:
        """``(y, ty)`` by ``tf.autodiff.ForwardAccumulator``."""
        primals = tuple(self._t(a) for a in arrays)
        with _Refusals(self.version, grouped):
            with tf.autodiff.ForwardAccumulator(primals, tuple(self._t(t) for t in tangents)) as acc:
                y = f(*primals)
            ty = acc.jvp(y)
        return y.numpy(), (np.zeros(y.shape) if ty is None else ty.numpy())

    # --- convolution ---------------------------------------------------------------------------

    def _conv_fn(self, x_shape, w_shape, stride, padding, lhs_dilation, rhs_dilation, channel_first):
        """``f(x, w)``: refws's conv in the caller's layouts by ``tf.nn.conv{1,2,3}d``."""
        nd = len(w_shape) - 2
        unbatched = len(x_shape) == nd + 1
        spatial = x_shape[-nd:] if channel_first else x_shape[-nd - 1 : -1]
        g = conv_geometry(spatial, w_shape[:-2], stride, padding, lhs_dilation, rhs_dilation)
        axes = tuple(range(2, nd + 2)) if channel_first else tuple(range(1, nd + 1))
        fmt = (_FIRST if channel_first else _LAST)[nd - 1]
        op = (tf.nn.conv1d, tf.nn.conv2d, tf.nn.conv3d)[nd - 1]
        native = isinstance(padding, str) and padding.upper() in ("SAME", "VALID")
        pads = ((0, 0),) * nd if native else g.padding
        kept = [(max(lo, 0), max(hi, 0)) for lo, hi in pads]
        if native:
            op_padding = padding.upper()
        elif nd == 2:
            op_padding = _full_rank(kept, axes, [0, 0])
        else:
            op_padding = "VALID"
        pre_pad = None if native or nd == 2 or not any(map(any, kept)) else _full_rank(kept, axes, [0, 0])

        def f(x, w):
            xb = x[None] if unbatched else x
            xb = _lhs_dilate(xb, g.lhs_dilation, axes)
            xb = _crop(xb, pads, axes)
            if pre_pad is not None:
                xb = tf.pad(xb, pre_pad)
            y = op(
                xb,
                w,
                _full_rank(g.stride, axes, 1),
                op_padding,
                data_format=fmt,
                dilations=_full_rank(g.rhs_dilation, axes, 1),
            )
            return y[0] if unbatched else y

        return f

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
        """``refws.conv`` by ``tf.nn.conv{1,2,3}d`` (``SAME``/``VALID`` passed through)."""
        f = self._conv_fn(np.shape(x), np.shape(w), stride, padding, lhs_dilation, rhs_dilation, channel_first)
        return self._forward(f, (x, w), groups > 1)

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
        """``(dx, dw)`` by ``tf.GradientTape``."""
        f = self._conv_fn(np.shape(x), np.shape(w), stride, padding, lhs_dilation, rhs_dilation, channel_first)
        return self._vjp(f, (x, w), dy, groups > 1)

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
        """``(y, ty)`` by ``tf.autodiff.ForwardAccumulator``."""
        f = self._conv_fn(np.shape(x), np.shape(w), stride, padding, lhs_dilation, rhs_dilation, channel_first)
        return self._jvp(f, (x, w), (tx, tw), groups > 1)

    # --- transposed convolution ---------------------------------------------------------------

    def _transpose_fn(
        self, x_shape, w_shape, stride, padding, output_padding, dilation, groups, output_size, channel_first
    ):
        """``f(x, w[, b])``: refws's conv_transpose by ``tf.nn.conv{1,2,3}d_transpose``."""
        if int(groups) != 1:
            raise NotExpressible(
                f"groups={groups}: TensorFlow's conv*_transpose (and Keras's Conv*DTranspose) have no groups"
            )
        nd = len(w_shape) - 2
        unbatched = len(x_shape) == nd + 1
        spatial = x_shape[-nd:] if channel_first else x_shape[-nd - 1 : -1]
        g = transpose_geometry(
            spatial, w_shape[:-2], stride, padding, output_padding, dilation, output_size, 1 if unbatched else 2
        )
        axes = tuple(range(2, nd + 2)) if channel_first else tuple(range(1, nd + 1))
        fmt = (_FIRST if channel_first else _LAST)[nd - 1]
        op = (tf.nn.conv1d_transpose, tf.nn.conv2d_transpose, tf.nn.conv3d_transpose)[nd - 1]
        n_batch = 1 if unbatched else x_shape[0]
        c_out = w_shape[-2]
        explicit = nd == 2 and all(hi >= 0 for _, hi in g.padding)
        if explicit:
            sizes, op_padding = g.in_spatial, _full_rank(g.padding, axes, [0, 0])
        else:
            # The full transposed output: every position some input reaches (pads 0).
            sizes = tuple(
                (n - 1) * s + (k - 1) * d + 1 for n, s, k, d in zip(spatial, g.stride, g.kernel_spatial, g.rhs_dilation)
            )
            op_padding = "VALID"
        out_shape = [n_batch, c_out, *sizes] if channel_first else [n_batch, *sizes, c_out]
        strides, dilations = _full_rank(g.stride, axes, 1), _full_rank(g.rhs_dilation, axes, 1)

        def f(x, w, b=None):
            xb = x[None] if unbatched else x
            y = op(xb, w, out_shape, strides, op_padding, data_format=fmt, dilations=dilations)
            if not explicit:
                y = _crop_to(y, [lo for lo, _ in g.padding], g.in_spatial, axes)
            if b is not None:
                y = tf.nn.bias_add(y, b, data_format="NC..." if channel_first else "N...C")
            return y[0] if unbatched else y

        return f

    def _transpose_setup(self, x, w, stride, padding, output_padding, dilation, groups, output_size, channel_first):
        return self._transpose_fn(
            np.shape(x), np.shape(w), stride, padding, output_padding, dilation, groups, output_size, channel_first
        )

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
        """``refws.conv_transpose`` by ``tf.nn.conv{1,2,3}d_transpose``."""
        f = self._transpose_setup(x, w, stride, padding, output_padding, dilation, groups, output_size, channel_first)
        return self._forward(f, (x, w) if bias is None else (x, w, bias))

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
        """``(dx, dw)``, or ``(dx, dw, db)`` with a bias, by ``tf.GradientTape``."""
        f = self._transpose_setup(x, w, stride, padding, output_padding, dilation, groups, output_size, channel_first)
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
        """``(y, ty)`` by ``tf.autodiff.ForwardAccumulator`` (``tbias=None`` is a zero tangent)."""
        f = self._transpose_setup(x, w, stride, padding, output_padding, dilation, groups, output_size, channel_first)
        if bias is None:
            return self._jvp(f, (x, w), (tx, tw))
        return self._jvp(f, (x, w, bias), (tx, tw, np.zeros(np.shape(bias)) if tbias is None else tbias))


# --- TensorFlow pieces around the ops (all differentiable) --------------------------------------


def _full_rank(values, axes, fill) -> list:
    """Per-spatial-axis ``values`` spread over a batched tensor's axes (``fill`` elsewhere)."""
    out = [fill] * (len(axes) + 2)
    for a, v in zip(axes, values):
        out[a] = list(v) if isinstance(v, tuple) else v
    return out


def _lhs_dilate(x, dilation, axes):
    """``L - 1`` zeros between neighbours along each spatial axis (``tf.stack`` + reshape)."""
    for a, L in zip(axes, dilation):
        n = x.shape[a]
        if L == 1 or n == 0:
            continue
        stacked = tf.stack([x] + [tf.zeros_like(x)] * (L - 1), axis=a + 1)
        shape = list(x.shape)
        shape[a] = n * L
        x = tf.reshape(stacked, shape)
        x = _slice(x, a, 0, (n - 1) * L + 1)
    return x


def _slice(x, axis, start, stop):
    index = [slice(None)] * len(x.shape)
    index[axis] = slice(start, stop)
    return x[tuple(index)]


def _crop(x, pads, axes):
    """The negative parts of ``pads`` (crops) applied by slicing."""
    for a, (lo, hi) in zip(axes, pads):
        if lo < 0 or hi < 0:
            x = _slice(x, a, max(-lo, 0), x.shape[a] - max(-hi, 0))
    return x


def _crop_to(y, starts, sizes, axes):
    """``y[start : start + size]`` along each axis, zero-extended where it runs past the end
    (PyTorch's output_padding beyond the reach of every input)."""
    for a, start, size in zip(axes, starts, sizes):
        short = start + size - y.shape[a]
        if short > 0:
            y = tf.pad(y, [[0, short] if i == a else [0, 0] for i in range(len(y.shape))])
        y = _slice(y, a, start, start + size)
    return y
