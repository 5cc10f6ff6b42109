"""Benchmark: EmbeddingAttribution on torchvision ResNet-18/50 and ViT-B/16 (random weights).

Per configuration (model, image size, source layer), all embedding dimensions
(``avgpool`` of the ResNets: D = 512 / 2048; the re-initialised logits of ViT-B/16: D = 1000;
its sources are the patch-token grid ``conv_proj`` and the token layer ``encoder_layer_5`` read
through ``tokens_to_grid``), ``method="activation_gradient"``:

- ``forward``: ``strategy="forward"`` (one Jacobian-vector product per source pixel), var/var;
- ``loop`` / ``batched``: our reverse-mode strategies (one vector-Jacobian product per dimension);
- ``captum``: one ``captum.attr.LayerGradientXActivation`` call per dimension (a forward and a
  backward pass each), then the same aggregation -- what a Captum user writes today;
- ``mean/mean``: the linear case (one backward pass), against the Captum loop;
- ``floor``: one forward and one backward pass of the model to the source layer.

Before timing, the per-dimension maps of all four on a subset of dimensions are asserted equal.
Our reverse strategies are timed on ``k/2`` and ``k`` dimensions (``--reverse-dims``); their
difference is the cost per dimension (the shared forward pass cancels), and the full run is
measured when it is predicted under ``--measure-below`` seconds, else extrapolated:
``t(D) = t(k) + slope (D - k)``. The Captum loop is timed on ``--captum-dims`` dimensions and
scaled, ``t(D) = t(k) D / k`` (every call repeats the forward pass). ``~`` marks extrapolated
numbers.
Two extra tables: cost against D (``embedding_dims`` subsets) and against the image size, at
ResNet-18 ``layer3``.

``auto``: the strategy ``strategy="auto"`` picks for all ``D`` dimensions (from
``EmbeddingAttribution.plan``: the counted work of the first pass, see ``choose_strategy``), the
predicted costs of both sides (FLOP equivalents) and ``auto / best``: the time of ``auto``'s
pick over the cheapest of ``forward``, ``loop`` and ``batched`` (the goal: <= 1.2x).

Run: ``python benchmarks/embedding_attribution_real.py [--device cuda] [--batch 4] [--quick] [--full]``
Default: ResNet-18 at 112x112 (``layer2``/``layer3``/``layer4``), ResNet-50 at 224x224
``layer4``, ViT-B/16 at 64x64 (``conv_proj`` and a token layer): the rows of
``benchmarks/RESULTS.md``, a few minutes on one idle core; ``--full`` adds ResNet-18 at 224x224
and ResNet-50 ``layer2``/``layer3`` (196 and 784 products: tens of minutes on CPU);
``--auto-check``: the same rows, only ``forward``/``loop``/``batched`` and ``auto``'s pick
(no Captum loop, no extra tables), one table with ``auto / best`` per row (about two minutes);
``--predict``: no timing, ``auto``'s pick and predicted costs per row (seconds);
``--quick``: a smoke test of a few seconds. Prints markdown tables.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time
from typing import Callable, Dict, List, Tuple

import torch
import torchvision
from captum.attr import LayerGradientXActivation
from torch import nn

from captum_concepts.attr import EmbeddingAttribution, tokens_to_grid

# source layers whose output is not (N, C, *S): the reshape_transform that lays it out
TRANSFORMS = {"encoder.layers.encoder_layer_5": tokens_to_grid(prefix_tokens=1)}


def layout(layer: str, t: torch.Tensor) -> torch.Tensor:
    fn = TRANSFORMS.get(layer)
    return t if fn is None else fn(t)


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def timed(f: Callable[[], object], repeats: int, device: str) -> float:
    """Median seconds of ``repeats`` runs after one warm-up."""
    f()
    times = []
    for _ in range(repeats):
        sync(device)
        t0 = time.perf_counter()
        f()
        sync(device)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


class Embedded(nn.Module):
    """``model`` up to its embedding, flattened ``(N, D)``: the forward function of the Captum loop."""

    def __init__(self, model: nn.Module, embedding: str) -> None:
        super().__init__()
        self.model, self.embedding = model, dict(model.named_modules())[embedding]

    def forward(self, x):
        store = []
        handle = self.embedding.register_forward_hook(lambda m, a, o: store.append(o))
        try:
            self.model(x)
        finally:
            handle.remove()
        return store[0].flatten(1)


def build(name: str, size: int, device: str):
    torch.manual_seed(0)
    if name == "vit_b_16":
        model = torchvision.models.vit_b_16(weights=None, image_size=size)
        nn.init.normal_(model.heads.head.weight, std=0.02)  # zero-initialised: every gradient would be 0
        return model.to(device).eval(), "heads"
    return getattr(torchvision.models, name)(weights=None).to(device).eval(), "avgpool"


def captum_per_dim(model, embedding, layer, x, dims):
    """(N, k, *S) channel-mean maps from one LayerGradientXActivation call per dimension."""
    lgxa = LayerGradientXActivation(Embedded(model, embedding), dict(model.named_modules())[layer])
    return torch.stack([layout(layer, lgxa.attribute(x, target=int(d)).detach()).mean(1) for d in dims], 1)


def floor_time(model, embedding, layer, x, repeats, device):
    """One forward pass and one backward pass of sum(z) to the source layer."""
    ea = EmbeddingAttribution(
        model, embedding, layer, "activation_gradient", "mean", "mean", upsample=None,
        reshape_transform=TRANSFORMS.get(layer),
    )
    return timed(lambda: ea.attribute(x), repeats, device)


def reverse_time(run: Callable[[int], float], d_total: int, args) -> Tuple[float, bool]:
    """Seconds for all ``d_total`` dimensions and whether they are extrapolated: ``run(k)`` at
    ``k/2`` and ``k`` dimensions gives the cost per dimension (the slope; the forward pass and
    other fixed costs cancel); when the full run is predicted under ``--measure-below`` seconds
    it is measured instead."""
    k = min(d_total, args.reverse_dims)
    if args.full_reverse or k == d_total:
        return run(d_total), False
    t1, t2 = run(k // 2), run(k)
    predicted = t2 + max(t2 - t1, 0.0) / (k - k // 2) * (d_total - k)
    if predicted < args.measure_below:
        return run(d_total), False
    return predicted, True


def run_case(model, embedding, layer, x, shape, d_total, args, full_reverse: bool) -> Dict[str, object]:
    dev, reps = args.device, args.repeats

    def ours(strategy, rc="mean", rd="var", **kw):
        ea = EmbeddingAttribution(
            model, embedding, layer, "activation_gradient", rc, rd, upsample=None, strategy=strategy,
            reshape_transform=TRANSFORMS.get(layer),
        )
        return lambda: ea.attribute(x, **kw)

    # equal results first (a subset of dimensions, per-dimension maps)
    check = torch.linspace(0, d_total - 1, 3).long().tolist()
    ref = captum_per_dim(model, embedding, layer, x, check)
    assert ref.abs().sum() > 0, "all-zero reference"
    for s in ["forward", "loop", "batched"]:
        got = ours(s, "mean", "var", embedding_dims=check, return_per_dim=True)()
        torch.testing.assert_close(got, ref, rtol=1e-3, atol=1e-5 * float(ref.abs().max()))

    row: Dict[str, object] = {"D": d_total, **predict(model, embedding, layer, x)}
    peak = {}

    def measure(key, f, r):
        if dev.startswith("cuda"):
            torch.cuda.reset_peak_memory_stats()
        t = timed(f, r, dev)
        if dev.startswith("cuda"):
            peak[key] = torch.cuda.max_memory_allocated() / 2**20
        return t

    row["floor"] = floor_time(model, embedding, layer, x, reps, dev)
    row["forward"] = measure("forward", ours("forward"), reps)
    row["mean"] = measure("mean", ours("auto", "mean", "mean"), reps)
    extrapolated = False
    for s in ["loop", "batched"]:
        row[s], ext = reverse_time(
            lambda k, s=s: measure(s, ours(s, embedding_dims=range(k)), 1), d_total, args
        )
        extrapolated |= ext
    row["auto_time"] = row[row["auto"]]  # the same executor as the strategy it picks
    if row["auto"] == "forward" or not extrapolated:  # measured as a whole, first-pass counting included
        row["auto_time"] = measure("auto", ours("auto"), reps)
    kc = d_total if full_reverse else min(d_total, args.captum_dims)
    if args.auto_check:
        row["captum"], kc = float("nan"), d_total
    else:
        t = timed(lambda: captum_per_dim(model, embedding, layer, x, range(kc)), 1, dev)
        row["captum"] = t * d_total / kc
    row["extrapolated"] = (extrapolated, kc < d_total)
    row["peak"] = peak
    return row


def predict(model, embedding, layer, x) -> Dict[str, object]:
    """``auto``'s pick for all dimensions, its reason and the predicted costs of both sides."""
    ea = EmbeddingAttribution(
        model, embedding, layer, "activation_gradient", "mean", "var", upsample=None,
        reshape_transform=TRANSFORMS.get(layer),
    )  # fmt: skip
    plan = ea.plan(x)
    costs, d_total = plan.costs, int(Embedded(model, embedding)(x[:1]).shape[1])
    fwd = costs.forward(plan.passes, plan.chunk if plan.strategy == "forward" else min(plan.passes, 64))
    rev = costs.reverse(d_total, 1 if x.device.type != "cuda" else min(d_total, 64))
    return {"auto": plan.strategy, "reason": plan.reason, "pred_forward": fwd, "pred_reverse": rev}


def auto_ratio(r: dict) -> float:
    return r["auto_time"] / min(r["forward"], r["loop"], r["batched"])


def fmt_t(t: float, extrapolated: bool = False) -> str:
    return ("~" if extrapolated else "") + (f"{t:.2f}" if t < 100 else f"{t:.0f}")


def print_main(rows: List[dict]) -> None:
    print(
        "| model | image | layer | source (C, H, W) | D | JVPs | floor s | forward s | loop s | batched s "
        "| Captum loop s | forward vs best reverse | forward vs Captum | mean/mean s | mean/mean vs Captum "
        "| auto | auto / best |"
    )
    print("|" + "---|" * 17)
    for r in rows:
        ext_rev, ext_cap = r["extrapolated"]
        best = min(r["loop"], r["batched"])
        print(
            f"| {r['model']} | {r['size']} | {r['layer']} | {r['shape']} | {r['D']} | {r['passes']} "
            f"| {fmt_t(r['floor'])} | {fmt_t(r['forward'])} | {fmt_t(r['loop'], ext_rev)} "
            f"| {fmt_t(r['batched'], ext_rev)} | {fmt_t(r['captum'], ext_cap)} | {best / r['forward']:.1f}x "
            f"| {r['captum'] / r['forward']:.0f}x | {fmt_t(r['mean'])} | {r['captum'] / r['mean']:.0f}x "
            f"| {r['auto']} | {auto_ratio(r):.2f}x |"
        )
        if r["peak"]:
            print("|  | peak GPU MiB: " + ", ".join(f"{k} {v:.0f}" for k, v in r["peak"].items()) + " |")


def print_auto(rows: List[dict]) -> None:
    print(
        "| model | image | layer | D | JVPs | forward s | loop s | batched s | auto | auto s | auto / best |"
    )
    print("|" + "---|" * 11)
    for r in rows:
        ext = "~" if r["extrapolated"][0] else ""
        print(
            f"| {r['model']} | {r['size']} | {r['layer']} | {r['D']} | {r['passes']} | {fmt_t(r['forward'])} "
            f"| {ext}{fmt_t(r['loop'])} | {ext}{fmt_t(r['batched'])} | {r['auto']} | {fmt_t(r['auto_time'])} "
            f"| {auto_ratio(r):.2f}x |"
        )


def print_predictions(rows: List[dict]) -> None:
    print("| model | image | layer | D | JVPs | predicted forward | predicted reverse | auto | reason |")
    print("|" + "---|" * 9)
    for r in rows:
        print(
            f"| {r['model']} | {r['size']} | {r['layer']} | {r['D']} | {r['passes']} "
            f"| {r['pred_forward']:.3g} | {r['pred_reverse']:.3g} | {r['auto']} | {r['reason']} |"
        )


def growth_in_d(model, embedding, layer, x, dims: List[int], args) -> None:
    print(f"\nCost against D ({layer}, var/var, embedding_dims = the first D dimensions; s):\n")
    print("| D | forward s | loop s | forward vs loop |")
    print("|---|---|---|---|")
    for d in dims:
        f = EmbeddingAttribution(model, embedding, layer, "activation_gradient", strategy="forward")
        lo = EmbeddingAttribution(model, embedding, layer, "activation_gradient", strategy="loop")
        tf = timed(lambda f=f, d=d: f.attribute(x, embedding_dims=range(d)), args.repeats, args.device)
        tl = timed(lambda lo=lo, d=d: lo.attribute(x, embedding_dims=range(d)), 1, args.device)
        print(f"| {d} | {fmt_t(tf)} | {fmt_t(tl)} | {tl / tf:.1f}x |", flush=True)


def growth_in_size(name, layer, sizes: List[int], args) -> None:
    print(
        f"\nCost against image size ({name} {layer}, all dimensions, var/var; loop on the first "
        f"{args.reverse_dims} dimensions, extrapolated):\n"
    )
    print("| image | JVPs | floor s | forward s | loop s | forward vs loop |")
    print("|---|---|---|---|---|---|")
    for size in sizes:
        model, embedding = build(name, size, args.device)
        x = torch.randn(args.batch, 3, size, size, device=args.device)
        d = int(Embedded(model, embedding)(x[:1]).shape[1])
        f = EmbeddingAttribution(model, embedding, layer, "activation_gradient", strategy="forward")
        lo = EmbeddingAttribution(model, embedding, layer, "activation_gradient", strategy="loop")
        tf = timed(lambda f=f, x=x: f.attribute(x), args.repeats, args.device)
        tl, ext = reverse_time(
            lambda k, lo=lo, x=x: timed(lambda: lo.attribute(x, embedding_dims=range(k)), 1, args.device),
            d,
            args,
        )
        hw = size // {"layer2": 8, "layer3": 16, "layer4": 32}[layer]
        fl = floor_time(model, embedding, layer, x, args.repeats, args.device)
        print(
            f"| {size} | {hw * hw} | {fmt_t(fl)} | {fmt_t(tf)} | ~{fmt_t(tl)} | {tl / tf:.1f}x |", flush=True
        )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0],
        epilog="Rows (default, --auto-check, --predict): ResNet-18 112x112 layer2/layer3/layer4, ResNet-50 "
        "224x224 layer4, ViT-B/16 64x64 conv_proj and encoder_layer_5 -- the rows of benchmarks/RESULTS.md. "
        "For the lead's rerun on an idle machine: --auto-check (and --auto-check --threads 2) prints auto's "
        "pick and auto / best per row; goal <= 1.2x.",
    )
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (the shared CPU is loaded)")
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--reverse-dims", type=int, default=64, help="dimensions our reverse loop times")
    parser.add_argument("--captum-dims", type=int, default=4, help="dimensions the Captum loop times")
    parser.add_argument(
        "--measure-below", type=float, default=20.0, help="measure our reverse strategies fully below this"
    )
    parser.add_argument("--quick", action="store_true", help="smoke test: ResNet-18 at 64x64, layer3 only")
    parser.add_argument(
        "--full", action="store_true", help="also ResNet-50 layer2/3 and ResNet-18 at 224x224"
    )
    parser.add_argument(
        "--auto-check",
        action="store_true",
        help="quick check of strategy='auto' on the RESULTS.md rows: forward, loop, batched and auto's pick "
        "timed (no Captum loop, no extra tables), auto's time over the cheapest strategy printed per row",
    )
    parser.add_argument(
        "--predict", action="store_true", help="no timing: auto's pick and the predicted costs per row"
    )
    parser.add_argument("--models", nargs="+", help="only these models (e.g. vit_b_16)")
    parser.add_argument("--full-reverse", action="store_true", help="time every dimension, no extrapolation")
    args = parser.parse_args()
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device is available")
    torch.set_num_threads(args.threads)
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(
        f"# {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}  torch {torch.__version__}  "
        f"torchvision {torchvision.__version__}  device {args.device}  threads {torch.get_num_threads()}  "
        f"{platform.processor() or platform.machine()}  load {load:.1f}  batch {args.batch}, "
        f"activation_gradient, median of {args.repeats}\n"
    )
    if args.quick:
        cases = [("resnet18", 64, ["layer3"])]
        args.reverse_dims, args.captum_dims = min(args.reverse_dims, 16), min(args.captum_dims, 2)
    else:
        cases = [
            ("resnet18", 112, ["layer2", "layer3", "layer4"]),
            ("resnet50", 224, ["layer4"]),
            ("vit_b_16", 64, ["conv_proj", "encoder.layers.encoder_layer_5"]),
        ]
        if args.full and not args.auto_check:
            cases[1] = ("resnet50", 224, ["layer2", "layer3", "layer4"])
            cases.insert(1, ("resnet18", 224, ["layer2", "layer3", "layer4"]))
    if args.models:
        cases = [c for c in cases if c[0] in args.models]
    rows = []
    for name, size, layers in cases:
        model, embedding = build(name, size, args.device)
        x = torch.randn(args.batch, 3, size, size, device=args.device)
        for layer in layers:
            store: List[torch.Tensor] = []
            h = dict(model.named_modules())[layer].register_forward_hook(lambda m, a, o, s=store: s.append(o))
            with torch.no_grad():
                z = Embedded(model, embedding)(x[:1])
            h.remove()
            shape = tuple(layout(layer, store[0]).shape[1:])
            if args.predict:
                row = {"D": int(z.shape[1]), **predict(model, embedding, layer, x)}
            else:
                d = int(z.shape[1])
                row = run_case(model, embedding, layer, x, (1, *shape), d, args, args.full_reverse)
            hw = 1
            for s in shape[1:]:
                hw *= s
            row.update(model=name, size=f"{size}x{size}", layer=layer, shape=shape, passes=hw)
            rows.append(row)
            if not args.predict:
                print(f"  {name} {layer}: forward {row['forward']:.2f} s, auto ({row['auto']})", flush=True)
    print()
    if args.predict:
        print_predictions(rows)
        return
    if args.auto_check:
        print_auto(rows)
        print("\n~ = extrapolated (see the module docstring); auto / best = auto's time / the cheapest one.")
        return
    print_main(rows)
    print()
    print_predictions(rows)
    print(
        "\n~ = extrapolated from a measured subset of dimensions (see the module docstring). floor = one "
        "forward + one backward pass; JVPs = forward-mode products (source pixels); auto = the strategy "
        "strategy='auto' picks."
    )
    if not (args.quick or args.auto_check or args.predict):
        model, embedding = build("resnet18", 112, args.device)
        x = torch.randn(args.batch, 3, 112, 112, device=args.device)
        growth_in_d(model, embedding, "layer3", x, [32, 128, 512], args)
        growth_in_size("resnet18", "layer3", [64, 112, 224] if args.full else [64, 112, 160], args)


if __name__ == "__main__":
    main()
