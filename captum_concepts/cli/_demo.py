"""``captum-concepts demo``: every method on scikit-learn's digits, offline, in a few minutes on CPU."""

from __future__ import annotations

import argparse
import dataclasses
import platform
import time
from pathlib import Path

import torch

from . import _sections as S
from ._loading import pick_device, remove_previous_report
from ._report import Report

DIGIT_NAMES = [str(d) for d in range(10)]
SOURCE_LAYERS = ["block1.relu", "block2.relu", "block3.relu"]
CANVAS_SIZE = (8, 16)  # two digits side by side: a cheap model that learns both in seconds


def run_demo(args: argparse.Namespace) -> Path:
    import matplotlib

    matplotlib.use("Agg", force=True)
    from tqdm.auto import tqdm

    from .. import __version__
    from ..data import (
        DigitsCNN,
        load_digits_tensors,
        make_two_digit_canvas,
        train_classifier,
        train_digits_cnn,
    )

    device = pick_device(args.device)
    quick = bool(args.quick)
    torch.manual_seed(args.seed)
    out = Path(args.out)
    remove_previous_report(args.out)  # --overwrite (main() refuses an --out holding a report without it)
    report = Report(
        out,
        "captum_concepts demo report",
        "Every method of captum_concepts on a small CNN trained on scikit-learn's handwritten digits "
        "(8x8 images, offline). Each figure has a short text saying what it shows.",
    )
    steps = ["train", "embedding", "scores", "semantic", "saliency", "concepts"]
    bar = tqdm(total=len(steps), desc="demo", disable=args.no_progress)

    def step(name: str) -> None:
        bar.set_postfix_str(name)

    step("training the digits CNN")
    data = load_digits_tensors()
    trained = train_digits_cnn(data, seed=args.seed, epochs=4 if quick else 15)
    model = trained.model.to(device).eval()
    report.add_timing("training", trained.seconds)
    bar.update()
    report.add_meta(
        f"captum_concepts {__version__}, torch {torch.__version__}, device {device}, "
        f"Python {platform.python_version()}, seed {args.seed}{', quick mode' if quick else ''}."
    )
    report.add_meta(
        f"Model: DigitsCNN (3 conv blocks, 32-d embedding <code>embedding_relu</code>, 10 classes), trained "
        f"{trained.epochs} epochs in {trained.seconds:.1f} s: test accuracy {trained.test_accuracy:.1%} on "
        f"{len(data.x_test)} held-out digits."
    )
    n_fit = 400 if quick else len(data.x_train)
    ctx = S.Context(
        model=model,
        report=report,
        fit_images=data.x_train[:n_fit],
        fit_labels=data.y_train[:n_fit],
        eval_images=data.x_test,
        eval_labels=data.y_test,
        class_names=DIGIT_NAMES,
        layers=SOURCE_LAYERS,
        embedding_layer="embedding_relu",
        concept_layer="block3.relu",  # binarised block3.pool is on for nearly every digit: little contrast
        random_model=lambda: DigitsCNN(),
        device=device,
        seed=args.seed,
        quick=quick,
        progress=not args.no_progress,
    )

    step("embedding attributions")
    S.run_section("Embedding attributions", S.embedding_attributions, report, ctx)
    bar.update()
    step("score curves")
    S.run_section("Representation scores", S.score_curves, report, ctx)
    bar.update()
    step("semantic vectors")
    S.run_section("Semantic vectors", S.semantic_vectors, report, ctx)
    bar.update()

    step("semantic saliency on two-digit canvases")
    start = time.perf_counter()
    torch.manual_seed(args.seed)
    canvas_train = make_two_digit_canvas(
        600 if quick else 2000, canvas_size=CANVAS_SIZE, split="train", random_state=args.seed
    )
    canvas_test = make_two_digit_canvas(
        60 if quick else 200, canvas_size=CANVAS_SIZE, split="test", random_state=args.seed
    )
    multi = train_classifier(
        DigitsCNN(image_size=CANVAS_SIZE),
        canvas_train.images,
        canvas_train.multi_hot,
        canvas_test.images,
        canvas_test.multi_hot,
        epochs=4 if quick else 10,
        seed=args.seed,
        multilabel=True,
    )
    canvas_model = multi.model.to(device).eval()
    with torch.no_grad():
        top2 = canvas_model(canvas_test.images.to(device)).topk(2, dim=1).indices.sort(dim=1).values.cpu()
    both_right = float((top2 == canvas_test.labels.sort(dim=1).values).all(dim=1).float().mean())
    canvas_ctx = dataclasses.replace(
        ctx,
        model=canvas_model,
        fit_images=canvas_train.images,
        fit_labels=canvas_train.multi_hot,
        eval_images=canvas_test.images,
        eval_labels=canvas_test.labels[:, 0],
        concept_layer="block3.pool",  # the last pooling layer, as the paper's VGG16 pool5
        random_model=lambda: DigitsCNN(image_size=CANVAS_SIZE),
    )
    sv = S.run_section("Semantic saliency", _fit_canvas_vectors, report, canvas_ctx)
    if sv is not None:
        # both digits of every test canvas, each as the target once
        images = torch.cat([canvas_test.images, canvas_test.images])
        targets = torch.cat([canvas_test.labels[:, 0], canvas_test.labels[:, 1]])
        box_masks = canvas_test.box_masks()
        masks = torch.cat([box_masks[:, 0], box_masks[:, 1]])
        boxes = torch.cat([canvas_test.boxes, canvas_test.boxes.flip(1)])  # the target's box first
        S.run_section(
            "Semantic saliency", S.saliency_comparison, report, canvas_ctx, sv, images, targets, boxes, masks
        )
        report.add_text(
            f"Model for this section: a DigitsCNN trained ({multi.epochs} epochs, {multi.seconds:.1f} s) to "
            f"recognise both digits on {len(canvas_train.images)} {CANVAS_SIZE[0]}x{CANVAS_SIZE[1]} canvases "
            f"(multi-label); both digits right (top-2 logits) on {both_right:.0%} of "
            f"{len(canvas_test.images)} test canvases. Its semantic vectors were fitted at block3.pool from "
            f"the multi-hot labels of the training canvases. "
            f"Section time {time.perf_counter() - start:.1f} s."
        )
        S.run_section(
            "Channel masks", S.channel_masks_comparison, report, canvas_ctx, sv, images, targets, masks
        )
    bar.update()

    step("coupled-NMF concepts and TCAV")
    S.run_section("Concepts by coupled NMF", S.coupled_nmf, report, ctx, n_concepts=6 if quick else 10)
    S.run_section("Concept maps and importance", S.concept_maps, report, ctx)
    S.run_section("Similarity attribution", S.similarity, report, ctx)
    bar.update()
    bar.close()
    return report.write()


def _fit_canvas_vectors(ctx: S.Context):
    from ..concept import SemanticVector

    return SemanticVector(ctx.model, ctx.concept_layer, random_state=ctx.seed).fit_from_labels(
        (ctx.fit_images, ctx.fit_labels), n_classes=10
    )
