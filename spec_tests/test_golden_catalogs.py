"""User catalogs of golden cases (issue 12): files, sweeps, grids, the Ozaki scheme, parallel and
sharded builds, merge, bad input, and the stores' consumers.

Independent references, written here without refws code: ``fractions.Fraction`` sums of the
convolution and transposed-convolution definitions (index maps with explicit pads from
``spec_tests/naive.py``) on sampled elements of every grid, including the 24-bit one whose
outputs need a rounding; mpmath (60 digits) for weight standardization and a WS layer's weight
gradient from the documented formulas; a pure-Python SplitMix64 for the generator's test
vectors, which are read from docs/golden-format.md. Builds run through ``python -m refws``.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import sys
from fractions import Fraction
from pathlib import Path

import mpmath
import numpy as np
import pytest

import refws.golden as golden
from refws import cli
from refws.conformance import run as run_backend

from .naive import as_tuple, naive_explicit_pads, naive_out_size

REPO = Path(__file__).resolve().parents[1]

CATALOG = """
# a small user catalog: a sweep, every grid, every suite, derivative choices
name = "spec-small"
description = "spec_tests/test_golden_catalogs.py"

[[case]]
suite = "conv"
name = "sweep"
x_shape = [2, 6, 5, 4]
w_shape = [3, 2, 2, 4]
[case.sweep]
stride = [1, 2]
padding = ["SAME", [[1, 2], [0, -1]]]
groups = [2, 3]                      # 3 does not divide 4 channels: 4 of 8 combinations skipped

[[case]]
suite = "conv"
name = "grids"
x_shape = [2, 7, 6, 16]
w_shape = [3, 3, 8, 4]
groups = 2
stride = [2, 1]
padding = [[2, 1], [1, -1]]
lhs_dilation = [1, 2]
rhs_dilation = [2, 1]
[case.sweep]
bits = [4, 8, 11, 12, 24]

[[case]]
suite = "conv"
name = "deep24"                      # dw sums 4 * 64 * 64 = 16384 products of 48 bits
bits = 24
derivatives = ["vjp"]
x_shape = [4, 64, 64, 1]
w_shape = [3, 3, 1, 2]

[[case]]
suite = "conv_transpose"
name = "t24"
bits = 24
derivatives = []
x_shape = [1, 4, 5, 6]
w_shape = [3, 2, 2, 6]
groups = 2
stride = [2, 1]
padding = [1, 0]
output_padding = [1, 0]
dilation = [1, 2]

[[case]]
suite = "ws"
name = "e3"
w_shape = [4, 2, 3, 3]
out_axis = 0
spec = "elektronn3"
derivatives = ["vjp"]
[case.sweep]
bits = [4, 24]

[[case]]
suite = "brainstate"
name = "wslayer24"
bits = 24
cls = "ScaledWSConv1d"
x_shape = [2, 7, 3]
in_size = [7, 3]
out_channels = 4
kernel_size = 3
b_init = true
mask = true
"""

SWEEP_NAMES = {f"conv/sweep/s{s}_p{p}_g2" for s in (1, 2) for p in ("SAME", "1,2x0,-1")}
GRID_NAMES = {f"conv/grids/b{b}" for b in (4, 8, 11, 12, 24)}


def _refws(*args, cwd=REPO):
    return subprocess.run(
        [sys.executable, "-m", "refws", *map(str, args)],
        capture_output=True,
        text=True,
        cwd=cwd,
        env=dict(os.environ, PYTHONPATH=str(REPO)),
    )


def _tree(root: Path) -> dict:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(Path(root).rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def catalog_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("catalog") / "small.toml"
    path.write_text(CATALOG)
    return path


@pytest.fixture(scope="module")
def store(catalog_file, tmp_path_factory):
    """The catalog built once with --jobs 1 (the reference the other builds are compared with)."""
    out = tmp_path_factory.mktemp("stores") / "j1"
    done = _refws("golden", "build", "--catalog", catalog_file, "--out", out, "--jobs", 1)
    assert done.returncode == 0, done.stderr
    assert "skipped 4 of 8 combinations" in done.stderr and "groups=3" in done.stderr
    return out


# --- building: names, jobs, shards, merge, verify -------------------------------------------


def test_sweep_names_and_skips(store):
    names = set(json.loads((store / "manifest.json").read_text())["cases"])
    assert SWEEP_NAMES | GRID_NAMES <= names
    assert {"conv/deep24", "conv_transpose/t24", "ws/e3/b4", "ws/e3/b24", "brainstate/wslayer24"} <= names
    assert len(names) == len(SWEEP_NAMES) + len(GRID_NAMES) + 5
    assert (store / "conv" / "sweep" / "s2_pSAME_g2.npz").is_file()


def test_jobs_and_shardings_give_the_same_bytes(store, catalog_file, tmp_path):
    reference = _tree(store)
    two = tmp_path / "j2"
    assert _refws("golden", "build", "--catalog", catalog_file, "--out", two, "--jobs", 2).returncode == 0
    assert _tree(two) == reference
    for count in (2, 3):
        shards = [tmp_path / f"shard{i}of{count}" for i in range(1, count + 1)]
        for i, shard in enumerate(shards, 1):
            done = _refws("golden", "build", "--catalog", catalog_file, "--out", shard, "--shard", f"{i}/{count}")
            assert done.returncode == 0, done.stderr
            assert json.loads((shard / "manifest.json").read_text())["shard"] == dict(index=i, count=count)
        sizes = [len(json.loads((s / "manifest.json").read_text())["cases"]) for s in shards]
        assert sum(sizes) == len(reference) - 1 and min(sizes) > 0
        assert _refws("golden", "verify", shards[0]).returncode == 0  # a shard store verifies alone
        merged = tmp_path / f"merged{count}"
        done = _refws("golden", "merge", merged, *reversed(shards))
        assert done.returncode == 0, done.stderr
        assert _tree(merged) == reference
    # merging an incomplete or doubled set of shards is refused, and writes nothing
    bad = _refws("golden", "merge", tmp_path / "nope", tmp_path / "shard1of3", tmp_path / "shard2of3")
    assert bad.returncode == 2 and "shard(s) 3/3 missing" in bad.stderr and not (tmp_path / "nope").exists()
    bad = _refws("golden", "merge", tmp_path / "nope", tmp_path / "shard1of2", tmp_path / "shard1of3")
    assert bad.returncode == 2 and not (tmp_path / "nope").exists()


def test_cases_written_on_the_writer_thread_give_the_same_bytes(store, catalog_file, tmp_path, monkeypatch):
    """In one process, large cases are written one case behind on a thread (and every file is
    fsynced on another): with every case sent there, the store is the same, and a case that fails
    meanwhile leaves nothing behind."""
    import importlib

    gb = importlib.import_module("refws.golden.build")
    monkeypatch.setattr(gb, "_THREAD_WRITE_BYTES", 0)
    out = tmp_path / "threaded"
    gb.build(out, catalog=golden.load_catalog(catalog_file))
    assert _tree(out) == _tree(store)
    calls = {"n": 0}
    real = gb.evaluate

    def failing(case):
        calls["n"] += 1
        if calls["n"] == 4:  # cases 1 to 3 are written or being written
            raise ArithmeticError("no")
        return real(case)

    monkeypatch.setattr(gb, "evaluate", failing)
    with pytest.raises(gb.BuildError, match="no"):
        gb.build(tmp_path / "failed", catalog=golden.load_catalog(catalog_file))
    assert not list(tmp_path.glob("failed*"))


def test_verify_user_store(store, catalog_file, tmp_path):
    manifest = json.loads((store / "manifest.json").read_text())
    assert manifest["schema_version"] == 2
    assert manifest["catalog"] == dict(
        name="spec-small", sha256=golden.load_catalog(catalog_file).sha256, encoding="float64"
    )
    assert _refws("golden", "verify", store).returncode == 0  # from the manifest's own cases
    ok = _refws("golden", "verify", store, "--catalog", catalog_file, "--jobs", 2)
    assert ok.returncode == 0 and "spec-small" in ok.stdout
    other = tmp_path / "other.toml"
    other.write_text(CATALOG.replace("bits = [4, 24]", "bits = [4, 8]"))
    stale = _refws("golden", "verify", store, "--catalog", other)
    assert stale.returncode == 1 and "(catalog)" in stale.stdout and "ws/e3/b8" in stale.stdout


def test_catalog_hash_ignores_format_comments_and_order(catalog_file, tmp_path):
    import tomllib

    doc = tomllib.loads(CATALOG)
    doc["case"] = list(reversed(doc["case"]))
    as_json = tmp_path / "small.json"
    as_json.write_text(json.dumps(doc))
    assert golden.load_catalog(as_json).sha256 == golden.load_catalog(catalog_file).sha256


def test_builtin_catalog_is_one_such_file(tmp_path):
    """Every case kind of the built-in catalog is expressible: written out as a catalog file and read
    back, it gives the same cases (and hash)."""
    path = tmp_path / "builtin_copy.toml"
    done = _refws("golden", "list", "--toml")
    assert done.returncode == 0
    path.write_text(done.stdout.replace('name = "builtin"', 'name = "builtin-copy"', 1))
    copy = golden.load_catalog(path, strict=True)
    builtin = golden.catalog()
    assert [(c.name, c.suite, c.params, c.bits, c.derivatives) for c in copy.cases] == [
        (c.name, c.suite, c.params, c.bits, c.derivatives) for c in builtin
    ]
    assert {c.suite for c in copy.cases} == {"conv", "conv_transpose", "ws", "brainstate", "elektronn3"}


def test_forward_only_and_vjp_only_cases(store):
    t = golden.load("conv_transpose/t24", store)
    assert sorted(t.arrays) == ["b", "w", "x", "y", "y__absbound"]
    ws = golden.load("ws/e3/b4", store)
    assert "dw" in ws.arrays and "tw_hat" not in ws.arrays and "tw" not in ws.arrays


def test_compact_encoding_reads_back_the_same_numbers(catalog_file, store, tmp_path):
    compact = tmp_path / "compact.toml"
    compact.write_text(CATALOG.replace('name = "spec-small"', 'name = "spec-small"\nencoding = "compact"'))
    out = tmp_path / "compact"
    assert _refws("golden", "build", "--catalog", compact, "--out", out).returncode == 0
    assert _refws("golden", "verify", out).returncode == 0
    manifest = json.loads((out / "manifest.json").read_text())["cases"]
    for name in manifest:
        a, b = golden.load(name, store), golden.load(name, out)
        assert sorted(a.arrays) == sorted(b.arrays)
        for k in a.arrays:
            assert a[k].dtype == b[k].dtype == np.float64 and np.array_equal(a[k], b[k]), (name, k)
    x = manifest["conv/grids/b12"]["arrays"]["x"]
    assert x["dtype"] == "<i2" and x["exponent"] == 11
    assert manifest["conv/grids/b24"]["arrays"]["x"]["dtype"] == "<i4"
    assert manifest["conv/grids/b24"]["arrays"]["y"]["dtype"] == "<f8"
    with np.load(out / "conv" / "grids" / "b12.npz") as z:  # any npy reader sees the integers
        assert z["x"].dtype == np.int16 and np.array_equal(
            np.ldexp(z["x"].astype(float), -11), golden.load("conv/grids/b12", store)["x"]
        )
    size = sum(p.stat().st_size for p in out.rglob("*.npz"))
    assert size < sum(p.stat().st_size for p in store.rglob("*.npz"))


def test_version_1_stores_are_still_read(tmp_path):
    out = tmp_path / "v1"
    golden.build(out, pattern="conv/1d_pad_s*")
    manifest = json.loads((out / "manifest.json").read_text())
    manifest["schema_version"] = 1
    del manifest["catalog"]
    for entry in manifest["cases"].values():
        del entry["bits"], entry["derivatives"]
    (out / "manifest.json").write_text(json.dumps(manifest, indent=1, sort_keys=True) + "\n")
    assert len(list(golden.cases(out))) == len(manifest["cases"])
    assert _refws("golden", "verify", out, "--partial").returncode == 0


def test_list_and_show_work_on_a_user_store(store):
    listed = _refws("golden", "list", "--dir", store)
    assert listed.returncode == 0 and "conv/grids/b24" in listed.stdout
    shown = _refws("golden", "show", "conv/grids/b24", "--dir", store)
    assert shown.returncode == 0 and "y__absbound" in shown.stdout


def test_refws_check_judges_a_user_store(store):
    """The example float32 adapter (forward convolution only) passes every conv case it can express,
    24-bit ones included; a kernel-flipping slip fails them."""
    done = _refws(
        "check", "examples.adapters.numpy_float32:NumpyFloat32", "--golden", store, "--suite", "conv", "--no-diagnose"
    )
    assert done.returncode == 0, done.stdout + done.stderr
    sys.path.insert(0, str(REPO))
    try:
        from examples.adapters.numpy_float32 import NumpyFloat32
    finally:
        sys.path.remove(str(REPO))

    class Flipped(NumpyFloat32):
        def conv(self, x, w, *args, **kwargs):
            return super().conv(x, w[::-1, ::-1], *args, **kwargs)

    report = run_backend(Flipped(), store, suite="conv", diagnose=None)
    judged = [r for r in report.records if r.array == "y"]
    assert report.exit_code == 1 and judged and all(r.status == "fail" for r in judged)
    fine = run_backend(NumpyFloat32(), store, suite="conv", diagnose=None)
    assert {r.status for r in fine.records if r.array == "y"} == {"pass"}


# --- exactness on every grid: Fraction sums of the definitions --------------------------------


def _F(v) -> Fraction:
    return Fraction(float(v))


def _conv_triples(p, x_shape, w_shape):
    """(n-independent) ``(o, t, i)`` triples of a conv: output position o, tap t reads input i."""
    nd = len(w_shape) - 2
    spatial, kernel = x_shape[1:-1], w_shape[:-2]
    s, L, d = (as_tuple(p[k], nd) for k in ("stride", "lhs_dilation", "rhs_dilation"))
    pads = naive_explicit_pads(p["padding"], spatial, kernel, s, L, d)
    out = tuple(naive_out_size(n, k, si, pad, li, di) for n, k, si, pad, li, di in zip(spatial, kernel, s, pads, L, d))
    triples = []
    for o in np.ndindex(*out):
        for t in np.ndindex(*kernel):
            q = [oi * si + ti * di - lo for oi, si, ti, di, (lo, _) in zip(o, s, t, d, pads)]
            if all(qi >= 0 and qi % li == 0 and qi // li < n for qi, li, n in zip(q, L, spatial)):
                triples.append((o, t, tuple(qi // li for qi, li in zip(q, L))))
    return out, triples


def _sample(shape, count, seed):
    rng = np.random.default_rng(seed)
    return [tuple(int(rng.integers(0, n)) for n in shape) for _ in range(count)]


def _rounded(exact: Fraction) -> float:
    return float(exact)  # Fraction -> float is correctly rounded


def _check(stored: np.ndarray, bound: np.ndarray, idx, terms: list, roundings: list):
    """``stored[idx]`` is the exact sum rounded to nearest; ``bound[idx]`` the smallest float
    ``>=`` the sum of the terms' magnitudes."""
    exact = sum((a * b for a, b in terms), Fraction(0))
    mags = sum((abs(a * b) for a, b in terms), Fraction(0))
    assert stored[idx] == _rounded(exact), idx
    up = _rounded(mags)
    up = up if Fraction(up) >= mags else float(np.nextafter(up, np.inf))
    assert bound[idx] == up, idx
    roundings.append((Fraction(_rounded(exact)) != exact, Fraction(up) != mags))


@pytest.mark.parametrize("bits", [4, 8, 11, 12, 24])
def test_every_grid_is_exact_on_sampled_elements(store, bits):
    case = golden.load(f"conv/grids/b{bits}", store)
    p, a = case.params, case.arrays
    x, w, dy, tx, tw = (a[k] for k in ("x", "w", "dy", "tx", "tw"))
    top = {4: 8, 8: 128, 11: 1024, 12: 2048, 24: 2**24 - 1}[bits]
    unit = {4: 3, 8: 7, 11: 10, 12: 11, 24: 24}[bits]
    for k in ("x", "w", "dy", "tx", "tw"):  # the grid of the format doc
        ints = np.ldexp(a[k], unit)
        assert np.array_equal(ints, np.round(ints)) and np.max(np.abs(ints)) <= top
    out, triples = _conv_triples(p, x.shape, w.shape)
    assert a["y"].shape[1:-1] == out
    groups, cg = p["groups"], w.shape[-2]
    m = w.shape[-1] // groups
    roundings = []
    for n, *o, co in _sample(a["y"].shape, 12, bits):
        g = co // m
        taps = [(t, i) for oo, t, i in triples if oo == tuple(o)]

        def products(a_, b_, n=n, g=g, co=co, taps=taps):
            return [(_F(a_[(n, *i, g * cg + c)]), _F(b_[(*t, c, co)])) for t, i in taps for c in range(cg)]

        _check(a["y"], a["y__absbound"], (n, *o, co), products(x, w), roundings)
        _check(a["ty"], a["ty__absbound"], (n, *o, co), products(tx, w) + products(x, tw), roundings)
    for n, *i, ci in _sample(x.shape, 12, bits + 1):
        g = ci // cg
        terms = [
            (_F(dy[(n, *oo, co)]), _F(w[(*t, ci - g * cg, co)]))
            for oo, t, ii in triples
            if ii == tuple(i)
            for co in range(g * m, (g + 1) * m)
        ]
        if terms:
            _check(a["dx"], a["dx__absbound"], (n, *i, ci), terms, roundings)
    for *t, c, co in _sample(w.shape, 12, bits + 2):
        g = co // m
        terms = [
            (_F(x[(n, *ii, g * cg + c)]), _F(dy[(n, *oo, co)]))
            for oo, tt, ii in triples
            if tt == tuple(t)
            for n in range(x.shape[0])
        ]
        _check(a["dw"], a["dw__absbound"], (*t, c, co), terms, roundings)
    if bits <= 12:  # the grid argument: every value is the exact sum
        assert not any(v or m for v, m in roundings)


def test_24_bit_sums_that_need_a_rounding_are_correctly_rounded(store):
    """Every dw element of a case with 16384 products each (exact sums of up to 62 bits): the
    stored value is the exact sum rounded to nearest, its absbound the magnitude rounded up."""
    a = golden.load("conv/deep24", store).arrays
    x, dy = a["x"], a["dy"]
    _, triples = _conv_triples(dict(stride=1, padding="SAME", lhs_dilation=1, rhs_dilation=1), x.shape, a["w"].shape)
    xf, dyf = np.frompyfunc(_F, 1, 1)(x), np.frompyfunc(_F, 1, 1)(dy)
    roundings = []
    for t in np.ndindex(3, 3):
        pairs = [(o, i) for o, tt, i in triples if tt == t]
        for co in range(2):
            terms = [(xf[(n, *i, 0)], dyf[(n, *o, co)]) for o, i in pairs for n in range(x.shape[0])]
            assert len(terms) <= 16384
            _check(a["dw"], a["dw__absbound"], (*t, 0, co), terms, roundings)
    values, bounds = zip(*roundings)  # the Ozaki scheme's roundings at work:
    assert sum(values) >= 3 and all(bounds)  # to nearest for values, upward for bounds


def test_transposed_convolution_on_the_24_bit_grid(store):
    """PyTorch's ConvTranspose from its definition: ``y[o] += x[i] w[k]`` for ``o = i s - p + k d``."""
    case = golden.load("conv_transpose/t24", store)
    p, a = case.params, case.arrays
    x, w, b = a["x"], a["w"], a["b"]
    groups, c_in = p["groups"], x.shape[-1]
    cog, cig = w.shape[-2], c_in // groups
    nd = x.ndim - 2
    s, pad, d = (as_tuple(p[k], nd) for k in ("stride", "padding", "dilation"))
    op = as_tuple(p["output_padding"], nd)
    out = tuple(
        (n - 1) * si - 2 * pi + di * (k - 1) + oi + 1
        for n, k, si, pi, di, oi in zip(x.shape[1:-1], w.shape[:-2], s, pad, d, op)
    )
    assert a["y"].shape == (x.shape[0], *out, cog * groups)
    roundings = []
    for n, *o, co in _sample(a["y"].shape, 20, 5):
        g = co // cog
        terms = [(Fraction(1), _F(b[co]))]
        for i in np.ndindex(*x.shape[1:-1]):
            for k in np.ndindex(*w.shape[:-2]):
                if all(ii * si - pi + ki * di == oo for ii, si, pi, ki, di, oo in zip(i, s, pad, k, d, o)):
                    terms += [(_F(x[(n, *i, c)]), _F(w[(*k, co - g * cog, c)])) for c in range(g * cig, (g + 1) * cig)]
        _check(a["y"], a["y__absbound"], (n, *o, co), terms, roundings)
    assert any(roundings)


@pytest.mark.parametrize("k, partials", [(10, 1), (3000, 2), (100_000, 4)])
def test_24_bit_operands_are_split_only_as_much_as_needed(k, partials):
    """A matrix product of 24-bit operands, ``k`` products per element: with ``terms = k`` the
    builder evaluates it in one, two or four exact partial products (as a global bound allows),
    with ``terms`` unknown always in four (the Ozaki split); both give the exact sums rounded
    once, and the magnitudes rounded up (checked against Fraction on every element)."""
    from refws.golden.ozaki import ExactSum, bilinear_sums
    from refws.golden.rng import GRIDS

    grid = GRIDS[24]
    a, b = grid.values("t/split", "a", (3, k)), grid.values("t/split", "b", (k, 2))
    calls = []

    def op(u, v):
        calls.append(1)
        return u @ v

    results = {}
    for terms in (k, None):
        calls.clear()
        value, mag = bilinear_sums(op, a, b, ExactSum(), ExactSum(), terms=terms)
        results[terms] = value.nearest(), mag.upper()
        assert len(calls) == 2 * (partials if terms else 4)  # a value and a magnitude per partial
    assert all(np.array_equal(r, s_) for r, s_ in zip(results[k], results[None]))
    ia, ib = (np.ldexp(v, 24).astype(np.int64).astype(object) for v in (a, b))  # Python ints: exact
    rounded = []
    for i, j in np.ndindex(3, 2):
        products = ia[i, :] * ib[:, j]
        exact, mags = Fraction(int(products.sum()), 2**48), Fraction(int(np.abs(products).sum()), 2**48)
        up = _rounded(mags) if Fraction(_rounded(mags)) >= mags else float(np.nextafter(_rounded(mags), np.inf))
        assert results[k][0][i, j] == _rounded(exact) and results[k][1][i, j] == up, (i, j)
        rounded.append(Fraction(_rounded(exact)) != exact)
    assert any(rounded) == (partials > 1)  # sums beyond 53 bits are rounded, once


mpmath.mp.dps = 60


def _ulps(stored: float, exact) -> float:
    ulp = float(np.spacing(abs(stored))) if stored else 2.0**-1074
    return float(abs(mpmath.mpf(stored) - exact) / ulp)


@pytest.mark.parametrize("bits", [4, 24])
def test_weight_standardization_is_correctly_rounded_on_every_grid(store, bits):
    """elektronn3's formula (ddof 1, sqrt(max(var * numel, 1e-4)), gain), mpmath from the definition."""
    case = golden.load(f"ws/e3/b{bits}", store)
    w, gain, g = case["w"], case["gain"], case["dw_hat"]
    numel = w.size
    for c in range(w.shape[0]):
        v = [mpmath.mpf(float(e)) for e in w[c].ravel()]
        n = len(v)
        mean = sum(v) / n
        u = [e - mean for e in v]
        var = sum(e * e for e in u) / (n - 1)
        sigma = mpmath.sqrt(max(var * numel, mpmath.mpf("1e-4")))
        scale = mpmath.mpf(float(gain.ravel()[c])) / sigma
        for j, e in enumerate(u):
            assert _ulps(case["w_hat"][c].ravel()[j], scale * e) <= 0.5 + 1e-9
        # VJP: dw = S (g - mean g) - S (sum g u / sum u^2) u   (above the clamp)
        gc = [mpmath.mpf(float(e)) for e in g[c].ravel()]
        gbar, gu, uu = sum(gc) / n, sum(a * b for a, b in zip(gc, u)), sum(e * e for e in u)
        for j in range(n):
            want = scale * (gc[j] - gbar) - scale * gu / uu * u[j]
            assert _ulps(case["dw"][c].ravel()[j], want) <= 0.5 + 1e-9


def test_ws_layer_on_the_24_bit_grid(store):
    """brainstate ScaledWSConv1d (NFNets WS, ddof 0, sqrt(max(var * fan_in, 1e-4)), gain; the mask
    after WS; SAME padding): y and dweight = J^T g with g = mask * (sum over x dy) exact, in mpmath."""
    case = golden.load("brainstate/wslayer24", store)
    a = case.arrays
    x, wt, gain, mask, bias, dy = (a[k] for k in ("x", "weight", "gain", "w_mask", "bias", "dy"))
    k, c_in, c_out = wt.shape
    pads = naive_explicit_pads("SAME", x.shape[1:2], (k,))
    out, triples = _conv_triples(dict(stride=1, lhs_dilation=1, rhs_dilation=1, padding="SAME"), x.shape, wt.shape)
    fan = k * c_in
    w_hat, stats = np.empty(wt.shape, dtype=object), {}
    for co in range(c_out):
        v = [mpmath.mpf(float(e)) for e in wt[..., co].ravel()]
        mean = sum(v) / fan
        u = [e - mean for e in v]
        sigma = mpmath.sqrt(max(sum(e * e for e in u) / fan * fan, mpmath.mpf("1e-4")))
        scale = mpmath.mpf(float(gain.ravel()[co])) / sigma
        w_hat[..., co] = np.array([scale * e for e in u], dtype=object).reshape(k, c_in)
        stats[co] = (u, scale)
    assert pads == ((1, 1),)
    for n, o, co in _sample(a["y"].shape, 10, 7):
        want = mpmath.mpf(float(bias.ravel()[co])) + sum(
            mpmath.mpf(float(x[n, i[0], c])) * w_hat[t[0], c, co] * int(mask[t[0], c, co])
            for oo, t, i in triples
            if oo == (o,)
            for c in range(c_in)
        )
        assert _ulps(a["y"][n, o, co], want) <= 0.5 + 1e-9
    for co in range(c_out):
        u, scale = stats[co]
        g = [
            int(mask[t, c, co])
            * sum(
                (
                    _F(x[n, i[0], c]) * _F(dy[n, oo[0], co])
                    for oo, tt, i in triples
                    if tt == (t,)
                    for n in range(x.shape[0])
                ),
                Fraction(0),
            )
            for t in range(k)
            for c in range(c_in)
        ]
        g = [mpmath.mpf(e.numerator) / e.denominator for e in g]
        gbar, gu, uu = sum(g) / fan, sum(p * q for p, q in zip(g, u)), sum(e * e for e in u)
        for j in range(fan):
            want = scale * (g[j] - gbar) - scale * gu / uu * u[j]
            assert _ulps(a["dweight"][..., co].ravel()[j], want) <= 0.5 + 1e-9


# --- the input generator's test vectors (docs/golden-format.md) -------------------------------


def _splitmix64(seed: int, i: int) -> int:
    mask = 2**64 - 1
    z = (seed + i * 0x9E3779B97F4A7C15) & mask
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & mask
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & mask
    return z ^ (z >> 31)


def test_generator_test_vectors_in_the_format_doc():
    text = (REPO / "docs" / "golden-format.md").read_text()
    rows = re.findall(
        r"^\| (\d+) \| `(conv/example/\w+)` \| \[(-?\d+), (-?\d+)\] \| ([-\d, ]+) \| (\d+) \|$", text, re.M
    )
    assert {int(r[0]) for r in rows} == {4, 8, 11, 12, 24} and len(rows) == 10
    for bits, name, lo, hi, ints, _ in rows:
        seed = int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "big")
        lo, hi = int(lo), int(hi)
        want = [lo + _splitmix64(seed, i) % (hi - lo + 1) for i in range(1, 7)]
        assert [int(v) for v in ints.split(",")] == want, (bits, name)
    # and refws's generator gives these numbers for a case of that name and grid
    from refws.golden.rng import GRIDS

    for bits, name, _, _, ints, exponent in rows:
        grid = GRIDS[int(bits)]
        make = grid.gains if name.endswith("gain") else grid.values
        got = make("conv/example", name.rsplit("/", 1)[1], (6,))
        assert np.array_equal(got, np.ldexp(np.array([float(v) for v in ints.split(",")]), -int(exponent)))


# --- bad input: exit 2, a message naming file, case and field, nothing written ---------------

GOOD_CONV = '[[case]]\nsuite = "conv"\nname = "c"\nx_shape = [1, 5, 3]\nw_shape = [3, 3, 2]\n'
BAD = {
    "unknown key": (GOOD_CONV + "strides = 2\n", ["case #1 'c'", "field 'strides'", "unknown key"]),
    "wrong type": (GOOD_CONV + 'stride = "two"\n', ["case #1 'c'", "field 'stride'", "expected an int"]),
    "wrong type in a sweep": (GOOD_CONV + "[case.sweep]\nstride = [1, 2.5]\n", ["field 'sweep.stride'"]),
    "impossible geometry": (GOOD_CONV.replace("[3, 3, 2]", "[3, 4, 2]"), ["case #1 'c'", "impossible case", "C_in"]),
    "duplicate name": (GOOD_CONV + GOOD_CONV, ["case #2 'c'", "field 'name'", "duplicate case name 'conv/c'"]),
    "sweep of nothing": (GOOD_CONV + "[case.sweep]\nstride = []\n", ["field 'sweep.stride'", "non-empty list"]),
    "sweep all invalid": (GOOD_CONV + "[case.sweep]\ngroups = [2, 3]\n", ["field 'sweep'", "expands to nothing"]),
    "missing field": ('[[case]]\nsuite = "conv"\nname = "c"\nx_shape = [1, 5, 3]\n', ["field 'w_shape'", "missing"]),
    "unknown suite": ('[[case]]\nsuite = "convolution"\nname = "c"\n', ["field 'suite'", "expected one of"]),
    "bad name": ('[[case]]\nsuite = "conv"\nname = "a b"\n', ["field 'name'"]),
    "unknown top-level key": ("bitz = 8\n" + GOOD_CONV, ["field 'bitz'", "unknown top-level key"]),
    "unknown grid": (GOOD_CONV + "bits = 16\n", ["field 'bits'", "expected one of [4, 8, 11, 12, 24]"]),
    "layer argument": (
        '[[case]]\nsuite = "brainstate"\nname = "l"\ncls = "Conv1d"\nx_shape = [2, 5, 3]\n'
        "in_size = [5, 3]\nout_channels = 2\nkernel_size = 3\nkernal = 2\n",
        ["field 'kernal'"],
    ),
    "not TOML": ("[[case]\n", ["not valid TOML"]),
}


@pytest.mark.parametrize("kind", sorted(BAD))
def test_bad_catalog_input_exits_2_and_writes_nothing(kind, tmp_path, capsys):
    text, expected = BAD[kind]
    path = tmp_path / "bad.toml"
    path.write_text(text)
    out = tmp_path / "store"
    assert cli.main(["golden", "build", "--catalog", str(path), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert str(path) in err and all(e in err for e in expected), err
    assert not out.exists() and not list(tmp_path.glob("store*"))


def test_strict_refuses_a_sweep_with_an_invalid_combination(tmp_path, capsys):
    path = tmp_path / "c.toml"
    path.write_text(GOOD_CONV + "[case.sweep]\ngroups = [1, 3]\n")
    assert cli.main(["golden", "list", "--catalog", str(path)]) == 0
    assert "skipped 1 of 2 combinations" in capsys.readouterr().err
    assert cli.main(["golden", "build", "--catalog", str(path), "--out", str(tmp_path / "s"), "--strict"]) == 2
    assert "--strict" in capsys.readouterr().err and not (tmp_path / "s").exists()


def test_a_case_that_breaks_the_no_rounding_bound_is_refused_by_name(tmp_path, monkeypatch, capsys):
    """With the exactness limit lowered, the builder's proof fails: the case is named, nothing written."""
    import refws.golden.ozaki as ozaki

    path = tmp_path / "c.toml"
    path.write_text(GOOD_CONV)
    monkeypatch.setattr(ozaki, "_UNIT_LIMIT", 2.0**20)
    assert cli.main(["golden", "build", "--catalog", str(path), "--out", str(tmp_path / "s")]) == 2
    err = capsys.readouterr().err
    assert "case conv/c" in err and "2**52" in err and not (tmp_path / "s").exists()


def test_a_catalog_file_cannot_claim_the_builtin_name(tmp_path, capsys):
    path = tmp_path / "c.toml"
    path.write_text('name = "builtin"\n' + GOOD_CONV)
    assert cli.main(["golden", "list", "--catalog", str(path)]) == 2
    assert "reserved" in capsys.readouterr().err


def test_building_a_catalog_needs_an_output_folder(tmp_path, capsys):
    path = tmp_path / "c.toml"
    path.write_text(GOOD_CONV)
    assert cli.main(["golden", "build", "--catalog", str(path)]) == 2
    assert "--out" in capsys.readouterr().err


def test_examples_catalogs_load():
    for path in sorted((REPO / "examples" / "catalogs").glob("*.toml")):
        cat = golden.load_catalog(path, strict=True)
        assert cat.cases and cat.name == path.stem
    resnet = golden.load_catalog(REPO / "examples" / "catalogs" / "resnet50.toml")
    assert len(resnet.cases) == 23 and all(c.derivatives == ("vjp",) for c in resnet.cases)
    assert {tuple(c.params["x_shape"]) for c in resnet.cases} >= {(2, 224, 224, 3), (2, 7, 7, 2048)}
