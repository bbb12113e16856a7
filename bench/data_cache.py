"""A worker's fixed cost of loading its dataset, with the machine's tensor cache cold and warm.

    .venv/bin/python bench/data_cache.py [--repeats 3] [--n-train 60000]

MNIST-sized IDX files (bench/data_path.py's write_mnist_sized) in a temporary data root; every
measurement is a fresh Python process, as every worker is, doing
`hpsearch.training.data.loading.load({"name": "mnist", "val_fraction": 0.1})`:
  - off:  HPSEARCH_DATA_CACHE=off, what every worker paid before the cache;
  - cold: the cache empty (the first worker: loads, splits, saves, maps back);
  - warm: the entry there (every later worker: maps it, no torchvision import).
The three kinds run in turns (off, cold, warm, off, ...) so load from other processes on a shared
machine hits them alike; medians over --repeats. Then, memory: two worker-like processes load the
data, touch every byte (as an epoch does) and, both alive, report their peak RSS (VmHWM), their
private memory (RssAnon) and their proportional share (Pss: a page shared by two counts half in
each), with the cache off and warm. Printed: the figures and the ratios measured in the same run.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))

from data_path import write_mnist_sized  # noqa: E402

# One worker's start: imports, the load, then every byte touched; memory read once the parent
# says both workers hold their data.
WORKER = r"""
import json, sys, time
t0 = time.perf_counter()
from hpsearch.training.data import loading
t1 = time.perf_counter()
d = loading.load({"name": "mnist", "val_fraction": 0.1})
t2 = time.perf_counter()
total = sum(float(getattr(d, k).double().sum()) for k in loading.TENSORS)
t3 = time.perf_counter()
out = {"import_s": t1 - t0, "load_s": t2 - t1, "touch_s": t3 - t2, "torchvision": "torchvision" in sys.modules,
       "checksum": total}
if "--hold" in sys.argv:
    print("ready", flush=True)
    sys.stdin.readline()
    status = dict(line.split(":", 1) for line in open("/proc/self/status"))
    rollup = dict(line.split(":", 1) for line in open("/proc/self/smaps_rollup").readlines()[1:])
    kb = lambda s: int(s.split()[0]) / 1024
    out.update(peak_rss_mb=kb(status["VmHWM"]), rss_anon_mb=kb(status["RssAnon"]), pss_mb=kb(rollup["Pss"]))
print(json.dumps(out), flush=True)
"""


def env_for(root: Path, cache_dir: Path, kind: str) -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(ROOT), "HPSEARCH_DATA": str(root), "OMP_NUM_THREADS": "1",
            "HPSEARCH_DATA_CACHE": "off" if kind == "off" else str(cache_dir)}


def one_load(root: Path, cache_dir: Path, kind: str) -> dict[str, Any]:
    if kind == "cold":
        for p in cache_dir.glob("*.pt"):
            p.unlink()
    t0 = time.perf_counter()
    out = subprocess.run([sys.executable, "-c", WORKER], env=env_for(root, cache_dir, kind), cwd=ROOT,
                         capture_output=True, text=True, check=True).stdout
    res = json.loads(out.strip().splitlines()[-1])
    res["process_s"] = time.perf_counter() - t0
    return res


def two_workers(root: Path, cache_dir: Path, kind: str) -> list[dict[str, Any]]:
    """Both workers loaded and holding their data at once, then each reports its memory."""
    procs = [subprocess.Popen([sys.executable, "-c", WORKER, "--hold"], env=env_for(root, cache_dir, kind),
                              cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
             for _ in range(2)]
    for p in procs:
        assert p.stdout is not None and p.stdout.readline().strip() == "ready"
    outs = [p.communicate("go\n", timeout=600)[0] for p in procs]
    return [json.loads(o.strip().splitlines()[-1]) for o in outs]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--n-train", type=int, default=60_000)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root, cache_dir = Path(tmp) / "data", Path(tmp) / "cache"
        write_mnist_sized(root, n_train=args.n_train)
        kinds = ("off", "cold", "warm")
        runs: dict[str, list[dict[str, Any]]] = {k: [] for k in kinds}
        for _ in range(args.repeats):
            for kind in kinds:
                runs[kind].append(one_load(root, cache_dir, kind))
        sums = {r["checksum"] for rs in runs.values() for r in rs}
        assert len(sums) == 1, f"every kind must load the same data, but got checksums {sums}"
        entry = next(cache_dir.glob("*.pt"))
        print(f"MNIST-sized: {args.n_train:,} + 10,000 IDX images, val_fraction 0.1; cache entry "
              f"{entry.stat().st_size / 2**20:.0f} MB; medians of {args.repeats} fresh processes per kind\n")
        print(f"{'cache':<6} {'load() s':>9} {'+ touch s':>10} {'imports s':>10} {'process s':>10} "
              f"{'torchvision imported':>21}")
        fields = ("load_s", "touch_s", "import_s", "process_s")
        med = {k: {f: statistics.median(r[f] for r in runs[k]) for f in fields} for k in kinds}
        for k in kinds:
            tv = sorted({str(r["torchvision"]) for r in runs[k]})
            print(f"{k:<6} {med[k]['load_s']:>9.2f} {med[k]['touch_s']:>10.2f} {med[k]['import_s']:>10.2f} "
                  f"{med[k]['process_s']:>10.2f} {'/'.join(tv):>21}")
        print("(+ touch: summing every tensor once, as a first epoch reads it: a mapped entry's pages fault in here)\n")
        ready = {k: med[k]["load_s"] + med[k]["touch_s"] for k in kinds}
        print(f"ratio load() off/warm: {med['off']['load_s'] / med['warm']['load_s']:.0f}x, "
              f"cold/warm: {med['cold']['load_s'] / med['warm']['load_s']:.0f}x, "
              f"cold/off: {med['cold']['load_s'] / med['off']['load_s']:.2f}x (the first worker's extra cost of saving)")
        print(f"ratio load() + touch off/warm: {ready['off'] / ready['warm']:.1f}x, cold/warm: "
              f"{ready['cold'] / ready['warm']:.1f}x")
        print(f"ratio whole process off/warm: {med['off']['process_s'] / med['warm']['process_s']:.1f}x\n")

        mem: dict[str, list[list[dict[str, Any]]]] = {"off": [], "warm": []}
        for _ in range(args.repeats):
            for kind in mem:
                mem[kind].append(two_workers(root, cache_dir, kind))
        print("two workers holding the data at once (medians; per worker, and Pss summed over both):")
        print(f"{'cache':<6} {'peak RSS MB':>12} {'RssAnon MB':>11} {'Pss MB':>8} {'Pss both MB':>12}")
        pair_pss = {}
        for kind, pairs in mem.items():
            per = {f: statistics.median(w[f] for pair in pairs for w in pair)
                   for f in ("peak_rss_mb", "rss_anon_mb", "pss_mb")}
            pair_pss[kind] = statistics.median(sum(w["pss_mb"] for w in pair) for pair in pairs)
            print(f"{kind:<6} {per['peak_rss_mb']:>12.0f} {per['rss_anon_mb']:>11.0f} {per['pss_mb']:>8.0f} "
                  f"{pair_pss[kind]:>12.0f}")
        print(f"\nratio memory of the two workers (Pss both) off/warm: {pair_pss['off'] / pair_pss['warm']:.2f}x")


if __name__ == "__main__":
    main()
