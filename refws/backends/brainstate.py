r"""The ``brainstate`` adapter: brainstate's own layers under the adapter protocol.

``BrainstateBackend(precision="float64")`` implements ``layer(params, arrays)`` for the
``brainstate`` layer suite by building the real brainstate 0.6.0 layer and differentiating it with
brainstate's own transforms:

=======================================  =========================================================
golden ``cls``                           what runs
=======================================  =========================================================
``Conv1d/2d/3d``, ``ScaledWSConv1d/2d/3d``  ``brainstate.nn.<cls>(**kwargs, w_init=weight,
``ConvTranspose1d/2d/3d``                ``b_init=bias or None, w_mask=mask)``; the gain of the
``Linear``, ``ScaledWSLinear``           ScaledWS layers is written into ``layer.weight.value``
forward and VJP                          ``brainstate.transform.vjp(layer, x, grad_states=layer.weight)``:
                                         ``y``, then ``dx`` and ``d<param>`` for ``dy``
JVP                                      ``brainstate.transform.jvp`` of ``(x, params) -> layer(x)``
                                         (the function writes ``params`` into ``layer.weight.value``,
                                         the brainstate way to differentiate with respect to a state)
``weight_standardize(_vjp/_jvp)``,       ``brainstate.nn.weight_standardization(w, eps, gain, out_axis)``
spec ``"brainstate"`` only               (the gain reshaped to the statistics' keepdims shape, as
                                         the ScaledWS layers store it); ``jax.vjp`` / ``jax.jvp`` of
                                         it (a pure function: no state to thread through)
=======================================  =========================================================

The golden kwargs say *whether* a bias exists (``b_init=True`` for the convolutions; the linear
layers have one unless ``b_init=False``, brainstate's ``ZeroInit`` default); the stored arrays
(brainstate's layouts: HWIO kernels, ``(*k, C_out, C_in // groups)`` for ConvTranspose, biases and
gains with their broadcast shapes) are passed as the initial values.

Precision. Each call runs inside ``brainstate.environ.context(precision=64 | 32)``, brainstate's own
switch, which sets jax's ``jax_enable_x64`` for the process while it lasts; the flag is restored
on exit (and checked: brainstate's ``environ.set(precision=32)`` turns x64 off for the whole
process, so the adapter resets it to what it was before the call if brainstate did not). At
float32 every array is converted to float32 (brainstate's default environment: x64 off).

brainstate needs Python >= 3.12. A ``NotImplementedError`` from brainstate or jax for a case
becomes :class:`~refws.conformance.protocol.Unimplemented`; a class outside the suite (or a layer
of another library) :class:`~refws.conformance.protocol.NotExpressible`.
"""

from __future__ import annotations

import re
from contextlib import contextmanager
from typing import Any

import numpy as np
from numpy.typing import ArrayLike

from ..conformance.protocol import NotExpressible, Unimplemented
from ..ws import WSSpec

__all__ = ["BrainstateBackend"]

_PRECISIONS = {"float64": 64, "float32": 32}
_CLS = re.compile(r"(ScaledWS)?(Linear|Conv[123]d)|ConvTranspose[123]d")
_TUPLE_KWARGS = ("in_size", "kernel_size", "stride", "lhs_dilation", "rhs_dilation")


def _import_brainstate():
    try:
        import brainstate
        import jax
        import jax.numpy
    except ImportError as exc:
        raise ImportError(
            "the brainstate backend needs brainstate 0.6.0 (Python >= 3.12): "
            f"pip install 'refws[brainstate]' (import failed: {exc})"
        ) from exc
    return brainstate, jax


def _as_tuple(v):
    return tuple(v) if isinstance(v, list) else v


def _padding(v):
    """brainstate's padding: a string, an int, N ints, one pair or N pairs (lists -> tuples)."""
    if isinstance(v, list):
        return [tuple(p) if isinstance(p, list) else p for p in v] if any(isinstance(p, list) for p in v) else tuple(v)
    return v


class BrainstateBackend:
    """brainstate 0.6.0's layers under test, in float64 or float32 (CPU, jax's default device).

    Parameters
    ----------
    precision : {"float64", "float32"}
        brainstate's ``environ`` precision (64 or 32) the layer is built and run under.

    Attributes
    ----------
    name : ``"brainstate"``
    precision : str
    version : str
        ``"<brainstate version> (jax <version>)"``.

    Raises
    ------
    ImportError
        if brainstate or jax is missing (the message says ``pip install 'refws[brainstate]'``).
    ValueError
        for a precision other than "float64" / "float32".
    """

    name = "brainstate"

    def __init__(self, precision: str = "float64") -> None:
        if precision not in _PRECISIONS:
            raise ValueError(f"precision={precision!r}: expected one of {tuple(_PRECISIONS)}")
        self._bs, self._jax = _import_brainstate()
        self.precision = precision
        self.version = f"{self._bs.__version__} (jax {self._jax.__version__})"

    def __repr__(self) -> str:
        return f"BrainstateBackend(precision={self.precision!r})"

    @contextmanager
    def _environment(self):
        """brainstate's precision context; jax's x64 flag as it was afterwards, whatever happens."""
        config = self._jax.config
        before = bool(config.jax_enable_x64)
        try:
            with self._bs.environ.context(precision=_PRECISIONS[self.precision]):
                yield
        except NotImplementedError as exc:
            raise Unimplemented(f"brainstate/jax has not implemented this case: {exc}") from exc
        finally:
            if bool(config.jax_enable_x64) != before:
                config.update("jax_enable_x64", before)

    def _array(self, a):
        return self._jax.numpy.asarray(np.asarray(a, dtype=self.precision))

    # --- weight standardization (brainstate.nn.weight_standardization) ------------------------

    def _ws_fn(self, w_shape, eps, out_axis, spec):
        """``f(w, gain=None)``: brainstate's function, the gain in the keepdims shape of its statistics."""
        if spec != "brainstate":
            name = spec if isinstance(spec, str) else getattr(spec, "name", spec)
            raise NotExpressible(
                f"spec={name!r}: brainstate.nn.weight_standardization computes the 'brainstate' preset only"
            )
        ndim = len(w_shape)
        if not -ndim <= out_axis < ndim:
            raise ValueError(f"out_axis={out_axis}: expected an axis of w (ndim {ndim})")
        axis = out_axis % ndim
        stat_shape = tuple(s if i == axis else 1 for i, s in enumerate(w_shape))
        eps = 1e-4 if eps is None else float(eps)  # brainstate's default (the preset's)
        ws = self._bs.nn.weight_standardization

        def f(w, gain=None):
            return ws(w, eps, None if gain is None else gain.reshape(stat_shape), axis)

        return f

    def _primals(self, *arrays):
        return tuple(self._array(a) for a in arrays if a is not None)

    def weight_standardize(
        self,
        w: ArrayLike,
        gain: ArrayLike | None = None,
        eps: float | None = None,
        *,
        out_axis: int = -1,
        spec: str | WSSpec = "brainstate",
    ) -> np.ndarray:
        """``w_hat`` by ``brainstate.nn.weight_standardization``."""
        f = self._ws_fn(np.shape(w), eps, out_axis, spec)
        with self._environment():
            return np.asarray(f(*self._primals(w, gain)))

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
        """``(dw, dgain)`` (``dgain`` None without a gain) by ``jax.vjp``."""
        f = self._ws_fn(np.shape(w), eps, out_axis, spec)
        with self._environment():
            _, pullback = self._jax.vjp(f, *self._primals(w, gain))
            grads = [np.asarray(g) for g in pullback(self._array(dw_hat))]
        return grads[0], (grads[1] if gain is not None else None)

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
        """``(w_hat, tw_hat)`` by ``jax.jvp`` (``tgain=None`` is a zero tangent)."""
        f = self._ws_fn(np.shape(w), eps, out_axis, spec)
        if gain is None and tgain is not None:
            raise ValueError("tgain was given but gain is None: expected a gain to carry the tangent")
        if gain is not None and tgain is None:
            tgain = np.zeros(np.shape(gain))
        with self._environment():
            y, ty = self._jax.jvp(f, self._primals(w, gain), self._primals(tw, tgain))
        return np.asarray(y), np.asarray(ty)

    # --- the layer suite ----------------------------------------------------------------------

    def layer(self, params: dict[str, Any], arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """A golden brainstate case: ``y``, ``dx``, ``d<param>`` (VJP for ``dy``) and ``ty`` (JVP)."""
        if params.get("library") != "brainstate":
            raise NotExpressible(f"library={params.get('library')!r}: brainstate has only its own layers")
        cls = params.get("cls", "")
        if _CLS.fullmatch(cls) is None:
            raise NotExpressible(
                f"cls={cls!r}: the brainstate suite has Conv1d/2d/3d, ScaledWSConv1d/2d/3d, "
                "ConvTranspose1d/2d/3d, Linear and ScaledWSLinear"
            )
        bs = self._bs
        with self._environment():
            layer = self._build(cls, params, arrays)
            values = dict(layer.weight.value)
            names = sorted(values)  # weight, [bias], [gain]
            x = self._array(arrays["x"])
            y, pullback = bs.transform.vjp(layer, x, grad_states=layer.weight)
            cts, dx = pullback(self._array(arrays["dy"]))

            def f(x, p):
                layer.weight.value = p
                return layer(x)

            tangents = {n: self._array(arrays["t" + n]) for n in names}
            _, ty = bs.transform.jvp(f, (x, values), (self._array(arrays["tx"]), tangents))
            out = {"y": np.asarray(y), "dx": np.asarray(dx), "ty": np.asarray(ty)}
            out.update({"d" + n: np.asarray(cts[n]) for n in names})
        return out

    def _build(self, cls, params, arrays):
        """``brainstate.nn.<cls>`` with the case's kwargs and the stored parameters as initial values."""
        kw = dict(params["kwargs"])
        linear = cls.endswith("Linear")
        has_bias = bool(kw.pop("b_init", linear))  # Linear's default is a ZeroInit bias
        kw = {k: (_padding(v) if k == "padding" else _as_tuple(v) if k in _TUPLE_KWARGS else v) for k, v in kw.items()}
        mask = self._array(arrays["w_mask"]) if params.get("mask") else None
        layer = getattr(self._bs.nn, cls)(
            **kw,
            w_init=self._array(arrays["weight"]),
            b_init=self._array(arrays["bias"]) if has_bias else None,
            w_mask=mask,
        )
        value = dict(layer.weight.value)
        if "gain" in value:
            value["gain"] = self._array(arrays["gain"])
        self._check_shapes(cls, value, arrays)
        layer.weight.value = value
        return layer

    @staticmethod
    def _check_shapes(layer_cls, value, arrays):
        for n, v in value.items():
            if n not in arrays or tuple(np.shape(arrays[n])) != tuple(v.shape):
                raise ValueError(
                    f"arrays[{n!r}]: expected shape {tuple(v.shape)} for brainstate {layer_cls}'s "
                    f"{n!r}, got {np.shape(arrays[n]) if n in arrays else 'none'}"
                )
