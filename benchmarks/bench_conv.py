"""Forward-convolution benchmark: refws.conv next to jax.lax, jax's NumPy lax_reference and torch.

Run from the repository root:

    python benchmarks/bench_conv.py            # the figures of README.md (7 rounds)
    python benchmarks/bench_conv.py --quick    # smoke run: batch 2, 3 rounds
    python benchmarks/bench_conv.py --repeat 15 --case main

float64 throughout, channels-last input and HWIO kernel (torch gets NCHW/OIHW, converted before
timing). Ratios are refws time / peer time measured in the same run (> 1: refws is slower).
Each peer's output is compared with refws's (max abs difference) so the table compares like
with like. A benchmark, not a test: nothing is asserted.
"""

from __future__ import annotations

import math

import _peers as P

PEERS = [("jax.lax", P.jax_forward), ("lax_reference", P.lax_reference_forward), ("torch", P.torch_forward)]
TARGETS = {"jax.lax": ("<=", 1.5), "lax_reference": ("<=", 0.5)}   # main case, issue 2


def run_case(case: P.Case, repeat: int):
    """Prepare (and warm up) every implementation, time them interleaved, check their outputs."""
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
    times = P.time_interleaved(fns, repeat)
    return times, status, diffs, float(abs(y).max()) if y.size else 0.0


def main(argv=None):
    args = P.argument_parser(__doc__.splitlines()[0]).parse_args(argv)
    batch, repeat = P.settings(args)
    cases = [c for c in P.conv_cases(batch) if not args.case or c.name in args.case]
    P.print_header("refws.conv forward benchmark (float64, NHWC input, HWIO kernel)", repeat)

    timing_rows, check_rows, notes, results = [], [], set(), {}
    for case in cases:
        times, status, diffs, y_max = run_case(case, repeat)
        results[case.name] = times
        t = times["refws"]
        row = [case.name, case.describe(), f"{case.flops() / 1e9:.3f}", P.ms(t),
               f"{case.flops() / t / 1e9:.2f}"]
        check = [case.name, f"{y_max:.3g}"]
        for label, _ in PEERS:
            if label in times:
                row += [P.ms(times[label]), P.ratio(t, times[label])]
                check.append(f"{diffs[label]:.1e}")
            else:
                row += [status[label], "-"]
                check.append(status[label])
                notes.add(f"{label}: {status[label]}")
        timing_rows.append(row)
        check_rows.append(check)
        print(f"  done {case.name}", flush=True)
    print()

    header = ["case", "problem", "GFLOP", "refws ms", "refws GFLOP/s"]
    for label, _ in PEERS:
        header += [f"{label} ms", f"refws/{label}"]
    print(P.format_table(header, timing_rows))
    print()
    print("ratio = refws time / peer time, same run (> 1: refws slower). "
          "lax_reference skips grouped cases: it has no feature_group_count.")
    print()
    print("max abs difference refws - peer (agreement check; max abs y for scale):")
    print(P.format_table(["case", "max abs y"] + [label for label, _ in PEERS], check_rows))
    print()
    if "main" in results:
        main_times = results["main"]
        for label, (op, bound) in TARGETS.items():
            if label in main_times:
                r = main_times["refws"] / main_times[label]
                met = r <= bound
                print(f"target, main case: refws/{label} = {r:.2f} {op} {bound}: {'met' if met else 'NOT met'}")
            else:
                print(f"target, main case: refws/{label}: peer not available")
    print(f"machine after run: {P.machine()}")


if __name__ == "__main__":
    main()
