"""Benchmark of the representation scores (issue 4).

A. Score curve over all conv layers of a CNN (``score_curve``: one EmbeddingAttribution call for
   every layer) vs one ``noise_score`` call per layer; the ratio is the speed-up (target >= 0.8 L).
B. Training with score constraints (``loss = task - g NS - g VS``, ``differentiable=True``) vs plain
   training of the same autoencoder, bottleneck sizes 8/16/32/64 (paper SI Table 3: 11x-130x
   overhead; target <= 3x). Scores every mini-batch, and every 20 mini-batches (the paper's schedule).

Both sides of each ratio are measured in the same run; medians over repeats. One thread per process
(the CPU is shared). Run: python benchmarks/scores.py   (~3-5 min on 2 cores)
"""

from __future__ import annotations

import os
import statistics
import sys
import time
from collections import OrderedDict

import torch
from torch import nn

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "experiments"))
from _scores_common import DigitsAutoencoder, train_autoencoder  # noqa: E402

from captum_concepts.attr import EmbeddingAttribution  # noqa: E402
from captum_concepts.data import load_digits_tensors  # noqa: E402
from captum_concepts.metrics import noise_score, score_curve  # noqa: E402

REPEATS = 3


class DeepCNN(nn.Module):
    """Eight 3x3 conv layers (ReLU, two max-pools) and a linear embedding, for 16x16 digits."""

    def __init__(self, embedding_dim: int = 32) -> None:
        super().__init__()
        layers, c_in = OrderedDict(), 1
        for i, (c, pool) in enumerate(
            [(16, 0), (16, 0), (32, 1), (32, 0), (32, 0), (64, 1), (64, 0), (64, 0)]
        ):
            layers[f"conv{i}"] = nn.Conv2d(c_in, c, 3, padding=1)
            layers[f"relu{i}"] = nn.ReLU()
            if pool:
                layers[f"pool{i}"] = nn.MaxPool2d(2)
            c_in = c
        self.features = nn.Sequential(layers)
        self.embedding = nn.Linear(64 * 4 * 4, embedding_dim)

    def forward(self, x):
        return self.embedding(self.features(x).flatten(1))


def median_time(fn, repeats: int = REPEATS) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def bench_curve() -> None:
    torch.manual_seed(0)
    model = DeepCNN().eval()
    layers = [name for name, m in model.named_modules() if isinstance(m, nn.Conv2d)]
    x = load_digits_tensors(upscale=2).x_test[:32]
    noise = torch.randn_like(x)  # the same noise input on both sides
    print(f"\nA. noise-score curve over L={len(layers)} conv layers, DeepCNN, 32 digits 16x16, D=32")
    print(
        "| aggregators (channel, embedding) | one score_curve call | L noise_score calls | speed-up | 0.8 L "
        "| one noise_score call at the lowest layer | curve / lowest-layer call |"
    )
    print("|---|---|---|---|---|---|---|")
    for ca, ea_ in (("mean", "var"), ("mean", "mean")):

        def curve(ca=ca, ea_=ea_):
            torch.manual_seed(0)
            return score_curve(
                model,
                "embedding",
                nn.Conv2d,
                x,
                method="gradient",  # EmbeddingAttribution's default, as on the per-layer side
                channel_aggregator=ca,
                embedding_aggregator=ea_,
                benchmark=False,
                noise_func=noise,
            )

        def per_layer(ca=ca, ea_=ea_):
            return [
                noise_score(
                    EmbeddingAttribution(
                        model, "embedding", layer=name, channel_aggregator=ca, embedding_aggregator=ea_
                    ),
                    x,
                    noise_func=noise,
                )
                for name in layers
            ]

        a, b = curve(), per_layer()
        # same noise draws on both sides: the values agree
        assert torch.allclose(a.per_example, torch.stack(b), atol=1e-5)
        lowest = EmbeddingAttribution(
            model, "embedding", layer=layers[0], channel_aggregator=ca, embedding_aggregator=ea_
        )
        t_curve, t_layers = median_time(curve), median_time(per_layer)
        t_low = median_time(lambda lowest=lowest: noise_score(lowest, x, noise_func=noise))
        print(
            f"| {ca}, {ea_} | {t_curve:.3f} s | {t_layers:.3f} s | {t_layers / t_curve:.1f}x | "
            f"{0.8 * len(layers):.1f}x | {t_low:.3f} s | {t_curve / t_low:.2f} |"
        )


def bench_training() -> None:
    data = load_digits_tensors()
    epochs = 2
    print(
        f"\nB. training time with score constraints vs plain training ({epochs} epochs of 8x8 digits, "
        "batch 64, scores at encoder.conv2 on the whole mini-batch, gamma = 0.1; gradient, rho_C=mean, "
        "rho_D=var unless stated)"
    )
    print(
        "| bottleneck D | plain | NS every batch | NS (rho_D=mean) every batch | VS every batch "
        "| NS+VS every batch | NS+VS every 20 | paper NS (every 20) |"
    )
    print("|---|---|---|---|---|---|---|---|")
    paper = {8: "11x", 16: "19x", 32: "40x", 64: "131x"}
    for d in (8, 16, 32, 64):

        def run(g_ns=0.0, g_vs=0.0, every=1, score_kwargs=None, d=d):
            model = DigitsAutoencoder(bottleneck=d, image_size=8)
            return train_autoencoder(
                model,
                data,
                epochs=epochs,
                seed=0,
                gamma_ns=g_ns,
                gamma_vs=g_vs,
                score_every=every,
                score_kwargs=score_kwargs,
            )["seconds"]

        plain = statistics.median(run() for _ in range(REPEATS))
        cells = []
        for kw in (
            dict(g_ns=0.1),
            dict(g_ns=0.1, score_kwargs=dict(embedding_aggregator="mean")),
            dict(g_vs=0.1),
            dict(g_ns=0.1, g_vs=0.1),
            dict(g_ns=0.1, g_vs=0.1, every=20),
        ):
            t = statistics.median(run(**kw) for _ in range(REPEATS))
            cells.append(f"{t:.2f} s ({t / plain:.1f}x)")
        print(f"| {d} | {plain:.2f} s | " + " | ".join(cells) + f" | {paper[d]} |")


if __name__ == "__main__":
    print(
        f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, torch {torch.__version__}, "
        f"threads {torch.get_num_threads()}, {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}"
    )
    bench_curve()
    bench_training()
