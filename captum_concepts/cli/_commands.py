"""``captum-concepts scores | saliency | discover`` on a user's model and image folder."""

from __future__ import annotations

import argparse
import sys
import warnings
from pathlib import Path
from typing import Any, List, Optional

import torch
from torch import nn

from . import _sections as S
from ._loading import (
    CLIError,
    Normalized,
    check_flag_int,
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

    check_flag_int(args.max_images, "--max-images", low=2)
    check_flag_int(args.image_size, "--image-size", low=1)
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
    reshape = _reshape_transforms(args.reshape, args.layers)
    if not args.weights:
        print(
            "captum-concepts: warning: no --weights given, so the model has random (untrained) weights; "
            "its maps, scores and concepts say nothing about a trained network",
            file=sys.stderr,
        )
    out = check_forward(model, data.images[:2].to(device))
    _check_layers(model, layers, args.layers, reshape, data.images[:2].to(device), args.upsample != "none")
    # said above with the user's layer names (main() restores the warning filters on exit)
    warnings.filterwarnings("ignore", message=".*looks channels-last", category=UserWarning)
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
        + (f" with weights {args.weights}" if args.weights else " with untrained (random) weights")
        + f", {n} images from {args.images} ({len(data.class_names)} classes).",
    )
    report.add_meta(
        f"captum_concepts {__version__}, torch {torch.__version__}, device {device}, seed {args.seed}; "
        f"images {args.image_size}x{args.image_size}, {args.channels} channel(s), normalisation: {normalize}."
    )
    if not args.weights:
        report.figure_label = "untrained weights"
        report.add_meta(
            "No --weights: the network is untrained (random weights); its results carry no meaning."
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
        reshape_transforms=reshape,
        upsample=None if args.upsample == "none" else args.upsample,
        shift=None if getattr(args, "shift", "none") == "none" else args.shift,
        weights_tag="trained" if args.weights else "untrained",
    )
    if args.command == "scores":
        check_flag_int(args.n_examples, "--n-examples", low=1)
        check_flag_int(args.benchmark_draws, "--benchmark-draws", low=1)
        ctx.n_score_examples = args.n_examples
        ctx.benchmark_draws = args.benchmark_draws
        if args.embedding_dims is not None:
            total = S.embedding_size(model, embedding_layer, data.images[:1].to(device))
            check_flag_int(args.embedding_dims, f"--embedding-dims (the embedding size is {total})", 1, total)
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
        check_flag_int(args.n_concepts, "--n-concepts", low=1)
        S.coupled_nmf(ctx, n_concepts=min(args.n_concepts, n))
    return report.write()


def _reshape_transforms(presets: Optional[List[str]], layers: List[str]) -> Optional[List[Any]]:
    """``--reshape``: one preset for every layer or one per layer -> a reshape_transform per layer."""
    from .._utils.layout import expand_per_layer
    from ..attr import channels_last, tokens_to_grid

    if presets is None:
        return None
    if len(presets) not in (1, len(layers)):
        raise CLIError(
            f"--reshape takes one layout for all layers or one per layer ({len(layers)} --layers), "
            f"got {len(presets)}"
        )
    out = []
    one = presets[0] if len(presets) == 1 else presets
    for preset in expand_per_layer(one, len(layers), "--reshape", single=lambda p: isinstance(p, str)):
        if preset == "none":
            out.append(None)
        elif preset == "channels-last":
            out.append(channels_last)
        elif preset == "vit":
            out.append(tokens_to_grid(prefix_tokens=1))
        elif preset.startswith("tokens:") and preset[len("tokens:") :].isdigit():
            out.append(tokens_to_grid(prefix_tokens=int(preset[len("tokens:") :])))
        else:
            raise CLIError(
                f"--reshape {preset!r} is not a layout; use none, vit, tokens:K (K prefix tokens) or "
                "channels-last"
            )
    return out


def _check_layers(
    model: nn.Module,
    layers: List[str],
    user_names: List[str],
    reshape: Optional[List[Any]],
    x: torch.Tensor,
    upsample: bool,
) -> None:
    """One forward pass: every layer runs once, gives a tensor, and fits its layout; errors and
    warnings name the layers as the user wrote them."""
    from .._utils.hooks import ModelGuard
    from .._utils.layers import resolve_layer
    from .._utils.layout import apply_reshape, layout_hint

    with ModelGuard(model) as guard, torch.no_grad():
        captures = {name: guard.capture(resolve_layer(model, name), "--layers") for name in layers}
        guard.forward(model, x)
    for j, (name, user) in enumerate(zip(layers, user_names)):
        outs = [value for value, _ in captures[name].records]
        if len(outs) != 1:
            what = "never runs in the forward pass" if not outs else f"runs {len(outs)} times per forward"
            raise CLIError(
                f"--layers {user} {what}; pass a layer that runs exactly once (e.g. its parent block)"
            )
        if not isinstance(outs[0], torch.Tensor):
            raise CLIError(f"--layers {user} returns {type(outs[0]).__name__}, not a tensor")
        fn = None if reshape is None else reshape[j]
        try:
            shape = tuple(apply_reshape(fn, outs[0]).shape)
        except ValueError as err:
            raise CLIError(f"--reshape for --layers {user}: {str(err).splitlines()[0]}") from None
        if upsample and len(shape) > 2 and len(shape) != x.dim():
            raise CLIError(
                f"--layers {user} gives maps over {len(shape) - 2} dimension(s) {shape[2:]} (output read as "
                f"(N, C, *S) = {shape}), the images have {x.dim() - 2}; pass --reshape vit or tokens:K for "
                "token layers, channels-last for (N, H, W, C) layers, or --upsample none"
            )
        if fn is None and layout_hint(model, resolve_layer(model, name), tuple(outs[0].shape)) is not None:
            print(
                f"captum-concepts: warning: --layers {user} has output {tuple(outs[0].shape)}, which looks "
                "channels-last or token-shaped; pass --reshape channels-last (Swin, ConvNeXt) or "
                "--reshape vit (ViT tokens), else its maps are taken over the wrong axes",
                file=sys.stderr,
            )
