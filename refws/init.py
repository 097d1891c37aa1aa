r"""Weight initializers of the mirrored libraries, seeded by a ``numpy.random.Generator``.

brainstate (``XavierNormal``, ``KaimingNormal``, ``ZeroInit``, ``Constant``) is jax-style variance
scaling. For a shape ``(..., in, out)`` (``in_axis=-2``, ``out_axis=-1``):

.. math::

    rf = \frac{\prod \mathrm{shape}}{\mathrm{shape}[in] \cdot \mathrm{shape}[out]}, \quad
    \mathrm{fan\_in} = \mathrm{shape}[in]\, rf, \quad \mathrm{fan\_out} = \mathrm{shape}[out]\, rf,

``variance = scale / fan`` (``fan_avg`` = the mean of the two), and for ``"truncated_normal"``
samples ``z * sqrt(variance) / 0.87962566103423978`` with ``z`` a standard normal truncated to
``[-2, 2]`` (0.8796... is that truncated normal's std, so the result has the target variance).
XavierNormal: scale 1, fan_avg; KaimingNormal: scale 2, fan_in.

PyTorch's ``kaiming_normal_`` (elektronn3's weights) reads OIHW shapes: ``fan_in = shape[1] * rf``,
``fan_out = shape[0] * rf`` with ``rf = prod(shape[2:])``, std ``gain / sqrt(fan)``, plain normal.

Random numbers come from numpy, so values differ from jax's / torch's streams: only the
distributions match. Every result is float64.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence

import numpy as np

__all__ = [
    "VarianceScaling",
    "XavierNormal",
    "KaimingNormal",
    "ZeroInit",
    "Constant",
    "compute_fans",
    "torch_fans",
    "calculate_gain",
    "kaiming_normal_",
    "truncated_normal",
    "TRUNCATED_NORMAL_STD",
]

# std of a standard normal truncated to [-2, 2] (jax's variance_scaling constant)
TRUNCATED_NORMAL_STD = 0.87962566103423978
MODES = ("fan_in", "fan_out", "fan_avg")
DISTRIBUTIONS = ("truncated_normal", "normal", "uniform")


def _as_shape(shape) -> tuple[int, ...]:
    if isinstance(shape, numbers.Integral) and not isinstance(shape, bool):
        shape = (shape,)
    try:
        dims = tuple(shape)
    except TypeError:
        raise TypeError(f"shape={shape!r}: expected an int or a sequence of ints") from None
    if not all(isinstance(d, numbers.Integral) and not isinstance(d, bool) and int(d) >= 0 for d in dims):
        raise ValueError(f"shape={shape!r}: expected ints >= 0")
    return tuple(int(d) for d in dims)


def _as_rng(rng) -> np.random.Generator:
    """A Generator as given; an int seeds a new one; None is ``default_rng(0)`` (reproducible)."""
    if isinstance(rng, np.random.Generator):
        return rng
    if rng is None or (isinstance(rng, numbers.Integral) and not isinstance(rng, bool)):
        return np.random.default_rng(0 if rng is None else int(rng))
    raise TypeError(f"rng={rng!r}: expected a numpy.random.Generator, an int seed or None")


def _check_mode(mode) -> str:
    if mode not in MODES:
        raise ValueError(f"mode={mode!r}: expected one of {MODES}")
    return mode


def _pick_fan(fan_in: float, fan_out: float, mode: str) -> float:
    return {"fan_in": fan_in, "fan_out": fan_out, "fan_avg": (fan_in + fan_out) / 2}[mode]


def compute_fans(shape: int | Sequence[int], in_axis: int = -2, out_axis: int = -1) -> tuple[float, float]:
    """brainstate / jax fans: ``(shape[in_axis] * rf, shape[out_axis] * rf)``, ``rf`` the rest."""
    shape = _as_shape(shape)
    if len(shape) < 2:
        raise ValueError(f"shape={shape}: expected at least 2 dimensions to compute fan_in and fan_out")
    n_in, n_out = shape[in_axis], shape[out_axis]
    rf = math.prod(shape) / n_in / n_out if n_in and n_out else 0.0
    return n_in * rf, n_out * rf


def torch_fans(shape: int | Sequence[int]) -> tuple[int, int]:
    """PyTorch ``_calculate_fan_in_and_fan_out``: ``(shape[1] * rf, shape[0] * rf)``, ``rf = prod(shape[2:])``."""
    shape = _as_shape(shape)
    if len(shape) < 2:
        raise ValueError(f"shape={shape}: fan in and fan out can not be computed for fewer than 2 dimensions")
    rf = math.prod(shape[2:])
    return shape[1] * rf, shape[0] * rf


def truncated_normal(
    rng: np.random.Generator, shape: int | Sequence[int], lower: float = -2.0, upper: float = 2.0
) -> np.ndarray:
    """Standard normal samples conditioned on ``[lower, upper]`` (rejection sampling)."""
    out = rng.standard_normal(shape)
    bad = (out < lower) | (out > upper)
    while bad.any():
        out[bad] = rng.standard_normal(int(bad.sum()))
        bad = (out < lower) | (out > upper)
    return out


class VarianceScaling:
    """brainstate / jax ``variance_scaling``: samples of variance ``scale / fan``.

    Call as ``init(shape, rng=None) -> ndarray`` (float64, ``shape``).

    Parameters
    ----------
    scale : float > 0
    mode : {"fan_in", "fan_out", "fan_avg"}
    in_axis, out_axis : int
        Axes of the input and output sizes (-2, -1 for HWIO kernels and (in, out) matrices).
    distribution : {"truncated_normal", "normal", "uniform"}
        ``"uniform"`` is ``U(-sqrt(3 var), sqrt(3 var))``.
    rng : numpy.random.Generator, int or None
        Used by calls that pass no ``rng``; an int seeds a Generator, None is ``default_rng(0)``.
        The Generator advances with each call.
    """

    def __init__(self, scale, mode, in_axis=-2, out_axis=-1, distribution="truncated_normal", rng=None):
        if isinstance(scale, bool) or not isinstance(scale, numbers.Real) or not scale > 0:
            raise ValueError(f"scale={scale!r}: expected a real number > 0")
        if distribution not in DISTRIBUTIONS:
            raise ValueError(f"distribution={distribution!r}: expected one of {DISTRIBUTIONS}")
        self.scale, self.mode = float(scale), _check_mode(mode)
        self.in_axis, self.out_axis, self.distribution = in_axis, out_axis, distribution
        self.rng = _as_rng(rng)

    def __call__(self, shape, rng=None) -> np.ndarray:
        shape = _as_shape(shape)
        rng = self.rng if rng is None else _as_rng(rng)
        fan = _pick_fan(*compute_fans(shape, self.in_axis, self.out_axis), self.mode)
        if math.prod(shape) == 0:
            return np.zeros(shape)
        variance = self.scale / fan
        if self.distribution == "truncated_normal":
            return truncated_normal(rng, shape) * (math.sqrt(variance) / TRUNCATED_NORMAL_STD)
        if self.distribution == "normal":
            return rng.standard_normal(shape) * math.sqrt(variance)
        return rng.uniform(-1.0, 1.0, shape) * math.sqrt(3 * variance)

    def __repr__(self):
        return (
            f"{type(self).__name__}(scale={self.scale}, mode={self.mode!r}, in_axis={self.in_axis}, "
            f"out_axis={self.out_axis}, distribution={self.distribution!r})"
        )


class XavierNormal(VarianceScaling):
    """brainstate ``XavierNormal``: scale 1, fan_avg, truncated normal."""

    def __init__(self, scale=1.0, mode="fan_avg", in_axis=-2, out_axis=-1, distribution="truncated_normal", rng=None):
        super().__init__(scale, mode, in_axis, out_axis, distribution, rng)


class KaimingNormal(VarianceScaling):
    """brainstate ``KaimingNormal``: scale 2, fan_in, truncated normal."""

    def __init__(self, scale=2.0, mode="fan_in", in_axis=-2, out_axis=-1, distribution="truncated_normal", rng=None):
        super().__init__(scale, mode, in_axis, out_axis, distribution, rng)


class Constant:
    """brainstate ``Constant(value)``: every element ``value``; ``rng`` is accepted and unused."""

    def __init__(self, value=0.0):
        if isinstance(value, bool) or not isinstance(value, numbers.Real):
            raise TypeError(f"value={value!r}: expected a real number")
        self.value = float(value)

    def __call__(self, shape, rng=None) -> np.ndarray:
        return np.full(_as_shape(shape), self.value)

    def __repr__(self):
        return f"{type(self).__name__}(value={self.value})"


class ZeroInit(Constant):
    """brainstate ``ZeroInit``: zeros."""

    def __init__(self):
        super().__init__(0.0)

    def __repr__(self):
        return "ZeroInit()"


_LINEAR_GAIN = (
    "linear",
    "conv1d",
    "conv2d",
    "conv3d",
    "conv_transpose1d",
    "conv_transpose2d",
    "conv_transpose3d",
    "sigmoid",
)


def calculate_gain(nonlinearity: str, a: float | None = None) -> float:
    """PyTorch ``nn.init.calculate_gain``: 1 for linear/conv/sigmoid, 5/3 tanh, sqrt(2) relu,
    ``sqrt(2 / (1 + a**2))`` leaky_relu (``a`` defaults to 0.01 there), 3/4 selu."""
    if nonlinearity in _LINEAR_GAIN:
        return 1.0
    if nonlinearity == "tanh":
        return 5.0 / 3
    if nonlinearity == "relu":
        return math.sqrt(2.0)
    if nonlinearity == "selu":
        return 3.0 / 4
    if nonlinearity == "leaky_relu":
        slope = 0.01 if a is None else a
        if isinstance(slope, bool) or not isinstance(slope, numbers.Real):
            raise ValueError(f"a={a!r}: expected a real negative slope")
        return math.sqrt(2.0 / (1 + float(slope) ** 2))
    raise ValueError(
        f"nonlinearity={nonlinearity!r}: expected one of {_LINEAR_GAIN + ('tanh', 'relu', 'leaky_relu', 'selu')}"
    )


def kaiming_normal_(
    shape: int | Sequence[int],
    rng: np.random.Generator | int | None = None,
    a: float = 0,
    mode: str = "fan_in",
    nonlinearity: str = "leaky_relu",
) -> np.ndarray:
    """PyTorch ``nn.init.kaiming_normal_`` as a sampler: ``N(0, std**2)`` with
    ``std = calculate_gain(nonlinearity, a) / sqrt(fan)`` and :func:`torch_fans` (OIHW rule).

    ``mode`` is ``"fan_in"`` or ``"fan_out"``; ``rng`` as in :class:`VarianceScaling` (None is
    ``default_rng(0)``, fresh at each call). A zero-element shape gives an empty array.
    """
    shape = _as_shape(shape)
    if mode not in ("fan_in", "fan_out"):
        raise ValueError(f"mode={mode!r}: expected 'fan_in' or 'fan_out'")
    fan = _pick_fan(*torch_fans(shape), mode)
    rng = _as_rng(rng)
    if math.prod(shape) == 0:
        return np.zeros(shape)
    return rng.standard_normal(shape) * (calculate_gain(nonlinearity, a) / math.sqrt(fan))
