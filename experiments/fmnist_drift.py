"""Bertolini, Clevert & Montanari §4.4 (Fig. 6) on Fashion-MNIST: dataset drift.

The SI's autoencoder (SI 0.B.1: two conv layers with batch norm and max pooling, a linear 32-d
bottleneck, ReLU, MSE, Adam, 5 epochs) is trained on the 60,000 training images, one per seed.
Drifted test images ``x_eps = x + eps * n``, ``n ~ N(0, 1)``, clipped to ``[0, 1]`` (the paper's
"normalized in range" data) and, as a second setting, not clipped; relative change of the
noise score at the second convolution ``(NS(x_eps) - NS(x)) / NS(x)`` against ``eps``; Spearman
per seed. Control: the same architecture untrained (fresh initialisation per seed).

Paper: the relative noise score falls as eps grows (negative Spearman).

Run:  python experiments/fmnist_drift.py --seeds 5 [--data DIR] [--device cpu] [--quick]
Writes ``fmnist_drift.png``; trained weights are cached in ``--cache`` (reruns skip training).
"""

from __future__ import annotations

import os
import time

import torch
from _fmnist_common import (
    SIAutoencoder,
    attribution_configs,
    fmt_ci,
    header,
    load,
    parse_args,
    save_figure,
    train_autoencoder,
    verdict,
)
from _scores_common import print_table, spearman

from captum_concepts.attr import EmbeddingAttribution
from captum_concepts.metrics import drift_score

EPSILONS = [0.0, 0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0, 1.5, 2.0]
CLIPS = {"clipped to [0, 1]": (0.0, 1.0), "not clipped": None}


def _extra(p) -> None:
    p.add_argument("--width", type=int, default=8, help="encoder channels w, 2w (default 8)")
    p.add_argument("--epochs", type=int, default=5, help="training epochs (SI: 5)")
    p.add_argument("--n-examples", type=int, default=256, help="test images per drift curve")
    p.add_argument(
        "--cache", default=os.path.join(os.path.expanduser("~"), ".cache", "captum_concepts_fmnist")
    )


def main() -> None:
    args = parse_args(__doc__.splitlines()[0], default_seeds=5, extra=_extra)
    t0 = time.perf_counter()
    epochs = 1 if args.quick else args.epochs
    n = 32 if args.quick else args.n_examples
    data = load(args)
    x = data.x_test[:n]
    print("\n".join(header(args, "fmnist_drift")))
    print(f"train {len(data.x_train)} images, {epochs} epochs, width {args.width}; drift on {n} test images")
    # curves[(network, clip, config)] -> list over seeds of (E,) tensors
    curves: dict = {}
    train_rows = []
    os.makedirs(args.cache, exist_ok=True)
    for seed in args.seed_list:
        torch.manual_seed(seed)
        model = SIAutoencoder(width=args.width).to(args.device)
        tag = f"ae_w{args.width}_e{epochs}_n{len(data.x_train)}_s{seed}.pt"
        path = os.path.join(args.cache, tag)
        if os.path.exists(path) and not args.quick:
            model.load_state_dict(torch.load(path, map_location=args.device))
            info = {"test_mse": float("nan"), "seconds": 0.0}
        else:
            info = train_autoencoder(model, data, epochs=epochs, seed=seed)
            if not args.quick:
                torch.save(model.state_dict(), path)
        model.eval()
        with torch.no_grad():
            mse = torch.nn.functional.mse_loss(model(data.x_test[:2000]), data.x_test[:2000]).item()
        train_rows.append([seed, f"{mse:.4f}", f"{info['seconds']:.0f}" if info["seconds"] else "cached"])
        print(f"seed {seed}: test MSE {mse:.4f}, training {info['seconds']:.0f} s", flush=True)
        torch.manual_seed(100 + seed)
        untrained = SIAutoencoder(width=args.width).to(args.device).eval()
        for net_name, net in (("trained", model), ("untrained", untrained)):
            for method, ch_agg, emb_agg in attribution_configs(args):
                ea = EmbeddingAttribution(
                    net,
                    "encoder.bottleneck",
                    layer="encoder.conv2",
                    method=method,
                    channel_aggregator=ch_agg,
                    embedding_aggregator=emb_agg,
                )
                for clip_name, clip in CLIPS.items():
                    torch.manual_seed(seed)  # same drift direction and noise inputs for every setting
                    c = drift_score(ea, x, EPSILONS, n_noise=4, clip_range=clip).cpu()
                    curves.setdefault((net_name, clip_name, f"{method}, rho_D={emb_agg}"), []).append(c)
    print_table(
        "Autoencoders (test MSE on 2,000 test images)", ["seed", "test MSE", "training s"], train_rows
    )
    configs = [f"{m}, rho_D={e}" for m, _, e in attribution_configs(args)]
    for clip_name in CLIPS:
        rows = []
        for i, eps in enumerate(EPSILONS):
            rows.append(
                [eps]
                + [fmt_ci([c[i].item() for c in curves[("trained", clip_name, cfg)]]) for cfg in configs]
            )
        print_table(
            f"Relative NS change at encoder.conv2, trained AEs, drift {clip_name} "
            f"(mean [95 % t-interval] over {args.seeds} seeds, {n} test images each)",
            ["eps", *configs],
            rows,
        )
    paper_rows = []
    for clip_name in CLIPS:
        for cfg in configs:
            rho = {}
            for net_name in ("trained", "untrained"):
                rho[net_name] = [spearman(EPSILONS, c.tolist()) for c in curves[(net_name, clip_name, cfg)]]
                at1 = [c[EPSILONS.index(1.0)].item() for c in curves[(net_name, clip_name, cfg)]]
                paper_rows.append(
                    [
                        f"{net_name}, {clip_name}, {cfg}",
                        "negative" if net_name == "trained" else "(control)",
                        " ".join(f"{r:+.2f}" for r in rho[net_name]),
                        fmt_ci(rho[net_name], 2),
                        fmt_ci(at1, 3),
                        verdict(rho[net_name], -1) if net_name == "trained" else "-",
                    ]
                )
            diff = [a - b for a, b in zip(rho["trained"], rho["untrained"])]
            paper_rows.append(
                [
                    f"trained - untrained (paired), {clip_name}, {cfg}",
                    "(not in paper)",
                    "",
                    fmt_ci(diff, 2),
                    "",
                    "-",
                ]
            )
    print_table(
        f"paper vs ours: Spearman(eps, relative NS) per seed ({args.seeds} seeds, {n} test images, "
        f"{len(EPSILONS)} eps values incl. 0)",
        [
            "network, drift, setting",
            "paper (MNIST)",
            "per seed",
            "mean [95 % CI]",
            "rel. NS at eps=1",
            "verdict",
        ],
        paper_rows,
    )
    _plot(curves, configs, args, os.path.join(args.out, "fmnist_drift.png"))
    print(f"\ntotal time {time.perf_counter() - t0:.0f} s (device {args.device})")


def _plot(curves, configs, args, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.6), sharey=True)
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for ax, clip_name in zip(axes, CLIPS):
        for k, cfg in enumerate(configs):
            for net_name, style in (("trained", "-"), ("untrained", ":")):
                c = torch.stack(curves[(net_name, clip_name, cfg)])
                mean = c.mean(0).numpy()
                label = f"{cfg} ({net_name})"
                ax.plot(
                    EPSILONS, mean, style, marker="o" if style == "-" else None, color=colours[k], label=label
                )
                if net_name == "trained" and len(c) > 1:
                    sd = c.std(0).numpy()
                    ax.fill_between(EPSILONS, mean - sd, mean + sd, color=colours[k], alpha=0.15)
        ax.axhline(0.0, color="grey", lw=0.8)
        ax.set_title(f"drift {clip_name}", fontsize=11)
        ax.set_xlabel("drift eps", fontsize=11)
    axes[0].set_ylabel("(NS(x_eps) - NS(x)) / NS(x)", fontsize=11)
    axes[1].legend(fontsize=9, loc="center left", bbox_to_anchor=(1.01, 0.5))
    fig.suptitle(
        f"Fashion-MNIST drift at encoder.conv2: {args.seeds} SI autoencoders (mean ± std), dotted: untrained",
        fontsize=11,
    )
    save_figure(fig, path)


if __name__ == "__main__":
    main()
