r"""The ONNX adapters: one ``Conv`` or ``ConvTranspose`` node, run by onnxruntime or by the reference evaluator.

``OnnxRuntimeBackend(precision="float32")`` (``refws check onnxruntime``) runs the model with
``onnxruntime.InferenceSession`` on the CPU execution provider; ``OnnxReferenceBackend(
precision="float32")`` (``refws check onnx-reference``) with ``onnx.reference.ReferenceEvaluator``,
the ONNX project's NumPy implementation of the operator specification. Both are judged on the
same single-node models, built with ``onnx.helper`` and validated by ``onnx.checker`` (with shape
inference) before they run, so a refusal at run time is the runtime's, not a malformed model.

=============================  ==================================================================
protocol method                the node
=============================  ==================================================================
``conv``                       ``Conv(X, W)``: ``X`` NC(D)(H)W, ``W`` ``(C_out, C_in/group, *k)``,
                               ``strides``, ``dilations`` (refws's ``rhs_dilation``), ``group``;
                               padding as below
``conv_transpose``             ``ConvTranspose(X, W[, B])``: ``W`` ``(C_in, C_out/group, *k)``,
                               ``strides``, ``dilations``, ``group``, ``pads = [p]*2`` per axis,
                               ``output_padding``; PyTorch's ``output_size`` becomes the
                               ``output_padding`` PyTorch derives from it
                               (:func:`refws.grads.transpose_geometry`), which is what
                               ``torch.onnx`` exports (ONNX's own ``output_shape`` attribute
                               re-derives the pads instead: a different operation)
=============================  ==================================================================

Padding of ``Conv``: lax's strings are the node's own ``auto_pad`` — ``"SAME"`` (any case) is
``SAME_UPPER``, ``"SAME_LOWER"`` is ``SAME_LOWER``, ``"VALID"`` is ``VALID`` — so the runtime's
padding logic is what gets judged (ONNX's SAME rule is lax's: ``out = ceil(n / s)``, the odd
element at the end for SAME_UPPER, at the start for SAME_LOWER). Every other form is normalised
by :func:`refws.conv_geometry` to ``(lo, hi)`` pairs and given as explicit ``pads``.

Done in NumPy around the node, because ONNX cannot say it and the node stays what is judged:

- negative pads (``pads`` must be >= 0 in ONNX): the input is cropped before the node, the
  non-negative part of each pair stays the node's ``pads``;
- lhs dilation (``Conv`` has none): zeros are inserted between input elements before the node
  (exact in every dtype);
- layouts: channels-last inputs and kernels are transposed to ONNX's channels-first and back;
  an unbatched input gets a batch axis (ONNX convolutions are batched).

What these adapters do not do:

- Gradients: ONNX has no autograd, so ``conv_vjp``/``conv_jvp`` and the transposed VJP/JVP are
  not offered (their arrays are ``skipped``); forward only.
- Weight standardization and the layer suites: not single Conv nodes (``skipped``).

Statuses: a runtime error on a node the checker accepts is
:class:`~refws.conformance.protocol.Unimplemented` (the ONNX specification allows the node; the
runtime refuses it: e.g. onnxruntime's missing float64 CPU kernels, its refusal of
``auto_pad=SAME_*`` with dilation > 1, or of an empty output that ONNX's output-size formula
gives). A convolution whose kernel overhangs the padded input by more than a stride has a
zero-size output in lax's semantics but a negative size by ONNX's formula: it cannot be said as a
node (:class:`~refws.conformance.protocol.NotExpressible`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, cast

import numpy as np
from numpy.typing import ArrayLike

from ..conformance.protocol import IntOrInts, NotExpressible, Padding, Unimplemented
from ..geometry import ConvGeometry, conv_geometry
from ..grads import transpose_geometry

__all__ = ["OnnxReferenceBackend", "OnnxRuntimeBackend", "conv_node_args", "conv_node_out_sizes", "transpose_node_args"]

_PRECISIONS = ("float64", "float32")
OPSET = 22  # Conv-22 / ConvTranspose-22: the semantics of -11, with bfloat16 added
FALLBACK_OPSET = 11  # for runtimes that do not know opset 22 yet (the same definitions)
_AUTO_PAD = {"SAME": "SAME_UPPER", "SAME_LOWER": "SAME_LOWER", "VALID": "VALID"}


def _import_onnx():
    try:
        import onnx
        import onnx.checker
        import onnx.helper
    except ImportError as exc:
        raise ImportError(f"the ONNX backends need onnx: pip install 'refws[onnx]' (import failed: {exc})") from exc
    return onnx


def _to_channels_first(a, channel_first: bool) -> np.ndarray:
    """A batched input in ONNX's ``(N, C, *spatial)``."""
    return a if channel_first else np.moveaxis(a, -1, 1)


def _kernel_to_onnx(w, nd: int) -> np.ndarray:
    """refws ``(*k, A, B)`` -> ONNX ``(B, A, *k)`` (Conv: A = C_in/G, B = C_out; ConvTranspose:
    A = C_out/G, B = C_in)."""
    return np.ascontiguousarray(np.transpose(w, (nd + 1, nd, *range(nd))))


def _lhs_dilate(x, dilation) -> np.ndarray:
    """``(N, C, *n)`` with ``L - 1`` zeros between neighbours along each spatial axis."""
    if all(L == 1 for L in dilation):
        return x
    size = [(n - 1) * L + 1 if n > 0 else 0 for n, L in zip(x.shape[2:], dilation)]
    out = np.zeros((*x.shape[:2], *size), x.dtype)
    out[(slice(None), slice(None), *(slice(None, None, L) for L in dilation))] = x
    return out


def _crop(x, pads) -> np.ndarray:
    """Apply the negative parts of ``pads`` (crops) to the spatial axes of ``(N, C, *n)``."""
    index = tuple(slice(max(-lo, 0), n - max(-hi, 0)) for (lo, hi), n in zip(pads, x.shape[2:]))
    return x[(slice(None), slice(None), *index)]


def conv_node_args(
    x_shape: Sequence[int],
    w_shape: Sequence[int],
    stride: IntOrInts = 1,
    padding: Padding = "SAME",
    lhs_dilation: IntOrInts = 1,
    rhs_dilation: IntOrInts = 1,
    *,
    channel_first: bool = False,
) -> tuple[ConvGeometry, dict[str, Any], Callable[[np.ndarray], np.ndarray]]:
    """How a refws ``conv`` becomes one ONNX ``Conv``: ``(geometry, attributes, prepare)``.

    ``attributes`` are the node's (``kernel_shape``, ``strides``, ``dilations`` and either
    ``auto_pad`` or ``pads``); ``prepare(x_nc)`` is what is done to the batched channels-first
    input before the node (lhs dilation, crops). String padding stays the node's ``auto_pad``
    unless the input is lhs-dilated (refws rejects that combination anyway, as lax does).
    """
    nd = len(w_shape) - 2
    spatial = x_shape[-nd:] if channel_first else x_shape[-nd - 1 : -1]
    g = conv_geometry(spatial, w_shape[:-2], stride, padding, lhs_dilation, rhs_dilation)
    attrs: dict[str, Any] = {
        "kernel_shape": list(g.kernel_spatial),
        "strides": list(g.stride),
        "dilations": list(g.rhs_dilation),
    }
    if isinstance(padding, str):
        attrs["auto_pad"] = _AUTO_PAD[padding.upper()]
        pads = ((0, 0),) * nd
    else:
        pads = g.padding
        attrs["pads"] = [max(lo, 0) for lo, _ in pads] + [max(hi, 0) for _, hi in pads]

    def prepare(x_nc: np.ndarray) -> np.ndarray:
        return _crop(_lhs_dilate(x_nc, g.lhs_dilation), pads)

    return g, attrs, prepare


def transpose_node_args(
    x_shape: Sequence[int],
    w_shape: Sequence[int],
    stride: IntOrInts = 1,
    padding: IntOrInts = 0,
    output_padding: IntOrInts = 0,
    dilation: IntOrInts = 1,
    output_size: Sequence[int] | None = None,
    *,
    channel_first: bool = False,
) -> tuple[ConvGeometry, dict[str, Any]]:
    """How a refws ``conv_transpose`` becomes one ONNX ``ConvTranspose``: ``(geometry, attributes)``.

    ``geometry`` is the forward convolution whose input gradient this is (its ``in_spatial`` is
    the output size; ``padding`` is ``(p, p - output_padding)`` per axis).
    """
    nd = len(w_shape) - 2
    unbatched = len(x_shape) == nd + 1
    spatial = x_shape[-nd:] if channel_first else x_shape[-nd - 1 : -1]
    g = transpose_geometry(
        spatial, w_shape[:-2], stride, padding, output_padding, dilation, output_size, 1 if unbatched else 2
    )
    p = [lo for lo, _ in g.padding]
    attrs = {
        "kernel_shape": list(g.kernel_spatial),
        "strides": list(g.stride),
        "dilations": list(g.rhs_dilation),
        "pads": p + p,
        "output_padding": [lo - hi for lo, hi in g.padding],
    }
    return g, attrs


def conv_node_out_sizes(in_spatial: Sequence[int], attrs: dict[str, Any]) -> tuple[int, ...]:
    """The output spatial sizes ONNX's ``Conv`` definition gives for the node's input sizes.

    ``floor((n + pad_lo + pad_hi - dk) / s) + 1`` with explicit pads (``VALID``: no pads), and
    ``ceil(n / s)`` for ``SAME_*``. Unlike lax's rule it can be negative, when the dilated kernel
    ``dk`` overhangs the padded input by more than a stride: such a node is not valid ONNX. A 0 is
    a legal empty output.
    """
    nd = len(in_spatial)
    if attrs.get("auto_pad", "NOTSET").startswith("SAME"):
        return tuple(-(-n // s) for n, s in zip(in_spatial, attrs["strides"]))
    pads = attrs.get("pads", [0] * 2 * nd)
    dk = [(k - 1) * d + 1 for k, d in zip(attrs["kernel_shape"], attrs["dilations"])]
    return tuple((n + pads[i] + pads[i + nd] - dk[i]) // attrs["strides"][i] + 1 for i, n in enumerate(in_spatial))


class _OnnxBackend:
    """What both ONNX adapters share: building, checking and running a single-node model."""

    name = "onnx"

    def __init__(self, precision: str = "float32") -> None:
        self._onnx = _import_onnx()
        if precision not in _PRECISIONS:
            raise ValueError(f"precision={precision!r}: expected one of {_PRECISIONS}")
        self.precision = precision
        self._dtype = np.dtype(precision)
        self._elem = self._onnx.helper.np_dtype_to_tensor_dtype(self._dtype)
        self.opset = OPSET if self._onnx.defs.onnx_opset_version() >= OPSET else FALLBACK_OPSET

    def __repr__(self) -> str:
        return f"{type(self).__name__}(precision={self.precision!r})"

    def _model(self, op, inputs, y_rank, attrs):
        """A checked ModelProto holding one ``op`` node on ``inputs`` (name -> array)."""
        h = self._onnx.helper
        ins = [h.make_tensor_value_info(k, self._elem, list(v.shape)) for k, v in inputs.items()]
        out = h.make_tensor_value_info("Y", self._elem, [None] * y_rank)
        node = h.make_node(op, list(inputs), ["Y"], **attrs)
        graph = h.make_graph([node], f"refws_{op}", ins, [out])
        opsets = [h.make_opsetid("", self.opset)]
        # The oldest IR version that can hold this opset: what older runtimes can still load.
        model = h.make_model(graph, opset_imports=opsets, ir_version=h.find_min_ir_version_for(opsets))
        self._onnx.checker.check_model(model, full_check=True)
        return model

    def _run(self, model, feeds) -> np.ndarray:  # pragma: no cover - overridden
        raise NotImplementedError

    def _execute(self, op, inputs, y_rank, attrs) -> np.ndarray:
        """Build, check and run; a runtime's refusal of the checked node is :class:`Unimplemented`."""
        inputs = {k: np.ascontiguousarray(v, dtype=self._dtype) for k, v in inputs.items()}
        model = self._model(op, inputs, y_rank, attrs)
        try:
            return np.asarray(self._run(model, inputs))
        except Exception as exc:  # every refusal of a checked node is classified
            raise Unimplemented(
                f"{self.name} refuses a {op} node that the ONNX checker accepts "
                f"({_describe(attrs)}, {self.precision}): "
                f"{type(exc).__name__}: {str(exc).strip()}"
            ) from exc

    # --- the protocol --------------------------------------------------------------------------

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
        """``refws.conv`` by one ``Conv`` node (see the module docstring for the padding)."""
        nd = np.ndim(w) - 2
        unbatched = np.ndim(x) == nd + 1
        g, attrs, prepare = conv_node_args(
            np.shape(x), np.shape(w), stride, padding, lhs_dilation, rhs_dilation, channel_first=channel_first
        )
        attrs["group"] = int(groups)
        xb = np.asarray(x)[None] if unbatched else np.asarray(x)
        x_nc = prepare(_to_channels_first(xb, channel_first))
        sizes = conv_node_out_sizes(x_nc.shape[2:], attrs)
        if min(sizes) < 0:
            raise NotExpressible(
                f"ONNX's Conv output size here is {sizes} (negative: the kernel overhangs "
                f"the padded input by more than a stride); lax semantics give {g.out_spatial}"
            )
        y = self._execute("Conv", {"X": x_nc, "W": _kernel_to_onnx(w, nd)}, nd + 2, attrs)
        y = y if channel_first else np.moveaxis(y, 1, -1)
        return y[0] if unbatched else y

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
        """``refws.conv_transpose`` by one ``ConvTranspose`` node (bias as its ``B`` input)."""
        nd = np.ndim(w) - 2
        unbatched = np.ndim(x) == nd + 1
        _, attrs = transpose_node_args(
            np.shape(x),
            np.shape(w),
            stride,
            padding,
            output_padding,
            dilation,
            output_size,
            channel_first=channel_first,
        )
        attrs["group"] = int(groups)
        xb = np.asarray(x)[None] if unbatched else np.asarray(x)
        inputs = {"X": _to_channels_first(xb, channel_first), "W": _kernel_to_onnx(w, nd)}
        if bias is not None:
            inputs["B"] = np.asarray(bias)
        y = self._execute("ConvTranspose", inputs, nd + 2, attrs)
        y = y if channel_first else np.moveaxis(y, 1, -1)
        return y[0] if unbatched else y


def _describe(attrs) -> str:
    return ", ".join(f"{k}={v}" for k, v in attrs.items() if k != "kernel_shape")


class OnnxRuntimeBackend(_OnnxBackend):
    """onnxruntime (CPU execution provider) under test, on single-node ONNX models.

    Parameters
    ----------
    precision : {"float32", "float64"}
        The tensor type of the model (ONNX allows both for Conv and ConvTranspose; onnxruntime's
        CPU provider has float32 kernels only, so float64 cases come back ``unimplemented``).
    threads : int
        ``intra_op_num_threads`` of the session (1 by default: reproducible summation order).

    Attributes
    ----------
    name : ``"onnxruntime"``
    precision : str
    version : str
        ``onnxruntime.__version__`` and the onnx version and opset the models are built with.

    Raises
    ------
    ImportError
        if onnx or onnxruntime is missing (``pip install 'refws[onnx]'``).
    ValueError
        for a precision other than "float32" / "float64".
    """

    name = "onnxruntime"

    def __init__(self, precision: str = "float32", threads: int = 1) -> None:
        super().__init__(precision)
        try:
            import onnxruntime
        except ImportError as exc:
            raise ImportError(
                f"the onnxruntime backend needs onnxruntime: pip install 'refws[onnx]' (import failed: {exc})"
            ) from exc
        self._ort = onnxruntime
        self._options = onnxruntime.SessionOptions()
        self._options.intra_op_num_threads = int(threads)
        self._options.inter_op_num_threads = 1
        self._options.log_severity_level = 3  # errors only: refusals come back as exceptions
        if self.opset != FALLBACK_OPSET and not self._loads_opset():
            self.opset = FALLBACK_OPSET
        self.version = f"{onnxruntime.__version__} (onnx {self._onnx.__version__}, opset {self.opset})"

    def _loads_opset(self) -> bool:
        """Whether this onnxruntime loads a Conv model at ``self.opset`` (older ones stop at 21)."""
        one = np.ones((1, 1, 1), np.float32)
        model = self._model("Conv", {"X": one, "W": one}, 3, {})
        try:
            self._ort.InferenceSession(model.SerializeToString(), self._options, providers=["CPUExecutionProvider"])
        except Exception:  # noqa: BLE001 - any load failure means "no"
            return False
        return True

    def _run(self, model, feeds) -> np.ndarray:
        session = self._ort.InferenceSession(
            model.SerializeToString(), self._options, providers=["CPUExecutionProvider"]
        )
        return session.run(None, feeds)[0]


class OnnxReferenceBackend(_OnnxBackend):
    """The ONNX reference evaluator (``onnx.reference.ReferenceEvaluator``, NumPy) under test.

    Parameters
    ----------
    precision : {"float32", "float64"}
        The tensor type of the model; the evaluator computes in it.

    Attributes
    ----------
    name : ``"onnx-reference"``
    precision : str
    version : str
        ``onnx.__version__`` and the opset.

    Raises
    ------
    ImportError
        if onnx is missing (``pip install 'refws[onnx]'``).
    ValueError
        for a precision other than "float32" / "float64".
    """

    name = "onnx-reference"

    def __init__(self, precision: str = "float32") -> None:
        super().__init__(precision)
        from onnx.reference import ReferenceEvaluator

        self._evaluator = ReferenceEvaluator
        self.version = f"{self._onnx.__version__} (opset {self.opset})"

    def _run(self, model, feeds) -> np.ndarray:
        # onnx annotates run() as ``dict | list``: the dict is only for intermediate=True
        return cast("list[Any]", self._evaluator(model).run(None, feeds))[0]
