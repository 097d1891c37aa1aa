"""Assertions for backend developers: is my output refws's, up to the rounding my precision allows?

Like :func:`numpy.testing.assert_allclose`, but the tolerance is a rigorous per-element error bound
(:mod:`refws.tolerance`) instead of a fixed ``rtol``/``atol``, and a failure says how many elements
violate it, the worst one (index, value, exact value, error, bound) and where the violations lie
(border or interior along each spatial axis, which channels or groups, which batch items).

- :func:`assert_golden_close` judges an array against a stored golden case (exact values and the
  bound data stored with them);
- :func:`assert_conv_close`, :func:`assert_conv_vjp_close`, :func:`assert_conv_jvp_close`,
  :func:`assert_conv_transpose_close` judge against refws computed on your own inputs (refws's own
  float64 rounding is added to the bound); :func:`assert_weight_standardize_close` against the
  exact standardization, rounded once, under the first-order WS bound;
- each has a non-raising twin (``check_*``) that returns a :class:`Result` for tools.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
from numpy.typing import ArrayLike

from . import conv as _conv
from . import conv_jvp as _conv_jvp
from . import conv_transpose as _conv_transpose
from . import conv_vjp as _conv_vjp
from .arrays import as_float64
from .tolerance import Bound, Judgement, PrecisionLike, element_bound, gamma, judge, resolve_precision

if TYPE_CHECKING:  # annotations only: nothing more is imported at run time
    from .golden.store import GoldenCase
    from .ws import WSSpec

__all__ = [
    "Result",
    "describe_where",
    "check_array",
    "check_golden",
    "assert_golden_close",
    "check_conv",
    "assert_conv_close",
    "check_conv_vjp",
    "assert_conv_vjp_close",
    "check_conv_jvp",
    "assert_conv_jvp_close",
    "check_conv_transpose",
    "assert_conv_transpose_close",
    "check_weight_standardize",
    "assert_weight_standardize_close",
    "axis_roles",
    "golden_bound",
    "golden_roles",
]


@dataclass
class Result:
    """One array judged: the :class:`~refws.tolerance.Judgement` plus a description for people."""

    name: str
    precision: str
    judgement: Judgement
    where: dict[str, Any] = field(default_factory=dict)
    text: str = ""

    @property
    def status(self) -> str:
        return self.judgement.status

    @property
    def ok(self) -> bool:
        return self.judgement.status != "fail"

    def __str__(self) -> str:
        return self.text


# --- where the violations are ---------------------------------------------------------------


def axis_roles(ndim: int, layout: str, channel_first: bool = False, batched: bool = True) -> tuple:
    """Role of each axis of an array: ``"batch"``, ``"spatial"``, ``"channel"``, ``"tap"``, ``"in"``, ``"out"``.

    ``layout`` is ``"io"`` (an input- or output-like array: ``(N, *spatial, C)`` or its
    channel-first / unbatched forms), ``"hwio"`` (kernel ``(*k, in, out)``), ``"oihw"`` (PyTorch
    ``(out, in, *k)``), ``"iohw"`` (PyTorch transposed ``(in, out, *k)``), ``"hwoi"`` (refws's
    transposed kernel ``(*k, out, in)``) or ``"flat"`` (no structure).
    """
    if layout == "io":
        n_sp = ndim - (2 if batched else 1)
        lead = ("batch",) if batched else ()
        return lead + (("channel",) + ("spatial",) * n_sp if channel_first else ("spatial",) * n_sp + ("channel",))
    kern = ndim - 2
    return {
        "hwio": ("tap",) * kern + ("in", "out"),
        "oihw": ("out", "in") + ("tap",) * kern,
        "iohw": ("in", "out") + ("tap",) * kern,
        "hwoi": ("tap",) * kern + ("out", "in"),
    }.get(layout, ("other",) * ndim)


def _ordinal(k: int) -> str:
    return f"{k}{'th' if 10 <= k % 100 <= 20 else {1: 'st', 2: 'nd', 3: 'rd'}.get(k % 10, 'th')}"


def _positions_text(pos: np.ndarray, size: int) -> tuple[str, str]:
    """(kind, words) for the set of indices ``pos`` along an axis of ``size``."""
    pos = np.unique(pos)
    if len(pos) == size:
        return "all", f"every position (all {size})"
    lo = pos.max() < min(2, size // 2) if size > 1 else False
    hi = pos.min() >= size - min(2, size // 2) if size > 1 else False
    listed = ", ".join(str(int(p)) for p in pos[:6]) + (", ..." if len(pos) > 6 else "")
    if lo:
        return "low_border", f"position{'s' if len(pos) > 1 else ''} {listed} (low border)"
    if hi:
        return "high_border", f"position{'s' if len(pos) > 1 else ''} {listed} (high border)"
    b = min(2, size // 2)
    if set(pos.tolist()) <= set(range(b)) | set(range(size - b, size)):
        return "both_borders", f"positions {listed} (both borders)"
    if len(pos) >= 3:
        steps = np.diff(pos)
        if np.all(steps == steps[0]) and steps[0] > 1:
            return "periodic", f"every {_ordinal(int(steps[0]))} position from {int(pos[0])} ({len(pos)} of {size})"
    if pos.min() > 0 and pos.max() < size - 1:
        return "interior", f"interior position{'s' if len(pos) > 1 else ''} {listed} ({len(pos)} of {size})"
    return "spread", f"{len(pos)} of {size} positions: {listed}"


_SLAB_NAMES = {2: ("row", "column"), 3: ("depth plane", "row plane", "column plane")}


def _slabs(v: np.ndarray, roles: tuple) -> list | None:
    """Whole slabs along two or more spatial axes whose union is exactly the violating positions
    (a cross or an L, where each axis alone says "every position"), as ``[(k, positions)]``."""
    axes = [i for i, r in enumerate(roles[: v.ndim]) if r == "spatial"]
    if len(axes) < 2:
        return None
    m = np.asarray(v.any(axis=tuple(i for i in range(v.ndim) if i not in axes)))  # an array: >= 2 axes stay
    found, union = [], np.zeros_like(m)
    for k in range(m.ndim):
        pos = np.nonzero(m.all(axis=tuple(j for j in range(m.ndim) if j != k)))[0]
        if len(pos) == m.shape[k]:
            return None
        if len(pos):
            found.append((k, pos))
            union[(slice(None),) * k + (pos,)] = True
    return found if len(found) >= 2 and np.array_equal(union, m) else None


def describe_where(violations: ArrayLike, roles: tuple, groups: int = 1) -> tuple[dict[str, Any], str]:
    """Summarise a boolean violation mask: fraction, and per axis where the violations cluster.

    Returns ``(where, text)``: ``where`` is JSON-ready (``fraction`` and one entry per axis with
    its ``role``, ``kind`` — ``all``, ``low_border``, ``high_border``, ``both_borders``,
    ``periodic``, ``interior``, ``spread`` — and the ``positions``), ``text`` says it in words.
    """
    v = np.asarray(violations, dtype=bool)
    n_bad, n = int(v.sum()), int(v.size)
    where: dict[str, Any] = {"violations": n_bad, "elements": n, "fraction": n_bad / n if n else 0.0, "axes": []}
    parts = [f"{n_bad} of {n} elements"]
    if n_bad == 0 or v.ndim == 0:
        return where, parts[0]
    idx = np.nonzero(v)
    sp = 0
    for axis, role in enumerate(roles[: v.ndim]):
        size = v.shape[axis]
        pos = np.unique(idx[axis])
        kind, words = _positions_text(pos, size)
        entry: dict[str, Any] = {"axis": axis, "role": role, "kind": kind, "positions": [int(p) for p in pos[:64]]}
        if role == "spatial":
            label = f"spatial axis {sp}"
            sp += 1
        elif role == "batch":
            label = "batch items"
            words = (
                "every batch item"
                if kind == "all"
                else f"batch item{'s' if len(pos) > 1 else ''} " + ", ".join(str(int(p)) for p in pos[:8])
            )
        elif role in ("channel", "out") and groups > 1 and size % groups == 0:
            per = size // groups
            hit = sorted({int(p) // per for p in pos})
            entry["groups"] = hit
            label = "channels"
            words = (
                "every channel"
                if kind == "all"
                else f"channel{'s' if len(pos) > 1 else ''} {', '.join(str(int(p)) for p in pos[:8])}"
                f"{', ...' if len(pos) > 8 else ''} (group{'s' if len(hit) > 1 else ''} "
                f"{', '.join(map(str, hit))} of {groups})"
            )
        elif role in ("channel", "out", "in"):
            label = {"channel": "channels", "out": "output channels", "in": "input channels"}[role]
            words = (
                "every channel"
                if kind == "all"
                else f"channel{'s' if len(pos) > 1 else ''} {', '.join(str(int(p)) for p in pos[:8])}"
                f"{', ...' if len(pos) > 8 else ''} of {size}"
            )
        elif role == "tap":
            label = f"kernel axis {axis}"
        else:
            label = f"axis {axis}"
        where["axes"].append(entry)
        parts.append(f"{label}: {words}")
    slabs = _slabs(v, roles)
    if slabs:
        sizes = [v.shape[i] for i, r in enumerate(roles[: v.ndim]) if r == "spatial"]
        names = _SLAB_NAMES.get(len(sizes), tuple(f"spatial axis {k} position" for k in range(len(sizes))))
        said = []
        for k, pos in slabs:
            kind, words = _positions_text(pos, sizes[k])
            listed = ", ".join(str(int(p)) for p in pos[:6]) + (", ..." if len(pos) > 6 else "")
            said.append(
                f"{names[k]}{'s' if len(pos) > 1 else ''} {listed}"
                + (f" ({kind.replace('_', ' ')})" if "border" in kind else "")
            )
            where.setdefault("slabs", []).append({"spatial_axis": k, "kind": kind, "positions": [int(p) for p in pos]})
        parts.append("all in " + " and ".join(said))
    return where, "; ".join(parts)


# --- judging --------------------------------------------------------------------------------


def _fmt(v: float) -> str:
    return f"{v:.6g}"


def check_array(
    actual: ArrayLike,
    exact: ArrayLike,
    bound: Bound,
    precision: PrecisionLike,
    *,
    name: str = "array",
    roles: tuple | None = None,
    groups: int = 1,
) -> Result:
    """Judge ``actual`` against ``exact`` under ``bound`` and describe the outcome (never raises on a mismatch)."""
    p = resolve_precision(precision)
    exact = np.asarray(exact, dtype=np.float64)
    j = judge(actual, exact, bound, p)
    where: dict[str, Any] = {}
    lines: list[str] = []
    if j.status == "pass":
        lines.append(f"{name}: within the {p.name} bound (max error / bound {_fmt(j.max_ratio)})")
    elif j.status == "warn":
        lines.append(
            f"{name}: within the rigorous {p.name} bound but above the probabilistic one on "
            f"{j.n_warn} of {j.n} elements (max error / probabilistic bound {_fmt(j.max_warn_ratio)}); "
            "a correct backend in this precision essentially never gets there: does it accumulate "
            "in a lower precision?"
        )
    else:
        kind = "rigorous" if bound.W is None else "first-order"  # WS terms are first-order bounds
        lines.append(f"{name}: not equal to refws within the {kind} {p.name} bound")
        if j.message:
            lines.append(f"  {j.message}")
        if j.violations is not None:
            lines.append(f"  mismatched elements: {j.n_fail} / {j.n} ({100 * j.n_fail / j.n:.3g}%)")
            a = np.asarray(actual, dtype=np.float64)
            i = j.worst
            assert i is not None  # judge() names the worst element of every failing array
            b = element_bound(bound, exact, p)[i]
            lines.append(
                f"  worst element {i}: actual {_fmt(a[i])}, exact {_fmt(exact[i])}, "
                f"error {_fmt(abs(a[i] - exact[i]))}, bound {_fmt(b)} (error / bound {_fmt(j.max_ratio)})"
            )
            where, text = describe_where(j.violations, roles or ("other",) * exact.ndim, groups)
            lines.append(f"  where: {text}")
        lines.append(f"  errors consistent with: {j.fingerprint or 'none of the named precisions'}")
    return Result(name, p.name, j, where, "\n".join(lines))


def _raise_if_failed(result: Result) -> Result:
    if result.status == "fail":
        raise AssertionError(result.text)
    return result


# golden arrays: which stored inputs are multiplied together in each output (for input rounding)
_W, _TW = "<W_eff>", "<tW_eff>"  # a layer's effective weight (computed when standardized)
OPERANDS: dict[str, dict[str, tuple[tuple[str, ...], ...]]] = {
    "conv": {"y": (("x", "w"),), "dx": (("dy", "w"),), "dw": (("x", "dy"),), "ty": (("tx", "w"), ("x", "tw"))},
    "conv_transpose": {
        "y": (("x", "w"), ("b",)),
        "dx": (("dy", "w"),),
        "dw": (("x", "dy"),),
        "db": (("dy",),),
        "ty": (("tx", "w"), ("x", "tw"), ("tb",)),
    },
    "ws": {},
    "layer": {
        "y": (("x", _W), ("bias",)),
        "dx": (("dy", _W),),
        "dweight": (("x", "dy"),),
        "dbias": (("dy",),),
        "dgain": (("x", "dy"),),
        "ty": (("tx", _W), ("x", _TW), ("tbias",)),
    },
}
WS_INPUTS = {"ws": ("w", "gain", "dw_hat", "tw", "tgain"), "layer": ("weight", "gain", "tweight", "tgain")}


def _suite_kind(suite: str) -> str:
    return suite if suite in OPERANDS else "layer"


def golden_bound(case: GoldenCase, array: str) -> Bound:
    """The :class:`~refws.tolerance.Bound` of a stored output array, from the case's bound data."""
    a = case.arrays
    kind = _suite_kind(case.suite)
    standardized = any(k.endswith("__wsbound") for k in a)

    def operand(name):
        if name in (_W, _TW):
            return None if standardized else a.get({_W: "weight", _TW: "tweight"}[name])
        return a.get(name)

    groups = tuple(
        tuple(operand(n) for n in g) for g in OPERANDS[kind].get(array, ()) if all(n in (_W, _TW) or n in a for n in g)
    )
    ws_inputs = tuple(a[n] for n in WS_INPUTS.get(kind, ()) if n in a)
    return Bound(
        a.get(array + "__absbound"), int(case.terms.get(array, 0)), a.get(array + "__wsbound"), groups, ws_inputs
    )


def golden_roles(case: GoldenCase, array: str) -> tuple:
    """Axis roles of a stored array of a golden case (see :func:`axis_roles`)."""
    p, nd = case.params, np.ndim(case.arrays[array])
    if case.suite in ("conv", "conv_transpose"):
        if array in ("w", "dw", "tw"):
            return axis_roles(nd, "hwio" if case.suite == "conv" else "hwoi")
        if array == "db":
            return ("channel",)
        batched = len(p["x_shape"]) == len(p["w_shape"])
        return axis_roles(nd, "io", p["channel_first"], batched)
    if case.suite == "ws":
        roles = ["tap"] * nd
        roles[p["out_axis"] % nd] = "out"
        return tuple(roles)
    kw = p.get("kwargs", {})
    if array in ("dweight", "weight", "tweight"):
        torch_layout = p.get("library") == "elektronn3"
        transposed = "Transpose" in p.get("cls", "")
        if p.get("cls", "").endswith("Linear"):
            return ("in", "out")
        return axis_roles(nd, ("iohw" if transposed else "oihw") if torch_layout else "hwio")
    if array in ("dbias", "dgain", "bias", "gain"):
        return ("other",) * nd
    if p.get("cls", "").endswith("Linear"):
        return ("batch",) * (nd - 1) + ("channel",)
    cf = p.get("library") == "elektronn3" or kw.get("channel_first", False)
    n_sp = int(p["cls"][-2]) if p.get("cls", "")[-2:-1].isdigit() else nd - 2
    return axis_roles(nd, "io", cf, nd == n_sp + 2)


def check_golden(
    actual: ArrayLike, case: GoldenCase, array: str, *, precision: PrecisionLike = "float64", diagnose: bool = False
) -> Result:
    """Judge ``actual`` against array ``array`` of a loaded golden case (:func:`refws.golden.load`).

    ``diagnose=True`` adds, for a failing array, the near-miss conventions it matches
    (:mod:`refws.conformance.diagnosis`): ``diagnosis: matches refws under variant ...``.
    """
    if array not in case.arrays or array not in case.terms:
        outputs = sorted(case.terms)
        raise ValueError(f"array={array!r}: not an output of golden case {case.name!r}; expected one of {outputs}")
    groups = case.params.get("groups", case.params.get("kwargs", {}).get("groups", 1))
    result = check_array(
        actual,
        case.arrays[array],
        golden_bound(case, array),
        precision,
        name=f"{case.name}:{array}",
        roles=golden_roles(case, array),
        groups=groups,
    )
    if diagnose and result.status == "fail":
        # the diagnosis lives in refws.conformance, which builds on this module: imported on use
        from .conformance.diagnosis import diagnose as _diagnose, diagnosis_text

        text = diagnosis_text(_diagnose(None, case, array, actual, precision))
        result.text += "\n  diagnosis: " + text.replace("\n", "\n  diagnosis: ")
    return result


def assert_golden_close(
    actual: ArrayLike, case: GoldenCase, array: str, *, precision: PrecisionLike = "float64", diagnose: bool = True
) -> Result:
    """Raise AssertionError (with the description and, unless ``diagnose=False``, the near-miss
    conventions the array matches) if ``actual`` violates the golden bound; else the Result."""
    return _raise_if_failed(check_golden(actual, case, array, precision=precision, diagnose=diagnose))


# --- against refws on the caller's own inputs ----------------------------------------------

_U64 = 2.0**-53


def _check_against_refws(actual, exact, m, K, operands, precision, name, roles, groups):
    """Judge against refws's float64 value on arbitrary inputs.

    That value is not exact: it differs from the real result by at most ``gamma_K(2**-53) * m``,
    which is added to the bound as an absolute term; ``m`` itself was computed in float64 from
    non-negative terms, so it is inflated by ``1 + 2 gamma_K(2**-53)`` to stay an upper bound.
    """
    g64 = float(gamma(K, _U64))
    m = np.asarray(m, dtype=np.float64)
    bound = Bound(m * (1 + 2 * g64), K, None, operands, extra=g64 * m * (1 + 2 * g64))
    return check_array(actual, exact, bound, precision, name=name, roles=roles, groups=groups)


def _io_roles(a: np.ndarray, w: np.ndarray, channel_first: bool) -> tuple:
    return axis_roles(a.ndim, "io", channel_first, batched=a.ndim == w.ndim)


def check_conv(
    actual: ArrayLike, x: ArrayLike, w: ArrayLike, *, precision: PrecisionLike = "float64", **conv_kwargs: Any
) -> Result:
    """Judge ``actual`` against ``refws.conv(x, w, **conv_kwargs)``; ``K = taps * C_in / groups``."""
    x, w = as_float64(x, "x"), as_float64(w, "w")
    exact = _conv(x, w, **conv_kwargs)
    m = _conv(np.abs(x), np.abs(w), **conv_kwargs)
    K = int(np.prod(w.shape[:-1]))
    cf = conv_kwargs.get("channel_first", False)
    return _check_against_refws(
        actual, exact, m, K, ((x, w),), precision, "conv y", _io_roles(exact, w, cf), conv_kwargs.get("groups", 1)
    )


def assert_conv_close(
    actual: ArrayLike, x: ArrayLike, w: ArrayLike, *, precision: PrecisionLike = "float64", **conv_kwargs: Any
) -> Result:
    """Raise AssertionError unless ``actual`` is ``refws.conv(x, w, **conv_kwargs)`` within the bound."""
    return _raise_if_failed(check_conv(actual, x, w, precision=precision, **conv_kwargs))


def check_conv_vjp(
    actual_dx: ArrayLike | None,
    actual_dw: ArrayLike | None,
    x: ArrayLike,
    w: ArrayLike,
    dy: ArrayLike,
    *,
    precision: PrecisionLike = "float64",
    **conv_kwargs: Any,
) -> tuple[Result, ...]:
    """Judge ``(dx, dw)`` against ``refws.conv_vjp``; either may be None (not judged).

    ``K = taps * C_out / groups`` for ``dx`` (an upper bound: strides and dilation leave fewer),
    ``N * prod(out_spatial)`` for ``dw``.
    """
    x, w, dy = as_float64(x, "x"), as_float64(w, "w"), as_float64(dy, "dy")
    kw = {k: v for k, v in conv_kwargs.items() if k != "method"}
    dx, dw = _conv_vjp(x, w, dy, **kw)
    cf, groups = kw.get("channel_first", False), kw.get("groups", 1)
    out: list[Result] = []
    if actual_dx is not None:
        m = _conv_vjp(x, np.abs(w), np.abs(dy), **kw)[0]
        K = int(np.prod(w.shape[:-2])) * (w.shape[-1] // groups)
        out.append(
            _check_against_refws(
                actual_dx, dx, m, K, ((dy, w),), precision, "conv_vjp dx", _io_roles(dx, w, cf), groups
            )
        )
    if actual_dw is not None:
        m = _conv_vjp(np.abs(x), w, np.abs(dy), **kw)[1]
        K = max(1, dy.size // max(1, w.shape[-1]))
        out.append(
            _check_against_refws(
                actual_dw, dw, m, K, ((x, dy),), precision, "conv_vjp dw", axis_roles(w.ndim, "hwio"), groups
            )
        )
    return tuple(out)


def assert_conv_vjp_close(
    actual_dx: ArrayLike | None,
    actual_dw: ArrayLike | None,
    x: ArrayLike,
    w: ArrayLike,
    dy: ArrayLike,
    *,
    precision: PrecisionLike = "float64",
    **conv_kwargs: Any,
) -> tuple[Result, ...]:
    """Raise AssertionError unless ``dx`` and ``dw`` match ``refws.conv_vjp`` within their bounds."""
    results = check_conv_vjp(actual_dx, actual_dw, x, w, dy, precision=precision, **conv_kwargs)
    failed = [r.text for r in results if r.status == "fail"]
    if failed:
        raise AssertionError("\n".join(failed))
    return results


def check_conv_jvp(
    actual_ty: ArrayLike,
    x: ArrayLike,
    w: ArrayLike,
    tx: ArrayLike,
    tw: ArrayLike,
    *,
    precision: PrecisionLike = "float64",
    **conv_kwargs: Any,
) -> Result:
    """Judge the tangent ``ty`` against ``refws.conv_jvp``; ``K = 2 * taps * C_in / groups``."""
    x, w, tx, tw = (as_float64(a, n) for a, n in ((x, "x"), (w, "w"), (tx, "tx"), (tw, "tw")))
    _, ty = _conv_jvp(x, w, tx, tw, **conv_kwargs)
    m = _conv(np.abs(tx), np.abs(w), **conv_kwargs) + _conv(np.abs(x), np.abs(tw), **conv_kwargs)
    K = 2 * int(np.prod(w.shape[:-1]))
    return _check_against_refws(
        actual_ty,
        ty,
        m,
        K,
        ((tx, w), (x, tw)),
        precision,
        "conv_jvp ty",
        _io_roles(ty, w, conv_kwargs.get("channel_first", False)),
        conv_kwargs.get("groups", 1),
    )


def assert_conv_jvp_close(
    actual_ty: ArrayLike,
    x: ArrayLike,
    w: ArrayLike,
    tx: ArrayLike,
    tw: ArrayLike,
    *,
    precision: PrecisionLike = "float64",
    **conv_kwargs: Any,
) -> Result:
    """Raise AssertionError unless ``ty`` matches ``refws.conv_jvp`` within the bound."""
    return _raise_if_failed(check_conv_jvp(actual_ty, x, w, tx, tw, precision=precision, **conv_kwargs))


def check_conv_transpose(
    actual: ArrayLike, x: ArrayLike, w: ArrayLike, *, precision: PrecisionLike = "float64", **kwargs: Any
) -> Result:
    """Judge ``actual`` against ``refws.conv_transpose(x, w, **kwargs)``; ``K = taps * C_in / groups``
    (+1 with a bias)."""
    x, w = as_float64(x, "x"), as_float64(w, "w")
    exact = _conv_transpose(x, w, **kwargs)
    bias = kwargs.get("bias")
    m = _conv_transpose(np.abs(x), np.abs(w), **dict(kwargs, bias=None if bias is None else np.abs(bias)))
    groups = kwargs.get("groups", 1)
    K = int(np.prod(w.shape[:-2])) * (w.shape[-1] // groups) + (bias is not None)
    operands = ((x, w),) + (((as_float64(bias, "bias"),),) if bias is not None else ())
    return _check_against_refws(
        actual,
        exact,
        m,
        K,
        operands,
        precision,
        "conv_transpose y",
        _io_roles(exact, w, kwargs.get("channel_first", False)),
        groups,
    )


def assert_conv_transpose_close(
    actual: ArrayLike, x: ArrayLike, w: ArrayLike, *, precision: PrecisionLike = "float64", **kwargs: Any
) -> Result:
    """Raise AssertionError unless ``actual`` is ``refws.conv_transpose(x, w, **kwargs)`` within the bound."""
    return _raise_if_failed(check_conv_transpose(actual, x, w, precision=precision, **kwargs))


def check_weight_standardize(
    actual: ArrayLike,
    w: ArrayLike,
    gain: ArrayLike | None = None,
    eps: float | None = None,
    *,
    out_axis: int = -1,
    spec: str | WSSpec = "brainstate",
    precision: PrecisionLike = "float64",
) -> Result:
    """Judge ``actual`` against ``refws.weight_standardize(w, gain, eps, out_axis=..., spec=...)``.

    The reference is computed in exact rational arithmetic and rounded once (as the golden ``ws``
    suite is), and the tolerance is the first-order bound ``(u + u_in) * W`` of
    docs/golden-format.md (:class:`refws.golden.exact_ws.WSBounds`): first-order, not rigorous,
    and cost grows with the weight's size (exact rationals), so use it on weight-sized arrays.
    """
    from . import weight_standardize
    from .golden.evaluate import variant_of
    from .golden.exact_ws import WSBounds, channel_stats, combine_terms, ws_terms

    w = as_float64(w, "w")
    weight_standardize(w, gain, eps, out_axis=out_axis, spec=spec)  # the same argument checks
    axis = out_axis % w.ndim
    g = None
    if gain is not None:
        shape = [1] * w.ndim
        shape[axis] = w.shape[axis]
        g = as_float64(gain, "gain").reshape(shape)
    v = variant_of(spec, eps)
    st = channel_stats(w, v, axis)
    exact = combine_terms(ws_terms(w, st, g, axis)[0], axis).to_float()
    W = WSBounds(w, st, v, g, axis).forward()
    roles = tuple("out" if i == axis else "tap" for i in range(w.ndim))
    bound = Bound(None, 0, W, (), (w,) + ((g,) if g is not None else ()))
    return check_array(actual, exact, bound, precision, name="weight_standardize w_hat", roles=roles)


def assert_weight_standardize_close(
    actual: ArrayLike,
    w: ArrayLike,
    gain: ArrayLike | None = None,
    eps: float | None = None,
    *,
    out_axis: int = -1,
    spec: str | WSSpec = "brainstate",
    precision: PrecisionLike = "float64",
) -> Result:
    """Raise AssertionError unless ``actual`` is the standardized ``w`` within the first-order WS bound."""
    return _raise_if_failed(
        check_weight_standardize(actual, w, gain, eps, out_axis=out_axis, spec=spec, precision=precision)
    )
