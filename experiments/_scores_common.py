"""Shared pieces of the representation-score experiments (scores_*.py)."""

from __future__ import annotations

import argparse
import os
import time
import warnings
from collections import OrderedDict
from typing import Dict, List, Optional, Sequence

import torch
from torch import nn

# The machine is shared by several jobs: one thread per process avoids oversubscription
# (measured: a 2-thread tiny conv backward was ~100x slower under load than 1 thread).
torch.set_num_threads(1)
# EmbeddingAttribution computes maps in eval mode and warns about training mode; training
# loops below call it on purpose between optimiser steps.
warnings.filterwarnings("ignore", message="model is in training mode")


# The (method, channel_aggregator, embedding_aggregator) settings the score experiments compare.
ATTRIBUTION_CONFIGS = [
    ("gradient", "mean", "var"),
    ("activation_gradient", "mean", "var"),
    ("gradient", "mean", "mean"),
    ("activation_gradient", "mean", "mean"),
]


# Bertolini et al. §4.5: the (label, gamma_ns, gamma_vs) settings of the score-constraint runs (the
# SI's grid is not legible in our copy: these are our choices) and how often the scores are applied.
CONSTRAINT_CONFIGS = [
    ("orig.", 0.0, 0.0),
    ("NS", 0.01, 0.0),
    ("NS", 0.1, 0.0),
    ("VS", 0.0, 0.01),
    ("VS", 0.0, 0.1),
    ("NS+VS", 0.1, 0.1),
]
SCORE_EVERY = 20  # mini-batches, as in the paper


FIGURES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "figures")


def figure_dir() -> str:
    """``--out DIR`` of a score experiment (default ``experiments/figures``), created."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", default=FIGURES, help="folder for the PNG figure (experiments/figures)")
    out = parser.parse_args().out
    os.makedirs(out, exist_ok=True)
    return out


def spearman(a: Sequence[float], b: Sequence[float]) -> float:
    from scipy.stats import spearmanr

    return float(spearmanr(a, b).statistic)


def print_table(title: str, header: List[str], rows: List[List[object]]) -> None:
    cells = [[_fmt(c) for c in row] for row in rows]
    widths = [max(len(h), *(len(r[i]) for r in cells)) for i, h in enumerate(header)]
    print(f"\n{title}")
    print("| " + " | ".join(h.ljust(w) for h, w in zip(header, widths)) + " |")
    print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    for r in cells:
        print("| " + " | ".join(c.ljust(w) for c, w in zip(r, widths)) + " |")


def _fmt(c: object) -> str:
    if isinstance(c, float):
        return f"{c:.3f}"
    return str(c)


def conv_encoder(bottleneck: int, width: int, image_size: int, activation: str = "softplus") -> nn.Sequential:
    """The SI 0.B encoder: two 3x3 conv layers (``width``, ``2 * width``), each followed by batch
    norm, the activation (``"softplus"`` or ReLU) and 2x2 max pooling, then a linear bottleneck.
    ``conv2`` is the layer the scores are computed at."""
    act = nn.Softplus if activation == "softplus" else nn.ReLU
    s = image_size // 4
    return nn.Sequential(
        OrderedDict(
            conv1=nn.Conv2d(1, width, 3, padding=1),
            bn1=nn.BatchNorm2d(width),
            act1=act(),
            pool1=nn.MaxPool2d(2),
            conv2=nn.Conv2d(width, 2 * width, 3, padding=1),
            bn2=nn.BatchNorm2d(2 * width),
            act2=act(),
            pool2=nn.MaxPool2d(2),
            flatten=nn.Flatten(),
            bottleneck=nn.Linear(2 * width * s * s, bottleneck),
        )
    )


class DigitsAutoencoder(nn.Module):
    """Conv encoder (two conv layers + linear bottleneck), MLP decoder, linear classifier on
    the bottleneck: the paper's §4.4/§4.5 set-up (SI 0.B) scaled to 8x8 (or 16x16) digits.

    ``encoder.conv2`` is the layer the scores are computed at (as in the paper).
    """

    def __init__(
        self, bottleneck: int = 32, activation: str = "softplus", image_size: int = 8, width: int = 16
    ) -> None:
        super().__init__()
        self.image_size = image_size
        self.encoder = conv_encoder(bottleneck, width, image_size, activation)
        self.decoder = nn.Sequential(
            nn.Linear(bottleneck, 128), nn.ReLU(), nn.Linear(128, image_size * image_size), nn.Sigmoid()
        )
        self.classifier = nn.Linear(bottleneck, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.encoder(x))

    def reconstruct(self, x: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.encoder(x)).reshape(x.shape)


def train_autoencoder(
    model: DigitsAutoencoder,
    data,
    epochs: int,
    seed: int,
    gamma_ns: float = 0.0,
    gamma_vs: float = 0.0,
    score_every: int = 1,
    score_batch: Optional[int] = None,
    classify: bool = True,
    lr: float = 3e-3,
    batch_size: int = 64,
    score_kwargs: Optional[Dict] = None,
) -> Dict[str, float]:
    """``L = L_rec + L_cls - gamma_ns NS - gamma_vs VS`` (paper §4.5); scores at
    ``encoder.conv2`` every ``score_every`` mini-batches. Returns accuracy and seconds."""
    from captum_concepts.attr import EmbeddingAttribution
    from captum_concepts.metrics import noise_score, variance_score

    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    ea = EmbeddingAttribution(model, "encoder.bottleneck", layer="encoder.conv2", **(score_kwargs or {}))
    x_tr, y_tr = data.x_train, data.y_train
    start = time.perf_counter()
    step = 0
    for _ in range(epochs):
        model.train()
        order = torch.randperm(len(x_tr), generator=g)
        for i in range(0, len(order), batch_size):
            idx = order[i : i + batch_size]
            x, y = x_tr[idx], y_tr[idx]
            z = model.encoder(x)
            loss = nn.functional.mse_loss(model.decoder(z).reshape(x.shape), x)
            if classify:
                loss = loss + nn.functional.cross_entropy(model.classifier(z), y)
            if (gamma_ns or gamma_vs) and step % score_every == 0:
                xs = x if score_batch is None else x[:score_batch]
                if gamma_ns:
                    loss = loss - gamma_ns * noise_score(ea, xs, differentiable=True).mean()
                if gamma_vs:
                    loss = loss - gamma_vs * variance_score(ea, xs, differentiable=True).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
            step += 1
    seconds = time.perf_counter() - start
    model.eval()
    with torch.no_grad():
        acc = (model(data.x_test).argmax(1) == data.y_test).float().mean().item()
        rec = nn.functional.mse_loss(model.reconstruct(data.x_test), data.x_test).item()
    return {"accuracy": acc, "seconds": seconds, "reconstruction_mse": rec}
