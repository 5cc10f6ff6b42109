"""Shared pieces of the Fashion-MNIST experiments (fmnist_*.py): command line, data, the SI
autoencoder of Bertolini, Clevert & Montanari (SI 0.B.1), a small residual network, training
loops and confidence intervals.

Every script takes ``--data DIR`` (the IDX files; default: ``load_fashion_mnist``'s search),
``--seeds N`` (seeds 0..N-1), ``--device`` (default cpu), ``--quick`` (tiny settings, a smoke
test that checks the script runs, not a result) and ``--out DIR`` (figures).
"""

from __future__ import annotations

import argparse
import math
import os
import time
from typing import Dict, List, Optional, Sequence, Tuple

import torch
from _scores_common import ATTRIBUTION_CONFIGS, FIGURES, conv_encoder
from torch import nn

from captum_concepts.data import FashionMNISTData, load_fashion_mnist

# One torch thread per process: the CPU is shared (see _scores_common).
torch.set_num_threads(1)


def parse_args(description: str, default_seeds: int, extra=None) -> argparse.Namespace:
    """The common command line; ``extra(parser)`` adds a script's own options."""
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--data", default=None, help="folder of the four Fashion-MNIST IDX files")
    p.add_argument("--seeds", type=int, default=default_seeds, help="number of seeds (0..N-1)")
    p.add_argument("--first-seed", type=int, default=0, help="seeds are first..first+N-1 (to split runs)")
    p.add_argument("--device", default="cpu", help="torch device (cpu, cuda, ...)")
    p.add_argument("--quick", action="store_true", help="tiny settings: a smoke test, not a result")
    p.add_argument("--out", default=FIGURES, help="folder for the figure (experiments/figures)")
    p.add_argument(
        "--all-configs",
        action="store_true",
        help="also the rho_D=var settings (one backward pass per embedding dimension: ~D times the cost)",
    )
    p.add_argument("--n-train", type=int, default=None, help="first N training images (default: all 60,000)")
    if extra is not None:
        extra(p)
    args = p.parse_args()
    if args.seeds < 1:
        p.error("--seeds must be >= 1")
    os.makedirs(args.out, exist_ok=True)
    args.seed_list = list(range(args.first_seed, args.first_seed + args.seeds))
    return args


def attribution_configs(args: argparse.Namespace) -> List[Tuple[str, str, str]]:
    """The (method, rho_C, rho_D) settings to run: the mean-aggregated ones (one backward pass
    each), and with ``--all-configs`` also the variance-aggregated ones of the digits scripts."""
    return [c for c in ATTRIBUTION_CONFIGS if args.all_configs or c[2] == "mean"]


def load(args: argparse.Namespace, n_test: Optional[int] = None):
    """Fashion-MNIST on ``args.device``: the first ``--n-train`` training images (all by default;
    the files' order is roughly class-balanced), the whole test set; ``--quick`` keeps 2,000 / 500."""
    data = load_fashion_mnist(args.data)
    n_train = args.n_train
    if args.quick:
        n_train, n_test = min(n_train or 2000, 2000), min(n_test or 500, 500)
    xtr, ytr = data.x_train[:n_train], data.y_train[:n_train]
    xte, yte = data.x_test[:n_test], data.y_test[:n_test]
    dev = torch.device(args.device)
    return FashionMNISTData(xtr.to(dev), ytr.to(dev), xte.to(dev), yte.to(dev))


# ------------------------------------------------------------------------------ models
class SIAutoencoder(nn.Module):
    """The drift autoencoder of Bertolini et al. SI 0.B.1 on 28x28 inputs.

    Encoder: two conv layers (3x3, stride 1, padding 1), each followed by batch norm, ReLU and
    2x2 max pooling, then a linear 32-d bottleneck (``encoder.bottleneck``). Decoder: a linear
    map back to ``(2w, 7, 7)``, then three conv layers, the first two preceded by a x2 upsampling
    and followed by batch norm + ReLU, the last by a sigmoid. The SI's unit counts are not
    legible in our copy of the paper: widths ``w, 2w`` (``w``: the script's ``--width``) are our
    choice; the SI's third upsampling would overshoot 28 px from a 7x7 start, so the last conv keeps 28x28.
    """

    def __init__(self, bottleneck: int = 32, width: int = 16, activation: str = "relu") -> None:
        super().__init__()
        w = width
        self.encoder = conv_encoder(bottleneck, w, 28, activation)
        self.decoder = nn.Sequential(
            nn.Linear(bottleneck, 2 * w * 7 * 7),
            nn.Unflatten(1, (2 * w, 7, 7)),
            nn.Upsample(scale_factor=2),
            nn.Conv2d(2 * w, w, 3, padding=1),
            nn.BatchNorm2d(w),
            nn.ReLU(),
            nn.Upsample(scale_factor=2),
            nn.Conv2d(w, w // 2, 3, padding=1),
            nn.BatchNorm2d(w // 2),
            nn.ReLU(),
            nn.Conv2d(w // 2, 1, 3, padding=1),
            nn.Sigmoid(),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.encoder(x))


class BasicBlock(nn.Module):
    """He et al.'s basic residual block: two 3x3 convs with batch norm, identity or 1x1 shortcut."""

    def __init__(self, c_in: int, c_out: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.shortcut = (
            nn.Identity()
            if stride == 1 and c_in == c_out
            else nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride, bias=False), nn.BatchNorm2d(c_out))
        )
        self.relu2 = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.bn2(self.conv2(self.relu1(self.bn1(self.conv1(x)))))
        return self.relu2(out + self.shortcut(x))


class FMNISTResNet(nn.Module):
    """A small ResNet for 28x28 grey images: stem conv, three residual stages (28, 14, 7 px),
    global average pooling to a ``4w``-d embedding (``embedding``, a pooled vector as in the
    paper's ResNet-18), linear classifier (``fc``)."""

    def __init__(self, width: int = 16, n_classes: int = 10) -> None:
        super().__init__()
        w = width
        self.stem = nn.Sequential(nn.Conv2d(1, w, 3, 1, 1, bias=False), nn.BatchNorm2d(w), nn.ReLU())
        self.layer1 = BasicBlock(w, w)
        self.layer2 = BasicBlock(w, 2 * w, stride=2)
        self.layer3 = BasicBlock(2 * w, 4 * w, stride=2)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.embedding = nn.Flatten()
        self.fc = nn.Linear(4 * w, n_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.embedding(self.pool(self.layer3(self.layer2(self.layer1(self.stem(x)))))))


# Source layers of the ResNet's score curves, shallow to deep.
RESNET_LAYERS = [
    "stem",
    "layer1.relu1",
    "layer1",
    "layer2.relu1",
    "layer2",
    "layer3.relu1",
    "layer3",
]
# Layers re-initialised one at a time in the layer-randomisation experiment (§4.2).
RESNET_RANDOMISABLE = [
    "stem.0",
    "layer1.conv1",
    "layer1.conv2",
    "layer2.conv1",
    "layer2.conv2",
    "layer2.shortcut.0",
    "layer3.conv1",
    "layer3.conv2",
    "layer3.shortcut.0",
]


# ------------------------------------------------------------------------------ training
def train_autoencoder(
    model: SIAutoencoder,
    data: FashionMNISTData,
    epochs: int,
    seed: int,
    lr: float = 1e-3,
    batch_size: int = 64,
) -> Dict[str, float]:
    """MSE reconstruction, Adam with a fixed learning rate (SI 0.B.1). Returns test MSE and seconds."""
    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    start = time.perf_counter()
    for _ in range(epochs):
        model.train()
        order = torch.randperm(len(data.x_train), generator=g).to(data.x_train.device)
        for i in range(0, len(order), batch_size):
            x = data.x_train[order[i : i + batch_size]]
            loss = nn.functional.mse_loss(model(x), x)
            opt.zero_grad()
            loss.backward()
            opt.step()
    seconds = time.perf_counter() - start
    model.eval()
    with torch.no_grad():
        mse = (
            sum(nn.functional.mse_loss(model(x), x, reduction="sum").item() for x in data.x_test.split(1000))
            / data.x_test.numel()
        )
    return {"test_mse": mse, "seconds": seconds}


def train_resnet(
    model: nn.Module, data: FashionMNISTData, epochs: int, seed: int, lr: float = 3e-3, batch_size: int = 128
) -> Dict[str, float]:
    """Cross-entropy, Adam with a one-cycle cosine schedule; returns test accuracy and seconds."""
    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    steps = epochs * math.ceil(len(data.x_train) / batch_size)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps)
    start = time.perf_counter()
    for _ in range(epochs):
        model.train()
        order = torch.randperm(len(data.x_train), generator=g).to(data.x_train.device)
        for i in range(0, len(order), batch_size):
            idx = order[i : i + batch_size]
            x = data.x_train[idx]
            if torch.rand((), generator=g) < 0.5:  # horizontal flips: clothes are left-right symmetric
                x = x.flip(-1)
            loss = nn.functional.cross_entropy(model(x), data.y_train[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
    seconds = time.perf_counter() - start
    return {"accuracy": test_accuracy(model.eval(), data), "seconds": seconds}


def cached_resnet(
    args: argparse.Namespace, data: FashionMNISTData, seed: int, epochs: int, width: int = 8
) -> Tuple[FMNISTResNet, float]:
    """The ResNet of ``fmnist_scores_resnet.py`` for ``seed``: loaded from ``args.cache`` when a run
    with the same settings saved it, else trained (and saved unless ``--quick``). Returns the model
    in eval mode and its training seconds (0 when loaded)."""
    torch.manual_seed(seed)
    model = FMNISTResNet(width=width).to(args.device)
    path = os.path.join(args.cache, f"resnet_w{width}_e{epochs}_n{len(data.x_train)}_s{seed}.pt")
    if os.path.exists(path) and not args.quick:
        model.load_state_dict(torch.load(path, map_location=args.device))
        return model.eval(), 0.0
    seconds = train_resnet(model, data, epochs=epochs, seed=seed)["seconds"]
    if not args.quick:
        os.makedirs(args.cache, exist_ok=True)
        torch.save(model.state_dict(), path)
    return model.eval(), seconds


CACHE = os.path.join(os.path.expanduser("~"), ".cache", "captum_concepts_fmnist")


@torch.no_grad()
def test_accuracy(model: nn.Module, data: FashionMNISTData) -> float:
    correct = sum(
        (model(x).argmax(1) == y).sum().item()
        for x, y in zip(data.x_test.split(1000), data.y_test.split(1000))
    )
    return correct / len(data.y_test)


# ------------------------------------------------------------------------------ statistics
def t_interval(values: Sequence[float], level: float = 0.95) -> Tuple[float, float, float]:
    """Mean and Student-t ``level`` interval over seeds ``(mean, lo, hi)``; one value: ``(v, nan, nan)``."""
    from scipy import stats

    v = torch.as_tensor(list(values), dtype=torch.float64)
    m = v.mean().item()
    if len(v) < 2:
        return m, float("nan"), float("nan")
    half = stats.t.ppf(0.5 + level / 2, len(v) - 1) * v.std().item() / math.sqrt(len(v))
    return m, m - half, m + half


def fmt_ci(values: Sequence[float], digits: int = 3) -> str:
    m, lo, hi = t_interval(values)
    if math.isnan(lo):
        return f"{m:+.{digits}f} (1 seed)"
    return f"{m:+.{digits}f} [{lo:+.{digits}f}, {hi:+.{digits}f}]"


def verdict(values: Sequence[float], sign: int) -> str:
    """ "reproduced" when the 95 % t-interval lies on the paper's side of 0 (``sign`` = +1 or -1),
    "not" when it lies on the other side, "partly" when it covers 0 (or one seed only)."""
    m, lo, hi = t_interval(values)
    if math.isnan(lo):
        return "partly (1 seed: no interval)"
    if (sign > 0 and lo > 0) or (sign < 0 and hi < 0):
        return "reproduced"
    if (sign > 0 and hi < 0) or (sign < 0 and lo > 0):
        return "not (interval on the other side)"
    return "partly (interval covers 0)"


def header(args: argparse.Namespace, what: str) -> List[str]:
    return [
        f"{what}: seeds {args.seed_list[0]}..{args.seed_list[-1]}, device {args.device}, "
        f"torch threads {torch.get_num_threads()}"
        + (" [--quick: smoke test, not a result]" if args.quick else "")
    ]


def save_figure(fig, path) -> None:
    """Lay out ``fig``, write it to ``path`` (80 dpi, as every figure of these scripts) and close it."""
    import matplotlib.pyplot as plt

    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)
    print(f"figure: {path}")
