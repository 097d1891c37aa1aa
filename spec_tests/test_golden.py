"""Golden fixtures: exact values, reproducible bytes, integrity, the command.

The exactness checks recompute sampled stored values from their definitions with
``fractions.Fraction`` (convolutions) and mpmath at 60 digits (weight standardization),
without using refws's golden code or geometry.
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
from fractions import Fraction
from pathlib import Path

import mpmath
import numpy as np
import pytest

import refws
import refws.golden as golden
from refws.golden.catalog import SUITES
from refws.golden.store import GoldenError, npz_bytes, read_npz

from .naive import as_tuple, naive_explicit_pads, to_channels_last

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


def _conv_exact_element(x, w, idx, s, pads, L, d, groups):
    """y[idx] = sum over taps and channels, straight from the definition, in Fractions."""
    n, o, co = idx[0], idx[1:-1], idx[-1]
    nd = len(o)
    cg, cog = w.shape[-2], w.shape[-1] // groups
    g = co // cog
    total = Fraction(0)
    for t in itertools.product(*(range(k) for k in w.shape[:nd])):
        pos = [o[i] * s[i] + t[i] * d[i] - pads[i][0] for i in range(nd)]   # in the dilated input
        if any(q < 0 or q % L[i] or q // L[i] >= x.shape[1 + i] for i, q in enumerate(pos)):
            continue
        src = tuple(q // L[i] for i, q in enumerate(pos))
        for c in range(cg):
            total += Fraction(float(x[(n, *src, g * cg + c)])) * Fraction(float(w[(*t, c, co)]))
    return total


def _sample(shape, count, seed):
    if 0 in shape:
        return []
    rng = np.random.default_rng(seed)
    return [tuple(int(rng.integers(0, m)) for m in shape) for _ in range(count)]


def _exact_dot(a, b):
    return sum((Fraction(float(u)) * Fraction(float(v)) for u, v in zip(a.ravel(), b.ravel())), Fraction(0))


@pytest.mark.parametrize("name", _names("conv") if ROOT.exists() and (ROOT / "manifest.json").exists() else [])
def test_conv_case_is_exact(name):
    case = golden.load(name)
    p = case.params
    x, dy, yc = _cl(case, "x"), _cl(case, "dy"), _cl(case, "y")
    nd = x.ndim - 2
    s, L, d = (as_tuple(p[k], nd) for k in ("stride", "lhs_dilation", "rhs_dilation"))
    pads = naive_explicit_pads(p["padding"], x.shape[1:-1], case["w"].shape[:nd], s, L, d)
    for idx in _sample(yc.shape, 6, 0):
        assert Fraction(float(yc[idx])) == _conv_exact_element(x, case["w"], idx, s, pads, L, d, p["groups"])
    # VJP and JVP, all elements at once: exact adjoint identities and bilinearity
    assert _exact_dot(yc, dy) == _exact_dot(case["x"], case["dx"]) == _exact_dot(case["w"], case["dw"])
    y_tx = refws.conv(case["tx"], case["w"], **_conv_kwargs(p))
    y_tw = refws.conv(case["x"], case["tw"], **_conv_kwargs(p))
    assert np.array_equal(case["ty"], y_tx + y_tw)


def _conv_kwargs(p):
    keys = ("stride", "padding", "lhs_dilation", "rhs_dilation", "groups", "channel_first")
    return {k: p[k] for k in keys}          # refws takes the JSON lists as they are


@pytest.mark.parametrize("name", _names("conv_transpose") if (ROOT / "manifest.json").exists() else [])
def test_conv_transpose_case_is_exact(name):
    """y = scatter-add definition (PyTorch ConvTranspose), in Fractions; VJP by exact adjointness."""
    case = golden.load(name)
    p = case.params
    x, dy = _cl(case, "x"), _cl(case, "dy")
    w = case["w"]                                        # (*k, C_out/groups, C_in)
    nd = x.ndim - 2
    s, d, pad = (as_tuple(p[k], nd) for k in ("stride", "dilation", "padding"))
    groups, cin = p["groups"], x.shape[-1]
    cog, cig = w.shape[-2], cin // groups
    y_shape = dy.shape
    exact = {}
    for n in range(x.shape[0]):
        for i in itertools.product(*(range(m) for m in x.shape[1:-1])):
            for t in itertools.product(*(range(k) for k in w.shape[:nd])):
                pos = tuple(i[a] * s[a] + t[a] * d[a] - pad[a] for a in range(nd))
                if any(q < 0 or q >= y_shape[1 + a] for a, q in enumerate(pos)):
                    continue
                for ci in range(cin):
                    g = ci // cig
                    for j in range(cog):
                        key = (n, *pos, g * cog + j)
                        exact[key] = exact.get(key, Fraction(0)) + \
                            Fraction(float(x[(n, *i, ci)])) * Fraction(float(w[(*t, j, ci)]))
    yc = _cl(case, "y")
    b = case.arrays.get("b")
    for idx in _sample(yc.shape, 8, 1):
        want = exact.get(idx, Fraction(0)) + (Fraction(float(b[idx[-1]])) if b is not None else 0)
        assert Fraction(float(yc[idx])) == want
    yb = yc - (b if b is not None else 0)
    assert _exact_dot(yb, dy) == _exact_dot(case["x"], case["dx"]) == _exact_dot(case["w"], case["dw"])
    if b is not None:
        assert np.array_equal(case["db"], dy.reshape(-1, dy.shape[-1]).sum(axis=0))


# --- weight standardization against mpmath --------------------------------------------------

mpmath.mp.dps = 60

# (ddof, denominator, fan, eps, gamma) transcribed from ../shared/NOTES.md, independently of refws.ws
_PRESETS = {
    "brainstate": (0, "max_var_n", "fan_in", 1e-4, None), "nfnets": (0, "max_var_n", "fan_in", 1e-4, None),
    "elektronn3": (1, "max_var_n", "numel", 1e-4, None), "qiao": (1, "std_plus_eps", None, 1e-5, None),
    "timm_std": (0, "sqrt_var_plus_eps", None, 1e-6, None), "timm_scaled": (0, "sqrt_var_plus_eps", None, 1e-6, 1.0),
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
        got = refws.weight_standardize(case["w"], case.arrays.get("gain"), p["eps"], out_axis=p["out_axis"],
                                       spec=p["spec"])
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
    env = dict(os.environ, OPENBLAS_NUM_THREADS=str(threads), OMP_NUM_THREADS=str(threads),
               MKL_NUM_THREADS=str(threads))
    subprocess.run([sys.executable, "-m", "refws", "golden", "build", "--out", str(out), "--case", pattern],
                   check=True, env=env, capture_output=True)


def _tree(root):
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(Path(root).rglob("*")) if p.is_file()}


def test_builds_with_one_and_two_blas_threads_are_byte_identical_and_equal_the_store(tmp_path):
    pattern = "*2d_[agp]*"                 # a few dozen cases of every suite with 2-d in the name
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


def test_load_checks_checksum_truncation_and_missing_files(small_store):
    name = _first(small_store)
    path = small_store / f"{name}.npz"
    assert golden.load(name, small_store).name == name
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(GoldenError, match=str(path.name)):
        golden.load(name, small_store)
    path.write_bytes(data[:100] + bytes([data[100] ^ 1]) + data[101:])
    with pytest.raises(GoldenError, match="checksum"):
        golden.load(name, small_store)
    path.unlink()
    with pytest.raises(GoldenError, match="missing"):
        golden.load(name, small_store)
    with pytest.raises(KeyError, match="no_such_case"):
        golden.load("conv/no_such_case", small_store)
    (small_store / "manifest.json").unlink()
    with pytest.raises(GoldenError, match="manifest.json"):
        golden.load(name, small_store)


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
    gb = importlib.import_module("refws.golden.build")     # the module, not the build() it exports

    calls = {"n": 0}
    real = gb.build_case

    def failing(case):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return real(case)
    monkeypatch.setattr(gb, "build_case", failing)
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


# --- layer suites against mpmath ------------------------------------------------------------

def _layer_names():
    return _names("brainstate") + _names("elektronn3") if (ROOT / "manifest.json").exists() else []


@pytest.mark.parametrize("name", _layer_names())
def test_layer_case_within_one_ulp(name):
    """y and dx at sampled elements, and dweight by central differences, all in mpmath.

    The effective weight ``mask * WS(weight, gain)`` is transcribed from NOTES.md in mpmath
    (``_ws_mp``). A layer is linear in its weight, so ``y[i] = sum_j W_eff[j] * J_i[j] + b`` with
    ``J_i = d y[i] / d W`` from the layer's core VJP, which is exact on the grid inputs; likewise
    ``dx[i] = sum_j W_eff[j] * d<core(e_i, W), dy>/dW[j]``.
    """
    from refws.golden.layer_cases import layer_math

    case = golden.load(name)
    p = case.params
    m = layer_math(p)
    x, w, dy = case["x"], case["weight"], case["dy"]
    gain, mask, bias = case.arrays.get("gain"), case.arrays.get("w_mask"), case.arrays.get("bias")
    if m.variant is None:
        w_eff = np.asarray([mpmath.mpf(float(v)) for v in w.ravel()], dtype=object).reshape(w.shape)
        args = None
    else:
        spec = "brainstate" if p["library"] == "brainstate" else "elektronn3"
        ddof, den, fan, eps, gamma = _PRESETS[spec]
        eps = p["kwargs"].get("eps", eps)
        args = (ddof, den, fan, eps, gamma, m.ws_axis)
        w_eff = _ws_mp(w, gain, *args)
    if mask is not None:
        w_eff = w_eff * mask
    y, dx = case["y"], case["dx"]
    for i in _sample(y.shape, 3, 4):
        e = np.zeros(y.shape)
        e[i] = 1.0
        jac = m.core_vjp(x, np.zeros(w.shape), e)[1]
        b = mpmath.mpf(float(bias.ravel()[i[m.channel_axis]])) if bias is not None else 0
        exact = mpmath.fsum(a * float(j) for a, j in zip(w_eff.ravel(), jac.ravel()) if j) + b
        assert _ulps(y[i], exact) <= 1.0, i
    for i in _sample(dx.shape, 3, 5):
        e = np.zeros(x.shape)
        e[i] = 1.0
        jac = m.core_vjp(e, np.zeros(w.shape), dy)[1]
        exact = mpmath.fsum(a * float(j) for a, j in zip(w_eff.ravel(), jac.ravel()) if j)
        assert _ulps(dx[i], exact) <= 1.0, i
    if args is None:
        return
    g = m.core_vjp(x, np.zeros(w.shape), dy)[1] * (mask if mask is not None else 1)   # exact
    h = mpmath.mpf("1e-25")
    wo = np.asarray(w, dtype=object)
    for idx in _sample(w.shape, 2, 6):
        wp, wm = wo.copy(), wo.copy()
        wp[idx], wm[idx] = mpmath.mpf(float(w[idx])) + h, mpmath.mpf(float(w[idx])) - h
        lp = mpmath.fsum(a * float(b) for a, b in zip(_ws_mp(wp, gain, *args).ravel(), g.ravel()))
        lm = mpmath.fsum(a * float(b) for a, b in zip(_ws_mp(wm, gain, *args).ravel(), g.ravel()))
        assert _ulps(case["dweight"][idx], (lp - lm) / (2 * h)) <= 1.0, idx


def test_cli_build_with_no_matching_case_is_a_usage_error(tmp_path):
    out = _cli("golden", "build", "--out", tmp_path / "s", "--case", "conv/no_such_*")
    assert out.returncode == 2 and "no golden case matches" in out.stderr
    assert not (tmp_path / "s").exists()
