"""Diagnosis of failing arrays (refws.conformance.diagnosis): does it name the slip a backend made?

Each slip backend below is a correct backend (refws's public functions) with exactly one
convention changed, written here from the slip's definition (a changed argument, a flipped or
reshaped operand, a different formula), not from the diagnosis module's index maps: its
derivatives are the derivatives of its own slipped forward, written out by hand. Each is run
through ``refws.conformance.run`` (the default diagnosis) on golden cases where the slip changes
the result, and the diagnosis must name the slip on every kind of array that fails. The correct
backend must pass everything, so nothing is ever diagnosed for it.

The ``ws`` suite's store has no bound data yet (``terms``, ``<array>__wsbound``), which the
runner needs to judge it; the WS slips are run through ``run_case`` on stored ws cases given
synthetic bound data here (a relative tolerance of ``64 n u max|array|``, the usual practice the
golden-format document names), and through the store itself once it carries that data.
"""

from __future__ import annotations

import dataclasses
import json
import math

import numpy as np
import pytest

import refws
import refws.golden as golden
from refws.conformance import diagnosis, run, run_case
from refws.conformance.diagnosis import PAIRS, VARIANTS, diagnose, diagnosis_text
from refws.conformance.report import json_report, text_report
from refws.grads import conv_transpose_vjp, conv_vjp
from refws.testing import assert_golden_close, check_golden
from refws.ws import resolve_spec

pytestmark = pytest.mark.skipif(not (golden.default_root() / "manifest.json").exists(), reason="golden/ not built")

CONV_ARGS = ("stride", "padding", "lhs_dilation", "rhs_dilation", "groups")


# --------------------------------------------------------------------------------------------
# a correct backend, and slips of it
# --------------------------------------------------------------------------------------------
class Correct:
    """refws's public functions behind the adapter protocol; ``conv_transpose_vjp`` returns no db."""

    name = "correct"
    precision = "float64"

    # the hooks a slip overrides: the convolution's arguments, its operands, its output
    def args(self, kw, x, w):
        return kw

    def fwd(self, x, w, kw):
        return refws.conv(x, w, **self.args(kw, x, w))

    def vjp(self, x, w, dy, kw):
        return conv_vjp(x, w, dy, **self.args(kw, x, w))

    def conv(self, x, w, stride, padding, lhs_dilation, rhs_dilation, groups, *, channel_first):
        return self.fwd(
            x,
            w,
            dict(
                stride=stride,
                padding=padding,
                lhs_dilation=lhs_dilation,
                rhs_dilation=rhs_dilation,
                groups=groups,
                channel_first=channel_first,
            ),
        )

    def conv_vjp(self, x, w, dy, stride, padding, lhs_dilation, rhs_dilation, groups, *, channel_first):
        return self.vjp(
            x,
            w,
            dy,
            dict(
                stride=stride,
                padding=padding,
                lhs_dilation=lhs_dilation,
                rhs_dilation=rhs_dilation,
                groups=groups,
                channel_first=channel_first,
            ),
        )

    def conv_jvp(self, x, w, tx, tw, stride, padding, lhs_dilation, rhs_dilation, groups, *, channel_first):
        kw = dict(
            stride=stride,
            padding=padding,
            lhs_dilation=lhs_dilation,
            rhs_dilation=rhs_dilation,
            groups=groups,
            channel_first=channel_first,
        )
        return self.fwd(x, w, kw), self.fwd(tx, w, kw) + self.fwd(x, tw, kw)

    # transposed convolution: y = tfwd(x, w) + bias
    def tfwd(self, x, w, kw):
        return refws.conv_transpose(x, w, **kw)

    def tvjp(self, x, w, dy, kw):
        return conv_transpose_vjp(x, w, dy, **kw)

    def bias_scale(self):
        return 1

    def _bias(self, y, b, channel_first, batched):
        if b is None:
            return y
        shape = [1] * y.ndim
        shape[(1 if batched else 0) if channel_first else -1] = b.shape[0]
        return y + self.bias_scale() * b.reshape(shape)

    @staticmethod
    def _tkw(stride, padding, output_padding, dilation, groups, output_size, channel_first):
        return dict(
            stride=stride,
            padding=padding,
            output_padding=output_padding,
            dilation=dilation,
            groups=groups,
            output_size=output_size,
            channel_first=channel_first,
        )

    def conv_transpose(
        self, x, w, stride, padding, output_padding, dilation, groups, *, output_size, bias, channel_first
    ):
        kw = self._tkw(stride, padding, output_padding, dilation, groups, output_size, channel_first)
        return self._bias(self.tfwd(x, w, kw), bias, channel_first, np.ndim(x) == np.ndim(w))

    def conv_transpose_vjp(
        self, x, w, dy, stride, padding, output_padding, dilation, groups, *, output_size, bias, channel_first
    ):
        kw = self._tkw(stride, padding, output_padding, dilation, groups, output_size, channel_first)
        return self.tvjp(x, w, dy, kw)

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
        kw = self._tkw(stride, padding, output_padding, dilation, groups, output_size, channel_first)
        batched = np.ndim(x) == np.ndim(w)
        y = self._bias(self.tfwd(x, w, kw), bias, channel_first, batched)
        return y, self._bias(self.tfwd(tx, w, kw) + self.tfwd(x, tw, kw), tbias, channel_first, batched)


def _spatial_axes(a, w, channel_first):
    nd = np.ndim(w) - 2
    start = (1 if np.ndim(a) == np.ndim(w) else 0) + (1 if channel_first else 0)
    return tuple(range(start, start + nd))


def _channel_axis(a, w, channel_first):
    return (1 if np.ndim(a) == np.ndim(w) else 0) if channel_first else np.ndim(a) - 1


def _flip(w):
    return w[(slice(None, None, -1),) * (w.ndim - 2)]


class ArgSlip(Correct):
    """The convolution called with changed arguments (``change(kw, x_spatial, k_spatial)``)."""

    def __init__(self, change):
        self.change = change

    def args(self, kw, x, w):
        spatial = tuple(np.shape(x)[i] for i in _spatial_axes(x, w, kw["channel_first"]))
        return self.change(dict(kw), spatial, tuple(np.shape(w)[:-2]))


def _explicit(kw, spatial, kernel):
    return refws.conv_geometry(
        spatial, kernel, kw["stride"], kw["padding"], kw["lhs_dilation"], kw["rhs_dilation"]
    ).padding


def _same_string(target):
    def change(kw, spatial, kernel):
        if isinstance(kw["padding"], str) and kw["padding"].upper() in ("SAME", "SAME_LOWER"):
            kw["padding"] = target
        return kw

    return change


def _same_undilated(kw, spatial, kernel):
    if isinstance(kw["padding"], str) and kw["padding"].upper() in ("SAME", "SAME_LOWER"):
        kw["padding"] = refws.conv_geometry(spatial, kernel, kw["stride"], kw["padding"], 1, 1).padding
    return kw


def _with(name, value):
    def change(kw, spatial, kernel):
        kw["padding"] = _explicit(kw, spatial, kernel)
        kw[name] = value(kw[name], len(spatial))
        return kw

    return change


def _per_axis(v, n):
    return (v,) * n if isinstance(v, int) else tuple(v) * (n if len(v) == 1 else 1)


def _swap_first_two(kw, spatial, kernel):
    """stride, dilations and the explicit pads applied to the first two spatial axes exchanged."""
    pads = _explicit(kw, spatial, kernel)
    kw["padding"] = (pads[1], pads[0]) + tuple(pads[2:])
    for name in ("stride", "lhs_dilation", "rhs_dilation"):
        v = _per_axis(kw[name], len(spatial))
        kw[name] = (v[1], v[0]) + v[2:]
    return kw


class OperandSlip(Correct):
    """The kernel transformed by ``kmap`` (and back for dw: ``kmap_t``) before the correct conv."""

    def __init__(self, kmap, kmap_t):
        self.kmap, self.kmap_t = kmap, kmap_t

    def fwd(self, x, w, kw):
        return refws.conv(x, self.kmap(w), **kw)

    def vjp(self, x, w, dy, kw):
        dx, dw = conv_vjp(x, self.kmap(w), dy, **kw)
        return dx, self.kmap_t(dw)

    def tfwd(self, x, w, kw):
        return refws.conv_transpose(x, self.kmap(w), **kw)

    def tvjp(self, x, w, dy, kw):
        dx, dw = conv_transpose_vjp(x, self.kmap(w), dy, **kw)
        return dx, self.kmap_t(dw)


class DataSlip(Correct):
    """The input through ``xmap`` and the output through ``ymap`` around the correct conv, with the
    inner layout ``inner(channel_first)``; the adjoints (``xmap_t``, ``ymap_t``) undo them."""

    def __init__(self, xmap, xmap_t, ymap, ymap_t, inner=lambda cf: cf):
        self.xmap, self.xmap_t, self.ymap, self.ymap_t, self.inner = xmap, xmap_t, ymap, ymap_t, inner

    def _kw(self, kw):
        return dict(kw, channel_first=self.inner(kw["channel_first"]))

    def fwd(self, x, w, kw):
        return self.ymap(refws.conv(self.xmap(x, w, kw), w, **self._kw(kw)), w, kw)

    def vjp(self, x, w, dy, kw):
        dx, dw = conv_vjp(self.xmap(x, w, kw), w, self.ymap_t(dy, w, kw), **self._kw(kw))
        return self.xmap_t(dx, w, kw), dw

    def tfwd(self, x, w, kw):
        return self.ymap(refws.conv_transpose(self.xmap(x, w, kw), w, **self._kw(kw)), w, kw)

    def tvjp(self, x, w, dy, kw):
        dx, dw = conv_transpose_vjp(self.xmap(x, w, kw), w, self.ymap_t(dy, w, kw), **self._kw(kw))
        return self.xmap_t(dx, w, kw), dw


def _swap_data(a, w, kw):
    axes = _spatial_axes(a, w, kw["channel_first"])
    return np.swapaxes(a, axes[0], axes[1])


def _interleave(a, w, kw):
    axis, groups = _channel_axis(a, w, kw["channel_first"]), kw["groups"]
    per = a.shape[axis] // groups
    return np.take(a, [c * groups + g for g in range(groups) for c in range(per)], axis=axis)


def _deinterleave(a, w, kw):
    axis, groups = _channel_axis(a, w, kw["channel_first"]), kw["groups"]
    per = a.shape[axis] // groups
    order = np.argsort([c * groups + g for g in range(groups) for c in range(per)])
    return np.take(a, order, axis=axis)


def _reshape_to(layout_cf):
    """Reinterpret an array's memory as the other layout's shape (channel axis moved in the shape only)."""

    def reshape(a, w, kw):
        cf = layout_cf(kw["channel_first"])
        lead = 1 if np.ndim(a) == np.ndim(w) else 0
        s = a.shape
        return a.reshape(s[:lead] + (s[lead + 1 :] + s[lead : lead + 1] if cf else s[-1:] + s[lead:-1]))

    return reshape


class DxStrideIgnored(Correct):
    """dx from dy as if the convolution had stride 1: dy zero-padded at the end to the stride-1
    output and pulled back through the stride-1 convolution (same explicit pads)."""

    def vjp(self, x, w, dy, kw):
        spatial = tuple(np.shape(x)[i] for i in _spatial_axes(x, w, kw["channel_first"]))
        kw1 = dict(kw, padding=_explicit(kw, spatial, np.shape(w)[:-2]), stride=1)
        y1 = refws.conv(x, w, **kw1)
        big = np.zeros(y1.shape)
        big[tuple(slice(0, n) for n in dy.shape)] = dy
        dx = conv_vjp(x, w, big, **kw1)[0]
        return dx, conv_vjp(x, w, dy, **kw)[1]


class DwFirstSample(Correct):
    def vjp(self, x, w, dy, kw):
        return conv_vjp(x, w, dy, **kw)[0], conv_vjp(x[:1], w, dy[:1], **kw)[1]

    def tvjp(self, x, w, dy, kw):
        return conv_transpose_vjp(x, w, dy, **kw)[0], conv_transpose_vjp(x[:1], w, dy[:1], **kw)[1]


class DwFlipped(Correct):
    def vjp(self, x, w, dy, kw):
        dx, dw = conv_vjp(x, w, dy, **kw)
        return dx, _flip(dw)

    def tvjp(self, x, w, dy, kw):
        dx, dw = conv_transpose_vjp(x, w, dy, **kw)
        return dx, _flip(dw)


# transposed-convolution slips


def _correct_size(x, w, kw):
    return refws.conv_transpose(np.zeros(np.shape(x)), np.zeros(np.shape(w)), **kw).shape


class OutputPaddingZeros(Correct):
    """Computed without output_padding, then zero-padded at the high end to the right size."""

    def _short(self, kw):
        return dict(kw, output_padding=0, output_size=None)

    def tfwd(self, x, w, kw):
        short, full = refws.conv_transpose(x, w, **self._short(kw)), _correct_size(x, w, kw)
        out = np.zeros(full)
        out[tuple(slice(0, n) for n in short.shape)] = short
        return out

    def tvjp(self, x, w, dy, kw):
        short = refws.conv_transpose(x, w, **self._short(kw)).shape
        return conv_transpose_vjp(x, w, dy[tuple(slice(0, n) for n in short)], **self._short(kw))


class OutputPaddingLow(Correct):
    """The full transposed output z (padding 0), read from p - output_padding instead of p."""

    def _window(self, x, w, kw):
        full_kw = dict(kw, padding=0, output_padding=0, output_size=None)
        full = _correct_size(x, w, full_kw)
        size = _correct_size(x, w, kw)
        axes = _spatial_axes(np.zeros(full), w, kw["channel_first"])
        p = _per_axis(kw["padding"], len(axes))
        starts = {}
        for i, a in enumerate(axes):
            op = size[a] - (full[a] - 2 * p[i])
            starts[a] = p[i] - op
        return full_kw, full, size, starts

    def tfwd(self, x, w, kw):
        full_kw, full, size, starts = self._window(x, w, kw)
        z = refws.conv_transpose(x, w, **full_kw)
        out = np.zeros(size)
        src, dst = [slice(None)] * z.ndim, [slice(None)] * z.ndim
        for a, s0 in starts.items():
            src[a] = slice(max(s0, 0), s0 + size[a])
            dst[a] = slice(max(-s0, 0), size[a])
        out[tuple(dst)] = z[tuple(src)]
        return out

    def tvjp(self, x, w, dy, kw):
        full_kw, full, size, starts = self._window(x, w, kw)
        big = np.zeros(full)
        src, dst = [slice(None)] * dy.ndim, [slice(None)] * dy.ndim
        for a, s0 in starts.items():
            dst[a] = slice(max(s0, 0), s0 + size[a])
            src[a] = slice(max(-s0, 0), size[a])
        big[tuple(dst)] = dy[tuple(src)]
        return conv_transpose_vjp(x, w, big, **full_kw)


class WeightReshaped(Correct):
    """ConvTranspose as one conv of the stride-dilated input (pads d(k-1)-p, d(k-1)-p+op) whose
    kernel is the PyTorch weight (C_in, C_out/g, *k) reshaped to (C_out, C_in/g, *k), then flipped."""

    def _setup(self, x, w, kw):
        nd = np.ndim(w) - 2
        size = _correct_size(x, w, kw)
        axes = _spatial_axes(np.zeros(size), w, kw["channel_first"])
        xs = _spatial_axes(x, w, kw["channel_first"])
        s, d, p = (_per_axis(kw[k], nd) for k in ("stride", "dilation", "padding"))
        pads = []
        for i in range(nd):
            k, n = np.shape(w)[i], np.shape(x)[xs[i]]
            lo = d[i] * (k - 1) - p[i]
            base = (n - 1) * s[i] - 2 * p[i] + d[i] * (k - 1) + 1
            pads.append((lo, lo + size[axes[i]] - base))
        return dict(
            stride=1,
            padding=pads,
            lhs_dilation=s,
            rhs_dilation=d,
            groups=kw["groups"],
            channel_first=kw["channel_first"],
        )

    def _kernel(self, w, groups):
        pt = np.moveaxis(w, (-1, -2), (0, 1))  # (C_in, C_out/g, *k)
        c_in, c_og = pt.shape[:2]
        fwd = pt.reshape(c_og * groups, c_in // groups, *pt.shape[2:])  # read as (C_out, C_in/g, *k)
        return _flip(np.moveaxis(fwd, (0, 1), (-1, -2)))  # HWIO, flipped

    def _kernel_t(self, dk, w_shape, groups):
        fwd = np.moveaxis(_flip(dk), (-1, -2), (0, 1))
        pt = fwd.reshape(w_shape[-1], w_shape[-2], *w_shape[:-2])
        return np.moveaxis(pt, (0, 1), (-1, -2))

    def tfwd(self, x, w, kw):
        return refws.conv(x, self._kernel(w, kw["groups"]), **self._setup(x, w, kw))

    def tvjp(self, x, w, dy, kw):
        dx, dk = conv_vjp(x, self._kernel(w, kw["groups"]), dy, **self._setup(x, w, kw))
        return dx, self._kernel_t(dk, np.shape(w), kw["groups"])


class BiasScaled(Correct):
    def __init__(self, scale):
        self.scale = scale

    def bias_scale(self):
        return self.scale


# --------------------------------------------------------------------------------------------
# the table: slip name -> (backend, case patterns where it changes the result)
# --------------------------------------------------------------------------------------------
def _times(f):
    return lambda v, n: tuple(f(int(e)) for e in _per_axis(v, n))


def _high_crop_ignores_low_pad(kw, spatial, kernel):
    """jax lax_reference's _pad: np.pad by max(pad, 0), then slice [-lo if lo < 0 : hi % n if hi < 0]
    with n the unpadded size, so a negative high pad also cuts off the low pad's length."""
    kw["padding"] = tuple((lo, hi - lo) if lo > 0 > hi else (lo, hi) for lo, hi in _explicit(kw, spatial, kernel))
    return kw


SLIPS = {
    "kernel_flipped": (OperandSlip(_flip, _flip), ["conv/2d_pad_same", "conv/1d_groups2"]),
    "high_crop_ignores_low_pad": (
        ArgSlip(_high_crop_ignores_low_pad),
        ["conv/bug_lax_reference_pad_2_minus1", "conv/2d_pad_pairs_mixed"],
    ),
    "same_lower": (ArgSlip(_same_string("SAME_LOWER")), ["conv/2d_pad_same", "conv/same_stride2_n9_k2"]),
    "same_upper": (ArgSlip(_same_string("SAME")), ["conv/2d_pad_same_lower", "conv/3d_pad_same_lower"]),
    "same_ignores_rhs_dilation": (
        ArgSlip(_same_undilated),
        ["conv/bug_lax_reference_same_rhs_dilation", "conv/2d_s1_lhs1_rhs2"],
    ),
    "pads_swapped": (
        ArgSlip(lambda kw, sp, k: kw | {"padding": tuple((h, l) for l, h in _explicit(kw, sp, k))}),
        ["conv/2d_pad_pairs", "conv/2d_pad_same"],
    ),
    "padding_ignored": (ArgSlip(lambda kw, sp, k: kw | {"padding": "VALID"}), ["conv/2d_pad_int1"]),
    "rhs_dilation_ignored": (ArgSlip(_with("rhs_dilation", _times(lambda d: 1))), ["conv/2d_s1_lhs1_rhs2"]),
    "rhs_dilation_plus_one": (
        ArgSlip(_with("rhs_dilation", _times(lambda d: d + 1))),
        ["conv/2d_s1_lhs1_rhs2", "conv/1d_pad_valid"],
    ),
    "lhs_dilation_ignored": (ArgSlip(_with("lhs_dilation", _times(lambda d: 1))), ["conv/2d_s1_lhs2_rhs1"]),
    "stride_ignored": (ArgSlip(_with("stride", _times(lambda s: 1))), ["conv/2d_s2_lhs1_rhs1"]),
    "spatial_args_swapped": (ArgSlip(_swap_first_two), ["conv/2d_aniso", "conv/3d_aniso"]),
    "kernel_axes_swapped": (
        OperandSlip(lambda w: np.swapaxes(w, 0, 1), lambda w: np.swapaxes(w, 0, 1)),
        ["conv/2d_unbatched", "conv/2d_channel_first"],
    ),
    "spatial_axes_swapped": (DataSlip(_swap_data, _swap_data, _swap_data, _swap_data), ["conv/2d_pad_same"]),
    "groups_interleaved": (
        DataSlip(_interleave, _deinterleave, lambda a, w, kw: a, lambda a, w, kw: a),
        ["conv/2d_groups2", "conv/1d_groups2", "conv_transpose/2d_groups2_bias"],
    ),
    "channels_first_misread": (
        DataSlip(
            _reshape_to(lambda cf: cf),
            _reshape_to(lambda cf: not cf),
            _reshape_to(lambda cf: not cf),
            _reshape_to(lambda cf: cf),
            inner=lambda cf: not cf,
        ),
        ["conv/2d_channel_first", "conv/1d_pad_same", "conv_transpose/2d_channel_first"],
    ),
    "output_padding_ignored": (
        OutputPaddingZeros(),
        ["conv_transpose/2d_output_padding", "conv_transpose/1d_output_padding"],
    ),
    "output_padding_low": (
        OutputPaddingLow(),
        ["conv_transpose/2d_output_padding", "conv_transpose/2d_groups4_bias_output_padding"],
    ),
    "transpose_kernel_not_flipped": (OperandSlip(_flip, _flip), ["conv_transpose/2d_s2_p1_d1"]),
    "transpose_weight_io_swapped": (WeightReshaped(), ["conv_transpose/2d_s2_p1_d1", "conv_transpose/2d_groups2_bias"]),
    "bias_missing": (BiasScaled(0), ["conv_transpose/2d_s2_p1_d1"]),
    "bias_twice": (BiasScaled(2), ["conv_transpose/2d_s2_p1_d1"]),
    "dx_stride_ignored": (DxStrideIgnored(), ["conv/2d_s2_lhs1_rhs1", "conv/2d_groups3_strided"]),
    "dw_not_summed_over_batch": (DwFirstSample(), ["conv/2d_pad_same", "conv_transpose/2d_s2_p1_d1"]),
    "dw_kernel_flipped": (DwFlipped(), ["conv/2d_pad_same", "conv_transpose/2d_s2_p1_d1"]),
}


SAME_LOWER_BACKEND = SLIPS["same_lower"][0]  # for `refws check spec_tests.test_diagnosis:...`


def _records(backend, patterns):
    out = []
    for pattern in patterns:
        out += run(backend, suite=pattern.split("/")[0], case=pattern).records
    return out


@pytest.mark.parametrize("slip", sorted(SLIPS))
def test_a_backend_with_one_slip_is_diagnosed_with_that_slip(slip):
    backend, patterns = SLIPS[slip]
    records = _records(backend, patterns)
    failing = [r for r in records if r.status == "fail"]
    assert failing, f"the {slip} backend fails nothing on {patterns}"
    assert not [r for r in records if r.status == "error" and r.array in ("y", "ty")], [
        r.message for r in records if r.status == "error"
    ]
    for r in records:  # nothing but failures is diagnosed
        assert (r.diagnosis is not None) == (r.status == "fail")
    named = {r.array for r in failing if slip in r.diagnosis["matches"]}
    kinds = {r.array for r in failing}
    assert named == kinds, {(r.case, r.array): r.diagnosis for r in failing}
    for r in failing:
        assert r.diagnosis["tried"] >= len(r.diagnosis["matches"])


def test_every_named_conv_variant_has_a_slip_backend_here():
    ws = {n for n in VARIANTS if n.startswith("ws_")}
    assert set(VARIANTS) - ws == set(SLIPS)


def test_the_correct_backend_passes_everything_and_is_never_diagnosed():
    for suite in ("conv", "conv_transpose"):
        report = run(Correct(), suite=suite)
        assert {r.status for r in report.records} <= {"pass", "skipped"}
        assert all(r.diagnosis is None for r in report.records)


def test_diagnose_on_the_correct_value_names_nothing_on_every_case():
    """Every variant differs from the correct value wherever it is tried, so refws's own output
    (which passes) would be diagnosed with nothing: the table has no variant equal to refws."""
    for case in list(golden.cases(suite="conv"))[::7] + list(golden.cases(suite="conv_transpose"))[::7]:
        for array in ("y", "dx", "dw", "ty"):
            d = diagnose(None, case, array, case[array], "float64")
            assert d["matches"] == [], (case.name, array, d)


# --------------------------------------------------------------------------------------------
# reports, messages, pairs
# --------------------------------------------------------------------------------------------
def test_reports_and_assertion_messages_carry_the_diagnosis():
    backend = ArgSlip(_same_string("SAME_LOWER"))
    report = run(backend, suite="conv", case="conv/2d_pad_same")
    rec = [r for r in report.records if r.array == "y"][0]
    # pads (1, 1), (0, 1): SAME_LOWER's (1, 1), (1, 0) is also every pad swapped, and both are named
    assert rec.status == "fail" and rec.diagnosis["matches"] == ["same_lower", "pads_swapped"]
    doc = json.loads(json.dumps(json_report(report)))
    y = [r for r in doc["records"] if r["array"] == "y"][0]
    assert y["diagnosis"] == {"matches": ["same_lower", "pads_swapped"], "tried": rec.diagnosis["tried"]}
    assert y["where"]["violations"] > 0
    line = "matches refws under variant same_lower: " + VARIANTS["same_lower"].description
    assert line in text_report(report)
    case = golden.load("conv/2d_pad_same")
    y_bad = backend.conv(case["x"], case["w"], 1, "SAME", 1, 1, 1, channel_first=False)
    with pytest.raises(AssertionError, match="matches refws under variant same_lower"):
        assert_golden_close(y_bad, case, "y")
    assert "diagnosis" not in check_golden(y_bad, case, "y").text
    assert "matches refws" in check_golden(y_bad, case, "y", diagnose=True).text


def test_run_without_diagnosis_and_the_none_matching_answer():
    backend = ArgSlip(_same_string("SAME_LOWER"))
    report = run(backend, suite="conv", case="conv/2d_pad_same", diagnose=None)
    assert all(r.diagnosis is None for r in report.records)
    case = golden.load("conv/2d_pad_same")
    noise = case["y"] + 0.25
    d = diagnose(None, case, "y", noise, "float64")
    assert d["matches"] == [] and d["tried"] > 0
    assert diagnosis_text(d) == f"matches refws under none of the {d['tried']} near-miss variants tried"


def test_a_double_slip_is_named_as_a_pair():
    assert ("kernel_flipped", "pads_swapped") in PAIRS

    class FlippedAndSwapped(ArgSlip):
        def fwd(self, x, w, kw):
            return refws.conv(x, _flip(w), **self.args(kw, x, w))

        def vjp(self, x, w, dy, kw):
            dx, dw = conv_vjp(x, _flip(w), dy, **self.args(kw, x, w))
            return dx, _flip(dw)

    backend = FlippedAndSwapped(SLIPS["pads_swapped"][0].change)
    report = run(backend, suite="conv", case="conv/2d_pad_pairs")
    y = [r for r in report.records if r.array == "y"][0]
    assert y.status == "fail" and y.diagnosis["matches"] == ["kernel_flipped+pads_swapped"]
    assert "variants kernel_flipped + pads_swapped" in diagnosis_text(y.diagnosis)


def test_a_float32_backend_with_a_slip_is_still_diagnosed():
    """Rounded to float32, the slipped output matches the variant within the float32 bound."""

    class F32(OperandSlip):
        precision = "float32"

        def fwd(self, x, w, kw):
            return super().fwd(x.astype(np.float32), w.astype(np.float32), kw).astype(np.float32)

    report = run(F32(_flip, _flip), suite="conv", case="conv/2d_groups2")
    y = [r for r in report.records if r.array == "y"][0]
    assert y.status == "fail" and "kernel_flipped" in y.diagnosis["matches"]


# --------------------------------------------------------------------------------------------
# weight standardization
# --------------------------------------------------------------------------------------------
WS_OUTPUTS = ("w_hat", "dw", "dgain", "tw_hat")


def _ws_case(name):
    """A stored ws case; synthetic bound data when the store has none (see the module doc)."""
    case = golden.load(name)
    if all(f"{a}__wsbound" in case.arrays for a in WS_OUTPUTS if a in case.arrays):
        return case
    w = case["w"]
    n = w.size // w.shape[case.params["out_axis"]]
    arrays = dict(case.arrays)
    for a in WS_OUTPUTS:
        if a in arrays:
            arrays[f"{a}__wsbound"] = np.full(arrays[a].shape, 64.0 * n * np.max(np.abs(arrays[a])))
    return dataclasses.replace(case, arrays=arrays, terms={a: 0 for a in WS_OUTPUTS if a in arrays})


class WSBackend:
    """weight_standardize through refws with the spec (and gain) changed by ``change``."""

    name = "ws-slip"
    precision = "float64"

    def __init__(self, change=lambda spec, gain, w, axis: (spec, gain, 1.0, 1.0)):
        self.change = change

    def _args(self, w, gain, eps, out_axis, spec):
        spec = resolve_spec(spec)
        eps = spec.eps if eps is None else eps
        spec2, gain2, eps_scale, out_scale = self.change(spec, gain, w, out_axis)
        return spec2, gain2, eps * eps_scale, out_scale

    def weight_standardize(self, w, gain, eps, *, out_axis, spec):
        s, g, e, k = self._args(w, gain, eps, out_axis, spec)
        return k * refws.weight_standardize(w, g, e, out_axis=out_axis, spec=s)

    def weight_standardize_vjp(self, w, dw_hat, gain, eps, *, out_axis, spec):
        s, g, e, k = self._args(w, gain, eps, out_axis, spec)
        dw, dgain = refws.weight_standardize_vjp(w, dw_hat, g, e, out_axis=out_axis, spec=s)
        return k * dw, (
            np.zeros(np.shape(gain)) if g is None and gain is not None else None if dgain is None else k * dgain
        )

    def weight_standardize_jvp(self, w, tw, gain, tgain, eps, *, out_axis, spec):
        s, g, e, k = self._args(w, gain, eps, out_axis, spec)
        y, ty = refws.weight_standardize_jvp(w, tw, g, tgain if g is not None else None, e, out_axis=out_axis, spec=s)
        return k * y, k * ty


def _spec(**changes):
    def change(spec, gain, w, axis):
        fields = dict(changes)
        if "denominator" in fields:
            uses_n = fields["denominator"] == "max_var_n" or spec.fixed_scale is not None
            fields["fan"] = (spec.fan or "fan_in") if uses_n else None
        return dataclasses.replace(spec, **fields), gain, 1.0, 1.0

    return change


class NoFan(WSBackend):
    """sqrt(max(var, eps)) written out in NumPy (no refws), w_hat only."""

    def weight_standardize(self, w, gain, eps, *, out_axis, spec):
        spec = resolve_spec(spec)
        axes = tuple(i for i in range(w.ndim) if i != out_axis % w.ndim)
        c = w - w.mean(axis=axes, keepdims=True)
        var = (c * c).sum(axis=axes, keepdims=True) / (math.prod(w.shape[i] for i in axes) - spec.ddof)
        out = c / np.sqrt(np.maximum(var, spec.eps if eps is None else eps))
        return (
            out
            if gain is None
            else out * np.reshape(gain, [-1 if i == out_axis % w.ndim else 1 for i in range(w.ndim)])
        )

    weight_standardize_vjp = None
    weight_standardize_jvp = None


class MeanKept(WSBackend):
    """w * (correct scale): the numerator not centred, written out in NumPy, w_hat only."""

    def weight_standardize(self, w, gain, eps, *, out_axis, spec):
        spec = resolve_spec(spec)
        eps = spec.eps if eps is None else eps
        axes = tuple(i for i in range(w.ndim) if i != out_axis % w.ndim)
        n = math.prod(w.shape[i] for i in axes)
        c = w - w.mean(axis=axes, keepdims=True)
        var = (c * c).sum(axis=axes, keepdims=True) / (n - spec.ddof)
        big_n = n if spec.fan == "fan_in" else w.size
        denom = {
            "max_var_n": lambda: np.sqrt(np.maximum(var * big_n, eps)),
            "std_plus_eps": lambda: np.sqrt(var) + eps,
            "sqrt_var_plus_eps": lambda: np.sqrt(var + eps),
        }[spec.denominator]()
        fixed = 1.0 if spec.fixed_scale is None else spec.fixed_scale * big_n**-0.5
        out = w / denom * fixed
        return (
            out
            if gain is None
            else out * np.reshape(gain, [-1 if i == out_axis % w.ndim else 1 for i in range(w.ndim)])
        )

    weight_standardize_vjp = None
    weight_standardize_jvp = None


WS_SLIPS = {
    "ws_ddof0": (WSBackend(_spec(ddof=0)), ["ws/elektronn3_oihw", "ws/qiao_hwio"]),
    "ws_ddof1": (WSBackend(_spec(ddof=1)), ["ws/brainstate_hwio", "ws/timm_std_hwio"]),
    "ws_eps_inside_sqrt": (WSBackend(_spec(denominator="sqrt_var_plus_eps")), ["ws/qiao_hwio", "ws/nfnets_hwio"]),
    "ws_eps_outside_sqrt": (WSBackend(_spec(denominator="std_plus_eps")), ["ws/bit_hwio", "ws/timm_std_oihw"]),
    "ws_eps_clamp": (WSBackend(_spec(denominator="max_var_n")), ["ws/timm_std_hwio", "ws/qiao_oihw"]),
    "ws_fan_numel": (WSBackend(_spec(fan="numel")), ["ws/brainstate_hwio", "ws/timm_scaled_hwio"]),
    "ws_fan_in": (WSBackend(_spec(fan="fan_in")), ["ws/elektronn3_oihw"]),
    "ws_no_fan": (NoFan(), ["ws/brainstate_hwio", "ws/nfnets_dhwio"]),
    "ws_gain_ignored": (
        WSBackend(lambda spec, gain, w, axis: (spec, None, 1.0, 1.0)),
        ["ws/brainstate_hwio", "ws/qiao_linear"],
    ),
    "ws_mean_not_subtracted": (MeanKept(), ["ws/bit_hwio", "ws/brainstate_oihw"]),
}


def _has_ws_gain_variation(case):
    return "gain" in case.arrays and not np.all(case["gain"] == 1)


def test_every_ws_variant_has_a_slip_backend_here():
    assert {n for n in VARIANTS if n.startswith("ws_")} == set(WS_SLIPS)


@pytest.mark.parametrize("slip", sorted(WS_SLIPS))
def test_a_ws_backend_with_one_slip_is_diagnosed_with_that_slip(slip):
    backend, names = WS_SLIPS[slip]
    failing = []
    for name in names:
        case = _ws_case(name)
        if slip == "ws_gain_ignored":
            assert _has_ws_gain_variation(case)
        records = run_case(backend, case)
        assert all((r.diagnosis is not None) == (r.status == "fail") for r in records)
        failing += [r for r in records if r.status == "fail"]
    assert failing, f"the {slip} backend fails nothing on {names}"
    named = {r.array for r in failing if slip in r.diagnosis["matches"]}
    assert named == {r.array for r in failing}, {(r.case, r.array): r.diagnosis for r in failing}


def test_the_correct_ws_backend_passes_with_synthetic_bounds():
    for name in ("ws/brainstate_hwio", "ws/elektronn3_oihw", "ws/qiao_linear", "ws/timm_scaled_dhwio"):
        records = run_case(WSBackend(), _ws_case(name))
        assert {r.status for r in records} == {"pass"} and all(r.diagnosis is None for r in records)


def test_a_double_ws_slip_brainstate_formula_on_elektronn3_case():
    """brainstate's formula (ddof 0, N = fan-in) where elektronn3's (ddof 1, N = numel) is due."""
    backend = WSBackend(_spec(ddof=0, fan="fan_in"))
    records = run_case(backend, _ws_case("ws/elektronn3_hwio"))
    w_hat = [r for r in records if r.array == "w_hat"][0]
    assert w_hat.status == "fail" and w_hat.diagnosis["matches"] == ["ws_ddof0+ws_fan_in"]


@pytest.mark.skipif(
    "w_hat__wsbound" not in golden.load("ws/bit_dhwio").arrays,
    reason="the committed store has no ws bound data (terms, __wsbound) yet",
)
def test_ws_slips_on_the_store_itself():
    backend, names = WS_SLIPS["ws_ddof1"]
    records = run(backend, suite="ws", case="ws/brainstate_*").records
    failing = [r for r in records if r.status == "fail"]
    assert failing and all("ws_ddof1" in r.diagnosis["matches"] for r in failing if r.array == "w_hat")


# --------------------------------------------------------------------------------------------
# the table itself
# --------------------------------------------------------------------------------------------
def test_table_names_descriptions_and_pairs():
    required = {
        "kernel_flipped",
        "same_lower",
        "same_upper",
        "pads_swapped",
        "padding_ignored",
        "rhs_dilation_ignored",
        "rhs_dilation_plus_one",
        "lhs_dilation_ignored",
        "stride_ignored",
        "spatial_axes_swapped",
        "groups_interleaved",
        "channels_first_misread",
        "output_padding_ignored",
        "output_padding_low",
        "transpose_kernel_not_flipped",
        "transpose_weight_io_swapped",
        "bias_missing",
        "bias_twice",
        "dx_stride_ignored",
        "dw_not_summed_over_batch",
        "dw_kernel_flipped",
        "ws_ddof0",
        "ws_ddof1",
        "ws_eps_inside_sqrt",
        "ws_eps_outside_sqrt",
        "ws_eps_clamp",
        "ws_fan_numel",
        "ws_fan_in",
        "ws_no_fan",
        "ws_gain_ignored",
        "ws_mean_not_subtracted",
    }
    assert required <= set(VARIANTS)
    for name, v in VARIANTS.items():
        assert v.name == name and v.description and v.suites and v.arrays
    for a, b in PAIRS:
        assert a in VARIANTS and b in VARIANTS and a != b


def test_inapplicable_variants_are_skipped():
    case = golden.load("conv/1d_pad_valid")  # VALID: no SAME, no pads, stride 1, one group
    base = diagnosis.base_problem(case)
    for name in (
        "same_lower",
        "same_upper",
        "pads_swapped",
        "padding_ignored",
        "stride_ignored",
        "groups_interleaved",
        "spatial_axes_swapped",
        "dx_stride_ignored",
        "lhs_dilation_ignored",
    ):
        assert VARIANTS[name].slip(base, case) is None, name
    even = golden.load("conv/2d_unbatched")  # SAME with 3x3: pads (1, 1), nothing to move
    assert VARIANTS["same_lower"].slip(diagnosis.base_problem(even), even) is None


def test_screening_at_a_few_elements_agrees_with_the_full_evaluation():
    """The screen (a variant summed from its taps at a few elements) only rejects variants; it
    must give the full refws evaluation's value, for every variant, array and a spread of cases."""
    checked = 0
    for suite in ("conv", "conv_transpose"):
        for case in list(golden.cases(suite=suite))[::4]:
            base = diagnosis.base_problem(case)
            for P in [base] + [v.slip(base, case) for v in VARIANTS.values() if suite in v.suites]:
                for array in ("y", "ty", "dx", "dw"):
                    if P is None or diagnosis._out_shape(P, case, array) is None:
                        continue
                    full = diagnosis.variant_value(P, case, array)
                    if full is None or full.size == 0:
                        continue
                    flat = sorted({0, full.size // 3, (2 * full.size) // 3, full.size - 1})
                    points = [tuple(int(i) for i in np.unravel_index(f, full.shape)) for f in flat]
                    np.testing.assert_allclose(
                        diagnosis._points_value(P, case, array, points),
                        [full[p] for p in points],
                        rtol=1e-13,
                        atol=1e-13,
                    )
                    checked += 1
    assert checked > 500


# --------------------------------------------------------------------------------------------
# the fast paths give the full evaluation's answers
# --------------------------------------------------------------------------------------------
def test_the_gather_evaluation_is_refws_conv_and_conv_vjp():
    """A small problem is evaluated in one gather (its columns, one product, a bincount for dx):
    the same values as refws.conv and refws.conv_vjp with the problem's arguments, and the same
    magnitudes, for every variant, pair and array of every convolution-like case."""
    checked = 0
    for suite in ("conv", "conv_transpose"):
        for case in golden.cases(suite=suite):
            for names, P in _problems(case):
                for absolute in (False, True):
                    for pairs in ((("x", "w"),), (("tx", "w"), ("x", "tw"))):
                        if all(a in case.arrays and b in case.arrays for a, b in pairs):
                            gathered = diagnosis._forward_gathered(P, case, pairs, absolute)
                            by_conv = diagnosis._forward_by_conv(P, case, pairs, absolute)
                            np.testing.assert_allclose(gathered, by_conv, rtol=1e-13, atol=0, err_msg=case.name)
                            checked += 1
                    if "dy" not in case.arrays:
                        continue
                    gathered = diagnosis._backward_gathered(P, case, absolute)
                    by_conv = diagnosis._backward_by_conv(P, case, absolute)
                    assert (gathered is None) == (by_conv is None), (case.name, names)
                    for a, b in zip(gathered or (), by_conv or ()):
                        assert (a is None) == (b is None), (case.name, names)
                        if a is not None:
                            np.testing.assert_allclose(a, b, rtol=1e-13, atol=0, err_msg=str((case.name, names)))
                            checked += 1
    assert checked > 5000


def _problems(case):
    """Every single-variant and pair problem of a convolution-like case (None where a slip cannot
    apply), named."""
    base = diagnosis.base_problem(case)
    singles = [((n,), v.slip(base, case)) for n, v in VARIANTS.items() if case.suite in v.suites]
    pairs = [
        (pair, diagnosis._slip(pair, base, case))
        for pair in PAIRS
        if all(case.suite in VARIANTS[n].suites for n in pair)
    ]
    return [("base",), base], *[(names, P) for names, P in singles + pairs if P is not None]


def test_shape_keeping_variants_keep_every_arrays_shape():
    """A variant or pair marked ``keeps_shape`` is never made for an array of another shape than
    refws's: under it every array has refws's shape (or is not defined), on every case."""
    checked = 0
    for suite in ("conv", "conv_transpose"):
        for case in golden.cases(suite=suite):
            for names, P in _problems(case)[1:]:
                if not diagnosis._keeps_shape(names):
                    continue
                for array in ("y", "ty", "dx", "dw", "db"):
                    if array in case.arrays:
                        shape = diagnosis._out_shape(P, case, array)
                        assert shape in (case.arrays[array].shape, None), (case.name, names, array)
                        checked += 1
    assert checked > 3000


def test_shapes_and_geometry_from_the_arguments_alone_are_the_evaluated_ones():
    """The shape screen (no convolution) and its geometry: ``conv_geometry`` of the problem's
    arguments, and the shape the full evaluation returns, for every variant and pair."""
    checked = 0
    for suite in ("conv", "conv_transpose"):
        for case in golden.cases(suite=suite):
            for names, P in _problems(case):
                fast = diagnosis._y_shape(P, case)  # before _info: from out_size alone where it can
                g, xi, wi, _, y_shape, columns = diagnosis._info(P, case)
                assert fast == y_shape, (case.name, names)
                # shapes a slip kept from its base (_same_shapes) are the problem's own
                fresh = dataclasses.replace(P)
                assert diagnosis._shapes(fresh, case) == diagnosis._shapes(P, case), (case.name, names)
                assert diagnosis._info(fresh, case) == diagnosis._info(P, case), (case.name, names)
                spatial = tuple(xi[i] for i in _spatial_axes(np.zeros(xi), np.zeros(wi), P.channel_first))
                assert g == refws.conv_geometry(
                    spatial, wi[:-2], P.stride, P.padding, P.lhs_dilation, P.rhs_dilation
                ), (case.name, names)
                # the mapped shapes from the maps' arithmetic are those of the mapped arrays
                assert xi == diagnosis._apply(P.x_maps, case["x"]).shape, (case.name, names)
                assert wi == diagnosis._apply(P.w_maps, case["w"]).shape, (case.name, names)
                n = xi[0] if P.batched else 1
                assert columns == n * math.prod(g.out_spatial) * math.prod(g.kernel_spatial) * wi[-2] * P.groups
                v = diagnosis.variant_value(P, case, "y")
                assert y_shape == v.shape == diagnosis._out_shape(P, case, "y"), (case.name, names)
                for array in ("dx", "dw"):  # None: dy does not fit (or, dx of
                    full = diagnosis.variant_value(P, case, array)  # dw_not_summed, not defined)
                    shape = diagnosis._out_shape(P, case, array)
                    assert full is None if shape is None else full is None or full.shape == shape
                checked += 1
    assert checked > 1500


def _full_diagnosis(monkeypatch, backend, case):
    """The records of ``run_case`` with every shortcut turned off: every variant of the backend's
    shape evaluated in full by refws.conv (no gather), compared on the whole array (no screen, no
    look at the probe's points first), its magnitudes computed when not bit-equal (no floor)."""
    with monkeypatch.context() as m:
        m.setattr(diagnosis, "_screen", lambda *args: None)
        m.setattr(diagnosis, "_differs_at_points", lambda *args: False)
        m.setattr(diagnosis, "_gathers", lambda *args: False)
        m.setattr(diagnosis, "_floor_bounds", lambda size, floor1: np.full(size.shape, -np.inf))
        diagnosis.clear_caches()
        return run_case(backend, case)


class _Float32Flipped(OperandSlip):
    """A float32 backend with the kernel flipped: matches need the rounding bound, not equality."""

    precision = "float32"

    def __init__(self):
        super().__init__(_flip, _flip)

    def fwd(self, x, w, kw):
        return super().fwd(x.astype(np.float32), w.astype(np.float32), kw).astype(np.float32)

    def vjp(self, x, w, dy, kw):
        dx, dw = super().vjp(x.astype(np.float32), w.astype(np.float32), dy.astype(np.float32), kw)
        return dx.astype(np.float32), dw.astype(np.float32)


class _Noisy(Correct):
    """refws plus a small smooth error: no variant explains it, so the pairs are tried too."""

    def fwd(self, x, w, kw):
        y = super().fwd(x, w, kw)
        return y + 1e-3 * np.sin(np.arange(y.size)).reshape(y.shape)


class _NonFiniteFlipped(OperandSlip):
    """The kernel flipped, one output element NaN and another inf: never within a bound."""

    def __init__(self):
        super().__init__(_flip, _flip)

    def fwd(self, x, w, kw):
        y = super().fwd(x, w, kw).copy()
        y.flat[:2] = [np.nan, np.inf][: y.size]
        return y


@pytest.mark.parametrize(
    "backend",
    [
        "kernel_flipped",
        "float32",
        "noisy",
        "non_finite",
        "same_lower",
        "spatial_axes_swapped",
        "groups_interleaved",
        "dw_kernel_flipped",
        "transpose_weight_io_swapped",
        "output_padding_ignored",
    ],
)
@pytest.mark.parametrize("screen_min", [None, 0])
def test_the_screen_and_the_magnitudes_floor_give_the_full_evaluations_diagnosis(monkeypatch, backend, screen_min):
    """The screen (a variant at a few elements), the spread elements it looks at for a difference
    from refws, the gather, the look at the probe's points and the match accepted from ``|v|``
    before the magnitudes are computed only save work: on a spread of cases, backends and
    precisions the diagnosis is the full evaluation's. The store's cases are below
    ``SCREEN_MIN``: they are also diagnosed with every variant screened (``screen_min=0``)."""
    backends = {"float32": _Float32Flipped(), "noisy": _Noisy(), "non_finite": _NonFiniteFlipped()}
    chosen = backends.get(backend) or SLIPS[backend][0]
    if screen_min is not None:
        monkeypatch.setattr(diagnosis, "SCREEN_MIN", screen_min)
    compared = 0
    for suite in ("conv", "conv_transpose"):
        for case in list(golden.cases(suite=suite))[::3]:
            diagnosis.clear_caches()
            fast = run_case(chosen, case)
            full = _full_diagnosis(monkeypatch, chosen, case)
            assert [r.diagnosis for r in fast] == [r.diagnosis for r in full], case.name
            compared += sum(r.diagnosis is not None for r in fast)
    assert compared > 0


def test_sample_points_are_the_worst_errors_then_the_largest_element():
    """``_sample_points`` against its definition: a stable sort of the errors (non-finite ones
    first), ties and NaN included."""
    rng = np.random.default_rng(0)
    for trial in range(200):
        shape = tuple(rng.integers(1, 4, size=rng.integers(1, 4)))
        exact = rng.integers(-3, 4, size=shape).astype(np.float64)
        actual = exact + rng.integers(-2, 3, size=shape)
        if trial % 5 == 0:
            actual.flat[rng.integers(actual.size)] = [np.nan, np.inf, -np.inf][trial % 3]
        err = np.abs(actual - exact).ravel()
        order = np.argsort(-np.where(np.isfinite(err), err, np.inf), kind="stable")[:2]
        mag = np.abs(actual).ravel()
        largest = int(np.argmax(np.where(np.isfinite(mag), mag, np.inf)))
        expected = list(dict.fromkeys([int(f) for f in order] + [largest]))
        assert diagnosis._sample_points(actual, exact) == [np.unravel_index(f, shape) for f in expected]
        other = np.zeros(shape + (2,))
        expected = list(dict.fromkeys([largest, actual.size // 2]))
        assert diagnosis._sample_points(actual, other) == [np.unravel_index(f, shape) for f in expected]


def test_a_slipped_problem_is_the_dataclass_replace_of_its_base():
    """Slips build problems without ``__init__`` (and cache their hash): equal, and equally
    hashed, to ``dataclasses.replace``; an unknown field is refused."""
    case = golden.load("conv/2d_pad_same")
    base = diagnosis.base_problem(case)
    changes = [dict(padding="SAME_LOWER"), dict(w_maps=(("flip", (0, 1)),)), dict(stride=(2, 2), dw_flip=True)]
    for change in changes:
        P, Q = diagnosis._evolve(base, **change), dataclasses.replace(base, **change)
        assert P == Q and hash(P) == hash(Q) and repr(P) == repr(Q)
    assert hash(base) == hash(dataclasses.replace(base))
    with pytest.raises(TypeError, match="no field 'pading'"):
        diagnosis._evolve(base, pading="SAME")


def test_the_magnitudes_floor_is_below_the_magnitudes():
    """What the match from ``|v|`` rests on: ``|v| (1 - 2 gamma - 2**-40)`` is at most the
    magnitudes ``conv(|x|, |w|)`` through the same variant, inflated by ``1 + 2 gamma``, for every
    variant and array of a spread of cases."""
    checked = 0
    for suite in ("conv", "conv_transpose"):
        for case in list(golden.cases(suite=suite))[::2]:
            for array in ("y", "ty", "dx", "dw", "db"):
                if array not in case.arrays:
                    continue
                bound = diagnosis._stored_bound(case, array)
                for names, P in _problems(case):
                    v = diagnosis.variant_value(P, case, array)
                    if v is None:
                        continue
                    g64 = diagnosis._conv_bounds(P, case, array, bound)[1]
                    m = diagnosis.variant_value(P, case, array, absolute=True) * (1 + 2 * g64)
                    assert np.all(diagnosis._magnitudes_floor(v, g64) <= m), (case.name, names, array)
                    checked += 1
    assert checked > 1000


def test_gamma_and_element_bound_in_python_floats_are_tolerances_bit_for_bit():
    """``_gamma`` and ``_bound_at`` (one element, in Python floats) are
    :func:`refws.tolerance.gamma` and :func:`refws.tolerance.element_bound`, bit for bit: every
    named precision, term counts up to and past ``K u >= 1``, with and without rounded operands."""
    from refws.tolerance import PRECISIONS, Bound, element_bound, gamma

    Ks = [*range(50), 4095, 4096, 10**6, 2**52 - 1, 2**52, 2**53, 2**60]
    for u in {2.0**-53, *(p.u_acc for p in PRECISIONS.values())}:
        for K in Ks:
            assert diagnosis._gamma(K, u) == float(gamma(K, u)), (K, u)
    assert all(diagnosis._gamma64(K) == float(gamma(K, 2.0**-53)) for K in Ks)
    rng = np.random.default_rng(2)
    operands = ((), ((np.array([0.1, 0.2]), np.array([1.0])),))
    for p in PRECISIONS.values():
        for ops in operands:
            for _ in range(60):
                K = int(rng.choice(Ks[:52]))
                m, extra, value = np.abs(rng.standard_normal(3)) * 10.0 ** rng.integers(-30, 30, 3)
                bound = Bound(np.array([m]), K, None, ops, (), np.array([extra]))
                expected = element_bound(bound, np.array([value]), p)[0]
                a = diagnosis._bound_factor(bound, K, p)
                assert diagnosis._bound_at(a, m, extra, value, p) == expected, (p.name, K, m, extra, value)


def test_the_floor_bounds_are_below_element_bound_of_the_floor():
    """The match from ``|v|`` compares with ``floor1 |v|`` (one line per bound, term count and
    precision) made smaller by ``2**-45`` relative and ``2**-1060`` absolute: below the per-element
    ``element_bound`` of the magnitudes floor, for values from subnormal to huge, every named
    precision, with and without stored operands."""
    from refws.tolerance import PRECISIONS, element_bound

    rng = np.random.default_rng(1)
    v = np.concatenate(
        [
            [0.0, 5e-324, 1e-320, 2.0**-1022, 1e-300, 1e-200, 1.0, 3.0, 1e100, 1e300],
            rng.standard_normal(200) * 10.0 ** rng.integers(-320, 300, 200),
        ]
    )
    operands = ((np.array([0.1, 0.2]), np.array([1.0])),)  # not exact in the narrow formats: c_in > 0
    for K in (1, 7, 300, 10**6):
        g64 = diagnosis._gamma64(K)
        for ops in ((), operands):
            bound = diagnosis._MemoBound(None, K, None, ops)
            for prec in PRECISIONS:
                with np.errstate(invalid="ignore"):  # K u >= 1: infinite bounds (nan at v = 0)
                    floor1 = diagnosis._bound_lines(bound, K, g64, 1.0, prec)[2]
                    low = diagnosis._magnitudes_floor(v, g64)
                    exact = element_bound(dataclasses.replace(bound, m=low, K=K, extra=g64 * low), v, prec)
                    ours = diagnosis._floor_bounds(np.abs(v), floor1)
                finite = np.isfinite(exact)
                assert np.all(ours[finite] <= exact[finite]) and np.all(ours[finite] >= 0), (K, prec)
                assert not np.any(np.isfinite(ours[~finite])), (K, prec)


def test_the_stored_bound_is_golden_bound_with_a_memo():
    """``_stored_bound`` (built without ``__init__``) has every field of ``golden_bound``."""
    from refws.testing import golden_bound

    case = golden.load("conv/2d_pad_same")
    for array in ("y", "dx", "dw", "ty"):
        diagnosis.clear_caches()
        ours, theirs = diagnosis._stored_bound(case, array), golden_bound(case, array)
        for f in dataclasses.fields(theirs):
            a, b = getattr(ours, f.name), getattr(theirs, f.name)
            assert a is b or (not isinstance(a, np.ndarray) and a == b), f.name
        assert ours.memo == {} and isinstance(ours, diagnosis._MemoBound)


def test_out_spatial_is_out_size():
    """``_out_spatial`` (the arithmetic of :func:`refws.geometry.out_size`, inline) gives
    ``out_size`` on every combination of small sizes, factors and pads, negative pads included."""
    from refws.geometry import out_size

    args = [
        (n, k, s, lo, hi, L, d)
        for n in (0, 1, 2, 5, 9)
        for k in (1, 2, 3)
        for s in (1, 2, 3)
        for lo in (-2, 0, 1, 3)
        for hi in (-3, -1, 0, 2)
        for L in (1, 2)
        for d in (1, 3)
    ]
    for n, k, s, lo, hi, L, d in args:
        assert diagnosis._out_spatial((n,), (k,), (s,), ((lo, hi),), (L,), (d,)) == (out_size(n, k, s, lo, hi, L, d),)
