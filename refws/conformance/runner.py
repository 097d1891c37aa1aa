"""Run a backend over a golden store: one record per (case, array), with benchdnn-style statuses.

For every stored case the runner calls the adapter methods its suite needs (:data:`CALLS`, one
table), judges every array the adapter returns against the stored exact value under the
adapter's precision (:func:`refws.testing.check_golden`), and keeps going whatever happens:

======================  ====================================================================
status                  meaning
======================  ====================================================================
``pass``                within the probabilistic bound (and so within the rigorous one)
``warn``                within the rigorous bound, above the probabilistic one
``fail``                above the rigorous bound (or wrong shape, or non-finite values)
``error``               the adapter raised something unexpected (the message is kept)
``unimplemented``       the framework refuses a case its own specification allows
``not_expressible``     the framework's API has no way to say this case
``skipped``             the adapter does not implement the method that computes this array
======================  ====================================================================
"""

from __future__ import annotations

import fnmatch
import os
import time
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..golden.store import GoldenCase, default_root, load_entry, read_manifest
from ..testing import check_golden
from ..tolerance import FINGERPRINT_ORDER, PrecisionLike, resolve_precision
from .diagnosis import diagnose as default_diagnose
from .protocol import Adapter, NotExpressible, Unimplemented

__all__ = ["STATUSES", "CALLS", "Call", "Record", "Report", "run_case", "run"]

STATUSES = ("pass", "warn", "fail", "error", "unimplemented", "not_expressible", "skipped")


@dataclass(frozen=True)
class Call:
    """One adapter call of a suite: its method, the stored arrays passed positionally, the
    names of what it returns (``None``: returned but not judged here), and how to build the
    keyword arguments from the case (``None`` for ``layer``, which takes the case's parameters)."""

    method: str
    inputs: tuple[str, ...]
    outputs: tuple[str | None, ...]
    kwargs: Callable[[GoldenCase], dict[str, Any]] | None


def _conv_kwargs(case):
    p = case.params
    return {k: p[k] for k in ("stride", "padding", "lhs_dilation", "rhs_dilation", "groups", "channel_first")}


def _transpose_kwargs(case, with_bias=True, with_tbias=False):
    p = case.params
    kw = {
        k: p[k] for k in ("stride", "padding", "output_padding", "dilation", "groups", "output_size", "channel_first")
    }
    if with_bias:
        kw["bias"] = case["b"] if p.get("bias") else None
    if with_tbias:
        kw["tbias"] = case["tb"] if p.get("bias") else None
    return kw


def _ws_kwargs(case, with_tgain=False):
    p = case.params
    kw = dict(gain=case["gain"] if p.get("gain") else None, eps=p["eps"], out_axis=p["out_axis"], spec=p["spec"])
    if with_tgain:
        kw["tgain"] = case["tgain"] if p.get("gain") else None
    return kw


# The one table of what each suite asks of an adapter.
CALLS: dict[str, tuple[Call, ...]] = {
    "conv": (
        Call("conv", ("x", "w"), ("y",), _conv_kwargs),
        Call("conv_vjp", ("x", "w", "dy"), ("dx", "dw"), _conv_kwargs),
        Call("conv_jvp", ("x", "w", "tx", "tw"), (None, "ty"), _conv_kwargs),
    ),
    "conv_transpose": (
        Call("conv_transpose", ("x", "w"), ("y",), _transpose_kwargs),
        Call("conv_transpose_vjp", ("x", "w", "dy"), ("dx", "dw", "db"), _transpose_kwargs),
        Call(
            "conv_transpose_jvp", ("x", "w", "tx", "tw"), (None, "ty"), lambda c: _transpose_kwargs(c, with_tbias=True)
        ),
    ),
    "ws": (
        Call("weight_standardize", ("w",), ("w_hat",), _ws_kwargs),
        Call("weight_standardize_vjp", ("w", "dw_hat"), ("dw", "dgain"), _ws_kwargs),
        Call("weight_standardize_jvp", ("w", "tw"), (None, "tw_hat"), lambda c: _ws_kwargs(c, with_tgain=True)),
    ),
    "layer": (Call("layer", (), ("y", "dx", "dweight", "dbias", "dgain", "ty"), None),),
}

# Inputs of a layer case (everything that is not an output or bound data).
_LAYER_OUTPUTS = {"y", "dx", "dweight", "dbias", "dgain", "ty"}


def calls_for(suite: str) -> tuple[Call, ...]:
    return CALLS.get(suite, CALLS["layer"])


@dataclass
class Record:
    """The outcome for one (case, array)."""

    case: str
    suite: str
    array: str
    status: str
    max_error: float | None = None
    max_ratio: float | None = None
    max_warn_ratio: float | None = None
    fingerprint: str | None = None
    message: str = ""
    where: dict[str, Any] | None = None
    nondeterministic: bool | None = None
    seconds: float = 0.0
    diagnosis: dict[str, Any] | None = None

    def to_json(self) -> dict[str, Any]:
        def num(v):
            return None if v is None else (v if np.isfinite(v) else str(v))

        d = dict(
            case=self.case,
            suite=self.suite,
            array=self.array,
            status=self.status,
            max_error=num(self.max_error),
            max_ratio=num(self.max_ratio),
            max_warn_ratio=num(self.max_warn_ratio),
            fingerprint=self.fingerprint,
            message=self.message,
            nondeterministic=self.nondeterministic,
            seconds=round(self.seconds, 6),
        )
        if self.where is not None:
            d["where"] = self.where
        if self.diagnosis is not None:
            d["diagnosis"] = self.diagnosis
        return d


def outputs_of(case: GoldenCase, call: Call) -> list[str]:
    """The arrays of ``case`` this call returns, by name (only those the case stores)."""
    return [o for o in call.outputs if o is not None and o in case.arrays]


def _invoke(backend: Adapter, case: GoldenCase, call: Call) -> dict[str, Any]:
    """Call the adapter; returns a dict name -> array (possibly partial)."""
    fn = getattr(backend, call.method)
    if call.method == "layer":
        inputs = {k: v for k, v in case.arrays.items() if k not in _LAYER_OUTPUTS and "__" not in k}
        out = fn(case.params, inputs)
        if not isinstance(out, dict):
            raise TypeError(f"layer() returned {type(out).__name__}: expected a dict of arrays")
        return out
    assert call.kwargs is not None  # every call but layer() builds its keyword arguments
    args = [case[k] for k in call.inputs]
    out = fn(*args, **call.kwargs(case))
    if len(call.outputs) == 1:
        name = call.outputs[0]
        assert name is not None  # a one-output call returns the array it names
        return {name: out}
    if not isinstance(out, (tuple, list)):
        raise TypeError(f"{call.method}() returned {type(out).__name__}: expected a tuple {call.outputs}")
    return {name: value for name, value in zip(call.outputs, out) if name is not None and value is not None}


def _same_bits(a, b) -> bool:
    a, b = np.asarray(a), np.asarray(b)
    return a.shape == b.shape and a.dtype == b.dtype and a.tobytes() == b.tobytes()


def run_case(
    backend: Adapter,
    case: GoldenCase,
    precision: PrecisionLike | None = None,
    repeat: int = 1,
    diagnose: Callable[..., dict[str, Any]] | None = default_diagnose,
) -> list[Record]:
    """Every record of one loaded golden case (see :data:`STATUSES`)."""
    prec = resolve_precision(precision if precision is not None else getattr(backend, "precision", "float64"))
    records: list[Record] = []
    for call in calls_for(case.suite):
        names = outputs_of(case, call)
        if not names:
            continue

        def rec(name, status, message="", **kw):
            return Record(case.name, case.suite, name, status, message=message, **kw)

        if not callable(getattr(backend, call.method, None)):
            records += [rec(n, "skipped", f"the adapter has no {call.method}()") for n in names]
            continue
        start = time.perf_counter()
        try:
            results = [_invoke(backend, case, call) for _ in range(max(1, repeat))]
        except NotExpressible as exc:
            records += [rec(n, "not_expressible", str(exc) or "not expressible") for n in names]
            continue
        except Unimplemented as exc:
            records += [rec(n, "unimplemented", str(exc) or "unimplemented") for n in names]
            continue
        except Exception as exc:  # noqa: BLE001 - an adapter bug is a status, not a crash
            tb = traceback.extract_tb(exc.__traceback__)[-1]
            msg = f"{type(exc).__name__}: {exc} (at {Path(tb.filename).name}:{tb.lineno})"
            records += [rec(n, "error", msg) for n in names]
            continue
        seconds = (time.perf_counter() - start) / len(results)
        first = results[0]
        for name in names:
            if name not in first:
                records.append(rec(name, "skipped", f"{call.method}() returned no {name}"))
                continue
            try:
                res = check_golden(first[name], case, name, precision=prec)
            except ValueError as exc:  # the store lacks this array's bound data
                records.append(rec(name, "error", f"golden store: {exc}"))
                continue
            j = res.judgement
            r = rec(
                name,
                j.status,
                "" if j.status == "pass" else res.text,
                max_error=j.max_error,
                max_ratio=j.max_ratio,
                max_warn_ratio=j.max_warn_ratio,
                fingerprint=j.fingerprint,
                where=res.where or None,
                seconds=seconds,
            )
            if len(results) > 1:
                r.nondeterministic = not all(_same_bits(first[name], other.get(name)) for other in results[1:])
            if j.status == "fail" and diagnose is not None:
                r.diagnosis = diagnose(backend, case, name, first[name], prec)
            records.append(r)
    return records


@dataclass
class Report:
    """All records of a run, and what a person or CI needs from them."""

    backend: str
    version: str
    precision: str
    golden: str
    records: list[Record] = field(default_factory=list)
    seconds: float = 0.0

    def by_suite(self) -> dict[str, list[Record]]:
        out: dict[str, list[Record]] = {}
        for r in self.records:
            out.setdefault(r.suite, []).append(r)
        return out

    def summary(self) -> dict[str, dict[str, Any]]:
        """Per suite: counts per status, worst error/bound, loosest fingerprint, nondeterministic arrays."""
        table: dict[str, dict[str, Any]] = {}
        for suite, recs in self.by_suite().items():
            counts = {s: 0 for s in STATUSES}
            for r in recs:
                counts[r.status] += 1
            judged = [r for r in recs if r.max_ratio is not None]
            worst = max((r.max_ratio for r in judged if r.max_ratio is not None), default=None)
            prints = [r.fingerprint for r in judged]
            if any(f is None for f in prints):
                fp = None if prints else "-"
            else:
                fp = max(prints, key=FINGERPRINT_ORDER.index) if prints else "-"
            table[suite] = dict(
                counts=counts,
                worst_ratio=worst,
                fingerprint=fp,
                nondeterministic=sum(1 for r in recs if r.nondeterministic),
            )
        return table

    @property
    def exit_code(self) -> int:
        """0: every expressible array passes (or warns); 1: a failure or an adapter error."""
        return 1 if any(r.status in ("fail", "error") for r in self.records) else 0


def select_cases(
    root: str | os.PathLike[str] | None, suite: str | None = None, pattern: str | None = None
) -> Iterator[GoldenCase]:
    """The stored cases of a store, filtered by suite and name pattern before loading (each checksum-verified)."""
    root = root if root is not None else default_root()
    manifest = read_manifest(root)
    for name in sorted(manifest["cases"]):
        entry = manifest["cases"][name]
        if (suite is None or entry["suite"] == suite) and (pattern is None or fnmatch.fnmatchcase(name, pattern)):
            yield load_entry(Path(root), name, entry)


def run(
    backend: Adapter,
    golden_dir: str | os.PathLike[str] | None = None,
    *,
    suite: str | None = None,
    case: str | None = None,
    precision: PrecisionLike | None = None,
    repeat: int = 1,
    progress: Callable[[int, int, str], object] | None = None,
    diagnose: Callable[..., dict[str, Any]] | None = default_diagnose,
) -> Report:
    """Run ``backend`` over every case of the store (``golden_dir``, default the repository's).

    ``suite`` and ``case`` (a shell pattern on case names) select cases; ``precision`` overrides
    the adapter's declared precision for judging; ``repeat`` runs each call that many times and
    marks arrays whose bits differ between runs as nondeterministic; ``progress(i, n, name)`` is
    called after each case. ``diagnose(backend, case, array, actual, precision)`` is called for
    failing arrays only (default: :func:`refws.conformance.diagnosis.diagnose`, the near-miss
    variants); ``None`` turns the diagnosis off.
    """
    if isinstance(repeat, bool) or not isinstance(repeat, int) or repeat < 1:
        raise ValueError(f"repeat={repeat!r}: expected an integer >= 1")
    root = Path(golden_dir) if golden_dir is not None else default_root()
    prec = resolve_precision(precision if precision is not None else getattr(backend, "precision", "float64"))
    chosen = list(select_cases(root, suite, case))
    if not chosen:
        raise ValueError(f"no stored case in {root} matches suite={suite!r} case={case!r}")
    report = Report(
        getattr(backend, "name", type(backend).__name__), str(getattr(backend, "version", "")), prec.name, str(root)
    )
    start = time.perf_counter()
    for i, c in enumerate(chosen, 1):
        report.records += run_case(backend, c, prec, repeat, diagnose)
        if progress:
            progress(i, len(chosen), c.name)
    report.seconds = time.perf_counter() - start
    return report
