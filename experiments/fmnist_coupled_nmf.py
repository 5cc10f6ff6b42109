"""Saini & Papalexakis (coupled NMF concepts) on Fashion-MNIST with the trained ResNet.

Concepts over the pixels and two ResNet layers (``layer2``, ``layer3``) of ``--n-fit`` training
images (d = 10): (1) coherence of each factor's top-50 images with the labels (purity) against
random sets of 50, per seed; (2) neuron-similarity matrices per layer and the mean of their
first eigenvalues (paper: closer to the identity with depth); (3) each concept's top-50 images as
a Captum ``Concept`` against a random concept, ``TCAV`` at ``layer3`` for 20 test images per
class (paper Fig. 6: concepts matter for their classes). Seeds vary the NMF initialisation and
the ResNet (one trained network per seed); t-intervals over seeds.

Paper: ResNet-18 and VGG-11 on CIFAR-100 (50,000 images), d = 20; qualitative tables and figures.

Run:  python experiments/fmnist_coupled_nmf.py --seeds 3 [--data DIR] [--device cpu] [--quick]
Uses the ResNets cached by ``fmnist_scores_resnet.py`` (same ``--epochs``/``--n-train``) or trains
them. Writes ``fmnist_cnmf_table1_s<seed>.png`` and ``fmnist_cnmf_tcav.png``.
"""

from __future__ import annotations

import os
import tempfile
import time
import warnings

import numpy as np
import torch
from _fmnist_common import (
    CACHE,
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
from captum.concept import TCAV, Concept
from coupled_nmf_digits import chance_purity, table1
from torch.utils.data import DataLoader

from captum_concepts.concept import CoupledNMFConcepts
from captum_concepts.data import FASHION_MNIST_CLASSES

LAYERS = ["layer2", "layer3"]
D = 10
TOP = 50
FIRST_K = 3


def _extra(p) -> None:
    p.add_argument("--epochs", type=int, default=3, help="ResNet epochs (as fmnist_scores_resnet.py)")
    p.add_argument("--width", type=int, default=8)
    p.add_argument("--n-fit", type=int, default=60000, help="training images factorised (default: all)")
    p.add_argument("--max-iter", type=int, default=200)
    p.add_argument("--cache", default=CACHE)


def main() -> None:
    args = parse_args(__doc__.splitlines()[0], default_seeds=3, extra=_extra)
    t0 = time.perf_counter()
    epochs = 1 if args.quick else args.epochs
    data = load(args)
    n_fit = min(300 if args.quick else args.n_fit, len(data.x_train))
    x, y = data.x_train[:n_fit], data.y_train[:n_fit].cpu()
    print("\n".join(header(args, "fmnist_coupled_nmf")))
    print("classes: " + ", ".join(f"{k} {n}" for k, n in enumerate(FASHION_MNIST_CLASSES)))
    pur, chance, eig_drop, tcav_gap, tcav_mats = [], [], [], [], []
    for seed in args.seed_list:
        model, _ = cached_resnet(args, data, seed, epochs, args.width)
        print(
            f"seed {seed}: ResNet test accuracy {test_accuracy(model, data):.4f}; {n_fit} images, d={D}",
            flush=True,
        )
        cnmf = CoupledNMFConcepts(
            D,
            model,
            layers=LAYERS,
            solver="hals",
            max_iter=5 if args.quick else args.max_iter,
            random_state=seed,
        ).fit(x)
        p = table1(
            cnmf,
            x.cpu(),
            y,
            f"Table 1 analogue, seed {seed}",
            os.path.join(args.out, f"fmnist_cnmf_table1_s{seed}.png"),
        )
        pur.append(float(p.mean()))
        chance.append(chance_purity(y, TOP, seed=seed))
        eigs = [cnmf.neuron_similarity(j, return_eigenvalues=True)[1] for j in range(len(LAYERS))]
        first = [float(e[:FIRST_K].mean()) for e in eigs]
        eig_drop.append(first[0] - first[-1])
        print(f"  mean first-{FIRST_K} eigenvalues {LAYERS}: " + " -> ".join(f"{m:.3f}" for m in first))
        scores = tcav_matrix(model, cnmf, x, data, seed)
        top_cls = cnmf.top_classes(y, 1)[:, 0].numpy()
        own = scores[np.arange(D), top_cls]
        other = np.array([np.delete(scores[k], top_cls[k]).mean() for k in range(D)])
        tcav_gap.append(float(own.mean() - other.mean()))
        tcav_mats.append((scores, top_cls))
    rows = [
        ["factors gather coherent classes: top-50 purity - chance", "qualitative (Table 1)",
         fmt_ci([a - b for a, b in zip(pur, chance)]), verdict([a - b for a, b in zip(pur, chance)], +1)],
        [f"mean first-{FIRST_K} eigenvalues, {LAYERS[0]} - {LAYERS[-1]}", "> 0 (Fig. 3a)", fmt_ci(eig_drop),
         verdict(eig_drop, +1)],
        ["TCAV sign count: own top class - other classes", "> 0 (Fig. 6)", fmt_ci(tcav_gap),
         verdict(tcav_gap, +1)],
    ]  # fmt: skip
    print_table(
        f"paper vs ours ({args.seeds} seeds, {n_fit} training images, d={D}; mean [95 % CI] over seeds)",
        ["claim", "paper (ResNet-18, CIFAR-100)", "ours", "verdict"],
        rows,
    )
    print(
        f"top-{TOP} purity per seed: "
        + " ".join(f"{v:.2f}" for v in pur)
        + f" (chance {np.mean(chance):.2f})"
    )
    _plot_tcav(tcav_mats[0], os.path.join(args.out, "fmnist_cnmf_tcav.png"))
    print(f"\ntotal time {time.perf_counter() - t0:.0f} s (device {args.device})")


def tcav_matrix(model, cnmf, x, data, seed: int) -> np.ndarray:
    concepts = cnmf.to_captum_concepts(x, k=TOP)
    gen = torch.Generator().manual_seed(seed)
    random_idx = torch.randperm(len(x), generator=gen)[:TOP]
    random_concept = Concept(D, "random", DataLoader(x[random_idx], batch_size=TOP))
    scores = np.zeros((D, 10))
    with tempfile.TemporaryDirectory() as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        tcav = TCAV(model, ["layer3"], save_path=tmp + "/")
        sets = [[c, random_concept] for c in concepts]
        for cls in range(10):
            out = tcav.interpret(data.x_test[data.y_test == cls][:20], sets, target=cls)
            for k, key in enumerate(out):
                scores[k, cls] = float(out[key]["layer3"]["sign_count"][0])
    return scores


def _plot_tcav(mat, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    scores, top_cls = mat
    short = [n.split("/")[0][:7] for n in FASHION_MNIST_CLASSES]
    fig, ax = plt.subplots(figsize=(7.5, 6))
    im = ax.imshow(scores, vmin=0, vmax=1, cmap="viridis")
    ax.set_xticks(range(10), short, rotation=60, fontsize=10)
    ax.set_yticks(range(D), [f"{k} ({short[c]})" for k, c in enumerate(top_cls)], fontsize=10)
    ax.set_xlabel("target class", fontsize=11)
    ax.set_ylabel("concept (its top class)", fontsize=11)
    ax.set_title("TCAV sign count, concept vs random, ResNet layer3", fontsize=11)
    fig.colorbar(im, ax=ax)
    save_figure(fig, path)


if __name__ == "__main__":
    main()
