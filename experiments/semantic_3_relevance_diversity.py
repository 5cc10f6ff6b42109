"""Experiment (Gu & Tresp §4): relevance matrix, diversity and its correlation with accuracy.

Semantic vectors of the ten digit classes at the fc1 analogue ``embedding_relu`` (32 units) and
at ``block3.relu`` (1,024 units, closer to fc1's 4,096 in size) of DigitsCNN (8x8 digits, fitted
on the training split). Printed:

1. the relevance matrix ``cos(v_a, v_b)`` (seed 0) and, per class, the degree of diversity
   ``D_c``, the test accuracy and the retrieval precision@10 (the 10 test images closest to
   ``v_c``; paper Fig. 1);
2. the Pearson correlation between ``D_c`` and the per-class accuracy (paper Table 2: r = -0.52
   over 1000 ImageNet classes, top-1), pooled over five training seeds (50 class-model pairs), for
   fully trained models (15 epochs) and briefly trained ones (2 epochs, where accuracy varies more).

Run: ``python experiments/semantic_3_relevance_diversity.py`` (about 1 minute on 2 cores).
"""

from __future__ import annotations

import time

import torch
from _semantic_common import markdown_table
from scipy.stats import pearsonr

from captum_concepts.concept import SemanticVector
from captum_concepts.data import load_digits_tensors, pretrained_digits_cnn

LAYERS = ("embedding_relu", "block3.relu")
SEEDS = (0, 1, 2, 3, 4)


def per_class_accuracy(model, x, y) -> torch.Tensor:
    with torch.no_grad():
        pred = model(x).argmax(dim=1)
    return torch.stack([(pred[y == c] == c).float().mean() for c in range(10)])


def main() -> None:
    start = time.perf_counter()
    data = load_digits_tensors()
    pooled = {}
    for epochs in (15, 2):
        div = {layer: [] for layer in LAYERS}
        per_seed = {layer: [] for layer in LAYERS}
        acc = []
        for seed in SEEDS:
            model = pretrained_digits_cnn(seed=seed, epochs=epochs).model
            a = per_class_accuracy(model, data.x_test, data.y_test)
            acc += a.tolist()
            for layer in LAYERS:
                sv = SemanticVector(model, layer).fit_from_labels((data.x_train, data.y_train))
                div[layer] += sv.diversity_.tolist()
                per_seed[layer].append(pearsonr(sv.diversity_.numpy(), a.numpy()).statistic)
                if seed == 0 and epochs == 15:
                    report_seed0(sv, layer, data, a)
        for layer in LAYERS:
            r, p = pearsonr(div[layer], acc)
            pooled[(epochs, layer)] = (r, p, sum(acc) / len(acc), per_seed[layer])
    rows = [["paper (VGG16, 1000 ImageNet classes, top-1)", "-0.5245", "9.4e-72", "", ""]]
    for (epochs, layer), (r, p, mean_acc, per_seed) in pooled.items():
        seeds = ", ".join(f"{v:+.2f}" for v in per_seed)
        rows.append(
            [
                f"ours: {layer}, {epochs} epochs, 5 seeds x 10 classes",
                f"{r:+.3f}",
                f"{p:.2g}",
                f"{mean_acc:.3f}",
                seeds,
            ]
        )
    header = ["Pearson r(D_c, per-class accuracy)", "r", "p-value", "mean accuracy", "r per seed"]
    print(markdown_table("Table 2 -- diversity vs accuracy, paper vs ours", header, rows))
    print(f"[{time.perf_counter() - start:.0f} s]")


def report_seed0(sv: SemanticVector, layer: str, data, acc: torch.Tensor) -> None:
    rel = sv.relevance()
    header = ["rel"] + [str(c) for c in range(10)]
    rows = [[str(a)] + [f"{rel[a, b]:.2f}" for b in range(10)] for a in range(10)]
    print(markdown_table(f"Relevance matrix cos(v_a, v_b) at {layer} (seed 0)", header, rows))
    off = rel[~torch.eye(10, dtype=torch.bool)]
    closest = [(a, int(rel[a].masked_fill(torch.arange(10) == a, -1).argmax())) for a in range(10)]
    print(f"off-diagonal relevance: min {off.min():.3f}, mean {off.mean():.3f}, max {off.max():.3f}")
    print("most relevant other class per digit: " + ", ".join(f"{a}->{b}" for a, b in closest))
    rows = []
    for c in range(10):
        top = sv.rank(data.x_test, c, k=10).indices
        precision = (data.y_test[top] == c).float().mean().item()
        rows.append([c, f"{sv.diversity_[c]:.4f}", f"{acc[c]:.3f}", f"{precision:.1f}"])
    print(
        markdown_table(
            f"Per class at {layer} (seed 0)",
            ["class", "diversity D_c", "test accuracy", "retrieval precision@10"],
            rows,
        )
    )


if __name__ == "__main__":
    main()
