"""Benchmark: semantic saliency vs Captum, and SemanticVector fitting vs a bare forward pass.

1. ``SemanticGuidedBackprop`` vs Captum ``GuidedBackprop`` and ``SemanticGradientInput`` vs
   Captum ``InputXGradient`` on the same batch (target <= 1.15x). The masks come from a
   fitted SemanticVector at ``block3.pool`` (per-example masks chosen by the target).
2. ``SemanticVector.fit_from_labels`` throughput (examples/s) vs a bare ``torch.no_grad()``
   forward pass of the whole model over the same batches (target >= 0.85x), at a middle layer
   (``block3.pool``: the fit stops the forward there) and at ``embedding_relu`` (almost the
   whole forward runs).

Model: ``DigitsCNN(image_size=32, width=16)`` (random weights; timing only), the scikit-learn
digits upscaled x4 to 32x32, batches of ``--batch`` images. Times are medians over
``--repeats`` interleaved runs (the machine may be shared: interleaving exposes all methods to
the same load).

Run: ``python benchmarks/semantic.py [--repeats 7] [--batch 128] [--threads 2] [--device cpu]``.
"""

from __future__ import annotations

import argparse
import platform
import time
import warnings
from typing import Callable, Dict

import torch
from captum.attr import GuidedBackprop, InputXGradient

# the same interleaved median timer as the EmbeddingAttribution benchmark
from embedding_attribution import timed

from captum_concepts.attr import SemanticGradientInput, SemanticGuidedBackprop
from captum_concepts.concept import SemanticVector
from captum_concepts.data import DigitsCNN, load_digits_tensors


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore", category=UserWarning)
    device = args.device

    data = load_digits_tensors(upscale=4)
    x_all, y_all = data.x_train.to(device), data.y_train.to(device)
    torch.manual_seed(0)
    model = DigitsCNN(image_size=32, width=16).to(device).eval()
    print(f"# semantic benchmark  {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}")
    print(
        f"# torch {torch.__version__}, {platform.processor() or platform.machine()}, device={device}, "
        f"threads={torch.get_num_threads()}, repeats={args.repeats}, batch={args.batch}"
    )

    # ---- 1. attribution time
    sv = SemanticVector(model, "block3.pool", batch_size=args.batch).fit_from_labels((x_all, y_all))
    x, t = x_all[: args.batch], y_all[: args.batch]
    sgb, gb = SemanticGuidedBackprop(model, "block3.pool", sv), GuidedBackprop(model)
    sgi, ixg = SemanticGradientInput(model, "block3.pool", sv), InputXGradient(model)
    res = timed(
        {
            "captum GuidedBackprop": lambda: gb.attribute(x, target=t),
            "SemanticGuidedBackprop": lambda: sgb.attribute(x, target=t),
            "captum InputXGradient": lambda: ixg.attribute(x, target=t),
            "SemanticGradientInput": lambda: sgi.attribute(x, target=t),
        },
        args.repeats,
        device,
    )
    print(f"\n| attribution (batch of {args.batch}, 32x32) | ms | ratio ours/captum |")
    print("|---|---|---|")
    for ours, base in (
        ("SemanticGuidedBackprop", "captum GuidedBackprop"),
        ("SemanticGradientInput", "captum InputXGradient"),
    ):
        print(f"| {base} | {1e3 * res[base]:.2f} | |")
        print(f"| {ours} | {1e3 * res[ours]:.2f} | {res[ours] / res[base]:.3f} (target <= 1.15) |")

    # ---- 2. fitting throughput
    n = len(x_all)
    batches = [(x_all[i : i + args.batch], y_all[i : i + args.batch]) for i in range(0, n, args.batch)]

    def bare_forward():
        with torch.no_grad():
            for xb, _ in batches:
                model(xb)

    fns: Dict[str, Callable[[], object]] = {"bare forward (whole model)": bare_forward}
    for layer in ("block3.pool", "embedding_relu"):
        fns[f"SemanticVector fit @ {layer}"] = lambda layer=layer: SemanticVector(
            model, layer
        ).fit_from_labels(batches, n_classes=10)
    res = timed(fns, args.repeats, device)
    base = res["bare forward (whole model)"]
    print(f"\n| pass over {n} images (32x32) | s | examples/s | throughput ratio fit/forward |")
    print("|---|---|---|---|")
    for k, v in res.items():
        ratio = "" if k.startswith("bare") else f"{base / v:.3f} (target >= 0.85)"
        print(f"| {k} | {v:.3f} | {n / v:.0f} | {ratio} |")


if __name__ == "__main__":
    main()
