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

``--per-case`` (Linux) also builds every case alone in one fresh process and prints, per case, the
evaluation and the writing time, refws's own convolutions of the same shapes, and the peak
resident memory the case added (``VmHWM`` reset through ``/proc/self/clear_refs`` before each case,
minus the resident memory before it) against the bytes of the case's own arrays and the
workspace budget.

Every timing also gives the CPU seconds spent, by the build (its process and workers) and by
everything else on the machine meanwhile (``/proc/stat`` on Linux): on a shared machine a
``--jobs 2`` time means something only when the others' share is near zero. ``--repeat N`` runs
every build and the reference N times, interleaved, and keeps each one's fastest run (with its CPU
figures).

A benchmark, not a test: nothing is asserted (except that the bytes do not depend on ``--jobs``).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CATALOGS = [
    ROOT / "examples" / "catalogs" / "resnet50.toml",
    ROOT / "examples" / "catalogs" / "mobilenet_v2_depthwise.toml",
]

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

# The per-case script writes like a build in one process: no fsync inline (a build fsyncs on
# another thread), the fsync timed apart.


# Per case, in one fresh interpreter: time evaluation and writing, and the peak RSS each case adds.
_PER_CASE = """
import json, sys, tempfile, time
import refws.golden as g
from refws.golden.evaluate import evaluate
from refws.golden.store import case_path, encode_arrays, fsync_file, npz_parts, write_case_parts
from refws.im2col import get_workspace_bytes

def kib(key):
    return int(open("/proc/self/status").read().split(key + ":")[1].split()[0])

cat = g.load_catalog(sys.argv[1])
out = tempfile.mkdtemp(prefix="refws-bench-case-")
for case in cat.cases:
    with open("/proc/self/clear_refs", "w") as fh:
        fh.write("5")                                   # VmHWM := VmRSS
    base = kib("VmRSS")
    t0 = time.perf_counter()
    arrays, terms = evaluate(case)
    t1 = time.perf_counter()
    written, meta = encode_arrays(arrays, set(terms), cat.encoding)
    parts = npz_parts(written)                          # the zip's CRC-32 on the way
    parts.sha256
    write_case_parts(out, case.name, parts, fsync=False)
    t2 = time.perf_counter()
    fsync_file(case_path(out, case.name), evict=True)
    t3 = time.perf_counter()
    size = sum(a.nbytes for a in written.values())
    del arrays, written, parts
    print(json.dumps(dict(name=case.name, eval_s=t1 - t0, write_s=t2 - t1, fsync_s=t3 - t2, arrays_mib=size / 2**20,
                          peak_mib=(kib("VmHWM") - base) / 1024, workspace_mib=get_workspace_bytes() / 2**20)))
import shutil; shutil.rmtree(out)
"""


def _per_case(catalog: Path) -> None:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    out = subprocess.run(
        [sys.executable, "-c", _PER_CASE, str(catalog)], check=True, capture_output=True, text=True, env=env, cwd=ROOT
    )
    rows = [json.loads(line) for line in out.stdout.splitlines() if line.startswith("{")]
    ref = _reference_seconds_by_case(catalog)
    print(
        "  per case (eval; CRC-32 + SHA-256 + write; fsync; refws convs; "
        "peak RSS added vs the case's arrays + workspace budget):"
    )
    for r in rows:
        print(
            f"    {r['name']:44s} {r['eval_s']:6.3f} s {r['write_s']:6.3f} s {r['fsync_s']:6.3f} s "
            f"{ref[r['name']]:6.3f} s   peak +{r['peak_mib']:6.0f} MiB, arrays {r['arrays_mib']:6.0f} MiB"
        )
    worst = max(rows, key=lambda r: r["peak_mib"] - r["arrays_mib"])
    print(
        f"  totals: eval {sum(r['eval_s'] for r in rows):.2f} s, write {sum(r['write_s'] for r in rows):.2f} s, "
        f"fsync {sum(r['fsync_s'] for r in rows):.2f} s, refws convs {sum(ref.values()):.2f} s; largest peak "
        f"beyond the case's arrays: {worst['peak_mib'] - worst['arrays_mib']:.0f} MiB ({worst['name']}; "
        f"workspace budget {worst['workspace_mib']:.0f} MiB)"
    )


def _tree_digest(root: Path) -> dict:
    """sha256 of every file of a store (one file in memory at a time)."""
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def _busy_seconds() -> float:
    """CPU seconds the whole machine has spent busy since boot (Linux; 0 elsewhere)."""
    try:
        with open("/proc/stat") as fh:
            ticks = [int(v) for v in fh.readline().split()[1:]]
    except OSError:
        return 0.0
    return (sum(ticks) - ticks[3] - ticks[4]) / os.sysconf("SC_CLK_TCK")  # all but idle and iowait


def _own_seconds() -> float:
    """CPU seconds of this process and its finished children."""
    me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


def _measured(run) -> dict:
    """``run()``'s result (a dict) with ``cpu_s``, the CPU seconds of this process and its children
    meanwhile, and ``others_s``, those of everything else on the machine."""
    busy, own = _busy_seconds(), _own_seconds()
    result = run()
    cpu = _own_seconds() - own
    return dict(result, cpu_s=cpu, others_s=max(0.0, _busy_seconds() - busy - cpu))


def _build(store: Path, catalog: Path, jobs: int) -> dict:
    env = dict(os.environ, PYTHONPATH=str(ROOT))

    def run():
        out = subprocess.run(
            [sys.executable, "-c", _CHILD, str(store), str(catalog), str(jobs)],
            check=True,
            capture_output=True,
            text=True,
            env=env,
            cwd=ROOT,
        )
        return json.loads(out.stdout.strip().splitlines()[-1])

    return _measured(run)


def _reference_seconds_by_case(catalog) -> dict:
    """refws's own float64 forward + stored derivatives of every case on random inputs (one thread)."""
    import numpy as np

    import refws
    from refws.golden import load_catalog

    catalog = catalog if not isinstance(catalog, (str, Path)) else load_catalog(catalog)
    rng = np.random.default_rng(0)
    seconds = {}
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
        seconds[case.name] = time.perf_counter() - start
    return seconds


def _reference(catalog) -> dict:
    return _measured(lambda: dict(seconds=sum(_reference_seconds_by_case(catalog).values())))


def _cpu(r: dict) -> str:
    return f"CPU {r['cpu_s']:.1f} s, others {r['others_s']:.1f} s"


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


def _fastest(runs: dict, key, result: dict) -> None:
    if key not in runs or result["seconds"] < runs[key]["seconds"]:
        runs[key] = result


def _measure_catalog(cat, path: Path, jobs_values, repeat: int, tmp: Path) -> dict:
    """The fastest of ``repeat`` interleaved runs of each build and of the reference; the stores of
    the last builds are left in ``tmp``."""
    runs: dict = {}
    for _ in range(repeat):
        for jobs in jobs_values:
            store = tmp / f"{cat.name}-j{jobs}"
            shutil.rmtree(store, ignore_errors=True)
            _fastest(runs, jobs, _build(store, path, jobs))
        _fastest(runs, "reference", _reference(cat))
    return runs


def _report_catalog(cat, path: Path, args, tmp: Path) -> None:
    print(f"\n{cat.name}: {len(cat.cases)} cases ({path.name}, sha256 {cat.sha256[:12]})")
    jobs_values = args.jobs or (1, 2)
    runs = _measure_catalog(cat, path, jobs_values, args.repeat, tmp)
    ref = runs["reference"]
    print(f"  refws float64 forward + derivatives on random inputs: {ref['seconds']:.2f} s ({_cpu(ref)})")
    for jobs in jobs_values:
        r = runs[jobs]
        print(
            f"  --jobs {jobs}: {r['seconds']:.2f} s = {r['seconds'] / ref['seconds']:.1f}x refws ({_cpu(r)}), "
            f"store {r['bytes'] / 2**20:.1f} MiB, peak RSS {r['rss_self_mib']:.0f} MiB (build process), "
            f"{r['rss_workers_mib']:.0f} MiB (largest worker)"
        )
    stores = [tmp / f"{cat.name}-j{jobs}" for jobs in jobs_values]
    trees = [_tree_digest(s) for s in stores]
    print(f"  stores identical across --jobs: {all(t == trees[0] for t in trees)}")
    for s in stores:
        shutil.rmtree(s)
    if not args.no_compact:
        r = _build(tmp / f"{cat.name}-compact", _compact(path, tmp), max(jobs_values))
        print(f"  compact encoding: {r['bytes'] / 2**20:.1f} MiB ({r['seconds']:.1f} s)")
        shutil.rmtree(tmp / f"{cat.name}-compact")
    if args.per_case:
        _per_case(path)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--catalog", action="append", type=Path, help="catalog file(s) (default: the two examples)")
    ap.add_argument("--jobs", action="append", type=int, help="--jobs values (default: 1 and 2)")
    ap.add_argument("--quick", action="store_true", help="only the first 3 cases of each catalog")
    ap.add_argument("--no-compact", action="store_true", help="skip the compact-encoding build")
    ap.add_argument("--per-case", action="store_true", help="time and peak memory case by case (Linux)")
    ap.add_argument("--repeat", type=int, default=1, help="interleaved runs of every build; the fastest kept")
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
            _report_catalog(load_catalog(path), path, args, tmp)
    return 0


if __name__ == "__main__":
    sys.exit(main())
