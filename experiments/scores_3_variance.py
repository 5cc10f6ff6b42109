"""Experiment 3 (Bertolini et al. §3.2, §4.3, Fig. 5): the variance score stays below
Popoviciu's bound 1/4 everywhere; trained vs untrained networks across embedding sizes.

Paper: VS <= 0.25 always; small embeddings (Inception V3, ResNet-18) trained and untrained
both near the bound; a large embedding (AlexNet, 9216) trained falls far below its untrained
version (redundant, entangled embedding). Maps binarised at a threshold after normalisation
(paper §4.3); we report both the raw and the binarised (t = 0.5) score.

Run: python experiments/scores_3_variance.py   (~1-2 min on 2 cores)
"""

from __future__ import annotations

import time

import torch
from _scores_common import print_table

from captum_concepts.data import DigitsCNN, load_digits_tensors, train_digits_cnn
from captum_concepts.metrics import score_curve

LAYERS = ["block1.relu", "block2.relu", "block2.pool", "block3.relu"]
SIZES = (4, 16, 64, 256)
N_EXAMPLES = 24


def main() -> None:
    t0 = time.perf_counter()
    data = load_digits_tensors()  # 8x8: per-dimension maps of 256 dims stay cheap
    x = data.x_test[:N_EXAMPLES]
    rows, overall_max = [], 0.0
    summary = {}
    for d in SIZES:
        trained = train_digits_cnn(data, seed=0, embedding_dim=d).model.eval()
        torch.manual_seed(1)
        untrained = DigitsCNN(embedding_dim=d).eval()
        for threshold in (None, 0.5):
            vals = {}
            for label, model in (("trained", trained), ("untrained", untrained)):
                curve = score_curve(  # vanilla gradients, as measured in experiments/README.md
                    model, "embedding", LAYERS, x, score="variance", method="gradient", threshold=threshold
                )
                vals[label] = curve.values
                overall_max = max(overall_max, curve.per_example.max().item())
            t = "none" if threshold is None else str(threshold)
            rows.append(
                [d, t]
                + [f"{a:.3f} / {b:.3f}" for a, b in zip(vals["trained"], vals["untrained"])]
                + [f"{(vals['trained'] - vals['untrained']).mean():+.3f}"]
            )
            summary[(d, t)] = (vals["trained"].mean().item(), vals["untrained"].mean().item())
    print_table(
        f"Variance score per layer, trained / untrained ({N_EXAMPLES} test digits, gradient, channel mean)",
        ["D", "threshold", *LAYERS, "mean(trained - untrained)"],
        rows,
    )
    ratio_small = summary[(SIZES[0], "0.5")][0] / 0.25
    ratio_large = summary[(SIZES[-1], "0.5")][0] / 0.25
    print_table(
        "paper vs ours",
        ["claim", "paper", "ours"],
        [
            ["max VS over all layers, examples, sizes", "<= 0.25", f"{overall_max:.4f}"],
            [
                f"trained VS / bound, smallest D={SIZES[0]} (t=0.5)",
                "close to 1 (small D)",
                f"{ratio_small:.2f}",
            ],
            [
                f"trained VS / bound, largest D={SIZES[-1]} (t=0.5)",
                "far below 1 (AlexNet)",
                f"{ratio_large:.2f}",
            ],
            [
                f"trained - untrained, largest D={SIZES[-1]} (t=0.5)",
                "strongly negative (AlexNet)",
                f"{summary[(SIZES[-1], '0.5')][0] - summary[(SIZES[-1], '0.5')][1]:+.3f}",
            ],
        ],
    )
    print(f"\ntotal time {time.perf_counter() - t0:.0f} s")


if __name__ == "__main__":
    main()
