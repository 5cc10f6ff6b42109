"""Benchmark: EmbeddingAttribution vs the way a Captum user does it today.

Baseline (measured in the same run): one ``captum.attr.LayerGradientXActivation`` call per
embedding dimension on ``model.embed`` (each result detached, otherwise every call keeps its
graph alive), then the same channel/embedding aggregation. Ours: one
``EmbeddingAttribution(method="activation_gradient")`` call.

Model: a 3-conv CNN (``DigitsCNN(in_channels=3, image_size=32, width=16, embedding_dim=D)``,
random weights), 16 random images of 32x32, D in {16, 64, 256}, source layers block1.relu /
block2.relu / block3.relu (32x32x16, 32x32x32, 16x16x64 activations) and all three at once.
Reported: median wall time over ``--repeats`` interleaved runs and the ratio captum/ours for

- var/var with the "loop" strategy (the CPU default of ``strategy="auto"``),
- var/var with the "batched" strategy (``is_grads_batched``, chunks of 64; the CUDA default),
- mean/mean (linear: one backward pass), also compared with ONE Captum call.

Run: ``python benchmarks/embedding_attribution.py [--device cuda] [--threads 1] [--repeats 3]``.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time
from typing import Callable, Dict, List

import torch
from captum.attr import LayerGradientXActivation

from captum_concepts.attr import EmbeddingAttribution, aggregate
from captum_concepts.data import DigitsCNN

LAYERS = ["block1.relu", "block2.relu", "block3.relu"]


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def timed(fns: Dict[str, Callable[[], object]], repeats: int, device: str) -> Dict[str, float]:
    """Median seconds per function; the functions are interleaved so load changes hit all alike."""
    times: Dict[str, List[float]] = {k: [] for k in fns}
    for f in fns.values():  # warm-up
        f()
    for _ in range(repeats):
        for k, f in fns.items():
            sync(device)
            t0 = time.perf_counter()
            f()
            sync(device)
            times[k].append(time.perf_counter() - t0)
    return {k: statistics.median(v) for k, v in times.items()}


def captum_loop(model, layers, x, d_total, how):
    """What a Captum user writes today: one call per embedding dimension (and per layer)."""
    out = []
    for layer in layers:
        lgxa = LayerGradientXActivation(model.embed, layer)
        per_dim = torch.stack([lgxa.attribute(x, target=d).detach() for d in range(d_total)], 1)
        out.append(aggregate(aggregate(per_dim, 2, how), 1, how))
    return out


def forward_plus_backwards(model, layers, x, d_total):
    """The floor for any exact method: ONE forward and D plain backward passes of the head to the
    lowest layer (retain_graph), no post-processing -- the issue's own pre-implementation probe."""
    store = []
    handles = [lay.register_forward_hook(lambda m, a, o: store.append(o)) for lay in layers]
    try:
        z = model.embed(x.detach().requires_grad_())
    finally:
        for h in handles:
            h.remove()
    for d in range(d_total):
        onehot = torch.zeros_like(z)
        onehot[:, d] = 1
        torch.autograd.grad(z, store, onehot, retain_graph=True)


def bench_case(model, x, d_total: int, names: List[str], repeats: int, dev: str) -> Dict[str, float]:
    """Times for one (D, source layers) case; checks first that ours equals the Captum loop."""
    modules = dict(model.named_modules())
    layers = [modules[n] for n in names]
    spec = names if len(names) > 1 else names[0]

    def ours(rc: str, rd: str, strategy: str) -> Callable[[], object]:
        ea = EmbeddingAttribution(
            model, "embedding", spec, "activation_gradient", rc, rd, upsample=None, strategy=strategy
        )
        return lambda: ea.attribute(x, internal_batch_size=64)

    one_call = LayerGradientXActivation(model.embed, layers[0])
    fns = {
        "captum_var": lambda: captum_loop(model, layers, x, d_total, "var"),
        "loop": ours("var", "var", "loop"),
        "batched": ours("var", "var", "batched"),
        "mean": ours("mean", "mean", "auto"),
        "one_call": lambda: one_call.attribute(x, target=0).detach(),
        "floor": lambda: forward_plus_backwards(model, layers, x, d_total),
    }
    ref = captum_loop(model, layers, x, d_total, "var")
    got = fns["loop"]()
    for a, b in zip(got if isinstance(got, list) else [got], ref):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)
    return timed(fns, repeats, dev)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (the shared CPU is loaded)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--dims", type=int, nargs="+", default=[16, 64, 256])
    parser.add_argument("--n", type=int, default=16)
    parser.add_argument("--size", type=int, default=32)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    dev = args.device
    print(
        f"# {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}  torch {torch.__version__}  device {dev}  "
        f"threads {torch.get_num_threads()}  {platform.processor() or platform.machine()}  "
        f"N={args.n} images {args.size}x{args.size}, median of {args.repeats}"
    )
    print(
        f"{'D':>4} {'layer':<12} {'captum loop s':>13} {'var/var loop':>13} {'var/var batch':>13} "
        f"{'mean/mean':>10} {'mean/mean vs 1 call':>20} {'floor: fwd+D bwd':>17}"
    )
    for d_total in args.dims:
        torch.manual_seed(0)
        model = DigitsCNN(in_channels=3, image_size=args.size, width=16, embedding_dim=d_total).to(dev).eval()
        x = torch.rand(args.n, 3, args.size, args.size, device=dev)
        for names in [[n] for n in LAYERS] + [LAYERS]:
            if dev.startswith("cuda"):
                torch.cuda.reset_peak_memory_stats()
            t = bench_case(model, x, d_total, names, args.repeats, dev)
            base = t["captum_var"]
            label = names[0] if len(names) == 1 else "all three"
            print(
                f"{d_total:>4} {label:<12} {base:>13.3f} {base / t['loop']:>12.1f}x "
                f"{base / t['batched']:>12.1f}x {base / t['mean']:>9.1f}x "
                f"{t['mean'] / (t['one_call'] * len(names)):>16.2f} (x) {base / t['floor']:>16.1f}x",
                flush=True,
            )
            if dev.startswith("cuda"):
                print(f"     peak GPU memory {torch.cuda.max_memory_allocated() / 2**20:.0f} MiB")
    print(
        "ratios = captum-loop time / our time (higher is better); 'mean/mean vs 1 call' = our linear "
        "mean/mean time / one Captum call per layer (target <= 1.5); 'floor' = captum-loop time / "
        "(one forward + D bare backward passes), the most any exact per-dimension method gets on CPU"
    )


if __name__ == "__main__":
    main()
