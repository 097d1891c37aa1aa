"""Shared machinery of the layer mirrors: validated parameter dicts, initial values, masks.

A mirror keeps its parameters as plain float64 arrays in ``layer.params``, a :class:`ParamDict`
whose keys and shapes are fixed at construction (the mirrored library's names and shapes).
Assigning an array of another shape raises, so replaying a backend's weights either works
exactly or fails loudly::

    layer.params["weight"] = backend_weight          # one parameter
    layer.params = {"weight": w, "bias": b}          # several at once (a subset is allowed)

Every mirror offers ``layer(x)`` and ``layer.vjp(x, dy) -> (dx, grads)`` with
``grads.keys() == layer.params.keys()`` and each gradient shaped like its parameter.
"""

from __future__ import annotations

import inspect
import numbers
from collections.abc import Mapping, MutableMapping

import numpy as np

from ..arrays import as_float64
from ..ws import weight_standardize, weight_standardize_vjp

__all__ = [
    "ParamDict",
    "Layer",
    "WeightPipeline",
    "make_rng",
    "initial_value",
    "resolve_mask",
    "check_mask_shape",
    "check_positive_int",
    "spatial_dims",
    "fixed_rank",
]


class ParamDict(MutableMapping):
    """A dict of float64 arrays with a fixed set of keys and fixed shapes.

    Parameters
    ----------
    values : mapping of name -> array
        The initial values; their shapes become the required shapes.
    children : mapping of prefix -> ParamDict, optional
        Parameters of wrapped layers, exposed as ``"prefix.name"`` (PyTorch's naming for a
        submodule's parameters) and stored in the child, so setting them here sets them there.

    Raises
    ------
    KeyError
        for a name that is not a parameter of the layer (also on deletion: the set is fixed).
    ValueError
        for a value of the wrong shape; TypeError for a complex or object array.
    """

    def __init__(self, values: Mapping, children: Mapping | None = None):
        self._values = {name: as_float64(v, f"params[{name!r}]").copy() for name, v in values.items()}
        self._children = dict(children or {})

    def _route(self, key: str):
        if key in self._values:
            return self, key
        prefix, _, rest = key.partition(".")
        if rest and prefix in self._children and rest in self._children[prefix]:
            return self._children[prefix], rest
        raise KeyError(f"params has no parameter {key!r}; its parameters are {list(self)}")

    def __getitem__(self, key):
        owner, name = self._route(key)
        return owner._values[name] if owner is self else owner[name]

    def __setitem__(self, key, value):
        owner, name = self._route(key)
        if owner is not self:
            owner[name] = value
        else:
            self._values[name] = self._checked(key, value).copy()

    def _checked(self, key, value) -> np.ndarray:
        arr = as_float64(value, f"params[{key!r}]")
        expected = self[key].shape
        if arr.shape != expected:
            raise ValueError(
                f"params[{key!r}] has shape {arr.shape}: expected {expected} "
                "(the mirrored layer's shape for this parameter)"
            )
        return arr

    def __delitem__(self, key):
        raise KeyError(f"params[{key!r}] cannot be deleted: the parameter set of a layer is fixed")

    def __iter__(self):
        yield from self._values
        for prefix, child in self._children.items():
            yield from (f"{prefix}.{name}" for name in child)

    def __len__(self):
        return len(self._values) + sum(len(c) for c in self._children.values())

    @property
    def shapes(self) -> dict:
        """``{name: shape}`` for every parameter."""
        return {name: self[name].shape for name in self}

    def update_from(self, values: Mapping) -> None:
        """Set several parameters; all are validated before any is changed."""
        unknown = [k for k in values if k not in self]
        if unknown:
            raise KeyError(f"params has no parameter(s) {unknown}; its parameters are {list(self)}")
        checked = {key: self._checked(key, value) for key, value in values.items()}
        for key, arr in checked.items():
            self[key] = arr

    def __repr__(self):
        return f"ParamDict({self.shapes})"


class Layer:
    """Base of every mirror: ``params``, ``__call__`` -> ``forward`` and ``vjp``."""

    _params: ParamDict

    @property
    def params(self) -> ParamDict:
        """The parameters as float64 arrays under the mirrored library's names."""
        return self._params

    @params.setter
    def params(self, values: Mapping) -> None:
        self._params.update_from(values)

    def forward(self, x, *args, **kwargs):  # pragma: no cover - abstract
        raise NotImplementedError

    def vjp(self, x, dy, *args, **kwargs):  # pragma: no cover - abstract
        raise NotImplementedError

    def __call__(self, x, *args, **kwargs):
        return self.forward(x, *args, **kwargs)

    def zero_grads(self) -> dict:
        """Zero arrays keyed and shaped like ``params``."""
        return {name: np.zeros(shape) for name, shape in self._params.shapes.items()}

    def __repr__(self):
        return f"{type(self).__name__}({self._params.shapes})"


def check_positive_int(value, name: str) -> int:
    """``value`` must be an int >= 1 (bools are refused)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise ValueError(f"{name}={value!r}: expected a positive int")
    return int(value)


def spatial_dims(layer, given) -> int:
    """``num_spatial_dims`` of ``layer``: fixed by its 1d/2d/3d class, or given to the general class."""
    fixed = type(layer).num_spatial_dims
    if given is None:
        if fixed is None:
            raise ValueError(
                f"num_spatial_dims=None: the general {type(layer).__name__} needs "
                "num_spatial_dims (or use one of its 1d/2d/3d classes)"
            )
        return fixed
    given = check_positive_int(given, "num_spatial_dims")
    if fixed is not None and given != fixed:
        raise ValueError(f"num_spatial_dims={given}: {type(layer).__name__} is {fixed}-d")
    return given


def fixed_rank(base, n: int, module: str, doc: str):
    """A thin subclass of ``base`` with ``num_spatial_dims = n`` (the libraries' Conv2d etc.)."""
    name = f"{base.__name__}{n}d"
    return type(
        name,
        (base,),
        {"num_spatial_dims": n, "__module__": module, "__doc__": f"``{name}``: {doc} See :class:`{base.__name__}`."},
    )


def make_rng(rng, keep_none: bool = False):
    """``rng`` may be a Generator, an int seed or None (fresh OS entropy, or None if ``keep_none``)."""
    if isinstance(rng, np.random.Generator) or (rng is None and keep_none):
        return rng
    if rng is None or (isinstance(rng, numbers.Integral) and not isinstance(rng, bool)):
        return np.random.default_rng(None if rng is None else int(rng))
    raise TypeError(f"rng={rng!r}: expected a numpy.random.Generator, an int seed or None")


def _draw(fn, shape: tuple, rng):
    """``fn(shape, rng=rng)``; without ``rng`` (None, or ``fn`` takes none) ``fn(shape)``, so an
    initializer's own generator is used, as brainstate's seeded default initializers do."""
    return fn(shape, rng=rng) if rng is not None and _accepts_rng(fn) else fn(shape)


def _accepts_rng(fn) -> bool:
    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return False
    return "rng" in params or any(p.kind is p.VAR_KEYWORD for p in params.values())


def initial_value(init, shape: tuple, name: str, rng) -> np.ndarray:
    """The initial value of one parameter from brainstate-style ``init``.

    ``init`` is an initializer (any callable ``init(shape)``; ``rng=`` is passed when ``rng`` is
    not None and the callable accepts it, as the :mod:`refws.init` initializers do), an array of
    exactly ``shape``, or a scalar (filled in: brainstate would keep a bare scalar, which no
    convolution accepts).
    """
    if init is None:
        raise ValueError(f"{name}=None: expected an initializer, an array of shape {tuple(shape)} or a scalar")
    value = _draw(init, shape, rng) if callable(init) else init
    arr = as_float64(value, name)
    if arr.ndim == 0:
        return np.full(shape, float(arr))
    if arr.shape != tuple(shape):
        raise ValueError(f"{name} gives shape {arr.shape}: expected {tuple(shape)}")
    return arr.copy()


def check_mask_shape(mask_shape: tuple, weight_shape: tuple, name: str = "w_mask") -> None:
    """A mask must broadcast to the weight's shape without changing it."""
    try:
        ok = np.broadcast_shapes(tuple(mask_shape), tuple(weight_shape)) == tuple(weight_shape)
    except ValueError:
        ok = False
    if not ok:
        raise ValueError(
            f"{name} has shape {tuple(mask_shape)}: expected a shape that broadcasts to "
            f"the weight shape {tuple(weight_shape)}"
        )


def resolve_mask(w_mask, call_shape: tuple, weight_shape: tuple, rng):
    """brainstate's ``init.param(w_mask, call_shape)`` followed by our broadcast check.

    ``None`` stays ``None``; a callable is called with ``call_shape``; the result (or the given
    array or scalar) must broadcast to ``weight_shape``.
    """
    if w_mask is None:
        return None
    value = _draw(w_mask, call_shape, rng) if callable(w_mask) else w_mask
    mask = as_float64(value, "w_mask")
    check_mask_shape(mask.shape, weight_shape)
    return mask


class WeightPipeline:
    """The kernel a layer actually uses, ``w_eff = WS(weight, gain) * mask``, and its VJP.

    Parameters
    ----------
    mask : float64 array broadcasting to the weight, or None
    ws : dict of keyword arguments of :func:`refws.weight_standardize` (``spec``, ``out_axis``,
        ``eps``), or None for no standardization. The gain is ``params["gain"]`` when present.
    """

    def __init__(self, mask, ws):
        self.mask, self.ws = mask, ws

    def _ws_kwargs(self, eps):
        return self.ws if eps is None else dict(self.ws, eps=eps)

    def effective(self, params, eps=None) -> np.ndarray:
        """``w_eff``; ``eps`` overrides the standardization's eps (elektronn3's ``forward(x, eps)``)."""
        w = params["weight"]
        if self.ws is not None:
            w = weight_standardize(w, params.get("gain"), **self._ws_kwargs(eps))
        return w if self.mask is None else w * self.mask

    def grads(self, params, dw_eff, eps=None) -> dict:
        """``{"weight": dw}`` (and ``"gain"`` when the layer has one) from the cotangent of ``w_eff``."""
        dw = dw_eff if self.mask is None else dw_eff * self.mask
        if self.ws is None:
            return {"weight": dw}
        gain = params.get("gain")
        dw, dgain = weight_standardize_vjp(params["weight"], dw, gain, **self._ws_kwargs(eps))
        return {"weight": dw} if gain is None else {"weight": dw, "gain": dgain}
