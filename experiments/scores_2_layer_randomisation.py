"""Experiment 2 (Bertolini et al. §4.2, Table 1 / Fig. 4): independent single-layer weight
randomisation of the trained digits CNN; Spearman correlation between the mean noise score
(average of the noise-score curve) and test accuracy.

Paper: ResNet-18 on ImageNet, Spearman ≈ 0.9 (top-1 and top-5).
Here: DigitsCNN on 16x16 digits; each of its four encoder layers randomised alone with
three seeds, plus "all" and "none" (14 networks); accuracy with the trained classifier head
(no retraining), as in the paper's table.

Run: python experiments/scores_2_layer_randomisation.py   (~1-2 min on 2 cores)
"""

from __future__ import annotations

import copy
import time

import torch
from _scores_common import print_table, spearman

from captum_concepts.data import DigitsCNN, accuracy, load_digits_tensors, pretrained_digits_cnn
from captum_concepts.metrics import score_curve

CURVE_LAYERS = ["block1.relu", "block2.relu", "block2.pool", "block3.relu"]
RANDOMISED = ["block1.conv", "block2.conv", "block3.conv", "embedding"]
N_EXAMPLES = 48


def randomise(model: DigitsCNN, names, seed: int) -> DigitsCNN:
    out = copy.deepcopy(model)
    fresh = DigitsCNN(image_size=16)
    torch.manual_seed(seed)
    for name in names:
        module = out.get_submodule(name)
        module.load_state_dict(fresh.get_submodule(name).state_dict())
        module.reset_parameters()
    return out.eval()


def main() -> None:
    t0 = time.perf_counter()
    data = load_digits_tensors(upscale=2)
    trained = pretrained_digits_cnn(seed=0, upscale=2).model.eval()
    x = data.x_test[:N_EXAMPLES]
    variants = [("none", trained)]
    for name in RANDOMISED:
        for seed in (1, 2, 3):
            variants.append((f"{name} (seed {seed})", randomise(trained, [name], seed)))
    variants.append(("all", randomise(trained, RANDOMISED, 1)))
    accs = [accuracy(model, data.x_test, data.y_test) for _, model in variants]
    results, columns = {}, {}
    for method in ("gradient", "activation_gradient"):
        for ch_agg, emb_agg in (("mean", "var"), ("mean", "mean")):
            key = f"{method}, rho_C={ch_agg}, rho_D={emb_agg}"
            scores = []
            for _, model in variants:
                torch.manual_seed(0)  # same noise inputs for every network
                curve = score_curve(
                    model,
                    "embedding",
                    CURVE_LAYERS,
                    x,
                    method=method,
                    channel_aggregator=ch_agg,
                    embedding_aggregator=emb_agg,
                    benchmark=False,
                    n_noise=2,
                )
                scores.append(curve.values.mean().item())
            columns[key] = scores
            results[key] = spearman(scores, accs)
    print_table(
        f"Single-layer randomisation: test accuracy and mean NS over {CURVE_LAYERS} ({N_EXAMPLES} digits)",
        ["randomised layer", "test accuracy", *[k for k in columns]],
        [
            [label, acc, *[columns[k][i] for k in columns]]
            for i, ((label, _), acc) in enumerate(zip(variants, accs))
        ],
    )
    print_table(
        "paper vs ours",
        ["quantity", "paper (ResNet-18, ImageNet)", "ours (DigitsCNN, digits)"],
        [
            [f"Spearman(mean NS, accuracy), {m}", "0.9 (top-1 and top-5)", f"{r:+.2f}"]
            for m, r in results.items()
        ],
    )
    print(f"\ntotal time {time.perf_counter() - t0:.0f} s")


if __name__ == "__main__":
    main()
