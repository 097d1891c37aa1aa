"""Backward-convolution benchmark: refws.conv_vjp next to jax.vjp of lax.conv_general_dilated and torch autograd.

Run from the repository root:

    python benchmarks/bench_grads.py            # the figures of README.md (every case, 7 rounds)
    python benchmarks/bench_grads.py --quick    # smoke run: batch 2, 3 rounds
    python benchmarks/bench_grads.py --case main --case depthwise --repeat 15

For each case: the time of ``dx + dw`` (both cotangents from one call) for refws.conv_vjp with
its default ``method="auto"``, for a jitted ``jax.vjp`` (float64; the unused primal is dead code
for XLA) and for ``torch.autograd.grad`` on a retained float64 graph (the forward is built once,
outside the timed region); then ``dx`` alone and ``dw`` alone for each of them, and for refws
with each explicit derivation (``"col2im"``, ``"conv"``) through its private halves
``_input_grad`` / ``_weight_grad``, so the table shows what ``"auto"`` chose and what it left.
Ratios are refws time / peer time in the same run; targets: refws ``dx + dw`` within 1.5x of the
fastest peer (issue 15) and no slower than 2x jax's VJP on the main case (issue 3). Each case is
preceded by the square-matmul probe. Each peer's cotangents are compared with refws's (max abs
difference). A benchmark, not a test: nothing is asserted.
"""

from __future__ import annotations

import sys

import numpy as np

import _peers as P

METHODS = ("auto", "col2im", "conv")
PARTS = ("dx+dw", "dx", "dw")
PEERS = ("jax.vjp", "torch autograd")
TARGET_JAX = 2.0  # main case, issue 3


def refws_vjp(case: P.Case, x, w, dy):
    """Callables ``{(label, part): fn}`` and the ``"auto"`` result.

    ``refws auto`` times the public ``refws.conv_vjp`` (dx+dw) and its halves; ``refws col2im`` and
    ``refws conv`` time the private halves ``refws.grads._input_grad`` / ``_weight_grad`` with that
    method (the benchmark's layout is already canonical); the halves are left out if renamed.
    """
    result = P.refws.conv_vjp(x, w, dy, **case.kwargs())
    fns = {("refws auto", "dx+dw"): lambda: P.refws.conv_vjp(x, w, dy, **case.kwargs())}
    grads = sys.modules.get("refws.grads")
    if hasattr(grads, "_input_grad") and hasattr(grads, "_weight_grad"):
        g, G = case.geometry(), case.groups
        for method in METHODS:
            fns[(f"refws {method}", "dx")] = lambda m=method: grads._input_grad(dy, w, g, G, x.shape, m)
            fns[(f"refws {method}", "dw")] = lambda m=method: grads._weight_grad(x, dy, g, G, w.shape, m)
    return fns, result


def auto_choice(case: P.Case) -> str:
    """What ``method="auto"`` picks for dx and for dw on this case (refws.grads' rules)."""
    grads = sys.modules.get("refws.grads")
    if not hasattr(grads, "input_grad_method"):
        return "-"
    g, G, w_shape = case.geometry(), case.groups, case.w_shape
    cg, cog = w_shape[-2], w_shape[-1] // G
    dx = grads.input_grad_method(g, G, cg, cog, case.x_shape[0])
    return f"dx {dx}, dw {grads.weight_grad_method(g, G, cg, cog)}"


def jax_vjp(case: P.Case, x, w, dy):
    jx = P.load_jax()
    if jx is None:
        return None
    jax, lax = jx
    xj, wj, dyj = (jax.device_put(a) for a in (x, w, dy))
    f = P.lax_conv(case, lax)
    both = jax.jit(lambda a, b, c: jax.vjp(f, a, b)[1](c))
    dx_only = jax.jit(lambda a, b, c: jax.vjp(lambda u: f(u, b), a)[1](c)[0])
    dw_only = jax.jit(lambda a, b, c: jax.vjp(lambda v: f(a, v), b)[1](c)[0])
    fns = {
        "dx+dw": lambda: jax.block_until_ready(both(xj, wj, dyj)),
        "dx": lambda: dx_only(xj, wj, dyj).block_until_ready(),
        "dw": lambda: dw_only(xj, wj, dyj).block_until_ready(),
    }
    for fn in fns.values():  # compile outside the timing
        fn()
    dx, dw = fns["dx+dw"]()
    return fns, (np.asarray(dx), np.asarray(dw))


def torch_vjp(case: P.Case, x, w, dy):
    torch = P.load_torch()
    if torch is None:
        return None
    if case.dims not in (1, 2, 3):
        return f"no conv{case.dims}d"
    pads = case.geometry().padding
    if any(lo < 0 or hi < 0 for lo, hi in pads):
        return "negative padding"
    conv = getattr(torch.nn.functional, f"conv{case.dims}d")
    # As in the forward benchmark, asymmetric pads are applied up front: the leaf is then the
    # padded input, whose gradient costs torch the same, and is cropped back for the comparison.
    x_in, padding = P.torch_operands(case, x)
    xt = torch.from_numpy(x_in).requires_grad_(True)
    wt = torch.from_numpy(P.to_torch_w(w)).requires_grad_(True)
    dyt = torch.from_numpy(P.to_torch_x(dy))
    y = conv(
        xt,
        wt,
        stride=P._seq(case.stride, case.dims),
        padding=padding,
        dilation=P._seq(case.rhs_dilation, case.dims),
        groups=case.groups,
    )
    grad = lambda inputs: torch.autograd.grad(y, inputs, dyt, retain_graph=True)
    fns = {"dx+dw": lambda: grad((xt, wt)), "dx": lambda: grad((xt,)), "dw": lambda: grad((wt,))}
    dx, dw = fns["dx+dw"]()
    dx = P.from_torch_x(dx.numpy())
    if padding == (0,) * case.dims:  # padded up front: crop back to x
        dx = dx[(slice(None), *(slice(lo, lo + n) for (lo, _), n in zip(pads, x.shape[1:-1])))]
    return fns, (dx, P.from_torch_w(dw.numpy()))


def run_case(case: P.Case, repeat: int):
    """Seconds per call for every ``(label, part)``, the unavailable peers' reasons, the results."""
    x, w = case.operands()
    dy = np.random.default_rng(1).standard_normal(case.out_shape())
    fns, result = refws_vjp(case, x, w, dy)
    status, results = {}, {"refws auto": result}
    for label, prepare in (("jax.vjp", jax_vjp), ("torch autograd", torch_vjp)):
        prepared = prepare(case, x, w, dy)
        if prepared is None or isinstance(prepared, str):
            status[label] = P.NOT_INSTALLED if prepared is None else prepared
            continue
        for part, fn in prepared[0].items():
            fns[(label, part)] = fn
        results[label] = prepared[1]
    return P.time_per_call(fns, repeat, case.calls), status, results


def main(argv=None):
    args = P.argument_parser(__doc__.splitlines()[0]).parse_args(argv)
    batch, repeat = P.settings(args)
    cases = P.selected_cases(args, batch)
    P.print_header("refws.conv_vjp backward benchmark (float64, NHWC input, HWIO kernel)", repeat)

    labels = [f"refws {m}" for m in METHODS] + list(PEERS)
    summary, target_lines = [], []
    for case in cases:
        probe = P.dgemm_probe()
        times, status, results = run_case(case, repeat)
        print(
            f"case {case.name}: {case.describe()}; forward {case.flops() / 1e9:.3f} GFLOP "
            f"(dx and dw cost the same each); probe {probe:.0f} GFLOP/s; auto chose {auto_choice(case)}"
        )
        rows = []
        for label in labels:
            if label in status:
                rows.append([label, status[label], "-", "-", "-"])
                continue
            cells = [P.duration(times[(label, part)]) if (label, part) in times else "-" for part in PARTS]
            t = times.get((label, "dx+dw"))
            rows.append([label, *cells, f"{2 * case.flops() / t / 1e9:.2f}" if t else "-"])
        print(P.format_table(["implementation", "dx+dw", "dx", "dw", "dx+dw GFLOP/s"], rows))
        rdx, rdw = results["refws auto"]
        check = [
            [label, f"{P.max_abs_diff(rdx, results[label][0]):.1e}", f"{P.max_abs_diff(rdw, results[label][1]):.1e}"]
            for label in PEERS
            if label in results
        ]
        if check:
            print(f"max |refws - peer| (max|dx| {abs(rdx).max():.3g}, max|dw| {abs(rdw).max():.3g}):")
            print(P.format_table(["peer", "dx", "dw"], check))
        print()
        t = times[("refws auto", "dx+dw")]
        peer_times = {label: times[(label, "dx+dw")] for label in PEERS if (label, "dx+dw") in times}
        best_label, best = P.fastest(peer_times, PEERS)
        gflops = 2 * case.flops() / t / 1e9
        summary.append(
            [
                case.name,
                f"{probe:.0f}",
                P.duration(t),
                f"{gflops:.2f}",
                f"{gflops / probe:.0%}",
                *(P.ratio(t, peer_times.get(label)) for label in PEERS),
                best_label or "-",
                P.ratio(t, best),
                auto_choice(case),
            ]
        )
        if best_label is not None:
            r = t / best
            target_lines.append(
                f"target, {case.name}: refws dx+dw / fastest peer ({best_label}) = {r:.2f} <= "
                f"{P.TARGET_VS_FASTEST}: {P.verdict(r <= P.TARGET_VS_FASTEST)}"
            )
        if case.name == "main" and "jax.vjp" in peer_times:
            r = t / peer_times["jax.vjp"]
            target_lines.append(
                f"target (issue 3), main: refws dx+dw / jax.vjp = {r:.2f} <= {TARGET_JAX}: {P.verdict(r <= TARGET_JAX)}"
            )
    print('summary, dx+dw with method="auto" (ratio = refws time / peer time, same run):')
    print(
        P.format_table(
            [
                "case",
                "probe GFLOP/s",
                "refws",
                "refws GFLOP/s",
                "of probe",
                *(f"refws/{label}" for label in PEERS),
                "fastest peer",
                "refws/fastest",
                "auto chose",
            ],
            summary,
        )
    )
    print()
    for line in target_lines:
        print(line)
    print(f"machine after run: {P.machine()}")


if __name__ == "__main__":
    main()
