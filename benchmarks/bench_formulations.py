"""refws against itself: every evaluation path of the forward and of each gradient half, per shape.

Run from the repository root:

    python benchmarks/bench_formulations.py                # wall clock, library-default threads
    python benchmarks/bench_formulations.py --threads 1    # one core: the figures behind the rules
    python benchmarks/bench_formulations.py --case g16 --case depthwise

What the rules of refws choose from (refws/conv.py ``forward_formulation``, refws/grads.py
``input_grad_method``, ``weight_grad_method``): the forward by ``"gemm"`` (im2col and BLAS) or
``"taps"`` (one broadcast multiply-add per kernel tap and channel); ``dx`` by the col2im
derivation (evaluated by gemm or taps) or by the conv derivation (one convolution); ``dw`` likewise.
Every path is timed on the same operands, interleaved as in the other scripts; the table marks
the path the rules choose (``*``) and gives its time over the fastest path's. With ``--threads
1`` (OpenBLAS and refws's tap threads on one core) the comparison does not depend on how well
each path uses a second core, nor much on other work on a shared machine. A benchmark, not a
test: nothing is asserted.
"""

from __future__ import annotations

import importlib
import math

import numpy as np

import _peers as P

conv_module = importlib.import_module("refws.conv")
grads = importlib.import_module("refws.grads")


def grid_cases(batch: int) -> list[P.Case]:
    """32 input channels, 3x3, 64x64: Cg -> Cog channels per group over a grid, and the benchmark's
    few-channel shapes (strided, 1-D and 3-D depthwise)."""
    cases = [
        P.Case(
            f"g{32 // cg}_{cg}to{cog}",
            (batch, 64, 64, 32),
            (3, 3, cg, 32 // cg * cog),
            groups=32 // cg,
            note=f"{cg} -> {cog} per group",
        )
        for cg, cog in (
            (1, 1),
            (1, 2),
            (1, 4),
            (1, 8),
            (2, 2),
            (2, 4),
            (2, 8),
            (4, 1),
            (4, 2),
            (4, 4),
            (4, 8),
            (8, 1),
            (8, 16),
        )
    ]
    cases += [
        P.Case("depthwise_s2", (batch, 64, 64, 32), (3, 3, 1, 32), stride=2, groups=32, note="1 -> 1, s=2"),
        P.Case("depthwise_1d", (batch, 4096, 32), (9, 1, 32), groups=32, note="1 -> 1, k=9"),
        P.Case("depthwise_3d", (max(1, batch // 4), 16, 32, 32, 16), (3, 3, 3, 1, 32), groups=16, note="1 -> 2, 3-D"),
        # few groups on small maps: where the forward's rule asks for 16 groups
        P.Case("g8_2to2_small", (2, 32, 32, 16), (3, 3, 2, 16), groups=8, note="2 -> 2, 8 groups", calls=20),
        P.Case("g8_4to1_small", (2, 32, 32, 32), (3, 3, 4, 8), groups=8, note="4 -> 1, 8 groups", calls=20),
        P.Case(
            "g8_1to1_3d_small", (1, 10, 10, 10, 8), (3, 3, 3, 1, 8), groups=8, note="1 -> 1, 8 groups, 3-D", calls=20
        ),
        P.Case("g2_2to2_tiny", (2, 7, 7, 4), (3, 3, 2, 4), groups=2, note="2 -> 2, 2 groups, tiny", calls=200),
        P.Case("g16_1to1_small", (2, 16, 16, 16), (3, 3, 1, 16), groups=16, note="1 -> 1, 16 groups", calls=20),
    ]
    return cases + [c for c in P.conv_cases(batch) if c.dense]


def paths(case: P.Case, x, w, dy) -> dict:
    """``{(part, path): fn}`` for every evaluation of the forward, dx and dw."""
    g, G = case.geometry(), case.groups
    fns = {}
    for f in conv_module.FORMULATIONS:
        fns[("forward", f)] = lambda f=f: conv_module.conv_canonical(x, w, g, G, f)
        fns[("dx", f"col2im/{f}")] = lambda f=f: grads._input_grad(dy, w, g, G, x.shape, "col2im", f)
        fns[("dw", f"col2im/{f}")] = lambda f=f: grads._weight_grad(x, dy, g, G, w.shape, "col2im", f)
    fns[("dx", "conv")] = lambda: grads._input_grad(dy, w, g, G, x.shape, "conv")
    fns[("dw", "conv")] = lambda: grads._weight_grad(x, dy, g, G, w.shape, "conv")
    if G == 1 and case.w_shape[-2] > 4:  # taps on a dense convolution: minutes, and never chosen
        fns = {k: f for k, f in fns.items() if "taps" not in k[1]}
    return fns


def chosen(case: P.Case) -> dict:
    """The path the rules pick for each part."""
    g, G = case.geometry(), case.groups
    k, cg, cog = math.prod(g.kernel_spatial), case.w_shape[-2], case.w_shape[-1] // G
    dx_method = grads.input_grad_method(g, G, cg, cog, case.x_shape[0])
    dw_method = grads.weight_grad_method(g, G, cg, cog)
    return {
        "forward": conv_module.formulation_of(g, case.x_shape[0], case.x_shape[-1], case.w_shape[-1], G),
        "dx": "conv" if dx_method == "conv" else f"col2im/{grads.input_grad_formulation(k, cg, cog)}",
        "dw": "conv" if dw_method == "conv" else f"col2im/{grads.weight_grad_formulation(k, cg, cog, G)}",
    }


def main(argv=None):
    parser = P.argument_parser(__doc__.splitlines()[0])
    args = parser.parse_args(argv)
    batch, repeat = P.settings(args)
    cases = [c for c in grid_cases(batch) if not args.case or c.name in args.case]
    P.print_header("refws evaluation paths (float64; * = the path the rules choose)", repeat)
    rows = []
    for case in cases:
        x, w = case.operands()
        dy = np.random.default_rng(1).standard_normal(case.out_shape())
        fns = paths(case, x, w, dy)
        times = P.time_per_call(fns, repeat, case.calls)
        pick = chosen(case)
        cells = []
        for part in ("forward", "dx", "dw"):
            timed = {path: t for (p, path), t in times.items() if p == part}
            best = min(timed.values())
            text = "  ".join(f"{path}{'*' if path == pick[part] else ''} {P.duration(t)}" for path, t in timed.items())
            cells += [text, f"{timed[pick[part]] / best:.2f}"]
        rows.append([case.name, case.describe(), *cells])
        print(f"  done {case.name}", flush=True)
    print()
    print(
        P.format_table(
            ["case", "problem", "forward", "chosen/fastest", "dx", "chosen/fastest", "dw", "chosen/fastest"], rows
        )
    )
    print()
    print(f"machine after run: {P.machine()}")


if __name__ == "__main__":
    main()
