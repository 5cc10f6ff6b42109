"""Scaling of CoupledNMFConcepts: fit time vs N, 1 vs 2 ranks (torch.distributed, gloo), peak memory vs N.

    python benchmarks/scale.py            # ~3-5 minutes on a loaded 2-core CPU

Synthetic non-negative blocks shaped like a pixel block and two layers
(R = 784 + 512 + 128 features), d = 10 concepts, 20 multiplicative-update
iterations (tol = 0, so every run does the same work). Times are medians of
repeats; ratios are against the smallest N / one rank measured in the same run.
Peak memory is the peak resident set of a fresh process while it fits, above
its size after the imports (in memory that includes the data; out of core the
data is on disk).
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

import torch

from captum_concepts import distributed as du
from captum_concepts.concept import ActivationStore, CoupledNMFConcepts, OutOfCore
from captum_concepts.testing import run_local_ranks

ROWS = (784, 512, 128)
D, ITERS, CHUNK = 10, 20, 2500
BUDGET = "48MB"


def block_rows(start: int, stop: int):
    """Examples ``start:stop`` as ``(n, r_b)`` rows, generated per chunk (independent of the sharding)."""
    parts = [[] for _ in ROWS]
    for c in range(start // CHUNK, (stop - 1) // CHUNK + 1):
        gen = torch.Generator().manual_seed(c)
        chunk = [torch.rand(CHUNK, r, generator=gen) for r in ROWS]
        lo, hi = max(start - c * CHUNK, 0), min(stop - c * CHUNK, CHUNK)
        for p, x in zip(parts, chunk):
            p.append(x[lo:hi])
    return [torch.cat(p) for p in parts]


def make_cnmf(**kw) -> CoupledNMFConcepts:
    return CoupledNMFConcepts(D, max_iter=ITERS, tol=0.0, random_state=0, **kw)


def fit_in_memory(start: int, stop: int, distributed: bool = False) -> CoupledNMFConcepts:
    rows = block_rows(start, stop)
    return make_cnmf(distributed=distributed).fit_matrices([rows[0].t()], [x.t() for x in rows[1:]])


def timed(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def rank_worker(n: int, repeats: int) -> float:
    """On each rank: fit this rank's shard (data built outside the timing); the slowest rank's median."""
    shard = du.shard_range(n)
    rows = block_rows(shard.start, shard.stop)
    blocks = ([rows[0].t()], [x.t() for x in rows[1:]])
    seconds = timed(lambda: make_cnmf(distributed=True).fit_matrices(*blocks), repeats)
    return float(du.all_reduce_max(torch.tensor([seconds]))[0])


def child_memory(mode: str, n: int) -> None:
    """Run in a fresh process: print the peak resident memory (bytes) while fitting, above the imports.

    The data is built first (in memory, or streamed to a store on disk); the peak
    is then reset, so what is measured is what the fit holds: the data plus the
    solver's memory in memory, the budget-bound solver state out of core.
    """
    torch.set_num_threads(1)

    def status(key):
        for line in open("/proc/self/status"):
            if line.startswith(key):
                return int(line.split()[1]) * 1024

    make_cnmf().fit_matrices([torch.rand(16, 50)], [torch.rand(8, 50)])  # lazy torch state
    before = status("VmRSS")
    with tempfile.TemporaryDirectory() as tmp:
        if mode == "in-memory":
            rows = block_rows(0, n)
            blocks = ([rows[0].t()], [x.t() for x in rows[1:]])
            open("/proc/self/clear_refs", "w").write("5")
            make_cnmf().fit_matrices(*blocks)
        else:
            store = ActivationStore(os.path.join(tmp, "a.bin"), ROWS, n_pixel_blocks=1)
            for s in range(0, n, CHUNK):
                store.append(block_rows(s, min(s + CHUNK, n)))
            open("/proc/self/clear_refs", "w").write("5")
            make_cnmf(out_of_core=OutOfCore(BUDGET)).fit_store(store.close())
        print(json.dumps({"peak": status("VmHWM") - before}))


def peak_memory(mode: str, n: int) -> int:
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536", MALLOC_TRIM_THRESHOLD_="65536")
    out = subprocess.run(
        [sys.executable, __file__, "--child", mode, str(n)],
        capture_output=True,
        text=True,
        env=env,
        check=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])["peak"]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child_memory(args.child[0], int(args.child[1]))
        return
    torch.set_num_threads(1)
    sizes = [2500, 5000, 10000, 20000]
    r = sum(ROWS)
    print(f"# CoupledNMFConcepts scaling: R={r}, d={D}, {ITERS} MU iterations, 1 thread per process")
    print(f"# torch {torch.__version__}, {os.cpu_count()} CPU cores, no GPU; medians of {args.repeats}")

    print("\n## fit time vs N (one process)")
    print("| N | data (MB) | fit (s) | time ratio | N ratio |")
    print("|---|---|---|---|---|")
    base = None
    for n in sizes:
        rows = block_rows(0, n)
        blocks = ([rows[0].t()], [x.t() for x in rows[1:]])
        t = timed(lambda b=blocks: make_cnmf().fit_matrices(*b), args.repeats)
        base = base or (n, t)
        print(f"| {n} | {4 * n * r / 2**20:.0f} | {t:.3f} | {t / base[1]:.2f} | {n / base[0]:.0f} |")

    n = sizes[-1]
    print(f"\n## 1 vs 2 ranks (torch.distributed, gloo, localhost), N={n}")
    one = run_local_ranks(rank_worker, world_size=1, args=(n, args.repeats))[0]
    two = run_local_ranks(rank_worker, world_size=2, args=(n, args.repeats))[0]
    print("| ranks | fit (s) | speed-up vs 1 rank |")
    print("|---|---|---|")
    print(f"| 1 | {one:.3f} | 1.00 |")
    print(f"| 2 | {two:.3f} | {one / two:.2f} |")

    print(f"\n## peak resident memory while fitting vs N (fresh process; out-of-core budget {BUDGET})")
    print("| N | data (MB) | in-memory peak (MB) | ratio | out-of-core peak (MB) | ratio |")
    print("|---|---|---|---|---|---|")
    first = None
    for n in sizes:
        mem = peak_memory("in-memory", n)
        ooc = peak_memory("out-of-core", n)
        first = first or (mem, ooc)
        print(
            f"| {n} | {4 * n * r / 2**20:.0f} | {mem / 2**20:.1f} | {mem / first[0]:.2f} | "
            f"{ooc / 2**20:.1f} | {ooc / first[1]:.2f} |"
        )


if __name__ == "__main__":
    main()
