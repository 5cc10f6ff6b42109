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
from ._classes import (
    AccuracyCheck,
    ClassMapping,
    chance_threshold,
    check_accuracy,
    map_classes,
    parse_classes,
)
from ._context import Stages
from ._images import FolderScan, scan_image_folder
from ._loading import (
    Checkpoint,
    CLIError,
    ImageData,
    Normalisation,
    Normalized,
    check_flag_int,
    check_forward,
    choose_normalisation,
    head_classes,
    load_images,
    load_model,
    load_weights,
    pick_device,
    read_checkpoint,
    remove_previous_report,
    resolve_layers_cli,
)
from ._report import Report

_TITLES = {
    "scores": "Embedding attributions and representation scores",
    "saliency": "Semantic vectors and semantic saliency",
    "discover": "Concept discovery by coupled NMF",
}
_SECTIONS = {
    "scores": ["embedding attributions", "score curves"],
    "saliency": ["semantic vectors", "semantic saliency"],
    "discover": ["coupled NMF concepts and TCAV"],
}


def _say(text: str) -> None:
    print(f"captum-concepts: {text}")


def _warn(text: str) -> None:
    print(f"captum-concepts: warning: {text}", file=sys.stderr)


def run_user_command(args: argparse.Namespace) -> Path:
    """The cheap checks first (options, model, weights, layers, the folder's names), then the
    images, the model's accuracy on them, and the command's sections, each stage announced."""
    import matplotlib

    matplotlib.use("Agg", force=True)

    stages = Stages(
        ["loading the model, checking the arguments", "reading images", "accuracy on the images"]
        + _SECTIONS[args.command]
        + ["report"],
        show=not args.no_progress,
    )
    # options: nothing is loaded yet
    check_flag_int(args.max_images, "--max-images", low=2)
    check_flag_int(args.image_size, "--image-size", low=1)
    for flag, low in (("n_examples", 1), ("benchmark_draws", 1), ("n_concepts", 1), ("embedding_dims", 1)):
        if getattr(args, flag, None) is not None:
            check_flag_int(getattr(args, flag), "--" + flag.replace("_", "-"), low=low)
    if args.num_classes is not None:
        check_flag_int(args.num_classes, "--num-classes", low=1)
    device = pick_device(args.device)
    is_factory = ":" in args.model
    norm = choose_normalisation(args, is_factory)
    classes = parse_classes(args.classes)
    reshape = _reshape_transforms(args.reshape, args.layers)
    if is_factory and args.num_classes is not None:
        raise CLIError("--num-classes is for torchvision architectures; a module:factory builds its own head")
    torch.manual_seed(args.seed)

    with stages("loading the model, checking the arguments"):
        checkpoint = read_checkpoint(args.weights)
        num_classes = args.num_classes
        if num_classes is None and checkpoint is not None and not is_factory:
            head = head_classes(checkpoint.state)
            if head is not None and head[1] != 1000:  # torchvision's default head has 1000 classes
                num_classes = head[1]
                checkpoint.notes.append(f"{args.model} built with {num_classes} classes, from {head[0]}")
        model = load_model(args.model, num_classes=num_classes)
        load_weights(model, checkpoint)
        for note in checkpoint.notes if checkpoint else []:
            _say(f"--weights: {note}")
        guessed = "--normalize auto" in norm.source  # a default, not the model's known statistics
        _say(
            f"normalisation: {norm.describe()}"
            + ("; if the model was trained with other statistics, pass --mean / --std" if guessed else "")
        )
        model.eval()
        if norm.mean is not None:
            model = Normalized(model, norm.mean, norm.std).eval()
        model = model.to(device)
        layers = resolve_layers_cli(model, args.layers, "--layers")
        embedding_layer = None
        if getattr(args, "embedding_layer", None):
            embedding_layer = resolve_layers_cli(model, [args.embedding_layer], "--embedding-layer")[0]
        # a blank batch checks the input size, the layers and the output before any image is read
        blank = torch.zeros(2, args.channels, args.image_size, args.image_size, device=device)
        out = check_forward(model, blank)
        _check_layers(model, layers, args.layers, reshape, blank, args.upsample != "none")
        width = int(out.shape[1]) if out.dim() == 2 else None
        if classes is not None and width != len(classes):
            raise CLIError(
                f"--classes names {len(classes)} classes but the model's output has shape "
                f"{tuple(out.shape)}; give one name per output, in output order"
            )
        embedding_total = None
        if getattr(args, "embedding_dims", None) is not None:
            embedding_total = S.embedding_size(model, embedding_layer, blank[:1])
            check_flag_int(
                args.embedding_dims,
                f"--embedding-dims (the embedding size is {embedding_total})",
                1,
                embedding_total,
            )
        scan = scan_image_folder(args.images)
        mapping = map_classes([c.label for c in scan.classes], classes, width)
        _check_targets(args.command, mapping, out, width)
    _say(f"classes ({mapping.how}): " + _mapping_text(mapping, scan))
    for entry in scan.skipped:
        _warn(f"left out of --images: {entry}")
    # said above with the user's layer names (main() restores the warning filters on exit)
    warnings.filterwarnings("ignore", message=".*looks channels-last", category=UserWarning)

    with stages("reading images"):
        data = load_images(
            args.images,
            args.image_size,
            args.channels,
            args.max_images,
            "none",
            args.seed,
            progress=not args.no_progress,
            skip_bad=args.skip_bad_images,
            scan=scan,
        )
    if data.skipped:
        _warn(
            f"--skip-bad-images: left out {len(data.skipped)} unreadable image(s): " + "; ".join(data.skipped)
        )
    if not args.weights:
        _warn(
            "no --weights given, so the model has random (untrained) weights; its maps, scores and concepts "
            "say nothing about a trained network"
        )
    labels = torch.tensor(mapping.outputs)[data.labels]  # the model output of every image
    with stages("accuracy on the images"):
        accuracy = _accuracy(model, data.images, data.labels, mapping, width, device)
    _report_accuracy(accuracy, args.command, args.classes is not None, mapping, scan)

    n = len(data.images)
    order = torch.randperm(n, generator=torch.Generator().manual_seed(args.seed))
    n_fit = max(1, (3 * n) // 4) if args.command == "saliency" else n
    fit_idx, eval_idx = order[:n_fit], order[n_fit:] if n_fit < n else order
    remove_previous_report(args.out)  # --overwrite: allowed by main(); the old figures go with it
    report = _report_header(args, device, norm, checkpoint, mapping, scan, data, accuracy, stages.started)
    wrapped = isinstance(model, Normalized)
    ctx = S.Context(
        model=model,
        report=report,
        fit_images=data.images[fit_idx],
        fit_labels=labels[fit_idx],
        eval_images=data.images[eval_idx],
        eval_labels=labels[eval_idx],
        class_names=mapping.names,
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
        eval_held_out=n_fit < n,
    )
    if args.command == "scores":
        ctx.n_score_examples = args.n_examples
        ctx.benchmark_draws = args.benchmark_draws
        if args.embedding_dims is not None:
            gen = torch.Generator().manual_seed(args.seed)
            ctx.embedding_dims = (
                torch.randperm(embedding_total, generator=gen)[: args.embedding_dims].sort().values
            )
            report.add_meta(
                f"Embedding components explained: {args.embedding_dims} of {embedding_total}, "
                "drawn at random."
            )
        with stages("embedding attributions"):
            S.embedding_attributions(ctx)
        with stages("score curves"):
            S.score_curves(ctx)
    elif args.command == "saliency":
        with stages("semantic vectors"):
            sv = S.semantic_vectors(ctx)
        with stages("semantic saliency"):
            S.saliency_comparison(ctx, sv, ctx.eval_images, ctx.eval_labels)
    else:
        with stages("coupled NMF concepts and TCAV"):
            S.coupled_nmf(ctx, n_concepts=min(args.n_concepts, n))
    with stages("report"):
        for what, seconds in stages.timings[:3]:
            report.add_timing(what, seconds)
        return report.write()


def _check_targets(command: str, mapping: ClassMapping, out: torch.Tensor, width: Optional[int]) -> None:
    """``saliency`` and ``discover`` explain the folders' outputs: the model must have them."""
    if command == "scores":
        return
    highest = max(mapping.outputs)
    if width is None or width <= highest:
        raise CLIError(
            f"{command} needs a classifier whose output (N, classes) has the folders' outputs (up to output "
            f"{highest}: {mapping.how}); the model returns shape {tuple(out.shape)}"
        )
    missing = sorted(set(range(highest + 1)) - set(mapping.outputs))
    if command == "saliency" and missing:
        raise CLIError(
            f"saliency fits a semantic vector for every output up to the highest one in the folders "
            f"({highest}); outputs {missing[:10]} "
            f"({', '.join(mapping.names[j] for j in missing[:3])}...) have no folder in --images"
        )


def _mapping_text(mapping: ClassMapping, scan: FolderScan) -> str:
    return ", ".join(
        f"{c.label!r} -> output {out}" + (f" ({mapping.names[out]})" if mapping.names[out] != c.label else "")
        for c, out in zip(scan.classes, mapping.outputs)
    )


def _accuracy(
    model: nn.Module,
    images: torch.Tensor,
    folders: torch.Tensor,
    mapping: ClassMapping,
    width: Optional[int],
    device: torch.device,
    batch: int = 64,
) -> Optional[AccuracyCheck]:
    """The model's top-1 accuracy on the images under ``mapping`` (None without (N, classes) output)."""
    if width is None or width <= max(mapping.outputs):
        return None
    with torch.no_grad():
        predicted = torch.cat(
            [model(images[i : i + batch].to(device)).argmax(1).cpu() for i in range(0, len(images), batch)]
        )
    return check_accuracy(predicted, folders, mapping, width)


def _accuracy_text(acc: AccuracyCheck) -> str:
    return (
        f"top-1 accuracy of the model on the {acc.n_images} images under this mapping: {acc.accuracy:.1%} "
        f"(chance {1 / acc.n_outputs:.1%} for {acc.n_outputs} outputs)"
    )


def _mismatch_text(
    acc: AccuracyCheck, command: str, has_classes: bool, mapping: ClassMapping, scan: FolderScan
) -> str:
    """The loud warning when the accuracy is near chance or far below the best relabelling."""
    why = []
    if acc.near_chance:
        why.append(f"it is below {chance_threshold(acc.n_outputs):.0%}, near chance")
    if acc.far_below_best:
        moved = [
            f"{c.label!r} -> output {best}"
            for c, out, best in zip(scan.classes, mapping.outputs, acc.best_outputs)
            if out != best
        ]
        why.append(
            f"mapping the folders to other outputs would make it {acc.best_accuracy:.1%} "
            f"({', '.join(moved[:4])}{', ...' if len(moved) > 4 else ''})"
        )
    fix = "check --classes" if has_classes else "pass --classes with the model's class names in output order"
    text = (
        f"THE FOLDERS PROBABLY DO NOT MATCH THE MODEL'S OUTPUTS: {'; '.join(why)}. The targets, "
        f"probabilities and accuracy in this report are then another class's; {fix}"
    )
    if command == "scores" and not has_classes:
        text += " (ignore this if the model's output is an embedding, not class scores)"
    return text + "."


def _report_accuracy(
    acc: Optional[AccuracyCheck], command: str, has_classes: bool, mapping: ClassMapping, scan: FolderScan
) -> None:
    if acc is None:
        _say("accuracy not computed: the model's output is not (N, classes) covering the folders' outputs")
        return
    _say(_accuracy_text(acc))
    if acc.suspicious:
        _warn(_mismatch_text(acc, command, has_classes, mapping, scan))


def _report_header(
    args: argparse.Namespace,
    device: torch.device,
    norm: Normalisation,
    checkpoint: Optional[Checkpoint],
    mapping: ClassMapping,
    scan: FolderScan,
    data: ImageData,
    accuracy: Optional[AccuracyCheck],
    start: float,
) -> Report:
    """The report with its header: what was run, on what, and how the model did on the images."""
    from .. import __version__

    n = len(data.images)
    report = Report(
        args.out,
        f"captum_concepts: {_TITLES[args.command]}",
        f"Model {args.model}"
        + (f" with weights {args.weights}" if args.weights else " with untrained (random) weights")
        + f", {n} images from {args.images} ({len(scan.classes)} class folders).",
        start=start,
    )
    report.add_meta(
        f"captum_concepts {__version__}, torch {torch.__version__}, device {device}, seed {args.seed}; "
        f"images {args.image_size}x{args.image_size}, {args.channels} channel(s)."
    )
    report.add_meta(f"Normalisation: {norm.describe()}.", escape=True)
    if checkpoint is not None and checkpoint.notes:
        report.add_meta(f"Weights: {'; '.join(checkpoint.notes)}.", escape=True)
    report.add_meta(f"Classes ({mapping.how}): {_mapping_text(mapping, scan)}.", escape=True)
    if accuracy is None:
        report.add_meta(
            "Accuracy: not computed (the model's output is not (N, classes) covering the folders' outputs).",
        )
    else:
        report.add_meta(_accuracy_text(accuracy)[0].upper() + _accuracy_text(accuracy)[1:] + ".", escape=True)
        if accuracy.suspicious:
            report.add_warning(
                _mismatch_text(accuracy, args.command, args.classes is not None, mapping, scan)
            )
    if scan.skipped:
        report.add_meta(f"Left out of --images: {'; '.join(scan.skipped)}.", escape=True)
    if data.skipped:
        report.add_meta(
            f"Unreadable images left out (--skip-bad-images): {'; '.join(data.skipped)}.", escape=True
        )
    if not args.weights:
        report.figure_label = "untrained weights"
        report.add_meta(
            "No --weights: the network is untrained (random weights); its results carry no meaning."
        )
    return report


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
