"""Draw every figure of the documentation from refws's own geometry and functions.

    pip install -e ".[docs]"
    python docs/figures/make_figures.py              # all figures, into docs/figures/*.svg

Nothing here computes a shape, a pad or a value by itself: the positions come from
``refws.conv_geometry`` and ``refws.explain.axis_taps``, the matrices from ``refws.conv``,
``refws.im2col`` and ``refws.conv_vjp``, the WS curves from ``refws.weight_standardize``. A figure
therefore shows what refws computes, and a change in refws changes the figure.

The error/bound histogram reads the JSON reports of ``refws check``. Its data is kept in
``error_bound_data.json`` (the per-array worst ``error / bound`` of each backend), so the figure
redraws from a clean checkout; to refresh it from new reports::

    refws golden build --out /tmp/golden_docs
    refws check torch --precision float32 --golden /tmp/golden_docs --json /tmp/torch.json
    refws check jax --precision float32 --golden /tmp/golden_docs --json /tmp/jax.json
    python docs/figures/make_figures.py --reports /tmp/torch.json /tmp/jax.json
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.patches import Rectangle  # noqa: E402

import refws  # noqa: E402
from refws.explain import axis_taps  # noqa: E402
from refws.grads import input_grad_pads  # noqa: E402

HERE = Path(__file__).resolve().parent
DATA = HERE / "error_bound_data.json"

INPUT, PAD, HOLE, CROP, TAP = "#cfe3f7", "#e6e6e6", "#ffffff", "#f4cccc", "#f5a623"
TAP_COLOURS = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd"]

plt.rcParams.update({"svg.hashsalt": "refws", "svg.fonttype": "none", "font.size": 10, "font.family": "DejaVu Sans"})


# --- drawing helpers ---------------------------------------------------------------------------


def cell(ax, x, y, text="", face=INPUT, edge="#555555", hatch=None, bold=False, w=1.0, h=1.0):
    ax.add_patch(Rectangle((x, y), w, h, facecolor=face, edgecolor=edge, hatch=hatch, linewidth=0.8))
    if text != "":
        ax.text(
            x + w / 2,
            y + h / 2,
            str(text),
            ha="center",
            va="center",
            fontsize=8,
            fontweight="bold" if bold else "normal",
        )


def bare(ax, xlim, ylim):
    ax.set_xlim(*xlim)
    ax.set_ylim(*ylim)
    ax.set_aspect("equal")
    ax.axis("off")


def positions(g, axis=0):
    """Every padded position along ``axis`` as ``(padded index, dilated coordinate q, kind, source)``,
    plus the input elements a negative pad cropped away (kind ``"crop"``, no padded index)."""
    n, (lo, hi), L = g.in_spatial[axis], g.padding[axis], g.lhs_dilation[axis]
    n_l = (n - 1) * L + 1 if n > 0 else 0
    out = []
    for p in range(max(n_l + lo + hi, 0)):
        q = p - lo
        if q < 0 or q >= n_l:
            out.append((p, q, "pad", None))
        elif q % L:
            out.append((p, q, "hole", None))
        else:
            out.append((p, q, "input", q // L))
    kept = {src for _, _, kind, src in out if kind == "input"}
    out += [(None, i * L, "crop", i) for i in range(n) if i not in kept]
    return out


def draw_axis(ax, g, y, axis=0, shift=0.0):
    """One padded axis at height ``y``, drawn in dilated coordinates (input 0 at x = shift)."""
    face = {"input": INPUT, "pad": PAD, "hole": HOLE, "crop": CROP}
    for _, q, kind, src in positions(g, axis):
        text = {"input": f"x{src}", "pad": "0", "hole": "0", "crop": f"x{src}"}[kind]
        cell(
            ax,
            shift + q,
            y,
            text,
            face[kind],
            hatch="///" if kind == "crop" else None,
            edge="#bbbbbb" if kind == "hole" else "#555555",
        )


# --- 1. padding forms --------------------------------------------------------------------------


def fig_padding_forms():
    n, k = 7, 4
    forms = ["SAME", "SAME_LOWER", "VALID", 2, [(0, 3)], [(-1, 2)]]
    fig, ax = plt.subplots(figsize=(9, 6.2))
    for row, padding in enumerate(forms):
        g = refws.conv_geometry((n,), (k,), 1, padding)
        y = -row * 2.0
        draw_axis(ax, g, y)
        lo = g.padding[0][0]
        for o, colour in ((0, "#1f77b4"), (g.out_spatial[0] - 1, "#d62728")):
            if o < 0:
                continue
            taps = axis_taps(g, 0, o)
            first, last = taps[0].padded - lo, taps[-1].padded - lo
            ax.plot([first + 0.05, last + 0.95], [y - 0.25, y - 0.25], color=colour, lw=2.5)
        ax.text(-4.8, y + 0.5, repr(padding), ha="left", va="center", fontsize=9, family="monospace")
        ax.text(10.6, y + 0.5, f"pads {g.padding[0]}\nout = {g.out_spatial[0]}", ha="left", va="center", fontsize=9)
    ax.text(
        1.0,
        1.6,
        f"n = {n}, kernel k = {k}, stride 1: blue bar = window of output 0, red = last output's window",
        fontsize=9,
    )
    legend = [
        Rectangle((0, 0), 1, 1, facecolor=c, edgecolor="#555555", hatch=h)
        for c, h in ((INPUT, None), (PAD, None), (CROP, "///"))
    ]
    ax.legend(
        legend,
        ["input element", "padding zero", "cropped by a negative pad"],
        loc="lower center",
        ncol=3,
        frameon=False,
        bbox_to_anchor=(0.5, -0.04),
    )
    bare(ax, (-5, 13.5), (-11.2, 2.2))
    return fig


# --- 2. a window sliding with stride and dilation ----------------------------------------------


def fig_stride_dilation():
    g = refws.conv_geometry((9,), (3,), stride=2, padding="SAME", rhs_dilation=2)
    fig, ax = plt.subplots(figsize=(8, 4.6))
    lo = g.padding[0][0]
    draw_axis(ax, g, 0)
    ax.text(-lo - 0.6, 0.5, "input", ha="right", va="center")
    for o in range(g.out_spatial[0]):
        y = -1.5 - 1.1 * o
        ax.text(-lo - 0.6, y + 0.5, f"y[{o}]", ha="right", va="center")
        for t in axis_taps(g, 0, o):
            q = t.padded - lo
            label = f"x{t.source}" if t.kind == "input" else "0"
            cell(ax, q, y, label, TAP_COLOURS[t.tap], bold=True)
            ax.texts[-1].set_color("white")
    ax.text(
        -lo,
        1.6,
        f"n = 9, k = 3, stride 2, rhs_dilation 2, SAME -> pads {g.padding[0]}, "
        f"out = {g.out_spatial[0]}; colour = kernel tap 0 / 1 / 2",
        fontsize=9,
    )
    bare(ax, (-lo - 2.5, 11.5), (-7.2, 2.3))
    return fig


# --- 3. lhs vs rhs dilation --------------------------------------------------------------------


def fig_lhs_rhs():
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
    for ax, g, title in (
        (
            left,
            refws.conv_geometry((4,), (3,), 1, [(2, 2)], lhs_dilation=2),
            "lhs_dilation 2: zeros between the inputs\n(the transposed convolution of stride 2)",
        ),
        (
            right,
            refws.conv_geometry((7,), (3,), 1, "VALID", rhs_dilation=2),
            "rhs_dilation 2: gaps between the kernel taps\n(atrous: a wider window, no more weights)",
        ),
    ):
        lo = g.padding[0][0]
        draw_axis(ax, g, 0)
        shown = range(min(g.out_spatial[0], 4))
        for row, o in enumerate(shown):
            y = -1.5 - 1.1 * row
            for t in axis_taps(g, 0, o):
                cell(ax, t.padded - lo, y, f"w{t.tap}", TAP_COLOURS[t.tap], bold=True)
                ax.texts[-1].set_color("white")
            ax.text(-lo - 0.5, y + 0.5, f"y[{o}]", ha="right", va="center")
        ax.set_title(title + f"\nout = {g.out_spatial[0]} (first {len(shown)} drawn)", fontsize=9)
        size = len(positions(g))
        bare(ax, (-lo - 2.2, size - lo + 0.5), (-1.5 - 1.1 * len(shown), 1.3))
    return fig


# --- 4. groups as channel blocks ---------------------------------------------------------------


def connections(c_in, c_out, groups):
    """``M[co, ci] = 1`` when output channel co reads input channel ci, from refws.conv itself."""
    w = np.ones((1, c_in // groups, c_out))
    m = np.zeros((c_out, c_in))
    for ci in range(c_in):
        x = np.zeros((1, 1, c_in))
        x[0, 0, ci] = 1.0
        m[:, ci] = refws.conv(x, w, padding="VALID", groups=groups)[0, 0] != 0
    return m


def fig_groups():
    cases = [
        (4, 4, 1, "groups=1: every output\nreads every input"),
        (4, 4, 2, "groups=2: two independent\nblocks"),
        (4, 8, 4, "groups=C_in=4, C_out=8:\ndepthwise, multiplier 2"),
    ]
    fig, axes = plt.subplots(1, 3, figsize=(10, 4.4))
    for ax, (c_in, c_out, groups, title) in zip(axes, cases):
        m = connections(c_in, c_out, groups)
        for co in range(c_out):
            for ci in range(c_in):
                cell(ax, ci, c_out - 1 - co, "", "#4a90d9" if m[co, ci] else "#f2f2f2")
        for ci in range(c_in):
            ax.text(ci + 0.5, c_out + 0.3, f"in {ci}", ha="center", fontsize=8)
        for co in range(c_out):
            ax.text(-0.2, c_out - 1 - co + 0.5, f"out {co}", ha="right", va="center", fontsize=8)
        ax.set_title(title + f"\nw: (k, {c_in // groups}, {c_out})", fontsize=9)
        bare(ax, (-1.6, c_in + 0.2), (-0.2, c_out + 0.9))
    return fig


# --- 5. im2col ---------------------------------------------------------------------------------


def fig_im2col():
    n, k, at = 4, 3, (1, 2)
    x = np.arange(1.0, n * n + 1).reshape(1, n, n, 1)  # input element i*n + j + 1
    cols = refws.im2col(x, (k, k), padding="SAME")  # (1, 4, 4, 3, 3, 1)
    g = refws.conv_geometry((n, n), (k, k), padding="SAME")
    mat = cols.reshape(-1, k * k)  # one row per output position
    row = at[0] * g.out_spatial[1] + at[1]
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 6.6), gridspec_kw={"width_ratios": [1, 1.35]})
    (lo0, hi0), (lo1, hi1) = g.padding
    size0, size1 = n + lo0 + hi0, n + lo1 + hi1
    reads = {(t0 * 1 + at[0], t1 * 1 + at[1]) for t0 in range(k) for t1 in range(k)}
    for p0 in range(size0):
        for p1 in range(size1):
            i0, i1 = p0 - lo0, p1 - lo1
            inside = 0 <= i0 < n and 0 <= i1 < n
            face = TAP if (p0, p1) in reads else (INPUT if inside else PAD)
            cell(left, p1, size0 - 1 - p0, int(x[0, i0, i1, 0]) if inside else 0, face)
    left.set_title(f"padded input (SAME, pads {g.padding});\nthe window of output {at} in orange", fontsize=9)
    bare(left, (-0.3, size1 + 0.3), (-0.3, size0 + 0.3))
    rows, width = mat.shape
    for r in range(rows):
        for c in range(width):
            cell(
                right, c, rows - 1 - r, int(mat[r, c]), TAP if r == row else (INPUT if mat[r, c] else PAD), w=1.0, h=1.0
            )
        o = np.unravel_index(r, g.out_spatial)
        right.text(-0.3, rows - 1 - r + 0.5, f"o={tuple(int(v) for v in o)}", ha="right", va="center", fontsize=8)
    for c in range(width):
        tap = tuple(int(v) for v in np.unravel_index(c, (k, k)))
        right.text(c + 0.5, rows + 0.3, f"t={tap}".replace(" ", ""), ha="center", fontsize=7, rotation=45)
    right.set_title(
        f"im2col: {rows} rows (outputs) x {width} columns (taps x channels);\n"
        "y = cols @ w.reshape(9, C_out), one matrix product",
        fontsize=9,
        pad=28,
    )
    bare(right, (-2.6, width + 0.3), (-0.3, rows + 1.4))
    return fig


# --- 6. the transposed convolution is the input gradient ---------------------------------------


def fig_transpose():
    n, k, stride, pads = 7, 3, 2, [(1, 1)]
    w = np.array([1.0, 2.0, 3.0]).reshape(k, 1, 1)
    g = refws.conv_geometry((n,), (k,), stride, pads)
    out = g.out_spatial[0]
    forward = np.stack([refws.conv(np.eye(n)[i].reshape(1, n, 1), w, stride, pads)[0, :, 0] for i in range(n)], 1)
    grad = np.stack(
        [
            refws.conv_vjp(np.zeros((1, n, 1)), w, np.eye(out)[o].reshape(1, out, 1), stride, pads)[0][0, :, 0]
            for o in range(out)
        ],
        1,
    )
    as_conv = np.stack(
        [
            refws.conv(np.eye(out)[o].reshape(1, out, 1), w[::-1], 1, input_grad_pads(g), lhs_dilation=stride)[0, :, 0]
            for o in range(out)
        ],
        1,
    )
    assert np.array_equal(grad, forward.T) and np.array_equal(as_conv, forward.T)
    fig, axes = plt.subplots(1, 2, figsize=(10, 4.6))
    for ax, m, title, rlab, clab in (
        (axes[0], forward, f"forward: y = A x   (n={n}, k={k}, stride {stride}, pads {g.padding[0]})", "y", "x"),
        (
            axes[1],
            grad,
            f"input gradient: dx = A^T dy = conv(lhs_dilation 2,\nflipped kernel, pads {input_grad_pads(g)[0]}) of dy",
            "dx",
            "dy",
        ),
    ):
        r_n, c_n = m.shape
        for r in range(r_n):
            for c in range(c_n):
                cell(ax, c, r_n - 1 - r, int(m[r, c]) if m[r, c] else "", "#4a90d9" if m[r, c] else "#f7f7f7")
                if m[r, c]:
                    ax.texts[-1].set_color("white")
            ax.text(-0.2, r_n - 1 - r + 0.5, f"{rlab}[{r}]", ha="right", va="center", fontsize=8)
        for c in range(c_n):
            ax.text(c + 0.5, r_n + 0.25, f"{clab}[{c}]", ha="center", fontsize=8)
        ax.set_title(title, fontsize=9)
        bare(ax, (-1.7, c_n + 0.2), (-0.2, r_n + 1.0))
    return fig


# --- 7. WS variants ----------------------------------------------------------------------------


def ws_scale(spec, var, shape=(3, 3, 4, 1)):
    """The factor WS multiplies the centred weights by, for a channel of variance ``var``
    (ddof of the preset), measured on ``refws.weight_standardize`` itself."""
    size = int(np.prod(shape))
    pattern = np.resize([1.0, -1.0], size)  # mean 0, sum of squares = size
    ddof = refws.WS_PRESETS[spec].ddof
    w = (pattern * np.sqrt(var * (size - ddof) / size)).reshape(shape)
    return refws.weight_standardize(w, spec=spec).ravel()[0] / w.ravel()[0]


def fig_ws():
    var = np.logspace(-14, 1, 301)
    fig, ax = plt.subplots(figsize=(8.5, 5))
    fan = 36
    for name, style in (
        ("brainstate", "-"),
        ("elektronn3", "--"),
        ("qiao", "-."),
        ("timm_std", ":"),
        ("timm_scaled", "-"),
        ("bit", "--"),
    ):
        spec = refws.WS_PRESETS[name]
        scale = [ws_scale(name, v) for v in var]  # one output channel: numel = fan_in = 36
        ax.loglog(var, scale, style, lw=1.6, label=f"{name}: {spec.denominator}, ddof {spec.ddof}, eps {spec.eps:g}")
    eps = refws.WS_PRESETS["brainstate"].eps
    ax.axvline(eps / fan, color="#999999", lw=0.8)
    ax.text(
        eps / fan * 0.7,
        3e-2,
        f"clamp of max(var * N, eps):\nvar * {fan} = eps = {eps:g}\n(brainstate, NFNets, elektronn3)",
        fontsize=8,
        color="#555555",
        ha="right",
    )
    ax.set_xlabel("per-channel variance of the weights (one channel of 3x3x4 = 36 elements)")
    ax.set_ylabel("scale factor applied to (w - mean)")
    ax.set_title("WS presets: the eps clamp (a kink) against sqrt(var + eps) and std + eps (smooth)", fontsize=10)
    ax.legend(fontsize=8, loc="upper right")
    ax.grid(True, which="major", color="#eeeeee")
    return fig


# --- 8. error / bound per backend --------------------------------------------------------------


def histogram_data(reports):
    """Per backend label, the worst ``error / bound`` of every judged array of ``refws check --json``."""
    data = {}
    for path in reports:
        report = json.loads(Path(path).read_text())
        label = f"{report['backend']} {report['version']} {report['precision']}"
        data[label] = sorted(
            float(f"{r['max_ratio']:.3g}")
            for r in report["records"]
            if r["status"] in ("pass", "warn", "fail") and r.get("max_ratio") is not None
        )
    return data


def fig_error_bound(data):
    fig, ax = plt.subplots(figsize=(8.5, 4.6))
    bins = np.logspace(-6, 0, 25)
    for (label, ratios), colour in zip(sorted(data.items()), ("#1f77b4", "#ff7f0e", "#2ca02c")):
        r = np.asarray(ratios)
        exact = int(np.sum(r == 0))
        ax.hist(
            np.clip(r[r > 0], bins[0], None),
            bins=bins,
            histtype="step",
            lw=1.8,
            color=colour,
            label=f"{label}: {len(r)} arrays, {exact} bit-exact (not drawn), worst {r.max():.3g}",
        )
    ax.set_xscale("log")
    ax.axvline(1.0, color="#d62728", lw=1)
    ax.set_ylim(0, ax.get_ylim()[1] * 1.25)
    ax.text(1.1e-6, ax.get_ylim()[1] * 0.12, "errors below 1e-6\nof the bound are\ndrawn at 1e-6", fontsize=7)
    ax.text(0.8, ax.get_ylim()[1] * 0.9, "fail above 1", ha="right", color="#d62728", fontsize=8)
    ax.set_xlabel("worst error / rigorous bound gamma_K(u) * conv(|x|, |w|) of each array (log)")
    ax.set_ylabel("arrays")
    ax.set_title(
        "refws check at float32 on the golden store: how far below the bound correct backends stay", fontsize=10
    )
    ax.legend(fontsize=8, loc="upper left")
    return fig


FIGURES = {
    "padding_forms": fig_padding_forms,
    "stride_dilation": fig_stride_dilation,
    "lhs_vs_rhs_dilation": fig_lhs_rhs,
    "groups": fig_groups,
    "im2col": fig_im2col,
    "transpose_gradient": fig_transpose,
    "ws_variants": fig_ws,
}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", default=str(HERE), help="folder for the SVG files (default: docs/figures)")
    p.add_argument(
        "--reports",
        nargs="*",
        default=None,
        metavar="JSON",
        help="refws check --json reports to refresh error_bound_data.json from",
    )
    args = p.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.reports:
        DATA.write_text(json.dumps(histogram_data(args.reports), indent=0, sort_keys=True) + "\n")
    figures = dict(FIGURES)
    if DATA.exists():
        figures["error_bound_histogram"] = lambda: fig_error_bound(json.loads(DATA.read_text()))
    for name, make in figures.items():
        fig = make()
        fig.savefig(out / f"{name}.svg", bbox_inches="tight", metadata={"Date": None})
        plt.close(fig)
        print(f"wrote {out / name}.svg")
    return 0


if __name__ == "__main__":
    sys.exit(main())
