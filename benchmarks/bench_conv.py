"""Forward-convolution benchmark: refws.conv next to jax.lax, jax's NumPy lax_reference and torch.

Run from the repository root:

    python benchmarks/bench_conv.py            # the figures of README.md (7 rounds)
    python benchmarks/bench_conv.py --quick    # smoke run: batch 2, 3 rounds
    python benchmarks/bench_conv.py --repeat 15 --case main

float64 throughout, channels-last input and HWIO kernel (torch gets NCHW/OIHW, converted before
timing). Ratios are refws time / peer time measured in the same run (> 1: refws is slower).
Each case is preceded by the square-matmul probe, and refws's GFLOP/s is also given as a share
of it. The ``tiny`` case times 200 calls per sample and reports the time per call (the per-call
overhead). Each peer's output is compared with refws's (max abs difference) so the table
compares like with like. Dense cases also time numpy's own product of the case's im2col matrices
(columns gathered before the timing; not a peer): its share of the probe bounds refws's. A
benchmark, not a test: nothing is asserted.
"""

from __future__ import annotations

import numpy as np

import _peers as P

PEERS = [("jax.lax", P.jax_forward), ("lax_reference", P.lax_reference_forward), ("torch", P.torch_forward)]
TARGETS = {"jax.lax": ("<=", 1.5), "lax_reference": ("<=", 0.5)}  # main case, issue 2


def run_case(case: P.Case, repeat: int):
    """Prepare (and warm up) every implementation, time them interleaved, check their outputs.

    Returns seconds per call, the unavailable peers' reasons, the max abs differences, max |y|.
    """
    x, w = case.operands()
    fns, status, diffs = {}, {}, {}
    fns["refws"], y = P.refws_forward(case, x, w)
    for label, prepare in PEERS:
        prepared = prepare(case, x, w)
        if prepared is None:
            status[label] = P.NOT_INSTALLED
        elif isinstance(prepared, str):
            status[label] = prepared
        else:
            fns[label], y_peer = prepared
            diffs[label] = P.max_abs_diff(y, y_peer)
    if case.dense:
        fns[BOUND] = product_alone(case, x, w)
    times = P.time_per_call(fns, repeat, case.calls)
    return times, status, diffs, float(abs(y).max()) if y.size else 0.0


#: Not a peer: numpy's own product of a dense case's im2col matrices, the columns gathered
#: before the timing. refws's gemm formulation is this product plus the gather, so its share of
#: the matmul probe bounds refws's (and tells a slow gather from a product BLAS runs slowly).
BOUND = "product alone"


def product_alone(case: P.Case, x, w):
    """``cols @ w`` for the case (one group), with ``cols`` from ``refws.im2col`` made up front."""
    cols = P.refws.im2col(x, case.w_shape[:-2], case.stride, case.padding, 1, case.rhs_dilation)
    cols = cols.reshape(-1, cols.shape[-1] * int(np.prod(case.w_shape[:-2])))
    w2 = w.reshape(-1, case.w_shape[-1])
    return lambda: cols @ w2


def main(argv=None):
    args = P.argument_parser(__doc__.splitlines()[0]).parse_args(argv)
    batch, repeat = P.settings(args)
    cases = P.selected_cases(args, batch)
    P.print_header("refws.conv forward benchmark (float64, NHWC input, HWIO kernel)", repeat)

    timing_rows, check_rows, target_lines, results = [], [], [], {}
    for case in cases:
        probe = P.dgemm_probe()
        times, status, diffs, y_max = run_case(case, repeat)
        results[case.name] = times
        t = times["refws"]
        gflops = case.flops() / t / 1e9
        best_label, best = P.fastest(times, [label for label, _ in PEERS])
        row = [
            case.name,
            case.describe(),
            f"{probe:.0f}",
            f"{case.flops() / 1e9:.3f}",
            P.duration(t),
            f"{gflops:.2f}",
            f"{gflops / probe:.0%}",
        ]
        check = [case.name, f"{y_max:.3g}"]
        for label, _ in PEERS:
            if label in times:
                row += [P.duration(times[label]), P.ratio(t, times[label])]
                check.append(f"{diffs[label]:.1e}")
            else:
                row += [status[label], "-"]
                check.append(status[label])
        bound_share = case.flops() / times[BOUND] / 1e9 / probe if BOUND in times else None
        row += [best_label or "-", P.ratio(t, best), "-" if bound_share is None else f"{bound_share:.0%}"]
        timing_rows.append(row)
        check_rows.append(check)
        target_lines += case_targets(case, t, best_label, best, gflops / probe, bound_share)
        print(f"  done {case.name}", flush=True)
    print()

    header = ["case", "problem", "probe GFLOP/s", "GFLOP", "refws", "refws GFLOP/s", "of probe"]
    for label, _ in PEERS:
        header += [label, f"refws/{label}"]
    header += ["fastest peer", "refws/fastest", "product alone, of probe"]
    print(P.format_table(header, timing_rows))
    print()
    print(
        "times per call (median of the rounds); ratio = refws time / peer time, same run (> 1: refws "
        "slower). lax_reference skips grouped cases: it has no feature_group_count."
    )
    print()
    print("max abs difference refws - peer (agreement check; max abs y for scale):")
    print(P.format_table(["case", "max abs y"] + [label for label, _ in PEERS], check_rows))
    print()
    for line in target_lines:
        print(line)
    if "main" in results:
        main_times = results["main"]
        for label, (op, bound) in TARGETS.items():
            if label in main_times:
                r = main_times["refws"] / main_times[label]
                print(f"target (issue 2), main: refws/{label} = {r:.2f} {op} {bound}: {P.verdict(r <= bound)}")
    print(f"machine after run: {P.machine()}")


def case_targets(case: P.Case, t: float, best_label, best: float, probe_share: float, bound_share=None) -> list[str]:
    """The issue-15 target lines of one forward case (``bound_share``: numpy's product alone)."""
    lines = []
    if best_label is not None:
        r = t / best
        lines.append(
            f"target, {case.name}: refws / fastest peer ({best_label}) = {r:.2f} <= "
            f"{P.TARGET_VS_FASTEST}: {P.verdict(r <= P.TARGET_VS_FASTEST)}"
        )
    if case.dense:
        lines.append(
            f"target, {case.name}: refws at {probe_share:.0%} of the matmul probe >= "
            f"{P.TARGET_PROBE_SHARE:.0%}: {P.verdict(probe_share >= P.TARGET_PROBE_SHARE)}"
            + ("" if bound_share is None else f" (numpy's product alone of the same matrices: {bound_share:.0%})")
        )
    if case.calls > 1:
        lines.append(
            f"target, {case.name}: refws {t * 1e6:.0f} us per call <= {P.TARGET_TINY_SECONDS * 1e6:.0f} us: "
            f"{P.verdict(t <= P.TARGET_TINY_SECONDS)}"
        )
    return lines


if __name__ == "__main__":
    main()
