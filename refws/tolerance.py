r"""The error-bound model: how far a correct backend may be from refws's exact values.

refws's golden values are exact (or correctly rounded), so the whole difference between a
backend's output and the stored value is the backend's own rounding error. This module bounds
it per element, from quantities the golden store carries (docs/golden-format.md):

- ``m`` (``<array>__absbound``): the sum of the absolute values of the products summed into the
  element (``conv(|x|, |w|)`` for ``y``), and ``K`` (manifest ``terms``): how many there are;
- ``W`` (``<array>__wsbound``): for outputs that depend on a standardized weight, the first-order
  sensitivity of the element to rounding inside the standardization.

A backend computes in a :class:`Precision` ``(u_in, u_acc, u_out)``: its inputs are rounded to a
format with unit roundoff ``u_in`` (unless they are exactly representable there, decided per
array from the values themselves), products are accumulated with unit roundoff ``u_acc``, and
the result is stored with unit roundoff ``u_out``. The **rigorous bound** (Higham, *Accuracy and
Stability of Numerical Algorithms*, 2nd ed., section 3.1, with input rounding added) is

.. math::

    |\hat y - y| \le \Big(c_{in}\, m + \gamma_K(u_{acc})(1 + c_{in})\, m
        + (u_{acc} + u_{in}^{(w)})\, W\Big)(1 + u_{out}) + u_{out} |y|,
    \qquad \gamma_K(u) = \frac{K u}{1 - K u},

with ``c_in = (1 + u_a)(1 + u_b) - 1`` for the two operands of a product (``u_a = 0`` when that
operand is exact in the input format). It holds for every summation order. The ``W`` term is a
first-order bound (standardization is not bilinear), stated as such.

The **probabilistic bound** (Higham & Mary, "A new approach to probabilistic rounding error
analysis", SIAM J. Sci. Comput. 41(5), 2019, Theorem 2.4) replaces ``gamma_K(u)`` by
``lambda * sqrt(K) * u``: with independent zero-mean rounding errors it holds with probability
at least ``1 - 2 exp(-lambda**2 (1 - u)**2 / 2)``. With :data:`LAMBDA` = 6 that is ``1 - 3e-8``
per element, so a correct backend essentially never exceeds it on our store (measured: correct
float32 backends stay below about 2.6 ``u * m``), while one that accumulates in a lower precision
than it declares does. Exceeding it is a **warn**; exceeding the rigorous bound is a **fail**.

Every bound is evaluated in float64 and multiplied by ``1 + 2**-40`` to cover the rounding of
its own evaluation (a few float64 operations, each ``<= 2**-53`` relative).

Assumption: input rounding is relative (``u_in``), i.e. no input underflows into the subnormal
range of the backend's format when rounded. The golden grids never do (their inputs are exact in
every format or, in bfloat16 and TF32, far above the smallest normal number); for your own data
in float16, values below ``2**-14`` that are not on the subnormal grid break it.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TypeAlias

import numpy as np
from numpy.typing import ArrayLike

__all__ = [
    "Precision",
    "PRECISIONS",
    "FINGERPRINT_ORDER",
    "LAMBDA",
    "resolve_precision",
    "gamma",
    "exactly_representable",
    "operand_rounding",
    "Bound",
    "element_bound",
    "Judgement",
    "judge",
    "fingerprint",
]

LAMBDA = 6.0
_SLACK = 1.0 + 2.0**-40


@dataclass(frozen=True)
class Precision:
    """A backend's arithmetic: unit roundoffs of its input format, accumulation and output.

    ``input_bits`` / ``input_range`` describe the input format (significant bits, and ``"float32"``
    or ``"float16"`` for its exponent range), used to decide per array whether rounding the
    stored inputs to it is exact. ``source`` says where the row comes from.
    """

    name: str
    u_in: float
    u_acc: float
    u_out: float
    input_bits: int = 53
    input_range: str = "float64"
    source: str = ""


def _unit(bits: int) -> float:
    return 2.0**-bits


# One table, read by everything else. u = 2**-p for a format with p significant bits (IEEE 754).
PRECISIONS: dict[str, Precision] = {
    p.name: p
    for p in (
        Precision("float64", _unit(53), _unit(53), 0.0, 53, "float64", "IEEE binary64 inputs, accumulation and output"),
        Precision("float32", _unit(24), _unit(24), 0.0, 24, "float32", "IEEE binary32 inputs, accumulation and output"),
        Precision(
            "tf32",
            _unit(11),
            _unit(24),
            0.0,
            11,
            "float32",
            "NVIDIA TF32 tensor cores (Ampere+; cuDNN's default for float32 convolutions): inputs "
            "rounded to 10 stored mantissa bits (11 significant), float32 accumulation and output",
        ),
        Precision(
            "float16",
            _unit(11),
            _unit(24),
            _unit(11),
            11,
            "float16",
            "binary16 inputs and output, float32 accumulation (tensor cores, cuDNN/cuBLAS default)",
        ),
        Precision(
            "bf16x1",
            _unit(8),
            _unit(24),
            0.0,
            8,
            "float32",
            "float32 computed as one bfloat16 pass (XLA's DEFAULT precision on TPU, oneDNN/cuDNN "
            "bf16 modes): inputs rounded to bfloat16, float32 accumulation and output",
        ),
        Precision(
            "bfloat16",
            _unit(8),
            _unit(24),
            _unit(8),
            8,
            "float32",
            "bfloat16 inputs and output (8 significant bits, float32 exponent range), float32 accumulation",
        ),
        Precision(
            "float16-acc16",
            _unit(11),
            _unit(11),
            0.0,
            11,
            "float16",
            "binary16 inputs, accumulation and output (e.g. half-precision accumulation kernels)",
        ),
    )
}

# What every ``precision`` argument takes: a name of PRECISIONS, a (u_in, u_acc, u_out) triple or a Precision.
PrecisionLike: TypeAlias = Precision | str | Sequence[float]

# From tightest to loosest: the fingerprint is the first one whose rigorous bound holds.
FINGERPRINT_ORDER = ("float64", "float32", "tf32", "float16", "bf16x1", "bfloat16", "float16-acc16")


def _check_unit(value: object, name: str) -> float:
    # numbers.Real declares only < and <=, so the range [0, 1) is tested with < (NaN fails "< 1").
    if (
        isinstance(value, bool)
        or not isinstance(value, numbers.Real)
        or value < 0
        or not value < 1
        or not math.isfinite(value)
    ):
        raise ValueError(f"{name}={value!r}: expected a unit roundoff, a real number in [0, 1)")
    return float(value)


def resolve_precision(precision: PrecisionLike) -> Precision:
    """A :class:`Precision` from a name in :data:`PRECISIONS`, a ``(u_in, u_acc, u_out)`` triple or itself.

    A custom triple treats every input as rounded (its format is unknown), unless ``u_in`` is 0.
    """
    if isinstance(precision, Precision):
        return precision
    if isinstance(precision, str):
        try:
            return PRECISIONS[precision]
        except KeyError:
            raise ValueError(
                f"precision={precision!r}: expected one of {sorted(PRECISIONS)} or a (u_in, u_acc, u_out) triple"
            ) from None
    if isinstance(precision, (tuple, list)) and len(precision) == 3:
        u_in, u_acc, u_out = (_check_unit(v, f"precision[{i}]") for i, v in enumerate(precision))
        return Precision(
            f"custom({u_in:.3g}, {u_acc:.3g}, {u_out:.3g})", u_in, u_acc, u_out, input_bits=0, input_range="custom"
        )
    raise ValueError(
        f"precision={precision!r}: expected one of {sorted(PRECISIONS)} or a (u_in, u_acc, u_out) "
        "triple of unit roundoffs"
    )


def gamma(K: ArrayLike, u: float) -> np.ndarray:
    """``gamma_K(u) = K u / (1 - K u)`` (Higham's constant); ``inf`` where ``K u >= 1``."""
    K = np.asarray(K, dtype=np.float64)
    ku = K * u
    with np.errstate(divide="ignore"):
        return np.where(ku < 1, ku / np.where(ku < 1, 1 - ku, 1), np.inf)


_RANGES = {  # (largest finite, smallest normal) of each exponent range
    "float64": (float(np.finfo(np.float64).max), 2.0**-1022),
    "float32": (float(np.finfo(np.float32).max), 2.0**-126),
    "float16": (65504.0, 2.0**-14),
}


def exactly_representable(a: ArrayLike, precision: PrecisionLike) -> bool:
    """Whether every value of ``a`` is exact in the precision's input format (finite values only).

    A value is exact when it fits the format's exponent range and its significand needs at most
    ``input_bits`` bits (below the smallest normal number: a multiple of the subnormal step).
    """
    p = resolve_precision(precision)
    if p.u_in == 0 or p.input_range == "float64":
        return True
    if p.input_range == "custom":
        return False
    a = np.asarray(a, dtype=np.float64)
    if a.size == 0:
        return True
    if not np.all(np.isfinite(a)):
        return False
    big, normal = _RANGES[p.input_range]
    mag = np.abs(a)
    if np.any(mag > big):
        return False
    if np.any(np.mod(a[mag < normal], normal * 2.0 ** (1 - p.input_bits)) != 0):  # subnormal grid
        return False
    mant, _ = np.frexp(a)  # a = mant * 2**e, 0.5 <= |mant| < 1
    scaled = np.ldexp(mant, p.input_bits)
    return bool(np.all(scaled == np.round(scaled)))


def operand_rounding(precision: PrecisionLike, *operand_groups: Sequence[ArrayLike | None]) -> float:
    """``c_in``: the largest relative input-rounding error of one product, over the operand pairs.

    Each group is a sequence of the arrays multiplied together in one product (e.g. ``(x, w)``);
    an array is ``None`` when it is computed by the backend itself (a standardized weight), which
    counts as rounded. ``c_in = prod(1 + u_i) - 1`` with ``u_i = 0`` for exact operands.
    """
    p = resolve_precision(precision)
    worst = 0.0
    for group in operand_groups:
        factor = 1.0
        for a in group:
            if a is None or not exactly_representable(a, p):
                factor *= 1.0 + p.u_in
        worst = max(worst, factor - 1.0)
    return worst


@dataclass(frozen=True)
class Bound:
    """What an array's bound needs: magnitudes ``m`` and term count ``K`` of its bilinear part,
    the first-order WS magnitude ``W``, the operands (``c_in`` depends on the precision, because
    whether an input is exact depends on the format) and an optional absolute ``extra`` term."""

    m: np.ndarray | None
    K: int
    W: np.ndarray | None
    operands: tuple = ()  # groups of arrays multiplied together (see operand_rounding)
    ws_inputs: tuple = ()  # raw arrays fed to a standardization (their rounding scales W)
    extra: np.ndarray | None = None  # an absolute term added as is (a reference that is not exact)

    def c_in(self, precision: PrecisionLike) -> float:
        return operand_rounding(precision, *self.operands) if self.operands else 0.0

    def u_ws(self, precision: PrecisionLike) -> float:
        p = resolve_precision(precision)
        rounded = any(a is None or not exactly_representable(a, p) for a in self.ws_inputs)
        return p.u_acc + (p.u_in if rounded else 0.0)


def element_bound(bound: Bound, exact: ArrayLike, precision: PrecisionLike, tier: str = "rigorous") -> np.ndarray:
    """Per-element bound on ``|actual - exact|`` for a backend computing in ``precision``.

    ``tier="rigorous"`` uses ``gamma_K(u_acc)``; ``tier="probabilistic"`` uses
    ``LAMBDA * sqrt(K) * u_acc`` where that is smaller (the warn tier).
    """
    if tier not in ("rigorous", "probabilistic"):
        raise ValueError(f"tier={tier!r}: expected 'rigorous' or 'probabilistic'")
    p = resolve_precision(precision)
    exact = np.asarray(exact, dtype=np.float64)
    total = np.zeros(exact.shape)
    if bound.m is not None and bound.K > 0:
        c_in = bound.c_in(p)
        g = float(gamma(bound.K, p.u_acc))
        if tier == "probabilistic":
            g = min(g, LAMBDA * math.sqrt(bound.K) * p.u_acc)
        total = total + (c_in + g * (1.0 + c_in)) * bound.m
    if bound.W is not None:
        total = total + bound.u_ws(p) * bound.W
    if bound.extra is not None:
        total = total + bound.extra
    total = total * (1.0 + p.u_out) + p.u_out * np.abs(exact)
    return total * _SLACK


@dataclass
class Judgement:
    """The comparison of one array with its exact value under a precision's bounds."""

    status: str  # "pass", "warn" or "fail"
    n: int  # elements compared
    n_fail: int  # elements above the rigorous bound
    n_warn: int  # elements above the probabilistic bound
    max_error: float
    max_ratio: float  # max error / rigorous bound (0/0 counts as 0, x/0 as inf)
    max_warn_ratio: float  # max error / probabilistic bound
    worst: tuple | None  # index of the element with the largest ratio
    fingerprint: str | None  # the tightest named precision whose rigorous bound holds
    violations: np.ndarray | None  # boolean mask of elements above the rigorous bound
    message: str = ""


def _ratio(err: np.ndarray, bnd: np.ndarray) -> np.ndarray:
    with np.errstate(divide="ignore", invalid="ignore"):
        r = err / bnd
    r[(err == 0)] = 0.0
    return r


def fingerprint(error: np.ndarray, bound: Bound, exact: np.ndarray) -> str | None:
    """The first precision of :data:`FINGERPRINT_ORDER` whose rigorous bound holds everywhere."""
    for name in FINGERPRINT_ORDER:
        if np.all(error <= element_bound(bound, exact, name)):
            return name
    return None


def judge(actual: ArrayLike, exact: ArrayLike, bound: Bound, precision: PrecisionLike) -> Judgement:
    """Compare ``actual`` with ``exact`` under ``precision``'s rigorous and probabilistic bounds.

    A shape mismatch or a non-finite value where the exact value is finite is a ``fail`` with
    the reason in ``message``.
    """
    exact = np.asarray(exact, dtype=np.float64)
    try:
        a = np.asarray(actual)
    except Exception as exc:  # noqa: BLE001 - anything array-like or not
        return _failed(exact, f"not an array: {exc}")
    if a.dtype.kind not in "fiu":
        return _failed(exact, f"dtype {a.dtype}: expected a real floating-point array")
    if a.shape != exact.shape:
        return _failed(exact, f"shape {a.shape}: expected {exact.shape}")
    a = a.astype(np.float64)
    bad = ~np.isfinite(a)
    err = np.abs(a - exact)
    err[bad] = np.inf
    rig = element_bound(bound, exact, precision)
    prob = element_bound(bound, exact, precision, "probabilistic")
    ratio, wratio = _ratio(err, rig), _ratio(err, prob)
    viol = err > rig
    n_fail, n_warn = int(viol.sum()), int((err > prob).sum())
    worst = tuple(int(i) for i in np.unravel_index(int(np.argmax(ratio)), ratio.shape)) if ratio.size else None
    status = "fail" if n_fail else ("warn" if n_warn else "pass")
    return Judgement(
        status,
        int(exact.size),
        n_fail,
        n_warn,
        float(err.max()) if err.size else 0.0,
        float(ratio.max()) if ratio.size else 0.0,
        float(wratio.max()) if wratio.size else 0.0,
        worst,
        fingerprint(err, bound, exact),
        viol if n_fail else None,
        "non-finite values" if bad.any() else "",
    )


def _failed(exact: np.ndarray, message: str) -> Judgement:
    return Judgement(
        "fail",
        int(exact.size),
        int(exact.size),
        int(exact.size),
        math.inf,
        math.inf,
        math.inf,
        None,
        None,
        None,
        message,
    )
