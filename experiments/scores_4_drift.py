"""Experiment 4 (Bertolini et al. §4.4, Fig. 6): dataset drift. An autoencoder trained on
the digits; drifted inputs ``x_eps = clip(x + eps * n, 0, 1)`` (``--clip none``: ``x + eps * n``),
``n ~ N(0, 1)``; relative change of the noise score at the second convolution,
``(NS(x_eps) - NS(x)) / NS(x)``, against ``eps``.

Paper: MNIST autoencoder (two conv layers + linear, 32-d bottleneck, ReLU, batch norm, max
pooling; 5 epochs Adam); "shifted data samples (normalized in range [0, 1])"; the relative noise
score falls as eps grows, Spearman < 0.

Run: python experiments/scores_4_drift.py [--out experiments/figures] [--clip data|none]
(~1 min on 2 cores). Writes ``scores_drift.png`` (``--clip data``, the default, as
``drift_score``'s default) or ``scores_drift_noclip.png`` (``--clip none``): relative noise-score
change against eps, per setting.
"""

from __future__ import annotations

import argparse
import os
import time
import warnings

import torch
from _scores_common import (
    ATTRIBUTION_CONFIGS,
    FIGURES,
    DigitsAutoencoder,
    print_table,
    spearman,
    train_autoencoder,
)

from captum_concepts.attr import EmbeddingAttribution
from captum_concepts.data import load_digits_tensors
from captum_concepts.metrics import drift_score

EPSILONS = [0.0, 0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0, 1.5, 2.0]
SEEDS = (0, 1, 2)
N_EXAMPLES = 128
# the four settings are compared on purpose, the 'var' ones included
warnings.filterwarnings("ignore", message="the EmbeddingAttribution passed uses embedding_aggregator='var'")


def _arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", default=FIGURES, help="folder for the PNG figure (experiments/figures)")
    parser.add_argument(
        "--clip",
        choices=("data", "none"),
        default="data",
        help="clip x + eps*n to the data range [0, 1] (data, drift_score's default) or not (none)",
    )
    args = parser.parse_args()
    os.makedirs(args.out, exist_ok=True)
    return args


def main() -> None:
    args = _arguments()
    out = args.out
    clip_range = (0.0, 1.0) if args.clip == "data" else None
    t0 = time.perf_counter()
    data = load_digits_tensors(upscale=2)
    x = data.x_test[:N_EXAMPLES]
    curves = {}
    models = []
    for seed in SEEDS:
        torch.manual_seed(seed)
        model = DigitsAutoencoder(bottleneck=32, activation="relu", image_size=16)
        train_autoencoder(model, data, epochs=5, seed=seed, classify=False)
        models.append(model.eval())
    for method, ch_agg, emb_agg in ATTRIBUTION_CONFIGS:
        per_seed = []
        for seed, model in zip(SEEDS, models):
            ea = EmbeddingAttribution(
                model,
                "encoder.bottleneck",
                layer="encoder.conv2",
                method=method,
                channel_aggregator=ch_agg,
                embedding_aggregator=emb_agg,
            )
            torch.manual_seed(seed)
            per_seed.append(
                drift_score(ea, x, EPSILONS, n_noise=4, clip_range=clip_range, show_progress=False)
            )
        curves[f"{method}, rho_D={emb_agg}"] = torch.stack(per_seed)
    rows = [
        [eps] + [f"{curves[m][:, i].mean():+.3f} ± {curves[m][:, i].std():.3f}" for m in curves]
        for i, eps in enumerate(EPSILONS)
    ]
    what = "clip(x + eps n, 0, 1)" if clip_range else "x + eps n, not clipped"
    print_table(
        f"Relative noise-score change at encoder.conv2 vs drift eps, {what} ({N_EXAMPLES} test digits "
        f"16x16, mean ± std over {len(SEEDS)} autoencoders)",
        ["eps", *curves],
        rows,
    )
    paper_rows = []
    for m, c in curves.items():
        rhos = [spearman(EPSILONS, c[s].tolist()) for s in range(len(SEEDS))]
        paper_rows.append(
            [f"Spearman(eps, relative NS), {m}", "negative", " / ".join(f"{r:+.2f}" for r in rhos)]
        )
    print_table(
        "paper vs ours (one value per seed)", ["quantity", "paper (MNIST)", "ours (digits)"], paper_rows
    )
    name = "scores_drift.png" if clip_range else "scores_drift_noclip.png"
    _plot(curves, os.path.join(out, name), what)
    print(f"\ntotal time {time.perf_counter() - t0:.0f} s")


def _plot(curves, path: str, what: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    for label, c in curves.items():
        mean, std = c.mean(0).numpy(), c.std(0).numpy()
        ax.plot(EPSILONS, mean, marker="o", label=label)
        ax.fill_between(EPSILONS, mean - std, mean + std, alpha=0.15)
    ax.axhline(0.0, color="grey", lw=0.8)
    ax.set_xlabel("drift eps")
    ax.set_ylabel("(NS(x_eps) - NS(x)) / NS(x)")
    ax.set_title(f"Drift at encoder.conv2, {what}, {len(SEEDS)} autoencoders (mean ± std)", fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=60)
    plt.close(fig)
    print(f"figure: {path}")


if __name__ == "__main__":
    main()
