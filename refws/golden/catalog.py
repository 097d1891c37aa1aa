"""The built-in catalog of golden cases: a stable name, a suite and JSON parameters for each.

A case's arrays are a pure function of its name, parameters and grid (see :mod:`refws.golden.rng`),
so the catalog below *is* the fixture set; ``refws golden build`` only evaluates it.

The cases are written as catalog *entries*, the data model of a catalog file, and expanded and
validated by the same :func:`refws.golden.catalog_file.parse_catalog` as a user's TOML or JSON
catalog: one mechanism. ``refws golden list --toml`` prints this catalog as such a file.

Suites: ``conv``, ``conv_transpose``, ``ws``, ``brainstate``, ``elektronn3``.
"""

from __future__ import annotations

import functools
import itertools

from .case import SUITES, Case
from .catalog_file import BUILTIN_NAME, Catalog, parse_catalog
from .layer_cases import layer_entries

__all__ = ["Case", "catalog", "builtin_catalog", "SUITES", "BUILTIN_SOURCE"]

BUILTIN_SOURCE = "refws.golden.catalog (built-in)"


def _conv(name, x_shape, w_shape, **params):
    return dict(suite="conv", name=name, x_shape=list(x_shape), w_shape=list(w_shape), **params)


def _conv_cases():
    out = []
    # every padding form, in 1, 2 and 3 spatial dimensions
    forms = {
        "same": "SAME", "valid": "VALID", "same_lower": "SAME_LOWER", "same_lowercase": "same",
        "int1": 1, "int_neg": -1, "perdim": None, "pairs": None, "pairs_neg": None, "pairs_mixed": None,
        "single_pair": None,
    }
    dims = {1: ((2, 9, 3), (3, 3, 4)), 2: ((2, 7, 6, 3), (3, 2, 3, 4)), 3: ((1, 5, 4, 6, 2), (2, 3, 2, 2, 3))}
    for nd, (xs, ws) in dims.items():
        for key, pad in forms.items():
            if key == "perdim":
                pad = [1, 2, 0][:nd]
            elif key == "pairs":
                pad = [[0, 2], [1, 0], [2, 1]][:nd]
            elif key == "pairs_neg":
                pad = [[-1, -1], [-1, 0], [0, -2]][:nd]
            elif key == "pairs_mixed":
                pad = [[2, -1], [-1, 2], [1, -2]][:nd]
            elif key == "single_pair":
                pad = [[1, 2]]
            out.append(_conv(f"{nd}d_pad_{key}", xs, ws, padding=pad))
        for s, L, d in itertools.product((1, 2, 3), (1, 2), (1, 2)):
            if (s, L, d) == (1, 1, 1):
                continue
            pad = [[1, 1]] * nd if L > 1 else "SAME"
            out.append(_conv(f"{nd}d_s{s}_lhs{L}_rhs{d}", xs, ws, stride=s, padding=pad, lhs_dilation=L,
                             rhs_dilation=d))
    # per-dimension strides and dilations, explicit negative and mixed pads with them
    out.append(_conv("2d_aniso", (2, 9, 8, 2), (3, 2, 2, 3), stride=[2, 1], padding=[[2, -1], [0, 1]],
                     lhs_dilation=[1, 2], rhs_dilation=[2, 1]))
    out.append(_conv("3d_aniso", (1, 6, 5, 7, 2), (2, 2, 3, 2, 2), stride=[1, 2, 3], padding="SAME",
                     rhs_dilation=[2, 1, 1]))
    # groups, depthwise, depthwise with channel multiplier
    for nd, xs in ((1, (2, 8, 6)), (2, (2, 6, 5, 6)), (3, (1, 4, 4, 3, 6))):
        k = (3, 2, 2)[:nd]
        out.append(_conv(f"{nd}d_groups2", xs, (*k, 3, 4), groups=2))
        out.append(_conv(f"{nd}d_groups3_strided", xs, (*k, 2, 6), groups=3, stride=2, padding="VALID"))
        out.append(_conv(f"{nd}d_depthwise", xs, (*k, 1, 6), groups=6))
        out.append(_conv(f"{nd}d_depthwise_mult2", xs, (*k, 1, 12), groups=6, rhs_dilation=2))
    # layouts and batching
    out.append(_conv("2d_unbatched", (7, 6, 3), (3, 3, 3, 4)))
    out.append(_conv("2d_channel_first", (2, 3, 7, 6), (3, 3, 3, 4), channel_first=True))
    out.append(_conv("1d_unbatched_channel_first", (3, 9), (3, 3, 2), channel_first=True))
    out.append(_conv("3d_channel_first_groups", (1, 4, 5, 4, 3), (2, 2, 2, 2, 4), groups=2, channel_first=True,
                     stride=2))
    # zero-size outputs are legal
    out.append(_conv("2d_zero_size_valid", (2, 2, 5, 3), (3, 3, 3, 2), padding="VALID"))
    out.append(_conv("1d_zero_size_crop", (2, 4, 2), (2, 2, 2), padding=[[-3, -1]]))
    out.append(_conv("2d_zero_batch", (0, 5, 5, 2), (3, 3, 2, 2)))
    # the peers' known bugs (../shared/NOTES.md)
    out.append(_conv("bug_lax_reference_pad_2_minus1", (1, 8, 2), (3, 2, 3), padding=[[2, -1]],
                     note="jax lax_reference gets the output shape wrong for one positive and one negative pad"))
    out.append(_conv("bug_lax_reference_same_rhs_dilation", (1, 9, 9, 1), (3, 3, 1, 2), padding="SAME",
                     rhs_dilation=2, note="lax_reference ignores rhs_dilation in SAME: 7x7 instead of 9x9"))
    for n, k in ((8, 2), (8, 4), (9, 2), (9, 4), (7, 1)):
        out.append(_conv(f"same_stride2_n{n}_k{k}", (1, n, n, 2), (k, k, 2, 2), stride=2, padding="SAME",
                         note="SAME with stride 2 and even kernels: pads (0,1), (1,1), (1,2), (0,0)"))
    out.append(_conv("same_lower_stride2_k4", (1, 8, 8, 2), (4, 4, 2, 2), stride=2, padding="SAME_LOWER"))
    return out


def _transpose(name, x_shape, w_shape, **params):
    return dict(suite="conv_transpose", name=name, x_shape=list(x_shape), w_shape=list(w_shape), **params)


def _transpose_cases():
    out = []
    dims = {1: ((2, 6, 3), (3, 4, 3)), 2: ((2, 4, 5, 3), (3, 2, 4, 3)), 3: ((1, 3, 4, 3, 2), (2, 3, 2, 3, 2))}
    for nd, (xs, ws) in dims.items():
        for s, p, d in itertools.product((1, 2, 3), (0, 1), (1, 2)):
            out.append(_transpose(f"{nd}d_s{s}_p{p}_d{d}", xs, ws, stride=s, padding=p, dilation=d))
        out.append(_transpose(f"{nd}d_output_padding", xs, ws, stride=3, padding=1, output_padding=2))
        out.append(_transpose(f"{nd}d_output_padding_dilation", xs, ws, stride=1, dilation=3, output_padding=2))
        sizes = [(n - 1) * 2 - 2 + (k - 1) + 1 + 1 for n, k in zip(xs[1:-1], ws[:-2])]
        out.append(_transpose(f"{nd}d_output_size", xs, ws, stride=2, padding=1, output_size=sizes))
        out.append(_transpose(f"{nd}d_no_bias", xs, ws, stride=2, bias=False))
    # groups with bias: ONNX's reference evaluator gets this wrong
    out.append(_transpose("2d_groups2_bias", (2, 4, 4, 4), (3, 3, 3, 4), stride=2, padding=1, groups=2))
    out.append(_transpose("2d_groups4_bias_output_padding", (1, 3, 5, 4), (2, 3, 2, 4), stride=2,
                          output_padding=1, groups=4))
    out.append(_transpose("1d_depthwise_bias", (2, 7, 3), (3, 2, 3), stride=2, groups=3))
    out.append(_transpose("3d_groups2_bias", (1, 3, 3, 2, 4), (2, 2, 2, 3, 4), stride=[2, 1, 2], groups=2))
    out.append(_transpose("2d_channel_first", (2, 3, 4, 5), (3, 3, 2, 3), stride=2, padding=1,
                          channel_first=True))
    out.append(_transpose("2d_unbatched", (4, 5, 3), (3, 3, 2, 3), stride=2))
    out.append(_transpose("2d_aniso", (1, 4, 3, 2), (3, 2, 3, 2), stride=[2, 3], padding=[1, 0],
                          output_padding=[1, 2], dilation=[1, 2]))
    return out


def _ws(name, w_shape, spec, out_axis=-1, **params):
    return dict(suite="ws", name=name, w_shape=list(w_shape), spec=spec, out_axis=out_axis, **params)


WS_PRESET_NAMES = ("brainstate", "nfnets", "elektronn3", "qiao", "timm_std", "timm_scaled", "bit")


def _ws_cases():
    out = []
    shapes = {"hwio": ((3, 3, 2, 4), -1), "oihw": ((4, 2, 3, 3), 0), "linear": ((6, 5), -1),
              "dhwio": ((2, 2, 2, 3, 2), -1)}
    for spec in WS_PRESET_NAMES:
        for key, (shape, axis) in shapes.items():
            out.append(_ws(f"{spec}_{key}", shape, spec, axis))
        out.append(_ws(f"{spec}_hwio_no_gain", shapes["hwio"][0], spec, -1, gain=False))
        out.append(_ws(f"{spec}_hwio_tiny", shapes["hwio"][0], spec, -1, regime="tiny"))
        out.append(_ws(f"{spec}_hwio_constant", shapes["hwio"][0], spec, -1, regime="constant"))
        out.append(_ws(f"{spec}_oihw_eps_1e-2", shapes["oihw"][0], spec, 0, eps=1e-2))
    return out


@functools.lru_cache(maxsize=1)
def builtin_catalog() -> Catalog:
    """The built-in catalog, expanded and validated like a catalog file (computed once)."""
    entries = _conv_cases() + _transpose_cases() + _ws_cases() + layer_entries()
    return parse_catalog(dict(name=BUILTIN_NAME, case=entries), BUILTIN_SOURCE, strict=True)


def catalog() -> list:
    """Every case of the built-in catalog, in a stable order (sorted by name)."""
    return list(builtin_catalog().cases)
