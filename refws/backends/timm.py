r"""The ``timm`` adapter: timm's weight-standardized convolutions under the adapter protocol.

``TimmBackend(precision="float64")`` judges the weight standardization of timm's ``StdConv2d``
and ``ScaledStdConv2d`` (``timm/layers/std_conv.py``) on the ``ws`` suite's cases of their presets:

====================================  ===========================================================
protocol method                       what runs
====================================  ===========================================================
``weight_standardize``, spec          ``StdConv2d(R, O, 1, bias=False, eps=eps)``
``"timm_std"`` (no gain)
``weight_standardize``, spec          ``ScaledStdConv2d(R, O, 1, bias=False, gamma=1.0, eps=eps)``
``"timm_scaled"``                     with the case's gain (``gain_init`` ones when it has none)
``*_vjp`` / ``*_jvp``                 ``torch.autograd.grad`` / ``torch.func.jvp`` through the same
``conv``, ``conv_vjp``, ``conv_jvp``  :class:`~refws.conformance.protocol.NotExpressible` (below)
other presets (``brainstate``, ...)   :class:`~refws.conformance.protocol.NotExpressible`
====================================  ===========================================================

How the standardized weight is read. timm computes it inside ``forward`` (``F.batch_norm`` of
``weight.reshape(1, O, -1)`` in training mode, ``weight=gain * gamma * fan_in ** -0.5`` for the
scaled layer) and passes it straight to ``F.conv2d``; no method returns it. So the adapter runs the
layer's real ``forward`` on an identity input: the weight, with its output axis moved first, is
given to the layer as a ``(O, R, 1, 1)`` kernel (``R`` = the other axes' product; timm flattens
those axes itself, so only the order of the reduction differs from a ``(O, I, kh, kw)`` kernel) and
the input is the ``R x R`` identity as ``(R, R, 1, 1)``; output ``[r, o]`` is then
``1 * w_hat[o, r]`` plus exact zeros, i.e. exactly timm's standardized weight, in any precision.
The parameters are supplied with ``torch.func.functional_call``, so autograd and forward mode see
timm's own arithmetic.

What cannot be expressed:

- ``timm_std`` with a gain: ``StdConv2d`` has none;
- the ``conv`` suite: timm's only convolutions of its own standardize their weight
  (``StdConv2d(x, w)`` is ``conv(x, WS(w))``, never ``conv(x, w)``); its plain convolutions are
  ``torch.nn.Conv2d`` (judged by the ``torch`` backend). The ``conv`` methods raise
  ``NotExpressible`` with that reason; ``conv_transpose`` and the layer suites are not implemented
  (``skipped``).

A weight with one element per output channel is refused by ``F.batch_norm`` in training mode
("Expected more than 1 value per channel"): :class:`~refws.conformance.protocol.Unimplemented`.

Installation. Every timm release from 0.9 on imports ``torchvision`` in ``timm/layers/__init__.py``
(``create_norm.py``, ``norm_act.py``: ``FrozenBatchNorm2d``). Where torchvision cannot be imported
(e.g. PyPI's torchvision beside a CPU-only torch: its compiled ops need the CUDA libraries, and
importing it raises ``RuntimeError: operator torchvision::nms does not exist``), the adapter loads
the installed timm's ``layers/std_conv.py`` and the two modules it imports (``_fx.py``,
``padding.py`` with ``helpers.py``; torch only) directly from timm's folder under a private package
name, without running timm's package ``__init__`` files; ``loaded_from`` says which way was taken
and ``version`` ends in ``"std_conv.py loaded without torchvision"`` then. The code that runs is
timm's either way.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import importlib.util
import math
import os
import sys
import types
from typing import Any, NoReturn

import numpy as np
from numpy.typing import ArrayLike

from ..conformance.protocol import NotExpressible, Unimplemented
from ..ws import WSSpec, resolve_spec

__all__ = ["TimmBackend"]

_SPECS = ("timm_std", "timm_scaled")
_PRIVATE = "_refws_timm_layers"  # package name for timm/layers/ loaded without timm's __init__


def _mentions_torchvision(exc: BaseException) -> bool:
    if "torchvision" in str(exc) or "torchvision" in (getattr(exc, "name", None) or ""):
        return True
    tb = exc.__traceback__
    while tb is not None:
        if f"{os.sep}torchvision{os.sep}" in tb.tb_frame.f_code.co_filename:
            return True
        tb = tb.tb_next
    return False


def _load_std_conv_leaf():
    """timm's ``layers/std_conv.py`` (and what it imports) from the installed timm, without
    executing ``timm/__init__.py`` or ``timm/layers/__init__.py`` (which import torchvision)."""
    if _PRIVATE + ".std_conv" in sys.modules:
        return sys.modules[_PRIVATE + ".std_conv"]
    spec = importlib.util.find_spec("timm")  # locates the package; runs none of its code
    layers = os.path.join(next(iter(spec.submodule_search_locations)), "layers")
    package = types.ModuleType(_PRIVATE, "timm/layers/ loaded by refws without torchvision")
    package.__path__ = [layers]
    package.__package__ = _PRIVATE
    sys.modules[_PRIVATE] = package
    try:
        return importlib.import_module(_PRIVATE + ".std_conv")
    except Exception:
        for name in [n for n in sys.modules if n == _PRIVATE or n.startswith(_PRIVATE + ".")]:
            del sys.modules[name]
        raise


def _import_timm():
    """``(StdConv2d, ScaledStdConv2d, loaded_from)``; ImportError naming the extra."""
    hint = "the timm backend needs timm and PyTorch: pip install 'refws[timm]'"
    try:
        import torch  # noqa: F401
    except ImportError as exc:
        raise ImportError(f"{hint} (import failed: {exc})") from exc
    if importlib.util.find_spec("timm") is None:
        raise ImportError(f"{hint} (timm is not installed)")
    try:
        from timm.layers import ScaledStdConv2d, StdConv2d

        return StdConv2d, ScaledStdConv2d, "timm.layers"
    except Exception as exc:  # torchvision fails in several ways
        if not _mentions_torchvision(exc):
            raise ImportError(f"{hint} (import of timm.layers failed: {type(exc).__name__}: {exc})") from exc
        try:
            leaf = _load_std_conv_leaf()
        except Exception as exc2:
            raise ImportError(
                f"{hint} (timm.layers needs torchvision, which failed: {exc}; loading "
                f"timm/layers/std_conv.py alone failed too: {exc2})"
            ) from exc2
        why = f"timm.layers needs torchvision, which cannot be imported here: {type(exc).__name__}: {exc}"
        return leaf.StdConv2d, leaf.ScaledStdConv2d, f"timm/layers/std_conv.py ({why})"


class TimmBackend:
    """timm's ``StdConv2d`` / ``ScaledStdConv2d`` weight standardization under test (CPU).

    Parameters
    ----------
    precision : {"float64", "float32"}
        The dtype of the layer and of every tensor.

    Attributes
    ----------
    name : ``"timm"``
    precision : str
    version : str
        ``"<timm version> (torch <version>)"``, plus ``"; std_conv.py loaded without torchvision"``
        when timm's package could not be imported.
    loaded_from : str
        ``"timm.layers"``, or which file was loaded and why.

    Raises
    ------
    ImportError
        if timm or PyTorch is missing (the message says ``pip install 'refws[timm]'``).
    ValueError
        for a precision other than "float64" / "float32".
    """

    name = "timm"

    def __init__(self, precision: str = "float64") -> None:
        self._std, self._scaled, self.loaded_from = _import_timm()
        from .torch import TorchBackend  # tensors in/out, autograd and forward-mode calls

        self._tb = TorchBackend(precision)
        self._torch = self._tb._torch
        self.precision = precision
        extra = "" if self.loaded_from == "timm.layers" else "; std_conv.py loaded without torchvision"
        self.version = f"{importlib.metadata.version('timm')} (torch {self._torch.__version__}){extra}"

    def __repr__(self) -> str:
        return f"TimmBackend(precision={self.precision!r})"

    # --- weight standardization ---------------------------------------------------------------

    def _ws_fn(self, w_shape, has_gain, eps, out_axis, spec):
        """``f(w[, gain])``: timm's standardized weight, read from the layer's forward (see above)."""
        if not isinstance(spec, str) or spec not in _SPECS:
            name = spec if isinstance(spec, str) else getattr(spec, "name", spec)
            raise NotExpressible(
                f"spec={name!r}: timm's layers compute only the presets {_SPECS} (StdConv2d, ScaledStdConv2d)"
            )
        preset = resolve_spec(spec)
        if spec == "timm_std" and has_gain:
            raise NotExpressible("timm's StdConv2d has no gain (spec='timm_std' with a gain)")
        ndim = len(w_shape)
        if not -ndim <= out_axis < ndim:
            raise ValueError(f"out_axis={out_axis}: expected an axis of w (ndim {ndim})")
        axis = out_axis % ndim
        c_out = w_shape[axis]
        rest = math.prod(w_shape) // c_out if c_out else 0
        eps = preset.eps if eps is None else float(eps)
        torch, tb = self._torch, self._tb
        with torch.random.fork_rng(devices=[]):  # the layers' init draws: keep the user's RNG
            if spec == "timm_std":
                module = self._std(rest, c_out, 1, bias=False, eps=eps)
            else:
                module = self._scaled(rest, c_out, 1, bias=False, gamma=preset.fixed_scale, eps=eps)
        module = module.to(device=tb.device, dtype=tb.dtype)
        eye = torch.eye(rest, dtype=tb.dtype, device=tb.device).reshape(rest, rest, 1, 1)
        moved = (c_out,) + tuple(s for i, s in enumerate(w_shape) if i != axis)
        ones = torch.ones(c_out, 1, 1, 1, dtype=tb.dtype, device=tb.device)

        def f(w, gain=None):
            values = {"weight": w.movedim(axis, 0).reshape(c_out, rest, 1, 1)}
            if spec == "timm_scaled":
                values["gain"] = ones if gain is None else gain.reshape(c_out, 1, 1, 1)
            try:
                y = torch.func.functional_call(module, values, (eye,))  # y[r, o] = w_hat[o, r]
            except (ValueError, RuntimeError) as exc:
                if "more than 1 value per channel" in str(exc):
                    raise Unimplemented(
                        f"timm's {type(module).__name__} (F.batch_norm in training mode) "
                        f"refuses one weight element per output channel: {exc}"
                    ) from exc
                raise
            return y.reshape(rest, c_out).transpose(0, 1).reshape(moved).movedim(0, axis)

        return f

    def weight_standardize(
        self,
        w: ArrayLike,
        gain: ArrayLike | None = None,
        eps: float | None = None,
        *,
        out_axis: int = -1,
        spec: str | WSSpec = "timm_std",
    ) -> np.ndarray:
        """``w_hat`` by the layer's forward (identity input)."""
        f = self._ws_fn(np.shape(w), gain is not None, eps, out_axis, spec)
        return self._tb._forward(f, w) if gain is None else self._tb._forward(f, w, gain)

    def weight_standardize_vjp(
        self,
        w: ArrayLike,
        dw_hat: ArrayLike,
        gain: ArrayLike | None = None,
        eps: float | None = None,
        *,
        out_axis: int = -1,
        spec: str | WSSpec = "timm_std",
    ) -> tuple[np.ndarray, np.ndarray | None]:
        """``(dw, dgain)`` (``dgain`` None without a gain) by ``torch.autograd.grad``."""
        f = self._ws_fn(np.shape(w), gain is not None, eps, out_axis, spec)
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
        spec: str | WSSpec = "timm_std",
    ) -> tuple[np.ndarray, np.ndarray]:
        """``(w_hat, tw_hat)`` by ``torch.func.jvp`` (``tgain=None`` is a zero tangent)."""
        f = self._ws_fn(np.shape(w), gain is not None, eps, out_axis, spec)
        if gain is None:
            if tgain is not None:
                raise ValueError("tgain was given but gain is None: expected a gain to carry the tangent")
            return self._tb._jvp(f, (w,), (tw,))
        return self._tb._jvp(f, (w, gain), (tw, np.zeros(np.shape(gain)) if tgain is None else tgain))

    # --- convolution: not timm's to say ---------------------------------------------------------

    _NO_CONV = (
        "timm has no plain convolution of its own: StdConv2d / ScaledStdConv2d always convolve "
        "with the standardized weight (conv(x, WS(w)), never conv(x, w)), and its other "
        "convolutions are torch.nn.Conv2d (judge those with the torch backend)"
    )

    def conv(self, x: ArrayLike, w: ArrayLike, *args: Any, **kwargs: Any) -> NoReturn:
        raise NotExpressible(self._NO_CONV)

    def conv_vjp(self, x: ArrayLike, w: ArrayLike, dy: ArrayLike, *args: Any, **kwargs: Any) -> NoReturn:
        raise NotExpressible(self._NO_CONV)

    def conv_jvp(self, x: ArrayLike, w: ArrayLike, tx: ArrayLike, tw: ArrayLike, *args: Any, **kwargs: Any) -> NoReturn:
        raise NotExpressible(self._NO_CONV)
