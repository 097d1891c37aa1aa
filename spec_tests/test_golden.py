"""Golden fixtures: exact values, reproducible bytes, integrity, the command.

The exactness checks recompute stored values from their definitions, written in this file and in
``spec_tests/naive.py`` without any refws code: ``fractions.Fraction`` sums for the convolution
and transposed-convolution suites (``y``, ``dx``, ``dw``, ``ty`` at sampled elements, plus exact
adjoint identities over whole arrays), and mpmath at 60 digits for weight standardization and the
layer suites (the layers' documented math: PyTorch's and lax's padding rules, OIHW / HWIO
layouts, the WS formulas of ../shared/NOTES.md; derivatives by central differences).
``test_ws_golden_agrees_with_refws_float64`` and the build / verify tests use refws on purpose.
"""

from __future__ import annotations

import hashlib
import importlib
import io
import itertools
import json
import os
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import mpmath
import numpy as np
import pytest

import refws
import refws.golden as golden
from refws.golden.case import SUITES, Case
from refws.golden.layer_cases import evaluate_layer
from refws.golden.store import GoldenError, npz_bytes, read_npz

from .naive import (
    as_tuple,
    from_channels_last,
    naive_conv_transpose_weight_grad,
    naive_conv_vjp,
    naive_explicit_pads,
    naive_out_size,
    naive_torch_pad,
    naive_torch_pads,
    to_channels_last,
)
from .test_nn_brainstate_transpose import transcribed_pads

ROOT = Path(__file__).resolve().parents[1] / "golden"
pytestmark = pytest.mark.skipif(not (ROOT / "manifest.json").exists(), reason="golden/ not built")


def _manifest():
    return json.loads((ROOT / "manifest.json").read_text())


def _names(suite):
    return sorted(n for n, e in _manifest()["cases"].items() if e["suite"] == suite)


# --- independent definitions ----------------------------------------------------------------


def _cl(case, key):
    """A stored input- or output-like array in batched channels-last layout, as its case dictates."""
    p = case.params
    batched = len(p["x_shape"]) == len(p["w_shape"])
    return to_channels_last(case[key], p["channel_first"], batched)


def _f(v) -> Fraction:
    return Fraction(float(v))


def _source(pos, L, sizes):
    """Input index at positions ``pos`` of the lhs-dilated input (pads already taken off), or None
    for a hole between dilated elements or a position outside the input."""
    if any(q < 0 or q % lv or q // lv >= n for q, lv, n in zip(pos, L, sizes)):
        return None
    return tuple(q // lv for q, lv in zip(pos, L))


def _conv_exact_element(x, w, idx, s, pads, L, d, groups):
    """y[idx] = sum over taps and channels, straight from the definition, in Fractions."""
    n, o, co = idx[0], idx[1:-1], idx[-1]
    nd = len(o)
    cg, cog = w.shape[-2], w.shape[-1] // groups
    g = co // cog
    total = Fraction(0)
    for t in itertools.product(*(range(k) for k in w.shape[:nd])):
        src = _source([o[i] * s[i] + t[i] * d[i] - pads[i][0] for i in range(nd)], L, x.shape[1:-1])
        if src is None:
            continue
        for c in range(cg):
            total += _f(x[(n, *src, g * cg + c)]) * _f(w[(*t, c, co)])
    return total


def _conv_dx_exact_element(dy, w, idx, s, pads, L, d, groups):
    """dx[idx] = d<y, dy>/dx[idx]: every output position o and tap t that read input element i
    (``o*s + t*d - lo == i*L``), times every output channel j of i's group, in Fractions."""
    n, i, ci = idx[0], idx[1:-1], idx[-1]
    nd = len(i)
    cg, cog = w.shape[-2], w.shape[-1] // groups
    g, c = divmod(ci, cg)
    total = Fraction(0)
    for t in itertools.product(*(range(k) for k in w.shape[:nd])):
        q = [i[a] * L[a] + pads[a][0] - t[a] * d[a] for a in range(nd)]  # = o * s
        if any(v < 0 or v % s[a] or v // s[a] >= dy.shape[1 + a] for a, v in enumerate(q)):
            continue
        o = tuple(v // s[a] for a, v in enumerate(q))
        for j in range(g * cog, (g + 1) * cog):
            total += _f(dy[(n, *o, j)]) * _f(w[(*t, c, j)])
    return total


def _conv_dw_exact_element(x, dy, idx, s, pads, L, d, groups):
    """dw[idx] = d<y, dy>/dw[t, c, co] = sum over samples and output positions of the input value
    tap t reads there times dy, in Fractions."""
    t, c, co = idx[:-2], idx[-2], idx[-1]
    nd = len(t)
    cg, cog = x.shape[-1] // groups, dy.shape[-1] // groups
    total = Fraction(0)
    for n in range(x.shape[0]):
        for o in itertools.product(*(range(m) for m in dy.shape[1:-1])):
            src = _source([o[a] * s[a] + t[a] * d[a] - pads[a][0] for a in range(nd)], L, x.shape[1:-1])
            if src is not None:
                total += _f(x[(n, *src, (co // cog) * cg + c)]) * _f(dy[(n, *o, co)])
    return total


def _sample(shape, count, seed):
    """``count`` random indices into ``shape`` (every index when ``count`` is None; none if empty)."""
    if 0 in shape:
        return []
    if count is None:
        return list(np.ndindex(*shape))
    rng = np.random.default_rng(seed)
    return [tuple(int(rng.integers(0, m)) for m in shape) for _ in range(count)]


def _exact_dot(a, b):
    return sum((_f(u) * _f(v) for u, v in zip(a.ravel(), b.ravel())), Fraction(0))


@pytest.mark.parametrize("name", _names("conv") if ROOT.exists() and (ROOT / "manifest.json").exists() else [])
def test_conv_case_is_exact(name):
    """y, dx, dw and ty at sampled elements from the definition in Fractions (stored values are
    exact); the adjoint identities over whole arrays."""
    case = golden.load(name)
    p = case.params
    x, dy, yc, tx, ty = (_cl(case, k) for k in ("x", "dy", "y", "tx", "ty"))
    w, tw = case["w"], case["tw"]
    nd = x.ndim - 2
    s, L, d = (as_tuple(p[k], nd) for k in ("stride", "lhs_dilation", "rhs_dilation"))
    pads = naive_explicit_pads(p["padding"], x.shape[1:-1], w.shape[:nd], s, L, d)
    geo = (s, pads, L, d, p["groups"])
    assert yc.shape[1:-1] == tuple(naive_out_size(*a) for a in zip(x.shape[1:-1], w.shape[:nd], s, pads, L, d))
    for idx in _sample(yc.shape, 6, 0):
        assert _f(yc[idx]) == _conv_exact_element(x, w, idx, *geo), ("y", idx)
    for idx in _sample(ty.shape, 4, 1):
        assert _f(ty[idx]) == _conv_exact_element(tx, w, idx, *geo) + _conv_exact_element(x, tw, idx, *geo), idx
    dx = _cl(case, "dx")
    for idx in _sample(dx.shape, 4, 2):
        assert _f(dx[idx]) == _conv_dx_exact_element(dy, w, idx, *geo), ("dx", idx)
    for idx in _sample(w.shape, 4, 3):
        assert _f(case["dw"][idx]) == _conv_dw_exact_element(x, dy, idx, *geo), ("dw", idx)
    # VJP and JVP, all elements at once: exact adjoint identities and bilinearity
    assert _exact_dot(yc, dy) == _exact_dot(case["x"], case["dx"]) == _exact_dot(w, case["dw"])
    assert _exact_dot(ty, dy) == _exact_dot(case["tx"], case["dx"]) + _exact_dot(tw, case["dw"])


def _transpose_scatter(x, w, s, d, pad, groups, y_spatial):
    """PyTorch's ConvTranspose by its scatter definition, in Fractions: ``{output index: value}``.

    Canonical layouts: x ``(N, *n, C_in)``, w ``(*k, C_out/groups, C_in)``;
    ``y[n, i*s - p + t*d, g*Cog + j] += x[n, i, g*Cg + c] * w[t, j, g*Cg + c]`` inside the output.
    """
    nd = x.ndim - 2
    cin, cog = x.shape[-1], w.shape[-2]
    cig = cin // groups
    exact = {}
    for n in range(x.shape[0]):
        for i in itertools.product(*(range(m) for m in x.shape[1:-1])):
            for t in itertools.product(*(range(k) for k in w.shape[:nd])):
                pos = tuple(i[a] * s[a] + t[a] * d[a] - pad[a] for a in range(nd))
                if any(q < 0 or q >= y_spatial[a] for a, q in enumerate(pos)):
                    continue
                for ci in range(cin):
                    g = ci // cig
                    for j in range(cog):
                        key = (n, *pos, g * cog + j)
                        exact[key] = exact.get(key, Fraction(0)) + _f(x[(n, *i, ci)]) * _f(w[(*t, j, ci)])
    return exact


def _transpose_dx_exact_element(dy, w, idx, s, d, pad, groups):
    """dx[n, i, ci] of the scatter definition: every tap t whose target ``i*s - p + t*d`` lies in
    the output, times every output channel j of ci's group."""
    n, i, ci = idx[0], idx[1:-1], idx[-1]
    nd = len(i)
    cog, g = w.shape[-2], ci // (w.shape[-1] // groups)
    total = Fraction(0)
    for t in itertools.product(*(range(k) for k in w.shape[:nd])):
        o = tuple(i[a] * s[a] - pad[a] + t[a] * d[a] for a in range(nd))
        if all(0 <= q < dy.shape[1 + a] for a, q in enumerate(o)):
            for j in range(cog):
                total += _f(dy[(n, *o, g * cog + j)]) * _f(w[(*t, j, ci)])
    return total


def _transpose_dw_exact_element(x, dy, idx, s, d, pad, groups):
    """dw[t, j, ci] of the scatter definition: every sample and input position whose target lies
    in the output, ``x[n, i, ci] * dy[n, i*s - p + t*d, g*Cog + j]``."""
    t, j, ci = idx[:-2], idx[-2], idx[-1]
    nd = len(t)
    cog = dy.shape[-1] // groups
    g = ci // (x.shape[-1] // groups)
    total = Fraction(0)
    for n in range(x.shape[0]):
        for i in itertools.product(*(range(m) for m in x.shape[1:-1])):
            o = tuple(i[a] * s[a] - pad[a] + t[a] * d[a] for a in range(nd))
            if all(0 <= q < dy.shape[1 + a] for a, q in enumerate(o)):
                total += _f(x[(n, *i, ci)]) * _f(dy[(n, *o, g * cog + j)])
    return total


@pytest.mark.parametrize("name", _names("conv_transpose") if (ROOT / "manifest.json").exists() else [])
def test_conv_transpose_case_is_exact(name):
    """y and ty by the scatter-add definition (PyTorch ConvTranspose), dx and dw as its derivatives,
    at sampled elements in Fractions; the output size by PyTorch's formula; adjoint identities."""
    case = golden.load(name)
    p = case.params
    x, dy, tx = _cl(case, "x"), _cl(case, "dy"), _cl(case, "tx")
    w, tw = case["w"], case["tw"]  # (*k, C_out/groups, C_in)
    nd = x.ndim - 2
    s, d, pad, op = (as_tuple(p[k], nd) for k in ("stride", "dilation", "padding", "output_padding"))
    groups = p["groups"]
    size = [
        (n - 1) * ss - 2 * pp + dd * (k - 1) + oo + 1
        for n, k, ss, pp, dd, oo in zip(x.shape[1:-1], w.shape[:nd], s, pad, d, op)
    ]
    if p["output_size"] is not None:  # PyTorch: output_size replaces output_padding
        size = list(p["output_size"])[-nd:]
    y_spatial = dy.shape[1:-1]
    assert list(y_spatial) == size and dy.shape[-1] == w.shape[-2] * groups
    yc, ty = _cl(case, "y"), _cl(case, "ty")
    b, tb = case.arrays.get("b"), case.arrays.get("tb")
    y_exact = _transpose_scatter(x, w, s, d, pad, groups, y_spatial)
    for idx in _sample(yc.shape, 8, 1):
        want = y_exact.get(idx, Fraction(0)) + (_f(b[idx[-1]]) if b is not None else 0)
        assert _f(yc[idx]) == want, ("y", idx)
    ty_x, ty_w = (_transpose_scatter(u, v, s, d, pad, groups, y_spatial) for u, v in ((tx, w), (x, tw)))
    for idx in _sample(ty.shape, 4, 2):
        want = ty_x.get(idx, Fraction(0)) + ty_w.get(idx, Fraction(0)) + (_f(tb[idx[-1]]) if tb is not None else 0)
        assert _f(ty[idx]) == want, ("ty", idx)
    dx = _cl(case, "dx")
    for idx in _sample(dx.shape, 4, 3):
        assert _f(dx[idx]) == _transpose_dx_exact_element(dy, w, idx, s, d, pad, groups), ("dx", idx)
    for idx in _sample(w.shape, 4, 4):
        assert _f(case["dw"][idx]) == _transpose_dw_exact_element(x, dy, idx, s, d, pad, groups), ("dw", idx)
    yb = yc - (b if b is not None else 0)
    assert _exact_dot(yb, dy) == _exact_dot(case["x"], case["dx"]) == _exact_dot(w, case["dw"])
    if b is not None:
        assert np.array_equal(case["db"], dy.reshape(-1, dy.shape[-1]).sum(axis=0))


# --- weight standardization against mpmath --------------------------------------------------

mpmath.mp.dps = 60

# (ddof, denominator, fan, eps, gamma) transcribed from ../shared/NOTES.md, independently of refws.ws
_PRESETS = {
    "brainstate": (0, "max_var_n", "fan_in", 1e-4, None),
    "nfnets": (0, "max_var_n", "fan_in", 1e-4, None),
    "elektronn3": (1, "max_var_n", "numel", 1e-4, None),
    "qiao": (1, "std_plus_eps", None, 1e-5, None),
    "timm_std": (0, "sqrt_var_plus_eps", None, 1e-6, None),
    "timm_scaled": (0, "sqrt_var_plus_eps", None, 1e-6, 1.0),
    "bit": (0, "sqrt_var_plus_eps", None, 1e-10, None),
}


def _ws_mp(w, gain, ddof, den, fan, eps, gamma, axis):
    """Literal transcription of the WS formula in mpmath; returns a list of mpf per element (C order)."""
    wl = np.moveaxis(np.asarray(w, dtype=object), axis, -1)
    c = wl.shape[-1]
    flat = wl.reshape(-1, c)
    n = flat.shape[0]
    out = np.empty(flat.shape, dtype=object)
    for j in range(c):
        col = [mpmath.mpf(v) for v in flat[:, j]]
        mean = mpmath.fsum(col) / n
        var = mpmath.fsum((v - mean) ** 2 for v in col) / (n - ddof)
        big_n = {"fan_in": n, "numel": np.size(w), None: 1}[fan]
        if den == "max_var_n":
            sigma = mpmath.sqrt(max(var * big_n, mpmath.mpf(eps)))
        elif den == "std_plus_eps":
            sigma = mpmath.sqrt(var) + mpmath.mpf(eps)
        else:
            sigma = mpmath.sqrt(var + mpmath.mpf(eps))
        scale = (mpmath.mpf(gamma) / mpmath.sqrt(n) if gamma is not None else 1) / sigma
        g = mpmath.mpf(gain.ravel()[j]) if gain is not None else 1
        for i in range(n):
            out[i, j] = (col[i] - mean) * scale * g
    return np.moveaxis(out.reshape(wl.shape), -1, axis)


def _ulps(stored, exact):
    stored = float(stored)
    ulp = np.spacing(abs(stored)) if stored != 0 else np.spacing(0.0)
    return abs(mpmath.mpf(stored) - exact) / ulp


@pytest.mark.parametrize("name", _names("ws") if (ROOT / "manifest.json").exists() else [])
def test_ws_case_within_half_ulp(name):
    case = golden.load(name)
    p = case.params
    ddof, den, fan, eps, gamma = _PRESETS[p["spec"]]
    eps = p["eps"] if p["eps"] is not None else eps
    w, gain = case["w"], case.arrays.get("gain")
    args = (ddof, den, fan, eps, gamma, p["out_axis"])
    exact = _ws_mp(w, gain, *args)
    for idx in np.ndindex(w.shape):
        assert _ulps(case["w_hat"][idx], exact[idx]) <= 0.5 + 1e-9, idx
    # VJP and JVP against central differences in mpmath (step 1e-25: truncation error ~1e-50)
    h = mpmath.mpf("1e-25")
    dw_hat = case["dw_hat"]

    def loss(wv, gv):
        return mpmath.fsum(a * float(b) for a, b in zip(_ws_mp(wv, gv, *args).ravel(), dw_hat.ravel()))

    wo = np.asarray(w, dtype=object)
    for idx in _sample(w.shape, 3, 2):
        wp, wm = wo.copy(), wo.copy()
        wp[idx] = mpmath.mpf(float(w[idx])) + h
        wm[idx] = mpmath.mpf(float(w[idx])) - h
        assert _ulps(case["dw"][idx], (loss(wp, gain) - loss(wm, gain)) / (2 * h)) <= 1.0, idx
    if gain is not None:
        go = np.asarray(gain, dtype=object)
        j = (0,) * gain.ndim
        gp, gm = go.copy(), go.copy()
        gp[j] = mpmath.mpf(float(gain[j])) + h
        gm[j] = mpmath.mpf(float(gain[j])) - h
        assert _ulps(case["dgain"][j], (loss(wo, gp) - loss(wo, gm)) / (2 * h)) <= 1.0
    tw = case["tw"]
    tg = case.arrays.get("tgain")
    wp = np.asarray([mpmath.mpf(float(a)) + h * float(t) for a, t in zip(w.ravel(), tw.ravel())], dtype=object)
    wm = np.asarray([mpmath.mpf(float(a)) - h * float(t) for a, t in zip(w.ravel(), tw.ravel())], dtype=object)
    gp = gm = gain
    if gain is not None:
        gp = np.asarray([mpmath.mpf(float(a)) + h * float(t) for a, t in zip(gain.ravel(), tg.ravel())], dtype=object)
        gm = np.asarray([mpmath.mpf(float(a)) - h * float(t) for a, t in zip(gain.ravel(), tg.ravel())], dtype=object)
    up = _ws_mp(wp.reshape(w.shape), gp, *args)
    dn = _ws_mp(wm.reshape(w.shape), gm, *args)
    for idx in _sample(w.shape, 4, 3):
        assert _ulps(case["tw_hat"][idx], (up[idx] - dn[idx]) / (2 * h)) <= 1.0, idx


def test_ws_golden_agrees_with_refws_float64():
    """refws.weight_standardize (float64, its own derivation) is within a few ulps of the exact store."""
    for name in _names("ws"):
        case = golden.load(name)
        p = case.params
        got = refws.weight_standardize(
            case["w"], case.arrays.get("gain"), p["eps"], out_axis=p["out_axis"], spec=p["spec"]
        )
        np.testing.assert_allclose(got, case["w_hat"], rtol=1e-13, atol=1e-13 * np.abs(case["w_hat"]).max())


# --- the generator --------------------------------------------------------------------------


def test_splitmix64_matches_reference_vector_and_pure_python():
    from refws.golden.rng import splitmix64

    # Published first outputs of SplitMix64 seeded with 0 (Vigna's splitmix64.c).
    assert int(splitmix64(0, 1)[0]) == 0xE220A8397B1DCDAF
    mask = 2**64 - 1

    def pure(seed, i):
        z = (seed + i * 0x9E3779B97F4A7C15) & mask
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & mask
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & mask
        return z ^ (z >> 31)

    seed = 0x0123456789ABCDEF
    assert [int(v) for v in splitmix64(seed, 50)] == [pure(seed, i) for i in range(1, 51)]


def test_stored_inputs_are_float32_representable():
    for case in golden.cases(suite="conv"):
        for key in ("x", "w", "dy", "tx", "tw"):
            a = case[key]
            assert np.array_equal(a.astype(np.float32).astype(np.float64), a), (case.name, key)


# --- reproducibility ------------------------------------------------------------------------


def _build(out, threads, pattern):
    env = dict(
        os.environ, OPENBLAS_NUM_THREADS=str(threads), OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads)
    )
    subprocess.run(
        [sys.executable, "-m", "refws", "golden", "build", "--out", str(out), "--case", pattern],
        check=True,
        env=env,
        capture_output=True,
    )


def _tree(root):
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(Path(root).rglob("*")) if p.is_file()}


def test_builds_with_one_and_two_blas_threads_are_byte_identical_and_equal_the_store(tmp_path):
    pattern = "*2d_[agp]*"  # a few dozen cases of every suite with 2-d in the name
    _build(tmp_path / "t1", 1, pattern)
    _build(tmp_path / "t2", 2, pattern)
    one, two = _tree(tmp_path / "t1"), _tree(tmp_path / "t2")
    assert one == two and len(one) > 10
    committed = _manifest()["cases"]
    for rel, data in one.items():
        if rel != "manifest.json":
            assert hashlib.sha256(data).hexdigest() == committed[rel[:-4]]["sha256"], rel


# --- integrity ------------------------------------------------------------------------------


@pytest.fixture
def small_store(tmp_path):
    """A store of a few cases of every kind, built in-process (the CLI tests verify it with --partial)."""
    root = tmp_path / "store"
    for pattern in ("conv/1d_pad_s*", "ws/bit_linear", "brainstate/Linear_mask", "elektronn3/WSConv1d_default"):
        golden.build(root, pattern=pattern)
    return root


def _first(root):
    return sorted(json.loads((root / "manifest.json").read_text())["cases"])[0]


# The store's own words; matched after ".npz: " so that no part of the (pytest-named) path can match.
ALTERED = r"\.npz: checksum mismatch \(file truncated or altered\)"


def _alter_one_value(root, name):
    """Rewrite a case file as a *valid* npz (zip CRCs recomputed, same arrays, same shapes) with one
    stored value moved by one ulp, leaving the manifest as it is: only the sha256 can tell."""
    path = root / f"{name}.npz"
    arrays = read_npz(path.read_bytes(), str(path))
    key = next(k for k in sorted(arrays) if arrays[k].size)
    arrays[key].ravel()[0] = np.nextafter(arrays[key].ravel()[0], np.inf)
    data = npz_bytes(arrays)
    path.write_bytes(data)
    reread = read_npz(data, "altered")  # readable, and the arrays the manifest lists
    assert sorted(reread) == sorted(json.loads((root / "manifest.json").read_text())["cases"][name]["arrays"])
    return key


def test_load_refuses_altered_truncated_and_missing_files(small_store):
    name = _first(small_store)
    path = small_store / f"{name}.npz"
    assert golden.load(name, small_store).name == name
    data = path.read_bytes()
    _alter_one_value(small_store, name)  # a valid npz: only the sha256 catches it
    with pytest.raises(GoldenError, match=ALTERED):
        golden.load(name, small_store)
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(GoldenError, match=ALTERED):
        golden.load(name, small_store)
    path.write_bytes(data[:100] + bytes([data[100] ^ 1]) + data[101:])
    with pytest.raises(GoldenError, match=ALTERED):
        golden.load(name, small_store)
    path.write_bytes(data)
    assert golden.load(name, small_store).name == name
    path.unlink()
    with pytest.raises(GoldenError, match=r"\.npz: missing \(listed in the manifest\)"):
        golden.load(name, small_store)
    with pytest.raises(KeyError, match="no_such_case"):
        golden.load("conv/no_such_case", small_store)
    (small_store / "manifest.json").unlink()
    with pytest.raises(GoldenError, match=r"manifest\.json: missing"):
        golden.load(name, small_store)


def test_cases_refuses_an_altered_file(small_store):
    names = sorted(json.loads((small_store / "manifest.json").read_text())["cases"])
    assert [c.name for c in golden.cases(small_store)] == names
    _alter_one_value(small_store, names[-1])
    with pytest.raises(GoldenError, match=ALTERED):
        list(golden.cases(small_store))


def test_npz_reader_never_unpickles():
    buf = io.BytesIO()
    np.savez(buf, bad=np.array([{"a": 1}], dtype=object))
    with pytest.raises(GoldenError, match="evil.npz"):
        read_npz(buf.getvalue(), "evil.npz")


def test_npz_bytes_are_standard_and_deterministic():
    arrays = {"b": np.arange(6.0).reshape(2, 3), "a": np.zeros(()), "e": np.zeros((0, 2))}
    data = npz_bytes(arrays)
    assert data == npz_bytes(dict(reversed(list(arrays.items()))))
    with np.load(io.BytesIO(data), allow_pickle=False) as z:
        assert sorted(z.files) == ["a", "b", "e"]
        for k, v in arrays.items():
            assert z[k].shape == v.shape and np.array_equal(z[k], v)


def test_interrupted_build_leaves_previous_store_intact(small_store, monkeypatch):
    before = _tree(small_store)
    gb = importlib.import_module("refws.golden.build")  # the module, not the build() it exports

    calls = {"n": 0}
    real = gb.evaluate  # every way of building a case evaluates it first

    def failing(case):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return real(case)

    monkeypatch.setattr(gb, "evaluate", failing)
    with pytest.raises(KeyboardInterrupt):
        gb.build(small_store, pattern="conv/2d_*")
    assert _tree(small_store) == before
    assert not list(small_store.parent.glob("store.tmp-*"))
    # a crash between the two renames of the swap: the next reader restores the previous store
    small_store.rename(small_store.with_name("store.previous"))
    assert golden.load(_first(small_store.parent / "store.previous"), small_store).name


# --- the command ----------------------------------------------------------------------------


def _cli(*args):
    return subprocess.run([sys.executable, "-m", "refws", *map(str, args)], capture_output=True, text=True)


def test_cli_verify_exit_codes(small_store):
    ok = _cli("golden", "verify", small_store, "--partial")
    assert ok.returncode == 0, ok.stdout + ok.stderr
    name = _first(small_store)
    manifest = json.loads((small_store / "manifest.json").read_text())
    # a mismatch: a stored value changed consistently with its checksum
    with np.load(small_store / f"{name}.npz") as z:
        arrays = {k: z[k].copy() for k in z.files}
    key = next(k for k in sorted(arrays) if arrays[k].size and not k.endswith("__absbound"))
    arrays[key].ravel()[0] = np.nextafter(arrays[key].ravel()[0], np.inf)
    data = npz_bytes(arrays)
    (small_store / f"{name}.npz").write_bytes(data)
    manifest["cases"][name]["sha256"] = hashlib.sha256(data).hexdigest()
    (small_store / "manifest.json").write_text(json.dumps(manifest, indent=1, sort_keys=True) + "\n")
    bad = _cli("golden", "verify", small_store, "--partial")
    assert bad.returncode == 1 and name in bad.stdout and f"'{key}'" in bad.stdout and "1 ulp" in bad.stdout
    # corrupt: a truncated file
    (small_store / f"{name}.npz").write_bytes(data[:50])
    assert _cli("golden", "verify", small_store, "--partial").returncode == 2
    # corrupt: a valid npz whose value changed while the manifest did not (only the sha256 tells)
    (small_store / f"{name}.npz").write_bytes(data)
    assert _cli("golden", "verify", small_store, "--partial").returncode == 1
    _alter_one_value(small_store, name)
    altered = _cli("golden", "verify", small_store, "--partial")
    assert altered.returncode == 2, altered.stdout + altered.stderr
    assert f"CORRUPT {name}: " in altered.stdout and "checksum mismatch (truncated or altered)" in altered.stdout
    assert _cli("golden", "frobnicate").returncode == 2
    assert _cli("golden", "verify", small_store / "nowhere").returncode == 2


def test_cli_list_and_show():
    out = _cli("golden", "list", "--suite", "conv")
    assert out.returncode == 0 and "conv/bug_lax_reference_pad_2_minus1" in out.stdout
    show = _cli("golden", "show", "conv/bug_lax_reference_pad_2_minus1")
    assert show.returncode == 0 and "params" in show.stdout and "y " in show.stdout


def test_catalog_size_and_store_size():
    manifest = _manifest()
    assert len(manifest["cases"]) >= 200
    assert {e["suite"] for e in manifest["cases"].values()} == set(SUITES)
    size = sum(p.stat().st_size for p in ROOT.rglob("*") if p.is_file())
    assert size < 20 * 2**20


# --- layer suites: the layers' documented math in mpmath, no refws code ------------------------


@dataclass(frozen=True)
class _LayerDef:
    """A layer case as ``y = core(x, W) + bias`` with ``W = mask * WS(weight, gain)`` (or
    ``mask * weight``), written from the layer's documented math (NOTES.md, docs/layers.md).

    The core is bilinear; it is given by its weight gradient ``wgrad(x, dy) = d<core(x, W), dy>/dW``
    (inputs, outputs and weight in the layer's own layouts), a definition loop of ``naive.py``.
    By linearity ``y[i] = <W, wgrad(x, e_i)> + b`` and ``dx[i] = <W, wgrad(e_i, dy)>`` for unit
    arrays ``e_i``, and ``wgrad(x, dy)`` is the cotangent of ``W``.
    """

    wgrad: Callable
    y_shape: tuple
    channel_axis: int  # of y: where the bias goes
    ws: tuple | None  # _ws_mp's (ddof, denominator, fan, eps, gamma, axis); None: no WS


def _brainstate_def(p, x_shape) -> _LayerDef:
    """brainstate 0.6.0: HWIO kernel in both layouts, lax padding (SAME: odd element at the end),
    NFNets WS over every axis but the last; Linear: ``x @ W`` over the last axis of x;
    ConvTranspose: lax's conv with ``lhs_dilation = stride`` and window stride 1, its kernel
    ``(*k, C_out, C_in/g)`` flipped spatially and read as HWIO, SAME / VALID by lax.conv_transpose's
    rule (``transcribed_pads`` of test_nn_brainstate_transpose.py), explicit pads as given."""
    cls, kw = p["cls"], p["kwargs"]
    ws = None
    if cls.startswith("ScaledWS"):
        ddof, den, fan, eps, gamma = _PRESETS["brainstate"]
        ws = (ddof, den, fan, kw.get("eps", eps), gamma, -1)
    if cls.endswith("Linear"):

        def outer_sum(x, dy):  # y[..., o] = sum_i x[..., i] W[i, o] + b[o]
            return x.reshape(-1, x.shape[-1]).T @ dy.reshape(-1, dy.shape[-1])

        return _LayerDef(outer_sum, (*x_shape[:-1], kw["out_size"]), -1, ws)
    nd = int(cls[-2])
    cf, batched = kw.get("channel_first", False), len(x_shape) == nd + 2
    groups, c_out = kw.get("groups", 1), kw["out_channels"]
    c_in = kw["in_size"][0] if cf else kw["in_size"][-1]
    k = as_tuple(kw["kernel_size"], nd)
    s, L, d = (as_tuple(kw.get(a, 1), nd) for a in ("stride", "lhs_dilation", "rhs_dilation"))
    x_cl_shape = to_channels_last(np.empty(x_shape), cf, batched).shape
    transpose = cls.startswith("ConvTranspose")
    if transpose:  # the stride dilates the input; the window moves by 1
        s, L = (1,) * nd, s
        pads = transcribed_pads(kw.get("padding", "SAME"), x_cl_shape[1:-1], k, L, d)
    else:
        pads = naive_explicit_pads(kw.get("padding", "SAME"), x_cl_shape[1:-1], k, s, L, d)
    out = [naive_out_size(*a) for a in zip(x_cl_shape[1:-1], k, s, pads, L, d)]
    y_shape = from_channels_last(np.empty((x_cl_shape[0], *out, c_out)), cf, batched).shape

    def wgrad(x, dy):
        w0 = np.zeros((*k, c_in // groups, c_out))
        dw = naive_conv_vjp(
            to_channels_last(x, cf, batched), w0, to_channels_last(dy, cf, batched), s, pads, L, d, groups
        )[1]
        return np.flip(np.swapaxes(dw, -1, -2), axis=tuple(range(nd))) if transpose else dw

    return _LayerDef(wgrad, y_shape, (1 if batched else 0) if cf else -1, ws)


def _elektronn3_def(p, x_shape) -> _LayerDef:
    """elektronn3 0.1.1 (PyTorch): NC* input, OIHW weight (transposed: ``(C_in, C_out/g, *k)``),
    PyTorch's padding ('same': odd element at the end) and padding modes, WS over every axis but 0
    with ddof 1 and N = the whole weight's size; ConvTranspose by its scatter definition."""
    cls, kw = p["cls"], p["kwargs"]
    nd = int(cls[-2])
    batched = len(x_shape) == nd + 2
    xb_shape = tuple(x_shape) if batched else (1, *x_shape)
    ddof, den, fan, eps, gamma = _PRESETS["elektronn3"]
    ws = (ddof, den, fan, eps, gamma, 0)
    c_in, c_out, groups = kw["in_channels"], kw["out_channels"], kw.get("groups", 1)
    k, s, d = (as_tuple(kw.get(a, 1), nd) for a in ("kernel_size", "stride", "dilation"))

    def batch(a):
        return a if batched else a[None]

    if cls.startswith("WSConvTranspose"):
        pad, op = as_tuple(kw.get("padding", 0), nd), as_tuple(kw.get("output_padding", 0), nd)
        out = [
            (n - 1) * ss - 2 * pp + dd * (kk - 1) + oo + 1
            for n, kk, ss, pp, dd, oo in zip(xb_shape[2:], k, s, pad, d, op)
        ]
        if p.get("output_size") is not None:  # PyTorch: output_size replaces output_padding
            out = list(p["output_size"])[-nd:]

        def wgrad(x, dy):
            return naive_conv_transpose_weight_grad(batch(x), batch(dy), k, s, pad, d, groups)
    else:
        pads = naive_torch_pads(kw.get("padding", 0), k, d)
        mode = kw.get("padding_mode", "zeros")
        out = [naive_out_size(n, kk, ss, pp, 1, dd) for n, kk, ss, pp, dd in zip(xb_shape[2:], k, s, pads, d)]

        def wgrad(x, dy):  # pad (any mode) first, then a VALID convolution
            x_cl = np.moveaxis(naive_torch_pad(batch(x), pads, mode), 1, -1)
            w0 = np.zeros((*k, c_in // groups, c_out))
            dw = naive_conv_vjp(x_cl, w0, np.moveaxis(batch(dy), 1, -1), s, ((0, 0),) * nd, 1, d, groups)[1]
            return np.moveaxis(dw, (-1, -2), (0, 1))  # (*k, I/g, O) -> PyTorch's (O, I/g, *k)

    y_shape = (xb_shape[0], c_out, *out)
    return _LayerDef(wgrad, y_shape if batched else y_shape[1:], 1 if batched else 0, ws)


def _layer_def(p, x_shape) -> _LayerDef:
    return {"brainstate": _brainstate_def, "elektronn3": _elektronn3_def}[p["library"]](p, x_shape)


def _assert_on_grid(a):
    """``wgrad`` runs in float64; it is exact when its operands are dyadic grid values in [-1, 1]
    with units of at least 2**-11 (or unit arrays): every product is then a multiple of 2**-22 of
    magnitude <= 1 and every sum has fewer than 2**30 terms, so no partial sum is ever rounded."""
    assert np.abs(a).max(initial=0) <= 1 and np.array_equal(np.ldexp(a, 11), np.round(np.ldexp(a, 11)))
    assert a.size < 2**30


def _mp(a):
    """An array of floats or mpf as an object array of mpf (exact conversion)."""
    return np.asarray([mpmath.mpf(v) for v in np.ravel(a)], dtype=object).reshape(np.shape(a))


def _mp_dot(a, b):
    """sum a[j] * b[j] in mpmath over the nonzero entries of the float array b."""
    return mpmath.fsum(u * float(v) for u, v in zip(a.ravel(), np.ravel(b)) if v)


def _unit(shape, idx):
    e = np.zeros(shape)
    e[idx] = 1.0
    return e


def _check_layer(p, arrays, samples=3):
    """Every output of a layer case against ``_LayerDef``: y, dx and ty at sampled elements (all
    with ``samples=None``), dweight and dgain by central differences in mpmath, dbias exactly."""
    x, w, dy, y, dx = (arrays[k] for k in ("x", "weight", "dy", "y", "dx"))
    gain, mask, bias = arrays.get("gain"), arrays.get("w_mask"), arrays.get("bias")
    m = _layer_def(p, x.shape)
    assert y.shape == m.y_shape and dx.shape == x.shape and arrays["dweight"].shape == w.shape
    for a in (x, dy, arrays["tx"]):
        _assert_on_grid(a)
    masked = (lambda a: a * mask) if mask is not None else (lambda a: a)

    def effective(wv, gv):  # mask * WS(weight, gain), in mpmath
        return masked(_ws_mp(wv, gv, *m.ws) if m.ws is not None else _mp(wv))

    def bias_at(b, i):
        return mpmath.mpf(float(b.ravel()[i[m.channel_axis]])) if b is not None else 0

    w_eff = effective(w, gain)
    for i in _sample(y.shape, samples, 4):
        assert _ulps(y[i], _mp_dot(w_eff, m.wgrad(x, _unit(y.shape, i))) + bias_at(bias, i)) <= 1.0, ("y", i)
    for i in _sample(x.shape, samples, 5):
        assert _ulps(dx[i], _mp_dot(w_eff, m.wgrad(_unit(x.shape, i), dy))) <= 1.0, ("dx", i)
    if bias is not None:  # sums of grid values: exact
        axes = tuple(a for a in range(y.ndim) if a != m.channel_axis % y.ndim)
        np.testing.assert_array_equal(arrays["dbias"].ravel(), dy.sum(axis=axes))
    g = masked(m.wgrad(x, dy))  # cotangent of WS(weight, gain), exact
    h = mpmath.mpf("1e-25")  # central differences: truncation ~1e-50
    if m.ws is None:
        np.testing.assert_array_equal(arrays["dweight"], g)
    else:

        def loss(wv, gv):
            return _mp_dot(_ws_mp(wv, gv, *m.ws), g)

        wo = _mp(w)
        for idx in _sample(w.shape, 2, 6):
            wp, wm = wo.copy(), wo.copy()
            wp[idx], wm[idx] = wo[idx] + h, wo[idx] - h
            assert _ulps(arrays["dweight"][idx], (loss(wp, gain) - loss(wm, gain)) / (2 * h)) <= 1.0, idx
        if gain is not None:
            go = _mp(gain)
            for idx in _sample(gain.shape, 1, 7):
                gp, gm = go.copy(), go.copy()
                gp[idx], gm[idx] = go[idx] + h, go[idx] - h
                assert _ulps(arrays["dgain"][idx], (loss(wo, gp) - loss(wo, gm)) / (2 * h)) <= 1.0, idx
    # JVP: ty[i] = d/dh y[i] at (x, weight, gain, bias) + h (tx, tweight, tgain, tbias)
    tx, tw, tg, tb = arrays["tx"], arrays["tweight"], arrays.get("tgain"), arrays.get("tbias")
    up = effective(_mp(w) + h * tw, None if gain is None else _mp(gain) + h * tg)
    down = effective(_mp(w) - h * tw, None if gain is None else _mp(gain) - h * tg)
    for i in _sample(y.shape, samples, 8):
        e = _unit(y.shape, i)
        j0, j1 = m.wgrad(x, e), m.wgrad(tx, e)  # y[i] is linear in x: J(x + h tx) = j0 + h j1
        y_up = _mp_dot(up, j0) + h * _mp_dot(up, j1) + bias_at(bias, i) + h * bias_at(tb, i)
        y_dn = _mp_dot(down, j0) - h * _mp_dot(down, j1) + bias_at(bias, i) - h * bias_at(tb, i)
        assert _ulps(arrays["ty"][i], (y_up - y_dn) / (2 * h)) <= 1.0, ("ty", i)


def _layer_names():
    return _names("brainstate") + _names("elektronn3") if (ROOT / "manifest.json").exists() else []


@pytest.mark.parametrize("name", _layer_names())
def test_layer_case_within_one_ulp(name):
    """y, dx, ty at sampled elements and dweight, dgain by central differences, all in mpmath
    from the layer's documented math (``_LayerDef``), with no refws code; dbias exactly."""
    case = golden.load(name)
    _check_layer(case.params, case.arrays)


# Off-catalog layer cases with an odd total SAME pad (even kernels): no catalog layer case has one,
# so the stored cases cannot tell where the builder puts the odd element. Built in memory and
# checked in full: brainstate (lax) and PyTorch both put it at the end.
_ODD_SAME_CASES = [
    Case(
        "brainstate/odd_same_Conv1d_k2",
        "brainstate",
        dict(
            library="brainstate",
            cls="Conv1d",
            x_shape=[2, 7, 2],
            mask=False,
            kwargs=dict(in_size=[7, 2], out_channels=3, kernel_size=2, b_init=True),
        ),
    ),
    Case(
        "brainstate/odd_same_ScaledWSConv2d_stride",
        "brainstate",
        dict(
            library="brainstate",
            cls="ScaledWSConv2d",
            x_shape=[1, 5, 6, 2],
            mask=False,
            kwargs=dict(in_size=[5, 6, 2], out_channels=2, kernel_size=[2, 3], stride=[1, 2]),
        ),
    ),
    Case(
        "elektronn3/odd_same_WSConv1d_k2",
        "elektronn3",
        dict(
            library="elektronn3",
            cls="WSConv1d",
            x_shape=[2, 2, 7],
            mask=False,
            kwargs=dict(in_channels=2, out_channels=3, kernel_size=2, padding="same"),
        ),
    ),
    Case(
        "elektronn3/odd_same_WSConv2d_k4_k2",
        "elektronn3",
        dict(
            library="elektronn3",
            cls="WSConv2d",
            x_shape=[1, 2, 6, 5],
            mask=False,
            kwargs=dict(in_channels=2, out_channels=2, kernel_size=[4, 2], padding="same"),
        ),
    ),
]


@pytest.mark.parametrize("case", _ODD_SAME_CASES, ids=lambda c: c.name)
def test_layer_builder_puts_sames_odd_pad_at_the_end(case):
    arrays, _ = evaluate_layer(case)
    _check_layer(case.params, arrays, samples=None)


def test_cli_build_with_no_matching_case_is_a_usage_error(tmp_path):
    out = _cli("golden", "build", "--out", tmp_path / "s", "--case", "conv/no_such_*")
    assert out.returncode == 2 and "no golden case matches" in out.stderr
    assert not (tmp_path / "s").exists()
