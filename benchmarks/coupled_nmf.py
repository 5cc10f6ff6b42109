"""CoupledNMFConcepts.fit vs scikit-learn NMF on the stacked matrix (issue 6).

For each N, in one run and from the same random start:

1. scikit-learn ``NMF(solver="cd")`` and ``NMF(solver="mu")`` (``tol=1e-4``,
   ``init="custom"``) on the stacked float32 matrix ``[D_0; ...; A_L]^T``; the
   lowest final error of the two is the *target* and that solver's wall time the
   baseline (the time to stack the blocks is not charged to scikit-learn).
2. Ours: a calibration run finds the first iteration ``K`` at which our
   objective (the same squared Frobenius error) is at or below the target; the
   timed runs are then ``fit_matrices(..., max_iter=K, tol=0)`` end to end
   (validation, data moments, start, solver), median of the repeats.
3. Peak memory of our fit: resident memory sampled every 2 ms in a thread
   during the fit, relative to the input data (the blocks), and the same for
   scikit-learn (whose input is the stacked copy).

Data: 5 blocks like a 32x32 RGB input and two layers (1024, 1024, 1024, 8192,
4096 rows = 15,360 stacked rows), each ``relu(W_b F + noise)`` with sparse
non-negative rank-20 factors and 30 % noise; d = 20.

4. ``--memory-only``: peak memory of ``fit_matrices`` on contiguous and on
   transposed blocks and of ``fit`` through a model's layer at N = 10,000,
   measured exactly with the kernel's resident high-water mark (``VmHWM``,
   reset through ``/proc/self/clear_refs`` before each call; tracemalloc does
   not see torch's allocations). Target: data + 30 MiB.

Run: ``python benchmarks/coupled_nmf.py [--sizes 1000 10000] [--threads 1] [--memory-only]``.
"""

from __future__ import annotations

import argparse
import gc
import os
import statistics
import threading
import time
import warnings
from datetime import datetime, timezone

import numpy as np
import torch
from sklearn.decomposition import NMF
from threadpoolctl import threadpool_limits

from captum_concepts.concept import CoupledNMFConcepts

ROWS = (1024, 1024, 1024, 8192, 4096)  # 3 pixel channels, 2 layers
N_PIXEL_BLOCKS = 3
RANK = 20


def make_blocks(n: int, seed: int = 0) -> list:
    g = torch.Generator().manual_seed(seed)
    F = (torch.rand(RANK, n, generator=g) < 0.3) * torch.rand(RANK, n, generator=g)
    blocks = []
    for r in ROWS:
        W = (torch.rand(r, RANK, generator=g) < 0.2) * torch.rand(r, RANK, generator=g)
        X = W @ F
        scale = 0.3 * float(X.mean())
        for chunk in X.split(512):  # in place, chunk by chunk: no second copy of the data
            chunk.add_(torch.randn(chunk.shape, generator=g).mul_(scale)).clamp_(min=0)
        blocks.append(X)
    return blocks


class PeakRSS:
    """Peak resident memory above the level at entry, sampled in a thread."""

    def __init__(self, every: float = 0.002) -> None:
        self.every = every
        self.page = os.sysconf("SC_PAGE_SIZE")

    def _rss(self) -> int:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * self.page

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self._rss())
            time.sleep(self.every)

    def __enter__(self) -> PeakRSS:
        gc.collect()
        self.base = self.peak = self._rss()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self._rss())

    @property
    def extra(self) -> int:
        return self.peak - self.base


def peak_rss_reset() -> None:
    """Reset the kernel's peak-resident-memory counter (VmHWM) of this process (Linux)."""
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")


def _status_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def peak_extra(run) -> float:
    """MiB by which ``run()`` raises the process's peak resident memory above its level before.

    Exact, not sampled: the kernel's high-water mark (VmHWM) is reset just before
    the call and read right after it (tracemalloc does not see torch's allocations).
    """
    gc.collect()
    base = _status_kib("VmRSS")
    peak_rss_reset()
    run()
    return (_status_kib("VmHWM") - base) / 1024


def memory_check(n: int, repeats: int = 1) -> None:
    """Peak memory of fit_matrices (contiguous and transposed blocks) and of fit (a model's layer).

    The target: data + 30 MiB (the factors and statistics of d = 20 at N = 10,000 need
    about 4 * d * (N + 3 R) bytes, a few MiB).
    """
    g = torch.Generator().manual_seed(0)
    x = torch.rand(n, 3000, generator=g)  # examples x features
    data_mb = x.numel() * 4 / 2**20
    kw = dict(solver="hals", max_iter=5, tol=0)
    cases = {
        "fit_matrices, contiguous (features, N)": [x.t().contiguous()],
        "fit_matrices, transposed view of (N, features)": [x.t()],
    }
    print(f"\n# peak memory, N={n}, d={RANK}: resident high-water mark (VmHWM) reset before each call")
    for name in list(cases):
        blocks = cases.pop(name)

        def ours_fit(blocks=blocks):
            return CoupledNMFConcepts(RANK, **kw).fit_matrices(blocks)

        ours_fit()  # warm-up: allocator pools, BLAS buffers
        extra = min(peak_extra(ours_fit) for _ in range(repeats))
        verdict = "ok" if extra <= 30 else "OVER"
        print(f"  {name:48s}: data {data_mb:6.1f} MiB + {extra:6.1f} MiB  ({verdict})")
        del blocks, ours_fit
    cases.clear()
    del x
    images = torch.rand(n, 1, 32, 32, generator=g)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(1024, 2048), torch.nn.ReLU()).eval()
    acts_mb = n * 2048 * 4 / 2**20
    fit = lambda: CoupledNMFConcepts(RANK, model, layers=["2"], **kw).fit(images)  # noqa: E731
    fit()
    extra = min(peak_extra(fit) for _ in range(repeats))
    over = extra - acts_mb
    print(
        f"  {'fit(), 1x32x32 inputs + a 2048-unit layer':48s}: inputs {images.numel() * 4 / 2**20:.1f} MiB "
        f"(pixel block = a view), activations {acts_mb:.1f} MiB + {over:6.1f} MiB  "
        f"({'ok' if over <= 30 else 'OVER'})"
    )


def ours(blocks, **kwargs) -> CoupledNMFConcepts:
    est = CoupledNMFConcepts(RANK, **kwargs)
    return est.fit_matrices(blocks[:N_PIXEL_BLOCKS], blocks[N_PIXEL_BLOCKS:])


def sklearn_fit(M_T: np.ndarray, W0: np.ndarray, F0: np.ndarray, solver: str, max_iter: int):
    nmf = NMF(RANK, solver=solver, beta_loss="frobenius", init="custom", max_iter=max_iter, tol=1e-4)
    start = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        W = nmf.fit_transform(M_T, W=F0.T.copy(), H=W0.T.copy())
    seconds = time.perf_counter() - start
    error = float(np.square(M_T - W @ nmf.components_, dtype=np.float64).sum())
    return seconds, error, nmf.n_iter_


def bench(n: int, repeats: int, mu_iter: int) -> dict:
    blocks = make_blocks(n)
    data_bytes = sum(b.numel() * b.element_size() for b in blocks)
    start = ours(blocks, normalize_columns=False, max_iter=0)  # the shared random start
    W0 = torch.cat(start.pixel_factors_ + start.neuron_factors_).numpy()
    F0 = start.example_factors_.numpy()
    t = time.perf_counter()
    M_T = np.ascontiguousarray(torch.cat(blocks).numpy().T)  # scikit-learn: samples = examples
    stack_seconds = time.perf_counter() - t

    sk = {}
    for solver, max_iter in (("cd", 200), ("mu", mu_iter)):
        runs = [sklearn_fit(M_T, W0, F0, solver, max_iter) for _ in range(repeats if solver == "cd" else 1)]
        sk[solver] = (statistics.median(r[0] for r in runs), runs[0][1], runs[0][2])
    with PeakRSS() as sk_mem:
        sklearn_fit(M_T, W0, F0, "cd", 200)
    sk_extra = sk_mem.extra
    del M_T
    best = min(sk, key=lambda s: sk[s][1])
    target = sk[best][1]

    result = {"n": n, "data_mb": data_bytes / 2**20, "stack_s": stack_seconds, "sk": sk, "best": best}
    for solver in ("hals", "mu"):
        # calibration budget: twice scikit-learn cd's iterations (+20) for HALS, mu_iter for MU
        budget = 2 * sk["cd"][2] + 20 if solver == "hals" else mu_iter
        calib = ours(blocks, solver=solver, max_iter=budget, tol=0)
        history = np.asarray(calib.loss_history_)
        reached = np.nonzero(history <= target)[0]
        if len(reached) == 0:
            result[solver] = dict(k=None, final=history[-1], iters=len(history) - 1)
            continue
        k = int(reached[0])
        times = []
        for _ in range(repeats):
            t = time.perf_counter()
            est = ours(blocks, solver=solver, max_iter=k, tol=0)
            times.append(time.perf_counter() - t)
            assert est.loss_history_[-1] <= target
        result[solver] = dict(k=k, seconds=statistics.median(times), final=est.loss_history_[-1])
    with PeakRSS() as mem:
        ours(blocks, solver="hals", max_iter=max(result["hals"]["k"] or 10, 1), tol=0)
    result["peak_ratio"] = (data_bytes + mem.extra) / data_bytes
    result["extra_mb"] = mem.extra / 2**20
    result["sk_extra_mb"] = sk_extra / 2**20
    result["target"] = target
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1000, 10000])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1, help="torch and BLAS threads for both sides")
    parser.add_argument("--mu-iter", type=int, default=100, help="max_iter of scikit-learn mu and ours mu")
    parser.add_argument("--memory-only", action="store_true", help="only the peak-memory check (N=10,000)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.memory_only:
        with threadpool_limits(args.threads):
            memory_check(10_000)
        return
    print(
        f"# coupled NMF benchmark, {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC, "
        f"{os.cpu_count()}-core CPU, "
        f"no GPU, {args.threads} thread(s) each side, load average at start {os.getloadavg()[0]:.1f}"
    )
    print(f"# blocks {ROWS} (R={sum(ROWS)}), d={RANK}, float32, repeats={args.repeats} (median)")
    with threadpool_limits(args.threads):
        for n in args.sizes:
            r = bench(n, args.repeats if n <= 2000 else 1, args.mu_iter)
            cd_s, cd_err, cd_it = r["sk"]["cd"]
            mu_s, mu_err, mu_it = r["sk"]["mu"]
            base_s = r["sk"][r["best"]][0]
            print(
                f"\nN={n}: data {r['data_mb']:.0f} MiB; "
                f"stacking for scikit-learn {r['stack_s']:.2f} s (not charged)"
            )
            print(f"  target error (best scikit-learn, {r['best']}): {r['target']:.6g}")
            print(f"  sklearn cd : {cd_s:8.2f} s  {cd_it:4d} it  error {cd_err:.6g}")
            print(f"  sklearn mu : {mu_s:8.2f} s  {mu_it:4d} it  error {mu_err:.6g}")
            for solver in ("hals", "mu"):
                o = r[solver]
                if o["k"] is None:
                    print(
                        f"  ours {solver:4s} : target not reached in {o['iters']} it (error {o['final']:.6g})"
                    )
                else:
                    print(
                        f"  ours {solver:4s} : {o['seconds']:8.2f} s  {o['k']:4d} it  error {o['final']:.6g}"
                        f"  -> {base_s / o['seconds']:.2f}x vs best scikit-learn"
                    )
            print(
                f"  peak memory of our fit: data + {r['extra_mb']:.1f} MiB = "
                f"{r['peak_ratio']:.3f}x the input data; "
                f"scikit-learn cd: stacked copy {r['data_mb']:.0f} MiB + {r['sk_extra_mb']:.1f} MiB"
            )
    print(f"\n# load average at end {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
