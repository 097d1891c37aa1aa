"""What building golden stores of real model sizes costs: time, store size, peak memory.

Run from the repository root:

    python benchmarks/bench_golden_build.py                       # both example catalogs, jobs 1 and 2
    python benchmarks/bench_golden_build.py --catalog examples/catalogs/resnet50.toml --jobs 2
    python benchmarks/bench_golden_build.py --quick               # smoke run: 3 cases of each catalog

For each catalog and each ``--jobs`` value, ``refws golden build --catalog FILE --out DIR --jobs N``
runs in a fresh process (timed wall clock); its peak resident memory: the build process's own
(``VmHWM`` of ``/proc/self/status`` on Linux, which starts afresh at ``exec``; ``ru_maxrss`` elsewhere,
which Linux would carry over from the process that started it) and the largest of its worker
processes (``getrusage(RUSAGE_CHILDREN)``). The stores are compared byte for byte across ``--jobs`` values (they must
be identical), sized, and the ``compact`` encoding (inputs as grid integers) is built once to
size it. For scale, the same process times refws's own float64 evaluation of every case on
random inputs (``conv``, and ``conv_vjp`` / ``conv_jvp`` where the case stores them), one
thread. Stores go to a temporary folder and are deleted afterwards.

A benchmark, not a test: nothing is asserted (except that the bytes do not depend on ``--jobs``).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CATALOGS = [ROOT / "examples" / "catalogs" / "resnet50.toml",
            ROOT / "examples" / "catalogs" / "mobilenet_v2_depthwise.toml"]

# Run inside a fresh interpreter: build, then print the peak RSS of this process and its workers.
_CHILD = """
import json, resource, sys, time
import refws.golden as g
from refws.golden.build import build
start = time.perf_counter()
summary = build(sys.argv[1], catalog=g.load_catalog(sys.argv[2]), jobs=int(sys.argv[3]))
seconds = time.perf_counter() - start
status = open("/proc/self/status").read().split("VmHWM:")[1] if sys.platform == "linux" else None
self_kib = int(status.split()[0]) if status else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
kids_kib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
print(json.dumps(dict(seconds=seconds, bytes=summary["bytes"], cases=summary["cases"],
                     rss_self_mib=self_kib / 1024, rss_workers_mib=kids_kib / 1024)))
"""


def _tree_digest(root: Path) -> dict:
    """sha256 of every file of a store (one file in memory at a time)."""
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def _build(store: Path, catalog: Path, jobs: int) -> dict:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    out = subprocess.run([sys.executable, "-c", _CHILD, str(store), str(catalog), str(jobs)],
                         check=True, capture_output=True, text=True, env=env, cwd=ROOT)
    return json.loads(out.stdout.strip().splitlines()[-1])


def _reference_seconds(catalog) -> float:
    """refws's own float64 forward + stored derivatives of every case on random inputs (one thread)."""
    import numpy as np

    import refws
    rng = np.random.default_rng(0)
    total = 0.0
    for case in catalog.cases:
        p = case.params
        kw = {k: p[k] for k in ("stride", "padding", "lhs_dilation", "rhs_dilation", "groups", "channel_first")}
        x, w = rng.uniform(-1, 1, p["x_shape"]), rng.uniform(-1, 1, p["w_shape"])
        start = time.perf_counter()
        y = refws.conv(x, w, **kw)
        if "vjp" in case.derivatives:
            refws.conv_vjp(x, w, y, **kw)
        if "jvp" in case.derivatives:
            refws.conv_jvp(x, w, x, w, **kw)
        total += time.perf_counter() - start
    return total


def _subset(catalog_path: Path, count: int, folder: Path) -> Path:
    """A catalog of the first ``count`` cases (for --quick), written as TOML."""
    from refws.golden import load_catalog
    from refws.golden.catalog_file import Catalog, dump_toml
    cat = load_catalog(catalog_path)
    small = Catalog(cat.cases[:count], str(catalog_path), cat.name + "_quick", encoding=cat.encoding)
    path = folder / (catalog_path.stem + "_quick.toml")
    path.write_text(dump_toml(small))
    return path


def _compact(catalog_path: Path, folder: Path) -> Path:
    doc = tomllib.loads(catalog_path.read_text())
    doc["encoding"] = "compact"
    path = folder / (catalog_path.stem + "_compact.json")
    path.write_text(json.dumps(doc))
    return path


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--catalog", action="append", type=Path, help="catalog file(s) (default: the two examples)")
    ap.add_argument("--jobs", action="append", type=int, help="--jobs values (default: 1 and 2)")
    ap.add_argument("--quick", action="store_true", help="only the first 3 cases of each catalog")
    ap.add_argument("--no-compact", action="store_true", help="skip the compact-encoding build")
    args = ap.parse_args(argv)
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ.setdefault(var, "1")
    from refws.golden import load_catalog
    print(f"machine: {os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f} at start")
    with tempfile.TemporaryDirectory(prefix="refws-bench-golden-") as tmp:
        tmp = Path(tmp)
        for path in args.catalog or CATALOGS:
            if args.quick:
                path = _subset(path, 3, tmp)
            cat = load_catalog(path)
            print(f"\n{cat.name}: {len(cat.cases)} cases ({path.name}, sha256 {cat.sha256[:12]})")
            stores = {}
            for jobs in args.jobs or (1, 2):
                store = tmp / f"{cat.name}-j{jobs}"
                r = _build(store, path, jobs)
                stores[jobs] = store
                print(f"  --jobs {jobs}: {r['seconds']:.1f} s, store {r['bytes'] / 2**20:.1f} MiB, peak RSS "
                      f"{r['rss_self_mib']:.0f} MiB (build process), {r['rss_workers_mib']:.0f} MiB (largest worker)")
            trees = [_tree_digest(s) for s in stores.values()]
            print(f"  stores identical across --jobs: {all(t == trees[0] for t in trees)}")
            for s in stores.values():
                shutil.rmtree(s)
            if not args.no_compact:
                r = _build(tmp / f"{cat.name}-compact", _compact(path, tmp), max(args.jobs or (2,)))
                print(f"  compact encoding: {r['bytes'] / 2**20:.1f} MiB ({r['seconds']:.1f} s)")
                shutil.rmtree(tmp / f"{cat.name}-compact")
            print(f"  refws float64 forward + derivatives on random inputs: {_reference_seconds(cat):.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
