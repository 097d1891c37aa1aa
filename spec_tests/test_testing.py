"""refws.testing: the assertions pass correct float32 results and describe planted errors truthfully.

Correct results are computed independently (``spec_tests/naive.py``'s definition loops, a scatter
loop for the transposed convolution written here) in float64 and rounded once to float32, which
is within any float32 bound. Planted errors sit where the test puts them (the low border of an
axis, the channels of one group, one batch item), and the failure text must say so: the count
of violating elements out of the total, the worst element (index, value, exact value, error,
bound) and a where-description that names the right place.
"""

from __future__ import annotations

import re

import numpy as np
import pytest

import refws.golden as golden
from refws.testing import (
    Result,
    assert_conv_close,
    assert_conv_jvp_close,
    assert_conv_transpose_close,
    assert_conv_vjp_close,
    assert_golden_close,
    check_conv,
    check_conv_jvp,
    check_conv_transpose,
    check_conv_vjp,
    check_golden,
    describe_where,
)

from .naive import as_tuple, from_channels_last, naive_conv, naive_conv_vjp

U32 = 2.0**-24
U64 = 2.0**-53


def _rng(seed=0):
    return np.random.default_rng(seed)


def _problem(seed=0, n=2, spatial=(6, 5), c_in=4, c_out=4, kernel=(3, 2), groups=1):
    """Real-valued (not float32-exact) operands, channels-last."""
    rng = _rng(seed)
    x = rng.normal(size=(n, *spatial, c_in))
    w = rng.normal(size=(*kernel, c_in // groups, c_out))
    return x, w


# a 2-D problem with explicit pads, stride and dilation in the form refws and naive.py both take
PADS = [(1, 1), (0, 1)]
KW = dict(stride=(1, 1), padding=PADS, lhs_dilation=1, rhs_dilation=(1, 2))


def _naive_kwargs(kw):
    return dict(
        stride=kw["stride"],
        pads=kw["padding"],
        lhs_dilation=kw["lhs_dilation"],
        rhs_dilation=kw["rhs_dilation"],
        groups=kw.get("groups", 1),
    )


def _worst_fields(text: str) -> dict:
    """The numbers of the 'worst element' line."""
    m = re.search(
        r"worst element \(([\d, ]+)\): actual (\S+), exact (\S+), error (\S+), bound (\S+) "
        r"\(error / bound (\S+)\)",
        text,
    )
    assert m, text
    index = tuple(int(v) for v in m.group(1).split(","))
    return dict(
        index=index,
        **{
            k: float(m.group(i).rstrip(","))
            for i, k in enumerate(("actual", "exact", "error", "bound", "ratio"), start=2)
        },
    )


# --------------------------------------------------------------------------------------------
# conv
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "groups, kw",
    [
        (1, KW),
        (2, dict(stride=(2, 1), padding=[(2, 0), (1, 1)], lhs_dilation=(1, 2), rhs_dilation=1)),
        (4, dict(stride=1, padding=[(0, 0), (0, 0)], lhs_dilation=1, rhs_dilation=1)),
    ],
)
def test_assert_conv_close_passes_correctly_rounded_results(groups, kw):
    x, w = _problem(groups=groups)
    kw = dict(kw, groups=groups)
    y = naive_conv(x, w, **_naive_kwargs(kw))
    r = assert_conv_close(y.astype(np.float32), x, w, precision="float32", **kw)
    assert isinstance(r, Result) and r.ok and r.status == "pass" and r.judgement.n == y.size
    assert "within the float32 bound" in r.text
    assert assert_conv_close(y, x, w, **kw).status == "pass"  # float64, another order
    # channel-first and unbatched layouts: the same values moved
    y_cf = from_channels_last(y, channel_first=True, batched=True)
    x_cf = from_channels_last(x, channel_first=True, batched=True)
    assert assert_conv_close(y_cf.astype(np.float32), x_cf, w, precision="float32", channel_first=True, **kw).ok
    assert assert_conv_close(y[0].astype(np.float32), x[0], w, precision="float32", **kw).ok


def _planted(y32, where, delta=0.05):
    bad = y32.copy()
    bad[where] += np.float32(delta) * (1 + np.abs(bad[where]))
    return bad


def test_conv_low_border_error_is_counted_located_and_described():
    x, w = _problem()
    y32 = naive_conv(x, w, **_naive_kwargs(KW)).astype(np.float32)  # (2, 6, 4, 4)
    bad = _planted(y32, (slice(None), 0))  # first row, everywhere else
    total, hit = y32.size, y32[:, 0].size
    with pytest.raises(AssertionError) as info:
        assert_conv_close(bad, x, w, precision="float32", **KW)
    text = str(info.value)
    assert "conv y: not equal to refws within the rigorous float32 bound" in text
    assert f"mismatched elements: {hit} / {total} ({100 * hit / total:.3g}%)" in text
    assert (
        f"where: {hit} of {total} elements; batch items: every batch item; spatial axis 0: position 0 "
        f"(low border); spatial axis 1: every position (all {y32.shape[2]}); channels: every channel"
    ) in text
    r = check_conv(bad, x, w, precision="float32", **KW)  # the twin returns, never raises
    assert r.status == "fail" and not r.ok and r.text == text
    assert r.judgement.n_fail == hit and r.judgement.violations[:, 0].all() and not r.judgement.violations[:, 1:].any()
    kinds = {(a["role"], a["axis"]): a["kind"] for a in r.where["axes"]}
    assert kinds == {("batch", 0): "all", ("spatial", 1): "low_border", ("spatial", 2): "all", ("channel", 3): "all"}
    assert r.where["violations"] == hit and r.where["fraction"] == pytest.approx(hit / total)


def test_conv_worst_element_line_reports_index_value_exact_error_and_bound():
    x, w = _problem(seed=1)
    y = naive_conv(x, w, **_naive_kwargs(KW))
    y32 = y.astype(np.float32)
    bad = _planted(y32, (slice(None), 0), delta=1e-3)
    idx = (1, 0, 2, 3)
    bad[idx] = y32[idx] + np.float32(0.5)  # the worst by far
    f = _worst_fields(check_conv(bad, x, w, precision="float32", **KW).text)
    assert f["index"] == idx
    assert f["actual"] == pytest.approx(float(bad[idx]), rel=1e-5)
    assert f["exact"] == pytest.approx(y[idx], rel=1e-5, abs=1e-12)
    assert f["error"] == pytest.approx(abs(float(bad[idx]) - y[idx]), rel=1e-4)
    # the bound, from its definition: c_in for two rounded operands, gamma_K(u) with K = taps * C_in,
    # m = conv(|x|, |w|), and refws's own float64 error gamma_K(2**-53) * m on top
    K = w.shape[0] * w.shape[1] * w.shape[2]
    m = naive_conv(np.abs(x), np.abs(w), **_naive_kwargs(KW))[idx]
    c_in, g = (1 + U32) ** 2 - 1, K * U32 / (1 - K * U32)
    expected = (c_in + g * (1 + c_in)) * m + K * U64 * m
    assert f["bound"] == pytest.approx(expected, rel=1e-4)
    assert f["ratio"] == pytest.approx(f["error"] / f["bound"], rel=1e-4) and f["ratio"] > 1


def test_conv_group_error_names_the_group():
    x, w = _problem(groups=2, c_in=4, c_out=6)
    kw = dict(KW, groups=2)
    y32 = naive_conv(x, w, **_naive_kwargs(kw)).astype(np.float32)
    bad = _planted(y32, (..., slice(3, 6)))  # output channels of group 1
    with pytest.raises(AssertionError) as info:
        assert_conv_close(bad, x, w, precision="float32", **kw)
    assert "channels: channels 3, 4, 5 (group 1 of 2)" in str(info.value)
    r = check_conv(bad, x, w, precision="float32", **kw)
    channel = [a for a in r.where["axes"] if a["role"] == "channel"][0]
    assert channel["groups"] == [1] and channel["positions"] == [3, 4, 5]


def test_conv_batch_item_error_names_the_item():
    x, w = _problem(n=3)
    y32 = naive_conv(x, w, **_naive_kwargs(KW)).astype(np.float32)
    bad = _planted(y32, (1, slice(2, 4)))  # item 1, two interior rows
    text = check_conv(bad, x, w, precision="float32", **KW).text
    assert "batch items: batch item 1;" in text
    assert "spatial axis 0: interior positions 2, 3 (2 of 6)" in text
    assert "spatial axis 1: every position (all 4)" in text
    # channel-first: the same error, the same words (the channel axis moved, not the batch)
    cf = lambda a: from_channels_last(a, channel_first=True, batched=True)
    text_cf = check_conv(cf(bad), cf(x), w, precision="float32", channel_first=True, **KW).text
    assert "batch items: batch item 1;" in text_cf and "spatial axis 0: interior positions 2, 3" in text_cf


def test_conv_errors_within_the_bound_pass_and_above_fail():
    """The boundary is the bound itself: an error of 0.9 bound passes, 1.1 bound fails."""
    x, w = _problem(seed=2)
    y = naive_conv(x, w, **_naive_kwargs(KW))
    m = naive_conv(np.abs(x), np.abs(w), **_naive_kwargs(KW))
    K = int(np.prod(w.shape[:-1]))
    g = K * U32 / (1 - K * U32)
    c_in = (1 + U32) ** 2 - 1
    bnd = (c_in + g * (1 + c_in)) * m
    assert check_conv(y + 0.9 * bnd, x, w, precision="float32", **KW).status in ("pass", "warn")
    r = check_conv(y + 1.1 * bnd, x, w, precision="float32", **KW)
    assert r.status == "fail" and r.judgement.n_fail == y.size


# --------------------------------------------------------------------------------------------
# conv_vjp, conv_jvp
# --------------------------------------------------------------------------------------------
VJP_KW = dict(stride=(2, 1), padding=[(1, 1), (1, 0)], lhs_dilation=1, rhs_dilation=(1, 2))


def _vjp_problem(seed=3):
    x, w = _problem(seed=seed, spatial=(7, 5))
    y = naive_conv(x, w, **_naive_kwargs(VJP_KW))
    dy = _rng(seed + 100).normal(size=y.shape)
    dx, dw = naive_conv_vjp(x, w, dy, VJP_KW["stride"], VJP_KW["padding"], 1, VJP_KW["rhs_dilation"], 1)
    return x, w, dy, dx, dw


def test_assert_conv_vjp_close_passes_and_reports_each_array():
    x, w, dy, dx, dw = _vjp_problem()
    rx, rw = assert_conv_vjp_close(
        dx.astype(np.float32), dw.astype(np.float32), x, w, dy, precision="float32", **VJP_KW
    )
    assert (rx.name, rx.status, rw.name, rw.status) == ("conv_vjp dx", "pass", "conv_vjp dw", "pass")
    only_dw = check_conv_vjp(None, dw, x, w, dy, **VJP_KW)
    assert len(only_dw) == 1 and only_dw[0].name == "conv_vjp dw" and only_dw[0].ok


def test_conv_vjp_dw_not_summed_over_the_batch_fails_and_dx_still_passes():
    x, w, dy, dx, dw = _vjp_problem()
    _, dw_first = naive_conv_vjp(x[:1], w, dy[:1], VJP_KW["stride"], VJP_KW["padding"], 1, VJP_KW["rhs_dilation"], 1)
    with pytest.raises(AssertionError) as info:
        assert_conv_vjp_close(
            dx.astype(np.float32), dw_first.astype(np.float32), x, w, dy, precision="float32", **VJP_KW
        )
    text = str(info.value)
    assert text.startswith("conv_vjp dw: not equal to refws") and "conv_vjp dx" not in text
    assert f"/ {dw.size} (" in text and "kernel axis 0" in text and "output channels" in text
    rx, rw = check_conv_vjp(dx, dw_first, x, w, dy, precision="float32", **VJP_KW)
    assert rx.status == "pass" and rw.status == "fail"


def test_conv_vjp_dx_that_forgets_the_stride_fails():
    x, w, dy, dx, dw = _vjp_problem()
    # the stride-2 axis treated as stride 1: dy's rows land at o instead of 2*o
    dy1 = np.zeros((dy.shape[0], 7 + 1 + 1 - 3 + 1, *dy.shape[2:]))  # stride-1 output rows: n + lo + hi - k + 1
    dy1[:, : dy.shape[1]] = dy
    dx_bad, _ = naive_conv_vjp(x, w, dy1, (1, 1), VJP_KW["padding"], 1, VJP_KW["rhs_dilation"], 1)
    r = check_conv_vjp(dx_bad.astype(np.float32), None, x, w, dy, precision="float32", **VJP_KW)
    assert len(r) == 1 and r[0].status == "fail" and r[0].name == "conv_vjp dx"
    assert "mismatched elements" in r[0].text


def test_assert_conv_jvp_close_passes_and_a_missing_term_fails():
    x, w = _problem(seed=4)
    rng = _rng(5)
    tx, tw = rng.normal(size=x.shape), rng.normal(size=w.shape)
    nk = _naive_kwargs(KW)
    ty = naive_conv(tx, w, **nk) + naive_conv(x, tw, **nk)
    r = assert_conv_jvp_close(ty.astype(np.float32), x, w, tx, tw, precision="float32", **KW)
    assert r.name == "conv_jvp ty" and r.status == "pass"
    with pytest.raises(AssertionError, match=r"conv_jvp ty: not equal.*\n.*mismatched elements"):
        assert_conv_jvp_close(naive_conv(x, tw, **nk).astype(np.float32), x, w, tx, tw, precision="float32", **KW)
    assert check_conv_jvp(ty, x, w, tx, tw, **KW).ok


# --------------------------------------------------------------------------------------------
# conv_transpose, by its scatter definition
# --------------------------------------------------------------------------------------------
def naive_transpose(x, w, stride, padding, output_padding, dilation, groups=1, bias=None):
    """``y[b, i*s - p + t*d, g*Cog + j] += x[b, i, g*Cg + c] * w[t, j, g*Cg + c]`` (channels-last,
    w ``(*k, C_out // groups, C_in)``), output size ``(n-1)s - 2p + d(k-1) + op + 1``; positions
    outside the output are dropped."""
    nd = x.ndim - 2
    s, p, op, d = (as_tuple(v, nd) for v in (stride, padding, output_padding, dilation))
    k, cog, c_in = w.shape[:nd], w.shape[-2], w.shape[-1]
    cg = c_in // groups
    out = tuple(
        (n - 1) * si - 2 * pi + di * (ki - 1) + opi + 1 for n, si, pi, di, ki, opi in zip(x.shape[1:-1], s, p, d, k, op)
    )
    y = np.zeros((x.shape[0], *out, cog * groups))
    for i in np.ndindex(*x.shape[1:-1]):
        for t in np.ndindex(*k):
            o = tuple(ii * si - pi + ti * di for ii, si, pi, ti, di in zip(i, s, p, t, d))
            if not all(0 <= oo < mm for oo, mm in zip(o, out)):
                continue
            for c in range(c_in):
                g = c // cg
                y[(slice(None), *o, slice(g * cog, (g + 1) * cog))] += np.outer(
                    x[(slice(None), *i, c)], w[(*t, slice(None), c)]
                )
    return y if bias is None else y + bias


T_KW = dict(stride=(3, 2), padding=(1, 0), output_padding=(2, 0), dilation=1, groups=2)  # y: (2, 12, 6, 6)


def _transpose_problem(seed=6):
    rng = _rng(seed)
    x = rng.normal(size=(2, 4, 3, 4))
    w = rng.normal(size=(3, 2, 3, 4))  # (*k, C_out // groups, C_in): C_out = 6
    b = rng.normal(size=(6,))
    return x, w, b


def test_assert_conv_transpose_close_passes_with_and_without_bias():
    x, w, b = _transpose_problem()
    y = naive_transpose(x, w, **T_KW, bias=b)
    r = assert_conv_transpose_close(y.astype(np.float32), x, w, precision="float32", bias=b, **T_KW)
    assert r.name == "conv_transpose y" and r.status == "pass"
    y0 = naive_transpose(x, w, **T_KW)
    assert assert_conv_transpose_close(y0.astype(np.float32), x, w, precision="float32", **T_KW).ok


def test_conv_transpose_bias_twice_and_dropped_output_padding_fail_where_they_should():
    x, w, b = _transpose_problem()
    y = naive_transpose(x, w, **T_KW, bias=b)
    with pytest.raises(AssertionError, match="every channel"):
        assert_conv_transpose_close((y + b).astype(np.float32), x, w, precision="float32", bias=b, **T_KW)
    # output_padding dropped, the shape kept by zeros: wrong exactly on the last output_padding rows/columns
    short = naive_transpose(x, w, **dict(T_KW, output_padding=0), bias=b)
    padded = np.zeros_like(y)
    padded[:, : short.shape[1], : short.shape[2]] = short
    r = check_conv_transpose(padded.astype(np.float32), x, w, precision="float32", bias=b, **T_KW)
    assert r.status == "fail" and y.shape[1] == 12
    assert "spatial axis 0: positions 10, 11 (high border); spatial axis 1: every position (all 6)" in r.text
    v = r.judgement.violations
    assert not v[:, : short.shape[1], : short.shape[2]].any()  # only the added positions


# --------------------------------------------------------------------------------------------
# golden cases
# --------------------------------------------------------------------------------------------
def test_assert_golden_close_passes_rounded_values_and_describes_planted_errors():
    case = golden.load("conv/2d_groups2")
    y = case["y"]  # (2, 6, 5, 4), groups 2
    assert assert_golden_close(y.astype(np.float32), case, "y", precision="float32").status == "pass"
    assert assert_golden_close(y, case, "y").status == "pass"
    bad = _planted(y.astype(np.float32), (..., slice(2, 4)))
    with pytest.raises(AssertionError) as info:
        assert_golden_close(bad, case, "y", precision="float32")
    text = str(info.value)
    assert text.startswith("conv/2d_groups2:y: not equal to refws within the rigorous float32 bound")
    assert f"mismatched elements: {y[..., 2:].size} / {y.size}" in text
    assert "channels: channels 2, 3 (group 1 of 2)" in text
    one = _planted(y.astype(np.float32), (1, 0, 0, 0))
    text = check_golden(one, case, "y", precision="float32").text
    assert f"mismatched elements: 1 / {y.size}" in text and "worst element (1, 0, 0, 0)" in text
    assert (
        "batch items: batch item 1; spatial axis 0: position 0 (low border); spatial axis 1: position 0 "
        "(low border); channels: channel 0 (group 0 of 2)" in text
    )


def test_golden_channel_first_roles_and_kernel_roles():
    case = golden.load("conv/2d_channel_first")  # y: (N, C, H, W)
    bad = _planted(case["y"].astype(np.float32), (slice(None), slice(None), -1))
    text = check_golden(bad, case, "y", precision="float32").text
    assert f"spatial axis 0: position {case['y'].shape[2] - 1} (high border)" in text
    assert "channels: every channel" in text and "batch items: every batch item" in text
    dw = case["dw"].astype(np.float32)  # (kh, kw, in, out)
    text = check_golden(_planted(dw, (0, 0, 1, 2)), case, "dw", precision="float32").text
    assert (
        "kernel axis 0: position 0" in text
        and "input channels: channel 1 of" in text
        and "output channels: channel 2 of" in text
    )


def test_check_golden_refuses_an_input_array_naming_it():
    case = golden.load("conv/1d_pad_same")
    with pytest.raises(ValueError, match=r"array='x': not an output of golden case 'conv/1d_pad_same'"):
        check_golden(case["x"], case, "x")
    with pytest.raises(ValueError, match="array='nope'"):
        assert_golden_close(case["y"], case, "nope")


def test_check_golden_shape_mismatch_says_so():
    case = golden.load("conv/1d_pad_same")
    r = check_golden(case["y"][:, :-1], case, "y", precision="float32")
    assert r.status == "fail" and f"expected {case['y'].shape}" in r.text and "shape" in r.text


# --------------------------------------------------------------------------------------------
# describe_where on constructed masks
# --------------------------------------------------------------------------------------------
def _mask(size, positions):
    v = np.zeros(size, dtype=bool)
    v[list(positions)] = True
    return v


@pytest.mark.parametrize(
    "positions, kind, words",
    [
        ([0], "low_border", "position 0 (low border)"),
        ([0, 1], "low_border", "positions 0, 1 (low border)"),
        ([9], "high_border", "position 9 (high border)"),
        ([8, 9], "high_border", "positions 8, 9 (high border)"),
        ([0, 9], "both_borders", "positions 0, 9 (both borders)"),
        ([0, 1, 8, 9], "both_borders", "positions 0, 1, 8, 9 (both borders)"),
        ([1, 4, 7], "periodic", "every 3rd position from 1 (3 of 10)"),
        ([0, 2, 4, 6, 8], "periodic", "every 2nd position from 0 (5 of 10)"),
        ([4, 5], "interior", "interior positions 4, 5 (2 of 10)"),
        ([5], "interior", "interior position 5 (1 of 10)"),
        ([0, 4, 5], "spread", "3 of 10 positions: 0, 4, 5"),
        (range(10), "all", "every position (all 10)"),
    ],
)
def test_describe_where_kinds_on_a_spatial_axis(positions, kind, words):
    where, text = describe_where(_mask(10, positions), ("spatial",))
    n = len(list(positions))
    assert text == f"{n} of 10 elements; spatial axis 0: {words}"
    assert where["axes"][0]["kind"] == kind and where["axes"][0]["positions"] == sorted(positions)
    assert where["violations"] == n and where["elements"] == 10 and where["fraction"] == n / 10


def test_describe_where_no_violation_and_scalar():
    assert describe_where(np.zeros((2, 3), bool), ("batch", "channel"))[1] == "0 of 6 elements"
    where, text = describe_where(np.array(True), ())
    assert text == "1 of 1 elements" and where["axes"] == []


def test_describe_where_batch_groups_and_kernel_axes():
    v = np.zeros((3, 6, 6), dtype=bool)
    v[2, 2:4, 4] = True
    _, text = describe_where(v, ("batch", "spatial", "channel"), groups=3)
    assert (
        text == "2 of 108 elements; batch items: batch item 2; spatial axis 0: interior positions 2, 3 (2 of 6); "
        "channels: channel 4 (group 2 of 3)"
    )
    k = np.zeros((3, 3, 2, 4), dtype=bool)  # hwio
    k[2, :, 0, 1:3] = True
    _, text = describe_where(k, ("tap", "tap", "in", "out"), groups=2)
    assert (
        text == "6 of 72 elements; kernel axis 0: position 2 (high border); kernel axis 1: every position "
        "(all 3); input channels: channel 0 of 2; channels: channels 1, 2 (groups 0, 1 of 2)"
    )
    b = np.zeros((4, 2), dtype=bool)
    b[[0, 3]] = True
    assert "batch items: batch items 0, 3" in describe_where(b, ("batch", "channel"))[1]
    assert "every batch item" in describe_where(np.ones((4, 2), bool), ("batch", "channel"))[1]


def test_describe_where_centre_of_a_three_wide_axis_is_interior():
    where, text = describe_where(_mask(3, [1]), ("spatial",))
    assert where["axes"][0]["kind"] == "interior" and "interior position 1 (1 of 3)" in text


# --- weight standardization -------------------------------------------------------------------


def _ws_float32(w, gain, ddof, denominator, fan, eps, fixed_scale=None):
    """A float32 transcription of WS written here from the formulas (two-pass mean and variance)."""
    wf = w.astype(np.float32)
    axes = tuple(range(w.ndim - 1))
    n = np.float32(np.prod([w.shape[a] for a in axes]))
    mean = wf.mean(axis=axes, keepdims=True, dtype=np.float32)
    d = wf - mean
    var = (d * d).sum(axis=axes, keepdims=True, dtype=np.float32) / np.float32(n - ddof)
    N = {"fan_in": n, "numel": np.float32(w.size), None: np.float32(1)}[fan]
    if denominator == "max_var_n":
        sigma = np.sqrt(np.maximum(var * N, np.float32(eps)))
    elif denominator == "std_plus_eps":
        sigma = np.sqrt(var) + np.float32(eps)
    else:
        sigma = np.sqrt(var + np.float32(eps))
    scale = np.float32(1) if fixed_scale is None else np.float32(fixed_scale) / np.sqrt(n)
    return (d / sigma) * (gain.astype(np.float32) * scale)


@pytest.mark.parametrize("preset", ["brainstate", "elektronn3", "qiao", "timm_std", "timm_scaled", "bit"])
def test_weight_standardize_float32_transcription_passes_and_a_slip_fails(preset):
    from refws import WS_PRESETS
    from refws.testing import assert_weight_standardize_close, check_weight_standardize

    spec = WS_PRESETS[preset]
    rng = np.random.default_rng(7)
    w = rng.normal(size=(3, 3, 4, 6))
    gain = rng.uniform(0.5, 2.0, size=6)
    ok = _ws_float32(w, gain, spec.ddof, spec.denominator, spec.fan, spec.eps, spec.fixed_scale)
    r = assert_weight_standardize_close(ok, w, gain, spec=preset, precision="float32")
    assert r.status == "pass" and r.judgement.max_ratio < 0.5
    slip = _ws_float32(w, gain, 1 - spec.ddof, spec.denominator, spec.fan, spec.eps, spec.fixed_scale)
    bad = check_weight_standardize(slip, w, gain, spec=preset, precision="float32")
    assert bad.status == "fail" and "first-order float32 bound" in bad.text
    with pytest.raises(AssertionError, match="mismatched elements"):
        assert_weight_standardize_close(slip, w, gain, spec=preset, precision="float32")
