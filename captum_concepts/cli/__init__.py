"""The ``captum-concepts`` command line (also ``python -m captum_concepts``).

``captum-concepts demo --out DIR`` trains the small digits CNN and runs every method, writing PNG
figures and ``DIR/report.html``. ``discover``, ``scores`` and ``saliency`` run the same analyses on
your own model (a torchvision architecture name or ``module:factory``, optional ``--weights``) and
your own images (an ImageFolder tree).

Mistakes (a missing folder, an unknown layer, weights that do not fit) print one line and exit
with status 2; ``--verbose`` shows the traceback instead.
"""

from __future__ import annotations

import argparse
import re
import sys
import traceback
import warnings
from typing import Any, List, Optional, Tuple

__all__ = ["main", "build_parser"]

EXIT_USER_ERROR = 2
EXIT_FAILURE = 1
_ANSI = re.compile(r"\x1b\[[0-9;?]*[ -/]*[@-~]")  # terminal colour codes some libraries put in messages


def _common(p: argparse.ArgumentParser, out_default: str) -> None:
    p.add_argument(
        "--out", default=out_default, help=f"output folder for figures and report.html ({out_default})"
    )
    p.add_argument(
        "--device", default="auto", help="torch device: auto (CUDA if available), cpu, cuda, cuda:1..."
    )
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0): same seed, same report")
    p.add_argument("--verbose", action="store_true", help="show full tracebacks on errors")
    p.add_argument("--no-progress", action="store_true", help="hide progress bars and stage lines")
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="replace the report already in --out (its report.html and the figures it shows are removed "
        "first); without it an --out holding a report is an error",
    )


def _choice(p: Any, flag: str, choices: Tuple[str, ...], help: str) -> None:
    """An option taking one of ``choices``; the first is the default."""
    p.add_argument(flag, choices=choices, default=choices[0], help=help)


def _user_model_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("model and images")
    g.add_argument(
        "--model",
        required=True,
        help="a torchvision architecture name (resnet18, vgg16...) or an importable module.path:factory "
        "that returns an nn.Module. module:factory IMPORTS THAT MODULE AND RUNS ITS CODE: use only code "
        "you trust",
    )
    g.add_argument(
        "--weights",
        help="state dict saved with torch.save, read safely with torch.load(weights_only=True): "
        "tensors only, no code from the file runs",
    )
    g.add_argument("--images", required=True, help="image folder in ImageFolder layout: DIR/<class>/<image>")
    g.add_argument(
        "--layers", nargs="+", required=True, metavar="LAYER", help="layer names as in model.named_modules()"
    )
    g.add_argument("--image-size", type=int, default=224, help="images are resized and center-cropped (224)")
    g.add_argument(
        "--channels", type=int, choices=(1, 3), default=3, help="image channels the model takes (3)"
    )
    g.add_argument(
        "--classes",
        metavar="NAMES",
        help="the model's class names in output order: comma-separated, or a text file with one name per "
        "line. Class folders are matched to them by name (or by a numeric prefix, 0_cat). Without it the "
        "folders map by numeric prefix if all have one, else in sorted order (the mapping is printed)",
    )
    g.add_argument(
        "--num-classes",
        type=int,
        help="classes of a torchvision architecture's head (default: read from the --weights head, "
        "fc.weight / classifier.*.weight / heads.head.weight, else 1000)",
    )
    g.add_argument(
        "--normalize",
        choices=("auto", "imagenet", "none"),
        default=None,
        help="input normalisation: auto (default) = ImageNet statistics for torchvision models, none for "
        "module:factory; --mean/--std give the model's own",
    )
    g.add_argument(
        "--mean", nargs="+", metavar="M", help="the model's input mean: one value, or one per channel"
    )
    g.add_argument(
        "--std", nargs="+", metavar="S", help="the model's input std: one value, or one per channel"
    )
    g.add_argument(
        "--skip-bad-images",
        action="store_true",
        help="leave unreadable images out (listed on stderr and in the report) instead of stopping",
    )
    g.add_argument(
        "--max-images", type=int, default=200, help="at most this many images, spread over classes"
    )
    g.add_argument(
        "--reshape",
        nargs="+",
        metavar="LAYOUT",
        default=None,
        help="layout of the --layers outputs, one for all or one per layer: none (N, C, H, W), "
        "vit (ViT tokens (N, 1 + T, C), class token dropped, T on a square grid), tokens:K "
        "(K prefix tokens), channels-last (N, H, W, C) as in Swin / ConvNeXt stages",
    )
    _choice(
        g,
        "--upsample",
        ("nearest", "bilinear", "none"),
        "how layer maps are brought to the image size (nearest); none scores them at the layer's "
        "resolution (figures always show them at the image size, nearest)",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="captum-concepts",
        description="Embedding attributions, representation scores, semantic vectors and concept "
        "discovery on top of Captum. Start with: captum-concepts demo --out demo_out",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    demo = sub.add_parser(
        "demo",
        help="train a small CNN on scikit-learn's digits, run every method, write report.html (offline)",
        description="Train the digits CNN and run every method; "
        "writes OUT/report.html and OUT/figures/*.png.",
    )
    _common(demo, "demo_out")
    demo.add_argument("--quick", action="store_true", help="fewer examples and epochs (for tests)")

    scores = sub.add_parser(
        "scores",
        help="embedding attributions and noise/variance score curves of your model",
        description="Embedding attribution grids at LAYERS and noise / variance score curves "
        "(trained vs random weights, with the noise benchmark).",
    )
    _user_model_args(scores)
    scores.add_argument(
        "--embedding-layer", help="the layer whose output is the embedding (default: the model output)"
    )
    scores.add_argument(
        "--embedding-dims",
        type=int,
        metavar="K",
        help="explain a random subset of K embedding components (default: all; the cost grows with it)",
    )
    scores.add_argument("--n-examples", type=int, default=32, help="images scored per curve (32)")
    scores.add_argument(
        "--benchmark-draws", type=int, default=4, help="noise pairs of the noise benchmark (4)"
    )
    _common(scores, "scores_out")

    saliency = sub.add_parser(
        "saliency",
        help="semantic vectors per class and semantic vs plain saliency maps",
        description="Semantic vectors of the image classes at the last of LAYERS, their relevance matrix, "
        "and Semantic Guided Backprop / Gradient x Input next to the plain methods. Each class sub-folder "
        "of the image folder is one of the model's outputs (see --classes for which).",
    )
    _user_model_args(saliency)
    _common(saliency, "saliency_out")

    discover = sub.add_parser(
        "discover",
        help="unsupervised concepts shared by pixels and LAYERS (coupled NMF), checked with TCAV",
        description="Coupled-NMF concepts over the pixels and the activations of LAYERS, their top images, "
        "similarity spectra, top classes and TCAV scores.",
    )
    _user_model_args(discover)
    discover.add_argument("--n-concepts", type=int, default=10, help="number of concepts (10)")
    _choice(
        discover,
        "--shift",
        ("none", "min"),
        "negative activations (layers without a ReLU): none = an error, min = shift each neuron "
        "by its minimum over the images (none)",
    )
    _common(discover, "discover_out")
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    """Run the command line; returns the exit status (0 on success)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return EXIT_USER_ERROR
    from ._loading import CLIError, check_output_folder

    try:
        with warnings.catch_warnings():
            # libraries' notes (Captum's hooks and TCAV classifier, PIL, torchvision) are not for our
            # users: only this package's own warnings reach stderr
            warnings.filterwarnings("ignore")
            warnings.filterwarnings("default", module=r"captum_concepts(\.|$)")
            check_output_folder(args.out, overwrite=args.overwrite)
            if args.command == "demo":
                from ._demo import run_demo

                path = run_demo(args)
            else:
                from ._commands import run_user_command

                path = run_user_command(args)
    except KeyboardInterrupt:
        print("captum-concepts: interrupted", file=sys.stderr)
        return 130
    except SystemExit as err:  # the user's model code called exit(): never a silent success
        message = f"the model's code exited the program (exit({err.code!r}))"
        print(f"captum-concepts: error: {message}", file=sys.stderr)
        return EXIT_FAILURE
    except Exception as err:  # one clear line unless --verbose
        if getattr(args, "verbose", False):
            traceback.print_exc()
        else:
            text = _ANSI.sub("", str(err)).strip().splitlines()
            message = text[0] if text else type(err).__name__
            if not isinstance(err, CLIError):
                message = f"{type(err).__name__}: {message} (run with --verbose for the traceback)"
            print(f"captum-concepts: error: {message}", file=sys.stderr)
        return EXIT_USER_ERROR if isinstance(err, CLIError) else EXIT_FAILURE
    print(f"Report written to {path}")
    return 0
