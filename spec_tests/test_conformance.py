"""The conformance runner, its reports and ``refws check``: trusted only once seen failing planted bugs.

- a correct backend (refws's public functions in float64, returned in float64 or rounded once to
  float32) passes every stored ``conv`` and ``conv_transpose`` case (and ``ws`` with bound data);
- 16 deliberately wrong backends, each the correct one plus one bug, fail exactly where the bug is;
- every status: ``error`` (message kept, run goes on), ``not_expressible``, ``unimplemented``,
  ``skipped``, ``warn`` (an error between the probabilistic and the rigorous bound), ``fail``;
  ``--repeat`` reports nondeterminism apart from accuracy;
- ``refws check`` exit codes 0 / 1 / 2, the JSON schema, JUnit XML, a user adapter loaded by path.

The ``ws`` suite is judged through ``<array>__wsbound``; tests that need it are skipped, saying so,
until the committed store carries it (the *rebuilt store*).
"""

from __future__ import annotations

import itertools
import json
import math
import subprocess
import sys
import textwrap
import xml.etree.ElementTree as ET
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

import refws
import refws.golden as golden
from refws.cli import main
from refws.conformance import STATUSES, BackendLoadError, NotExpressible, Unimplemented, load_backend, run
from refws.conformance.report import json_report, junit_report, text_report
from refws.ws import resolve_spec

ROOT = Path(__file__).resolve().parents[1]

# What the committed store can judge (the bound data is being added to it): tests hold either way.
STORE_JUDGES_DB = "db" in golden.load("conv_transpose/1d_s1_p0_d1").terms
STORE_HAS_WSBOUND = "w_hat__wsbound" in golden.load("ws/bit_dhwio").arrays
needs_wsbound = pytest.mark.skipif(
    not STORE_HAS_WSBOUND,
    reason="needs the rebuilt golden store with <array>__wsbound (the ws suite has no bound data yet; check: "
    "python -c \"import refws.golden as g; print('w_hat__wsbound' in g.load('ws/bit_dhwio').arrays)\")",
)


# --------------------------------------------------------------------------------------------
# A correct backend
# --------------------------------------------------------------------------------------------
class Correct:
    """refws in float64, returned as ``precision``'s dtype: float64, or float32 (the exact value
    rounded once, which is within the float32 bound)."""

    name = "correct"

    def __init__(self, precision="float64"):
        self.precision = precision
        self.dtype = {"float64": np.float64, "float32": np.float32}[precision]
        # without terms for db in the store the runner cannot judge it (see test_runner_survives_...)
        self.return_db = STORE_JUDGES_DB

    def _out(self, *arrays):
        out = tuple(None if a is None else np.asarray(a).astype(self.dtype) for a in arrays)
        return out if len(out) > 1 else out[0]

    def conv(self, x, w, stride, padding, lhs_dilation, rhs_dilation, groups, *, channel_first):
        return self._out(
            refws.conv(x, w, stride, padding, lhs_dilation, rhs_dilation, groups, channel_first=channel_first)
        )

    def conv_vjp(self, x, w, dy, stride, padding, lhs_dilation, rhs_dilation, groups, *, channel_first):
        return self._out(
            *refws.conv_vjp(x, w, dy, stride, padding, lhs_dilation, rhs_dilation, groups, channel_first=channel_first)
        )

    def conv_jvp(self, x, w, tx, tw, stride, padding, lhs_dilation, rhs_dilation, groups, *, channel_first):
        return self._out(
            *refws.conv_jvp(
                x, w, tx, tw, stride, padding, lhs_dilation, rhs_dilation, groups, channel_first=channel_first
            )
        )

    def conv_transpose(
        self, x, w, stride, padding, output_padding, dilation, groups, *, output_size, bias, channel_first
    ):
        return self._out(
            refws.conv_transpose(
                x,
                w,
                stride,
                padding,
                output_padding,
                dilation,
                groups,
                output_size=output_size,
                bias=bias,
                channel_first=channel_first,
            )
        )

    def conv_transpose_vjp(
        self, x, w, dy, stride, padding, output_padding, dilation, groups, *, output_size, bias, channel_first
    ):
        dx, dw = refws.conv_transpose_vjp(
            x,
            w,
            dy,
            stride,
            padding,
            output_padding,
            dilation,
            groups,
            output_size=output_size,
            channel_first=channel_first,
        )
        if bias is None or not self.return_db:
            return self._out(dx, dw)
        db = refws.bias_vjp(dy, channel_first=channel_first, unbatched=np.ndim(x) == np.ndim(w) - 1)
        return self._out(dx, dw, db)

    def conv_transpose_jvp(
        self,
        x,
        w,
        tx,
        tw,
        stride,
        padding,
        output_padding,
        dilation,
        groups,
        *,
        output_size,
        bias,
        tbias,
        channel_first,
    ):
        args, kw = (
            (stride, padding, output_padding, dilation, groups),
            dict(output_size=output_size, channel_first=channel_first),
        )
        y = refws.conv_transpose(x, w, *args, bias=bias, **kw)
        ty = refws.conv_transpose(tx, w, *args, bias=tbias, **kw) + refws.conv_transpose(x, tw, *args, **kw)
        return self._out(y, ty)

    def _ws(self, spec, eps):
        """(spec, eps) as refws takes them (the WS mutants change them)."""
        return resolve_spec(spec), eps

    def weight_standardize(self, w, gain, eps, *, out_axis, spec):
        spec, eps = self._ws(spec, eps)
        return self._out(refws.weight_standardize(w, gain, eps, out_axis=out_axis, spec=spec))

    def weight_standardize_vjp(self, w, dw_hat, gain, eps, *, out_axis, spec):
        spec, eps = self._ws(spec, eps)
        return self._out(*refws.weight_standardize_vjp(w, dw_hat, gain, eps, out_axis=out_axis, spec=spec))

    def weight_standardize_jvp(self, w, tw, gain, tgain, eps, *, out_axis, spec):
        spec, eps = self._ws(spec, eps)
        return self._out(*refws.weight_standardize_jvp(w, tw, gain, tgain, eps, out_axis=out_axis, spec=spec))


def _run(backend, cases, **kw):
    """``run`` on the cases matching ``cases``, loading only their suite's cases."""
    suite = cases.split("/")[0]
    return run(backend, case=cases, suite=None if any(c in suite for c in "*?[") else suite, **kw)


def _statuses(report) -> dict:
    out = {}
    for r in report.records:
        out.setdefault(r.status, set()).add(f"{r.case}:{r.array}")
    return out


def _failed_arrays(report) -> set:
    return {r.array for r in report.records if r.status == "fail"}


@pytest.mark.parametrize("precision", ["float64", "float32"])
@pytest.mark.parametrize("suite", ["conv", "conv_transpose"])
def test_correct_backend_passes_every_stored_case(suite, precision):
    report = run(Correct(precision), suite=suite)
    by = _statuses(report)
    unjudged = {r.array for r in report.records if r.status == "skipped"}
    assert set(by) <= {"pass", "skipped"}, {s: sorted(v)[:5] for s, v in by.items() if s != "pass"}
    assert unjudged <= ({"db"} if not STORE_JUDGES_DB else set())
    assert report.exit_code == 0 and report.precision == precision
    judged = [r for r in report.records if r.status == "pass"]
    assert len(judged) > 100 and all(r.max_ratio <= 1 for r in judged)
    if precision == "float64":  # the stored values are exact
        assert all(r.max_error == 0 and r.fingerprint == "float64" for r in judged)
    else:
        assert {r.fingerprint for r in judged} <= {"float64", "float32"}


@needs_wsbound
@pytest.mark.parametrize("precision", ["float64", "float32"])
def test_correct_backend_passes_the_ws_suite(precision):
    report = run(Correct(precision), suite="ws")
    assert set(_statuses(report)) == {"pass"}, [
        (r.case, r.array, r.status) for r in report.records if r.status != "pass"
    ][:5]


# --------------------------------------------------------------------------------------------
# Mutants: the correct backend plus one bug each
# --------------------------------------------------------------------------------------------
def _per_axis(value, nd) -> list:
    return list(value) if isinstance(value, (list, tuple)) else [value] * nd


def _canonical_only(x, w, channel_first):
    if channel_first or np.ndim(x) != np.ndim(w):
        raise NotExpressible("this mutant takes batched channels-last input only")


class KernelFlipped(Correct):
    """A true convolution: the kernel flipped along every spatial axis."""

    def conv(self, x, w, *args, **kw):
        return super().conv(x, w[(slice(None, None, -1),) * (w.ndim - 2)], *args, **kw)


class SameSplitOnTheWrongSide(Correct):
    """SAME with the odd padding element at the start (SAME_LOWER) instead of the end."""

    def conv(self, x, w, stride, padding, *args, **kw):
        if isinstance(padding, str) and padding.upper() == "SAME":
            padding = "SAME_LOWER"
        return super().conv(x, w, stride, padding, *args, **kw)


class PadsSwapped(Correct):
    """Explicit (lo, hi) pairs read as (hi, lo)."""

    def conv(self, x, w, stride, padding, *args, **kw):
        if isinstance(padding, list) and all(isinstance(p, list) for p in padding):
            padding = [[hi, lo] for lo, hi in padding]
        return super().conv(x, w, stride, padding, *args, **kw)


class DilationOffByOne(Correct):
    """The rhs (kernel) dilation of the first spatial axis one too large."""

    def conv(self, x, w, stride, padding, lhs_dilation, rhs_dilation, groups, *, channel_first):
        d = _per_axis(rhs_dilation, w.ndim - 2)
        d[0] += 1
        return super().conv(x, w, stride, padding, lhs_dilation, d, groups, channel_first=channel_first)


class StrideIgnoredOnOneAxis(Correct):
    """Stride 1 on the last spatial axis, whatever was asked."""

    def conv(self, x, w, stride, *args, **kw):
        s = _per_axis(stride, w.ndim - 2)
        s[-1] = 1
        return super().conv(x, w, s, *args, **kw)


class GroupsInterleaved(Correct):
    """Input channel c assigned to group c % groups instead of c // (C_in / groups)."""

    def conv(self, x, w, stride, padding, lhs_dilation, rhs_dilation, groups, *, channel_first):
        _canonical_only(x, w, channel_first)
        cg = x.shape[-1] // groups
        order = [g + groups * i for g in range(groups) for i in range(cg)]
        return super().conv(
            x[..., order], w, stride, padding, lhs_dilation, rhs_dilation, groups, channel_first=channel_first
        )


class OutputPaddingDropped(Correct):
    """The transposed conv computed without output_padding, then zero-filled to the right shape."""

    def conv_transpose(
        self, x, w, stride, padding, output_padding, dilation, groups, *, output_size, bias, channel_first
    ):
        _canonical_only(x, w, channel_first)
        full = super().conv_transpose(
            x,
            w,
            stride,
            padding,
            output_padding,
            dilation,
            groups,
            output_size=output_size,
            bias=bias,
            channel_first=channel_first,
        )
        short = super().conv_transpose(
            x, w, stride, padding, 0, dilation, groups, output_size=None, bias=bias, channel_first=channel_first
        )
        out = np.zeros_like(full)
        out[tuple(slice(0, n) for n in short.shape)] = short
        return out


class BiasAddedTwice(Correct):
    def conv_transpose(self, x, w, *args, bias, channel_first, **kw):
        _canonical_only(x, w, channel_first)
        y = super().conv_transpose(x, w, *args, bias=bias, channel_first=channel_first, **kw)
        return y if bias is None else self._out(y + bias)


class DxForgetsTheStride(Correct):
    """dx scatters dy[o] to window o instead of o * stride (dy placed unstrided into the
    stride-1 output, then the stride-1 VJP)."""

    def conv_vjp(self, x, w, dy, stride, padding, lhs_dilation, rhs_dilation, groups, *, channel_first):
        _canonical_only(x, w, channel_first)
        _, dw = super().conv_vjp(
            x, w, dy, stride, padding, lhs_dilation, rhs_dilation, groups, channel_first=channel_first
        )
        g = refws.conv_geometry(x.shape[1:-1], w.shape[:-2], stride, padding, lhs_dilation, rhs_dilation)
        pads = [list(p) for p in g.padding]
        y1 = refws.conv(x, w, 1, pads, lhs_dilation, rhs_dilation, groups)
        dy1 = np.zeros(y1.shape)
        dy1[tuple(slice(0, n) for n in dy.shape)] = dy
        dx = refws.conv_vjp(x, w, dy1, 1, pads, lhs_dilation, rhs_dilation, groups)[0]
        return self._out(dx), dw


class DwNotSummedOverTheBatch(Correct):
    """dw of the first batch item only."""

    def conv_vjp(self, x, w, dy, *args, channel_first, **kw):
        _canonical_only(x, w, channel_first)
        dx, _ = super().conv_vjp(x, w, dy, *args, channel_first=channel_first, **kw)
        _, dw = super().conv_vjp(x[:1], w, dy[:1], *args, channel_first=channel_first, **kw)
        return dx, dw


class JvpDropsTheInputTangent(Correct):
    """ty = conv(x, tw): the conv(tx, w) term forgotten."""

    def conv_jvp(self, x, w, tx, tw, *args, **kw):
        return super().conv_jvp(x, w, np.zeros_like(tx), tw, *args, **kw)


class Float16Products(Correct):
    """im2col columns times the kernel, every product rounded to float16, summed in float32."""

    def conv(self, x, w, stride, padding, lhs_dilation, rhs_dilation, groups, *, channel_first):
        _canonical_only(x, w, channel_first)
        if groups != 1:
            raise NotExpressible("this mutant has no groups")
        nd = w.ndim - 2
        cols = refws.im2col(x, w.shape[:nd], stride, padding, lhs_dilation, rhs_dilation)
        rows = cols.reshape(-1, int(np.prod(w.shape[:-1]))).astype(np.float32)
        kernel = w.reshape(-1, w.shape[-1]).astype(np.float32)
        products = (rows[:, :, None] * kernel[None]).astype(np.float16).astype(np.float32)
        y = products.sum(axis=1, dtype=np.float32)
        return self._out(y.reshape(*cols.shape[: 1 + nd], w.shape[-1]))


class OneBorderElementWrong(Correct):
    """Everything right but the first element (batch 0, every spatial index 0, channel 0)."""

    def conv(self, *args, **kw):
        y = np.array(super().conv(*args, **kw))
        first = (0,) * y.ndim
        y[first] += self.dtype(2.0**-10) * (1 + abs(y[first]))
        return y


class WSDdof0(Correct):
    """The variance with ddof 0 where the preset says 1."""

    def _ws(self, spec, eps):
        return replace(resolve_spec(spec), ddof=0), eps


class WSEpsInsideTheSquareRoot(Correct):
    """sqrt(var + eps) where the preset says sqrt(var) + eps."""

    def _ws(self, spec, eps):
        s = resolve_spec(spec)
        return (replace(s, denominator="sqrt_var_plus_eps") if s.denominator == "std_plus_eps" else s), eps


class WSEps1e5(Correct):
    """eps 1e-5 where the preset's default is 1e-4."""

    def _ws(self, spec, eps):
        s = resolve_spec(spec)
        return s, (1e-5 if eps is None and s.eps == 1e-4 else eps)


# (mutant, cases where the slip matters, arrays that must fail: exactly these for the conv suites)
MUTANTS = [
    (KernelFlipped, "conv/2d_pad_same", {"y"}),
    (SameSplitOnTheWrongSide, "conv/2d_pad_same", {"y"}),  # kernel (3, 2): odd total on axis 1
    (PadsSwapped, "conv/2d_pad_pairs", {"y"}),
    (DilationOffByOne, "conv/2d_s1_lhs1_rhs2", {"y"}),
    (StrideIgnoredOnOneAxis, "conv/2d_s2_lhs1_rhs1", {"y"}),
    (GroupsInterleaved, "conv/2d_groups2", {"y"}),
    (OutputPaddingDropped, "conv_transpose/2d_output_padding", {"y"}),
    (BiasAddedTwice, "conv_transpose/2d_s1_p0_d1", {"y"}),
    (DxForgetsTheStride, "conv/2d_s2_lhs1_rhs1", {"dx"}),
    (DwNotSummedOverTheBatch, "conv/2d_pad_same", {"dw"}),
    (JvpDropsTheInputTangent, "conv/2d_pad_same", {"ty"}),
    (Float16Products, "conv/2d_pad_same", {"y"}),
    (OneBorderElementWrong, "conv/2d_pad_same", {"y"}),
]
WS_MUTANTS = [
    (WSDdof0, "ws/elektronn3_hwio", {"w_hat", "dw", "tw_hat"}),
    (WSEpsInsideTheSquareRoot, "ws/qiao_hwio_tiny", {"w_hat", "dw", "tw_hat"}),
    (WSEps1e5, "ws/nfnets_hwio_tiny", {"w_hat", "dw", "tw_hat"}),
]


@pytest.mark.parametrize("precision", ["float64", "float32"])
@pytest.mark.parametrize("mutant, cases, wrong", MUTANTS, ids=[m[0].__name__ for m in MUTANTS])
def test_runner_fails_each_mutant_exactly_where_the_bug_is(mutant, cases, wrong, precision):
    correct = _run(Correct(precision), cases)
    assert set(_statuses(correct)) <= {"pass", "skipped"} and correct.exit_code == 0
    report = _run(mutant(precision), cases)
    assert _failed_arrays(report) == wrong, [(r.case, r.array, r.status, r.message[:200]) for r in report.records]
    assert report.exit_code == 1
    assert not any(r.status == "error" for r in report.records)
    for r in report.records:
        if r.status == "fail":
            assert r.message.startswith(f"{r.case}:{r.array}: not equal to refws within the rigorous {precision}")
            assert r.max_ratio > 1


def test_there_are_at_least_fifteen_mutants():
    assert len(MUTANTS) + len(WS_MUTANTS) >= 15


@needs_wsbound
@pytest.mark.parametrize("precision", ["float64", "float32"])
@pytest.mark.parametrize("mutant, cases, wrong", WS_MUTANTS, ids=[m[0].__name__ for m in WS_MUTANTS])
def test_runner_fails_each_ws_mutant(mutant, cases, wrong, precision):
    assert set(_statuses(_run(Correct(precision), cases))) == {"pass"}
    report = _run(mutant(precision), cases)
    assert wrong <= _failed_arrays(report), [(r.case, r.array, r.status) for r in report.records]


def test_ws_mutants_really_compute_something_else():
    """Independent of the store: each WS mutant's w_hat differs from refws's on its cases."""
    for mutant, cases, _ in WS_MUTANTS:
        for case in golden.cases(suite="ws"):
            if case.name == cases:
                kw = dict(
                    gain=case["gain"] if case.params["gain"] else None,
                    eps=case.params["eps"],
                    out_axis=case.params["out_axis"],
                    spec=case.params["spec"],
                )
                good = Correct().weight_standardize(case["w"], **kw)
                bad = mutant().weight_standardize(case["w"], **kw)
                assert np.max(np.abs(bad - good)) > 1e-6 * np.max(np.abs(good)), mutant.__name__


def test_float16_products_is_caught_at_float32_but_fits_a_float16_input_bound():
    """The mutant's error is of float16 size: it fails float32, and is consistent with float16
    input rounding (what the fingerprint reports)."""
    report = _run(Float16Products("float32"), "conv/2d_pad_same")
    y = [r for r in report.records if r.array == "y"][0]
    assert y.status == "fail" and y.fingerprint in ("tf32", "float16", "bf16x1", "bfloat16")


def test_border_mutant_is_described_at_the_low_border_of_batch_item_0():
    report = _run(OneBorderElementWrong("float32"), "conv/2d_pad_same")
    y = [r for r in report.records if r.array == "y"][0]
    assert y.status == "fail" and "mismatched elements: 1 / " in y.message
    assert (
        "where: 1 of" in y.message
        and "batch items: batch item 0; spatial axis 0: position 0 (low border); "
        "spatial axis 1: position 0 (low border); channels: channel 0 of"
        in y.message
    )
    assert [a["kind"] for a in y.where["axes"][1:3]] == ["low_border", "low_border"]


def test_output_padding_mutant_is_described_at_the_high_border():
    report = _run(OutputPaddingDropped("float32"), "conv_transpose/1d_output_padding")
    y = [r for r in report.records if r.array == "y"][0]
    n = golden.load("conv_transpose/1d_output_padding")["y"].shape[1]
    assert f"spatial axis 0: positions {n - 2}, {n - 1} (high border)" in y.message


# --------------------------------------------------------------------------------------------
# Statuses
# --------------------------------------------------------------------------------------------
class Mixed(Correct):
    """One status per method: pass, error, not_expressible, unimplemented, skipped, fail."""

    name = "mixed"

    def conv_vjp(self, *args, **kw):
        raise KeyError("boom")

    def conv_jvp(self, *args, **kw):
        raise NotExpressible("no forward mode here")

    def conv_transpose(self, *args, **kw):
        raise Unimplemented("refused by the framework")

    conv_transpose_vjp = None  # not callable: the method is missing

    def conv_transpose_jvp(self, *args, **kw):
        y, ty = super().conv_transpose_jvp(*args, **kw)
        return y, ty[..., :-1]  # wrong shape


MIXED_CASES = "conv*/1d_s1_*"  # 3 conv and 4 conv_transpose cases


def test_every_status_and_the_run_goes_on():
    report = _run(Mixed(), MIXED_CASES)
    cases = sorted({r.case for r in report.records})
    assert len(cases) == 7  # every case ran
    by = {(r.case.split("/")[0], r.array): r for r in report.records}
    assert by["conv", "y"].status == "pass"
    for a in ("dx", "dw"):
        r = by["conv", a]
        assert r.status == "error" and r.message.startswith("KeyError: 'boom' (at test_conformance.py:")
        assert r.max_error is None and r.fingerprint is None
    assert by["conv", "ty"].status == "not_expressible" and by["conv", "ty"].message == "no forward mode here"
    assert (
        by["conv_transpose", "y"].status == "unimplemented"
        and by["conv_transpose", "y"].message == "refused by the framework"
    )
    skipped = by["conv_transpose", "dx"]
    assert skipped.status == "skipped" and skipped.message == "the adapter has no conv_transpose_vjp()"
    t = by["conv_transpose", "ty"]
    assert t.status == "fail" and "shape" in t.message and "expected" in t.message
    assert report.exit_code == 1
    counts = {s: sum(1 for r in report.records if r.status == s) for s in STATUSES}
    assert counts["pass"] == 3 and counts["error"] == 6 and counts["not_expressible"] == 3
    assert counts["unimplemented"] == 4 and counts["fail"] == 4 and counts["warn"] == 0
    text = text_report(report)
    assert "ERROR conv/1d_s1_lhs1_rhs2:dx" in text and "KeyError: 'boom'" in text
    assert "unimplemented: conv_transpose/1d_s1_p0_d1:y (refused by the framework)" in text
    assert text.rstrip().endswith("exit 1: failures or adapter errors")


def test_an_unexpressible_case_alone_does_not_fail_the_run():
    class OnlyConv(Correct):
        def conv(self, x, w, *args, channel_first, **kw):
            if channel_first:
                raise NotExpressible("channels-last only")
            return super().conv(x, w, *args, channel_first=channel_first, **kw)

    report = _run(OnlyConv(), "conv/*channel_first*")
    assert {r.status for r in report.records if r.array == "y"} == {"not_expressible"}
    assert report.exit_code == 0


class Sloppy(Correct):
    """Declares float32; dw off by ``factor * u * conv_vjp(|x|, w, |dy|)``: above the probabilistic
    bound ``6 sqrt(K) u m``, below the rigorous ``gamma_K(u) m`` for K = 84."""

    factor = 0.0

    def conv_vjp(self, x, w, dy, *args, **kw):
        dx, dw = refws.conv_vjp(x, w, dy, *args, **kw)
        m = refws.conv_vjp(np.abs(x), w, np.abs(dy), *args, **kw)[1]
        return dx, dw + self.factor * 2.0**-24 * m  # float64: no rounding of our own


def test_warn_between_the_probabilistic_and_the_rigorous_bound():
    K = golden.load("conv/2d_pad_same").terms["dw"]
    assert 6 * math.sqrt(K) < K  # the tiers differ here
    backend = Sloppy("float32")
    backend.factor = (6 * math.sqrt(K) + K) / 2
    report = _run(backend, "conv/2d_pad_same")
    dw = [r for r in report.records if r.array == "dw"][0]
    assert dw.status == "warn" and 1 < dw.max_warn_ratio and dw.max_ratio < 1
    assert "above the probabilistic one" in dw.message and "lower precision" in dw.message
    assert {r.status for r in report.records if r.array != "dw"} == {"pass"}
    assert report.exit_code == 0
    assert report.summary()["conv"]["counts"]["warn"] == 1
    backend.factor = K * 1.01  # and above the rigorous bound: fail
    assert _failed_arrays(_run(backend, "conv/2d_pad_same")) == {"dw"}


class Nondeterministic(Correct):
    """Every second conv() call is one float32 ulp higher: accurate, not reproducible."""

    def __init__(self, precision="float32"):
        super().__init__(precision)
        self.calls = 0

    def conv(self, *args, **kw):
        y = super().conv(*args, **kw)
        self.calls += 1
        return np.nextafter(y, np.inf) if self.calls % 2 == 0 else y


def test_repeat_flags_nondeterminism_apart_from_accuracy():
    report = _run(Nondeterministic(), "conv/2d_pad_same", repeat=2)
    flags = {r.array: (r.status, r.nondeterministic) for r in report.records}
    assert flags == {"y": ("pass", True), "dx": ("pass", False), "dw": ("pass", False), "ty": ("pass", False)}
    assert report.exit_code == 0 and report.summary()["conv"]["nondeterministic"] == 1
    assert "nondeterministic (bits differ between repeats): 1 array(s)\n  conv/2d_pad_same:y" in text_report(report)
    once = _run(Nondeterministic(), "conv/2d_pad_same")
    assert all(r.nondeterministic is None for r in once.records)


@pytest.mark.parametrize("repeat", [0, -1, True, 1.5])
def test_run_refuses_a_bad_repeat(repeat):
    with pytest.raises(ValueError, match="repeat="):
        _run(Correct(), "conv/1d_pad_same", repeat=repeat)


def test_run_refuses_a_pattern_matching_nothing():
    with pytest.raises(ValueError, match="no stored case .* matches"):
        _run(Correct(), "conv/nothing_like_this*")


def test_precision_override_judges_by_the_given_precision():
    """Rounding every product to float16 is float16 accumulation's error model, not float16's
    (whose products are exact in its float32 accumulator): judged as such, it passes."""
    report = _run(Float16Products("float32"), "conv/2d_pad_same", precision="float16-acc16")
    assert report.precision == "float16-acc16" and {r.status for r in report.records} == {"pass"}
    assert _failed_arrays(_run(Float16Products("float32"), "conv/2d_pad_same", precision="float16")) == {"y"}


# --------------------------------------------------------------------------------------------
# A store the runner cannot judge everywhere
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name, array", [("conv_transpose/1d_s1_p0_d1", "db"), ("ws/bit_hwio", "w_hat")])
def test_an_output_without_bound_data_is_an_error_record_and_the_run_goes_on(tmp_path, name, array):
    """A store as documented before bound data for every output (``terms`` for bilinear maps only)."""
    store = tmp_path / "store"
    assert main(["golden", "build", "--out", str(store), "--case", name]) == 0
    manifest_path = store / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    manifest["cases"][name]["terms"].pop(array, None)
    manifest_path.write_text(json.dumps(manifest, indent=1, sort_keys=True) + "\n")
    backend = Correct()
    backend.return_db = True
    report = run(backend, store)
    records = {r.array: r for r in report.records}
    assert records[array].status == "error" and records[array].message.startswith(f"golden store: array={array!r}")
    assert report.exit_code == 1
    if name.startswith("conv_transpose"):
        assert {r.status for a, r in records.items() if a != array} == {"pass"}


# --------------------------------------------------------------------------------------------
# refws check: exit codes, reports, a user adapter loaded by path
# --------------------------------------------------------------------------------------------
USER_ADAPTER = textwrap.dedent('''
    """A user's adapter, outside refws and outside the tests."""
    import numpy as np
    import refws
    from refws.conformance import NotExpressible, Unimplemented


    class Backend:
        name, version = "user", "9.9"

        def __init__(self, precision="float32", scale=1.0):
            self.precision, self.scale = precision, scale
            self.dtype = np.float32 if precision == "float32" else np.float64
            self.calls = 0

        def conv(self, x, w, stride, padding, lhs_dilation, rhs_dilation, groups, *, channel_first):
            y = refws.conv(x, w, stride, padding, lhs_dilation, rhs_dilation, groups, channel_first=channel_first)
            return (self.scale * y).astype(self.dtype)


    class Flipped(Backend):
        def conv(self, x, w, *args, **kw):
            return super().conv(x, w[(slice(None, None, -1),) * (w.ndim - 2)], *args, **kw)


    class Jittery(Backend):
        def conv(self, *args, **kw):
            self.calls += 1
            y = super().conv(*args, **kw)
            return np.nextafter(y, np.inf) if self.calls % 2 == 0 else y


    class Mixed(Backend):
        def conv_vjp(self, *args, **kw):
            raise KeyError("boom")

        def conv_jvp(self, *args, **kw):
            raise NotExpressible("no forward mode here")

        def conv_transpose(self, *args, **kw):
            raise Unimplemented("refused by the framework")

        def conv_transpose_jvp(self, x, w, tx, tw, *args, bias, tbias, **kw):
            y = refws.conv_transpose(x, w, *args, bias=bias, **kw)
            return y, y                                    # ty wrong


    INSTANCE = Backend()
''')

_counter = itertools.count()


@pytest.fixture
def user_module(tmp_path, monkeypatch):
    """The adapter file in a fresh folder, the current directory there; sys.path and sys.modules
    restored afterwards."""
    name = f"user_backend_{next(_counter)}"
    (tmp_path / f"{name}.py").write_text(USER_ADAPTER)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", list(sys.path))
    yield name
    sys.modules.pop(name, None)


def _check(capsys, *argv):
    code = main(["check", *argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_check_exit_0_with_a_user_adapter_loaded_from_the_current_directory(user_module, capsys, tmp_path):
    code, out, err = _check(
        capsys,
        f"{user_module}:Backend",
        "--suite",
        "conv",
        "--case",
        "conv/1d_pad_*",
        "--json",
        str(tmp_path / "r.json"),
        "--junit",
        str(tmp_path / "r.xml"),
    )
    assert code == 0, out + err
    assert "refws check: user 9.9 at float32" in out and "exit 0: every expressible array passes" in out
    doc = json.loads((tmp_path / "r.json").read_text())
    assert doc["exit_code"] == 0 and doc["backend"] == "user" and doc["precision"] == "float32"
    assert {r["status"] for r in doc["records"]} == {"pass", "skipped"}  # vjp/jvp missing: skipped
    assert {r["array"] for r in doc["records"] if r["status"] == "pass"} == {"y"}


def test_check_passes_precision_and_options_to_the_factory(user_module, capsys):
    assert _check(capsys, f"{user_module}:Backend", "--precision", "float64", "--case", "conv/1d_pad_same")[0] == 0
    code, out, _ = _check(capsys, f"{user_module}:Backend", "--opt", "scale=2", "--case", "conv/1d_pad_same")
    assert code == 1 and "FAIL conv/1d_pad_same:y" in out
    backend = load_backend(f"{user_module}:Backend", "float64", scale=1.5)
    assert backend.precision == "float64" and backend.scale == 1.5
    assert load_backend(f"{user_module}:INSTANCE").name == "user"
    with pytest.raises(BackendLoadError, match="adapter object, not a factory"):
        load_backend(f"{user_module}:INSTANCE", "float32")


def test_check_exit_1_on_a_wrong_backend(user_module, capsys):
    code, out, _ = _check(capsys, f"{user_module}:Flipped", "--case", "conv/2d_pad_same")
    assert code == 1
    assert "FAIL conv/2d_pad_same:y" in out and "mismatched elements" in out and "exit 1:" in out


def test_check_repeat_reports_nondeterminism_and_exits_0(user_module, capsys, tmp_path):
    code, out, _ = _check(
        capsys, f"{user_module}:Jittery", "--case", "conv/2d_pad_*", "--repeat", "2", "--json", str(tmp_path / "r.json")
    )
    assert code == 0
    doc = json.loads((tmp_path / "r.json").read_text())
    judged = [r for r in doc["records"] if r["status"] == "pass"]
    assert judged and all(r["nondeterministic"] is True for r in judged)
    assert doc["summary"]["conv"]["nondeterministic"] == len(judged)
    assert f"nondeterministic (bits differ between repeats): {len(judged)} array(s)" in out


def _strict_json(text: str):
    def refuse(constant):
        raise ValueError(f"non-standard JSON constant {constant}")

    return json.loads(text, parse_constant=refuse)


def test_json_and_junit_reports_agree_with_every_record(user_module, capsys, tmp_path):
    code, out, _ = _check(
        capsys,
        f"{user_module}:Mixed",
        "--case",
        MIXED_CASES,
        "--json",
        str(tmp_path / "r.json"),
        "--junit",
        str(tmp_path / "r.xml"),
    )
    assert code == 1
    doc = _strict_json((tmp_path / "r.json").read_text())
    assert doc["schema"] == "refws-check/1" and doc["exit_code"] == 1 and doc["version"] == "9.9"
    assert {"backend", "precision", "golden", "refws_version", "seconds", "summary", "records"} <= set(doc)
    records = doc["records"]
    for r in records:
        assert {"case", "suite", "array", "status", "max_error", "max_ratio", "fingerprint", "message"} <= set(r)
        assert r["status"] in STATUSES and r["suite"] == r["case"].split("/")[0]
        if r["status"] == "pass":
            assert isinstance(r["max_error"], float) and 0 <= r["max_ratio"] <= 1 and r["message"] == ""
        if r["status"] in ("error", "skipped", "not_expressible", "unimplemented"):
            assert r["max_error"] is None and r["message"]
    statuses = {r["status"] for r in records}
    assert statuses == {"pass", "error", "not_expressible", "unimplemented", "skipped", "fail"}
    for suite, s in doc["summary"].items():
        mine = [r for r in records if r["suite"] == suite]
        assert s["counts"] == {st: sum(1 for r in mine if r["status"] == st) for st in STATUSES}
    xml = ET.parse(tmp_path / "r.xml").getroot()
    assert xml.tag == "testsuites"
    suites = {ts.get("name"): ts for ts in xml.findall("testsuite")}
    assert set(suites) == {f"refws.{s}" for s in doc["summary"]}
    for suite, s in doc["summary"].items():
        ts, c = suites[f"refws.{suite}"], s["counts"]
        cases = ts.findall("testcase")
        assert int(ts.get("tests")) == len(cases) == sum(c.values())
        assert int(ts.get("failures")) == c["fail"] == sum(1 for t in cases if t.find("failure") is not None)
        assert int(ts.get("errors")) == c["error"] == sum(1 for t in cases if t.find("error") is not None)
        assert (
            int(ts.get("skipped"))
            == c["not_expressible"] + c["unimplemented"] + c["skipped"]
            == sum(1 for t in cases if t.find("skipped") is not None)
        )
    names = {t.get("name") for t in xml.iter("testcase")}
    assert {f"{r['case']}:{r['array']}" for r in records} == names
    error = next(t for t in xml.iter("testcase") if t.find("error") is not None).find("error")
    assert error.get("message").startswith("KeyError: 'boom'")


def test_report_functions_on_a_warn_report():
    backend = Sloppy("float32")
    backend.factor = 70.0
    report = _run(backend, "conv/2d_pad_same")
    doc = json_report(report)
    assert doc["summary"]["conv"]["counts"]["warn"] == 1 and doc["exit_code"] == 0
    xml = ET.fromstring(junit_report(report))
    ts = xml.find("testsuite")
    assert ts.get("failures") == "0" and ts.get("errors") == "0"
    warn = [t for t in ts.findall("testcase") if t.find("system-out") is not None]
    assert [t.get("name") for t in warn] == ["conv/2d_pad_same:dw"]


@pytest.mark.parametrize(
    "argv, says",
    [
        ([], "the following arguments are required: backend"),
        (["{m}:Backend", "--suite", "nosuch"], "invalid choice: 'nosuch'"),
        (["{m}:Backend", "--repeat", "x"], "invalid int value: 'x'"),
        (["{m}:Backend", "--repeat", "0", "--case", "conv/1d_pad_same"], "repeat=0"),
        (["{m}:Backend", "--case", "conv/no_such_case*"], "no stored case"),
        (["{m}:Backend", "--opt", "novalue"], "--opt 'novalue': expected KEY=VALUE"),
        (["{m}:Backend", "--opt", "colour=1"], "cannot construct it"),
        (["{m}:NoSuchClass"], "has no attribute 'NoSuchClass'"),
        (["nosuch.module:X"], "cannot import 'nosuch.module'"),
        (["no_colon_here"], "expected one of"),
    ],
)
def test_check_exit_2_on_bad_usage_and_unloadable_backends(user_module, capsys, argv, says):
    code, out, err = _check(capsys, *[a.format(m=user_module) for a in argv])
    assert code == 2, out + err
    assert says in err


def test_check_exit_2_on_a_corrupt_store(user_module, capsys, tmp_path):
    store = tmp_path / "store"
    assert main(["golden", "build", "--out", str(store), "--case", "conv/1d_pad_same*"]) == 0
    capsys.readouterr()
    code, out, err = _check(capsys, f"{user_module}:Backend", "--golden", str(store))
    assert code == 0, out + err
    victim = store / "conv" / "1d_pad_same_lower.npz"
    data = bytearray(victim.read_bytes())
    data[len(data) // 2] ^= 0x01
    victim.write_bytes(bytes(data))
    code, out, err = _check(capsys, f"{user_module}:Backend", "--golden", str(store))
    assert code == 2 and "1d_pad_same_lower.npz" in err and "checksum mismatch" in err
    (store / "manifest.json").write_text("{not json")
    assert _check(capsys, f"{user_module}:Backend", "--golden", str(store))[0] == 2


def test_refws_check_command_exit_codes_from_a_real_process(tmp_path):
    (tmp_path / "proc_backend.py").write_text(USER_ADAPTER)
    env_path = f"{ROOT}"

    def check(*argv):
        return subprocess.run(
            [sys.executable, "-m", "refws", "check", *argv],
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=120,
            env={**__import__("os").environ, "PYTHONPATH": env_path},
        )

    ok = check("proc_backend:Backend", "--case", "conv/1d_pad_same")
    bad = check("proc_backend:Flipped", "--case", "conv/1d_pad_same")
    broken = check("nosuch.module:X")
    assert (ok.returncode, bad.returncode, broken.returncode) == (0, 1, 2), ok.stderr + bad.stderr
    assert "cannot import 'nosuch.module'" in broken.stderr
