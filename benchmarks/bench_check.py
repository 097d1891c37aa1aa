"""How long `refws check` takes over the whole golden store, per backend and precision.

    python benchmarks/bench_check.py                      # torch and jax at float32 and float64
    python benchmarks/bench_check.py torch:float32 onnxruntime:float32

Targets (benchmarks, never asserted in tests): torch at float32 under 60 s on 2 cores, jax under
120 s (its time is XLA compilation, once per shape signature). Prints wall and CPU seconds and the
status counts, one line per run; each run
is a fresh process so jax's compilation cache starts empty, as it does for a user.
"""

from __future__ import annotations

import json
import subprocess
import sys

CODE = """
import json, time, resource
from refws.conformance import load_backend, run
from refws.conformance.report import json_report, totals
backend, precision = {backend!r}, {precision!r}
t0, c0 = time.perf_counter(), time.process_time()
report = run(load_backend(backend, precision))
wall, cpu = time.perf_counter() - t0, time.process_time() - c0
t = totals(json_report(report))
print(json.dumps(dict(backend=backend, precision=precision, version=report.version, wall=wall, cpu=cpu,
                      exit=report.exit_code,
                      counts={{k: v for k, v in t.items() if k != "worst_ratio" and v}})))
"""


def main(argv: list[str]) -> int:
    pairs = argv or ["torch:float32", "torch:float64", "jax:float32", "jax:float64"]
    for pair in pairs:
        backend, _, precision = pair.partition(":")
        out = subprocess.run(
            [sys.executable, "-c", CODE.format(backend=backend, precision=precision)], capture_output=True, text=True
        )
        if out.returncode != 0:
            print(f"{pair}: failed: {out.stderr.strip().splitlines()[-1] if out.stderr else out.returncode}")
            continue
        r = json.loads(out.stdout.strip().splitlines()[-1])
        print(
            f"{backend:<14} {r['precision']:<8} {r['version']:<14} wall {r['wall']:6.1f} s  cpu {r['cpu']:6.1f} s  "
            f"exit {r['exit']}  {r['counts']}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
