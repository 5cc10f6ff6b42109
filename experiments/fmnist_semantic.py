"""Gu & Tresp (semantic vectors and semantic saliency) on Fashion-MNIST.

1. Perturbation check (their Table 1): per test image of class c, the layer's features are
   perturbed four ways (associated unit, random unit, semantic mask ``1[v_c > 0.5]``, permuted
   mask) and the change of p(c) is averaged; one value per trained ResNet (seed), t-interval over
   seeds. Layers ``embedding`` (the pooled vector, analogue of VGG16 fc1) and ``layer3``.
2. Relevance between classes (their Fig. 5) ``cos(v_a, v_b)`` and the correlation of the degree of
   diversity ``D_c`` with per-class accuracy (their Table 2).
3. Pointing game (their §5.2, Fig. 7) on 56x56 canvases holding two Fashion-MNIST items of
   different classes at random non-overlapping positions; a multi-label ResNet (BCE); for each
   canvas and item a saliency map for that class is scored against the item's tight box at
   energies 0..100 %; Semantic GuidedBP / Gradient*Input at ``layer3`` with the paper's masks
   ``1[r_c > 0.5]`` and with class-relative channel masks; 95 % bootstrap intervals over canvases
   of the paired improvement at each energy.

Paper: (1) the semantic mask raises p(ground truth) by 0.19, the controls change it by ~1e-6;
(2) related concepts are relevant to each other, r(D_c, top-1 accuracy) = -0.52; (3) the
improvement over the baseline is > 0 at every energy.

Run:  python experiments/fmnist_semantic.py --seeds 3 [--data DIR] [--device cpu] [--quick]
Uses the ResNets cached by ``fmnist_scores_resnet.py`` (same ``--epochs``/``--n-train``) or
trains them. Writes ``fmnist_semantic_relevance.png`` and ``fmnist_semantic_pointing.png``.
"""

from __future__ import annotations

import os
import time
import warnings

import numpy as np
import torch
from _fmnist_common import (
    CACHE,
    FMNISTResNet,
    cached_resnet,
    fmt_ci,
    header,
    load,
    parse_args,
    save_figure,
    test_accuracy,
    verdict,
)
from _scores_common import print_table
from scipy.stats import pearsonr

from captum_concepts.concept import SemanticVector
from captum_concepts.data import FASHION_MNIST_CLASSES
from captum_concepts.metrics import pointing_game_curve

warnings.filterwarnings("ignore", message="Setting backward hooks")
warnings.filterwarnings("ignore", message="Input Tensor .* did not already require gradients")

LAYERS = ("embedding", "layer3")
COLUMNS = ("single_unit", "random_unit", "semantic_mask", "permuted_mask")
PAPER = {
    "single_unit": 1.05e-06,
    "random_unit": -6.72e-07,
    "semantic_mask": 0.1929,
    "permuted_mask": 4.25e-06,
}
ENERGIES = torch.linspace(0.0, 1.0, 11)
SHORT = [n.split("/")[0][:7] for n in FASHION_MNIST_CLASSES]


def _extra(p) -> None:
    p.add_argument("--epochs", type=int, default=3, help="ResNet epochs (as fmnist_scores_resnet.py)")
    p.add_argument("--width", type=int, default=8)
    p.add_argument(
        "--n-fit", type=int, default=10000, help="training images the semantic vectors are fitted on"
    )
    p.add_argument("--n-eval", type=int, default=2000, help="test images of the perturbation check")
    p.add_argument("--canvases", type=int, default=6000, help="training canvases of the pointing game")
    p.add_argument("--canvas-epochs", type=int, default=4)
    p.add_argument("--skip-pointing", action="store_true", help="parts 1-2 only")
    p.add_argument("--pointing-only", action="store_true", help="part 3 only")
    p.add_argument("--cache", default=CACHE)


def make_canvases(x: torch.Tensor, y: torch.Tensor, n: int, seed: int, size: int = 56):
    """``n`` canvases ``(n, 1, size, size)`` with two items of different classes at random
    non-overlapping 28x28 positions; labels ``(n, 2)``, tight boxes ``(n, 2, 4)``
    ``(x_min, y_min, x_max, y_max)`` (exclusive maxima), multi-hot targets ``(n, 10)``."""
    rng = np.random.default_rng(seed)
    images = torch.zeros(n, 1, size, size)
    labels = torch.zeros(n, 2, dtype=torch.int64)
    boxes = torch.zeros(n, 2, 4, dtype=torch.int64)
    y_np = y.cpu().numpy()
    for i in range(n):
        first = int(rng.integers(len(y_np)))
        others = np.flatnonzero(y_np != y_np[first])
        second = int(others[rng.integers(len(others))])
        while True:
            (r1, c1), (r2, c2) = [
                (int(rng.integers(size - 27)), int(rng.integers(size - 27))) for _ in range(2)
            ]
            if abs(r1 - r2) >= 28 or abs(c1 - c2) >= 28:
                break
        for k, (idx, r, c) in enumerate(((first, r1, c1), (second, r2, c2))):
            item = x[idx, 0].cpu()
            images[i, 0, r : r + 28, c : c + 28] = item
            rows = torch.nonzero(item.sum(1) > 0).flatten()
            cols = torch.nonzero(item.sum(0) > 0).flatten()
            boxes[i, k] = torch.tensor(
                [c + cols.min(), r + rows.min(), c + cols.max() + 1, r + rows.max() + 1]
            )
            labels[i, k] = int(y_np[idx])
    multi_hot = torch.zeros(n, 10).scatter_(1, labels, 1.0)
    return images, labels, boxes, multi_hot


def main() -> None:
    args = parse_args(__doc__.splitlines()[0], default_seeds=3, extra=_extra)
    t0 = time.perf_counter()
    epochs = 1 if args.quick else args.epochs
    data = load(args)
    n_fit = min(args.n_fit, len(data.x_train))
    n_eval = min(100 if args.quick else args.n_eval, len(data.x_test))
    print("\n".join(header(args, "fmnist_semantic")))
    if args.pointing_only:
        pointing(args, data)
        print(f"\ntotal time {time.perf_counter() - t0:.0f} s (device {args.device})")
        return
    xf, yf = data.x_train[:n_fit], data.y_train[:n_fit]
    xe, ye = data.x_test[:n_eval], data.y_test[:n_eval]
    results = {layer: {c: [] for c in COLUMNS} for layer in LAYERS}
    base_p, r_div = [], {layer: [] for layer in LAYERS}
    relevance = {}
    for seed in args.seed_list:
        model, seconds = cached_resnet(args, data, seed, epochs, args.width)
        acc = test_accuracy(model, data)
        with torch.no_grad():
            pred = torch.cat([model(b).argmax(1) for b in data.x_test.split(1000)])
            base_p.append(
                torch.cat([model(b).softmax(1) for b in xe.split(1000)]).gather(1, ye[:, None]).mean().item()
            )
        class_acc = torch.stack([(pred[data.y_test == c] == c).float().mean() for c in range(10)]).cpu()
        print(f"seed {seed}: ResNet test accuracy {acc:.4f} (training {seconds:.0f} s)", flush=True)
        for layer in LAYERS:
            sv = SemanticVector(model, layer, random_state=seed).fit_from_labels((xf, yf), n_classes=10)
            means = sv.perturbation_check(xe, ye).means()
            for c in COLUMNS:
                results[layer][c].append(means[c])
            r_div[layer].append(pearsonr(sv.diversity_.numpy(), class_acc.numpy()).statistic)
            if seed == args.seed_list[0]:
                relevance[layer] = sv.relevance().cpu()
    rows = [["paper (VGG16 fc1, ImageNet)", "-"] + [f"{PAPER[c]:+.2e}" for c in COLUMNS]]
    for layer in LAYERS:
        rows.append([f"ours: ResNet {layer}", verdict(results[layer]["semantic_mask"], +1)])
        rows[-1] += [fmt_ci(results[layer][c], 4) for c in COLUMNS]
    print_table(
        f"Table 1, paper vs ours: mean change of p(ground truth), mean [95 % CI] over {args.seeds} ResNets "
        f"({n_eval} test images; vectors fitted on {n_fit} training images); verdict: semantic mask > 0",
        ["", "verdict", "associated unit", "random unit", "SeVec mask", "permuted mask"],
        rows,
    )
    print(f"mean p(ground truth) before perturbation: {fmt_ci(base_p, 4)}")
    print_table(
        "Table 2, paper vs ours: Pearson r(D_c, per-class accuracy), one per seed (10 classes)",
        ["layer", "paper (1000 ImageNet classes)", "per seed", "mean [95 % CI]", "verdict (< 0)"],
        [
            [layer, "-0.52 (p ~ 1e-71)", " ".join(f"{r:+.2f}" for r in v), fmt_ci(v, 2), verdict(v, -1)]
            for layer, v in r_div.items()
        ],
    )
    for layer, rel in relevance.items():
        off = rel[~torch.eye(10, dtype=torch.bool)]
        r2 = rel.clone().fill_diagonal_(-2)
        nearest = [int(r2[a].argmax()) for a in range(10)]
        pairs = sorted({tuple(sorted((a, b))) for a, b in enumerate(nearest)})
        print(
            f"relevance at {layer}: off-diagonal min {off.min():.2f} mean {off.mean():.2f} "
            f"max {off.max():.2f}; "
            "nearest pairs: " + ", ".join(f"{SHORT[a]}-{SHORT[b]}" for a, b in pairs)
        )
    _plot_relevance(relevance, os.path.join(args.out, "fmnist_semantic_relevance.png"))
    if not args.skip_pointing:
        pointing(args, data)
    print(f"\ntotal time {time.perf_counter() - t0:.0f} s (device {args.device})")


def pointing(args, data) -> None:
    from captum.attr import GuidedBackprop, InputXGradient

    from captum_concepts.attr import SemanticGradientInput, SemanticGuidedBackprop
    from captum_concepts.data import train_classifier

    n_train = 300 if args.quick else args.canvases
    n_test = 40 if args.quick else 500
    tr = make_canvases(data.x_train, data.y_train, n_train, seed=0)
    te = make_canvases(data.x_test, data.y_test, n_test, seed=1)
    dev = args.device
    torch.manual_seed(0)
    model = FMNISTResNet(width=args.width).to(dev)
    result = train_classifier(
        model,
        tr[0].to(dev),
        tr[3].to(dev),
        te[0].to(dev),
        te[3].to(dev),
        epochs=1 if args.quick else args.canvas_epochs,
        lr=3e-3,
        multilabel=True,
    )
    model = result.model.eval()
    with torch.no_grad():
        top2 = model(te[0].to(dev)).topk(2, 1).indices.sort(1).values.cpu()
    both = (top2 == te[1].sort(1).values).all(1).float().mean().item()
    print(
        f"\nmulti-label ResNet on {n_train} canvases 56x56: exact-set accuracy {result.test_accuracy:.3f}, "
        f"both items in top-2 {both:.3f} ({n_test} test canvases, {result.seconds:.0f} s)",
        flush=True,
    )
    x = te[0].repeat(2, 1, 1, 1).to(dev)
    target = torch.cat([te[1][:, 0], te[1][:, 1]]).to(dev)
    boxes = torch.cat([te[2][:, 0], te[2][:, 1]])
    # vectors from single-item canvases: the training canvases with the second item erased
    erase = torch.ones_like(tr[0])
    for i, (x0, y0, x1, y1) in enumerate(tr[2][:, 1].tolist()):
        erase[i, :, y0:y1, x0:x1] = 0
    sv = SemanticVector(model, "layer3").fit_from_labels(
        ((tr[0] * erase).to(dev), tr[1][:, 0].to(dev)), n_classes=10
    )
    variants = {"paper rule 1[r_c > 0.5]": sv.masks(0.5), "channel masks": sv.masks(mode="channel")}
    maps = {
        "GB": GuidedBackprop(model).attribute(x, target=target),
        "IxG": InputXGradient(model).attribute(x, target=target),
    }
    for name, mask in variants.items():
        maps[("GB", name)] = SemanticGuidedBackprop(model, "layer3", mask).attribute(x, target=target)
        maps[("IxG", name)] = SemanticGradientInput(model, "layer3", mask).attribute(x, target=target)
    maps = {k: v.detach().cpu() for k, v in maps.items()}
    gen = torch.Generator().manual_seed(0)
    n_boot = 20 if args.quick else 200
    boot_idx = [torch.randint(len(boxes), (len(boxes),), generator=gen) for _ in range(n_boot)]

    def curve(a, idx=None):
        if idx is None:
            return pointing_game_curve(a, boxes, energies=ENERGIES)[1]
        return pointing_game_curve(a[idx], boxes[idx], energies=ENERGIES)[1]

    rows, curves = [], {}
    for name, mask in variants.items():
        for base in ("GB", "IxG"):
            delta = curve(maps[(base, name)]) - curve(maps[base])
            boots = torch.stack([curve(maps[(base, name)], i) - curve(maps[base], i) for i in boot_idx])
            lo, hi = boots.quantile(0.025, 0), boots.quantile(0.975, 0)
            curves[(base, name)] = (delta, lo, hi)
            rows.append(
                [
                    f"Semantic {base}, {name}",
                    f"{mask.float().mean():.2f}",
                    f"{delta.min():+.3f} .. {delta.max():+.3f}",
                    f"{int((lo > 0).sum())} / {int((hi < 0).sum())} / {len(ENERGIES)}",
                    "reproduced"
                    if bool((lo > 0)[1:].all())
                    else ("not" if bool((hi < 0).any()) else "partly"),
                ]
            )
    print_table(
        f"Fig. 7, paper vs ours: improvement of the pointing-game accuracy over the baseline at energies "
        f"0..100 % ({2 * n_test} maps; 95 % bootstrap over canvases, {n_boot} resamples; "
        "paper: > 0 everywhere)",
        ["variant", "mask share", "improvement min .. max", "energies CI > 0 / CI < 0 / all", "verdict"],
        rows,
    )
    _plot_pointing(curves, args, os.path.join(args.out, "fmnist_semantic_pointing.png"))


def _plot_relevance(relevance, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(relevance), figsize=(12, 5.2))
    for ax, (layer, rel) in zip(np.atleast_1d(axes), relevance.items()):
        im = ax.imshow(rel.numpy(), cmap="viridis")
        ax.set_xticks(range(10), SHORT, rotation=60, fontsize=10)
        ax.set_yticks(range(10), SHORT, fontsize=10)
        ax.set_title(f"relevance cos(v_a, v_b), ResNet {layer}", fontsize=11)
        fig.colorbar(im, ax=ax, fraction=0.046)
    save_figure(fig, path)


def _plot_pointing(curves, args, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(9, 4.5))
    e = 100 * ENERGIES.numpy()
    for (base, name), (delta, lo, hi) in curves.items():
        ax.plot(e, delta.numpy(), marker="o", label=f"Semantic {base}, {name}")
        ax.fill_between(e, lo.numpy(), hi.numpy(), alpha=0.15)
    ax.axhline(0.0, color="grey", lw=0.8)
    ax.set_xlabel("energy (%)", fontsize=11)
    ax.set_ylabel("pointing accuracy - baseline", fontsize=11)
    ax.set_title(
        "Fashion-MNIST two-item canvases: semantic saliency minus baseline (95 % bootstrap)", fontsize=11
    )
    ax.legend(fontsize=9, loc="center left", bbox_to_anchor=(1.01, 0.5))
    save_figure(fig, path)


if __name__ == "__main__":
    main()
