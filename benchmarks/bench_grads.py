"""Backward-convolution benchmark: refws.conv_vjp next to jax.vjp of lax.conv_general_dilated and torch autograd.

Run from the repository root:

    python benchmarks/bench_grads.py            # the figures of README.md (main case, 7 rounds)
    python benchmarks/bench_grads.py --quick    # smoke run: batch 2, 3 rounds
    python benchmarks/bench_grads.py --case main --case strided --repeat 15

For each case: the time of ``dx + dw`` (both cotangents from one call) for refws.conv_vjp with
``method="col2im"`` and ``method="conv"``, for a jitted ``jax.vjp`` (float64; the unused primal
is dead code for XLA) and for ``torch.autograd.grad`` on a retained float64 graph (the forward
is built once, outside the timed region). The peers are also timed for ``dx`` alone and ``dw``
alone (refws: through its private halves ``_input_grad`` / ``_weight_grad``). Ratios are refws time / jax time in the same run; the target of issue 3 is
refws ``dx + dw`` no slower than 2x jax's VJP. Each peer's cotangents are compared with
refws's (max abs difference). A benchmark, not a test: nothing is asserted.
"""

from __future__ import annotations

import sys

import numpy as np

import _peers as P

METHODS = ("col2im", "conv")
PARTS = ("dx+dw", "dx", "dw")
TARGET = 2.0


def refws_vjp(case: P.Case, x, w, dy, method):
    """Callables ``{"dx+dw", "dx", "dw"}`` and the result, or a reason string when unavailable.

    ``dx+dw`` is the public ``refws.conv_vjp``. ``dx`` and ``dw`` alone call the private halves
    ``refws.grads._input_grad`` / ``_weight_grad`` on the canonical operands (the benchmark's
    layout is already canonical); they are left out if those helpers are renamed.
    """
    fn = lambda: P.refws.conv_vjp(x, w, dy, method=method, **case.kwargs())
    try:
        result = fn()
    except NotImplementedError as e:
        return f"not implemented yet ({e})"
    fns = {"dx+dw": fn}
    grads = sys.modules.get("refws.grads")
    if hasattr(grads, "_input_grad") and hasattr(grads, "_weight_grad"):
        g, G = case.geometry(), case.groups
        fns["dx"] = lambda: grads._input_grad(dy, w, g, G, x.shape, method)
        fns["dw"] = lambda: grads._weight_grad(x, dy, g, G, w.shape, method)
    return fns, result


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
    for fn in fns.values():                                   # compile outside the timing
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
    y = conv(xt, wt, stride=P._seq(case.stride, case.dims), padding=padding,
             dilation=P._seq(case.rhs_dilation, case.dims), groups=case.groups)
    grad = lambda inputs: torch.autograd.grad(y, inputs, dyt, retain_graph=True)
    fns = {"dx+dw": lambda: grad((xt, wt)), "dx": lambda: grad((xt,)), "dw": lambda: grad((wt,))}
    dx, dw = fns["dx+dw"]()
    dx = P.from_torch_x(dx.numpy())
    if padding == (0,) * case.dims:                       # padded up front: crop back to x
        dx = dx[(slice(None), *(slice(lo, lo + n) for (lo, _), n in zip(pads, x.shape[1:-1])))]
    return fns, (dx, P.from_torch_w(dw.numpy()))


def run_case(case: P.Case, repeat: int):
    x, w = case.operands()
    dy = np.random.default_rng(1).standard_normal(case.out_shape())
    fns, status, results = {}, {}, {}
    for method in METHODS:
        prepared = refws_vjp(case, x, w, dy, method)
        label = f"refws {method}"
        if isinstance(prepared, str):
            status[label] = prepared
        else:
            for part, fn in prepared[0].items():
                fns[(label, part)] = fn
            results[label] = prepared[1]
    for label, prepare in (("jax.vjp", jax_vjp), ("torch autograd", torch_vjp)):
        prepared = prepare(case, x, w, dy)
        if prepared is None or isinstance(prepared, str):
            status[label] = P.NOT_INSTALLED if prepared is None else prepared
            continue
        for part, fn in prepared[0].items():
            fns[(label, part)] = fn
        results[label] = prepared[1]
    times = P.time_interleaved(fns, repeat)
    return times, status, results


def main(argv=None):
    args = P.argument_parser(__doc__.splitlines()[0]).parse_args(argv)
    batch, repeat = P.settings(args)
    names = args.case or ["main"]
    cases = [c for c in P.conv_cases(batch) if c.name in names]
    P.print_header("refws.conv_vjp backward benchmark (float64, NHWC input, HWIO kernel)", repeat)

    labels = [f"refws {m}" for m in METHODS] + ["jax.vjp", "torch autograd"]
    for case in cases:
        times, status, results = run_case(case, repeat)
        print(f"case {case.name}: {case.describe()}; forward {case.flops() / 1e9:.3f} GFLOP "
              "(dx and dw cost the same each)")
        jax_both = times.get(("jax.vjp", "dx+dw"))
        rows = []
        for label in labels:
            if label in status:
                rows.append([label, status[label], "-", "-", "-", "-"])
                continue
            cells = [P.ms(times[(label, part)]) if (label, part) in times else "-" for part in PARTS]
            t = times[(label, "dx+dw")]
            gflops = f"{2 * case.flops() / t / 1e9:.2f}"
            rows.append([label, *cells, gflops, P.ratio(t, jax_both)])
        print(P.format_table(["implementation", "dx+dw ms", "dx ms", "dw ms", "dx+dw GFLOP/s",
                              "ratio to jax.vjp (dx+dw)"], rows))
        print()
        ref_label = next((lb for lb in labels[:2] if lb in results), None)
        if ref_label is None:
            print("refws.conv_vjp: not available, no agreement check and no target check")
        else:
            rdx, rdw = results[ref_label]
            check = [[label, f"{P.max_abs_diff(rdx, results[label][0]):.1e}",
                      f"{P.max_abs_diff(rdw, results[label][1]):.1e}"]
                     for label in labels if label in results and label != ref_label]
            print(f"max |{ref_label} - other| (max|dx| {abs(rdx).max():.3g}, max|dw| {abs(rdw).max():.3g}):")
            print(P.format_table(["implementation", "dx", "dw"], check))
            for label in labels[:2]:
                if label in results and jax_both is not None:
                    r = times[(label, "dx+dw")] / jax_both
                    print(f"target, {case.name}: {label} dx+dw / jax.vjp = {r:.2f} <= {TARGET}: "
                          f"{'met' if r <= TARGET else 'NOT met'}")
        print()
    print(f"machine after run: {P.machine()}")


if __name__ == "__main__":
    main()
