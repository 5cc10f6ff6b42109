"""Benchmark: SimilarityAttribution vs Captum InputXGradient, and concept importance vs one backward.

1. ``SimilarityAttribution(similarity="dot")`` (and ``"cosine"``) on a batch of pairs vs ONE
   Captum ``InputXGradient`` call on ``s(f(a), f(b))`` for the same pairs (target <= 1.5x).
   For scale, the per-dimension route (``D`` gradients per side, what ``return_per_dim`` costs)
   is timed on ``--dims`` dimensions (one run) and extrapolated to all ``D``.
2. ``concept_importance`` for all ``d`` concepts of a fitted ``CoupledNMFConcepts``: the number
   of backward passes per target is counted (a backward hook on the classifier) and the time
   of one call, with the coefficients given, is compared with one plain forward + backward of
   the target logit (target: about 1x and exactly one backward per target).

Models (random weights; timing only): torchvision ``resnet18(weights=None)`` with ``fc``
replaced by an identity (the 512-D pooled features are the embedding) on ``--size`` images,
and ``DigitsCNN`` on the scikit-learn digits. Times are medians over ``--repeats`` interleaved
runs. The machine may be shared: the load average is printed with the results.

Run: ``python benchmarks/similarity.py [--repeats 7] [--pairs 8] [--size 64] [--dims 4] [--threads 2]``.
"""

from __future__ import annotations

import argparse
import os
import platform
import time
import warnings

import torch
import torchvision
from captum.attr import InputXGradient
from embedding_attribution import timed
from torch import nn

from captum_concepts.attr import EmbeddingAttribution, SimilarityAttribution
from captum_concepts.concept import CoupledNMFConcepts, concept_importance
from captum_concepts.data import DigitsCNN, load_digits_tensors


def load() -> str:
    return " ".join(f"{v:.2f}" for v in os.getloadavg())


def similarity_section(args) -> None:
    torch.manual_seed(0)
    model = torchvision.models.resnet18(weights=None)
    model.fc = nn.Identity()
    model.eval()
    g = torch.Generator().manual_seed(0)
    a = torch.rand(args.pairs, 3, args.size, args.size, generator=g)
    b = torch.rand(args.pairs, 3, args.size, args.size, generator=g)
    d_total = 512

    def pair_score(similarity):
        def f(x, y):
            za, zb = model(x), model(y)
            return (za * zb).sum(1) if similarity == "dot" else torch.cosine_similarity(za, zb, dim=1)

        return f

    ixg = {s: InputXGradient(pair_score(s)) for s in ("dot", "cosine")}
    ours = {s: SimilarityAttribution(model, similarity=s) for s in ("dot", "cosine")}
    per_dim = EmbeddingAttribution(model, method="activation_gradient", strategy="loop")
    fns = {
        "captum InputXGradient (dot)": lambda: ixg["dot"].attribute((a, b)),
        "SimilarityAttribution (dot)": lambda: ours["dot"].attribute(a, b),
        "captum InputXGradient (cosine)": lambda: ixg["cosine"].attribute((a, b)),
        "SimilarityAttribution (cosine)": lambda: ours["cosine"].attribute(a, b),
    }
    before = load()
    t = timed(fns, args.repeats, "cpu")
    key = f"per-dimension maps, {args.dims} of D dims, both sides (1 run)"
    t.update(
        timed(
            {
                key: lambda: per_dim.attribute(
                    torch.cat([a, b]), embedding_dims=list(range(args.dims)), return_per_dim=True
                )
            },
            1,
            "cpu",
        )
    )
    print(
        f"\n## 1. similarity maps, resnet18 (random weights), {args.pairs} pairs of {args.size}x{args.size}"
    )
    print(f"load average before: {before}")
    print("| method | median s | ratio to Captum InputXGradient (same similarity) |")
    print("|---|---|---|")
    for k, v in t.items():
        base = t["captum InputXGradient (cosine)" if "cosine" in k else "captum InputXGradient (dot)"]
        print(f"| {k} | {v:.3f} | {v / base:.2f}x |")
    full = t[key] * d_total / args.dims
    print(
        f"| per-dimension route, all D = {d_total} (extrapolated) | {full:.1f} | "
        f"{full / t['captum InputXGradient (dot)']:.0f}x |"
    )
    print(f"load average after: {load()}")


def importance_section(args) -> None:
    data = load_digits_tensors()
    torch.manual_seed(0)
    model = DigitsCNN().eval()
    x = data.x_train[: args.examples]
    cnmf = CoupledNMFConcepts(args.concepts, model, layers=["block3.pool"], max_iter=50).fit(x)
    coefficients = cnmf.transform(x, samples_first=False)
    calls = []
    handle = model.classifier.register_full_backward_hook(lambda m, gi, go: calls.append(1))
    try:
        for target in range(10):
            concept_importance(cnmf, x, target=target, coefficients=coefficients)
    finally:
        handle.remove()

    def plain_backward():
        xs = x.clone().requires_grad_(True)
        logits = model(xs)
        torch.autograd.grad(logits[:, 3].sum(), xs)

    fns = {
        "one forward + backward of the target logit": plain_backward,
        f"concept_importance, all d = {args.concepts} concepts": lambda: concept_importance(
            cnmf, x, target=3, coefficients=coefficients
        ),
    }
    before = load()
    t = timed(fns, args.repeats, "cpu")
    print(f"\n## 2. concept importance, DigitsCNN (random weights), {args.examples} digits, block3.pool")
    print(f"backward passes for 10 targets: {len(calls)} (one per target)")
    print(f"load average before: {before}")
    print("| method | median s | ratio to one forward + backward |")
    print("|---|---|---|")
    base = t["one forward + backward of the target logit"]
    for k, v in t.items():
        print(f"| {k} | {v:.4f} | {v / base:.2f}x |")
    print(f"load average after: {load()}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--pairs", type=int, default=8)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--dims", type=int, default=4, help="embedding dims timed for the per-dim route")
    parser.add_argument("--examples", type=int, default=512)
    parser.add_argument("--concepts", type=int, default=10)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore", category=UserWarning)
    print(
        f"# similarity / concept importance benchmark  {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}"
    )
    print(
        f"# torch {torch.__version__}, {platform.processor() or platform.machine()}, "
        f"threads={torch.get_num_threads()}, repeats={args.repeats}; uptime load: {load()}"
    )
    similarity_section(args)
    importance_section(args)


if __name__ == "__main__":
    main()
