r"""The ``elektronn3`` adapter: elektronn3's own layers under the adapter protocol.

``Elektronn3Backend(precision="float64", device="cpu", fws=False)`` implements
``layer(params, arrays)`` for the ``elektronn3`` layer suite by running the library's real code:

======================================  ==========================================================
golden ``cls``                          what runs
======================================  ==========================================================
``WSConv1d/2d/3d``                      ``elektronn3.modules.wsconv.WSConv{N}d(**kwargs)``, its
                                        ``forward(x)`` (default ``eps=1e-4``)
``WSConvTranspose2d/3d``                ``WSConvTranspose{N}d(**kwargs)``, ``forward(x,
                                        output_size=...)`` where the case gives ``output_size``
with ``fws=True`` (``--opt fws=true``)  ``FWS(nn.Conv{N}d(**kwargs))`` / ``FWS(nn.ConvTranspose{N}d(
                                        **kwargs))``: elektronn3's in-place standardization wrapper
                                        around PyTorch's own layer (gain loaded into ``FWS.gain``)
``weight_standardize(_vjp/_jvp)``,     ``WSConv1d(R, O, 1).standardize_weight(eps)``, elektronn3's
spec ``"elektronn3"`` only             own method, with the weight (output axis first) as a
                                       ``(O, R, 1)`` kernel (``R`` = the other axes' product: the
                                       method reduces over every axis but 0, its fan is the whole
                                       size, so only the order of the reduction changes) and the
                                       gain (ones without one); autograd / ``torch.func.jvp``
======================================  ==========================================================

The module is built with the case's constructor arguments (``params["kwargs"]``) and converted
to the precision's dtype; the stored parameters (``weight``, ``bias``, ``gain``: the golden
elektronn3 arrays are in PyTorch's layouts already) are passed to it through
``torch.func.functional_call``, so the forward that runs is elektronn3's ``forward`` and
``standardize_weight`` reading them. ``y`` and ``ty`` come from one ``torch.func.jvp`` of that call
along ``(tx, tweight, tgain, tbias)``; ``dx``, ``dweight``, ``dgain``, ``dbias`` from
``torch.autograd.grad`` for ``dy``. A parameter that does not reach the output gets gradient zero
(PyTorch leaves its ``.grad`` as ``None``): that is ``WSConvTranspose2d``'s gain in 0.1.1.

The golden elektronn3 cases encode the layers' documented intent (PyTorch's ``padding_mode`` and
``output_size``, the standardized weight, a 3-d transposed convolution), so the known defects of
elektronn3 0.1.1 show up as statuses, nothing is corrected here:

- ``WSConv*d`` with ``padding_mode`` reflect/replicate/circular: zero padding -> ``fail``;
- ``WSConvTranspose2d``: convolves with the raw weight -> ``fail``; with ``output_size``: the
  output keeps the ``output_padding`` size -> ``y`` and ``ty`` ``fail`` (wrong shape) and the VJP
  arrays are not returned (``skipped``: the golden ``dy`` has the size elektronn3 ignored, so no
  VJP of elektronn3's map can be taken along it);
- ``WSConvTranspose3d``: ``forward`` calls ``F.conv_transpose2d`` on 5-d tensors, which raises ->
  :class:`~refws.conformance.protocol.Unimplemented` with PyTorch's message;
- ``standardize_weight(eps)`` clamps with ``torch.tensor(eps)``, a float32 scalar, whatever the
  weight's dtype: on the clamp (``var * N < eps``: the ``ws`` cases ``elektronn3_hwio_tiny`` and
  ``elektronn3_hwio_constant``) the float64 result uses ``float32(1e-4) = 9.99999974738e-05``
  -> ``fail`` at float64 (relative error 1.3e-8), within the bound at float32.

Only a ``RuntimeError`` / ``NotImplementedError`` raised while elektronn3's own code is on the
stack becomes ``Unimplemented``; anything else propagates (an adapter bug is an ``error``).

``fws=True`` runs the golden cases through ``FWS`` instead. FWS standardizes ``layer.weight`` in
place under ``torch.no_grad()`` before each forward and then calls PyTorch's own layer, so its
forward is the documented intent (``padding_mode`` and ``output_size`` honoured, the transposed
weight standardized per axis 0); but its gradients are taken *at* the standardized weight (no
derivative through the standardization, none for its gain), which is a different map from the
golden cases'. Only ``y``, ``dx`` and ``dbias`` (which do not depend on that) are returned; the
other arrays are reported ``skipped``. The ``ws`` methods are ``standardize_weight`` in both modes.

Importing elektronn3 runs its ``logger_setup()``: a log file ``/tmp/<user>_<uuid>_elektronn3.log``
per process and a stdout log handler (elektronn3's behaviour, not refws's).
"""

from __future__ import annotations

import os
import re
from contextlib import contextmanager
from typing import Any

import numpy as np
from numpy.typing import ArrayLike

from ..conformance.protocol import NotExpressible, Unimplemented
from ..ws import WSSpec

__all__ = ["Elektronn3Backend"]

_CLS = re.compile(r"WSConv(Transpose)?([123])d")


def _import_elektronn3():
    """``(torch, wsconv module, elektronn3's version)``; ImportError naming the extra."""
    try:
        import importlib.metadata

        import torch  # noqa: F401
        from elektronn3.modules import wsconv
    except ImportError as exc:
        raise ImportError(
            "the elektronn3 backend needs elektronn3 0.1.1 and PyTorch: "
            f"pip install 'refws[elektronn3]' (import failed: {exc})"
        ) from exc
    return wsconv, importlib.metadata.version("elektronn3")


def _raised_in(exc: BaseException, directory: str) -> bool:
    """Whether a frame of ``exc``'s traceback lies in ``directory`` (the library's own code)."""
    tb = exc.__traceback__
    while tb is not None:
        if os.path.abspath(tb.tb_frame.f_code.co_filename).startswith(directory):
            return True
        tb = tb.tb_next
    return False


@contextmanager
def _library_refusals(directory: str, what: str):
    """A RuntimeError / NotImplementedError raised inside elektronn3's code -> Unimplemented."""
    try:
        yield
    except (RuntimeError, NotImplementedError) as exc:
        if _raised_in(exc, directory):
            raise Unimplemented(f"{what} raises {type(exc).__name__}: {exc}") from exc
        raise


class _Standardize:
    """``f(w[, gain])``: elektronn3's ``standardize_weight(eps)`` on ``w`` (any layout, ``out_axis``)."""

    def __init__(self, torch, wsconv, tb, w_shape, eps, out_axis):
        ndim = len(w_shape)
        if not -ndim <= out_axis < ndim:
            raise ValueError(f"out_axis={out_axis}: expected an axis of w (ndim {ndim})")
        self.axis, self.c_out = out_axis % ndim, w_shape[out_axis]
        self.rest = int(np.prod(w_shape)) // self.c_out if self.c_out else 0
        self.moved = (self.c_out,) + tuple(s for i, s in enumerate(w_shape) if i != self.axis)
        self.eps = 1e-4 if eps is None else float(eps)  # the method's default in forward()
        with torch.random.fork_rng(devices=[]):
            layer = wsconv.WSConv1d(self.rest, self.c_out, 1, bias=False)
        self.wrapper = _standardize_weight_module(torch, layer.to(device=tb.device, dtype=tb.dtype))
        self.ones = torch.ones(self.c_out, device=tb.device, dtype=tb.dtype)
        self.torch = torch

    def __call__(self, w, gain=None):
        values = {
            "layer.weight": w.movedim(self.axis, 0).reshape(self.c_out, self.rest, 1),
            "layer.gain": self.ones if gain is None else gain.reshape(self.c_out),
        }
        w_hat = self.torch.func.functional_call(self.wrapper, values, (self.eps,))
        return w_hat.reshape(self.moved).movedim(0, self.axis)


def _standardize_weight_module(torch, layer):
    """A module whose forward is ``layer.standardize_weight(eps)`` (functional_call runs forward only)."""

    class StandardizeWeight(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.layer = layer

        def forward(self, eps):
            return self.layer.standardize_weight(eps)

    return StandardizeWeight()


def _tuple(v):
    return tuple(_tuple(e) for e in v) if isinstance(v, list) else v


class Elektronn3Backend:
    """elektronn3's ``WSConv*d`` / ``WSConvTranspose*d`` (or ``FWS``) under test, float64 or float32.

    Parameters
    ----------
    precision : {"float64", "float32"}
        The dtype the module and every tensor are converted to.
    device : str
        Where PyTorch computes (as :class:`refws.backends.torch.TorchBackend`).
    fws : bool
        Run the cases as ``FWS(nn.Conv*d / nn.ConvTranspose*d)`` instead of ``WSConv*``
        (``y``, ``dx``, ``dbias`` only; see the module docstring).

    Attributes
    ----------
    name : ``"elektronn3"`` (``"elektronn3-fws"`` with ``fws=True``)
    precision : str
        As :class:`~refws.backends.torch.TorchBackend` judges it (``"tf32"`` on CUDA float32 with
        cuDNN's TF32 on).
    version : str
        ``"<elektronn3 version> (torch <version>)"``.

    Raises
    ------
    ImportError
        if elektronn3 or PyTorch is missing (the message says ``pip install 'refws[elektronn3]'``).
    ValueError
        for a precision other than "float64" / "float32", or an unusable device.
    TypeError
        for ``fws`` other than a bool.
    """

    def __init__(self, precision: str = "float64", device: Any = "cpu", fws: bool = False) -> None:
        self._wsconv, version = _import_elektronn3()
        from .torch import TorchBackend  # tensors in/out, autograd and forward-mode calls

        self._tb = TorchBackend(precision, device)
        self._torch = self._tb._torch
        self._dir = os.path.dirname(os.path.abspath(self._wsconv.__file__))
        if not isinstance(fws, bool):
            raise TypeError(f"fws={fws!r}: expected True or False")
        self.fws = fws
        self.name = "elektronn3-fws" if fws else "elektronn3"
        self.version = f"{version} (torch {self._torch.__version__})"

    @property
    def precision(self) -> str:
        return self._tb.precision

    def __repr__(self) -> str:
        return f"Elektronn3Backend(precision={self._tb.dtype_name!r}, device={str(self._tb.device)!r}, fws={self.fws})"

    # --- weight standardization: WSConv*.standardize_weight ----------------------------------

    def _ws_fn(self, w_shape, eps, out_axis, spec):
        if spec != "elektronn3":
            name = spec if isinstance(spec, str) else getattr(spec, "name", spec)
            raise NotExpressible(
                f"spec={name!r}: elektronn3's standardize_weight computes the 'elektronn3' preset only"
            )
        return _Standardize(self._torch, self._wsconv, self._tb, tuple(w_shape), eps, out_axis)

    def weight_standardize(
        self,
        w: ArrayLike,
        gain: ArrayLike | None = None,
        eps: float | None = None,
        *,
        out_axis: int = -1,
        spec: str | WSSpec = "elektronn3",
    ) -> np.ndarray:
        """``w_hat`` by elektronn3's ``standardize_weight``."""
        f = self._ws_fn(np.shape(w), eps, out_axis, spec)
        return self._tb._forward(f, w) if gain is None else self._tb._forward(f, w, gain)

    def weight_standardize_vjp(
        self,
        w: ArrayLike,
        dw_hat: ArrayLike,
        gain: ArrayLike | None = None,
        eps: float | None = None,
        *,
        out_axis: int = -1,
        spec: str | WSSpec = "elektronn3",
    ) -> tuple[np.ndarray, np.ndarray | None]:
        """``(dw, dgain)`` (``dgain`` None without a gain) by ``torch.autograd.grad``."""
        f = self._ws_fn(np.shape(w), eps, out_axis, spec)
        if gain is None:
            return self._tb._vjp(f, (w,), dw_hat)[0], None
        return self._tb._vjp(f, (w, gain), dw_hat)

    def weight_standardize_jvp(
        self,
        w: ArrayLike,
        tw: ArrayLike,
        gain: ArrayLike | None = None,
        tgain: ArrayLike | None = None,
        eps: float | None = None,
        *,
        out_axis: int = -1,
        spec: str | WSSpec = "elektronn3",
    ) -> tuple[np.ndarray, np.ndarray]:
        """``(w_hat, tw_hat)`` by ``torch.func.jvp`` (``tgain=None`` is a zero tangent)."""
        f = self._ws_fn(np.shape(w), eps, out_axis, spec)
        if gain is None:
            if tgain is not None:
                raise ValueError("tgain was given but gain is None: expected a gain to carry the tangent")
            return self._tb._jvp(f, (w,), (tw,))
        return self._tb._jvp(f, (w, gain), (tw, np.zeros(np.shape(gain)) if tgain is None else tgain))

    # --- the layer suite ----------------------------------------------------------------------

    def layer(self, params: dict[str, Any], arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """A golden elektronn3 case: ``y``, ``ty`` (JVP) and ``dx``, ``dweight``, ``dgain``, ``dbias`` (VJP)."""
        if params.get("library") != "elektronn3":
            raise NotExpressible(f"library={params.get('library')!r}: elektronn3 has only its own layers")
        match = _CLS.fullmatch(params.get("cls", ""))
        if match is None:
            raise NotExpressible(
                f"cls={params.get('cls')!r}: elektronn3 0.1.1 has WSConv1d/2d/3d and WSConvTranspose2d/3d"
            )
        transposed, nd = match.group(1) is not None, int(match.group(2))
        if transposed and nd == 1 and not self.fws:
            raise NotExpressible("elektronn3 0.1.1 has no WSConvTranspose1d")
        kwargs = {k: _tuple(v) for k, v in params["kwargs"].items()}
        call_kw = {"output_size": list(params["output_size"])} if transposed and params.get("output_size") else {}
        if self.fws:
            return self._fws_layer(transposed, nd, kwargs, call_kw, arrays)
        with self._torch.random.fork_rng(devices=[]):  # its kaiming_normal_ init: keep the user's RNG
            module = getattr(self._wsconv, params["cls"])(**kwargs)
        module = module.to(device=self._tb.device, dtype=self._tb.dtype)
        names = [n for n, _ in module.named_parameters()]  # weight, [bias], gain
        self._check_shapes(module, arrays)
        torch = self._torch

        def f(x, *values):
            return torch.func.functional_call(module, dict(zip(names, values)), (x,), call_kw)

        inputs = [arrays["x"]] + [arrays[n] for n in names]
        with _library_refusals(self._dir, f"elektronn3 {params['cls']}.forward"):
            y, ty = self._tb._jvp(f, inputs, [arrays["tx"]] + [arrays["t" + n] for n in names])
        out = {"y": y, "ty": ty}
        if y.shape != np.shape(arrays["dy"]):
            return out  # no VJP of elektronn3's map along a cotangent of another shape
        grads = self._tb._vjp(f, inputs, arrays["dy"])
        out.update({"d" + n: g for n, g in zip(["x"] + names, grads)})
        return out

    def _check_shapes(self, module, arrays):
        """The stored parameters must have the module's shapes (else the case or the adapter is wrong)."""
        for n, p in module.named_parameters():
            if n not in arrays:
                raise ValueError(f"arrays: no {n!r} for {type(module).__name__}'s parameter of shape {tuple(p.shape)}")
            if tuple(np.shape(arrays[n])) != tuple(p.shape):
                raise ValueError(
                    f"arrays[{n!r}].shape={np.shape(arrays[n])}: expected {tuple(p.shape)} "
                    f"(PyTorch layout of {type(module).__name__})"
                )

    def _fws_layer(self, transposed, nd, kwargs, call_kw, arrays) -> dict:
        """``FWS(nn.Conv{N}d / nn.ConvTranspose{N}d)``: y, dx, dbias (gradients at the standardized weight)."""
        torch, tb = self._torch, self._tb
        with torch.random.fork_rng(devices=[]):
            inner = getattr(torch.nn, f"Conv{'Transpose' if transposed else ''}{nd}d")(**kwargs)
        fws = self._wsconv.FWS(inner).to(device=tb.device, dtype=tb.dtype)
        self._check_shapes(inner, arrays)
        with torch.no_grad():
            inner.weight.copy_(tb._t(arrays["weight"]))
            fws.gain.copy_(tb._t(arrays["gain"]))
            if inner.bias is not None:
                inner.bias.copy_(tb._t(arrays["bias"]))
        x = tb._t(arrays["x"]).requires_grad_()
        with _library_refusals(self._dir, "elektronn3 FWS.forward"):
            y = fws(x, **call_kw)  # standardizes inner.weight in place, once
        out = {"y": tb._np(y)}
        if tuple(y.shape) != np.shape(arrays["dy"]):
            return out
        leaves = [x] + ([inner.bias] if inner.bias is not None else [])
        grads = torch.autograd.grad(y, leaves, tb._t(arrays["dy"]))
        out["dx"] = tb._np(grads[0])
        if inner.bias is not None:
            out["dbias"] = tb._np(grads[1])
        return out
