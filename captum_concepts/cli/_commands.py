"""``captum-concepts scores | saliency | discover`` on a user's model and image folder."""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from . import _sections as S
from ._loading import (
    CLIError,
    Normalized,
    check_forward,
    load_images,
    load_model,
    load_weights,
    pick_device,
    resolve_layers_cli,
)
from ._report import Report

_TITLES = {
    "scores": "Embedding attributions and representation scores",
    "saliency": "Semantic vectors and semantic saliency",
    "discover": "Concept discovery by coupled NMF",
}


def run_user_command(args: argparse.Namespace) -> Path:
    import matplotlib

    matplotlib.use("Agg", force=True)
    from .. import __version__

    if args.max_images < 2:
        raise CLIError(f"--max-images must be at least 2, got {args.max_images}")
    if args.image_size < 1:
        raise CLIError(f"--image-size must be positive, got {args.image_size}")
    device = pick_device(args.device)
    torch.manual_seed(args.seed)
    data = load_images(
        args.images,
        args.image_size,
        args.channels,
        args.max_images,
        "none",
        args.seed,
        progress=not args.no_progress,
    )
    is_factory = ":" in args.model
    model = load_model(args.model, num_classes=None)
    load_weights(model, args.weights)
    model.eval()
    normalize = args.normalize if args.normalize != "auto" else ("none" if is_factory else "imagenet")
    if normalize == "imagenet":
        mean = torch.tensor([0.485, 0.456, 0.406]) if args.channels == 3 else torch.tensor([0.449])
        std = torch.tensor([0.229, 0.224, 0.225]) if args.channels == 3 else torch.tensor([0.226])
        model = Normalized(model, mean, std).eval()
    model = model.to(device)
    layers = resolve_layers_cli(model, args.layers, "--layers")
    embedding_layer = None
    if getattr(args, "embedding_layer", None):
        embedding_layer = resolve_layers_cli(model, [args.embedding_layer], "--embedding-layer")[0]
    out = check_forward(model, data.images[:2].to(device))
    if args.command == "saliency" and (out.dim() != 2 or out.shape[1] < len(data.class_names)):
        raise CLIError(
            f"saliency needs a classifier whose output (N, classes) covers the {len(data.class_names)} image "
            f"classes; the model returns shape {tuple(out.shape)}"
        )

    n = len(data.images)
    order = torch.randperm(n, generator=torch.Generator().manual_seed(args.seed))
    n_fit = max(1, (3 * n) // 4) if args.command == "saliency" else n
    fit_idx, eval_idx = order[:n_fit], order[n_fit:] if n_fit < n else order
    report = Report(
        args.out,
        f"captum_concepts: {_TITLES[args.command]}",
        f"Model {args.model}"
        + (f" with weights {args.weights}" if args.weights else " (untrained weights)")
        + f", {n} images from {args.images} ({len(data.class_names)} classes).",
    )
    report.add_meta(
        f"captum_concepts {__version__}, torch {torch.__version__}, device {device}, seed {args.seed}; "
        f"images {args.image_size}x{args.image_size}, {args.channels} channel(s), normalisation: {normalize}."
    )
    wrapped = isinstance(model, Normalized)
    ctx = S.Context(
        model=model,
        report=report,
        fit_images=data.images[fit_idx],
        fit_labels=data.labels[fit_idx],
        eval_images=data.images[eval_idx],
        eval_labels=data.labels[eval_idx],
        class_names=data.class_names,
        layers=layers,
        embedding_layer=embedding_layer,
        concept_layer=layers[-1],
        random_model=lambda: S.randomized_copy(model, args.seed),
        device=device,
        seed=args.seed,
        progress=not args.no_progress,
        layer_labels=[name[len("model.") :] if wrapped else name for name in layers],
    )
    if args.command == "scores":
        if args.n_examples < 1 or args.benchmark_draws < 1:
            raise CLIError("--n-examples and --benchmark-draws must be positive")
        ctx.n_score_examples = args.n_examples
        ctx.benchmark_draws = args.benchmark_draws
        if args.embedding_dims is not None:
            total = S.embedding_size(model, embedding_layer, data.images[:1].to(device))
            if not 1 <= args.embedding_dims <= total:
                raise CLIError(
                    f"--embedding-dims must be in [1, {total}] (the embedding size), "
                    f"got {args.embedding_dims}"
                )
            gen = torch.Generator().manual_seed(args.seed)
            ctx.embedding_dims = torch.randperm(total, generator=gen)[: args.embedding_dims].sort().values
            report.add_meta(
                f"Embedding components explained: {args.embedding_dims} of {total}, drawn at random."
            )
        S.embedding_attributions(ctx)
        S.score_curves(ctx)
    elif args.command == "saliency":
        sv = S.semantic_vectors(ctx)
        S.saliency_comparison(ctx, sv, ctx.eval_images, ctx.eval_labels)
    else:
        if args.n_concepts < 1:
            raise CLIError(f"--n-concepts must be positive, got {args.n_concepts}")
        S.coupled_nmf(ctx, n_concepts=min(args.n_concepts, n))
    return report.write()
