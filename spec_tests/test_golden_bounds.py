"""The golden store's bound data: ``terms``, ``<o>__absbound`` and ``<o>__wsbound`` of every output.

docs/golden-format.md ("Tolerances for consumers") promises, for every output array ``o``:
``terms[o] = K`` bounds the number of products summed into one element of its bilinear part,
``<o>__absbound`` bounds the sum of their absolute values, and ``<o>__wsbound`` is a first-order
bound of the effect of rounding inside weight standardization (WS). Everything here is checked
against references written in this file, independent of refws's bound code (refws.golden.exact_ws,
evaluate, layer_cases): product counts and exact sums from the definitions (loops over taps and
channels, ``fractions.Fraction``, mpmath), and float32 transcriptions of WS in several formula
orders that must stay inside the bound while three wrong variants must leave it.

Which test catches which defect of the store before the bound data was completed:

- ``terms`` of transposed convolutions counting ``C_out/groups`` instead of ``taps * C_in/groups``:
  ``test_terms_match_the_definition`` (equality for ``y``);
- layer ``__absbound`` up to 2.2 ulp below ``|y|``: ``test_absbound_dominates_every_stored_value``
  (and ``test_absbound_bounds_the_exact_sum_of_absolute_products``);
- the format doc's gain range and transposed kernel layout: ``test_doc_gain_range`` and
  ``test_doc_transposed_kernel_layout``.
"""

from __future__ import annotations

import functools
import json
import re
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path

import mpmath
import numpy as np
import pytest

import refws.golden as golden

from .naive import TORCH_TO_NUMPY_PAD_MODE, as_tuple, naive_explicit_pads, naive_torch_pads, to_channels_last
from .test_golden import _PRESETS as PRESETS  # (ddof, denominator, fan, eps, gamma), from NOTES.md
from .test_golden import _ws_mp as ws_mp  # WS in mpmath, from NOTES.md

ROOT = golden.default_root()
HAVE_STORE = (ROOT / "manifest.json").exists()
pytestmark = pytest.mark.skipif(not HAVE_STORE, reason="golden/ not built")
MANIFEST = json.loads((ROOT / "manifest.json").read_text())["cases"] if HAVE_STORE else {}
DOC = Path(__file__).resolve().parents[1] / "docs" / "golden-format.md"

U32 = 2.0**-24
LAYER_SUITES = ("brainstate", "elektronn3")
SLACK = 1.0 + 2.0**-40  # the runner's allowance for evaluating the bound in float64


@functools.cache
def load(name):
    """A stored case, read and checksum-verified once per session."""
    return golden.load(name)


def names(*suites):
    return sorted(n for n, e in MANIFEST.items() if e["suite"] in suites)


def is_ws_layer(p) -> bool:
    return p["library"] == "elektronn3" or p["cls"].startswith("ScaledWS")


def expected_outputs(entry) -> set:
    """Output arrays of a case, from the format doc's table and the case's inputs."""
    arrays, suite = entry["arrays"], entry["suite"]
    if suite in ("conv", "conv_transpose"):
        return {"y", "dx", "dw", "ty"} | ({"db"} if "b" in arrays else set())
    if suite == "ws":
        return {"w_hat", "dw", "tw_hat"} | ({"dgain"} if "gain" in arrays else set())
    return {"y", "dx", "dweight", "ty"} | {"d" + k for k in ("bias", "gain") if k in arrays}


def ws_dependent(entry) -> set:
    """Outputs that depend on a standardized weight (they must carry a ``__wsbound``)."""
    if entry["suite"] == "ws":
        return expected_outputs(entry)
    if entry["suite"] in LAYER_SUITES and is_ws_layer(entry["params"]):
        return expected_outputs(entry) - {"dbias"}
    return set()


# --- 1. completeness and domination, every case ------------------------------------------------


@pytest.mark.parametrize("name", sorted(MANIFEST))
def test_every_output_carries_its_bound_data(name):
    entry = MANIFEST[name]
    outs, arrays, terms = expected_outputs(entry), entry["arrays"], entry["terms"]
    assert set(terms) == outs, f"{name}: terms for {sorted(terms)}, outputs {sorted(outs)}"
    bound_arrays = {k for k in arrays if "__" in k}
    want = {o + "__absbound" for o in outs if terms[o] > 0} | {o + "__wsbound" for o in ws_dependent(entry)}
    assert bound_arrays == want, f"{name}: bound arrays {sorted(bound_arrays)}, expected {sorted(want)}"
    for k in bound_arrays:
        assert arrays[k]["shape"] == arrays[k.split("__")[0]]["shape"], (name, k)
    for o in outs:
        assert isinstance(terms[o], int) and terms[o] >= 0, (name, o, terms[o])


def test_absbound_dominates_every_stored_value():
    """``absbound >= |o|`` on every element of every output of every stored case.

    The stored value is the exact value rounded to nearest and ``absbound`` a float ``>=`` the
    exact sum of absolute products, which is ``>= |exact|``; so it is ``>=`` the stored value too.
    Outputs with ``K = 0`` and no ``__wsbound`` are empty sums: exactly zero.
    """
    failures, short_total = [], 0
    for case in golden.cases():
        for key in sorted(k for k in case.arrays if "__" in k):
            b = case[key]
            assert np.all(np.isfinite(b)) and np.all(b >= 0), (case.name, key)
            if key.endswith("__absbound"):
                v = case[key[: -len("__absbound")]]
                short = b < np.abs(v)
                if short.any():
                    short_total += int(short.sum())
                    failures.append(f"{case.name} {key}: {int(short.sum())} of {v.size} elements")
        for o, k in MANIFEST[case.name]["terms"].items():
            if k == 0 and o + "__wsbound" not in case.arrays:
                assert not np.any(case[o]), (case.name, o)
    assert not failures, f"absbound below |value| in {short_total} elements: " + "; ".join(failures[:10])


# --- the definitions: which products each output element sums -----------------------------------
#
# Every bilinear core here (convolution, transposed convolution, the layers' cores, a matrix
# product) is written in one canonical form, with flattened spatial positions:
#
#     y[n, o, co] += x[n, i, g * cg + c] * W[t, c, co]   for every triple (o, t, i), c < cg,
#                                                         g = co // m (m output channels per group)
#
# x: (N, P_in, C_in), y: (N, P_out, C_out), W: (T, cg, C_out). The triples come from each
# operation's definition below (padding, dilation and out-of-range taps give no triple).


def _flat(pos, shape) -> int:
    return int(np.ravel_multi_index(pos, shape)) if shape else 0


@dataclass
class Incidence:
    """The triples ``(o, t, i)`` of a core and its channel structure (see above)."""

    triples: list
    batch: int
    cg: int
    m: int
    groups: int
    p_out: int
    p_in: int
    taps: int
    o: np.ndarray = field(init=False)
    t: np.ndarray = field(init=False)
    i: np.ndarray = field(init=False)

    def __post_init__(self):
        arr = np.array(self.triples, dtype=np.int64).reshape(-1, 3)
        self.o, self.t, self.i = arr[:, 0], arr[:, 1], arr[:, 2]

    # products per element, from the triples
    def count(self, what: str) -> int:
        """Most products in one element of ``y``, ``dx`` (= x-like) or ``dw`` (= kernel-like)."""
        if what == "y":
            return int(np.max(np.bincount(self.o, minlength=self.p_out), initial=0)) * self.cg
        if what == "dx":
            return int(np.max(np.bincount(self.i, minlength=self.p_in), initial=0)) * self.m
        return int(np.max(np.bincount(self.t, minlength=self.taps), initial=0)) * self.batch

    # the core and its two VJPs, accumulated in the operands' dtype (float32 below)
    def y(self, x, W):
        out = np.zeros((x.shape[0], self.p_out, self.m * self.groups), dtype=W.dtype)
        for t in range(self.taps):
            sel = self.t == t
            o, i = self.o[sel], self.i[sel]  # o is unique for one tap
            for g in range(self.groups):
                gi, go = slice(g * self.cg, (g + 1) * self.cg), slice(g * self.m, (g + 1) * self.m)
                out[:, o, go] += x[:, i, gi] @ W[t, :, go]
        return out

    def dx(self, dy, W, c_in):
        out = np.zeros((dy.shape[0], self.p_in, c_in), dtype=W.dtype)
        for t in range(self.taps):
            sel = self.t == t
            o, i = self.o[sel], self.i[sel]
            for g in range(self.groups):
                gi, go = slice(g * self.cg, (g + 1) * self.cg), slice(g * self.m, (g + 1) * self.m)
                part = dy[:, o, go] @ W[t, :, go].T
                view = out[:, :, gi]
                np.add.at(view, (slice(None), i), part)  # i may repeat (reflect padding)
        return out

    def dw(self, x, dy):
        out = np.zeros((self.taps, self.cg, self.m * self.groups), dtype=x.dtype)
        for t in range(self.taps):
            sel = self.t == t
            o, i = self.o[sel], self.i[sel]
            for g in range(self.groups):
                gi, go = slice(g * self.cg, (g + 1) * self.cg), slice(g * self.m, (g + 1) * self.m)
                xs = x[:, i, gi].reshape(-1, self.cg)
                out[t, :, go] = xs.T @ dy[:, o, go].reshape(-1, self.m)
        return out

    # exact sums of |products| at one element (Fraction or mpmath object arrays)
    def abs_y(self, x, W, n, o, co):
        g = co // self.m
        return sum(
            (
                abs(x[n, i, g * self.cg + c]) * abs(W[t, c, co])
                for t, i in zip(self.t[self.o == o], self.i[self.o == o])
                for c in range(self.cg)
            ),
            0,
        )

    def abs_dx(self, dy, W, n, i, ch):
        g, c = divmod(ch, self.cg)
        sel = self.i == i
        return sum(
            (
                abs(dy[n, o, co]) * abs(W[t, c, co])
                for t, o in zip(self.t[sel], self.o[sel])
                for co in range(g * self.m, (g + 1) * self.m)
            ),
            0,
        )

    def abs_dw(self, x, dy, t, c, co):
        g = co // self.m
        sel = self.t == t
        return sum(
            (
                abs(x[n, i, g * self.cg + c]) * abs(dy[n, o, co])
                for o, i in zip(self.o[sel], self.i[sel])
                for n in range(x.shape[0])
            ),
            0,
        )


def conv_triples(in_sp, out_sp, taps, stride, pads, lhs, rhs):
    """lax's convolution: output ``o`` and tap ``t`` read the padded, lhs-dilated input at
    ``q = o * stride + t * rhs - lo``: input element ``q / lhs`` when that is an integer in range."""
    out = []
    for o in np.ndindex(*out_sp):
        for t in np.ndindex(*taps):
            src = []
            for a in range(len(taps)):
                q = o[a] * stride[a] + t[a] * rhs[a] - pads[a][0]
                if q < 0 or q % lhs[a] or q // lhs[a] >= in_sp[a]:
                    break
                src.append(q // lhs[a])
            else:
                out.append((_flat(o, out_sp), _flat(t, taps), _flat(tuple(src), in_sp)))
    return out


def torch_conv_triples(in_sp, out_sp, taps, stride, dilation, pads, mode):
    """PyTorch's convolution after ``padding_mode`` padding: padded position ``o * s + t * d`` holds
    the input element given by numpy.pad's index map (zeros: none)."""
    maps = []
    for n, p in zip(in_sp, pads):
        idx = np.arange(n)
        maps.append(
            np.pad(idx, p, constant_values=-1)
            if mode == "zeros"
            else np.pad(idx, p, mode=TORCH_TO_NUMPY_PAD_MODE[mode])
        )
    out = []
    for o in np.ndindex(*out_sp):
        for t in np.ndindex(*taps):
            src = tuple(int(maps[a][o[a] * stride[a] + t[a] * dilation[a]]) for a in range(len(taps)))
            if min(src, default=0) >= 0:
                out.append((_flat(o, out_sp), _flat(t, taps), _flat(src, in_sp)))
    return out


def transpose_triples(in_sp, out_sp, taps, stride, padding, dilation):
    """PyTorch's transposed convolution: input ``i`` and tap ``t`` add into ``o = i * s - p + t * d``."""
    out = []
    for i in np.ndindex(*in_sp):
        for t in np.ndindex(*taps):
            o = tuple(i[a] * stride[a] - padding[a] + t[a] * dilation[a] for a in range(len(taps)))
            if all(0 <= o[a] < out_sp[a] for a in range(len(taps))):
                out.append((_flat(o, out_sp), _flat(t, taps), _flat(i, in_sp)))
    return out


def lax_transpose_pads(k, s, padding):
    """jax.lax.conv_transpose's padding of the stride-dilated input for 'SAME' / 'VALID', with the
    rhs-dilated kernel extent ``k`` (jax's ``_conv_transpose_padding``)."""
    if padding == "SAME":
        total = k + s - 2
        lo = k - 1 if s > k - 1 else -(-total // 2)
    elif padding == "VALID":
        total, lo = k + s - 2 + max(k - s, 0), k - 1
    else:
        raise ValueError(f"padding {padding!r}: expected 'SAME' or 'VALID'")
    return lo, total - lo


def transposed_kernel_as_conv(w, groups):
    """``(*k, C_out/groups, C_in)`` -> the canonical ``W[t, c, g*cog + j] = w[t, j, g*cg + c]``."""
    k, (cog, c_in) = w.shape[:-2], w.shape[-2:]
    v = w.reshape(*k, cog, groups, c_in // groups)  # [t, j, g, c]
    v = np.swapaxes(np.moveaxis(v, -1, len(k)), -1, -2)  # [t, c, g, j]
    return v.reshape(*k, c_in // groups, groups * cog)


@dataclass
class View:
    """A case's core in canonical form, and maps from its stored layouts to canonical arrays."""

    inc: Incidence
    x: object  # input-like (stored) -> (N, P_in, C_in)
    y: object  # output-like -> (N, P_out, C_out)
    kern: object  # weight-like (stored layout) -> (T, cg, C_out)
    c_in: int
    bias: str | None  # name of the bias array, if any
    weight: str  # name of the weight array
    ws: tuple | None = None  # layers: (ddof, denominator, fan, eps, gamma), out_axis
    ws_axis: int = -1

    def decanon(self, kc, shape):
        """Inverse of ``kern`` (a permutation of elements): canonical kernel -> stored layout."""
        index = self.kern(np.arange(int(np.prod(shape))).reshape(shape)).ravel()
        out = np.empty(index.size, dtype=kc.dtype)
        out[index] = kc.ravel()
        return out.reshape(shape)


def _flat_cl(a, channel_first, batched):
    a = to_channels_last(np.asarray(a), channel_first, batched)
    return a.reshape(a.shape[0], int(np.prod(a.shape[1:-1])), a.shape[-1])


def view_of(entry) -> View:
    """The canonical view of a case from its manifest entry (suite, params, array shapes)."""
    p, shapes, suite = entry["params"], {k: tuple(v["shape"]) for k, v in entry["arrays"].items()}, entry["suite"]
    if suite in ("conv", "conv_transpose"):
        nd = len(p["w_shape"]) - 2
        cf, batched = p["channel_first"], len(p["x_shape"]) == nd + 2
        xs = to_channels_last(np.zeros(shapes["x"]), cf, batched).shape
        ys = to_channels_last(np.zeros(shapes["y"]), cf, batched).shape
        taps, groups, w_shape = tuple(p["w_shape"][:nd]), p["groups"], p["w_shape"]
        if suite == "conv":
            s, L, d = (as_tuple(p[k], nd) for k in ("stride", "lhs_dilation", "rhs_dilation"))
            pads = naive_explicit_pads(p["padding"], xs[1:-1], taps, s, L, d)
            triples = conv_triples(xs[1:-1], ys[1:-1], taps, s, pads, L, d)
            cg, m = w_shape[-2], w_shape[-1] // groups
            kern = lambda a: np.asarray(a).reshape(-1, cg, w_shape[-1])  # noqa: E731
        else:
            s, pad, d = (as_tuple(p[k], nd) for k in ("stride", "padding", "dilation"))
            triples = transpose_triples(xs[1:-1], ys[1:-1], taps, s, pad, d)
            cg, m = w_shape[-1] // groups, w_shape[-2]
            kern = lambda a: transposed_kernel_as_conv(np.asarray(a), groups).reshape(-1, cg, m * groups)  # noqa: E731
        inc = Incidence(
            triples, xs[0], cg, m, groups, int(np.prod(ys[1:-1])), int(np.prod(xs[1:-1])), int(np.prod(taps))
        )
        return View(
            inc,
            lambda a: _flat_cl(a, cf, batched),
            lambda a: _flat_cl(a, cf, batched),
            kern,
            xs[-1],
            "b" if "b" in shapes else None,
            "w",
        )
    kw, cls = p["kwargs"], p["cls"]
    bias = "bias" if "bias" in shapes else None
    if p["library"] == "brainstate":
        ws = ((0, "max_var_n", "fan_in", kw.get("eps", 1e-4), None), -1) if cls.startswith("ScaledWS") else (None, -1)
        if cls.endswith("Linear"):
            n_in, n_out = shapes["weight"]
            flat = lambda a: np.asarray(a).reshape(-1, 1, np.shape(a)[-1])  # noqa: E731
            inc = Incidence([(0, 0, 0)], int(np.prod(shapes["x"][:-1])), n_in, n_out, 1, 1, 1, 1)
            return View(inc, flat, flat, lambda a: np.asarray(a).reshape(1, n_in, n_out), n_in, bias, "weight", *ws)
        nd = int(cls[-2])
        cf, batched = kw.get("channel_first", False), len(p["x_shape"]) == nd + 2
        xs = to_channels_last(np.zeros(shapes["x"]), cf, batched).shape
        ys = to_channels_last(np.zeros(shapes["y"]), cf, batched).shape
        taps, groups = shapes["weight"][:nd], kw.get("groups", 1)
        s, L, d = (as_tuple(kw.get(k, 1), nd) for k in ("stride", "lhs_dilation", "rhs_dilation"))
        if cls.startswith("ConvTranspose"):
            # NOTES.md: conv_general_dilated with lhs_dilation = stride, window stride 1, the kernel
            # (*k, C_out, C_in/groups) flipped spatially and read with I/O swapped; 'SAME'/'VALID' pads
            # by jax.lax.conv_transpose's rule, explicit pads as given
            c_out, cg = shapes["weight"][-2:]
            padding = kw.get("padding", "SAME")
            pads = (
                tuple(lax_transpose_pads((k - 1) * r + 1, st, padding) for k, st, r in zip(taps, s, d))
                if isinstance(padding, str)
                else naive_explicit_pads(padding, xs[1:-1], taps, 1, 1, d)
            )
            triples = conv_triples(xs[1:-1], ys[1:-1], taps, (1,) * nd, pads, s, d)
            kern = lambda a: np.flip(np.asarray(a), axis=tuple(range(nd))).swapaxes(-1, -2).reshape(-1, cg, c_out)  # noqa: E731,E501
        else:
            cg, c_out = shapes["weight"][-2:]
            pads = naive_explicit_pads(kw.get("padding", "SAME"), xs[1:-1], taps, s, L, d)
            triples = conv_triples(xs[1:-1], ys[1:-1], taps, s, pads, L, d)
            kern = lambda a: np.asarray(a).reshape(-1, cg, c_out)  # noqa: E731
        inc = Incidence(
            triples,
            xs[0],
            cg,
            c_out // groups,
            groups,
            int(np.prod(ys[1:-1])),
            int(np.prod(xs[1:-1])),
            int(np.prod(taps)),
        )
        return View(
            inc,
            lambda a: _flat_cl(a, cf, batched),
            lambda a: _flat_cl(a, cf, batched),
            kern,
            xs[-1],
            bias,
            "weight",
            *ws,
        )
    # elektronn3: NCHW, weights OIHW (conv) or (C_in, C_out/groups, *k) (transposed); WS over axis 0
    nd = int(cls[-2])
    xs, ys = shapes["x"], shapes["y"]
    groups = kw.get("groups", 1)
    taps = tuple(shapes["weight"][2:])
    to_suite_layout = lambda a: np.transpose(np.asarray(a), list(range(2, 2 + nd)) + [1, 0])  # noqa: E731
    s, d = as_tuple(kw.get("stride", 1), nd), as_tuple(kw.get("dilation", 1), nd)
    if cls.startswith("WSConvTranspose"):
        pad = as_tuple(kw.get("padding", 0), nd)
        triples = transpose_triples(xs[2:], ys[2:], taps, s, pad, d)
        cg, m = shapes["weight"][0] // groups, shapes["weight"][1]
        kern = lambda a: transposed_kernel_as_conv(to_suite_layout(a), groups).reshape(-1, cg, m * groups)  # noqa: E731
    else:
        pads = naive_torch_pads(kw.get("padding", 0), taps, d)
        triples = torch_conv_triples(xs[2:], ys[2:], taps, s, d, pads, kw.get("padding_mode", "zeros"))
        cg, m = shapes["weight"][1], shapes["weight"][0] // groups
        kern = lambda a: to_suite_layout(a).reshape(-1, cg, m * groups)  # noqa: E731
    inc = Incidence(triples, xs[0], cg, m, groups, int(np.prod(ys[2:])), int(np.prod(xs[2:])), int(np.prod(taps)))
    return View(
        inc,
        lambda a: _flat_cl(a, True, True),
        lambda a: _flat_cl(a, True, True),
        kern,
        xs[1],
        bias,
        "weight",
        (1, "max_var_n", "numel", 1e-4, None),
        0,
    )


# --- 2. terms from the definitions ----------------------------------------------------------------

BILINEAR = ("conv", "conv_transpose", *LAYER_SUITES)


def check_terms(name, entry):
    """``terms[o]`` >= the products one element of ``o`` sums by the definition; == for conv y."""
    v = view_of(entry)
    terms, shapes = entry["terms"], {k: a["shape"] for k, a in entry["arrays"].items()}
    has_bias = 1 if v.bias else 0

    def count(o, what, extra=0):
        return 0 if 0 in shapes[o] else v.inc.count(what) * (2 if o == "ty" else 1) + extra

    want = dict(y=count("y", "y", has_bias), dx=count("dx", "dx"), ty=count("ty", "y", has_bias))
    grad = "dw" if entry["suite"] in ("conv", "conv_transpose") else "dweight"
    want[grad] = count(grad, "dw")
    if "dgain" in shapes:
        want["dgain"] = count("dgain", "dw")
    if v.bias:
        b = "db" if grad == "dw" else "dbias"
        want[b] = 0 if 0 in shapes[b] else v.inc.batch * v.inc.p_out
    for o, k in want.items():
        if o in terms:
            assert terms[o] >= k, f"{name}: terms[{o}] = {terms[o]} < {k} products from the definition"
    if entry["suite"] in ("conv", "conv_transpose"):
        assert terms["y"] == want["y"], f"{name}: terms[y] = {terms['y']}, the definition sums {want['y']}"
    assert set(want) == set(terms), f"{name}: terms for {sorted(terms)}, outputs {sorted(want)}"


@pytest.mark.parametrize("name", names(*BILINEAR))
def test_terms_match_the_definition(name):
    """Every bilinear output of every stored case. A transposed convolution's ``y`` element sums
    ``taps * C_in/groups`` products (plus the bias), not ``taps * C_out/groups``."""
    check_terms(name, MANIFEST[name])


@pytest.mark.parametrize(
    "params",
    [
        dict(x_shape=[1, 5, 4], w_shape=[3, 1, 4], groups=1),  # the example: 12 products, not 4
        dict(x_shape=[2, 4, 3, 6], w_shape=[2, 2, 1, 6], groups=2),
    ],
)
def test_terms_of_transposed_convolutions_with_more_inputs_than_outputs(params):
    """Off-catalog cases (built in memory) where ``C_in/groups > C_out/groups``, so a count of
    ``C_out/groups`` products per element is too small: the count must follow the definition."""
    from refws.golden.case import Case
    from refws.golden.evaluate import evaluate

    p = dict(
        stride=1, padding=0, output_padding=0, dilation=1, output_size=None, bias=True, channel_first=False, **params
    )
    case = Case("conv_transpose/offcatalog_more_inputs", "conv_transpose", p)
    arrays, terms = evaluate(case)
    entry = dict(
        suite="conv_transpose", params=p, terms=terms, arrays={k: dict(shape=list(v.shape)) for k, v in arrays.items()}
    )
    check_terms(case.name, entry)


# --- 3. absbound against exact sums of |products| -------------------------------------------------

MP_DPS = 80


def _exact(a) -> np.ndarray:
    """A float64 array as an object array of exact Fractions."""
    a = np.asarray(a, dtype=np.float64)
    return np.frompyfunc(Fraction, 1, 1)(a) if a.size else a.astype(object)


def _sample(shape, count, seed):
    if 0 in shape:
        return []
    rng = np.random.default_rng(seed)
    return [tuple(int(rng.integers(0, s)) for s in shape) for _ in range(count)]


def _geq(bound: float, exact) -> bool:
    """``bound >= exact``: exactly for Fractions; for mpmath values (irrational WS quantities,
    accurate to ~1e-45 relative here) up to 1e-40 relative, far below a float64 ulp."""
    if isinstance(exact, Fraction) or exact == 0:
        return Fraction(float(bound)) >= exact
    return mpmath.mpf(float(bound)) >= exact * (1 - mpmath.mpf("1e-40"))


class _Effective:
    """The effective kernel ``mask * WS(weight, gain)`` (or ``mask * weight``) of a layer case, its
    tangent and the magnitude Jacobian, in exact or mpmath arithmetic, in the stored layout."""

    def __init__(self, case, view):
        self.case, self.view = case, view
        self.mask = case.arrays.get("w_mask", np.ones(case["weight"].shape))
        self.gain = case.arrays.get("gain")
        self.ws = view.ws

    def _ws(self, w, gain):
        return ws_mp(w, None if gain is None else np.ravel(gain), *self.ws, self.view.ws_axis)

    def kernel(self, tangent=False):
        c = self.case
        if self.ws is None:
            return _exact((c["tweight"] if tangent else c["weight"]) * self.mask)
        if not tangent:
            return self._ws(c["weight"], self.gain) * self.mask
        h = mpmath.mpf("1e-30")
        w = np.asarray(c["weight"], dtype=object)
        tw = np.asarray(c["tweight"], dtype=object)
        up = self._ws(w + tw * h, None if self.gain is None else self.gain + c["tgain"] * h)
        dn = self._ws(w - tw * h, None if self.gain is None else self.gain - c["tgain"] * h)
        return (up - dn) / (2 * h) * self.mask

    def jt_magnitude(self, v, idx):
        """``sum_j |d W_eff_j / d weight_idx| v_j`` by central differences in mpmath."""
        h = mpmath.mpf("1e-30")
        w = np.asarray(self.case["weight"], dtype=object)
        wp, wm = w.copy(), w.copy()
        wp[idx] = wp[idx] + h
        wm[idx] = wm[idx] - h
        col = (self._ws(wp, self.gain) - self._ws(wm, self.gain)) / (2 * h)
        return mpmath.fsum(abs(a) * b for a, b in zip(col.ravel(), (v * self.mask).ravel()))

    def gain_magnitude(self, v, c):
        h = mpmath.mpf("1e-30")
        gp = np.asarray(self.gain, dtype=object).ravel().copy()
        gm = gp.copy()
        gp[c], gm[c] = gp[c] + h, gm[c] - h
        w = self.case["weight"]
        col = (self._ws(w, gp) - self._ws(w, gm)) / (2 * h)
        return mpmath.fsum(abs(a) * b for a, b in zip(col.ravel(), (v * self.mask).ravel()))


@pytest.mark.parametrize("name", names(*BILINEAR))
def test_absbound_bounds_the_exact_sum_of_absolute_products(name):
    """On sampled elements of every output: ``__absbound >=`` the sum of the absolute values of the
    products the definition sums (Fractions; mpmath for the standardized kernels), including the
    bias term, both sums of ``ty``, and for a WS layer's ``dweight``/``dgain`` the bilinear
    magnitude propagated through ``|J|`` (central differences of WS in mpmath)."""
    entry, v = MANIFEST[name], view_of(MANIFEST[name])
    case = load(name)
    inc, layer = v.inc, entry["suite"] in LAYER_SUITES
    x, dy = _exact(v.x(case["x"])), _exact(v.y(case["dy"]))
    tx = _exact(v.x(case["tx"]))
    with mpmath.workdps(MP_DPS):
        if layer:
            eff = _Effective(case, v)
            W, tW = v.kern(eff.kernel()), v.kern(eff.kernel(tangent=True))
        else:
            W, tW = _exact(v.kern(case["w"])), _exact(v.kern(case["tw"]))
        b = _exact(case[v.bias]).ravel() if v.bias else None
        tb = _exact(case["t" + v.bias]).ravel() if v.bias else None
        checks = []
        if "y__absbound" in case.arrays:  # else K = 0: no element sums a product
            y_ab, ty_ab = v.y(case["y__absbound"]), v.y(case["ty__absbound"])
            for n, o, co in _sample(y_ab.shape, 3, 1):
                extra = abs(b[co]) if v.bias else 0
                checks.append(("y", y_ab[n, o, co], inc.abs_y(x, W, n, o, co) + extra))
                extra = abs(tb[co]) if v.bias else 0
                checks.append(("ty", ty_ab[n, o, co], inc.abs_y(tx, W, n, o, co) + inc.abs_y(x, tW, n, o, co) + extra))
        if "dx__absbound" in case.arrays:
            dx_ab = v.x(case["dx__absbound"])
            for n, i, ch in _sample(dx_ab.shape, 3, 2):
                checks.append(("dx", dx_ab[n, i, ch], inc.abs_dx(dy, W, n, i, ch)))
        grad = "dweight" if layer else "dw"
        if grad + "__absbound" in case.arrays and not (layer and v.ws):
            dw_ab = v.kern(case[grad + "__absbound"])
            mask = v.kern(case.arrays.get("w_mask", np.ones(case[v.weight].shape)))  # dweight = mask * g
            for t, c, co in _sample(dw_ab.shape, 3, 3):
                checks.append((grad, dw_ab[t, c, co], inc.abs_dw(x, dy, t, c, co) * int(mask[t, c, co])))
        if layer and v.ws:  # g = mask * core_w(x, dy); |J^T| |g| <= A(mask * core_w(|x|, |dy|))
            mag = v.decanon(inc.dw(np.abs(v.x(case["x"])), np.abs(v.y(case["dy"]))), case["weight"].shape)
            for idx in _sample(case["weight"].shape, 2, 4):
                checks.append(("dweight", case["dweight__absbound"][idx], eff.jt_magnitude(mag, idx)))
            if "dgain" in case.arrays:
                c = _sample((case["gain"].size,), 1, 5)[0][0]
                checks.append(("dgain", case["dgain__absbound"].ravel()[c], eff.gain_magnitude(mag, c)))
        if v.bias:
            db = "db" if not layer else "dbias"
            flat_dy = np.abs(v.y(case["dy"])).reshape(-1, dy.shape[-1])
            for co in range(flat_dy.shape[1]):
                checks.append((db, case[db + "__absbound"].ravel()[co], sum(_exact(flat_dy[:, co]), Fraction(0))))
        for what, bound, exact in checks:
            assert _geq(bound, exact), f"{name} {what}: absbound {bound!r} < exact sum of |products| {exact}"


# --- 4. the doc's facts ---------------------------------------------------------------------------


def test_doc_gain_range():
    """Every stored gain lies in (0, 2] (integers 1..2048 times 2**-10), as the format doc says."""
    gains = [c["gain"] for c in golden.cases() if "gain" in c.arrays]
    assert gains and all(np.all(g > 0) and np.all(g <= 2) for g in gains)
    assert max(float(g.max()) for g in gains) > 1.9  # the range is used, not just (0, 1]
    text = " ".join(DOC.read_text().split())
    assert "gains are in `(0, 2]`" in text and "(0, 4]" not in text


def test_doc_transposed_kernel_layout():
    """The transposed suite's kernels are ``(*kernel, C_out/groups, C_in)``, as the format doc says."""
    for name in names("conv_transpose"):
        e = MANIFEST[name]
        p, shapes = e["params"], {k: v["shape"] for k, v in e["arrays"].items()}
        cf, nd = p["channel_first"], len(p["w_shape"]) - 2
        axis = (1 if len(shapes["x"]) == nd + 2 else 0) if cf else -1
        c_in, c_out = shapes["x"][axis], shapes["y"][axis]
        assert shapes["w"][-2:] == [c_out // p["groups"], c_in], name
    text = DOC.read_text()
    assert re.search(r"`conv_transpose`[^\n]*`\(\*kernel, C_out/groups, C_in\)`", text)


# --- 5. the first-order WS bound against float32 transcriptions ----------------------------------
#
# Each transcription below standardizes per channel in float32 (NumPy, every operation rounded to
# float32) in its own formula order, and computes the VJP and JVP the way an implementation of
# that order would. They are correct implementations: their error against the exact stored values
# must stay within the bound. The one-pass variance E[w^2] - E[w]^2 is correct only where it does
# not cancel catastrophically (mean^2 << var); every stored case is such (grid weights centred
# near 0, or exact in float32: the tiny and constant regimes), so it is tested on all of them.

F32 = np.float32


def _pairwise(a):
    return np.sum(a, axis=0)  # NumPy's pairwise summation, in a's dtype


def _sequential(a):
    return np.cumsum(a, axis=0)[-1]  # one element after another


class WS32:
    """Float32 WS of ``W`` (n, C) per column: ``(w - mean) * scale`` with a two-pass variance and
    the hand-derived VJP ``S (g - mean g) - c S (sum g d) d`` / JVP (docs/weight-standardization.md),
    sums by ``self.sum``. Subclasses change the statistics, the formula or the derivatives."""

    name = "two-pass, pairwise sums, (w - mean) * scale, hand-derived VJP/JVP"
    sum = staticmethod(_pairwise)

    def __init__(self, variant, numel, dtype=np.float32):
        self.ddof, self.den, self.fan, self.eps, self.gamma = variant
        self.numel, self.f = numel, dtype  # every constant and operand in self.f

    def setup(self, W, gain):
        n = W.shape[0]
        self.n, self.m = self.f(n), self.f(n - self.ddof)
        self.big_n = self.f({"fan_in": n, "numel": self.numel, None: 1}[self.fan])
        self.gain = np.ones(W.shape[1], self.f) if gain is None else gain
        self.fixed = self.f(1) if self.gamma is None else self.f(self.gamma) / np.sqrt(self.n)
        self.mean, self.var = self.stats(W)
        e = self.f(self.eps)
        if self.den == "max_var_n":
            self.sigma = np.sqrt(np.maximum(self.var * self.big_n, e))
            self.dsigma = np.where(self.var * self.big_n > e, self.big_n * self.f(0.5) / self.sigma, self.f(0))
        elif self.den == "std_plus_eps":
            root = np.sqrt(self.var)
            self.sigma = root + e
            self.dsigma = np.where(root > 0, self.f(0.5) / np.where(root > 0, root, self.f(1)), self.f(0))
        else:
            self.sigma = np.sqrt(self.var + e)
            self.dsigma = self.f(0.5) / self.sigma
        self.scale = self.fixed * self.gain / self.sigma
        self.W = W

    def stats(self, W):
        mean = self.sum(W) / self.n
        d = W - mean
        return mean, self.sum(d * d) / self.m

    def forward(self):
        return (self.W - self.mean) * self.scale

    def _c(self):  # (S / sigma) sigma' (2 / m)
        return self.scale / self.sigma * self.dsigma * (self.f(2) / self.m)

    def vjp(self, g):
        d = self.W - self.mean
        t = self.sum(g * d)
        dw = self.scale * (g - self.sum(g) / self.n) - self._c() * t * d
        return dw, self.fixed / self.sigma * t

    def jvp(self, t, tg):
        d = self.W - self.mean
        da = self.fixed * tg / self.sigma - self._c() * self.sum(t * d)
        return self.scale * (t - self.sum(t) / self.n) + da * d


class WS32Welford(WS32):
    name = "Welford's one-pass mean and variance, sequential sums, (w - mean) * scale"
    sum = staticmethod(_sequential)

    def stats(self, W):
        mean, m2 = np.zeros(W.shape[1], self.f), np.zeros(W.shape[1], self.f)
        for k in range(W.shape[0]):
            delta = W[k] - mean
            mean = mean + delta / self.f(k + 1)
            m2 = m2 + delta * (W[k] - mean)
        return mean, m2 / self.m


class WS32OnePass(WS32):
    """brainstate's and elektronn3's code form ``w * scale - mean * scale`` with the one-pass
    variance, differentiated as reverse / forward-mode autodiff of that expression would."""

    name = "one-pass E[w^2] - E[w]^2, sequential sums, w * scale - mean * scale, autodiff of that expression"
    sum = staticmethod(_sequential)

    def stats(self, W):
        mean = self.sum(W) / self.n
        return mean, (self.sum(W * W) / self.n - mean * mean) * (self.n / self.m)

    def forward(self):
        return self.W * self.scale - self.mean * self.scale

    def vjp(self, g):  # reverse mode through the expression graph
        W, r = self.W, self.f(1) / self.sigma
        sg = self.sum(g)
        d_scale = self.sum(g * W) - self.mean * sg
        d_mean = -self.scale * sg
        dgain = d_scale * self.fixed * r
        d_var = -(d_scale * self.fixed * self.gain) * r * r * self.dsigma
        c = self.n / self.m
        d_mean = d_mean + d_var * c * (self.f(-2) * self.mean)
        return g * self.scale + (d_var * c / self.n) * (self.f(2) * W) + d_mean / self.n, dgain

    def jvp(self, t, tg):  # forward mode through the same graph
        W, r = self.W, self.f(1) / self.sigma
        t_mean = self.sum(t) / self.n
        t_var = (self.sum(self.f(2) * W * t) / self.n - self.f(2) * self.mean * t_mean) * (self.n / self.m)
        t_r = -r * r * (self.dsigma * t_var)
        t_scale = self.fixed * (tg * r + self.gain * t_r)
        return t * self.scale + W * t_scale - (t_mean * self.scale + self.mean * t_scale)


class WS32Scaled(WS32):
    name = "two-pass, sequential sums, scale = rsqrt-style 1/sigma then w*scale - mean*scale"
    sum = staticmethod(_sequential)

    def forward(self):
        s = self.fixed * (self.f(1) / self.sigma) * self.gain
        return self.W * s - self.mean * s


TRANSCRIPTIONS = (WS32, WS32Welford, WS32OnePass, WS32Scaled)


def _cols(a, axis):
    a = np.moveaxis(np.asarray(a), axis, -1)
    return a.reshape(-1, a.shape[-1])


def _uncols(a, shape, axis):
    lshape = list(np.moveaxis(np.zeros(shape), axis, -1).shape)
    return np.moveaxis(a.reshape(lshape), -1, axis)


def ws32(cls, variant, w, gain, g, t, tg, axis, dtype=F32):
    """``(w_hat, dw, dgain, t_hat)`` of one transcription, float32 (or ``dtype``), in w's layout."""
    ws = cls(variant, np.size(w), dtype)
    f = lambda a: _cols(np.asarray(a, dtype=dtype), axis)  # noqa: E731
    ws.setup(f(w), None if gain is None else np.ravel(gain).astype(dtype))
    dw, dgain = ws.vjp(f(g))
    tg = np.zeros(np.shape(w)[axis], dtype) if tg is None else np.ravel(tg).astype(dtype)
    back = lambda a: _uncols(a, np.shape(w), axis)  # noqa: E731
    return back(ws.forward()), back(dw), dgain, back(ws.jvp(f(t), tg))


def gamma_k(k, u=U32):
    return k * u / (1 - k * u)


def bound_of(case, o, terms, u=U32):
    """The runner's float32 bound (docs/golden-format.md) with exact inputs: ``(gamma_K(u) m + u W)``."""
    m = case.arrays.get(o + "__absbound", 0.0)
    wb = case.arrays.get(o + "__wsbound", 0.0)
    return (gamma_k(terms[o], u) * m + u * wb) * SLACK


def ws_case_errors(name, cls, variant=None):
    """``{output: max |float32 - stored| / bound}`` for one ws-suite case and transcription
    (``variant`` overrides the case's: a mutation)."""
    case, p = load(name), MANIFEST[name]["params"]
    variant = _ws_variant(p) if variant is None else variant
    gain = case.arrays.get("gain")
    got = ws32(cls, variant, case["w"], gain, case["dw_hat"], case["tw"], case.arrays.get("tgain"), p["out_axis"])
    ratios = {}
    for o, v in zip(("w_hat", "dw", "dgain", "tw_hat"), got):
        if o not in case.arrays:
            continue
        err = np.abs(np.asarray(v, dtype=np.float64).reshape(case[o].shape) - case[o])
        bound = bound_of(case, o, MANIFEST[name]["terms"])
        with np.errstate(divide="ignore", invalid="ignore"):
            ratios[o] = float(np.max(np.where(err == 0, 0.0, err / bound), initial=0.0))
    return ratios


@pytest.mark.parametrize("cls", TRANSCRIPTIONS, ids=lambda c: c.__name__)
def test_float32_ws_transcriptions_stay_within_the_wsbound(cls):
    """Every ws-suite case, every output: ``|float32 - exact| <= u32 * wsbound`` (K = 0 there)."""
    worst = {}
    for name in names("ws"):
        for o, r in ws_case_errors(name, cls).items():
            assert r <= 1.0, f"{cls.name}: {name} {o} uses {r:.3g} of its bound"
            worst[o] = max(worst.get(o, 0.0), r)
    print(f"\n{cls.name}: max share of the bound used: " + ", ".join(f"{o} {r:.3g}" for o, r in sorted(worst.items())))


def _mutations(variant):
    """The wrong variants a WS port makes, applicable to ``variant``: name -> mutated variant."""
    ddof, den, fan, eps, gamma = variant
    out = {"ddof 0 <-> 1": (1 - ddof, den, fan, eps, gamma)}
    if den == "std_plus_eps":
        out["eps inside vs outside the sqrt"] = (ddof, "sqrt_var_plus_eps", fan, eps, gamma)
    elif den == "sqrt_var_plus_eps":
        out["eps inside vs outside the sqrt"] = (ddof, "std_plus_eps", fan, eps, gamma)
    if eps == 1e-4:
        out["eps 1e-5 instead of 1e-4"] = (ddof, den, fan, 1e-5, gamma)
    return out


def _ws_variant(p):
    ddof, den, fan, eps, gamma = PRESETS[p["spec"]]
    return ddof, den, fan, eps if p["eps"] is None else p["eps"], gamma


def _mutation_moves(name, mutated) -> float:
    """How far a mutation moves the exact result: max over outputs of max|mutated - stored| / max|stored|,
    with the mutated variant evaluated in float64."""
    case, p = load(name), MANIFEST[name]["params"]
    got = ws32(
        WS32,
        mutated,
        case["w"],
        case.arrays.get("gain"),
        case["dw_hat"],
        case["tw"],
        case.arrays.get("tgain"),
        p["out_axis"],
        np.float64,
    )
    return max(
        float(np.max(np.abs(np.reshape(v, case[o].shape) - case[o]))) / float(np.max(np.abs(case[o])))
        for o, v in zip(("w_hat", "dw", "dgain", "tw_hat"), got)
        if o in case.arrays and np.any(case[o])
    )


def test_ws_mutations_leave_the_bound():
    """Each wrong variant, transcribed in float32 like ``WS32``, exceeds the bound on every case where
    it moves some output by more than 1e-4 of that output's largest magnitude (the bound is a few
    1e-6 relative), and so on at least one case per mutation."""
    changed, caught = {}, {}
    for name in names("ws"):
        for what, mutated in _mutations(_ws_variant(MANIFEST[name]["params"])).items():
            moved = _mutation_moves(name, mutated)
            if moved <= 1e-9:
                continue  # the mutation changes nothing here
            changed.setdefault(what, []).append(name)
            exceeded = max(ws_case_errors(name, WS32, mutated).values()) > 1.0
            if exceeded:
                caught.setdefault(what, []).append(name)
            assert exceeded or moved < 1e-4, f"{name}: '{what}' moves the result by {moved:.2g} but stays in the bound"
    for what in ("ddof 0 <-> 1", "eps inside vs outside the sqrt", "eps 1e-5 instead of 1e-4"):
        assert caught.get(what), f"'{what}' stays within the bound on all {len(changed.get(what, []))} cases it changes"
        print(f"\n{what}: exceeds the bound on {len(caught[what])} of the {len(changed[what])} cases it changes")


def round_to_bits(a, bits):
    """``a`` rounded to nearest with ``bits`` significant bits (unbounded exponent range)."""
    a = np.asarray(a, dtype=np.float64)
    mant, ex = np.frexp(a)
    return np.ldexp(np.round(np.ldexp(mant, bits)), ex - bits)


@pytest.mark.parametrize("bits", [8, 10])
def test_ws_wsbound_covers_rounded_inputs(bits):
    """Inputs (w, gain, cotangent, tangents) rounded to ``bits`` significant bits (8: bfloat16; 10
    rounds most of the 12-bit grid values; ``u_in = 2**-bits``), standardization in float32:
    ``|error| <= (u32 + u_in) * wsbound`` (first order; the second-order terms stay small)."""
    u_in, worst = 2.0**-bits, 0.0
    for name in names("ws"):
        case, p = load(name), MANIFEST[name]["params"]
        variant = _ws_variant(p)
        r = {
            k: (None if k not in case.arrays else round_to_bits(case[k], bits))
            for k in ("w", "gain", "dw_hat", "tw", "tgain")
        }
        got = ws32(WS32, variant, r["w"], r["gain"], r["dw_hat"], r["tw"], r["tgain"], p["out_axis"])
        for o, v in zip(("w_hat", "dw", "dgain", "tw_hat"), got):
            if o in case.arrays:
                err = np.abs(np.asarray(v, dtype=np.float64).reshape(case[o].shape) - case[o])
                bound = (U32 + u_in) * case[o + "__wsbound"] * SLACK
                ratio = float(np.max(np.where(err == 0, 0.0, err / np.where(bound > 0, bound, 1.0))))
                assert ratio <= 1.0, f"{name} {o}: {ratio:.3g} of the bound with {bits}-bit inputs"
                worst = max(worst, ratio)
    print(f"\n{bits}-bit inputs: max share of the bound used {worst:.3g}")


def ws_layer_names():
    return [n for n in names(*LAYER_SUITES) if is_ws_layer(MANIFEST[n]["params"])]


def layer_errors(name, cls, variant=None):
    """``{output: max |float32 - stored| / bound}`` for a WS layer evaluated in float32: the kernel
    standardized by transcription ``cls`` (mask after WS), the core accumulated in float32 from
    the definition's triples, ``g = mask * core_w(x, dy)`` in float32 fed to the transcription's VJP."""
    case, entry = load(name), MANIFEST[name]
    v = view_of(entry)
    variant = v.ws if variant is None else variant
    f = lambda a: np.asarray(a, dtype=F32)  # noqa: E731
    mask = f(case.arrays.get("w_mask", np.ones(case["weight"].shape)))
    x, dy, tx = f(v.x(case["x"])), f(v.y(case["dy"])), f(v.x(case["tx"]))
    g = v.decanon(v.inc.dw(x, dy), case["weight"].shape) * mask
    what, dw, dgain, that = ws32(
        cls, variant, case["weight"], case.arrays.get("gain"), g, case["tweight"], case.arrays.get("tgain"), v.ws_axis
    )
    W, tW = f(v.kern(what * mask)), f(v.kern(that * mask))
    got = dict(y=v.inc.y(x, W), dx=v.inc.dx(dy, W, v.c_in), ty=v.inc.y(tx, W) + v.inc.y(x, tW), dweight=dw, dgain=dgain)
    if v.bias:
        got["y"] = got["y"] + f(case[v.bias]).ravel()
        got["ty"] = got["ty"] + f(case["t" + v.bias]).ravel()
    canon = dict(y=v.y, ty=v.y, dx=v.x, dweight=np.asarray, dgain=np.ravel)
    ratios = {}
    for o, val in got.items():
        if o not in case.arrays:
            continue
        exact = canon[o](case[o])
        bound = canon[o](bound_of(case, o, entry["terms"]) + np.zeros(case[o].shape))
        err = np.abs(np.asarray(val, dtype=np.float64).reshape(exact.shape) - exact)
        ratios[o] = float(np.max(np.where(err == 0, 0.0, err / np.where(bound > 0, bound, 1.0)), initial=0.0))
    return ratios


@pytest.mark.parametrize("cls", TRANSCRIPTIONS, ids=lambda c: c.__name__)
def test_float32_ws_layers_stay_within_the_bound(cls):
    """Every WS layer case, every output depending on the standardized kernel: ``|float32 - exact|
    <= gamma_K(u32) * absbound + u32 * wsbound`` (the runner's float32 bound, exact inputs)."""
    worst = {}
    for name in ws_layer_names():
        for o, r in layer_errors(name, cls).items():
            assert r <= 1.0, f"{cls.name}: {name} {o} uses {r:.3g} of its bound"
            worst[o] = max(worst.get(o, 0.0), r)
    print(
        f"\n{cls.name} (layers): max share of the bound used: "
        + ", ".join(f"{o} {r:.3g}" for o, r in sorted(worst.items()))
    )


def test_ws_layer_ddof_mutation_leaves_the_bound():
    """A layer that standardizes with the other ddof exceeds the bound (every WS layer case: the
    variance of every channel changes by the factor n / (n - 1))."""
    caught = []
    for name in ws_layer_names():
        ddof, *rest = view_of(MANIFEST[name]).ws
        if max(layer_errors(name, WS32, (1 - ddof, *rest)).values()) > 1.0:
            caught.append(name)
    assert len(caught) == len(ws_layer_names()), sorted(set(ws_layer_names()) - set(caught))
